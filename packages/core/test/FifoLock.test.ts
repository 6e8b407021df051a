import { describe, expect, it } from "@effect/vitest"
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FifoLock from "../src/internal/FifoLock.js"

describe("FifoLock", () => {
  it.effect("runs holders one at a time, in the order they asked", () =>
    Effect.gen(function*() {
      const lock = FifoLock.make()
      const order: Array<number> = []
      let inside = 0
      let most = 0
      yield* Effect.forEach(Array.from({ length: 50 }, (_, i) => i), (i) =>
        lock.withLock(Effect.gen(function*() {
          inside++
          most = Math.max(most, inside)
          yield* Effect.yieldNow()
          order.push(i)
          inside--
        })), { concurrency: "unbounded", discard: true })
      expect(most).toBe(1)
      expect(order).toEqual(Array.from({ length: 50 }, (_, i) => i))
    }))

  it.effect("an interrupted waiter never holds the lock and does not block the ones behind it", () =>
    Effect.gen(function*() {
      const lock = FifoLock.make()
      const gate = yield* Deferred.make<void>()
      const ran: Array<string> = []
      const holder = yield* Effect.fork(lock.withLock(Deferred.await(gate)))
      yield* Effect.yieldNow()
      const interrupted = yield* Effect.fork(lock.withLock(Effect.sync(() => ran.push("interrupted"))))
      const last = yield* Effect.fork(lock.withLock(Effect.sync(() => ran.push("last"))))
      yield* Effect.yieldNow()
      yield* Fiber.interrupt(interrupted)
      yield* Deferred.succeed(gate, undefined)
      yield* Fiber.join(holder)
      yield* Fiber.join(last)
      expect(ran).toEqual(["last"])
      // and the lock is free again
      yield* lock.withLock(Effect.sync(() => ran.push("again")))
      expect(ran).toEqual(["last", "again"])
    }))

  it.effect("a failing holder releases the lock", () =>
    Effect.gen(function*() {
      const lock = FifoLock.make()
      const failed = yield* Effect.either(lock.withLock(Effect.fail("boom")))
      expect(failed._tag).toBe("Left")
      expect(yield* lock.withLock(Effect.succeed(1))).toBe(1)
    }))
  it.effect("with n permits runs at most n holders at once, admitted in the order they asked", () =>
    Effect.gen(function*() {
      const lock = FifoLock.make(3)
      const admitted: Array<number> = []
      let inside = 0
      let most = 0
      yield* Effect.forEach(Array.from({ length: 30 }, (_, i) => i), (i) =>
        lock.withLock(Effect.gen(function*() {
          admitted.push(i)
          inside++
          most = Math.max(most, inside)
          yield* Effect.yieldNow()
          yield* Effect.yieldNow()
          inside--
        })), { concurrency: "unbounded", discard: true })
      expect(most).toBe(3)
      expect(admitted).toEqual(Array.from({ length: 30 }, (_, i) => i))
    }))
})
