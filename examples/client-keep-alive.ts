/**
 * Keep a UDP mapping alive until Ctrl-C: renewed at half its lifetime, re-mapped after a gateway reboot or an
 * address announcement, and deleted when the scope closes (here: on SIGINT/SIGTERM).
 *
 *   npx tsx examples/client-keep-alive.ts 10.2.0.1 51413
 */
import { NodeRuntime } from "@effect/platform-node"
import { NatPmpClient } from "@natpmp-bridge/core"
import { Effect, Stream } from "effect"
import { isMain } from "./main.js"

/** Holds the mapping and calls `onPort` with its public port, then with every new one. */
export const keepMapped = (
  internalPort: number,
  onPort: (externalPort: number) => Effect.Effect<void>,
  lifetime = 60
) =>
  Effect.gen(function*() {
    const kept = yield* NatPmpClient.keep({ protocol: "udp", internalPort, lifetime })
    yield* kept.changes.pipe(
      Stream.map((mapping) => mapping.externalPort),
      Stream.changes,
      Stream.runForEach(onPort)
    )
  })

if (isMain(import.meta.url)) {
  const [gateway = "10.2.0.1", port = "51413"] = process.argv.slice(2)
  NodeRuntime.runMain(
    keepMapped(Number(port), (externalPort) => Effect.log(`public port ${externalPort}`)).pipe(
      Effect.scoped,
      Effect.provide(NatPmpClient.layer({ gateway }))
    )
  )
}
