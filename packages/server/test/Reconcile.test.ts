import { describe, expect, it } from "@effect/vitest"
import { NatPmpClient } from "@natpmp-bridge/core"
import { Bridge } from "@natpmp-bridge/server"
import { LanClient } from "@natpmp-bridge/server/testing"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import { environment, eventually, harness, ownRules, routerCommands } from "./helpers.js"

const foreignRule = {
  chain: "dstnat",
  action: "dst-nat",
  protocol: "tcp",
  "in-interface": "ether1",
  "dst-port": "443",
  "to-addresses": "127.0.0.30",
  "to-ports": "443",
  comment: "web server"
}

const otherBridgeRule = {
  chain: "dstnat",
  action: "dst-nat",
  protocol: "tcp",
  "in-interface": "wg-other",
  "dst-port": "50000",
  "to-addresses": "127.0.0.20",
  "to-ports": "1",
  comment: "natpmp-bridge:other tcp 127.0.0.20:1"
}

describe("reconciliation, adoption, shutdown, upstream state loss", () => {
  it.live("reconciliation: orphan removed, deleted rule re-created, drifted rule set back, others untouched", () =>
    Effect.gen(function*() {
      const h = yield* harness({ natRules: [foreignRule, otherBridgeRule] })
      const a = yield* h.client("127.0.0.20")
      const b = yield* h.client("127.0.0.21")
      const mappedA = yield* a.map({ protocol: "tcp", internalPort: 1000 })
      const mappedB = yield* b.map({ protocol: "udp", internalPort: 2000 })
      const [ruleA, ruleB] = yield* ownRules(h)
      yield* h.router.removeNatRule(ruleA[".id"])
      yield* h.router.setNatRule(ruleB[".id"], { "dst-port": "1", disabled: "true" })
      yield* h.router.addNatRule({
        chain: "dstnat",
        action: "dst-nat",
        protocol: "tcp",
        "in-interface": "wg-proton",
        "dst-port": "45000",
        "to-addresses": "127.0.0.20",
        "to-ports": "3000",
        comment: "natpmp-bridge:default tcp 127.0.0.20:3000"
      })
      const { commands, result: report } = yield* routerCommands(h, h.bridge.mapping.reconcile)
      expect(report).toEqual({ removed: 1, recreated: 1, fixed: 1 })
      expect(commands).toEqual([
        "/ip/firewall/nat/print",
        "/ip/firewall/nat/add",
        "/ip/firewall/nat/set",
        "/ip/firewall/nat/remove"
      ])
      const rules = yield* ownRules(h)
      expect(rules.map((rule) => [rule.comment, rule["dst-port"], rule.disabled ?? "false"]).sort()).toEqual([
        ["natpmp-bridge:default tcp 127.0.0.20:1000", String(mappedA.externalPort), "false"],
        ["natpmp-bridge:default udp 127.0.0.21:2000", String(mappedB.externalPort), "false"]
      ])
      const all = yield* h.router.natRules
      expect(all.map((rule) => rule.comment)).toEqual(
        expect.arrayContaining(["web server", "natpmp-bridge:other tcp 127.0.0.20:1"])
      )
      // nothing left to do
      expect(yield* h.bridge.mapping.reconcile).toEqual({ removed: 0, recreated: 0, fixed: 0 })
    }).pipe(Effect.scoped))

  it.live("reconciliation racing a burst of new mappings neither duplicates nor removes their rules", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const reports = yield* Effect.all([
        Effect.forEach(
          Array.from({ length: 30 }, (_, i) => 20000 + i),
          (port) => client.map({ protocol: "tcp", internalPort: port }),
          { concurrency: "unbounded" }
        ),
        Effect.forEach([0, 1, 2, 3, 4], () => Effect.zipRight(Effect.sleep("5 millis"), h.bridge.mapping.reconcile))
      ], { concurrency: "unbounded" }).pipe(Effect.map(([, reports]) => reports))
      expect(reports.every((report) => report.recreated === 0 && report.removed === 0)).toBe(true)
      const rules = yield* ownRules(h)
      expect(rules).toHaveLength(30)
      const leases = yield* h.bridge.mapping.leases
      expect(new Set(leases.map((lease) => lease.ruleId))).toEqual(new Set(rules.map((rule) => rule[".id"])))
    }).pipe(Effect.scoped))

  it.live("the reconciliation fiber runs every RECONCILE_INTERVAL", () =>
    Effect.gen(function*() {
      const h = yield* harness({ bridge: { reconcileInterval: "200 millis" } })
      const client = yield* h.client("127.0.0.20")
      yield* client.map({ protocol: "tcp", internalPort: 1234 })
      const [rule] = yield* ownRules(h)
      yield* h.router.removeNatRule(rule[".id"])
      expect(yield* ownRules(h)).toEqual([])
      expect(yield* eventually(Effect.map(ownRules(h), (rules) => rules.length === 1), 2000)).toBe(true)
    }).pipe(Effect.scoped))

  it.live("restart: own rules of a previous run are adopted; a renewing client keeps its port, the rest expire", () =>
    Effect.gen(function*() {
      const env = yield* environment({ natRules: [foreignRule, otherBridgeRule] })
      // the previous run's VPN mapping still exists upstream (the bridge asked from 127.0.0.1 for internal 51413)
      const upstream = yield* NatPmpClient.make({ gateway: env.vpn.address, port: env.vpn.port, announcements: false })
      const previous = yield* upstream.map({ protocol: "tcp", internalPort: 51413, lifetime: 60 })
      const rule = (comment: string, protocol: string, dstPort: number, to: string, toPort: number) => ({
        chain: "dstnat",
        action: "dst-nat",
        protocol,
        "in-interface": "wg-proton",
        "dst-port": String(dstPort),
        "to-addresses": to,
        "to-ports": String(toPort),
        comment
      })
      yield* env.router.addNatRule(
        rule("natpmp-bridge:default tcp 127.0.0.20:51413", "tcp", previous.externalPort, "127.0.0.20", 51413)
      )
      yield* env.router.addNatRule(rule("natpmp-bridge:default udp 127.0.0.21:6881", "udp", 40001, "127.0.0.21", 6881))
      yield* env.router.addNatRule(rule("natpmp-bridge:default damaged", "tcp", 40002, "127.0.0.21", 1))

      const bridge = yield* env.start({ adoptionGrace: "1 second" })
      const leases = yield* bridge.mapping.leases
      expect(leases.map((lease) => [lease.client, lease.protocol, lease.internalPort, lease.adopted]).sort()).toEqual([
        ["127.0.0.20", "tcp", 51413, true],
        ["127.0.0.21", "udp", 6881, true]
      ])
      expect((yield* ownRules(env)).map((r) => r.comment)).not.toContain("natpmp-bridge:default damaged")

      const client = yield* env.clientOf(bridge, "127.0.0.20")
      const { commands, result: renewed } = yield* routerCommands(
        env,
        client.map({ protocol: "tcp", internalPort: 51413, suggestedExternalPort: previous.externalPort })
      )
      expect(renewed).toMatchObject({ resultCode: 0, externalPort: previous.externalPort })
      expect(commands).toEqual([])

      // the lease nobody renewed goes after the grace period
      expect(
        yield* eventually(Effect.map(ownRules(env), (rules) => rules.length === 1), 2500)
      ).toBe(true)
      const [left] = yield* ownRules(env)
      expect(left.comment).toBe("natpmp-bridge:default tcp 127.0.0.20:51413")
      const all = yield* env.router.natRules
      expect(all.map((r) => r.comment)).toEqual(
        expect.arrayContaining(["web server", "natpmp-bridge:other tcp 127.0.0.20:1"])
      )
    }).pipe(Effect.scoped))

  it.live("shutdown: every own rule removed with one remove, every VPN mapping deleted, others untouched", () =>
    Effect.gen(function*() {
      const env = yield* environment({ natRules: [foreignRule, otherBridgeRule] })
      const bridge = yield* env.start()
      const a = yield* env.clientOf(bridge, "127.0.0.20")
      const b = yield* env.clientOf(bridge, "127.0.0.21")
      yield* a.map({ protocol: "tcp", internalPort: 1 })
      yield* a.map({ protocol: "udp", internalPort: 1 })
      yield* b.map({ protocol: "tcp", internalPort: 2 })
      expect(yield* ownRules(env)).toHaveLength(3)
      expect(yield* env.vpn.mappings).toHaveLength(3)
      const { commands } = yield* routerCommands(env, bridge.stop)
      expect(commands).toEqual(["/ip/firewall/nat/print", "/ip/firewall/nat/remove"])
      expect(yield* ownRules(env)).toEqual([])
      expect(yield* env.vpn.mappings).toEqual([])
      expect((yield* env.router.natRules).map((rule) => rule.comment).sort()).toEqual([
        "natpmp-bridge:other tcp 127.0.0.20:1",
        "web server"
      ])
      // the server no longer answers
      expect(
        yield* Effect.either(
          a.map({ protocol: "tcp", internalPort: 3 }).pipe(
            Effect.timeout("300 millis")
          )
        )
      ).toMatchObject({ _tag: "Left" })
    }).pipe(Effect.scoped))

  it.live("shutdown is bounded when the VPN is silent", () =>
    Effect.gen(function*() {
      const env = yield* environment()
      const bridge = yield* env.start({ shutdownTimeout: "1 second" })
      const client = yield* env.clientOf(bridge, "127.0.0.20")
      yield* client.map({ protocol: "tcp", internalPort: 1 })
      yield* env.vpn.setSilent(true)
      const started = Date.now()
      yield* bridge.stop
      expect(Date.now() - started).toBeLessThan(2500)
      expect(yield* ownRules(env)).toEqual([]) // the router part still happened
    }).pipe(Effect.scoped))

  it.live("shutdown: a failed rule removal is tried again from a fresh print (no own rule left)", () =>
    Effect.gen(function*() {
      const env = yield* environment({ natRules: [foreignRule] })
      const bridge = yield* env.start()
      const client = yield* env.clientOf(bridge, "127.0.0.20")
      yield* client.map({ protocol: "tcp", internalPort: 1 })
      yield* client.map({ protocol: "udp", internalPort: 2 })
      // the print is answered, the connection that receives the remove is closed before it runs
      yield* env.router.dropAfter(1)
      const { commands } = yield* routerCommands(env, bridge.stop)
      expect(commands).toEqual([
        "/ip/firewall/nat/print",
        "/ip/firewall/nat/remove", // dropped
        "/ip/firewall/nat/print",
        "/ip/firewall/nat/remove"
      ])
      expect(yield* ownRules(env)).toEqual([])
      expect((yield* env.router.natRules).map((rule) => rule.comment)).toEqual(["web server"])
      expect(yield* env.vpn.mappings).toEqual([])
    }).pipe(Effect.scoped))

  it.live("announcements on start: from the server's port, epoch 0, 250 ms apart", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      yield* Effect.sleep("400 millis")
      const announcements = yield* h.announcements
      expect(announcements.length).toBeGreaterThanOrEqual(2)
      expect(announcements[0].from).toEqual({ address: "127.0.0.1", port: h.bridge.port })
      expect(announcements[0].response).toMatchObject({ resultCode: 0, epoch: 0, publicAddress: "203.0.113.1" })
      const gap = announcements[1].at - announcements[0].at
      expect(gap).toBeGreaterThanOrEqual(200)
      expect(gap).toBeLessThan(400)
    }).pipe(Effect.scoped))

  it.live("VPN state loss: mappings re-made upstream, rules fixed, own epoch reset, announced", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      const first = yield* client.map({ protocol: "tcp", internalPort: 51413 })
      yield* Effect.sleep("1100 millis") // let the bridge's own epoch advance
      const before = (yield* h.announcements).length
      expect((yield* client.publicAddress).epoch).toBeGreaterThanOrEqual(1)
      yield* h.vpn.resetEpoch // drops every mapping upstream
      expect(yield* h.vpn.mappings).toEqual([])
      yield* h.bridge.mapping.reconcile // talks to the VPN: the epoch went backwards
      expect(yield* eventually(Effect.map(h.vpn.mappings, (m) => m.length === 1))).toBe(true)
      expect(yield* eventually(Effect.map(h.announcements, (a) => a.length > before))).toBe(true)
      const [upstream] = yield* h.vpn.mappings
      const [rule] = yield* ownRules(h)
      expect(rule["dst-port"]).toBe(String(upstream.externalPort))
      const announced = (yield* h.announcements)[before]
      expect(announced.response.epoch).toBe(0)
      const renewed = yield* client.map({
        protocol: "tcp",
        internalPort: 51413,
        suggestedExternalPort: first.externalPort
      })
      expect(renewed.externalPort).toBe(upstream.externalPort)
      expect(renewed.epoch).toBeLessThan(2)
    }).pipe(Effect.scoped))

  it.live("public address change: the cache follows, clients are told", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      expect((yield* client.publicAddress).publicAddress).toBe("203.0.113.1")
      const before = (yield* h.announcements).length
      yield* h.vpn.setPublicAddress("198.51.100.7")
      yield* h.bridge.mapping.reconcile
      expect(yield* eventually(Effect.map(h.announcements, (a) => a.length > before))).toBe(true)
      expect((yield* h.announcements)[before].response.publicAddress).toBe("198.51.100.7")
      expect((yield* client.publicAddress).publicAddress).toBe("198.51.100.7")
    }).pipe(Effect.scoped))
})

describe("Bridge.serve", () => {
  it.live("serveConfig: runs from environment variables until interrupted, then cleans up", () =>
    Effect.gen(function*() {
      const env = yield* environment()
      const vars = {
        VPN_GATEWAY: env.vpn.address,
        VPN_GATEWAY_PORT: String(env.vpn.port),
        MIKROTIK_API_ADDRESS: `${env.router.host}:${env.router.port}`,
        MIKROTIK_API_USER: env.router.user,
        MIKROTIK_API_PASSWORD: env.router.password,
        LISTEN_ADDR: "127.0.0.1:0",
        ANNOUNCE_ADDR: `${env.announcementTarget.address}:${env.announcementTarget.port}`,
        ALLOWED_CLIENTS: "127.0.0.16/28",
        LOG_LEVEL: "ERROR",
        BRIDGE_ID: "served"
      }
      const running = yield* Bridge.serveConfig.pipe(
        Effect.withConfigProvider(ConfigProvider.fromMap(new Map(Object.entries(vars)))),
        Effect.fork
      )
      // the first announcement comes from the server's (ephemeral) port
      expect(yield* eventually(Effect.map(env.announcements, (a) => a.length > 0))).toBe(true)
      const [first] = yield* env.announcements
      const client = yield* LanClient.make({ address: "127.0.0.20", bridge: first.from })
      expect((yield* client.map({ protocol: "tcp", internalPort: 51413 })).resultCode).toBe(0)
      expect(yield* ownRules(env, "served")).toHaveLength(1)
      yield* Fiber.interrupt(running)
      expect(yield* ownRules(env, "served")).toEqual([])
      expect(yield* env.vpn.mappings).toEqual([])
    }).pipe(Effect.scoped))
})
