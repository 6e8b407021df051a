/**
 * A scoped UDP/IPv4 socket for the bridge's NAT-PMP server: received datagrams go to a callback, asynchronous
 * errors are logged by the caller, nothing throws.
 *
 * @internal
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as Scope from "effect/Scope"
import * as Dgram from "node:dgram"

/** A socket operation failed. */
export class UdpError extends Data.TaggedError("UdpError")<{
  readonly operation: string
  readonly cause: unknown
}> {
  override get message(): string {
    const cause = this.cause instanceof Error ? this.cause.message : String(this.cause)
    return `${this.operation} failed: ${cause.split("\n")[0]}`
  }
}

/** A received datagram. */
export interface Datagram {
  readonly bytes: Uint8Array
  readonly address: string
  readonly port: number
}

/** An open socket. */
export interface UdpSocket {
  readonly address: string
  readonly port: number
  readonly send: (bytes: Uint8Array, to: { readonly address: string; readonly port: number }) => Effect.Effect<
    void,
    UdpError
  >
}

/** Binds `address:port` (port 0: ephemeral) for the life of the scope. */
export const open = (
  options: { readonly address: string; readonly port: number; readonly reuseAddr?: boolean | undefined },
  onDatagram: (datagram: Datagram) => void,
  onError: (error: UdpError) => void
): Effect.Effect<UdpSocket, UdpError, Scope.Scope> =>
  Effect.gen(function*() {
    const socket = yield* Effect.acquireRelease(
      Effect.async<Dgram.Socket, UdpError>((resume) => {
        let bound = false
        let socket: Dgram.Socket
        try {
          socket = Dgram.createSocket({ type: "udp4", reuseAddr: options.reuseAddr ?? false })
        } catch (cause) {
          resume(Effect.fail(new UdpError({ operation: "create socket", cause })))
          return
        }
        socket.on("error", (cause) => {
          if (!bound) {
            bound = true // settle once
            try {
              socket.close()
            } catch {
              // already closed
            }
            resume(Effect.fail(new UdpError({ operation: `bind ${options.address}:${options.port}`, cause })))
          } else {
            onError(new UdpError({ operation: "receive", cause }))
          }
        })
        socket.on("message", (bytes, rinfo) =>
          onDatagram({
            bytes: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength),
            address: rinfo.address,
            port: rinfo.port
          }))
        try {
          socket.bind({ address: options.address, port: options.port }, () => {
            bound = true
            resume(Effect.succeed(socket))
          })
        } catch (cause) {
          bound = true
          resume(Effect.fail(new UdpError({ operation: `bind ${options.address}:${options.port}`, cause })))
        }
      }),
      (socket) =>
        Effect.async<void>((resume) => {
          try {
            socket.close(() => resume(Effect.void))
          } catch {
            resume(Effect.void)
          }
        })
    )
    const local = socket.address()
    return {
      address: local.address,
      port: local.port,
      send: (bytes, to) =>
        Effect.async<void, UdpError>((resume) => {
          try {
            socket.send(bytes, to.port, to.address, (cause) =>
              resume(
                cause === null || cause === undefined
                  ? Effect.void
                  : Effect.fail(new UdpError({ operation: `send to ${to.address}:${to.port}`, cause }))
              ))
          } catch (cause) {
            resume(Effect.fail(new UdpError({ operation: `send to ${to.address}:${to.port}`, cause })))
          }
        })
    }
  })
