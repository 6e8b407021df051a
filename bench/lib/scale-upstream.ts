/**
 * The upstream of the scale bench in its own process: a RouterOS 7 simulator (VPN interface `wg-proton` towards
 * 127.0.0.1, LAN `127.64.0.1/16`) and a ProtonVPN-like NAT-PMP gateway simulator on 127.0.0.1 (lifetimes capped
 * at SCALE_LIFETIME seconds, default 60). Started with an IPC channel (`child_process.fork`): sends
 * `{ type: "ready", ... }`, answers `{ cmd: "counters" }` and exits when the channel closes.
 */
import { NatPmpGatewaySimulator, RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"

export interface Ready {
  readonly type: "ready"
  readonly router: { readonly host: string; readonly port: number; readonly user: string; readonly password: string }
  readonly vpn: { readonly address: string; readonly port: number }
}

export interface Counters {
  readonly type: "counters"
  readonly routerCommands: number
  readonly routerPrints: number
  readonly routerAdds: number
  readonly natRules: number
  readonly vpnRequests: number
  readonly vpnMappings: number
}

const lifetime = Number(process.env.SCALE_LIFETIME ?? 60)

const program = Effect.gen(function*() {
  const router = yield* RouterOsSimulator.make({
    ...RouterOsSimulator.vpnRouterV7({ vpnGateway: "127.0.0.1", lanAddress: "127.64.0.1/16" }),
    password: "bench"
  })
  const vpn = yield* NatPmpGatewaySimulator.make({
    mode: "protonvpn",
    maxLifetime: lifetime,
    address: "127.0.0.1",
    epoch: 1000,
    announceTo: { address: "127.0.0.1", port: 9 }
  })
  const send = (message: Ready | Counters) => process.send?.(message)
  process.on("message", (message: { readonly cmd?: string }) => {
    if (message.cmd !== "counters") return
    Effect.runPromise(Effect.all({
      routerCommands: router.commandCount(),
      routerPrints: router.commandCount("/ip/firewall/nat/print"),
      routerAdds: router.commandCount("/ip/firewall/nat/add"),
      natRules: Effect.map(router.natRules, (rules) => rules.length),
      vpnRequests: vpn.requestCount,
      vpnMappings: Effect.map(vpn.mappings, (mappings) => mappings.length)
    })).then((counters) => send({ type: "counters", ...counters }))
  })
  send({
    type: "ready",
    router: { host: router.host, port: router.port, user: router.user, password: router.password },
    vpn: { address: vpn.address, port: vpn.port }
  })
  yield* Effect.async<void>((resume) => {
    process.on("disconnect", () => resume(Effect.void))
  })
})

Effect.runPromise(Effect.scoped(program)).then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
