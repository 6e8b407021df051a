/**
 * The built `natpmp-bridge serve` killed or stopped while LAN clients map ports: the RouterOS and VPN simulators run
 * in this process on loopback, the bridge is a child process, 50 clients (127.0.0.64 ... 127.0.0.113) map at once.
 */
import { describe, expect, it } from "@effect/vitest"
import type { NatPmpMessage } from "@natpmp-bridge/core"
import { BridgeHarness, LanClient } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { start } from "./BinRunner.js"
import type { Environment } from "./BridgeFlags.js"
import { passwordEnv, serveFlags } from "./BridgeFlags.js"

const CLIENTS = 50
const clientAddress = (i: number) => `127.0.0.${64 + i}`
const internalPortOf = (i: number) => 20000 + i

const ownRules = (env: Environment, bridgeId: string) =>
  Effect.map(env.router.natRules, (rows) => rows.filter((row) => row.comment?.startsWith(`natpmp-bridge:${bridgeId} `)))

/** Starts the built bin against the simulators and waits until it listens; returns it with its port. */
const serve = (env: Environment, bridgeId: string, extra: ReadonlyArray<string> = []) =>
  Effect.gen(function*() {
    const running = yield* start("natpmp-bridge", [
      "serve",
      ...serveFlags(env, bridgeId, "127.0.0.64/26"),
      ...extra
    ], { env: { ...passwordEnv(env), LOG_LEVEL: "INFO" } })
    const line = yield* running.waitForLine(
      (line) => line.includes("NAT-PMP server listening on"),
      "15 seconds",
      "stderr"
    )
    const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(line)?.[1])
    expect(port).toBeGreaterThan(0)
    return { running, port }
  })

const clientsOf = (port: number) =>
  Effect.forEach(
    Array.from({ length: CLIENTS }, (_, i) => i),
    (i) => LanClient.make({ address: clientAddress(i), bridge: { address: "127.0.0.1", port } })
  )

/** Client i asks for TCP `internalPortOf(i)`, client i starting i × `spacing` ms after the first. */
const burst = (clients: ReadonlyArray<LanClient.LanClient>, spacing: number) =>
  Effect.forEach(
    clients,
    (client, i) =>
      Effect.sleep(`${i * spacing} millis`).pipe(
        Effect.zipRight(client.request({
          _tag: "MapRequest",
          protocol: "tcp",
          internalPort: internalPortOf(i),
          suggestedExternalPort: 0,
          lifetime: 3600
        }, { timeout: "3 seconds" })),
        Effect.map(({ response }) => response as NatPmpMessage.MapResponse),
        Effect.either
      ),
    { concurrency: "unbounded" }
  )

describe("natpmp-bridge serve: process faults", () => {
  it.scopedLive(
    "SIGKILL in a burst, restart with the same BRIDGE_ID: renewals keep their port, no orphan is left",
    () =>
      Effect.gen(function*() {
        const env = yield* BridgeHarness.makeEnvironment()
        const bridgeId = "killtest"
        const first = yield* serve(env, bridgeId)
        // upstream work takes a little time, so the kill finds requests at every step
        yield* env.vpn.setResponseDelay("20 millis")
        yield* env.router.setReplyDelay("20 millis")
        const clients = yield* clientsOf(first.port)
        const answers = yield* Effect.fork(burst(clients, 10))
        // kill once about a third of the clients have their rule
        while ((yield* ownRules(env, bridgeId)).length < CLIENTS / 3) yield* Effect.sleep("5 millis")
        yield* first.running.kill("SIGKILL")
        const killed = yield* first.running.exit
        expect(killed.signal).toBe("SIGKILL")
        const results = yield* answers.await.pipe(Effect.flatten)
        const granted = new Map<number, number>()
        results.forEach((result, i) => {
          if (Either.isRight(result) && result.right.resultCode === 0) granted.set(i, result.right.externalPort)
        })
        const answered = granted.size
        const rulesAtKill = (yield* ownRules(env, bridgeId)).length
        const vpnAtKill = (yield* env.vpn.mappings).length
        expect(answered).toBeGreaterThan(0)
        expect(answered).toBeLessThan(CLIENTS)
        yield* env.vpn.setResponseDelay(0)
        yield* env.router.clearFaults

        const second = yield* serve(env, bridgeId, ["--adoption-grace", "5s", "--reconcile-interval", "500ms"])
        const renewing = yield* clientsOf(second.port)
        const started = Date.now()
        // every client that was granted a port renews it: same port (the VPN kept its mapping)
        const renewals = yield* Effect.forEach(
          granted,
          ([i, externalPort]) =>
            renewing[i].map({
              protocol: "tcp",
              internalPort: internalPortOf(i),
              suggestedExternalPort: externalPort,
              lifetime: 60
            }),
          { concurrency: "unbounded" }
        )
        expect(renewals.map((r) => [r.resultCode, r.externalPort])).toEqual([...granted.values()].map((p) => [0, p]))
        // half of the clients left without an answer retry (like RFC clients retransmitting); the others are gone
        const retried = Array.from({ length: CLIENTS }, (_, i) => i).filter((i) => !granted.has(i) && i % 2 === 0)
        for (const i of retried) {
          const mapped = yield* renewing[i].map({ protocol: "tcp", internalPort: internalPortOf(i), lifetime: 60 })
          expect(mapped.resultCode).toBe(0)
          granted.set(i, mapped.externalPort)
        }
        // after the grace and a reconciliation, the router holds exactly the rules of the clients that came back
        const expected = [...granted.keys()].map((i) =>
          `natpmp-bridge:${bridgeId} tcp ${clientAddress(i)}:${internalPortOf(i)}`
        )
          .sort()
        while (Date.now() - started < 20_000) {
          const comments = (yield* ownRules(env, bridgeId)).map((rule) => rule.comment).sort()
          if (JSON.stringify(comments) === JSON.stringify(expected)) break
          yield* Effect.sleep("100 millis")
        }
        const settledMs = Date.now() - started
        yield* Effect.sleep("600 millis") // one more reconciliation
        const rules = yield* ownRules(env, bridgeId)
        expect(rules.map((rule) => rule.comment).sort()).toEqual(expected)
        const mappings = yield* env.vpn.mappings
        for (const rule of rules) {
          const upstream = mappings.find((m) => m.protocol === "tcp" && m.internalPort === Number(rule["to-ports"]))
          expect(upstream?.externalPort, rule.comment).toBe(Number(rule["dst-port"]))
        }
        // the renewed leases still work, on the restarted bridge
        for (const [i, externalPort] of granted) {
          const again = yield* renewing[i].map({ protocol: "tcp", internalPort: internalPortOf(i), lifetime: 60 })
          expect(again).toMatchObject({ resultCode: 0, externalPort })
        }
        const strayVpn = mappings.filter((m) => !rules.some((rule) => Number(rule["to-ports"]) === m.internalPort))
        console.log(
          `SIGKILL: ${answered}/${CLIENTS} answered before the kill, ${retried.length} retried after the restart, ${rulesAtKill} rule(s) and ${vpnAtKill} VPN ` +
            `mapping(s) at the kill; after restart ${rules.length} rule(s), 0 orphans, settled in ${settledMs} ms; ` +
            `${strayVpn.length} VPN mapping(s) of killed requests left to expire upstream`
        )
        yield* second.running.kill("SIGTERM")
        expect((yield* second.running.exit).code).toBe(0)
        expect(yield* ownRules(env, bridgeId)).toEqual([])
      }),
    60_000
  )

  it.scopedLive(
    "SIGTERM in a burst: the in-flight mappings finish, then no own rule and no VPN mapping is left",
    () =>
      Effect.gen(function*() {
        const env = yield* BridgeHarness.makeEnvironment({
          natRules: [{
            chain: "dstnat",
            action: "dst-nat",
            protocol: "tcp",
            "in-interface": "wg-proton",
            "dst-port": "10000",
            "to-addresses": "127.0.0.70",
            "to-ports": "22",
            comment: "natpmp-bridge:someone-else tcp 127.0.0.70:22"
          }]
        })
        const bridgeId = "termtest"
        // a generous cleanup bound: the test is about what is left, not how fast (the machine may be loaded)
        const bridge = yield* serve(env, bridgeId, ["--shutdown-timeout", "30s"])
        yield* env.vpn.setResponseDelay("20 millis")
        yield* env.router.setReplyDelay("20 millis")
        const clients = yield* clientsOf(bridge.port)
        const answers = yield* Effect.fork(burst(clients, 5))
        while ((yield* ownRules(env, bridgeId)).length < CLIENTS / 3) yield* Effect.sleep("5 millis")
        const signalled = Date.now()
        yield* bridge.running.kill("SIGTERM")
        const exit = yield* bridge.running.exit
        const stopMs = Date.now() - signalled
        expect(exit.code, exit.stderr).toBe(0)
        const results = yield* answers.await.pipe(Effect.flatten)
        const granted = results.filter((result) => Either.isRight(result) && result.right.resultCode === 0).length
        expect(yield* ownRules(env, bridgeId)).toEqual([])
        expect(yield* env.vpn.mappings).toEqual([])
        expect((yield* env.router.natRules).map((rule) => rule.comment)).toEqual([
          "natpmp-bridge:someone-else tcp 127.0.0.70:22"
        ])
        console.log(`SIGTERM: ${granted}/${CLIENTS} answered; stopped and cleaned up in ${stopMs} ms`)
      }),
    60_000
  )
})
