/**
 * The bridge on loopback between the project's simulators (RouterOS 7 router, ProtonVPN-like VPN gateway), driven
 * by LAN clients bound to 127.0.0.x.
 *
 *   npx vitest bench --run --project server packages/server/bench/bridge.bench.ts
 *
 * - "PUBLIC_ADDRESS": hz = answers/s, one request at a time; "×100 in flight": answers/s = hz × 100.
 * - "new mapping + delete, through the bridge" vs "the same upstream work, direct": the second does what the bridge
 *   does upstream for one mapping and its delete (VPN map, dstnat print, rule add; rule remove, VPN delete) straight
 *   against the simulators, so the difference of the means is the latency the bridge adds per new mapping + delete.
 */
import { NatPmpClient, NatPmpMessage, RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import type { LanClient } from "@natpmp-bridge/server/testing"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Scope from "effect/Scope"
import { afterAll, beforeAll, bench, describe } from "vitest"

const IN_FLIGHT = 100

let scope: Scope.CloseableScope
let harness: BridgeHarness.BridgeHarness
let lan: LanClient.LanClient
let vpnClient: NatPmpClient.Service
let routerClient: RouterOsClient.Service
let nextPort = 20000

const quiet = <A, E>(effect: Effect.Effect<A, E>): Promise<A> =>
  Effect.runPromise(effect.pipe(Logger.withMinimumLogLevel(LogLevel.Warning)))

const inScope = <A, E>(effect: Effect.Effect<A, E, Scope.Scope>): Promise<A> => quiet(Scope.extend(effect, scope))

beforeAll(async () => {
  scope = Effect.runSync(Scope.make())
  harness = await inScope(BridgeHarness.make())
  lan = await inScope(harness.client("127.0.0.20"))
  vpnClient = await inScope(
    NatPmpClient.make({ gateway: harness.vpn.address, port: harness.vpn.port, announcements: false })
  )
  routerClient = await inScope(RouterOsClient.make(harness.router.clientOptions))
})

afterAll(async () => {
  await quiet(Scope.close(scope, Exit.void))
})

const upstreamNewAndDelete = (internalPort: number) =>
  Effect.gen(function*() {
    const mapping = yield* vpnClient.map({ protocol: "tcp", internalPort, lifetime: 60 })
    yield* RouterOsCommands.listDstNatRules
    const id = yield* RouterOsCommands.addNatRule({
      protocol: "tcp",
      inInterface: "wg-proton",
      dstPort: String(mapping.externalPort),
      toAddresses: "127.0.0.20",
      toPorts: String(internalPort),
      comment: `natpmp-bridge:bench tcp 127.0.0.20:${internalPort}`
    })
    yield* RouterOsCommands.removeNatRules([id])
    yield* vpnClient.unmap("tcp", internalPort)
  }).pipe(Effect.provideService(RouterOsClient.RouterOsClient, routerClient))

describe("PUBLIC_ADDRESS", () => {
  bench("one at a time", async () => {
    await quiet(lan.publicAddress)
  })

  bench(`${IN_FLIGHT} in flight`, async () => {
    await quiet(
      Effect.forEach(
        Array.from({ length: IN_FLIGHT }),
        () => lan.request({ _tag: "PublicAddressRequest" }),
        { concurrency: "unbounded", discard: true }
      )
    )
  })
})

describe("new mapping + delete", () => {
  bench("through the bridge", async () => {
    const internalPort = nextPort++
    const mapped = await quiet(lan.map({ protocol: "tcp", internalPort, lifetime: 60 }))
    if (mapped.resultCode !== NatPmpMessage.ResultCode.Success) {
      throw new Error(`bridge answered result ${mapped.resultCode}`)
    }
    await quiet(lan.unmap("tcp", internalPort))
  })

  bench("the same upstream work, direct", async () => {
    await quiet(upstreamNewAndDelete(nextPort++))
  })
})
