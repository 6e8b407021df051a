/**
 * Runs effects one at a time in arrival order (FIFO), served by one fiber. For thousands of waiting requests it
 * stays O(1) per request, where waiting on a one-permit semaphore wakes every waiter at each release.
 *
 * A caller interrupted while its effect waits removes it from the line; interrupted while it runs, interrupts it.
 *
 * @internal
 */
import * as Deferred from "effect/Deferred"
import * as Effect from "effect/Effect"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"

interface Job {
  readonly run: Effect.Effect<void>
  cancelled: boolean
  fiber: Fiber.RuntimeFiber<void> | undefined
}

export type SerialQueue = <A, E>(effect: Effect.Effect<A, E>) => Effect.Effect<A, E>

/** A serial queue for the life of the scope (effects still waiting when it closes are interrupted). */
export const make: Effect.Effect<SerialQueue, never, Scope.Scope> = Effect.gen(function*() {
  const jobs = yield* Effect.acquireRelease(Queue.unbounded<Job>(), Queue.shutdown)
  yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
    const job = yield* Queue.take(jobs)
    if (job.cancelled) return
    const fiber = yield* Effect.fork(job.run)
    job.fiber = fiber
    yield* Fiber.await(fiber)
    job.fiber = undefined
  })))
  return <A, E>(effect: Effect.Effect<A, E>): Effect.Effect<A, E> =>
    Effect.suspend(() => {
      const result = Deferred.unsafeMake<A, E>(FiberId.none)
      const job: Job = { run: Effect.asVoid(Effect.intoDeferred(effect, result)), cancelled: false, fiber: undefined }
      jobs.unsafeOffer(job)
      return Deferred.await(result).pipe(
        Effect.onInterrupt(() =>
          Effect.suspend(() => {
            job.cancelled = true
            return job.fiber === undefined ? Effect.void : Fiber.interruptFork(job.fiber)
          })
        )
      )
    })
})
