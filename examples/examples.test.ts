/**
 * The examples run against the simulators: the one-shot mapping, the keep-alive (renewals and the delete at the
 * end) and the bridge composed into an application.
 */
import { describe, expect, it } from "@effect/vitest"
import { NatPmpClient } from "@natpmp-bridge/core"
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import { Bridge, NatPmpServer } from "@natpmp-bridge/server"
import { BridgeHarness, LanClient } from "@natpmp-bridge/server/testing"
import { ConfigProvider, Context, Effect, Fiber, Layer, Logger, Queue } from "effect"
import { keepMapped } from "./client-keep-alive.js"
import { mapOnce } from "./client-one-shot.js"
import { app, leaseReport } from "./compose-bridge.js"

const gateway = NatPmpGatewaySimulator.make({
  mode: "rfc",
  publicAddress: "203.0.113.7",
  announceTo: { address: "127.0.0.1", port: 9 }
})

/** A logger that keeps every message, for the examples that only log. */
const captureLogs = Effect.sync(() => {
  const messages: Array<string> = []
  const logger = Logger.make(({ message }) => {
    messages.push(Array.isArray(message) ? message.join(" ") : String(message))
  })
  return { messages, layer: Logger.replace(Logger.defaultLogger, logger) }
})

describe("examples", () => {
  it.scopedLive("client-one-shot maps a TCP port and reports the public address", () =>
    Effect.gen(function*() {
      const simulator = yield* gateway
      const result = yield* mapOnce(51413).pipe(
        Effect.provide(NatPmpClient.layer({ gateway: simulator.address, port: simulator.port, announcements: false }))
      )
      expect(result.publicAddress).toBe("203.0.113.7")
      expect(result.mapping).toMatchObject({ protocol: "tcp", internalPort: 51413, lifetime: 3600 })
      expect((yield* simulator.mappings).map((m) => m.externalPort)).toStrictEqual([result.mapping.externalPort])
    }))

  it.scopedLive(
    "client-keep-alive renews at half the lifetime, reports a new port and deletes the mapping",
    () =>
      Effect.gen(function*() {
        const simulator = yield* gateway
        yield* simulator.changePortsOnRenewal(true)
        const ports = yield* Queue.unbounded<number>()
        const fiber = yield* keepMapped(40000, (port) => Queue.offer(ports, port), 2).pipe(
          Effect.scoped,
          Effect.provide(
            NatPmpClient.layer({ gateway: simulator.address, port: simulator.port, announcements: false })
          ),
          Effect.fork
        )
        const first = yield* Queue.take(ports)
        // the renewal comes after about 1 s (half of 2 s) and gets another port from this gateway
        const second = yield* Queue.take(ports).pipe(Effect.timeout("10 seconds"))
        expect(second).not.toBe(first)
        expect((yield* simulator.mappings).map((m) => m.externalPort)).toStrictEqual([second])
        yield* Fiber.interrupt(fiber)
        expect(yield* simulator.mappings).toStrictEqual([])
      }),
    20_000
  )

  it.scopedLive(
    "compose-bridge: the app runs the bridge from its configuration beside its own fiber",
    () =>
      Effect.gen(function*() {
        const environment = yield* BridgeHarness.makeEnvironment()
        const logs = yield* captureLogs
        const configuration = ConfigProvider.fromMap(
          new Map([
            ["VPN_GATEWAY", environment.vpn.address],
            ["VPN_GATEWAY_PORT", String(environment.vpn.port)],
            ["MIKROTIK_API_ADDRESS", `${environment.router.host}:${environment.router.port}`],
            ["MIKROTIK_API_USER", environment.router.user],
            ["MIKROTIK_API_PASSWORD", environment.router.password],
            ["LISTEN_ADDR", "127.0.0.1:0"],
            ["ALLOWED_CLIENTS", "127.0.0.16/28"],
            ["ANNOUNCE_ADDR", "off"]
          ])
        )
        yield* Layer.build(app).pipe(Effect.withConfigProvider(configuration), Effect.provide(logs.layer))
        // the reporter's first lines: where the bridge listens and its (empty) leases
        const listening = yield* Effect.gen(function*() {
          while (true) {
            const line = logs.messages.find((m) => m.startsWith("bridge listening on"))
            if (line !== undefined) return line
            yield* Effect.sleep("20 millis")
          }
        }).pipe(Effect.timeout("10 seconds"))
        const [, address, port] = /on ([\d.]+):(\d+)/.exec(listening)!
        expect(logs.messages).toContain("0 mapping(s)")
        const lan = yield* LanClient.make({ address: "127.0.0.20", bridge: { address, port: Number(port) } })
        const answer = yield* lan.map({ protocol: "tcp", internalPort: 8080, lifetime: 60 })
        expect(answer.resultCode).toBe(0)
        expect((yield* environment.vpn.mappings).map((m) => m.externalPort)).toStrictEqual([answer.externalPort])
      }),
    30_000
  )

  it.scopedLive("compose-bridge's lease report reads the bridge's MappingService", () =>
    Effect.gen(function*() {
      const environment = yield* BridgeHarness.makeEnvironment()
      const bridge = yield* Layer.build(Bridge.layer(environment.config))
      const server = Context.get(bridge, NatPmpServer.NatPmpServer)
      const lan = yield* LanClient.make({
        address: "127.0.0.20",
        bridge: { address: server.address, port: server.port }
      })
      expect((yield* lan.map({ protocol: "udp", internalPort: 51413, lifetime: 60 })).resultCode).toBe(0)
      const report = yield* leaseReport.pipe(Effect.provide(bridge))
      expect(report).toBe("1 mapping(s) udp 127.0.0.20:51413")
    }), 30_000)
})
