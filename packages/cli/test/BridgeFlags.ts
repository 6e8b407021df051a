/**
 * What points a `natpmp-bridge` bin at the simulators of `BridgeHarness.makeEnvironment`: the router connection
 * flags, the VPN gateway flags, and the password in the environment (like in production, never as a flag).
 */
import type { BridgeHarness } from "@natpmp-bridge/server/testing"
import type * as Effect from "effect/Effect"

export type Environment = Effect.Effect.Success<ReturnType<typeof BridgeHarness.makeEnvironment>>

/** `--mikrotik-api-address` and `--mikrotik-api-user` of the RouterOS simulator. */
export const routerFlags = (environment: Environment): Array<string> => [
  "--mikrotik-api-address",
  `${environment.router.host}:${environment.router.port}`,
  "--mikrotik-api-user",
  environment.router.user
]

/** The VPN gateway simulator's flags, then the router's. */
export const upstreamFlags = (environment: Environment): Array<string> => [
  "--vpn-gateway",
  environment.vpn.address,
  "--vpn-gateway-port",
  String(environment.vpn.port),
  ...routerFlags(environment)
]

/** The router password, as the bin reads it from the environment. */
export const passwordEnv = (environment: Environment) => ({ MIKROTIK_API_PASSWORD: environment.router.password })

/**
 * Everything `serve` needs on loopback: the upstream flags, an ephemeral listening port, the allowed clients,
 * announcements off (tests run in parallel) and the bridge id.
 */
export const serveFlags = (
  environment: Environment,
  bridgeId: string,
  allowedClients = "127.0.0.1/32"
): Array<string> => [
  ...upstreamFlags(environment),
  "--listen-addr",
  "127.0.0.1:0",
  "--allowed-clients",
  allowedClients,
  "--announce-addr",
  "off",
  "--bridge-id",
  bridgeId
]
