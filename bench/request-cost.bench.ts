/**
 * The bridge's own CPU time per request, by kind: PUBLIC_ADDRESS, new mapping, renewal, delete.
 *
 *   npm run build && node node_modules/vite-node/vite-node.mjs bench/request-cost.bench.ts
 *
 * Three processes, as in a deployment where the router and the VPN gateway are other machines: the upstream
 * simulators (bench/lib/scale-upstream.ts: RouterOS 7, ProtonVPN-like gateway), the bridge alone (bundled from
 * the built packages like the bin, bench/lib/scale-bridge.ts, log level WARN so that no request line is written),
 * and this one, the LAN: COST_CLIENTS clients (127.64.x.y, one UDP socket each) keeping WINDOW requests in flight.
 * Each phase is timed by the bridge process's CPU time (user + system, from /proc): COST_COUNT new mappings, then
 * a renewal of each, then a delete of each; PUBLIC_ADDRESS requests last. Every answer is checked (result 0).
 *
 * COST_COUNT (default 4,000; BENCH_QUICK=1: 500), COST_CLIENTS (default 500), COST_WINDOW (default 10);
 * COST_BRIDGE_NODE_OPTIONS: node options of the bridge process (e.g. `--cpu-prof --cpu-prof-dir=prof`); COST_PHASES:
 * some of `new,renewal,delete,public` (e.g. `new` for a profile of new mappings alone).
 */
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Dgram from "node:dgram"
import * as BenchResult from "./lib/BenchResult.js"
import type { Child } from "./lib/Processes.js"
import { cpuMsOf, endChild, forkCompiled, forkTs, scaleBridgeEnv, sleep } from "./lib/Processes.js"
import type * as Bridge from "./lib/scale-bridge.js"
import type * as Upstream from "./lib/scale-upstream.js"

const quick = process.env.BENCH_QUICK === "1"
const count = Number(process.env.COST_COUNT ?? (quick ? 500 : 4000))
const clientCount = Math.min(count, Number(process.env.COST_CLIENTS ?? 500))
const window = Number(process.env.COST_WINDOW ?? 10)
const TIMEOUT_MS = 5000

type UpstreamMessage = Upstream.Ready | Upstream.Counters
type BridgeMessage = Bridge.Ready | Bridge.Stats

const clientAddress = (index: number) => `127.64.${1 + Math.floor(index / 250)}.${1 + (index % 250)}`

const main = async () => {
  const upstream = forkTs<UpstreamMessage>("bench/lib/scale-upstream.ts", "upstream")
  let bridge: Child<BridgeMessage> | undefined
  const sockets: Array<Dgram.Socket> = []
  try {
    const ready = await upstream.next("ready")
    bridge = await forkCompiled<BridgeMessage>(
      "bench/lib/scale-bridge.ts",
      "bridge",
      scaleBridgeEnv(ready, { clientQuota: 1000 }),
      (process.env.COST_BRIDGE_NODE_OPTIONS ?? "").split(" ").filter((option) => option !== "")
    )
    const port = (await bridge.next("ready")).port
    const bridgePid = bridge.pid

    // one pending request per socket at a time: the answer is matched by socket
    const waiting = new Map<number, (bytes: Buffer) => void>()
    for (let index = 0; index < clientCount; index++) {
      const socket = Dgram.createSocket("udp4")
      socket.on("message", (bytes) => waiting.get(index)?.(bytes))
      socket.on("error", () => {})
      await new Promise<void>((resolve) => socket.bind({ address: clientAddress(index), port: 0 }, resolve))
      sockets.push(socket)
    }
    const ask = (client: number, request: NatPmpMessage.Request): Promise<NatPmpMessage.Response> =>
      new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiting.delete(client)
          reject(new Error(`no answer within ${TIMEOUT_MS} ms`))
        }, TIMEOUT_MS)
        waiting.set(client, (bytes) => {
          const decoded = NatPmpMessage.decodeResponse(bytes)
          if (decoded._tag === "Left") return
          clearTimeout(timer)
          waiting.delete(client)
          resolve(decoded.right)
        })
        sockets[client].send(NatPmpMessage.encodeRequest(request), port, "127.0.0.1")
      })

    /** `total` requests, `window` at a time (never two on one socket); the bridge's CPU µs per request. */
    const phase = async (name: string, total: number, request: (i: number) => NatPmpMessage.Request) => {
      let next = 0
      let failures = 0
      const cpuBefore = cpuMsOf(bridgePid)
      const started = performance.now()
      const worker = async () => {
        for (let i = next++; i < total; i = next++) {
          // request i goes out from socket i % clientCount; lanes never share a socket while window <= clientCount
          const client = i % clientCount
          const response = await ask(client, request(i)).catch(() => undefined)
          if (response === undefined || response.resultCode !== 0) failures++
        }
      }
      await Promise.all(Array.from({ length: Math.min(window, clientCount) }, () => worker()))
      const wallMs = performance.now() - started
      const cpuUs = (cpuMsOf(bridgePid) - cpuBefore) * 1000 / total
      console.log(
        `${name}: ${total} in ${(wallMs / 1000).toFixed(2)} s, bridge CPU ${cpuUs.toFixed(0)} µs per request` +
          (failures > 0 ? `, ${failures} failed` : "")
      )
      if (failures > 0) throw new Error(`${name}: ${failures} request(s) failed`)
      return cpuUs
    }

    const internalPort = (i: number) => 20000 + Math.floor(i / clientCount)
    const map = (lifetime: number) => (i: number): NatPmpMessage.Request => ({
      _tag: "MapRequest",
      protocol: "tcp",
      internalPort: internalPort(i),
      suggestedExternalPort: 0,
      lifetime
    })
    await sleep(1000)
    // warm-up: the JIT has seen every path before anything is timed
    const warm = Math.min(count, 500)
    await phase(
      "warm-up new mappings",
      warm,
      (i) => ({ ...map(60)(i), internalPort: 19000 - Math.floor(i / clientCount) })
    )
    await phase("warm-up deletes", warm, (i) => ({ ...map(0)(i), internalPort: 19000 - Math.floor(i / clientCount) }))
    // COST_PHASES limits the run to some phases (e.g. `new` for a profile of new mappings alone)
    const phases = (process.env.COST_PHASES ?? "new,renewal,delete,public").split(",")
    const run = (key: string, name: string, total: number, request: (i: number) => NatPmpMessage.Request) =>
      phases.includes(key) ? phase(name, total, request) : Promise.resolve(Number.NaN)
    const created = await run("new", "new mapping", count, map(60))
    const renewed = await run("renewal", "renewal", count, map(60))
    const deleted = await run("delete", "delete", count, map(0))
    const publicAddress = await run("public", "public address", count * 5, () => ({ _tag: "PublicAddressRequest" }))
    const metric = (value: number, label: string) => ({ value: Math.round(value), unit: "µs", label })
    const metrics = {
      newMapping: metric(created, `bridge CPU per new mapping (${window} in flight)`),
      renewal: metric(renewed, "bridge CPU per renewal"),
      delete: metric(deleted, "bridge CPU per delete"),
      publicAddress: { value: Math.round(publicAddress * 10) / 10, unit: "µs", label: "bridge CPU per PUBLIC_ADDRESS" }
    }
    BenchResult.emit({
      bench: "request-cost",
      // the phases not run (COST_PHASES) are left out
      metrics: Object.fromEntries(Object.entries(metrics).filter(([, each]) => Number.isFinite(each.value)))
    })
  } finally {
    for (const socket of sockets) socket.close()
    await endChild(bridge, process.env.COST_BRIDGE_NODE_OPTIONS !== undefined)
    upstream.kill()
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error instanceof Error ? error.message : error)
  process.exit(1)
})
