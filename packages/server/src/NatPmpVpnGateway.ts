/**
 * The {@link VpnGateway} of a NAT-PMP gateway (ProtonVPN's `10.2.0.1`, miniupnpd...) over core's `NatPmpClient`.
 *
 * - Requests are bounded: few retransmissions (default 3 sends, 250 ms doubling: about 1.75 s) so a LAN client is
 *   answered within the bridge's answer bound even when the VPN is silent.
 * - The public address is cached and refreshed in the background (faster while it is unknown).
 * - The epoch check of every reply (done by the client, RFC 6886 §3.6) and address changes are reported as
 *   {@link VpnEvent}s.
 *
 * @since 0.1.0
 */
import { NatPmpClient } from "@natpmp-bridge/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type { Service } from "./VpnGateway.js"
import { VpnEvent, VpnGateway, VpnGatewayError } from "./VpnGateway.js"

/** Options of the NAT-PMP VPN gateway. */
export interface Options {
  /** The gateway's address, e.g. `10.2.0.1`. */
  readonly gateway: string
  /** Its NAT-PMP port (default 5351). */
  readonly port?: number | undefined
  /** Wait before the first retransmission, doubling (default 250 ms). */
  readonly initialTimeout?: Duration.DurationInput | undefined
  /** Sends per request (default 3: about 1.75 s before giving up). */
  readonly maxAttempts?: number | undefined
  /** Requests outstanding at once, each mapping's requests serial (default 1: RFC 6886's serial queue). */
  readonly maxInFlight?: number | undefined
  /** How often the public address is re-read (default 60 s). */
  readonly refreshInterval?: Duration.DurationInput | undefined
  /** How often it is retried while unknown (default 5 s). */
  readonly retryInterval?: Duration.DurationInput | undefined
}

/** Translates a NAT-PMP client error to a {@link VpnGatewayError}. */
export const fromNatPmpError = (error: NatPmpClient.NatPmpError): VpnGatewayError => {
  switch (error._tag) {
    case "NatPmpResultError":
      return new VpnGatewayError({
        reason: error.resultCode === 2 ? "Refused" : error.resultCode === 4 ? "OutOfResources" : "NetworkFailure",
        detail: error.message,
        cause: error
      })
    case "NatPmpTimeoutError":
      return new VpnGatewayError({ reason: "Timeout", detail: error.message, cause: error })
    case "NatPmpUnreachableError":
      return new VpnGatewayError({ reason: "Unreachable", detail: error.message, cause: error })
    case "NatPmpSocketError":
      return new VpnGatewayError({ reason: "Socket", detail: error.message, cause: error })
  }
}

/** Creates the gateway service over the `NatPmpClient` in context. */
export const fromClient = (
  options: Pick<Options, "refreshInterval" | "retryInterval"> = {}
): Effect.Effect<Service, never, NatPmpClient.NatPmpClient | Scope.Scope> =>
  Effect.gen(function*() {
    const client = yield* NatPmpClient.NatPmpClient
    const events = yield* Effect.acquireRelease(PubSub.unbounded<VpnEvent>(), PubSub.shutdown)
    let cached = Option.none<string>()

    const observeAddress = (address: string) =>
      Effect.gen(function*() {
        const previous = cached
        cached = Option.some(address)
        if (Option.isSome(previous) && previous.value !== address) {
          yield* Effect.logWarning(`VPN public address changed from ${previous.value} to ${address}`)
          yield* PubSub.publish(events, VpnEvent.PublicAddressChanged({ previous: previous.value, current: address }))
        }
      })

    const clientEvents = yield* client.subscribe
    yield* Effect.forkScoped(Effect.forever(
      Effect.flatMap(Queue.take(clientEvents), (event) =>
        event._tag === "GatewayReset"
          ? PubSub.publish(events, VpnEvent.StateLost({ epoch: event.epoch, previousEpoch: event.previousEpoch }))
          : observeAddress(event.publicAddress))
    ))

    const refreshPublicAddress = client.publicAddress.pipe(
      Effect.mapError(fromNatPmpError),
      Effect.tap((info) => observeAddress(info.publicAddress)),
      Effect.map((info) => info.publicAddress)
    )

    const refreshInterval = Duration.decode(options.refreshInterval ?? Duration.seconds(60))
    const retryInterval = Duration.decode(options.retryInterval ?? Duration.seconds(5))
    yield* Effect.forkScoped(Effect.forever(
      Effect.gen(function*() {
        const known = Option.isSome(cached)
        yield* Effect.sleep(known ? refreshInterval : retryInterval)
        // learnt meanwhile (the start-up read, an announcement): the next read is a whole refresh interval away
        if (!known && Option.isSome(cached)) return
        yield* refreshPublicAddress.pipe(
          Effect.catchAll((error) => Effect.logWarning(`cannot read the VPN public address: ${error.message}`))
        )
      })
    ))

    return {
      gateway: `${client.gateway}:${client.port}`,
      publicAddress: Effect.sync(() => cached),
      unsafePublicAddress: () => cached,
      refreshPublicAddress,
      map: (request) =>
        client.map({
          protocol: request.protocol,
          internalPort: request.internalPort,
          suggestedExternalPort: request.suggestedExternalPort,
          lifetime: request.lifetime
        }).pipe(
          Effect.mapError(fromNatPmpError),
          Effect.map((mapping) => ({
            externalPort: mapping.externalPort,
            lifetime: mapping.lifetime,
            epoch: mapping.epoch
          }))
        ),
      unmap: (protocol, internalPort) => client.unmap(protocol, internalPort).pipe(Effect.mapError(fromNatPmpError)),
      subscribe: PubSub.subscribe(events)
    } satisfies Service
  }).pipe(Effect.annotateLogs({ service: "NatPmpVpnGateway" }))

/**
 * Creates the gateway service with its own NAT-PMP client (announcement listening off: announcements of a VPN
 * gateway do not cross the router) and reads the public address once (a failure is logged, not fatal: the bridge
 * answers result 3 until the gateway answers).
 */
export const make = (options: Options): Effect.Effect<Service, VpnGatewayError, Scope.Scope> =>
  Effect.gen(function*() {
    const client = yield* NatPmpClient.make({
      gateway: options.gateway,
      port: options.port,
      initialTimeout: options.initialTimeout ?? Duration.millis(250),
      maxAttempts: options.maxAttempts ?? 3,
      maxInFlight: options.maxInFlight,
      announcements: false
    }).pipe(Effect.mapError(fromNatPmpError))
    const service = yield* fromClient(options).pipe(Effect.provideService(NatPmpClient.NatPmpClient, client))
    yield* service.refreshPublicAddress.pipe(
      Effect.tap((address) => Effect.logInfo(`VPN gateway ${service.gateway}: public address ${address}`)),
      Effect.catchAll((error) => Effect.logWarning(`cannot read the VPN public address yet: ${error.message}`))
    )
    return service
  })

/** A layer providing {@link VpnGateway}. */
export const layer = (options: Options): Layer.Layer<VpnGateway, VpnGatewayError> =>
  Layer.scoped(VpnGateway, make(options))
