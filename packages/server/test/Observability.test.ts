import { describe, expect, it } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import { BridgeConfig, BridgeLogger, MetricsServer } from "@natpmp-bridge/server"
import type { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import { harness, ownRules } from "./helpers.js"

/** A GET over real HTTP on loopback. */
const get = (h: BridgeHarness.BridgeHarness, path: string) =>
  Effect.promise(async () => {
    const { address, port } = Option.getOrThrow(h.bridge.metrics.listening)
    const response = await fetch(`http://${address}:${port}${path}`)
    return { status: response.status, contentType: response.headers.get("content-type"), body: await response.text() }
  })

/** The value of one series (`name{labels}`) in a Prometheus text, or undefined. */
const sample = (text: string, series: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

const withMetrics = (bridgeId: string, options: BridgeHarness.Options = {}) =>
  harness({ ...options, bridge: { bridgeId, metrics: { address: "127.0.0.1", port: 0 }, ...options.bridge } })

describe("observability", () => {
  it.live(
    "/metrics over HTTP counts requests, leases, upstream latency, router errors and reconciliation",
    () =>
      Effect.gen(function*() {
        const h = yield* withMetrics("obs-metrics")
        expect(Option.getOrThrow(h.bridge.metrics.listening).port).toBeGreaterThan(0)
        const client = yield* h.client("127.0.0.20")
        expect((yield* client.map({ protocol: "udp", internalPort: 51413 })).resultCode).toBe(0)
        expect((yield* client.map({ protocol: "tcp", internalPort: 8080 })).resultCode).toBe(0)
        expect((yield* client.map({ protocol: "tcp", internalPort: 8080 })).resultCode).toBe(0) // renewal
        expect((yield* client.map({ protocol: "udp", internalPort: 51413, lifetime: 0 })).resultCode).toBe(0)
        const { response } = yield* client.request({ _tag: "PublicAddressRequest" })
        expect(response.resultCode).toBe(0)
        // a rule removed behind the bridge's back: reconciliation creates it again
        const [rule] = yield* ownRules(h, "obs-metrics")
        yield* h.router.removeNatRule(rule[".id"]!)
        expect((yield* h.bridge.mapping.reconcile).recreated).toBe(1)
        // the router fails the conflict check's print: result 3 and a router error of kind "fatal"
        yield* h.router.fatalOnNextCommand("boom")
        expect((yield* client.map({ protocol: "tcp", internalPort: 9090 })).resultCode).toBe(3)
        // the VPN refuses for lack of ports: result 4 and a VPN error of kind "out_of_resources"
        yield* h.vpn.setResultCode(NatPmpMessage.ResultCode.OutOfResources)
        expect((yield* client.map({ protocol: "udp", internalPort: 9191 })).resultCode).toBe(4)

        const { body, contentType, status } = yield* get(h, "/metrics")
        expect(status).toBe(200)
        expect(contentType).toBe(MetricsServer.PrometheusContentType)
        expect(body).toContain("# TYPE natpmp_requests_total counter")
        expect(body).toContain("# TYPE natpmp_upstream_latency_seconds histogram")
        expect(sample(body, `natpmp_bridge_info{bridge_id="obs-metrics"}`)).toBe(1)
        expect(sample(body, `natpmp_requests_total{opcode="map_udp",result="success"}`)).toBe(2)
        expect(sample(body, `natpmp_requests_total{opcode="map_tcp",result="success"}`)).toBe(2)
        expect(sample(body, `natpmp_requests_total{opcode="map_tcp",result="network_failure"}`)).toBe(1)
        expect(sample(body, `natpmp_requests_total{opcode="public_address",result="success"}`)).toBe(1)
        expect(sample(body, `natpmp_request_duration_seconds_count{opcode="map_tcp"}`)).toBe(3)
        expect(sample(body, "natpmp_active_leases")).toBe(1)
        expect(sample(body, `natpmp_router_api_errors_total{kind="fatal"}`)).toBe(1)
        expect(sample(body, "natpmp_reconcile_runs_total")).toBe(1)
        expect(sample(body, `natpmp_reconcile_fixes_total{kind="recreated"}`)).toBe(1)
        expect(sample(body, `natpmp_reconcile_fixes_total{kind="removed"}`)).toBe(0)
        expect(sample(body, `natpmp_requests_total{opcode="map_udp",result="out_of_resources"}`)).toBe(1)
        expect(sample(body, `natpmp_vpn_errors_total{kind="out_of_resources"}`)).toBe(1)
        // VPN maps: 2 new mappings, 1 renewal, the attempt the router failed (rolled back), the refused one
        expect(sample(body, `natpmp_upstream_latency_seconds_count{operation="map",upstream="vpn"}`)).toBe(5)
        expect(sample(body, `natpmp_upstream_latency_seconds_bucket{operation="map",upstream="vpn",le="+Inf"}`))
          .toBe(5)
        expect(sample(body, `natpmp_upstream_latency_seconds_count{operation="add",upstream="router"}`)).toBe(3)
        expect(sample(body, `natpmp_dropped_datagrams_total{reason="not_allowed"}`)).toBe(0)
        expect((yield* get(h, "/nothing")).status).toBe(404)
      }).pipe(Effect.scoped),
    20_000
  )

  it.live("a metrics address in use fails the bridge's start with one line naming it", () =>
    Effect.gen(function*() {
      const h = yield* withMetrics("obs-busy")
      const taken = Option.getOrThrow(h.bridge.metrics.listening)
      const error = yield* Effect.flip(h.start({ bridgeId: "obs-busy2", metrics: taken }))
      expect(error._tag).toBe("MetricsServerError")
      expect(error.message).toBe(
        `metrics server: cannot listen on 127.0.0.1:${taken.port}: listen EADDRINUSE: address already in use ` +
          `127.0.0.1:${taken.port}`
      )
    }).pipe(Effect.scoped), 20_000)

  it.live("bridges in one process keep their own metrics", () =>
    Effect.gen(function*() {
      const [busy, idle] = yield* Effect.all([withMetrics("same-id"), withMetrics("same-id")], {
        concurrency: "unbounded"
      })
      const client = yield* busy.client("127.0.0.20")
      yield* client.map({ protocol: "tcp", internalPort: 7000 })
      const busyText = (yield* get(busy, "/metrics")).body
      const idleText = (yield* get(idle, "/metrics")).body
      expect(sample(busyText, `natpmp_requests_total{opcode="map_tcp",result="success"}`)).toBe(1)
      expect(sample(busyText, "natpmp_active_leases")).toBe(1)
      expect(sample(idleText, `natpmp_requests_total{opcode="map_tcp",result="success"}`)).toBeUndefined()
      expect(sample(idleText, "natpmp_active_leases")).toBe(0)
    }).pipe(Effect.scoped), 20_000)

  it.live(
    "/healthz: 200 while router and VPN answer, 503 with the reason when the router goes down",
    () =>
      Effect.gen(function*() {
        const h = yield* withMetrics("obs-health")
        const ok = yield* get(h, "/healthz")
        expect(ok.status).toBe(200)
        expect(ok.contentType).toMatch(/^application\/json/)
        expect(JSON.parse(ok.body)).toMatchObject({
          status: "ok",
          bridgeId: "obs-health",
          router: { ok: true, inInterface: "wg-proton" },
          vpn: { ok: true, publicAddress: expect.any(String) },
          leases: 0
        })
        yield* h.router.setRejectLogin(true)
        yield* h.router.disconnectAll
        const down = yield* get(h, "/healthz")
        expect(down.status).toBe(503)
        const report = JSON.parse(down.body)
        expect(report).toMatchObject({ status: "unavailable", router: { ok: false }, vpn: { ok: true } })
        expect(report.reason).toMatch(/^router: /)
        yield* h.router.setRejectLogin(false)
        const back = yield* get(h, "/healthz")
        expect(back.status).toBe(200)
      }).pipe(Effect.scoped),
    20_000
  )

  it.live(
    "/healthz: 503 when the VPN gateway has not answered recently and does not answer now",
    () =>
      Effect.gen(function*() {
        const h = yield* withMetrics("obs-vpn", { bridge: { vpnMaxAttempts: 1 } })
        yield* h.vpn.setSilent(true)
        const down = yield* get(h, "/healthz")
        expect(down.status).toBe(503)
        const report = JSON.parse(down.body)
        expect(report).toMatchObject({ status: "unavailable", router: { ok: true }, vpn: { ok: false } })
        expect(report.reason).toMatch(/^VPN gateway: /)
        // an answer to a mapping request is recent: a silent moment after it is no failure
        yield* h.vpn.setSilent(false)
        const client = yield* h.client("127.0.0.20")
        expect((yield* client.map({ protocol: "udp", internalPort: 6000 })).resultCode).toBe(0)
        yield* h.vpn.setSilent(true)
        const recent = yield* h.bridge.metrics.health
        expect(recent).toMatchObject({ status: "ok", vpn: { ok: true, lastAnswerSecondsAgo: 0 } })
      }).pipe(Effect.scoped),
    20_000
  )

  it.live(
    "LOG_FORMAT=json: one JSON object per line; request lines carry key, ports, result and duration",
    () =>
      Effect.gen(function*() {
        const lines: Array<string> = []
        yield* Effect.gen(function*() {
          const h = yield* harness({ bridge: { logLevel: LogLevel.Info, logFormat: "json" } })
          const client = yield* h.client("127.0.0.21")
          const mapped = yield* client.map({ protocol: "udp", internalPort: 4000 })
          expect(mapped.resultCode).toBe(0)
          yield* client.map({ protocol: "udp", internalPort: 4000, lifetime: 0 })
        }).pipe(Effect.scoped, BridgeLogger.withFormat("json", (line) => lines.push(line)))
        expect(lines.length).toBeGreaterThan(3)
        const records = lines.map((line) => JSON.parse(line))
        for (const record of records) {
          expect(record).toMatchObject({ timestamp: expect.any(String), level: expect.any(String) })
        }
        // every line about the request carries its key; the answer's line also the ports, result and duration
        const about = records.filter((record) => record.annotations?.key === "127.0.0.21/udp/4000")
        expect(about.some((record) => record.message.startsWith("mapped udp 127.0.0.21:4000"))).toBe(true)
        const request = about.find((record) => record.annotations.durationMs !== undefined)
        expect(request).toMatchObject({
          level: "INFO",
          message: expect.stringMatching(/^udp 127\.0\.0\.21:4000: public port \d+, 60 s \(\d+(\.\d+)? ms\)$/),
          annotations: {
            key: "127.0.0.21/udp/4000",
            client: "127.0.0.21",
            protocol: "udp",
            internalPort: 4000,
            externalPort: expect.any(Number),
            resultCode: 0,
            durationMs: expect.any(Number),
            service: "NatPmpServer"
          }
        })
        expect(records.some((record) => record.message.includes("deleted") && record.annotations?.lifetime === 0))
          .toBe(true)
      }),
    20_000
  )

  it("pretty lines: time, level, message, then the annotations", () => {
    const lines: Array<string> = []
    Effect.runSync(
      Effect.logInfo("mapped").pipe(
        Effect.annotateLogs({ client: "127.0.0.20", note: "two words" }),
        BridgeLogger.withFormat("pretty", (line) => lines.push(line))
      )
    )
    expect(lines).toHaveLength(1)
    expect(lines[0]).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO {2}mapped /)
    expect(lines[0]).toContain(" client=127.0.0.20")
    expect(lines[0]).toContain(` note="two words"`)
  })
})

describe("LOG_FORMAT and METRICS_ADDR settings", () => {
  const required = { vpnGateway: "10.2.0.1", mikrotikAddress: "192.168.88.1", mikrotikPassword: "x" }

  it("default: pretty logs, no metrics server", () => {
    const config = Either.getOrThrow(BridgeConfig.fromStrings(required))
    expect(config.logFormat).toBe("pretty")
    expect(config.metrics).toBeUndefined()
  })

  it("json logs; :port listens on all addresses, port 0 is ephemeral", () => {
    const json = Either.getOrThrow(BridgeConfig.fromStrings({ ...required, logFormat: "JSON", metrics: ":9464" }))
    expect(json.logFormat).toBe("json")
    expect(json.metrics).toStrictEqual({ address: "0.0.0.0", port: 9464 })
    const ephemeral = Either.getOrThrow(BridgeConfig.fromStrings({ ...required, metrics: "127.0.0.1:0" }))
    expect(ephemeral.metrics).toStrictEqual({ address: "127.0.0.1", port: 0 })
  })

  it("bad values name the variable", () => {
    expect(Either.flip(BridgeConfig.fromStrings({ ...required, logFormat: "xml" })).pipe(Either.getOrThrow).message)
      .toBe(`LOG_FORMAT: expected pretty or json, got "xml"`)
    expect(
      Either.flip(BridgeConfig.fromStrings({ ...required, metrics: "localhost:9464" })).pipe(Either.getOrThrow)
        .message
    ).toBe(`METRICS_ADDR: expected an IPv4 address, got "localhost"`)
  })
})
