/**
 * One-shot NAT-PMP: the gateway's public address, then a TCP mapping of a local port for an hour.
 *
 *   npx tsx examples/client-one-shot.ts 10.2.0.1 51413
 */
import { NodeRuntime } from "@effect/platform-node"
import { NatPmpClient } from "@natpmp-bridge/core"
import { Effect } from "effect"
import { isMain } from "./main.js"

export const mapOnce = (internalPort: number) =>
  Effect.gen(function*() {
    const client = yield* NatPmpClient.NatPmpClient
    const { publicAddress } = yield* client.publicAddress
    const mapping = yield* client.map({ protocol: "tcp", internalPort, lifetime: 3600 })
    yield* Effect.log(`reachable at ${publicAddress}:${mapping.externalPort} for ${mapping.lifetime} s`)
    return { publicAddress, mapping }
  })

if (isMain(import.meta.url)) {
  const [gateway = "10.2.0.1", port = "51413"] = process.argv.slice(2)
  NodeRuntime.runMain(mapOnce(Number(port)).pipe(Effect.provide(NatPmpClient.layer({ gateway }))))
}
