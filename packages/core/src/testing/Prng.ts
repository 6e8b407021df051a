/**
 * A small seeded PRNG (mulberry32) for fuzzers and property tests: the same seed gives the same inputs, so a
 * failure reproduces.
 *
 * @since 0.1.0
 */
export class Prng {
  private state: number
  constructor(seed: number) {
    this.state = seed >>> 0
  }
  /** A uniform 32-bit unsigned integer. */
  next(): number {
    this.state = (this.state + 0x6D2B79F5) >>> 0
    let t = this.state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return (t ^ (t >>> 14)) >>> 0
  }
  /** An integer in `0..n-1`. */
  int(n: number): number {
    return Math.floor((this.next() / 0x100000000) * n)
  }
  /** An integer in `min..max`. */
  between(min: number, max: number): number {
    return min + this.int(max - min + 1)
  }
  /** True with probability `p`. */
  chance(p: number): boolean {
    return this.next() / 0x100000000 < p
  }
  pick<A>(values: ReadonlyArray<A>): A {
    return values[this.int(values.length)]
  }
  bytes(length: number): Uint8Array {
    const out = new Uint8Array(length)
    for (let i = 0; i < length; i++) out[i] = this.next() & 0xff
    return out
  }
}

/** A seed from `text` (decimal or 0x hex), or a fresh one. */
export const parseSeed = (text: string | undefined): number => {
  if (text !== undefined && text.trim() !== "") {
    const value = Number(text.trim())
    if (Number.isInteger(value)) return value >>> 0
  }
  return (Math.random() * 0x100000000) >>> 0
}
