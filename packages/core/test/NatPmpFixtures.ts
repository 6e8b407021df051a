import { NatPmpClient } from "@natpmp-bridge/core"
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Chunk from "effect/Chunk"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as TestClock from "effect/TestClock"
import * as TestServices from "effect/TestServices"
import * as Dgram from "node:dgram"

/** Announcements nobody listens to: the discard port on loopback. */
export const nowhere = { address: "127.0.0.1", port: 9 } as const

/** A simulated gateway on an ephemeral loopback port and a client of it (announcements off unless asked). */
export const gatewayAndClient = (
  options: {
    readonly simulator?: NatPmpGatewaySimulator.Options
    readonly client?: Partial<NatPmpClient.Options>
  } = {}
) =>
  Effect.gen(function*() {
    const simulator = yield* NatPmpGatewaySimulator.make({ announceTo: nowhere, ...options.simulator })
    const client = yield* NatPmpClient.make({
      gateway: simulator.address,
      port: simulator.port,
      announcements: false,
      ...options.client
    })
    if (Option.isSome(client.announcementListener)) {
      yield* simulator.setAnnounceTo({ address: "127.0.0.1", port: client.announcementListener.value.port })
    }
    return { simulator, client }
  })

/** Sleeps in real time, whatever clock the test runs with. */
export const realSleep = (millis: number) => TestServices.provideLive(Effect.sleep(millis))

/** Polls (in real time) until `predicate` holds, for up to `timeoutMillis`. */
export const eventually = <A, E, R>(
  get: Effect.Effect<A, E, R>,
  predicate: (value: A) => boolean,
  what: string,
  timeoutMillis = 3000
): Effect.Effect<A, E, R> =>
  Effect.gen(function*() {
    const deadline = Date.now() + timeoutMillis
    while (true) {
      const value = yield* get
      if (predicate(value)) {
        return value
      }
      if (Date.now() > deadline) {
        return yield* Effect.dieMessage(`timed out waiting for ${what}, last value ${JSON.stringify(value)}`)
      }
      yield* realSleep(2)
    }
  })

/** Waits until some fiber sleeps until `instant` on the TestClock. */
export const sleeperAt = (instant: number) =>
  eventually(
    Effect.map(TestClock.sleeps(), Chunk.toReadonlyArray),
    (sleeps) => sleeps.includes(instant),
    `a sleep until ${instant} ms`
  )

/** Waits until some fiber sleeps until an instant in (`after`, `until`] ms of the test clock. */
export const sleeperWithin = (after: number, until: number) =>
  eventually(
    Effect.map(TestClock.sleeps(), Chunk.toReadonlyArray),
    (sleeps) => sleeps.some((instant) => instant > after && instant <= until),
    `a sleep until an instant in (${after}, ${until}] ms`
  )

/** A plain UDP socket on loopback, closed with the scope. */
export const rawSocket = (address = "127.0.0.1") =>
  Effect.acquireRelease(
    Effect.async<Dgram.Socket>((resume) => {
      const socket = Dgram.createSocket("udp4")
      socket.bind(0, address, () => resume(Effect.succeed(socket)))
    }),
    (socket) => Effect.sync(() => socket.close())
  )

/** Sends one datagram from a raw socket. */
export const sendFrom = (socket: Dgram.Socket, bytes: Uint8Array, to: { address: string; port: number }) =>
  Effect.async<void>((resume) => {
    socket.send(bytes, to.port, to.address, () => resume(Effect.void))
  })
