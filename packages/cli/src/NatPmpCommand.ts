/**
 * The `natpmp` command: `map`, `address` and `unmap` against a NAT-PMP gateway
 * (RFC 6886), py-natpmp / natpmpc style, plus `map --keep` and `--json`.
 */
import * as Args from "@effect/cli/Args"
import * as Command from "@effect/cli/Command"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import type { NatPmpMessage } from "@natpmp-bridge/core"
import { GatewayDiscovery, NatPmpClient } from "@natpmp-bridge/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import { isIPv4 } from "node:net"
import { CommandFailure, UsageError } from "./CliMain.js"
import type { GatewaySettings } from "./GatewayOptions.js"
import { gatewayOptions, optionInRange, portArg, udp } from "./GatewayOptions.js"
import * as MappingReport from "./MappingReport.js"
import { emit, protocolName } from "./Output.js"

const lifetime = Options.integer("lifetime").pipe(
  Options.withAlias("l"),
  Options.withPseudoName("SECONDS"),
  Options.mapEffect(optionInRange("--lifetime", 1, 4294967295, " (to delete a mapping use 'natpmp unmap')")),
  Options.withDefault(3600),
  Options.withDescription("requested lifetime in seconds; the gateway may grant less")
)

const keep = Options.boolean("keep").pipe(
  Options.withDescription(
    "keep the mapping alive until Ctrl-C/SIGTERM: renew at half the lifetime, follow port changes and gateway " +
      "resets, print each event, delete the mapping on exit"
  )
)

const all = Options.boolean("all").pipe(
  Options.withDescription("delete all of this host's mappings of the protocol (internal port 0)")
)

/** Turns any client or discovery failure into one line (its typed message) and exit code 1. */
const failure = (settings: GatewaySettings) =>
(
  error: NatPmpClient.NatPmpError | GatewayDiscovery.GatewayNotFoundError
): CommandFailure =>
  new CommandFailure({
    reason: error.message,
    exitCode: 1,
    json: settings.json ? errorRecord(error) : undefined
  })

const errorRecord = (error: NatPmpClient.NatPmpError | GatewayDiscovery.GatewayNotFoundError) => ({
  type: "error",
  error: error._tag,
  message: error.message,
  ...(error._tag === "NatPmpResultError" ? { resultCode: error.resultCode, opcode: error.opcode } : {})
})

const resolveGateway = (settings: GatewaySettings) =>
  Option.match(settings.gateway, {
    onSome: Effect.succeed,
    onNone: () => GatewayDiscovery.defaultGateway
  })

/** A client for the gateway the options name, for the duration of the scope. */
const client = (
  settings: GatewaySettings,
  announcements: NatPmpClient.Options["announcements"] = false
) =>
  Effect.flatMap(resolveGateway(settings), (gateway) =>
    NatPmpClient.make({
      gateway,
      port: settings.port,
      initialTimeout: Duration.millis(settings.timeout),
      maxAttempts: settings.retries + 1,
      announcements
    }))

const withClient = <A, R>(
  settings: GatewaySettings,
  use: (client: NatPmpClient.Service) => Effect.Effect<A, NatPmpClient.NatPmpError, R>
): Effect.Effect<A, CommandFailure, Exclude<R, Scope.Scope>> =>
  Effect.scoped(Effect.flatMap(client(settings), use)).pipe(Effect.mapError(failure(settings)))

const protocolOf = (isUdp: boolean): NatPmpMessage.Protocol => (isUdp ? "udp" : "tcp")

// --- natpmp address --------------------------------------------------------------------------

const address = Command.make(
  "address",
  gatewayOptions,
  (settings) =>
    withClient(settings, (client) =>
      Effect.flatMap(client.publicAddress, (info) =>
        emit(
          settings.json,
          `Public IP address ${info.publicAddress} (gateway ${client.gateway}, epoch ${info.epoch})`,
          { type: "address", gateway: client.gateway, publicAddress: info.publicAddress, epoch: info.epoch }
        )))
).pipe(Command.withDescription("print the gateway's public IPv4 address (NAT-PMP opcode 0)"))

// --- natpmp map ------------------------------------------------------------------------------

type AnnouncementListener = false | { readonly address: string; readonly port: number }

const announcements = Options.text("announcements").pipe(
  Options.withPseudoName("ADDRESS:PORT|off"),
  Options.mapEffect((value): Effect.Effect<AnnouncementListener, ValidationError.ValidationError> => {
    if (value === "off") return Effect.succeed(false)
    const match = /^(\d+\.\d+\.\d+\.\d+):(\d+)$/.exec(value)
    const port = match === null ? NaN : Number(match[2])
    return match !== null && isIPv4(match[1]) && port >= 1 && port <= 65535
      ? Effect.succeed({ address: match[1], port })
      : Effect.fail(
        ValidationError.invalidValue(
          HelpDoc.p(`--announcements must be ADDRESS:PORT (e.g. 224.0.0.1:5350) or off, got '${value}'`)
        )
      )
  }),
  Options.withDefault<AnnouncementListener>({ address: "224.0.0.1", port: 5350 }),
  Options.withDescription(
    "with --keep: where to listen for the gateway's address-change announcements (RFC 6886 §3.2.1), or off"
  )
)

const mapArgs = {
  ...gatewayOptions,
  udp,
  lifetime,
  keep,
  announcements,
  publicPort: portArg("public_port", 0, "suggested public (external) port; 0 lets the gateway choose"),
  privatePort: portArg("private_port", 1, "local (internal) port the mapping forwards to")
} as const

type MapSettings = Command.Command.ParseConfig<typeof mapArgs>

const mapOnce = (options: MapSettings) =>
  withClient(options, (client) =>
    Effect.gen(function*() {
      const info = yield* client.publicAddress
      const mapping = yield* client.map({
        protocol: protocolOf(options.udp),
        internalPort: options.privatePort,
        suggestedExternalPort: options.publicPort,
        lifetime: options.lifetime
      })
      yield* MappingReport.mapped(
        { gateway: client.gateway, publicAddress: info.publicAddress, json: options.json },
        mapping
      )
    }))

/**
 * `map --keep`: holds the mapping with the client's keep-alive until the fiber is interrupted
 * (Ctrl-C / SIGTERM), printing every event; closing the scope deletes the mapping.
 */
const mapAndKeep = (options: MapSettings) =>
  Effect.scoped(
    Effect.gen(function*() {
      const service = yield* client(options, options.announcements)
      const info = yield* service.publicAddress
      let context: MappingReport.MappingContext = {
        gateway: service.gateway,
        publicAddress: info.publicAddress,
        json: options.json
      }
      const events = yield* service.subscribe
      yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(events), (event) => {
        if (event._tag === "Announcement") context = { ...context, publicAddress: event.publicAddress }
        return MappingReport.gatewayEvent(context, event)
      })))
      yield* NatPmpClient.keep({
        protocol: protocolOf(options.udp),
        internalPort: options.privatePort,
        suggestedExternalPort: options.publicPort,
        lifetime: options.lifetime,
        onEvent: (event) => MappingReport.keepEvent(context, event)
      }).pipe(Effect.provideService(NatPmpClient.NatPmpClient, service))
      return yield* Effect.never
    })
  ).pipe(Effect.mapError(failure(options)))

const map = Command.make("map", mapArgs, (options) => options.keep ? mapAndKeep(options) : mapOnce(options)).pipe(
  Command.withDescription(
    "map a public port on the gateway to a local port (NAT-PMP opcode 1/2), TCP unless -u; with --keep, keep it " +
      "alive until interrupted"
  )
)

// --- natpmp unmap ----------------------------------------------------------------------------

const unmap = Command.make("unmap", {
  ...gatewayOptions,
  udp,
  all,
  privatePort: Args.optional(portArg("private_port", 1, "local (internal) port of the mapping to delete"))
}, (options) =>
  Effect.gen(function*() {
    const protocol = protocolOf(options.udp)
    if (options.all && Option.isSome(options.privatePort)) {
      return yield* new UsageError({ reason: "give either private_port or --all, not both" })
    }
    if (!options.all && Option.isNone(options.privatePort)) {
      return yield* new UsageError({ reason: "missing private_port (or --all to delete all mappings)" })
    }
    const internalPort = Option.getOrElse(options.privatePort, () => 0)
    yield* withClient(options, (client) =>
      Effect.zipRight(
        options.all ? client.unmapAll(protocol) : client.unmap(protocol, internalPort),
        emit(
          options.json,
          options.all
            ? `Deleted all ${protocolName(protocol)} mappings (gateway ${client.gateway})`
            : `Deleted mapping protocol ${
              protocolName(protocol)
            } local port ${internalPort} (gateway ${client.gateway})`,
          { type: "unmapped", gateway: client.gateway, protocol, internalPort, all: options.all }
        )
      ))
  })).pipe(Command.withDescription(
    "delete a mapping (lifetime 0), or with --all every mapping of the protocol for this host"
  ))

// --- natpmp ----------------------------------------------------------------------------------

export const command = Command.make("natpmp").pipe(
  Command.withHandler(() => new UsageError({ reason: "missing command: map, address or unmap" })),
  Command.withDescription("NAT-PMP (RFC 6886) client: ask the gateway for its public address and port mappings"),
  Command.withSubcommands([map, address, unmap])
)
