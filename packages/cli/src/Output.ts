/**
 * How the CLIs print results: one human line, or with `--json` one JSON object per line
 * with stable field names.
 */
import * as Console from "effect/Console"
import type * as Effect from "effect/Effect"

/** Prints either the human line or the JSON object (one line). */
export const emit = (json: boolean, human: string, record: Record<string, unknown>): Effect.Effect<void> =>
  json ? Console.log(JSON.stringify(record)) : Console.log(human)

/** "TCP" / "UDP" for human output. */
export const protocolName = (protocol: string): string => protocol.toUpperCase()
