/**
 * A RouterOS API server speaking the real wire protocol over TCP (or TLS) on loopback, with an
 * in-memory NAT table, routes and addresses. For tests, the demo and benchmarks.
 *
 * Supports `/login` (plain 6.43+ and the legacy MD5 challenge), `/ip/firewall/nat/print|add|set|remove`,
 * `/ip/route/print`, `/ip/address/print`, `/system/resource/print`, `/system/identity/print`,
 * `/cancel`, `/quit`, `.tag`, `.proplist`, the `?` query language (`?name`, `?-name`, `?name=v`,
 * `?<name=v`, `?>name=v`, `?#` stack operations) and `!empty` (RouterOS 7.18+, switchable).
 * Faults: drop a connection, delay replies, reject logins, answer `!fatal`, answer `!trap` to one command,
 * stop the service (connections refused) and start it again on the same port. An `onNatChange` backend can make
 * the NAT table real (e.g. nftables rules in a network namespace: `NftDstNat`).
 *
 * Any bytes a client sends are tolerated: a protocol violation is answered with `!fatal` and
 * that connection is closed.
 *
 * @since 0.1.0
 */
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import * as Crypto from "node:crypto"
import * as Net from "node:net"
import * as Tls from "node:tls"
import * as Ipv4 from "../Ipv4.js"
import * as RouterOsClient from "../RouterOsClient.js"
import type { Sentence } from "../RouterOsProtocol.js"
import { encodeSentence, SentenceDecoder, sentenceParts, TrapCategory } from "../RouterOsProtocol.js"

/**
 * A row of a RouterOS table with RouterOS property names (`.id`, `dst-port`, `disabled` = `"true"`/`"false"`).
 *
 * @since 0.1.0
 * @category models
 */
export type Row = Readonly<Record<string, string>>

/**
 * @since 0.1.0
 * @category errors
 */
export class RouterOsSimulatorError extends Data.TaggedError("RouterOsSimulatorError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `RouterOS simulator: ${this.reason}`
  }
}

/**
 * @since 0.1.0
 * @category options
 */
export interface Options {
  /** Default `127.0.0.1`. */
  readonly host?: string | undefined
  /** Default 0 (an ephemeral port). */
  readonly port?: number | undefined
  /** Default `admin`. */
  readonly user?: string | undefined
  /** Default empty. */
  readonly password?: string | undefined
  /** `plain` (6.43+, default) or `legacy` (MD5 challenge, pre-6.43). */
  readonly login?: "plain" | "legacy" | undefined
  /** Reported by `/system/resource/print`. Default `7.16.2 (stable)`. */
  readonly version?: string | undefined
  /** Answer `!empty` for a print without rows. Default: true from version 7.18. */
  readonly emptyReplies?: boolean | undefined
  readonly routes?: ReadonlyArray<Row> | undefined
  readonly addresses?: ReadonlyArray<Row> | undefined
  readonly natRules?: ReadonlyArray<Row> | undefined
  /** Serve API-SSL: a certificate, or anonymous DH only (what RouterOS offers without a certificate). */
  readonly tls?:
    | { readonly key: string | Uint8Array; readonly cert: string | Uint8Array }
    | { readonly anonymousDh: true }
    | undefined
  /**
   * A backend for the NAT table, e.g. real packet filter rules ({@link NftDstNat}): called with the whole table once
   * at start and after every change (API `add`/`set`/`remove` and the direct `addNatRule`/`setNatRule`/
   * `removeNatRule`), one call at a time, each with the table as it is when the call starts. The reply to the command
   * that changed the table waits until the backend is done, so a client sees the change in effect once it is
   * answered (replies of one connection keep their order). A failure is logged and does not fail the command.
   */
  readonly onNatChange?: ((rules: ReadonlyArray<Row>) => Effect.Effect<void, unknown>) | undefined
}

/**
 * A running simulator.
 *
 * @since 0.1.0
 * @category models
 */
export interface Simulator {
  readonly host: string
  readonly port: number
  /** The user and password it accepts (for building client options). */
  readonly user: string
  readonly password: string
  /** Client options to reach this simulator (plain TCP; add `tls` when serving TLS). */
  readonly clientOptions: RouterOsClient.Options

  /** NAT table in order, copies of the rows. */
  readonly natRules: Effect.Effect<ReadonlyArray<Row>>
  readonly routes: Effect.Effect<ReadonlyArray<Row>>
  readonly addresses: Effect.Effect<ReadonlyArray<Row>>
  /** Adds a NAT rule "behind the client's back" (no validation); returns its `.id`. */
  readonly addNatRule: (row: Row) => Effect.Effect<string>
  /** Changes properties of a NAT rule (an empty value removes the property); false if no such id. */
  readonly setNatRule: (id: string, patch: Row) => Effect.Effect<boolean>
  /** Removes a NAT rule; false if no such id. */
  readonly removeNatRule: (id: string) => Effect.Effect<boolean>
  readonly setRoutes: (rows: ReadonlyArray<Row>) => Effect.Effect<void>
  readonly setAddresses: (rows: ReadonlyArray<Row>) => Effect.Effect<void>
  readonly setVersion: (version: string) => Effect.Effect<void>

  /** Commands received (excluding `/login`), for one path (e.g. `/ip/firewall/nat/add`) or all. */
  readonly commandCount: (path?: string) => Effect.Effect<number>
  /** Paths of the commands received (excluding `/login`), in order (the last 10 000 at most). */
  readonly commandLog: Effect.Effect<ReadonlyArray<string>>
  readonly resetCounters: Effect.Effect<void>
  /** Connections accepted so far. */
  readonly connections: Effect.Effect<number>
  /** Connections open now. */
  readonly activeConnections: Effect.Effect<number>

  /** Lets `commands` more commands be answered, then closes the connection that receives the next one. */
  readonly dropAfter: (commands: number) => Effect.Effect<void>
  /** Delays every command (except `/login` and `/cancel`) and its reply; `/cancel` can stop a delayed command. */
  readonly setReplyDelay: (delay: Duration.DurationInput) => Effect.Effect<void>
  /** Rejects every login with the router's "invalid user name or password" trap. */
  readonly setRejectLogin: (reject: boolean) => Effect.Effect<void>
  /** Answers the next command with `!fatal <message>` and closes that connection. */
  readonly fatalOnNextCommand: (message?: string) => Effect.Effect<void>
  /** Answers every command of `path` (e.g. `/ip/firewall/nat/add`) with `!trap <message>`, until `clearFaults`. */
  readonly trapOn: (path: string, message?: string) => Effect.Effect<void>
  /**
   * `true` stops the API service: open connections are closed and new ones refused (connection refused);
   * `false` listens on the same port again.
   */
  readonly setDown: (down: boolean) => Effect.Effect<void, RouterOsSimulatorError>
  readonly setEmptyReplies: (enabled: boolean) => Effect.Effect<void>
  /** Clears all faults (drop, delay, reject, fatal). */
  readonly clearFaults: Effect.Effect<void>
  /** Closes every client connection now. */
  readonly disconnectAll: Effect.Effect<void>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class RouterOsSimulator extends Context.Tag("@natpmp-bridge/core/testing/RouterOsSimulator")<
  RouterOsSimulator,
  Simulator
>() {}

// -----------------------------------------------------------------------------
// Seeds
// -----------------------------------------------------------------------------

/**
 * @since 0.1.0
 * @category seeds
 */
export interface VpnRouterSeed {
  /** Interface of the VPN tunnel. Default `wg-proton`. */
  readonly vpnInterface?: string | undefined
  /** The VPN's gateway (speaks NAT-PMP). Default `10.2.0.1`. */
  readonly vpnGateway?: string | undefined
  /** The router's LAN interface and address. Default `bridge`, `192.168.88.1/24`. */
  readonly lanInterface?: string | undefined
  readonly lanAddress?: string | undefined
}

const networkOf = (cidr: string): { network: string; prefix: number } => {
  const [ip, bits] = cidr.split("/")
  const prefix = Number(bits ?? "32")
  return { network: Ipv4.format(Ipv4.network(Ipv4.parse(ip) ?? 0, prefix)), prefix }
}

/**
 * A router whose internet leg is a VPN, in RouterOS 7 style: WireGuard `10.2.0.2/30` on
 * `wg-proton`, a default route through `10.2.0.1` in table `vpn` (`immediate-gw=10.2.0.1%wg-proton`),
 * the ISP default route on `ether1`, the LAN on `bridge`.
 *
 * @since 0.1.0
 * @category seeds
 */
export const vpnRouterV7 = (seed?: VpnRouterSeed): Pick<Options, "version" | "routes" | "addresses"> => {
  const vpn = seed?.vpnInterface ?? "wg-proton"
  const gw = seed?.vpnGateway ?? "10.2.0.1"
  const lan = seed?.lanInterface ?? "bridge"
  const lanAddress = seed?.lanAddress ?? "192.168.88.1/24"
  const vpnAddress = Ipv4.format((Ipv4.parse(gw) ?? 0) + 1) + "/30"
  const lanNet = networkOf(lanAddress)
  const vpnNet = networkOf(vpnAddress)
  const flags = { disabled: "false", inactive: "false" }
  return {
    version: "7.16.2 (stable)",
    routes: [
      {
        "dst-address": "0.0.0.0/0",
        gateway: "192.168.1.1",
        "immediate-gw": "192.168.1.1%ether1",
        distance: "1",
        scope: "30",
        "target-scope": "10",
        "routing-table": "main",
        active: "true",
        dynamic: "true",
        dhcp: "true",
        ...flags
      },
      {
        "dst-address": "0.0.0.0/0",
        gateway: gw,
        "immediate-gw": `${gw}%${vpn}`,
        distance: "1",
        scope: "30",
        "target-scope": "10",
        "routing-table": "vpn",
        active: "true",
        static: "true",
        dynamic: "false",
        ...flags
      },
      {
        "dst-address": `${vpnNet.network}/${vpnNet.prefix}`,
        gateway: vpn,
        "immediate-gw": vpn,
        "local-address": `${vpnAddress.split("/")[0]}%${vpn}`,
        distance: "0",
        scope: "10",
        "routing-table": "main",
        active: "true",
        dynamic: "true",
        connect: "true",
        ...flags
      },
      {
        "dst-address": `${lanNet.network}/${lanNet.prefix}`,
        gateway: lan,
        "immediate-gw": lan,
        "local-address": `${lanAddress.split("/")[0]}%${lan}`,
        distance: "0",
        scope: "10",
        "routing-table": "main",
        active: "true",
        dynamic: "true",
        connect: "true",
        ...flags
      },
      {
        "dst-address": "192.168.1.0/24",
        gateway: "ether1",
        "immediate-gw": "ether1",
        distance: "0",
        scope: "10",
        "routing-table": "main",
        active: "true",
        dynamic: "true",
        connect: "true",
        ...flags
      }
    ],
    addresses: [
      address(lanAddress, lan, false),
      address(vpnAddress, vpn, false),
      address("192.168.1.10/24", "ether1", true)
    ]
  }
}

/**
 * The same router in RouterOS 6 style: no `immediate-gw`, `gateway-status` instead
 * (`10.2.0.1 reachable via  wg-proton`), routing marks, and a point-to-point VPN address
 * `10.2.0.2/32` whose `network` is the gateway.
 *
 * @since 0.1.0
 * @category seeds
 */
export const vpnRouterV6 = (seed?: VpnRouterSeed): Pick<Options, "version" | "routes" | "addresses"> => {
  const vpn = seed?.vpnInterface ?? "wg-proton"
  const gw = seed?.vpnGateway ?? "10.2.0.1"
  const lan = seed?.lanInterface ?? "bridge"
  const lanAddress = seed?.lanAddress ?? "192.168.88.1/24"
  const local = Ipv4.format((Ipv4.parse(gw) ?? 0) + 1)
  const lanNet = networkOf(lanAddress)
  return {
    version: "6.49.17 (long-term)",
    routes: [
      {
        "dst-address": "0.0.0.0/0",
        gateway: "192.168.1.1",
        "gateway-status": "192.168.1.1 reachable via  ether1",
        distance: "1",
        scope: "30",
        "target-scope": "10",
        active: "true",
        dynamic: "true",
        disabled: "false"
      },
      {
        "dst-address": "0.0.0.0/0",
        gateway: gw,
        "gateway-status": `${gw} reachable via  ${vpn}`,
        distance: "1",
        scope: "30",
        "target-scope": "10",
        "routing-mark": "vpn",
        active: "true",
        static: "true",
        disabled: "false"
      },
      {
        "dst-address": `${gw}/32`,
        "pref-src": local,
        gateway: vpn,
        "gateway-status": `${vpn} reachable`,
        distance: "0",
        scope: "10",
        active: "true",
        dynamic: "true",
        connect: "true",
        disabled: "false"
      },
      {
        "dst-address": `${lanNet.network}/${lanNet.prefix}`,
        "pref-src": lanAddress.split("/")[0],
        gateway: lan,
        "gateway-status": `${lan} reachable`,
        distance: "0",
        scope: "10",
        active: "true",
        dynamic: "true",
        connect: "true",
        disabled: "false"
      }
    ],
    addresses: [
      address(lanAddress, lan, false),
      { ...address(`${local}/32`, vpn, true), network: gw },
      address("192.168.1.10/24", "ether1", true)
    ]
  }
}

const address = (cidr: string, iface: string, dynamic: boolean): Row => ({
  address: cidr,
  network: networkOf(cidr).network,
  interface: iface,
  "actual-interface": iface,
  invalid: "false",
  dynamic: String(dynamic),
  disabled: "false"
})

// -----------------------------------------------------------------------------
// NAT properties and validation
// -----------------------------------------------------------------------------

const NAT_PROPERTIES = new Set([
  "chain",
  "action",
  "protocol",
  "src-address",
  "dst-address",
  "src-port",
  "dst-port",
  "any-port",
  "in-interface",
  "out-interface",
  "in-interface-list",
  "out-interface-list",
  "src-address-list",
  "dst-address-list",
  "src-address-type",
  "dst-address-type",
  "to-addresses",
  "to-ports",
  "comment",
  "disabled",
  "log",
  "log-prefix",
  "connection-mark",
  "routing-mark",
  "packet-mark",
  "connection-type",
  "jump-target",
  "address-list",
  "address-list-timeout",
  "ipsec-policy",
  "content",
  "hotspot",
  "layer7-protocol",
  "limit",
  "nth",
  "random",
  "time",
  "ttl",
  "tcp-mss",
  "icmp-options",
  "packet-size",
  "per-connection-classifier",
  "dscp",
  "priority",
  "fragment",
  "psd",
  "src-mac-address"
])

const NAT_ACTIONS = new Set([
  "accept",
  "add-dst-to-address-list",
  "add-src-to-address-list",
  "dst-nat",
  "endpoint-independent-nat",
  "jump",
  "log",
  "masquerade",
  "netmap",
  "passthrough",
  "redirect",
  "return",
  "same",
  "src-nat"
])

const PORT_PROTOCOLS = new Set(["tcp", "udp", "udp-lite", "sctp", "dccp", "6", "17", "33", "132", "136"])

const PROTOCOLS = new Set([
  "tcp",
  "udp",
  "udp-lite",
  "sctp",
  "dccp",
  "icmp",
  "icmpv6",
  "gre",
  "ipsec-esp",
  "ipsec-ah",
  "ipip",
  "ipencap",
  "l2tp",
  "ospf",
  "pim",
  "vrrp",
  "igmp",
  "etherip",
  "rsvp",
  "st",
  "ggp",
  "egp",
  "pup",
  "hmp",
  "xns-idp",
  "rdp",
  "iso-tp4",
  "xtp",
  "ddp",
  "idpr-cmtp",
  "encap",
  "rspf",
  "vmtp"
])

const portItem = "(?:\\d{1,5})(?:-\\d{1,5})?"
const PORT_LIST = new RegExp(`^!?${portItem}(?:,${portItem})*$`)
const IPV4 = "\\d{1,3}(?:\\.\\d{1,3}){3}"
const ADDRESS = new RegExp(`^!?${IPV4}(?:/\\d{1,2}|-${IPV4})?$`)

const validPorts = (value: string): boolean =>
  PORT_LIST.test(value) &&
  value.replace(/^!/, "").split(/[,-]/).every((p) => Number(p) <= 65535)

const validAddress = (value: string): boolean =>
  ADDRESS.test(value) &&
  (value.replace(/^!/, "").match(/\d{1,3}(?:\.\d{1,3}){3}/g) ?? []).every((ip) => Ipv4.parse(ip) !== undefined) &&
  (!value.includes("/") || Number(value.split("/")[1]) <= 32)

const normalizeBool = (value: string): string | undefined =>
  value === "yes" || value === "true" ? "true" : value === "no" || value === "false" ? "false" : undefined

class Trap {
  constructor(readonly message: string, readonly category: number | undefined) {}
}

const checkNatValue = (name: string, value: string): string | Trap => {
  if (!NAT_PROPERTIES.has(name)) return new Trap(`unknown parameter ${name}`, TrapCategory.ArgumentValue)
  const invalid = new Trap(`invalid value for argument ${name}`, TrapCategory.ArgumentValue)
  switch (name) {
    case "action":
      return NAT_ACTIONS.has(value) ? value : invalid
    case "protocol": {
      const p = value.replace(/^!/, "")
      return PROTOCOLS.has(p) || (/^\d{1,3}$/.test(p) && Number(p) <= 255) ? value : invalid
    }
    case "dst-port":
    case "src-port":
    case "any-port":
    case "to-ports":
      return value === "" || validPorts(value) ? value : invalid
    case "dst-address":
    case "src-address":
    case "to-addresses":
      return value === "" || validAddress(value) ? value : invalid
    case "disabled":
    case "log":
      return normalizeBool(value) ?? invalid
    case "chain":
      return value === "" ? invalid : value
    default:
      return value
  }
}

// -----------------------------------------------------------------------------
// Queries
// -----------------------------------------------------------------------------

const compareValues = (a: string, b: string): number => {
  const x = Number(a)
  const y = Number(b)
  if (a !== "" && b !== "" && !Number.isNaN(x) && !Number.isNaN(y)) return x - y
  return a < b ? -1 : a > b ? 1 : 0
}

const sameValue = (actual: string | undefined, expected: string): boolean => {
  if (actual === undefined) return false
  if (actual === expected) return true
  const a = normalizeBool(actual)
  return a !== undefined && a === normalizeBool(expected)
}

/** Evaluates RouterOS query words against a row; a Trap for a malformed query. */
const matches = (queries: ReadonlyArray<string>, row: Row): boolean | Trap => {
  const stack: Array<boolean> = []
  const pop = () => stack.length === 0 ? true : stack.pop()!
  for (const query of queries) {
    const body = query.slice(1)
    const op = body.charAt(0)
    if (op === "#") {
      const ops = body.slice(1)
      let i = 0
      while (i < ops.length) {
        const c = ops.charAt(i)
        if (c >= "0" && c <= "9") {
          let j = i
          while (j < ops.length && ops.charAt(j) >= "0" && ops.charAt(j) <= "9") j++
          const index = Number(ops.slice(i, j))
          const value = stack[stack.length - 1 - index] ?? false
          if (j === ops.length) {
            stack.length = 0
            stack.push(value)
          } else {
            stack.push(value)
            if (ops.charAt(j) === ".") j++
          }
          i = j
          continue
        }
        switch (c) {
          case "!":
            stack.push(!pop())
            break
          case "&": {
            const b = pop()
            const a = pop()
            stack.push(a && b)
            break
          }
          case "|": {
            const b = pop()
            const a = pop()
            stack.push(a || b)
            break
          }
          case ".":
            stack.push(stack.length === 0 ? true : stack[stack.length - 1])
            break
          default:
            return new Trap(`invalid query operation ${c}`, TrapCategory.Api)
        }
        i++
      }
      continue
    }
    if (op === "-") {
      stack.push(row[body.slice(1)] === undefined)
      continue
    }
    if (op === "<" || op === ">") {
      const eq = body.indexOf("=", 1)
      if (eq === -1) return new Trap(`invalid query ${query}`, TrapCategory.Api)
      const actual = row[body.slice(1, eq)]
      const c = actual === undefined ? NaN : compareValues(actual, body.slice(eq + 1))
      stack.push(op === "<" ? c < 0 : c > 0)
      continue
    }
    const text = op === "=" ? body.slice(1) : body
    const eq = text.indexOf("=")
    if (eq === -1) stack.push(row[text] !== undefined)
    else stack.push(sameValue(row[text.slice(0, eq)], text.slice(eq + 1)))
  }
  return stack.every((b) => b)
}

// -----------------------------------------------------------------------------
// Server
// -----------------------------------------------------------------------------

interface Faults {
  dropAfter: number | undefined
  delayMs: number
  rejectLogin: boolean
  fatal: string | undefined
  /** Command path → trap message. */
  traps: Map<string, string>
}

type Table = Array<Record<string, string>>

/** `commandLog` keeps at most this many recent paths (long benchmarks). */
const LOG_LIMIT = 10_000

class State {
  readonly nat: Table = []
  routes: Table = []
  addresses: Table = []
  private nextId = 0x1A
  readonly counts = new Map<string, number>()
  log: Array<string> = []
  total = 0
  connections = 0
  readonly sockets = new Set<Net.Socket>()
  faults: Faults = { dropAfter: undefined, delayMs: 0, rejectLogin: false, fatal: undefined, traps: new Map() }

  /** Runs the NAT backend (serialized); undefined without one. */
  natChanged: () => Promise<void> | undefined = () => undefined

  constructor(public version: string, public emptyReplies: boolean) {}

  allocateId(): string {
    return `*${(this.nextId++).toString(16).toUpperCase()}`
  }

  withIds(rows: ReadonlyArray<Row> | undefined): Table {
    return (rows ?? []).map((row) => ({ ".id": row[".id"] ?? this.allocateId(), ...row }))
  }

  count(path: string): void {
    this.counts.set(path, (this.counts.get(path) ?? 0) + 1)
    this.total++
    if (this.log.length >= LOG_LIMIT) this.log = this.log.slice(LOG_LIMIT / 2)
    this.log.push(path)
  }
}

const versionAtLeast = (version: string, major: number, minor: number): boolean => {
  const m = /^(\d+)\.(\d+)/.exec(version)
  if (m === null) return false
  const a = Number(m[1])
  const b = Number(m[2])
  return a > major || (a === major && b >= minor)
}

type Reply = ReadonlyArray<string>

const trapReply = (trap: Trap): Reply =>
  trap.category === undefined
    ? ["!trap", `=message=${trap.message}`]
    : ["!trap", `=category=${trap.category}`, `=message=${trap.message}`]

const project = (row: Row, proplist: ReadonlyArray<string> | undefined): Array<string> => {
  const words = ["!re"]
  if (proplist === undefined) {
    for (const key of Object.keys(row)) words.push(`=${key}=${row[key]}`)
  } else {
    for (const key of proplist) {
      const value = row[key]
      if (value !== undefined) words.push(`=${key}=${value}`)
    }
  }
  return words
}

class SimConnection {
  private loggedIn = false
  private challenge: Buffer | undefined = undefined
  private readonly delayed = new Map<string, ReturnType<typeof setTimeout>>()
  private readonly decoder: SentenceDecoder
  private closed = false

  constructor(
    private readonly socket: Net.Socket,
    private readonly state: State,
    private readonly options: { user: string; password: string; login: "plain" | "legacy" }
  ) {
    this.decoder = new SentenceDecoder((words) => this.onSentence(words), { maxWordLength: 1024 * 1024 })
    socket.setNoDelay(true)
    socket.on("data", (chunk: Buffer) => {
      if (this.closed) return
      // replies to all the commands of one chunk leave together
      socket.cork()
      const result = this.decoder.push(chunk)
      if (Either.isLeft(result)) this.fatal(result.left.reason)
      socket.uncork()
    })
    socket.on("error", () => this.close())
    socket.on("close", () => this.close())
  }

  close(): void {
    if (this.closed) return
    this.closed = true
    for (const timer of this.delayed.values()) clearTimeout(timer)
    this.delayed.clear()
    this.state.sockets.delete(this.socket)
    // replies already given leave before the connection goes
    while (this.socket.writableCorked > 0) this.socket.uncork()
    this.socket.destroy()
  }

  /** The last reply still waiting for the NAT backend; later replies of this connection wait for it. */
  private outbox: Promise<void> | undefined = undefined

  /** Writes the replies once `after` (the NAT backend) and the replies before them are done. */
  private send(sentences: ReadonlyArray<Reply>, tag: string | undefined, after: Promise<void> | undefined): void {
    if (after === undefined && this.outbox === undefined) return this.write(sentences, tag)
    const next = Promise.all([this.outbox, after]).then(() => this.write(sentences, tag))
    this.outbox = next
    void next.then(() => {
      if (this.outbox === next) this.outbox = undefined
    })
  }

  private write(sentences: ReadonlyArray<Reply>, tag: string | undefined): void {
    if (this.closed) return
    const parts = sentences.map((words) => encodeSentence(tag === undefined ? words : [...words, `.tag=${tag}`]))
    this.socket.write(parts.length === 1 ? parts[0] : Buffer.concat(parts))
  }

  private fatal(message: string): void {
    if (this.closed) return
    this.socket.end(encodeSentence(["!fatal", message]))
    this.closed = true
    for (const timer of this.delayed.values()) clearTimeout(timer)
    this.delayed.clear()
    this.state.sockets.delete(this.socket)
    setTimeout(() => this.socket.destroy(), 100).unref()
  }

  private onSentence(words: Sentence): void {
    if (this.closed) return
    const path = words[0]
    const parts = sentenceParts(words)
    const tag = parts.api[".tag"]
    if (path === "/login") {
      this.write(this.login(parts.attributes), tag)
      return
    }
    this.state.count(path)
    const faults = this.state.faults
    if (faults.dropAfter !== undefined) {
      if (faults.dropAfter === 0) {
        faults.dropAfter = undefined
        this.close()
        return
      }
      faults.dropAfter--
    }
    if (faults.fatal !== undefined) {
      const message = faults.fatal
      faults.fatal = undefined
      this.fatal(message)
      return
    }
    if (!this.loggedIn) {
      this.fatal("not logged in")
      return
    }
    if (path === "/quit") {
      this.fatal("session terminated on request")
      return
    }
    if (path === "/cancel") {
      this.write(this.cancel(parts.attributes["tag"]), tag)
      return
    }
    const trap = faults.traps.get(path)
    if (trap !== undefined) {
      this.write([trapReply(new Trap(trap, undefined)), ["!done"]], tag)
      return
    }
    if (faults.delayMs > 0) {
      const key = tag ?? ""
      const timer = setTimeout(() => {
        this.delayed.delete(key)
        const [replies, applied] = this.execute(path, parts)
        this.send(replies, tag, applied)
      }, faults.delayMs)
      this.delayed.set(key, timer)
      return
    }
    const [replies, applied] = this.execute(path, parts)
    this.send(replies, tag, applied)
  }

  private login(attributes: Record<string, string>): Array<Reply> {
    const { password, user } = this.options
    const denied = this.options.login === "legacy" ? "cannot log in" : "invalid user name or password (6)"
    if (this.state.faults.rejectLogin) return [["!trap", `=message=${denied}`], ["!done"]]
    if (this.options.login === "legacy") {
      const response = attributes["response"]
      if (response === undefined) {
        this.challenge = Crypto.randomBytes(16)
        return [["!done", `=ret=${this.challenge.toString("hex")}`]]
      }
      const challenge = this.challenge
      this.challenge = undefined
      const expected = challenge === undefined
        ? undefined
        : "00" + Crypto.createHash("md5").update(Buffer.of(0)).update(password, "utf8").update(challenge).digest("hex")
      if (attributes["name"] === user && response.toLowerCase() === expected) {
        this.loggedIn = true
        return [["!done"]]
      }
      return [["!trap", `=message=${denied}`], ["!done"]]
    }
    if (attributes["name"] === user && attributes["password"] === password) {
      this.loggedIn = true
      return [["!done"]]
    }
    return [["!trap", `=message=${denied}`], ["!done"]]
  }

  private cancel(target: string | undefined): Array<Reply> {
    const keys = target === undefined ? [...this.delayed.keys()] : this.delayed.has(target) ? [target] : []
    for (const key of keys) {
      clearTimeout(this.delayed.get(key))
      this.delayed.delete(key)
      this.write(
        [["!trap", `=category=${TrapCategory.Interrupted}`, "=message=interrupted"], ["!done"]],
        key === "" ? undefined : key
      )
    }
    return [["!done"]]
  }

  /** The replies, and the NAT backend's run when the command changed the NAT table. */
  private execute(
    path: string,
    parts: ReturnType<typeof sentenceParts>
  ): [Array<Reply>, Promise<void> | undefined] {
    const state = this.state
    const result = ((): Array<Reply> | Trap => {
      switch (path) {
        case "/ip/firewall/nat/print":
        case "/ip/firewall/nat/getall":
          return this.print(state.nat, parts)
        case "/ip/firewall/nat/add":
          return natAdd(state, parts.attributes)
        case "/ip/firewall/nat/set":
          return natSet(state, parts.attributes)
        case "/ip/firewall/nat/remove":
          return natRemove(state, parts.attributes)
        case "/ip/route/print":
        case "/ip/route/getall":
          return this.print(state.routes, parts)
        case "/ip/address/print":
        case "/ip/address/getall":
          return this.print(state.addresses, parts)
        case "/system/resource/print":
          return this.print([resource(state.version)], parts)
        case "/system/identity/print":
          return this.print([{ name: "MikroTik" }], parts)
        default:
          return new Trap("no such command prefix", TrapCategory.MissingItemOrCommand)
      }
    })()
    if (result instanceof Trap) return [[trapReply(result), ["!done"]], undefined]
    const changed = path === "/ip/firewall/nat/add" || path === "/ip/firewall/nat/set" ||
      path === "/ip/firewall/nat/remove"
    return [result, changed ? state.natChanged() : undefined]
  }

  private print(table: ReadonlyArray<Row>, parts: ReturnType<typeof sentenceParts>): Array<Reply> | Trap {
    const proplistText = parts.attributes[".proplist"] ?? parts.api[".proplist"]
    const proplist = proplistText === undefined ? undefined : proplistText.split(",").filter((p) => p !== "")
    const replies: Array<Reply> = []
    let count = 0
    for (const row of table) {
      const ok = matches(parts.queries, row)
      if (ok instanceof Trap) return ok
      if (!ok) continue
      count++
      if (parts.attributes["count-only"] === undefined) replies.push(project(row, proplist))
    }
    if (parts.attributes["count-only"] !== undefined) return [["!done", `=ret=${count}`]]
    if (replies.length === 0 && this.state.emptyReplies) replies.push(["!empty"])
    replies.push(["!done"])
    return replies
  }
}

const resource = (version: string): Row => ({
  uptime: "1w2d3h4m5s",
  version,
  "build-time": "2024-10-01 12:00:00",
  "free-memory": "857276416",
  "total-memory": "1073741824",
  cpu: "ARMv7",
  "cpu-count": "4",
  "cpu-frequency": "1400",
  "cpu-load": "1",
  "free-hdd-space": "4194304",
  "total-hdd-space": "16777216",
  "architecture-name": "arm",
  "board-name": "hAP ax^2",
  platform: "MikroTik"
})

const idList = (attributes: Record<string, string>): Array<string> | Trap => {
  const text = attributes[".id"] ?? attributes["numbers"]
  if (text === undefined || text === "") {
    return new Trap("missing value(s) of argument(s) .id", TrapCategory.ArgumentValue)
  }
  return text.split(",")
}

const natAdd = (state: State, attributes: Record<string, string>): Array<Reply> | Trap => {
  const row: Record<string, string> = {}
  let placeBefore: string | undefined = undefined
  for (const name of Object.keys(attributes)) {
    if (name === "place-before") {
      placeBefore = attributes[name]
      continue
    }
    const value = checkNatValue(name, attributes[name])
    if (value instanceof Trap) return value
    if (value !== "") row[name] = value
  }
  if (row["chain"] === undefined) return new Trap("failure: chain not set", TrapCategory.ArgumentValue)
  const portTrap = checkPortsNeedProtocol(row)
  if (portTrap !== undefined) return portTrap
  let index = state.nat.length
  if (placeBefore !== undefined) {
    index = state.nat.findIndex((r) => r[".id"] === placeBefore)
    if (index === -1) return new Trap("no such item", undefined)
  }
  const id = state.allocateId()
  state.nat.splice(index, 0, {
    ".id": id,
    action: "accept",
    ...row,
    log: row["log"] ?? "false",
    "log-prefix": row["log-prefix"] ?? "",
    bytes: "0",
    packets: "0",
    invalid: "false",
    dynamic: "false",
    disabled: row["disabled"] ?? "false"
  })
  return [["!done", `=ret=${id}`]]
}

const checkPortsNeedProtocol = (row: Row): Trap | undefined => {
  const hasPorts = row["dst-port"] !== undefined || row["src-port"] !== undefined || row["any-port"] !== undefined
  if (hasPorts && !PORT_PROTOCOLS.has(row["protocol"] ?? "")) {
    return new Trap("failure: port can be set only when protocol is TCP, UDP, UDP-Lite, SCTP or DCCP", undefined)
  }
  return undefined
}

const natSet = (state: State, attributes: Record<string, string>): Array<Reply> | Trap => {
  const ids = idList(attributes)
  if (ids instanceof Trap) return ids
  const rows = ids.map((id) => state.nat.find((r) => r[".id"] === id))
  if (rows.some((r) => r === undefined)) return new Trap("no such item", undefined)
  const patch: Record<string, string> = {}
  for (const name of Object.keys(attributes)) {
    if (name === ".id" || name === "numbers") continue
    const value = checkNatValue(name, attributes[name])
    if (value instanceof Trap) return value
    patch[name] = value
  }
  for (const row of rows as Array<Record<string, string>>) {
    const next = applyPatch(row, patch)
    const trap = checkPortsNeedProtocol(next)
    if (trap !== undefined) return trap
  }
  for (const row of rows as Array<Record<string, string>>) {
    const next = applyPatch(row, patch)
    for (const key of Object.keys(row)) delete row[key]
    Object.assign(row, next)
  }
  return [["!done"]]
}

const applyPatch = (row: Row, patch: Row): Record<string, string> => {
  const next: Record<string, string> = { ...row }
  for (const key of Object.keys(patch)) {
    if (patch[key] === "" && key !== "log-prefix") delete next[key]
    else next[key] = patch[key]
  }
  return next
}

const natRemove = (state: State, attributes: Record<string, string>): Array<Reply> | Trap => {
  const ids = idList(attributes)
  if (ids instanceof Trap) return ids
  if (ids.some((id) => !state.nat.some((r) => r[".id"] === id))) return new Trap("no such item", undefined)
  const remove = new Set(ids)
  for (let i = state.nat.length - 1; i >= 0; i--) {
    if (remove.has(state.nat[i][".id"])) state.nat.splice(i, 1)
  }
  return [["!done"]]
}

/**
 * Starts a simulator on loopback; it stops (closing every connection) when the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options?: Options): Effect.Effect<Simulator, RouterOsSimulatorError, Scope.Scope> =>
  Effect.gen(function*() {
    const host = options?.host ?? "127.0.0.1"
    const user = options?.user ?? "admin"
    const password = options?.password ?? ""
    const version = options?.version ?? "7.16.2 (stable)"
    const state = new State(version, options?.emptyReplies ?? versionAtLeast(version, 7, 18))
    state.nat.push(...state.withIds(options?.natRules))
    state.routes = state.withIds(options?.routes)
    state.addresses = state.withIds(options?.addresses)
    const onNatChange = options?.onNatChange
    if (onNatChange !== undefined) {
      const runtime = yield* Effect.runtime<never>()
      let last: Promise<void> = Promise.resolve()
      const apply = Effect.suspend(() => onNatChange(state.nat.map((row) => ({ ...row })))).pipe(
        Effect.catchAllCause((cause) => Effect.logWarning("RouterOS simulator: the NAT backend failed", cause))
      )
      state.natChanged = () => {
        // never rejected (an interrupted run included), so the replies waiting for it always leave
        last = last.then(() => Runtime.runPromise(runtime, apply)).catch(() => {})
        return last
      }
      yield* Effect.promise(() => state.natChanged()!)
    }
    const natChanged = Effect.promise(() => state.natChanged() ?? Promise.resolve())
    const connectionOptions = { user, password, login: options?.login ?? "plain" }

    const accept = (socket: Net.Socket) => {
      state.connections++
      state.sockets.add(socket)
      new SimConnection(socket, state, connectionOptions)
    }

    const tls = options?.tls
    const server: Net.Server = tls === undefined
      ? Net.createServer(accept)
      : "anonymousDh" in tls
      ? Tls.createServer(
        { ciphers: "ADH-AES256-GCM-SHA384:ADH-AES256-SHA256:@SECLEVEL=0", maxVersion: "TLSv1.2", dhparam: "auto" },
        accept
      )
      : Tls.createServer({ key: Buffer.from(tls.key), cert: Buffer.from(tls.cert) }, accept)
    server.on("tlsClientError", () => {})

    const listen = (port: number) =>
      Effect.async<number, RouterOsSimulatorError>((resume) => {
        const onError = (cause: Error) =>
          resume(Effect.fail(new RouterOsSimulatorError({ reason: `cannot listen on ${host}:${port}`, cause })))
        server.once("error", onError)
        server.listen(port, host, () => {
          server.off("error", onError)
          resume(Effect.succeed((server.address() as Net.AddressInfo).port))
        })
      })
    // stops listening and closes every connection
    const stop = Effect.async<void>((resume) => {
      for (const socket of state.sockets) socket.destroy()
      state.sockets.clear()
      if (!server.listening) return resume(Effect.void)
      server.close(() => resume(Effect.void))
    })
    server.on("error", () => {})
    const port = yield* Effect.acquireRelease(listen(options?.port ?? 0), () => stop)

    const findNat = (id: string) => state.nat.find((r) => r[".id"] === id)

    const simulator: Simulator = {
      host,
      port,
      user,
      password,
      clientOptions: { host, port, user, password: Redacted.make(password) },
      natRules: Effect.sync(() => state.nat.map((r) => ({ ...r }))),
      routes: Effect.sync(() => state.routes.map((r) => ({ ...r }))),
      addresses: Effect.sync(() => state.addresses.map((r) => ({ ...r }))),
      addNatRule: (row) =>
        Effect.sync(() => {
          const id = state.allocateId()
          const { ".id": _ignored, ...rest } = row
          state.nat.push({ ".id": id, disabled: "false", ...rest })
          return id
        }).pipe(Effect.zipLeft(natChanged)),
      setNatRule: (id, patch) =>
        Effect.sync(() => {
          const row = findNat(id)
          if (row === undefined) return false
          const next = applyPatch(row, patch)
          for (const key of Object.keys(row)) delete row[key]
          Object.assign(row, next, { ".id": id })
          return true
        }).pipe(Effect.tap((changed) => changed ? natChanged : Effect.void)),
      removeNatRule: (id) =>
        Effect.sync(() => {
          const index = state.nat.findIndex((r) => r[".id"] === id)
          if (index === -1) return false
          state.nat.splice(index, 1)
          return true
        }).pipe(Effect.tap((changed) => changed ? natChanged : Effect.void)),
      setRoutes: (rows) =>
        Effect.sync(() => {
          state.routes = state.withIds(rows)
        }),
      setAddresses: (rows) =>
        Effect.sync(() => {
          state.addresses = state.withIds(rows)
        }),
      setVersion: (v) =>
        Effect.sync(() => {
          state.version = v
        }),
      commandCount: (path) => Effect.sync(() => path === undefined ? state.total : state.counts.get(path) ?? 0),
      commandLog: Effect.sync(() => [...state.log]),
      resetCounters: Effect.sync(() => {
        state.counts.clear()
        state.log = []
        state.total = 0
      }),
      connections: Effect.sync(() => state.connections),
      activeConnections: Effect.sync(() => state.sockets.size),
      dropAfter: (commands) =>
        Effect.sync(() => {
          state.faults.dropAfter = Math.max(0, Math.floor(commands))
        }),
      setReplyDelay: (delay) =>
        Effect.sync(() => {
          state.faults.delayMs = Duration.toMillis(Duration.decode(delay))
        }),
      setRejectLogin: (reject) =>
        Effect.sync(() => {
          state.faults.rejectLogin = reject
        }),
      fatalOnNextCommand: (message) =>
        Effect.sync(() => {
          state.faults.fatal = message ?? "simulated fatal error"
        }),
      trapOn: (path, message) =>
        Effect.sync(() => {
          state.faults.traps.set(path, message ?? "failure: simulated trap")
        }),
      setDown: (down) => down ? stop : server.listening ? Effect.void : Effect.asVoid(listen(port)),
      setEmptyReplies: (enabled) =>
        Effect.sync(() => {
          state.emptyReplies = enabled
        }),
      clearFaults: Effect.sync(() => {
        state.faults = { dropAfter: undefined, delayMs: 0, rejectLogin: false, fatal: undefined, traps: new Map() }
      }),
      disconnectAll: Effect.sync(() => {
        for (const socket of state.sockets) socket.destroy()
        state.sockets.clear()
      })
    }
    return simulator
  })

/**
 * The simulator as a service.
 *
 * @since 0.1.0
 * @category layers
 */
export const layer = (options?: Options): Layer.Layer<RouterOsSimulator, RouterOsSimulatorError> =>
  Layer.scoped(RouterOsSimulator, make(options))

/**
 * A simulator and a `RouterOsClient` connected to it (plain TCP), for tests of code built on the client.
 *
 * @since 0.1.0
 * @category layers
 */
export const layerWithClient = (
  options?: Options,
  clientOptions?: Partial<RouterOsClient.Options>
): Layer.Layer<
  RouterOsSimulator | RouterOsClient.RouterOsClient,
  RouterOsSimulatorError | RouterOsClient.RouterOsError
> =>
  Layer.flatMap(
    layer(options),
    (context) =>
      Layer.merge(
        Layer.succeedContext(context),
        RouterOsClient.layer({ ...Context.get(context, RouterOsSimulator).clientOptions, ...clientOptions })
      )
  )
