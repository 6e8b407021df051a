/**
 * `natpmp-bridge check`: connects to the router and the VPN gateway with the bridge's configuration and reports
 * what the bridge would work with — router version, VPN interface, allowed client networks, VPN public address,
 * rules the bridge owns — and the RouterOS command that sends LAN clients' NAT-PMP requests to the bridge.
 * It changes nothing (reads only; the NAT-PMP request is op 0, the public address).
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { NatPmpClient, RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import type { BridgeConfig } from "@natpmp-bridge/server"
import { ClientPolicy, MikroTikRouter, Router } from "@natpmp-bridge/server"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { createSocket } from "node:dgram"
import type { ExtractedFlags, ParsedSettings } from "./BridgeSettingsOptions.js"
import { resolveConfig, settingsOptions } from "./BridgeSettingsOptions.js"
import type { UsageError } from "./CliMain.js"
import { CommandFailure, describeError, logLevelFromEnv } from "./CliMain.js"

const bridgeAddress = Options.text("bridge-address").pipe(
  Options.withPseudoName("IP"),
  Options.optional,
  Options.withDescription(
    "the bridge host's address as the router reaches it, for the suggested rule (default: LISTEN_ADDR's address, " +
      "or this host's address towards the router)"
  )
)

/** The local address the system would use to reach `host` (a connected UDP socket sends nothing). */
const localAddressTowards = (host: string, port: number) =>
  Effect.async<string, Error>((resume) => {
    const socket = createSocket("udp4")
    socket.on("error", (error) => {
      socket.close()
      resume(Effect.fail(error))
    })
    socket.connect(port, host, () => {
      const address = socket.address().address
      socket.close()
      resume(Effect.succeed(address))
    })
  })

const label = (name: string) => `  ${name.padEnd(14)}`

/** The rule that sends NAT-PMP requests to the router's LAN address on to the bridge. */
export const redirectCommand = (options: {
  readonly lanInterface: string
  readonly routerAddress: string
  readonly bridgeAddress: string
  readonly bridgePort: number
}): string =>
  `/ip firewall nat add chain=dstnat in-interface=${options.lanInterface} dst-address=${options.routerAddress} ` +
  `protocol=udp dst-port=5351 action=dst-nat to-addresses=${options.bridgeAddress} to-ports=${options.bridgePort} ` +
  `comment="NAT-PMP requests to natpmp-bridge"`

const check = (config: BridgeConfig.BridgeConfig, bridgeAddressFlag: Option.Option<string>) =>
  Effect.gen(function*() {
    const failures: Array<string> = []
    const fail = (what: string) => (error: unknown) =>
      Effect.as(
        Effect.zipRight(
          Effect.sync(() => failures.push(what)),
          Console.log(`${label(what)}FAILED: ${describeError(error)}`)
        ),
        undefined
      )
    const routerName = `${config.mikrotik.user}@${config.mikrotik.host}:${
      config.mikrotik.port ?? RouterOsClient.defaultPort(config.mikrotik.tls)
    }`
    yield* Console.log(`natpmp-bridge check (reads only, changes nothing)`)

    // the router: version, VPN interface, LAN networks, own rules, LAN addresses for the suggested rule
    const routerReport = yield* Effect.scoped(Effect.gen(function*() {
      const client = yield* RouterOsClient.make({ ...config.mikrotik, reconnect: false })
      const provide = Effect.provideService(RouterOsClient.RouterOsClient, client)
      const version = yield* provide(RouterOsCommands.version)
      yield* Console.log(`${label("router")}${routerName}: RouterOS ${version.raw}`)
      const router = yield* provide(
        MikroTikRouter.make({ vpnGateway: config.vpnGateway, inInterface: config.inInterface })
      )
      yield* Console.log(
        `${label("VPN interface")}${router.inInterface} (${
          config.inInterface === undefined ? `detected from the routes towards ${config.vpnGateway}` : "configured"
        }), router address ${router.vpnAddresses.join(", ") || "none"}`
      )
      const lanNetworks = yield* router.lanNetworks
      const allowed = config.allowedClients ?? lanNetworks
      yield* Console.log(
        `${label("LAN clients")}${allowed.map(ClientPolicy.formatNetwork).join(", ") || "none"} (${
          config.allowedClients === undefined ? "the router's LAN networks" : "ALLOWED_CLIENTS"
        })`
      )
      if (allowed.length === 0) {
        failures.push("LAN clients")
        yield* Console.log(`${label("")}no client could use the bridge: set ALLOWED_CLIENTS`)
      }
      const rules = yield* router.dstNatRules
      const own = rules.filter((rule) => Router.isOwnComment(rule.comment, config.bridgeId))
      yield* Console.log(
        `${label("own rules")}${
          own.length === 0 ? "none" : own.length
        } (comment ${Router.CommentPrefix}${config.bridgeId} ...)`
      )
      for (const rule of own) yield* Console.log(`${label("")}${Router.describeRule(rule)}`)
      const addresses = yield* provide(RouterOsCommands.listAddresses)
      const lanAddresses = addresses.filter((address) =>
        !address.disabled && !address.invalid && !address.dynamic && address.interface !== router.inInterface &&
        address.actualInterface !== router.inInterface
      )
      return { lanAddresses, allowed }
    })).pipe(Effect.catchAll(fail("router")))

    // the VPN gateway: its public address (op 0)
    yield* Effect.scoped(Effect.gen(function*() {
      const client = yield* NatPmpClient.make({
        gateway: config.vpnGateway,
        port: config.vpnGatewayPort,
        maxAttempts: config.vpnMaxAttempts,
        announcements: false
      })
      const info = yield* client.publicAddress
      yield* Console.log(
        `${label("VPN gateway")}${config.vpnGateway}:${config.vpnGatewayPort}: public IP ${info.publicAddress} ` +
          `(epoch ${info.epoch})`
      )
    })).pipe(Effect.catchAll(fail("VPN gateway")))

    // the rule that brings LAN clients' requests to the bridge
    if (routerReport !== undefined) {
      const address = Option.isSome(bridgeAddressFlag)
        ? bridgeAddressFlag.value
        : config.listen.address !== "0.0.0.0"
        ? config.listen.address
        : yield* localAddressTowards(config.mikrotik.host, 9).pipe(Effect.orElseSucceed(() => "BRIDGE_ADDRESS"))
      yield* Console.log(
        `Send LAN clients' NAT-PMP requests (UDP 5351 to the router) to the bridge at ${address}:${config.listen.port}:`
      )
      if (routerReport.lanAddresses.length === 0) {
        yield* Console.log(`  (the router has no LAN address to redirect from)`)
      }
      for (const lan of routerReport.lanAddresses) {
        yield* Console.log(
          "  " + redirectCommand({
            lanInterface: lan.interface,
            routerAddress: lan.address.split("/")[0],
            bridgeAddress: address,
            bridgePort: config.listen.port
          })
        )
      }
      if (routerReport.allowed.some((network) => ClientPolicy.networkContains(network, address))) {
        yield* Console.log(
          `  Note: ${address} is inside the clients' network, so its answers would not pass the router and clients ` +
            `would drop them (they accept answers from their gateway only): run the bridge on another network ` +
            `(e.g. a container network on the router).`
        )
      }
    }

    if (failures.length > 0) {
      return yield* new CommandFailure({ reason: `check failed: ${failures.join(", ")}`, exitCode: 1 })
    }
  })

/** What `check` parses: the bridge settings and `--bridge-address`. */
export type CheckSettings = ParsedSettings & { readonly bridgeAddress: Option.Option<string> }

export const make = (
  extracted: ExtractedFlags
): Command.Command<"check", never, UsageError | CommandFailure, CheckSettings> =>
  Command.make(
    "check",
    { ...settingsOptions, bridgeAddress },
    ({ bridgeAddress, ...flags }) =>
      Effect.gen(function*() {
        const config = yield* resolveConfig(flags, extracted)
        yield* check(config, bridgeAddress)
      }).pipe(Logger.withMinimumLogLevel(logLevelFromEnv(LogLevel.Warning)))
  ).pipe(
    Command.withDescription(
      "connect to the router and the VPN gateway with the serve settings and report the router version, the VPN " +
        "interface, the allowed client networks, the VPN public address and the bridge's own rules, and print the " +
        "RouterOS command that sends LAN clients' NAT-PMP requests to the bridge; changes nothing"
    )
  )
