/**
 * Helpers of the benchmark scripts: child processes run with vite-node (TypeScript, packages resolved to their
 * built dist) or bundled, speaking the `READY` and `REPLY` line protocol (the IPC children and the statistics are in
 * bench/lib/Processes.ts, the `BENCH_RESULT` line in bench/lib/BenchResult.ts).
 */
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import * as Readline from "node:readline"
import { bundle, root, viteNode as viteNodeEntry } from "../lib/Processes.js"

/** The argv that runs a TypeScript file of the repository with vite-node. */
export const viteNode = (file: string, args: ReadonlyArray<string> = []): Array<string> => [
  process.execPath,
  viteNodeEntry,
  Path.join(root, file),
  ...args
]

/**
 * The argv that runs a TypeScript file of bench/ bundled for plain node, as the bins ship (esbuild, the packages'
 * built dist): what a server under measurement runs as. vite-node's module runner costs a hot path measurably more.
 */
export const bundled = async (file: string, args: ReadonlyArray<string> = []): Promise<Array<string>> => [
  process.execPath,
  await bundle(file),
  ...args
]

/**
 * A child process speaking the `READY` / `REPLY` line protocol on its standard error (its standard output, e.g. the
 * bridge's log, goes to /dev/null: reading it would cost the measuring process CPU).
 */
export interface Child {
  readonly pid: number
  readonly ready: any
  /** Sends a command line, resolves with the JSON of the next `REPLY` line. */
  readonly command: (line: string) => Promise<any>
  readonly exited: Promise<number | null>
  /** Closes its standard input (it then exits), kills it if it has not exited after `wait` ms. */
  readonly stop: (wait?: number) => Promise<void>
}

/**
 * Starts `argv` (e.g. `ip netns exec NS node …`) with `env` added to this process's environment and waits for its
 * `READY` line (rejects if it exits first).
 */
export const start = (argv: ReadonlyArray<string>, env: Record<string, string> = {}): Promise<Child> =>
  new Promise((resolve, reject) => {
    const child = ChildProcess.spawn(argv[0], argv.slice(1), {
      env: { ...process.env, ...env },
      stdio: ["pipe", "ignore", "pipe"]
    })
    let other = ""
    const replies: Array<(value: any) => void> = []
    const exited = new Promise<number | null>((resolveExit) => child.on("exit", (code) => resolveExit(code)))
    let ready = false
    Readline.createInterface({ input: child.stderr }).on("line", (line) => {
      if (line.startsWith("READY ")) {
        ready = true
        resolve({
          pid: child.pid!,
          ready: JSON.parse(line.slice(6)),
          command: (text) =>
            new Promise((resolveReply) => {
              replies.push(resolveReply)
              child.stdin.write(`${text}\n`)
            }),
          exited,
          stop: async (wait = 5000) => {
            child.stdin.end()
            const timer = setTimeout(() => child.kill("SIGKILL"), wait)
            await exited
            clearTimeout(timer)
          }
        })
      } else if (line.startsWith("REPLY ")) {
        replies.shift()?.(JSON.parse(line.slice(6)))
      } else {
        other = `${other}${line}\n`.slice(-8192)
      }
    })
    child.stdin.on("error", () => {})
    void exited.then((code) => {
      if (!ready) reject(new Error(`${argv.join(" ")} exited with ${code} before it was ready:\n${other}`))
    })
  })

/** Runs `argv` to completion and resolves with the JSON of its `RESULT` line. */
export const runForResult = async (argv: ReadonlyArray<string>): Promise<any> => {
  const child = ChildProcess.spawn(argv[0], argv.slice(1), { stdio: ["ignore", "pipe", "pipe"] })
  let stdout = ""
  let stderr = ""
  child.stdout.setEncoding("utf8").on("data", (chunk: string) => stdout += chunk)
  child.stderr.setEncoding("utf8").on("data", (chunk: string) => stderr += chunk)
  const code = await new Promise<number | null>((resolve) => child.on("exit", resolve))
  const line = stdout.split("\n").find((text) => text.startsWith("RESULT "))
  if (line === undefined) throw new Error(`${argv.join(" ")} exited with ${code} without a result:\n${stderr}`)
  return JSON.parse(line.slice(7))
}

/** Rounds to `digits` decimals. */
export const round = (value: number, digits = 3): number => Number(value.toFixed(digits))
