/**
 * Reads the repository's Dockerfile and .dockerignore the way Docker does, for tests that check them against the
 * built tree without a Docker engine.
 */
import * as fs from "node:fs"
import * as path from "node:path"

export const root = path.join(__dirname, "..", "..", "..")
export const read = (file: string) => fs.readFileSync(path.join(root, file), "utf8")

export interface Instruction {
  readonly keyword: string
  readonly args: string
}

export interface Stage {
  readonly name: string | undefined
  readonly from: string
  readonly instructions: Array<Instruction>
}

/** Instructions grouped by stage; comments dropped, `\` continuations joined. */
export const parseDockerfile = (text: string): Array<Stage> => {
  const logical: Array<string> = []
  let current = ""
  for (const raw of text.split("\n")) {
    const line = raw.trim()
    if (current === "" && (line === "" || line.startsWith("#"))) continue
    if (line.startsWith("#")) continue
    if (line.endsWith("\\")) {
      current += line.slice(0, -1) + " "
      continue
    }
    logical.push(current + line)
    current = ""
  }
  const stages: Array<Stage> = []
  for (const line of logical) {
    const [, keyword, args] = /^(\S+)\s*(.*)$/.exec(line)!
    const instruction = { keyword: keyword.toUpperCase(), args: args.trim() }
    if (instruction.keyword === "FROM") {
      const words = instruction.args.split(/\s+/).filter((word) => !word.startsWith("--"))
      stages.push({ from: words[0], name: words[2], instructions: [] })
    } else if (stages.length > 0) {
      stages.at(-1)!.instructions.push(instruction)
    }
  }
  return stages
}

/** `COPY [--from=x] src... dest`: flags, sources, destination. */
export const parseCopy = (args: string) => {
  const words = args.split(/\s+/)
  const flags = words.filter((word) => word.startsWith("--"))
  const paths = words.filter((word) => !word.startsWith("--"))
  const from = flags.find((flag) => flag.startsWith("--from="))?.slice("--from=".length)
  return { from, sources: paths.slice(0, -1), dest: paths.at(-1)! }
}

/** Docker's .dockerignore rules (Go filepath.Match with `**`; a later `!pattern` re-includes). */
export const dockerIgnored = (patterns: ReadonlyArray<string>) => (file: string): boolean => {
  const toRegExp = (pattern: string) =>
    new RegExp(
      "^" + pattern.replace(/^\/+/, "").replace(/\/+$/, "").split("/").map((part) =>
        part === "**"
          ? ".*"
          : part.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*").replace(/\?/g, "[^/]")
      ).join("/").replace(/\.\*\//g, "(?:.*/)?") + "$"
    )
  const prefixes = file.split("/").map((_, i, parts) => parts.slice(0, i + 1).join("/"))
  let ignored = false
  for (const pattern of patterns) {
    const negated = pattern.startsWith("!")
    const regExp = toRegExp(negated ? pattern.slice(1) : pattern)
    if (prefixes.some((prefix) => regExp.test(prefix))) ignored = !negated
  }
  return ignored
}

export const dockerfile = parseDockerfile(read("Dockerfile"))
export const ignorePatterns = read(".dockerignore").split("\n").map((line) => line.trim())
  .filter((line) => line !== "" && !line.startsWith("#"))
export const isIgnored = dockerIgnored(ignorePatterns)

export const buildStage = dockerfile.find((stage) => stage.name === "build")!
export const runtimeStage = dockerfile.at(-1)!
export const workdir = (stage: Stage) => stage.instructions.find((i) => i.keyword === "WORKDIR")?.args ?? "/"

/** Where a (possibly relative) destination lands in the image. */
export const resolveDest = (stage: Stage, dest: string) => path.posix.resolve(workdir(stage), dest)

/** The runtime image's files copied from the build stage: image path -> repository path. */
export const runtimeFiles = (): Map<string, string> => {
  const files = new Map<string, string>()
  for (const instruction of runtimeStage.instructions) {
    if (instruction.keyword !== "COPY") continue
    const copy = parseCopy(instruction.args)
    const dest = resolveDest(runtimeStage, copy.dest)
    for (const source of copy.sources) {
      const inRepo = path.posix.relative(workdir(buildStage), source)
      const target = copy.dest.endsWith("/") ? path.posix.join(dest, path.posix.basename(source)) : dest
      files.set(target, inRepo)
    }
  }
  return files
}
