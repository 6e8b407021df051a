import { describe, expect, it } from "@effect/vitest"
import * as Fs from "node:fs"
import * as Path from "node:path"
import { DEPLOYED_ENV, root } from "../lib/Processes.js"

const read = (file: string) => Fs.readFileSync(Path.join(root, file), "utf8")

describe("the environment the benches start the bridge with", () => {
  it("is the one the Dockerfile and the systemd unit run it with", () => {
    const dockerfile = read("Dockerfile")
    expect(/^ENV NODE_OPTIONS="([^"]*)"$/m.exec(dockerfile)?.[1]).toBe(DEPLOYED_ENV.NODE_OPTIONS)

    const unit = read("deploy/natpmp-bridge.service")
    const lines = [...unit.matchAll(/^Environment=(.*)$/gm)].map((line) => line[1])
    const assignments = Object.fromEntries(
      lines.flatMap((line) =>
        [...line.matchAll(/"([^"=]+)=([^"]*)"|([^\s"=]+)=(\S*)/g)].map((m) =>
          m[1] !== undefined ? [m[1], m[2]] : [m[3], m[4]]
        )
      )
    )
    expect(assignments).toEqual(DEPLOYED_ENV)
  })
})
