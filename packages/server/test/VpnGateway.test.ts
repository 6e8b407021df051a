import { describe, expect, it } from "@effect/vitest"
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import { NatPmpVpnGateway } from "@natpmp-bridge/server"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"

describe("NatPmpVpnGateway", () => {
  it.scopedLive("reads the public address at start, then waits a whole refresh interval (not the retry interval)", () =>
    Effect.gen(function*() {
      const vpn = yield* NatPmpGatewaySimulator.make({ mode: "protonvpn", publicAddress: "203.0.113.9" })
      const gateway = yield* NatPmpVpnGateway.make({
        gateway: vpn.address,
        port: vpn.port,
        retryInterval: "200 millis",
        refreshInterval: "1 minute"
      })
      expect(yield* gateway.publicAddress).toEqual(Option.some("203.0.113.9"))
      yield* Effect.sleep("700 millis")
      expect((yield* vpn.counters).publicAddress).toBe(1)
    }))

  it.scopedLive("retries at the retry interval while the address is unknown", () =>
    Effect.gen(function*() {
      const vpn = yield* NatPmpGatewaySimulator.make({ mode: "protonvpn", publicAddress: "203.0.113.9" })
      yield* vpn.setSilent(true)
      const gateway = yield* NatPmpVpnGateway.make({
        gateway: vpn.address,
        port: vpn.port,
        initialTimeout: "20 millis",
        maxAttempts: 1,
        retryInterval: "100 millis",
        refreshInterval: "1 minute"
      })
      expect(yield* gateway.publicAddress).toEqual(Option.none())
      yield* vpn.setSilent(false)
      yield* Effect.sleep("600 millis")
      expect(yield* gateway.publicAddress).toEqual(Option.some("203.0.113.9"))
    }))
})
