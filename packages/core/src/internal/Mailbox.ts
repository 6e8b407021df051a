/**
 * A single-consumer mailbox: `offer` from anywhere (a socket callback, another fiber), `take` from one fiber at a
 * time. Much lighter than a `Queue` for the short life of one request (no fiber-aware strategy, no shutdown state).
 *
 * @internal
 */
import * as Effect from "effect/Effect"

export class Mailbox<A> {
  private items: Array<A> = []
  private waiting: ((effect: Effect.Effect<A>) => void) | undefined = undefined

  /** Hands `item` to the taker waiting now, or keeps it for the next `take`. */
  offer(item: A): void {
    const resume = this.waiting
    if (resume !== undefined) {
      this.waiting = undefined
      resume(Effect.succeed(item))
    } else {
      this.items.push(item)
    }
  }

  /** The oldest item, waiting for one if there is none (interruptible). */
  readonly take: Effect.Effect<A> = Effect.async<A>((resume) => {
    if (this.items.length > 0) {
      resume(Effect.succeed(this.items.shift()!))
      return
    }
    this.waiting = resume
    return Effect.sync(() => {
      if (this.waiting === resume) this.waiting = undefined
    })
  })
}
