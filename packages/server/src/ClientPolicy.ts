/**
 * Who may use the bridge and how much: the LAN networks requests are accepted from (requests from anywhere else
 * are dropped without an answer, RFC 6886 §3), the per-client mapping quota and the lifetime cap.
 *
 * @since 0.1.0
 */
import { Ipv4 } from "@natpmp-bridge/core"
import * as Context from "effect/Context"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"

// -----------------------------------------------------------------------------
// IPv4 networks
// -----------------------------------------------------------------------------

/** An IPv4 network: `base` is the network address as an unsigned 32-bit integer. */
export interface Ipv4Network {
  readonly base: number
  readonly prefix: number
}

/** `a.b.c.d` → unsigned 32-bit integer, or `undefined` when it is not a dotted quad. */
export const parseIpv4 = (text: string): number | undefined => Ipv4.parse(text.trim())

/** Unsigned 32-bit integer → `a.b.c.d`. */
export const formatIpv4: (value: number) => string = Ipv4.format

/** `a.b.c.d/n` or `a.b.c.d` (a /32); host bits are cleared (`192.168.88.1/24` is `192.168.88.0/24`). */
export const parseNetwork = (text: string): Either.Either<Ipv4Network, string> => {
  const cidr = Ipv4.parseCidr(text.trim())
  if (cidr === undefined) {
    return Either.left(`"${text}" is not an IPv4 address or network (a.b.c.d or a.b.c.d/n)`)
  }
  return Either.right({ base: Ipv4.network(cidr.address, cidr.prefix), prefix: cidr.prefix })
}

/** Parses a comma-separated list of networks (`192.168.88.0/24, 10.0.0.5`). */
export const parseNetworks = (text: string): Either.Either<ReadonlyArray<Ipv4Network>, string> => {
  const items = text.split(",").map((item) => item.trim()).filter((item) => item !== "")
  if (items.length === 0) return Either.left("expected at least one IPv4 network")
  return Either.all(items.map(parseNetwork))
}

/** `a.b.c.d/n`. */
export const formatNetwork = (network: Ipv4Network): string => `${formatIpv4(network.base)}/${network.prefix}`

/** Whether `address` (dotted quad) lies in `network`. */
export const networkContains = (network: Ipv4Network, address: string): boolean => {
  const value = parseIpv4(address)
  return value !== undefined && Ipv4.contains({ address: network.base, prefix: network.prefix }, value)
}

/** IPv4-mapped IPv6 source addresses (`::ffff:a.b.c.d`) as dotted quads; anything else unchanged. */
export const normalizeAddress = (address: string): string =>
  address.startsWith("::ffff:") && parseIpv4(address.slice(7)) !== undefined ? address.slice(7) : address

// -----------------------------------------------------------------------------
// service
// -----------------------------------------------------------------------------

/** The policy applied to LAN clients. */
export interface Service {
  /** Networks requests are accepted from. */
  readonly allowedNetworks: ReadonlyArray<Ipv4Network>
  /** Longest lifetime granted, in seconds. */
  readonly maxLifetime: number
  /** Most mappings one client may hold (UDP and TCP together). */
  readonly clientQuota: number
  /** Whether requests from `address` are answered at all. */
  readonly isAllowed: (address: string) => boolean
}

/** The client policy service. */
export class ClientPolicy extends Context.Tag("@natpmp-bridge/server/ClientPolicy")<ClientPolicy, Service>() {}

/** Policy options. */
export interface Options {
  readonly allowedNetworks: ReadonlyArray<Ipv4Network>
  readonly maxLifetime: number
  readonly clientQuota: number
}

/** A policy from explicit options. */
export const make = (options: Options): Service => {
  // the answer for an address never changes: remembered for the addresses seen last (every datagram asks)
  const decisions = new Map<string, boolean>()
  return {
    allowedNetworks: options.allowedNetworks,
    maxLifetime: options.maxLifetime,
    clientQuota: options.clientQuota,
    isAllowed: (address) => {
      const known = decisions.get(address)
      if (known !== undefined) return known
      const normalized = normalizeAddress(address)
      const allowed = options.allowedNetworks.some((network) => networkContains(network, normalized))
      if (decisions.size >= 4096) decisions.clear()
      decisions.set(address, allowed)
      return allowed
    }
  }
}

/** A layer providing {@link ClientPolicy}. */
export const layer = (options: Options): Layer.Layer<ClientPolicy> => Layer.succeed(ClientPolicy, make(options))
