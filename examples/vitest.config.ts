import * as path from "node:path"
import { defineProject } from "vitest/config"

const pkg = (name: string) => path.join(__dirname, "..", "packages", name, "src")

export default defineProject({
  resolve: {
    alias: [
      { find: /^@natpmp-bridge\/(core|server)\/testing$/, replacement: pkg("$1") + "/testing/index.ts" },
      { find: /^@natpmp-bridge\/(core|server)$/, replacement: pkg("$1") + "/index.ts" }
    ]
  },
  test: {
    name: "examples",
    include: ["**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000
  }
})
