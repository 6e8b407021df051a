/**
 * The MikroTik RouterOS API wire protocol: word length prefixes, sentences, an incremental
 * sentence decoder for a TCP byte stream, reply parsing and command sentence building.
 *
 * A word is a length prefix followed by that many bytes; a sentence is a list of words ended by a
 * zero-length word. Words are decoded as UTF-8 (what this project writes is ASCII).
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"

/**
 * The byte stream or a sentence violates the RouterOS API protocol.
 *
 * @since 0.1.0
 * @category errors
 */
export class RouterOsProtocolError extends Data.TaggedError("RouterOsProtocolError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `RouterOS API protocol error: ${this.reason}`
  }
}

/**
 * The longest word the 5-byte length prefix can describe.
 *
 * @since 0.1.0
 * @category constants
 */
export const MAX_WORD_LENGTH = 0xFFFFFFFF

// -----------------------------------------------------------------------------
// Length prefixes and words
// -----------------------------------------------------------------------------

/**
 * Number of bytes the length prefix of a word of `length` bytes takes (1 to 5).
 *
 * @since 0.1.0
 * @category encoding
 */
export const lengthPrefixSize = (length: number): number =>
  length < 0x80 ? 1 : length < 0x4000 ? 2 : length < 0x200000 ? 3 : length < 0x10000000 ? 4 : 5

const writeLength = (target: Uint8Array, offset: number, length: number): number => {
  if (length < 0x80) {
    target[offset] = length
    return offset + 1
  }
  if (length < 0x4000) {
    target[offset] = (length >>> 8) | 0x80
    target[offset + 1] = length & 0xFF
    return offset + 2
  }
  if (length < 0x200000) {
    target[offset] = (length >>> 16) | 0xC0
    target[offset + 1] = (length >>> 8) & 0xFF
    target[offset + 2] = length & 0xFF
    return offset + 3
  }
  if (length < 0x10000000) {
    target[offset] = (length >>> 24) | 0xE0
    target[offset + 1] = (length >>> 16) & 0xFF
    target[offset + 2] = (length >>> 8) & 0xFF
    target[offset + 3] = length & 0xFF
    return offset + 4
  }
  target[offset] = 0xF0
  target[offset + 1] = (length >>> 24) & 0xFF
  target[offset + 2] = (length >>> 16) & 0xFF
  target[offset + 3] = (length >>> 8) & 0xFF
  target[offset + 4] = length & 0xFF
  return offset + 5
}

/**
 * Encodes a word length as its 1 to 5 byte prefix. Lengths must be integers in
 * `0..MAX_WORD_LENGTH`; anything else is a programming error and is clamped into range.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeLength = (length: number): Uint8Array => {
  const clamped = Math.max(0, Math.min(MAX_WORD_LENGTH, Math.floor(length)))
  const out = new Uint8Array(lengthPrefixSize(clamped))
  writeLength(out, 0, clamped)
  return out
}

/**
 * Result of reading one length prefix: the word length and the prefix size, "incomplete" when
 * more bytes are needed, or a protocol error for a reserved control byte.
 *
 * @since 0.1.0
 * @category decoding
 */
export type LengthPrefix =
  | { readonly _tag: "Length"; readonly length: number; readonly size: number }
  | { readonly _tag: "Incomplete"; readonly size: number }
  | { readonly _tag: "Invalid"; readonly byte: number }

/**
 * Reads the length prefix at `offset`. Never throws.
 *
 * @since 0.1.0
 * @category decoding
 */
export const decodeLength = (bytes: Uint8Array, offset = 0): LengthPrefix => {
  if (offset >= bytes.length) return { _tag: "Incomplete", size: 1 }
  const b = bytes[offset]
  const size = prefixSizeOf(b)
  if (size === 0) return { _tag: "Invalid", byte: b }
  if (offset + size > bytes.length) return { _tag: "Incomplete", size }
  return { _tag: "Length", length: readLength(bytes, offset, size), size }
}

/** 0 means "reserved control byte" (0xF8..0xFF) or an undefined 0xF1..0xF7 prefix. */
const prefixSizeOf = (b: number): number =>
  b < 0x80 ? 1 : b < 0xC0 ? 2 : b < 0xE0 ? 3 : b < 0xF0 ? 4 : b === 0xF0 ? 5 : 0

const readLength = (bytes: Uint8Array, offset: number, size: number): number => {
  switch (size) {
    case 1:
      return bytes[offset]
    case 2:
      return ((bytes[offset] & 0x3F) << 8) | bytes[offset + 1]
    case 3:
      return ((bytes[offset] & 0x1F) << 16) | (bytes[offset + 1] << 8) | bytes[offset + 2]
    case 4:
      return (((bytes[offset] & 0x0F) << 24) | (bytes[offset + 1] << 16) | (bytes[offset + 2] << 8) |
        bytes[offset + 3]) >>> 0
    default:
      return ((bytes[offset + 1] << 24) | (bytes[offset + 2] << 16) | (bytes[offset + 3] << 8) | bytes[offset + 4]) >>>
        0
  }
}

const invalidPrefix = (byte: number): RouterOsProtocolError =>
  new RouterOsProtocolError({
    reason: byte >= 0xF8
      ? `reserved control byte 0x${byte.toString(16).toUpperCase()} where a word length was expected`
      : `invalid length prefix 0x${byte.toString(16).toUpperCase()}`
  })

// -----------------------------------------------------------------------------
// Sentences
// -----------------------------------------------------------------------------

/**
 * A sentence: its words, without the terminating empty word.
 *
 * @since 0.1.0
 * @category models
 */
export type Sentence = ReadonlyArray<string>

/**
 * Encodes a sentence (words followed by the zero-length terminator) into one buffer.
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeSentence = (words: Sentence): Uint8Array => {
  const lengths = new Array<number>(words.length)
  let total = 1
  for (let i = 0; i < words.length; i++) {
    const n = Buffer.byteLength(words[i], "utf8")
    lengths[i] = n
    total += lengthPrefixSize(n) + n
  }
  const out = Buffer.allocUnsafe(total)
  let offset = 0
  for (let i = 0; i < words.length; i++) {
    offset = writeLength(out, offset, lengths[i])
    offset += out.write(words[i], offset, "utf8")
  }
  out[offset] = 0
  return out
}

/**
 * Encodes one word (length prefix and bytes).
 *
 * @since 0.1.0
 * @category encoding
 */
export const encodeWord = (word: string): Uint8Array => {
  const n = Buffer.byteLength(word, "utf8")
  const out = Buffer.allocUnsafe(lengthPrefixSize(n) + n)
  const offset = writeLength(out, 0, n)
  out.write(word, offset, "utf8")
  return out
}

const asBuffer = (chunk: Uint8Array): Buffer =>
  Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength)

/**
 * Options of a {@link SentenceDecoder}.
 *
 * @since 0.1.0
 * @category decoding
 */
export interface SentenceDecoderOptions {
  /** Words longer than this are a protocol error (protects against absurd length prefixes). Default 16 MiB. */
  readonly maxWordLength?: number
}

/**
 * Incremental sentence decoder for a byte stream: feed it chunks as they arrive, in any split
 * (a word, or even a length prefix, may span chunks); it calls `onSentence` for every complete
 * sentence. Partial input is kept without re-copying the stream: bytes of an incomplete word are
 * gathered and joined once the word is complete, and words already decoded are kept as strings.
 *
 * After a protocol error the decoder stays failed: every later `push` returns the same error.
 * An empty sentence (a lone zero-length word) is skipped.
 *
 * @since 0.1.0
 * @category decoding
 */
export class SentenceDecoder {
  private readonly maxWordLength: number
  private pending: Array<Buffer> = []
  private pendingBytes = 0
  /** Bytes needed before decoding can make progress on the pending input. */
  private needed = 0
  private words: Array<string> = []
  private failure: RouterOsProtocolError | undefined = undefined

  constructor(
    private readonly onSentence: (sentence: Sentence) => void,
    options?: SentenceDecoderOptions
  ) {
    this.maxWordLength = options?.maxWordLength ?? 16 * 1024 * 1024
  }

  /** Feeds a chunk; returns `Either.left` once the stream violates the protocol. */
  push(chunk: Uint8Array): Either.Either<void, RouterOsProtocolError> {
    if (this.failure !== undefined) return Either.left(this.failure)
    if (chunk.length === 0) return Either.void
    let data: Buffer
    if (this.pendingBytes === 0) {
      data = asBuffer(chunk)
    } else {
      // copy: the caller may reuse its chunk buffer
      this.pending.push(Buffer.from(chunk))
      this.pendingBytes += chunk.length
      if (this.pendingBytes < this.needed) return Either.void
      data = this.pending.length === 1 ? this.pending[0] : Buffer.concat(this.pending, this.pendingBytes)
      this.pending = []
      this.pendingBytes = 0
    }
    return this.decode(data)
  }

  /** True when no partial sentence is buffered. */
  get idle(): boolean {
    return this.pendingBytes === 0 && this.words.length === 0
  }

  private decode(data: Buffer): Either.Either<void, RouterOsProtocolError> {
    const end = data.length
    let pos = 0
    while (pos < end) {
      const b = data[pos]
      let size: number
      let length: number
      if (b < 0x80) {
        size = 1
        length = b
      } else {
        size = prefixSizeOf(b)
        if (size === 0) return this.fail(invalidPrefix(b))
        if (pos + size > end) {
          this.keep(data, pos, size)
          return Either.void
        }
        length = readLength(data, pos, size)
      }
      if (length > this.maxWordLength) {
        return this.fail(
          new RouterOsProtocolError({ reason: `word of ${length} bytes exceeds the limit of ${this.maxWordLength}` })
        )
      }
      const wordEnd = pos + size + length
      if (wordEnd > end) {
        this.keep(data, pos, size + length)
        return Either.void
      }
      if (length === 0) {
        if (this.words.length > 0) {
          const sentence = this.words
          this.words = []
          this.onSentence(sentence)
        }
      } else {
        this.words.push(data.toString("utf8", pos + size, wordEnd))
      }
      pos = wordEnd
    }
    return Either.void
  }

  private keep(data: Buffer, from: number, needed: number): void {
    const rest = Buffer.allocUnsafe(data.length - from)
    data.copy(rest, 0, from)
    this.pending = [rest]
    this.pendingBytes = rest.length
    this.needed = needed
  }

  private fail(error: RouterOsProtocolError): Either.Either<void, RouterOsProtocolError> {
    this.failure = error
    this.pending = []
    this.pendingBytes = 0
    this.words = []
    return Either.left(error)
  }
}

/**
 * Decodes a complete byte string into its sentences. Trailing partial input is a protocol error.
 *
 * @since 0.1.0
 * @category decoding
 */
export const decodeSentences = (bytes: Uint8Array): Either.Either<Array<Sentence>, RouterOsProtocolError> => {
  const sentences: Array<Sentence> = []
  const decoder = new SentenceDecoder((s) => sentences.push(s), { maxWordLength: MAX_WORD_LENGTH })
  const result = decoder.push(bytes)
  if (Either.isLeft(result)) return Either.left(result.left)
  if (!decoder.idle) return Either.left(new RouterOsProtocolError({ reason: "truncated sentence" }))
  return Either.right(sentences)
}

/**
 * One sentence as bytes <-> its words. Decoding fails with a `ParseResult.Type` issue on
 * malformed, truncated or multi-sentence input.
 *
 * @since 0.1.0
 * @category schemas
 */
export const SentenceFromBytes: Schema.Schema<ReadonlyArray<string>, Uint8Array> = Schema.transformOrFail(
  Schema.Uint8ArrayFromSelf,
  Schema.Array(Schema.String),
  {
    strict: true,
    decode: (bytes, _, ast) => {
      const result = decodeSentences(bytes)
      if (Either.isLeft(result)) return ParseResult.fail(new ParseResult.Type(ast, bytes, result.left.reason))
      if (result.right.length !== 1) {
        return ParseResult.fail(
          new ParseResult.Type(ast, bytes, `expected exactly one sentence, got ${result.right.length}`)
        )
      }
      return ParseResult.succeed(result.right[0])
    },
    encode: (words) => ParseResult.succeed(encodeSentence(words))
  }
)

// -----------------------------------------------------------------------------
// Replies
// -----------------------------------------------------------------------------

/**
 * Attribute words of a sentence (`=name=value`), keyed by RouterOS property name (`.id`,
 * `dst-port`, ...). Null-prototype object: any key a router sends is safe.
 *
 * @since 0.1.0
 * @category models
 */
export type Attributes = Readonly<Record<string, string>>

/**
 * A parsed reply sentence. `tag` is the `.tag` API attribute when present. Unknown reply words
 * (a future RouterOS reply type) parse as `Unknown` so that a client can ignore them.
 *
 * @since 0.1.0
 * @category models
 */
export type Reply =
  | { readonly _tag: "Re"; readonly tag: string | undefined; readonly attributes: Attributes }
  | {
    readonly _tag: "Done"
    readonly tag: string | undefined
    readonly ret: string | undefined
    readonly attributes: Attributes
  }
  | {
    readonly _tag: "Trap"
    readonly tag: string | undefined
    readonly message: string
    readonly category: number | undefined
    readonly attributes: Attributes
  }
  | { readonly _tag: "Fatal"; readonly tag: string | undefined; readonly message: string }
  | { readonly _tag: "Empty"; readonly tag: string | undefined }
  | {
    readonly _tag: "Unknown"
    readonly type: string
    readonly tag: string | undefined
    readonly attributes: Attributes
  }

/**
 * The parts of a sentence after its first word: attribute words `=k=v` (split at the first `=`
 * after the name, so values keep their own `=`), API words `.k=v`, query words `?...` and bare words.
 *
 * @since 0.1.0
 * @category models
 */
export interface SentenceParts {
  readonly attributes: Record<string, string>
  readonly api: Record<string, string>
  readonly queries: Array<string>
  readonly bare: Array<string>
}

/**
 * Splits the words after the first one into attributes, API attributes, queries and bare words.
 *
 * @since 0.1.0
 * @category decoding
 */
export const sentenceParts = (words: Sentence, from = 1): SentenceParts => {
  const attributes: Record<string, string> = Object.create(null)
  const api: Record<string, string> = Object.create(null)
  const queries: Array<string> = []
  const bare: Array<string> = []
  for (let i = from; i < words.length; i++) {
    const word = words[i]
    const first = word.charCodeAt(0)
    if (first === 61 /* = */) {
      const eq = word.indexOf("=", 1)
      if (eq === -1) attributes[word.slice(1)] = ""
      else attributes[word.slice(1, eq)] = word.slice(eq + 1)
    } else if (first === 46 /* . */) {
      const eq = word.indexOf("=", 1)
      if (eq === -1) api[word] = ""
      else api[word.slice(0, eq)] = word.slice(eq + 1)
    } else if (first === 63 /* ? */) {
      queries.push(word)
    } else {
      bare.push(word)
    }
  }
  return { attributes, api, queries, bare }
}

/**
 * Parses a reply sentence. Never fails: unknown reply words become `Unknown`, unknown keys are kept.
 *
 * @since 0.1.0
 * @category decoding
 */
export const parseReply = (words: Sentence): Reply => {
  const type = words[0] ?? ""
  const { api, attributes, bare } = sentenceParts(words)
  const tag = api[".tag"]
  switch (type) {
    case "!re":
      return { _tag: "Re", tag, attributes }
    case "!done":
      return { _tag: "Done", tag, ret: attributes["ret"], attributes }
    case "!trap": {
      const category = attributes["category"]
      const parsed = category === undefined ? NaN : Number(category)
      return {
        _tag: "Trap",
        tag,
        message: attributes["message"] ?? (bare.join(" ") || "unknown error"),
        category: Number.isInteger(parsed) ? parsed : undefined,
        attributes
      }
    }
    case "!fatal":
      return { _tag: "Fatal", tag, message: attributes["message"] ?? bare.join(" ") }
    case "!empty":
      return { _tag: "Empty", tag }
    default:
      return { _tag: "Unknown", type, tag, attributes }
  }
}

/**
 * `!trap` categories as documented by MikroTik.
 *
 * @since 0.1.0
 * @category constants
 */
export const TrapCategory = {
  MissingItemOrCommand: 0,
  ArgumentValue: 1,
  Interrupted: 2,
  Scripting: 3,
  General: 4,
  Api: 5,
  Tty: 6,
  Return: 7
} as const

// -----------------------------------------------------------------------------
// Commands
// -----------------------------------------------------------------------------

/**
 * A value of a command attribute. Booleans are written `true` / `false`.
 *
 * @since 0.1.0
 * @category models
 */
export type AttributeValue = string | number | boolean

/**
 * What a command sentence carries besides its path.
 *
 * - `attributes`: `=name=value` words (`undefined` values are skipped).
 * - `queries`: query words for `print`, e.g. `"?chain=dstnat"`, `"?-comment"`, `"?#|"` (a missing
 *   leading `?` is added).
 * - `proplist`: property names for `=.proplist=`.
 *
 * @since 0.1.0
 * @category models
 */
export interface CommandParts {
  readonly attributes?: Readonly<Record<string, AttributeValue | undefined>> | undefined
  readonly queries?: ReadonlyArray<string> | undefined
  readonly proplist?: ReadonlyArray<string> | undefined
}

/**
 * Builds the words of a command sentence (path, attributes, `.proplist`, queries and an optional `.tag`).
 *
 * @since 0.1.0
 * @category encoding
 */
export const commandWords = (path: string, parts?: CommandParts, tag?: string): Array<string> => {
  const words = [path]
  if (parts?.attributes !== undefined) {
    for (const key of Object.keys(parts.attributes)) {
      const value = parts.attributes[key]
      if (value !== undefined) words.push(`=${key}=${value}`)
    }
  }
  if (parts?.proplist !== undefined && parts.proplist.length > 0) {
    words.push(`=.proplist=${parts.proplist.join(",")}`)
  }
  if (parts?.queries !== undefined) {
    for (const query of parts.queries) words.push(query.startsWith("?") ? query : `?${query}`)
  }
  if (tag !== undefined) words.push(`.tag=${tag}`)
  return words
}
