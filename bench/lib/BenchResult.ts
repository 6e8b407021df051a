/**
 * The benchmark result protocol and its statistics: every `bench/<name>.bench.ts` prints, as its LAST stdout line,
 * `BENCH_RESULT {"bench":"<name>","metrics":{"<key>":{"value":<number>,"unit":"<unit>","label":"<text>"}}}`.
 * The runner runs each bench several times and summarizes every metric as median and min–max.
 */

/** One measured figure. */
export interface Metric {
  readonly value: number
  readonly unit: string
  readonly label: string
}

/** What one run of a bench reports. */
export interface BenchResult {
  readonly bench: string
  readonly metrics: Readonly<Record<string, Metric>>
}

export const PREFIX = "BENCH_RESULT "

/** The line a bench prints last. */
export const format = (result: BenchResult): string => PREFIX + JSON.stringify(result)

/** Prints the result line (the bench's last stdout line). */
export const emit = (result: BenchResult): void => {
  process.stdout.write(format(result) + "\n")
}

const isMetric = (value: unknown): value is Metric =>
  typeof value === "object" && value !== null &&
  typeof (value as Metric).value === "number" && Number.isFinite((value as Metric).value) &&
  typeof (value as Metric).unit === "string" && typeof (value as Metric).label === "string"

/**
 * Reads the result from a bench's whole stdout: its last non-empty line must be the result line. Returns the
 * result or a one-line reason.
 */
export const parse = (stdout: string): { readonly result: BenchResult } | { readonly error: string } => {
  const lines = stdout.split(/\r?\n/).filter((line) => line.trim() !== "")
  const last = lines.at(-1)
  if (last === undefined) return { error: "no output" }
  if (!last.startsWith(PREFIX)) {
    return { error: `last stdout line is not a ${PREFIX.trim()} line: ${last.slice(0, 120)}` }
  }
  let json: unknown
  try {
    json = JSON.parse(last.slice(PREFIX.length))
  } catch (cause) {
    return { error: `${PREFIX.trim()} is not JSON: ${String(cause)}` }
  }
  if (typeof json !== "object" || json === null) return { error: `${PREFIX.trim()} is not an object` }
  const { bench, metrics } = json as { bench?: unknown; metrics?: unknown }
  if (typeof bench !== "string" || bench === "") return { error: `${PREFIX.trim()} has no "bench" name` }
  if (typeof metrics !== "object" || metrics === null) return { error: `${PREFIX.trim()} has no "metrics" object` }
  for (const [key, metric] of Object.entries(metrics)) {
    if (!isMetric(metric)) return { error: `metric "${key}" needs a finite value, a unit and a label` }
  }
  return { result: { bench, metrics: metrics as Record<string, Metric> } }
}

/** Median (mean of the middle two for an even count), min and max. */
export interface Summary {
  readonly median: number
  readonly min: number
  readonly max: number
  readonly runs: number
}

export const summarize = (values: ReadonlyArray<number>): Summary | undefined => {
  if (values.length === 0) return undefined
  const sorted = [...values].sort((a, b) => a - b)
  const middle = Math.floor(sorted.length / 2)
  const median = sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2
  return { median, min: sorted[0], max: sorted[sorted.length - 1], runs: sorted.length }
}

/** One row of the results table: a metric of a bench over all its successful runs. */
export interface Row extends Summary {
  readonly bench: string
  readonly key: string
  readonly label: string
  readonly unit: string
  readonly command: string
}

/** The rows of one bench, metrics in the order the first run reported them. */
export const aggregate = (bench: string, command: string, runs: ReadonlyArray<BenchResult>): ReadonlyArray<Row> => {
  const keys: Array<string> = []
  for (const run of runs) {
    for (const key of Object.keys(run.metrics)) if (!keys.includes(key)) keys.push(key)
  }
  return keys.flatMap((key) => {
    const metrics = runs.flatMap((run) => run.metrics[key] === undefined ? [] : [run.metrics[key]])
    const summary = summarize(metrics.map((metric) => metric.value))
    if (summary === undefined) return []
    const last = metrics[metrics.length - 1]
    return [{ bench, key, label: last.label, unit: last.unit, command, ...summary }]
  })
}

/** A number with 3 significant digits (integers of 4+ digits whole, thousands separated). */
export const formatNumber = (value: number): string => {
  if (!Number.isFinite(value)) return String(value)
  const abs = Math.abs(value)
  if (abs >= 1000) return Math.round(value).toLocaleString("en-US")
  if (abs === 0) return "0"
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : abs >= 1 ? 2 : Math.min(6, 2 - Math.floor(Math.log10(abs)))
  return value.toFixed(digits).replace(/(\.\d*?)0+$/, "$1").replace(/\.$/, "")
}

/** The markdown results table. */
export const table = (rows: ReadonlyArray<Row>): string =>
  [
    "| metric | median | min–max | unit | runs | command |",
    "|---|---|---|---|---|---|",
    ...rows.map((row) =>
      `| ${row.label} | ${formatNumber(row.median)} | ${formatNumber(row.min)}–${formatNumber(row.max)} | ` +
      `${row.unit} | ${row.runs} | \`${row.command}\` |`
    )
  ].join("\n")
