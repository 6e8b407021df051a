/**
 * Command-line options shared by every `natpmp` command (which gateway, how to talk to it,
 * how to print), and the validators for ports, lifetimes and addresses.
 */
import * as Args from "@effect/cli/Args"
import * as HelpDoc from "@effect/cli/HelpDoc"
import * as Options from "@effect/cli/Options"
import * as ValidationError from "@effect/cli/ValidationError"
import * as Effect from "effect/Effect"
import type * as Option from "effect/Option"
import { isIPv4 } from "node:net"

const invalid = (message: string) => ValidationError.invalidValue(HelpDoc.p(message))

/** Checks an integer is within `min..max`, naming the option or argument in the error. */
export const checkRange = (name: string, min: number, max: number, hint = "") => (value: number) =>
  Number.isInteger(value) && value >= min && value <= max
    ? Effect.succeed(value)
    : Effect.fail(`${name} must be an integer from ${min} to ${max}, got ${value}${hint}`)

/** Validator for an integer option (`Options.mapEffect`). */
export const optionInRange = (name: string, min: number, max: number, hint = "") => (value: number) =>
  Effect.mapError(checkRange(name, min, max, hint)(value), invalid)

const argInRange = (name: string, min: number, max: number, hint = "") => (value: number) =>
  Effect.mapError(checkRange(name, min, max, hint)(value), HelpDoc.p)

/** A port argument (`min` is 0 where "any port" makes sense). */
export const portArg = (name: string, min: 0 | 1, description: string, hint = "") =>
  Args.integer({ name }).pipe(Args.mapEffect(argInRange(name, min, 65535, hint)), Args.withDescription(description))

/** `-g/--gateway`: the NAT-PMP gateway's IPv4 address; none = the default route's gateway. */
export const gateway = Options.text("gateway").pipe(
  Options.withAlias("g"),
  Options.withPseudoName("IP"),
  Options.mapEffect((value) =>
    isIPv4(value)
      ? Effect.succeed(value)
      : Effect.fail(invalid(`--gateway must be an IPv4 address like 10.2.0.1, got '${value}'`))
  ),
  Options.optional,
  Options.withDescription("gateway IPv4 address (default: the default route's gateway, auto-detected)")
)

/** `--port`: the gateway's NAT-PMP port. */
export const port = Options.integer("port").pipe(
  Options.withPseudoName("N"),
  Options.mapEffect(optionInRange("--port", 1, 65535)),
  Options.withDefault(5351),
  Options.withDescription("the gateway's NAT-PMP UDP port")
)

/** `--timeout`: the first retransmission timeout, doubled after each send (RFC 6886 §3.1). */
export const timeout = Options.integer("timeout").pipe(
  Options.withPseudoName("MS"),
  Options.mapEffect(optionInRange("--timeout", 1, 600_000)),
  Options.withDefault(250),
  Options.withDescription("milliseconds to wait for the first answer; doubled after each retransmission")
)

/** `--retries`: retransmissions after the first request (RFC default 8: nine sends, about 128 s). */
export const retries = Options.integer("retries").pipe(
  Options.withPseudoName("N"),
  Options.mapEffect(optionInRange("--retries", 0, 20)),
  Options.withDefault(8),
  Options.withDescription("retransmissions after the first request before giving up (RFC 6886: 8, about 128 s)")
)

/** `--json`: one JSON object per line for each result or event. */
export const json = Options.boolean("json").pipe(
  Options.withDescription("print one JSON object per line for each result or event (errors too, on stderr)")
)

/** `-u/--udp`: map UDP instead of TCP. */
export const udp = Options.boolean("udp").pipe(
  Options.withAlias("u"),
  Options.withDescription("UDP instead of TCP")
)

/** Everything that says how to reach the gateway and how to print. */
export const gatewayOptions = { gateway, port, timeout, retries, json } as const

export interface GatewaySettings {
  readonly gateway: Option.Option<string>
  readonly port: number
  readonly timeout: number
  readonly retries: number
  readonly json: boolean
}
