/**
 * A NAT-PMP gateway on a real UDP socket, for tests, demos and benchmarks.
 *
 * It speaks the wire protocol with the same codecs as the client and follows the RFC 6886 server rules
 * (result 1 for another version, result 5 for an unknown opcode, silence for responses and runts). Two behaviours:
 *
 * - `"rfc"` — like miniupnpd: honours the suggested external port when it is free, otherwise picks one; keeps one
 *   mapping per (client address, protocol, internal port) and returns it again on a repeated request; caps the
 *   lifetime at `maxLifetime`; lifetime 0 deletes, internal port 0 with lifetime 0 deletes all of the client's
 *   mappings of the protocol.
 * - `"protonvpn"` — like the ProtonVPN gateway: ignores the suggested port and picks a random high port, caps the
 *   lifetime at 60 s, echoes the internal port, gives UDP and TCP of one internal port the same public port and
 *   keeps it on renewal (unless `changePortsOnRenewal`).
 *
 * Switches inject faults: silence, ICMP port unreachable (the socket closes and later rebinds the same port),
 * forced result codes, state loss (epoch reset), public address changes and a per-request service time.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberSet from "effect/FiberSet"
import * as Queue from "effect/Queue"
import * as Random from "effect/Random"
import * as Scope from "effect/Scope"
import type * as Dgram from "node:dgram"
import { NatPmpSocketError } from "../NatPmpClient.js"
import * as NatPmpMessage from "../NatPmpMessage.js"
import * as Udp from "../UdpSocket.js"

/** How the simulated gateway allocates ports; see the module documentation. */
export type Mode = "rfc" | "protonvpn"

/** Simulator options; every field has a default suited to loopback tests. */
export interface Options {
  /** Default `"rfc"`. */
  readonly mode?: Mode | undefined
  /** Address to bind (default `127.0.0.1`). */
  readonly address?: string | undefined
  /** Port to bind (default 0: an ephemeral port, see {@link NatPmpGatewaySimulator.port}). */
  readonly port?: number | undefined
  /** The public address it reports (default `203.0.113.1`). */
  readonly publicAddress?: string | undefined
  /** The epoch at start, in seconds (default 0). */
  readonly epoch?: number | undefined
  /** Longest lifetime granted, in seconds (default 7200 in `"rfc"` mode, 60 in `"protonvpn"` mode). */
  readonly maxLifetime?: number | undefined
  /** Ports it picks from (default 1024–65535 in `"rfc"` mode, 32768–65535 in `"protonvpn"` mode). */
  readonly portRange?: { readonly min: number; readonly max: number } | undefined
  /** Where announcements go (default `224.0.0.1:5350`). */
  readonly announceTo?: { readonly address: string; readonly port: number } | undefined
  /** Service time before each answer (default none). */
  readonly responseDelay?: Duration.DurationInput | undefined
}

/** A mapping held by the simulated gateway. */
export interface SimulatedMapping {
  readonly client: string
  readonly protocol: NatPmpMessage.Protocol
  readonly internalPort: number
  readonly externalPort: number
  /** The granted lifetime in seconds. */
  readonly lifetime: number
  /** When it expires, in clock milliseconds. */
  readonly expiresAt: number
}

/** Datagrams received, by kind. */
export interface Counters {
  /** Every datagram received. */
  readonly total: number
  readonly publicAddress: number
  readonly mapUdp: number
  readonly mapTcp: number
  /** Answered with result 1 (version) or 5 (opcode). */
  readonly unsupported: number
  /** Dropped without an answer (responses, runts, truncated requests). */
  readonly ignored: number
}

/** A datagram the simulator received, as classified by the RFC server rules. */
export interface ReceivedDatagram {
  readonly from: { readonly address: string; readonly port: number }
  readonly datagram: NatPmpMessage.IncomingDatagram
  /** Clock milliseconds. */
  readonly at: number
}

/** A running simulated gateway. */
export interface NatPmpGatewaySimulator {
  readonly mode: Mode
  /** The bound address. */
  readonly address: string
  /** The bound port (the ephemeral one when bound on port 0); kept across `setUnreachable`. */
  readonly port: number
  readonly publicAddress: Effect.Effect<string>
  /** Seconds since the mapping state began. */
  readonly epoch: Effect.Effect<number>
  /** The live (unexpired) mappings. */
  readonly mappings: Effect.Effect<ReadonlyArray<SimulatedMapping>>
  /** Datagrams received so far (equals `counters.total`). */
  readonly requestCount: Effect.Effect<number>
  readonly counters: Effect.Effect<Counters>
  /** The datagrams received, oldest first (the most recent ones: at most 10,000 are kept). */
  readonly received: Effect.Effect<ReadonlyArray<ReceivedDatagram>>
  /** The most requests ever received and not yet answered at the same time. */
  readonly maxConcurrency: Effect.Effect<number>
  /** Zeroes the counters, the log of received datagrams and the concurrency record. */
  readonly resetCounters: Effect.Effect<void>
  /** Receive (and count) requests but never answer. */
  readonly setSilent: (silent: boolean) => Effect.Effect<void>
  /** Close the socket, so requests get ICMP port unreachable; `false` binds the same port again. */
  readonly setUnreachable: (unreachable: boolean) => Effect.Effect<void, NatPmpSocketError>
  /** Answer every request with this result code (`undefined`: behave normally). */
  readonly setResultCode: (code: number | undefined) => Effect.Effect<void>
  /** Simulate state loss: drop every mapping, restart the epoch at 0 and announce. */
  readonly resetEpoch: Effect.Effect<void>
  /** Change the public address and announce. */
  readonly setPublicAddress: (address: string) => Effect.Effect<void>
  /** Give a renewed mapping a new external port. */
  readonly changePortsOnRenewal: (enabled: boolean) => Effect.Effect<void>
  /** Wait this long before each answer. */
  readonly setResponseDelay: (delay: Duration.DurationInput) => Effect.Effect<void>
  /** Change where announcements go. */
  readonly setAnnounceTo: (target: { readonly address: string; readonly port: number }) => Effect.Effect<void>
  /**
   * Start announcing (RFC 6886 §3.2.1): 10 public-address responses, 250 ms apart at first, doubling,
   * in the background; a new announcement replaces one in progress. Returns once the first is sent.
   */
  readonly announce: Effect.Effect<void>
}

interface State {
  publicAddress: string
  epochStart: number
  silent: boolean
  resultCode: number | undefined
  changePortsOnRenewal: boolean
  responseDelay: Duration.Duration
  announceTo: { readonly address: string; readonly port: number }
  mappings: Array<SimulatedMapping>
  counters: { -readonly [K in keyof Counters]: number }
  received: Array<ReceivedDatagram>
  inFlight: number
  maxConcurrency: number
}

const receivedLogLimit = 10_000

const zeroCounters = (): State["counters"] => ({
  total: 0,
  publicAddress: 0,
  mapUdp: 0,
  mapTcp: 0,
  unsupported: 0,
  ignored: 0
})

/** Starts a simulated gateway for the life of the scope. */
export const make = (
  options: Options = {}
): Effect.Effect<NatPmpGatewaySimulator, NatPmpSocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const mode = options.mode ?? "rfc"
    const maxLifetime = options.maxLifetime ?? (mode === "rfc" ? 7200 : 60)
    const portRange = options.portRange ?? (mode === "rfc" ? { min: 1024, max: 65535 } : { min: 32768, max: 65535 })
    const bindAddress = options.address ?? "127.0.0.1"
    const now = yield* Clock.currentTimeMillis
    const state: State = {
      publicAddress: options.publicAddress ?? "203.0.113.1",
      epochStart: now - (options.epoch ?? 0) * 1000,
      silent: false,
      resultCode: undefined,
      changePortsOnRenewal: false,
      responseDelay: Duration.decode(options.responseDelay ?? Duration.zero),
      announceTo: options.announceTo ??
        { address: NatPmpMessage.AnnouncementAddress, port: NatPmpMessage.AnnouncementPort },
      mappings: [],
      counters: zeroCounters(),
      received: [],
      inFlight: 0,
      maxConcurrency: 0
    }

    const scope = yield* Effect.scope
    const fibers = yield* FiberSet.make()
    const received = yield* Queue.unbounded<Udp.Incoming>()

    // The socket lives in its own scope so `setUnreachable` can close it and bind the same port again.
    let socket: { readonly socket: Dgram.Socket; readonly scope: Scope.CloseableScope } | undefined
    const bind = (port: number) =>
      Effect.gen(function*() {
        const socketScope = yield* Scope.fork(scope, ExecutionStrategy.sequential)
        const opened = yield* Udp.open({ address: bindAddress, port }, (datagram) => received.unsafeOffer(datagram))
          .pipe(
            Scope.extend(socketScope),
            Effect.mapError((failure) => new NatPmpSocketError({ reason: failure.operation, cause: failure.cause })),
            Effect.onError((cause) => Scope.close(socketScope, Exit.failCause(cause)))
          )
        socket = { socket: opened, scope: socketScope }
        return Udp.localAddress(opened).port
      })
    const port = yield* bind(options.port ?? 0)

    const epochAt = (now: number) => Math.max(0, Math.floor((now - state.epochStart) / 1000))
    const currentEpoch = Effect.map(Clock.currentTimeMillis, epochAt)

    const expire = (now: number) => {
      state.mappings = state.mappings.filter((mapping) => mapping.expiresAt > now)
    }

    const isFree = (protocol: NatPmpMessage.Protocol, port: number) =>
      port !== 0 && !state.mappings.some((mapping) => mapping.protocol === protocol && mapping.externalPort === port)

    // A free port of the range: a few random tries, then a scan; `undefined` when the range is exhausted.
    const pickPort = (protocol: NatPmpMessage.Protocol) =>
      Effect.gen(function*() {
        for (let i = 0; i < 32; i++) {
          const candidate = yield* Random.nextIntBetween(portRange.min, portRange.max + 1)
          if (isFree(protocol, candidate)) {
            return candidate
          }
        }
        for (let candidate = portRange.min; candidate <= portRange.max; candidate++) {
          if (isFree(protocol, candidate)) {
            return candidate
          }
        }
        return undefined
      })

    const choosePort = (client: string, request: NatPmpMessage.MapRequest) =>
      Effect.gen(function*() {
        if (mode === "rfc") {
          return isFree(request.protocol, request.suggestedExternalPort)
            ? request.suggestedExternalPort
            : yield* pickPort(request.protocol)
        }
        const sibling = state.mappings.find((mapping) =>
          mapping.client === client && mapping.internalPort === request.internalPort &&
          mapping.protocol !== request.protocol
        )
        return sibling !== undefined && isFree(request.protocol, sibling.externalPort)
          ? sibling.externalPort
          : yield* pickPort(request.protocol)
      })

    const answerMap = (client: string, request: NatPmpMessage.MapRequest, now: number) =>
      Effect.gen(function*() {
        expire(now)
        const epoch = epochAt(now)
        const answer = (resultCode: number, externalPort = 0, lifetime = 0): NatPmpMessage.MapResponse => ({
          _tag: "MapResponse",
          protocol: request.protocol,
          resultCode,
          epoch,
          internalPort: request.internalPort,
          externalPort,
          lifetime
        })
        if (state.resultCode !== undefined) {
          return answer(state.resultCode)
        }
        const ownProtocolMapping = (mapping: SimulatedMapping) =>
          mapping.client === client && mapping.protocol === request.protocol
        if (request.lifetime === 0) {
          state.mappings = state.mappings.filter((mapping) =>
            !(ownProtocolMapping(mapping) &&
              (request.internalPort === 0 || mapping.internalPort === request.internalPort))
          )
          return answer(NatPmpMessage.ResultCode.Success)
        }
        if (request.internalPort === 0) {
          return answer(NatPmpMessage.ResultCode.NotAuthorized)
        }
        const lifetime = Math.min(request.lifetime, maxLifetime)
        const existing = state.mappings.find((mapping) =>
          ownProtocolMapping(mapping) && mapping.internalPort === request.internalPort
        )
        const externalPort = existing === undefined
          ? yield* choosePort(client, request)
          : state.changePortsOnRenewal
          ? yield* pickPort(request.protocol) // the existing mapping still holds its port: a new one
          : existing.externalPort
        if (externalPort === undefined) {
          return answer(NatPmpMessage.ResultCode.OutOfResources)
        }
        const mapping: SimulatedMapping = {
          client,
          protocol: request.protocol,
          internalPort: request.internalPort,
          externalPort,
          lifetime,
          expiresAt: now + lifetime * 1000
        }
        state.mappings = [...state.mappings.filter((other) => other !== existing), mapping]
        return answer(NatPmpMessage.ResultCode.Success, externalPort, lifetime)
      })

    const answer = (client: string, incoming: NatPmpMessage.IncomingDatagram, now: number) =>
      Effect.gen(function*() {
        const epoch = epochAt(now)
        switch (incoming._tag) {
          case "Ignore":
            state.counters.ignored++
            return undefined
          case "UnsupportedVersion":
          case "UnsupportedOpcode":
            state.counters.unsupported++
            return NatPmpMessage.errorReplyFor(incoming, epoch)
          case "Request": {
            const request = incoming.request
            if (request._tag === "PublicAddressRequest") {
              state.counters.publicAddress++
              const resultCode = state.resultCode ?? NatPmpMessage.ResultCode.Success
              return {
                _tag: "PublicAddressResponse",
                resultCode,
                epoch,
                publicAddress: resultCode === NatPmpMessage.ResultCode.Success ? state.publicAddress : "0.0.0.0"
              } satisfies NatPmpMessage.PublicAddressResponse
            }
            if (request.protocol === "udp") state.counters.mapUdp++
            else state.counters.mapTcp++
            return yield* answerMap(client, request, now)
          }
        }
      })

    const reply = (to: { readonly address: string; readonly port: number }, response: NatPmpMessage.Response) =>
      socket === undefined
        ? Effect.void
        : Udp.send(socket.socket, NatPmpMessage.encodeResponse(response), to).pipe(
          Effect.catchAll((failure) => Effect.logDebug(`simulator could not answer: ${failure.message}`))
        )

    const serve = (datagram: Udp.Incoming) =>
      Effect.gen(function*() {
        if (datagram._tag === "Error") {
          return
        }
        const now = yield* Clock.currentTimeMillis
        const from = { address: datagram.address, port: datagram.port }
        const incoming = NatPmpMessage.classifyDatagram(datagram.bytes)
        state.counters.total++
        if (state.received.length >= receivedLogLimit) {
          state.received.splice(0, receivedLogLimit / 2)
        }
        state.received.push({ from, datagram: incoming, at: now })
        const response = yield* answer(datagram.address, incoming, now)
        if (response === undefined || state.silent) {
          return
        }
        state.inFlight++
        state.maxConcurrency = Math.max(state.maxConcurrency, state.inFlight)
        const send = Effect.ensuring(
          reply(from, response),
          Effect.sync(() => {
            state.inFlight--
          })
        )
        if (Duration.isZero(state.responseDelay)) {
          yield* send
        } else {
          yield* FiberSet.run(fibers, Effect.zipRight(Effect.sleep(state.responseDelay), send))
        }
      })
    yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(received), serve)))

    let announcing: Fiber.RuntimeFiber<void> | undefined
    const sendAnnouncement = Effect.gen(function*() {
      const epoch = yield* currentEpoch
      yield* reply(state.announceTo, {
        _tag: "PublicAddressResponse",
        resultCode: NatPmpMessage.ResultCode.Success,
        epoch,
        publicAddress: state.publicAddress
      })
    })
    const announce = Effect.gen(function*() {
      if (announcing !== undefined) {
        yield* Fiber.interrupt(announcing)
      }
      yield* sendAnnouncement
      announcing = yield* FiberSet.run(
        fibers,
        Effect.gen(function*() {
          let delay = Duration.millis(250)
          for (let i = 1; i < 10; i++) {
            yield* Effect.sleep(delay)
            yield* sendAnnouncement
            delay = Duration.times(delay, 2)
          }
        })
      )
    })

    return {
      mode,
      address: bindAddress,
      port,
      publicAddress: Effect.sync(() => state.publicAddress),
      epoch: currentEpoch,
      mappings: Effect.map(Clock.currentTimeMillis, (now) => {
        expire(now)
        return [...state.mappings]
      }),
      requestCount: Effect.sync(() => state.counters.total),
      counters: Effect.sync(() => ({ ...state.counters })),
      received: Effect.sync(() => [...state.received]),
      maxConcurrency: Effect.sync(() => state.maxConcurrency),
      resetCounters: Effect.sync(() => {
        state.counters = zeroCounters()
        state.received = []
        state.maxConcurrency = state.inFlight
      }),
      setSilent: (silent) =>
        Effect.sync(() => {
          state.silent = silent
        }),
      setUnreachable: (unreachable) =>
        Effect.gen(function*() {
          if (unreachable && socket !== undefined) {
            const closing = socket
            socket = undefined
            yield* Scope.close(closing.scope, Exit.void)
          } else if (!unreachable && socket === undefined) {
            yield* bind(port)
          }
        }),
      setResultCode: (code) =>
        Effect.sync(() => {
          state.resultCode = code
        }),
      resetEpoch: Effect.gen(function*() {
        state.mappings = []
        state.epochStart = yield* Clock.currentTimeMillis
        yield* announce
      }),
      setPublicAddress: (address) =>
        Effect.suspend(() => {
          state.publicAddress = address
          return announce
        }),
      changePortsOnRenewal: (enabled) =>
        Effect.sync(() => {
          state.changePortsOnRenewal = enabled
        }),
      setResponseDelay: (delay) =>
        Effect.sync(() => {
          state.responseDelay = Duration.decode(delay)
        }),
      setAnnounceTo: (target) =>
        Effect.sync(() => {
          state.announceTo = target
        }),
      announce
    } satisfies NatPmpGatewaySimulator
  }).pipe(Effect.annotateLogs({ service: "NatPmpGatewaySimulator" }))
