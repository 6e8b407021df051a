/**
 * The bridge's HTTP endpoint (`METRICS_ADDR`, off by default), on @effect/platform's `HttpRouter` served by
 * `NodeHttpServer`:
 *
 * - `GET /metrics`: the bridge's {@link BridgeMetrics} in the Prometheus text format,
 * - `GET /healthz`: 200 with a JSON report when the router answers now (one cheap API call: `/ip/address/print`)
 *   and the VPN gateway answered recently (within twice the reconcile interval, or a public-address request now);
 *   503 with the same report and a `reason` otherwise.
 *
 * The service also exists without the HTTP server (`listening` is then `None`): `metrics` and `health` work alike.
 *
 * @since 0.1.0
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import * as HttpRouter from "@effect/platform/HttpRouter"
import * as HttpServerResponse from "@effect/platform/HttpServerResponse"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"
import { createServer } from "node:http"
import { BridgeMetrics, renderPrometheus } from "./BridgeMetrics.js"
import { MappingService } from "./MappingService.js"
import { NatPmpServer } from "./NatPmpServer.js"
import { Router } from "./Router.js"
import { VpnGateway } from "./VpnGateway.js"

/** Options of the metrics endpoint. */
export interface Options {
  /** Where the HTTP server listens (port 0: ephemeral); `undefined`: no HTTP server. */
  readonly listen?: { readonly address: string; readonly port: number } | undefined
  /** How long a VPN answer counts as recent (default 120 s). */
  readonly vpnFreshness?: Duration.DurationInput | undefined
  /** How long a router answer counts as recent (default 0: the router is asked at every health check). */
  readonly routerFreshness?: Duration.DurationInput | undefined
  /** Bound of a health probe (default 2 s). */
  readonly probeTimeout?: Duration.DurationInput | undefined
}

/** The HTTP server could not listen. */
export class MetricsServerError extends Data.TaggedError("MetricsServerError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `metrics server: ${this.reason}`
  }
}

/** One upstream's health. */
export interface UpstreamHealth {
  readonly ok: boolean
  /** Seconds since it last answered; `null` if it never did. */
  readonly lastAnswerSecondsAgo: number | null
  readonly error?: string | undefined
}

/** What `/healthz` answers. */
export interface HealthReport {
  readonly status: "ok" | "unavailable"
  readonly reason?: string | undefined
  readonly bridgeId: string
  readonly router: UpstreamHealth & { readonly inInterface: string }
  readonly vpn: UpstreamHealth & { readonly gateway: string; readonly publicAddress: string | null }
  readonly leases: number
}

/** The metrics endpoint. */
export interface Service {
  /** Where the HTTP server listens (the bound port when 0 was asked for); `None` without a server. */
  readonly listening: Option.Option<{ readonly address: string; readonly port: number }>
  /** The `/metrics` text. */
  readonly metrics: Effect.Effect<string>
  /** The `/healthz` report (probes an upstream that has not answered recently). */
  readonly health: Effect.Effect<HealthReport>
}

/** The metrics endpoint tag. */
export class MetricsServer extends Context.Tag("@natpmp-bridge/server/MetricsServer")<MetricsServer, Service>() {}

/** The Prometheus content type of `/metrics`. */
export const PrometheusContentType = "text/plain; version=0.0.4; charset=utf-8"

/** Creates the endpoint (and its HTTP server when `listen` is given) for the life of the scope. */
export const make = (
  options: Options = {}
): Effect.Effect<
  Service,
  MetricsServerError,
  Router | VpnGateway | MappingService | NatPmpServer | Scope.Scope
> =>
  Effect.gen(function*() {
    const router = yield* Router
    const vpn = yield* VpnGateway
    const mapping = yield* MappingService
    const server = yield* NatPmpServer
    const metricsService = yield* BridgeMetrics
    const vpnFreshness = Duration.toMillis(options.vpnFreshness ?? Duration.seconds(120))
    const routerFreshness = Duration.toMillis(options.routerFreshness ?? Duration.zero)
    const probeTimeout = Duration.decode(options.probeTimeout ?? Duration.seconds(2))

    const metrics = Effect.gen(function*() {
      yield* metricsService.setActiveLeases((yield* mapping.leases).length)
      const stats = yield* server.stats
      const dropped = (reason: string, value: number) => ({
        name: "natpmp_dropped_datagrams_total",
        help: "datagrams dropped without an answer: not_allowed (outside the allowed networks), invalid (responses, " +
          "runts, truncated), overloaded (too many requests in progress)",
        labels: [["reason", reason]] as const,
        value
      })
      return renderPrometheus(yield* metricsService.snapshot, [
        dropped("not_allowed", stats.refused),
        dropped("invalid", stats.ignored),
        dropped("overloaded", stats.overloaded)
      ])
    })

    const probe = <A, E extends { readonly message: string }>(effect: Effect.Effect<A, E>) =>
      effect.pipe(
        Effect.timeoutFail({
          duration: probeTimeout,
          onTimeout: () => ({ message: `no answer within ${Duration.format(probeTimeout)}` })
        }),
        Effect.match({ onFailure: (error) => Option.some(error.message), onSuccess: () => Option.none<string>() })
      )

    const upstreamHealth = (
      okAt: () => Effect.Effect<Option.Option<number>>,
      freshness: number,
      check: Effect.Effect<Option.Option<string>>
    ) =>
      Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const before = yield* okAt()
        if (Option.isSome(before) && freshness > 0 && now - before.value <= freshness) {
          return { ok: true, lastAnswerSecondsAgo: Math.round((now - before.value) / 1000) } as UpstreamHealth
        }
        const error = yield* check
        const after = yield* okAt()
        const at = yield* Clock.currentTimeMillis
        const ago = Option.isSome(after) ? Math.round((at - after.value) / 1000) : null
        return Option.isNone(error)
          ? { ok: true, lastAnswerSecondsAgo: ago } as UpstreamHealth
          : { ok: false, lastAnswerSecondsAgo: ago, error: error.value } as UpstreamHealth
      })

    const observed = (pick: "routerOkAt" | "vpnOkAt") => () => Effect.map(metricsService.observations, (o) => o[pick])

    const health: Effect.Effect<HealthReport> = Effect.gen(function*() {
      const [routerHealth, vpnHealth] = yield* Effect.all([
        upstreamHealth(observed("routerOkAt"), routerFreshness, probe(router.lanNetworks)),
        upstreamHealth(observed("vpnOkAt"), vpnFreshness, probe(vpn.refreshPublicAddress))
      ], { concurrency: "unbounded" })
      const publicAddress = yield* vpn.publicAddress
      const reasons = [
        routerHealth.ok ? undefined : `router: ${routerHealth.error ?? "no answer"}`,
        vpnHealth.ok ? undefined : `VPN gateway: ${vpnHealth.error ?? "no answer"}`
      ].filter((reason) => reason !== undefined)
      return {
        status: reasons.length === 0 ? "ok" : "unavailable",
        ...(reasons.length === 0 ? {} : { reason: reasons.join("; ") }),
        bridgeId: metricsService.bridgeId,
        router: { ...routerHealth, inInterface: router.inInterface },
        vpn: { ...vpnHealth, gateway: vpn.gateway, publicAddress: Option.getOrNull(publicAddress) },
        leases: (yield* mapping.leases).length
      } satisfies HealthReport
    })

    let listening = Option.none<{ readonly address: string; readonly port: number }>()
    if (options.listen !== undefined) {
      const app = HttpRouter.empty.pipe(
        HttpRouter.get(
          "/metrics",
          Effect.map(metrics, (text) => HttpServerResponse.text(text, { contentType: PrometheusContentType }))
        ),
        HttpRouter.get(
          "/healthz",
          Effect.map(
            health,
            (report) => HttpServerResponse.unsafeJson(report, { status: report.status === "ok" ? 200 : 503 })
          )
        )
      )
      const http = yield* NodeHttpServer.make(() => createServer(), {
        host: options.listen.address,
        port: options.listen.port
      }).pipe(
        Effect.mapError((error) =>
          new MetricsServerError({
            reason: `cannot listen on ${options.listen!.address}:${options.listen!.port}: ${
              (error.cause as { readonly message?: string } | undefined)?.message ?? String(error.cause)
            }`,
            cause: error
          })
        )
      )
      yield* http.serve(app)
      const address = http.address._tag === "TcpAddress"
        ? { address: http.address.hostname, port: http.address.port }
        : { address: options.listen.address, port: options.listen.port }
      listening = Option.some(address)
      yield* Effect.logInfo(
        `metrics server listening on http://${address.address}:${address.port} (/metrics, /healthz)`
      )
    }

    return { listening, metrics, health } satisfies Service
  }).pipe(Effect.annotateLogs({ service: "MetricsServer" }))

/** A layer providing {@link MetricsServer}. */
export const layer = (
  options: Options = {}
): Layer.Layer<MetricsServer, MetricsServerError, Router | VpnGateway | MappingService | NatPmpServer> =>
  Layer.scoped(MetricsServer, make(options))
