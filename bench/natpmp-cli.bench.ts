/**
 * One-shot `natpmp map` (the built bin, packages/cli/dist/bin/natpmp.js) against `natpmpc -a` (Debian's libnatpmp
 * client) and a bare `node -e 0`, all against the same NAT-PMP gateway simulator, each run as a fresh process:
 * wall time from spawn to exit. The three commands take turns, BENCH_CLI_RUNS times each (default 25, 5 in quick
 * mode); medians, and the ratios natpmp/node and natpmp/natpmpc.
 *
 *   node node_modules/vite-node/vite-node.mjs bench/natpmp-cli.bench.ts
 *
 * natpmpc always talks to port 5351, so the simulator listens on port 5351 of a dedicated loopback address
 * (127.77.53.51, then the next ones if taken). natpmpc missing (or port 5351 taken everywhere): its part is
 * skipped with a message and the natpmp/natpmpc ratio is left out. Both clients ask for the public address before
 * mapping (natpmpc always does; so does `natpmp map`).
 */
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as BenchResult from "./lib/BenchResult.js"
import { median, root } from "./lib/Processes.js"

const quick = process.env.BENCH_QUICK === "1"
const runs = Number(process.env.BENCH_CLI_RUNS ?? (quick ? 5 : 25))
const natpmp = Path.join(root, "packages/cli/dist/bin/natpmp.js")

const findNatpmpc = (): string | undefined =>
  ["/usr/bin/natpmpc", "/usr/local/bin/natpmpc", "/usr/sbin/natpmpc"].find((path) => Fs.existsSync(path))

/** Wall time of one process in ms; fails when it exits non-zero. */
const time = (command: string, args: ReadonlyArray<string>): Promise<number> =>
  new Promise((resolve, reject) => {
    const started = performance.now()
    ChildProcess.execFile(command, args, { timeout: 20_000 }, (error, stdout, stderr) => {
      const elapsed = performance.now() - started
      if (error !== null) reject(new Error(`${command} ${args.join(" ")}: ${error.message} ${stdout} ${stderr}`))
      else resolve(elapsed)
    })
  })

/** A gateway simulator on <address>:5351 for natpmpc, or on an ephemeral port when none is free. */
const startGateway = async (scope: Scope.CloseableScope, wantPort5351: boolean) => {
  if (wantPort5351) {
    for (let last = 51; last < 61; last++) {
      const address = `127.77.53.${last}`
      const exit = await Effect.runPromiseExit(
        Scope.extend(NatPmpGatewaySimulator.make({ mode: "rfc", address, port: 5351 }), scope)
      )
      if (Exit.isSuccess(exit)) return exit.value
      console.log(`${address}:5351 is taken, trying the next address`)
    }
  }
  return Effect.runPromise(Scope.extend(NatPmpGatewaySimulator.make({ mode: "rfc", address: "127.0.0.1" }), scope))
}

const main = async () => {
  if (!Fs.existsSync(natpmp)) {
    console.error(`${natpmp} is missing: run npm run build first`)
    process.exit(1)
  }
  const natpmpc = findNatpmpc()
  if (natpmpc === undefined) console.log("natpmpc not found (Debian package natpmpc): its comparison is skipped")
  const scope = Effect.runSync(Scope.make())
  try {
    const gateway = await startGateway(scope, natpmpc !== undefined)
    const withNatpmpc = natpmpc !== undefined && gateway.port === 5351
    if (natpmpc !== undefined && !withNatpmpc) console.log("no free port 5351: the natpmpc comparison is skipped")
    console.log(`gateway simulator on ${gateway.address}:${gateway.port}; ${runs} runs of each command`)

    const times = { node: [] as Array<number>, natpmp: [] as Array<number>, natpmpc: [] as Array<number> }
    let port = 30000
    // one warm-up of each (file cache), not counted
    await time(process.execPath, ["-e", "0"])
    await time(process.execPath, [natpmp, "map", "-g", gateway.address, "--port", String(gateway.port), "0", "29999"])
    for (let run = 0; run < runs; run++) {
      times.node.push(await time(process.execPath, ["-e", "0"]))
      const p = String(port++)
      times.natpmp.push(
        await time(process.execPath, [natpmp, "map", "-g", gateway.address, "--port", String(gateway.port), p, p])
      )
      if (withNatpmpc) {
        const q = String(port++)
        times.natpmpc.push(await time(natpmpc!, ["-g", gateway.address, "-a", q, q, "tcp", "3600"]))
      }
    }
    const mappings = await Effect.runPromise(gateway.mappings)
    const expected = runs * (withNatpmpc ? 2 : 1) + 1
    if (mappings.length !== expected) {
      console.error(`the gateway holds ${mappings.length} mappings, expected ${expected}`)
      process.exit(1)
    }
    const m = { node: median(times.node), natpmp: median(times.natpmp), natpmpc: median(times.natpmpc) }
    console.log(
      `medians: node -e 0 ${m.node.toFixed(1)} ms, natpmp map ${m.natpmp.toFixed(1)} ms` +
        (withNatpmpc ? `, natpmpc -a ${m.natpmpc.toFixed(1)} ms` : "")
    )
    const metric = (value: number, unit: string, label: string) => ({ value, unit, label })
    BenchResult.emit({
      bench: "natpmp-cli",
      metrics: {
        natpmp: metric(m.natpmp, "ms", `\`natpmp map\` one-shot wall time (median of ${runs})`),
        node: metric(m.node, "ms", `bare \`node -e 0\` wall time (median of ${runs})`),
        ...(withNatpmpc
          ? { natpmpc: metric(m.natpmpc, "ms", `\`natpmpc -a\` (libnatpmp, C) wall time (median of ${runs})`) }
          : {}),
        natpmpOverNode: metric(m.natpmp / m.node, "×", "natpmp map / node -e 0 (target ≤ 2×)"),
        ...(withNatpmpc
          ? { natpmpOverNatpmpc: metric(m.natpmp / m.natpmpc, "×", "natpmp map / natpmpc -a") }
          : {})
      }
    })
  } finally {
    await Effect.runPromise(Scope.close(scope, Exit.void))
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
