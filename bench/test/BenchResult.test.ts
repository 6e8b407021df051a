import { describe, expect, it } from "@effect/vitest"
import * as BenchResult from "../lib/BenchResult.js"

const line = (result: unknown) => `BENCH_RESULT ${JSON.stringify(result)}`

describe("BenchResult", () => {
  it("reads the result from the last stdout line, whatever comes before", () => {
    const metrics = { rps: { value: 1234.5, unit: "answers/s", label: "answers per second" } }
    const stdout = ["warming up", "BENCH_RESULT {not this one}", line({ bench: "demo", metrics }), "", ""].join("\n")
    expect(BenchResult.parse(stdout)).toEqual({ result: { bench: "demo", metrics } })
    expect(BenchResult.parse(BenchResult.format({ bench: "demo", metrics }) + "\n")).toEqual({
      result: { bench: "demo", metrics }
    })
  })

  it("rejects output whose last line is not a valid result", () => {
    const ok = line({ bench: "demo", metrics: {} })
    expect(BenchResult.parse("")).toEqual({ error: "no output" })
    expect(BenchResult.parse(`${ok}\ntrailing text`)).toHaveProperty("error")
    expect(BenchResult.parse("BENCH_RESULT {")).toHaveProperty("error")
    expect(BenchResult.parse(line({ metrics: {} }))).toHaveProperty("error")
    expect(BenchResult.parse(line({ bench: "demo", metrics: { x: { value: "1", unit: "ms", label: "x" } } })))
      .toHaveProperty("error")
    expect(BenchResult.parse(line({ bench: "demo", metrics: { x: { value: null, unit: "ms", label: "x" } } })))
      .toHaveProperty("error")
  })

  it("computes median, min and max", () => {
    expect(BenchResult.summarize([])).toBeUndefined()
    expect(BenchResult.summarize([7])).toEqual({ median: 7, min: 7, max: 7, runs: 1 })
    expect(BenchResult.summarize([3, 1, 2])).toEqual({ median: 2, min: 1, max: 3, runs: 3 })
    expect(BenchResult.summarize([10, 1, 4, 2])).toEqual({ median: 3, min: 1, max: 10, runs: 4 })
  })

  it("aggregates the runs of a bench per metric into table rows", () => {
    const run = (a: number, b?: number) => ({
      bench: "demo",
      metrics: {
        a: { value: a, unit: "ms", label: "metric a" },
        ...(b === undefined ? {} : { b: { value: b, unit: "x", label: "ratio b" } })
      }
    })
    const rows = BenchResult.aggregate("demo", "node demo.js", [run(5, 2), run(1), run(3, 4)])
    expect(rows.map(({ key, max, median, min, runs }) => ({ key, median, min, max, runs }))).toEqual([
      { key: "a", median: 3, min: 1, max: 5, runs: 3 },
      { key: "b", median: 3, min: 2, max: 4, runs: 2 }
    ])
    const table = BenchResult.table(rows)
    expect(table).toContain("| metric a | 3 | 1–5 | ms | 3 | `node demo.js` |")
    expect(table).toContain("| ratio b | 3 | 2–4 | x | 2 | `node demo.js` |")
  })

  it("formats numbers with about 3 significant digits", () => {
    expect(BenchResult.formatNumber(28123.4)).toBe("28,123")
    expect(BenchResult.formatNumber(144.4)).toBe("144")
    expect(BenchResult.formatNumber(1.914)).toBe("1.91")
    expect(BenchResult.formatNumber(0.0354)).toBe("0.0354")
    expect(BenchResult.formatNumber(100)).toBe("100")
    expect(BenchResult.formatNumber(0)).toBe("0")
  })
})
