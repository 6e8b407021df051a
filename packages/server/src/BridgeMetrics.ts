/**
 * The bridge's metrics, as Effect `Metric`s rendered in the Prometheus text format (`/metrics` of the
 * `MetricsServer`):
 *
 * - `natpmp_requests_total{opcode,result}` and `natpmp_request_duration_seconds{opcode}`: answered requests,
 * - `natpmp_dropped_datagrams_total{reason}`: datagrams dropped without an answer,
 * - `natpmp_active_leases`: mappings held now,
 * - `natpmp_upstream_latency_seconds{upstream,operation}`: VPN gateway requests (`upstream="vpn"`) and router API
 *   round trips (`upstream="router"`),
 * - `natpmp_router_api_errors_total{kind}`, `natpmp_vpn_errors_total{kind}`: failed upstream requests,
 * - `natpmp_reconcile_runs_total`, `natpmp_reconcile_errors_total`, `natpmp_reconcile_fixes_total{kind}`,
 * - `natpmp_bridge_info{bridge_id}`: always 1.
 *
 * Effect's metric registry is global to the process; every bridge instance tags its series with its own instance
 * number and renders only those, so several bridges in one process (tests) never see each other's values.
 *
 * {@link instrumentRouter} and {@link instrumentVpn} wrap the upstream services to time them, count their errors
 * and remember when each last answered (for `/healthz`).
 *
 * @since 0.1.0
 */
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Cause from "effect/Cause"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as MetricBoundaries from "effect/MetricBoundaries"
import * as MetricKey from "effect/MetricKey"
import type * as MetricKeyType from "effect/MetricKeyType"
import * as MetricLabel from "effect/MetricLabel"
import type * as MetricPair from "effect/MetricPair"
import * as MetricState from "effect/MetricState"
import * as Option from "effect/Option"
import type { ReconcileReport } from "./MappingService.js"
import type { RouterError, Service as RouterService } from "./Router.js"
import type { Service as VpnService, VpnGatewayError } from "./VpnGateway.js"

// -----------------------------------------------------------------------------
// metric definitions (global; every series carries the instance tag)
// -----------------------------------------------------------------------------

const InstanceTag = "bridge_instance"

/** 0.25 ms to about 4 s. */
const latencyBoundaries = MetricBoundaries.exponential({ start: 0.00025, factor: 2, count: 15 })

// Metric keys, not metrics: an instance builds each series once with all its labels in the key, so an update finds
// its hook without hashing a key (`Metric.tagged` would, at every update).
const requestsTotal = MetricKey.counter("natpmp_requests_total", {
  description: "NAT-PMP requests answered, by opcode and result",
  incremental: true
})
const requestDuration = MetricKey.histogram(
  "natpmp_request_duration_seconds",
  latencyBoundaries,
  "time from a request's arrival to its answer"
)
const activeLeases = MetricKey.gauge("natpmp_active_leases", { description: "mappings the bridge holds now" })
const upstreamLatency = MetricKey.histogram(
  "natpmp_upstream_latency_seconds",
  latencyBoundaries,
  "duration of VPN gateway requests (upstream=vpn) and router API round trips (upstream=router)"
)
const routerErrors = MetricKey.counter("natpmp_router_api_errors_total", {
  description: "failed router API operations, by kind of failure",
  incremental: true
})
const vpnErrors = MetricKey.counter("natpmp_vpn_errors_total", {
  description: "failed VPN gateway requests, by kind of failure",
  incremental: true
})
const reconcileRuns = MetricKey.counter("natpmp_reconcile_runs_total", {
  description: "reconciliation passes",
  incremental: true
})
const reconcileErrors = MetricKey.counter("natpmp_reconcile_errors_total", {
  description: "reconciliation passes that failed (router unreachable)",
  incremental: true
})
const reconcileFixes = MetricKey.counter("natpmp_reconcile_fixes_total", {
  description: "rules reconciliation fixed: removed (own rule without mapping), recreated, fixed (drifted)",
  incremental: true
})
const bridgeInfo = MetricKey.gauge("natpmp_bridge_info", { description: "the bridge's id (value always 1)" })

const noLabels: ReadonlyArray<MetricLabel.MetricLabel> = []

// -----------------------------------------------------------------------------
// labels
// -----------------------------------------------------------------------------

/** The `opcode` label of an answer. */
export const opcodeLabel = (response: NatPmpMessage.Response): string => {
  switch (response._tag) {
    case "PublicAddressResponse":
      return "public_address"
    case "MapResponse":
      return `map_${response.protocol}`
    case "ErrorResponse":
      return response.opcode === 0
        ? "public_address"
        : response.opcode === 1
        ? "map_udp"
        : response.opcode === 2
        ? "map_tcp"
        : "other"
  }
}

/** The `result` label of a NAT-PMP result code. */
export const resultLabel = (resultCode: number): string => {
  switch (resultCode) {
    case NatPmpMessage.ResultCode.Success:
      return "success"
    case NatPmpMessage.ResultCode.UnsupportedVersion:
      return "unsupported_version"
    case NatPmpMessage.ResultCode.NotAuthorized:
      return "not_authorized"
    case NatPmpMessage.ResultCode.NetworkFailure:
      return "network_failure"
    case NatPmpMessage.ResultCode.OutOfResources:
      return "out_of_resources"
    case NatPmpMessage.ResultCode.UnsupportedOpcode:
      return "unsupported_opcode"
    default:
      return String(resultCode)
  }
}

/** The `kind` label of a router failure: the RouterOS API error behind it (connection, timeout, trap...). */
export const routerErrorKind = (error: RouterError): string => {
  const tag = (error.cause as { readonly _tag?: unknown } | undefined)?._tag
  switch (tag) {
    case "RouterOsConnectionError":
      return "connection"
    case "RouterOsTimeoutError":
      return "timeout"
    case "RouterOsTrapError":
      return "trap"
    case "RouterOsFatalError":
      return "fatal"
    case "RouterOsLoginError":
      return "login"
    case "RouterOsProtocolError":
      return "protocol"
    default:
      return "other"
  }
}

/** The `kind` label of a VPN failure. */
export const vpnErrorKind = (error: VpnGatewayError): string => {
  switch (error.reason) {
    case "Timeout":
      return "timeout"
    case "Unreachable":
      return "unreachable"
    case "Refused":
      return "refused"
    case "OutOfResources":
      return "out_of_resources"
    case "NetworkFailure":
      return "network_failure"
    case "Socket":
      return "socket"
  }
}

// -----------------------------------------------------------------------------
// service
// -----------------------------------------------------------------------------

/** An answered request, as the server saw it. */
export interface RequestObservation {
  readonly response: NatPmpMessage.Response
  readonly seconds: number
}

/** When the upstreams last answered (clock milliseconds) and their last failures. */
export interface UpstreamObservations {
  readonly routerOkAt: Option.Option<number>
  readonly routerError: Option.Option<string>
  readonly vpnOkAt: Option.Option<number>
  readonly vpnError: Option.Option<string>
}

/** One bridge instance's metrics. */
export interface Service {
  readonly bridgeId: string
  readonly request: (observation: RequestObservation) => Effect.Effect<void>
  /** The same, outside any fiber (the server's answers given straight from the socket callback). */
  readonly unsafeRequest: (response: NatPmpMessage.Response, seconds: number) => void
  readonly upstream: (
    upstream: "vpn" | "router",
    operation: string,
    seconds: number,
    failure: Option.Option<{ readonly kind: string; readonly message: string }>
  ) => Effect.Effect<void>
  /** The same, outside any fiber (`now`: clock milliseconds). */
  readonly unsafeUpstream: (
    upstream: "vpn" | "router",
    operation: string,
    seconds: number,
    now: number,
    failure: Option.Option<{ readonly kind: string; readonly message: string }>
  ) => void
  readonly reconciled: (report: ReconcileReport) => Effect.Effect<void>
  readonly reconcileFailed: Effect.Effect<void>
  readonly setActiveLeases: (count: number) => Effect.Effect<void>
  readonly observations: Effect.Effect<UpstreamObservations>
  /** This instance's series (the instance tag removed). */
  readonly snapshot: Effect.Effect<ReadonlyArray<MetricPair.MetricPair.Untyped>>
}

const noop: Service = {
  bridgeId: "",
  request: () => Effect.void,
  unsafeRequest: () => {},
  upstream: () => Effect.void,
  unsafeUpstream: () => {},
  reconciled: () => Effect.void,
  reconcileFailed: Effect.void,
  setActiveLeases: () => Effect.void,
  observations: Effect.succeed({
    routerOkAt: Option.none(),
    routerError: Option.none(),
    vpnOkAt: Option.none(),
    vpnError: Option.none()
  }),
  snapshot: Effect.succeed([])
}

/** The metrics of the bridge being built; by default none are recorded. */
export class BridgeMetrics extends Context.Reference<BridgeMetrics>()("@natpmp-bridge/server/BridgeMetrics", {
  defaultValue: () => noop
}) {}

let instances = 0

/** Creates the metrics of one bridge instance. */
export const make = (options: { readonly bridgeId: string }): Effect.Effect<Service> =>
  Effect.gen(function*() {
    const instance = String(++instances)
    /** The series of `key` with this instance's tag and `labels` (name, value, name, value...). */
    const series = <Type extends MetricKeyType.MetricKeyType<any, any>>(
      key: MetricKey.MetricKey<Type>,
      ...labels: ReadonlyArray<string>
    ) => {
      const tags = [MetricLabel.make(InstanceTag, instance)]
      for (let i = 0; i + 1 < labels.length; i += 2) tags.push(MetricLabel.make(labels[i], labels[i + 1]))
      return Metric.fromMetricKey(MetricKey.taggedWithLabels(key, tags))
    }
    /** Tagged metrics are built once per label set. */
    const cached = <M>(build: (...labels: ReadonlyArray<string>) => M) => {
      const cache = new Map<string, M>()
      return (...labels: ReadonlyArray<string>): M => {
        const key = labels.join("\u0000")
        let metric = cache.get(key)
        if (metric === undefined) {
          metric = build(...labels)
          cache.set(key, metric)
        }
        return metric
      }
    }
    const requests = cached((opcode, result) => series(requestsTotal, "opcode", opcode, "result", result))
    const durations = cached((opcode) => series(requestDuration, "opcode", opcode))
    const latencies = cached((upstream, operation) =>
      series(upstreamLatency, "upstream", upstream, "operation", operation)
    )
    const routerErrorCounter = cached((kind) => series(routerErrors, "kind", kind))
    const vpnErrorCounter = cached((kind) => series(vpnErrors, "kind", kind))
    const fixes = cached((kind) => series(reconcileFixes, "kind", kind))
    const leases = series(activeLeases)
    const runs = series(reconcileRuns)
    const runErrors = series(reconcileErrors)

    // series present from the start (a scrape shows zeros instead of nothing)
    yield* Metric.set(series(bridgeInfo, "bridge_id", options.bridgeId), 1)
    yield* Metric.set(leases, 0)
    yield* Metric.incrementBy(runs, 0)
    yield* Metric.incrementBy(runErrors, 0)
    for (const kind of ["removed", "recreated", "fixed"]) yield* Metric.incrementBy(fixes(kind), 0)

    const observed = {
      routerOkAt: Option.none<number>(),
      routerError: Option.none<string>(),
      vpnOkAt: Option.none<number>(),
      vpnError: Option.none<string>()
    }

    const unsafeRequest = (response: NatPmpMessage.Response, seconds: number): void => {
      const opcode = opcodeLabel(response)
      requests(opcode, resultLabel(response.resultCode)).unsafeUpdate(1, noLabels)
      durations(opcode).unsafeUpdate(seconds, noLabels)
    }

    const unsafeUpstream: Service["unsafeUpstream"] = (upstream, operation, seconds, now, failure) => {
      latencies(upstream, operation).unsafeUpdate(seconds, noLabels)
      if (Option.isSome(failure)) {
        const errors = upstream === "router"
          ? routerErrorCounter(failure.value.kind)
          : vpnErrorCounter(failure.value.kind)
        errors.unsafeUpdate(1, noLabels)
        if (upstream === "router") observed.routerError = Option.some(failure.value.message)
        else observed.vpnError = Option.some(failure.value.message)
      } else if (upstream === "router") {
        observed.routerOkAt = Option.some(now)
      } else {
        observed.vpnOkAt = Option.some(now)
      }
    }

    return {
      bridgeId: options.bridgeId,
      request: ({ response, seconds }) => Effect.sync(() => unsafeRequest(response, seconds)),
      unsafeRequest,
      upstream: (upstream, operation, seconds, failure) =>
        Effect.clockWith((clock) =>
          Effect.sync(() => unsafeUpstream(upstream, operation, seconds, clock.unsafeCurrentTimeMillis(), failure))
        ),
      unsafeUpstream,
      reconciled: (report) =>
        Effect.all([
          Metric.increment(runs),
          Metric.incrementBy(fixes("removed"), report.removed),
          Metric.incrementBy(fixes("recreated"), report.recreated),
          Metric.incrementBy(fixes("fixed"), report.fixed)
        ], { discard: true }),
      reconcileFailed: Effect.zipRight(Metric.increment(runs), Metric.increment(runErrors)),
      setActiveLeases: (count) => Metric.set(leases, count),
      observations: Effect.sync(() => ({ ...observed })),
      snapshot: Effect.map(Metric.snapshot, (pairs) =>
        pairs.flatMap((pair) =>
          pair.metricKey.tags.some((label) =>
              label.key === InstanceTag && label.value === instance
            )
            ? [{
              ...pair,
              metricKey: {
                ...pair.metricKey,
                tags: pair.metricKey.tags.filter((label) => label.key !== InstanceTag)
              }
            } as MetricPair.MetricPair.Untyped]
            : []
        ))
    } satisfies Service
  })

/** A layer providing one instance's {@link BridgeMetrics}. */
export const layer = (options: { readonly bridgeId: string }): Layer.Layer<BridgeMetrics> =>
  Layer.effect(BridgeMetrics, make(options))

// -----------------------------------------------------------------------------
// instrumentation of the upstream services
// -----------------------------------------------------------------------------

/** Times `effect` with the clock read synchronously, and records it without a fiber step of its own. */
const timed = <A, E>(
  metrics: Service,
  upstream: "vpn" | "router",
  operation: string,
  kindOf: (error: E) => string,
  effect: Effect.Effect<A, E>
): Effect.Effect<A, E> =>
  Effect.clockWith((clock) => {
    const started = clock.unsafeCurrentTimeNanos()
    return Effect.flatMap(Effect.exit(effect), (exit) => {
      const seconds = Number(clock.unsafeCurrentTimeNanos() - started) / 1e9
      metrics.unsafeUpstream(
        upstream,
        operation,
        seconds,
        clock.unsafeCurrentTimeMillis(),
        exit._tag === "Failure"
          ? Option.map(
            Cause.failureOption(exit.cause),
            (error) => ({ kind: kindOf(error), message: (error as { readonly message?: string }).message ?? "failed" })
          )
          : Option.none()
      )
      return exit
    })
  })

/** The router service, timed (`upstream="router"`), its failures counted by kind. */
export const instrumentRouter = (router: RouterService, metrics: Service): RouterService => {
  const time = <A>(operation: string, effect: Effect.Effect<A, RouterError>) =>
    timed(metrics, "router", operation, routerErrorKind, effect)
  return {
    ...router,
    lanNetworks: time("addresses", router.lanNetworks),
    dstNatRules: time("print", router.dstNatRules),
    dstNatRulesWhere: (keep) => time("print", router.dstNatRulesWhere(keep)),
    addRule: (spec) => time("add", router.addRule(spec)),
    updateRule: (id, spec, current) => time("set", router.updateRule(id, spec, current)),
    removeRules: (ids) => time("remove", router.removeRules(ids))
  }
}

/** The VPN gateway service, timed (`upstream="vpn"`), its failures counted by kind. */
export const instrumentVpn = (vpn: VpnService, metrics: Service): VpnService => {
  const time = <A>(operation: string, effect: Effect.Effect<A, VpnGatewayError>) =>
    timed(metrics, "vpn", operation, vpnErrorKind, effect)
  return {
    ...vpn,
    refreshPublicAddress: time("public_address", vpn.refreshPublicAddress),
    map: (request) => time("map", vpn.map(request)),
    unmap: (protocol, port) => time("unmap", vpn.unmap(protocol, port))
  }
}

// -----------------------------------------------------------------------------
// Prometheus text format
// -----------------------------------------------------------------------------

const escapeLabel = (value: string): string => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, "\\\"")

const labelsText = (labels: ReadonlyArray<readonly [string, string]>): string =>
  labels.length === 0 ? "" : `{${labels.map(([key, value]) => `${key}="${escapeLabel(value)}"`).join(",")}}`

const numberText = (value: number | bigint): string =>
  typeof value === "bigint"
    ? value.toString()
    : value === Number.POSITIVE_INFINITY
    ? "+Inf"
    : value === Number.NEGATIVE_INFINITY
    ? "-Inf"
    : Number.isNaN(value)
    ? "NaN"
    : String(value)

/** A counter series given directly (not from a `Metric`): name, help, labels and value. */
export interface ExtraCounter {
  readonly name: string
  readonly help: string
  readonly labels: ReadonlyArray<readonly [string, string]>
  readonly value: number
}

/** Renders metric pairs (and extra counters) in the Prometheus text exposition format (version 0.0.4). */
export const renderPrometheus = (
  pairs: ReadonlyArray<MetricPair.MetricPair.Untyped>,
  extra: ReadonlyArray<ExtraCounter> = []
): string => {
  interface Family {
    type: string
    help: string
    lines: Array<string>
  }
  const families = new Map<string, Family>()
  const family = (name: string, type: string, help: string): Family => {
    let found = families.get(name)
    if (found === undefined) {
      found = { type, help, lines: [] }
      families.set(name, found)
    }
    return found
  }
  const sorted = pairs.map((pair) => ({
    pair,
    labels: [...pair.metricKey.tags].sort((a, b) => a.key.localeCompare(b.key)).map((l) => [l.key, l.value] as const)
  })).map((entry) => ({ ...entry, order: `${entry.pair.metricKey.name}${labelsText(entry.labels)}` }))
    .sort((a, b) => a.order < b.order ? -1 : a.order > b.order ? 1 : 0)
  for (const { labels, pair } of sorted) {
    const key = pair.metricKey
    const name = key.name
    const help = Option.getOrElse(key.description, () => name)
    const state = pair.metricState
    if (MetricState.isCounterState(state)) {
      family(name, "counter", help).lines.push(`${name}${labelsText(labels)} ${numberText(state.count)}`)
    } else if (MetricState.isGaugeState(state)) {
      family(name, "gauge", help).lines.push(`${name}${labelsText(labels)} ${numberText(state.value)}`)
    } else if (MetricState.isHistogramState(state)) {
      const lines = family(name, "histogram", help).lines
      let infinite = false
      for (const [boundary, count] of state.buckets) {
        if (boundary === Number.POSITIVE_INFINITY) infinite = true
        lines.push(`${name}_bucket${labelsText([...labels, ["le", numberText(boundary)]])} ${count}`)
      }
      if (!infinite) lines.push(`${name}_bucket${labelsText([...labels, ["le", "+Inf"]])} ${state.count}`)
      lines.push(`${name}_sum${labelsText(labels)} ${numberText(state.sum)}`)
      lines.push(`${name}_count${labelsText(labels)} ${state.count}`)
    }
  }
  for (const counter of extra) {
    family(counter.name, "counter", counter.help).lines.push(
      `${counter.name}${labelsText(counter.labels)} ${numberText(counter.value)}`
    )
  }
  const out: Array<string> = []
  for (const name of [...families.keys()].sort()) {
    const { help, lines, type } = families.get(name)!
    out.push(`# HELP ${name} ${help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}`, `# TYPE ${name} ${type}`)
    out.push(...lines)
  }
  return out.join("\n") + "\n"
}
