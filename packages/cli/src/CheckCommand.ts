/**
 * `natpmp-bridge check`: connects to the router and the VPN gateway with the bridge's configuration and reports
 * what the bridge would work with — router version, VPN interface, allowed client networks, VPN public address,
 * rules the bridge owns — and every RouterOS command the user pastes to put the bridge in service (see
 * {@link RouterSetup}): the API user and group, the API service restriction, the redirect of LAN clients' NAT-PMP
 * requests and, with `--container`, the container's network, environment and container.
 * It changes nothing (reads only; the NAT-PMP request is op 0, the public address).
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { Ipv4, NatPmpClient, RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import { BridgeConfig, ClientPolicy, MikroTikRouter, Router } from "@natpmp-bridge/server"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { createSocket } from "node:dgram"
import type { ExtractedFlags, ParsedSettings } from "./BridgeSettingsOptions.js"
import { resolveConfig, settingsOptions } from "./BridgeSettingsOptions.js"
import { CommandFailure, describeError, logLevelFromEnv, UsageError } from "./CliMain.js"
import * as RouterSetup from "./RouterSetup.js"

const bridgeHost = Options.text("bridge-host").pipe(
  Options.withAlias("bridge-address"),
  Options.withPseudoName("IP"),
  Options.optional,
  Options.withDescription(
    "the bridge host's address as the router reaches it, for the generated commands (default: LISTEN_ADDR's " +
      "address, or this host's address towards the router; with --container: the container's address)"
  )
)

const container = Options.boolean("container").pipe(
  Options.withDescription("the bridge runs in a RouterOS container: also print its network, environment and container")
)

const containerAddress = Options.text("container-address").pipe(
  Options.withPseudoName("CIDR"),
  Options.withDefault("172.31.53.2/30"),
  Options.withDescription("with --container: the container's address and prefix; the router takes the first host")
)

const containerImage = Options.text("container-image").pipe(
  Options.withPseudoName("FILE.tar|IMAGE"),
  Options.withDefault("natpmp-bridge.tar"),
  Options.withDescription("with --container: an image file uploaded to the router (.tar) or a registry reference")
)

const containerRootDir = Options.text("container-root-dir").pipe(
  Options.withPseudoName("DIR"),
  Options.withDefault("natpmp-bridge"),
  Options.withDescription("with --container: where the router keeps the container's files (e.g. usb1/natpmp-bridge)")
)

const json = Options.boolean("json").pipe(
  Options.withDescription("print the report as one JSON object (the commands as lists of lines)")
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

interface CheckOptions {
  readonly bridgeHost: Option.Option<string>
  readonly container: RouterSetup.ContainerOptions | undefined
  readonly json: boolean
}

/** Settings the container's environment never carries: set by the setup itself, or meaningless in the container. */
const notInContainer: ReadonlySet<BridgeConfig.SettingName> = new Set<BridgeConfig.SettingName>([
  "mikrotikAddress",
  "mikrotikUser",
  "mikrotikPassword",
  "mikrotikTlsCa",
  "listen"
])

const check = (config: BridgeConfig.BridgeConfig, raw: BridgeConfig.RawSettings, options: CheckOptions) =>
  Effect.gen(function*() {
    const failures: Array<string> = []
    const human: Array<string> = []
    const say = (line: string) => human.push(line)
    const fail = (what: string) => (error: unknown) =>
      Effect.sync(() => {
        failures.push(what)
        say(`${label(what)}FAILED: ${describeError(error)}`)
        return { error: describeError(error) } as const
      })
    const apiPort = config.mikrotik.port ?? RouterOsClient.defaultPort(config.mikrotik.tls)
    const routerName = `${config.mikrotik.user}@${config.mikrotik.host}:${apiPort}`
    say(`natpmp-bridge check (reads only, changes nothing)`)

    // the router: version, VPN interface, LAN networks, own rules, LAN addresses for the generated commands
    const router = yield* Effect.scoped(Effect.gen(function*() {
      const client = yield* RouterOsClient.make({ ...config.mikrotik, reconnect: false })
      const provide = Effect.provideService(RouterOsClient.RouterOsClient, client)
      const version = yield* provide(RouterOsCommands.version)
      say(`${label("router")}${routerName}: RouterOS ${version.raw}`)
      const router = yield* provide(
        MikroTikRouter.make({ vpnGateway: config.vpnGateway, inInterface: config.inInterface })
      )
      const interfaceSource = config.inInterface === undefined ? "detected" : "configured"
      say(
        `${label("VPN interface")}${router.inInterface} (${
          interfaceSource === "detected" ? `detected from the routes towards ${config.vpnGateway}` : "configured"
        }), router address ${router.vpnAddresses.join(", ") || "none"}`
      )
      const lanNetworks = yield* router.lanNetworks
      const allowed = config.allowedClients ?? lanNetworks
      const allowedSource = config.allowedClients === undefined ? "the router's LAN networks" : "ALLOWED_CLIENTS"
      say(`${label("LAN clients")}${allowed.map(ClientPolicy.formatNetwork).join(", ") || "none"} (${allowedSource})`)
      if (allowed.length === 0) {
        failures.push("LAN clients")
        say(`${label("")}no client could use the bridge: set ALLOWED_CLIENTS`)
      }
      const rules = yield* router.dstNatRules
      const own = rules.filter((rule) => Router.isOwnComment(rule.comment, config.bridgeId))
      say(
        `${label("own rules")}${
          own.length === 0 ? "none" : own.length
        } (comment ${Router.CommentPrefix}${config.bridgeId} ...)`
      )
      for (const rule of own) say(`${label("")}${Router.describeRule(rule)}`)
      const addresses = yield* provide(RouterOsCommands.listAddresses)
      const lanAddresses = addresses.filter((address) =>
        !address.disabled && !address.invalid && !address.dynamic && address.interface !== router.inInterface &&
        address.actualInterface !== router.inInterface
      ).map((address) => ({ interface: address.interface, address: address.address }))
      return {
        address: `${config.mikrotik.host}:${apiPort}`,
        user: config.mikrotik.user,
        version: version.raw,
        versionNumber: { major: version.major, minor: version.minor },
        vpnInterface: router.inInterface,
        vpnInterfaceSource: interfaceSource,
        vpnAddresses: router.vpnAddresses,
        lanAddresses,
        clients: { networks: allowed.map(ClientPolicy.formatNetwork), source: allowedSource },
        allowed,
        ownRules: own.map((rule) => ({ id: rule.id, rule: Router.describeRule(rule) }))
      }
    })).pipe(Effect.catchAll(fail("router")))

    // the VPN gateway: its public address (op 0)
    const vpnGateway = yield* Effect.scoped(Effect.gen(function*() {
      const client = yield* NatPmpClient.make({
        gateway: config.vpnGateway,
        port: config.vpnGatewayPort,
        maxAttempts: config.vpnMaxAttempts,
        announcements: false
      })
      const info = yield* client.publicAddress
      say(
        `${label("VPN gateway")}${config.vpnGateway}:${config.vpnGatewayPort}: public IP ${info.publicAddress} ` +
          `(epoch ${info.epoch})`
      )
      return {
        address: `${config.vpnGateway}:${config.vpnGatewayPort}`,
        publicAddress: info.publicAddress,
        epoch: info.epoch
      }
    })).pipe(Effect.catchAll(fail("VPN gateway")))

    // the commands to paste
    let setup: RouterSetup.Setup | undefined
    if (!("error" in router)) {
      const host = Option.isSome(options.bridgeHost)
        ? options.bridgeHost.value
        : config.listen.address !== "0.0.0.0"
        ? config.listen.address
        : yield* localAddressTowards(config.mikrotik.host, 9).pipe(Effect.orElseSucceed(() => "BRIDGE_HOST"))
      const environment: Array<readonly [string, string]> = []
      for (
        const [name, setting] of Object.entries(BridgeConfig.settings) as Array<
          [BridgeConfig.SettingName, BridgeConfig.Setting]
        >
      ) {
        const value = raw[name]
        if (notInContainer.has(name) || value === undefined || value.trim() === "") continue
        environment.push([setting.env, value.trim()])
      }
      if (raw.inInterface === undefined || raw.inInterface.trim() === "") {
        environment.push([BridgeConfig.settings.inInterface.env, router.vpnInterface])
      }
      setup = RouterSetup.make({
        routerVersion: router.versionNumber,
        vpnInterface: router.vpnInterface,
        lanAddresses: router.lanAddresses,
        bridgeHost: host,
        bridgePort: options.container === undefined ? config.listen.port : BridgeConfig.defaults.listen.port,
        api: {
          service: config.mikrotik.tls === false || config.mikrotik.tls === undefined ? "api" : "api-ssl",
          port: apiPort
        },
        user: config.mikrotik.user,
        container: options.container,
        environment
      })
      const notes = [...setup.notes]
      const bridgeAt = setup.bridgeHost
      if (options.container === undefined && router.allowed.some((n) => ClientPolicy.networkContains(n, bridgeAt))) {
        notes.push(
          `${bridgeAt} is inside the clients' network, so its answers would not pass the router and clients ` +
            `would drop them (they accept answers from their gateway only): run the bridge on another network ` +
            `(e.g. a container network on the router: --container).`
        )
      }
      setup = { ...setup, notes }
      say("")
      say(`RouterOS commands for the bridge at ${setup.bridgeHost} (paste them into the router's terminal):`)
      for (const step of setup.steps) {
        say(`# ${step.title}`)
        for (const command of step.commands) say(command)
      }
      for (const note of setup.notes) say(`Note: ${note}`)
    }

    if (options.json) {
      yield* Console.log(JSON.stringify({
        type: "check",
        ok: failures.length === 0,
        failures,
        router: "error" in router ? router : { ...router, versionNumber: undefined, allowed: undefined },
        vpnGateway,
        bridge: setup === undefined ? undefined : {
          host: setup.bridgeHost,
          user: setup.user,
          variant: options.container === undefined ? "host" : "container"
        },
        steps: setup?.steps ?? [],
        commands: setup?.steps.flatMap((step) => step.commands) ?? [],
        notes: setup?.notes ?? []
      }))
    } else {
      yield* Console.log(human.join("\n"))
    }

    if (failures.length > 0) {
      return yield* new CommandFailure({
        reason: `check failed: ${failures.join(", ")}`,
        exitCode: 1,
        json: options.json ? { type: "error", message: `check failed: ${failures.join(", ")}` } : undefined
      })
    }
  })

/** What `check` parses: the bridge settings and its own flags. */
export type CheckSettings = ParsedSettings & {
  readonly bridgeHost: Option.Option<string>
  readonly container: boolean
  readonly containerAddress: string
  readonly containerImage: string
  readonly containerRootDir: string
  readonly json: boolean
}

const containerOptions = (
  flags: Pick<CheckSettings, "container" | "containerAddress" | "containerImage" | "containerRootDir" | "bridgeHost">
): Effect.Effect<RouterSetup.ContainerOptions | undefined, UsageError> => {
  if (!flags.container) return Effect.succeed(undefined)
  const cidr = Ipv4.parseCidr(flags.containerAddress)
  if (cidr === undefined || !flags.containerAddress.includes("/") || cidr.prefix > 30) {
    return new UsageError({
      reason: `--container-address: expected an address with a prefix up to /30, got "${flags.containerAddress}"`
    })
  }
  const addresses = RouterSetup.containerAddresses(cidr)
  if (addresses.container === addresses.network.split("/")[0]) {
    return new UsageError({ reason: `--container-address: ${flags.containerAddress} is the network's own address` })
  }
  if (Option.isSome(flags.bridgeHost) && flags.bridgeHost.value !== addresses.container) {
    return new UsageError({
      reason: `--bridge-host: with --container the bridge is at the container's address ${addresses.container}`
    })
  }
  if (flags.containerImage.trim() === "" || flags.containerRootDir.trim() === "") {
    return new UsageError({ reason: "--container-image and --container-root-dir must not be empty" })
  }
  return Effect.succeed({
    address: cidr,
    image: flags.containerImage.trim(),
    rootDir: flags.containerRootDir.trim(),
    veth: "veth-natpmp",
    bridge: "containers"
  })
}

export const make = (
  extracted: ExtractedFlags
): Command.Command<"check", never, UsageError | CommandFailure, CheckSettings> =>
  Command.make(
    "check",
    { ...settingsOptions, bridgeHost, container, containerAddress, containerImage, containerRootDir, json },
    ({ bridgeHost, container, containerAddress, containerImage, containerRootDir, json, ...flags }) =>
      Effect.gen(function*() {
        const config = yield* resolveConfig(flags, extracted)
        const containerSetup = yield* containerOptions({
          bridgeHost,
          container,
          containerAddress,
          containerImage,
          containerRootDir
        })
        const env = yield* Effect.orElseSucceed(BridgeConfig.rawFromEnv, () => ({} as BridgeConfig.RawSettings))
        const raw: Record<string, string | undefined> = { ...env }
        for (const [name, value] of Object.entries(flags)) {
          if (Option.isSome(value) && value.value !== "") raw[name] = value.value
        }
        yield* check(config, raw, { bridgeHost, container: containerSetup, json })
      }).pipe(Logger.withMinimumLogLevel(logLevelFromEnv(LogLevel.Warning)))
  ).pipe(
    Command.withDescription(
      "connect to the router and the VPN gateway with the serve settings and report the router version, the VPN " +
        "interface, the allowed client networks, the VPN public address and the bridge's own rules, and print " +
        "every RouterOS command to paste: the API user and group, the API service restriction, the redirect of " +
        "LAN clients' NAT-PMP requests to the bridge and, with --container, the container; changes nothing"
    )
  )
