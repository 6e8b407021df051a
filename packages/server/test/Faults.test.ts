import { describe, expect, it } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Effect from "effect/Effect"
import { eventually, harness, ownRules, routerCommands } from "./helpers.js"

describe("failures, rollback and bounded answers", () => {
  it.live("rollback: the router fails after the VPN mapped → result 3, the VPN mapping is removed", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      yield* h.router.dropAfter(1) // the print is answered, the connection drops on the add
      const failed = yield* client.map({ protocol: "tcp", internalPort: 51413 })
      expect(failed).toMatchObject({ resultCode: 3, internalPort: 51413, externalPort: 0, lifetime: 0 })
      expect(yield* h.vpn.mappings).toEqual([])
      expect(yield* ownRules(h)).toEqual([])
      expect(yield* h.bridge.mapping.leases).toEqual([])
      // the next request reconnects and succeeds
      yield* h.router.clearFaults
      const retried = yield* client.map({ protocol: "tcp", internalPort: 51413 })
      expect(retried.resultCode).toBe(0)
      expect(yield* ownRules(h)).toHaveLength(1)
      expect(yield* h.vpn.mappings).toHaveLength(1)
    }).pipe(Effect.scoped))

  it.live("rollback the other way: the VPN fails first → its result code, the router is never touched", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      yield* h.vpn.setResultCode(NatPmpMessage.ResultCode.OutOfResources)
      const { commands, result } = yield* routerCommands(h, client.map({ protocol: "udp", internalPort: 500 }))
      expect(result).toMatchObject({ resultCode: 4, externalPort: 0, lifetime: 0 })
      expect(commands).toEqual([])
      yield* h.vpn.setResultCode(NatPmpMessage.ResultCode.NotAuthorized)
      expect((yield* client.map({ protocol: "udp", internalPort: 500 })).resultCode).toBe(2)
      expect(yield* ownRules(h)).toEqual([])
    }).pipe(Effect.scoped))

  it.live("rollback in translate mode: the add fails after print and VPN map → VPN mapping removed", () =>
    Effect.gen(function*() {
      const h = yield* harness({ vpnMode: "rfc", bridge: { portMode: "translate" } })
      const client = yield* h.client("127.0.0.20")
      yield* h.router.dropAfter(1)
      const failed = yield* client.map({ protocol: "tcp", internalPort: 8443 })
      expect(failed.resultCode).toBe(3)
      expect(yield* h.vpn.mappings).toEqual([])
      expect(yield* ownRules(h)).toEqual([])
    }).pipe(Effect.scoped))

  it.live("router connection dropped mid-request: answered 3 promptly, nothing left behind, next request works", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      yield* h.router.setReplyDelay("400 millis")
      const pending = yield* Effect.fork(client.map({ protocol: "tcp", internalPort: 9000 }))
      yield* Effect.sleep("150 millis")
      yield* h.router.disconnectAll
      yield* h.router.clearFaults
      const failed = yield* pending.await.pipe(Effect.flatten)
      expect(failed.resultCode).toBe(3)
      // whatever reached the router is gone after the rollback or the next reconciliation
      yield* h.bridge.mapping.reconcile
      expect(yield* ownRules(h)).toEqual([])
      expect(yield* h.vpn.mappings).toEqual([])
      const retried = yield* client.map({ protocol: "tcp", internalPort: 9000 })
      expect(retried.resultCode).toBe(0)
      expect(yield* ownRules(h)).toHaveLength(1)
    }).pipe(Effect.scoped))

  it.live("VPN silent: result 3 within the 2 s bound, nothing left behind", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      yield* h.vpn.setSilent(true)
      const { elapsed, response } = yield* client.request({
        _tag: "MapRequest",
        protocol: "tcp",
        internalPort: 51413,
        suggestedExternalPort: 0,
        lifetime: 7200
      })
      expect(response).toMatchObject({ _tag: "MapResponse", resultCode: 3, externalPort: 0, lifetime: 0 })
      expect(elapsed).toBeLessThan(2200)
      expect(yield* ownRules(h)).toEqual([])
      // a delete is always a success, even when the VPN is silent
      const deleted = yield* client.request({
        _tag: "MapRequest",
        protocol: "tcp",
        internalPort: 51413,
        suggestedExternalPort: 0,
        lifetime: 0
      })
      expect(deleted.response).toMatchObject({ resultCode: 0 })
      expect(deleted.elapsed).toBeLessThan(2200)
    }).pipe(Effect.scoped))

  it.live("a VPN request without an answer is undone too: the mapping the gateway made anyway is deleted", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      // the simulator still applies the requests it does not answer, like a gateway whose answers are lost
      yield* h.vpn.setSilent(true)
      expect((yield* client.map({ protocol: "tcp", internalPort: 51413 })).resultCode).toBe(3)
      expect(yield* eventually(Effect.map(h.vpn.mappings, (mappings) => mappings.length === 0), 5000)).toBe(true)
      expect(yield* ownRules(h)).toEqual([])
      yield* h.vpn.setSilent(false)
      // once the undo has given up waiting for its answer, the client's retry maps
      const retry = Effect.map(client.map({ protocol: "tcp", internalPort: 51413 }), (r) => r.resultCode === 0)
      expect(yield* eventually(retry, 6000)).toBe(true)
    }).pipe(Effect.scoped))

  it.live("VPN unreachable (ICMP port unreachable): result 3 quickly", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      yield* h.vpn.setUnreachable(true)
      const { elapsed, response } = yield* client.request({
        _tag: "MapRequest",
        protocol: "udp",
        internalPort: 4444,
        suggestedExternalPort: 0,
        lifetime: 60
      })
      expect(response).toMatchObject({ resultCode: 3 })
      expect(elapsed).toBeLessThan(2200)
      yield* h.vpn.setUnreachable(false)
      expect((yield* client.map({ protocol: "udp", internalPort: 4444 })).resultCode).toBe(0)
    }).pipe(Effect.scoped))

  it.live("conflict: a rule that already takes the port on the VPN interface → result 4, VPN mapping undone", () =>
    Effect.gen(function*() {
      const h = yield* harness({
        natRules: [{
          chain: "dstnat",
          action: "dst-nat",
          protocol: "tcp",
          "in-interface": "wg-proton",
          "to-addresses": "127.0.0.30",
          comment: "someone's catch-all forward",
          disabled: "true"
        }]
      })
      const client = yield* h.client("127.0.0.20")
      const { commands, result } = yield* routerCommands(h, client.map({ protocol: "tcp", internalPort: 80 }))
      expect(result).toMatchObject({ resultCode: 4, externalPort: 0, lifetime: 0 })
      expect(commands).toEqual(["/ip/firewall/nat/print"])
      expect(yield* h.vpn.mappings).toEqual([])
      expect(yield* ownRules(h)).toEqual([])
      // UDP is not taken by that rule
      expect((yield* client.map({ protocol: "udp", internalPort: 80 })).resultCode).toBe(0)
    }).pipe(Effect.scoped))

  it.live("conflict check: an own rule without a lease (an orphan) takes its port like anyone's rule", () =>
    Effect.gen(function*() {
      const h = yield* harness({ vpnMode: "rfc", bridge: { portMode: "translate" } })
      const client = yield* h.client("127.0.0.20")
      // a rule with the bridge's ownership comment that no lease stands for (left by a crash, added by hand...)
      yield* h.router.addNatRule({
        chain: "dstnat",
        action: "dst-nat",
        protocol: "tcp",
        "in-interface": "wg-proton",
        "dst-port": "7000",
        "to-addresses": "127.0.0.99",
        "to-ports": "7000",
        comment: "natpmp-bridge:default tcp 127.0.0.99:7000"
      })
      expect((yield* client.map({ protocol: "tcp", internalPort: 7001 })).resultCode).toBe(0)
      // the orphan's port is not free: the bridge asks the VPN for another one (a live lease's own rule is covered
      // by the lease itself)
      expect((yield* client.map({ protocol: "tcp", internalPort: 7000 })).resultCode).toBe(0)
      const ports = (yield* ownRules(h)).map((rule) =>
        `${rule["to-addresses"]}:${rule["to-ports"]}@${rule["dst-port"]}`
      )
      expect(ports).toContain("127.0.0.99:7000@7000")
      expect(ports).toContain("127.0.0.20:7001@7001")
      const mapped = ports.find((port) => port.startsWith("127.0.0.20:7000@"))
      expect(mapped).toBeDefined()
      expect(mapped).not.toBe("127.0.0.20:7000@7000")
    }).pipe(Effect.scoped))

  it.live("translate mode: a taken port makes the bridge ask the VPN for another internal port", () =>
    Effect.gen(function*() {
      const h = yield* harness({
        vpnMode: "rfc",
        bridge: { portMode: "translate" },
        natRules: [{
          chain: "dstnat",
          action: "dst-nat",
          protocol: "tcp",
          "in-interface-list": "WAN",
          "dst-port": "80,443,8000-8100",
          "to-addresses": "127.0.0.30",
          "to-ports": "8080"
        }]
      })
      const client = yield* h.client("127.0.0.20")
      const response = yield* client.map({ protocol: "tcp", internalPort: 8080, suggestedExternalPort: 8080 })
      expect(response.resultCode).toBe(0)
      const rules = yield* ownRules(h)
      expect(rules).toHaveLength(1)
      const port = Number(rules[0]["dst-port"])
      expect(port).toBeGreaterThanOrEqual(49152)
      const vpnMappings = yield* h.vpn.mappings
      expect(vpnMappings).toHaveLength(1)
      expect(vpnMappings[0].internalPort).toBe(port)
      expect(response.externalPort).toBe(vpnMappings[0].externalPort)
    }).pipe(Effect.scoped))

  it.live("retransmissions join the request in flight: one upstream request and one rule for 4 sends", () =>
    Effect.gen(function*() {
      const h = yield* harness()
      const client = yield* h.client("127.0.0.20")
      yield* h.vpn.setResponseDelay("200 millis")
      yield* h.vpn.resetCounters
      yield* h.router.resetCounters
      const request = NatPmpMessage.encodeRequest({
        _tag: "MapRequest",
        protocol: "tcp",
        internalPort: 6000,
        suggestedExternalPort: 0,
        lifetime: 3600
      })
      for (let i = 0; i < 4; i++) {
        yield* client.send(request)
        yield* Effect.sleep("30 millis")
      }
      const answers = []
      for (let i = 0; i < 4; i++) answers.push(yield* client.receive())
      const decoded = answers.map((answer) => answer.response)
      const ports = new Set(
        decoded.map((r) => r._tag === "Some" && r.value._tag === "MapResponse" ? r.value.externalPort : -1)
      )
      expect(ports.size).toBe(1)
      expect([...ports][0]).toBeGreaterThan(0)
      expect((yield* h.vpn.counters).mapTcp).toBe(1)
      expect(yield* h.router.commandCount("/ip/firewall/nat/add")).toBe(1)
      expect(yield* ownRules(h)).toHaveLength(1)
    }).pipe(Effect.scoped))

  it.live("a slow router still gets every client an answer within the bound; the mapping completes later", () =>
    Effect.gen(function*() {
      const h = yield* harness({ bridge: { requestTimeout: "500 millis" } })
      const client = yield* h.client("127.0.0.20")
      yield* h.router.setReplyDelay("700 millis")
      const { elapsed, response } = yield* client.request({
        _tag: "MapRequest",
        protocol: "tcp",
        internalPort: 7777,
        suggestedExternalPort: 0,
        lifetime: 3600
      })
      expect(response).toMatchObject({ resultCode: 3 })
      expect(elapsed).toBeLessThan(800)
      yield* h.router.clearFaults
      // the work went on: the client's retry is a plain renewal
      expect(yield* eventually(Effect.map(ownRules(h), (rules) => rules.length === 1))).toBe(true)
      const retried = yield* routerCommands(h, client.map({ protocol: "tcp", internalPort: 7777 }))
      expect(retried.result.resultCode).toBe(0)
      expect(retried.commands).toEqual([])
    }).pipe(Effect.scoped))
})
