/**
 * The project's NAT-PMP client against software this project did not write: miniupnpd (a real RFC 6886 gateway,
 * Debian's miniupnpd-nftables) and libnatpmp's natpmpc as the reference client, in network namespaces built by
 * NetworkLab. The client runs in the LAN namespace inside the NAT-PMP agent (natPmpAgent.ts); an agent in the
 * "internet" namespace sends traffic to the gateway's external address to prove the port forwards.
 *
 * Needs root and the packages natpmpc, miniupnpd-nftables, nftables and iproute2 (`.ci/run` installs them).
 * Without them the suite is skipped with the reason in its name, except when CI=true: then every test fails with
 * the list of what is missing.
 */
import { assert, describe, expect, layer } from "@effect/vitest"
import type { NatPmpMessage } from "@natpmp-bridge/core"
import { NatPmpClient } from "@natpmp-bridge/core"
import { Natpmpc, NetworkLab } from "@natpmp-bridge/core/testing"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as Url from "node:url"
import type { AgentEvent, AgentOptions, RemoteKeepEvent } from "./AgentProtocol.js"
import type { Agent } from "./LabAgent.js"
import { AgentRequestError, bundleAgent, startAgent } from "./LabAgent.js"

type Protocol = NatPmpMessage.Protocol

const missing = Effect.runSync(NetworkLab.missingPrerequisites())
const skipReason = missing.length > 0 && process.env.CI !== "true" ? `needs ${missing.join(", ")}` : undefined
if (skipReason !== undefined) {
  console.warn(`miniupnpd interop tests skipped: ${skipReason}`)
}

/** The `natpmp` bin as `npm run build` leaves it (tested when built; `npm test` builds first). */
const natpmpBin = Path.join(Path.dirname(Url.fileURLToPath(import.meta.url)), "../../../cli/dist/bin/natpmp.js")
const skipCli = !Fs.existsSync(natpmpBin) && process.env.CI !== "true"

// -----------------------------------------------------------------------------
// the lab
// -----------------------------------------------------------------------------

/** The agent bundled once for all labs of this file. */
class AgentBundle extends Context.Tag("lab/AgentBundle")<AgentBundle, string>() {}

const AgentBundleLive = Layer.scoped(
  AgentBundle,
  Effect.gen(function*() {
    yield* NetworkLab.requirePrerequisites()
    return yield* bundleAgent(yield* NetworkLab.temporaryDirectory("nplab-agent"))
  })
)

interface Lab {
  readonly lab: NetworkLab.GatewayLab
  /** The running miniupnpd. */
  readonly gateway: Effect.Effect<NetworkLab.MiniUpnpd>
  /** Stops miniupnpd and starts a new one (its epoch starts again at 0). */
  readonly restartGateway: Effect.Effect<NetworkLab.MiniUpnpd, NetworkLab.CommandError | NetworkLab.NetworkLabError>
  /** The project's client, in the LAN namespace. */
  readonly client: Agent
  /** Traffic from the internet namespace. */
  readonly internet: Agent
  /** miniupnpd's port forwards, from `nft list ruleset` in the gateway's namespace. */
  readonly dnatRules: Effect.Effect<ReadonlyArray<NetworkLab.DnatRule>, NetworkLab.CommandError>
}

class MiniUpnpdLab extends Context.Tag("lab/MiniUpnpdLab")<MiniUpnpdLab, Lab>() {}

const miniUpnpdLab = (options: {
  readonly miniupnpd?: NetworkLab.StartMiniUpnpdOptions
  readonly agent?: AgentOptions
} = {}) =>
  Layer.scoped(
    MiniUpnpdLab,
    Effect.gen(function*() {
      const bundle = yield* AgentBundle
      const lab = yield* NetworkLab.gatewayLab()
      // miniupnpd lives in a scope of its own, so it can be restarted; it is stopped after the agents.
      type Instance = { readonly gateway: NetworkLab.MiniUpnpd; readonly scope: Scope.CloseableScope }
      let instances = 0
      const start = Effect.gen(function*() {
        const scope = yield* Scope.make()
        const gateway = yield* NetworkLab.startMiniUpnpd(lab, { ...options.miniupnpd, instance: `m${++instances}` })
          .pipe(Scope.extend(scope), Effect.onError(() => Scope.close(scope, Exit.void)))
        return { gateway, scope } satisfies Instance
      })
      const stop = (current: Ref.Ref<Instance>) =>
        Effect.flatMap(Ref.get(current), ({ scope }) => Scope.close(scope, Exit.void))
      const current = yield* Effect.acquireRelease(Effect.flatMap(start, (instance) => Ref.make(instance)), stop)
      const client = yield* startAgent(bundle, lab.cli, {
        gateway: lab.lan.gateway,
        announcements: true,
        ...options.agent
      })
      const internet = yield* startAgent(bundle, lab.inet)
      return {
        lab,
        gateway: Effect.map(Ref.get(current), ({ gateway }) => gateway),
        restartGateway: stop(current).pipe(
          Effect.zipRight(start),
          Effect.tap((instance) => Ref.set(current, instance)),
          Effect.map(({ gateway }) => gateway)
        ),
        client,
        internet,
        dnatRules: Effect.map(
          lab.vpn.run(["nft", "list", "ruleset"]),
          ({ stdout }) => NetworkLab.parseDnatRules(stdout)
        )
      } satisfies Lab
    })
  )

// -----------------------------------------------------------------------------
// helpers
// -----------------------------------------------------------------------------

const publicAddress = (agent: Agent) => agent.request<NatPmpClient.PublicAddressInfo>({ op: "publicAddress" })
const map = (agent: Agent, options: NatPmpClient.MapOptions) =>
  agent.request<NatPmpClient.Mapping>({ op: "map", options })
const unmap = (agent: Agent, protocol: Protocol, internalPort: number) =>
  agent.request({ op: "unmap", protocol, internalPort })

/** Deletes every mapping of the client (ours and natpmpc's: same address) when the test ends, pass or fail. */
const cleanSlate = Effect.gen(function*() {
  const { client } = yield* MiniUpnpdLab
  yield* Effect.addFinalizer(() =>
    Effect.all([
      client.request({ op: "unmapAll", protocol: "tcp" }),
      client.request({ op: "unmapAll", protocol: "udp" })
    ])
      .pipe(Effect.ignore)
  )
})

const rulesTo = (internalPort: number) =>
  Effect.flatMap(
    MiniUpnpdLab,
    ({ dnatRules }) => Effect.map(dnatRules, (rules) => rules.filter((rule) => rule.internalPort === internalPort))
  )

const eventually = NetworkLab.eventually

const isKeepEvent = (key: string, tag: RemoteKeepEvent["_tag"], reason?: NatPmpClient.KeepReason) =>
(
  event: AgentEvent
): event is Extract<AgentEvent, { event: "keep" }> =>
  event.event === "keep" && event.key === key && event.keepEvent._tag === tag &&
  (reason === undefined || event.keepEvent.reason === reason)

const isTraffic = (protocol: Protocol, port: number) =>
(
  event: AgentEvent
): event is Extract<AgentEvent, { event: "traffic" }> =>
  event.event === "traffic" && event.protocol === protocol && event.port === port

const keepEvents = (agent: Agent, key: string) =>
  Effect.map(
    agent.events,
    (events) => events.flatMap((event) => event.event === "keep" && event.key === key ? [event.keepEvent] : [])
  )

/** The error the agent reported for a request that failed. */
const remoteError = <A, R>(effect: Effect.Effect<A, AgentRequestError | NetworkLab.NetworkLabError, R>) =>
  Effect.map(Effect.flip(effect), (error) => {
    assert(error instanceof AgentRequestError, `expected the agent to report an error, got: ${error.message}`)
    return error.remote
  })

const timed = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const started = Date.now()
    const value = yield* effect
    return { value, millis: Date.now() - started }
  })

// -----------------------------------------------------------------------------
// tests
// -----------------------------------------------------------------------------

describe.skipIf(skipReason !== undefined)(
  `NAT-PMP client against miniupnpd and natpmpc${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    layer(AgentBundleLive, { excludeTestServices: true, timeout: Duration.seconds(20) })((it) => {
      it.layer(miniUpnpdLab(), { timeout: Duration.seconds(20) })("a gateway with a public address", (it) => {
        it.effect("reports miniupnpd's ext_ip as the public address, as natpmpc does", () =>
          Effect.gen(function*() {
            const { client, lab } = yield* MiniUpnpdLab
            const ours = yield* publicAddress(client)
            const theirs = yield* Natpmpc.publicAddress(lab.cli, lab.lan.gateway)
            expect(ours.publicAddress).toBe("5.6.7.8")
            expect(theirs.publicAddress).toBe(ours.publicAddress)
            expect(Math.abs(theirs.epoch - ours.epoch)).toBeLessThanOrEqual(1)
          }))

        for (const [protocol, internalPort, externalPort] of [["tcp", 41000, 45000], ["udp", 41001, 45001]] as const) {
          it.scoped(
            `maps ${protocol} to the suggested port: a dnat rule appears, traffic from outside arrives, unmap removes it`,
            () =>
              Effect.gen(function*() {
                yield* cleanSlate
                const { client, internet, lab } = yield* MiniUpnpdLab
                yield* client.request({ op: "serve", protocol, port: internalPort })

                const mapping = yield* map(client, {
                  protocol,
                  internalPort,
                  suggestedExternalPort: externalPort,
                  lifetime: 3600
                })
                expect(mapping).toMatchObject({ protocol, internalPort, externalPort, lifetime: 3600 })
                expect(yield* rulesTo(internalPort)).toStrictEqual([
                  { protocol, externalPort, address: lab.lan.client, internalPort }
                ])

                // internet → ext0:externalPort → dnat → client:internalPort, the source address kept
                const echo = yield* internet.request<{ reply: string }>({
                  op: "send",
                  protocol,
                  address: lab.ext.gateway,
                  port: externalPort,
                  payload: `hello over ${protocol}`
                })
                expect(echo.reply).toBe(`hello over ${protocol}`)
                const traffic = yield* client.waitForEvent(isTraffic(protocol, internalPort), "traffic at the client")
                expect(traffic.from).toBe(lab.ext.peer)

                yield* unmap(client, protocol, internalPort)
                expect(yield* rulesTo(internalPort)).toStrictEqual([])
                if (protocol === "tcp") {
                  // nothing forwards the port any more: the gateway itself refuses the connection
                  const refused = yield* remoteError(internet.request({
                    op: "send",
                    protocol,
                    address: lab.ext.gateway,
                    port: externalPort,
                    payload: "again"
                  }))
                  expect(refused.message).toContain("ECONNREFUSED")
                }
              })
          )

          it.scoped(`natpmpc gets the same ${protocol} mapping and deletion answer for the same request`, () =>
            Effect.gen(function*() {
              yield* cleanSlate
              const { client, lab } = yield* MiniUpnpdLab
              const request = { protocol, internalPort: 42000, suggestedExternalPort: 46000, lifetime: 600 }

              const ours = yield* map(client, request)
              const ourRules = yield* rulesTo(42000)
              const ourDeletion = yield* map(client, { ...request, suggestedExternalPort: 0, lifetime: 0 })
              expect(yield* rulesTo(42000)).toStrictEqual([])

              const natpmpc = (publicPort: number, lifetime: number) =>
                Natpmpc.map(lab.cli, lab.lan.gateway, { protocol, publicPort, privatePort: 42000, lifetime })
              const theirs = yield* natpmpc(46000, 600)
              const theirRules = yield* rulesTo(42000)
              const theirDeletion = yield* natpmpc(0, 0)
              expect(yield* rulesTo(42000)).toStrictEqual([])

              const withoutEpoch = ({ epoch: _, ...rest }: NatPmpClient.Mapping | Natpmpc.Mapping) => rest
              expect(withoutEpoch(ours)).toStrictEqual({
                protocol,
                internalPort: 42000,
                externalPort: 46000,
                lifetime: 600
              })
              expect(withoutEpoch(theirs)).toStrictEqual(withoutEpoch(ours))
              expect(theirRules).toStrictEqual(ourRules)
              expect(withoutEpoch(ourDeletion)).toStrictEqual({
                protocol,
                internalPort: 42000,
                externalPort: 0,
                lifetime: 0
              })
              expect(withoutEpoch(theirDeletion)).toStrictEqual(withoutEpoch(ourDeletion))
            }))
        }

        it.scoped.skipIf(skipCli)(
          "the natpmp CLI (built bin, --json) gets the same answers as natpmpc",
          () =>
            Effect.gen(function*() {
              yield* cleanSlate
              const { lab } = yield* MiniUpnpdLab
              const natpmp = (...args: ReadonlyArray<string>) =>
                Effect.map(
                  lab.cli.run([process.execPath, natpmpBin, ...args, "-g", lab.lan.gateway, "--json"]),
                  ({ stdout }) => JSON.parse(stdout.trim().split("\n")[0]) as Record<string, unknown>
                )
              const address = yield* natpmp("address")
              expect(address).toMatchObject({ type: "address", publicAddress: "5.6.7.8" })

              const ours = yield* natpmp("map", "-u", "-l", "600", "46200", "42200")
              expect(ours).toMatchObject({
                type: "mapped",
                publicAddress: "5.6.7.8",
                protocol: "udp",
                internalPort: 42200,
                externalPort: 46200,
                lifetime: 600
              })
              yield* natpmp("unmap", "-u", "42200")
              expect(yield* rulesTo(42200)).toStrictEqual([])
              const theirs = yield* Natpmpc.map(lab.cli, lab.lan.gateway, {
                protocol: "udp",
                publicPort: 46200,
                privatePort: 42200,
                lifetime: 600
              })
              expect(theirs).toMatchObject({ externalPort: ours.externalPort, lifetime: ours.lifetime })
            })
        )

        it.scoped("returns the existing mapping for a repeated request; a taken port makes it pick the next one", () =>
          Effect.gen(function*() {
            yield* cleanSlate
            const { client, lab } = yield* MiniUpnpdLab
            // no suggestion: miniupnpd tries the internal port first
            const first = yield* map(client, { protocol: "tcp", internalPort: 43000, lifetime: 600 })
            expect(first.externalPort).toBe(43000)
            const again = yield* map(client, { protocol: "tcp", internalPort: 43000, lifetime: 600 })
            expect(again.externalPort).toBe(43000)
            expect(yield* rulesTo(43000)).toHaveLength(1)

            // 43000 belongs to another mapping: miniupnpd walks up to the next free port
            const other = yield* map(client, {
              protocol: "tcp",
              internalPort: 43001,
              suggestedExternalPort: 43000,
              lifetime: 600
            })
            expect(other.externalPort).toBe(43001)
            const theirs = yield* Natpmpc.map(lab.cli, lab.lan.gateway, {
              protocol: "tcp",
              publicPort: 43000,
              privatePort: 43001,
              lifetime: 600
            })
            expect(theirs.externalPort).toBe(43001)
            expect(yield* rulesTo(43001)).toStrictEqual([
              { protocol: "tcp", externalPort: 43001, address: lab.lan.client, internalPort: 43001 }
            ])
          }))

        it.scoped("adds a second mapping when an existing one is requested with another suggested port", () =>
          Effect.gen(function*() {
            yield* cleanSlate
            const { client } = yield* MiniUpnpdLab
            // RFC 6886 §3.3 says return the existing mapping; miniupnpd 2.3 maps the new port as well.
            const first = yield* map(client, {
              protocol: "udp",
              internalPort: 43100,
              suggestedExternalPort: 47000,
              lifetime: 600
            })
            const second = yield* map(client, {
              protocol: "udp",
              internalPort: 43100,
              suggestedExternalPort: 47100,
              lifetime: 600
            })
            expect([first.externalPort, second.externalPort]).toStrictEqual([47000, 47100])
            expect((yield* rulesTo(43100)).map((rule) => rule.externalPort).sort()).toStrictEqual([47000, 47100])
            // a delete removes every mapping of the internal port
            yield* unmap(client, "udp", 43100)
            expect(yield* rulesTo(43100)).toStrictEqual([])
          }))

        it.scoped("moves a suggested port outside the allowed range to the first allowed one (1024)", () =>
          Effect.gen(function*() {
            yield* cleanSlate
            const { client } = yield* MiniUpnpdLab
            const mapping = yield* map(client, {
              protocol: "tcp",
              internalPort: 43200,
              suggestedExternalPort: 80,
              lifetime: 600
            })
            expect(mapping).toMatchObject({ internalPort: 43200, externalPort: 1024 })
          }))

        it.scoped("grants the lifetime asked for, however long (no cap)", () =>
          Effect.gen(function*() {
            yield* cleanSlate
            const { client, lab } = yield* MiniUpnpdLab
            const ours = yield* map(client, { protocol: "udp", internalPort: 43300, lifetime: 100_000_000 })
            expect(ours.lifetime).toBe(100_000_000)
            const theirs = yield* Natpmpc.map(lab.cli, lab.lan.gateway, {
              protocol: "udp",
              publicPort: 0,
              privatePort: 43301,
              lifetime: 100_000_000
            })
            expect(theirs.lifetime).toBe(100_000_000)
          }))

        it.scoped("unmapAll deletes every mapping of the client, of both protocols, as natpmpc's does", () =>
          Effect.gen(function*() {
            yield* cleanSlate
            const { client, dnatRules, lab } = yield* MiniUpnpdLab
            const mapThree = Effect.gen(function*() {
              yield* map(client, { protocol: "udp", internalPort: 43400, lifetime: 600 })
              yield* map(client, { protocol: "udp", internalPort: 43401, lifetime: 600 })
              yield* map(client, { protocol: "tcp", internalPort: 43402, lifetime: 600 })
              expect((yield* dnatRules).map((rule) => `${rule.protocol}/${rule.internalPort}`).sort()).toStrictEqual([
                "tcp/43402",
                "udp/43400",
                "udp/43401"
              ])
            })
            // RFC 6886 §3.4 deletes the client's mappings of the request's protocol; miniupnpd 2.3 deletes all of them
            yield* mapThree
            yield* client.request({ op: "unmapAll", protocol: "udp" })
            expect(yield* dnatRules).toStrictEqual([])

            yield* mapThree
            const theirs = yield* Natpmpc.map(lab.cli, lab.lan.gateway, {
              protocol: "udp",
              publicPort: 0,
              privatePort: 0,
              lifetime: 0
            })
            expect(theirs).toMatchObject({ internalPort: 0, externalPort: 0, lifetime: 0 })
            expect(yield* dnatRules).toStrictEqual([])
          }))

        it.scoped("keep renews at half the lifetime: its rule outlives an unrenewed mapping's; release deletes it", () =>
          Effect.gen(function*() {
            yield* cleanSlate
            const { client } = yield* MiniUpnpdLab
            yield* Effect.addFinalizer(() => Effect.ignore(client.request({ op: "release", key: "renew" })))
            const control = yield* map(client, { protocol: "tcp", internalPort: 44000, lifetime: 3 })
            expect(control.lifetime).toBe(3)
            const kept = yield* client.request<NatPmpClient.Mapping>({
              op: "keep",
              key: "renew",
              options: { protocol: "tcp", internalPort: 44001, lifetime: 2 }
            })
            expect(kept).toMatchObject({ internalPort: 44001, externalPort: 44001, lifetime: 2 })

            // miniupnpd removes the unrenewed mapping once its 2 s are over; the kept one is renewed every second
            const { millis } = yield* timed(
              eventually(rulesTo(44000), (rules) => rules.length === 0, "expiry", "6 seconds")
            )
            expect(millis).toBeGreaterThan(1000)
            const renewals = (yield* keepEvents(client, "renew")).filter((event) =>
              event._tag === "Mapped" && event.reason === "renewal"
            )
            expect(renewals.length).toBeGreaterThanOrEqual(1)
            expect(renewals.every((event) => event.mapping?.externalPort === 44001)).toBe(true)
            expect(yield* rulesTo(44001)).toHaveLength(1)

            yield* client.request({ op: "release", key: "renew" })
            yield* client.waitForEvent(isKeepEvent("renew", "Unmapped"), "the keep-alive's Unmapped event")
            expect(yield* rulesTo(44001)).toStrictEqual([])
          }))

        it.scoped("after a gateway restart, its announcement reveals the epoch reset and keep re-maps at once", () =>
          Effect.gen(function*() {
            yield* cleanSlate
            const { client, restartGateway } = yield* MiniUpnpdLab
            yield* Effect.addFinalizer(() => Effect.ignore(client.request({ op: "release", key: "restart" })))
            yield* client.request({
              op: "keep",
              key: "restart",
              options: { protocol: "tcp", internalPort: 44100, lifetime: 600 }
            })
            // the reset shows once the epoch is clearly lower than 7/8 of the time since the last answer (RFC §3.6)
            const { epoch } = yield* publicAddress(client)
            if (epoch < 4) {
              yield* Effect.sleep(Duration.seconds(4 - epoch))
              yield* publicAddress(client)
            }

            const restarted = yield* restartGateway
            yield* restarted.process.signal("SIGUSR1") // miniupnpd announces its public address on SIGUSR1
            const reset = yield* client.waitForEvent(
              (event): event is Extract<AgentEvent, { event: "gateway" }> =>
                event.event === "gateway" && event.gatewayEvent._tag === "GatewayReset",
              "a GatewayReset event"
            )
            assert(reset.gatewayEvent._tag === "GatewayReset")
            expect(reset.gatewayEvent.epoch).toBeLessThanOrEqual(1)
            expect(reset.gatewayEvent.previousEpoch).toBeGreaterThanOrEqual(4)
            const remapped = yield* client.waitForEvent(
              isKeepEvent("restart", "Mapped", "gateway-reset"),
              "the keep-alive's re-mapping"
            )
            expect(remapped.keepEvent.mapping).toMatchObject({ internalPort: 44100, externalPort: 44100 })
            expect(yield* rulesTo(44100)).toHaveLength(1)
          }))
      })

      it.layer(miniUpnpdLab({ agent: { initialTimeoutMillis: 5000, maxAttempts: 1 } }), {
        timeout: Duration.seconds(20)
      })("a gateway that refuses a port", (it) => {
        it.effect("refuses an internal port outside its allow range with result 2, as natpmpc reports", () =>
          Effect.gen(function*() {
            const { client, dnatRules, lab } = yield* MiniUpnpdLab
            // miniupnpd tries all 65535 external ports before it refuses (~1.3 s here), hence one send and 5 s
            const { value: refused, millis } = yield* timed(
              remoteError(map(client, { protocol: "tcp", internalPort: 80, lifetime: 600 }))
            )
            expect(refused).toMatchObject({ _tag: "NatPmpResultError", resultCode: 2, opcode: 2 })
            expect(refused.message).toBe(
              new NatPmpClient.NatPmpResultError({ gateway: `${lab.lan.gateway}:5351`, opcode: 2, resultCode: 2 })
                .message
            )
            console.log(`miniupnpd refused the mapping after ${millis} ms`)

            const theirs = yield* Effect.flip(
              Natpmpc.map(lab.cli, lab.lan.gateway, { protocol: "tcp", publicPort: 0, privatePort: 80, lifetime: 600 })
            )
            expect(theirs.reason).toBe("failed: not authorized")
            expect(yield* dnatRules).toStrictEqual([])
          }))
      })

      it.layer(miniUpnpdLab({ miniupnpd: { extIp: false, requireSuccess: false } }), {
        timeout: Duration.seconds(20)
      })("a gateway without a public address", (it) => {
        it.effect("answers every request with result 3 (network failure)", () =>
          Effect.gen(function*() {
            const { client, gateway, lab } = yield* MiniUpnpdLab
            expect((yield* gateway).firstAnswer).toMatchObject({ _tag: "PublicAddressResponse", resultCode: 3 })
            const address = yield* remoteError(publicAddress(client))
            expect(address).toMatchObject({ _tag: "NatPmpResultError", resultCode: 3, opcode: 0 })
            const mapping = yield* remoteError(map(client, { protocol: "udp", internalPort: 41000, lifetime: 600 }))
            expect(mapping).toMatchObject({ _tag: "NatPmpResultError", resultCode: 3, opcode: 1 })
            expect(mapping.message).toContain("network failure")

            const theirs = yield* Effect.flip(Natpmpc.publicAddress(lab.cli, lab.lan.gateway))
            expect(theirs.output).toContain("network failure")
          }))
      })
    })
  }
)
