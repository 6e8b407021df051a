/**
 * The router in front of the LAN: where the bridge creates the dst-nat rules that carry traffic arriving from the
 * VPN to LAN clients. `MikroTikRouter` implements it over the RouterOS API.
 *
 * Also here, independent of any router: the ownership comment of the bridge's rules and the port-conflict check.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import type * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import type { Ipv4Network } from "./ClientPolicy.js"
import { networkContains, parseIpv4, parseNetwork } from "./ClientPolicy.js"
import * as PortSpec from "./PortSpec.js"

/** The transport protocol of a rule the bridge manages. */
export type Protocol = "udp" | "tcp"

// -----------------------------------------------------------------------------
// models
// -----------------------------------------------------------------------------

/** A dst-nat rule as the router reports it (any owner). Absent properties are `undefined`. */
export interface NatRule {
  readonly id: string
  readonly chain?: string | undefined
  readonly action?: string | undefined
  readonly protocol?: string | undefined
  readonly dstPort?: string | undefined
  readonly dstAddress?: string | undefined
  readonly inInterface?: string | undefined
  readonly inInterfaceList?: string | undefined
  readonly toAddresses?: string | undefined
  readonly toPorts?: string | undefined
  readonly comment?: string | undefined
  readonly disabled: boolean
}

/**
 * A rule the bridge wants: traffic arriving on the VPN in-interface for `protocol` / `dstPort` is dst-nat'ed to
 * `toAddress:toPort`.
 */
export interface RuleSpec {
  readonly protocol: Protocol
  readonly dstPort: number
  readonly toAddress: string
  readonly toPort: number
  readonly comment: string
}

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

/** A router operation failed (connection, trap, timeout...); `reason` is the underlying message. */
export class RouterError extends Data.TaggedError("RouterError")<{
  readonly operation: string
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `router: ${this.operation} failed: ${this.reason}`
  }
}

/** The VPN in-interface could not be determined; the bridge never guesses one. */
export class InInterfaceNotFoundError extends Data.TaggedError("InInterfaceNotFoundError")<{
  readonly gateway: string
  readonly reason: string
}> {
  override get message(): string {
    return `cannot determine the router's VPN interface towards ${this.gateway}: ${this.reason}; ` +
      `set MIKROTIK_IN_INTERFACE to name it`
  }
}

// -----------------------------------------------------------------------------
// service
// -----------------------------------------------------------------------------

/** What the bridge needs from a router. */
export interface Service {
  /** The interface traffic from the VPN arrives on; every rule of the bridge matches it. */
  readonly inInterface: string
  /** The router's own addresses on the VPN interface (to tell which `dst-address` rules can apply). */
  readonly vpnAddresses: ReadonlyArray<string>
  /** The router's LAN networks (its addresses' networks, excluding the VPN interface): the default clients. */
  readonly lanNetworks: Effect.Effect<ReadonlyArray<Ipv4Network>, RouterError>
  /** Every rule of the dstnat chain, any owner: one round trip. */
  readonly dstNatRules: Effect.Effect<ReadonlyArray<NatRule>, RouterError>
  /**
   * The rules of the dstnat chain `keep` accepts, filtered as they arrive (a print of thousands of rules is never
   * held whole): one round trip. `keep` sees each rule once, synchronously as it is read (outside any fiber); if it
   * throws, the listing dies with that defect.
   */
  readonly dstNatRulesWhere: (keep: (rule: NatRule) => boolean) => Effect.Effect<ReadonlyArray<NatRule>, RouterError>
  /** Adds a rule on the VPN in-interface; returns its id: one round trip. */
  readonly addRule: (spec: RuleSpec) => Effect.Effect<string, RouterError>
  /**
   * Makes an existing rule match `spec` again (port, target, interface, enabled): one round trip. `current`, when
   * known, lets properties the bridge never sets (`in-interface-list`, `dst-address`) be cleared too.
   */
  readonly updateRule: (id: string, spec: RuleSpec, current?: NatRule) => Effect.Effect<void, RouterError>
  /** Removes rules with one round trip; ids that no longer exist are not an error. */
  readonly removeRules: (ids: ReadonlyArray<string>) => Effect.Effect<void, RouterError>
}

/** The router service. */
export class Router extends Context.Tag("@natpmp-bridge/server/Router")<Router, Service>() {}

// -----------------------------------------------------------------------------
// ownership
// -----------------------------------------------------------------------------

/** The prefix of the comment of every rule the bridge creates. */
export const CommentPrefix = "natpmp-bridge:"

/** Characters allowed in a bridge id: ASCII, and nothing RouterOS or the comment format would trip over. */
export const isValidBridgeId = (id: string): boolean => /^[A-Za-z0-9._-]{1,32}$/.test(id)

/** What a rule's comment says about its owner and purpose. */
export interface Ownership {
  readonly bridgeId: string
  readonly protocol: Protocol
  readonly client: string
  readonly internalPort: number
}

/** The ownership comment, e.g. `natpmp-bridge:home tcp 192.168.88.20:51413` (ASCII only). */
export const ownershipComment = (ownership: Ownership): string =>
  `${CommentPrefix}${ownership.bridgeId} ${ownership.protocol} ${ownership.client}:${ownership.internalPort}`

/** Reads an ownership comment; `None` for any other comment. */
export const parseOwnership = (comment: string | undefined): Option.Option<Ownership> => {
  if (comment === undefined) return Option.none()
  const match = /^natpmp-bridge:([A-Za-z0-9._-]{1,32}) (udp|tcp) (\d{1,3}(?:\.\d{1,3}){3}):(\d{1,5})$/.exec(
    comment.trim()
  )
  if (match === null || parseIpv4(match[3]) === undefined) return Option.none()
  const internalPort = Number(match[4])
  if (internalPort < 1 || internalPort > 65535) return Option.none()
  return Option.some({
    bridgeId: match[1],
    protocol: match[2] as Protocol,
    client: match[3],
    internalPort
  })
}

/** Whether a comment marks a rule of the bridge `bridgeId` (even when the rest of it is damaged). */
export const isOwnComment = (comment: string | undefined, bridgeId: string): boolean =>
  comment !== undefined && (comment.trim() === `${CommentPrefix}${bridgeId}` ||
    comment.trim().startsWith(`${CommentPrefix}${bridgeId} `))

/** Whether an existing rule is exactly what `spec` asks for on `inInterface`. */
export const ruleMatchesSpec = (rule: NatRule, spec: RuleSpec, inInterface: string): boolean =>
  !rule.disabled &&
  rule.chain === "dstnat" &&
  rule.action === "dst-nat" &&
  rule.protocol === spec.protocol &&
  rule.dstPort === String(spec.dstPort) &&
  rule.inInterface === inInterface &&
  (rule.inInterfaceList === undefined || rule.inInterfaceList === "") &&
  (rule.dstAddress === undefined || rule.dstAddress === "") &&
  rule.toAddresses === spec.toAddress &&
  rule.toPorts === String(spec.toPort) &&
  rule.comment === spec.comment

// -----------------------------------------------------------------------------
// port conflicts
// -----------------------------------------------------------------------------

/** Actions that do not decide a packet's fate: such rules cannot take a port away from the bridge's rule. */
const nonTerminalActions = new Set(["log", "passthrough", "add-src-to-address-list", "add-dst-to-address-list"])

/** What a new rule of the bridge would match. */
export interface PortUse {
  readonly protocol: Protocol
  readonly port: number
  readonly inInterface: string
  /** The router's addresses on the VPN interface; a rule whose `dst-address` excludes all of them cannot apply. */
  readonly vpnAddresses?: ReadonlyArray<string> | undefined
}

const negatable = (value: string | undefined): { negated: boolean; value: string } | undefined => {
  if (value === undefined || value.trim() === "") return undefined
  const text = value.trim()
  return text.startsWith("!") ? { negated: true, value: text.slice(1).trim() } : { negated: false, value: text }
}

const interfaceMayMatch = (rule: NatRule, inInterface: string): boolean => {
  const iface = negatable(rule.inInterface)
  if (iface !== undefined && (iface.value === inInterface) === iface.negated) return false
  // interface lists: membership is not known without another round trip, so a list may contain the interface
  return true
}

const protocolMayMatch = (rule: NatRule, protocol: Protocol): boolean => {
  const value = negatable(rule.protocol)
  if (value === undefined) return true
  return (value.value === protocol) !== value.negated
}

const addressMayMatch = (rule: NatRule, vpnAddresses: ReadonlyArray<string> | undefined): boolean => {
  const value = negatable(rule.dstAddress)
  if (value === undefined || vpnAddresses === undefined || vpnAddresses.length === 0) return true
  const network = parseNetwork(value.value)
  if (network._tag === "Left") return true
  const contained = vpnAddresses.some((address) => networkContains(network.right, address))
  return contained !== value.negated
}

/**
 * Whether `rule` could take traffic for `use` (VPN interface, protocol, port) before or instead of a new rule of
 * the bridge. Conservative: enabled or disabled (it can be enabled at any time), comma lists and ranges of ports,
 * negations, interface lists (membership unknown) and rules with no interface (any interface) all count.
 */
export const conflicts = (rule: NatRule, use: PortUse): boolean =>
  (rule.chain === undefined || rule.chain === "dstnat") &&
  !nonTerminalActions.has(rule.action ?? "") &&
  interfaceMayMatch(rule, use.inInterface) &&
  protocolMayMatch(rule, use.protocol) &&
  addressMayMatch(rule, use.vpnAddresses) &&
  PortSpec.mayMatch(rule.dstPort, use.port)

/**
 * The positions of a printed table's rules: those of one protocol and one port by `protocol/port`, the others
 * apart. Built once per table (a print of thousands of rules serves many conflict checks).
 */
interface ConflictIndex {
  readonly exact: Map<string, Array<number>>
  readonly other: ReadonlyArray<number>
}

const conflictIndexes = new WeakMap<ReadonlyArray<NatRule>, ConflictIndex>()

const conflictIndexOf = (rules: ReadonlyArray<NatRule>): ConflictIndex => {
  let index = conflictIndexes.get(rules)
  if (index === undefined) {
    const exact = new Map<string, Array<number>>()
    const other: Array<number> = []
    rules.forEach((rule, position) => {
      const port = PortSpec.single(rule.dstPort)
      if ((rule.protocol === "tcp" || rule.protocol === "udp") && Option.isSome(port)) {
        const key = `${rule.protocol}/${port.value}`
        const positions = exact.get(key)
        if (positions === undefined) exact.set(key, [position])
        else positions.push(position)
      } else {
        other.push(position)
      }
    })
    index = { exact, other }
    conflictIndexes.set(rules, index)
  }
  return index
}

/** The first rule of `rules` (other than those `except` names) that conflicts with `use`. */
export const findConflict = (
  rules: ReadonlyArray<NatRule>,
  use: PortUse,
  except?: (rule: NatRule) => boolean
): Option.Option<NatRule> => {
  if (except !== undefined || rules.length < 32) {
    return Option.fromNullable(rules.find((rule) => (except === undefined || !except(rule)) && conflicts(rule, use)))
  }
  // a rule of one protocol and one port can only conflict on that protocol and port
  const index = conflictIndexOf(rules)
  let first = -1
  for (const positions of [index.exact.get(`${use.protocol}/${use.port}`) ?? [], index.other]) {
    for (const position of positions) {
      if ((first === -1 || position < first) && conflicts(rules[position], use)) first = position
    }
  }
  return first === -1 ? Option.none() : Option.some(rules[first])
}

/** A one-line description of a rule, for logs and error messages. */
export const describeRule = (rule: NatRule): string =>
  [
    rule.id,
    rule.disabled ? "(disabled)" : undefined,
    rule.protocol,
    rule.inInterface === undefined ? undefined : `in-interface=${rule.inInterface}`,
    rule.inInterfaceList === undefined ? undefined : `in-interface-list=${rule.inInterfaceList}`,
    rule.dstPort === undefined ? "any port" : `dst-port=${rule.dstPort}`,
    rule.comment === undefined ? undefined : JSON.stringify(rule.comment)
  ].filter((part) => part !== undefined).join(" ")
