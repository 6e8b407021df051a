/**
 * The bridge lab's moving parts, built on NetworkLab's double NAT: the router agent (routerAgent.ts: the RouterOS
 * simulator with real nftables dst-nat, bundled with esbuild and run in the router's namespace) and the built
 * `natpmp-bridge serve` bin, also in the router's namespace.
 */
import type { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import { NetworkLab } from "@natpmp-bridge/core/testing"
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
import type { RouterAgentCommand, RouterAgentMessage, RouterAgentOptions } from "./routerAgent.js"

const here = Path.dirname(Url.fileURLToPath(import.meta.url))
const sources = (pkg: string, entry: string) => Path.join(here, "..", "..", "..", pkg, "src", entry)

/** The `natpmp-bridge` bin as `npm run build` leaves it. */
export const bridgeBin = Path.join(here, "..", "..", "..", "cli", "dist", "bin", "natpmp-bridge.js")

/** Bundles the router agent and the core sources it imports into one CommonJS file in `directory`. */
export const bundleRouterAgent = (directory: string): Effect.Effect<string, NetworkLab.NetworkLabError> =>
  Effect.tryPromise({
    try: async () => {
      const outfile = Path.join(directory, "router-agent.cjs")
      await Esbuild.build({
        entryPoints: [Path.join(here, "routerAgent.ts")],
        outfile,
        bundle: true,
        platform: "node",
        format: "cjs",
        target: "node20",
        alias: {
          "@natpmp-bridge/core/testing": sources("core", "testing/index.ts"),
          "@natpmp-bridge/core": sources("core", "index.ts")
        },
        logLevel: "silent"
      })
      return outfile
    },
    catch: (cause) => new NetworkLab.NetworkLabError({ reason: "cannot bundle the router agent", cause })
  })

/** What the router agent last reported. */
export interface RouterState {
  /** The simulator's NAT table after its last change. */
  readonly natRules: ReadonlyArray<RouterOsSimulator.Row>
  /** The nftables rules rendered from it. */
  readonly nftRules: ReadonlyArray<string>
  /** NAT rules NftDstNat could not render, and failures to load nftables. */
  readonly problems: ReadonlyArray<string>
}

/** The RouterOS simulator running in the router's namespace. */
export interface RouterAgent {
  readonly process: NetworkLab.LabProcess
  /** The API port on the router namespace's 127.0.0.1. */
  readonly port: number
  readonly password: string
  readonly state: Effect.Effect<RouterState>
  /** Adds a NAT rule as someone else than the bridge would (it must carry a unique comment); returns its id. */
  readonly addNatRule: (
    row: RouterOsSimulator.Row & { readonly comment: string }
  ) => Effect.Effect<string, NetworkLab.NetworkLabError>
  /** Changes a NAT rule (as someone else than the bridge would) and waits until the change is in effect. */
  readonly setNatRule: (id: string, patch: RouterOsSimulator.Row) => Effect.Effect<void, NetworkLab.NetworkLabError>
  /** Removes a NAT rule by id. */
  readonly removeNatRule: (id: string) => Effect.Effect<void, NetworkLab.NetworkLabError>
  /** Waits until the reported state satisfies `predicate` (default 5 s); fails naming `what`. */
  readonly waitFor: (
    predicate: (state: RouterState) => boolean,
    what: string,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<RouterState, NetworkLab.NetworkLabError>
}

const tail = (text: string) => text.trimEnd().split("\n").slice(-10).join("\n")

/** Starts the router agent in `namespace` and waits for its simulator's port. Stopped when the scope closes. */
export const startRouterAgent = (
  bundle: string,
  namespace: NetworkLab.Namespace,
  options: RouterAgentOptions
): Effect.Effect<RouterAgent, NetworkLab.NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    const agent = yield* NetworkLab.spawn([process.execPath, bundle, JSON.stringify(options)], {
      namespace,
      name: `router agent in ${namespace.name}`
    })
    const state = yield* SubscriptionRef.make<RouterState>({ natRules: [], nftRules: [], problems: [] })
    const port = yield* Effect.gen(function*() {
      while (true) {
        const message = JSON.parse(yield* Queue.take(agent.lines)) as RouterAgentMessage
        if (message.type === "ready") return message.port
        yield* apply(message)
      }
    }).pipe(
      Effect.timeoutOption(Duration.seconds(10)),
      Effect.flatMap(Option.match({
        onSome: Effect.succeed,
        onNone: () =>
          Effect.flatMap(agent.stderr, (stderr) =>
            Effect.fail(
              new NetworkLab.NetworkLabError({ reason: `the router agent did not start; its stderr:\n${tail(stderr)}` })
            ))
      }))
    )
    function apply(message: RouterAgentMessage) {
      return SubscriptionRef.update(state, (current): RouterState => {
        switch (message.type) {
          case "nat":
            return { ...current, natRules: message.rules }
          case "nft":
            return {
              ...current,
              nftRules: message.rules,
              problems: [
                ...current.problems,
                ...message.skipped.map((skipped) => `rule ${skipped.id} not rendered: ${skipped.reason}`)
              ]
            }
          case "nftError":
            return { ...current, problems: [...current.problems, `nft failed: ${message.message}`] }
          case "ready":
            return current
        }
      })
    }
    yield* Effect.forkScoped(
      Effect.forever(Effect.flatMap(Queue.take(agent.lines), (line) => apply(JSON.parse(line) as RouterAgentMessage)))
    )
    const waitFor = (
      predicate: (state: RouterState) => boolean,
      what: string,
      timeout: Duration.DurationInput = Duration.seconds(5)
    ) =>
      state.changes.pipe(
        Stream.filter(predicate),
        Stream.runHead,
        Effect.flatten,
        Effect.timeout(timeout),
        Effect.catchAll(() =>
          Effect.flatMap(SubscriptionRef.get(state), (last) =>
            Effect.fail(
              new NetworkLab.NetworkLabError({
                reason: `the router never showed ${what} within ${Duration.format(Duration.decode(timeout))}; ` +
                  `last state: ${JSON.stringify(last)}`
              })
            ))
        )
      )
    const send = (command: RouterAgentCommand) => agent.write(JSON.stringify(command) + "\n")
    return {
      process: agent,
      port,
      password: options.password,
      state: SubscriptionRef.get(state),
      waitFor,
      addNatRule: (row) =>
        send({ op: "addNatRule", row }).pipe(
          Effect.zipRight(waitFor((s) => s.natRules.some((r) => r.comment === row.comment), `rule "${row.comment}"`)),
          Effect.map((s) => s.natRules.find((r) => r.comment === row.comment)![".id"])
        ),
      setNatRule: (id, patch) =>
        send({ op: "setNatRule", id, patch }).pipe(
          Effect.zipRight(waitFor((s) =>
            s.natRules.some((r) =>
              r[".id"] === id && Object.entries(patch).every(([key, value]) => (r[key] ?? "") === value)
            ), `rule ${id} changed`)),
          Effect.asVoid
        ),
      removeNatRule: (id) =>
        send({ op: "removeNatRule", id }).pipe(
          Effect.zipRight(waitFor((s) =>
            !s.natRules.some((r) => r[".id"] === id), `no rule ${id}`)),
          Effect.asVoid
        )
    }
  })

/** The `natpmp-bridge serve` bin running in the router's namespace. */
export interface BridgeProcess {
  readonly process: NetworkLab.LabProcess
  /** Its log so far (stderr). */
  readonly log: Effect.Effect<string>
}

/**
 * Starts `natpmp-bridge serve` in the router's namespace with `flags` (plus the password flag for the agent's
 * simulator) and waits for its "started" log line (default 15 s). Stopped (SIGTERM) when the scope closes.
 */
export const startBridge = (
  namespace: NetworkLab.Namespace,
  router: RouterAgent,
  flags: ReadonlyArray<string>,
  timeout: Duration.DurationInput = Duration.seconds(15)
): Effect.Effect<BridgeProcess, NetworkLab.NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    const bridge = yield* NetworkLab.spawn(
      [
        process.execPath,
        bridgeBin,
        "serve",
        "--mikrotik-api-address",
        `127.0.0.1:${router.port}`,
        "--mikrotik-api-password",
        router.password,
        ...flags
      ],
      { namespace, name: `natpmp-bridge in ${namespace.name}`, stopTimeout: Duration.seconds(12) }
    )
    const started = Effect.gen(function*() {
      while (!(yield* bridge.stderr).includes("natpmp-bridge started")) {
        const exit = yield* bridge.exitStatus
        if (Option.isSome(exit)) return false
        yield* Effect.sleep(Duration.millis(50))
      }
      return true
    })
    const ok = yield* Effect.timeoutOption(started, timeout)
    if (Option.isNone(ok) || !ok.value) {
      const stderr = yield* bridge.stderr
      return yield* new NetworkLab.NetworkLabError({
        reason: `natpmp-bridge did not start within ${Duration.format(Duration.decode(timeout))}; its log:\n${
          tail(stderr)
        }`
      })
    }
    return { process: bridge, log: bridge.stderr }
  })
