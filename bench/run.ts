/**
 * The benchmark runner: runs every `bench/*.bench.ts` (or those named on the command line) BENCH_RUNS times
 * (default 3, 1 with BENCH_QUICK=1), each run a separate process, reads the BENCH_RESULT line each run prints last,
 * and prints a markdown table (median and min–max of every metric) with the date, cores and node version. Writes
 * bench/results.json and bench/results.md. Needs the build (`npm run build`).
 *
 *   node node_modules/vite-node/vite-node.mjs bench/run.ts [--vitest] [name ...]
 *
 * --vitest: first runs the packages' vitest benches (`vitest bench --run`; not in quick mode).
 * BENCH_TIMEOUT: seconds one run may take (default 600). Exit code 1 when a run failed.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as BenchResult from "./lib/BenchResult.js"

const root = Path.resolve(__dirname, "..")
const benchDir = Path.join(root, "bench")
const quick = process.env.BENCH_QUICK === "1"
const runs = Math.max(1, Number(process.env.BENCH_RUNS ?? (quick ? 1 : 3)) || 1)
const timeoutMs = Math.max(1, Number(process.env.BENCH_TIMEOUT ?? 600) || 600) * 1000

const args = process.argv.slice(2)
const withVitest = args.includes("--vitest")
const wanted = args.filter((arg) => !arg.startsWith("--")).map((arg) => arg.replace(/(\.bench)?(\.ts)?$/, ""))

const available = Fs.readdirSync(benchDir).filter((file) => file.endsWith(".bench.ts")).map((file) =>
  file.slice(0, -".bench.ts".length)
).sort()
const unknown = wanted.filter((name) => !available.includes(name))
if (unknown.length > 0) {
  console.error(`unknown bench(es): ${unknown.join(", ")}; available: ${available.join(", ")}`)
  process.exit(2)
}
const names = wanted.length > 0 ? wanted : available

const commandOf = (name: string) =>
  `${quick ? "BENCH_QUICK=1 " : ""}node node_modules/vite-node/vite-node.mjs bench/${name}.bench.ts`

/** Runs one bench once: its stdout goes through (indented), its stderr too. */
const runOnce = (name: string): Promise<{ readonly stdout: string; readonly code: number | null; ms: number }> =>
  new Promise((resolve) => {
    const started = Date.now()
    const child = ChildProcess.spawn(
      process.execPath,
      [Path.join(root, "node_modules/vite-node/vite-node.mjs"), Path.join("bench", `${name}.bench.ts`)],
      { cwd: root, stdio: ["ignore", "pipe", "pipe"], env: process.env }
    )
    let stdout = ""
    child.stdout.on("data", (chunk: Buffer) => {
      stdout += chunk.toString()
      process.stdout.write(chunk.toString().replace(/^(?=.)/gm, "    "))
    })
    child.stderr.on("data", (chunk: Buffer) => process.stderr.write(chunk.toString().replace(/^(?=.)/gm, "    ")))
    const timer = setTimeout(() => {
      console.error(`  ${name}: still running after ${timeoutMs / 1000} s, killed`)
      child.kill("SIGTERM")
      setTimeout(() => child.kill("SIGKILL"), 5000).unref()
    }, timeoutMs)
    child.on("close", (code) => {
      clearTimeout(timer)
      resolve({ stdout, code, ms: Date.now() - started })
    })
  })

const runVitest = (): Promise<number | null> =>
  new Promise((resolve) => {
    const child = ChildProcess.spawn(
      process.execPath,
      [Path.join(root, "node_modules/vitest/vitest.mjs"), "bench", "--run"],
      { cwd: root, stdio: "inherit", env: process.env }
    )
    child.on("close", resolve)
  })

const machine = () => {
  const cpus = Os.cpus()
  return {
    date: new Date().toISOString(),
    cores: Os.availableParallelism(),
    cpu: cpus[0]?.model.trim() ?? "unknown",
    node: process.version,
    platform: `${Os.type()} ${Os.release()} ${Os.arch()}`,
    runs,
    quick
  }
}

const main = async () => {
  let failed = false
  if (withVitest && !quick) {
    console.log("== vitest bench --run (the packages' benches)")
    const code = await runVitest()
    if (code !== 0) {
      console.error(`vitest bench exited with ${code}`)
      failed = true
    }
  }
  const rows: Array<BenchResult.Row> = []
  const failures: Array<{ readonly bench: string; readonly run: number; readonly reason: string }> = []
  const raw: Record<string, Array<BenchResult.BenchResult>> = {}
  for (const name of names) {
    const results: Array<BenchResult.BenchResult> = []
    for (let run = 1; run <= runs; run++) {
      console.log(`== ${name} run ${run}/${runs}: ${commandOf(name)}`)
      const { code, ms, stdout } = await runOnce(name)
      const parsed = BenchResult.parse(stdout)
      if (code !== 0 || "error" in parsed) {
        const reason = code !== 0 ? `exit code ${code}` : "error" in parsed ? parsed.error : ""
        console.error(`  ${name} run ${run}: FAILED (${reason})`)
        failures.push({ bench: name, run, reason })
        continue
      }
      console.log(`  ${name} run ${run}: ${(ms / 1000).toFixed(1)} s`)
      results.push(parsed.result)
    }
    raw[name] = results
    rows.push(...BenchResult.aggregate(name, commandOf(name), results))
  }

  const info = machine()
  const header = `Measured ${info.date.slice(0, 10)} (${info.date.slice(11, 16)} UTC) on ${info.cores} cores ` +
    `(${info.cpu}), node ${info.node}, ${info.platform}; ${runs} run(s) of each bench, each run a separate ` +
    `process; median and min–max over the runs${quick ? "; QUICK mode (BENCH_QUICK=1: smaller loads)" : ""}. ` +
    "Built first with `npm run build`."
  const markdown = [
    header,
    "",
    BenchResult.table(rows),
    ...(failures.length === 0
      ? []
      : ["", "Failed runs:", ...failures.map((f) => `- ${f.bench} run ${f.run}: ${f.reason}`)]),
    ""
  ].join("\n")
  Fs.writeFileSync(Path.join(benchDir, "results.md"), markdown)
  Fs.writeFileSync(
    Path.join(benchDir, "results.json"),
    JSON.stringify({ ...info, rows, failures, results: raw }, null, 2) + "\n"
  )
  console.log("\n" + markdown)
  console.log("written: bench/results.md, bench/results.json")
  process.exit(failed || failures.length > 0 ? 1 : 0)
}

main()
