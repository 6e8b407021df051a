/**
 * The RouterOS API password never reaches the output of `natpmp-bridge serve`, at the most verbose log level the
 * bridge accepts (DEBUG), through startup, mappings, login failures, router disconnects, configuration errors and
 * shutdown. The password is a fresh random string (letters and digits, so no log escaping can hide it); its base64,
 * base64url and hex forms are searched too.
 */
import { describe, expect, it } from "@effect/vitest"
import { NatPmpGatewaySimulator, RouterOsSimulator } from "@natpmp-bridge/core/testing"
import { LanClient } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import * as Crypto from "node:crypto"
import type { Result } from "./BinRunner.js"
import { run, start } from "./BinRunner.js"

const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
const password = "pw" + Array.from(Crypto.randomBytes(28), (byte) => alphabet[byte % alphabet.length]).join("")

const forms = [
  password,
  Buffer.from(password).toString("base64"),
  Buffer.from(password).toString("base64url"),
  Buffer.from(password).toString("hex"),
  Buffer.from(password).toString("hex").toUpperCase()
]

const expectNoSecret = (what: string, output: string) => {
  for (const form of forms) {
    expect(output.includes(form), `${what}: the password (or an encoding of it) appears in the output`).toBe(false)
  }
}

const outputOf = (result: Result) => result.stdout + result.stderr

const simulators = Effect.gen(function*() {
  const router = yield* RouterOsSimulator.make({
    ...RouterOsSimulator.vpnRouterV7({ vpnGateway: "127.0.0.1", lanAddress: "127.0.0.17/28" }),
    password
  })
  const vpn = yield* NatPmpGatewaySimulator.make({
    mode: "protonvpn",
    epoch: 1000,
    announceTo: { address: "127.0.0.1", port: 9 }
  })
  const flags = [
    "--vpn-gateway",
    vpn.address,
    "--vpn-gateway-port",
    String(vpn.port),
    "--mikrotik-api-address",
    `${router.host}:${router.port}`,
    "--listen-addr",
    "127.0.0.1:0",
    "--allowed-clients",
    "127.0.0.16/28",
    "--announce-addr",
    "off",
    "--bridge-id",
    "secrets",
    "--log-level",
    "DEBUG"
  ]
  return { router, vpn, flags }
})

describe("natpmp-bridge serve never logs the API password", () => {
  it.scopedLive(
    "DEBUG: startup, mappings, login failure, disconnects, router down, shutdown",
    () =>
      Effect.gen(function*() {
        const { flags, router } = yield* simulators
        const serve = yield* start("natpmp-bridge", ["serve", ...flags], {
          env: { MIKROTIK_API_PASSWORD: password, LOG_LEVEL: undefined }
        })
        const listening = yield* serve.waitForLine(
          (l) => l.includes("NAT-PMP server listening on"),
          "15 seconds",
          "stderr"
        )
        const port = Number(/listening on 127\.0\.0\.1:(\d+)/.exec(listening)?.[1])
        const client = yield* LanClient.make({ address: "127.0.0.20", bridge: { address: "127.0.0.1", port } })

        // a runt datagram (ignored, logged at DEBUG)
        yield* client.send(Uint8Array.of(0))
        // mappings: new, renewal, delete
        expect((yield* client.map({ protocol: "udp", internalPort: 51413 })).resultCode).toBe(0)
        expect((yield* client.map({ protocol: "udp", internalPort: 51413 })).resultCode).toBe(0)
        expect((yield* client.unmap("udp", 51413)).resultCode).toBe(0)
        // the router drops the connection and rejects the login at the reconnection
        yield* router.setRejectLogin(true)
        yield* router.disconnectAll
        expect((yield* client.map({ protocol: "tcp", internalPort: 8080 })).resultCode).toBe(3)
        // the router is down (connection refused), then back
        yield* router.clearFaults
        yield* router.setDown(true)
        expect((yield* client.map({ protocol: "tcp", internalPort: 8080 })).resultCode).toBe(3)
        yield* router.setDown(false)
        // a plain disconnect and a !fatal
        expect((yield* client.map({ protocol: "tcp", internalPort: 8080 })).resultCode).toBe(0)
        yield* router.disconnectAll
        yield* router.fatalOnNextCommand("out of memory")
        expect((yield* client.map({ protocol: "tcp", internalPort: 8081 })).resultCode).toBe(3)
        expect((yield* client.map({ protocol: "tcp", internalPort: 8081 })).resultCode).toBe(0)

        yield* serve.kill("SIGTERM")
        const result = yield* serve.exit
        expect(result.code, result.stderr).toBe(0)
        const output = outputOf(result)
        // the run did go through every step, at DEBUG
        expect(output).toMatch(/ DEBUG /)
        expect(output).toMatch(/login as \\?"admin\\?" failed/)
        expect(output).toMatch(/RouterOS API connection lost/)
        expect(output).toMatch(/shutdown: removed 2 rule\(s\)/)
        expectNoSecret("serve", output)
      }),
    60_000
  )

  it.scopedLive("startup failures and configuration errors", () =>
    Effect.gen(function*() {
      const { flags, router } = yield* simulators
      const outputs: Array<[string, string]> = []
      // the login is rejected at startup
      yield* router.setRejectLogin(true)
      const rejected = yield* run("natpmp-bridge", ["serve", ...flags], { env: { MIKROTIK_API_PASSWORD: password } })
      expect(rejected.code).toBe(1)
      expect(rejected.stderr).toMatch(/login as \\?"admin\\?" failed/)
      outputs.push(["login rejected at startup", outputOf(rejected)])
      const checked = yield* run("natpmp-bridge", ["check", ...flags], { env: { MIKROTIK_API_PASSWORD: password } })
      expect(checked.code).toBe(1)
      outputs.push(["check with the login rejected", outputOf(checked)])
      yield* router.clearFaults
      // a bad value next to the password, as environment variables and as flags
      const badEnv = yield* run("natpmp-bridge", ["serve", "--log-level", "DEBUG"], {
        env: { VPN_GATEWAY: "10.2.0", MIKROTIK_API_ADDRESS: "127.0.0.1:1", MIKROTIK_API_PASSWORD: password }
      })
      expect(badEnv.code).toBe(2)
      outputs.push(["bad environment", outputOf(badEnv)])
      const badFlag = yield* run("natpmp-bridge", [
        "serve",
        "--log-level",
        "DEBUG",
        "--vpn-gateway",
        "10.2.0",
        "--mikrotik-api-address",
        "127.0.0.1:1",
        "--mikrotik-api-password",
        password
      ])
      expect(badFlag.code).toBe(2)
      outputs.push(["bad flag", outputOf(badFlag)])
      // a mistyped password flag: the value must not be echoed back either
      const typo = yield* run("natpmp-bridge", ["serve", "--log-level", "DEBUG", "--mikrotik-api-pasword", password])
      expect(typo.code).toBe(2)
      outputs.push(["mistyped password flag", outputOf(typo)])
      // the password typed without its flag: a stray argument is reported, not repeated
      const stray = yield* run("natpmp-bridge", ["serve", "--log-level", "DEBUG", password], {
        env: { VPN_GATEWAY: "10.2.0.1", MIKROTIK_API_ADDRESS: "127.0.0.1:1" }
      })
      expect(stray.code).toBe(2)
      expect(stray.stderr).toMatch(/unexpected argument/)
      outputs.push(["password as a stray argument", outputOf(stray)])
      // a router that cannot be reached, with the password in the environment
      const unreachable = yield* run("natpmp-bridge", [
        "serve",
        ...flags.map((arg) => arg === `${router.host}:${router.port}` ? "127.0.0.1:1" : arg)
      ], { env: { MIKROTIK_API_PASSWORD: password } })
      expect(unreachable.code).toBe(1)
      outputs.push(["router unreachable", outputOf(unreachable)])
      // DEBUG is the most verbose level the bridge accepts (the test above runs at it)
      for (const level of ["TRACE", "ALL"]) {
        const refused = yield* run("natpmp-bridge", ["serve", "--log-level", level], {
          env: { VPN_GATEWAY: "10.2.0.1", MIKROTIK_API_ADDRESS: "127.0.0.1:1", MIKROTIK_API_PASSWORD: password }
        })
        expect(refused.stderr).toMatch(/--log-level: expected DEBUG, INFO, WARN or ERROR/)
        outputs.push([`--log-level ${level}`, outputOf(refused)])
      }
      for (const [what, output] of outputs) {
        expect(output.length, what).toBeGreaterThan(0)
        expectNoSecret(what, output)
      }
    }), 60_000)
})
