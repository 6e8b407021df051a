import { describe, expect, it } from "@effect/vitest"
import { NatPmpClient } from "@natpmp-bridge/core"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import { lines, run, start } from "./BinRunner.js"
import { passwordEnv, serveFlags } from "./BridgeFlags.js"

/** The RouterOS and VPN simulators of the server's harness (no bridge: the bin is the bridge). */
const simulators = BridgeHarness.makeEnvironment({ vpn: { publicAddress: "203.0.113.7" } })

type Environment = Effect.Effect.Success<typeof simulators>

/** Flags for the simulators; the password comes from the environment, like in production. */
const flagsFor = (environment: Environment) => serveFlags(environment, "clitest")

const envFor = passwordEnv

const ownRules = (environment: Environment) =>
  Effect.map(
    environment.router.natRules,
    (rows) => rows.filter((row) => row.comment?.startsWith("natpmp-bridge:clitest "))
  )

const expectOneLineFailure = (result: { code: number | null; stdout: string; stderr: string }, code: number) => {
  expect(result.code, result.stderr).toBe(code)
  expect(result.stdout).toBe("")
  expect(lines(result.stderr)).toHaveLength(1)
  expect(result.stderr).not.toMatch(/\n\s+at /)
}

describe("natpmp-bridge", () => {
  describe("demo", () => {
    it.live("runs the whole bridge on loopback, narrates every layer and exits 0", () =>
      Effect.gen(function*() {
        const result = yield* run("natpmp-bridge", ["demo"], { timeout: "30 seconds" })
        expect(result.code, result.stderr).toBe(0)
        const out = result.stdout
        expect(out).toMatch(/Map UDP local port 51413/)
        expect(out).toMatch(/Map TCP local port 8080/)
        expect(out).toMatch(/VPN +UDP mapping of the bridge .*public port \d+, lifetime 60 s/)
        expect(out).toMatch(
          /router rule +\*\w+ chain=dstnat in-interface=wg-proton protocol=udp dst-port=\d+ action=dst-nat/
        )
        expect(out).toMatch(/answer +public port \d+ TCP -> 127\.0\.0\.1:8080, lifetime 60 s/)
        expect(out).toMatch(/Renew UDP 51413[\s\S]*router API +0 command\(s\) for this step/)
        expect(out).toMatch(/0 bridge rule\(s\) left/)
        expect(out).toMatch(/0 mapping\(s\) left/)
        expect(out).toMatch(/Done: every layer is clean\./)
      }), 40_000)
  })

  describe("serve", () => {
    it.scopedLive(
      "serves NAT-PMP with flags over the environment and cleans up on SIGTERM",
      () =>
        Effect.gen(function*() {
          const environment = yield* simulators
          const serve = yield* start("natpmp-bridge", ["serve", ...flagsFor(environment), "--log-level", "DEBUG"], {
            // the flags win over these
            env: { ...envFor(environment), VPN_GATEWAY: "10.99.0.1", BRIDGE_ID: "other", LOG_LEVEL: "ERROR" }
          })
          const listening = yield* serve.waitForLine(
            (line) => line.includes("NAT-PMP server listening on"),
            "15 seconds",
            "stderr"
          )
          const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(listening)?.[1])
          expect(port).toBeGreaterThan(0)
          // the flags won: --log-level (LOG_LEVEL=ERROR would hide the info lines) and --bridge-id
          yield* serve.waitForLine((line) => /natpmp-bridge started: .*id=clitest/.test(line), "5 seconds", "stderr")

          const mapping = yield* Effect.scoped(Effect.gen(function*() {
            const client = yield* NatPmpClient.make({ gateway: "127.0.0.1", port, announcements: false })
            return yield* client.map({ protocol: "udp", internalPort: 51413, lifetime: 600 })
          }))
          expect(mapping).toMatchObject({ protocol: "udp", internalPort: 51413, lifetime: 60 })
          const [rule] = yield* ownRules(environment)
          expect(rule).toMatchObject({
            protocol: "udp",
            "dst-port": String(mapping.externalPort),
            "to-addresses": "127.0.0.1",
            "to-ports": "51413"
          })
          expect((yield* environment.vpn.mappings).map((m) => m.externalPort)).toStrictEqual([mapping.externalPort])

          yield* serve.kill("SIGTERM")
          const result = yield* serve.exit
          expect(result.code, result.stderr).toBe(0)
          expect(yield* ownRules(environment)).toStrictEqual([])
          expect(yield* environment.vpn.mappings).toStrictEqual([])
        }),
      30_000
    )

    it.scopedLive("stops on SIGINT too", () =>
      Effect.gen(function*() {
        const environment = yield* simulators
        const serve = yield* start("natpmp-bridge", ["serve", ...flagsFor(environment)], { env: envFor(environment) })
        yield* serve.waitForLine((line) => line.includes("NAT-PMP server listening on"), "15 seconds", "stderr")
        yield* serve.kill("SIGINT")
        expect((yield* serve.exit).code).toBe(0)
      }), 30_000)

    it.live("a missing required setting names its variable: one line, exit 2", () =>
      Effect.gen(function*() {
        const result = yield* run("natpmp-bridge", ["serve", "--vpn-gateway", "10.2.0.1"], {
          env: { MIKROTIK_API_ADDRESS: undefined, MIKROTIK_API_PASSWORD: undefined, VPN_GATEWAY: undefined }
        })
        expectOneLineFailure(result, 2)
        expect(result.stderr).toMatch(/^natpmp-bridge: MIKROTIK_API_ADDRESS: required/)
      }))

    it.live("a bad flag value names the flag: one line, exit 2", () =>
      Effect.gen(function*() {
        const result = yield* run("natpmp-bridge", [
          "serve",
          "--vpn-gateway",
          "10.2.0",
          "--mikrotik-api-address",
          "127.0.0.1:1",
          "--mikrotik-api-password",
          "x"
        ])
        expectOneLineFailure(result, 2)
        expect(result.stderr).toMatch(/^natpmp-bridge: --vpn-gateway: expected an IPv4 address, got "10\.2\.0"/)
        const level = yield* run("natpmp-bridge", ["serve", "--log-level", "LOUD"], {
          env: { VPN_GATEWAY: "10.2.0.1", MIKROTIK_API_ADDRESS: "127.0.0.1:1", MIKROTIK_API_PASSWORD: "x" }
        })
        expectOneLineFailure(level, 2)
        expect(level.stderr).toMatch(/--log-level: expected DEBUG, INFO, WARN or ERROR, got "LOUD"/)
      }))

    it.live("a router that cannot be reached fails startup with its message, exit 1", () =>
      Effect.gen(function*() {
        const result = yield* run("natpmp-bridge", [
          "serve",
          "--vpn-gateway",
          "127.0.0.1",
          "--mikrotik-api-address",
          "127.0.0.1:1",
          "--listen-addr",
          "127.0.0.1:0"
        ], { env: { MIKROTIK_API_PASSWORD: "x", LOG_LEVEL: "ERROR" } })
        expect(result.code).toBe(1)
        expect(result.stdout).toBe("")
        const last = lines(result.stderr).at(-1)
        expect(last).toMatch(/^natpmp-bridge: .*127\.0\.0\.1:1/)
        expect(result.stderr).not.toMatch(/\n\s+at /)
      }), 30_000)

    it.live("--help lists every setting with its variable and default", () =>
      Effect.gen(function*() {
        const result = yield* run("natpmp-bridge", ["serve", "--help"])
        expect(result.code).toBe(0)
        for (
          const [flag, env] of [
            ["--vpn-gateway", "VPN_GATEWAY"],
            ["--mikrotik-api-address", "MIKROTIK_API_ADDRESS"],
            ["--mikrotik-api-password", "MIKROTIK_API_PASSWORD"],
            ["--mikrotik-api-user", "MIKROTIK_API_USER"],
            ["--mikrotik-api-tls", "MIKROTIK_API_TLS"],
            ["--mikrotik-in-interface", "MIKROTIK_IN_INTERFACE"],
            ["--listen-addr", "LISTEN_ADDR"],
            ["--log-level", "LOG_LEVEL"],
            ["--vpn-port-mode", "VPN_PORT_MODE"],
            ["--allowed-clients", "ALLOWED_CLIENTS"],
            ["--reconcile-interval", "RECONCILE_INTERVAL"],
            ["--bridge-id", "BRIDGE_ID"]
          ]
        ) {
          expect(result.stdout).toContain(flag)
          expect(result.stdout).toContain(`env ${env}`)
        }
        expect(result.stdout).toContain("default :5351")
        expect(result.stdout).toContain("default 60s")
      }))
  })

  describe("check", () => {
    it.scopedLive(
      "reports router, interface, clients, VPN address, own rules and the redirect rule; changes nothing",
      () =>
        Effect.gen(function*() {
          const environment = yield* simulators
          const before = yield* environment.router.natRules
          const result = yield* run("natpmp-bridge", [
            "check",
            ...flagsFor(environment).filter((_, i, all) =>
              all[i] !== "--allowed-clients" && all[i - 1] !== "--allowed-clients"
            ),
            "--bridge-address",
            "10.10.0.2"
          ], { env: envFor(environment) })
          expect(result.code, result.stderr + result.stdout).toBe(0)
          const out = result.stdout
          expect(out).toMatch(/router +admin@127\.0\.0\.1:\d+: RouterOS 7\.16\.2 \(stable\)/)
          expect(out).toMatch(/VPN interface +wg-proton \(detected from the routes towards 127\.0\.0\.1\)/)
          expect(out).toMatch(/LAN clients +127\.0\.0\.16\/28 \(the router's LAN networks\)/)
          expect(out).toMatch(/VPN gateway +127\.0\.0\.1:\d+: public IP 203\.0\.113\.7/)
          expect(out).toMatch(/own rules +none/)
          expect(out).toContain(
            "/ip firewall nat add chain=dstnat in-interface=bridge dst-address=127.0.0.17 protocol=udp dst-port=5351 " +
              "action=dst-nat to-addresses=10.10.0.2 to-ports=0"
          )
          expect(yield* environment.router.natRules).toStrictEqual(before)
          expect(yield* environment.router.commandCount("/ip/firewall/nat/add")).toBe(0)
          expect(yield* environment.vpn.mappings).toStrictEqual([])
        }),
      30_000
    )

    it.scopedLive(
      "lists the bridge's own rules and warns when the bridge sits in the clients' network",
      () =>
        Effect.gen(function*() {
          const environment = yield* simulators
          yield* environment.router.addNatRule({
            chain: "dstnat",
            action: "dst-nat",
            protocol: "tcp",
            "in-interface": "wg-proton",
            "dst-port": "40000",
            "to-addresses": "127.0.0.20",
            "to-ports": "8080",
            comment: "natpmp-bridge:clitest tcp 127.0.0.20:8080"
          })
          const result = yield* run("natpmp-bridge", [
            "check",
            ...flagsFor(environment),
            "--bridge-address",
            "127.0.0.1"
          ], {
            env: envFor(environment)
          })
          expect(result.code, result.stderr + result.stdout).toBe(0)
          expect(result.stdout).toMatch(/own rules +1 /)
          expect(result.stdout).toMatch(/dst-port=40000 "natpmp-bridge:clitest tcp 127\.0\.0\.20:8080"/)
          expect(result.stdout).toMatch(/Note: 127\.0\.0\.1 is inside the clients' network/)
        }),
      30_000
    )

    it.scopedLive(
      "an unreachable router or VPN gateway is reported and the check exits 1",
      () =>
        Effect.gen(function*() {
          const environment = yield* simulators
          yield* environment.vpn.setSilent(true)
          const result = yield* run("natpmp-bridge", [
            "check",
            ...flagsFor(environment).map((arg) =>
              arg === `${environment.router.host}:${environment.router.port}` ? "127.0.0.1:1" : arg
            )
          ], { env: envFor(environment) })
          expect(result.code).toBe(1)
          expect(result.stdout).toMatch(/router +FAILED: /)
          expect(result.stdout).toMatch(/VPN gateway +FAILED: no answer/)
          expect(lines(result.stderr)).toStrictEqual(["natpmp-bridge: check failed: router, VPN gateway"])
        }),
      30_000
    )
  })

  describe("bad arguments", () => {
    it.live.each(
      [
        [["serv"], /Invalid subcommand/],
        [[], /missing command: serve, check, status or demo/],
        [["serve", "--vpn-gatway", "1.2.3.4"], /unknown option '--vpn-gatway' for 'serve'/],
        [["demo", "--fast"], /unknown option '--fast' for 'demo'/]
      ] as const
    )("%j", ([args, message]) =>
      Effect.gen(function*() {
        const result = yield* run("natpmp-bridge", args)
        expectOneLineFailure(result, 2)
        expect(result.stderr).toMatch(message)
      }))
  })
})
