/**
 * RouterOS API client throughput over one connection: commands one at a time vs 100 in flight with tags, against
 * the RouterOS simulator in a child process (like a real router, client and router do not share an event loop).
 *
 *   node node_modules/vite-node/vite-node.mjs bench/routeros.bench.ts
 *
 * The command is `/system/identity/print` (one reply sentence). After a warm-up, the two modes take turns in
 * windows of about 1 s (5 each, 2 in quick mode); commands/s is the median over the windows of each mode.
 */
import { RouterOsClient } from "@natpmp-bridge/core"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import * as BenchResult from "./lib/BenchResult.js"
import { median, root, viteNode } from "./lib/Processes.js"

const quick = process.env.BENCH_QUICK === "1"
const windows = quick ? 2 : 5
const IN_FLIGHT = 100
const WINDOW_MS = 1000

const spawnSimulator = (): Promise<{ readonly port: number; readonly child: ChildProcess.ChildProcess }> =>
  new Promise((resolve, reject) => {
    const child = ChildProcess.spawn(
      process.execPath,
      [viteNode, Path.join(root, "packages/core/bench/routeros-simulator-process.ts")],
      { cwd: root, stdio: ["pipe", "pipe", "inherit"] }
    )
    let out = ""
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString()
      const match = /PORT=(\d+)/.exec(out)
      if (match !== null) resolve({ port: Number(match[1]), child })
    })
    child.on("exit", (code) => reject(new Error(`simulator process exited with ${code}`)))
  })

const main = async () => {
  const { child, port } = await spawnSimulator()
  const scope = Effect.runSync(Scope.make())
  try {
    const client = await Effect.runPromise(
      Scope.extend(
        RouterOsClient.make({ host: "127.0.0.1", port, user: "admin", password: Redacted.make("bench") }),
        scope
      )
    )
    const one = client.command("/system/identity/print")
    const batch = Array.from({ length: IN_FLIGHT })
    const sequential = Effect.forEach(batch, () => one, { discard: true })
    const concurrent = Effect.forEach(batch, () => one, { concurrency: "unbounded", discard: true })

    /** Commands/s of `run` (100 commands each) repeated for about WINDOW_MS. */
    const rate = async (run: Effect.Effect<void, unknown>) => {
      const started = performance.now()
      let commands = 0
      while (performance.now() - started < WINDOW_MS) {
        await Effect.runPromise(run)
        commands += IN_FLIGHT
      }
      return commands / ((performance.now() - started) / 1000)
    }

    await rate(sequential)
    await rate(concurrent)
    const rates = { sequential: [] as Array<number>, concurrent: [] as Array<number> }
    for (let i = 0; i < windows; i++) {
      rates.sequential.push(await rate(sequential))
      rates.concurrent.push(await rate(concurrent))
    }
    const seq = median(rates.sequential)
    const con = median(rates.concurrent)
    console.log(`sequential ${rates.sequential.map((r) => r.toFixed(0)).join(" ")} commands/s`)
    console.log(`${IN_FLIGHT} in flight ${rates.concurrent.map((r) => r.toFixed(0)).join(" ")} commands/s`)
    const metric = (value: number, unit: string, label: string) => ({ value, unit, label })
    BenchResult.emit({
      bench: "routeros",
      metrics: {
        sequential: metric(seq, "commands/s", "RouterOS API, one command at a time over one connection"),
        roundTrip: metric(1000 / seq, "ms", "RouterOS API round trip, one command at a time"),
        concurrent: metric(
          con,
          "commands/s",
          `RouterOS API, ${IN_FLIGHT} commands in flight with tags, one connection`
        ),
        speedup: metric(con / seq, "×", `${IN_FLIGHT} in flight / one at a time`)
      }
    })
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
    child.stdin?.end()
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
