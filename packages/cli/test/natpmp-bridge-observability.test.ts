import { describe, expect, it } from "@effect/vitest"
import { NatPmpClient } from "@natpmp-bridge/core"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import { lines, run, start } from "./BinRunner.js"
import { passwordEnv, routerFlags, serveFlags } from "./BridgeFlags.js"

/** The RouterOS and VPN simulators of the server's harness (no bridge: the bin is the bridge). */
const simulators = BridgeHarness.makeEnvironment({ vpn: { publicAddress: "203.0.113.7" } })

const envFor = passwordEnv

const rule = (bridge: string, protocol: string, client: string, internalPort: number, dstPort: number) => ({
  chain: "dstnat",
  action: "dst-nat",
  protocol,
  "in-interface": "wg-proton",
  "dst-port": String(dstPort),
  "to-addresses": client,
  "to-ports": String(internalPort),
  comment: `natpmp-bridge:${bridge} ${protocol} ${client}:${internalPort}`
})

describe("natpmp-bridge observability", () => {
  describe("status", () => {
    it.scopedLive(
      "lists the bridge's leases from the router's rules, as a table and as JSON; changes nothing",
      () =>
        Effect.gen(function*() {
          const environment = yield* simulators
          const udp = yield* environment.router.addNatRule(rule("statustest", "udp", "127.0.0.20", 51413, 40001))
          const tcp = yield* environment.router.addNatRule({
            ...rule("statustest", "tcp", "127.0.0.21", 8080, 40002),
            disabled: "true"
          })
          yield* environment.router.addNatRule(rule("other", "tcp", "127.0.0.22", 22, 40003))
          yield* environment.router.addNatRule({ ...rule("x", "tcp", "127.0.0.9", 1, 1), comment: "web server" })
          yield* environment.router.resetCounters
          const before = yield* environment.router.natRules

          const table = yield* run("natpmp-bridge", [
            "status",
            ...routerFlags(environment),
            "--bridge-id",
            "statustest"
          ], {
            env: envFor(environment)
          })
          expect(table.code, table.stderr).toBe(0)
          const out = lines(table.stdout)
          expect(out[0]).toMatch(/^router admin@127\.0\.0\.1:\d+: 2 rule\(s\) of natpmp-bridge:statustest$/)
          expect(out[1]).toMatch(/^PROTO +PUBLIC PORT +CLIENT +INTERNAL PORT +RULE +DISABLED +NOTE$/)
          expect(out[2]).toMatch(new RegExp(`^udp +40001 +127\\.0\\.0\\.20 +51413 +\\${udp} +no$`))
          expect(out[3]).toMatch(new RegExp(`^tcp +40002 +127\\.0\\.0\\.21 +8080 +\\${tcp} +yes$`))
          expect(out).toHaveLength(4)

          // the id from the environment, JSON
          const json = yield* run("natpmp-bridge", ["status", ...routerFlags(environment), "--json"], {
            env: { ...envFor(environment), BRIDGE_ID: "statustest" }
          })
          expect(json.code, json.stderr).toBe(0)
          expect(lines(json.stdout)).toHaveLength(1)
          const report = JSON.parse(json.stdout)
          expect(report).toMatchObject({
            bridgeId: "statustest",
            router: expect.stringMatching(/^admin@127\.0\.0\.1:/)
          })
          expect(report.leases).toStrictEqual([
            {
              bridgeId: "statustest",
              protocol: "udp",
              publicPort: 40001,
              client: "127.0.0.20",
              internalPort: 51413,
              ruleId: udp,
              disabled: false,
              inInterface: "wg-proton",
              target: "127.0.0.20:51413",
              consistent: true,
              note: null,
              comment: "natpmp-bridge:statustest udp 127.0.0.20:51413"
            },
            expect.objectContaining({ protocol: "tcp", publicPort: 40002, ruleId: tcp, disabled: true })
          ])

          // every bridge
          const all = yield* run("natpmp-bridge", ["status", ...routerFlags(environment), "--all-bridges", "--json"], {
            env: envFor(environment)
          })
          expect(all.code, all.stderr).toBe(0)
          const everyBridge = JSON.parse(all.stdout)
          expect(everyBridge.bridgeId).toBeNull()
          expect(everyBridge.leases.map((lease: { bridgeId: string }) => lease.bridgeId).sort()).toStrictEqual([
            "other",
            "statustest",
            "statustest"
          ])
          const allTable = yield* run("natpmp-bridge", ["status", ...routerFlags(environment), "--all-bridges"], {
            env: envFor(environment)
          })
          expect(lines(allTable.stdout)[1]).toMatch(/^BRIDGE +PROTO +PUBLIC PORT/)

          // read only: prints, nothing else
          expect(yield* environment.router.natRules).toStrictEqual(before)
          const commands = yield* environment.router.commandLog
          expect(commands.length).toBeGreaterThan(0)
          expect(commands.every((path) => path === "/ip/firewall/nat/print")).toBe(true)
        }),
      30_000
    )

    it.scopedLive(
      "an unreachable router: one line (JSON with --json) on stderr, exit 1; no VPN_GATEWAY needed",
      () =>
        Effect.gen(function*() {
          const result = yield* run("natpmp-bridge", ["status", "--mikrotik-api-address", "127.0.0.1:1"], {
            env: { MIKROTIK_API_PASSWORD: "x", VPN_GATEWAY: undefined }
          })
          expect(result.code).toBe(1)
          expect(result.stdout).toBe("")
          expect(lines(result.stderr)).toHaveLength(1)
          expect(result.stderr).toMatch(/^natpmp-bridge: router admin@127\.0\.0\.1:1: /)
          const json = yield* run("natpmp-bridge", ["status", "--mikrotik-api-address", "127.0.0.1:1", "--json"], {
            env: { MIKROTIK_API_PASSWORD: "x" }
          })
          expect(json.code).toBe(1)
          expect(JSON.parse(json.stderr).error).toMatch(/^router admin@127\.0\.0\.1:1: /)
          const missing = yield* run("natpmp-bridge", ["status"], {
            env: { MIKROTIK_API_ADDRESS: undefined, MIKROTIK_API_PASSWORD: undefined }
          })
          expect(missing.code).toBe(2)
          expect(missing.stderr).toMatch(/^natpmp-bridge: MIKROTIK_API_ADDRESS: required/)
        }),
      30_000
    )
  })

  describe("serve", () => {
    it.scopedLive(
      "--log-format json and --metrics-addr 127.0.0.1:0: JSON log lines, /metrics and /healthz",
      () =>
        Effect.gen(function*() {
          const environment = yield* simulators
          const serve = yield* start("natpmp-bridge", [
            "serve",
            ...serveFlags(environment, "clilogs"),
            "--log-format",
            "json",
            "--metrics-addr",
            "127.0.0.1:0"
          ], { env: { ...envFor(environment), LOG_LEVEL: "INFO" } })
          const started = JSON.parse(
            yield* serve.waitForLine((line) => line.includes("natpmp-bridge started"), "15 seconds", "stderr")
          )
          expect(started).toMatchObject({ level: "INFO", message: expect.stringContaining("id=clilogs") })
          const stderr = lines(yield* serve.stderr)
          const listening = stderr.map((line) => JSON.parse(line).message as string)
          const port = Number(
            listening.flatMap((m) => /NAT-PMP server listening on 127\.0\.0\.1:(\d+)/.exec(m) ?? [])[1]
          )
          const metricsPort = Number(
            listening.flatMap((m) => /metrics server listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(m) ?? [])[1]
          )
          expect(port).toBeGreaterThan(0)
          expect(metricsPort).toBeGreaterThan(0)

          const mapping = yield* Effect.scoped(Effect.gen(function*() {
            const client = yield* NatPmpClient.make({ gateway: "127.0.0.1", port, announcements: false })
            return yield* client.map({ protocol: "tcp", internalPort: 8443, lifetime: 600 })
          }))
          const request = JSON.parse(
            yield* serve.waitForLine(
              (line) => line.includes(`"key":"127.0.0.1/tcp/8443"`) && line.includes("durationMs"),
              "5 seconds",
              "stderr"
            )
          )
          expect(request.annotations).toMatchObject({
            client: "127.0.0.1",
            protocol: "tcp",
            internalPort: 8443,
            externalPort: mapping.externalPort,
            resultCode: 0,
            durationMs: expect.any(Number)
          })

          const [metrics, health] = yield* Effect.promise(() =>
            Promise.all(["metrics", "healthz"].map(async (path) => {
              const response = await fetch(`http://127.0.0.1:${metricsPort}/${path}`)
              return { status: response.status, body: await response.text() }
            }))
          )
          expect(metrics.status).toBe(200)
          expect(metrics.body).toContain(`natpmp_requests_total{opcode="map_tcp",result="success"} 1\n`)
          expect(metrics.body).toContain("natpmp_active_leases 1\n")
          expect(metrics.body).toContain(`natpmp_bridge_info{bridge_id="clilogs"} 1\n`)
          expect(health.status).toBe(200)
          expect(JSON.parse(health.body)).toMatchObject({ status: "ok", bridgeId: "clilogs", leases: 1 })

          yield* serve.kill("SIGTERM")
          const result = yield* serve.exit
          expect(result.code, result.stderr).toBe(0)
          // every line, to the last one of the shutdown, is a JSON object
          for (const line of lines(result.stderr)) expect(() => JSON.parse(line), line).not.toThrow()
        }),
      30_000
    )
  })

  describe("demo", () => {
    it.live("--metrics prints /healthz and the /metrics text after the traffic", () =>
      Effect.gen(function*() {
        const result = yield* run("natpmp-bridge", ["demo", "--metrics"], { timeout: "30 seconds" })
        expect(result.code, result.stderr).toBe(0)
        expect(result.stdout).toMatch(/Observability: GET http:\/\/127\.0\.0\.1:\d+\/healthz/)
        expect(result.stdout).toMatch(/\/healthz +200 \{"status":"ok"/)
        expect(result.stdout).toContain(`natpmp_requests_total{opcode="map_udp",result="success"} 3\n`)
        expect(result.stdout).toContain(`natpmp_requests_total{opcode="map_tcp",result="success"} 1\n`)
        expect(result.stdout).toContain("natpmp_active_leases 1\n")
        expect(result.stdout).toMatch(/Done: every layer is clean\./)
      }), 40_000)
  })
})
