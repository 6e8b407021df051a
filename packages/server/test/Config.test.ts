import { describe, expect, it } from "@effect/vitest"
import { Announcer, BridgeConfig } from "@natpmp-bridge/server"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as TestClock from "effect/TestClock"

const required = {
  VPN_GATEWAY: "10.2.0.1",
  MIKROTIK_API_ADDRESS: "192.168.88.1",
  MIKROTIK_API_PASSWORD: "s3cret=pass"
}

const fromEnv = (env: Record<string, string>) =>
  Effect.withConfigProvider(
    Effect.either(BridgeConfig.config),
    ConfigProvider.fromMap(new Map(Object.entries(env)))
  )

describe("BridgeConfig", () => {
  it.effect("defaults from the environment names of DESIGN.md", () =>
    Effect.gen(function*() {
      const config = Either.getOrThrow(yield* fromEnv(required))
      expect(config.vpnGateway).toBe("10.2.0.1")
      expect(config.vpnGatewayPort).toBe(5351)
      expect(config.mikrotik).toMatchObject({ host: "192.168.88.1", port: undefined, user: "admin", tls: false })
      expect(Redacted.value(config.mikrotik.password)).toBe("s3cret=pass")
      expect(config.listen).toEqual({ address: "0.0.0.0", port: 5351 })
      expect(config.inInterface).toBeUndefined()
      expect(config.logLevel).toBe(LogLevel.Info)
      expect(config.portMode).toBe("same")
      expect(config.allowedClients).toBeUndefined()
      expect(Duration.toSeconds(config.reconcileInterval)).toBe(60)
      expect(config.bridgeId).toBe("default")
      expect(config.maxLifetime).toBe(7200)
      expect(config.clientQuota).toBe(64)
      expect(Duration.toMillis(config.requestTimeout)).toBe(2000)
      expect(config.announce).toEqual({ address: "224.0.0.1", port: 5350 })
      expect(config.vpnMaxInFlight).toBe(8)
    }))

  it.effect("every optional variable", () =>
    Effect.gen(function*() {
      const config = Either.getOrThrow(
        yield* fromEnv({
          ...required,
          MIKROTIK_API_ADDRESS: "router.lan:8729",
          LISTEN_ADDR: "192.168.88.2:15351",
          MIKROTIK_API_USER: "natpmp",
          MIKROTIK_API_TLS: "true",
          MIKROTIK_API_TLS_FINGERPRINT: "ab".repeat(32),
          MIKROTIK_IN_INTERFACE: "wg-proton",
          LOG_LEVEL: "debug",
          VPN_PORT_MODE: "translate",
          ALLOWED_CLIENTS: "192.168.88.0/24,10.10.0.0/16",
          RECONCILE_INTERVAL: "30s",
          BRIDGE_ID: "home-1",
          MAX_LIFETIME: "3600",
          CLIENT_QUOTA: "8",
          REQUEST_TIMEOUT: "1500ms",
          ADOPTION_GRACE: "5m",
          SHUTDOWN_TIMEOUT: "3",
          ANNOUNCE_ADDR: "off",
          VPN_GATEWAY_PORT: "15351",
          VPN_MAX_IN_FLIGHT: "1"
        })
      )
      expect(config.mikrotik).toMatchObject({
        host: "router.lan",
        port: 8729,
        user: "natpmp",
        tls: { fingerprint256: "ab".repeat(32) }
      })
      expect(config.listen).toEqual({ address: "192.168.88.2", port: 15351 })
      expect(config.inInterface).toBe("wg-proton")
      expect(config.logLevel).toBe(LogLevel.Debug)
      expect(config.portMode).toBe("translate")
      expect(config.allowedClients).toEqual([
        { base: 0xc0a85800, prefix: 24 },
        { base: 0x0a0a0000, prefix: 16 }
      ])
      expect(Duration.toSeconds(config.reconcileInterval)).toBe(30)
      expect(config.bridgeId).toBe("home-1")
      expect(config.maxLifetime).toBe(3600)
      expect(config.clientQuota).toBe(8)
      expect(Duration.toMillis(config.requestTimeout)).toBe(1500)
      expect(Duration.toSeconds(config.adoptionGrace)).toBe(300)
      expect(Duration.toSeconds(config.shutdownTimeout)).toBe(3)
      expect(config.announce).toBe(false)
      expect(config.vpnGatewayPort).toBe(15351)
      expect(config.vpnMaxInFlight).toBe(1)
    }))

  it.effect("a missing or bad value fails with one line naming the variable", () =>
    Effect.gen(function*() {
      const missing = yield* fromEnv({ VPN_GATEWAY: "10.2.0.1", MIKROTIK_API_ADDRESS: "r" })
      expect(Either.isLeft(missing) && String(missing.left)).toContain("MIKROTIK_API_PASSWORD")
      const cases: Array<[string, string]> = [
        ["VPN_GATEWAY", "vpn.example"],
        ["LISTEN_ADDR", "0.0.0.0:99999"],
        ["VPN_PORT_MODE", "sometimes"],
        ["ALLOWED_CLIENTS", "192.168.88.0/40"],
        ["RECONCILE_INTERVAL", "soon"],
        ["BRIDGE_ID", "mein brücke"],
        ["CLIENT_QUOTA", "-1"],
        ["LOG_LEVEL", "LOUD"],
        ["MIKROTIK_API_TLS", "maybe"],
        ["VPN_MAX_IN_FLIGHT", "0"],
        ["VPN_MAX_IN_FLIGHT", "65"]
      ]
      for (const [name, value] of cases) {
        const result = yield* fromEnv({ ...required, [name]: value })
        expect(Either.isLeft(result)).toBe(true)
        const text = Either.isLeft(result) ? String(result.left) : ""
        expect(text).toContain(name)
        expect(text.split("\n")).toHaveLength(1)
        expect(text).not.toContain("s3cret")
      }
    }))

  it("flags share the definition: errors name the flag a value came from", () => {
    const result = BridgeConfig.fromStrings(
      { vpnGateway: "10.2.0.1", mikrotikAddress: "r", mikrotikPassword: "pw", portMode: "bad" },
      (name, setting) => name === "portMode" ? `--${setting.flag}` : setting.env
    )
    expect(Either.isLeft(result) && result.left.message).toBe(
      "--vpn-port-mode: expected same or translate, got \"bad\""
    )
    for (const setting of Object.values(BridgeConfig.settings)) {
      expect(setting.flag).toMatch(/^[a-z0-9-]+$/)
      expect(setting.env).toMatch(/^[A-Z0-9_]+$/)
      expect(setting.description.length).toBeGreaterThan(5)
    }
    expect(BridgeConfig.settings.mikrotikPassword.secret).toBe(true)
  })

  it.effect("resolve: flags win over the environment", () =>
    Effect.gen(function*() {
      const config = yield* BridgeConfig.resolve({ bridgeId: "from-flag" }).pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries({ ...required, BRIDGE_ID: "env" }))))
      )
      expect(config.bridgeId).toBe("from-flag")
      const failed = yield* Effect.flip(
        BridgeConfig.resolve({ clientQuota: "0" }).pipe(
          Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(required))))
        )
      )
      expect(failed.message).toMatch(/^--client-quota: /)
    }))

  it("the password never appears in the description or in a bad-value message", () => {
    const config = Either.getOrThrow(BridgeConfig.fromStrings({
      vpnGateway: "10.2.0.1",
      mikrotikAddress: "r",
      mikrotikPassword: "s3cret"
    }))
    expect(BridgeConfig.describe(config)).not.toContain("s3cret")
    expect(String(config.mikrotik.password)).not.toContain("s3cret")
  })

  it("plain options object with defaults", () => {
    const config = Either.getOrThrow(BridgeConfig.make({
      vpnGateway: "10.2.0.1",
      mikrotik: { host: "192.168.88.1", password: "pw" },
      allowedClients: ["192.168.88.0/24"]
    }))
    expect(config.portMode).toBe("same")
    expect(config.mikrotik.user).toBe("admin")
    expect(Either.isLeft(BridgeConfig.make({ vpnGateway: "x", mikrotik: { host: "h", password: "p" } }))).toBe(true)
    const overLimit = BridgeConfig.make({
      vpnGateway: "10.2.0.1",
      mikrotik: { host: "h", password: "p" },
      vpnMaxInFlight: 0
    })
    expect(Either.isLeft(overLimit) && overLimit.left.message).toContain("vpnMaxInFlight")
  })
})

describe("Announcer", () => {
  it("10 packets: 250 ms between the first two, doubling", () => {
    expect(Announcer.delays(10, "250 millis").map(Duration.toMillis)).toEqual([
      250,
      500,
      1000,
      2000,
      4000,
      8000,
      16000,
      32000,
      64000
    ])
  })

  it.scoped("sends the current state at each step (TestClock)", () =>
    Effect.gen(function*() {
      const sent: Array<{ epoch: number; at: number }> = []
      let epoch = 0
      const announcer = yield* Announcer.make(
        { target: { address: "127.0.0.1", port: 9 } },
        (bytes) =>
          Effect.sync(() => {
            sent.push({ epoch: new DataView(bytes.buffer).getUint32(4), at: sent.length })
          }),
        Effect.sync(() => ({ epoch: epoch++, publicAddress: Option.some("203.0.113.1") }))
      )
      yield* announcer.announce
      expect(sent).toHaveLength(1)
      yield* TestClock.adjust("249 millis")
      expect(sent).toHaveLength(1)
      yield* TestClock.adjust("1 millis")
      expect(sent).toHaveLength(2)
      yield* TestClock.adjust("200 seconds")
      expect(sent).toHaveLength(10)
      expect(sent.map((s) => s.epoch)).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
      // a new announcement replaces one in progress
      yield* announcer.announce
      yield* TestClock.adjust("300 millis")
      expect(sent).toHaveLength(12)
      const fiber = yield* Effect.fork(TestClock.adjust("1 second"))
      yield* Fiber.join(fiber)
    }))
})
