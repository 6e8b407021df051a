/**
 * A NAT-PMP (RFC 6886) client for one gateway.
 *
 * - Requests go out one at a time (a serial queue; `maxInFlight` allows more, each mapping's requests staying
 *   serial) and are retransmitted per RFC 6886 §3.1: first after 250 ms, doubling, at most 9 sends (about
 *   127.75 s); an ICMP port unreachable ends the wait early.
 * - Replies are accepted only from `gateway:port` and, for mapping requests, only with the request's opcode and
 *   internal port.
 * - Every reply and announcement goes through the epoch check of §3.6; a gateway that lost its state is reported
 *   as a `GatewayReset` event, an announced public address as an `Announcement` event.
 * - {@link keep} holds a mapping: renews it at half its lifetime, re-maps after a reset or an announcement and
 *   deletes it when its scope closes.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import * as Queue from "effect/Queue"
import * as Random from "effect/Random"
import * as Ref from "effect/Ref"
import type * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as SubscriptionRef from "effect/SubscriptionRef"
import * as FifoLock from "./internal/FifoLock.js"
import { Mailbox } from "./internal/Mailbox.js"
import * as NatPmpMessage from "./NatPmpMessage.js"
import * as Udp from "./UdpSocket.js"

type Protocol = NatPmpMessage.Protocol

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

const requestName = (opcode: number): string => {
  switch (opcode) {
    case NatPmpMessage.Opcode.PublicAddress:
      return "the public address request"
    case NatPmpMessage.Opcode.MapUdp:
      return "the UDP mapping request"
    case NatPmpMessage.Opcode.MapTcp:
      return "the TCP mapping request"
    default:
      return `the opcode ${opcode} request`
  }
}

/** The gateway answered with a non-zero result code; `message` carries its RFC meaning. */
export class NatPmpResultError extends Data.TaggedError("NatPmpResultError")<{
  /** The gateway as `address:port`. */
  readonly gateway: string
  readonly opcode: number
  readonly resultCode: number
}> {
  get message(): string {
    return `NAT-PMP gateway ${this.gateway} failed ${requestName(this.opcode)} with result ${this.resultCode}: ${
      NatPmpMessage.resultCodeMessage(this.resultCode)
    }`
  }
}

/** No acceptable reply after every retransmission. */
export class NatPmpTimeoutError extends Data.TaggedError("NatPmpTimeoutError")<{
  /** The gateway as `address:port`. */
  readonly gateway: string
  readonly opcode: number
  readonly attempts: number
  readonly elapsed: Duration.Duration
}> {
  get message(): string {
    return `no answer from NAT-PMP gateway ${this.gateway} to ${requestName(this.opcode)} after ${this.attempts} ${
      this.attempts === 1 ? "attempt" : "attempts"
    } (${Duration.format(this.elapsed)})`
  }
}

/** The gateway answered with ICMP port unreachable (`ECONNREFUSED`): nothing listens for NAT-PMP there. */
export class NatPmpUnreachableError extends Data.TaggedError("NatPmpUnreachableError")<{
  /** The gateway as `address:port`. */
  readonly gateway: string
  readonly cause: unknown
}> {
  get message(): string {
    return `NAT-PMP gateway ${this.gateway} is unreachable (ICMP port unreachable): it does not speak NAT-PMP`
  }
}

/** A local socket operation failed (bind, connect, send). */
export class NatPmpSocketError extends Data.TaggedError("NatPmpSocketError")<{
  readonly reason: string
  readonly cause: unknown
}> {
  get message(): string {
    return `NAT-PMP socket error: ${this.reason} failed: ${Udp.describe(this.cause)}`
  }
}

/** Every way a NAT-PMP request can fail. */
export type NatPmpError = NatPmpResultError | NatPmpTimeoutError | NatPmpUnreachableError | NatPmpSocketError

const socketError = (failure: Udp.SocketFailure): NatPmpSocketError =>
  new NatPmpSocketError({ reason: failure.operation, cause: failure.cause })

// -----------------------------------------------------------------------------
// models
// -----------------------------------------------------------------------------

/** The gateway's public address and the epoch (seconds since its mapping state began) it reported. */
export interface PublicAddressInfo {
  readonly publicAddress: string
  readonly epoch: number
}

/** A mapping granted by the gateway: traffic to its public address on `externalPort` reaches `internalPort`. */
export interface Mapping {
  readonly protocol: Protocol
  readonly internalPort: number
  readonly externalPort: number
  /** Granted lifetime in seconds; the gateway may shorten the requested one. */
  readonly lifetime: number
  readonly epoch: number
}

/** A mapping request; `lifetime` defaults to 7200 s, `suggestedExternalPort` to 0 (the gateway picks). */
export interface MapOptions {
  readonly protocol: Protocol
  readonly internalPort: number
  readonly suggestedExternalPort?: number | undefined
  readonly lifetime?: number | undefined
}

/**
 * Something the gateway told us outside of a request's result:
 *
 * - `GatewayReset`: its epoch went backwards (§3.6), it lost its mappings; clients should re-map.
 * - `Announcement`: it announced a public address different from the last one known (§3.2.1).
 */
export type GatewayEvent = Data.TaggedEnum<{
  GatewayReset: {
    readonly gateway: string
    readonly epoch: number
    readonly previousEpoch: number
    /** The lowest epoch the gateway could report had it kept its state (last epoch + 7/8 of the elapsed time). */
    readonly expectedEpoch: number
  }
  Announcement: {
    readonly gateway: string
    readonly publicAddress: string
    readonly previousPublicAddress: string | undefined
    readonly epoch: number
  }
}>

/** Constructors and matchers for {@link GatewayEvent}. */
export const GatewayEvent = Data.taggedEnum<GatewayEvent>()

type GatewayReset = Data.TaggedEnum.Value<GatewayEvent, "GatewayReset">

// -----------------------------------------------------------------------------
// service
// -----------------------------------------------------------------------------

/** The NAT-PMP client of one gateway. */
export interface Service {
  /** The gateway's address (as resolved when the socket was connected). */
  readonly gateway: string
  /** The gateway's NAT-PMP port. */
  readonly port: number
  /** Op 0: the gateway's public IPv4 address. */
  readonly publicAddress: Effect.Effect<PublicAddressInfo, NatPmpError>
  /** Op 1/2: creates or renews a mapping. */
  readonly map: (options: MapOptions) => Effect.Effect<Mapping, NatPmpError>
  /** Deletes the mapping of an internal port (lifetime 0). Succeeds when there was none. */
  readonly unmap: (protocol: Protocol, internalPort: number) => Effect.Effect<void, NatPmpError>
  /** Deletes all of this host's mappings of a protocol (internal port 0, lifetime 0). */
  readonly unmapAll: (protocol: Protocol) => Effect.Effect<void, NatPmpError>
  /** Gateway resets and announcements from now on (each run of the stream subscribes anew). */
  readonly events: Stream.Stream<GatewayEvent>
  /** A subscription to the events, active as soon as this effect completes, for as long as the scope is open. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<GatewayEvent>, never, Scope.Scope>
  /** Where announcements are listened for; `None` when disabled or when the port could not be bound. */
  readonly announcementListener: Option.Option<{ readonly address: string; readonly port: number }>
}

/** The NAT-PMP client service. */
export class NatPmpClient extends Context.Tag("@natpmp-bridge/core/NatPmpClient")<NatPmpClient, Service>() {}

/** Client options; see {@link make}. */
export interface Options {
  /** The gateway's IPv4 address (or a host name resolving to one). */
  readonly gateway: string
  /** The gateway's NAT-PMP port (default 5351). */
  readonly port?: number | undefined
  /** Local address to bind the request socket to (default: any); for multi-homed hosts. */
  readonly localAddress?: string | undefined
  /** Wait before the first retransmission, doubled after each (default 250 ms). */
  readonly initialTimeout?: Duration.DurationInput | undefined
  /** Sends per request before giving up (default 9, about 127.75 s in total with the default timeout). */
  readonly maxAttempts?: number | undefined
  /**
   * Requests outstanding at once (default 1: RFC 6886 §3.1's serial queue). With more, requests of one mapping
   * (opcode and internal port; op 0 by its opcode; every delete-all) still go out one at a time, since their replies
   * could not be told apart, and each has its own retransmission schedule; callers are admitted first come, first
   * served.
   */
  readonly maxInFlight?: number | undefined
  /**
   * Listen for announcements (default `224.0.0.1:5350`); `false` to not listen. A multicast address is joined on
   * the default interface with the port bound on all addresses (SO_REUSEADDR); any other address is bound as is.
   */
  readonly announcements?: false | { readonly address?: string | undefined; readonly port?: number | undefined }
}

const checkPort = (name: string, value: number, min: number): Effect.Effect<void> =>
  Number.isInteger(value) && value >= min && value <= 0xffff
    ? Effect.void
    : Effect.dieMessage(`${name} must be an integer in ${min}..65535, got ${value}`)

const checkLifetime = (value: number): Effect.Effect<void> =>
  Number.isInteger(value) && value >= 0 && value <= 0xffffffff
    ? Effect.void
    : Effect.dieMessage(`lifetime must be an integer number of seconds in 0..4294967295, got ${value}`)

/**
 * What a request waiting for its reply is handed: a reply the socket callback matched to it (with its arrival
 * time), an ICMP port unreachable, or the end of a retransmission wait (posted by the client's timer).
 */
type Delivery =
  | { readonly _tag: "Reply"; readonly response: NatPmpMessage.Response; readonly arrivedAt: number }
  | { readonly _tag: "Unreachable"; readonly cause: unknown }
  | { readonly _tag: "WaitOver"; readonly attempt: number }

/** A request on the wire, waiting for its reply. */
interface Pending {
  readonly opcode: number
  readonly mailbox: Mailbox<Delivery>
  /** The end of the current retransmission wait. */
  deadline: { readonly attempt: number; readonly at: number } | undefined
}

const opcodeOfRequest = (request: NatPmpMessage.Request): number =>
  request._tag === "PublicAddressRequest"
    ? NatPmpMessage.Opcode.PublicAddress
    : NatPmpMessage.opcodeOf(request.protocol)

/** What a reply answers: op 0 by its opcode, op 1/2 by opcode and internal port. */
const replyKey = (opcode: number, internalPort: number | undefined): string =>
  internalPort === undefined ? `${opcode}` : `${opcode}:${internalPort}`

const requestReplyKey = (request: NatPmpMessage.Request): string =>
  replyKey(opcodeOfRequest(request), request._tag === "MapRequest" ? request.internalPort : undefined)

/** Requests with the same key go out one at a time; every delete-all shares one key. */
const requestLockKey = (request: NatPmpMessage.Request): string =>
  request._tag === "MapRequest" && request.internalPort === 0 ? "all" : requestReplyKey(request)

interface EpochMark {
  readonly epoch: number
  /** When the reply carrying `epoch` arrived: the gateway had that epoch at the latest then. */
  readonly at: number
}

/**
 * Creates a client: a UDP socket connected to `gateway:port` (so ICMP errors surface) and, unless disabled, an
 * announcement listener. Both close with the scope. A busy announcement port is logged, not fatal.
 *
 * Invalid arguments to `map` / `unmap` (ports outside 0..65535, non-integer lifetimes) are defects.
 */
export const make = (options: Options): Effect.Effect<Service, NatPmpSocketError, Scope.Scope> =>
  Effect.gen(function*() {
    const port = options.port ?? NatPmpMessage.ServerPort
    const initialTimeout = Duration.decode(options.initialTimeout ?? Duration.millis(250))
    const maxAttempts = Math.max(1, options.maxAttempts ?? 9)
    const maxInFlight = options.maxInFlight ?? 1
    if (!Number.isInteger(maxInFlight) || maxInFlight < 1) {
      return yield* Effect.dieMessage(`maxInFlight must be an integer of at least 1, got ${maxInFlight}`)
    }
    const clock = yield* Effect.clock

    // The requests on the wire by reply key (at most one per key: requests of one key are serialized), oldest first.
    const pending = new Map<string, Pending>()
    const peer: { address: string | undefined } = { address: undefined } // the gateway, once connected
    const isFromGateway = (datagram: { readonly address: string; readonly port: number }) =>
      datagram.address === peer.address && datagram.port === port
    // What the socket callback could not hand to a request, for the debug log.
    const ignored = yield* Queue.sliding<string>(64)
    const deliver = (item: Udp.Incoming): void => {
      if (item._tag === "Error") {
        if (item.failure.code === "ECONNREFUSED" && pending.size > 0) {
          for (const waiting of pending.values()) {
            waiting.mailbox.offer({ _tag: "Unreachable", cause: item.failure.cause })
          }
        } else {
          ignored.unsafeOffer(`NAT-PMP socket error ignored: ${item.failure.message}`)
        }
        return
      }
      if (!isFromGateway(item)) {
        ignored.unsafeOffer(`ignored a datagram from ${item.address}:${item.port}`)
        return
      }
      const arrivedAt = clock.unsafeCurrentTimeMillis()
      const decoded = NatPmpMessage.decodeResponse(item.bytes)
      if (Either.isLeft(decoded)) {
        ignored.unsafeOffer("ignored a malformed datagram from the gateway")
        return
      }
      const response = decoded.right
      let to: Pending | undefined
      switch (response._tag) {
        case "ErrorResponse": // carries no internal port: it answers the oldest request of its opcode
          for (const waiting of pending.values()) {
            if (waiting.opcode === response.opcode) {
              to = waiting
              break
            }
          }
          break
        case "PublicAddressResponse":
          to = pending.get(replyKey(NatPmpMessage.Opcode.PublicAddress, undefined))
          break
        case "MapResponse":
          to = pending.get(replyKey(NatPmpMessage.opcodeOf(response.protocol), response.internalPort))
          break
      }
      if (to === undefined) {
        ignored.unsafeOffer(`ignored a ${response._tag} that does not answer a pending request`)
        return
      }
      to.mailbox.offer({ _tag: "Reply", response, arrivedAt })
    }
    const socket = yield* Udp.open(
      { address: options.localAddress, connect: { address: options.gateway, port } },
      (datagram) => deliver(datagram)
    ).pipe(Effect.mapError(socketError))
    const gateway = (yield* Udp.remoteAddress(socket).pipe(Effect.mapError(socketError))).address
    peer.address = gateway
    const label = `${gateway}:${port}`
    yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(ignored), Effect.logDebug)))

    const events = yield* PubSub.unbounded<GatewayEvent>()
    const lastEpoch = yield* Ref.make(Option.none<EpochMark>())
    const lastPublicAddress = yield* Ref.make(Option.none<string>())
    // RFC 6886 §3.1's serial queue with `maxInFlight` 1; otherwise that many requests at once, each key serialized.
    const slots = FifoLock.make(maxInFlight)
    const keyLocks = new Map<string, { readonly lock: FifoLock.FifoLock; users: number }>()
    const withKeyLock = (key: string) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
      Effect.uninterruptibleMask((restore) =>
        Effect.suspend(() => {
          let entry = keyLocks.get(key)
          if (entry === undefined) {
            entry = { lock: FifoLock.make(), users: 0 }
            keyLocks.set(key, entry)
          }
          const held = entry
          held.users++
          return Effect.ensuring(
            restore(held.lock.withLock(effect)),
            Effect.sync(() => {
              if (--held.users === 0) keyLocks.delete(key)
            })
          )
        })
      )

    // The ends of the retransmission waits: one timer fiber for the client's life posts a `WaitOver` into a
    // request's mailbox at its deadline (a timeout race per attempt would fork two fibers per request). Every
    // deadline is at least `initialTimeout` after it is set, so a timer that never sleeps longer than that wakes in
    // time for any deadline set while it sleeps: only an idle timer (no deadline at all) needs waking.
    const waiting = new Set<Pending>()
    const initialTimeoutMillis = Math.max(1, Duration.toMillis(initialTimeout))
    let timerIdle = false
    let attempts = 0
    const timerWake = yield* Queue.sliding<void>(1)
    const setDeadline = (request: Pending, at: number): number => {
      const attempt = ++attempts
      request.deadline = { attempt, at }
      waiting.add(request)
      if (timerIdle) {
        timerIdle = false
        timerWake.unsafeOffer(undefined)
      }
      return attempt
    }
    const clearDeadline = (request: Pending): void => {
      request.deadline = undefined
      waiting.delete(request)
    }
    yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      // from here to the sleep nothing else runs
      let next: number | undefined
      for (const request of waiting) {
        const deadline = request.deadline
        if (deadline === undefined) {
          waiting.delete(request)
        } else if (deadline.at <= now) {
          clearDeadline(request)
          request.mailbox.offer({ _tag: "WaitOver", attempt: deadline.attempt })
        } else if (next === undefined || deadline.at < next) {
          next = deadline.at
        }
      }
      if (next === undefined) {
        timerIdle = true
        yield* Queue.take(timerWake)
      } else {
        yield* Effect.sleep(Duration.millis(Math.min(next, now + initialTimeoutMillis) - now))
      }
    })))

    // RFC 6886 §3.6: the epoch must advance by at least 7/8 of the local time elapsed, within 2 s. The time elapsed
    // is counted from the arrival of the latest reply (the gateway had its epoch then at the latest) to `sentAt`,
    // when this reply's request went out (the gateway answered after that), so a reply handled late (a backlog, a
    // stalled process) is not mistaken for a gateway that lost its state.
    const observeEpoch = (epoch: number, sentAt: number, arrivedAt: number) =>
      Effect.gen(function*() {
        const reset = yield* Ref.modify(lastEpoch, (last): [GatewayReset | undefined, Option.Option<EpochMark>] => {
          const next = Option.some({ epoch, at: arrivedAt })
          if (Option.isNone(last)) {
            return [undefined, next]
          }
          const elapsedSeconds = Math.max(0, sentAt - last.value.at) / 1000
          const expectedEpoch = Math.floor(last.value.epoch + elapsedSeconds * 7 / 8)
          return epoch + 2 < expectedEpoch
            ? [GatewayEvent.GatewayReset({ gateway, epoch, previousEpoch: last.value.epoch, expectedEpoch }), next]
            : [undefined, arrivedAt >= last.value.at ? next : last] // replies handled out of order keep the latest
        })
        if (reset !== undefined) {
          yield* Effect.logWarning("NAT-PMP gateway lost its mapping state (epoch went backwards)").pipe(
            Effect.annotateLogs({ epoch, previousEpoch: reset.previousEpoch, expectedEpoch: reset.expectedEpoch })
          )
          yield* PubSub.publish(events, reset)
        }
      })

    // Waits for the reply to a request; fails early on ICMP port unreachable.
    const awaitReply = (request: Pending, attempt: number) =>
      Effect.gen(function*() {
        while (true) {
          const item = yield* request.mailbox.take
          switch (item._tag) {
            case "WaitOver":
              if (item.attempt === attempt) return Option.none()
              continue
            case "Unreachable":
              return yield* new NatPmpUnreachableError({ gateway: label, cause: item.cause })
            case "Reply":
              clearDeadline(request)
              return Option.some(item)
          }
        }
      })

    // Retransmitted after 250 ms, 500 ms, 1 s … (RFC 6886 §3.1).
    const send = (request: NatPmpMessage.Request): Effect.Effect<NatPmpMessage.Response, NatPmpError> => {
      const key = requestReplyKey(request)
      return Effect.acquireUseRelease(
        Effect.sync(() => {
          const waiter: Pending = { opcode: opcodeOfRequest(request), mailbox: new Mailbox(), deadline: undefined }
          pending.set(key, waiter)
          return waiter
        }),
        (waiter) =>
          Effect.gen(function*() {
            const bytes = NatPmpMessage.encodeRequest(request)
            const sentAt = yield* Clock.currentTimeMillis
            let timeout = initialTimeout
            let elapsed = Duration.zero
            for (let attempt = 1; attempt <= maxAttempts; attempt++) {
              yield* Udp.send(socket, bytes).pipe(
                Effect.mapError((failure) =>
                  failure.code === "ECONNREFUSED"
                    ? new NatPmpUnreachableError({ gateway: label, cause: failure.cause })
                    : socketError(failure)
                )
              )
              // The timer ends the wait with a `WaitOver` also when the caller is uninterruptible (finalizers,
              // releases, scope undos); an interruptible caller can still be interrupted while it waits.
              const now = yield* Clock.currentTimeMillis
              const reply = yield* awaitReply(waiter, setDeadline(waiter, now + Duration.toMillis(timeout)))
              if (Option.isSome(reply)) {
                yield* observeEpoch(reply.value.response.epoch, sentAt, reply.value.arrivedAt)
                return reply.value.response
              }
              elapsed = Duration.sum(elapsed, timeout)
              timeout = Duration.times(timeout, 2)
            }
            return yield* new NatPmpTimeoutError({
              gateway: label,
              opcode: opcodeOfRequest(request),
              attempts: maxAttempts,
              elapsed
            })
          }),
        (waiter) =>
          Effect.sync(() => {
            clearDeadline(waiter)
            if (pending.get(key) === waiter) pending.delete(key)
          })
      )
    }

    // Spans without the call site's stack trace: capturing one costs more than the rest of a request's span work.
    const spanOptions = { captureStackTrace: false } as const

    // One request at a time per key (replies could not be told apart), at most `maxInFlight` in all, in order.
    const exchange = (request: NatPmpMessage.Request): Effect.Effect<NatPmpMessage.Response, NatPmpError> =>
      maxInFlight === 1
        ? slots.withLock(send(request))
        : send(request).pipe(slots.withLock, withKeyLock(requestLockKey(request)))

    const resultError = (request: NatPmpMessage.Request, response: NatPmpMessage.Response) =>
      new NatPmpResultError({ gateway: label, opcode: opcodeOfRequest(request), resultCode: response.resultCode })

    const publicAddress = Effect.gen(function*() {
      const request: NatPmpMessage.Request = { _tag: "PublicAddressRequest" }
      const response = yield* exchange(request)
      if (response._tag !== "PublicAddressResponse" || response.resultCode !== NatPmpMessage.ResultCode.Success) {
        return yield* resultError(request, response)
      }
      yield* Ref.set(lastPublicAddress, Option.some(response.publicAddress))
      return { publicAddress: response.publicAddress, epoch: response.epoch }
    }).pipe(Effect.withSpan("NatPmpClient.publicAddress", spanOptions), Effect.annotateLogs({ gateway: label }))

    const mapRequest = (request: NatPmpMessage.MapRequest) =>
      Effect.gen(function*() {
        const response = yield* exchange(request)
        if (response._tag !== "MapResponse" || response.resultCode !== NatPmpMessage.ResultCode.Success) {
          return yield* resultError(request, response)
        }
        return {
          protocol: response.protocol,
          internalPort: response.internalPort,
          externalPort: response.externalPort,
          lifetime: response.lifetime,
          epoch: response.epoch
        } satisfies Mapping
      }).pipe(Effect.annotateLogs({ gateway: label }))

    const map = (options: MapOptions) =>
      Effect.gen(function*() {
        const suggestedExternalPort = options.suggestedExternalPort ?? 0
        const lifetime = options.lifetime ?? NatPmpMessage.RecommendedLifetime
        yield* checkPort("internalPort", options.internalPort, 1)
        yield* checkPort("suggestedExternalPort", suggestedExternalPort, 0)
        yield* checkLifetime(lifetime)
        return yield* mapRequest({
          _tag: "MapRequest",
          protocol: options.protocol,
          internalPort: options.internalPort,
          suggestedExternalPort,
          lifetime
        })
      }).pipe(Effect.withSpan("NatPmpClient.map", spanOptions))

    const unmap = (protocol: Protocol, internalPort: number) =>
      checkPort("internalPort", internalPort, 1).pipe(
        Effect.zipRight(
          mapRequest({ _tag: "MapRequest", protocol, internalPort, suggestedExternalPort: 0, lifetime: 0 })
        ),
        Effect.asVoid,
        Effect.withSpan("NatPmpClient.unmap", spanOptions)
      )

    const unmapAll = (protocol: Protocol) =>
      mapRequest({ _tag: "MapRequest", protocol, internalPort: 0, suggestedExternalPort: 0, lifetime: 0 }).pipe(
        Effect.asVoid,
        Effect.withSpan("NatPmpClient.unmapAll", spanOptions)
      )

    // Announcements (RFC 6886 §3.2.1): op-128 responses from the gateway's address, to 224.0.0.1:5350.
    const onAnnouncement = (datagram: Udp.Incoming, arrivedAt: number) =>
      Effect.gen(function*() {
        if (datagram._tag === "Error" || datagram.address !== gateway) {
          return
        }
        const response = NatPmpMessage.decodeResponse(datagram.bytes)
        if (
          Either.isLeft(response) || response.right._tag !== "PublicAddressResponse" ||
          response.right.resultCode !== NatPmpMessage.ResultCode.Success
        ) {
          return
        }
        const { epoch, publicAddress } = response.right
        yield* observeEpoch(epoch, arrivedAt, arrivedAt)
        const previous = yield* Ref.getAndSet(lastPublicAddress, Option.some(publicAddress))
        if (Option.isSome(previous) && previous.value === publicAddress) {
          return
        }
        yield* Effect.logInfo(`NAT-PMP gateway announced public address ${publicAddress}`)
        yield* PubSub.publish(
          events,
          GatewayEvent.Announcement({
            gateway,
            publicAddress,
            previousPublicAddress: Option.getOrUndefined(previous),
            epoch
          })
        )
      })

    const announcementListener = options.announcements === false
      ? Option.none()
      : yield* listenForAnnouncements(options.announcements ?? {}, onAnnouncement).pipe(
        Effect.map(Option.some),
        Effect.catchAll((failure) =>
          Effect.as(
            Effect.logWarning(`not listening for NAT-PMP announcements: ${failure.message}`),
            Option.none()
          )
        )
      )

    return {
      gateway,
      port,
      publicAddress,
      map,
      unmap,
      unmapAll,
      events: Stream.fromPubSub(events),
      subscribe: PubSub.subscribe(events),
      announcementListener
    } satisfies Service
  }).pipe(Effect.annotateLogs({ service: "NatPmpClient" }))

const listenForAnnouncements = (
  options: { readonly address?: string | undefined; readonly port?: number | undefined },
  handle: (datagram: Udp.Incoming, arrivedAt: number) => Effect.Effect<void>
): Effect.Effect<{ readonly address: string; readonly port: number }, Udp.SocketFailure, Scope.Scope> =>
  Effect.gen(function*() {
    const address = options.address ?? NatPmpMessage.AnnouncementAddress
    const multicast = Udp.isMulticast(address)
    const clock = yield* Effect.clock
    const received = yield* Queue.sliding<{ readonly datagram: Udp.Incoming; readonly at: number }>(64)
    const socket = yield* Udp.open(
      {
        address: multicast ? undefined : address,
        port: options.port ?? NatPmpMessage.AnnouncementPort,
        reuseAddr: true
      },
      (datagram) => received.unsafeOffer({ datagram, at: clock.unsafeCurrentTimeMillis() })
    )
    if (multicast) {
      yield* Udp.addMembership(socket, address).pipe(
        Effect.catchAll((failure) =>
          Effect.logWarning(`NAT-PMP announcements sent to ${address} will not arrive: ${failure.message}`)
        )
      )
    }
    yield* Effect.forkScoped(
      Effect.forever(Effect.flatMap(Queue.take(received), ({ at, datagram }) => handle(datagram, at)))
    )
    return { address, port: Udp.localAddress(socket).port }
  })

/** A layer providing {@link NatPmpClient}; see {@link make}. */
export const layer = (options: Options): Layer.Layer<NatPmpClient, NatPmpSocketError> =>
  Layer.scoped(NatPmpClient, make(options))

// -----------------------------------------------------------------------------
// keep-alive
// -----------------------------------------------------------------------------

/** Why {@link keep} (re)mapped. */
export type KeepReason = "initial" | "renewal" | "gateway-reset" | "announcement"

/**
 * What a keep-alive did, in order:
 *
 * - `Mapped`: the gateway granted (or renewed) the mapping; `previous` is the mapping before, if any.
 * - `PortChanged`: follows `Mapped` when the external port differs from the previous one.
 * - `MappingFailed`: a renewal or re-mapping failed; the next attempt comes after `retryIn`.
 * - `Unmapped` / `UnmapFailed`: the scope closed and the mapping was deleted, or could not be.
 */
export type KeepEvent = Data.TaggedEnum<{
  Mapped: { readonly mapping: Mapping; readonly reason: KeepReason; readonly previous: Mapping | undefined }
  PortChanged: { readonly mapping: Mapping; readonly previousExternalPort: number }
  MappingFailed: { readonly error: NatPmpError; readonly reason: KeepReason; readonly retryIn: Duration.Duration }
  Unmapped: { readonly mapping: Mapping }
  UnmapFailed: { readonly mapping: Mapping; readonly message: string }
}>

/** Constructors and matchers for {@link KeepEvent}. */
export const KeepEvent = Data.taggedEnum<KeepEvent>()

/** Options of {@link keep}: the mapping to hold, and how to report and pace the work. */
export interface KeepOptions extends MapOptions {
  /** Called with every event, in order; the keep-alive waits for it. */
  readonly onEvent?: ((event: KeepEvent) => Effect.Effect<void>) | undefined
  /** Delay before re-mapping after a reset or an announcement (default: random 0–5 s, RFC 6886 §3.6). */
  readonly remapDelay?: Effect.Effect<Duration.DurationInput> | undefined
  /** Delay before retrying a failed renewal (default 5 s). */
  readonly retryDelay?: Duration.DurationInput | undefined
  /** Bound on the delete request when the scope closes (default 5 s). */
  readonly unmapTimeout?: Duration.DurationInput | undefined
}

/** A mapping held by {@link keep}. */
export interface KeepAlive {
  /** The current mapping. */
  readonly mapping: Effect.Effect<Mapping>
  /** The current mapping, then each new one. */
  readonly changes: Stream.Stream<Mapping>
}

const defaultRemapDelay: Effect.Effect<Duration.DurationInput> = Effect.map(
  Random.nextIntBetween(0, 5001),
  Duration.millis
)

const renewalDelay = (mapping: Mapping): Duration.Duration => Duration.seconds(Math.max(1, mapping.lifetime) / 2)

/**
 * Maps a port and keeps it mapped for the life of the scope (RFC 6886 §3.3, §3.6):
 * renews at half the granted lifetime suggesting the assigned external port, re-maps after a random 0–5 s delay
 * when the gateway resets or announces a new address, retries failed renewals, and deletes the mapping when the
 * scope closes. Fails only if the first mapping fails.
 */
export const keep = (options: KeepOptions): Effect.Effect<KeepAlive, NatPmpError, NatPmpClient | Scope.Scope> =>
  Effect.gen(function*() {
    const client = yield* NatPmpClient
    const onEvent = options.onEvent ?? (() => Effect.void)
    const remapDelay = options.remapDelay ?? defaultRemapDelay
    const retryDelay = Duration.decode(options.retryDelay ?? Duration.seconds(5))
    const unmapTimeout = options.unmapTimeout ?? Duration.seconds(5)
    const request = (suggestedExternalPort: number | undefined) =>
      client.map({
        protocol: options.protocol,
        internalPort: options.internalPort,
        suggestedExternalPort,
        lifetime: options.lifetime
      })

    const gatewayEvents = yield* client.subscribe
    const first = yield* request(options.suggestedExternalPort)
    const current = yield* SubscriptionRef.make(first)
    yield* onEvent(KeepEvent.Mapped({ mapping: first, reason: "initial", previous: undefined }))

    // Added before the loop is forked, so it runs after the loop is interrupted.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        const mapping = yield* SubscriptionRef.get(current)
        const result = yield* client.unmap(options.protocol, options.internalPort).pipe(
          Effect.timeoutFail({
            duration: unmapTimeout,
            onTimeout: () => new Error(`no answer within ${Duration.format(unmapTimeout)}`)
          }),
          Effect.either
        )
        if (Either.isRight(result)) {
          yield* onEvent(KeepEvent.Unmapped({ mapping }))
        } else {
          yield* Effect.logWarning(`could not delete the mapping: ${result.left.message}`)
          yield* onEvent(KeepEvent.UnmapFailed({ mapping, message: result.left.message }))
        }
      })
    )

    const remap = (reason: KeepReason) =>
      Effect.gen(function*() {
        const previous = yield* SubscriptionRef.get(current)
        const result = yield* Effect.either(request(previous.externalPort))
        if (Either.isLeft(result)) {
          yield* Effect.logWarning(`NAT-PMP ${reason} failed: ${result.left.message}`)
          yield* onEvent(KeepEvent.MappingFailed({ error: result.left, reason, retryIn: retryDelay }))
          return retryDelay
        }
        const mapping = result.right
        yield* SubscriptionRef.set(current, mapping)
        yield* onEvent(KeepEvent.Mapped({ mapping, reason, previous }))
        if (mapping.externalPort !== previous.externalPort) {
          yield* Effect.logInfo(
            `NAT-PMP external port changed from ${previous.externalPort} to ${mapping.externalPort}`
          )
          yield* onEvent(KeepEvent.PortChanged({ mapping, previousExternalPort: previous.externalPort }))
        }
        return renewalDelay(mapping)
      })

    const loop = Effect.gen(function*() {
      let wait = renewalDelay(first)
      while (true) {
        const event = yield* Effect.timeoutOption(Queue.take(gatewayEvents), wait)
        if (Option.isNone(event)) {
          wait = yield* remap("renewal")
          continue
        }
        yield* Effect.sleep(yield* remapDelay)
        yield* Queue.takeAll(gatewayEvents) // one re-mapping for a burst of events
        wait = yield* remap(event.value._tag === "GatewayReset" ? "gateway-reset" : "announcement")
      }
    })
    yield* Effect.forkScoped(loop)

    return { mapping: SubscriptionRef.get(current), changes: current.changes } satisfies KeepAlive
  }).pipe(
    Effect.annotateLogs({
      service: "NatPmpClient.keep",
      protocol: options.protocol,
      internalPort: options.internalPort
    })
  )
