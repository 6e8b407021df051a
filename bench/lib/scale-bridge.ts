/**
 * The bridge of the scale bench in its own process (so its RSS and CPU time are the bridge's alone): the same
 * `Bridge.layer` that `natpmp-bridge serve` runs, bundled by the bench with esbuild from the packages' dist (as the
 * bin is) and run by plain node.
 *
 * Options come as JSON in SCALE_BRIDGE (programmatic `BridgeOptions`). Started with an IPC channel: sends
 * `{ type: "ready", port }`, answers `{ cmd: "stats" }` and `{ cmd: "reconcile" }` (runs one reconciliation and
 * reports the process CPU time it took), and shuts the bridge down on `{ cmd: "stop" }`.
 */
import { Bridge, BridgeConfig, MappingService, NatPmpServer } from "@natpmp-bridge/server"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as V8 from "node:v8"

export interface Ready {
  readonly type: "ready"
  readonly port: number
}

export interface Stats {
  readonly type: "stats"
  readonly rss: number
  readonly heapUsed: number
  /** V8 heap reserved (all spaces), of which the young generation (new space). */
  readonly heapTotal: number
  readonly newSpace: number
  /** Memory outside the V8 heap that V8 knows of (Buffers, ArrayBuffers). */
  readonly external: number
  /** Of the RSS, the pages of files (node's own code, shared) and anonymous memory (heap, malloc); 0 off Linux. */
  readonly rssFile: number
  readonly rssAnon: number
  /** process.cpuUsage() user + system, microseconds. */
  readonly cpu: number
  readonly leases: number
  readonly answered: number
  readonly overloaded: number
}

export interface Reconciled {
  readonly type: "reconciled"
  /** CPU time of the process during the pass, microseconds. */
  readonly cpu: number
  readonly wallMs: number
  readonly removed: number
  readonly recreated: number
  readonly fixed: number
  readonly error?: string
}

type Message = Ready | Stats | Reconciled | { readonly type: "snapshot"; readonly file: string } | {
  readonly type: "stopped"
  readonly wallMs: number
}

const send = (message: Message) => process.send?.(message)
const cpuNow = () => {
  const usage = process.cpuUsage()
  return usage.user + usage.system
}

const main = async () => {
  const options = JSON.parse(process.env.SCALE_BRIDGE ?? "{}") as BridgeConfig.BridgeOptions
  const config = BridgeConfig.make({ ...options, logLevel: LogLevel.Warning })
  if (config._tag === "Left") {
    console.error(config.left.message)
    process.exit(1)
  }
  const scope = Effect.runSync(Scope.make())
  const context = await Effect.runPromise(Layer.buildWithScope(Bridge.layer(config.right), scope))
  const server = Context.get(context, NatPmpServer.NatPmpServer)
  const mapping = Context.get(context, MappingService.MappingService)

  /** RssFile and RssAnon of /proc/self/status, in bytes. */
  const residentKinds = (): { readonly rssFile: number; readonly rssAnon: number } => {
    const status = Fs.existsSync("/proc/self/status") ? Fs.readFileSync("/proc/self/status", "utf8") : ""
    const kB = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, "m").exec(status)?.[1] ?? 0) * 1024
    return { rssFile: kB("RssFile"), rssAnon: kB("RssAnon") }
  }

  process.on("message", (message: { readonly cmd?: string }) => {
    switch (message.cmd) {
      case "gc":
      case "stats": {
        // "gc": a full collection first (needs --expose-gc), to tell live memory from garbage
        const gc = (globalThis as { gc?: () => void }).gc
        if (message.cmd === "gc" && gc !== undefined) gc()
        Effect.runPromise(Effect.all({ leases: mapping.leases, stats: server.stats })).then(({ leases, stats }) => {
          const memory = process.memoryUsage()
          const newSpace = V8.getHeapSpaceStatistics().find((space) => space.space_name === "new_space")
          send({
            type: "stats",
            rss: memory.rss,
            heapUsed: memory.heapUsed,
            heapTotal: memory.heapTotal,
            newSpace: newSpace?.space_size ?? 0,
            external: memory.external,
            ...residentKinds(),
            cpu: cpuNow(),
            leases: leases.length,
            answered: stats.answered,
            overloaded: stats.overloaded
          })
        })
        return
      }
      case "snapshot": {
        // a heap snapshot for profiling: SCALE_SNAPSHOT names the file
        send({ type: "snapshot", file: V8.writeHeapSnapshot(process.env.SCALE_SNAPSHOT) })
        return
      }
      case "reconcile": {
        const cpu = cpuNow()
        const started = performance.now()
        Effect.runPromise(Effect.either(mapping.reconcile)).then((result) => {
          const base = { type: "reconciled" as const, cpu: cpuNow() - cpu, wallMs: performance.now() - started }
          send(
            result._tag === "Right"
              ? { ...base, ...result.right }
              : { ...base, removed: 0, recreated: 0, fixed: 0, error: result.left.message }
          )
        })
        return
      }
      case "exit": {
        // ends the process at once (a --cpu-prof profile is written)
        process.exit(0)
        return
      }
      case "stop": {
        const started = performance.now()
        Effect.runPromise(Scope.close(scope, Exit.void)).then(() => {
          send({ type: "stopped", wallMs: performance.now() - started })
          process.exit(0)
        })
        return
      }
    }
  })
  process.on("disconnect", () => process.exit(0))
  send({ type: "ready", port: server.port })
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
