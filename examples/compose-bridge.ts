/**
 * The bridge as a Layer inside another Effect application: the app starts the bridge (configured from the
 * environment, like `natpmp-bridge serve`) and runs its own fiber beside it, here one that reports the bridge's
 * leases every minute through the same services the bridge uses.
 *
 *   VPN_GATEWAY=10.2.0.1 MIKROTIK_API_ADDRESS=192.168.88.1 MIKROTIK_API_PASSWORD=... npx tsx examples/compose-bridge.ts
 */
import { NodeRuntime } from "@effect/platform-node"
import { Bridge, MappingService, NatPmpServer } from "@natpmp-bridge/server"
import { Effect, Layer, Schedule } from "effect"
import { isMain } from "./main.js"

/** One line about the bridge's leases. */
export const leaseReport = Effect.gen(function*() {
  const mapping = yield* MappingService.MappingService
  const leases = yield* mapping.leases
  return `${leases.length} mapping(s)` +
    leases.map((lease) => ` ${lease.protocol} ${lease.client}:${lease.internalPort}`).join(",")
})

/** The app's own part: where the bridge listens, then a lease report on every tick of `schedule`. */
export const reporter = <Out>(schedule: Schedule.Schedule<Out>) =>
  Effect.gen(function*() {
    const server = yield* NatPmpServer.NatPmpServer
    yield* Effect.log(`bridge listening on ${server.address}:${server.port}`)
    yield* leaseReport.pipe(Effect.flatMap(Effect.log), Effect.repeat(schedule))
  })

/** The application: the reporter runs as long as the app, on top of the bridge's layers. */
export const app = Layer.scopedDiscard(Effect.forkScoped(reporter(Schedule.spaced("1 minute")))).pipe(
  Layer.provide(Bridge.layerConfig)
)

if (isMain(import.meta.url)) {
  NodeRuntime.runMain(Layer.launch(app))
}
