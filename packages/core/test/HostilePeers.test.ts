import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { fuzzNatPmpClient, fuzzRouterOsClient } from "../fuzz/CoreFuzz.js"
import { parseSeed } from "../src/testing/Prng.js"

// `npm run fuzz` runs the same fuzzers with 1,000 rounds each
describe("clients against hostile peers", () => {
  it.live(
    "RouterOS client vs a server answering garbage: typed errors or results, within the timeout",
    () =>
      Effect.gen(function*() {
        const seed = parseSeed(process.env.FUZZ_SEED)
        const report = yield* fuzzRouterOsClient(40, seed)
        expect(report.violations, `seed ${seed}`).toEqual([])
        expect(report.inputs).toBe(40)
      }),
    { timeout: 60_000 }
  )

  it.live(
    "NAT-PMP client vs a gateway answering garbage: the first acceptable reply decides, else a timeout",
    () =>
      Effect.gen(function*() {
        const seed = parseSeed(process.env.FUZZ_SEED)
        const report = yield* fuzzNatPmpClient(40, seed)
        expect(report.violations, `seed ${seed}`).toEqual([])
        expect(report.inputs).toBe(40)
      }),
    { timeout: 60_000 }
  )
})
