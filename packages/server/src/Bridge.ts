/**
 * The whole bridge as one Layer: RouterOS API client → MikroTik router (VPN in-interface detection), NAT-PMP VPN
 * gateway, client policy (allowed networks default to the router's LAN networks), mapping service (adoption,
 * expiry, reconciliation, shutdown cleanup) and the NAT-PMP server with announcements.
 *
 * - `Bridge.layer(config)` / `Bridge.layerConfig` for another Effect application,
 * - `Bridge.serve(config)` runs it until interrupted (SIGINT/SIGTERM through the runtime), then shuts down
 *   gracefully: the server stops answering, requests in flight finish, and every own rule (one remove) and VPN
 *   mapping is removed within the shutdown timeout. It logs in the configured `LOG_FORMAT` (its only logger).
 *
 * Every instance has its own metrics (`BridgeMetrics`, the router and VPN services instrumented) and a
 * `MetricsServer` (with its HTTP server of `/metrics` and `/healthz` when `METRICS_ADDR` is set).
 *
 * @since 0.1.0
 */
import { RouterOsClient } from "@natpmp-bridge/core"
import type * as ConfigError from "effect/ConfigError"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import type { BridgeConfig } from "./BridgeConfig.js"
import * as BridgeConfigModule from "./BridgeConfig.js"
import * as BridgeLogger from "./BridgeLogger.js"
import * as BridgeMetrics from "./BridgeMetrics.js"
import * as ClientPolicy from "./ClientPolicy.js"
import * as MappingService from "./MappingService.js"
import * as MetricsServer from "./MetricsServer.js"
import * as MikroTikRouter from "./MikroTikRouter.js"
import * as NatPmpServer from "./NatPmpServer.js"
import * as NatPmpVpnGateway from "./NatPmpVpnGateway.js"
import type { InInterfaceNotFoundError, RouterError } from "./Router.js"
import { Router } from "./Router.js"
import type { VpnGatewayError } from "./VpnGateway.js"
import { VpnGateway } from "./VpnGateway.js"

/** The router reports no LAN network and `ALLOWED_CLIENTS` is not set: nobody could use the bridge. */
export class NoAllowedClientsError extends Data.TaggedError("NoAllowedClientsError")<{
  readonly inInterface: string
}> {
  override get message(): string {
    return `the router has no address outside the VPN interface ${this.inInterface} to take LAN networks from; ` +
      `set ALLOWED_CLIENTS`
  }
}

/** Every way the bridge can fail to start. */
export type BridgeError =
  | RouterOsClient.RouterOsError
  | RouterError
  | InInterfaceNotFoundError
  | VpnGatewayError
  | NoAllowedClientsError
  | NatPmpServer.NatPmpServerError
  | MetricsServer.MetricsServerError

/** The services the bridge layer provides. */
export type Services =
  | NatPmpServer.NatPmpServer
  | MappingService.MappingService
  | Router
  | VpnGateway
  | ClientPolicy.ClientPolicy
  | BridgeMetrics.BridgeMetrics
  | MetricsServer.MetricsServer

/** The client policy: the configured networks, or the router's LAN networks. */
const policyLayer = (
  config: BridgeConfig
): Layer.Layer<ClientPolicy.ClientPolicy, RouterError | NoAllowedClientsError, Router> =>
  Layer.effect(
    ClientPolicy.ClientPolicy,
    Effect.gen(function*() {
      const router = yield* Router
      const networks = config.allowedClients ?? (yield* router.lanNetworks)
      if (networks.length === 0) return yield* new NoAllowedClientsError({ inInterface: router.inInterface })
      yield* Effect.logInfo(
        `allowed clients: ${networks.map(ClientPolicy.formatNetwork).join(", ")}` +
          (config.allowedClients === undefined ? " (the router's LAN networks)" : "")
      )
      return ClientPolicy.make({
        allowedNetworks: networks,
        maxLifetime: config.maxLifetime,
        clientQuota: config.clientQuota
      })
    })
  )

/** The bridge's layers over an existing `RouterOsClient` (for applications that share one). */
export const layerWithoutRouterOs = (
  config: BridgeConfig
): Layer.Layer<Services, Exclude<BridgeError, RouterOsClient.RouterOsError>, RouterOsClient.RouterOsClient> => {
  const metrics = BridgeMetrics.layer({ bridgeId: config.bridgeId })
  const router = Layer.effect(
    Router,
    Effect.zipWith(Router, BridgeMetrics.BridgeMetrics, BridgeMetrics.instrumentRouter)
  ).pipe(Layer.provide(MikroTikRouter.layer({ vpnGateway: config.vpnGateway, inInterface: config.inInterface })))
  const vpn = Layer.effect(
    VpnGateway,
    Effect.zipWith(VpnGateway, BridgeMetrics.BridgeMetrics, BridgeMetrics.instrumentVpn)
  ).pipe(Layer.provide(NatPmpVpnGateway.layer({
    gateway: config.vpnGateway,
    port: config.vpnGatewayPort,
    maxAttempts: config.vpnMaxAttempts,
    maxInFlight: config.vpnMaxInFlight,
    refreshInterval: config.reconcileInterval
  })))
  const upstream = Layer.merge(router, vpn)
  const policy = policyLayer(config).pipe(Layer.provide(router))
  const base = Layer.merge(upstream, policy)
  const mapping = MappingService.layer({
    bridgeId: config.bridgeId,
    portMode: config.portMode,
    reconcileInterval: config.reconcileInterval,
    adoptionGrace: config.adoptionGrace,
    requestTimeout: config.requestTimeout,
    shutdownTimeout: config.shutdownTimeout
  }).pipe(Layer.provideMerge(base))
  const server = NatPmpServer.layer({
    address: config.listen.address,
    port: config.listen.port,
    announce: config.announce === false ? false : { target: config.announce }
  })
  const endpoint = MetricsServer.layer({
    listen: config.metrics,
    vpnFreshness: Duration.max(Duration.times(config.reconcileInterval, 2), Duration.seconds(30))
  })
  return withLogLevel(
    config,
    endpoint.pipe(Layer.provideMerge(server.pipe(Layer.provideMerge(mapping))), Layer.provideMerge(metrics))
  )
}

const withLogLevel = <A, E, R>(config: BridgeConfig, layer: Layer.Layer<A, E, R>): Layer.Layer<A, E, R> =>
  config.logLevel === undefined ? layer : layer.pipe(Layer.provide(Logger.minimumLogLevel(config.logLevel)))

/** The whole bridge, from a configuration. */
export const layer = (config: BridgeConfig): Layer.Layer<Services, BridgeError> =>
  withLogLevel(
    config,
    layerWithoutRouterOs(config).pipe(
      Layer.provide(RouterOsClient.layer(config.mikrotik)),
      Layer.tap(() =>
        Effect.logInfo(`natpmp-bridge started: ${BridgeConfigModule.describe(config)}`).pipe(
          Effect.annotateLogs({ service: "Bridge" })
        )
      )
    )
  )

/** The whole bridge, configured from the environment (see `BridgeConfig.settings`). */
export const layerConfig: Layer.Layer<Services, BridgeError | ConfigError.ConfigError> = Layer.unwrapEffect(
  Effect.map(BridgeConfigModule.config, layer)
)

/**
 * Runs the bridge until interrupted, then shuts it down gracefully. With `NodeRuntime.runMain`, SIGINT and SIGTERM
 * interrupt it.
 */
export const serve = (config: BridgeConfig): Effect.Effect<never, BridgeError> => {
  const run = Layer.launch(layer(config)).pipe(
    Effect.onInterrupt(() =>
      Effect.logInfo(
        `natpmp-bridge stopped (cleanup bounded by ${Duration.format(config.shutdownTimeout)})`
      )
    )
  )
  const leveled = config.logLevel === undefined ? run : run.pipe(Logger.withMinimumLogLevel(config.logLevel))
  return leveled.pipe(BridgeLogger.withFormat(config.logFormat))
}

/** {@link serve} configured from the environment. */
export const serveConfig: Effect.Effect<never, BridgeError | ConfigError.ConfigError> = Effect.flatMap(
  BridgeConfigModule.config,
  serve
)
