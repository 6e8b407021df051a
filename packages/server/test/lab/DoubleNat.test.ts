/**
 * The bridge (the built `natpmp-bridge serve` bin) against software this project did not write, in network
 * namespaces built by NetworkLab: miniupnpd (Debian's miniupnpd-nftables) is the VPN gateway, libnatpmp's natpmpc
 * the LAN client, and the router is the RouterOS simulator whose dst-nat rules are real nftables rules (NftDstNat),
 * so traffic from the "internet" crosses both NAT layers to a listener on the LAN.
 *
 * ```
 *   ns lan (natpmpc,        ns router (natpmp-bridge serve,       ns vpn (miniupnpd,       ns inet
 *   echo server)            RouterOS simulator + nftables)        nftables dnat)
 *   eth0 ---------------- lan0 | wg0 ---------------------------- vpnlan | ext0 ----------- eth0
 * ```
 *
 * Needs root and the packages natpmpc, miniupnpd-nftables, nftables and iproute2 (`.ci/run` installs them), and the
 * built bins (`npm run build`). Without them the suite is skipped with the reason in its name, except when CI=true:
 * then it fails with the list of what is missing.
 */
import { describe, expect, layer } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import type { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import { Natpmpc, NetworkLab, NftDstNat } from "@natpmp-bridge/core/testing"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Ref from "effect/Ref"
import * as Scope from "effect/Scope"
import * as Fs from "node:fs"
import type { BridgeProcess, RouterAgent } from "./BridgeLab.js"
import { bridgeBin, bundleRouterAgent, startBridge, startRouterAgent } from "./BridgeLab.js"

type Protocol = NatPmpMessage.Protocol

const missing = [
  ...Effect.runSync(NetworkLab.missingPrerequisites()),
  ...(Fs.existsSync(bridgeBin) ? [] : ["the built natpmp-bridge bin (npm run build)"])
]
const skipReason = missing.length > 0 && process.env.CI !== "true" ? `needs ${missing.join(", ")}` : undefined
if (skipReason !== undefined) {
  console.warn(`bridge lab tests skipped: ${skipReason}`)
}

const bridgeId = "lab"
const publicAddress = "5.6.7.8"

// -----------------------------------------------------------------------------
// the lab
// -----------------------------------------------------------------------------

interface Lab {
  readonly net: NetworkLab.DoubleNatLab
  readonly router: RouterAgent
  /**
   * A VPN gateway that restarts and loses its state: stops miniupnpd, deletes its port forwards (it leaves them in
   * nftables when it stops, and a new one would take them over) and starts a new one, whose epoch starts at 0.
   */
  readonly restartMiniUpnpd: Effect.Effect<void, NetworkLab.CommandError | NetworkLab.NetworkLabError>
  /** Starts the bridge (translate mode, plus `flags`) in the router namespace, for the current scope. */
  readonly startBridge: (
    ...flags: ReadonlyArray<string>
  ) => Effect.Effect<BridgeProcess, NetworkLab.NetworkLabError, Scope.Scope>
}

class BridgeLab extends Context.Tag("lab/BridgeLab")<BridgeLab, Lab>() {}

const BridgeLabLive = Layer.scoped(
  BridgeLab,
  Effect.gen(function*() {
    if (missing.length > 0) return yield* new NetworkLab.MissingPrerequisitesError({ missing })
    const net = yield* NetworkLab.doubleNatLab()
    const bundle = yield* bundleRouterAgent(net.directory)
    // miniupnpd lives in a scope of its own, so it can be restarted; it stops before the namespaces go
    let instances = 0
    const startMiniUpnpd = Effect.gen(function*() {
      const scope = yield* Scope.make()
      yield* NetworkLab.startMiniUpnpd(net.gatewayLab, { extIp: publicAddress, instance: `m${++instances}` }).pipe(
        Scope.extend(scope),
        Effect.onError(() => Scope.close(scope, Exit.void))
      )
      return scope
    })
    const current = yield* Effect.acquireRelease(
      Effect.flatMap(startMiniUpnpd, (scope) => Ref.make(scope)),
      (ref) => Effect.flatMap(Ref.get(ref), (scope) => Scope.close(scope, Exit.void))
    )
    const router = yield* startRouterAgent(bundle, net.router, {
      password: "lab-secret",
      seed: {
        vpnInterface: net.vpnLink.routerInterface,
        vpnGateway: net.vpnLink.gateway,
        lanInterface: net.home.routerInterface,
        lanAddress: `${net.home.router}/24`
      }
    })
    return {
      net,
      router,
      restartMiniUpnpd: Effect.gen(function*() {
        yield* Scope.close(yield* Ref.get(current), Exit.void)
        yield* net.vpn.run(["nft", "-f", "-"], {
          input: ["miniupnpd", "prerouting_miniupnpd", "postrouting_miniupnpd"]
            .map((chain) => `flush chain inet filter ${chain}\n`).join("")
        })
        yield* Ref.set(current, yield* startMiniUpnpd)
      }),
      startBridge: (...flags) =>
        startBridge(net.router, router, [
          "--vpn-gateway",
          net.vpnLink.gateway,
          "--vpn-port-mode",
          "translate",
          "--bridge-id",
          bridgeId,
          "--log-level",
          "DEBUG",
          ...flags
        ])
    } satisfies Lab
  })
)

/** One bridge for the tests that do not start or stop it themselves. */
class SharedBridge extends Context.Tag("lab/SharedBridge")<SharedBridge, BridgeProcess>() {}

const SharedBridgeLive = Layer.scoped(SharedBridge, Effect.flatMap(BridgeLab, ({ startBridge }) => startBridge()))

// -----------------------------------------------------------------------------
// helpers
// -----------------------------------------------------------------------------

const ownRules = (rows: ReadonlyArray<RouterOsSimulator.Row>) =>
  rows.filter((row) => row.comment?.startsWith(`natpmp-bridge:${bridgeId} `))

/** miniupnpd's port forwards (nft dnat rules in the VPN namespace). */
const vpnForwards = Effect.flatMap(
  BridgeLab,
  ({ net }) => Effect.map(net.vpn.run(["nft", "list", "ruleset"]), ({ stdout }) => NetworkLab.parseDnatRules(stdout))
)

/** natpmpc in the LAN namespace, against the bridge. */
const natpmpcMap = (protocol: Protocol, publicPort: number, privatePort: number, lifetime: number) =>
  Effect.flatMap(
    BridgeLab,
    ({ net }) => Natpmpc.map(net.lan, net.home.router, { protocol, publicPort, privatePort, lifetime })
  )

const eventually = NetworkLab.eventually

/** The router and the VPN hold nothing of the bridge (nor stale nftables rules). */
const expectClean = Effect.gen(function*() {
  const { router } = yield* BridgeLab
  yield* router.waitFor(
    (state) => ownRules(state.natRules).length === 0 && state.nftRules.length === 0,
    "no rule of the bridge"
  )
  // (the VPN mapping may go a moment after the rule)
  yield* eventually(vpnForwards, (forwards) => forwards.length === 0, "no port forward at the VPN gateway")
  expect((yield* router.state).problems).toStrictEqual([])
})

// -----------------------------------------------------------------------------
// tests
// -----------------------------------------------------------------------------

describe.skipIf(skipReason !== undefined)(
  `natpmp-bridge between natpmpc and miniupnpd${skipReason ? ` (skipped: ${skipReason})` : ""}`,
  () => {
    layer(BridgeLabLive, { excludeTestServices: true, timeout: Duration.seconds(30) })((it) => {
      it.layer(SharedBridgeLive, { timeout: Duration.seconds(30) })("one bridge for the mapping basics", (it) => {
        it.scoped("natpmpc gets the VPN's public address through the bridge", () =>
          Effect.gen(function*() {
            const { net } = yield* BridgeLab
            const answer = yield* Natpmpc.publicAddress(net.lan, net.home.router)
            expect(answer.publicAddress).toBe(publicAddress)
          }))

        for (const [protocol, privatePort, publicPort] of [["tcp", 41000, 45000], ["udp", 41001, 45001]] as const) {
          it.scoped(
            `natpmpc maps ${protocol}: miniupnpd forwards to the router, the router's dst-nat rule to the client; ` +
              "natpmpc's delete removes both",
            () =>
              Effect.gen(function*() {
                const { net, router } = yield* BridgeLab
                const mapped = yield* natpmpcMap(protocol, publicPort, privatePort, 600)
                expect(mapped).toMatchObject({ protocol, internalPort: privatePort, externalPort: publicPort })
                expect(mapped.lifetime).toBe(600)

                // the VPN gateway forwards the public port to the router's address, on the client's port (translate)
                expect(yield* vpnForwards).toStrictEqual([
                  { protocol, externalPort: publicPort, address: net.vpnLink.router, internalPort: privatePort }
                ])
                // the router's rule: from the VPN interface, that port, to the client
                const state = yield* router.waitFor((s) => ownRules(s.natRules).length === 1, "the bridge's rule")
                expect(ownRules(state.natRules)[0]).toMatchObject({
                  chain: "dstnat",
                  action: "dst-nat",
                  protocol,
                  "in-interface": net.vpnLink.routerInterface,
                  "dst-port": String(privatePort),
                  "to-addresses": net.home.client,
                  "to-ports": String(privatePort),
                  comment: `natpmp-bridge:${bridgeId} ${protocol} ${net.home.client}:${privatePort}`
                })
                expect(state.nftRules).toStrictEqual([
                  `iifname "${net.vpnLink.routerInterface}" ${protocol} dport ${privatePort} dnat to ${net.home.client}:${privatePort} comment "${
                    ownRules(state.natRules)[0][".id"]
                  }"`
                ])

                // loaded into the router namespace's nftables
                expect(yield* NftDstNat.list({ namespace: net.router })).toContain(
                  `${protocol} dport ${privatePort} dnat to ${net.home.client}:${privatePort}`
                )

                const deleted = yield* natpmpcMap(protocol, 0, privatePort, 0)
                expect(deleted).toMatchObject({ protocol, internalPort: privatePort, externalPort: 0, lifetime: 0 })
                yield* expectClean
              })
          )
        }

        it.scoped("traffic from the internet reaches a LAN listener through both NAT layers, and its reply comes back", () =>
          Effect.gen(function*() {
            const { net } = yield* BridgeLab
            for (const [protocol, privatePort, publicPort] of [["tcp", 42000, 46000], ["udp", 42001, 46001]] as const) {
              const server = yield* NetworkLab.echoServer(net.lan, protocol, privatePort)
              const mapped = yield* natpmpcMap(protocol, publicPort, privatePort, 600)
              expect(mapped.externalPort).toBe(publicPort)

              // internet → ext0:P → (miniupnpd dnat) → router:X → (router dst-nat) → client:X, and back
              const reply = yield* NetworkLab.sendAndReceive(
                net.inet,
                protocol,
                net.ext.gateway,
                mapped.externalPort,
                `hello over ${protocol}`
              )
              expect(reply).toBe(`echo hello over ${protocol}`)
              // the client sees the internet peer's own address: neither layer rewrote the source
              expect((yield* server.received).map(({ from, payload }) => ({ from, payload }))).toStrictEqual([
                { from: net.ext.peer, payload: `hello over ${protocol}` }
              ])

              yield* natpmpcMap(protocol, 0, privatePort, 0)
              if (protocol === "tcp") {
                // nothing forwards the port any more: the gateway itself refuses the connection
                const refused = yield* Effect.flip(
                  NetworkLab.sendAndReceive(net.inet, protocol, net.ext.gateway, mapped.externalPort, "again")
                )
                expect(refused.stderr).toContain("ECONNREFUSED")
              }
            }
            yield* expectClean
          }))

        it.scoped(
          "a port taken by someone else's router rule: the bridge asks the VPN for another one, and traffic flows",
          () =>
            Effect.gen(function*() {
              const { net, router } = yield* BridgeLab
              // someone's own forward of port 44500 on the VPN interface, to another LAN host
              const foreign = yield* router.addNatRule({
                chain: "dstnat",
                action: "dst-nat",
                protocol: "tcp",
                "in-interface": net.vpnLink.routerInterface,
                "dst-port": "44500",
                "to-addresses": "10.0.0.99",
                "to-ports": "80",
                comment: "a forward of the router's owner"
              })
              yield* Effect.addFinalizer(() => Effect.ignore(router.removeNatRule(foreign)))
              yield* NetworkLab.echoServer(net.lan, "tcp", 44500)

              // translate mode: the client's port is taken on the router, so the suggested port carries it
              const mapped = yield* natpmpcMap("tcp", 48500, 44500, 600)
              expect(mapped).toMatchObject({ internalPort: 44500, externalPort: 48500 })
              expect(yield* vpnForwards).toStrictEqual([
                { protocol: "tcp", externalPort: 48500, address: net.vpnLink.router, internalPort: 48500 }
              ])
              const state = yield* router.waitFor((s) => ownRules(s.natRules).length === 1, "the bridge's rule")
              expect(ownRules(state.natRules)[0]).toMatchObject({ "dst-port": "48500", "to-ports": "44500" })
              // the foreign rule is untouched
              expect(state.natRules.find((row) => row[".id"] === foreign)).toMatchObject({
                "dst-port": "44500",
                "to-addresses": "10.0.0.99"
              })
              const reply = yield* NetworkLab.sendAndReceive(net.inet, "tcp", net.ext.gateway, 48500, "around it")
              expect(reply).toBe("echo around it")

              yield* natpmpcMap("tcp", 0, 44500, 0)
              yield* router.removeNatRule(foreign)
              yield* expectClean
            })
        )

        it.scoped("natpmpc's delete of internal port 0 removes all of the client's mappings of that protocol", () =>
          Effect.gen(function*() {
            const { router } = yield* BridgeLab
            yield* natpmpcMap("tcp", 0, 43100, 600)
            yield* natpmpcMap("tcp", 0, 43101, 600)
            yield* natpmpcMap("udp", 0, 43102, 600)
            yield* router.waitFor((state) => ownRules(state.natRules).length === 3, "three rules")

            const deleted = yield* natpmpcMap("tcp", 0, 0, 0)
            expect(deleted).toMatchObject({ protocol: "tcp", internalPort: 0, externalPort: 0, lifetime: 0 })
            const state = yield* router.waitFor((s) => ownRules(s.natRules).length === 1, "only the UDP rule")
            expect(ownRules(state.natRules)[0]).toMatchObject({ protocol: "udp", "dst-port": "43102" })
            expect((yield* vpnForwards).map((rule) => `${rule.protocol}/${rule.internalPort}`)).toStrictEqual([
              "udp/43102"
            ])
            yield* natpmpcMap("udp", 0, 43102, 0)
            yield* expectClean
          }))

        it.scoped("a mapping natpmpc does not renew expires on both layers", () =>
          Effect.gen(function*() {
            const { router } = yield* BridgeLab
            const mapped = yield* natpmpcMap("udp", 0, 43200, 2)
            expect(mapped.lifetime).toBe(2)
            yield* router.waitFor((state) => ownRules(state.natRules).length === 1, "the rule")
            // the bridge's expiry removes the rule and deletes the VPN mapping (miniupnpd may have dropped it first)
            yield* router.waitFor(
              (state) => ownRules(state.natRules).length === 0,
              "the rule's expiry",
              Duration.seconds(8)
            )
            yield* expectClean
          }))

        it.scoped("drops requests from the VPN side without an answer", () =>
          Effect.gen(function*() {
            const { net } = yield* BridgeLab
            const bridge = yield* SharedBridge
            // RFC 6886 §3.2: a gateway never accepts requests from its external side
            const silence = yield* Effect.flip(
              NetworkLab.probeNatPmp(net.vpn, net.vpnLink.router, { timeout: Duration.seconds(1) })
            )
            expect(silence.message).toContain("no NAT-PMP answer")
            expect(yield* bridge.log).toContain(`dropped a datagram from ${net.vpnLink.gateway}: not an allowed client`)
          }))
      })

      it.scoped("natpmp-bridge check reports the router, the detected VPN interface and miniupnpd's address", () =>
        Effect.gen(function*() {
          const { net, router } = yield* BridgeLab
          const before = (yield* router.state).natRules
          const { stdout } = yield* net.router.run([
            process.execPath,
            bridgeBin,
            "check",
            "--vpn-gateway",
            net.vpnLink.gateway,
            "--mikrotik-api-address",
            `127.0.0.1:${router.port}`,
            "--mikrotik-api-password",
            router.password
          ], { timeout: Duration.seconds(20) })
          expect(stdout).toMatch(/RouterOS 7\.16\.2/)
          expect(stdout).toMatch(
            new RegExp(
              `VPN interface +${net.vpnLink.routerInterface} \\(detected from the routes towards ${net.vpnLink.gateway}\\)`
            )
          )
          expect(stdout).toContain(net.home.network)
          expect(stdout).toMatch(
            new RegExp(`VPN gateway +${net.vpnLink.gateway}:${NatPmpMessage.ServerPort}: public IP 5\\.6\\.7\\.8`)
          )
          // it changes nothing
          expect((yield* router.state).natRules).toStrictEqual(before)
          expect(yield* vpnForwards).toStrictEqual([])
        }))

      for (const allowed of ["the router's LAN networks", "one LAN host"] as const) {
        it.scoped(`announces its public address on the LAN at start, never toward the VPN (allowed: ${allowed})`, () =>
          Effect.gen(function*() {
            const { net, startBridge } = yield* BridgeLab
            // RFC 6886 §3.2.1: 224.0.0.1:5350 on the internal interfaces; the VPN side is the external one
            const onLan = yield* NetworkLab.echoServer(net.lan, "udp", NatPmpMessage.AnnouncementPort, { silent: true })
            const onVpn = yield* NetworkLab.echoServer(net.vpn, "udp", NatPmpMessage.AnnouncementPort, { silent: true })
            yield* startBridge(...(allowed === "one LAN host" ? ["--allowed-clients", `${net.home.client}/32`] : []))
            // the first two of the ten packets leave 250 ms apart
            const heard = yield* eventually(onLan.received, (received) => received.length >= 2, "two announcements")
            for (const announcement of heard) {
              expect(announcement.from).toBe(net.home.router)
              expect(yield* NatPmpMessage.decodeResponse(announcement.bytes)).toMatchObject({
                _tag: "PublicAddressResponse",
                resultCode: 0,
                publicAddress
              })
            }
            expect(yield* onVpn.received).toStrictEqual([])
          }))
      }

      it.scoped("natpmpc sees the bridge's policy: the lifetime cap and the per-client quota (result 4)", () =>
        Effect.gen(function*() {
          const { router, startBridge } = yield* BridgeLab
          yield* startBridge("--max-lifetime", "120", "--client-quota", "2")
          const first = yield* natpmpcMap("udp", 0, 43300, 3600)
          expect(first.lifetime).toBe(120)
          yield* natpmpcMap("tcp", 0, 43301, 3600)
          const refused = yield* Effect.flip(natpmpcMap("udp", 0, 43302, 3600))
          expect(refused.reason).toMatch(/^failed: nat-pmp server out of resources/)
          // nothing of the refused one on either layer
          const state = yield* router.waitFor((s) => ownRules(s.natRules).length === 2, "two rules")
          expect(ownRules(state.natRules).map((row) => row["to-ports"]).sort()).toStrictEqual(["43300", "43301"])
          expect((yield* vpnForwards).map((rule) => rule.internalPort).sort()).toStrictEqual([43300, 43301])
          yield* natpmpcMap("udp", 0, 43300, 0)
          yield* natpmpcMap("tcp", 0, 43301, 0)
          yield* expectClean
        }))

      it.scoped("reconciliation puts back a rule someone removed and one someone changed; traffic flows again", () =>
        Effect.gen(function*() {
          const { net, router, startBridge } = yield* BridgeLab
          yield* startBridge("--reconcile-interval", "1s")
          yield* NetworkLab.echoServer(net.lan, "tcp", 44700)
          yield* natpmpcMap("tcp", 48700, 44700, 600)
          const send = (payload: string) => NetworkLab.sendAndReceive(net.inet, "tcp", net.ext.gateway, 48700, payload)
          const theRule = (state: { readonly natRules: ReadonlyArray<RouterOsSimulator.Row> }) =>
            ownRules(state.natRules)[0]
          const original = theRule(yield* router.waitFor((s) => ownRules(s.natRules).length === 1, "the rule"))
          expect(yield* send("before")).toBe("echo before")

          // someone removes it: the bridge creates it again
          yield* router.removeNatRule(original[".id"])
          const recreated = theRule(yield* router.waitFor((s) => ownRules(s.natRules).length === 1, "a new rule"))
          expect(recreated[".id"]).not.toBe(original[".id"])
          expect(recreated).toMatchObject({ "dst-port": "44700", "to-addresses": net.home.client, "to-ports": "44700" })
          expect(yield* send("recreated")).toBe("echo recreated")

          // someone points it elsewhere: the bridge sets it back
          yield* router.setNatRule(recreated[".id"], { "to-addresses": "10.0.0.99" })
          const fixed = yield* router.waitFor(
            (s) => theRule(s)?.["to-addresses"] === net.home.client,
            "the rule set back"
          )
          expect(theRule(fixed)[".id"]).toBe(recreated[".id"])
          expect(yield* send("fixed")).toBe("echo fixed")

          yield* natpmpcMap("tcp", 0, 44700, 0)
          yield* expectClean
        }))

      it.scoped(
        "after miniupnpd restarts (VPN state loss) the bridge maps upstream again, traffic flows, the LAN is told",
        () =>
          Effect.gen(function*() {
            const { net, restartMiniUpnpd, startBridge } = yield* BridgeLab
            // the VPN's public address is refreshed every second: that request sees the epoch go backwards
            const bridge = yield* startBridge("--reconcile-interval", "1s")
            yield* NetworkLab.echoServer(net.lan, "tcp", 44000)
            const mapped = yield* natpmpcMap("tcp", 48000, 44000, 600)
            expect(mapped.externalPort).toBe(48000)
            // a reset shows once the epoch is clearly lower than the time since the last answer (RFC 6886 §3.6),
            // and the bridge's own epoch (its start announcement) must be clearly above the reset one
            yield* Effect.sleep(Duration.seconds(4))
            const listener = yield* NetworkLab.echoServer(net.lan, "udp", NatPmpMessage.AnnouncementPort, {
              silent: true
            })

            // the old forward is gone with the old miniupnpd: only the bridge can bring it back
            yield* restartMiniUpnpd
            const forwards = yield* eventually(
              vpnForwards,
              (rules) => rules.length === 1,
              "the bridge's mapping at the new miniupnpd",
              Duration.seconds(8)
            )
            expect(forwards).toStrictEqual([
              { protocol: "tcp", externalPort: 48000, address: net.vpnLink.router, internalPort: 44000 }
            ])
            const reply = yield* NetworkLab.sendAndReceive(net.inet, "tcp", net.ext.gateway, 48000, "after the restart")
            expect(reply).toBe("echo after the restart")
            expect(yield* bridge.log).toContain("the VPN gateway lost its mappings")
            // the bridge's state began anew: it announces an epoch near 0, so LAN clients re-map
            yield* eventually(
              Effect.map(listener.received, (received) =>
                received.flatMap(({ bytes }) => {
                  const decoded = Either.getOrUndefined(NatPmpMessage.decodeResponse(bytes))
                  return decoded === undefined ? [] : [decoded.epoch]
                })),
              (epochs) => epochs.some((epoch) => epoch <= 1),
              "an announcement of a reset epoch"
            )

            yield* natpmpcMap("tcp", 0, 44000, 0)
            yield* expectClean
          })
      )

      it.scoped("a bridge killed outright leaves its rules; the next one adopts them and natpmpc's renewal works", () =>
        Effect.gen(function*() {
          const { net, router, startBridge } = yield* BridgeLab
          yield* NetworkLab.echoServer(net.lan, "tcp", 45500)
          yield* Effect.scoped(Effect.gen(function*() {
            const first = yield* startBridge()
            yield* natpmpcMap("tcp", 49000, 45500, 600)
            yield* first.process.signal("SIGKILL")
            yield* first.process.exited
          }))
          // nothing cleaned up: both layers still forward
          yield* router.waitFor((state) => ownRules(state.natRules).length === 1, "the killed bridge's rule")
          expect(yield* vpnForwards).toHaveLength(1)

          const second = yield* startBridge()
          const renewed = yield* natpmpcMap("tcp", 49000, 45500, 600)
          expect(renewed).toMatchObject({ externalPort: 49000, lifetime: 600 })
          const state = yield* router.state
          expect(ownRules(state.natRules)).toHaveLength(1)
          expect(yield* vpnForwards).toStrictEqual([
            { protocol: "tcp", externalPort: 49000, address: net.vpnLink.router, internalPort: 45500 }
          ])
          expect(yield* NetworkLab.sendAndReceive(net.inet, "tcp", net.ext.gateway, 49000, "adopted")).toBe(
            "echo adopted"
          )
          yield* natpmpcMap("tcp", 0, 45500, 0)
          yield* expectClean
          expect(yield* second.log).toMatch(/adopt/i)
        }))

      it.scoped("on SIGTERM the bridge removes its router rules and VPN mappings, then exits 0", () =>
        Effect.gen(function*() {
          const { router, startBridge } = yield* BridgeLab
          const bridge = yield* startBridge()
          yield* natpmpcMap("tcp", 47000, 43000, 600)
          yield* natpmpcMap("udp", 47001, 43001, 600)
          yield* router.waitFor((s) => ownRules(s.natRules).length === 2, "both rules")
          expect((yield* vpnForwards).map((rule) => rule.externalPort).sort()).toStrictEqual([47000, 47001])

          const exit = yield* bridge.process.stop
          expect(exit, yield* bridge.log).toStrictEqual({ exitCode: 0, signal: null })
          yield* expectClean
        }))
    })
  }
)
