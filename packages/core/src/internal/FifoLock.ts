/**
 * A mutex that hands itself to the longest-waiting fiber on release (first come, first served).
 *
 * Effect's `Semaphore` wakes every waiter on each release and lets them race for the permit again: with n fibers
 * queued that is n wake-ups per release (quadratic work for a burst of n requests) and no order among them. Here a
 * release wakes exactly one waiter.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

interface Waiter {
  readonly wake: () => void
  cancelled: boolean
}

export interface FifoLock {
  /** Runs `effect` holding the lock; waiting for it is interruptible. */
  readonly withLock: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

export const make = (): FifoLock => {
  let locked = false
  let queue: Array<Waiter> = []
  let head = 0
  /** The waiter the lock was handed to and that has not resumed yet. */
  let handedTo: Waiter | undefined

  const release = (): void => {
    while (head < queue.length) {
      const next = queue[head++]
      if (!next.cancelled) {
        handedTo = next
        next.wake()
        return
      }
    }
    queue = []
    head = 0
    locked = false
  }

  const acquire: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (!locked) {
      locked = true
      resume(Effect.void)
      return
    }
    const waiter: Waiter = {
      cancelled: false,
      // the lock is only taken when the fiber runs again: if it was interrupted meanwhile, the lock moves on
      wake: () =>
        resume(Effect.suspend(() => {
          if (handedTo !== waiter) return acquire
          handedTo = undefined
          return Effect.void
        }))
    }
    if (head > 1024 && head * 2 > queue.length) {
      queue = queue.slice(head)
      head = 0
    }
    queue.push(waiter)
    return Effect.sync(() => {
      waiter.cancelled = true
      if (handedTo === waiter) {
        handedTo = undefined
        release()
      }
    })
  })

  return {
    withLock: (effect) =>
      Effect.uninterruptibleMask((restore) =>
        Effect.zipRight(
          restore(acquire),
          Effect.ensuring(
            restore(effect),
            Effect.sync(release)
          )
        )
      )
  }
}
