/**
 * The whole bridge on loopback for tests, the demo and benchmarks: a RouterOS API simulator (the MikroTik), a
 * NAT-PMP gateway simulator (the VPN), the bridge between them, an announcement sink, and LAN clients bound to
 * `127.0.0.x` source addresses. Every port is ephemeral, so harnesses run in parallel.
 *
 * Defaults: the router is RouterOS 7 with `wg-proton` towards the VPN simulator (`127.0.0.1`) and its LAN on
 * `bridge` = `127.0.0.17/28` (so `127.0.0.20` and `127.0.0.21` are LAN clients and `127.0.0.40` is not); the VPN
 * behaves like ProtonVPN and starts at epoch 1000 (so a reset is detectable at once); the bridge allows
 * `127.0.0.16/28`, reconciles every 60 s (call `mapping.reconcile` to run it now) and announces to the sink.
 *
 * @since 0.1.0
 */
import { NatPmpMessage, UdpSocket as Udp } from "@natpmp-bridge/core"
import type { NatPmpClient } from "@natpmp-bridge/core"
import { NatPmpGatewaySimulator, RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Scope from "effect/Scope"
import * as Bridge from "../Bridge.js"
import type { BridgeConfig, BridgeOptions } from "../BridgeConfig.js"
import * as BridgeConfigModule from "../BridgeConfig.js"
import { MappingService } from "../MappingService.js"
import { MetricsServer } from "../MetricsServer.js"
import { NatPmpServer } from "../NatPmpServer.js"
import { Router } from "../Router.js"
import type * as RouterModule from "../Router.js"
import { VpnGateway } from "../VpnGateway.js"
import type * as VpnGatewayModule from "../VpnGateway.js"
import * as LanClient from "./LanClient.js"

type NatPmpGatewaySimulatorError = NatPmpClient.NatPmpSocketError

/** Bridge settings a harness may override (everything but the addresses of the simulators). */
export type BridgeOverrides = Partial<Omit<BridgeOptions, "vpnGateway" | "vpnGatewayPort" | "mikrotik">>

/** Harness options. */
export interface Options {
  /** How the VPN simulator behaves (default `protonvpn`). */
  readonly vpnMode?: NatPmpGatewaySimulator.Mode | undefined
  /** Other VPN simulator options (epoch default 1000). */
  readonly vpn?: Omit<NatPmpGatewaySimulator.Options, "mode" | "address" | "port" | "announceTo"> | undefined
  /** RouterOS 6 or 7 style routes and addresses (default 7). */
  readonly routerVersion?: 6 | 7 | undefined
  /** NAT rules present before the bridge starts (RouterOS property names). */
  readonly natRules?: ReadonlyArray<RouterOsSimulator.Row> | undefined
  /** The router's LAN address (default `127.0.0.17/28`). */
  readonly lanAddress?: string | undefined
  /** Bridge settings (default: allowed `127.0.0.16/28`, listen `127.0.0.1:0`). */
  readonly bridge?: BridgeOverrides | undefined
}

/** A datagram received by the announcement sink. */
export interface Announcement {
  readonly response: NatPmpMessage.PublicAddressResponse
  readonly from: { readonly address: string; readonly port: number }
  /** `Date.now()` milliseconds. */
  readonly at: number
}

/** A running bridge of a harness. */
export interface RunningBridge {
  readonly config: BridgeConfig
  /** Where LAN clients send requests. */
  readonly address: string
  readonly port: number
  readonly server: NatPmpServer["Type"]
  readonly mapping: MappingService["Type"]
  readonly router: RouterModule.Service
  readonly vpn: VpnGatewayModule.Service
  /** `/metrics` and `/healthz` (an HTTP server when the `metrics` setting is given, e.g. `127.0.0.1` port 0). */
  readonly metrics: MetricsServer["Type"]
  /** Shuts the bridge down (graceful: removes its rules and VPN mappings) and waits for it. */
  readonly stop: Effect.Effect<void>
}

/** The simulators and the means to start bridges between them. */
export interface Environment {
  readonly router: RouterOsSimulator.Simulator
  readonly vpn: NatPmpGatewaySimulator.NatPmpGatewaySimulator
  /** Announcements received so far, oldest first. */
  readonly announcements: Effect.Effect<ReadonlyArray<Announcement>>
  readonly announcementTarget: { readonly address: string; readonly port: number }
  /** The configuration the bridge starts with (before `start` overrides). */
  readonly config: BridgeConfig
  /** Starts a bridge instance (e.g. another one after `bridge.stop`, to test adoption), closed with the scope. */
  readonly start: (
    overrides?: BridgeOverrides
  ) => Effect.Effect<RunningBridge, Bridge.BridgeError | BridgeConfigModule.BridgeConfigError>
  /** A LAN client with source address `address` (e.g. `127.0.0.20`) talking to `bridge`. */
  readonly clientOf: (
    bridge: RunningBridge,
    address: string
  ) => Effect.Effect<LanClient.LanClient, LanClient.LanClientError, Scope.Scope>
}

/** The simulators with a running bridge. */
export interface BridgeHarness extends Environment {
  readonly bridge: RunningBridge
  /** A LAN client with source address `address` talking to the harness's bridge. */
  readonly client: (address: string) => Effect.Effect<LanClient.LanClient, LanClient.LanClientError, Scope.Scope>
}

const configFor = (
  router: RouterOsSimulator.Simulator,
  vpn: NatPmpGatewaySimulator.NatPmpGatewaySimulator,
  announceTo: { readonly address: string; readonly port: number },
  overrides: BridgeOverrides
): Either.Either<BridgeConfig, BridgeConfigModule.BridgeConfigError> =>
  BridgeConfigModule.make({
    allowedClients: ["127.0.0.16/28"],
    listen: { address: "127.0.0.1", port: 0 },
    announce: announceTo,
    shutdownTimeout: "5 seconds",
    ...overrides,
    vpnGateway: vpn.address,
    vpnGatewayPort: vpn.port,
    mikrotik: {
      host: router.host,
      port: router.port,
      user: router.user,
      password: router.password
    }
  })

/** Starts the simulators (no bridge yet), for the life of the scope. */
export const makeEnvironment = (
  options: Options = {}
): Effect.Effect<
  Environment,
  | RouterOsSimulator.RouterOsSimulatorError
  | NatPmpGatewaySimulatorError
  | LanClient.LanClientError
  | BridgeConfigModule.BridgeConfigError,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const seedOptions = { vpnGateway: "127.0.0.1", lanAddress: options.lanAddress ?? "127.0.0.17/28" }
    const router = yield* RouterOsSimulator.make({
      ...(options.routerVersion === 6
        ? RouterOsSimulator.vpnRouterV6(seedOptions)
        : RouterOsSimulator.vpnRouterV7(seedOptions)),
      natRules: options.natRules,
      password: "natpmp-test"
    })

    const announcements: Array<Announcement> = []
    const sink = yield* Udp.open({ address: "127.0.0.1", port: 0 }, (datagram) => {
      if (datagram._tag !== "Datagram") {
        return
      }
      const decoded = NatPmpMessage.decodeResponse(datagram.bytes)
      if (Either.isRight(decoded) && decoded.right._tag === "PublicAddressResponse") {
        announcements.push({
          response: decoded.right,
          from: { address: datagram.address, port: datagram.port },
          at: Date.now()
        })
      }
    }).pipe(
      Effect.mapError((error) => new LanClient.LanClientError({ reason: `announcement sink: ${error.message}` }))
    )
    const announcementTarget = Udp.localAddress(sink)

    const vpn = yield* NatPmpGatewaySimulator.make({
      epoch: 1000,
      ...options.vpn,
      mode: options.vpnMode ?? "protonvpn",
      address: "127.0.0.1",
      // the VPN's own announcements do not cross the router: send them nowhere in particular
      announceTo: { address: "127.0.0.1", port: 9 }
    })

    const config = yield* configFor(router, vpn, announcementTarget, options.bridge ?? {})

    const start = (overrides: BridgeOverrides = {}) =>
      Effect.gen(function*() {
        const bridgeConfig = yield* configFor(router, vpn, announcementTarget, { ...options.bridge, ...overrides })
        const bridgeScope = yield* Scope.fork(scope, ExecutionStrategy.sequential)
        const context = yield* Layer.buildWithScope(Bridge.layer(bridgeConfig), bridgeScope).pipe(
          Effect.onError((cause) => Scope.close(bridgeScope, Exit.failCause(cause)))
        )
        const server = Context.get(context, NatPmpServer)
        return {
          config: bridgeConfig,
          address: server.address,
          port: server.port,
          server,
          mapping: Context.get(context, MappingService),
          router: Context.get(context, Router),
          vpn: Context.get(context, VpnGateway),
          metrics: Context.get(context, MetricsServer),
          stop: Scope.close(bridgeScope, Exit.void)
        } satisfies RunningBridge
      })

    return {
      router,
      vpn,
      announcements: Effect.sync(() => [...announcements]),
      announcementTarget,
      config,
      start,
      clientOf: (bridge, address) => LanClient.make({ address, bridge: { address: bridge.address, port: bridge.port } })
    } satisfies Environment
  })

/** Starts the simulators and a bridge between them, for the life of the scope. */
export const make = (
  options: Options = {}
): Effect.Effect<
  BridgeHarness,
  | RouterOsSimulator.RouterOsSimulatorError
  | NatPmpGatewaySimulatorError
  | LanClient.LanClientError
  | BridgeConfigModule.BridgeConfigError
  | Bridge.BridgeError,
  Scope.Scope
> =>
  Effect.gen(function*() {
    const environment = yield* makeEnvironment(options)
    const bridge = yield* environment.start()
    return {
      ...environment,
      bridge,
      client: (address) => environment.clientOf(bridge, address)
    } satisfies BridgeHarness
  })
