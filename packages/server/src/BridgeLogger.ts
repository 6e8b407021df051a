/**
 * The bridge's log formats (`LOG_FORMAT`), one line per event on stderr:
 *
 * - `pretty` (default): `2026-01-02T03:04:05.678Z INFO  message key=value key=value` — for people and journald,
 * - `json`: one JSON object per line (`timestamp`, `level`, `message`, `fiber`, the annotations as `annotations`,
 *   a failure's cause as `cause`) — for log collectors.
 *
 * Annotations (`Effect.annotateLogs`) are kept in both: every request log carries the mapping key, the client, the
 * protocol, the internal and public ports, the result code and the duration.
 *
 * @since 0.1.0
 */
import * as Cause from "effect/Cause"
import * as Effect from "effect/Effect"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as HashMap from "effect/HashMap"
import * as HashSet from "effect/HashSet"
import * as Inspectable from "effect/Inspectable"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"

/** How log lines look. */
export type LogFormat = "pretty" | "json"

/** Every format, the default first. */
export const formats: ReadonlyArray<LogFormat> = ["pretty", "json"]

/** Where lines go (one call per line, without the newline). */
export type Sink = (line: string) => void

const stderr: Sink = (line) => {
  process.stderr.write(line + "\n")
}

const messageText = (message: unknown): string => {
  const parts = Array.isArray(message) ? message : [message]
  return parts.map((part) => typeof part === "string" ? part : Inspectable.format(part)).join(" ")
}

const valueText = (value: unknown): string => {
  const text = typeof value === "string" ? value : Inspectable.format(value)
  return /[\s"=]/.test(text) || text === "" ? JSON.stringify(text) : text
}

const jsonValue = (value: unknown): unknown =>
  typeof value === "bigint" || typeof value === "symbol" || typeof value === "function"
    ? String(value)
    : Inspectable.toJSON(value)

/** One human line: time, level, message, then the annotations as `key=value` and the failure, if any. */
export const prettyLine = (options: Logger.Logger.Options<unknown>): string => {
  let line = `${options.date.toISOString()} ${options.logLevel.label.padEnd(5)} ${messageText(options.message)}`
  for (const [key, value] of options.annotations) line += ` ${key}=${valueText(value)}`
  if (!Cause.isEmpty(options.cause)) line += ` cause=${JSON.stringify(Cause.pretty(options.cause))}`
  return line
}

/** One JSON object. */
export const jsonLine = (options: Logger.Logger.Options<unknown>): string => {
  const annotations: Record<string, unknown> = {}
  for (const [key, value] of options.annotations) annotations[key] = jsonValue(value)
  return JSON.stringify({
    timestamp: options.date.toISOString(),
    level: options.logLevel.label,
    message: messageText(options.message),
    fiber: FiberId.threadName(options.fiberId),
    ...(HashMap.size(options.annotations) > 0 ? { annotations } : {}),
    ...(Cause.isEmpty(options.cause) ? {} : { cause: Cause.pretty(options.cause) })
  })
}

/** A logger writing `format` lines to `sink` (default: stderr, so stdout carries only results). */
export const make = (format: LogFormat, sink: Sink = stderr): Logger.Logger<unknown, void> =>
  Logger.make((options) => sink(format === "json" ? jsonLine(options) : prettyLine(options)))

/** Runs `effect` with `format` lines as its only logger. */
export const withFormat = (format: LogFormat, sink?: Sink) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.locally(effect, FiberRef.currentLoggers, HashSet.make(make(format, sink)))

/** A layer making `format` lines the only logger. */
export const layer = (format: LogFormat, sink?: Sink): Layer.Layer<never> =>
  Layer.locallyScoped(FiberRef.currentLoggers, HashSet.make(make(format, sink)))
