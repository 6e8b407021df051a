import { describe, expect, it } from "@effect/vitest"
import { RouterOsClient } from "@natpmp-bridge/core"
import { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import { ClientPolicy, MikroTikRouter, PortSpec, Router } from "@natpmp-bridge/server"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Option from "effect/Option"
import { environment } from "./helpers.js"

const rule = (fields: Partial<Router.NatRule>): Router.NatRule => ({
  id: "*1",
  chain: "dstnat",
  action: "dst-nat",
  disabled: false,
  ...fields
})

const use = (port: number, protocol: Router.Protocol = "tcp"): Router.PortUse => ({
  protocol,
  port,
  inInterface: "wg-proton",
  vpnAddresses: ["10.2.0.2"]
})

describe("PortSpec", () => {
  it("parses single ports, lists, ranges and negations", () => {
    expect(PortSpec.parse("80")).toEqual(Option.some({ negated: false, ranges: [{ min: 80, max: 80 }] }))
    const spec = Option.getOrThrow(PortSpec.parse("80, 443,8000-8100"))
    expect([79, 80, 443, 8000, 8050, 8100, 8101].map((port) => PortSpec.matches(spec, port))).toEqual([
      false,
      true,
      true,
      true,
      true,
      true,
      false
    ])
    const negated = Option.getOrThrow(PortSpec.parse("!1-1023"))
    expect(PortSpec.matches(negated, 22)).toBe(false)
    expect(PortSpec.matches(negated, 51413)).toBe(true)
    for (const bad of ["", "x", "80-", "100-90", "70000", "1,,2"]) expect(PortSpec.parse(bad)).toEqual(Option.none())
  })

  it("mayMatch: absent means every port, unreadable is assumed to match", () => {
    expect(PortSpec.mayMatch(undefined, 1)).toBe(true)
    expect(PortSpec.mayMatch("weird", 1)).toBe(true)
    expect(PortSpec.mayMatch("2-5", 1)).toBe(false)
    expect(PortSpec.single("51413")).toEqual(Option.some(51413))
    expect(PortSpec.single("1,2")).toEqual(Option.none())
  })
})

describe("Router: ownership comments and the port-conflict check", () => {
  it("ownership comments are ASCII and round-trip", () => {
    const comment = Router.ownershipComment({
      bridgeId: "home",
      protocol: "tcp",
      client: "192.168.88.20",
      internalPort: 51413
    })
    expect(comment).toBe("natpmp-bridge:home tcp 192.168.88.20:51413")
    expect(/^[\x20-\x7e]+$/.test(comment)).toBe(true)
    expect(Router.parseOwnership(comment)).toEqual(
      Option.some({ bridgeId: "home", protocol: "tcp", client: "192.168.88.20", internalPort: 51413 })
    )
    expect(Router.parseOwnership("natpmp-bridge:home tcp 192.168.88.20")).toEqual(Option.none())
    expect(Router.parseOwnership("web server")).toEqual(Option.none())
    expect(Router.isOwnComment("natpmp-bridge:home garbage", "home")).toBe(true)
    expect(Router.isOwnComment("natpmp-bridge:homer tcp 1.2.3.4:5", "home")).toBe(false)
  })

  it("lists, ranges and negated ports", () => {
    expect(
      Router.conflicts(rule({ protocol: "tcp", inInterface: "wg-proton", dstPort: "80,443,8000-8100" }), use(8080))
    )
      .toBe(true)
    expect(
      Router.conflicts(rule({ protocol: "tcp", inInterface: "wg-proton", dstPort: "80,443,8000-8100" }), use(8101))
    )
      .toBe(false)
    expect(Router.conflicts(rule({ protocol: "tcp", inInterface: "wg-proton", dstPort: "!22" }), use(8101))).toBe(true)
  })

  it("interfaces: other interface no, negated other interface yes, lists and no interface yes", () => {
    expect(Router.conflicts(rule({ protocol: "tcp", inInterface: "ether1", dstPort: "80" }), use(80))).toBe(false)
    expect(Router.conflicts(rule({ protocol: "tcp", inInterface: "!ether1", dstPort: "80" }), use(80))).toBe(true)
    expect(Router.conflicts(rule({ protocol: "tcp", inInterface: "!wg-proton", dstPort: "80" }), use(80))).toBe(false)
    expect(Router.conflicts(rule({ protocol: "tcp", inInterfaceList: "WAN", dstPort: "80" }), use(80))).toBe(true)
    expect(Router.conflicts(rule({ protocol: "tcp", dstPort: "80" }), use(80))).toBe(true)
  })

  it("disabled rules count; other protocols and non-terminal actions do not; dst-address is understood", () => {
    expect(Router.conflicts(rule({ protocol: "tcp", dstPort: "80", disabled: true }), use(80))).toBe(true)
    expect(Router.conflicts(rule({ protocol: "udp", dstPort: "80" }), use(80))).toBe(false)
    expect(Router.conflicts(rule({ dstPort: undefined, protocol: undefined }), use(80))).toBe(true)
    expect(Router.conflicts(rule({ protocol: "tcp", dstPort: "80", action: "log" }), use(80))).toBe(false)
    expect(Router.conflicts(rule({ protocol: "tcp", dstPort: "80", action: "accept" }), use(80))).toBe(true)
    expect(Router.conflicts(rule({ protocol: "tcp", dstPort: "80", dstAddress: "192.168.1.10" }), use(80))).toBe(false)
    expect(Router.conflicts(rule({ protocol: "tcp", dstPort: "80", dstAddress: "10.2.0.0/30" }), use(80))).toBe(true)
    expect(Router.conflicts(rule({ protocol: "tcp", dstPort: "80", chain: "srcnat" }), use(80))).toBe(false)
  })

  it("findConflict skips excepted rules", () => {
    const rules = [rule({ id: "*A", protocol: "tcp", dstPort: "80" }), rule({ id: "*B", protocol: "tcp" })]
    expect(Option.map(Router.findConflict(rules, use(80)), (r) => r.id)).toEqual(Option.some("*A"))
    expect(Option.map(Router.findConflict(rules, use(80), (r) => r.id === "*A"), (r) => r.id)).toEqual(
      Option.some("*B")
    )
  })
})

describe("ClientPolicy", () => {
  it("networks and membership", () => {
    const networks = Either.getOrThrow(ClientPolicy.parseNetworks("192.168.88.1/24, 10.0.0.5"))
    expect(networks.map(ClientPolicy.formatNetwork)).toEqual(["192.168.88.0/24", "10.0.0.5/32"])
    const policy = ClientPolicy.make({ allowedNetworks: networks, maxLifetime: 7200, clientQuota: 4 })
    expect(policy.isAllowed("192.168.88.20")).toBe(true)
    expect(policy.isAllowed("::ffff:192.168.88.20")).toBe(true)
    expect(policy.isAllowed("192.168.89.20")).toBe(false)
    expect(policy.isAllowed("10.0.0.5")).toBe(true)
    expect(policy.isAllowed("10.0.0.6")).toBe(false)
    expect(Either.isLeft(ClientPolicy.parseNetwork("10.0.0.0/33"))).toBe(true)
  })
})

const detect = (options: RouterOsSimulator.Options, routerOptions: MikroTikRouter.Options) =>
  Effect.gen(function*() {
    const simulator = yield* RouterOsSimulator.make(options)
    const client = yield* RouterOsClient.make(simulator.clientOptions)
    return yield* MikroTikRouter.make(routerOptions).pipe(
      Effect.provideService(RouterOsClient.RouterOsClient, client)
    )
  }).pipe(Effect.scoped)

describe("MikroTikRouter", () => {
  it.live("detects the VPN in-interface on RouterOS 7 and RouterOS 6", () =>
    Effect.gen(function*() {
      const v7 = yield* detect(RouterOsSimulator.vpnRouterV7(), { vpnGateway: "10.2.0.1" })
      expect(v7.inInterface).toBe("wg-proton")
      expect(v7.vpnAddresses).toEqual(["10.2.0.2"])
      const v6 = yield* detect(RouterOsSimulator.vpnRouterV6({ vpnInterface: "pppoe-vpn" }), { vpnGateway: "10.2.0.1" })
      expect(v6.inInterface).toBe("pppoe-vpn")
    }))

  it.live("MIKROTIK_IN_INTERFACE wins; without a route or address towards the gateway: a clear error", () =>
    Effect.gen(function*() {
      const configured = yield* detect(RouterOsSimulator.vpnRouterV7(), { vpnGateway: "10.2.0.1", inInterface: "wg0" })
      expect(configured.inInterface).toBe("wg0")
      const failed = yield* Effect.flip(detect(RouterOsSimulator.vpnRouterV7(), { vpnGateway: "172.16.9.9" }))
      expect(failed._tag).toBe("InInterfaceNotFoundError")
      expect(failed.message).toContain("172.16.9.9")
      expect(failed.message).toContain("MIKROTIK_IN_INTERFACE")
    }))

  it.live("LAN networks: static addresses off the VPN interface", () =>
    Effect.gen(function*() {
      const networks = yield* Effect.gen(function*() {
        const simulator = yield* RouterOsSimulator.make(RouterOsSimulator.vpnRouterV7())
        const client = yield* RouterOsClient.make(simulator.clientOptions)
        const service = yield* MikroTikRouter.make({ vpnGateway: "10.2.0.1" }).pipe(
          Effect.provideService(RouterOsClient.RouterOsClient, client)
        )
        return yield* service.lanNetworks
      }).pipe(Effect.scoped)
      expect(networks.map(ClientPolicy.formatNetwork)).toEqual(["192.168.88.0/24"])
    }))

  it.live("the bridge allows the router's LAN networks when ALLOWED_CLIENTS is not set", () =>
    Effect.gen(function*() {
      const env = yield* environment({ bridge: { allowedClients: undefined } })
      const bridge = yield* env.start()
      const inside = yield* env.clientOf(bridge, "127.0.0.20")
      const outside = yield* env.clientOf(bridge, "127.0.0.40")
      expect((yield* inside.publicAddress).resultCode).toBe(0)
      yield* outside.send(Uint8Array.of(0, 0))
      expect(yield* outside.silentFor("300 millis")).toBe(true)
    }).pipe(Effect.scoped))

  it.live("the bridge on a RouterOS 6 router", () =>
    Effect.gen(function*() {
      const env = yield* environment({ routerVersion: 6 })
      const bridge = yield* env.start()
      expect(bridge.router.inInterface).toBe("wg-proton")
      const client = yield* env.clientOf(bridge, "127.0.0.20")
      expect((yield* client.map({ protocol: "tcp", internalPort: 5000 })).resultCode).toBe(0)
      const rules = yield* env.router.natRules
      expect(rules.some((r) => r["in-interface"] === "wg-proton" && r["to-ports"] === "5000")).toBe(true)
    }).pipe(Effect.scoped))
})
