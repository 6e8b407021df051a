/**
 * `natpmp-bridge demo`: the whole product on loopback, narrated. Starts a RouterOS API simulator (the MikroTik), a
 * ProtonVPN-like NAT-PMP gateway simulator (the VPN) and the bridge between them (the server package's test
 * harness), then uses the project's own NatPmpClient as a LAN client: maps a UDP and a TCP port, shows what each
 * layer did (the VPN mapping, the router rule, the answer), renews, deletes, shuts the bridge down and checks that
 * nothing is left behind. With `--metrics`, the bridge also serves `/metrics` and `/healthz` on loopback and the demo
 * prints both (over HTTP) before the shutdown. Logs (stderr) follow `--log-format` / `LOG_FORMAT`.
 */
import * as Command from "@effect/cli/Command"
import * as Options from "@effect/cli/Options"
import { NatPmpClient } from "@natpmp-bridge/core"
import type { NatPmpMessage } from "@natpmp-bridge/core"
import type { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import { BridgeConfig, BridgeLogger } from "@natpmp-bridge/server"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Console from "effect/Console"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { CommandFailure, logLevelFromEnv, toCommandFailure, UsageError } from "./CliMain.js"

const label = (name: string) => `  ${name.padEnd(13)}`

const describeRule = (row: RouterOsSimulator.Row): string =>
  [
    row[".id"],
    ...["chain", "in-interface", "protocol", "dst-port", "action", "to-addresses", "to-ports"]
      .filter((key) => row[key] !== undefined)
      .map((key) => `${key}=${row[key]}`),
    row.comment === undefined ? undefined : `comment=${JSON.stringify(row.comment)}`
  ].filter((part) => part !== undefined).join(" ")

/** Whether `--metrics` was given. */
class WithMetrics extends Context.Reference<WithMetrics>()("@natpmp-bridge/cli/DemoCommand/WithMetrics", {
  defaultValue: () => false
}) {}

/** A GET on loopback (the bridge's metrics server). */
const httpGet = (url: string) =>
  Effect.tryPromise({
    try: async () => {
      const response = await fetch(url)
      return { status: response.status, body: await response.text() }
    },
    catch: (error) => new CommandFailure({ reason: `GET ${url}: ${String(error)}`, exitCode: 1 })
  })

const demo = Effect.scoped(Effect.gen(function*() {
  const bridgeId = "demo"
  const withMetrics = yield* WithMetrics
  const harness = yield* BridgeHarness.make({
    vpnMode: "protonvpn",
    vpn: { publicAddress: "203.0.113.7" },
    // the demo's client socket sends from 127.0.0.1
    bridge: {
      allowedClients: ["127.0.0.1/32"],
      bridgeId,
      metrics: withMetrics ? { address: "127.0.0.1", port: 0 } : undefined
    }
  })
  const { bridge, router, vpn } = harness
  yield* Console.log("natpmp-bridge demo: a MikroTik, a NAT-PMP VPN gateway and the bridge, all on 127.0.0.1\n")
  yield* Console.log(`${label("router")}RouterOS API simulator ${router.host}:${router.port}`)
  yield* Console.log(
    `${label("VPN gateway")}NAT-PMP simulator ${vpn.address}:${vpn.port}, ProtonVPN-like (lifetime at most 60 s, ` +
      `random public port), public IP ${yield* vpn.publicAddress}`
  )
  yield* Console.log(
    `${label("bridge")}NAT-PMP server ${bridge.address}:${bridge.port}, VPN interface ${bridge.router.inInterface}, ` +
      `port mode ${bridge.config.portMode}, rules marked natpmp-bridge:${bridgeId}`
  )

  const client = yield* NatPmpClient.make({ gateway: bridge.address, port: bridge.port, announcements: false })
  yield* Console.log(`${label("LAN client")}the project's NatPmpClient, gateway ${client.gateway}:${client.port}\n`)

  /** What the router and the VPN hold now, and how many router API commands the step cost. */
  const layers = (protocol: NatPmpMessage.Protocol, internalPort: number) =>
    Effect.gen(function*() {
      const mappings = (yield* vpn.mappings).filter((m) => m.protocol === protocol)
      for (const m of mappings) {
        yield* Console.log(
          `${label("VPN")}${m.protocol.toUpperCase()} mapping of the bridge (${m.client}): public port ` +
            `${m.externalPort}, lifetime ${m.lifetime} s`
        )
      }
      if (mappings.length === 0) yield* Console.log(`${label("VPN")}no ${protocol.toUpperCase()} mapping`)
      const rules = (yield* router.natRules).filter((row) =>
        row.comment?.startsWith(`natpmp-bridge:${bridgeId} ${protocol} `) && row.comment.endsWith(`:${internalPort}`)
      )
      for (const rule of rules) yield* Console.log(`${label("router rule")}${describeRule(rule)}`)
      if (rules.length === 0) yield* Console.log(`${label("router rule")}none for ${protocol} port ${internalPort}`)
      yield* Console.log(`${label("router API")}${yield* router.commandCount()} command(s) for this step`)
      yield* router.resetCounters
    })

  yield* router.resetCounters
  yield* Console.log("1. Public address (NAT-PMP op 0)")
  const address = yield* client.publicAddress
  yield* Console.log(`${label("answer")}public IP ${address.publicAddress}, epoch ${address.epoch} (from the cache)`)
  yield* Console.log(`${label("router API")}${yield* router.commandCount()} command(s)\n`)
  yield* router.resetCounters

  const mapped = []
  let step = 2
  for (const [protocol, internalPort] of [["udp", 51413], ["tcp", 8080]] as const) {
    yield* Console.log(`${step++}. Map ${protocol.toUpperCase()} local port ${internalPort}, lifetime 7200 s requested`)
    const mapping = yield* client.map({ protocol, internalPort, lifetime: 7200 })
    yield* layers(protocol, internalPort)
    yield* Console.log(
      `${label("answer")}public port ${mapping.externalPort} ${protocol.toUpperCase()} -> 127.0.0.1:${internalPort}, ` +
        `lifetime ${mapping.lifetime} s: internet -> ${address.publicAddress}:${mapping.externalPort} -> VPN -> ` +
        `router (dst-nat) -> 127.0.0.1:${internalPort}\n`
    )
    mapped.push(mapping)
  }

  const [udp, tcp] = mapped
  yield* Console.log(`${step++}. Renew UDP ${udp.internalPort} (as a client does at half the lifetime)`)
  const renewed = yield* client.map({
    protocol: "udp",
    internalPort: udp.internalPort,
    suggestedExternalPort: udp.externalPort,
    lifetime: 7200
  })
  yield* layers("udp", udp.internalPort)
  yield* Console.log(
    `${label("answer")}public port ${renewed.externalPort}, lifetime ${renewed.lifetime} s ` +
      `(a renewal refreshes the VPN mapping and needs no router command)\n`
  )

  yield* Console.log(`${step++}. Delete UDP ${udp.internalPort} (lifetime 0)`)
  yield* client.unmap("udp", udp.internalPort)
  yield* layers("udp", udp.internalPort)
  yield* Console.log(`${label("answer")}success\n`)

  if (Option.isSome(bridge.metrics.listening)) {
    const { address, port } = bridge.metrics.listening.value
    const base = `http://${address}:${port}`
    yield* Console.log(`${step++}. Observability: GET ${base}/healthz and ${base}/metrics`)
    const health = yield* httpGet(`${base}/healthz`)
    yield* Console.log(`${label("/healthz")}${health.status} ${health.body}`)
    const metrics = yield* httpGet(`${base}/metrics`)
    yield* Console.log(`${label("/metrics")}${metrics.status}, Prometheus text:`)
    yield* Console.log(metrics.body)
  }

  yield* Console.log(`${step++}. Shut the bridge down with TCP ${tcp.internalPort} still mapped`)
  yield* router.resetCounters
  yield* bridge.stop
  const rulesLeft = (yield* router.natRules).filter((row) => row.comment?.startsWith(`natpmp-bridge:${bridgeId} `))
  const mappingsLeft = yield* vpn.mappings
  yield* Console.log(`${label("router")}${rulesLeft.length} bridge rule(s) left`)
  yield* Console.log(`${label("VPN")}${mappingsLeft.length} mapping(s) left`)
  yield* Console.log(`${label("router API")}${yield* router.commandCount()} command(s) for the shutdown`)
  if (rulesLeft.length > 0 || mappingsLeft.length > 0) {
    return yield* new CommandFailure({ reason: "the bridge left rules or mappings behind", exitCode: 1 })
  }
  yield* Console.log("\nDone: every layer is clean.")
}))

const metricsFlag = Options.boolean("metrics").pipe(
  Options.withDescription("also serve /metrics and /healthz on 127.0.0.1 (ephemeral port) and print both")
)

const logFormatFlag = Options.text(BridgeConfig.settings.logFormat.flag).pipe(
  Options.withPseudoName(BridgeConfig.settings.logFormat.env),
  Options.optional,
  Options.withDescription(
    `${BridgeConfig.settings.logFormat.description} [env ${BridgeConfig.settings.logFormat.env}, default pretty]`
  )
)

/** The log format from the flag, else `LOG_FORMAT`, else pretty; a bad value is a usage error. */
const logFormatOf = (flag: Option.Option<string>): Either.Either<BridgeLogger.LogFormat, UsageError> => {
  const setting = BridgeConfig.settings.logFormat
  const [name, text] = Option.isSome(flag)
    ? [`--${setting.flag}`, flag.value]
    : [setting.env, process.env[setting.env] ?? ""]
  if (text.trim() === "") return Either.right("pretty")
  return Either.mapLeft(setting.parse(text), (reason) => new UsageError({ reason: `${name}: ${reason}` }))
}

/** What `demo` parses. */
export interface DemoSettings {
  readonly metrics: boolean
  readonly logFormat: Option.Option<string>
}

export const command: Command.Command<"demo", never, CommandFailure | UsageError, DemoSettings> = Command.make(
  "demo",
  { metrics: metricsFlag, logFormat: logFormatFlag },
  ({ logFormat, metrics }) =>
    Effect.flatMap(logFormatOf(logFormat), (format) =>
      demo.pipe(
        Effect.provideService(WithMetrics, metrics),
        Effect.mapError(toCommandFailure(1)),
        Logger.withMinimumLogLevel(logLevelFromEnv(LogLevel.Warning)),
        BridgeLogger.withFormat(format)
      ))
).pipe(
  Command.withDescription(
    "run the bridge between a RouterOS simulator and a ProtonVPN-like NAT-PMP gateway simulator on loopback, map, " +
      "renew and delete a UDP and a TCP port with the project's NatPmpClient, show what each layer did, shut down; " +
      "with --metrics, print its /healthz and /metrics before the shutdown"
  )
)
