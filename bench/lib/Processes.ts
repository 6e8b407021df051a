/**
 * Child processes of the benches: scripts run with vite-node or plain node, with an IPC channel, and the messages
 * they send.
 */
import * as ChildProcess from "node:child_process"
import * as Fs from "node:fs"
import * as Path from "node:path"
import type * as Upstream from "./scale-upstream.js"

export const root = Path.resolve(__dirname, "../..")
export const viteNode = Path.join(root, "node_modules/vite-node/vite-node.mjs")

/** A child with an IPC channel; `next(type)` waits for its next message of that type. */
export class Child<M extends { readonly type: string }> {
  private readonly waiting = new Map<string, Array<(message: M) => void>>()
  readonly exited: Promise<number | null>

  constructor(readonly process: ChildProcess.ChildProcess, readonly name: string) {
    process.on("message", (message: M) => {
      const waiters = this.waiting.get(message.type)
      const waiter = waiters?.shift()
      if (waiter !== undefined) waiter(message)
    })
    this.exited = new Promise((resolve) => process.on("exit", (code) => resolve(code)))
  }

  get pid(): number {
    return this.process.pid ?? -1
  }

  next<T extends M["type"]>(type: T, timeoutMs = 60_000): Promise<Extract<M, { readonly type: T }>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.name}: no "${type}" within ${timeoutMs} ms`)), timeoutMs)
      this.exited.then((code) => {
        clearTimeout(timer)
        reject(new Error(`${this.name} exited (code ${code}) while waiting for "${type}"`))
      })
      const list = this.waiting.get(type) ?? []
      list.push((message) => {
        clearTimeout(timer)
        resolve(message as Extract<M, { readonly type: T }>)
      })
      this.waiting.set(type, list)
    })
  }

  /** Sends `{ cmd }` and waits for the answer of type `type`. */
  ask<T extends M["type"]>(cmd: string, type: T, timeoutMs = 60_000): Promise<Extract<M, { readonly type: T }>> {
    const answer = this.next(type, timeoutMs)
    this.process.send({ cmd })
    return answer
  }

  kill(): void {
    if (this.process.exitCode === null && this.process.signalCode === null) this.process.kill("SIGKILL")
  }
}

const pipeOutput = (child: ChildProcess.ChildProcess, name: string) => {
  // the bench's stdout ends with its result line: children write to stderr only
  const forward = (chunk: Buffer) => process.stderr.write(chunk.toString().replace(/^(?=.)/gm, `[${name}] `))
  child.stdout?.on("data", forward)
  child.stderr?.on("data", forward)
}

/** Runs a TypeScript script of bench/ with vite-node, with IPC. */
export const forkTs = <M extends { readonly type: string }>(
  script: string,
  name: string,
  env: Record<string, string> = {}
): Child<M> => {
  const child = ChildProcess.fork(viteNode, [script], {
    cwd: root,
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe", "ipc"]
  })
  pipeOutput(child, name)
  return new Child<M>(child, name)
}

/**
 * Bundles a TypeScript script of bench/ with what it imports (the built dist of the packages, effect) into
 * bench/.out/<name>.mjs, as the `natpmp-bridge` bin is bundled, and runs it with plain node, with IPC: the process
 * holds only what the script needs (loading effect's hundreds of unbundled modules alone takes about 40 MB more).
 */
export const forkCompiled = async <M extends { readonly type: string }>(
  script: string,
  name: string,
  env: Record<string, string> = {},
  execArgv: ReadonlyArray<string> = []
): Promise<Child<M>> => {
  const outfile = await bundle(script)
  const child = ChildProcess.fork(outfile, [], {
    cwd: root,
    env: { ...process.env, ...env },
    execArgv: [...execArgv],
    stdio: ["ignore", "pipe", "pipe", "ipc"]
  })
  pipeOutput(child, name)
  return new Child<M>(child, name)
}

/** Bundles a TypeScript script of bench/ for plain node (see {@link forkCompiled}); the bundle's path. */
export const bundle = async (script: string): Promise<string> => {
  const esbuild = await import("esbuild")
  const outDir = Path.join(root, "bench", ".out")
  Fs.mkdirSync(outDir, { recursive: true })
  const outfile = Path.join(outDir, `${Path.basename(script, ".ts")}.mjs`)
  await esbuild.build({
    entryPoints: [Path.resolve(root, script)],
    outfile,
    format: "esm",
    platform: "node",
    target: "node20",
    bundle: true,
    // node built-ins and CommonJS dependencies that use require()
    banner: { js: "import { createRequire } from \"node:module\"; const require = createRequire(import.meta.url);" },
    logLevel: "warning"
  })
  return outfile
}

/**
 * Ends a child of a bench. One started with node options of its own (`selfExit`: a --cpu-prof profile to write) is
 * first asked to exit by itself (the bridge's `{ cmd: "exit" }`).
 */
export const endChild = async (child: Child<any> | undefined, selfExit: boolean): Promise<void> => {
  if (child !== undefined && selfExit && child.process.connected) {
    // a child that has exited meanwhile closed the channel: nothing to ask
    child.process.send({ cmd: "exit" }, () => {})
    await Promise.race([child.exited, sleep(30_000)])
  }
  child?.kill()
}

/**
 * The environment of bench/lib/scale-bridge.ts against the simulators of bench/lib/scale-upstream.ts (`ready`): LAN
 * clients in 127.64.0.0/16 on loopback, no announcements, no periodic reconciliation during the run; `extra`
 * options added.
 */
export const scaleBridgeEnv = (
  ready: Upstream.Ready,
  extra: Record<string, unknown> = {}
): Record<string, string> => ({
  ...bridgeEnv(),
  SCALE_BRIDGE: JSON.stringify({
    vpnGateway: ready.vpn.address,
    vpnGatewayPort: ready.vpn.port,
    mikrotik: ready.router,
    listen: { address: "127.0.0.1", port: 0 },
    allowedClients: ["127.64.0.0/16"],
    announce: false,
    reconcileInterval: "1 hour",
    ...extra
  })
})

/**
 * The environment the bridge runs with as deployed (the Dockerfile's `ENV`, the `Environment=` of
 * deploy/natpmp-bridge.service; a test keeps the three equal): a young generation of at most 16 MB, an old generation
 * of at most 512 MB (which V8 on 64-bit then lets grow to at most 1.4× what was live at its last collection, instead
 * of up to 4×), and two malloc arenas. Left to their defaults, V8 and glibc size a long-running bridge's memory for
 * throughput: tens of MB more RSS at 10,000 leases.
 */
export const DEPLOYED_ENV: Readonly<Record<string, string>> = {
  NODE_OPTIONS: "--max-semi-space-size=8 --max-old-space-size=512",
  MALLOC_ARENA_MAX: "2"
}

/** The environment benches start the bridge with: {@link DEPLOYED_ENV}, or none with BENCH_UNTUNED=1. */
export const bridgeEnv = (): Record<string, string> => process.env.BENCH_UNTUNED === "1" ? {} : { ...DEPLOYED_ENV }

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** The q-quantile (0..1) of numbers, nearest rank. */
export const quantile = (values: ReadonlyArray<number>, q: number): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]
}

export const median = (values: ReadonlyArray<number>): number => {
  if (values.length === 0) return Number.NaN
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
}

/** CPU time (user + system) of any process so far, in ms, from /proc (Linux; NaN elsewhere). */
export const cpuMsOf = (pid: number): number => {
  try {
    const stat = Fs.readFileSync(`/proc/${pid}/stat`, "utf8")
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    return ((Number(fields[11]) + Number(fields[12])) * 1000) / clockTicks
  } catch {
    return Number.NaN
  }
}

/** The kernel's clock ticks per second, the unit of /proc's CPU times. */
const clockTicks = (() => {
  try {
    return Number(ChildProcess.execFileSync("getconf", ["CLK_TCK"], { encoding: "utf8" }).trim()) || 100
  } catch {
    return 100
  }
})()
