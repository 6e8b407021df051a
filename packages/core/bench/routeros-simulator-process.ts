/**
 * Runs a RouterOS simulator in its own process for the benchmark, so that client and router do
 * not share one event loop (as with a real router). Prints `PORT=<n>` and lives until stdin closes.
 *
 *   node node_modules/vite-node/vite-node.mjs packages/core/bench/routeros-simulator-process.ts
 */
import * as Effect from "effect/Effect"
import * as RouterOsSimulator from "../src/testing/RouterOsSimulator.js"

const program = Effect.gen(function*() {
  const sim = yield* RouterOsSimulator.make({
    password: "bench",
    ...RouterOsSimulator.vpnRouterV7(),
    natRules: Array.from({ length: 50 }, (_, i) => ({
      chain: "dstnat",
      action: "dst-nat",
      protocol: i % 2 === 0 ? "tcp" : "udp",
      "in-interface": "wg-proton",
      "dst-port": String(40000 + i),
      "to-addresses": "192.168.88.20",
      "to-ports": String(40000 + i),
      comment: `natpmp-bridge:bench ${i}`
    }))
  })
  process.stdout.write(`PORT=${sim.port}\n`)
  yield* Effect.async<void>((resume) => {
    process.stdin.on("close", () => resume(Effect.void))
    process.stdin.on("end", () => resume(Effect.void))
    process.stdin.resume()
  })
})

Effect.runPromise(Effect.scoped(program)).then(() => process.exit(0))
