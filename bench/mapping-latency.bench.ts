/**
 * New-mapping latency added by the bridge, and its router API round trips.
 *
 *   npm run build && node node_modules/vite-node/vite-node.mjs bench/mapping-latency.bench.ts
 *
 * The bridge and its simulators (RouterOS 7 router, ProtonVPN-like VPN gateway) run in a child process
 * (bench/support/bridge-process.ts, bundled like the bin, default log level INFO as shipped). This process is the
 * LAN: 1, 10 or 100 concurrent clients (plain UDP sockets on 127.0.0.20–29), each asking for a new TCP mapping,
 * waiting for the answer, deleting it (untimed) and starting over. The same number of new mappings is then done directly by the
 * child against its simulators, with the same concurrency over one NAT-PMP client and one RouterOS connection like
 * the bridge's: VPN map, dstnat print, rule add (then rule remove and VPN unmap, untimed). The latency added by the
 * bridge is the client-observed percentile minus the direct one (p50 and p99).
 *
 * Also reported: the CPU time the bridge adds per new mapping + delete (the child's CPU through the bridge minus its
 * CPU doing the same upstream work directly), steadier than latencies on a loaded machine.
 *
 * Round trips come from the router simulator's command log: one new mapping, its renewal, its delete, and one
 * reconciliation pass with 1,000 rules of someone else on the router.
 */
import * as Dgram from "node:dgram"
import * as BenchResult from "./lib/BenchResult.js"
import { bridgeEnv, quantile } from "./lib/Processes.js"
import { bundled, round, start } from "./support/Child.js"

const LEVELS: ReadonlyArray<{ readonly concurrency: number; readonly count: number }> = [
  { concurrency: 1, count: 400 },
  { concurrency: 10, count: 1000 },
  { concurrency: 100, count: 2000 }
]
const CLIENTS = 10
const TIMEOUT_MS = 3000

const child = await start(
  await bundled("bench/support/bridge-process.ts", [
    JSON.stringify({ allowedClients: ["127.0.0.16/28"], clientQuota: 1000 })
  ]),
  bridgeEnv()
)
const bridge: { readonly address: string; readonly port: number } = child.ready

/** A LAN client: one socket, one request at a time. */
const openClient = (address: string): Promise<
  { readonly map: (internalPort: number, lifetime: number) => Promise<number>; readonly close: () => void }
> =>
  new Promise((resolve, reject) => {
    const socket = Dgram.createSocket("udp4")
    let pending: { readonly port: number; readonly done: (resultCode: number) => void } | undefined
    socket.on("message", (message) => {
      if (message.length < 16 || message[1] !== 130 || pending === undefined) return
      if (message.readUInt16BE(8) !== pending.port) return
      const done = pending.done
      pending = undefined
      done(message.readUInt16BE(2))
    })
    socket.once("error", reject)
    socket.bind(0, address, () =>
      resolve({
        map: (internalPort, lifetime) =>
          new Promise((resolveMap) => {
            const request = Buffer.alloc(12)
            request[1] = 2
            request.writeUInt16BE(internalPort, 4)
            request.writeUInt32BE(lifetime, 8)
            const timer = setTimeout(() => {
              pending = undefined
              resolveMap(-1)
            }, TIMEOUT_MS)
            pending = {
              port: internalPort,
              done: (resultCode) => {
                clearTimeout(timer)
                resolveMap(resultCode)
              }
            }
            socket.send(request, bridge.port, bridge.address)
          }),
        close: () => socket.close()
      }))
  })

const clients = await Promise.all(Array.from({ length: CLIENTS }, (_, i) => openClient(`127.0.0.${20 + i}`)))
let nextPort = 2000

/** `count` new mappings (each deleted afterwards, untimed) by `concurrency` workers; their latencies in ms. */
const throughBridge = async (concurrency: number, count: number) => {
  const latencies: Array<number> = []
  let failures = 0
  let left = count
  const worker = async (index: number) => {
    // one socket per worker: concurrency 100 opens more sockets on the same 10 addresses
    const client = index < CLIENTS ? clients[index] : await openClient(`127.0.0.${20 + (index % CLIENTS)}`)
    while (left > 0) {
      left--
      const port = nextPort++
      const started = performance.now()
      const result = await client.map(port, 60)
      const elapsed = performance.now() - started
      if (result === 0) latencies.push(elapsed)
      else failures++
      await client.map(port, 0)
    }
    if (index >= CLIENTS) client.close()
  }
  await Promise.all(Array.from({ length: concurrency }, (_, index) => worker(index)))
  return { latencies, failures }
}

const metrics: Record<string, BenchResult.Metric> = {}
await throughBridge(10, 300) // warm-up of both sides
await child.command("direct 10 300")
for (const { concurrency, count } of LEVELS) {
  const cpuBefore: number = await child.command("cpu")
  const bridged = await throughBridge(concurrency, count)
  const cpuBetween: number = await child.command("cpu")
  const direct: Array<number> = await child.command(`direct ${concurrency} ${count}`)
  const cpuAfter: number = await child.command("cpu")
  // CPU of the child (bridge + simulators) through the bridge, minus the same upstream work done directly
  const ownCpu = ((cpuBetween - cpuBefore) - (cpuAfter - cpuBetween)) * 1000 / count
  console.log(`${concurrency} concurrent: the bridge's own CPU per new mapping + delete ${ownCpu.toFixed(0)} µs`)
  metrics[`bridge_cpu_c${concurrency}`] = {
    value: Math.round(ownCpu),
    unit: "µs",
    label: `CPU the bridge adds per new mapping + delete, ${concurrency} concurrent client(s)`
  }
  for (const p of [50, 99]) {
    const observed = quantile(bridged.latencies, p / 100)
    const upstream = quantile(direct, p / 100)
    console.log(
      `${concurrency} concurrent: p${p} through the bridge ${observed.toFixed(3)} ms, upstream work direct ` +
        `${upstream.toFixed(3)} ms, added ${(observed - upstream).toFixed(3)} ms` +
        (bridged.failures > 0 ? ` (${bridged.failures} requests failed)` : "")
    )
    metrics[`added_p${p}_c${concurrency}`] = {
      value: round(observed - upstream),
      unit: "ms",
      label: `new-mapping latency added by the bridge, p${p}, ${concurrency} concurrent client(s)`
    }
    metrics[`observed_p${p}_c${concurrency}`] = {
      value: round(observed),
      unit: "ms",
      label: `new-mapping latency seen by the client, p${p}, ${concurrency} concurrent client(s)`
    }
    metrics[`direct_p${p}_c${concurrency}`] = {
      value: round(upstream),
      unit: "ms",
      label: `the same upstream work done directly, p${p}, ${concurrency} concurrent`
    }
  }
  if (bridged.failures > 0) {
    metrics[`failures_c${concurrency}`] = {
      value: bridged.failures,
      unit: "requests",
      label: "new mappings not granted"
    }
  }
}

// router API round trips
const total = (counts: Record<string, number>) => Object.values(counts).reduce((sum, n) => sum + n, 0)
const client = clients[0]
await child.command("commands")
const mapped = await client.map(5555, 60)
const newMapping = total(await child.command("commands"))
await client.map(5555, 60)
const renewal = total(await child.command("commands"))
await client.map(5555, 0)
const deletion = total(await child.command("commands"))
await child.command("seed 1000")
await child.command("commands")
await child.command("reconcile")
const reconcile: Record<string, number> = await child.command("commands")
console.log(
  `router API round trips (result ${mapped}): new mapping ${newMapping}, renewal ${renewal}, delete ${deletion}, ` +
    `reconcile with 1,000 rules ${total(reconcile)} (${JSON.stringify(reconcile)})`
)
metrics.router_new = { value: newMapping, unit: "round trips", label: "router API round trips per new mapping" }
metrics.router_renewal = { value: renewal, unit: "round trips", label: "router API round trips per renewal" }
metrics.router_delete = { value: deletion, unit: "round trips", label: "router API round trips per delete" }
metrics.router_reconcile_1000 = {
  value: total(reconcile),
  unit: "round trips",
  label: "router API round trips per reconciliation, 1,000 rules on the router"
}

for (const each of clients) each.close()
await child.stop()
BenchResult.emit({ bench: "mapping-latency", metrics })
