/**
 * The bridge holding 10,000 leases: 5,000 LAN clients (127.64.x.y, each its own UDP socket) × TCP and UDP of one
 * internal port, against a ProtonVPN-like NAT-PMP gateway simulator (60 s lifetimes) and the RouterOS simulator,
 * renewing every 45 s (3/4 of the lifetime). Three processes: the upstream simulators, the bridge (bundled from
 * the built packages like the bin and run by plain node, so its RSS and CPU time are the bridge's), and this one (the load).
 *
 *   node node_modules/vite-node/vite-node.mjs bench/scale.bench.ts
 *
 * Timeline: the new mappings are spread over the first 3/4 of a renewal period (about 300/s), each lease is then
 * renewed every period (steady 10,000 / 45 s = 222 renewals/s) for SCALE_ROUNDS rounds (default 2). In the quiet
 * quarter period before the first renewal: RSS at 10,000 leases and 3 reconciliation passes (CPU time of the
 * bridge process, router commands per pass). One more pass runs in the middle of every round, under load. The
 * bridge's own periodic reconciliation is set to 1 h so that only these passes run.
 *
 * A request counts "in time" when answered with success within 2 s (the bridge's answer bound) of its first send;
 * clients retransmit like RFC clients (250 ms, doubling). A renewal must also keep its public port.
 *
 * The bridge runs with the environment it is deployed with (`DEPLOYED_ENV` of bench/lib/Processes.ts: the node
 * options and malloc arenas of the Dockerfile and the systemd unit); BENCH_UNTUNED=1 leaves node's and glibc's defaults,
 * SCALE_BRIDGE_NODE_OPTIONS adds node options of its own (e.g. `--cpu-prof --cpu-prof-dir=prof`).
 *
 * SCALE_CLIENTS (5000), SCALE_LIFETIME (60 s), SCALE_ROUNDS (2), SCALE_CREATE_SECONDS (the ramp-up, default 3/4 of
 * a period: 33.75 s, about 300 new mappings/s); BENCH_QUICK=1: 500 clients, 20 s, 1 round.
 */
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Dgram from "node:dgram"
import * as BenchResult from "./lib/BenchResult.js"
import type { Child } from "./lib/Processes.js"
import { cpuMsOf, endChild, forkCompiled, forkTs, median, quantile, scaleBridgeEnv, sleep } from "./lib/Processes.js"
import type * as Bridge from "./lib/scale-bridge.js"
import type * as Upstream from "./lib/scale-upstream.js"

const quick = process.env.BENCH_QUICK === "1"
const clients = Number(process.env.SCALE_CLIENTS ?? (quick ? 500 : 5000))
const lifetime = Number(process.env.SCALE_LIFETIME ?? (quick ? 20 : 60))
const rounds = Number(process.env.SCALE_ROUNDS ?? (quick ? 1 : 2))
const periodMs = lifetime * 750
/** The new mappings are spread over this time (default 3/4 of a renewal period). */
const createMs = Number(process.env.SCALE_CREATE_SECONDS ?? lifetime * 0.75 * 0.75) * 1000
const leaseCount = clients * 2
const ANSWER_BOUND_MS = 2000
const GIVE_UP_MS = 5000
const MB = 1024 * 1024

type UpstreamMessage = Upstream.Ready | Upstream.Counters
type BridgeMessage =
  | Bridge.Ready
  | Bridge.Stats
  | Bridge.Reconciled
  | { readonly type: "stopped"; readonly wallMs: number }
  | { readonly type: "snapshot"; readonly file: string }

const memoryLine = (stats: Bridge.Stats) =>
  `RSS ${(stats.rss / MB).toFixed(1)} MB, heap ${(stats.heapUsed / MB).toFixed(1)} MB used of ${
    (stats.heapTotal / MB).toFixed(1)
  } MB (new space ${(stats.newSpace / MB).toFixed(1)} MB), external ${(stats.external / MB).toFixed(1)} MB; RSS of ` +
  `files ${(stats.rssFile / MB).toFixed(1)} MB, anonymous ${(stats.rssAnon / MB).toFixed(1)} MB`

const log = (text: string) => console.log(`[${new Date().toISOString().slice(11, 23)}] ${text}`)

/** 127.64.1.1, 127.64.1.2, ... (250 per /24, never .0 or .255). */
const clientAddress = (index: number) => `127.64.${1 + Math.floor(index / 250)}.${1 + (index % 250)}`

interface Lease {
  readonly client: number
  readonly protocol: NatPmpMessage.Protocol
  readonly internalPort: number
  readonly createAt: number
  externalPort: number | undefined
}

interface Outcome {
  readonly ok: boolean
  readonly elapsed: number
  readonly externalPort: number
  readonly resultCode: number | undefined
}

interface Pending {
  readonly sentAt: number
  readonly resolve: (outcome: Outcome) => void
  readonly timers: Array<ReturnType<typeof setTimeout>>
}

const main = async () => {
  log(
    `${clients} clients × tcp+udp = ${leaseCount} leases, lifetime ${lifetime} s, renewal every ${
      periodMs / 1000
    } s, ` +
      `${rounds} round(s)`
  )
  const upstream = forkTs<UpstreamMessage>("bench/lib/scale-upstream.ts", "upstream", {
    SCALE_LIFETIME: String(lifetime)
  })
  let bridge: Child<BridgeMessage> | undefined
  const sockets: Array<Dgram.Socket> = []
  try {
    const ready = await upstream.next("ready")
    bridge = await forkCompiled<BridgeMessage>("bench/lib/scale-bridge.ts", "bridge", scaleBridgeEnv(ready), [
      "--expose-gc",
      ...(process.env.SCALE_BRIDGE_NODE_OPTIONS ?? "").split(" ").filter((option) => option !== "")
    ])
    const bridgePort = (await bridge.next("ready")).port
    log(`bridge pid ${bridge.pid} on 127.0.0.1:${bridgePort}; upstream pid ${upstream.pid}`)
    await sleep(3000)
    const idle = await bridge.ask("stats", "stats")
    log(`idle: RSS ${(idle.rss / MB).toFixed(1)} MB, heap ${(idle.heapUsed / MB).toFixed(1)} MB`)
    const idleGc = await bridge.ask("gc", "stats")
    log(`idle after a full GC: ${memoryLine(idleGc)}`)

    // ---- the clients
    const pending = new Map<string, Pending>()
    const keyOf = (client: number, protocol: NatPmpMessage.Protocol, internalPort: number) =>
      `${client}/${protocol}/${internalPort}`
    for (let client = 0; client < clients; client++) {
      const socket = Dgram.createSocket("udp4")
      socket.on("message", (bytes) => {
        const decoded = NatPmpMessage.decodeResponse(bytes)
        if (decoded._tag === "Left" || decoded.right._tag !== "MapResponse") return
        const response = decoded.right
        const key = keyOf(client, response.protocol, response.internalPort)
        const waiting = pending.get(key)
        if (waiting === undefined) return
        pending.delete(key)
        for (const timer of waiting.timers) clearTimeout(timer)
        const elapsed = performance.now() - waiting.sentAt
        waiting.resolve({
          ok: response.resultCode === NatPmpMessage.ResultCode.Success && elapsed <= ANSWER_BOUND_MS,
          elapsed,
          externalPort: response.externalPort,
          resultCode: response.resultCode
        })
      })
      socket.on("error", () => {})
      await new Promise<void>((resolve) => socket.bind({ address: clientAddress(client), port: 0 }, resolve))
      sockets.push(socket)
    }

    /** One request with RFC retransmission (250 ms, doubling) until answered or GIVE_UP_MS. */
    const request = (lease: Lease): Promise<Outcome> =>
      new Promise((resolve) => {
        const key = keyOf(lease.client, lease.protocol, lease.internalPort)
        const bytes = NatPmpMessage.encodeRequest({
          _tag: "MapRequest",
          protocol: lease.protocol,
          internalPort: lease.internalPort,
          suggestedExternalPort: lease.externalPort ?? 0,
          lifetime
        })
        const socket = sockets[lease.client]
        const sendNow = () => socket.send(bytes, bridgePort, "127.0.0.1")
        const timers: Array<ReturnType<typeof setTimeout>> = []
        for (let at = 250, step = 500; at < GIVE_UP_MS; at += step, step *= 2) timers.push(setTimeout(sendNow, at))
        timers.push(setTimeout(() => {
          pending.delete(key)
          resolve({ ok: false, elapsed: GIVE_UP_MS, externalPort: 0, resultCode: undefined })
        }, GIVE_UP_MS))
        pending.set(key, { sentAt: performance.now(), resolve, timers })
        sendNow()
      })

    // ---- the schedule: creations over 3/4 of a period, then a renewal of each lease every period
    const leases: Array<Lease> = []
    for (let index = 0; index < leaseCount; index++) {
      leases.push({
        client: index >> 1,
        protocol: index % 2 === 0 ? "tcp" : "udp",
        internalPort: 10000 + (index >> 1),
        createAt: (index / leaseCount) * createMs,
        externalPort: undefined
      })
    }
    const creates: Array<Outcome> = []
    const renewals: Array<Outcome & { readonly portKept: boolean }> = []
    const underLoad: Array<Bridge.Reconciled> = []
    const start = performance.now()
    const endAt = createMs + periodMs * (rounds + 0.25)
    let nextCreate = 0
    let renewalCursor = 0
    let round = 1
    const inFlight: Array<Promise<unknown>> = []
    const tick = () => {
      const now = performance.now() - start
      while (nextCreate < leaseCount && leases[nextCreate].createAt <= now) {
        const lease = leases[nextCreate++]
        inFlight.push(
          request(lease).then((outcome) => {
            creates.push(outcome)
            if (outcome.resultCode === NatPmpMessage.ResultCode.Success) lease.externalPort = outcome.externalPort
          })
        )
      }
      // renewal k of lease i at createAt + k × period, in lease order within a round
      while (round <= rounds) {
        const lease = leases[renewalCursor]
        if (lease.createAt + round * periodMs > now) break
        if (lease.externalPort !== undefined) {
          const before = lease.externalPort
          inFlight.push(
            request(lease).then((outcome) => {
              renewals.push({ ...outcome, portKept: outcome.externalPort === before })
              if (outcome.resultCode === NatPmpMessage.ResultCode.Success) lease.externalPort = outcome.externalPort
            })
          )
        }
        renewalCursor++
        if (renewalCursor === leaseCount) {
          renewalCursor = 0
          round++
        }
      }
    }
    const ticker = setInterval(tick, 5)

    // mid-round reconciliations, under load
    const reconcilesUnderLoad = Array.from({ length: rounds }, (_, k) =>
      sleep(periodMs * (k + 1.5)).then(async () => {
        const result = await bridge!.ask("reconcile", "reconciled").catch(() => undefined)
        if (result === undefined) return
        underLoad.push(result)
        log(`reconcile under load: CPU ${(result.cpu / 1000).toFixed(0)} ms, wall ${result.wallMs.toFixed(0)} ms`)
      }))

    // RSS peak
    let rssPeak = idle.rss
    const sampler = setInterval(() => {
      bridge!.ask("stats", "stats", 10_000).then((stats) => {
        rssPeak = Math.max(rssPeak, stats.rss)
      }, () => {})
    }, 2000)

    // ---- the quiet quarter period: memory at 10,000 leases, reconciliation cost
    await sleep(createMs + Math.min(1500, periodMs * 0.05))
    await Promise.all(inFlight.splice(0))
    const loaded = await bridge.ask("stats", "stats")
    const loadedGc = await bridge.ask("gc", "stats")
    if (process.env.SCALE_SNAPSHOT !== undefined) {
      log(`heap snapshot: ${(await bridge.ask("snapshot", "snapshot")).file}`)
    }
    log(`after a full GC: ${memoryLine(loadedGc)}`)
    const createdOk = creates.filter((outcome) => outcome.ok).length
    const cpuShares = [["bridge", bridge.pid], ["upstream", upstream.pid], ["load", process.pid]] as const
    log(`CPU so far (ms): ${cpuShares.map(([name, pid]) => `${name} ${cpuMsOf(pid).toFixed(0)}`).join(", ")}`)
    const created = await upstream.ask("counters", "counters")
    log(
      `upstream so far: ${created.routerPrints} prints, ${created.routerAdds} adds, ${created.routerCommands} router ` +
        `commands, ${created.vpnRequests} VPN requests`
    )
    log(
      `created ${createdOk}/${leaseCount} in time; bridge holds ${loaded.leases} leases; RSS ` +
        `${(loaded.rss / MB).toFixed(1)} MB (+${((loaded.rss - idle.rss) / MB).toFixed(1)}), heap ` +
        `${(loaded.heapUsed / MB).toFixed(1)} MB`
    )
    const quiet: Array<Bridge.Reconciled & { readonly routerCommands: number }> = []
    for (let pass = 0; pass < 3; pass++) {
      const before = await upstream.ask("counters", "counters")
      const result = await bridge.ask("reconcile", "reconciled").catch((error: Error) => {
        log(`reconciliation not measured: ${error.message}`)
        return undefined
      })
      if (result === undefined) break
      const after = await upstream.ask("counters", "counters")
      quiet.push({ ...result, routerCommands: after.routerCommands - before.routerCommands })
      log(
        `reconcile of ${after.natRules} rules: CPU ${(result.cpu / 1000).toFixed(1)} ms, wall ` +
          `${result.wallMs.toFixed(0)} ms, ${
            after.routerCommands - before.routerCommands
          } router command(s), removed ` +
          `${result.removed} recreated ${result.recreated} fixed ${result.fixed}${
            result.error ? ` ${result.error}` : ""
          }`
      )
    }
    const quietEnd = performance.now() - start
    if (quietEnd > periodMs) log(`note: the quiet measurements ran into the first round (${quietEnd.toFixed(0)} ms)`)

    // ---- the renewal rounds
    const roundsCpuStart = (await bridge.ask("stats", "stats")).cpu
    const roundsStart = performance.now()
    while (performance.now() - start < endAt && round <= rounds) {
      await sleep(1000)
      const roundNow = Math.min(round, rounds)
      const done = renewals.length
      log(`round ${roundNow}: ${done} renewal(s) answered so far, ${renewals.filter((r) => !r.ok).length} not in time`)
    }
    clearInterval(ticker)
    await Promise.all(inFlight.splice(0))
    await Promise.all(reconcilesUnderLoad)
    const end = await bridge.ask("stats", "stats")
    clearInterval(sampler)
    const roundsCpu = end.cpu - roundsCpuStart
    const roundsWall = performance.now() - roundsStart
    const counters = await upstream.ask("counters", "counters")
    const inTime = renewals.filter((r) => r.ok && r.portKept).length
    const latencies = renewals.filter((r) => r.resultCode !== undefined).map((r) => r.elapsed)
    log(
      `renewals: ${inTime}/${renewals.length} in time with their port; p50 ${
        quantile(latencies, 0.5).toFixed(2)
      } ms, ` +
        `p99 ${quantile(latencies, 0.99).toFixed(2)} ms, max ${Math.max(...latencies).toFixed(1)} ms`
    )
    log(
      `end: bridge ${end.leases} leases, ${counters.natRules} router rules, ${counters.vpnMappings} VPN mappings, ` +
        `overloaded drops ${end.overloaded}; bridge CPU during the rounds ${
          ((roundsCpu / 1000 / roundsWall) * 100).toFixed(1)
        }%; ${memoryLine(end)}`
    )

    // ---- shutdown with every lease
    const stopping = performance.now()
    const stopped = await bridge.ask("stop", "stopped", 60_000).catch(() => undefined)
    const stopMs = stopped?.wallMs ?? performance.now() - stopping
    const left = await upstream.ask("counters", "counters")
    log(`shutdown: ${stopMs.toFixed(0)} ms; ${left.natRules} rule(s) and ${left.vpnMappings} VPN mapping(s) left`)

    const metric = (value: number, unit: string, label: string) => ({ value, unit, label })
    const metrics = {
      leases: metric(end.leases, "leases", `leases held by the bridge after ${rounds} renewal round(s)`),
      createsInTime: metric(
        (100 * createdOk) / leaseCount,
        "%",
        `new mappings answered with success within 2 s (${leaseCount} at ${
          Math.round(leaseCount / (createMs / 1000))
        }/s)`
      ),
      renewalsInTime: metric(
        renewals.length === 0 ? 0 : (100 * inTime) / renewals.length,
        "%",
        `renewals answered with success and the same port within 2 s (${renewals.length} at ${
          Math.round(leaseCount / (periodMs / 1000))
        }/s; target 100%)`
      ),
      renewalP50: metric(quantile(latencies, 0.5), "ms", "renewal answer time p50 (load process)"),
      renewalP99: metric(quantile(latencies, 0.99), "ms", "renewal answer time p99"),
      rssIdle: metric(idle.rss / MB, "MB", "bridge RSS idle, after start (target ≤ 80 MB)"),
      rssLoaded: metric(loaded.rss / MB, "MB", `bridge RSS holding ${leaseCount} leases`),
      rssGrowth: metric(
        (loaded.rss - idle.rss) / MB,
        "MB",
        `bridge RSS growth for ${leaseCount} leases (target ≤ +40 MB)`
      ),
      rssAnonGrowth: metric(
        (loaded.rssAnon - idle.rssAnon) / MB,
        "MB",
        "of which anonymous memory (JS heap, malloc)"
      ),
      rssFileGrowth: metric(
        (loaded.rssFile - idle.rssFile) / MB,
        "MB",
        "of which pages of files (node's own code first run under load, shared)"
      ),
      heapLiveGrowth: metric(
        (loadedGc.heapUsed - idleGc.heapUsed) / MB,
        "MB",
        `bridge live JS heap growth for ${leaseCount} leases (after a full GC)`
      ),
      rssPeak: metric(rssPeak / MB, "MB", "bridge RSS peak during the run (2 s samples)"),
      rssEnd: metric(end.rss / MB, "MB", `bridge RSS at the end of the renewal rounds, ${end.leases} leases`),
      reconcileCpu: metric(
        median(quiet.map((q) => q.cpu / 1000)),
        "ms",
        `bridge CPU time per reconciliation of ${leaseCount} rules (median of 3, quiet)`
      ),
      reconcileWall: metric(median(quiet.map((q) => q.wallMs)), "ms", "reconciliation wall time (quiet)"),
      reconcileRoundTrips: metric(
        median(quiet.map((q) => q.routerCommands)),
        "round trips",
        "router API round trips per reconciliation (target 1 print)"
      ),
      reconcileCpuUnderLoad: metric(
        median(underLoad.map((r) => r.cpu / 1000)),
        "ms",
        "bridge CPU time of a reconciliation during a renewal round (includes renewals served meanwhile)"
      ),
      roundsCpu: metric(
        (roundsCpu / 1000 / roundsWall) * 100,
        "% of a core",
        `bridge CPU use during the renewal rounds (${Math.round(leaseCount / (periodMs / 1000))} renewals/s)`
      ),
      shutdown: metric(stopMs, "ms", `shutdown cleanup with ${end.leases} leases (one remove, VPN unmaps)`),
      rulesLeft: metric(left.natRules, "rules", "router rules left after shutdown (target 0)")
    }
    const measured = Object.entries(metrics).filter(([key, value]) => {
      if (Number.isFinite(value.value)) return true
      log(`${key}: not measured`)
      return false
    })
    BenchResult.emit({ bench: "scale", metrics: Object.fromEntries(measured) })
  } finally {
    for (const socket of sockets) socket.close()
    await endChild(bridge, process.env.SCALE_BRIDGE_NODE_OPTIONS !== undefined)
    upstream.kill()
  }
}

main().then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
