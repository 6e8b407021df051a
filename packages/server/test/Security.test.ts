/**
 * What a client must not be able to do: get an answer (or cause any upstream work) from outside the allowed
 * networks, delete, renew or take over another client's mapping, touch a rule the bridge does not own, or hold more
 * mappings than its quota. Server.test.ts and Lifecycle.test.ts check the basic cases; these go further.
 */
import { describe, expect, it } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import type { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import { environment, eventually, harness, ownRules } from "./helpers.js"

type Environment = BridgeHarness.Environment

const upstreamWork = (h: Environment) =>
  Effect.all({ vpn: Effect.map(h.vpn.counters, (c) => c.total), router: h.router.commandCount() })

const requestsOf = (internalPort: number): ReadonlyArray<NatPmpMessage.Request> => [
  { _tag: "PublicAddressRequest" },
  { _tag: "MapRequest", protocol: "tcp", internalPort, suggestedExternalPort: internalPort, lifetime: 3600 },
  { _tag: "MapRequest", protocol: "udp", internalPort, suggestedExternalPort: 0, lifetime: 0 },
  { _tag: "MapRequest", protocol: "tcp", internalPort: 0, suggestedExternalPort: 0, lifetime: 0 }
]

/** Rules of other owners, some made to look like the bridge's own. */
const foreignRules = [
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "tcp",
    "in-interface": "wg-proton",
    "dst-port": "443",
    "to-addresses": "127.0.0.30",
    "to-ports": "443",
    comment: "web server"
  },
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "tcp",
    "in-interface": "ether1",
    "dst-port": "22",
    "to-addresses": "127.0.0.20",
    "to-ports": "22",
    comment: "manual ssh to the same client and port",
    disabled: "true"
  },
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "tcp",
    "in-interface": "wg-proton",
    "dst-port": "10000",
    "to-addresses": "127.0.0.20",
    "to-ports": "22",
    comment: "natpmp-bridge:other tcp 127.0.0.20:22"
  },
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "tcp",
    "in-interface": "wg-proton",
    "dst-port": "10001",
    "to-addresses": "127.0.0.20",
    "to-ports": "22",
    comment: "natpmp-bridge:defaults tcp 127.0.0.20:22"
  },
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "udp",
    "in-interface": "wg-proton",
    "dst-port": "10002",
    "to-addresses": "127.0.0.20",
    "to-ports": "22",
    comment: "natpmp-bridge:default-2 udp 127.0.0.20:22"
  },
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "udp",
    "in-interface": "wg-proton",
    "dst-port": "10003",
    "to-addresses": "127.0.0.20",
    "to-ports": "23",
    comment: "NATPMP-BRIDGE:default udp 127.0.0.20:23"
  },
  {
    chain: "dstnat",
    action: "dst-nat",
    protocol: "udp",
    "in-interface": "wg-proton",
    "dst-port": "10004",
    "to-addresses": "127.0.0.21",
    "to-ports": "24"
  }
]

const foreignOf = (h: Environment) =>
  Effect.map(h.router.natRules, (rules) => rules.filter((rule) => !rule.comment?.startsWith("natpmp-bridge:default ")))

describe("security", () => {
  it.live("outside the allowed networks: no answer and no upstream call, for every kind of request", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const insider = yield* h.client("127.0.0.20")
      expect((yield* insider.map({ protocol: "tcp", internalPort: 22 })).resultCode).toBe(0)
      yield* Effect.sleep("100 millis") // the harness's startup work is over
      yield* h.vpn.resetCounters
      yield* h.router.resetCounters
      const before = yield* h.router.natRules
      // just below and just above the allowed 127.0.0.16/28, and far away
      for (const address of ["127.0.0.15", "127.0.0.32", "127.0.0.200"]) {
        const outsider = yield* h.client(address)
        for (const request of requestsOf(22)) {
          for (let i = 0; i < 3; i++) yield* outsider.send(NatPmpMessage.encodeRequest(request))
        }
        expect(yield* outsider.silentFor("300 millis")).toBe(true)
      }
      expect(yield* upstreamWork(h)).toEqual({ vpn: 0, router: 0 })
      expect((yield* h.bridge.server.stats).refused).toBe(36)
      expect(yield* h.router.natRules).toEqual(before)
      expect(yield* h.vpn.mappings).toHaveLength(1)
    }).pipe(Effect.scoped))

  it.live("without ALLOWED_CLIENTS only the router's LAN networks are served (never the VPN side)", () =>
    Effect.gen(function*() {
      const env = yield* environment()
      const bridge = yield* env.start({ allowedClients: undefined })
      const lan = yield* env.clientOf(bridge, "127.0.0.20")
      expect((yield* lan.publicAddress).resultCode).toBe(0)
      yield* env.vpn.resetCounters
      yield* env.router.resetCounters
      // the router's VPN address is 127.0.0.2/30 on wg-proton: that side is never a client
      for (const address of ["127.0.0.2", "127.0.0.1", "127.0.0.40"]) {
        const outsider = yield* env.clientOf(bridge, address)
        for (const request of requestsOf(80)) yield* outsider.send(NatPmpMessage.encodeRequest(request))
        expect(yield* outsider.silentFor("300 millis")).toBe(true)
      }
      expect(yield* upstreamWork(env)).toEqual({ vpn: 0, router: 0 })
      expect(yield* ownRules(env)).toEqual([])
    }).pipe(Effect.scoped))

  it.live("another LAN client cannot delete, renew or take over a mapping (same internal and suggested port)", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const a = yield* h.client("127.0.0.20")
      const b = yield* h.client("127.0.0.21")
      const mapped = yield* a.map({ protocol: "tcp", internalPort: 22, lifetime: 60 })
      expect(mapped.resultCode).toBe(0)
      const snapshot = Effect.all({
        rule: Effect.map(ownRules(h), (rules) => rules.find((rule) => rule["to-addresses"] === "127.0.0.20")),
        lease: Effect.map(h.bridge.mapping.leases, (leases) => leases.find((lease) => lease.client === "127.0.0.20")),
        upstream: Effect.map(h.bridge.mapping.leases, (leases) => leases.find((l) => l.client === "127.0.0.20")).pipe(
          Effect.flatMap((lease) =>
            Effect.map(h.vpn.mappings, (mappings) => mappings.find((m) => m.internalPort === lease?.upstreamPort))
          )
        )
      })
      const before = yield* snapshot
      expect(before.rule).toMatchObject({ "dst-port": String(mapped.externalPort), "to-ports": "22" })
      yield* Effect.sleep("50 millis") // a renewal by A would move the expiries

      // B asks for the same internal port and A's public port, twice (a renewal of its own mapping)
      const taken = yield* b.map({ protocol: "tcp", internalPort: 22, suggestedExternalPort: mapped.externalPort })
      expect(taken.resultCode).toBe(0)
      expect(taken.externalPort).not.toBe(mapped.externalPort)
      const again = yield* b.map({ protocol: "tcp", internalPort: 22, suggestedExternalPort: mapped.externalPort })
      expect(again.externalPort).toBe(taken.externalPort)
      // and deletes: that one, all of its TCP and UDP mappings
      expect((yield* b.unmap("tcp", 22)).resultCode).toBe(0)
      expect((yield* b.unmap("tcp", 0)).resultCode).toBe(0)
      expect((yield* b.unmap("udp", 0)).resultCode).toBe(0)

      expect(yield* snapshot).toEqual(before) // rule, lease expiry and VPN mapping expiry all untouched
      const rules = yield* ownRules(h)
      expect(rules.map((rule) => rule["to-addresses"])).toEqual(["127.0.0.20"])
      // A still renews its port
      const renewed = yield* a.map({ protocol: "tcp", internalPort: 22, suggestedExternalPort: mapped.externalPort })
      expect(renewed.externalPort).toBe(mapped.externalPort)
    }).pipe(Effect.scoped))

  it.live("translate mode: a client asking for another's internal and public port gets its own", () =>
    Effect.gen(function*() {
      const h = yield* harness({ vpnMode: "rfc", bridge: { portMode: "translate" } })
      const a = yield* h.client("127.0.0.20")
      const b = yield* h.client("127.0.0.21")
      const mappedA = yield* a.map({ protocol: "tcp", internalPort: 8080, suggestedExternalPort: 40000 })
      expect(mappedA).toMatchObject({ resultCode: 0, externalPort: 40000 })
      const mappedB = yield* b.map({ protocol: "tcp", internalPort: 8080, suggestedExternalPort: 40000 })
      expect(mappedB.resultCode).toBe(0)
      expect(mappedB.externalPort).not.toBe(40000)
      const rules = yield* ownRules(h)
      const ruleA = rules.find((rule) => rule["to-addresses"] === "127.0.0.20")
      const ruleB = rules.find((rule) => rule["to-addresses"] === "127.0.0.21")
      expect(ruleA).toMatchObject({ "dst-port": "8080", "to-ports": "8080" })
      expect(ruleB?.["dst-port"]).not.toBe("8080")
      expect(ruleB?.["to-ports"]).toBe("8080")
      const vpn = yield* h.vpn.mappings
      expect(vpn.find((m) => m.internalPort === 8080)?.externalPort).toBe(40000)
      expect((yield* b.unmap("tcp", 8080)).resultCode).toBe(0)
      expect((yield* ownRules(h)).map((rule) => rule[".id"])).toEqual([ruleA?.[".id"]])
      expect((yield* h.vpn.mappings).map((m) => m.externalPort)).toEqual([40000])
    }).pipe(Effect.scoped))

  it.live("rules the bridge does not own survive delete, delete-all, reconciliation, adoption and shutdown", () =>
    Effect.gen(function*() {
      const env = yield* environment({ natRules: foreignRules })
      const initial = yield* env.router.natRules
      expect(initial).toHaveLength(foreignRules.length)
      const bridge = yield* env.start({ adoptionGrace: "300 millis" })
      const a = yield* env.clientOf(bridge, "127.0.0.20")
      const b = yield* env.clientOf(bridge, "127.0.0.21")
      for (
        const [client, protocol, port] of [[a, "tcp", 22], [a, "udp", 22], [a, "udp", 23], [b, "udp", 24]] as const
      ) {
        expect((yield* client.map({ protocol, internalPort: port })).resultCode).toBe(0)
      }
      expect(yield* foreignOf(env)).toEqual(initial)
      expect((yield* a.unmap("tcp", 22)).resultCode).toBe(0)
      expect((yield* a.unmap("udp", 0)).resultCode).toBe(0)
      expect(yield* bridge.mapping.reconcile).toEqual({ removed: 0, recreated: 0, fixed: 0 })
      expect(yield* foreignOf(env)).toEqual(initial)
      // a restart adopts only its own rule, lets it expire, and shuts down
      yield* bridge.stop
      expect(yield* ownRules(env)).toEqual([])
      expect(yield* foreignOf(env)).toEqual(initial)
      yield* env.router.addNatRule({
        chain: "dstnat",
        action: "dst-nat",
        protocol: "udp",
        "in-interface": "wg-proton",
        "dst-port": "45000",
        "to-addresses": "127.0.0.21",
        "to-ports": "24",
        comment: "natpmp-bridge:default udp 127.0.0.21:24"
      })
      const restarted = yield* env.start({ adoptionGrace: "300 millis" })
      expect((yield* restarted.mapping.leases).map((lease) => lease.internalPort)).toEqual([24])
      expect(yield* eventually(Effect.map(ownRules(env), (rules) => rules.length === 0), 3000)).toBe(true)
      expect(yield* restarted.mapping.reconcile).toEqual({ removed: 0, recreated: 0, fixed: 0 })
      const d = yield* env.clientOf(restarted, "127.0.0.20")
      expect((yield* d.map({ protocol: "tcp", internalPort: 22 })).resultCode).toBe(0)
      yield* restarted.stop
      expect(yield* ownRules(env)).toEqual([])
      expect(yield* env.router.natRules).toEqual(initial)
    }).pipe(Effect.scoped))

  it.live("the quota holds against a burst of concurrent new mappings and retransmissions", () =>
    Effect.gen(function*() {
      const h = yield* harness({ bridge: { clientQuota: 3 } })
      const a = yield* h.client("127.0.0.20")
      const b = yield* h.client("127.0.0.21")
      yield* h.vpn.setResponseDelay("50 millis") // the new mappings overlap
      const ports = Array.from({ length: 12 }, (_, i) => 30000 + i)
      const answers = yield* Effect.forEach(
        ports,
        (port) =>
          Effect.map(
            a.request({
              _tag: "MapRequest",
              protocol: port % 2 === 0 ? "tcp" : "udp",
              internalPort: port,
              suggestedExternalPort: 0,
              lifetime: 3600
            }, { retransmit: true }),
            ({ response }) => (response as NatPmpMessage.MapResponse).resultCode
          ),
        { concurrency: "unbounded" }
      )
      expect(answers.filter((code) => code === 0)).toHaveLength(3)
      expect(answers.filter((code) => code === 4)).toHaveLength(9)
      yield* Effect.sleep("300 millis") // retransmissions still arriving
      expect((yield* h.bridge.mapping.leases).filter((lease) => lease.client === "127.0.0.20")).toHaveLength(3)
      expect(yield* ownRules(h)).toHaveLength(3)
      expect(yield* h.vpn.mappings).toHaveLength(3)
      // another client is not affected; a delete frees a slot
      expect((yield* b.map({ protocol: "tcp", internalPort: 30000 })).resultCode).toBe(0)
      const held = (yield* h.bridge.mapping.leases).find((lease) => lease.client === "127.0.0.20")!
      expect((yield* a.map({ protocol: "tcp", internalPort: 31000 })).resultCode).toBe(4)
      expect((yield* a.unmap(held.protocol, held.internalPort)).resultCode).toBe(0)
      expect((yield* a.map({ protocol: "tcp", internalPort: 31000 })).resultCode).toBe(0)
      expect(yield* ownRules(h)).toHaveLength(4)
    }).pipe(Effect.scoped))
})
