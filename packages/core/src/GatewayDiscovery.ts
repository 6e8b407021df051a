/**
 * Finds the default IPv4 gateway — where a NAT-PMP client sends its requests when no gateway is given
 * (RFC 6886 §3: the client talks to its default gateway). Uses the `default-gateway` package (`ip route` on Linux,
 * `netstat` on macOS and the BSDs, WMI on Windows).
 *
 * @since 0.1.0
 */
import { gateway4async } from "default-gateway"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import { isIPv4 } from "node:net"

/** No default IPv4 gateway could be determined. */
export class GatewayNotFoundError extends Data.TaggedError("GatewayNotFoundError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  get message(): string {
    return `no default IPv4 gateway found: ${this.reason}`
  }
}

const firstLine = (cause: unknown): string =>
  (cause instanceof Error ? cause.message : String(cause)).split("\n")[0].trim()

/** The address of the default IPv4 gateway, e.g. `"192.168.1.1"`. */
export const defaultGateway: Effect.Effect<string, GatewayNotFoundError> = Effect.tryPromise({
  try: () => gateway4async(),
  catch: (cause) => new GatewayNotFoundError({ reason: firstLine(cause), cause })
}).pipe(
  Effect.flatMap(({ gateway }) =>
    isIPv4(gateway)
      ? Effect.succeed(gateway)
      : Effect.fail(new GatewayNotFoundError({ reason: `the default route names ${gateway}, not an IPv4 address` }))
  ),
  Effect.withSpan("GatewayDiscovery.defaultGateway")
)
