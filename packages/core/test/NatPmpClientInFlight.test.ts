import { assert, describe, expect, it } from "@effect/vitest"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Queue from "effect/Queue"
import * as TestClock from "effect/TestClock"
import { gatewayAndClient, sleeperAt } from "./NatPmpFixtures.js"

const ports = (first: number, count: number) => Array.from({ length: count }, (_, i) => first + i)

describe("NatPmpClient with maxInFlight", () => {
  it.live("64 concurrent maps go out 8 at a time and each gets its own reply", () =>
    Effect.gen(function*() {
      // a 100 ms service time: serially 6.4 s, 8 at a time 0.8 s
      const { client, simulator } = yield* gatewayAndClient({
        simulator: { responseDelay: Duration.millis(100) },
        client: { maxInFlight: 8, initialTimeout: Duration.seconds(5) }
      })
      const mappings = yield* Effect.forEach(
        ports(20000, 64),
        (internalPort) => client.map({ protocol: "tcp", internalPort, lifetime: 3600 }),
        { concurrency: "unbounded" }
      )
      const concurrency = yield* simulator.maxConcurrency
      expect(concurrency).toBeLessThanOrEqual(8)
      expect(concurrency).toBeGreaterThanOrEqual(4)
      expect((yield* simulator.counters).mapTcp).toBe(64) // no retransmission, no duplicate
      const held = new Map((yield* simulator.mappings).map((m) => [m.internalPort, m.externalPort]))
      expect(held.size).toBe(64)
      mappings.forEach((mapping, i) => {
        expect(mapping.internalPort).toBe(20000 + i)
        expect(mapping.protocol).toBe("tcp")
        expect(mapping.externalPort).toBe(held.get(mapping.internalPort))
      })
    }).pipe(Effect.scoped))

  it.live("requests of one mapping, and every delete-all, stay serialized", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({
        simulator: { responseDelay: Duration.millis(60) },
        client: { maxInFlight: 8, initialTimeout: Duration.seconds(5) }
      })
      const sameKey = yield* Effect.all(
        Array.from({ length: 6 }, () => client.map({ protocol: "udp", internalPort: 9000, lifetime: 600 })),
        { concurrency: "unbounded" }
      )
      expect(yield* simulator.maxConcurrency).toBe(1)
      expect(new Set(sameKey.map((m) => m.externalPort)).size).toBe(1) // renewals of one mapping
      expect((yield* simulator.counters).mapUdp).toBe(6)

      yield* simulator.resetCounters
      yield* Effect.all([
        client.unmapAll("udp"),
        client.unmapAll("tcp"),
        client.unmapAll("udp"),
        client.unmapAll("tcp")
      ], { concurrency: "unbounded" })
      expect(yield* simulator.maxConcurrency).toBe(1)
      expect((yield* simulator.counters).total).toBe(4)

      // two mappings: at most two outstanding, and they do overlap
      yield* simulator.resetCounters
      yield* Effect.all(
        ports(0, 8).map((i) => client.map({ protocol: i % 2 === 0 ? "tcp" : "udp", internalPort: 9100 })),
        { concurrency: "unbounded" }
      )
      expect(yield* simulator.maxConcurrency).toBe(2)
    }).pipe(Effect.scoped))

  it.live("each request keeps its own retransmission schedule and timeout", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({
        client: { maxInFlight: 8, initialTimeout: Duration.millis(20), maxAttempts: 3 }
      })
      yield* simulator.setSilent(true)
      const results = yield* Effect.all(
        ports(30000, 5).map((internalPort) => Effect.flip(client.map({ protocol: "udp", internalPort }))),
        { concurrency: "unbounded" }
      )
      for (const error of results) {
        assert(error._tag === "NatPmpTimeoutError")
        expect(error.attempts).toBe(3)
        expect(Duration.toMillis(error.elapsed)).toBe(140)
      }
      expect((yield* simulator.counters).mapUdp).toBe(15)
      // a gateway that wakes up answers the next requests, all at once
      yield* simulator.setSilent(false)
      const mappings = yield* Effect.all(
        ports(30000, 5).map((internalPort) => client.map({ protocol: "udp", internalPort })),
        { concurrency: "unbounded" }
      )
      expect(mappings.map((m) => m.internalPort)).toEqual(ports(30000, 5))
    }).pipe(Effect.scoped))

  it.live("ICMP port unreachable fails every outstanding request", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({ client: { maxInFlight: 4 } })
      yield* simulator.setUnreachable(true)
      const results = yield* Effect.all(
        ports(31000, 4).map((internalPort) => Effect.flip(client.map({ protocol: "tcp", internalPort }))),
        { concurrency: "unbounded" }
      )
      expect(results.map((error) => error._tag)).toEqual(Array(4).fill("NatPmpUnreachableError"))
    }).pipe(Effect.scoped))

  it.live("maxInFlight 1 keeps the serial queue", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({
        simulator: { responseDelay: Duration.millis(10) },
        client: { maxInFlight: 1 }
      })
      yield* Effect.forEach(ports(7000, 6), (internalPort) => client.map({ protocol: "tcp", internalPort }), {
        concurrency: "unbounded"
      })
      expect(yield* simulator.maxConcurrency).toBe(1)
    }).pipe(Effect.scoped))

  it.scoped("an invalid maxInFlight is a defect with a clear message", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(gatewayAndClient({ client: { maxInFlight: 0 } }))
      assert(Exit.isFailure(exit))
      expect(String(exit.cause)).toContain("maxInFlight must be an integer of at least 1, got 0")
    }))
})

describe("the epoch check (RFC 6886 §3.6) on replies handled late", () => {
  it.scoped("a reply that comes back 10 s after the gateway wrote its epoch is no reset; a real reset still is", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({
        simulator: { epoch: 100 },
        client: { maxInFlight: 8, initialTimeout: Duration.minutes(1) }
      })
      const events = yield* client.subscribe
      yield* client.publicAddress
      // the gateway writes epoch 100 now; its reply is held back for 10 s (a backlog on the way, a stalled process)
      yield* simulator.setResponseDelay(Duration.seconds(10))
      const late = yield* Effect.fork(client.map({ protocol: "udp", internalPort: 4000 }))
      yield* sleeperAt(10_000)
      yield* TestClock.adjust("10 seconds")
      const mapping = yield* Fiber.join(late)
      expect(mapping.epoch).toBe(100) // judged at its arrival it would be 8.75 s short of the estimate
      expect(yield* Queue.size(events)).toBe(0)

      yield* simulator.setResponseDelay(Duration.zero)
      yield* TestClock.adjust("60 seconds")
      yield* simulator.resetEpoch
      yield* TestClock.adjust("5 seconds")
      const afterReset = yield* client.publicAddress
      expect(afterReset.epoch).toBe(5)
      const event = yield* Queue.take(events)
      assert(event._tag === "GatewayReset")
      expect(event.previousEpoch).toBe(100)
      expect(event.epoch).toBe(5)
    }))

  it.scoped("serial clients judge a late reply the same way", () =>
    Effect.gen(function*() {
      const { client, simulator } = yield* gatewayAndClient({
        simulator: { epoch: 50 },
        client: { initialTimeout: Duration.minutes(1) }
      })
      const events = yield* client.subscribe
      yield* client.publicAddress
      yield* simulator.setResponseDelay(Duration.seconds(20))
      const late = yield* Effect.fork(client.publicAddress)
      yield* sleeperAt(20_000)
      yield* TestClock.adjust("20 seconds")
      expect((yield* Fiber.join(late)).epoch).toBe(50)
      expect(yield* Queue.size(events)).toBe(0)
    }))
})
