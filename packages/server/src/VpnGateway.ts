/**
 * The VPN gateway upstream of the router: it grants the public ports. `NatPmpVpnGateway` implements it over the
 * NAT-PMP client of core (ProtonVPN-style WireGuard gateways, RFC gateways such as miniupnpd).
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import type * as Effect from "effect/Effect"
import type * as Option from "effect/Option"
import type * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import type { Protocol } from "./Router.js"

/** A mapping the gateway granted: its public `externalPort` for `lifetime` seconds. */
export interface UpstreamMapping {
  readonly externalPort: number
  readonly lifetime: number
  readonly epoch: number
}

/** A mapping request to the gateway. */
export interface UpstreamRequest {
  readonly protocol: Protocol
  /** The internal port the bridge asks for (see VPN_PORT_MODE). */
  readonly internalPort: number
  /** The public port the bridge would like (0: the gateway picks). */
  readonly suggestedExternalPort: number
  readonly lifetime: number
}

/**
 * Why an upstream request failed:
 * - `Timeout`: no answer in the bounded time (the bridge answers result 3),
 * - `Unreachable`: ICMP port unreachable, nothing speaks NAT-PMP there (3),
 * - `Refused`: the gateway answered result 2, not authorized (2),
 * - `NetworkFailure`: result 3 or an unknown result (3),
 * - `OutOfResources`: result 4 (4),
 * - `Socket`: a local socket failure (3).
 */
export type VpnGatewayFailure = "Timeout" | "Unreachable" | "Refused" | "NetworkFailure" | "OutOfResources" | "Socket"

/** An upstream request failed. */
export class VpnGatewayError extends Data.TaggedError("VpnGatewayError")<{
  readonly reason: VpnGatewayFailure
  readonly detail: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `VPN gateway: ${this.detail}`
  }
}

/**
 * Something upstream changed that invalidates the bridge's mappings:
 * - `StateLost`: the gateway's epoch went backwards (RFC 6886 §3.6): it forgot its mappings,
 * - `PublicAddressChanged`: the gateway reports a different public address.
 */
export type VpnEvent = Data.TaggedEnum<{
  StateLost: { readonly epoch: number; readonly previousEpoch: number }
  PublicAddressChanged: { readonly previous: string; readonly current: string }
}>

/** Constructors and matchers for {@link VpnEvent}. */
export const VpnEvent = Data.taggedEnum<VpnEvent>()

/** What the bridge needs from the VPN gateway. */
export interface Service {
  /** The gateway's address, for logs. */
  readonly gateway: string
  /** The last public address read (refreshed in the background); `None` until the gateway has answered once. */
  readonly publicAddress: Effect.Effect<Option.Option<string>>
  /** The same, read synchronously (for the NAT-PMP server's per-datagram answers), when the implementation can. */
  readonly unsafePublicAddress?: (() => Option.Option<string>) | undefined
  /** Reads the public address now (updating the cache, reporting a change as an event). */
  readonly refreshPublicAddress: Effect.Effect<string, VpnGatewayError>
  /** Creates or renews a mapping, in bounded time. */
  readonly map: (request: UpstreamRequest) => Effect.Effect<UpstreamMapping, VpnGatewayError>
  /** Deletes a mapping (succeeds when there is none), in bounded time. */
  readonly unmap: (protocol: Protocol, internalPort: number) => Effect.Effect<void, VpnGatewayError>
  /** A subscription to upstream events, active as soon as this effect completes, for the scope's life. */
  readonly subscribe: Effect.Effect<Queue.Dequeue<VpnEvent>, never, Scope.Scope>
}

/** The VPN gateway service. */
export class VpnGateway extends Context.Tag("@natpmp-bridge/server/VpnGateway")<VpnGateway, Service>() {}

/** The NAT-PMP result code the bridge answers a LAN client with when the upstream request failed. */
export const resultCodeOf = (error: VpnGatewayError): 2 | 3 | 4 => {
  switch (error.reason) {
    case "Refused":
      return 2
    case "OutOfResources":
      return 4
    default:
      return 3
  }
}
