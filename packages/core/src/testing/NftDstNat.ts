/**
 * Real dst-nat for a simulated router: renders the `dstnat` chain's `dst-nat` rules of a RouterOS NAT table (as
 * {@link RouterOsSimulator} holds it) into an nftables table and loads it with `nft -f -` inside a network namespace
 * ({@link NetworkLab}), atomically (the table is replaced in one transaction). Plug it into the simulator's
 * `onNatChange` option and the rules a client adds through the RouterOS API forward real traffic in the lab.
 *
 * ```
 * table ip natpmp_bridge_router {
 *   chain dstnat {
 *     type nat hook prerouting priority -100; policy accept;
 *     iifname "wg0" tcp dport 40000 dnat to 10.1.2.2:40000 comment "*1A"
 *   }
 * }
 * ```
 *
 * Only what RouterOS means is rendered: a rule with a property this module cannot express, a value it does not
 * understand, or no `to-addresses` is left out (and listed as skipped) rather than rendered broader than it is.
 * Disabled rules and rules of other chains or actions are left out too.
 *
 * @since 0.1.0
 */
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as NetworkLab from "./NetworkLab.js"
import type * as RouterOsSimulator from "./RouterOsSimulator.js"

/**
 * The default table name.
 *
 * @since 0.1.0
 */
export const defaultTable = "natpmp_bridge_router"

/**
 * @since 0.1.0
 * @category options
 */
export interface Options {
  /** Where the rules go: a namespace (or its name); default the current one. */
  readonly namespace?: NetworkLab.Where
  /** The nftables table (family `ip`); default {@link defaultTable}. */
  readonly table?: string | undefined
}

/**
 * A rule left out of the rendering, and why.
 *
 * @since 0.1.0
 * @category models
 */
export interface Skipped {
  readonly id: string
  readonly reason: string
}

/**
 * The nftables text for a NAT table.
 *
 * @since 0.1.0
 * @category models
 */
export interface Rendering {
  /** `nft -f` input that replaces the table atomically. */
  readonly script: string
  /** The rendered rules (nft syntax), in table order. */
  readonly rules: ReadonlyArray<string>
  /** `dstnat`/`dst-nat` rules left out. */
  readonly skipped: ReadonlyArray<Skipped>
}

// properties that do not change what a rule matches or does
const inert = new Set([
  ".id",
  "chain",
  "action",
  "comment",
  "disabled",
  "log",
  "log-prefix",
  "bytes",
  "packets",
  "invalid",
  "dynamic",
  ".nextid",
  ".about"
])

const portsPattern = /^\d{1,5}(?:-\d{1,5})?(?:,\d{1,5}(?:-\d{1,5})?)*$/
const ipPattern = "\\d{1,3}(?:\\.\\d{1,3}){3}"
const addressPattern = new RegExp(`^${ipPattern}(?:/\\d{1,2}|-${ipPattern})?$`)
const namePattern = /^[\w.@:+-]{1,15}$/
const protocolPattern = /^[a-z][\w-]*$|^\d{1,3}$/

/** `!value` → [true, value]. */
const negation = (value: string): readonly [boolean, string] =>
  value.startsWith("!") ? [true, value.slice(1)] : [false, value]

const operator = (negated: boolean) => negated ? "!= " : ""

const ports = (value: string): string | undefined => {
  const [negated, text] = negation(value)
  if (!portsPattern.test(text) || text.split(/[,-]/).some((port) => Number(port) > 65535)) return undefined
  const items = text.split(",")
  return operator(negated) + (items.length === 1 ? items[0] : `{ ${items.join(", ")} }`)
}

const address = (value: string): string | undefined => {
  const [negated, text] = negation(value)
  return addressPattern.test(text) ? operator(negated) + text : undefined
}

class Unsupported {
  constructor(readonly reason: string) {}
}

const parsers: Record<string, (text: string) => string | undefined> = {
  "in-interface": (text) => {
    const [negated, name] = negation(text)
    return namePattern.test(name) ? `iifname ${operator(negated)}"${name}"` : undefined
  },
  "src-address": address,
  "dst-address": address,
  protocol: (text) => protocolPattern.test(text) ? text : undefined,
  "src-port": ports,
  "dst-port": ports,
  "to-addresses": (text) => addressPattern.test(text) && !text.includes("/") ? text : undefined,
  "to-ports": (text) => /^\d{1,5}(?:-\d{1,5})?$/.test(text) ? text : undefined
}

/** One rule in nft syntax, or why it cannot be rendered. */
const renderRule = (row: RouterOsSimulator.Row): string | Unsupported => {
  const value: Record<string, string> = {}
  for (const name of Object.keys(row)) {
    if (inert.has(name) || row[name] === "") continue
    const parse = parsers[name]
    if (parse === undefined) return new Unsupported(`cannot render ${name}`)
    const parsed = parse(row[name])
    if (parsed === undefined) return new Unsupported(`cannot render ${name}=${row[name]}`)
    value[name] = parsed
  }
  const protocol = value["protocol"]
  const portProtocol = protocol === "tcp" || protocol === "udp"
  if (value["to-addresses"] === undefined) return new Unsupported("no to-addresses")
  if (!portProtocol && (value["src-port"] ?? value["dst-port"] ?? value["to-ports"]) !== undefined) {
    return new Unsupported(`ports with protocol ${protocol ?? "(none)"}`)
  }
  const parts: Array<string> = []
  if (value["in-interface"] !== undefined) parts.push(value["in-interface"])
  if (value["src-address"] !== undefined) parts.push(`ip saddr ${value["src-address"]}`)
  if (value["dst-address"] !== undefined) parts.push(`ip daddr ${value["dst-address"]}`)
  if (value["src-port"] !== undefined) parts.push(`${protocol} sport ${value["src-port"]}`)
  if (value["dst-port"] !== undefined) parts.push(`${protocol} dport ${value["dst-port"]}`)
  if (protocol !== undefined && value["src-port"] === undefined && value["dst-port"] === undefined) {
    parts.push(`meta l4proto ${protocol}`)
  }
  const toPorts = value["to-ports"] === undefined ? "" : `:${value["to-ports"]}`
  parts.push(`dnat to ${value["to-addresses"]}${toPorts}`)
  const id = row[".id"]
  if (id !== undefined && /^\*[0-9A-Fa-f]+$/.test(id)) parts.push(`comment "${id}"`)
  return parts.join(" ")
}

/**
 * Renders the enabled `dstnat` `dst-nat` rules of a NAT table into an `nft -f` script that replaces `table`.
 *
 * @since 0.1.0
 * @category rendering
 */
export const render = (rows: ReadonlyArray<RouterOsSimulator.Row>, table: string = defaultTable): Rendering => {
  const rules: Array<string> = []
  const skipped: Array<Skipped> = []
  for (const row of rows) {
    if (row["chain"] !== "dstnat" || row["action"] !== "dst-nat") continue
    if (row["disabled"] === "true" || row["disabled"] === "yes") continue
    const rendered = renderRule(row)
    if (rendered instanceof Unsupported) skipped.push({ id: row[".id"] ?? "?", reason: rendered.reason })
    else rules.push(rendered)
  }
  const script = [
    // create it if missing, so the delete never fails: create, delete and fill are one transaction
    `table ip ${table}`,
    `delete table ip ${table}`,
    `table ip ${table} {`,
    "  chain dstnat {",
    "    type nat hook prerouting priority -100; policy accept;",
    ...rules.map((rule) => `    ${rule}`),
    "  }",
    "}",
    ""
  ].join("\n")
  return { script, rules, skipped }
}

/**
 * Loads the rendering of `rows` with `nft -f -` (in the namespace of the options): the table is replaced atomically.
 *
 * @since 0.1.0
 * @category loading
 */
export const apply = (
  rows: ReadonlyArray<RouterOsSimulator.Row>,
  options: Options = {}
): Effect.Effect<Rendering, NetworkLab.CommandError> =>
  Effect.gen(function*() {
    const rendering = render(rows, options.table ?? defaultTable)
    yield* NetworkLab.run(["nft", "-f", "-"], { namespace: options.namespace, input: rendering.script })
    return rendering
  })

/**
 * Deletes the table (nothing if it does not exist).
 *
 * @since 0.1.0
 * @category loading
 */
export const remove = (options: Options = {}): Effect.Effect<void, NetworkLab.CommandError> => {
  const table = options.table ?? defaultTable
  return Effect.asVoid(
    NetworkLab.run(["nft", "-f", "-"], {
      namespace: options.namespace,
      input: `table ip ${table}\ndelete table ip ${table}\n`
    })
  )
}

/**
 * The table as nftables lists it (`nft list table ip <table>`).
 *
 * @since 0.1.0
 * @category loading
 */
export const list = (options: Options = {}): Effect.Effect<string, NetworkLab.CommandError> =>
  Effect.map(
    NetworkLab.run(["nft", "list", "table", "ip", options.table ?? defaultTable], { namespace: options.namespace }),
    ({ stdout }) => stdout
  )

/**
 * An `onNatChange` backend for {@link RouterOsSimulator} that loads every NAT table change into nftables; the table
 * is deleted when the scope closes. `onApplied` sees each rendering (or the failure) — e.g. to report skipped rules.
 *
 * @since 0.1.0
 * @category constructors
 */
export const backend = (
  options: Options & {
    readonly onApplied?: (result: Rendering | NetworkLab.CommandError) => Effect.Effect<void>
  } = {}
): Effect.Effect<
  (rows: ReadonlyArray<RouterOsSimulator.Row>) => Effect.Effect<void, NetworkLab.CommandError>,
  never,
  Scope.Scope
> =>
  Effect.as(
    Effect.addFinalizer(() =>
      remove(options).pipe(
        Effect.catchAll((error) => Effect.logWarning(`could not delete the nftables table: ${error.message}`))
      )
    ),
    (rows: ReadonlyArray<RouterOsSimulator.Row>) =>
      apply(rows, options).pipe(
        Effect.tap((rendering) => options.onApplied?.(rendering) ?? Effect.void),
        Effect.tapError((error) => options.onApplied?.(error) ?? Effect.void)
      )
  )
