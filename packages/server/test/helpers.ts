import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import * as LogLevel from "effect/LogLevel"

/** A harness whose bridge logs warnings and errors only (set LOG_LEVEL=DEBUG to see everything). */
export const harness = (options: BridgeHarness.Options = {}) => BridgeHarness.make(quiet(options))

export const environment = (options: BridgeHarness.Options = {}) => BridgeHarness.makeEnvironment(quiet(options))

const quiet = (options: BridgeHarness.Options): BridgeHarness.Options => ({
  ...options,
  bridge: {
    logLevel: process.env.LOG_LEVEL === "DEBUG" ? LogLevel.Debug : LogLevel.Error,
    ...options.bridge
  }
})

/** The bridge's rules in the router's NAT table. */
export const ownRules = (h: BridgeHarness.Environment, bridgeId = "default") =>
  Effect.map(
    h.router.natRules,
    (rules) => rules.filter((rule) => rule.comment?.startsWith(`natpmp-bridge:${bridgeId} `))
  )

/** Router API commands (excluding /login) run by `effect`. */
export const routerCommands = <A, E, R>(h: BridgeHarness.Environment, effect: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    yield* h.router.resetCounters
    const result = yield* effect
    const log = yield* h.router.commandLog
    return { result, commands: log }
  })

/** Polls `condition` every 20 ms until it holds or `timeoutMs` passes; returns whether it held. */
export const eventually = <E, R>(condition: Effect.Effect<boolean, E, R>, timeoutMs = 3000) =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMs
    while (Date.now() < deadline) {
      if (yield* condition) return true
      yield* Effect.sleep("20 millis")
    }
    return yield* condition
  })
