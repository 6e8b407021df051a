/**
 * A mutex (or, with `permits` > 1, a semaphore) that hands a released permit to the longest-waiting fiber (first
 * come, first served).
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
  /** A permit was handed to it and it has not resumed yet. */
  handed: boolean
}

export interface FifoLock {
  /** Runs `effect` holding a permit; waiting for it is interruptible. */
  readonly withLock: <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
}

/** A lock with `permits` holders at most (default 1: a mutex). */
export const make = (permits = 1): FifoLock => {
  let available = permits
  let queue: Array<Waiter> = []
  let head = 0

  const release = (): void => {
    while (head < queue.length) {
      const next = queue[head++]
      if (!next.cancelled) {
        next.handed = true
        next.wake()
        return
      }
    }
    queue = []
    head = 0
    available++
  }

  const acquire: Effect.Effect<void> = Effect.async<void>((resume) => {
    if (available > 0) {
      available--
      resume(Effect.void)
      return
    }
    const waiter: Waiter = {
      cancelled: false,
      handed: false,
      // the permit is only taken when the fiber runs again: if it was interrupted meanwhile, the permit moves on
      wake: () =>
        resume(Effect.suspend(() => {
          if (!waiter.handed) return acquire
          waiter.handed = false
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
      if (waiter.handed) {
        waiter.handed = false
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
