/**
 * The bridge's configuration: one definition ({@link settings}) of every setting — environment variable, CLI flag,
 * description, default — shared by the environment reader ({@link config}) and the `natpmp-bridge serve` flags
 * ({@link fromStrings}), plus the plain options object ({@link make}) for programmatic use.
 *
 * A missing or bad value fails with one line naming the variable (or flag). The RouterOS password is `Redacted`
 * and never appears in a message or a log.
 *
 * @since 0.1.0
 */
import type { RouterOsClient } from "@natpmp-bridge/core"
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import type { LogFormat } from "./BridgeLogger.js"
import type { Ipv4Network } from "./ClientPolicy.js"
import { parseIpv4, parseNetworks } from "./ClientPolicy.js"
import type { PortMode } from "./MappingService.js"
import { isValidBridgeId } from "./Router.js"

// -----------------------------------------------------------------------------
// the resolved configuration
// -----------------------------------------------------------------------------

/** The bridge's configuration, every default applied. */
export interface BridgeConfig {
  /** The VPN gateway (speaks NAT-PMP), e.g. `10.2.0.1`. */
  readonly vpnGateway: string
  /** Its NAT-PMP port (5351; another one only for tests). */
  readonly vpnGatewayPort: number
  /** The RouterOS API connection. */
  readonly mikrotik: RouterOsClient.Options
  /** Where the NAT-PMP server listens. */
  readonly listen: { readonly address: string; readonly port: number }
  /** The router's VPN in-interface; `undefined`: detected from the routes towards the VPN gateway. */
  readonly inInterface: string | undefined
  /** Minimum log level; `undefined`: leave the application's as it is. */
  readonly logLevel: LogLevel.LogLevel | undefined
  readonly portMode: PortMode
  /** Networks requests are accepted from; `undefined`: the router's LAN networks. */
  readonly allowedClients: ReadonlyArray<Ipv4Network> | undefined
  readonly reconcileInterval: Duration.Duration
  /** Marks the bridge's own rules: `natpmp-bridge:<bridgeId> ...`. */
  readonly bridgeId: string
  /** Longest lifetime granted to a LAN client, in seconds. */
  readonly maxLifetime: number
  /** Most mappings one LAN client may hold. */
  readonly clientQuota: number
  /** Every request is answered within this time. */
  readonly requestTimeout: Duration.Duration
  /** How long rules adopted from a previous run live without a renewal. */
  readonly adoptionGrace: Duration.Duration
  /** Bound of the shutdown cleanup. */
  readonly shutdownTimeout: Duration.Duration
  /** Where announcements go; `false`: never announce. */
  readonly announce: false | { readonly address: string; readonly port: number }
  /** Sends per VPN request (250 ms doubling); 3 keeps a silent VPN within the request timeout. */
  readonly vpnMaxAttempts: number
  /** VPN requests outstanding at once (1..64); each mapping's requests stay serial. */
  readonly vpnMaxInFlight: number
  /** How log lines look (`Bridge.serve`); `pretty` by default. */
  readonly logFormat: LogFormat
  /** Where the HTTP server of `/metrics` and `/healthz` listens (port 0: ephemeral); `undefined`: no server. */
  readonly metrics: { readonly address: string; readonly port: number } | undefined
}

/** Programmatic options: the required settings and any of the others. */
export interface BridgeOptions {
  readonly vpnGateway: string
  readonly vpnGatewayPort?: number | undefined
  readonly mikrotik: {
    readonly host: string
    readonly port?: number | undefined
    readonly user?: string | undefined
    readonly password: string | Redacted.Redacted<string>
    readonly tls?: RouterOsClient.Options["tls"]
    readonly connectTimeout?: Duration.DurationInput | undefined
    readonly commandTimeout?: Duration.DurationInput | undefined
  }
  readonly listen?: { readonly address?: string | undefined; readonly port?: number | undefined } | undefined
  readonly inInterface?: string | undefined
  readonly logLevel?: LogLevel.LogLevel | undefined
  readonly portMode?: PortMode | undefined
  /** CIDR strings (`192.168.88.0/24`) or parsed networks. */
  readonly allowedClients?: ReadonlyArray<string | Ipv4Network> | undefined
  readonly reconcileInterval?: Duration.DurationInput | undefined
  readonly bridgeId?: string | undefined
  readonly maxLifetime?: number | undefined
  readonly clientQuota?: number | undefined
  readonly requestTimeout?: Duration.DurationInput | undefined
  readonly adoptionGrace?: Duration.DurationInput | undefined
  readonly shutdownTimeout?: Duration.DurationInput | undefined
  readonly announce?: false | { readonly address: string; readonly port: number } | undefined
  readonly vpnMaxAttempts?: number | undefined
  readonly vpnMaxInFlight?: number | undefined
  readonly logFormat?: LogFormat | undefined
  readonly metrics?: { readonly address?: string | undefined; readonly port?: number | undefined } | undefined
}

/** Defaults of the optional settings. */
export const defaults = {
  vpnGatewayPort: 5351,
  user: "admin",
  listen: { address: "0.0.0.0", port: 5351 },
  portMode: "same" as PortMode,
  reconcileInterval: Duration.seconds(60),
  bridgeId: "default",
  maxLifetime: 7200,
  clientQuota: 64,
  requestTimeout: Duration.seconds(2),
  adoptionGrace: Duration.seconds(120),
  shutdownTimeout: Duration.seconds(10),
  announce: { address: "224.0.0.1", port: 5350 },
  vpnMaxAttempts: 3,
  vpnMaxInFlight: 8,
  logFormat: "pretty" as LogFormat,
  metrics: { address: "0.0.0.0", port: 9464 },
  /** The RouterOS command timeout: below the request timeout, so a stuck router still gets an answer 3 in time. */
  commandTimeout: Duration.millis(1500)
} as const

/** A configuration or option value is missing or invalid; `name` is the variable (or flag) to fix. */
export class BridgeConfigError extends Data.TaggedError("BridgeConfigError")<{
  readonly name: string
  readonly reason: string
}> {
  override get message(): string {
    return `${this.name}: ${this.reason}`
  }
}

const toNetwork = (value: string | Ipv4Network): Either.Either<Ipv4Network, string> =>
  typeof value === "string" ? Either.map(parseNetworks(value), (networks) => networks[0]) : Either.right(value)

/** Applies the defaults to programmatic options (and checks what types cannot). */
export const make = (options: BridgeOptions): Either.Either<BridgeConfig, BridgeConfigError> =>
  Either.gen(function*() {
    const fail = (name: string, reason: string) => Either.left(new BridgeConfigError({ name, reason }))
    if (parseIpv4(options.vpnGateway) === undefined) {
      return yield* fail("vpnGateway", `expected an IPv4 address, got "${options.vpnGateway}"`)
    }
    const bridgeId = options.bridgeId ?? defaults.bridgeId
    if (!isValidBridgeId(bridgeId)) {
      return yield* fail("bridgeId", "expected 1 to 32 characters among A-Z a-z 0-9 . _ -")
    }
    const allowedClients = options.allowedClients === undefined
      ? undefined
      : yield* Either.all(options.allowedClients.map(toNetwork)).pipe(
        Either.mapLeft((reason) => new BridgeConfigError({ name: "allowedClients", reason }))
      )
    const vpnMaxInFlight = options.vpnMaxInFlight ?? defaults.vpnMaxInFlight
    if (!Number.isInteger(vpnMaxInFlight) || vpnMaxInFlight < 1 || vpnMaxInFlight > 64) {
      return yield* fail("vpnMaxInFlight", `expected an integer in 1..64, got ${vpnMaxInFlight}`)
    }
    const password = options.mikrotik.password
    return {
      vpnGateway: options.vpnGateway,
      vpnGatewayPort: options.vpnGatewayPort ?? defaults.vpnGatewayPort,
      mikrotik: {
        host: options.mikrotik.host,
        port: options.mikrotik.port,
        user: options.mikrotik.user ?? defaults.user,
        password: typeof password === "string" ? Redacted.make(password) : password,
        tls: options.mikrotik.tls ?? false,
        connectTimeout: options.mikrotik.connectTimeout,
        commandTimeout: options.mikrotik.commandTimeout ?? defaults.commandTimeout
      },
      listen: {
        address: options.listen?.address ?? defaults.listen.address,
        port: options.listen?.port ?? defaults.listen.port
      },
      inInterface: options.inInterface,
      logLevel: options.logLevel,
      portMode: options.portMode ?? defaults.portMode,
      allowedClients,
      reconcileInterval: Duration.decode(options.reconcileInterval ?? defaults.reconcileInterval),
      bridgeId,
      maxLifetime: options.maxLifetime ?? defaults.maxLifetime,
      clientQuota: options.clientQuota ?? defaults.clientQuota,
      requestTimeout: Duration.decode(options.requestTimeout ?? defaults.requestTimeout),
      adoptionGrace: Duration.decode(options.adoptionGrace ?? defaults.adoptionGrace),
      shutdownTimeout: Duration.decode(options.shutdownTimeout ?? defaults.shutdownTimeout),
      announce: options.announce ?? defaults.announce,
      vpnMaxAttempts: options.vpnMaxAttempts ?? defaults.vpnMaxAttempts,
      vpnMaxInFlight,
      logFormat: options.logFormat ?? defaults.logFormat,
      metrics: options.metrics === undefined ? undefined : {
        address: options.metrics.address ?? defaults.metrics.address,
        port: options.metrics.port ?? defaults.metrics.port
      }
    } satisfies BridgeConfig
  })

// -----------------------------------------------------------------------------
// value parsers (strings from the environment or flags)
// -----------------------------------------------------------------------------

type Parse<A> = (text: string) => Either.Either<A, string>

const parseInteger = (min: number, max: number): Parse<number> => (text) => {
  const value = text.trim()
  return /^\d+$/.test(value) && Number(value) >= min && Number(value) <= max
    ? Either.right(Number(value))
    : Either.left(`expected an integer in ${min}..${max}, got "${text}"`)
}

/** `60` (seconds), `60s`, `1.5s`, `500ms`, `2m`, `1h`. */
export const parseDuration: Parse<Duration.Duration> = (text) => {
  const match = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$/i.exec(text)
  if (match === null) return Either.left(`expected a duration such as 60, 60s, 500ms, 2m or 1h, got "${text}"`)
  const amount = Number(match[1])
  switch ((match[2] ?? "s").toLowerCase()) {
    case "ms":
      return Either.right(Duration.millis(amount))
    case "m":
      return Either.right(Duration.minutes(amount))
    case "h":
      return Either.right(Duration.hours(amount))
    default:
      return Either.right(Duration.seconds(amount))
  }
}

const parsePositiveDuration: Parse<Duration.Duration> = (text) =>
  Either.flatMap(
    parseDuration(text),
    (duration) => Duration.greaterThan(duration, Duration.zero) ? Either.right(duration) : Either.left("must be > 0")
  )

const parseIpv4Text: Parse<string> = (text) =>
  parseIpv4(text) === undefined ? Either.left(`expected an IPv4 address, got "${text}"`) : Either.right(text.trim())

/** `host:port`, `:port` (all addresses) or `host` (with `defaultPort`). */
export const parseHostPort = (
  defaultAddress: string,
  defaultPort: number
): Parse<{ readonly address: string; readonly port: number }> =>
(text) => {
  const value = text.trim()
  const match = /^([^:\s]*)(?::(\d{1,5}))?$/.exec(value)
  if (match === null) return Either.left(`expected address:port, :port or address, got "${text}"`)
  const address = match[1] === "" ? defaultAddress : match[1]
  if (parseIpv4(address) === undefined) return Either.left(`expected an IPv4 address, got "${address}"`)
  const port = match[2] === undefined ? defaultPort : Number(match[2])
  if (port > 65535) return Either.left(`port ${port} is out of range`)
  return Either.right({ address, port })
}

const parseMikrotikAddress: Parse<{ readonly host: string; readonly port: number | undefined }> = (text) => {
  const match = /^\s*(?:\[([^\]]+)\]|([^:\s]+))(?::(\d{1,5}))?\s*$/.exec(text)
  if (match === null) return Either.left(`expected host or host:port, got "${text}"`)
  const port = match[3] === undefined ? undefined : Number(match[3])
  if (port !== undefined && (port < 1 || port > 65535)) return Either.left(`port ${port} is out of range`)
  return Either.right({ host: match[1] ?? match[2], port })
}

const parseBoolean: Parse<boolean> = (text) => {
  const value = text.trim().toLowerCase()
  if (["true", "yes", "on", "1"].includes(value)) return Either.right(true)
  if (["false", "no", "off", "0"].includes(value)) return Either.right(false)
  return Either.left(`expected true or false, got "${text}"`)
}

const parseTlsMode: Parse<"off" | "verify" | "anonymous-dh"> = (text) =>
  text.trim().toLowerCase() === "anonymous-dh"
    ? Either.right("anonymous-dh")
    : Either.match(parseBoolean(text), {
      onLeft: () => Either.left(`expected true, false or anonymous-dh, got "${text}"`),
      onRight: (on) => Either.right(on ? "verify" : "off")
    })

const parseLogLevel: Parse<LogLevel.LogLevel> = (text) => {
  switch (text.trim().toUpperCase()) {
    case "DEBUG":
      return Either.right(LogLevel.Debug)
    case "INFO":
      return Either.right(LogLevel.Info)
    case "WARN":
    case "WARNING":
      return Either.right(LogLevel.Warning)
    case "ERROR":
      return Either.right(LogLevel.Error)
    default:
      return Either.left(`expected DEBUG, INFO, WARN or ERROR, got "${text}"`)
  }
}

const parsePortMode: Parse<PortMode> = (text) => {
  const value = text.trim().toLowerCase()
  return value === "same" || value === "translate"
    ? Either.right(value)
    : Either.left(`expected same or translate, got "${text}"`)
}

const parseBridgeId: Parse<string> = (text) =>
  isValidBridgeId(text.trim())
    ? Either.right(text.trim())
    : Either.left(`expected 1 to 32 characters among A-Z a-z 0-9 . _ -, got "${text}"`)

const parseAnnounce: Parse<false | { readonly address: string; readonly port: number }> = (text) =>
  ["off", "false", "no", "none"].includes(text.trim().toLowerCase())
    ? Either.right(false)
    : parseHostPort("224.0.0.1", 5350)(text)

const parseLogFormat: Parse<LogFormat> = (text) => {
  const value = text.trim().toLowerCase()
  return value === "pretty" || value === "json"
    ? Either.right(value)
    : Either.left(`expected pretty or json, got "${text}"`)
}

const parseFingerprint: Parse<string> = (text) =>
  text.replace(/[^0-9a-fA-F]/g, "").length === 64
    ? Either.right(text.trim())
    : Either.left("expected a SHA-256 fingerprint (64 hex digits)")

const parseText: Parse<string> = (text) =>
  text.trim() === "" ? Either.left("must not be empty") : Either.right(text.trim())

// -----------------------------------------------------------------------------
// the settings (one definition for environment variables and CLI flags)
// -----------------------------------------------------------------------------

/** One setting: its environment variable, its `natpmp-bridge serve` flag and how its text is read. */
export interface Setting<A = unknown> {
  readonly env: string
  readonly flag: string
  readonly description: string
  /** The default as text (shown in `--help`); `undefined` for required settings and automatic defaults. */
  readonly default: string | undefined
  readonly required: boolean
  /** Never shown or logged. */
  readonly secret: boolean
  readonly parse: Parse<A>
}

const setting = <A>(
  env: string,
  flag: string,
  description: string,
  parse: Parse<A>,
  options: { readonly default?: string; readonly required?: boolean; readonly secret?: boolean } = {}
): Setting<A> => ({
  env,
  flag,
  description,
  parse,
  default: options.default,
  required: options.required ?? false,
  secret: options.secret ?? false
})

/** Every setting, keyed by name. Environment variable names and flags are part of the interface. */
export const settings = {
  vpnGateway: setting(
    "VPN_GATEWAY",
    "vpn-gateway",
    "IPv4 address of the VPN gateway that speaks NAT-PMP (e.g. 10.2.0.1)",
    parseIpv4Text,
    { required: true }
  ),
  mikrotikAddress: setting(
    "MIKROTIK_API_ADDRESS",
    "mikrotik-api-address",
    "RouterOS API address, host or host:port (port 8728, or 8729 with TLS)",
    parseMikrotikAddress,
    { required: true }
  ),
  mikrotikPassword: setting(
    "MIKROTIK_API_PASSWORD",
    "mikrotik-api-password",
    "RouterOS API password",
    (text) => Either.right(text),
    { required: true, secret: true }
  ),
  listen: setting(
    "LISTEN_ADDR",
    "listen-addr",
    "UDP address:port the NAT-PMP server listens on (:5351 = all addresses)",
    parseHostPort("0.0.0.0", 5351),
    { default: ":5351" }
  ),
  mikrotikUser: setting("MIKROTIK_API_USER", "mikrotik-api-user", "RouterOS API user", parseText, { default: "admin" }),
  mikrotikTls: setting(
    "MIKROTIK_API_TLS",
    "mikrotik-api-tls",
    "use API-SSL: true (verify the certificate), false, or anonymous-dh (encrypted, unauthenticated)",
    parseTlsMode,
    { default: "false" }
  ),
  mikrotikTlsCa: setting(
    "MIKROTIK_API_TLS_CA",
    "mikrotik-api-tls-ca",
    "PEM file of the CA that signed the router's certificate (with TLS)",
    parseText
  ),
  mikrotikTlsFingerprint: setting(
    "MIKROTIK_API_TLS_FINGERPRINT",
    "mikrotik-api-tls-fingerprint",
    "pinned SHA-256 fingerprint of the router's certificate (with TLS)",
    parseFingerprint
  ),
  inInterface: setting(
    "MIKROTIK_IN_INTERFACE",
    "mikrotik-in-interface",
    "the router's VPN interface (default: detected from the routes towards VPN_GATEWAY)",
    parseText
  ),
  logLevel: setting("LOG_LEVEL", "log-level", "DEBUG, INFO, WARN or ERROR", parseLogLevel, { default: "INFO" }),
  portMode: setting(
    "VPN_PORT_MODE",
    "vpn-port-mode",
    "same: the VPN forwards public port P to port P (ProtonVPN); translate: to the requested internal port",
    parsePortMode,
    { default: "same" }
  ),
  allowedClients: setting(
    "ALLOWED_CLIENTS",
    "allowed-clients",
    "comma-separated networks allowed to map ports (default: the router's LAN networks)",
    (text) => parseNetworks(text)
  ),
  reconcileInterval: setting(
    "RECONCILE_INTERVAL",
    "reconcile-interval",
    "how often the router's rules are checked against the mappings",
    parsePositiveDuration,
    { default: "60s" }
  ),
  bridgeId: setting(
    "BRIDGE_ID",
    "bridge-id",
    "marks this bridge's rules (comment natpmp-bridge:<id> ...); unique per bridge on one router",
    parseBridgeId,
    { default: defaults.bridgeId }
  ),
  maxLifetime: setting(
    "MAX_LIFETIME",
    "max-lifetime",
    "longest mapping lifetime granted to a client, in seconds",
    parseInteger(1, 0xffffffff),
    { default: String(defaults.maxLifetime) }
  ),
  clientQuota: setting(
    "CLIENT_QUOTA",
    "client-quota",
    "most mappings one client may hold",
    parseInteger(1, 65535),
    { default: String(defaults.clientQuota) }
  ),
  requestTimeout: setting(
    "REQUEST_TIMEOUT",
    "request-timeout",
    "every request is answered within this time",
    parsePositiveDuration,
    { default: "2s" }
  ),
  adoptionGrace: setting(
    "ADOPTION_GRACE",
    "adoption-grace",
    "how long rules left by a previous run are kept for their clients to renew",
    parsePositiveDuration,
    { default: "120s" }
  ),
  shutdownTimeout: setting(
    "SHUTDOWN_TIMEOUT",
    "shutdown-timeout",
    "bound of the cleanup on shutdown",
    parsePositiveDuration,
    { default: "10s" }
  ),
  announce: setting(
    "ANNOUNCE_ADDR",
    "announce-addr",
    "address:port announcements are sent to, or off",
    parseAnnounce,
    { default: "224.0.0.1:5350" }
  ),
  vpnGatewayPort: setting(
    "VPN_GATEWAY_PORT",
    "vpn-gateway-port",
    "NAT-PMP port of the VPN gateway (for tests)",
    parseInteger(1, 65535),
    { default: "5351" }
  ),
  logFormat: setting(
    "LOG_FORMAT",
    "log-format",
    "log lines on stderr: pretty (time, level, message, key=value annotations) or json (one object per line)",
    parseLogFormat,
    { default: "pretty" }
  ),
  metrics: setting(
    "METRICS_ADDR",
    "metrics-addr",
    "address:port or :port of the HTTP server for Prometheus /metrics and /healthz (default: none)",
    parseHostPort(defaults.metrics.address, defaults.metrics.port)
  ),
  vpnMaxInFlight: setting(
    "VPN_MAX_IN_FLIGHT",
    "vpn-max-in-flight",
    "NAT-PMP requests outstanding at once towards the VPN gateway; RFC 6886 asks a client for one at a time, but " +
      "the bridge speaks for many LAN clients, so it keeps each mapping's requests serial and lets up to this many " +
      "mappings' requests overlap (1: the RFC's strictly serial client)",
    parseInteger(1, 64),
    { default: String(defaults.vpnMaxInFlight) }
  )
} as const

/** The name of a setting. */
export type SettingName = keyof typeof settings

/** Raw text values by setting name (from the environment, flags or both). */
export type RawSettings = { readonly [K in SettingName]?: string | undefined }

type Values = { [K in SettingName]: typeof settings[K] extends Setting<infer A> ? A : never }

/**
 * Builds the configuration from text values (absent or empty: the default). Errors name the setting with
 * `nameOf` (default: its environment variable; the CLI passes one that names the flag).
 */
export const fromStrings = (
  raw: RawSettings,
  nameOf: (name: SettingName, setting: Setting) => string = (_, setting) => setting.env
): Either.Either<BridgeConfig, BridgeConfigError> =>
  Either.gen(function*() {
    const values: Partial<Values> = {}
    for (const name of Object.keys(settings) as Array<SettingName>) {
      const definition: Setting = settings[name]
      const text = raw[name]
      const given = text !== undefined && text.trim() !== ""
      if (!given && definition.required) {
        return yield* Either.left(
          new BridgeConfigError({ name: nameOf(name, definition), reason: `required: ${definition.description}` })
        )
      }
      const source = given ? text : definition.default
      if (source === undefined) continue
      const parsed = definition.parse(source)
      if (Either.isLeft(parsed)) {
        return yield* Either.left(
          new BridgeConfigError({
            name: nameOf(name, definition),
            // a secret's text never appears in a message
            reason: definition.secret ? "invalid value" : parsed.left
          })
        )
      }
      ;(values as Record<string, unknown>)[name] = parsed.right
    }
    const tls = values.mikrotikTls ?? "off"
    if (tls !== "verify" && values.mikrotikTlsCa !== undefined) {
      return yield* Either.left(
        new BridgeConfigError({ name: nameOf("mikrotikTlsCa", settings.mikrotikTlsCa), reason: "needs TLS on" })
      )
    }
    if (tls !== "verify" && values.mikrotikTlsFingerprint !== undefined) {
      return yield* Either.left(
        new BridgeConfigError({
          name: nameOf("mikrotikTlsFingerprint", settings.mikrotikTlsFingerprint),
          reason: "needs TLS on"
        })
      )
    }
    const address = values.mikrotikAddress!
    return yield* make({
      vpnGateway: values.vpnGateway!,
      vpnGatewayPort: values.vpnGatewayPort,
      mikrotik: {
        host: address.host,
        port: address.port,
        user: values.mikrotikUser,
        password: Redacted.make(values.mikrotikPassword!),
        tls: tls === "off"
          ? false
          : tls === "anonymous-dh"
          ? { anonymousDh: true }
          : {
            ...(values.mikrotikTlsCa === undefined ? {} : { caFile: values.mikrotikTlsCa }),
            ...(values.mikrotikTlsFingerprint === undefined ? {} : { fingerprint256: values.mikrotikTlsFingerprint })
          }
      },
      listen: values.listen,
      inInterface: values.inInterface,
      logLevel: values.logLevel,
      portMode: values.portMode,
      allowedClients: values.allowedClients,
      reconcileInterval: values.reconcileInterval,
      bridgeId: values.bridgeId,
      maxLifetime: values.maxLifetime,
      clientQuota: values.clientQuota,
      requestTimeout: values.requestTimeout,
      adoptionGrace: values.adoptionGrace,
      shutdownTimeout: values.shutdownTimeout,
      announce: values.announce,
      logFormat: values.logFormat,
      metrics: values.metrics,
      vpnMaxInFlight: values.vpnMaxInFlight
    })
  })

/** The raw text of every setting from the current `ConfigProvider` (the environment by default). */
export const rawFromEnv: Config.Config<RawSettings> = Config.all(
  Object.fromEntries(
    (Object.keys(settings) as Array<SettingName>).map((name) => [
      name,
      Config.option(Config.string(settings[name].env)).pipe(Config.map(Option.getOrUndefined))
    ])
  ) as { [K in SettingName]: Config.Config<string | undefined> }
)

/**
 * The configuration from the environment (`VPN_GATEWAY`, `MIKROTIK_API_ADDRESS`, `MIKROTIK_API_PASSWORD`, ... see
 * {@link settings}). Fails with a `ConfigError` whose message names the variable.
 */
export const config: Config.Config<BridgeConfig> = rawFromEnv.pipe(
  Config.mapOrFail((raw) =>
    Either.mapLeft(fromStrings(raw), (error) => ConfigError.InvalidData([error.name], error.reason))
  )
)

/**
 * The configuration from flags over the environment: a flag given wins over its variable. Errors name the flag when
 * the value came from one, the variable otherwise.
 */
export const resolve = (flags: RawSettings): Effect.Effect<BridgeConfig, BridgeConfigError> =>
  Effect.gen(function*() {
    const env = yield* Effect.orElseSucceed(rawFromEnv, () => ({} as RawSettings))
    const merged: Record<string, string | undefined> = { ...env }
    for (const [name, value] of Object.entries(flags)) {
      if (value !== undefined && value !== "") merged[name] = value
    }
    return yield* fromStrings(
      merged,
      (name, setting) => flags[name] !== undefined && flags[name] !== "" ? `--${setting.flag}` : setting.env
    )
  })

/** A one-line summary for the startup log (never the password). */
export const describe = (config: BridgeConfig): string =>
  [
    `vpn=${config.vpnGateway}:${config.vpnGatewayPort}`,
    `router=${config.mikrotik.user}@${config.mikrotik.host}${config.mikrotik.port ? `:${config.mikrotik.port}` : ""}`,
    `tls=${config.mikrotik.tls === false || config.mikrotik.tls === undefined ? "off" : "on"}`,
    `listen=${config.listen.address}:${config.listen.port}`,
    `mode=${config.portMode}`,
    `id=${config.bridgeId}`,
    `interface=${config.inInterface ?? "auto"}`,
    `reconcile=${Duration.format(config.reconcileInterval)}`,
    `maxLifetime=${config.maxLifetime}s`,
    `quota=${config.clientQuota}`,
    `vpnInFlight=${config.vpnMaxInFlight}`,
    `metrics=${config.metrics === undefined ? "off" : `${config.metrics.address}:${config.metrics.port}`}`
  ].join(" ")

/** The settings `natpmp-bridge status` reads: the RouterOS API connection and the bridge id. */
export const routerSettingNames = [
  "mikrotikAddress",
  "mikrotikPassword",
  "mikrotikUser",
  "mikrotikTls",
  "mikrotikTlsCa",
  "mikrotikTlsFingerprint",
  "bridgeId"
] as const satisfies ReadonlyArray<SettingName>

/**
 * The RouterOS API connection and the bridge id from flags over the environment, without the settings only `serve`
 * needs (`VPN_GATEWAY`...). Errors name the flag or the variable, like {@link resolve}.
 */
export const resolveRouter = (
  flags: RawSettings
): Effect.Effect<{ readonly mikrotik: RouterOsClient.Options; readonly bridgeId: string }, BridgeConfigError> =>
  Effect.gen(function*() {
    const env = yield* Effect.orElseSucceed(rawFromEnv, () => ({} as RawSettings))
    const merged: Record<string, string | undefined> = {}
    for (const name of routerSettingNames) {
      const flag = flags[name]
      merged[name] = flag !== undefined && flag !== "" ? flag : env[name]
    }
    // the VPN gateway is not used: any valid address lets the shared validation run
    const config = yield* fromStrings(
      { ...merged, vpnGateway: "127.0.0.1" },
      (name, setting) => flags[name] !== undefined && flags[name] !== "" ? `--${setting.flag}` : setting.env
    )
    return { mikrotik: config.mikrotik, bridgeId: config.bridgeId }
  })
