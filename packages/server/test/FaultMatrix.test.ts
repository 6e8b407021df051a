/**
 * The fault matrix: one row per upstream fault (router or VPN gateway). Every row checks the same three things:
 * the client gets the right NAT-PMP result code within the answer bound, the router and the VPN agree afterwards
 * (every own rule belongs to a lease and has its VPN mapping on the same port, every VPN mapping of the bridge has
 * its rule), and the bridge answers the next request correctly once the fault is gone.
 *
 * Faults.test.ts, Lifecycle.test.ts and Reconcile.test.ts cover the finer behaviour of several of these faults
 * (rollback order, retransmissions joining, the mapping completing after a slow answer, state-loss re-mapping).
 */
import { afterAll, describe, expect, it } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import type { BridgeHarness, LanClient } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import { eventually, harness, ownRules } from "./helpers.js"

type Harness = BridgeHarness.BridgeHarness

/** What is wrong between the bridge's leases, its rules on the router and its mappings on the VPN. */
const inconsistencies = (h: Harness) =>
  Effect.gen(function*() {
    const rules = yield* ownRules(h)
    const leases = yield* h.bridge.mapping.leases
    const mappings = yield* h.vpn.mappings
    const problems: Array<string> = []
    for (const rule of rules) {
      const lease = leases.find((lease) => lease.ruleId === rule[".id"])
      if (lease === undefined) {
        problems.push(`orphaned rule ${rule[".id"]} ${rule.comment}`)
        continue
      }
      const upstream = mappings.find((m) => m.protocol === lease.protocol && m.internalPort === lease.upstreamPort)
      if (upstream === undefined) problems.push(`rule ${rule[".id"]} without a VPN mapping`)
      else if (rule["dst-port"] !== String(upstream.externalPort)) {
        problems.push(`rule ${rule[".id"]} matches port ${rule["dst-port"]}, the VPN forwards ${upstream.externalPort}`)
      }
      if (rule.disabled === "true") problems.push(`rule ${rule[".id"]} is disabled`)
    }
    for (const lease of leases) {
      if (!rules.some((rule) => rule[".id"] === lease.ruleId)) {
        problems.push(`lease ${lease.client}/${lease.protocol}/${lease.internalPort} without its rule`)
      }
    }
    for (const mapping of mappings) {
      const lease = leases.find((lease) =>
        lease.protocol === mapping.protocol && lease.upstreamPort === mapping.internalPort
      )
      if (lease === undefined) problems.push(`VPN mapping ${mapping.protocol}/${mapping.internalPort} without a rule`)
    }
    return problems
  })

interface Row {
  readonly name: string
  /** Harness options (default: ProtonVPN-like VPN, port mode `same`). */
  readonly options?: BridgeHarness.Options
  /** Runs before the fault (e.g. an existing mapping for a renewal or delete). */
  readonly prepare?: (h: Harness, client: LanClient.LanClient) => Effect.Effect<void, unknown>
  readonly fault: (h: Harness) => Effect.Effect<void, unknown>
  readonly clear: (h: Harness) => Effect.Effect<void, unknown>
  /** The request the client sends while the fault is on (default: a new TCP mapping of 51413). */
  readonly request?: NatPmpMessage.MapRequest
  readonly expectedCode: number
  /** The answer comes within this many milliseconds (the bound plus a margin for a loaded machine). */
  readonly within: number
  /** Inconsistencies left until the next reconciliation (default 0: the request's own rollback cleans up). */
  readonly untilReconcile?: number
  /** Router commands the request may run (checked when given). */
  readonly routerCommands?: ReadonlyArray<string>
  /** Further checks once the fault is cleared and the state has settled. */
  readonly check?: (h: Harness, response: NatPmpMessage.MapResponse) => Effect.Effect<void, unknown>
}

const newMapping: NatPmpMessage.MapRequest = {
  _tag: "MapRequest",
  protocol: "tcp",
  internalPort: 51413,
  suggestedExternalPort: 0,
  lifetime: 3600
}

const mapFirst = (_h: Harness, client: LanClient.LanClient) =>
  Effect.gen(function*() {
    expect((yield* client.map({ protocol: "tcp", internalPort: 51413 })).resultCode).toBe(0)
  })

const ANSWER_BOUND = 2000
const MARGIN = 700

const rows: ReadonlyArray<Row> = [
  // --- router ---------------------------------------------------------------------------------------------------
  {
    name: "router: API service down at request time (connection refused)",
    fault: (h) => Effect.zipRight(h.router.setDown(true), h.router.disconnectAll),
    clear: (h) => h.router.setDown(false),
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN
  },
  {
    name: "router: connection reset on the conflict-check print",
    fault: (h) => h.router.dropAfter(0),
    clear: (h) => h.router.clearFaults,
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN
  },
  {
    name: "router: connection reset on the remove of a delete (the rule waits for reconciliation)",
    prepare: mapFirst,
    fault: (h) => h.router.dropAfter(0),
    clear: (h) => h.router.clearFaults,
    request: { ...newMapping, lifetime: 0 },
    expectedCode: NatPmpMessage.ResultCode.Success,
    within: ANSWER_BOUND + MARGIN,
    untilReconcile: 1
  },
  {
    name: "router: slower than REQUEST_TIMEOUT and the API command timeout",
    options: { bridge: { requestTimeout: "500 millis" } },
    fault: (h) => h.router.setReplyDelay("2500 millis"),
    clear: (h) => h.router.clearFaults,
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: 500 + MARGIN
  },
  {
    name: "router: login rejected at reconnect",
    fault: (h) => Effect.zipRight(h.router.setRejectLogin(true), h.router.disconnectAll),
    clear: (h) => h.router.clearFaults,
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN
  },
  {
    name: "router: !fatal on the next command",
    fault: (h) => h.router.fatalOnNextCommand("out of memory"),
    clear: (h) => h.router.clearFaults,
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN
  },
  {
    name: "router: !trap on add",
    fault: (h) => h.router.trapOn("/ip/firewall/nat/add", "failure: already have such rule"),
    clear: (h) => h.router.clearFaults,
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: ["/ip/firewall/nat/print", "/ip/firewall/nat/add"]
  },
  {
    name: "router: !trap on the set of a renewal whose public port changed (drift until reconciliation)",
    prepare: mapFirst,
    fault: (h) =>
      Effect.zipRight(h.vpn.changePortsOnRenewal(true), h.router.trapOn("/ip/firewall/nat/set", "failure: busy")),
    clear: (h) => Effect.zipRight(h.router.clearFaults, h.vpn.changePortsOnRenewal(false)),
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN,
    untilReconcile: 1
  },
  {
    name: "router: API service down during a plain renewal (no router round trip needed)",
    prepare: mapFirst,
    fault: (h) => Effect.zipRight(h.router.setDown(true), h.router.disconnectAll),
    clear: (h) => h.router.setDown(false),
    request: { ...newMapping, lifetime: 60 },
    expectedCode: NatPmpMessage.ResultCode.Success,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: []
  },
  // --- VPN gateway ----------------------------------------------------------------------------------------------
  {
    name: "VPN: silent",
    fault: (h) => h.vpn.setSilent(true),
    clear: (h) => h.vpn.setSilent(false),
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: []
  },
  {
    name: "VPN: ICMP port unreachable",
    fault: (h) => h.vpn.setUnreachable(true),
    clear: (h) => h.vpn.setUnreachable(false),
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: []
  },
  ...([
    [1, "unsupported version", NatPmpMessage.ResultCode.NetworkFailure],
    [2, "not authorized", NatPmpMessage.ResultCode.NotAuthorized],
    [3, "network failure", NatPmpMessage.ResultCode.NetworkFailure],
    [4, "out of resources", NatPmpMessage.ResultCode.OutOfResources],
    [5, "unsupported opcode", NatPmpMessage.ResultCode.NetworkFailure]
  ] as const).map(([code, what, expected]): Row => ({
    name: `VPN: result ${code} (${what})`,
    fault: (h) => h.vpn.setResultCode(code),
    clear: (h) => h.vpn.setResultCode(undefined),
    expectedCode: expected,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: []
  })),
  {
    name: "VPN: silent on a renewal (the lease keeps its expiry)",
    prepare: mapFirst,
    fault: (h) => h.vpn.setSilent(true),
    clear: (h) => h.vpn.setSilent(false),
    request: { ...newMapping, lifetime: 60 },
    expectedCode: NatPmpMessage.ResultCode.NetworkFailure,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: []
  },
  {
    name: "VPN: result 4 on a renewal (the mapping stays until it expires)",
    prepare: mapFirst,
    fault: (h) => h.vpn.setResultCode(NatPmpMessage.ResultCode.OutOfResources),
    clear: (h) => h.vpn.setResultCode(undefined),
    request: { ...newMapping, lifetime: 60 },
    expectedCode: NatPmpMessage.ResultCode.OutOfResources,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: []
  },
  {
    name: "VPN: epoch reset (state lost) before a renewal",
    prepare: mapFirst,
    fault: (h) => h.vpn.resetEpoch,
    clear: () => Effect.void,
    request: { ...newMapping, lifetime: 60 },
    expectedCode: NatPmpMessage.ResultCode.Success,
    within: ANSWER_BOUND + MARGIN,
    check: (h, response) =>
      Effect.gen(function*() {
        const [upstream] = yield* h.vpn.mappings
        expect(response.externalPort).toBe(upstream.externalPort)
        expect(response.epoch).toBeLessThan(2)
      })
  },
  {
    name: "VPN: public address change",
    prepare: mapFirst,
    fault: (h) => h.vpn.setPublicAddress("198.51.100.7"),
    clear: () => Effect.void,
    expectedCode: NatPmpMessage.ResultCode.Success,
    within: ANSWER_BOUND + MARGIN,
    check: (h) =>
      Effect.gen(function*() {
        yield* h.bridge.mapping.reconcile // refreshes the cached address
        expect(
          yield* eventually(
            Effect.map(h.announcements, (all) => all.some((a) => a.response.publicAddress === "198.51.100.7"))
          )
        ).toBe(true)
      })
  },
  {
    name: "VPN: port change on renewal",
    prepare: mapFirst,
    fault: (h) => h.vpn.changePortsOnRenewal(true),
    clear: (h) => h.vpn.changePortsOnRenewal(false),
    request: { ...newMapping, lifetime: 60 },
    expectedCode: NatPmpMessage.ResultCode.Success,
    within: ANSWER_BOUND + MARGIN,
    routerCommands: ["/ip/firewall/nat/set"],
    check: (h, response) =>
      Effect.gen(function*() {
        const [rule] = yield* ownRules(h)
        expect(rule["dst-port"]).toBe(String(response.externalPort))
      })
  }
]

interface Outcome {
  readonly case: string
  readonly resultCode: number
  readonly answerMs: number
  readonly untilReconcile: number
  readonly orphans: number
}

const outcomes: Array<Outcome> = []

afterAll(() => {
  if (outcomes.length > 0) console.table(outcomes)
})

describe("fault matrix: result code, bounded answer, consistent router and VPN, next request served", () => {
  for (const row of rows) {
    it.live(row.name, () =>
      Effect.gen(function*() {
        const h = yield* harness(row.options)
        const client = yield* h.client("127.0.0.20")
        if (row.prepare !== undefined) yield* row.prepare(h, client)
        yield* h.router.resetCounters
        yield* row.fault(h)
        const request = row.request ?? newMapping
        const { elapsed, response } = yield* client.request(request, { timeout: "5 seconds" })
        const commands = yield* h.router.commandLog
        expect(response).toMatchObject({ _tag: "MapResponse", resultCode: row.expectedCode })
        const answer = response as NatPmpMessage.MapResponse
        if (row.expectedCode !== 0) expect(answer).toMatchObject({ externalPort: 0, lifetime: 0 })
        expect(elapsed).toBeLessThan(row.within)
        if (row.routerCommands !== undefined) expect(commands).toEqual(row.routerCommands)
        yield* row.clear(h)

        // the request's own cleanup (rollback, undo) may still run after the answer: let it settle
        yield* eventually(
          Effect.map(inconsistencies(h), (problems) => problems.length <= (row.untilReconcile ?? 0)),
          5000
        )
        const beforeReconcile = yield* inconsistencies(h)
        expect(beforeReconcile.length, beforeReconcile.join("; ")).toBe(row.untilReconcile ?? 0)
        yield* h.bridge.mapping.reconcile
        const after = yield* inconsistencies(h)
        expect(after).toEqual([])
        if (row.check !== undefined) yield* row.check(h, answer)

        // no crash: the next requests are answered correctly
        const next = yield* client.map({ protocol: "udp", internalPort: 6881 })
        expect(next.resultCode).toBe(0)
        expect((yield* h.vpn.mappings).map((m) => m.externalPort)).toContain(next.externalPort)
        expect((yield* client.publicAddress).resultCode).toBe(0)
        expect(yield* inconsistencies(h)).toEqual([])
        expect((yield* ownRules(h)).length).toBe((yield* h.bridge.mapping.leases).length)
        outcomes.push({
          case: row.name,
          resultCode: answer.resultCode,
          answerMs: elapsed,
          untilReconcile: beforeReconcile.length,
          orphans: after.length
        })
      }).pipe(Effect.scoped), 20_000)
  }
})
