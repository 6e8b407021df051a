import { describe, expect, it } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Effect from "effect/Effect"
import {
  ALLOWED_SOURCES,
  checkReply,
  expectedReply,
  formatSummary,
  Generator,
  keyOf,
  parseSeed,
  prefilledPort,
  Prng,
  run
} from "../fuzz/ServerFuzz.js"

// `npm run fuzz` runs the same fuzz with 1,000,000 datagrams
describe("NAT-PMP server fuzz", () => {
  it("the model answers what RFC 6886 prescribes", () => {
    expect(expectedReply(Uint8Array.of())).toBeUndefined()
    expect(expectedReply(Uint8Array.of(0))).toBeUndefined()
    expect(expectedReply(Uint8Array.of(0, 128))).toBeUndefined()
    expect(expectedReply(Uint8Array.of(2, 200))).toBeUndefined()
    expect(expectedReply(Uint8Array.of(2, 1))).toEqual({ kind: "error", opcode: 1, resultCode: 1 })
    expect(expectedReply(Uint8Array.of(0, 3))).toEqual({ kind: "error", opcode: 3, resultCode: 5 })
    expect(expectedReply(Uint8Array.of(0, 0, 9))).toEqual({ kind: "public" })
    expect(expectedReply(Uint8Array.of(0, 1, 0, 0, 0, 80))).toBeUndefined()
    const map = (port: number, lifetime: number) =>
      NatPmpMessage.encodeRequest({
        _tag: "MapRequest",
        protocol: "udp",
        internalPort: port,
        suggestedExternalPort: 0,
        lifetime
      })
    expect(expectedReply(map(80, 0))).toMatchObject({ kind: "map", resultCode: 0 })
    expect(expectedReply(map(0, 60))).toMatchObject({ kind: "map", resultCode: 2 })
    expect(expectedReply(map(80, 60))).toMatchObject({ kind: "map", internalPort: 80, resultCode: 4 })
  })

  it("the checker accepts exactly the valid replies", () => {
    const context = { publicAddress: "203.0.113.1", maxEpoch: 10 }
    const error = NatPmpMessage.encodeResponse({ _tag: "ErrorResponse", opcode: 7, resultCode: 5, epoch: 3 })
    expect(checkReply(error, context)).toEqual({ key: keyOf({ kind: "error", opcode: 7, resultCode: 5 }) })
    expect(checkReply(Uint8Array.of(1, ...error.subarray(1)), context)).toHaveProperty("invalid")
    expect(checkReply(Uint8Array.of(...error, 0), context)).toHaveProperty("invalid")
    const late = NatPmpMessage.encodeResponse({ _tag: "ErrorResponse", opcode: 7, resultCode: 5, epoch: 11 })
    expect(checkReply(late, context)).toHaveProperty("invalid")
    const granted = NatPmpMessage.encodeResponse({
      _tag: "MapResponse",
      protocol: "tcp",
      resultCode: 0,
      epoch: 1,
      internalPort: 80,
      externalPort: 80,
      lifetime: 60
    })
    expect(checkReply(granted, context)).toHaveProperty("invalid")
    const wrongAddress = NatPmpMessage.encodeResponse({
      _tag: "PublicAddressResponse",
      resultCode: 0,
      epoch: 1,
      publicAddress: "1.2.3.4"
    })
    expect(checkReply(wrongAddress, context)).toHaveProperty("invalid")
  })

  it("the generator is deterministic and never touches the prefilled mappings", () => {
    const a = new Generator(new Prng(99))
    const b = new Generator(new Prng(99))
    let touched = 0
    let differ = 0
    for (let i = 0; i < 20_000; i++) {
      const x = a.next()
      const y = b.next()
      if (x.source !== y.source || Buffer.compare(x.bytes, y.bytes) !== 0) differ++
      if (x.source < ALLOWED_SOURCES.length && x.bytes.length >= 12 && x.bytes[0] === 0 && x.bytes[1] === 2) {
        const view = new DataView(x.bytes.buffer, x.bytes.byteOffset)
        const port = view.getUint16(4)
        if (port === prefilledPort(ALLOWED_SOURCES[x.source]) || (port === 0 && view.getUint32(8) === 0)) touched++
      }
    }
    expect({ differ, touched }).toEqual({ differ: 0, touched: 0 })
  })

  it.live(
    "20,000 hostile datagrams: every reply valid, no upstream call, no crash, heap flat",
    () =>
      Effect.gen(function*() {
        const seed = parseSeed(process.env.FUZZ_SEED)
        const summary = yield* run({ count: 20_000, seed, warmup: 4_000 })
        console.log(formatSummary(summary))
        for (const violation of summary.violations) console.log(`violation: ${violation}`)
        expect(summary.violations, `seed ${seed}`).toEqual([])
        expect(summary.invalid).toBe(0)
        expect(summary.crashes).toBe(0)
        expect(summary.sent).toBe(20_000)
        expect(summary.checked).toBe(summary.expectedReplies)
        expect(summary.upstreamHostile).toEqual({ vpn: 0, router: 0 })
        expect(summary.upstreamMapping.vpn).toBe(summary.upstreamMapping.expectedVpn)
        expect(summary.upstreamMapping.router).toBe(summary.upstreamMapping.expectedRouter)
      }),
    { timeout: 120_000 }
  )
})
