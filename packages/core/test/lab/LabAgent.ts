/**
 * Runs the NAT-PMP agent (natPmpAgent.ts) inside a lab namespace and talks to it: the agent is bundled once per
 * lab from the sources with esbuild (no build step, no stale dist), started with `ip netns exec <ns> node`, and
 * driven over the JSON-lines protocol of AgentProtocol.ts.
 */
import { NetworkLab } from "@natpmp-bridge/core/testing"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as Esbuild from "esbuild"
import * as Path from "node:path"
import * as Url from "node:url"
import type { AgentCommand, AgentEvent, AgentMessage, AgentOptions, RemoteError } from "./AgentProtocol.js"

const here = Path.dirname(Url.fileURLToPath(import.meta.url))

/** The agent answered a request with an error (e.g. the client's `NatPmpResultError`), carried in `remote`. */
export class AgentRequestError extends Data.TaggedError("AgentRequestError")<{
  readonly command: AgentCommand
  readonly remote: RemoteError
}> {
  get message(): string {
    return `agent ${this.command.op} failed with ${this.remote._tag}: ${this.remote.message}`
  }
}

/**
 * Bundles the agent and the core sources it imports into one CommonJS file in `directory` (about 0.3 s).
 * Returns the file's path.
 */
export const bundleAgent = (directory: string): Effect.Effect<string, NetworkLab.NetworkLabError> =>
  Effect.tryPromise({
    try: async () => {
      const outfile = Path.join(directory, "natpmp-agent.cjs")
      await Esbuild.build({
        entryPoints: [Path.join(here, "natPmpAgent.ts")],
        outfile,
        bundle: true,
        platform: "node",
        format: "cjs",
        target: "node20",
        alias: { "@natpmp-bridge/core": Path.join(here, "..", "..", "src", "index.ts") },
        logLevel: "silent"
      })
      return outfile
    },
    catch: (cause) => new NetworkLab.NetworkLabError({ reason: "cannot bundle the NAT-PMP agent", cause })
  })

/** A running agent. */
export interface Agent {
  readonly process: NetworkLab.LabProcess
  /** Sends a command and waits for its reply (default timeout 15 s). */
  readonly request: <A = unknown>(
    command: AgentCommand,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<A, AgentRequestError | NetworkLab.NetworkLabError>
  /** Every event the agent reported so far, in order. */
  readonly events: Effect.Effect<ReadonlyArray<AgentEvent>>
  /**
   * Waits for the first event (already reported or still to come) that satisfies `predicate` and returns it;
   * fails after `timeout` (default 5 s) naming `what`.
   */
  readonly waitForEvent: <E extends AgentEvent>(
    predicate: (event: AgentEvent) => event is E,
    what: string,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<E, NetworkLab.NetworkLabError>
}

const logTail = (text: string) => text.trimEnd().split("\n").slice(-10).join("\n")

/**
 * Starts the bundled agent inside `namespace` and waits until it is ready. It is stopped (SIGTERM: it closes its
 * keep-alives, which deletes their mappings) when the scope closes.
 */
export const startAgent = (
  bundle: string,
  namespace: NetworkLab.Namespace,
  options: AgentOptions = {}
): Effect.Effect<Agent, NetworkLab.NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    const process_ = yield* NetworkLab.spawn([process.execPath, bundle, JSON.stringify(options)], {
      namespace,
      name: `agent in ${namespace.name}`
    })
    const pending = new Map<number, Deferred.Deferred<unknown, RemoteError>>()
    const events = yield* SubscriptionRef.make<ReadonlyArray<AgentEvent>>([])
    const ready = yield* Deferred.make<unknown, RemoteError>()
    pending.set(0, ready)
    let nextId = 1

    yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
      const line = yield* Queue.take(process_.lines)
      let message: AgentMessage
      try {
        message = JSON.parse(line) as AgentMessage
      } catch {
        return yield* Effect.logWarning(`agent printed a line that is not JSON: ${line}`)
      }
      if ("id" in message) {
        const deferred = pending.get(message.id)
        pending.delete(message.id)
        if (deferred !== undefined) {
          yield* message.ok ? Deferred.succeed(deferred, message.value) : Deferred.fail(deferred, message.error)
        }
      } else {
        yield* SubscriptionRef.update(events, (all) => [...all, message])
      }
    })))

    const agentFailure = (reason: string) =>
      Effect.flatMap(process_.stderr, (stderr) =>
        Effect.fail(
          new NetworkLab.NetworkLabError({ reason: `${reason}; agent stderr ends with:\n${logTail(stderr)}` })
        ))
    const awaitReply = <A>(
      deferred: Deferred.Deferred<unknown, RemoteError>,
      what: string,
      timeout: Duration.Duration
    ) =>
      // both sides interruptible, so the loser stops also inside an uninterruptible region (e.g. an acquire)
      Effect.raceFirst(
        Effect.interruptible(Deferred.await(deferred)).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () =>
              new NetworkLab.NetworkLabError({ reason: `no reply to ${what} within ${Duration.format(timeout)}` })
          }),
          Effect.catchTag("NetworkLabError", (error) => agentFailure(error.reason))
        ),
        Effect.interruptible(
          Effect.flatMap(
            process_.exited,
            (exit) => agentFailure(`the agent exited (code ${exit.exitCode}) during ${what}`)
          )
        )
      ) as Effect.Effect<A, RemoteError | NetworkLab.NetworkLabError>

    yield* awaitReply(ready, "start-up", Duration.seconds(10)).pipe(
      Effect.catchIf(
        (error): error is RemoteError => !(error instanceof NetworkLab.NetworkLabError),
        (error) => agentFailure(`the agent failed to start: ${error.message}`)
      )
    )

    const request = <A = unknown>(command: AgentCommand, timeout: Duration.DurationInput = Duration.seconds(15)) =>
      Effect.gen(function*() {
        const id = nextId++
        const deferred = yield* Deferred.make<unknown, RemoteError>()
        pending.set(id, deferred)
        yield* process_.write(JSON.stringify({ ...command, id }) + "\n")
        return yield* awaitReply<A>(deferred, command.op, Duration.decode(timeout)).pipe(
          Effect.mapError((error) =>
            error instanceof NetworkLab.NetworkLabError ? error : new AgentRequestError({ command, remote: error })
          )
        )
      })

    const waitForEvent = <E extends AgentEvent>(
      predicate: (event: AgentEvent) => event is E,
      what: string,
      timeout: Duration.DurationInput = Duration.seconds(5)
    ) =>
      events.changes.pipe(
        Stream.map((all) => Option.fromNullable(all.find(predicate))),
        Stream.filterMap((found) => found),
        Stream.runHead,
        Effect.flatten,
        Effect.interruptible,
        Effect.timeout(timeout),
        Effect.mapError(() =>
          new NetworkLab.NetworkLabError({ reason: `no ${what} within ${Duration.format(Duration.decode(timeout))}` })
        )
      ) as Effect.Effect<E, NetworkLab.NetworkLabError>

    return {
      process: process_,
      request,
      events: SubscriptionRef.get(events),
      waitForEvent
    } satisfies Agent
  })
