import { describe, expect, it } from "@effect/vitest"
import type { RouterOsClient } from "@natpmp-bridge/core"
import { RouterOsCommands } from "@natpmp-bridge/core"
import { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import type * as Layer from "effect/Layer"

const {
  addNatRule,
  findInterfaceTowards,
  interfaceTowards,
  listAddresses,
  listDstNatRules,
  listNatRules,
  listRoutes,
  parseVersion,
  removeNatRules,
  setNatRule,
  version
} = RouterOsCommands

type Env = RouterOsSimulator.RouterOsSimulator | RouterOsClient.RouterOsClient

const router = (options?: RouterOsSimulator.Options): Layer.Layer<Env, unknown> =>
  RouterOsSimulator.layerWithClient({ user: "api", password: "pw", ...options })

const Simulator = RouterOsSimulator.RouterOsSimulator

const seededRules: ReadonlyArray<RouterOsSimulator.Row> = [
  {
    chain: "srcnat",
    action: "masquerade",
    "out-interface": "wg-proton",
    disabled: "false",
    bytes: "1234",
    packets: "10"
  },
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "tcp",
    "dst-port": "80,443,8000-8100",
    "in-interface-list": "WAN",
    "to-addresses": "192.168.88.10",
    comment: "web = server",
    disabled: "true"
  },
  { chain: "dstnat", action: "dst-nat", protocol: "udp", "to-addresses": "192.168.88.11" }
]

describe("RouterOsCommands", () => {
  describe("NAT rules", () => {
    it.live("lists dst-nat rules with the typed model, tolerating missing fields", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const rules = yield* listDstNatRules
        expect(rules).toEqual([
          {
            id: expect.stringMatching(/^\*[0-9A-F]+$/),
            chain: "dstnat",
            action: "dst-nat",
            protocol: "tcp",
            dstPort: "80,443,8000-8100",
            inInterfaceList: "WAN",
            toAddresses: "192.168.88.10",
            comment: "web = server",
            disabled: true
          },
          {
            id: expect.stringMatching(/^\*[0-9A-F]+$/),
            chain: "dstnat",
            action: "dst-nat",
            protocol: "udp",
            toAddresses: "192.168.88.11",
            disabled: false
          }
        ])
        expect((yield* listNatRules()).length).toBe(3)
        expect(yield* sim.commandLog).toEqual(["/ip/firewall/nat/print", "/ip/firewall/nat/print"])
      }).pipe(Effect.provide(router({ natRules: seededRules }))))

    it.live("keeps only the rules a filter accepts, seeing each rule once, in one print", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const all = yield* listNatRules()
        const seen: Array<string> = []
        const udp = yield* listNatRules({
          keep: (rule) => {
            seen.push(rule.id)
            return rule.protocol === "udp"
          }
        })
        expect(seen).toEqual(all.map((rule) => rule.id))
        expect(udp).toHaveLength(1)
        expect(udp).toEqual(all.filter((rule) => rule.protocol === "udp"))
        expect(yield* listNatRules({ chain: "dstnat", keep: (rule) => rule.disabled })).toMatchObject([
          { protocol: "tcp", disabled: true }
        ])
        expect(yield* sim.commandLog).toEqual(Array(3).fill("/ip/firewall/nat/print"))
      }).pipe(Effect.provide(router({ natRules: seededRules }))))

    it.live("a malformed rule is kept by a filter, so that listing fails with its decoding error", () =>
      Effect.gen(function*() {
        const error = yield* listNatRules({ keep: () => false }).pipe(Effect.flip)
        expect(error._tag).toBe("RouterOsProtocolError")
        expect(error.message).toContain("NAT rule")
      }).pipe(Effect.provide(router({ natRules: [...seededRules, { chain: "dstnat", disabled: "maybe" }] }))))

    it.live("adds, sets and removes rules; the simulator keeps RouterOS field names", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const id = yield* addNatRule({
          protocol: "tcp",
          inInterface: "wg-proton",
          dstPort: 51413,
          toAddresses: "192.168.88.20",
          toPorts: 51413,
          comment: "natpmp-bridge:test tcp 192.168.88.20:51413"
        })
        expect(id).toMatch(/^\*[0-9A-F]+$/)
        expect(yield* sim.natRules).toEqual([
          {
            ".id": id,
            chain: "dstnat",
            action: "dst-nat",
            protocol: "tcp",
            "in-interface": "wg-proton",
            "dst-port": "51413",
            "to-addresses": "192.168.88.20",
            "to-ports": "51413",
            comment: "natpmp-bridge:test tcp 192.168.88.20:51413",
            log: "false",
            "log-prefix": "",
            bytes: "0",
            packets: "0",
            invalid: "false",
            dynamic: "false",
            disabled: "false"
          }
        ])
        yield* setNatRule(id, { dstPort: "51414", comment: "", disabled: true })
        const [rule] = yield* listDstNatRules
        expect(rule).toMatchObject({ id, dstPort: "51414", disabled: true })
        expect(rule.comment).toBeUndefined()
        const missing = yield* setNatRule("*FFFF", { dstPort: 1 }).pipe(Effect.flip)
        expect(RouterOsCommands.isNoSuchItem(missing)).toBe(true)

        yield* sim.resetCounters
        yield* removeNatRules([id])
        expect(yield* sim.natRules).toEqual([])
        expect(yield* sim.commandCount("/ip/firewall/nat/remove")).toBe(1)
      }).pipe(Effect.provide(router())))

    it.live("removes many rules with one comma-separated remove, and none for an empty list", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const ids = yield* Effect.forEach(
          [1, 2, 3, 4],
          (i) => addNatRule({ protocol: "udp", dstPort: 4000 + i, toAddresses: "192.168.88.30" })
        )
        yield* sim.resetCounters
        yield* removeNatRules([])
        expect(yield* sim.commandCount()).toBe(0)
        yield* removeNatRules([ids[0], ids[2], ids[3]])
        expect(yield* sim.commandLog).toEqual(["/ip/firewall/nat/remove"])
        expect((yield* sim.natRules).map((r) => r[".id"])).toEqual([ids[1]])
      }).pipe(Effect.provide(router())))

    it.live("removes thousands of rules in removes of at most maxIdsPerRemove ids", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const ids = yield* Effect.forEach(
          Array.from({ length: 1201 }, (_, i) => i),
          (i) => sim.addNatRule({ chain: "dstnat", action: "dst-nat", protocol: "udp", "dst-port": String(10000 + i) })
        )
        yield* sim.resetCounters
        yield* removeNatRules(ids)
        expect(yield* sim.natRules).toEqual([])
        expect(yield* sim.commandCount("/ip/firewall/nat/remove")).toBe(
          Math.ceil(ids.length / RouterOsCommands.maxIdsPerRemove)
        )
      }).pipe(Effect.provide(router())))

    it.live("fails on a missing id (nothing removed), or skips it with ignoreMissing", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const a = yield* addNatRule({ protocol: "tcp", dstPort: 1000, toAddresses: "192.168.88.2" })
        const b = yield* addNatRule({ protocol: "tcp", dstPort: 1001, toAddresses: "192.168.88.2" })
        // someone removes `a` behind the bridge's back
        expect(yield* sim.removeNatRule(a)).toBe(true)
        const error = yield* removeNatRules([a, b]).pipe(Effect.flip)
        expect(error).toMatchObject({ _tag: "RouterOsTrapError", reason: "no such item" })
        expect((yield* sim.natRules).length).toBe(1)
        yield* removeNatRules([a, b], { ignoreMissing: true })
        expect(yield* sim.natRules).toEqual([])
      }).pipe(Effect.provide(router())))

    it.live("sees rules added and changed behind its back", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const id = yield* sim.addNatRule({ chain: "dstnat", action: "dst-nat", protocol: "tcp", "dst-port": "22" })
        expect(yield* sim.setNatRule(id, { "dst-port": "2222" })).toBe(true)
        expect(yield* listDstNatRules).toEqual([
          { id, chain: "dstnat", action: "dst-nat", protocol: "tcp", dstPort: "2222", disabled: false }
        ])
      }).pipe(Effect.provide(router())))

    it.live("surfaces router validation as traps", () =>
      Effect.gen(function*() {
        const noProtocol = yield* addNatRule({ dstPort: 80, toAddresses: "192.168.88.2" }).pipe(Effect.flip)
        expect(noProtocol).toMatchObject({ _tag: "RouterOsTrapError" })
        expect(noProtocol.message).toContain("port can be set only when protocol is")
        const badAddress = yield* addNatRule({ protocol: "tcp", toAddresses: "300.1.1.1" }).pipe(Effect.flip)
        expect(badAddress).toMatchObject({ reason: "invalid value for argument to-addresses", category: 1 })
        const badAction = yield* addNatRule({ action: "explode" }).pipe(Effect.flip)
        expect(badAction).toMatchObject({ reason: "invalid value for argument action" })
      }).pipe(Effect.provide(router())))
  })

  describe("routes, addresses and version", () => {
    it.live("reads v7 routes, addresses and version", () =>
      Effect.gen(function*() {
        const routes = yield* listRoutes()
        expect(routes.length).toBe(5)
        expect(routes[1]).toMatchObject({
          dstAddress: "0.0.0.0/0",
          gateway: "10.2.0.1",
          immediateGw: "10.2.0.1%wg-proton",
          routingTable: "vpn",
          distance: 1,
          active: true,
          disabled: false
        })
        const addresses = yield* listAddresses
        expect(addresses.map((a) => [a.address, a.interface, a.network])).toEqual([
          ["192.168.88.1/24", "bridge", "192.168.88.0"],
          ["10.2.0.2/30", "wg-proton", "10.2.0.0"],
          ["192.168.1.10/24", "ether1", "192.168.1.0"]
        ])
        expect(yield* version).toEqual({ raw: "7.16.2 (stable)", major: 7, minor: 16, patch: 2, channel: "stable" })
      }).pipe(Effect.provide(router(RouterOsSimulator.vpnRouterV7()))))

    it.live("reads v6 routes and version", () =>
      Effect.gen(function*() {
        const active = yield* listRoutes({ activeOnly: true })
        expect(active[1]).toMatchObject({
          gateway: "10.2.0.1",
          gatewayStatus: "10.2.0.1 reachable via  wg-proton",
          routingMark: "vpn"
        })
        expect(active[1].immediateGw).toBeUndefined()
        expect((yield* version).major).toBe(6)
      }).pipe(Effect.provide(router(RouterOsSimulator.vpnRouterV6()))))

    it.live("reports rows it cannot understand as a protocol error", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        yield* sim.setRoutes([{ "dst-address": "0.0.0.0/0", gateway: "10.0.0.1", distance: "far", active: "true" }])
        const error = yield* listRoutes().pipe(Effect.flip)
        expect(error._tag).toBe("RouterOsProtocolError")
        expect(error.message).toContain("unexpected route from the router")
        yield* sim.setVersion("unknown")
        expect((yield* version.pipe(Effect.flip)).message).toContain(`unexpected RouterOS version "unknown"`)
      }).pipe(Effect.provide(router())))

    it("parses version strings", () => {
      expect(parseVersion("7.18beta2 (testing)")).toMatchObject({
        _tag: "Some",
        value: { major: 7, minor: 18, patch: 0, channel: "testing" }
      })
      expect(parseVersion("6.49.17 (long-term)")).toMatchObject({ value: { major: 6, minor: 49, patch: 17 } })
      expect(parseVersion("garbage")._tag).toBe("None")
    })
  })

  describe("interfaceTowards", () => {
    it.live("v7: from immediate-gw, with one round trip", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        expect(yield* interfaceTowards("10.2.0.1")).toBe("wg-proton")
        expect(yield* sim.commandLog).toEqual(["/ip/route/print"])
        expect(yield* interfaceTowards("192.168.1.1")).toBe("ether1")
        expect(yield* interfaceTowards("192.168.88.50")).toBe("bridge")
      }).pipe(Effect.provide(router(RouterOsSimulator.vpnRouterV7()))))

    it.live("v7: a custom interface name and a gateway written ip%iface", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        expect(yield* interfaceTowards("10.2.0.1")).toBe("wireguard-proton")
        yield* sim.setRoutes([
          { "dst-address": "0.0.0.0/0", gateway: "10.2.0.1%wg2", active: "true", "routing-table": "vpn" }
        ])
        expect(yield* interfaceTowards("10.2.0.1")).toBe("wg2")
      }).pipe(Effect.provide(router(RouterOsSimulator.vpnRouterV7({ vpnInterface: "wireguard-proton" })))))

    it.live("v6: from gateway-status", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        expect(yield* interfaceTowards("10.2.0.1")).toBe("wg-proton")
        expect(yield* sim.commandLog).toEqual(["/ip/route/print"])
        expect(yield* interfaceTowards("192.168.1.1")).toBe("ether1")
      }).pipe(Effect.provide(router(RouterOsSimulator.vpnRouterV6()))))

    it.live("v6: a connected /32 route when no route goes through the gateway", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const routes = yield* sim.routes
        yield* sim.setRoutes(routes.filter((r) => r["gateway"] !== "10.2.0.1"))
        expect(yield* interfaceTowards("10.2.0.1")).toBe("wg-proton")
        expect(yield* interfaceTowards("192.168.88.77")).toBe("bridge")
      }).pipe(Effect.provide(router(RouterOsSimulator.vpnRouterV6()))))

    it.live("falls back to the addresses (point-to-point network = gateway), ignoring inactive routes", () =>
      Effect.gen(function*() {
        const sim = yield* Simulator
        const routes = yield* sim.routes
        yield* sim.setRoutes(routes.map((r) => ({ ...r, active: "false" })))
        yield* sim.resetCounters
        expect(yield* interfaceTowards("10.2.0.1")).toBe("wg-proton")
        expect(yield* sim.commandLog).toEqual(["/ip/route/print", "/ip/address/print"])
      }).pipe(Effect.provide(router(RouterOsSimulator.vpnRouterV6()))))

    it.live("fails with a clear error instead of guessing", () =>
      Effect.gen(function*() {
        const error = yield* interfaceTowards("10.9.9.9").pipe(Effect.flip)
        expect(error).toMatchObject({ _tag: "InterfaceNotFoundError", gateway: "10.9.9.9" })
        expect(error.message).toBe(
          "cannot find the router interface that reaches 10.9.9.9: no active route through it and no address on its network"
        )
        const notIp = yield* interfaceTowards("vpn.example").pipe(Effect.flip)
        expect(notIp.message).toContain("not an IPv4 address")
      }).pipe(Effect.provide(router({ ...RouterOsSimulator.vpnRouterV7(), routes: [] }))))

    it("prefers the most specific connected route", () => {
      const route = (dst: string, gateway: string): RouterOsCommands.Route => ({
        id: "*1",
        dstAddress: dst,
        gateway,
        active: true,
        dynamic: true,
        connect: true,
        disabled: false
      })
      expect(
        findInterfaceTowards("10.0.5.1", [route("10.0.0.0/8", "ether2"), route("10.0.5.0/24", "vlan5")], [])
      ).toBe("vlan5")
      expect(findInterfaceTowards("10.0.5.1", [{ ...route("10.0.5.0/24", "vlan5"), active: false }], [])).toBe(
        undefined
      )
    })
  })
})
