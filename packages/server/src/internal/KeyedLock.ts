/**
 * Per-key mutual exclusion: one semaphore per key, created on demand and dropped when nobody holds or waits for it.
 * Several keys are always taken in sorted order, so two multi-key holders cannot deadlock.
 *
 * @internal
 */
import * as Effect from "effect/Effect"

interface Entry {
  readonly semaphore: Effect.Semaphore
  users: number
}

export interface KeyedLock {
  /** Runs `effect` holding the lock of `key`. */
  readonly withLock: <A, E, R>(key: string, effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Runs `effect` holding the locks of all `keys` (taken in sorted order). */
  readonly withLocks: <A, E, R>(keys: Iterable<string>, effect: Effect.Effect<A, E, R>) => Effect.Effect<A, E, R>
  /** Whether someone holds or waits for the lock of `key`. */
  readonly isBusy: (key: string) => boolean
}

export const make = (): KeyedLock => {
  const entries = new Map<string, Entry>()

  const acquire = (key: string): Entry => {
    let entry = entries.get(key)
    if (entry === undefined) {
      entry = { semaphore: Effect.unsafeMakeSemaphore(1), users: 0 }
      entries.set(key, entry)
    }
    entry.users++
    return entry
  }

  const release = (key: string, entry: Entry): void => {
    entry.users--
    if (entry.users === 0 && entries.get(key) === entry) entries.delete(key)
  }

  const withLock = <A, E, R>(key: string, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    Effect.acquireUseRelease(
      Effect.sync(() => acquire(key)),
      (entry) => entry.semaphore.withPermits(1)(effect),
      (entry) => Effect.sync(() => release(key, entry))
    )

  const withLocks = <A, E, R>(keys: Iterable<string>, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
    [...new Set(keys)].sort().reduceRight<Effect.Effect<A, E, R>>((inner, key) => withLock(key, inner), effect)

  return { withLock, withLocks, isBusy: (key) => entries.has(key) }
}
