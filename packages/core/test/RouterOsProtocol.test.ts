import { describe, expect, it } from "@effect/vitest"
import { RouterOsProtocol } from "@natpmp-bridge/core"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Schema from "effect/Schema"
import { fuzzRouterOsDecoder } from "../fuzz/CoreFuzz.js"
import { parseSeed } from "../src/testing/Prng.js"

const {
  commandWords,
  decodeLength,
  decodeSentences,
  encodeLength,
  encodeSentence,
  encodeWord,
  parseReply,
  SentenceDecoder,
  SentenceFromBytes
} = RouterOsProtocol

const hex = (bytes: Uint8Array) => Buffer.from(bytes).toString("hex")

const concat = (parts: ReadonlyArray<Uint8Array>) => Buffer.concat(parts.map((p) => Buffer.from(p)))

describe("RouterOsProtocol", () => {
  describe("length prefixes", () => {
    it("encodes the five prefix forms at their boundaries", () => {
      expect(hex(encodeLength(0))).toBe("00")
      expect(hex(encodeLength(0x7F))).toBe("7f")
      expect(hex(encodeLength(0x80))).toBe("8080")
      expect(hex(encodeLength(0x3FFF))).toBe("bfff")
      expect(hex(encodeLength(0x4000))).toBe("c04000")
      expect(hex(encodeLength(0x1FFFFF))).toBe("dfffff")
      expect(hex(encodeLength(0x200000))).toBe("e0200000")
      expect(hex(encodeLength(0xFFFFFFF))).toBe("efffffff")
      expect(hex(encodeLength(0x10000000))).toBe("f010000000")
      expect(hex(encodeLength(0xFFFFFFFF))).toBe("f0ffffffff")
    })

    it("decodes every form back", () => {
      for (const n of [0, 1, 0x7F, 0x80, 0x3FFF, 0x4000, 0x1FFFFF, 0x200000, 0xFFFFFFF, 0x10000000, 0xFFFFFFFF]) {
        const bytes = encodeLength(n)
        expect(decodeLength(bytes)).toEqual({ _tag: "Length", length: n, size: bytes.length })
      }
    })

    it("round-trips arbitrary lengths", () => {
      FastCheck.assert(FastCheck.property(FastCheck.integer({ min: 0, max: 0xFFFFFFFF }), (n) => {
        const bytes = encodeLength(n)
        const decoded = decodeLength(bytes)
        return decoded._tag === "Length" && decoded.length === n && decoded.size === bytes.length
      }))
    })

    it("reports incomplete prefixes", () => {
      expect(decodeLength(Uint8Array.of(0xC0, 0x40))).toEqual({ _tag: "Incomplete", size: 3 })
      expect(decodeLength(Uint8Array.of())).toEqual({ _tag: "Incomplete", size: 1 })
    })

    it("rejects control bytes >= 0xF8 and undefined 0xF1..0xF7 prefixes", () => {
      for (let b = 0xF1; b <= 0xFF; b++) {
        expect(decodeLength(Uint8Array.of(b, 0, 0, 0, 0))).toEqual({ _tag: "Invalid", byte: b })
      }
      const result = decodeSentences(Uint8Array.of(0x01, 0x41, 0xF8))
      expect(Either.isLeft(result)).toBe(true)
      if (Either.isLeft(result)) expect(result.left.message).toContain("reserved control byte 0xF8")
    })
  })

  describe("sentences", () => {
    it("encodes a sentence with the terminating empty word", () => {
      expect(hex(encodeSentence(["/login", "=name=admin"]))).toBe(
        hex(concat([encodeWord("/login"), encodeWord("=name=admin"), Uint8Array.of(0)]))
      )
      expect(encodeWord("/login")[0]).toBe(6)
    })

    it("encodes and decodes long words (2- and 3-byte prefixes) and UTF-8", () => {
      const words = ["=comment=" + "x".repeat(200), "=v=" + "y".repeat(0x4100), "=c=ünïcødé"]
      const result = decodeSentences(encodeSentence(words))
      expect(result).toEqual(Either.right([words]))
    })

    it("is a Schema codec for exactly one sentence", () => {
      const bytes = Schema.encodeSync(SentenceFromBytes)(["!done", "=ret=*1A"])
      expect(Schema.decodeUnknownSync(SentenceFromBytes)(bytes)).toEqual(["!done", "=ret=*1A"])
      expect(Either.isLeft(Schema.decodeUnknownEither(SentenceFromBytes)(bytes.subarray(0, 5)))).toBe(true)
      expect(Either.isLeft(Schema.decodeUnknownEither(SentenceFromBytes)(concat([bytes, bytes])))).toBe(true)
      expect(Either.isLeft(Schema.decodeUnknownEither(SentenceFromBytes)(Uint8Array.of(0xFF)))).toBe(true)
    })

    it("skips empty sentences", () => {
      expect(decodeSentences(Uint8Array.of(0, 0, 1, 0x41, 0))).toEqual(Either.right([["A"]]))
    })
  })

  describe("incremental decoder", () => {
    // short words (1-byte prefix) and words of 128+ bytes (2-byte prefix), any Unicode
    const word = FastCheck.oneof(
      { weight: 4, arbitrary: FastCheck.string({ minLength: 1, maxLength: 20, unit: "binary" }) },
      { weight: 1, arbitrary: FastCheck.string({ minLength: 130, maxLength: 200 }) }
    )
    const sentence = FastCheck.array(word, { minLength: 1, maxLength: 6 })
    const sentences = FastCheck.array(sentence, { minLength: 1, maxLength: 5 })
    // adds words with 3-byte prefixes for the chunking tests
    const bigWord = FastCheck.constantFrom("a", "ä", "€").map((c) => c.repeat(0x4001))
    const bigSentences = FastCheck.array(
      FastCheck.array(FastCheck.oneof({ weight: 5, arbitrary: word }, { weight: 1, arbitrary: bigWord }), {
        minLength: 1,
        maxLength: 4
      }),
      { minLength: 1, maxLength: 3 }
    )

    const decodeChunks = (chunks: ReadonlyArray<Uint8Array>) => {
      const out: Array<ReadonlyArray<string>> = []
      const decoder = new SentenceDecoder((s) => out.push(s))
      for (const chunk of chunks) {
        expect(Either.isRight(decoder.push(chunk))).toBe(true)
      }
      expect(decoder.idle).toBe(true)
      return out
    }

    it("decodes a stream of random sentences split at every offset", () => {
      FastCheck.assert(
        FastCheck.property(sentences, (input) => {
          const stream = concat(input.map(encodeSentence))
          // every two-chunk split
          for (let i = 0; i <= stream.length; i++) {
            expect(decodeChunks([stream.subarray(0, i), stream.subarray(i)])).toEqual(input)
          }
        }),
        { numRuns: 60 }
      )
    })

    it("decodes words with 3-, 4- and 5-byte prefixes split anywhere in the prefix", () => {
      for (const length of [0x4000, 0x200000]) {
        const input = [["!re", "=big=" + "z".repeat(length - 5), "=x=1"], ["!done"]]
        const stream = concat(input.map(encodeSentence))
        for (const i of [1, 2, 3, 4, 5, 6, 7, 1000, stream.length - 9, stream.length - 3, stream.length - 1]) {
          expect(decodeChunks([stream.subarray(0, i), stream.subarray(i)])).toEqual(input)
        }
      }
      // a 5-byte prefix is decoded (and then refused by the default 16 MiB limit without buffering the word)
      const decoder = new SentenceDecoder(() => {})
      const prefix = encodeLength(0x10000000)
      expect(Either.isRight(decoder.push(prefix.subarray(0, 3)))).toBe(true)
      expect(Either.isLeft(decoder.push(prefix.subarray(3)))).toBe(true)
    })

    it("decodes a stream fed one byte at a time", () => {
      FastCheck.assert(
        FastCheck.property(sentences, (input) => {
          const stream = concat(input.map(encodeSentence))
          const bytes: Array<Uint8Array> = []
          for (let i = 0; i < stream.length; i++) bytes.push(stream.subarray(i, i + 1))
          expect(decodeChunks(bytes)).toEqual(input)
        }),
        { numRuns: 50 }
      )
    })

    it("decodes a stream with big words in random chunkings", () => {
      FastCheck.assert(
        FastCheck.property(bigSentences, FastCheck.array(FastCheck.integer({ min: 1, max: 4096 })), (input, sizes) => {
          const stream = concat(input.map(encodeSentence))
          const chunks: Array<Uint8Array> = []
          let pos = 0
          let k = 0
          while (pos < stream.length) {
            const size = sizes.length === 0 ? stream.length : sizes[k++ % sizes.length]
            chunks.push(stream.subarray(pos, pos + size))
            pos += size
          }
          expect(decodeChunks(chunks)).toEqual(input)
        }),
        { numRuns: 30 }
      )
    })

    it("keeps partial input safe from reuse of the caller's buffer", () => {
      const out: Array<ReadonlyArray<string>> = []
      const decoder = new SentenceDecoder((s) => out.push(s))
      const stream = encodeSentence(["!re", "=a=b"])
      const scratch = new Uint8Array(4)
      scratch.set(stream.subarray(0, 4))
      decoder.push(scratch)
      scratch.fill(0xFF)
      decoder.push(stream.subarray(4))
      expect(out).toEqual([["!re", "=a=b"]])
    })

    // `npm run fuzz` runs the same fuzzer on 100,000 streams
    it("fuzz: random and mutated streams in random chunkings never throw, decode the same however chunked", () => {
      const seed = parseSeed(process.env.FUZZ_SEED)
      const report = fuzzRouterOsDecoder(1_500, seed)
      expect(report.violations, `seed ${seed}`).toEqual([])
      expect(report.counts.rejected).toBeGreaterThan(0)
      expect(report.counts.valid).toBeGreaterThan(0)
    })

    it("stays failed after a protocol error and enforces the word limit", () => {
      const decoder = new SentenceDecoder(() => {})
      expect(Either.isLeft(decoder.push(Uint8Array.of(0xFA)))).toBe(true)
      expect(Either.isLeft(decoder.push(encodeSentence(["!done"])))).toBe(true)
      const small = new SentenceDecoder(() => {}, { maxWordLength: 10 })
      const result = small.push(encodeWord("x".repeat(11)))
      expect(Either.isLeft(result) && result.left.reason).toContain("exceeds the limit")
    })
  })

  describe("replies", () => {
    it("parses !re rows, keeping = inside values and unknown keys", () => {
      expect(parseReply(["!re", "=.id=*1A", "=comment=a=b=c", "=.nextid=*FFFFFFFF", "=empty=", ".tag=7"])).toEqual({
        _tag: "Re",
        tag: "7",
        attributes: { ".id": "*1A", comment: "a=b=c", ".nextid": "*FFFFFFFF", empty: "" }
      })
    })

    it("parses !done with =ret=", () => {
      const reply = parseReply(["!done", "=ret=*1F", ".tag=3"])
      expect(reply).toMatchObject({ _tag: "Done", tag: "3", ret: "*1F" })
      expect(parseReply(["!done"])).toMatchObject({ _tag: "Done", tag: undefined, ret: undefined })
    })

    it("parses !trap with message and category", () => {
      expect(parseReply(["!trap", "=category=2", "=message=interrupted", ".tag=9"])).toMatchObject({
        _tag: "Trap",
        tag: "9",
        message: "interrupted",
        category: 2
      })
      expect(parseReply(["!trap", "=message=no such item"])).toMatchObject({ category: undefined })
    })

    it("parses !fatal with bare words or =message=", () => {
      expect(parseReply(["!fatal", "session terminated on request"])).toEqual({
        _tag: "Fatal",
        tag: undefined,
        message: "session terminated on request"
      })
      expect(parseReply(["!fatal", "=message=not logged in"])).toMatchObject({ message: "not logged in" })
    })

    it("parses !empty and tolerates unknown reply types", () => {
      expect(parseReply(["!empty", ".tag=4"])).toEqual({ _tag: "Empty", tag: "4" })
      expect(parseReply(["!future", "=x=1"])).toMatchObject({
        _tag: "Unknown",
        type: "!future",
        attributes: { x: "1" }
      })
    })
  })

  it("builds command sentences", () => {
    expect(
      commandWords("/ip/firewall/nat/print", {
        attributes: { disabled: false, skip: undefined, n: 5 },
        proplist: [".id", "chain"],
        queries: ["?chain=dstnat", "-comment", "?#|"]
      }, "12")
    ).toEqual([
      "/ip/firewall/nat/print",
      "=disabled=false",
      "=n=5",
      "=.proplist=.id,chain",
      "?chain=dstnat",
      "?-comment",
      "?#|",
      ".tag=12"
    ])
  })
})
