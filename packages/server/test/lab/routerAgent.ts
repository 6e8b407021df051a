/**
 * The router agent: a small program the bridge lab bundles (esbuild, from the sources) and runs inside the router's
 * namespace, because the bridge must reach the RouterOS API there and the test process lives in the root namespace.
 * It runs the RouterOS simulator on 127.0.0.1 (an ephemeral port) with the NftDstNat backend, so every dst-nat rule
 * the bridge adds becomes a real nftables rule in the router's namespace. It reports on stdout, one JSON line each:
 * `ready` with the port, then after every NAT table change the table (`nat`) and what nftables got (`nft`).
 * On stdin it takes NAT table changes made "behind the bridge's back" ({@link RouterAgentCommand}), one JSON line
 * each. It exits when stdin closes or on SIGTERM (the nftables table is deleted first).
 */
import { NftDstNat, RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as Queue from "effect/Queue"
import * as Readline from "node:readline"

/** How the agent is started (JSON in its first argument). */
export interface RouterAgentOptions {
  readonly password: string
  readonly seed: RouterOsSimulator.VpnRouterSeed
}

/** What the agent reads on stdin: changes of the NAT table made by someone else than the bridge. */
export type RouterAgentCommand =
  | { readonly op: "addNatRule"; readonly row: RouterOsSimulator.Row }
  | { readonly op: "setNatRule"; readonly id: string; readonly patch: RouterOsSimulator.Row }
  | { readonly op: "removeNatRule"; readonly id: string }

/** What the agent writes on stdout. */
export type RouterAgentMessage =
  | { readonly type: "ready"; readonly port: number }
  | { readonly type: "nat"; readonly rules: ReadonlyArray<RouterOsSimulator.Row> }
  | {
    readonly type: "nft"
    readonly rules: ReadonlyArray<string>
    readonly skipped: ReadonlyArray<NftDstNat.Skipped>
  }
  | { readonly type: "nftError"; readonly message: string }

const write = (message: RouterAgentMessage) => Effect.sync(() => process.stdout.write(JSON.stringify(message) + "\n"))

const main = (options: RouterAgentOptions) =>
  Effect.gen(function*() {
    const nft = yield* NftDstNat.backend({
      onApplied: (result) =>
        result instanceof Error
          ? write({ type: "nftError", message: result.message })
          : write({ type: "nft", rules: result.rules, skipped: result.skipped })
    })
    const simulator = yield* RouterOsSimulator.make({
      host: "127.0.0.1",
      password: options.password,
      ...RouterOsSimulator.vpnRouterV7(options.seed),
      onNatChange: (rules) =>
        nft(rules).pipe(
          Effect.ignore, // reported by onApplied
          Effect.zipRight(write({ type: "nat", rules }))
        )
    })
    yield* write({ type: "ready", port: simulator.port })
    const lines = yield* Queue.unbounded<string | null>()
    const reader = Readline.createInterface({ input: process.stdin })
    reader.on("line", (line) => lines.unsafeOffer(line))
    reader.on("close", () => lines.unsafeOffer(null))
    while (true) {
      const line = yield* Queue.take(lines)
      if (line === null) return
      if (line.trim() === "") continue
      const command = JSON.parse(line) as RouterAgentCommand
      // the change is reported by onNatChange
      yield* command.op === "addNatRule"
        ? simulator.addNatRule(command.row)
        : command.op === "setNatRule"
        ? simulator.setNatRule(command.id, command.patch)
        : simulator.removeNatRule(command.id)
    }
  })

const stderrLogger = Logger.map(Logger.logfmtLogger, (line) => process.stderr.write(line + "\n"))
const options = JSON.parse(process.argv[2] ?? "{}") as RouterAgentOptions
const fiber = Effect.runFork(
  Effect.scoped(main(options)).pipe(Effect.provide(Logger.replace(Logger.defaultLogger, stderrLogger)))
)
process.once("SIGTERM", () => Effect.runFork(Fiber.interrupt(fiber)))
fiber.addObserver((exit) => {
  if (Exit.isFailure(exit) && !Exit.isInterrupted(exit)) {
    process.stderr.write(`router agent failed: ${String(exit.cause)}\n`)
    process.exitCode = 1
  }
  process.exit()
})
