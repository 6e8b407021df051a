/**
 * One-shot `natpmp map` wall time, end to end on loopback against the NAT-PMP gateway simulator, beside a bare
 * `node -e 0` start in the same run (the bins must be built: `npm run build`).
 *
 *   npx vitest bench --run --project cli packages/cli/bench/natpmp.bench.ts
 *
 * mean = wall time of one process, spawn to exit, in ms.
 */
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import { execFile } from "node:child_process"
import * as path from "node:path"
import { afterAll, beforeAll, bench, describe } from "vitest"

const natpmp = path.join(__dirname, "..", "dist", "bin", "natpmp.js")

let scope: Scope.CloseableScope
let gatewayPort = 0
let nextPort = 30000

const run = (args: ReadonlyArray<string>): Promise<void> =>
  new Promise((resolve, reject) =>
    execFile(process.execPath, args, (error) => error === null ? resolve() : reject(error))
  )

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  const simulator = await Effect.runPromise(Scope.extend(NatPmpGatewaySimulator.make(), scope))
  gatewayPort = simulator.port
})

afterAll(async () => {
  await Effect.runPromise(Scope.close(scope, Exit.void))
})

describe("one-shot process", () => {
  bench("node -e 0", async () => {
    await run(["-e", "0"])
  }, { iterations: 20 })

  bench("natpmp map (loopback gateway)", async () => {
    const port = String(nextPort++)
    await run([natpmp, "map", "-g", "127.0.0.1", "--port", String(gatewayPort), port, port])
  }, { iterations: 20 })
})
