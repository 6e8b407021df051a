/**
 * NAT-PMP (RFC 6886) wire messages: byte codecs shared by the client, the gateway simulator and the bridge.
 *
 * All multi-byte fields are big-endian. Requests are 2 bytes (public address) or 12 bytes (mapping), responses
 * 12 bytes (public address) or 16 bytes (mapping), and the replies to an unsupported version or opcode are
 * 8 bytes with byte 1 = 128 + the request's opcode (RFC errata 3618).
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Either from "effect/Either"
import * as ParseResult from "effect/ParseResult"
import * as Schema from "effect/Schema"
import * as Ipv4 from "./Ipv4.js"

// -----------------------------------------------------------------------------
// constants
// -----------------------------------------------------------------------------

/** The only NAT-PMP protocol version. */
export const Version = 0

/** The UDP port a NAT-PMP gateway listens on. */
export const ServerPort = 5351

/** The UDP port gateways send announcements to. */
export const AnnouncementPort = 5350

/** The multicast group gateways send announcements to. */
export const AnnouncementAddress = "224.0.0.1"

/** The lifetime in seconds the RFC recommends for a mapping request. */
export const RecommendedLifetime = 7200

/** Request opcodes; a response carries 128 + the request opcode. */
export const Opcode = {
  PublicAddress: 0,
  MapUdp: 1,
  MapTcp: 2
} as const

/** Added to a request opcode to form the response opcode. */
export const ResponseBit = 128

/** Result codes of RFC 6886 §3.5. Any other value is fatal for a client. */
export const ResultCode = {
  Success: 0,
  UnsupportedVersion: 1,
  NotAuthorized: 2,
  NetworkFailure: 3,
  OutOfResources: 4,
  UnsupportedOpcode: 5
} as const

/** One of the result codes defined by the RFC. */
export type ResultCode = typeof ResultCode[keyof typeof ResultCode]

/** The RFC meaning of a result code, suitable for an error message. */
export const resultCodeMessage = (code: number): string => {
  switch (code) {
    case ResultCode.Success:
      return "success"
    case ResultCode.UnsupportedVersion:
      return "unsupported version"
    case ResultCode.NotAuthorized:
      return "not authorized or refused (NAT-PMP may be disabled on the gateway)"
    case ResultCode.NetworkFailure:
      return "network failure (the gateway may not have a public address yet)"
    case ResultCode.OutOfResources:
      return "out of resources (the gateway cannot create more mappings)"
    case ResultCode.UnsupportedOpcode:
      return "unsupported opcode"
    default:
      return `unknown result code ${code}`
  }
}

// -----------------------------------------------------------------------------
// field schemas
// -----------------------------------------------------------------------------

/** The transport protocol of a mapping: opcode 1 is UDP, opcode 2 is TCP. */
export const Protocol = Schema.Literal("udp", "tcp")

export type Protocol = typeof Protocol.Type

/** The mapping opcode (1 or 2) of a protocol. */
export const opcodeOf = (protocol: Protocol): 1 | 2 => protocol === "udp" ? Opcode.MapUdp : Opcode.MapTcp

/** An unsigned 16-bit integer (ports, result codes). */
export const Uint16 = Schema.Int.pipe(Schema.between(0, 0xffff)).annotations({ identifier: "Uint16" })

/** An unsigned 32-bit integer (epochs, lifetimes). */
export const Uint32 = Schema.Int.pipe(Schema.between(0, 0xffffffff)).annotations({ identifier: "Uint32" })

const requestOpcode = Schema.Int.pipe(Schema.between(0, 127)).annotations({ identifier: "RequestOpcode" })
const errorResultCode = Schema.Int.pipe(Schema.between(1, 0xffff)).annotations({ identifier: "ErrorResultCode" })

const isDottedQuad = (s: string): boolean => Ipv4.parse(s) !== undefined

/** An IPv4 address in canonical dotted-quad form, e.g. `"203.0.113.7"`. */
export const IPv4Address = Schema.String.pipe(
  Schema.filter(isDottedQuad, { message: () => "expected an IPv4 address in dotted-quad form" })
).annotations({ identifier: "IPv4Address", arbitrary: () => (fc) => fc.ipV4() })

// -----------------------------------------------------------------------------
// messages
// -----------------------------------------------------------------------------

/** Opcode 0: ask the gateway for its public IPv4 address. */
export const PublicAddressRequest = Schema.TaggedStruct("PublicAddressRequest", {})

export interface PublicAddressRequest extends Schema.Schema.Type<typeof PublicAddressRequest> {}

/**
 * Opcode 1 (UDP) or 2 (TCP): create, renew or (lifetime 0) delete a mapping.
 * Internal port 0 with lifetime 0 deletes all of the client's mappings of that protocol.
 */
export const MapRequest = Schema.TaggedStruct("MapRequest", {
  protocol: Protocol,
  internalPort: Uint16,
  suggestedExternalPort: Uint16,
  lifetime: Uint32
})

export interface MapRequest extends Schema.Schema.Type<typeof MapRequest> {}

/** Opcode 128: the gateway's public address; `0.0.0.0` when the result code is not success. */
export const PublicAddressResponse = Schema.TaggedStruct("PublicAddressResponse", {
  resultCode: Uint16,
  epoch: Uint32,
  publicAddress: IPv4Address
})

export interface PublicAddressResponse extends Schema.Schema.Type<typeof PublicAddressResponse> {}

/** Opcode 129 (UDP) or 130 (TCP): the mapping granted, or ports/lifetime 0 with a failure result code. */
export const MapResponse = Schema.TaggedStruct("MapResponse", {
  protocol: Protocol,
  resultCode: Uint16,
  epoch: Uint32,
  internalPort: Uint16,
  externalPort: Uint16,
  lifetime: Uint32
})

export interface MapResponse extends Schema.Schema.Type<typeof MapResponse> {}

/**
 * The 8-byte reply to a request the gateway could not process (unsupported version or opcode):
 * byte 1 = 128 + `opcode` (the request's opcode), a non-zero result code and the epoch.
 */
export const ErrorResponse = Schema.TaggedStruct("ErrorResponse", {
  opcode: requestOpcode,
  resultCode: errorResultCode,
  epoch: Uint32
})

export interface ErrorResponse extends Schema.Schema.Type<typeof ErrorResponse> {}

const RequestValue = Schema.Union(PublicAddressRequest, MapRequest)
const ResponseValue = Schema.Union(PublicAddressResponse, MapResponse, ErrorResponse)

export type Request = PublicAddressRequest | MapRequest

export type Response = PublicAddressResponse | MapResponse | ErrorResponse

// -----------------------------------------------------------------------------
// encoding
// -----------------------------------------------------------------------------

const addressToBytes = (address: string, target: Uint8Array, offset: number): void => {
  const parts = address.split(".")
  for (let i = 0; i < 4; i++) {
    target[offset + i] = Number(parts[i]) & 0xff
  }
}

const bytesToAddress = (bytes: Uint8Array, offset: number): string =>
  `${bytes[offset]}.${bytes[offset + 1]}.${bytes[offset + 2]}.${bytes[offset + 3]}`

/** Encodes a request to its wire form. Pure; values are assumed to be in range (see {@link Request}). */
export const encodeRequest = (request: Request): Uint8Array => {
  if (request._tag === "PublicAddressRequest") {
    return Uint8Array.of(Version, Opcode.PublicAddress)
  }
  const bytes = new Uint8Array(12)
  const view = new DataView(bytes.buffer)
  view.setUint8(0, Version)
  view.setUint8(1, opcodeOf(request.protocol))
  view.setUint16(4, request.internalPort)
  view.setUint16(6, request.suggestedExternalPort)
  view.setUint32(8, request.lifetime)
  return bytes
}

/** Encodes a response to its wire form. Pure; values are assumed to be in range (see {@link Response}). */
export const encodeResponse = (response: Response): Uint8Array => {
  switch (response._tag) {
    case "PublicAddressResponse": {
      const bytes = new Uint8Array(12)
      const view = new DataView(bytes.buffer)
      view.setUint8(1, ResponseBit + Opcode.PublicAddress)
      view.setUint16(2, response.resultCode)
      view.setUint32(4, response.epoch)
      addressToBytes(response.publicAddress, bytes, 8)
      return bytes
    }
    case "MapResponse": {
      const bytes = new Uint8Array(16)
      const view = new DataView(bytes.buffer)
      view.setUint8(1, ResponseBit + opcodeOf(response.protocol))
      view.setUint16(2, response.resultCode)
      view.setUint32(4, response.epoch)
      view.setUint16(8, response.internalPort)
      view.setUint16(10, response.externalPort)
      view.setUint32(12, response.lifetime)
      return bytes
    }
    case "ErrorResponse": {
      const bytes = new Uint8Array(8)
      const view = new DataView(bytes.buffer)
      view.setUint8(1, ResponseBit + response.opcode)
      view.setUint16(2, response.resultCode)
      view.setUint32(4, response.epoch)
      return bytes
    }
  }
}

// -----------------------------------------------------------------------------
// decoding
// -----------------------------------------------------------------------------

const viewOf = (bytes: Uint8Array): DataView => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)

/** The request in `bytes`, or the reason they are not one. */
const parseRequest = (bytes: Uint8Array): Request | string => {
  if (bytes.length < 2) {
    return `expected at least 2 bytes, got ${bytes.length}`
  }
  const view = viewOf(bytes)
  const version = view.getUint8(0)
  const opcode = view.getUint8(1)
  if (version !== Version) {
    return `unsupported version ${version}`
  }
  if (opcode === Opcode.PublicAddress) {
    return { _tag: "PublicAddressRequest" }
  }
  if (opcode === Opcode.MapUdp || opcode === Opcode.MapTcp) {
    if (bytes.length < 12) {
      return `expected 12 bytes for a mapping request, got ${bytes.length}`
    }
    return {
      _tag: "MapRequest",
      protocol: opcode === Opcode.MapUdp ? "udp" : "tcp",
      internalPort: view.getUint16(4),
      suggestedExternalPort: view.getUint16(6),
      lifetime: view.getUint32(8)
    }
  }
  return opcode >= ResponseBit ? `opcode ${opcode} is a response, not a request` : `unsupported opcode ${opcode}`
}

/** The response in `bytes`, or the reason they are not one. */
const parseResponse = (bytes: Uint8Array): Response | string => {
  if (bytes.length < 2) {
    return `expected at least 2 bytes, got ${bytes.length}`
  }
  const view = viewOf(bytes)
  const version = view.getUint8(0)
  const opcode = view.getUint8(1)
  if (version !== Version) {
    return `unsupported version ${version}`
  }
  if (opcode < ResponseBit) {
    return `opcode ${opcode} is a request, not a response`
  }
  const requestOpcode = opcode - ResponseBit
  if (bytes.length < 8) {
    return `expected at least 8 bytes for a response, got ${bytes.length}`
  }
  const resultCode = view.getUint16(2)
  const epoch = view.getUint32(4)
  if (requestOpcode === Opcode.PublicAddress && bytes.length >= 12) {
    return { _tag: "PublicAddressResponse", resultCode, epoch, publicAddress: bytesToAddress(bytes, 8) }
  }
  if ((requestOpcode === Opcode.MapUdp || requestOpcode === Opcode.MapTcp) && bytes.length >= 16) {
    return {
      _tag: "MapResponse",
      protocol: requestOpcode === Opcode.MapUdp ? "udp" : "tcp",
      resultCode,
      epoch,
      internalPort: view.getUint16(8),
      externalPort: view.getUint16(10),
      lifetime: view.getUint32(12)
    }
  }
  if (resultCode === ResultCode.Success) {
    return `expected ${
      requestOpcode === Opcode.PublicAddress ? 12 : 16
    } bytes for a successful response to opcode ${requestOpcode}, got ${bytes.length}`
  }
  return { _tag: "ErrorResponse", opcode: requestOpcode, resultCode, epoch }
}

/** A NAT-PMP request on the wire: bytes ⇄ {@link Request}. */
export const Request: Schema.Schema<Request, Uint8Array> = Schema.transformOrFail(
  Schema.Uint8ArrayFromSelf,
  RequestValue,
  {
    strict: true,
    decode: (bytes, _, ast) => {
      const parsed = parseRequest(bytes)
      return typeof parsed === "string"
        ? ParseResult.fail(new ParseResult.Type(ast, bytes, `Invalid NAT-PMP request: ${parsed}`))
        : ParseResult.succeed(parsed)
    },
    encode: (request) => ParseResult.succeed(encodeRequest(request))
  }
).annotations({ identifier: "NatPmpRequest" })

/** A NAT-PMP response on the wire: bytes ⇄ {@link Response}. */
export const Response: Schema.Schema<Response, Uint8Array> = Schema.transformOrFail(
  Schema.Uint8ArrayFromSelf,
  ResponseValue,
  {
    strict: true,
    decode: (bytes, _, ast) => {
      const parsed = parseResponse(bytes)
      return typeof parsed === "string"
        ? ParseResult.fail(new ParseResult.Type(ast, bytes, `Invalid NAT-PMP response: ${parsed}`))
        : ParseResult.succeed(parsed)
    },
    encode: (response) => ParseResult.succeed(encodeResponse(response))
  }
).annotations({ identifier: "NatPmpResponse" })

const decodeRequestWithSchema = Schema.decodeEither(Request)
const decodeResponseWithSchema = Schema.decodeEither(Response)

/**
 * Decodes a request datagram: the same result as `Schema.decodeEither(Request)`, without validating again what the
 * wire parser built (its fields are in range by construction); a rejection goes through the schema for its error.
 */
export const decodeRequest = (bytes: Uint8Array): Either.Either<Request, ParseResult.ParseError> => {
  const parsed = parseRequest(bytes)
  return typeof parsed === "string" ? decodeRequestWithSchema(bytes) : Either.right(parsed)
}

/**
 * Decodes a response datagram: the same result as `Schema.decodeEither(Response)`, without validating again what
 * the wire parser built (its fields are in range by construction); a rejection goes through the schema for its error.
 */
export const decodeResponse = (bytes: Uint8Array): Either.Either<Response, ParseResult.ParseError> => {
  const parsed = parseResponse(bytes)
  return typeof parsed === "string" ? decodeResponseWithSchema(bytes) : Either.right(parsed)
}

// -----------------------------------------------------------------------------
// server-side classification
// -----------------------------------------------------------------------------

/**
 * What a gateway should do with a datagram received on its NAT-PMP port (RFC 6886 §3):
 *
 * - `Request`: a well-formed request, answer it.
 * - `UnsupportedVersion`: answer an {@link ErrorResponse} with result 1 (version 0, byte 1 = 128 + opcode).
 * - `UnsupportedOpcode`: answer an {@link ErrorResponse} with result 5.
 * - `Ignore`: drop silently (responses, runt or truncated datagrams).
 */
export type IncomingDatagram = Data.TaggedEnum<{
  Request: { readonly request: Request }
  UnsupportedVersion: { readonly version: number; readonly opcode: number }
  UnsupportedOpcode: { readonly opcode: number }
  Ignore: { readonly reason: string }
}>

/** Constructors and matchers for {@link IncomingDatagram}. */
export const IncomingDatagram = Data.taggedEnum<IncomingDatagram>()

/** Classifies a datagram received by a gateway. Total: never throws, whatever the bytes. */
export const classifyDatagram = (bytes: Uint8Array): IncomingDatagram => {
  if (bytes.length < 2) {
    return IncomingDatagram.Ignore({ reason: `runt datagram of ${bytes.length} byte(s)` })
  }
  const version = bytes[0]
  const opcode = bytes[1]
  if (opcode >= ResponseBit) {
    return IncomingDatagram.Ignore({ reason: `opcode ${opcode} is a response` })
  }
  if (version !== Version) {
    return IncomingDatagram.UnsupportedVersion({ version, opcode })
  }
  if (opcode !== Opcode.PublicAddress && opcode !== Opcode.MapUdp && opcode !== Opcode.MapTcp) {
    return IncomingDatagram.UnsupportedOpcode({ opcode })
  }
  const parsed = parseRequest(bytes)
  return typeof parsed === "string"
    ? IncomingDatagram.Ignore({ reason: parsed })
    : IncomingDatagram.Request({ request: parsed })
}

/**
 * The {@link ErrorResponse} a gateway sends for an `UnsupportedVersion` or `UnsupportedOpcode` datagram,
 * or `undefined` for the other cases.
 */
export const errorReplyFor = (incoming: IncomingDatagram, epoch: number): ErrorResponse | undefined => {
  switch (incoming._tag) {
    case "UnsupportedVersion":
      return {
        _tag: "ErrorResponse",
        opcode: Math.min(incoming.opcode, ResponseBit - 1),
        resultCode: ResultCode.UnsupportedVersion,
        epoch
      }
    case "UnsupportedOpcode":
      return {
        _tag: "ErrorResponse",
        opcode: Math.min(incoming.opcode, ResponseBit - 1),
        resultCode: ResultCode.UnsupportedOpcode,
        epoch
      }
    default:
      return undefined
  }
}
