/**
 * Using the project's simulators in your own tests: they speak the real wire protocols on loopback, so the code
 * under test runs unchanged (no mocks). `npx vitest run --project examples`.
 */
import { describe, expect, it } from "@effect/vitest"
import { NatPmpClient, RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import { NatPmpGatewaySimulator, RouterOsSimulator } from "@natpmp-bridge/core/testing"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import { Effect } from "effect"

describe("the simulators in an application's tests", () => {
  it.scopedLive("a NAT-PMP client against a simulated ProtonVPN gateway", () =>
    Effect.gen(function*() {
      const gateway = yield* NatPmpGatewaySimulator.make({
        mode: "protonvpn",
        publicAddress: "203.0.113.7",
        announceTo: { address: "127.0.0.1", port: 9 }
      })
      const client = yield* NatPmpClient.make({ gateway: gateway.address, port: gateway.port, announcements: false })
      const mapping = yield* client.map({ protocol: "udp", internalPort: 51413, lifetime: 3600 })
      // ProtonVPN grants 60 s at most and keeps the public port for the forwarded traffic
      expect(mapping).toMatchObject({ protocol: "udp", internalPort: 51413, lifetime: 60 })
      expect((yield* gateway.mappings).map((m) => m.externalPort)).toStrictEqual([mapping.externalPort])
      expect((yield* gateway.counters).mapUdp).toBe(1)
    }))

  it.scopedLive("RouterOS API code against the RouterOS simulator (a v7 router behind a VPN)", () =>
    Effect.gen(function*() {
      const router = yield* RouterOsSimulator.make({ ...RouterOsSimulator.vpnRouterV7(), password: "secret" })
      const rules = yield* Effect.gen(function*() {
        yield* RouterOsCommands.addNatRule({
          chain: "dstnat",
          action: "dst-nat",
          protocol: "tcp",
          inInterface: "wg-proton",
          dstPort: "8080",
          toAddresses: "192.168.88.20",
          toPorts: "80",
          comment: "my app"
        })
        return yield* RouterOsCommands.listDstNatRules
      }).pipe(Effect.provide(RouterOsClient.layer(router.clientOptions)))
      expect(rules.map((rule) => rule.comment)).toStrictEqual(["my app"])
      expect(yield* router.commandCount("/ip/firewall/nat/add")).toBe(1)
    }))

  it.scopedLive("a whole bridge: a LAN client's request becomes a VPN mapping and a router rule", () =>
    Effect.gen(function*() {
      const harness = yield* BridgeHarness.make({ vpn: { publicAddress: "203.0.113.7" } })
      const lan = yield* harness.client("127.0.0.20")
      const answer = yield* lan.map({ protocol: "tcp", internalPort: 8080, lifetime: 60 })
      expect(answer.resultCode).toBe(0)
      const rules = (yield* harness.router.natRules).filter((rule) => rule.comment?.startsWith("natpmp-bridge:"))
      expect(rules).toHaveLength(1)
      expect(rules[0]).toMatchObject({ "to-addresses": "127.0.0.20", "to-ports": "8080" })
    }))
})
