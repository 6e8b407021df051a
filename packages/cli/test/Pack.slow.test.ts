/**
 * Slow: the three packages as npm publishes them. `npm pack` each package, install the three tarballs into an empty
 * folder (npm fetches effect and the other dependencies from the registry) and use them from there: both bins,
 * one real `natpmp address` against a NatPmpGatewaySimulator on loopback, and the libraries' entry points.
 *
 * Needs the npm registry: without it the test is skipped, except when CI=true (then it fails).
 * Prints the pack sizes and the installed size.
 */
import { describe, expect, it } from "@effect/vitest"
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import { execFile, execFileSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"

const root = path.join(__dirname, "..", "..", "..")
const npm = process.platform === "win32" ? "npm.cmd" : "npm"

const registryReachable = (() => {
  try {
    execFileSync(npm, ["ping", "--no-audit", "--no-fund"], { stdio: "ignore", timeout: 20_000 })
    return true
  } catch {
    return false
  }
})()
const skip = !registryReachable && process.env.CI !== "true"
if (skip) console.warn("package install test skipped: the npm registry cannot be reached")

interface Run {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** Runs a command to completion without blocking the event loop (the simulator answers meanwhile). */
const exec = (file: string, args: ReadonlyArray<string>, cwd: string, timeout = 240_000) =>
  Effect.async<Run>((resume) => {
    execFile(
      file,
      [...args],
      { cwd, timeout, maxBuffer: 64 * 1024 * 1024, encoding: "utf8" },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === "number" ? error.code : 1
        resume(Effect.succeed({ code, stdout, stderr }))
      }
    )
  })

const expectOk = (run: Run, what: string) => expect(run.code, `${what}: ${run.stderr}`).toBe(0)

/** Bytes of a directory tree (files only, as `du --apparent-size` counts them). */
const treeSize = (dir: string): number =>
  fs.readdirSync(dir, { withFileTypes: true }).reduce((total, entry) => {
    const file = path.join(dir, entry.name)
    if (entry.isDirectory()) return total + treeSize(file)
    if (entry.isFile()) return total + fs.statSync(file).size
    return total
  }, 0)

interface Packed {
  readonly name: string
  readonly filename: string
  readonly size: number
  readonly unpackedSize: number
  readonly files: ReadonlyArray<{ readonly path: string }>
}

const kB = (bytes: number) => `${(bytes / 1024).toFixed(1)} kB`

describe("packages as published [slow]", () => {
  it.scopedLive.skipIf(skip)(
    "npm pack, install the three tarballs in an empty folder, run both bins and import the libraries",
    () =>
      Effect.gen(function*() {
        const temp = yield* Effect.acquireRelease(
          Effect.sync(() => fs.mkdtempSync(path.join(os.tmpdir(), "natpmp-bridge-pack-"))),
          (dir) => Effect.sync(() => fs.rmSync(dir, { recursive: true, force: true }))
        )
        // the libraries' dist (the cli's bundles are built by the test setup)
        expectOk(
          yield* exec(process.execPath, [
            path.join(root, "node_modules", "typescript", "bin", "tsc"),
            "-b",
            "packages/server"
          ], root),
          "tsc -b"
        )

        const packed: Record<string, Packed> = {}
        for (const pkg of ["core", "server", "cli"]) {
          const run = yield* exec(
            npm,
            ["pack", "--json", "--ignore-scripts", "--pack-destination", temp],
            path.join(root, "packages", pkg)
          )
          expectOk(run, `npm pack ${pkg}`)
          packed[pkg] = (JSON.parse(run.stdout) as Array<Packed>)[0]
        }
        const files = (pkg: string) => packed[pkg].files.map((file) => file.path)
        for (const pkg of ["core", "server"]) {
          expect(files(pkg)).toEqual(expect.arrayContaining([
            "LICENSE",
            "README.md",
            "package.json",
            "dist/index.js",
            "dist/index.d.ts",
            "dist/testing/index.js",
            "dist/testing/index.d.ts"
          ]))
          expect(files(pkg).filter((file) => file.startsWith("test/") || file.includes("tsbuildinfo"))).toEqual([])
        }
        expect([...files("cli")].sort()).toStrictEqual([
          "LICENSE",
          "README.md",
          "dist/bin/natpmp-bridge.cjs",
          "dist/bin/natpmp-bridge.js",
          "dist/bin/natpmp.cjs",
          "dist/bin/natpmp.js",
          "package.json"
        ])

        const app = path.join(temp, "app")
        fs.mkdirSync(app)
        fs.writeFileSync(path.join(app, "package.json"), JSON.stringify({ name: "app", private: true, type: "module" }))
        const install = yield* exec(
          npm,
          ["install", "--no-audit", "--no-fund", ...Object.values(packed).map((p) => path.join(temp, p.filename))],
          app
        )
        expectOk(install, "npm install")
        const bin = (name: string) => path.join(app, "node_modules", ".bin", name)

        const natpmpHelp = yield* exec(bin("natpmp"), ["--help"], app)
        expectOk(natpmpHelp, "natpmp --help")
        expect(natpmpHelp.stdout).toMatch(/map/)
        const bridgeHelp = yield* exec(bin("natpmp-bridge"), ["--help"], app)
        expectOk(bridgeHelp, "natpmp-bridge --help")
        expect(bridgeHelp.stdout).toMatch(/serve/)

        const gateway = yield* NatPmpGatewaySimulator.make({
          publicAddress: "203.0.113.7",
          announceTo: { address: "127.0.0.1", port: 9 }
        })
        const address = yield* exec(
          bin("natpmp"),
          ["address", "--json", "-g", "127.0.0.1", "--port", String(gateway.port)],
          app,
          30_000
        )
        expectOk(address, "natpmp address")
        expect(JSON.parse(address.stdout)).toMatchObject({ publicAddress: "203.0.113.7" })

        // the libraries' entry points resolve through their exports, and their types exist
        const imports = yield* exec(process.execPath, [
          "--input-type=module",
          "-e",
          [
            "const core = await import('@natpmp-bridge/core')",
            "const testing = await import('@natpmp-bridge/core/testing')",
            "const server = await import('@natpmp-bridge/server')",
            "const harness = await import('@natpmp-bridge/server/testing')",
            "console.log(JSON.stringify([typeof core.NatPmpClient.make, typeof testing.RouterOsSimulator.make,",
            "  typeof server.Bridge.layer, typeof harness.BridgeHarness.make]))"
          ].join("\n")
        ], app)
        expectOk(imports, "imports")
        expect(JSON.parse(imports.stdout)).toStrictEqual(["function", "function", "function", "function"])
        for (const pkg of ["core", "server"]) {
          const manifest = JSON.parse(
            fs.readFileSync(path.join(app, "node_modules", "@natpmp-bridge", pkg, "package.json"), "utf8")
          ) as { exports: Record<string, { types?: string }> }
          for (const entry of Object.values(manifest.exports)) {
            if (typeof entry === "object") {
              expect(fs.existsSync(path.join(app, "node_modules", "@natpmp-bridge", pkg, entry.types!))).toBe(true)
            }
          }
        }

        const cliOnly = treeSize(path.join(app, "node_modules", "@natpmp-bridge", "cli"))
        const installed = treeSize(path.join(app, "node_modules"))
        console.log(
          [
            ...Object.entries(packed).map(([pkg, p]) =>
              `npm pack ${pkg}: ${kB(p.size)} packed, ${kB(p.unpackedSize)} unpacked, ${p.files.length} files`
            ),
            `installed (three packages and their dependencies): ${kB(installed)} in node_modules`,
            `@natpmp-bridge/cli alone (no dependency): ${kB(cliOnly)}`
          ].join("\n")
        )
      }),
    300_000
  )
})
