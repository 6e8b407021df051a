/**
 * Slow: the Dockerfile's stages played without a Docker engine. The build stage's COPY instructions fill an empty
 * folder from the build context (what .dockerignore lets through), its RUN instructions run there (`npm ci` fetches
 * from the registry or npm's cache), then the runtime stage's files are copied out of it and its entrypoint runs.
 * This proves the build needs nothing the Dockerfile does not copy, and the image needs nothing but those files.
 *
 * Needs the npm registry (or a warm npm cache): without it the test is skipped, except when CI=true.
 */
import { describe, expect, it } from "@effect/vitest"
import * as Effect from "effect/Effect"
import { execFile, execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { buildStage, isIgnored, parseCopy, resolveDest, root, runtimeFiles, runtimeStage } from "./Dockerfile.js"

const registryReachable = (() => {
  try {
    execFileSync("npm", ["ping"], { stdio: "ignore", timeout: 20_000 })
    return true
  } catch {
    return false
  }
})()
const skip = !registryReachable && process.env.CI !== "true"
if (skip) console.warn("Dockerfile build test skipped: the npm registry cannot be reached")

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

const exec = (file: string, args: ReadonlyArray<string>, options: { cwd: string; env?: NodeJS.ProcessEnv }) =>
  Effect.async<Run>((resume) => {
    execFile(
      file,
      [...args],
      { ...options, timeout: 300_000, maxBuffer: 64 * 1024 * 1024, encoding: "utf8" },
      (error, stdout, stderr) => {
        resume(Effect.succeed({
          code: error === null ? 0 : typeof error.code === "number" ? error.code : 1,
          stdout,
          stderr
        }))
      }
    )
  })

/** Copies a file or a directory of the build context, leaving out what .dockerignore excludes. */
const copyFromContext = (source: string, target: string) => {
  const walk = (relative: string, to: string) => {
    if (isIgnored(relative)) return
    const from = path.join(root, relative)
    if (fs.statSync(from).isDirectory()) {
      fs.mkdirSync(to, { recursive: true })
      for (const entry of fs.readdirSync(from)) walk(path.posix.join(relative, entry), path.join(to, entry))
    } else {
      fs.mkdirSync(path.dirname(to), { recursive: true })
      fs.copyFileSync(from, to)
    }
  }
  walk(source, target)
}

describe("Dockerfile stages without Docker [slow]", () => {
  it.scopedLive.skipIf(skip)(
    "the build stage builds from its own COPYs; the runtime files start the bridge",
    () =>
      Effect.gen(function*() {
        const temp = yield* Effect.acquireRelease(
          Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "natpmp-bridge-docker-"))),
          (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
        )
        /** The build stage's file system, rooted in `temp/build`. */
        const inBuild = (imagePath: string) => path.join(temp, "build", imagePath)
        // a clean environment: no workspace, CI or npm settings of this process leak into the build
        const env: NodeJS.ProcessEnv = {
          PATH: process.env.PATH,
          HOME: process.env.HOME,
          npm_config_prefer_offline: "true"
        }
        for (const instruction of buildStage.instructions) {
          if (instruction.keyword === "COPY") {
            const copy = parseCopy(instruction.args)
            const dest = resolveDest(buildStage, copy.dest)
            for (const source of copy.sources) {
              const target = copy.dest.endsWith("/") ? path.posix.join(dest, path.posix.basename(source)) : dest
              copyFromContext(source, inBuild(target))
            }
          } else if (instruction.keyword === "RUN") {
            const workdir = inBuild(buildStage.instructions.find((i) => i.keyword === "WORKDIR")!.args)
            const run = yield* exec("sh", ["-c", instruction.args], { cwd: workdir, env })
            expect(run.code, `RUN ${instruction.args}: ${run.stderr.slice(-2000)}`).toBe(0)
          }
        }

        const image = path.join(temp, "image")
        for (const [target, inRepo] of runtimeFiles()) {
          const from = path.join(inBuild(buildStage.instructions.find((i) => i.keyword === "WORKDIR")!.args), inRepo)
          expect(fs.existsSync(from), `${target} <- ${inRepo} after the build stage`).toBe(true)
          fs.mkdirSync(path.dirname(path.join(image, target)), { recursive: true })
          fs.copyFileSync(from, path.join(image, target))
        }
        const entrypoint = JSON.parse(runtimeStage.instructions.find((i) => i.keyword === "ENTRYPOINT")!.args) as Array<
          string
        >
        const [command, script] = entrypoint
        expect(command).toBe("node")
        const imageScript = path.join(image, script)
        const help = yield* exec(process.execPath, [imageScript, "serve", "--help"], { cwd: image, env })
        expect(help.code, help.stderr).toBe(0)
        expect(help.stdout).toContain("VPN_GATEWAY")
        // `serve` (the CMD) without settings: the one-line usage error, from the image's files alone
        const cmd = JSON.parse(runtimeStage.instructions.find((i) => i.keyword === "CMD")!.args) as Array<string>
        const serve = yield* exec(process.execPath, [imageScript, ...cmd], { cwd: image, env })
        expect(serve.code).toBe(2)
        expect(serve.stderr).toMatch(/^natpmp-bridge: VPN_GATEWAY: required/)
        const natpmp = yield* exec(process.execPath, [path.join(image, "app/dist/bin/natpmp.js"), "--help"], {
          cwd: image,
          env
        })
        expect(natpmp.code, natpmp.stderr).toBe(0)
      }),
    400_000
  )
})
