/**
 * Runs the core fuzzers (see CoreFuzz.ts) and prints one summary line each; exits non-zero on any violation.
 *
 *   node node_modules/vite-node/vite-node.mjs -c packages/core/vitest.config.ts packages/core/fuzz/core-fuzz.ts \
 *     [scale] [seed]
 *
 * `scale` (FUZZ_SCALE, default 1) multiplies the counts: 100 000 RouterOS streams, 2 000 000 NAT-PMP datagrams,
 * 1 000 RouterOS client rounds and 1 000 NAT-PMP client rounds. The seed (FUZZ_SEED, default random) is printed.
 */
import * as Effect from "effect/Effect"
import { parseSeed } from "../src/testing/Prng.js"
import type { FuzzReport } from "./CoreFuzz.js"
import {
  formatReport,
  fuzzNatPmpClient,
  fuzzNatPmpDecode,
  fuzzRouterOsClient,
  fuzzRouterOsDecoder
} from "./CoreFuzz.js"

const args = process.argv.slice(2).filter((arg) => arg !== "--")
const scale = Number(args[0] ?? process.env.FUZZ_SCALE ?? 1)
const seed = parseSeed(args[1] ?? process.env.FUZZ_SEED)
const n = (count: number) => Math.max(1, Math.round(count * scale))

process.stderr.write(`core fuzz: scale ${scale}, seed ${seed} (FUZZ_SEED=${seed} reproduces)\n`)
const reports: Array<FuzzReport> = []
const report = (r: FuzzReport) => {
  reports.push(r)
  for (const violation of r.violations) process.stderr.write(`  violation: ${violation}\n`)
  process.stdout.write(`${formatReport(r)}\n`)
}
report(fuzzRouterOsDecoder(n(100_000), seed))
report(fuzzNatPmpDecode(n(2_000_000), seed))
report(await Effect.runPromise(fuzzRouterOsClient(n(1_000), seed)))
report(await Effect.runPromise(fuzzNatPmpClient(n(1_000), seed)))
process.exit(reports.every((r) => r.violations.length === 0) ? 0 : 1)
