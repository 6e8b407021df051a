import { defineWorkspace } from "vitest/config"

export default defineWorkspace([
  "packages/core",
  "packages/server",
  "packages/cli",
  "bench",
  "examples"
])
