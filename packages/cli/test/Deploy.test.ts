/**
 * The deployment files at the repository root agree with the code: the Dockerfile copies and runs only paths that
 * exist after the build (no Docker engine needed), and the image's bins run from those files alone; the systemd
 * unit starts the real bin and the example environment file names only real settings with valid values.
 */
import { describe, expect, it } from "@effect/vitest"
import { BridgeConfig } from "@natpmp-bridge/server"
import * as Either from "effect/Either"
import { execFileSync, spawnSync } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { buildStage, dockerfile, isIgnored, parseCopy, read, root, runtimeFiles, runtimeStage } from "./Dockerfile.js"

// -----------------------------------------------------------------------------
// Dockerfile
// -----------------------------------------------------------------------------

describe("Dockerfile", () => {
  it("builds in a Node 20 stage named build and ships a Node 20 runtime stage", () => {
    expect(dockerfile.length).toBe(2)
    expect(buildStage).toBeDefined()
    const nodeImage = /^ARG NODE_IMAGE=(node:20-(alpine|slim)\S*)$/m.exec(read("Dockerfile"))
    expect(nodeImage).not.toBeNull()
    for (const stage of dockerfile) expect(stage.from).toBe("${NODE_IMAGE}")
  })

  it("sets the runtime's node options before it writes the code caches (V8 rejects a cache made under other flags)", () => {
    const instructions = runtimeStage.instructions
    const cacheWrite = instructions.findIndex((instruction) =>
      instruction.keyword === "RUN" && instruction.args.includes("NATPMP_CLI_WRITE_CODE_CACHE=1")
    )
    const options = instructions.findIndex((instruction) =>
      instruction.keyword === "ENV" && instruction.args.startsWith("NODE_OPTIONS=")
    )
    expect(cacheWrite).toBeGreaterThan(-1)
    if (options !== -1) expect(options).toBeLessThan(cacheWrite)
  })

  it("copies into the build stage only files that exist and that .dockerignore lets through", () => {
    const copied: Array<string> = []
    for (const instruction of buildStage.instructions) {
      if (instruction.keyword !== "COPY") continue
      const copy = parseCopy(instruction.args)
      expect(copy.from).toBeUndefined()
      for (const source of copy.sources) {
        expect(fs.existsSync(path.join(root, source)), source).toBe(true)
        expect(isIgnored(source), `${source} is excluded by .dockerignore`).toBe(false)
        copied.push(source)
      }
    }
    // what `npm ci` and the bundle need
    for (const needed of ["package.json", "package-lock.json", "packages/cli/build.mjs", "packages/core/src"]) {
      expect(copied).toContain(needed)
    }
    for (const pkg of ["core", "server", "cli"]) expect(copied).toContain(`packages/${pkg}/package.json`)
    // and the context leaves out local builds and dependencies
    for (const left of ["node_modules", "packages/cli/dist/bin/natpmp.js", "packages/core/test/x.test.ts", ".git"]) {
      expect(isIgnored(left), left).toBe(true)
    }
  })

  it("runs build.mjs from a copied path in the build stage", () => {
    const runs = buildStage.instructions.filter((i) => i.keyword === "RUN").map((i) => i.args)
    expect(runs.some((run) => run.startsWith("npm ci"))).toBe(true)
    const build = runs.find((run) => run.includes("build.mjs"))
    expect(build).toBe("node packages/cli/build.mjs")
  })

  it("copies from the build stage only files of the built tree, and the runtime runs only those", () => {
    const files = runtimeFiles()
    expect(files.size).toBeGreaterThan(0)
    for (const [target, inRepo] of files) {
      expect(fs.existsSync(path.join(root, inRepo)), `${target} <- ${inRepo}`).toBe(true)
    }
    // every /app path the runtime stage runs or links is one of the copied files
    const runtimeText = runtimeStage.instructions
      .filter((i) => ["RUN", "ENTRYPOINT", "CMD"].includes(i.keyword))
      .map((i) => i.args)
      .join("\n")
    const used = [...runtimeText.matchAll(/\/app\/[\w./-]+/g)].map((match) => match[0])
    expect(used.length).toBeGreaterThan(0)
    for (const file of used) expect([...files.keys()], file).toContain(file)
    // the bins' loaders need the package.json that makes them ES modules
    expect(files.get("/app/package.json")).toBe("packages/cli/package.json")
    const pkg = JSON.parse(read("packages/cli/package.json")) as { type: string; bin: Record<string, string> }
    expect(pkg.type).toBe("module")
    for (const bin of Object.values(pkg.bin)) {
      expect([...files.keys()]).toContain(path.posix.join("/app", bin))
      expect([...files.keys()]).toContain(path.posix.join("/app", bin.replace(/\.js$/, ".cjs")))
    }
  })

  it("runs natpmp-bridge serve as a non-root user and exposes UDP 5351", () => {
    const last = (keyword: string) => runtimeStage.instructions.filter((i) => i.keyword === keyword).at(-1)?.args
    expect(JSON.parse(last("ENTRYPOINT")!)).toStrictEqual(["node", "/app/dist/bin/natpmp-bridge.js"])
    expect(JSON.parse(last("CMD")!)).toStrictEqual(["serve"])
    expect(last("USER")).toBeDefined()
    expect(["root", "0"]).not.toContain(last("USER"))
    expect(last("EXPOSE")).toBe("5351/udp")
  })

  it("the runtime files alone run both bins (the bundles need no node_modules)", () => {
    const image = fs.mkdtempSync(path.join(os.tmpdir(), "natpmp-bridge-image-"))
    try {
      for (const [target, inRepo] of runtimeFiles()) {
        const file = path.join(image, target)
        fs.mkdirSync(path.dirname(file), { recursive: true })
        fs.copyFileSync(path.join(root, inRepo), file)
      }
      const env = { ...process.env, NATPMP_CLI_WRITE_CODE_CACHE: "1", NODE_PATH: "" }
      const bridge = execFileSync(process.execPath, [path.join(image, "app/dist/bin/natpmp-bridge.js"), "--help"], {
        env,
        encoding: "utf8",
        timeout: 20_000
      })
      expect(bridge).toMatch(/serve/)
      const natpmp = execFileSync(process.execPath, [path.join(image, "app/dist/bin/natpmp.js"), "--help"], {
        env,
        encoding: "utf8",
        timeout: 20_000
      })
      expect(natpmp).toMatch(/map/)
      // the RUN step's code caches
      expect(fs.existsSync(path.join(image, "app/dist/bin/natpmp-bridge.cjs.cache"))).toBe(true)
      expect(fs.existsSync(path.join(image, "node_modules"))).toBe(false)
    } finally {
      fs.rmSync(image, { recursive: true, force: true })
    }
  }, 60_000)
})

// -----------------------------------------------------------------------------
// systemd unit and environment file
// -----------------------------------------------------------------------------

/** `[Section]` -> key -> values (a key may repeat). */
const parseUnit = (text: string): Map<string, Map<string, Array<string>>> => {
  const sections = new Map<string, Map<string, Array<string>>>()
  let section = new Map<string, Array<string>>()
  for (const raw of text.split("\n")) {
    const line = raw.trim()
    if (line === "" || line.startsWith("#") || line.startsWith(";")) continue
    const header = /^\[(.+)\]$/.exec(line)
    if (header !== null) {
      section = new Map()
      sections.set(header[1], section)
      continue
    }
    const at = line.indexOf("=")
    const key = line.slice(0, at).trim()
    section.set(key, [...(section.get(key) ?? []), line.slice(at + 1).trim()])
  }
  return sections
}

/** `VAR=value` lines of an environment file; `#VAR=value` lines are documented defaults. */
const parseEnvFile = (text: string) =>
  text.split("\n").flatMap((line) => {
    const match = /^(#)?([A-Z][A-Z0-9_]*)=(.*)$/.exec(line.trim())
    return match === null ? [] : [{ commented: match[1] !== undefined, name: match[2], value: match[3] }]
  })

const settingByEnv = new Map<string, BridgeConfig.Setting>(
  Object.values(BridgeConfig.settings).map((setting): [string, BridgeConfig.Setting] => [setting.env, setting])
)

describe("systemd unit", () => {
  const unit = parseUnit(read("deploy/natpmp-bridge.service"))
  const service = unit.get("Service")!
  const one = (key: string) => {
    expect(service.get(key), key).toHaveLength(1)
    return service.get(key)![0]
  }

  it("starts the natpmp-bridge bin's serve command with the environment file", () => {
    const [bin, command, ...flags] = one("ExecStart").split(/\s+/)
    const pkg = JSON.parse(read("packages/cli/package.json")) as { bin: Record<string, string> }
    expect(path.isAbsolute(bin)).toBe(true)
    expect(Object.keys(pkg.bin)).toContain(path.basename(bin))
    expect(path.basename(bin)).toBe("natpmp-bridge")
    expect(command).toBe("serve")
    // flags, if any, are settings' flags (the environment file is the place for settings)
    const knownFlags = Object.values(BridgeConfig.settings).map((setting) => `--${setting.flag}`)
    for (const flag of flags.filter((word) => word.startsWith("--"))) expect(knownFlags).toContain(flag.split("=")[0])
    expect(one("EnvironmentFile")).toBe("/etc/natpmp-bridge.env")
    expect(unit.get("Install")?.get("WantedBy")).toStrictEqual(["multi-user.target"])
  })

  it("restarts on failure and runs unprivileged and confined", () => {
    expect(one("Restart")).toBe("on-failure")
    expect(one("DynamicUser")).toBe("yes")
    expect(one("CapabilityBoundingSet")).toBe("")
    for (const key of ["NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictNamespaces", "RestrictSUIDSGID"]) {
      expect(one(key), key).toBe("yes")
    }
    expect(one("ProtectSystem")).toBe("strict")
    expect(one("RestrictAddressFamilies").split(/\s+/).sort()).toStrictEqual(["AF_INET", "AF_INET6", "AF_UNIX"])
    // V8's JIT needs writable and executable memory
    expect(service.has("MemoryDenyWriteExecute")).toBe(false)
    // the graceful shutdown (SHUTDOWN_TIMEOUT) fits in the stop timeout
    const stop = Number(/^(\d+)s$/.exec(one("TimeoutStopSec"))?.[1])
    expect(stop).toBeGreaterThan(Number(BridgeConfig.settings.shutdownTimeout.default!.replace("s", "")))
    expect(one("KillSignal")).toBe("SIGTERM")
  })
})

/** systemd's own checks of the unit, where systemd-analyze exists (Debian's systemd package); required under CI. */
const systemdAnalyze = ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].find((file) => fs.existsSync(file))
const skipSystemd = systemdAnalyze === undefined && process.env.CI !== "true"
if (skipSystemd) {
  console.warn("systemd-analyze checks of the unit skipped: needs systemd-analyze (Debian package systemd)")
}

describe.skipIf(skipSystemd)(`systemd-analyze${skipSystemd ? " (skipped: needs systemd-analyze)" : ""}`, () => {
  /** The unit with an executable that exists here in place of /usr/local/bin/natpmp-bridge (verify checks it). */
  const unitCopy = () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "natpmp-bridge-unit-"))
    const file = path.join(dir, "natpmp-bridge.service")
    const text = read("deploy/natpmp-bridge.service")
    expect(text).toContain("ExecStart=/usr/local/bin/natpmp-bridge serve")
    fs.writeFileSync(file, text.replace("ExecStart=/usr/local/bin/natpmp-bridge", `ExecStart=${process.execPath}`))
    return { dir, file }
  }

  it("verify reports nothing: every key is known and in its section", () => {
    expect(systemdAnalyze, "systemd-analyze is required under CI").toBeDefined()
    const { dir, file } = unitCopy()
    try {
      const result = spawnSync(systemdAnalyze!, ["verify", file], { encoding: "utf8", timeout: 30_000 })
      expect(result.status, result.stderr).toBe(0)
      expect(result.stderr.trim()).toBe("")
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it("security rates the service's exposure as OK (at most 2.0 of 10)", () => {
    const { dir, file } = unitCopy()
    try {
      const result = spawnSync(systemdAnalyze!, ["security", "--offline=true", "--no-pager", file], {
        encoding: "utf8",
        timeout: 30_000
      })
      const exposure = /Overall exposure level for \S+: (\d+(?:\.\d+)?)/.exec(result.stdout)
      expect(exposure, result.stdout + result.stderr).not.toBeNull()
      expect(Number(exposure![1])).toBeLessThanOrEqual(2)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe("example environment file", () => {
  const entries = parseEnvFile(read("deploy/natpmp-bridge.env.example"))

  it("names only settings of the code, each once", () => {
    expect(entries.length).toBeGreaterThan(0)
    for (const entry of entries) expect([...settingByEnv.keys()], entry.name).toContain(entry.name)
    expect(new Set(entries.map((entry) => entry.name)).size).toBe(entries.length)
  })

  it("sets every required setting, and the values it sets make a valid configuration", () => {
    const set = entries.filter((entry) => !entry.commented)
    for (const setting of Object.values(BridgeConfig.settings).filter((setting) => setting.required)) {
      expect(set.map((entry) => entry.name), setting.env).toContain(setting.env)
    }
    const raw: Record<string, string> = {}
    for (const [name, setting] of Object.entries(BridgeConfig.settings)) {
      const entry = set.find((entry) => entry.name === setting.env)
      if (entry !== undefined) raw[name] = entry.value
    }
    const config = BridgeConfig.fromStrings(raw)
    expect(Either.isRight(config), Either.isLeft(config) ? config.left.message : "").toBe(true)
  })

  it("shows the real default of every commented setting that has one, and only valid values", () => {
    for (const entry of entries.filter((entry) => entry.commented && entry.value !== "")) {
      const setting = settingByEnv.get(entry.name)!
      if (setting.default !== undefined) expect(entry.value, entry.name).toBe(setting.default)
      expect(Either.isRight(setting.parse(entry.value)), `${entry.name}=${entry.value}`).toBe(true)
    }
  })
})
