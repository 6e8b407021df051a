import { assert, describe, expect, it } from "@effect/vitest"
import { NatPmpClient } from "@natpmp-bridge/core"
import type { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Chunk from "effect/Chunk"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as Stream from "effect/Stream"
import * as TestClock from "effect/TestClock"
import { eventually, gatewayAndClient, realSleep, sleeperAt } from "./NatPmpFixtures.js"

type KeepEvent = NatPmpClient.KeepEvent

/** Starts a keep-alive on `client`, recording its events. */
const keepRecording = (client: NatPmpClient.Service, options: Omit<NatPmpClient.KeepOptions, "onEvent">) =>
  Effect.gen(function*() {
    const events: Array<KeepEvent> = []
    const alive = yield* NatPmpClient.keep({
      ...options,
      onEvent: (event) => Effect.sync(() => events.push(event))
    }).pipe(Effect.provideService(NatPmpClient.NatPmpClient, client))
    const eventCount = (n: number) =>
      eventually(Effect.sync(() => events.length), (length) => length >= n, `${n} events`)
    return { alive, events, eventCount }
  })

const lastRequest = (received: ReadonlyArray<NatPmpGatewaySimulator.ReceivedDatagram>) => {
  const last = received.at(-1)?.datagram
  assert(last?._tag === "Request")
  return last.request
}

describe("NatPmpClient.keep", () => {
  it.scoped("renews at half the granted lifetime, suggesting the assigned port", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({ simulator: { mode: "protonvpn" } })
      const { alive, eventCount, events } = yield* keepRecording(client, {
        protocol: "udp",
        internalPort: 5000,
        lifetime: 3600
      })
      const first = yield* alive.mapping
      expect(first.lifetime).toBe(60)
      expect(events).toStrictEqual([
        NatPmpClient.KeepEvent.Mapped({ mapping: first, reason: "initial", previous: undefined })
      ])

      yield* sleeperAt(30_000)
      yield* TestClock.adjust("29999 millis")
      yield* realSleep(10)
      expect((yield* simulator.counters).mapUdp).toBe(1)
      yield* TestClock.adjust("1 millis")
      yield* eventCount(2)
      expect(lastRequest(yield* simulator.received)).toMatchObject({
        protocol: "udp",
        internalPort: 5000,
        suggestedExternalPort: first.externalPort,
        lifetime: 3600
      })
      const renewed = yield* alive.mapping
      expect(events[1]).toStrictEqual(
        NatPmpClient.KeepEvent.Mapped({ mapping: renewed, reason: "renewal", previous: first })
      )
      expect(renewed.externalPort).toBe(first.externalPort)

      // and again 30 s after the renewal
      yield* sleeperAt(60_000)
      yield* TestClock.adjust("30 seconds")
      yield* eventCount(3)
      expect((yield* simulator.counters).mapUdp).toBe(3)
    }))

  it.scoped("reports a port change on renewal and publishes it on `changes`", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({ simulator: { mode: "protonvpn" } })
      const { alive, eventCount, events } = yield* keepRecording(client, { protocol: "tcp", internalPort: 6000 })
      const first = yield* alive.mapping
      const changes = yield* Effect.fork(Stream.runCollect(Stream.take(alive.changes, 2)))
      yield* simulator.changePortsOnRenewal(true)
      yield* sleeperAt(30_000)
      yield* TestClock.adjust("30 seconds")
      yield* eventCount(3)
      const second = yield* alive.mapping
      expect(second.externalPort).not.toBe(first.externalPort)
      expect(events.slice(1)).toStrictEqual([
        NatPmpClient.KeepEvent.Mapped({ mapping: second, reason: "renewal", previous: first }),
        NatPmpClient.KeepEvent.PortChanged({ mapping: second, previousExternalPort: first.externalPort })
      ])
      expect(Chunk.toReadonlyArray(yield* Fiber.join(changes))).toStrictEqual([first, second])
    }))

  it.scoped("re-maps once, after the injected delay, when the gateway resets and announces", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({
        client: { announcements: { address: "127.0.0.1", port: 0 } }
      })
      const { alive, eventCount, events } = yield* keepRecording(client, {
        protocol: "udp",
        internalPort: 7000,
        suggestedExternalPort: 47000,
        remapDelay: Effect.succeed(Duration.seconds(2))
      })
      const first = yield* alive.mapping
      expect(first.externalPort).toBe(47000)

      yield* TestClock.adjust("100 seconds")
      yield* simulator.resetEpoch // drops the mapping, announces with epoch 0
      expect(yield* simulator.mappings).toStrictEqual([])
      yield* sleeperAt(102_000)
      yield* TestClock.adjust("2 seconds")
      yield* eventCount(2)
      expect(events[1]).toMatchObject({ _tag: "Mapped", reason: "gateway-reset", previous: first })
      const mappings = yield* simulator.mappings
      expect(mappings.map((m) => [m.internalPort, m.externalPort])).toStrictEqual([[7000, 47000]])
      yield* realSleep(30)
      expect((yield* simulator.counters).mapUdp).toBe(2)
    }))

  it.scoped("reports a failed renewal and retries after retryDelay", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient()
      const { eventCount, events } = yield* keepRecording(client, {
        protocol: "udp",
        internalPort: 7100,
        lifetime: 100,
        retryDelay: "7 seconds"
      })
      yield* simulator.setResultCode(3)
      yield* sleeperAt(50_000)
      yield* TestClock.adjust("50 seconds")
      yield* eventCount(2)
      const failed = events[1]
      assert(failed._tag === "MappingFailed")
      expect(failed.reason).toBe("renewal")
      expect(failed.error).toMatchObject({ _tag: "NatPmpResultError", resultCode: 3 })
      expect(Duration.toMillis(failed.retryIn)).toBe(7000)

      yield* simulator.setResultCode(undefined)
      yield* sleeperAt(57_000)
      yield* TestClock.adjust("7 seconds")
      yield* eventCount(3)
      expect(events[2]).toMatchObject({ _tag: "Mapped", reason: "renewal" })
    }))

  it.scoped("deletes the mapping when its scope closes", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient()
      const events = yield* Effect.scoped(
        Effect.gen(function*() {
          const { events } = yield* keepRecording(client, { protocol: "tcp", internalPort: 8000 })
          expect(yield* simulator.mappings).toHaveLength(1)
          return events
        })
      )
      expect(yield* simulator.mappings).toStrictEqual([])
      expect(events.map((event) => event._tag)).toStrictEqual(["Mapped", "Unmapped"])
    }))

  it.live("reports a delete that fails when the scope closes", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient()
      const events = yield* Effect.scoped(
        Effect.gen(function*() {
          const { events } = yield* keepRecording(client, { protocol: "tcp", internalPort: 8001 })
          yield* simulator.setUnreachable(true)
          return events
        })
      )
      const last = events.at(-1)
      assert(last?._tag === "UnmapFailed")
      expect(last.message).toContain("is unreachable (ICMP port unreachable)")
    }).pipe(Effect.scoped))

  it.scoped("fails when the first mapping fails", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient()
      yield* simulator.setResultCode(2)
      const error = yield* Effect.flip(keepRecording(client, { protocol: "udp", internalPort: 9000 }))
      expect(error).toMatchObject({ _tag: "NatPmpResultError", resultCode: 2 })
    }))
})
