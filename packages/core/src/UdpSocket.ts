/**
 * Scoped UDP/IPv4 sockets over `node:dgram`, shared by the NAT-PMP client, the gateway simulator and the bridge's
 * NAT-PMP server: a socket opened with {@link open} closes with its scope, hands every datagram and asynchronous
 * error (ICMP errors of connected sockets included) to a callback, and never throws; failed operations are
 * {@link SocketFailure}s with a one-line `message`.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Dgram from "node:dgram"
import * as Dns from "node:dns"
import * as Net from "node:net"

/** A failed socket operation; `code` is the Node error code (e.g. `ECONNREFUSED`, `EADDRINUSE`). */
export class SocketFailure extends Data.TaggedError("SocketFailure")<{
  readonly operation: string
  readonly cause: unknown
}> {
  get code(): string | undefined {
    const cause = this.cause
    return typeof cause === "object" && cause !== null && "code" in cause && typeof cause.code === "string"
      ? cause.code
      : undefined
  }

  get message(): string {
    return `${this.operation} failed: ${describe(this.cause)}`
  }
}

/** The text of an error-like value, on one line. */
export const describe = (cause: unknown): string =>
  (cause instanceof Error ? cause.message : String(cause)).split("\n")[0]

/** A received datagram with its source. */
export interface Datagram {
  readonly _tag: "Datagram"
  readonly bytes: Uint8Array
  readonly address: string
  readonly port: number
}

/** Something the socket received: a datagram with its source, or an asynchronous error (ICMP errors included). */
export type Incoming = Datagram | { readonly _tag: "Error"; readonly failure: SocketFailure }

/** Where {@link open} binds (default: any address, ephemeral port) and, optionally, the peer it connects to. */
export interface OpenOptions {
  readonly address?: string | undefined
  readonly port?: number | undefined
  readonly reuseAddr?: boolean | undefined
  /** Connect to this peer: the kernel then drops datagrams from other sources and reports ICMP errors. */
  readonly connect?: { readonly address: string; readonly port: number } | undefined
}

/**
 * Resolves an IPv4 literal at once (every address these sockets send to is one: clients, gateways, multicast
 * groups), anything else with `dns.lookup`. The default lookup defers even a literal to the next tick.
 */
const lookup = (
  hostname: string,
  // dgram passes the family (4) where the type says options
  options: Dns.LookupOneOptions | number,
  callback: (error: NodeJS.ErrnoException | null, address: string, family: number) => void
): void => {
  if (Net.isIPv4(hostname)) return callback(null, hostname, 4)
  Dns.lookup(hostname, typeof options === "number" ? { family: options } : options, callback)
}

const attempt = <A>(operation: string, f: () => A): Effect.Effect<A, SocketFailure> =>
  Effect.try({ try: f, catch: (cause) => new SocketFailure({ operation, cause }) })

const close = (socket: Dgram.Socket): Effect.Effect<void> =>
  Effect.async<void>((resume) => {
    try {
      socket.close(() => resume(Effect.void))
    } catch {
      resume(Effect.void) // already closed
    }
  })

/**
 * Runs a callback-style socket operation whose failures arrive as an `error` event. `errors` routes the socket's
 * error events: to the pending operation while there is one, to the receiver otherwise.
 */
const operate = (
  errors: { pending: ((cause: Error) => void) | undefined },
  operation: string,
  start: (done: (error?: Error | null) => void) => void
): Effect.Effect<void, SocketFailure> =>
  Effect.async<void, SocketFailure>((resume) => {
    const settle = (cause: unknown) => {
      errors.pending = undefined
      resume(cause === undefined ? Effect.void : Effect.fail(new SocketFailure({ operation, cause })))
    }
    errors.pending = settle
    try {
      start((error) => settle(error ?? undefined))
    } catch (cause) {
      settle(cause)
    }
  })

/**
 * Opens a UDP/IPv4 socket bound to `address:port` (default: any address, ephemeral port), optionally connected,
 * and closes it when the scope closes. Everything received afterwards goes to `onIncoming`.
 */
export const open = (
  options: OpenOptions,
  onIncoming: (incoming: Incoming) => void
): Effect.Effect<Dgram.Socket, SocketFailure, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.gen(function*() {
      const socket = yield* attempt("create socket", () =>
        Dgram.createSocket({ type: "udp4", reuseAddr: options.reuseAddr ?? false, lookup }))
      const errors: { pending: ((cause: Error) => void) | undefined } = { pending: undefined }
      let ready = false
      socket.on("error", (cause) => {
        if (errors.pending !== undefined) {
          errors.pending(cause)
        } else if (ready) {
          onIncoming({ _tag: "Error", failure: new SocketFailure({ operation: "receive", cause }) })
        }
      })
      socket.on("message", (bytes, rinfo) => {
        if (ready) {
          onIncoming({
            _tag: "Datagram",
            bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength),
            address: rinfo.address,
            port: rinfo.port
          })
        }
      })
      const where = `${options.address ?? "0.0.0.0"}:${options.port ?? 0}`
      const opened = Effect.gen(function*() {
        yield* operate(errors, `bind ${where}`, (done) =>
          socket.bind(
            { port: options.port ?? 0, ...(options.address === undefined ? {} : { address: options.address }) },
            done
          ))
        const peer = options.connect
        if (peer !== undefined) {
          yield* operate(errors, `connect ${peer.address}:${peer.port}`, (done) =>
            socket.connect(peer.port, peer.address, done))
        }
        ready = true
        return socket
      })
      return yield* Effect.onError(opened, () =>
        close(socket))
    }),
    close
  )

/** Sends one datagram, to the connected peer when `to` is omitted. */
export const send = (
  socket: Dgram.Socket,
  bytes: Uint8Array,
  to?: { readonly address: string; readonly port: number }
): Effect.Effect<void, SocketFailure> =>
  Effect.async<void, SocketFailure>((resume) => {
    const operation = to === undefined ? "send" : `send to ${to.address}:${to.port}`
    const callback = (cause: Error | null) =>
      resume(cause === null ? Effect.void : Effect.fail(new SocketFailure({ operation, cause })))
    try {
      if (to === undefined) {
        socket.send(bytes, callback)
      } else {
        socket.send(bytes, to.port, to.address, callback)
      }
    } catch (cause) {
      resume(Effect.fail(new SocketFailure({ operation, cause })))
    }
  })

/**
 * Hands one datagram to the kernel without waiting for the send to complete (a server answering many clients needs
 * no round trip through the scheduler per answer). Never throws: a failure, immediate or later, goes to `onError`.
 */
export const unsafeSend = (
  socket: Dgram.Socket,
  bytes: Uint8Array,
  to: { readonly address: string; readonly port: number },
  onError: (failure: SocketFailure) => void
): void => {
  const fail = (cause: unknown) => onError(new SocketFailure({ operation: `send to ${to.address}:${to.port}`, cause }))
  try {
    socket.send(bytes, to.port, to.address, (cause) => {
      if (cause !== null) fail(cause)
    })
  } catch (cause) {
    fail(cause)
  }
}

/** The address and port of a connected socket's peer. */
export const remoteAddress = (
  socket: Dgram.Socket
): Effect.Effect<{ readonly address: string; readonly port: number }, SocketFailure> =>
  attempt("read the peer address", () => {
    const { address, port } = socket.remoteAddress()
    return { address, port }
  })

/** The local `address:port` a socket is bound to. */
export const localAddress = (socket: Dgram.Socket): { readonly address: string; readonly port: number } => {
  const { address, port } = socket.address()
  return { address, port }
}

/** Joins a multicast group on the default interface. */
export const addMembership = (socket: Dgram.Socket, group: string): Effect.Effect<void, SocketFailure> =>
  attempt(`join multicast group ${group}`, () => socket.addMembership(group))

/** Sends the socket's multicast datagrams out of the interface that has this local IPv4 address. */
export const setMulticastInterface = (socket: Dgram.Socket, address: string): Effect.Effect<void, SocketFailure> =>
  attempt(`send multicast from ${address}`, () => socket.setMulticastInterface(address))

/** Whether an IPv4 address is in 224.0.0.0/4. */
export const isMulticast = (address: string): boolean => {
  const first = Number(address.split(".")[0])
  return first >= 224 && first <= 239
}
