/**
 * RFC 6886 §3.2.1 announcements: on start, on an address change and after a state loss, a gateway sends 10
 * public-address responses to 224.0.0.1:5350, the first two 250 ms apart and the interval doubling, each with the
 * current epoch. LAN clients that see the epoch go backwards re-map.
 *
 * @since 0.1.0
 */
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as FiberHandle from "effect/FiberHandle"
import * as Option from "effect/Option"
import type * as Scope from "effect/Scope"

/** Where and how to announce. */
export interface Options {
  /** Default `224.0.0.1:5350`. */
  readonly target?: { readonly address: string; readonly port: number } | undefined
  /** Packets per announcement (default 10). */
  readonly count?: number | undefined
  /** Interval between the first two packets, doubling after each (default 250 ms). */
  readonly initialInterval?: Duration.DurationInput | undefined
}

/** What an announcement says: the current epoch and the public address (`None`: unknown, nothing is sent). */
export interface AnnouncementState {
  readonly epoch: number
  readonly publicAddress: Option.Option<string>
}

/** A running announcer. */
export interface Announcer {
  readonly target: { readonly address: string; readonly port: number }
  /** Starts an announcement in the background, replacing one in progress; returns once the first packet is sent. */
  readonly announce: Effect.Effect<void>
}

/** The announcement packets' schedule: the delays before packets 2..count. */
export const delays = (count: number, initialInterval: Duration.DurationInput): ReadonlyArray<Duration.Duration> => {
  const first = Duration.decode(initialInterval)
  return Array.from({ length: Math.max(0, count - 1) }, (_, i) => Duration.times(first, 2 ** i))
}

/**
 * Creates an announcer that sends with `send` (the server's socket, so announcements come from port 5351) the
 * state read from `state` at each packet. Announcing stops when the scope closes.
 */
export const make = <E>(
  options: Options,
  send: (bytes: Uint8Array, to: { readonly address: string; readonly port: number }) => Effect.Effect<void, E>,
  state: Effect.Effect<AnnouncementState>
): Effect.Effect<Announcer, never, Scope.Scope> =>
  Effect.gen(function*() {
    const target = options.target ?? { address: NatPmpMessage.AnnouncementAddress, port: 5350 }
    const schedule = delays(options.count ?? 10, options.initialInterval ?? Duration.millis(250))
    const handle = yield* FiberHandle.make<void, never>()

    const sendOne = Effect.gen(function*() {
      const { epoch, publicAddress } = yield* state
      if (Option.isNone(publicAddress)) {
        return yield* Effect.logDebug("announcement skipped: the public address is not known yet")
      }
      yield* send(
        NatPmpMessage.encodeResponse({
          _tag: "PublicAddressResponse",
          resultCode: NatPmpMessage.ResultCode.Success,
          epoch,
          publicAddress: publicAddress.value
        }),
        target
      ).pipe(Effect.catchAll((error) => Effect.logDebug(`announcement not sent: ${String(error)}`)))
    })

    const announce = Effect.gen(function*() {
      yield* FiberHandle.clear(handle)
      yield* sendOne
      yield* Effect.logDebug(`announcing to ${target.address}:${target.port}`)
      yield* FiberHandle.run(
        handle,
        Effect.forEach(schedule, (delay) => Effect.zipRight(Effect.sleep(delay), sendOne), { discard: true })
      )
    })

    return { target, announce }
  })
