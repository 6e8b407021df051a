/**
 * A bare NAT-PMP client bound to a chosen source address (e.g. `127.0.0.20`: the whole 127.0.0.0/8 is loopback on
 * Linux), for tests of the bridge with several LAN clients. It sends exactly what it is told (no retransmission
 * unless asked), so tests can count and time the bridge's answers. It uses the core codecs.
 *
 * @since 0.1.0
 */
import { NatPmpMessage, UdpSocket as Udp } from "@natpmp-bridge/core"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"

/** No answer within the wait. */
export class LanClientTimeoutError extends Data.TaggedError("LanClientTimeoutError")<{
  readonly client: string
  readonly timeout: Duration.Duration
}> {
  override get message(): string {
    return `LAN client ${this.client}: no answer within ${Duration.format(this.timeout)}`
  }
}

/** The client's socket failed (bind, send). */
export class LanClientError extends Data.TaggedError("LanClientError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `LAN client: ${this.reason}`
  }
}

const socketError = (error: Udp.SocketFailure) => new LanClientError({ reason: error.message, cause: error })

/** A datagram the client received. */
export interface Received {
  readonly bytes: Uint8Array
  readonly response: Option.Option<NatPmpMessage.Response>
  readonly from: { readonly address: string; readonly port: number }
  /** Clock milliseconds. */
  readonly at: number
}

/** A running LAN client. */
export interface LanClient {
  /** Its source address and port. */
  readonly address: string
  readonly port: number
  /** Sends raw bytes to the bridge. */
  readonly send: (bytes: Uint8Array) => Effect.Effect<void, LanClientError>
  /** Waits for the next datagram (or fails after `timeout`, default 3 s). */
  readonly receive: (timeout?: Duration.DurationInput) => Effect.Effect<Received, LanClientTimeoutError>
  /** Nothing arrives within `wait` (default 300 ms): `true`. */
  readonly silentFor: (wait?: Duration.DurationInput) => Effect.Effect<boolean>
  /**
   * Sends a request and waits for its answer (concurrent requests each get theirs; other datagrams stay for
   * `receive`); `elapsed` in milliseconds. With `retransmit`, the request is sent again after 250 ms, doubling,
   * like an RFC client (default: sent once).
   */
  readonly request: (
    request: NatPmpMessage.Request,
    options?: {
      readonly timeout?: Duration.DurationInput | undefined
      readonly retransmit?: boolean | undefined
    }
  ) => Effect.Effect<{ readonly response: NatPmpMessage.Response; readonly elapsed: number }, LanClientTimeoutError>
  /** Op 1/2 (lifetime default 7200). */
  readonly map: (options: {
    readonly protocol: NatPmpMessage.Protocol
    readonly internalPort: number
    readonly suggestedExternalPort?: number | undefined
    readonly lifetime?: number | undefined
  }) => Effect.Effect<NatPmpMessage.MapResponse, LanClientTimeoutError>
  /** Op 1/2 with lifetime 0 (internal port 0: all of this client's mappings of the protocol). */
  readonly unmap: (
    protocol: NatPmpMessage.Protocol,
    internalPort: number
  ) => Effect.Effect<NatPmpMessage.MapResponse, LanClientTimeoutError>
  /** Op 0. */
  readonly publicAddress: Effect.Effect<NatPmpMessage.PublicAddressResponse, LanClientTimeoutError>
}

/** Opens a client bound to `address` (ephemeral port) that talks to `bridge`, for the life of the scope. */
export const make = (options: {
  readonly address: string
  readonly bridge: { readonly address: string; readonly port: number }
}): Effect.Effect<LanClient, LanClientError, Scope.Scope> =>
  Effect.gen(function*() {
    const inbox = yield* Queue.unbounded<Received>()
    // requests waiting for their answer; answers nobody waits for go to the inbox
    const waiters = new Set<{
      readonly request: NatPmpMessage.Request
      readonly answer: Deferred.Deferred<NatPmpMessage.Response>
    }>()
    const socket = yield* Udp.open(
      { address: options.address, port: 0 },
      (datagram) => {
        if (datagram._tag !== "Datagram") {
          return
        }
        const response = Either.getRight(NatPmpMessage.decodeResponse(datagram.bytes))
        if (Option.isSome(response)) {
          for (const waiter of waiters) {
            if (matches(waiter.request, response.value)) {
              waiters.delete(waiter)
              Deferred.unsafeDone(waiter.answer, Exit.succeed(response.value))
              return
            }
          }
        }
        inbox.unsafeOffer({
          bytes: datagram.bytes,
          response,
          from: { address: datagram.address, port: datagram.port },
          at: Date.now()
        })
      }
    ).pipe(Effect.mapError(socketError))
    const send = (bytes: Uint8Array) => Udp.send(socket, bytes, options.bridge).pipe(Effect.mapError(socketError))

    const receive = (timeout: Duration.DurationInput = Duration.seconds(3)) =>
      Queue.take(inbox).pipe(
        Effect.timeoutFail({
          duration: timeout,
          onTimeout: () => new LanClientTimeoutError({ client: options.address, timeout: Duration.decode(timeout) })
        })
      )

    const silentFor = (wait: Duration.DurationInput = Duration.millis(300)) =>
      Queue.take(inbox).pipe(
        Effect.timeout(wait),
        Effect.match({ onFailure: () => true, onSuccess: () => false })
      )

    const matches = (request: NatPmpMessage.Request, response: NatPmpMessage.Response): boolean => {
      switch (response._tag) {
        case "PublicAddressResponse":
          return request._tag === "PublicAddressRequest"
        case "MapResponse":
          return request._tag === "MapRequest" && request.protocol === response.protocol &&
            request.internalPort === response.internalPort
        case "ErrorResponse":
          return response.opcode === (request._tag === "PublicAddressRequest" ? 0 : NatPmpMessage.opcodeOf(
            request.protocol
          ))
      }
    }

    const request: LanClient["request"] = (message, requestOptions) =>
      Effect.gen(function*() {
        const timeout = Duration.decode(requestOptions?.timeout ?? Duration.seconds(3))
        const started = Date.now()
        const bytes = NatPmpMessage.encodeRequest(message)
        const answer = yield* Deferred.make<NatPmpMessage.Response>()
        const waiter = { request: message, answer }
        yield* Effect.acquireRelease(
          Effect.sync(() => waiters.add(waiter)),
          () => Effect.sync(() => waiters.delete(waiter))
        )
        yield* Effect.orDie(send(bytes))
        if (requestOptions?.retransmit === true) {
          yield* Effect.forkScoped(Effect.gen(function*() {
            for (let wait = 250;; wait *= 2) {
              yield* Effect.sleep(Duration.millis(wait))
              yield* Effect.ignore(send(bytes))
            }
          }))
        }
        const response = yield* Deferred.await(answer).pipe(
          Effect.timeoutFail({
            duration: timeout,
            onTimeout: () => new LanClientTimeoutError({ client: options.address, timeout })
          })
        )
        return { response, elapsed: Date.now() - started }
      }).pipe(Effect.scoped)

    const map: LanClient["map"] = (mapOptions) =>
      request({
        _tag: "MapRequest",
        protocol: mapOptions.protocol,
        internalPort: mapOptions.internalPort,
        suggestedExternalPort: mapOptions.suggestedExternalPort ?? 0,
        lifetime: mapOptions.lifetime ?? NatPmpMessage.RecommendedLifetime
      }).pipe(Effect.map(({ response }) => response as NatPmpMessage.MapResponse))

    return {
      address: Udp.localAddress(socket).address,
      port: Udp.localAddress(socket).port,
      send,
      receive,
      silentFor,
      request,
      map,
      unmap: (protocol, internalPort) => map({ protocol, internalPort, lifetime: 0 }),
      publicAddress: request({ _tag: "PublicAddressRequest" }).pipe(
        Effect.map(({ response }) => response as NatPmpMessage.PublicAddressResponse)
      )
    } satisfies LanClient
  })
