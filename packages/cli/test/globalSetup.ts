import { execFileSync } from "node:child_process"
import * as path from "node:path"

/** Bundles the bins once before the tests, with the package's own build command (`npm run build`). */
export default function setup() {
  execFileSync(process.execPath, [path.join(__dirname, "..", "build.mjs")], { stdio: "inherit" })
}
