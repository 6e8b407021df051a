/**
 * Hostile-input fuzzing of the bridge's NAT-PMP server over real UDP, against the BridgeHarness simulators.
 *
 * Phase H (hostile): `count` generated datagrams (random bytes of random lengths, the version × opcode grid,
 * truncated/extended/mutated valid requests, boundary ports and lifetimes) from allowed LAN sources and from
 * loopback sources outside the allowed network, many in flight at once. Each allowed fuzz source already holds
 * its whole mapping quota (one prefilled TCP mapping), so no datagram of this phase may reach the VPN or the
 * router: every valid mapping request is a delete of an unknown mapping (result 0), a mapping of internal port 0
 * (result 2) or a new mapping over the quota (result 4). The generator never renews or deletes the prefilled
 * mappings. Every reply is checked against an independent model of RFC 6886 for the datagram that caused it, and
 * the upstream counters must not move.
 *
 * Phase M (mapping): sequential requests with real mappings (boundary ports and lifetimes, extended requests,
 * renewals, deletes, delete-all, expiry, quota, disallowed source) with the exact upstream calls each one
 * justifies (VPN requests, router API commands).
 *
 * Finally the bridge must still answer correctly, no error may have been logged, and the heap after GC must stay
 * within `heapBound` bytes of the heap after the warm-up.
 */
import { NatPmpMessage } from "@natpmp-bridge/core"
import { UdpSocket as Udp } from "@natpmp-bridge/core"
import { Prng as SeededPrng } from "@natpmp-bridge/core/testing"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import type * as Dgram from "node:dgram"
import * as V8 from "node:v8"
import * as Vm from "node:vm"

/** The seeded PRNG of the fuzzers (core/testing): the same seed gives the same datagrams. */
export type Prng = SeededPrng.Prng
export const Prng = SeededPrng.Prng
export const parseSeed = SeededPrng.parseSeed

// -----------------------------------------------------------------------------
// constants of the fuzzed bridge
// -----------------------------------------------------------------------------

/** The bridge's lifetime cap (MAX_LIFETIME) during the fuzz. */
export const MAX_LIFETIME = 3600

export const BOUNDARY_PORTS: ReadonlyArray<number> = [0, 1, 1023, 1024, 65535]
export const BOUNDARY_LIFETIMES: ReadonlyArray<number> = [
  0,
  1,
  MAX_LIFETIME - 1,
  MAX_LIFETIME,
  MAX_LIFETIME + 1,
  0xffffffff
]

/** Allowed LAN sources sending hostile traffic (the harness allows 127.0.0.16/28); .29 and .30 are phase M's. */
export const ALLOWED_SOURCES: ReadonlyArray<string> = [16, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31].map((
  n
) => `127.0.0.${n}`)
/** Loopback sources outside the allowed network (127.0.0.1 is the simulators'). */
export const DISALLOWED_SOURCES: ReadonlyArray<string> = [2, 3, 7, 15, 32, 33, 40, 100, 200, 255].map((n) =>
  `127.0.0.${n}`
)

/** The TCP internal port a fuzz source holds as its whole quota during phase H. */
export const prefilledPort = (source: string): number => 40000 + Number(source.split(".")[3])

// -----------------------------------------------------------------------------
// generator
// -----------------------------------------------------------------------------

/** One generated datagram: its bytes and the index of its source (allowed first, then disallowed). */
export interface Generated {
  readonly bytes: Uint8Array
  readonly source: number
}

const validRequest = (rng: Prng, boundary: boolean): Uint8Array => {
  const op = rng.int(3)
  if (op === 0) return Uint8Array.of(0, 0)
  const bytes = new Uint8Array(12)
  const view = new DataView(bytes.buffer)
  bytes[1] = op
  if (rng.int(8) === 0) {
    // reserved bytes are not zero
    bytes[2] = rng.next() & 0xff
    bytes[3] = rng.next() & 0xff
  }
  view.setUint16(4, boundary || rng.int(2) === 0 ? rng.pick(BOUNDARY_PORTS) : rng.int(0x10000))
  view.setUint16(6, boundary || rng.int(2) === 0 ? rng.pick(BOUNDARY_PORTS) : rng.int(0x10000))
  view.setUint32(8, boundary || rng.int(2) === 0 ? rng.pick(BOUNDARY_LIFETIMES) : rng.next())
  return bytes
}

const mutate = (rng: Prng, valid: Uint8Array): Uint8Array => {
  switch (rng.int(5)) {
    case 0: // truncated
      return valid.subarray(0, rng.int(valid.length))
    case 1: {
      // extended with random bytes, up to 1100 in all
      const out = new Uint8Array(valid.length + rng.between(1, 1100 - valid.length))
      out.set(valid)
      out.set(rng.bytes(out.length - valid.length), valid.length)
      return out
    }
    case 2: {
      // one byte flipped
      const out = Uint8Array.from(valid)
      out[rng.int(out.length)] ^= 1 << rng.int(8)
      return out
    }
    case 3: {
      // one byte replaced
      const out = Uint8Array.from(valid)
      out[rng.int(out.length)] = rng.next() & 0xff
      return out
    }
    default:
      return valid
  }
}

/** The version × opcode grid in a scrambled order (an odd multiplier is a bijection of 0..65535). */
const gridCell = (index: number): { readonly version: number; readonly opcode: number } => {
  const cell = Math.imul(index & 0xffff, 40503) & 0xffff
  return { version: cell & 0xff, opcode: cell >>> 8 }
}

/**
 * The hostile datagram generator. Datagrams from allowed sources never touch a prefilled mapping: a valid TCP
 * request for a source's prefilled port, or a TCP delete-all, is turned into the UDP one.
 */
export class Generator {
  private gridIndex = 0
  constructor(private readonly rng: Prng) {}

  next(): Generated {
    const rng = this.rng
    const allowed = rng.int(4) !== 0
    const source = allowed ? rng.int(ALLOWED_SOURCES.length) : ALLOWED_SOURCES.length +
      rng.int(DISALLOWED_SOURCES.length)
    let bytes: Uint8Array
    const kind = rng.int(100)
    if (kind < 30) {
      // random bytes: mostly short, some up to 1100
      bytes = rng.bytes(rng.int(2) === 0 ? rng.int(17) : rng.int(1101))
    } else if (kind < 45) {
      // the version × opcode grid, with a random body
      const { opcode, version } = gridCell(this.gridIndex++)
      bytes = rng.bytes(rng.pick([2, 8, 12, 16, rng.int(1101)]))
      if (bytes.length >= 1) bytes[0] = version
      if (bytes.length >= 2) bytes[1] = opcode
    } else if (kind < 75) {
      bytes = mutate(rng, validRequest(rng, false))
    } else if (kind < 90) {
      // boundary ports and lifetimes, sometimes extended
      bytes = validRequest(rng, true)
      if (rng.int(4) === 0) bytes = mutate(rng, bytes)
    } else {
      // valid request header with an unknown opcode or version and a plausible length
      bytes = validRequest(rng, false)
      if (bytes.length < 12) bytes = Uint8Array.of(0, 0, ...rng.bytes(rng.int(11)))
      if (rng.int(2) === 0) bytes[0] = rng.between(1, 255)
      else bytes[1] = rng.between(3, 255)
    }
    if (allowed) this.protectPrefilled(bytes, ALLOWED_SOURCES[source])
    return { bytes, source }
  }

  private protectPrefilled(bytes: Uint8Array, source: string): void {
    if (bytes.length < 12 || bytes[0] !== 0 || bytes[1] !== 2) return
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)
    const port = view.getUint16(4)
    if (port === prefilledPort(source) || (port === 0 && view.getUint32(8) === 0)) bytes[1] = 1
  }
}

// -----------------------------------------------------------------------------
// model (RFC 6886 gateway rules, written independently of the server)
// -----------------------------------------------------------------------------

/** The reply a datagram must get, identified by what distinguishes replies (the epoch aside). */
export type Expected =
  | { readonly kind: "error"; readonly opcode: number; readonly resultCode: 1 | 5 }
  | { readonly kind: "public" }
  | {
    readonly kind: "map"
    readonly opcode: 1 | 2
    readonly internalPort: number
    readonly resultCode: number
  }

export const keyOf = (expected: Expected): string =>
  expected.kind === "public"
    ? "P"
    : expected.kind === "error"
    ? `E${expected.opcode}/${expected.resultCode}`
    : `M${expected.opcode}/${expected.internalPort}/${expected.resultCode}`

/**
 * What the bridge must answer to `bytes` from an allowed fuzz source in phase H (`undefined`: nothing).
 * Version != 0: result 1 (opcodes < 128); opcode >= 128: silence; runts and truncated mapping requests: silence;
 * unknown opcodes: result 5; mapping requests: delete → 0, internal port 0 → 2, a new mapping → 4 (quota).
 */
export const expectedReply = (bytes: Uint8Array): Expected | undefined => {
  if (bytes.length < 2) return undefined
  const version = bytes[0]
  const opcode = bytes[1]
  if (opcode >= 128) return undefined
  if (version !== 0) return { kind: "error", opcode, resultCode: 1 }
  if (opcode === 0) return { kind: "public" }
  if (opcode !== 1 && opcode !== 2) return { kind: "error", opcode, resultCode: 5 }
  if (bytes.length < 12) return undefined
  const internalPort = (bytes[4] << 8) | bytes[5]
  const lifetime = ((bytes[8] << 24) | (bytes[9] << 16) | (bytes[10] << 8) | bytes[11]) >>> 0
  const resultCode = lifetime === 0 ? 0 : internalPort === 0 ? 2 : 4
  return { kind: "map", opcode, internalPort, resultCode }
}

/**
 * Checks a reply datagram: a valid RFC 6886 reply (decoded with NatPmpMessage, exact length, version 0, opcode
 * 128 + request op, failed mappings with external port and lifetime 0, the right public address, a plausible
 * epoch). Returns the key of the request it answers, or the reason it is invalid.
 */
export const checkReply = (
  bytes: Uint8Array,
  context: { readonly publicAddress: string; readonly maxEpoch: number }
): { readonly key: string } | { readonly invalid: string } => {
  const decoded = NatPmpMessage.decodeResponse(bytes)
  if (Either.isLeft(decoded)) return { invalid: `undecodable reply ${hex(bytes)}: ${decoded.left.message}` }
  const response = decoded.right
  if (bytes[0] !== 0) return { invalid: `reply with version ${bytes[0]}` }
  if (response.epoch > context.maxEpoch) return { invalid: `epoch ${response.epoch} > ${context.maxEpoch}` }
  switch (response._tag) {
    case "ErrorResponse":
      if (bytes.length !== 8) return { invalid: `error reply of ${bytes.length} bytes: ${hex(bytes)}` }
      if (response.resultCode !== 1 && response.resultCode !== 5) {
        return { invalid: `error reply with result ${response.resultCode}` }
      }
      return { key: keyOf({ kind: "error", opcode: response.opcode, resultCode: response.resultCode }) }
    case "PublicAddressResponse":
      if (bytes.length !== 12) return { invalid: `public address reply of ${bytes.length} bytes` }
      if (response.resultCode !== 0 || response.publicAddress !== context.publicAddress) {
        return { invalid: `public address reply ${response.resultCode} ${response.publicAddress}` }
      }
      return { key: "P" }
    case "MapResponse": {
      if (bytes.length !== 16) return { invalid: `mapping reply of ${bytes.length} bytes` }
      if (response.externalPort !== 0 || response.lifetime !== 0) {
        return { invalid: `phase H mapping reply granted something: ${hex(bytes)}` }
      }
      const opcode = response.protocol === "udp" ? 1 : 2
      return {
        key: keyOf({ kind: "map", opcode, internalPort: response.internalPort, resultCode: response.resultCode })
      }
    }
  }
}

const hex = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex")

// -----------------------------------------------------------------------------
// the run
// -----------------------------------------------------------------------------

export interface Options {
  /** Datagrams of phase H. */
  readonly count: number
  readonly seed: number
  /** Datagrams in flight (sent, not yet taken by the server). Default 64. */
  readonly window?: number | undefined
  /** Datagrams of the warm-up (heap baseline). Default min(50 000, count / 10). */
  readonly warmup?: number | undefined
  /** Largest heap growth accepted (bytes). Default 16 MiB. */
  readonly heapBound?: number | undefined
  /** Progress lines (e.g. to stderr). */
  readonly progress?: ((line: string) => void) | undefined
}

export interface Summary {
  readonly seed: number
  readonly sent: number
  readonly sentAllowed: number
  readonly sentDisallowed: number
  readonly expectedReplies: number
  readonly replies: number
  readonly checked: number
  readonly invalid: number
  /** Expected replies that never came. */
  readonly unanswered: number
  /** Datagrams the server never took (kernel buffer drops), which explain unanswered ones. */
  readonly lost: number
  /** Errors logged by the bridge (handler defects) plus a bridge that stopped answering. */
  readonly crashes: number
  readonly upstreamHostile: { readonly vpn: number; readonly router: number }
  readonly upstreamMapping: {
    readonly vpn: number
    readonly router: number
    readonly expectedVpn: number
    readonly expectedRouter: number
  }
  readonly mappingSteps: number
  readonly heapBefore: number
  readonly heapAfter: number
  readonly heapBound: number
  readonly seconds: number
  /** CPU seconds the process used during phase H (bridge and fuzzer share the thread). */
  readonly cpuSeconds: number
  readonly rate: number
  readonly violations: ReadonlyArray<string>
}

/** `gc`, exposed on demand when node did not get `--expose-gc`. */
const gcFunction = (): () => void => {
  const existing = (globalThis as { gc?: () => void }).gc
  if (typeof existing === "function") return existing
  V8.setFlagsFromString("--expose-gc")
  return Vm.runInNewContext("gc") as () => void
}

const heapAfterGc = (): number => {
  const gc = gcFunction()
  gc()
  gc()
  return process.memoryUsage().heapUsed
}

const mib = (bytes: number) => `${(bytes / 1048576).toFixed(1)} MiB`

/** The one-line summary. */
export const formatSummary = (s: Summary): string =>
  `server fuzz: datagrams=${s.sent} (allowed ${s.sentAllowed}, disallowed ${s.sentDisallowed}) ` +
  `replies=${s.replies} checked=${s.checked} expected=${s.expectedReplies} invalid=${s.invalid} ` +
  `unanswered=${s.unanswered} lost=${s.lost} crashes=${s.crashes} ` +
  `upstream(hostile)=vpn ${s.upstreamHostile.vpn}/router ${s.upstreamHostile.router} ` +
  `upstream(mapping phase, ${s.mappingSteps} steps)=vpn ${s.upstreamMapping.vpn}/${s.upstreamMapping.expectedVpn} ` +
  `router ${s.upstreamMapping.router}/${s.upstreamMapping.expectedRouter} ` +
  `heap=${mib(s.heapBefore)}→${mib(s.heapAfter)} (bound +${mib(s.heapBound)}) ` +
  `rate=${Math.round(s.rate)} datagrams/s (${s.seconds.toFixed(1)} s, cpu ${s.cpuSeconds.toFixed(1)} s) ` +
  `seed=${s.seed}` +
  (s.violations.length > 0 ? ` VIOLATIONS=${s.violations.length}` : "")

const setImmediatePromise = () => new Promise<void>((resolve) => setImmediate(resolve))

/** A logger that counts (and keeps the first few of) the bridge's error logs. */
const errorCounter = () => {
  const state = { errors: 0, first: [] as Array<string> }
  const logger = Logger.make(({ cause, logLevel, message }) => {
    if (LogLevel.greaterThanEqual(logLevel, LogLevel.Error)) {
      state.errors++
      if (state.first.length < 5) state.first.push(`${String(message)} ${String(cause)}`.slice(0, 300))
    }
  })
  return { state, logger }
}

/** Runs the fuzz: phase H (hostile), phase M (mapping), final checks. Never fails: violations are in the summary. */
export const run = (options: Options) => {
  const errors = errorCounter()
  return runPhases(options, errors.state).pipe(
    Effect.scoped,
    Effect.provide(Logger.replace(Logger.defaultLogger, errors.logger))
  )
}

const runPhases = (options: Options, logged: { errors: number; first: Array<string> }) =>
  Effect.gen(function*() {
    const progress = options.progress ?? (() => {})
    const window = options.window ?? 64
    const warmup = options.warmup ?? Math.min(50_000, Math.floor(options.count / 10))
    const heapBound = options.heapBound ?? 16 * 1048576
    const violations: Array<string> = []
    const violation = (text: string) => {
      if (violations.length < 20) violations.push(text)
    }

    const h = yield* BridgeHarness.make({
      vpnMode: "rfc",
      vpn: { maxLifetime: 7200 },
      bridge: {
        logLevel: LogLevel.Error,
        clientQuota: 1,
        maxLifetime: MAX_LIFETIME,
        reconcileInterval: Duration.hours(6),
        announce: false
      }
    })
    const bridgeStarted = Date.now()
    const publicAddress = yield* h.vpn.publicAddress
    // VPN requests other than the public address (refreshed in the background, by a timer: not caused by datagrams)
    const upstream = Effect.all({
      vpn: Effect.map(h.vpn.counters, (c) => c.total - c.publicAddress),
      vpnPublicAddress: Effect.map(h.vpn.counters, (c) => c.publicAddress),
      router: h.router.commandCount()
    })

    // each allowed fuzz source holds its quota: one TCP mapping
    for (const source of ALLOWED_SOURCES) {
      const client = yield* h.client(source)
      const answer = yield* client.map({ protocol: "tcp", internalPort: prefilledPort(source), lifetime: 3600 })
      if (answer.resultCode !== 0) violation(`prefill of ${source} failed with result ${answer.resultCode}`)
    }

    // ---------------------------------------------------------------- phase H
    const sources = [...ALLOWED_SOURCES, ...DISALLOWED_SOURCES]
    const outstanding = sources.map(() => new Map<string, number>())
    const counts = { replies: 0, checked: 0, invalid: 0, expected: 0, pending: 0 }
    const sockets: Array<Dgram.Socket> = []
    for (let i = 0; i < sources.length; i++) {
      const allowed = i < ALLOWED_SOURCES.length
      const pending = outstanding[i]
      const socket = yield* Udp.open({ address: sources[i], port: 0 }, (incoming: Udp.Incoming) => {
        if (incoming._tag !== "Datagram") return
        counts.replies++
        if (!allowed) {
          counts.invalid++
          return violation(`reply to a disallowed source ${sources[i]}: ${hex(incoming.bytes)}`)
        }
        if (incoming.address !== h.bridge.address || incoming.port !== h.bridge.port) {
          counts.invalid++
          return violation(`reply from ${incoming.address}:${incoming.port}`)
        }
        // the bridge started counting its epoch a little before `bridgeStarted`
        const maxEpoch = Math.ceil((Date.now() - bridgeStarted) / 1000) + 3
        const checked = checkReply(incoming.bytes, { publicAddress, maxEpoch })
        if ("invalid" in checked) {
          counts.invalid++
          return violation(`${sources[i]}: ${checked.invalid}`)
        }
        const left = pending.get(checked.key) ?? 0
        if (left === 0) {
          counts.invalid++
          return violation(`${sources[i]}: reply ${hex(incoming.bytes)} answers no datagram sent`)
        }
        if (left === 1) pending.delete(checked.key)
        else pending.set(checked.key, left - 1)
        counts.checked++
        counts.pending--
      })
      sockets.push(socket)
    }

    const stats = h.bridge.server.stats
    const rng = new Prng(options.seed)
    const generator = new Generator(rng)
    const target = { address: h.bridge.address, port: h.bridge.port }
    const before = yield* upstream
    const startStats = yield* stats
    let sent = 0
    let sentAllowed = 0
    let lost = 0
    let heapBefore = 0
    let started = 0

    const sendPhase = (until: number) =>
      Effect.promise(async () => {
        let lastProgress = Date.now()
        let lastReceived = -1
        let nextReport = sent + 100_000
        while (sent < until) {
          const received = Effect.runSync(stats).received - startStats.received + lost
          if (received !== lastReceived) {
            lastReceived = received
            lastProgress = Date.now()
          } else if (Date.now() - lastProgress > 2000) {
            // the kernel dropped some: give up on them (their expected replies stay unanswered)
            lost += sent - received
            lastProgress = Date.now()
            continue
          }
          let room = window - (sent - received)
          if (room <= 0) {
            await setImmediatePromise()
            continue
          }
          while (room-- > 0 && sent < until) {
            const { bytes, source } = generator.next()
            if (source < ALLOWED_SOURCES.length) {
              sentAllowed++
              const expected = expectedReply(bytes)
              if (expected !== undefined) {
                const key = keyOf(expected)
                const pending = outstanding[source]
                pending.set(key, (pending.get(key) ?? 0) + 1)
                counts.expected++
                counts.pending++
              }
            }
            sockets[source].send(bytes, target.port, target.address)
            sent++
          }
          if (sent >= nextReport) {
            nextReport += 100_000
            const seconds = (Date.now() - started) / 1000
            const cpu = process.cpuUsage(cpuStart)
            const cpuSeconds = (cpu.user + cpu.system) / 1e6
            progress(
              `  ${sent} datagrams, ${Math.round(sent / seconds)}/s (cpu ${cpuSeconds.toFixed(1)} s), ` +
                `${counts.checked} replies checked`
            )
          }
          await setImmediatePromise()
        }
      })

    const drain = Effect.promise(async () => {
      let last = -1
      let lastChange = Date.now()
      while (counts.pending > 0 && Date.now() - lastChange < 3000) {
        if (counts.checked !== last) {
          last = counts.checked
          lastChange = Date.now()
        }
        await new Promise((resolve) => setTimeout(resolve, 5))
      }
      // late or duplicate replies would show up now
      await new Promise((resolve) => setTimeout(resolve, 200))
    })

    started = Date.now()
    const cpuStart = process.cpuUsage()
    yield* sendPhase(warmup)
    yield* drain
    heapBefore = heapAfterGc()
    yield* sendPhase(options.count)
    yield* drain
    const seconds = (Date.now() - started) / 1000
    const cpu = process.cpuUsage(cpuStart)
    const cpuSeconds = (cpu.user + cpu.system) / 1e6
    const after = yield* upstream
    const upstreamHostile = { vpn: after.vpn - before.vpn, router: after.router - before.router }
    // the bridge refreshes the VPN public address on a timer (5 s after start, then every 6 h here)
    const refreshes = after.vpnPublicAddress - before.vpnPublicAddress
    if (refreshes > 1) violation(`${refreshes} VPN public address requests during the hostile phase (at most 1)`)
    if (upstreamHostile.vpn !== 0 || upstreamHostile.router !== 0) {
      violation(`hostile datagrams caused upstream calls: VPN ${upstreamHostile.vpn}, router ${upstreamHostile.router}`)
    }
    const serverStats = yield* stats
    if (serverStats.overloaded > 0) violation(`server dropped ${serverStats.overloaded} datagrams as overloaded`)
    const unanswered = counts.pending
    if (unanswered > lost) violation(`${unanswered} datagrams got no reply (only ${lost} were lost on the way)`)

    // ---------------------------------------------------------------- phase M
    const mapping = yield* mappingPhase(h, violation)

    // ---------------------------------------------------------------- end
    let crashes = logged.errors
    for (const line of logged.first) violation(`bridge logged an error: ${line}`)
    const final = yield* h.client("127.0.0.30")
    const answer = yield* final.publicAddress.pipe(Effect.either)
    if (Either.isLeft(answer) || answer.right.resultCode !== 0 || answer.right.publicAddress !== publicAddress) {
      crashes++
      violation("the bridge no longer answers a public address request correctly")
    }
    const heapAfter = heapAfterGc()
    if (heapAfter - heapBefore > heapBound) {
      violation(`heap grew by ${mib(heapAfter - heapBefore)} (bound ${mib(heapBound)})`)
    }
    if (counts.invalid > 0 && violations.length === 0) violation(`${counts.invalid} invalid replies`)

    return {
      seed: options.seed,
      sent,
      sentAllowed,
      sentDisallowed: sent - sentAllowed,
      expectedReplies: counts.expected,
      replies: counts.replies,
      checked: counts.checked,
      invalid: counts.invalid,
      unanswered,
      lost,
      crashes,
      upstreamHostile,
      upstreamMapping: mapping,
      mappingSteps: mapping.steps,
      heapBefore,
      heapAfter,
      heapBound,
      seconds,
      cpuSeconds,
      rate: sent / seconds,
      violations
    } satisfies Summary
  })

// -----------------------------------------------------------------------------
// phase M: real mappings with exact upstream accounting
// -----------------------------------------------------------------------------

const mappingPhase = (h: BridgeHarness.BridgeHarness, violation: (text: string) => void) =>
  Effect.gen(function*() {
    const rng = new Prng(0x5eed)
    const totals = { vpn: 0, router: 0, expectedVpn: 0, expectedRouter: 0, steps: 0 }
    const client = yield* h.client("127.0.0.29")
    const outsider = yield* h.client("127.0.0.40")

    /** Distinct requests the VPN received since `from` (a retransmission of the same request counts once). */
    const vpnRequestsSince = (from: number) =>
      Effect.map(h.vpn.received, (log) => {
        const distinct = new Set<string>()
        for (const entry of log) {
          // the public address is refreshed on a timer, not because of a request
          if (entry.at < from || (entry.datagram._tag === "Request" && entry.datagram.request._tag !== "MapRequest")) {
            continue
          }
          distinct.add(JSON.stringify(entry.datagram))
        }
        return distinct.size
      })

    const request = (opcode: 1 | 2, internalPort: number, lifetime: number, suggested = 0) => {
      const bytes = new Uint8Array(12 + (rng.int(3) === 0 ? rng.between(1, 1088) : 0))
      const view = new DataView(bytes.buffer)
      bytes[1] = opcode
      view.setUint16(4, internalPort)
      view.setUint16(6, suggested)
      view.setUint32(8, lifetime)
      if (bytes.length > 12) bytes.set(rng.bytes(bytes.length - 12), 12)
      return bytes
    }

    /** Sends `bytes` from the phase client, checks the reply and the upstream calls it caused. */
    const step = (
      name: string,
      bytes: Uint8Array,
      expect: {
        readonly resultCode: number
        readonly lifetime?: number | undefined
        readonly granted: boolean
        readonly vpn: number
        readonly router: number
      }
    ) =>
      Effect.gen(function*() {
        totals.steps++
        const from = Date.now()
        const routerBefore = yield* h.router.commandCount()
        yield* client.send(bytes)
        const received = yield* Effect.either(client.receive(Duration.seconds(5)))
        if (Either.isLeft(received)) return violation(`${name}: no reply`)
        const reply = received.right.bytes
        const decoded = NatPmpMessage.decodeResponse(reply)
        // let the bridge finish anything still running for this request before counting
        yield* Effect.sleep(Duration.millis(20))
        const vpn = yield* vpnRequestsSince(from)
        const router = (yield* h.router.commandCount()) - routerBefore
        totals.vpn += vpn
        totals.router += router
        totals.expectedVpn += expect.vpn
        totals.expectedRouter += expect.router
        if (vpn !== expect.vpn || router !== expect.router) {
          violation(
            `${name}: upstream VPN ${vpn} (expected ${expect.vpn}), router ${router} (expected ${expect.router})`
          )
        }
        if (Either.isLeft(decoded) || decoded.right._tag !== "MapResponse" || reply.length !== 16) {
          return violation(`${name}: invalid reply ${hex(reply)}`)
        }
        const response = decoded.right
        const opcode = bytes[1]
        const internalPort = (bytes[4] << 8) | bytes[5]
        if (
          reply[0] !== 0 || reply[1] !== 128 + opcode || response.internalPort !== internalPort ||
          response.resultCode !== expect.resultCode ||
          (expect.granted ? response.externalPort === 0 : response.externalPort !== 0) ||
          (expect.lifetime !== undefined && response.lifetime !== expect.lifetime) ||
          (!expect.granted && response.lifetime !== 0)
        ) {
          violation(`${name}: wrong reply ${JSON.stringify(response)}`)
        }
        return response
      })

    const capped = (lifetime: number) => Math.min(lifetime, MAX_LIFETIME)

    for (const opcode of [1, 2] as const) {
      for (const port of [1, 1023, 1024, 65535]) {
        const name = `op ${opcode} port ${port}`
        const first = BOUNDARY_LIFETIMES[rng.between(2, 5)]
        yield* step(`${name} new (lifetime ${first})`, request(opcode, port, first, rng.pick(BOUNDARY_PORTS)), {
          resultCode: 0,
          granted: true,
          lifetime: capped(first),
          vpn: 1,
          router: 2
        })
        for (const lifetime of [MAX_LIFETIME - 1, MAX_LIFETIME + 1, 0xffffffff, MAX_LIFETIME]) {
          yield* step(`${name} renew (lifetime ${lifetime})`, request(opcode, port, lifetime), {
            resultCode: 0,
            granted: true,
            lifetime: capped(lifetime),
            vpn: 1,
            router: 0
          })
        }
        // the quota (1) is held: another mapping is refused before any upstream call
        yield* step(`${name} over quota`, request(opcode, port === 1 ? 2 : port - 1, MAX_LIFETIME), {
          resultCode: 4,
          granted: false,
          vpn: 0,
          router: 0
        })
        // a disallowed source asking for the same mapping gets nothing
        yield* outsider.send(request(opcode, port, 0))
        yield* step(`${name} delete`, request(opcode, port, 0, rng.pick(BOUNDARY_PORTS)), {
          resultCode: 0,
          granted: false,
          vpn: 1,
          router: 1
        })
        yield* step(`${name} delete again`, request(opcode, port, 0), {
          resultCode: 0,
          granted: false,
          vpn: 0,
          router: 0
        })
      }
      for (const lifetime of BOUNDARY_LIFETIMES.slice(1)) {
        yield* step(`op ${opcode} port 0 lifetime ${lifetime}`, request(opcode, 0, lifetime), {
          resultCode: 2,
          granted: false,
          vpn: 0,
          router: 0
        })
      }
      yield* step(`op ${opcode} delete-all, nothing held`, request(opcode, 0, 0), {
        resultCode: 0,
        granted: false,
        vpn: 0,
        router: 0
      })
      yield* step(`op ${opcode} port 1024 for delete-all`, request(opcode, 1024, MAX_LIFETIME), {
        resultCode: 0,
        granted: true,
        lifetime: MAX_LIFETIME,
        vpn: 1,
        router: 2
      })
      yield* step(`op ${opcode} delete-all`, request(opcode, 0, 0), {
        resultCode: 0,
        granted: false,
        vpn: 1,
        router: 1
      })
      // lifetime 1: the mapping expires by itself (one router remove, one VPN delete)
      const from = Date.now()
      const routerBefore = yield* h.router.commandCount()
      yield* step(`op ${opcode} port 1023 lifetime 1`, request(opcode, 1023, 1), {
        resultCode: 0,
        granted: true,
        lifetime: 1,
        vpn: 1,
        router: 2
      })
      const deadline = Date.now() + 10_000
      while ((yield* h.bridge.mapping.leases).some((lease) => lease.client === "127.0.0.29")) {
        if (Date.now() > deadline) {
          violation(`op ${opcode} lifetime 1: the mapping did not expire`)
          break
        }
        yield* Effect.sleep(Duration.millis(50))
      }
      yield* Effect.sleep(Duration.millis(100))
      totals.steps++
      const vpn = (yield* vpnRequestsSince(from)) - 1
      const router = (yield* h.router.commandCount()) - routerBefore - 2
      totals.vpn += vpn
      totals.router += router
      totals.expectedVpn += 1
      totals.expectedRouter += 1
      if (vpn !== 1 || router !== 1) {
        violation(`op ${opcode} lifetime 1 expiry: upstream VPN ${vpn} (expected 1), router ${router} (expected 1)`)
      }
    }
    if (!(yield* outsider.silentFor(Duration.millis(100)))) violation("a disallowed source got a reply")
    return totals
  })
