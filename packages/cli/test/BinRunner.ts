/**
 * Runs the built CLI bins (packages/cli/dist/bin) as child processes, the way users run them.
 */
import * as Deferred from "effect/Deferred"
import type * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Ref from "effect/Ref"
import { spawn } from "node:child_process"
import * as path from "node:path"

export type Bin = "natpmp" | "natpmp-bridge"

export const binPath = (bin: Bin) => path.join(__dirname, "..", "dist", "bin", `${bin}.js`)

export interface Result {
  readonly code: number | null
  readonly signal: NodeJS.Signals | null
  readonly stdout: string
  readonly stderr: string
  /** Wall time from spawn to exit. */
  readonly millis: number
}

export const lines = (text: string): Array<string> => text.split("\n").filter((line) => line.length > 0)

export interface RunOptions {
  readonly env?: Record<string, string | undefined>
}

/** A running bin: its output so far, a way to wait for a line, to signal it and to await its exit. */
export interface Running {
  readonly pid: number
  readonly stdout: Effect.Effect<string>
  readonly stderr: Effect.Effect<string>
  /** Waits (real time) until a stdout line satisfies `predicate`; fails with the output so far after `timeout`. */
  readonly waitForLine: (
    predicate: (line: string) => boolean,
    timeout?: Duration.DurationInput
  ) => Effect.Effect<string>
  readonly kill: (signal: NodeJS.Signals) => Effect.Effect<void>
  readonly exit: Effect.Effect<Result>
}

/** Starts a bin; it is killed (SIGKILL) when the scope closes, if still running. */
export const start = (bin: Bin, args: ReadonlyArray<string>, options: RunOptions = {}) =>
  Effect.gen(function*() {
    const stdout = yield* Ref.make("")
    const stderr = yield* Ref.make("")
    const exited = yield* Deferred.make<Result>()
    const started = Date.now()
    const child = yield* Effect.acquireRelease(
      Effect.sync(() =>
        spawn(process.execPath, [binPath(bin), ...args], {
          stdio: ["ignore", "pipe", "pipe"],
          env: { ...process.env, ...options.env }
        })
      ),
      (child) => Effect.sync(() => child.exitCode === null && child.signalCode === null && child.kill("SIGKILL"))
    )
    child.stdout.setEncoding("utf8").on("data", (chunk: string) => Effect.runSync(Ref.update(stdout, (s) => s + chunk)))
    child.stderr.setEncoding("utf8").on("data", (chunk: string) => Effect.runSync(Ref.update(stderr, (s) => s + chunk)))
    child.on("close", (code, signal) =>
      Effect.runSync(Effect.gen(function*() {
        yield* Deferred.succeed(exited, {
          code,
          signal,
          stdout: yield* Ref.get(stdout),
          stderr: yield* Ref.get(stderr),
          millis: Date.now() - started
        })
      })))
    const waitForLine = (
      predicate: (line: string) => boolean,
      timeout: Duration.DurationInput = "10 seconds",
      stream: "stdout" | "stderr" = "stdout"
    ) =>
      Effect.gen(function*() {
        while (true) {
          const found = lines(yield* Ref.get(stream === "stdout" ? stdout : stderr)).find(predicate)
          if (found !== undefined) return found
          if (yield* Deferred.isDone(exited)) {
            return yield* Effect.dieMessage(
              `exited before the line appeared: ${JSON.stringify(yield* Deferred.await(exited))}`
            )
          }
          yield* Effect.sleep("20 millis")
        }
      }).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new Error("timed out waiting for a line")
        }),
        Effect.catchAll((error) =>
          Effect.flatMap(
            Effect.all([Ref.get(stdout), Ref.get(stderr)]),
            ([out, err]) => Effect.dieMessage(`${error.message}; stdout: ${out}; stderr: ${err}`)
          )
        )
      )
    return {
      pid: child.pid ?? -1,
      stdout: Ref.get(stdout),
      stderr: Ref.get(stderr),
      waitForLine,
      kill: (signal) => Effect.sync(() => void child.kill(signal)),
      exit: Deferred.await(exited)
    } satisfies Running
  })

/** Runs a bin to completion (killed after `timeout`). */
export const run = (
  bin: Bin,
  args: ReadonlyArray<string>,
  options: RunOptions & { readonly timeout?: Duration.DurationInput } = {}
) =>
  Effect.scoped(Effect.flatMap(start(bin, args, options), (running) =>
    running.exit.pipe(
      Effect.timeoutFail({
        duration: options.timeout ?? "20 seconds",
        onTimeout: () => new Error(`${bin} ${args.join(" ")} did not exit in time`)
      }),
      Effect.orDie
    )))
