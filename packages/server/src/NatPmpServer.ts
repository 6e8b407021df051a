/**
 * The bridge's NAT-PMP server (RFC 6886 gateway side) on UDP `LISTEN_ADDR` (default `:5351`).
 *
 * - Datagrams from sources outside the allowed networks, responses (op >= 128), runts and truncated requests are
 *   dropped without an answer; nothing a datagram contains can crash the server.
 * - Version != 0 is answered with result 1 (PCP clients then fall back to NAT-PMP), an unknown opcode with 5.
 * - Op 0 is answered from the cached public address (result 3 while it is unknown), op 1/2 by the
 *   {@link MappingService} within its request timeout.
 * - Announcements (10 packets, 250 ms doubling) go out from the server's socket on start and whenever the mapping
 *   state is reset; to a multicast target on the internal interfaces only (RFC 6886 §3.2.1): out of each local
 *   interface whose network overlaps the allowed clients' networks (or the bound address's), never by the default
 *   route, which leads to the VPN.
 *
 * @since 0.1.0
 */
import { Ipv4, NatPmpMessage, UdpSocket as Udp } from "@natpmp-bridge/core"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as FiberRef from "effect/FiberRef"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as Runtime from "effect/Runtime"
import type * as Scope from "effect/Scope"
import type * as Dgram from "node:dgram"
import * as Os from "node:os"
import * as Announcer from "./Announcer.js"
import { BridgeMetrics } from "./BridgeMetrics.js"
import { ClientPolicy, normalizeAddress } from "./ClientPolicy.js"
import { MappingService } from "./MappingService.js"

/** Server options. */
export interface Options {
  /** Address to bind (default `0.0.0.0`). */
  readonly address?: string | undefined
  /** Port to bind (default 5351; 0 for an ephemeral port). */
  readonly port?: number | undefined
  /** Announcements (default to `224.0.0.1:5350`); `false` to never announce. */
  readonly announce?: false | Announcer.Options | undefined
  /** Requests handled at once; datagrams beyond are dropped (clients retransmit). Default 1024. */
  readonly maxConcurrentRequests?: number | undefined
}

/** The server socket could not be opened. */
export class NatPmpServerError extends Data.TaggedError("NatPmpServerError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  override get message(): string {
    return `NAT-PMP server: ${this.reason}`
  }
}

/** What the server has seen. */
export interface Stats {
  readonly received: number
  readonly answered: number
  /** Dropped without an answer: outside the allowed networks. */
  readonly refused: number
  /** Dropped without an answer: responses, runts, truncated requests. */
  readonly ignored: number
  /** Dropped because too many requests were in progress. */
  readonly overloaded: number
}

/** A running server. */
export interface Service {
  /** The bound address and port. */
  readonly address: string
  readonly port: number
  readonly stats: Effect.Effect<Stats>
  /** Sends an announcement now (in the background). */
  readonly announce: Effect.Effect<void>
}

/** The server tag. */
export class NatPmpServer extends Context.Tag("@natpmp-bridge/server/NatPmpServer")<NatPmpServer, Service>() {}

/** Starts the server for the life of the scope. */
export const make = (
  options: Options = {}
): Effect.Effect<Service, NatPmpServerError, MappingService | ClientPolicy | Scope.Scope> =>
  Effect.gen(function*() {
    const mapping = yield* MappingService
    const policy = yield* ClientPolicy
    const metrics = yield* BridgeMetrics
    const stats = { received: 0, answered: 0, refused: 0, ignored: 0, overloaded: 0 }
    const incoming = yield* Queue.dropping<Udp.Datagram>(4096)
    const handlers = yield* FiberSet.make<void, never>()
    const maxConcurrent = options.maxConcurrentRequests ?? 1024
    let active = 0
    const runtime = yield* Effect.runtime<never>()
    const runSync = Runtime.runSync(runtime)
    const runFork = Runtime.runFork(runtime)
    const runHandler = yield* FiberSet.runtime(handlers)<never>()
    const clock = yield* Effect.clock
    /** Starts the handler of a mapping request from an allowed client (set once the server can serve). */
    let dispatch: ((datagram: Udp.Datagram) => void) | undefined = undefined

    /** Hands an answer to the kernel without waiting for the send (counted as answered unless it fails). */
    const sendAnswer = (socket: Dgram.Socket, bytes: Uint8Array, to: Udp.Datagram) => {
      stats.answered++
      Udp.unsafeSend(socket, bytes, to, (error) => {
        stats.answered--
        runFork(
          Effect.logDebug(`answer not sent: ${error.message}`).pipe(
            Effect.annotateLogs({ service: "NatPmpServer", client: to.address, clientPort: to.port })
          )
        )
      })
    }

    // Op 0 is answered from the cached address and the epoch, both read synchronously (without even a fiber when the
    // mapping service offers them so): the last answer's bytes are reused while neither changes.
    const publicAddressState = mapping.unsafePublicAddressState ??
      (() => runSync(Effect.all({ publicAddress: mapping.publicAddress, epoch: mapping.epoch })))
    interface Answer {
      readonly address: Option.Option<string>
      readonly epoch: number
      readonly response: NatPmpMessage.PublicAddressResponse
      readonly bytes: Uint8Array
    }
    let lastAnswer: Answer | undefined = undefined
    const publicAddressAnswer = (): Answer => {
      const { epoch, publicAddress: address } = publicAddressState()
      if (
        lastAnswer === undefined || epoch !== lastAnswer.epoch ||
        Option.getOrUndefined(address) !== Option.getOrUndefined(lastAnswer.address)
      ) {
        const response: NatPmpMessage.PublicAddressResponse = {
          _tag: "PublicAddressResponse",
          resultCode: Option.isSome(address)
            ? NatPmpMessage.ResultCode.Success
            : NatPmpMessage.ResultCode.NetworkFailure,
          epoch,
          publicAddress: Option.getOrElse(address, () => "0.0.0.0")
        }
        lastAnswer = { address, epoch, response, bytes: NatPmpMessage.encodeResponse(response) }
      }
      return lastAnswer
    }

    let opened: Dgram.Socket | undefined = undefined
    const socket = yield* Udp.open(
      { address: options.address ?? "0.0.0.0", port: options.port ?? NatPmpMessage.ServerPort },
      (received) => {
        // errors (ICMP errors for answers to vanished clients): nothing to do
        if (received._tag !== "Datagram") return
        // the common request, op 0 from an allowed client, is answered right here, without a fiber; everything
        // else (and a datagram arriving before the socket is known) goes through the queue
        const bytes = received.bytes
        if (
          opened !== undefined && bytes.length >= 2 && bytes[0] === NatPmpMessage.Version &&
          bytes[1] === NatPmpMessage.Opcode.PublicAddress && policy.isAllowed(received.address)
        ) {
          const started = performance.now()
          stats.received++
          const answer = publicAddressAnswer()
          sendAnswer(opened, answer.bytes, received)
          metrics.unsafeRequest(answer.response, (performance.now() - started) / 1000)
          return
        }
        // a mapping request from an allowed client is dispatched right here, without the queue's hop
        if (
          dispatch !== undefined && bytes.length >= 2 && bytes[0] === NatPmpMessage.Version &&
          (bytes[1] === NatPmpMessage.Opcode.MapUdp || bytes[1] === NatPmpMessage.Opcode.MapTcp) &&
          policy.isAllowed(received.address)
        ) {
          return dispatch(received)
        }
        incoming.unsafeOffer(received)
      }
    ).pipe(Effect.mapError((error) => new NatPmpServerError({ reason: error.message, cause: error })))
    opened = socket
    const local = Udp.localAddress(socket)

    /** Metrics and the request's log line: at info for mappings, at debug for the rest. */
    const observe = (response: NatPmpMessage.Response, client: string, clientPort: number, started: bigint) =>
      Effect.clockWith((clock) => {
        const seconds = Number(clock.unsafeCurrentTimeNanos() - started) / 1e9
        metrics.unsafeRequest(response, seconds)
        const durationMs = Math.round(seconds * 1e6) / 1000
        if (response._tag === "MapResponse") {
          const { externalPort, internalPort, lifetime, protocol, resultCode } = response
          const outcome = resultCode !== NatPmpMessage.ResultCode.Success
            ? `failed with result ${resultCode}`
            : lifetime === 0
            ? "deleted"
            : `public port ${externalPort}, ${lifetime} s`
          return Effect.logInfo(
            `${protocol} ${client}:${internalPort === 0 ? "*" : internalPort}: ${outcome} (${durationMs} ms)`
          ).pipe(Effect.annotateLogs({
            // complete here: the answer may be sent from the fiber of the mapping service that has it
            service: "NatPmpServer",
            key: `${client}/${protocol}/${internalPort}`,
            client,
            clientPort,
            protocol,
            internalPort,
            externalPort,
            lifetime,
            resultCode,
            durationMs
          }))
        }
        return Effect.flatMap(FiberRef.get(FiberRef.currentMinimumLogLevel), (level) =>
          LogLevel.greaterThan(level, LogLevel.Debug)
            ? Effect.void
            : Effect.logDebug(
              `${response._tag === "PublicAddressResponse" ? "public address" : `opcode ${response.opcode}`}: ` +
                `result ${response.resultCode} (${durationMs} ms)`
            ).pipe(Effect.annotateLogs({ client, clientPort, resultCode: response.resultCode, durationMs })))
      })

    const reply = (response: NatPmpMessage.Response, to: Udp.Datagram, client: string, started: bigint) =>
      Effect.suspend(() => {
        sendAnswer(socket, NatPmpMessage.encodeResponse(response), to)
        return observe(response, client, to.port, started)
      })

    const serve = (datagram: Udp.Datagram, client: string, started: bigint) =>
      Effect.gen(function*() {
        const classified = NatPmpMessage.classifyDatagram(datagram.bytes)
        switch (classified._tag) {
          case "Ignore": {
            stats.ignored++
            return yield* Effect.logDebug(`ignored datagram: ${classified.reason}`)
          }
          case "UnsupportedVersion":
          case "UnsupportedOpcode": {
            const response = NatPmpMessage.errorReplyFor(classified, yield* mapping.epoch)
            if (response !== undefined) {
              yield* reply(response, datagram, client, started)
            }
            return
          }
          case "Request": {
            const request = classified.request
            if (request._tag === "PublicAddressRequest") {
              // the same answer the socket callback gives (this path serves datagrams queued before it could)
              return yield* reply(publicAddressAnswer().response, datagram, client, started)
            }
            return yield* reply(yield* mapping.handle(client, request), datagram, client, started)
          }
        }
      }).pipe(
        Effect.catchAllCause((cause) =>
          Effect.logError("request handling failed", cause)
        ),
        Effect.annotateLogs({ client, clientPort: datagram.port })
      )

    /** Counts a request in progress, or (too many are) drops it: the client retransmits. */
    const admit = (): boolean => {
      if (active >= maxConcurrent) {
        stats.overloaded++
        return false
      }
      active++
      return true
    }

    /** Serves an allowed client's datagram in a handler fiber of its own, unless too many are in progress. */
    const start = (datagram: Udp.Datagram, client: string, started: bigint) => {
      if (!admit()) return
      runHandler(Effect.ensuring(
        serve(datagram, client, started),
        Effect.sync(() => {
          active--
        })
      ))
    }
    // A well-formed mapping request goes straight to the mapping service when it can take it without a fiber of
    // ours: the answer is sent from the fiber that has it.
    const unsafeHandle = mapping.unsafeHandle
    dispatch = (datagram) => {
      stats.received++
      const client = normalizeAddress(datagram.address)
      const started = clock.unsafeCurrentTimeNanos()
      const classified = unsafeHandle === undefined ? undefined : NatPmpMessage.classifyDatagram(datagram.bytes)
      if (
        unsafeHandle === undefined || classified?._tag !== "Request" || classified.request._tag !== "MapRequest"
      ) {
        return start(datagram, client, started)
      }
      if (!admit()) return
      unsafeHandle(client, classified.request, (response) => {
        active--
        return reply(response, datagram, client, started)
      })
    }

    yield* Effect.forkScoped(Effect.forever(
      Effect.gen(function*() {
        const datagram = yield* Queue.take(incoming)
        const started = yield* Clock.currentTimeNanos
        stats.received++
        const client = normalizeAddress(datagram.address)
        if (!policy.isAllowed(client)) {
          stats.refused++
          return yield* Effect.logDebug(`dropped a datagram from ${client}: not an allowed client`)
        }
        start(datagram, client, started)
      })
    ))

    // A multicast announcement leaves once per internal interface: the bound address's, or each local interface
    // whose network overlaps an allowed network (its clients are there). Without one, by the routing table.
    const isInternal = (cidr: string | null): boolean => {
      const parsed = cidr === null ? undefined : Ipv4.parseCidr(cidr)
      return parsed !== undefined && policy.allowedNetworks.some((allowed) => {
        const prefix = Math.min(allowed.prefix, parsed.prefix)
        return Ipv4.network(allowed.base, prefix) === Ipv4.network(parsed.address, prefix)
      })
    }
    const internalAddresses = (): ReadonlyArray<string> =>
      local.address !== "0.0.0.0"
        ? [local.address]
        : Object.values(Os.networkInterfaces()).flatMap((infos) =>
          (infos ?? []).flatMap((info) =>
            info.family === "IPv4" && !info.internal && isInternal(info.cidr) ? [info.address] : []
          )
        )
    const sendAnnouncement = (bytes: Uint8Array, to: { readonly address: string; readonly port: number }) =>
      Effect.gen(function*() {
        const sources = Udp.isMulticast(to.address) ? internalAddresses() : []
        if (sources.length === 0) return yield* Udp.send(socket, bytes, to)
        for (const source of sources) {
          // one at a time: the interface is a socket option, read when the datagram leaves
          yield* Udp.setMulticastInterface(socket, source).pipe(
            Effect.zipRight(Udp.send(socket, bytes, to)),
            Effect.catchAll((error) => Effect.logDebug(`announcement not sent from ${source}: ${error.message}`))
          )
        }
      })

    const announcer = options.announce === false
      ? undefined
      : yield* Announcer.make(
        options.announce ?? {},
        sendAnnouncement,
        Effect.all({ epoch: mapping.epoch, publicAddress: mapping.publicAddress })
      )
    const announce = announcer === undefined ? Effect.void : announcer.announce
    if (announcer !== undefined) {
      const resets = yield* mapping.subscribeResets
      yield* Effect.forkScoped(Effect.forever(Effect.zipRight(Queue.take(resets), announce)))
      yield* announce
    }

    yield* Effect.logInfo(`NAT-PMP server listening on ${local.address}:${local.port}`)
    return {
      address: local.address,
      port: local.port,
      stats: Effect.sync(() => ({ ...stats })),
      announce
    } satisfies Service
  }).pipe(Effect.annotateLogs({ service: "NatPmpServer" }))

/** A layer providing {@link NatPmpServer}. */
export const layer = (
  options: Options = {}
): Layer.Layer<NatPmpServer, NatPmpServerError, MappingService | ClientPolicy> =>
  Layer.scoped(NatPmpServer, make(options))
