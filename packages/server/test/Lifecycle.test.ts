import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { eventually, harness, ownRules, routerCommands } from "./helpers.js"

describe("mapping lifecycle (end to end: LAN client → bridge → RouterOS simulator + VPN simulator)", () => {
  it.live("new mapping: a VPN mapping and a dst-nat rule, the public port answered; 2 router round trips", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const { commands, result: response } = yield* routerCommands(
        h,
        client.map({ protocol: "tcp", internalPort: 51413, lifetime: 3600 })
      )
      expect(response.resultCode).toBe(0)
      expect(response.internalPort).toBe(51413)
      const vpnMappings = yield* h.vpn.mappings
      expect(vpnMappings).toHaveLength(1)
      expect(vpnMappings[0]).toMatchObject({ protocol: "tcp", internalPort: 51413 })
      expect(response.externalPort).toBe(vpnMappings[0].externalPort)
      expect(response.lifetime).toBe(60) // ProtonVPN's cap
      const rules = yield* ownRules(h)
      expect(rules).toHaveLength(1)
      expect(rules[0]).toMatchObject({
        chain: "dstnat",
        action: "dst-nat",
        protocol: "tcp",
        "in-interface": "wg-proton",
        "dst-port": String(response.externalPort),
        "to-addresses": "127.0.0.20",
        "to-ports": "51413",
        comment: "natpmp-bridge:default tcp 127.0.0.20:51413"
      })
      expect(commands).toEqual(["/ip/firewall/nat/print", "/ip/firewall/nat/add"])
    }).pipe(Effect.scoped))

  it.live("renewal: same port, lifetime extended upstream, 0 router round trips", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const first = yield* client.map({ protocol: "udp", internalPort: 6881 })
      const before = yield* h.vpn.mappings
      yield* Effect.sleep("30 millis")
      const { commands, result: renewed } = yield* routerCommands(
        h,
        client.map({ protocol: "udp", internalPort: 6881, suggestedExternalPort: first.externalPort })
      )
      expect(renewed.resultCode).toBe(0)
      expect(renewed.externalPort).toBe(first.externalPort)
      expect(commands).toEqual([])
      const after = yield* h.vpn.mappings
      expect(after).toHaveLength(1)
      expect(after[0].expiresAt).toBeGreaterThan(before[0].expiresAt)
      expect(yield* ownRules(h)).toHaveLength(1)
    }).pipe(Effect.scoped))

  it.live("port change on renewal: the rule is `set` to the new port and the client told (1 round trip)", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const first = yield* client.map({ protocol: "tcp", internalPort: 51413 })
      yield* h.vpn.changePortsOnRenewal(true)
      const { commands, result: renewed } = yield* routerCommands(
        h,
        client.map({ protocol: "tcp", internalPort: 51413, suggestedExternalPort: first.externalPort })
      )
      expect(renewed.resultCode).toBe(0)
      expect(renewed.externalPort).not.toBe(first.externalPort)
      expect(commands).toEqual(["/ip/firewall/nat/set"])
      const rules = yield* ownRules(h)
      expect(rules).toHaveLength(1)
      expect(rules[0]["dst-port"]).toBe(String(renewed.externalPort))
      const vpnMappings = yield* h.vpn.mappings
      expect(vpnMappings.map((m) => m.externalPort)).toContain(renewed.externalPort)
    }).pipe(Effect.scoped))

  it.live("delete: rule and VPN mapping removed with 1 router round trip; deleting again still succeeds", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      yield* client.map({ protocol: "tcp", internalPort: 8080 })
      const { commands, result: deleted } = yield* routerCommands(h, client.unmap("tcp", 8080))
      expect(deleted).toMatchObject({ resultCode: 0, internalPort: 8080, externalPort: 0, lifetime: 0 })
      expect(commands).toEqual(["/ip/firewall/nat/remove"])
      expect(yield* ownRules(h)).toEqual([])
      expect(yield* h.vpn.mappings).toEqual([])
      const again = yield* routerCommands(h, client.unmap("tcp", 8080))
      expect(again.result.resultCode).toBe(0)
      expect(again.commands).toEqual([])
    }).pipe(Effect.scoped))

  it.live("delete all (internal port 0): every mapping of that client and protocol, one remove", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const a = yield* h.client("127.0.0.20")
      const b = yield* h.client("127.0.0.21")
      for (const port of [1001, 1002, 1003]) {
        expect((yield* a.map({ protocol: "tcp", internalPort: port })).resultCode).toBe(0)
      }
      yield* a.map({ protocol: "udp", internalPort: 1001 })
      yield* b.map({ protocol: "tcp", internalPort: 1001 })
      const { commands, result } = yield* routerCommands(h, a.unmap("tcp", 0))
      expect(result).toMatchObject({ resultCode: 0, internalPort: 0, externalPort: 0, lifetime: 0 })
      expect(commands).toEqual(["/ip/firewall/nat/remove"])
      const rules = yield* ownRules(h)
      expect(rules.map((rule) => rule.comment).sort()).toEqual([
        "natpmp-bridge:default tcp 127.0.0.21:1001",
        "natpmp-bridge:default udp 127.0.0.20:1001"
      ])
      // B's tcp 1001 asked the VPN for another internal port: A held 1001 upstream when B mapped
      const leases = yield* h.bridge.mapping.leases
      const leaseB = leases.find((lease) => lease.client === "127.0.0.21")!
      expect(leaseB.upstreamPort).not.toBe(1001)
      const vpnMappings = yield* h.vpn.mappings
      expect(vpnMappings.map((m) => `${m.protocol}/${m.internalPort}`).sort()).toEqual([
        `tcp/${leaseB.upstreamPort}`,
        "udp/1001"
      ])
    }).pipe(Effect.scoped))

  it.live("expiry: an unrenewed lease loses its rule and VPN mapping", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const response = yield* client.map({ protocol: "tcp", internalPort: 4000, lifetime: 1 })
      expect(response.lifetime).toBe(1)
      expect(yield* ownRules(h)).toHaveLength(1)
      expect(yield* h.bridge.mapping.leases).toHaveLength(1)
      const gone = yield* eventually(
        Effect.map(ownRules(h), (rules) => rules.length === 0),
        2500
      )
      expect(gone).toBe(true)
      expect(yield* h.bridge.mapping.leases).toEqual([])
      expect(yield* h.vpn.mappings).toEqual([])
    }).pipe(Effect.scoped))

  it.live("expiry/renewal race: a renewal holding the key's lock at expiry time wins", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const first = yield* client.map({ protocol: "tcp", internalPort: 4001, lifetime: 1 })
      expect(first.resultCode).toBe(0)
      yield* Effect.sleep("800 millis")
      // the VPN answers slowly: the renewal still holds the lock when the lease's expiry comes
      yield* h.vpn.setResponseDelay("400 millis")
      const renewed = yield* client.map({ protocol: "tcp", internalPort: 4001, lifetime: 5 })
      expect(renewed.resultCode).toBe(0)
      expect(renewed.externalPort).toBe(first.externalPort)
      yield* h.vpn.setResponseDelay(0)
      yield* Effect.sleep("300 millis")
      expect(yield* ownRules(h)).toHaveLength(1)
      expect(yield* h.bridge.mapping.leases).toHaveLength(1)
      expect((yield* h.vpn.mappings).map((m) => m.internalPort)).toEqual([4001])
    }).pipe(Effect.scoped))

  it.live("a client can only ever map to itself; another client's delete does not touch it", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const a = yield* h.client("127.0.0.20")
      const b = yield* h.client("127.0.0.21")
      const mappedA = yield* a.map({ protocol: "tcp", internalPort: 22 })
      const mappedB = yield* b.map({ protocol: "tcp", internalPort: 22 })
      expect(mappedA.resultCode).toBe(0)
      expect(mappedB.resultCode).toBe(0)
      expect(mappedB.externalPort).not.toBe(mappedA.externalPort)
      const rules = yield* ownRules(h)
      expect(rules.map((rule) => rule["to-addresses"]).sort()).toEqual(["127.0.0.20", "127.0.0.21"])
      expect((yield* b.unmap("tcp", 22)).resultCode).toBe(0)
      expect((yield* b.unmap("tcp", 0)).resultCode).toBe(0)
      const left = yield* ownRules(h)
      expect(left).toHaveLength(1)
      expect(left[0]).toMatchObject({ "to-addresses": "127.0.0.20", "dst-port": String(mappedA.externalPort) })
    }).pipe(Effect.scoped))

  it.live("quota: beyond CLIENT_QUOTA a client gets result 4; other clients are not affected", () =>
    Effect.gen(function*() {
      const h = yield* harness({ bridge: { clientQuota: 2 } })
      const a = yield* h.client("127.0.0.20")
      const b = yield* h.client("127.0.0.21")
      expect((yield* a.map({ protocol: "tcp", internalPort: 1 })).resultCode).toBe(0)
      expect((yield* a.map({ protocol: "udp", internalPort: 1 })).resultCode).toBe(0)
      yield* h.vpn.resetCounters
      const refused = yield* a.map({ protocol: "tcp", internalPort: 2 })
      expect(refused).toMatchObject({ resultCode: 4, internalPort: 2, externalPort: 0, lifetime: 0 })
      expect((yield* h.vpn.counters).total).toBe(0) // refused before any upstream work
      // renewing an existing mapping is not a new one
      expect((yield* a.map({ protocol: "tcp", internalPort: 1 })).resultCode).toBe(0)
      expect((yield* b.map({ protocol: "tcp", internalPort: 2 })).resultCode).toBe(0)
      expect(yield* ownRules(h)).toHaveLength(3)
    }).pipe(Effect.scoped))

  it.live("lifetime cap: the granted lifetime never exceeds MAX_LIFETIME", () =>
    Effect.gen(function*() {
      const h = yield* harness({ vpnMode: "rfc", bridge: { maxLifetime: 300 } })
      const client = yield* h.client("127.0.0.20")
      const response = yield* client.map({ protocol: "tcp", internalPort: 7000, lifetime: 7200 })
      expect(response.resultCode).toBe(0)
      expect(response.lifetime).toBe(300)
      expect((yield* h.vpn.mappings)[0].lifetime).toBe(300)
    }).pipe(Effect.scoped))

  it.live("internal port 0 with a lifetime is refused (result 2)", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const response = yield* client.map({ protocol: "tcp", internalPort: 0, lifetime: 60 })
      expect(response).toMatchObject({ resultCode: 2, internalPort: 0, externalPort: 0, lifetime: 0 })
      expect(yield* h.vpn.mappings).toEqual([])
    }).pipe(Effect.scoped))

  it.live("VPN_PORT_MODE=translate (RFC gateway): the rule matches the requested internal port", () =>
    Effect.gen(function*() {
      const h = yield* harness({ vpnMode: "rfc", bridge: { portMode: "translate" } })
      const client = yield* h.client("127.0.0.20")
      const response = yield* client.map({ protocol: "tcp", internalPort: 51413, suggestedExternalPort: 40000 })
      expect(response).toMatchObject({ resultCode: 0, externalPort: 40000, lifetime: 7200 })
      const [upstream] = yield* h.vpn.mappings
      expect(upstream).toMatchObject({ internalPort: 51413, externalPort: 40000 })
      const [rule] = yield* ownRules(h)
      expect(rule).toMatchObject({ "dst-port": "51413", "to-addresses": "127.0.0.20", "to-ports": "51413" })
      // a new public port on renewal changes nothing on the router: the rule matches the internal port
      yield* h.vpn.changePortsOnRenewal(true)
      const { commands, result: renewed } = yield* routerCommands(
        h,
        client.map({ protocol: "tcp", internalPort: 51413, suggestedExternalPort: 40000 })
      )
      expect(renewed.resultCode).toBe(0)
      expect(renewed.externalPort).not.toBe(40000)
      expect(commands).toEqual([])
      expect((yield* ownRules(h))[0]["dst-port"]).toBe("51413")
    }).pipe(Effect.scoped))

  it.live("VPN_PORT_MODE=same (ProtonVPN): the rule matches the public port P", () =>
    Effect.gen(function*() {
      const h = yield* harness({ vpnMode: "protonvpn", bridge: { portMode: "same" } })
      const client = yield* h.client("127.0.0.21")
      const tcp = yield* client.map({ protocol: "tcp", internalPort: 6881 })
      const udp = yield* client.map({ protocol: "udp", internalPort: 6881 })
      expect(udp.externalPort).toBe(tcp.externalPort) // ProtonVPN gives both protocols one port
      const rules = yield* ownRules(h)
      expect(rules.map((rule) => [rule.protocol, rule["dst-port"], rule["to-ports"]]).sort()).toEqual([
        ["tcp", String(tcp.externalPort), "6881"],
        ["udp", String(udp.externalPort), "6881"]
      ])
    }).pipe(Effect.scoped))
})
