import { describe, expect, it } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Either from "effect/Either"
import * as FastCheck from "effect/FastCheck"
import * as Schema from "effect/Schema"
import { fuzzNatPmpDecode } from "../fuzz/CoreFuzz.js"
import { parseSeed } from "../src/testing/Prng.js"

const {
  classifyDatagram,
  decodeRequest,
  decodeResponse,
  encodeRequest,
  encodeResponse,
  ErrorResponse,
  MapRequest,
  MapResponse,
  PublicAddressRequest,
  PublicAddressResponse
} = NatPmpMessage

const bytes = (...values: ReadonlyArray<number>) => Uint8Array.from(values)

describe("NatPmpMessage", () => {
  describe("round trips over all valid values", () => {
    it.prop("requests", [Schema.Union(PublicAddressRequest, MapRequest)], ([request]) => {
      expect(decodeRequest(encodeRequest(request))).toStrictEqual(Either.right(request))
    }, { fastCheck: { numRuns: 500 } })

    it.prop("responses", [Schema.Union(PublicAddressResponse, MapResponse, ErrorResponse)], ([response]) => {
      expect(decodeResponse(encodeResponse(response))).toStrictEqual(Either.right(response))
    }, { fastCheck: { numRuns: 500 } })

    it.prop("the schemas encode what the plain encoders encode", [
      Schema.Union(PublicAddressRequest, MapRequest),
      Schema.Union(PublicAddressResponse, MapResponse, ErrorResponse)
    ], ([request, response]) => {
      expect(Schema.encodeSync(NatPmpMessage.Request)(request)).toStrictEqual(encodeRequest(request))
      expect(Schema.encodeSync(NatPmpMessage.Response)(response)).toStrictEqual(encodeResponse(response))
    })

    it.prop("a gateway classifies every encoded request as a request", [
      Schema.Union(PublicAddressRequest, MapRequest)
    ], ([request]) => {
      expect(classifyDatagram(encodeRequest(request))).toStrictEqual(
        NatPmpMessage.IncomingDatagram.Request({ request })
      )
    })
  })

  describe("wire layout (RFC 6886 §3)", () => {
    it("public address request is 2 bytes", () => {
      expect(encodeRequest({ _tag: "PublicAddressRequest" })).toStrictEqual(bytes(0, 0))
    })

    it("mapping request is 12 bytes, big-endian", () => {
      const request = MapRequest.make({
        protocol: "tcp",
        internalPort: 0x1234,
        suggestedExternalPort: 0xabcd,
        lifetime: 7200
      })
      expect(encodeRequest(request)).toStrictEqual(bytes(0, 2, 0, 0, 0x12, 0x34, 0xab, 0xcd, 0, 0, 0x1c, 0x20))
      expect(encodeRequest({ ...request, protocol: "udp" })[1]).toBe(1)
    })

    it("public address response is 12 bytes with opcode 128", () => {
      const response = PublicAddressResponse.make({ resultCode: 0, epoch: 0x01020304, publicAddress: "203.0.113.7" })
      expect(encodeResponse(response)).toStrictEqual(bytes(0, 128, 0, 0, 1, 2, 3, 4, 203, 0, 113, 7))
    })

    it("mapping response is 16 bytes with opcode 128 + op", () => {
      const response = MapResponse.make({
        protocol: "udp",
        resultCode: 0,
        epoch: 5,
        internalPort: 51413,
        externalPort: 40000,
        lifetime: 60
      })
      expect(encodeResponse(response)).toStrictEqual(
        bytes(0, 129, 0, 0, 0, 0, 0, 5, 0xc8, 0xd5, 0x9c, 0x40, 0, 0, 0, 60)
      )
      expect(encodeResponse({ ...response, protocol: "tcp" })[1]).toBe(130)
    })

    it("error reply is 8 bytes with opcode 128 + request op (errata 3618)", () => {
      const response = ErrorResponse.make({ opcode: 2, resultCode: 5, epoch: 9 })
      expect(encodeResponse(response)).toStrictEqual(bytes(0, 130, 0, 5, 0, 0, 0, 9))
    })

    it("reserved bytes of a mapping request are ignored on reception", () => {
      expect(decodeRequest(bytes(0, 1, 0xff, 0xff, 0, 80, 0, 81, 0, 0, 0, 1))).toStrictEqual(
        Either.right(MapRequest.make({ protocol: "udp", internalPort: 80, suggestedExternalPort: 81, lifetime: 1 }))
      )
    })

    it("a failed public address response decodes in its 12-byte and 8-byte forms", () => {
      expect(decodeResponse(bytes(0, 128, 0, 3, 0, 0, 0, 7, 0, 0, 0, 0))).toStrictEqual(
        Either.right(PublicAddressResponse.make({ resultCode: 3, epoch: 7, publicAddress: "0.0.0.0" }))
      )
      expect(decodeResponse(bytes(0, 128, 0, 2, 0, 0, 0, 7))).toStrictEqual(
        Either.right(ErrorResponse.make({ opcode: 0, resultCode: 2, epoch: 7 }))
      )
    })
  })

  describe("malformed input", () => {
    const malformedRequests: ReadonlyArray<[string, Uint8Array, string]> = [
      ["empty datagram", bytes(), "expected at least 2 bytes, got 0"],
      ["single byte", bytes(0), "expected at least 2 bytes, got 1"],
      ["version 1", bytes(1, 0), "unsupported version 1"],
      ["PCP version 2", bytes(2, 1, 0, 0), "unsupported version 2"],
      ["truncated UDP mapping request", bytes(0, 1, 0, 0, 0, 80), "expected 12 bytes for a mapping request, got 6"],
      ["truncated TCP mapping request", bytes(0, 2, 0, 0, 0, 80, 0, 80, 0, 0, 0), "got 11"],
      ["unknown opcode", bytes(0, 3), "unsupported opcode 3"],
      ["a response sent as a request", bytes(0, 128, 0, 0), "opcode 128 is a response, not a request"]
    ]
    it.each(malformedRequests)("request: %s", (_, input, reason) => {
      const result = decodeRequest(input)
      expect(Either.isLeft(result)).toBe(true)
      if (Either.isLeft(result)) expect(result.left.message).toContain(reason)
    })

    const malformedResponses: ReadonlyArray<[string, Uint8Array, string]> = [
      ["empty datagram", bytes(), "expected at least 2 bytes, got 0"],
      ["version 1", bytes(1, 128, 0, 0, 0, 0, 0, 0), "unsupported version 1"],
      ["a request sent as a response", bytes(0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), "opcode 1 is a request"],
      ["shorter than the 8-byte header", bytes(0, 129, 0, 0, 0, 0, 0), "expected at least 8 bytes"],
      ["successful public address response cut at 8 bytes", bytes(0, 128, 0, 0, 0, 0, 0, 1), "expected 12 bytes"],
      [
        "successful mapping response cut at 12 bytes",
        bytes(0, 130, 0, 0, 0, 0, 0, 1, 0, 80, 0, 80),
        "expected 16 bytes for a successful response to opcode 2, got 12"
      ]
    ]
    it.each(malformedResponses)("response: %s", (_, input, reason) => {
      const result = decodeResponse(input)
      expect(Either.isLeft(result)).toBe(true)
      if (Either.isLeft(result)) expect(result.left.message).toContain(reason)
    })

    it("encoding an out-of-range value through the schema fails instead of wrapping", () => {
      const invalid = {
        _tag: "MapRequest",
        protocol: "udp",
        internalPort: 70000,
        suggestedExternalPort: 0,
        lifetime: 1
      }
      expect(Either.isLeft(Schema.encodeEither(NatPmpMessage.Request)(invalid as MapRequestType))).toBe(true)
    })

    it.prop("random bytes never throw", [FastCheck.uint8Array({ maxLength: 40 })], ([input]) => {
      const incoming = classifyDatagram(input)
      expect(["Request", "UnsupportedVersion", "UnsupportedOpcode", "Ignore"]).toContain(incoming._tag)
      expect(Either.isEither(decodeRequest(input))).toBe(true)
      expect(Either.isEither(decodeResponse(input))).toBe(true)
    }, { fastCheck: { numRuns: 2000 } })

    // `npm run fuzz` runs the same fuzzer on 2,000,000 datagrams
    it("fuzz: the codecs accept exactly the RFC-valid datagrams and decode them to their bytes", () => {
      const seed = parseSeed(process.env.FUZZ_SEED)
      const report = fuzzNatPmpDecode(50_000, seed)
      expect(report.violations, `seed ${seed}`).toEqual([])
      expect(report.counts.validResponses).toBeGreaterThan(1000)
      expect(report.counts.validRequests).toBeGreaterThan(1000)
    })

    it.prop("random bytes at an offset inside a larger buffer decode like a copy", [
      FastCheck.uint8Array({ minLength: 4, maxLength: 40 })
    ], ([input]) => {
      const view = input.subarray(2)
      expect(decodeResponse(view)).toStrictEqual(decodeResponse(Uint8Array.from(view)))
      expect(decodeRequest(view)).toStrictEqual(decodeRequest(Uint8Array.from(view)))
    })
  })

  describe("classifyDatagram (gateway rules)", () => {
    const { Ignore, UnsupportedOpcode, UnsupportedVersion } = NatPmpMessage.IncomingDatagram
    const cases: ReadonlyArray<[string, Uint8Array, NatPmpMessage.IncomingDatagram]> = [
      ["empty datagram is ignored", bytes(), Ignore({ reason: "runt datagram of 0 byte(s)" })],
      ["single byte is ignored", bytes(0), Ignore({ reason: "runt datagram of 1 byte(s)" })],
      ["a response (opcode 128) is ignored", bytes(0, 128), Ignore({ reason: "opcode 128 is a response" })],
      ["a PCP response is ignored", bytes(2, 129, 0, 0), Ignore({ reason: "opcode 129 is a response" })],
      [
        "a truncated mapping request is ignored",
        bytes(0, 2, 0, 0),
        Ignore({ reason: "expected 12 bytes for a mapping request, got 4" })
      ],
      ["version 2 (PCP) gets result 1", bytes(2, 1, 0, 0, 0, 0), UnsupportedVersion({ version: 2, opcode: 1 })],
      ["version 1 with op 0 gets result 1", bytes(1, 0), UnsupportedVersion({ version: 1, opcode: 0 })],
      ["opcode 3 gets result 5", bytes(0, 3), UnsupportedOpcode({ opcode: 3 })],
      ["opcode 127 gets result 5", bytes(0, 127), UnsupportedOpcode({ opcode: 127 })]
    ]
    it.each(cases)("%s", (_, input, expected) => {
      expect(classifyDatagram(input)).toStrictEqual(expected)
    })

    it("errorReplyFor answers result 1 and 5 with byte 1 = 128 + opcode", () => {
      const version = NatPmpMessage.errorReplyFor(classifyDatagram(bytes(2, 1)), 42)
      expect(version && encodeResponse(version)).toStrictEqual(bytes(0, 129, 0, 1, 0, 0, 0, 42))
      const opcode = NatPmpMessage.errorReplyFor(classifyDatagram(bytes(0, 9)), 42)
      expect(opcode && encodeResponse(opcode)).toStrictEqual(bytes(0, 137, 0, 5, 0, 0, 0, 42))
      expect(NatPmpMessage.errorReplyFor(classifyDatagram(bytes(0, 0)), 42)).toBeUndefined()
    })
  })

  it("resultCodeMessage gives the RFC meaning", () => {
    expect(NatPmpMessage.resultCodeMessage(0)).toBe("success")
    expect(NatPmpMessage.resultCodeMessage(1)).toBe("unsupported version")
    expect(NatPmpMessage.resultCodeMessage(2)).toContain("not authorized")
    expect(NatPmpMessage.resultCodeMessage(3)).toContain("network failure")
    expect(NatPmpMessage.resultCodeMessage(4)).toContain("out of resources")
    expect(NatPmpMessage.resultCodeMessage(5)).toBe("unsupported opcode")
    expect(NatPmpMessage.resultCodeMessage(77)).toBe("unknown result code 77")
  })
})

type MapRequestType = NatPmpMessage.MapRequest
