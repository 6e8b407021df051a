/**
 * Fuzzes the bridge's NAT-PMP server (see ServerFuzz.ts) and prints a one-line summary; exits non-zero on any
 * violation.
 *
 *   node --expose-gc node_modules/vite-node/vite-node.mjs -c packages/server/vitest.config.ts \
 *     packages/server/fuzz/server-fuzz.ts [count] [seed]
 *
 * Count and seed also come from FUZZ_COUNT / FUZZ_SEED (default 1 000 000 and a random seed, printed).
 */
import * as Effect from "effect/Effect"
import { formatSummary, parseSeed, run } from "./ServerFuzz.js"

const args = process.argv.slice(2).filter((arg) => arg !== "--")
const count = Number(args[0] ?? process.env.FUZZ_COUNT ?? 1_000_000)
const seed = parseSeed(args[1] ?? process.env.FUZZ_SEED)
const window = process.env.FUZZ_WINDOW === undefined ? undefined : Number(process.env.FUZZ_WINDOW)

process.stderr.write(`server fuzz: ${count} datagrams, seed ${seed} (FUZZ_SEED=${seed} reproduces)\n`)
const summary = await Effect.runPromise(
  run({ count, seed, window, progress: (line) => process.stderr.write(`${line}\n`) })
)
for (const violation of summary.violations) process.stderr.write(`  violation: ${violation}\n`)
process.stdout.write(`${formatSummary(summary)}\n`)
process.exit(summary.violations.length === 0 && summary.invalid === 0 && summary.crashes === 0 ? 0 : 1)
