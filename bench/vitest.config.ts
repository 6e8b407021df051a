import { defineProject } from "vitest/config"

// The project-level benches (bench/*.bench.ts) are scripts run by bench/run.ts, not vitest benches.
export default defineProject({
  test: {
    name: "bench",
    include: ["test/**/*.test.ts"],
    benchmark: { include: [] }
  }
})
