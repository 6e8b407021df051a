/**
 * Hostile-input fuzzers of the core codecs and clients, shared by `npm run fuzz` (large counts) and the tests
 * (small counts). Every fuzzer is seeded and returns its counts and the violations it found (empty when all is
 * well); none throws.
 *
 * - {@link fuzzRouterOsDecoder}: random and mutated RouterOS API byte streams through the incremental sentence
 *   decoder in random chunkings (never throws, same result however the stream is chunked, valid streams decode
 *   to exactly what was encoded, malformed ones fail with a `RouterOsProtocolError`), reply parsing of every
 *   decoded sentence, and length prefixes at random offsets.
 * - {@link fuzzNatPmpDecode}: random datagrams through `NatPmpMessage.decodeResponse`/`decodeRequest`/
 *   `classifyDatagram` against an independent model of what is a valid message.
 * - {@link fuzzRouterOsClient}: the RouterOS client against a hostile TCP server answering commands with
 *   garbage, mutated and misleading sentences.
 * - {@link fuzzNatPmpClient}: the NAT-PMP client against a hostile UDP gateway answering with random and mutated
 *   replies.
 */
import { NatPmpClient, NatPmpMessage, RouterOsClient, RouterOsProtocol } from "@natpmp-bridge/core"
import * as Cause from "effect/Cause"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Schema from "effect/Schema"
import * as Dgram from "node:dgram"
import * as Net from "node:net"
import { Prng } from "../src/testing/Prng.js"

/** Counts of a fuzzer run. */
export interface FuzzReport {
  readonly name: string
  readonly seed: number
  readonly inputs: number
  /** Extra counts (kinds of inputs and outcomes). */
  readonly counts: Readonly<Record<string, number>>
  readonly violations: ReadonlyArray<string>
  readonly seconds: number
}

export const formatReport = (report: FuzzReport): string =>
  `${report.name}: inputs=${report.inputs} ` +
  Object.entries(report.counts).map(([key, value]) => `${key}=${value}`).join(" ") +
  ` violations=${report.violations.length} (${report.seconds.toFixed(1)} s, ` +
  `${Math.round(report.inputs / Math.max(report.seconds, 0.001))}/s) seed=${report.seed}`

class Collector {
  readonly violations: Array<string> = []
  readonly counts: Record<string, number> = {}
  total = 0
  add(text: string): void {
    this.total++
    if (this.violations.length < 20) this.violations.push(text)
  }
  count(key: string, n = 1): void {
    this.counts[key] = (this.counts[key] ?? 0) + n
  }
}

const hex = (bytes: Uint8Array, max = 64) =>
  Buffer.from(bytes.buffer, bytes.byteOffset, Math.min(bytes.byteLength, max)).toString("hex") +
  (bytes.byteLength > max ? `…(${bytes.byteLength} bytes)` : "")

/** A message must be one printable line (no control characters or line separators from the peer). */
const unprintable = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/

const describe = (error: unknown) => error instanceof Error ? `${error.name}: ${error.message}` : String(error)

// -----------------------------------------------------------------------------
// RouterOS API decoder
// -----------------------------------------------------------------------------

const { RouterOsProtocolError, SentenceDecoder } = RouterOsProtocol
const decodeOneSentence = Schema.decodeEither(RouterOsProtocol.SentenceFromBytes)

/** A string of random code points (no lone surrogates, so it survives UTF-8). */
const randomText = (rng: Prng, length: number): string => {
  let out = ""
  for (let i = 0; i < length; i++) {
    const range = rng.int(10)
    const code = range < 6
      ? rng.between(0x20, 0x7e)
      : range < 7
      ? rng.between(0, 0x1f)
      : range < 8
      ? rng.between(0x80, 0x7ff)
      : range < 9
      ? rng.between(0x800, 0xd7ff)
      : rng.between(0x10000, 0x10ffff)
    out += String.fromCodePoint(code)
  }
  return out
}

const REPLY_WORDS = ["!re", "!done", "!trap", "!fatal", "!empty", "!future", "", "!"]
const KEYS = [".id", "ret", "message", "category", "comment", "dst-port", "__proto__", "constructor", "", "=", ".tag"]

const randomWord = (rng: Prng): string => {
  switch (rng.int(8)) {
    case 0:
      // a zero-length word would end the sentence: not a word
      return rng.pick(REPLY_WORDS.filter((word) => word !== ""))
    case 1:
      return `=${rng.pick(KEYS)}=${randomText(rng, rng.int(12))}`
    case 2:
      return `.tag=${rng.chance(0.5) ? rng.int(100) : randomText(rng, rng.int(5))}`
    case 3:
      // 2-byte (and sometimes 3-byte) length prefixes
      return "=comment=" + "x".repeat(
        rng.chance(0.8)
          ? rng.between(110, 300)
          : rng.chance(0.8)
          ? rng.between(300, 0x3fff)
          : rng.between(0x3ff0, 0x4100)
      )
    case 4:
      return `?${randomText(rng, rng.int(8))}`
    default:
      return randomText(rng, rng.between(1, 24))
  }
}

const randomSentences = (rng: Prng): Array<Array<string>> => {
  const sentences: Array<Array<string>> = []
  const n = rng.between(1, 5)
  for (let i = 0; i < n; i++) {
    const words = [rng.pick(REPLY_WORDS.slice(0, 6))]
    const m = rng.int(6)
    for (let j = 0; j < m; j++) words.push(randomWord(rng))
    sentences.push(words)
  }
  return sentences
}

const encodeStream = (rng: Prng, sentences: ReadonlyArray<ReadonlyArray<string>>): Uint8Array => {
  const parts: Array<Uint8Array> = []
  for (const sentence of sentences) {
    // empty sentences (a lone zero-length word) are skipped by the decoder
    if (rng.chance(0.05)) parts.push(Uint8Array.of(0))
    parts.push(RouterOsProtocol.encodeSentence(sentence))
  }
  return Buffer.concat(parts)
}

const concat = (...parts: ReadonlyArray<Uint8Array>) => new Uint8Array(Buffer.concat(parts))

const mutateStream = (rng: Prng, stream: Uint8Array): Uint8Array => {
  const at = rng.int(stream.length + 1)
  switch (rng.int(9)) {
    case 0: {
      const out = Uint8Array.from(stream)
      if (out.length > 0) out[Math.min(at, out.length - 1)] ^= 1 << rng.int(8)
      return out
    }
    case 1: {
      const out = Uint8Array.from(stream)
      if (out.length > 0) out[Math.min(at, out.length - 1)] = rng.pick([0xf1, 0xf7, 0xf8, 0xfa, 0xff, 0x80, 0xc0, 0xe0])
      return out
    }
    case 2:
      return stream.subarray(0, at)
    case 3:
      return concat(stream.subarray(0, at), rng.bytes(rng.between(1, 40)), stream.subarray(at))
    case 4:
      return concat(stream.subarray(0, at), stream.subarray(Math.min(stream.length, at + rng.between(1, 20))))
    case 5: {
      const end = Math.min(stream.length, at + rng.between(1, 60))
      return concat(stream.subarray(0, end), stream.subarray(at, end), stream.subarray(end))
    }
    case 6:
      // an absurd length prefix (4 or 5 bytes)
      return concat(
        stream.subarray(0, at),
        rng.chance(0.5) ? Uint8Array.of(0xef, 0xff, 0xff, 0xff) : Uint8Array.of(0xf0, 0xff, 0xff, 0xff, 0xff),
        stream.subarray(at)
      )
    case 7:
      // a stray zero byte (ends a word list early)
      return concat(stream.subarray(0, at), Uint8Array.of(0), stream.subarray(at))
    default:
      return concat(stream, rng.bytes(rng.between(1, 8)))
  }
}

const randomStream = (rng: Prng): Uint8Array => {
  const length = rng.chance(0.7) ? rng.int(64) : rng.int(2000)
  const out = rng.bytes(length)
  // mostly small bytes, so that lengths are plausible and words complete
  for (let i = 0; i < length; i++) if (rng.chance(0.6)) out[i] = out[i] & 0x1f
  return out
}

const chunksOf = (rng: Prng, bytes: Uint8Array): Array<Uint8Array> => {
  const chunks: Array<Uint8Array> = []
  const mode = rng.int(4)
  let pos = 0
  while (pos < bytes.length) {
    const size = mode === 0 ? 1 : mode === 1 ? rng.between(1, 8) : mode === 2 ? rng.between(1, 600) : rng.between(0, 3)
    chunks.push(bytes.subarray(pos, pos + size))
    pos += size
  }
  return chunks
}

interface Decoded {
  readonly sentences: Array<ReadonlyArray<string>>
  readonly error: string | undefined
  readonly idle: boolean
}

const decodeChunks = (
  chunks: ReadonlyArray<Uint8Array>,
  maxWordLength: number,
  collector: Collector,
  input: Uint8Array
): Decoded | undefined => {
  const sentences: Array<ReadonlyArray<string>> = []
  try {
    const decoder = new SentenceDecoder((sentence) => sentences.push(sentence), { maxWordLength })
    let error: string | undefined = undefined
    for (const chunk of chunks) {
      const result = decoder.push(chunk)
      if (Either.isLeft(result)) {
        const failure: unknown = result.left
        if (!(failure instanceof RouterOsProtocolError) || result.left._tag !== "RouterOsProtocolError") {
          collector.add(`decoder failed with an untyped error ${describe(failure)} on ${hex(input)}`)
        } else if (unprintable.test(result.left.message)) {
          collector.add(`error message not on one printable line: ${JSON.stringify(result.left.message)}`)
        }
        error ??= result.left.reason
        if (error !== result.left.reason) collector.add(`a failed decoder changed its error on ${hex(input)}`)
      } else if (error !== undefined) {
        collector.add(`a failed decoder accepted more input on ${hex(input)}`)
      }
    }
    return { sentences, error, idle: decoder.idle }
  } catch (cause) {
    collector.add(`decoder threw ${describe(cause)} on ${hex(input)}`)
    return undefined
  }
}

const checkReplies = (sentences: ReadonlyArray<ReadonlyArray<string>>, collector: Collector) => {
  const tags = new Set(["Re", "Done", "Trap", "Fatal", "Empty", "Unknown"])
  for (const sentence of sentences) {
    try {
      const reply = RouterOsProtocol.parseReply(sentence)
      if (!tags.has(reply._tag)) collector.add(`parseReply returned ${reply._tag}`)
    } catch (cause) {
      collector.add(`parseReply threw ${describe(cause)} on ${JSON.stringify(sentence).slice(0, 200)}`)
    }
  }
  if ((Object.prototype as Record<string, unknown>)["polluted"] !== undefined) {
    collector.add("a reply polluted Object.prototype")
  }
}

const sameDecoded = (a: Decoded, b: Decoded) =>
  a.error === b.error && a.idle === b.idle && JSON.stringify(a.sentences) === JSON.stringify(b.sentences)

/**
 * Fuzzes the RouterOS API decoder with `count` streams: valid (decode to exactly what was encoded, however
 * chunked), mutated and random ones (the same outcome whole and chunked; failures are `RouterOsProtocolError`s).
 */
export const fuzzRouterOsDecoder = (count: number, seed: number): FuzzReport => {
  const started = Date.now()
  const rng = new Prng(seed)
  const collector = new Collector()
  for (let i = 0; i < count; i++) {
    const kind = rng.int(10)
    let input: Uint8Array
    let expected: Array<Array<string>> | undefined = undefined
    if (kind < 4) {
      expected = randomSentences(rng)
      input = encodeStream(rng, expected)
      collector.count("valid")
    } else if (kind < 8) {
      input = mutateStream(rng, encodeStream(rng, randomSentences(rng)))
      collector.count("mutated")
    } else {
      input = randomStream(rng)
      collector.count("random")
    }
    collector.count("bytes", input.length)
    const t0 = Date.now()
    const limit = rng.chance(0.2) ? rng.between(1, 300) : 16 * 1024 * 1024
    const whole = decodeChunks([input], limit, collector, input)
    const chunked = decodeChunks(chunksOf(rng, input), limit, collector, input)
    if (whole === undefined || chunked === undefined) continue
    if (!sameDecoded(whole, chunked)) {
      collector.add(
        `chunked decoding differs from whole decoding on ${hex(input)}: ${JSON.stringify(whole).slice(0, 200)} vs ${
          JSON.stringify(chunked).slice(0, 200)
        }`
      )
    }
    if (whole.error !== undefined) collector.count("rejected")
    if (expected !== undefined && limit > 0x4100) {
      if (whole.error !== undefined || !whole.idle || JSON.stringify(whole.sentences) !== JSON.stringify(expected)) {
        collector.add(`a valid stream did not decode to its sentences: ${hex(input)}`)
      }
    }
    // decodeSentences and the schema agree with the decoder (no word limit there)
    try {
      const all = RouterOsProtocol.decodeSentences(input)
      const unlimited = decodeChunks(chunksOf(rng, input), RouterOsProtocol.MAX_WORD_LENGTH, collector, input)
      if (unlimited !== undefined) {
        const agrees = Either.isRight(all)
          ? unlimited.error === undefined && unlimited.idle &&
            JSON.stringify(all.right) === JSON.stringify(unlimited.sentences)
          : all.left instanceof RouterOsProtocolError &&
            (unlimited.error !== undefined ? all.left.reason === unlimited.error : !unlimited.idle)
        if (!agrees) collector.add(`decodeSentences disagrees with the chunked decoder on ${hex(input)}`)
      }
      const one = Either.isRight(all) && all.right.length === 1
      const decoded = Either.isRight(decodeOneSentence(input))
      if (decoded !== one) collector.add(`SentenceFromBytes disagrees with decodeSentences on ${hex(input)}`)
    } catch (cause) {
      collector.add(`decodeSentences/SentenceFromBytes threw ${describe(cause)} on ${hex(input)}`)
    }
    checkReplies(whole.sentences, collector)
    // length prefixes at random offsets
    const offset = rng.int(input.length + 2)
    try {
      const prefix = RouterOsProtocol.decodeLength(input, offset)
      if (
        prefix._tag === "Length" &&
        !(Number.isInteger(prefix.length) && prefix.length >= 0 && prefix.length <= 0xffffffff &&
          prefix.size >= 1 && prefix.size <= 5 && offset + prefix.size <= input.length)
      ) {
        collector.add(`decodeLength returned ${JSON.stringify(prefix)} at ${offset} of ${hex(input)}`)
      }
    } catch (cause) {
      collector.add(`decodeLength threw ${describe(cause)}`)
    }
    if (Date.now() - t0 > 2000) collector.add(`decoding took ${Date.now() - t0} ms on ${hex(input)}`)
  }
  return {
    name: "RouterOS decoder fuzz",
    seed,
    inputs: count,
    counts: collector.counts,
    violations: collector.violations,
    seconds: (Date.now() - started) / 1000
  }
}

// -----------------------------------------------------------------------------
// NAT-PMP message decoding
// -----------------------------------------------------------------------------

/** Whether `bytes` is a valid NAT-PMP response (an independent reading of RFC 6886 §3 and errata 3618). */
export const isValidResponse = (bytes: Uint8Array): boolean => {
  if (bytes.length < 8 || bytes[0] !== 0 || bytes[1] < 128) return false
  const resultCode = (bytes[2] << 8) | bytes[3]
  if (resultCode !== 0) return true
  return (bytes[1] === 128 && bytes.length >= 12) || ((bytes[1] === 129 || bytes[1] === 130) && bytes.length >= 16)
}

/** Whether `bytes` is a valid NAT-PMP request. */
export const isValidRequest = (bytes: Uint8Array): boolean =>
  bytes.length >= 2 && bytes[0] === 0 &&
  (bytes[1] === 0 || ((bytes[1] === 1 || bytes[1] === 2) && bytes.length >= 12))

const randomDatagram = (rng: Prng): Uint8Array => {
  const length = rng.chance(0.6) ? rng.int(21) : rng.chance(0.75) ? rng.int(65) : rng.int(1101)
  const bytes = rng.bytes(length)
  if (length > 0 && rng.chance(0.6)) bytes[0] = 0
  if (length > 1 && rng.chance(0.7)) bytes[1] = rng.pick([0, 1, 2, 128, 129, 130, rng.between(128, 255)])
  if (length > 3 && rng.chance(0.4)) {
    bytes[2] = 0
    bytes[3] = rng.chance(0.5) ? 0 : rng.int(7)
  }
  return bytes
}

/** Fuzzes the NAT-PMP codecs with `count` random datagrams against {@link isValidResponse}/{@link isValidRequest}. */
export const fuzzNatPmpDecode = (count: number, seed: number): FuzzReport => {
  const started = Date.now()
  const rng = new Prng(seed)
  const collector = new Collector()
  const canonicalLength = { PublicAddressResponse: 12, MapResponse: 16, ErrorResponse: 8 } as const
  // the decoders skip the schema's validation of what the wire parser built: the schema must agree on every input
  const responseBySchema = Schema.decodeEither(NatPmpMessage.Response)
  const requestBySchema = Schema.decodeEither(NatPmpMessage.Request)
  const agree = <A>(
    name: string,
    bytes: Uint8Array,
    fast: Either.Either<A, unknown>,
    schema: Either.Either<A, unknown>
  ) => {
    if (
      Either.isRight(fast) !== Either.isRight(schema) ||
      (Either.isRight(fast) && JSON.stringify(fast.right) !== JSON.stringify(Either.getOrUndefined(schema)))
    ) {
      collector.add(`${name}(${hex(bytes)}) disagrees with its schema`)
    }
  }
  for (let i = 0; i < count; i++) {
    const bytes = randomDatagram(rng)
    try {
      const response = NatPmpMessage.decodeResponse(bytes)
      agree("decodeResponse", bytes, response, responseBySchema(bytes))
      if (Either.isRight(response) !== isValidResponse(bytes)) {
        collector.add(`decodeResponse ${Either.isRight(response) ? "accepted" : "rejected"} ${hex(bytes)}`)
      } else if (Either.isRight(response)) {
        collector.count("validResponses")
        const value = response.right
        // what it decoded is exactly the datagram's leading bytes
        const encoded = NatPmpMessage.encodeResponse(value)
        if (
          encoded.length !== canonicalLength[value._tag] ||
          Buffer.compare(encoded, bytes.subarray(0, encoded.length)) !== 0
        ) {
          collector.add(`decodeResponse(${hex(bytes)}) = ${JSON.stringify(value)} does not re-encode to it`)
        }
        if (value._tag === "ErrorResponse" && (value.resultCode === 0 || value.opcode !== bytes[1] - 128)) {
          collector.add(`error response ${JSON.stringify(value)} from ${hex(bytes)}`)
        }
      }
      const request = NatPmpMessage.decodeRequest(bytes)
      agree("decodeRequest", bytes, request, requestBySchema(bytes))
      if (Either.isRight(request) !== isValidRequest(bytes)) {
        collector.add(`decodeRequest ${Either.isRight(request) ? "accepted" : "rejected"} ${hex(bytes)}`)
      }
      const classified = NatPmpMessage.classifyDatagram(bytes)
      if (Either.isRight(request)) {
        collector.count("validRequests")
        if (classified._tag !== "Request" || JSON.stringify(classified.request) !== JSON.stringify(request.right)) {
          collector.add(`classifyDatagram(${hex(bytes)}) = ${classified._tag}, decodeRequest accepted it`)
        }
      } else if (classified._tag === "Request") {
        collector.add(`classifyDatagram(${hex(bytes)}) = Request, decodeRequest rejected it`)
      }
    } catch (cause) {
      collector.add(`NAT-PMP codec threw ${describe(cause)} on ${hex(bytes)}`)
    }
  }
  return {
    name: "NAT-PMP decode fuzz",
    seed,
    inputs: count,
    counts: collector.counts,
    violations: collector.violations,
    seconds: (Date.now() - started) / 1000
  }
}

// -----------------------------------------------------------------------------
// RouterOS client against a hostile server
// -----------------------------------------------------------------------------

const ROUTEROS_ERRORS = new Set([
  "RouterOsProtocolError",
  "RouterOsTrapError",
  "RouterOsFatalError",
  "RouterOsConnectionError",
  "RouterOsTimeoutError",
  "RouterOsLoginError"
])

/** A router message meant to break a log line or a terminal (line breaks, escape sequences). */
const hostileText = (rng: Prng): string =>
  randomText(rng, rng.int(8)) + rng.pick(["\n", "\r\n", "\u001b[2J", "\u0000", "\u2028", ""]) +
  randomText(rng, rng.int(8))

/** What the hostile server sends in answer to the command tagged `tag`. */
const hostileAnswer = (rng: Prng, tag: string): { readonly bytes: Uint8Array; readonly close: boolean } => {
  const valid = [
    ["!re", "=.id=*1", "=comment=" + randomText(rng, rng.int(10)), `.tag=${tag}`],
    ["!done", `.tag=${tag}`]
  ]
  const parts: Array<Uint8Array> = []
  const n = rng.between(1, 4)
  for (let i = 0; i < n; i++) {
    switch (rng.int(8)) {
      case 0:
        parts.push(rng.bytes(rng.between(1, 64)))
        break
      case 1:
        parts.push(mutateStream(rng, encodeStream(rng, valid)))
        break
      case 2: {
        const sentence = randomSentences(rng)[0]
        if (rng.chance(0.7)) sentence.push(`.tag=${rng.chance(0.7) ? tag : rng.int(100)}`)
        parts.push(RouterOsProtocol.encodeSentence(sentence))
        break
      }
      case 3:
        parts.push(RouterOsProtocol.encodeSentence(["!trap", `=message=${hostileText(rng)}`, `.tag=${tag}`]))
        break
      case 4:
        parts.push(RouterOsProtocol.encodeSentence(["!fatal", hostileText(rng)]))
        break
      case 5:
        parts.push(RouterOsProtocol.encodeSentence(["!empty", `.tag=${tag}`]))
        break
      case 6:
        parts.push(Uint8Array.of(rng.pick([0xf8, 0xff, 0xf3])))
        break
      default:
        parts.push(encodeStream(rng, valid))
    }
  }
  return { bytes: Buffer.concat(parts), close: rng.chance(0.15) }
}

/**
 * Runs `rounds` commands of a fresh RouterOS client against a hostile server: after a proper login, the command
 * is answered with garbage, mutated, misleading or valid sentences (sometimes nothing, sometimes a closed
 * connection). Each command must end within its timeout (plus margin) with a result or a typed RouterOS error,
 * never a defect.
 */
export const fuzzRouterOsClient = (rounds: number, seed: number) =>
  Effect.gen(function*() {
    const started = Date.now()
    const rng = new Prng(seed)
    const collector = new Collector()
    const plan: { answer: (tag: string) => { bytes: Uint8Array; close: boolean } } = {
      answer: (tag) => hostileAnswer(rng, tag)
    }
    const server = yield* Effect.acquireRelease(
      Effect.async<Net.Server>((resume) => {
        const sockets = new Set<Net.Socket>()
        const server = Net.createServer((socket) => {
          sockets.add(socket)
          socket.on("close", () => sockets.delete(socket))
          socket.on("error", () => {})
          const decoder = new SentenceDecoder((sentence) => {
            const tagWord = sentence.find((word) => word.startsWith(".tag="))
            const tag = tagWord === undefined ? "" : tagWord.slice(5)
            if (sentence[0] === "/login") {
              socket.write(RouterOsProtocol.encodeSentence(["!done", `.tag=${tag}`]))
            } else if (sentence[0] === "/cancel") {
              if (rng.chance(0.5)) socket.write(RouterOsProtocol.encodeSentence(["!done", `.tag=${tag}`]))
            } else {
              const answer = plan.answer(tag)
              // split the answer into random chunks
              let pos = 0
              while (pos < answer.bytes.length) {
                const size = rng.between(1, 50)
                socket.write(answer.bytes.subarray(pos, pos + size))
                pos += size
              }
              if (answer.close) socket.end()
            }
          })
          socket.on("data", (chunk) => {
            if (Either.isLeft(decoder.push(chunk))) socket.destroy()
          })
        })
        server.on("close", () => {
          for (const socket of sockets) socket.destroy()
        })
        server.listen(0, "127.0.0.1", () => resume(Effect.succeed(server)))
      }),
      (server) =>
        Effect.async<void>((resume) => {
          server.close(() => resume(Effect.void))
          server.emit("close")
        })
    )
    const port = (server.address() as Net.AddressInfo).port
    const commandTimeout = 200
    for (let round = 0; round < rounds; round++) {
      const t0 = Date.now()
      const exit = yield* Effect.exit(
        Effect.scoped(Effect.gen(function*() {
          const client = yield* RouterOsClient.make({
            host: "127.0.0.1",
            port,
            user: "admin",
            password: Redacted.make("x"),
            connectTimeout: Duration.millis(300),
            commandTimeout: Duration.millis(commandTimeout),
            reconnect: false
          })
          return yield* client.command("/ip/firewall/nat/print", { queries: ["?chain=dstnat"] })
        })).pipe(Logger.withMinimumLogLevel(LogLevel.None))
      )
      const elapsed = Date.now() - t0
      if (elapsed > commandTimeout + 300 + 1500) collector.add(`round ${round}: the command took ${elapsed} ms`)
      if (Exit.isSuccess(exit)) {
        collector.count("succeeded")
        for (const row of exit.value.rows) {
          if (typeof row !== "object" || row === null) collector.add(`round ${round}: a row is ${String(row)}`)
        }
      } else {
        const failure = Cause.failureOption(exit.cause)
        if (Option.isNone(failure)) {
          collector.add(`round ${round}: the command died: ${Cause.pretty(exit.cause).split("\n")[0]}`)
        } else {
          const error = failure.value
          if (!ROUTEROS_ERRORS.has(error._tag)) collector.add(`round ${round}: untyped failure ${describe(error)}`)
          else if (unprintable.test(error.message)) {
            collector.add(`round ${round}: message not on one printable line: ${error.message}`)
          }
          collector.count(error._tag)
        }
      }
    }
    return {
      name: "RouterOS client vs hostile server",
      seed,
      inputs: rounds,
      counts: collector.counts,
      violations: collector.violations,
      seconds: (Date.now() - started) / 1000
    } satisfies FuzzReport
  }).pipe(Effect.scoped)

// -----------------------------------------------------------------------------
// NAT-PMP client against a hostile gateway
// -----------------------------------------------------------------------------

const NATPMP_ERRORS = new Set(["NatPmpResultError", "NatPmpTimeoutError", "NatPmpUnreachableError"])

/** A reply the hostile gateway sends to `request`: random, mutated, mismatched or valid. */
const hostileReply = (rng: Prng, request: NatPmpMessage.Request): Uint8Array => {
  const valid = () => validReply(rng, request)
  switch (rng.int(6)) {
    case 0:
      return rng.bytes(rng.int(40))
    case 1: {
      const bytes = valid()
      const out = Uint8Array.from(bytes)
      out[rng.int(out.length)] = rng.next() & 0xff
      return out
    }
    case 2:
      return valid().subarray(0, rng.int(16))
    case 3:
      return concat(valid(), rng.bytes(rng.between(1, 100)))
    case 4:
      // an answer to another request (wrong opcode) or an error reply
      return NatPmpMessage.encodeResponse({
        _tag: "ErrorResponse",
        opcode: rng.chance(0.5) ? requestOpcode(request) : rng.int(128),
        resultCode: rng.between(1, 0xffff),
        epoch: rng.next()
      })
    default:
      return valid()
  }
}

const requestOpcode = (request: NatPmpMessage.Request): number =>
  request._tag === "PublicAddressRequest" ? 0 : NatPmpMessage.opcodeOf(request.protocol)

/** A well-formed reply to `request` (sometimes for another internal port, sometimes a failure). */
const validReply = (rng: Prng, request: NatPmpMessage.Request): Uint8Array => {
  const op = request._tag === "PublicAddressRequest" ? 0 : NatPmpMessage.opcodeOf(request.protocol)
  const internalPort = request._tag === "MapRequest" ? request.internalPort : 0
  const resultCode = rng.chance(0.7) ? 0 : rng.pick([1, 2, 3, 4, 5, rng.int(0x10000)])
  if (op === 0) {
    return NatPmpMessage.encodeResponse({
      _tag: "PublicAddressResponse",
      resultCode,
      epoch: rng.next(),
      publicAddress: `${rng.int(256)}.${rng.int(256)}.${rng.int(256)}.${rng.int(256)}`
    })
  }
  return NatPmpMessage.encodeResponse({
    _tag: "MapResponse",
    protocol: op === 1 ? "udp" : "tcp",
    resultCode,
    epoch: rng.next(),
    internalPort: rng.chance(0.8) ? internalPort : rng.int(0x10000),
    externalPort: rng.int(0x10000),
    lifetime: rng.next()
  })
}

/** What the client must make of the replies, in order: the first acceptable one decides (RFC 6886 §3). */
const expectedOutcome = (
  request: NatPmpMessage.Request,
  replies: ReadonlyArray<Uint8Array>
): { readonly _tag: "Success"; readonly bytes: Uint8Array } | { readonly _tag: "Result"; readonly code: number } | {
  readonly _tag: "Timeout"
} => {
  const op = request._tag === "PublicAddressRequest" ? 0 : NatPmpMessage.opcodeOf(request.protocol)
  for (const bytes of replies) {
    if (!isValidResponse(bytes) || bytes[1] !== 128 + op) continue
    const resultCode = (bytes[2] << 8) | bytes[3]
    const full = bytes.length >= (op === 0 ? 12 : 16)
    if (op !== 0 && full && request._tag === "MapRequest" && ((bytes[8] << 8) | bytes[9]) !== request.internalPort) {
      continue
    }
    return resultCode === 0 ? { _tag: "Success", bytes } : { _tag: "Result", code: resultCode }
  }
  return { _tag: "Timeout" }
}

/**
 * Runs `rounds` requests of a fresh NAT-PMP client against a hostile gateway that answers each received request
 * with 0 to 3 random, mutated, mismatched or valid replies. The outcome must be what the first acceptable reply
 * says (mapping, typed result error) or a typed timeout after the configured retransmissions, never a defect, and
 * within the retransmission bound.
 */
export const fuzzNatPmpClient = (rounds: number, seed: number) =>
  Effect.gen(function*() {
    const started = Date.now()
    const rng = new Prng(seed)
    const collector = new Collector()
    const state: {
      request: NatPmpMessage.Request | undefined
      sent: Array<{ readonly bytes: Uint8Array; readonly at: number }>
      attempt: number
      answerOn: number
    } = { request: undefined, sent: [], attempt: 0, answerOn: 1 }
    const gateway = yield* Effect.acquireRelease(
      Effect.async<Dgram.Socket>((resume) => {
        const socket = Dgram.createSocket("udp4")
        socket.on("message", (_message, from) => {
          const request = state.request
          if (request === undefined) return
          state.attempt++
          if (state.attempt !== state.answerOn && !rng.chance(0.2)) return
          const n = rng.int(4)
          for (let i = 0; i < n; i++) {
            // mostly hostile replies, the last one often valid
            const bytes = i === n - 1 && rng.chance(0.5) ? validReply(rng, request) : hostileReply(rng, request)
            state.sent.push({ bytes, at: Date.now() })
            socket.send(bytes, from.port, from.address)
          }
        })
        socket.bind(0, "127.0.0.1", () => resume(Effect.succeed(socket)))
      }),
      (socket) =>
        Effect.async<void>((resume) => {
          socket.close(() => resume(Effect.void))
        })
    )
    const port = gateway.address().port
    const initialTimeout = 100
    for (let round = 0; round < rounds; round++) {
      const maxAttempts = rng.between(1, 2)
      const kind = rng.int(4)
      const protocol = rng.chance(0.5) ? "udp" as const : "tcp" as const
      const internalPort = rng.between(1, 65535)
      const request: NatPmpMessage.Request = kind === 0
        ? { _tag: "PublicAddressRequest" }
        : {
          _tag: "MapRequest",
          protocol,
          internalPort,
          suggestedExternalPort: rng.int(0x10000),
          lifetime: kind === 3 ? 0 : rng.between(1, 0xffffffff)
        }
      state.request = request
      state.sent = []
      state.attempt = 0
      // sometimes the gateway never answers
      state.answerOn = rng.chance(0.15) ? maxAttempts + 1 : rng.between(1, maxAttempts)
      const t0 = Date.now()
      const exit = yield* Effect.exit(
        Effect.scoped(Effect.gen(function*() {
          const client = yield* NatPmpClient.make({
            gateway: "127.0.0.1",
            port,
            initialTimeout: Duration.millis(initialTimeout),
            maxAttempts,
            announcements: false
          })
          if (request._tag === "PublicAddressRequest") return yield* client.publicAddress
          if (request.lifetime === 0) return yield* client.unmap(request.protocol, request.internalPort)
          return yield* client.map(request)
        })).pipe(Logger.withMinimumLogLevel(LogLevel.None))
      )
      const elapsed = Date.now() - t0
      state.request = undefined
      const bound = initialTimeout * (2 ** maxAttempts - 1)
      if (elapsed > bound + 1000) collector.add(`round ${round}: took ${elapsed} ms (bound ${bound} ms)`)
      const expected = expectedOutcome(request, state.sent.map((s) => s.bytes))
      const failure = Exit.isFailure(exit) ? Cause.failureOption(exit.cause) : Option.none()
      if (Exit.isFailure(exit) && Option.isNone(failure)) {
        collector.add(`round ${round}: the request died: ${Cause.pretty(exit.cause).split("\n")[0]}`)
        continue
      }
      if (Option.isSome(failure)) {
        const error = failure.value
        if (!NATPMP_ERRORS.has(error._tag)) {
          collector.add(`round ${round}: untyped failure ${describe(error)}`)
          continue
        }
        if (unprintable.test(error.message)) {
          collector.add(`round ${round}: message not on one printable line: ${error.message}`)
        }
        collector.count(error._tag)
      } else {
        collector.count("succeeded")
      }
      const outcome = Exit.isSuccess(exit)
        ? "Success"
        : Option.isSome(failure) && failure.value._tag === "NatPmpResultError"
        ? "Result"
        : "Timeout"
      // On a loaded machine a reply may be read after the last wait ended: when it was sent close to the end of the
      // wait, or when the process stalled (then the timeout fired late: the round took clearly longer than the bound).
      const decidingLate = expected._tag !== "Timeout" && outcome === "Timeout" &&
        (state.sent.some((s) => s.at - t0 > bound * 0.8) || elapsed > bound + 25)
      if (decidingLate) {
        collector.count("late")
        continue
      }
      if (outcome !== expected._tag) {
        collector.add(
          `round ${round}: ${JSON.stringify(request)} got ${outcome}, expected ${expected._tag} from replies ${
            state.sent.map((s) => hex(s.bytes)).join(" ")
          }`
        )
        continue
      }
      if (expected._tag === "Result" && Option.isSome(failure) && failure.value._tag === "NatPmpResultError") {
        if (failure.value.resultCode !== expected.code) {
          collector.add(`round ${round}: result ${failure.value.resultCode}, expected ${expected.code}`)
        }
      }
      if (expected._tag === "Success" && Exit.isSuccess(exit) && exit.value !== undefined) {
        const decoded = Either.getOrThrow(NatPmpMessage.decodeResponse(expected.bytes))
        const value = exit.value
        const same = decoded._tag === "PublicAddressResponse"
          ? "publicAddress" in value && value.publicAddress === decoded.publicAddress && value.epoch === decoded.epoch
          : decoded._tag === "MapResponse" && "externalPort" in value &&
            value.externalPort === decoded.externalPort && value.lifetime === decoded.lifetime &&
            value.internalPort === decoded.internalPort && value.epoch === decoded.epoch
        if (!same) {
          collector.add(`round ${round}: result ${JSON.stringify(value)} is not the reply ${hex(expected.bytes)}`)
        }
      }
    }
    return {
      name: "NAT-PMP client vs hostile gateway",
      seed,
      inputs: rounds,
      counts: collector.counts,
      violations: collector.violations,
      seconds: (Date.now() - started) / 1000
    } satisfies FuzzReport
  }).pipe(Effect.scoped)
