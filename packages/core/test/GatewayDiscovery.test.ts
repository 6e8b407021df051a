import { describe, expect, it } from "@effect/vitest"
import { GatewayDiscovery } from "@natpmp-bridge/core"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import { isIPv4 } from "node:net"

/** Runs `effect` with PATH pointing nowhere, so `ip` / `netstat` cannot be found. */
const withoutRouteTools = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.acquireUseRelease(
    Effect.sync(() => {
      const saved = process.env.PATH
      process.env.PATH = "/nonexistent"
      return saved
    }),
    () => effect,
    (saved) =>
      Effect.sync(() => {
        process.env.PATH = saved
      })
  )

describe("GatewayDiscovery", () => {
  it.live("defaultGateway yields an IPv4 address or a typed one-line error", () =>
    Effect.gen(function*() {
      const result = yield* Effect.either(GatewayDiscovery.defaultGateway)
      if (Either.isRight(result)) {
        expect(isIPv4(result.right)).toBe(true)
      } else {
        expect(result.left._tag).toBe("GatewayNotFoundError")
        expect(result.left.message).toMatch(/^no default IPv4 gateway found: [^\n]+$/)
      }
    }))

  it.live.runIf(process.platform === "linux")(
    "a missing route tool is a GatewayNotFoundError",
    () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(withoutRouteTools(GatewayDiscovery.defaultGateway))
        expect(error._tag).toBe("GatewayNotFoundError")
        expect(error.message).toMatch(/^no default IPv4 gateway found: .*ENOENT[^\n]*$/)
      })
  )
})
