/**
 * RouterOS port specifications as found in `dst-port` of firewall rules: a single port, a comma list, ranges,
 * or a negation of those (`80`, `80,443,8000-8100`, `!1-1023`).
 *
 * @since 0.1.0
 */
import * as Option from "effect/Option"

/** Inclusive port range. */
export interface PortRange {
  readonly min: number
  readonly max: number
}

/** A parsed port specification: the ports listed, or (when `negated`) every port but those. */
export interface PortSpec {
  readonly negated: boolean
  readonly ranges: ReadonlyArray<PortRange>
}

const parsePort = (text: string): number | undefined => {
  if (!/^\d{1,5}$/.test(text)) return undefined
  const port = Number(text)
  return port <= 65535 ? port : undefined
}

/** Parses a RouterOS port specification; `None` when it is not one (the caller decides how to treat that). */
export const parse = (input: string): Option.Option<PortSpec> => {
  let text = input.trim()
  let negated = false
  if (text.startsWith("!")) {
    negated = true
    text = text.slice(1).trim()
  }
  if (text === "") return Option.none()
  const ranges: Array<PortRange> = []
  for (const item of text.split(",")) {
    const part = item.trim()
    const dash = part.indexOf("-")
    if (dash < 0) {
      const port = parsePort(part)
      if (port === undefined) return Option.none()
      ranges.push({ min: port, max: port })
    } else {
      const min = parsePort(part.slice(0, dash).trim())
      const max = parsePort(part.slice(dash + 1).trim())
      if (min === undefined || max === undefined || min > max) return Option.none()
      ranges.push({ min, max })
    }
  }
  return Option.some({ negated, ranges })
}

/** Whether the specification matches `port`. */
export const matches = (spec: PortSpec, port: number): boolean => {
  const listed = spec.ranges.some((range) => port >= range.min && port <= range.max)
  return spec.negated ? !listed : listed
}

/**
 * Whether a rule's `dst-port` value may match `port`: an absent value matches every port, and a value that cannot
 * be parsed is assumed to match (a conflict check must never assume a port is free when it cannot tell).
 */
export const mayMatch = (value: string | undefined, port: number): boolean => {
  if (value === undefined || value.trim() === "") return true
  return Option.match(parse(value), { onNone: () => true, onSome: (spec) => matches(spec, port) })
}

/** The single port of a specification that lists exactly one port, e.g. the `dst-port` of the bridge's rules. */
export const single = (value: string | undefined): Option.Option<number> => {
  if (value === undefined) return Option.none()
  return Option.flatMap(
    parse(value),
    (spec) =>
      !spec.negated && spec.ranges.length === 1 && spec.ranges[0].min === spec.ranges[0].max
        ? Option.some(spec.ranges[0].min)
        : Option.none()
  )
}
