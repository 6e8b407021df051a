/**
 * `natpmp-bridge status`: the bridge's leases as the router holds them — its dst-nat rules, read from their
 * ownership comments (`natpmp-bridge:<BRIDGE_ID> <proto> <client>:<port>`) — as a table or, with `--json`, one JSON
 * object. Needs only the router connection (`MIKROTIK_API_*`) and `BRIDGE_ID`; `--all-bridges` lists the rules of
 * every bridge. It changes nothing (one `print`).
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import { BridgeConfig, Router } from "@natpmp-bridge/server"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { settingsOptions } from "./BridgeSettingsOptions.js"
import { CommandFailure, describeError, logLevelFromEnv, UsageError } from "./CliMain.js"

type RouterSettingName = typeof BridgeConfig.routerSettingNames[number]

const routerOptions = Object.fromEntries(
  BridgeConfig.routerSettingNames.map((name) => [name, settingsOptions[name]])
) as { readonly [K in RouterSettingName]: typeof settingsOptions[K] }

const allBridges = Options.boolean("all-bridges").pipe(
  Options.withDescription("list the rules of every natpmp-bridge on the router, not only BRIDGE_ID's")
)

const json = Options.boolean("json").pipe(
  Options.withDescription("print one JSON object (the leases in an array; a failure as an object on stderr)")
)

/** One lease as the router holds it. */
export interface LeaseRow {
  readonly bridgeId: string
  readonly protocol: string
  /** The rule's dst-port (the VPN's public port in `same` mode): a number, or the rule's text if it is not one. */
  readonly publicPort: number | string | null
  readonly client: string | null
  readonly internalPort: number | null
  readonly ruleId: string
  readonly disabled: boolean
  readonly inInterface: string | null
  /** Where the rule sends traffic (`to-addresses:to-ports`). */
  readonly target: string
  /** The rule does what its comment says (protocol, target) and its comment is readable. */
  readonly consistent: boolean
  /** Why it is not consistent. */
  readonly note: string | null
  readonly comment: string
}

/** The rows of the bridge `bridgeId` (or of every bridge) among the dstnat rules. */
export const leaseRows = (
  rules: ReadonlyArray<RouterOsCommands.NatRule>,
  bridgeId: string,
  allBridges: boolean
): ReadonlyArray<LeaseRow> =>
  rules.flatMap((rule) => {
    const comment = rule.comment?.trim() ?? ""
    const owned = allBridges ? comment.startsWith(Router.CommentPrefix) : Router.isOwnComment(comment, bridgeId)
    if (!owned) return []
    const owner = Router.parseOwnership(comment)
    const port = rule.dstPort === undefined ? null : /^\d+$/.test(rule.dstPort) ? Number(rule.dstPort) : rule.dstPort
    const target = `${rule.toAddresses ?? "?"}:${rule.toPorts ?? "?"}`
    const note = Option.isNone(owner)
      ? `damaged comment ${JSON.stringify(comment)}`
      : rule.protocol !== owner.value.protocol || target !== `${owner.value.client}:${owner.value.internalPort}`
      ? `the rule sends ${rule.protocol ?? "any protocol"} to ${target}`
      : null
    return [{
      bridgeId: Option.isSome(owner)
        ? owner.value.bridgeId
        : comment.slice(Router.CommentPrefix.length).split(" ")[0],
      protocol: Option.isSome(owner) ? owner.value.protocol : rule.protocol ?? "?",
      publicPort: port,
      client: Option.isSome(owner) ? owner.value.client : null,
      internalPort: Option.isSome(owner) ? owner.value.internalPort : null,
      ruleId: rule.id,
      disabled: rule.disabled,
      inInterface: rule.inInterface ?? null,
      target,
      consistent: note === null,
      note,
      comment
    }]
  })

/** The rows as an aligned table (header first). */
export const table = (rows: ReadonlyArray<LeaseRow>, withBridge: boolean): ReadonlyArray<string> => {
  const header = [
    ...(withBridge ? ["BRIDGE"] : []),
    "PROTO",
    "PUBLIC PORT",
    "CLIENT",
    "INTERNAL PORT",
    "RULE",
    "DISABLED",
    "NOTE"
  ]
  const cells = rows.map((row) => [
    ...(withBridge ? [row.bridgeId] : []),
    row.protocol,
    String(row.publicPort ?? "-"),
    row.client ?? "-",
    String(row.internalPort ?? "-"),
    row.ruleId,
    row.disabled ? "yes" : "no",
    row.note ?? ""
  ])
  const widths = header.map((title, i) => Math.max(title.length, ...cells.map((cell) => cell[i].length)))
  return [header, ...cells].map((line) => line.map((cell, i) => cell.padEnd(widths[i])).join("  ").trimEnd())
}

export type StatusSettings = { readonly [K in RouterSettingName]: Option.Option<string> } & {
  readonly allBridges: boolean
  readonly json: boolean
}

const status = (settings: StatusSettings) =>
  Effect.gen(function*() {
    const flags: Record<string, string | undefined> = {}
    for (const name of BridgeConfig.routerSettingNames) flags[name] = Option.getOrUndefined(settings[name])
    const { bridgeId, mikrotik } = yield* BridgeConfig.resolveRouter(flags).pipe(
      Effect.mapError((error) => new UsageError({ reason: error.message }))
    )
    const routerName = `${mikrotik.user}@${mikrotik.host}:${mikrotik.port ?? RouterOsClient.defaultPort(mikrotik.tls)}`
    const rules = yield* Effect.scoped(Effect.gen(function*() {
      const client = yield* RouterOsClient.make({ ...mikrotik, reconnect: false })
      return yield* RouterOsCommands.listDstNatRules.pipe(Effect.provideService(RouterOsClient.RouterOsClient, client))
    })).pipe(
      Effect.mapError((error) =>
        new CommandFailure({
          reason: `router ${routerName}: ${describeError(error)}`,
          exitCode: 1,
          json: settings.json ? { error: `router ${routerName}: ${describeError(error)}` } : undefined
        })
      )
    )
    const rows = leaseRows(rules, bridgeId, settings.allBridges)
    if (settings.json) {
      return yield* Console.log(JSON.stringify({
        router: routerName,
        bridgeId: settings.allBridges ? null : bridgeId,
        leases: rows
      }))
    }
    const whose = settings.allBridges ? "every natpmp-bridge" : `natpmp-bridge:${bridgeId}`
    yield* Console.log(`router ${routerName}: ${rows.length} rule(s) of ${whose}`)
    if (rows.length > 0) {
      for (const line of table(rows, settings.allBridges)) yield* Console.log(line)
    }
  })

export const command: Command.Command<"status", never, UsageError | CommandFailure, StatusSettings> = Command.make(
  "status",
  { ...routerOptions, allBridges, json },
  (settings) => status(settings).pipe(Logger.withMinimumLogLevel(logLevelFromEnv(LogLevel.Warning)))
).pipe(
  Command.withDescription(
    "list the bridge's leases as the router holds them (its dst-nat rules, from their comments " +
      "natpmp-bridge:<BRIDGE_ID> <proto> <client>:<port>): protocol, public port, client, internal port, rule id, " +
      "disabled; reads only, with the MIKROTIK_API_* settings and BRIDGE_ID"
  )
)
