/**
 * Typed RouterOS commands the bridge needs, on top of `RouterOsClient`: dst-nat rules
 * (list, add, set, remove), routes, addresses, the router's version, and the interface through
 * which the router reaches a gateway (RouterOS v6 and v7).
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as Ipv4 from "./Ipv4.js"
import type { RouterOsError } from "./RouterOsClient.js"
import { RouterOsClient } from "./RouterOsClient.js"
import type { Attributes, AttributeValue } from "./RouterOsProtocol.js"
import { RouterOsProtocolError } from "./RouterOsProtocol.js"

// -----------------------------------------------------------------------------
// Models
// -----------------------------------------------------------------------------

/**
 * RouterOS booleans (`true`/`false`, `yes`/`no`) <-> boolean.
 *
 * @since 0.1.0
 * @category schemas
 */
export const BooleanFromRouterOs: Schema.Schema<boolean, "true" | "false" | "yes" | "no"> = Schema.transform(
  Schema.Literal("true", "false", "yes", "no"),
  Schema.Boolean,
  { strict: true, decode: (s) => s === "true" || s === "yes", encode: (b) => (b ? "true" : "false") }
)

const text = (key: string) => Schema.optionalWith(Schema.String, { exact: true }).pipe(Schema.fromKey(key))
const flag = (key: string) =>
  Schema.optionalWith(BooleanFromRouterOs, { default: () => false }).pipe(Schema.fromKey(key))
const id = Schema.propertySignature(Schema.String).pipe(Schema.fromKey(".id"))

/**
 * A firewall NAT rule as printed by the router (RouterOS property names on the wire, camelCase
 * here). Properties a rule does not set are absent; `disabled` defaults to false.
 *
 * @since 0.1.0
 * @category models
 */
export const NatRule = Schema.Struct({
  id,
  chain: text("chain"),
  action: text("action"),
  protocol: text("protocol"),
  dstPort: text("dst-port"),
  dstAddress: text("dst-address"),
  inInterface: text("in-interface"),
  inInterfaceList: text("in-interface-list"),
  toAddresses: text("to-addresses"),
  toPorts: text("to-ports"),
  comment: text("comment"),
  disabled: flag("disabled")
})

/**
 * @since 0.1.0
 * @category models
 */
export type NatRule = typeof NatRule.Type

/**
 * The RouterOS properties `listNatRules` asks for.
 *
 * @since 0.1.0
 * @category constants
 */
export const NAT_RULE_PROPLIST: ReadonlyArray<string> = [
  ".id",
  "chain",
  "action",
  "protocol",
  "dst-port",
  "dst-address",
  "in-interface",
  "in-interface-list",
  "to-addresses",
  "to-ports",
  "comment",
  "disabled"
]

/**
 * An IPv4 route. v7 routers report `immediateGw` (`10.2.0.1%wg-proton`) and `routingTable`;
 * v6 routers report `gatewayStatus` (`10.2.0.1 reachable via  wg-proton`) and `routingMark`.
 *
 * @since 0.1.0
 * @category models
 */
export const Route = Schema.Struct({
  id,
  dstAddress: text("dst-address"),
  gateway: text("gateway"),
  immediateGw: text("immediate-gw"),
  gatewayStatus: text("gateway-status"),
  distance: Schema.optionalWith(Schema.NumberFromString, { exact: true }).pipe(Schema.fromKey("distance")),
  routingTable: text("routing-table"),
  routingMark: text("routing-mark"),
  active: flag("active"),
  dynamic: flag("dynamic"),
  connect: flag("connect"),
  disabled: flag("disabled")
})

/**
 * @since 0.1.0
 * @category models
 */
export type Route = typeof Route.Type

const ROUTE_PROPLIST = [
  ".id",
  "dst-address",
  "gateway",
  "immediate-gw",
  "gateway-status",
  "distance",
  "routing-table",
  "routing-mark",
  "active",
  "dynamic",
  "connect",
  "disabled"
]

/**
 * An IPv4 address of the router (`address` is `a.b.c.d/len`; `network` is the network address,
 * or the peer for point-to-point addresses).
 *
 * @since 0.1.0
 * @category models
 */
export const IpAddress = Schema.Struct({
  id,
  address: Schema.propertySignature(Schema.String),
  network: text("network"),
  interface: Schema.propertySignature(Schema.String),
  actualInterface: text("actual-interface"),
  dynamic: flag("dynamic"),
  invalid: flag("invalid"),
  disabled: flag("disabled")
})

/**
 * @since 0.1.0
 * @category models
 */
export type IpAddress = typeof IpAddress.Type

const ADDRESS_PROPLIST = [
  ".id",
  "address",
  "network",
  "interface",
  "actual-interface",
  "dynamic",
  "invalid",
  "disabled"
]

/**
 * The RouterOS version, e.g. `7.16.2 (stable)` → `{ major: 7, minor: 16, patch: 2, channel: "stable" }`.
 *
 * @since 0.1.0
 * @category models
 */
export interface RouterVersion {
  readonly raw: string
  readonly major: number
  readonly minor: number
  readonly patch: number
  readonly channel: string | undefined
}

/**
 * Parses a RouterOS version string (`7.16.2 (stable)`, `6.49.17 (long-term)`, `7.18beta2 (testing)`).
 *
 * @since 0.1.0
 * @category models
 */
export const parseVersion = (raw: string): Option.Option<RouterVersion> => {
  const m = /^\s*(\d+)\.(\d+)(?:\.(\d+))?\S*(?:\s+\(([^)]*)\))?/.exec(raw)
  if (m === null) return Option.none()
  return Option.some({
    raw,
    major: Number(m[1]),
    minor: Number(m[2]),
    patch: m[3] === undefined ? 0 : Number(m[3]),
    channel: m[4]
  })
}

/**
 * No route or address of the router reaches the gateway.
 *
 * @since 0.1.0
 * @category errors
 */
export class InterfaceNotFoundError extends Data.TaggedError("InterfaceNotFoundError")<{
  readonly gateway: string
  readonly reason: string
}> {
  override get message(): string {
    return `cannot find the router interface that reaches ${this.gateway}: ${this.reason}`
  }
}

// -----------------------------------------------------------------------------
// Decoding rows
// -----------------------------------------------------------------------------

const decodeRows = <A, I>(schema: Schema.Schema<A, I>, what: string) => {
  // synchronous decoding: no effectful transformations, and much cheaper per row than the Effect variant
  const decode = Schema.decodeUnknownEither(Schema.Array(schema))
  return (rows: ReadonlyArray<Attributes>): Effect.Effect<ReadonlyArray<A>, RouterOsProtocolError> =>
    Either.match(decode(rows), {
      onLeft: (error) =>
        Effect.fail(
          new RouterOsProtocolError({
            reason: `unexpected ${what} from the router: ${ParseResult.TreeFormatter.formatErrorSync(error)}`,
            cause: error
          })
        ),
      onRight: Effect.succeed
    })
}

/** NAT rule properties the project reads and writes: camelCase name, RouterOS name. */
const NAT_INPUT_KEYS: ReadonlyArray<readonly [keyof NatRuleInput, string]> = [
  ["chain", "chain"],
  ["action", "action"],
  ["protocol", "protocol"],
  ["dstPort", "dst-port"],
  ["dstAddress", "dst-address"],
  ["inInterface", "in-interface"],
  ["inInterfaceList", "in-interface-list"],
  ["toAddresses", "to-addresses"],
  ["toPorts", "to-ports"],
  ["comment", "comment"],
  ["disabled", "disabled"]
]

/** The text properties among them, read by {@link decodeNatRules}'s fast path. */
const NAT_RULE_TEXT = NAT_INPUT_KEYS.filter(([key]) => key !== "disabled")

const decodeNatRulesWithSchema = decodeRows(NatRule, "NAT rule")

/**
 * The `NatRule` schema's decoding of one row written out by hand (a print of every dstnat rule is decoded for each
 * new mapping): the same result for a well-formed row; `undefined` for a row it cannot take (no `.id`, a bad
 * `disabled`), left to the schema for its error message.
 */
const fastNatRule = (row: Attributes): NatRule | undefined => {
  const id = row[".id"]
  const disabled = row["disabled"]
  if (typeof id !== "string") return undefined
  let flag = false
  if (disabled !== undefined) {
    if (disabled === "true" || disabled === "yes") flag = true
    else if (disabled !== "false" && disabled !== "no") return undefined
  }
  const rule: Record<string, string | boolean> = { id }
  for (const [name, key] of NAT_RULE_TEXT) {
    const value = row[key]
    if (value !== undefined) rule[name] = value
  }
  rule.disabled = flag
  return rule as unknown as NatRule
}

const decodeNatRules = (
  rows: ReadonlyArray<Attributes>
): Effect.Effect<ReadonlyArray<NatRule>, RouterOsProtocolError> => {
  const rules = new Array<NatRule>(rows.length)
  for (let i = 0; i < rows.length; i++) {
    const rule = fastNatRule(rows[i])
    if (rule === undefined) return decodeNatRulesWithSchema(rows)
    rules[i] = rule
  }
  return Effect.succeed(rules)
}
const decodeRoutes = decodeRows(Route, "route")
const decodeAddresses = decodeRows(IpAddress, "address")

// -----------------------------------------------------------------------------
// NAT rules
// -----------------------------------------------------------------------------

/**
 * Properties of a NAT rule to add or set. `chain` and `action` default to `dstnat` / `dst-nat`
 * on add. In `setNatRule`, an absent property is left alone and `""` unsets it.
 *
 * @since 0.1.0
 * @category models
 */
export interface NatRuleInput {
  readonly chain?: string | undefined
  readonly action?: string | undefined
  readonly protocol?: string | undefined
  readonly dstPort?: string | number | undefined
  readonly dstAddress?: string | undefined
  readonly inInterface?: string | undefined
  readonly inInterfaceList?: string | undefined
  readonly toAddresses?: string | undefined
  readonly toPorts?: string | number | undefined
  readonly comment?: string | undefined
  readonly disabled?: boolean | undefined
}

const natAttributes = (input: NatRuleInput): Record<string, AttributeValue> => {
  const attributes: Record<string, AttributeValue> = {}
  for (const [key, name] of NAT_INPUT_KEYS) {
    const value = input[key]
    if (value !== undefined) attributes[name] = value
  }
  return attributes
}

/**
 * Lists the NAT rules of a chain (all chains when `chain` is undefined), in table order: one `print`. With `keep`,
 * only the rules it accepts, filtered as they arrive (a table of thousands of rules is never held whole); `keep`
 * sees every well-formed rule once, and a malformed one is kept (its decoding fails the list).
 *
 * @since 0.1.0
 * @category nat
 */
export const listNatRules = (
  options?: { readonly chain?: string | undefined; readonly keep?: ((rule: NatRule) => boolean) | undefined }
): Effect.Effect<ReadonlyArray<NatRule>, RouterOsError, RouterOsClient> => {
  const keep = options?.keep
  return Effect.flatMap(RouterOsClient, (client) =>
    client.command("/ip/firewall/nat/print", {
      proplist: NAT_RULE_PROPLIST,
      queries: options?.chain === undefined ? [] : [`?chain=${options.chain}`],
      keep: keep === undefined ? undefined : (row) => {
        const rule = fastNatRule(row)
        return rule === undefined || keep(rule)
      }
    })).pipe(Effect.flatMap((result) => decodeNatRules(result.rows)))
}

/**
 * Lists the rules of the `dstnat` chain: one `print`.
 *
 * @since 0.1.0
 * @category nat
 */
export const listDstNatRules: Effect.Effect<ReadonlyArray<NatRule>, RouterOsError, RouterOsClient> = listNatRules({
  chain: "dstnat"
})

/**
 * Adds a NAT rule (default `chain=dstnat action=dst-nat`); returns its `.id`: one `add`.
 *
 * @since 0.1.0
 * @category nat
 */
export const addNatRule = (rule: NatRuleInput): Effect.Effect<string, RouterOsError, RouterOsClient> =>
  Effect.flatMap(RouterOsClient, (client) =>
    client.command("/ip/firewall/nat/add", {
      attributes: natAttributes({ chain: "dstnat", action: "dst-nat", ...rule })
    })).pipe(
      Effect.flatMap((result) =>
        Option.match(result.ret, {
          onNone: () => Effect.fail(new RouterOsProtocolError({ reason: "add returned no .id" })),
          onSome: Effect.succeed
        })
      )
    )

/**
 * Changes properties of a NAT rule: one `set`. Fails with a trap (`no such item`) for an unknown id.
 *
 * @since 0.1.0
 * @category nat
 */
export const setNatRule = (
  id: string,
  patch: NatRuleInput
): Effect.Effect<void, RouterOsError, RouterOsClient> =>
  Effect.flatMap(
    RouterOsClient,
    (client) => client.command("/ip/firewall/nat/set", { attributes: { ".id": id, ...natAttributes(patch) } })
  ).pipe(Effect.asVoid)

/**
 * True for the trap RouterOS answers when an id does not exist.
 *
 * @since 0.1.0
 * @category nat
 */
export const isNoSuchItem = (error: RouterOsError): boolean =>
  error._tag === "RouterOsTrapError" && /no such item/i.test(error.reason)

/** Most ids one `remove` carries: a single command for thousands of rules can outlast the command timeout. */
export const maxIdsPerRemove = 500

/**
 * Removes NAT rules with one `remove` of the comma-separated ids (no round trip for an empty
 * list; one `remove` per {@link maxIdsPerRemove} ids, in flight together, for longer lists). RouterOS removes
 * nothing when one id is unknown; with `ignoreMissing`, that case is retried with the ids that still exist (one
 * `print` and one `remove` more).
 *
 * @since 0.1.0
 * @category nat
 */
export const removeNatRules = (
  ids: ReadonlyArray<string>,
  options?: { readonly ignoreMissing?: boolean | undefined }
): Effect.Effect<void, RouterOsError, RouterOsClient> =>
  Effect.gen(function*() {
    if (ids.length === 0) return
    const client = yield* RouterOsClient
    const remove = (list: ReadonlyArray<string>) =>
      client.command("/ip/firewall/nat/remove", { attributes: { ".id": list.join(",") } })
    const removeChunk = (chunk: ReadonlyArray<string>) =>
      Effect.gen(function*() {
        const first = yield* Effect.either(remove(chunk))
        if (first._tag === "Right") return
        if (options?.ignoreMissing !== true || !isNoSuchItem(first.left)) return yield* first.left
        const existing = yield* client.command("/ip/firewall/nat/print", { proplist: [".id"] })
        const present = new Set(existing.rows.map((row) => row[".id"]))
        const remaining = chunk.filter((id) => present.has(id))
        if (remaining.length > 0) yield* remove(remaining)
      })
    if (ids.length <= maxIdsPerRemove) return yield* removeChunk(ids)
    const chunks: Array<ReadonlyArray<string>> = []
    for (let i = 0; i < ids.length; i += maxIdsPerRemove) chunks.push(ids.slice(i, i + maxIdsPerRemove))
    yield* Effect.forEach(chunks, removeChunk, { concurrency: 4, discard: true })
  })

// -----------------------------------------------------------------------------
// Routes, addresses, version
// -----------------------------------------------------------------------------

/**
 * Lists IPv4 routes (only active ones with `activeOnly`): one `print`.
 *
 * @since 0.1.0
 * @category routing
 */
export const listRoutes = (
  options?: { readonly activeOnly?: boolean | undefined }
): Effect.Effect<ReadonlyArray<Route>, RouterOsError, RouterOsClient> =>
  Effect.flatMap(RouterOsClient, (client) =>
    client.command("/ip/route/print", {
      proplist: ROUTE_PROPLIST,
      queries: options?.activeOnly === true ? ["?active=true"] : []
    })).pipe(Effect.flatMap((result) => decodeRoutes(result.rows)))

/**
 * Lists the router's IPv4 addresses: one `print`.
 *
 * @since 0.1.0
 * @category routing
 */
export const listAddresses: Effect.Effect<ReadonlyArray<IpAddress>, RouterOsError, RouterOsClient> = Effect.flatMap(
  RouterOsClient,
  (client) => client.command("/ip/address/print", { proplist: ADDRESS_PROPLIST })
).pipe(Effect.flatMap((result) => decodeAddresses(result.rows)))

/**
 * The router's RouterOS version: one `print` of `/system/resource`.
 *
 * @since 0.1.0
 * @category system
 */
export const version: Effect.Effect<RouterVersion, RouterOsError, RouterOsClient> = Effect.flatMap(
  RouterOsClient,
  (client) => client.command("/system/resource/print", { proplist: ["version"] })
).pipe(
  Effect.flatMap((result) => {
    const raw = result.rows[0]?.["version"]
    const parsed = raw === undefined ? Option.none() : parseVersion(raw)
    return Option.match(parsed, {
      onNone: () => Effect.fail(new RouterOsProtocolError({ reason: `unexpected RouterOS version "${raw ?? ""}"` })),
      onSome: Effect.succeed
    })
  })
)

// -----------------------------------------------------------------------------
// Interface towards a gateway
// -----------------------------------------------------------------------------

const contains = (cidr: string, ip: number): { prefix: number } | undefined => {
  const net = Ipv4.parseCidr(cidr)
  return net !== undefined && Ipv4.contains(net, ip) ? { prefix: net.prefix } : undefined
}

/** `10.2.0.1%wg-proton` → `wg-proton` when the part before `%` is the gateway. */
const interfaceAfterPercent = (value: string | undefined, gateway: string): string | undefined => {
  if (value === undefined) return undefined
  for (const item of value.split(",")) {
    const at = item.indexOf("%")
    if (at > 0 && item.slice(0, at) === gateway && at < item.length - 1) return item.slice(at + 1)
  }
  return undefined
}

/** v6: `10.2.0.1 reachable via  wg-proton` → `wg-proton`. */
const interfaceFromStatus = (status: string | undefined, gateway: string): string | undefined => {
  if (status === undefined) return undefined
  for (const item of status.split(",")) {
    const m = /^\s*(\S+)\s+reachable\s+via\s+(\S+)/.exec(item)
    if (m !== null && m[1] === gateway) return m[2]
  }
  return undefined
}

const gatewayIps = (gateway: string | undefined): Array<string> =>
  (gateway ?? "").split(",").map((g) => g.split("%")[0].trim())

/**
 * Pure part of {@link interfaceTowards}: finds the interface through which these routes and
 * addresses reach `gateway`, or `undefined`.
 *
 * 1. an active route whose gateway is `gateway`: its interface from `gateway` / `immediate-gw`
 *    (`ip%iface`, v7) or `gateway-status` (`ip reachable via iface`, v6);
 * 2. the most specific active connected route (gateway is an interface) containing `gateway`;
 * 3. an address whose network contains `gateway`, or whose `network` is `gateway`
 *    (point-to-point /32 addresses of PPP or WireGuard links).
 *
 * @since 0.1.0
 * @category routing
 */
export const findInterfaceTowards = (
  gateway: string,
  routes: ReadonlyArray<Route>,
  addresses: ReadonlyArray<IpAddress>
): string | undefined => {
  const ip = Ipv4.parse(gateway)
  if (ip === undefined) return undefined
  const usable = routes.filter((r) => r.active && !r.disabled)
  for (const route of usable) {
    if (!gatewayIps(route.gateway).includes(gateway)) continue
    const iface = interfaceAfterPercent(route.gateway, gateway) ??
      interfaceAfterPercent(route.immediateGw, gateway) ??
      interfaceFromStatus(route.gatewayStatus, gateway)
    if (iface !== undefined) return iface
  }
  let best: { iface: string; prefix: number } | undefined = undefined
  for (const route of usable) {
    const gw = route.gateway
    if (gw === undefined || gw === "" || Ipv4.parse(gw.split("%")[0]) !== undefined || route.dstAddress === undefined) {
      continue
    }
    const match = contains(route.dstAddress, ip)
    if (match !== undefined && (best === undefined || match.prefix > best.prefix)) {
      best = { iface: route.immediateGw ?? gw, prefix: match.prefix }
    }
  }
  if (best !== undefined) return best.iface
  for (const address of addresses) {
    if (address.disabled || address.invalid) continue
    const iface = address.actualInterface ?? address.interface
    if (address.network === gateway) return iface
    const net = Ipv4.parseCidr(address.address)
    if (net !== undefined && net.prefix < 32 && contains(address.address, ip) !== undefined) return iface
  }
  return undefined
}

/**
 * The interface through which the router reaches `gateway` (e.g. the VPN's `10.2.0.1` →
 * `wg-proton`), on RouterOS v6 and v7: one `print` of active routes, plus one of addresses
 * when no route answers. Fails with {@link InterfaceNotFoundError} rather than guessing.
 *
 * @since 0.1.0
 * @category routing
 */
export const interfaceTowards = (
  gateway: string
): Effect.Effect<string, RouterOsError | InterfaceNotFoundError, RouterOsClient> =>
  Effect.gen(function*() {
    if (Ipv4.parse(gateway) === undefined) {
      return yield* new InterfaceNotFoundError({ gateway, reason: "not an IPv4 address" })
    }
    const routes = yield* listRoutes({ activeOnly: true })
    const viaRoutes = findInterfaceTowards(gateway, routes, [])
    if (viaRoutes !== undefined) return viaRoutes
    const addresses = yield* listAddresses
    const viaAddresses = findInterfaceTowards(gateway, [], addresses)
    if (viaAddresses !== undefined) return viaAddresses
    return yield* new InterfaceNotFoundError({
      gateway,
      reason: "no active route through it and no address on its network"
    })
  })
