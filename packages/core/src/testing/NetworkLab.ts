/**
 * Network namespaces for interop tests against NAT-PMP software this project did not write (miniupnpd, natpmpc).
 *
 * Everything here runs as root and stays inside namespaces it creates: {@link namespace} makes one with a unique
 * name (prefix, pid and a random suffix, so parallel runs never collide) and deletes it when its scope closes,
 * whatever the outcome; {@link vethPair} links two namespaces (the pair dies with them); {@link spawn} starts a long-running
 * process inside a namespace, tracks its pid and stops only that process on release. {@link gatewayLab} builds the
 * topology of a NAT-PMP gateway with a LAN client behind it, {@link startMiniUpnpd} runs miniupnpd there as a real
 * RFC 6886 gateway and waits until it answers.
 *
 * ```
 *   ns cli                    ns vpn (miniupnpd)                     ns inet
 *   eth0 10.a.b.2/24  <--->  vpnlan 10.a.b.1/24 | ext0 10.a.c.1/24  <--->  eth0 10.a.c.2/24
 *   default via 10.a.b.1
 * ```
 *
 * {@link doubleNatLab} puts a router between that gateway and a LAN (the bridge's topology: LAN client, router, VPN
 * gateway, internet). {@link echoServer} and {@link sendAndReceive} carry test traffic across them.
 *
 * Traffic goes only to these namespaces' addresses. Timers use the live clock, so the helpers also work inside
 * tests that run on the `TestClock`.
 *
 * @since 0.1.0
 */
import * as Clock from "effect/Clock"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import type * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Os from "node:os"
import * as Path from "node:path"
import * as NatPmpMessage from "../NatPmpMessage.js"

// -----------------------------------------------------------------------------
// errors
// -----------------------------------------------------------------------------

const quote = (arg: string): string => /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replaceAll("'", `'\\''`)}'`

/** The shell form of a command, for messages. */
export const formatCommand = (argv: ReadonlyArray<string>): string => argv.map(quote).join(" ")

const firstLines = (text: string, count = 3): string =>
  text.split("\n").map((line) => line.trim()).filter((line) => line.length > 0).slice(0, count).join(" | ")

/** A command did not start, exited with a non-zero code, was killed, or ran past its timeout. */
export class CommandError extends Data.TaggedError("CommandError")<{
  readonly command: ReadonlyArray<string>
  readonly exitCode: number | null
  readonly signal: string | null
  readonly timedOut: boolean
  readonly stdout: string
  readonly stderr: string
  readonly cause?: unknown
}> {
  get message(): string {
    const how = this.timedOut
      ? "ran past its timeout"
      : this.cause !== undefined
      ? `could not start (${this.cause instanceof Error ? this.cause.message : String(this.cause)})`
      : this.signal !== null
      ? `was killed by ${this.signal}`
      : `exited with code ${this.exitCode}`
    const detail = firstLines(this.stderr) || firstLines(this.stdout)
    return `\`${formatCommand(this.command)}\` ${how}${detail ? `: ${detail}` : ""}`
  }
}

/** A lab step failed for a reason other than a command's exit status (a process died, a peer never answered). */
export class NetworkLabError extends Data.TaggedError("NetworkLabError")<{
  readonly reason: string
  readonly cause?: unknown
}> {
  get message(): string {
    const cause = this.cause === undefined
      ? ""
      : `: ${this.cause instanceof Error ? this.cause.message : String(this.cause)}`
    return `network lab: ${this.reason}${cause}`
  }
}

/** The lab cannot run here: not root, or tools missing. */
export class MissingPrerequisitesError extends Data.TaggedError("MissingPrerequisitesError")<{
  readonly missing: ReadonlyArray<string>
}> {
  get message(): string {
    return `the network lab needs root and its tools; missing: ${this.missing.join(", ")}`
  }
}

// -----------------------------------------------------------------------------
// prerequisites
// -----------------------------------------------------------------------------

/** The tools the miniupnpd lab uses, with the Debian package that ships each. */
export const defaultTools: ReadonlyArray<{ readonly binary: string; readonly aptPackage: string }> = [
  { binary: "ip", aptPackage: "iproute2" },
  { binary: "nft", aptPackage: "nftables" },
  { binary: "miniupnpd", aptPackage: "miniupnpd-nftables" },
  { binary: "natpmpc", aptPackage: "natpmpc" },
  { binary: "mount", aptPackage: "mount" }
]

/** The full path of an executable on `PATH` (plus the sbin directories, which a non-root `PATH` may lack). */
export const findExecutable = (name: string): string | undefined => {
  const directories = [...(process.env.PATH ?? "").split(Path.delimiter), "/usr/local/sbin", "/usr/sbin", "/sbin"]
  for (const directory of directories) {
    if (directory === "") continue
    const candidate = Path.join(directory, name)
    try {
      Fs.accessSync(candidate, Fs.constants.X_OK)
      if (Fs.statSync(candidate).isFile()) return candidate
    } catch {
      // not here
    }
  }
  return undefined
}

/**
 * What the lab lacks on this machine, one readable entry each (`"root (running as uid 1000)"`,
 * `"miniupnpd (apt package miniupnpd-nftables)"`); empty when it can run. Synchronous, so a test file can decide
 * at collection time whether to skip.
 */
export const missingPrerequisites = (
  tools: ReadonlyArray<{ readonly binary: string; readonly aptPackage: string }> = defaultTools
): Effect.Effect<ReadonlyArray<string>> =>
  Effect.sync(() => {
    const missing: Array<string> = []
    const uid = process.getuid?.()
    if (uid !== 0) missing.push(`root (running as uid ${uid ?? "unknown"})`)
    for (const tool of tools) {
      if (findExecutable(tool.binary) === undefined) missing.push(`${tool.binary} (apt package ${tool.aptPackage})`)
    }
    return missing
  })

/** Fails with {@link MissingPrerequisitesError} unless the lab can run here. */
export const requirePrerequisites = (
  tools?: ReadonlyArray<{ readonly binary: string; readonly aptPackage: string }>
): Effect.Effect<void, MissingPrerequisitesError> =>
  Effect.flatMap(
    missingPrerequisites(tools),
    (missing) => missing.length === 0 ? Effect.void : Effect.fail(new MissingPrerequisitesError({ missing }))
  )

// -----------------------------------------------------------------------------
// commands
// -----------------------------------------------------------------------------

const liveClock = Clock.make()

/** Runs `effect` on the live clock (the lab waits for real processes, also inside `TestClock` tests). */
const live = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> => Effect.withClock(effect, liveClock)

const outputLimit = 1 << 20

const append = (buffer: string, chunk: string, limit: number): string => {
  const next = buffer + chunk
  return next.length > limit ? next.slice(next.length - limit) : next
}

/** Where a command runs: a {@link Namespace}, a namespace's name, or the current namespace. */
export type Where = Namespace | string | undefined

const namespaceName = (where: Where): string | undefined => typeof where === "string" ? where : where?.name

/** The argv that runs `argv` inside a namespace (`ip netns exec`), or `argv` itself. */
export const inNamespace = (where: Where, argv: ReadonlyArray<string>): ReadonlyArray<string> => {
  const name = namespaceName(where)
  return name === undefined ? argv : ["ip", "netns", "exec", name, ...argv]
}

/** Options of {@link run}. */
export interface RunOptions {
  /** Run inside this namespace. */
  readonly namespace?: Where
  /** Written to the command's standard input. */
  readonly input?: string | undefined
  /** Killed (SIGKILL) and failed after this long (default 10 s). */
  readonly timeout?: Duration.DurationInput | undefined
}

/** What a command printed. */
export interface CommandOutput {
  readonly stdout: string
  readonly stderr: string
}

/**
 * Runs a command to completion and returns its output; fails with {@link CommandError} unless it exits with 0.
 * Interrupting the effect kills the command.
 */
export const run = (
  argv: ReadonlyArray<string>,
  options: RunOptions = {}
): Effect.Effect<CommandOutput, CommandError> =>
  Effect.async<CommandOutput, CommandError>((resume) => {
    const command = inNamespace(options.namespace, argv)
    const timeoutMillis = Duration.toMillis(Duration.decode(options.timeout ?? Duration.seconds(10)))
    let stdout = ""
    let stderr = ""
    let timedOut = false
    let done = false
    const finish = (effect: Effect.Effect<CommandOutput, CommandError>) => {
      if (done) return
      done = true
      clearTimeout(timer)
      resume(effect)
    }
    const child = ChildProcess.spawn(command[0], command.slice(1), {
      stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"]
    })
    const timer = setTimeout(() => {
      timedOut = true
      child.kill("SIGKILL")
    }, timeoutMillis)
    child.stdout!.setEncoding("utf8").on("data", (chunk: string) => stdout = append(stdout, chunk, outputLimit))
    child.stderr!.setEncoding("utf8").on("data", (chunk: string) => stderr = append(stderr, chunk, outputLimit))
    child.on("error", (cause) =>
      finish(
        Effect.fail(new CommandError({ command, exitCode: null, signal: null, timedOut, stdout, stderr, cause }))
      ))
    child.on("close", (exitCode, signal) =>
      finish(
        exitCode === 0 && !timedOut
          ? Effect.succeed({ stdout, stderr })
          : Effect.fail(new CommandError({ command, exitCode, signal, timedOut, stdout, stderr }))
      ))
    if (options.input !== undefined) {
      child.stdin!.on("error", () => {}) // the command may exit before reading all of it
      child.stdin!.end(options.input)
    }
    return Effect.sync(() => {
      done = true
      clearTimeout(timer)
      child.kill("SIGKILL")
    })
  })

// -----------------------------------------------------------------------------
// last resort: the process exits with lab resources still held
// -----------------------------------------------------------------------------

// Scopes release everything; but the process may end while a scope is still open: a test runner exits its worker
// after a hook timed out, or Ctrl-C / SIGTERM kills the run. While lab resources are held, an exit handler and
// SIGINT/SIGTERM/SIGHUP handlers kill the processes still tracked and delete the namespaces still held
// (synchronously: such handlers cannot wait), then let the signal take its course.
const leftovers = new Map<string, () => void>()
const exitSignals: ReadonlyArray<NodeJS.Signals> = ["SIGINT", "SIGTERM", "SIGHUP"]

const cleanUpLeftovers = (): void => {
  const cleanups = [...leftovers.values()]
  leftovers.clear()
  for (const cleanup of cleanups) cleanup()
}

const onExitSignal = (signal: NodeJS.Signals): void => {
  cleanUpLeftovers()
  uninstallHandlers()
  // Nobody else handles it: die of it as if no handler had been installed.
  if (process.listenerCount(signal) === 0) process.kill(process.pid, signal)
}

const installHandlers = (): void => {
  process.once("exit", cleanUpLeftovers)
  for (const signal of exitSignals) process.once(signal, onExitSignal)
}

const uninstallHandlers = (): void => {
  process.off("exit", cleanUpLeftovers)
  for (const signal of exitSignals) process.off(signal, onExitSignal)
}

const holdUntilExit = (key: string, cleanup: () => void): void => {
  if (leftovers.size === 0) installHandlers()
  leftovers.set(key, cleanup)
}

const released = (key: string): void => {
  if (leftovers.delete(key) && leftovers.size === 0) uninstallHandlers()
}

// -----------------------------------------------------------------------------
// namespaces and links
// -----------------------------------------------------------------------------

/** A network namespace made by {@link namespace}. */
export interface Namespace {
  readonly name: string
  /** {@link run} inside this namespace. */
  readonly run: (
    argv: ReadonlyArray<string>,
    options?: Omit<RunOptions, "namespace">
  ) => Effect.Effect<CommandOutput, CommandError>
}

/** A random hex suffix (6 characters) for names that must not collide with a parallel run's. */
export const uniqueSuffix = (): string => Crypto.randomBytes(3).toString("hex")

const namePattern = /^(.+)-(\d+)-[0-9a-f]{6}$/

const isAlive = (pid: number): boolean => {
  try {
    process.kill(pid, 0)
    return true
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM"
  }
}

/**
 * Deletes the namespaces named `<prefix>…-<pid>-<suffix>` (as {@link namespace} names them) whose creating process
 * no longer exists: what a run killed outright (SIGKILL) left behind. Processes still inside them are left alone.
 * Returns the names deleted.
 */
export const reapOrphanedNamespaces = (prefix: string): Effect.Effect<ReadonlyArray<string>> =>
  Effect.gen(function*() {
    const listing = yield* Effect.orElseSucceed(run(["ip", "netns", "list"]), () => ({ stdout: "", stderr: "" }))
    const orphans = listing.stdout.split("\n").map((line) => line.split(" ")[0]).filter((name) => {
      const match = namePattern.exec(name)
      return match !== null && match[1].startsWith(prefix) && !isAlive(Number(match[2]))
    })
    for (const name of orphans) {
      yield* run(["ip", "netns", "delete", name]).pipe(
        Effect.zipRight(Effect.logInfo(`deleted the orphaned network namespace ${name}`)),
        Effect.catchAll((error) =>
          Effect.logWarning(`could not delete the orphaned namespace ${name}: ${error.message}`)
        )
      )
    }
    return orphans
  })

/**
 * Creates a network namespace named `<prefix>-<pid>-<random suffix>` with its loopback up, and deletes it when the
 * scope closes (also on failure or interruption; a failed delete is logged), or at the latest when this process
 * exits. Processes started in it should be started after it, in the same scope, so they are stopped before it is
 * deleted.
 */
export const namespace = (prefix: string): Effect.Effect<Namespace, CommandError, Scope.Scope> =>
  Effect.gen(function*() {
    const ns = yield* Effect.acquireRelease(
      Effect.suspend(() => {
        const name = `${prefix}-${process.pid}-${uniqueSuffix()}`
        return run(["ip", "netns", "add", name]).pipe(
          Effect.zipRight(Effect.sync(() =>
            holdUntilExit(`namespace ${name}`, () => {
              ChildProcess.spawnSync("ip", ["netns", "delete", name], { stdio: "ignore" })
            })
          )),
          Effect.as({
            name,
            run: (argv: ReadonlyArray<string>, options?: Omit<RunOptions, "namespace">) =>
              run(argv, { ...options, namespace: name })
          })
        )
      }),
      (ns) =>
        run(["ip", "netns", "delete", ns.name]).pipe(
          Effect.zipRight(Effect.sync(() => released(`namespace ${ns.name}`))),
          Effect.catchAll((error) =>
            Effect.logWarning(`could not delete network namespace ${ns.name}: ${error.message}`)
          )
        )
    )
    yield* run(["ip", "-n", ns.name, "link", "set", "lo", "up"])
    return ns
  })

/** One end of a veth pair: its namespace, interface name and optional address (CIDR, e.g. `10.1.2.1/24`). */
export interface InterfaceSpec {
  readonly namespace: Namespace
  readonly name: string
  readonly address?: string | undefined
}

/** An interface made by {@link vethPair}. */
export interface Interface {
  readonly namespace: Namespace
  readonly name: string
  /** The address with its prefix length, e.g. `10.1.2.1/24`. */
  readonly cidr: string | undefined
  /** The address alone, e.g. `10.1.2.1`. */
  readonly address: string | undefined
}

const configureInterface = (spec: InterfaceSpec): Effect.Effect<Interface, CommandError> =>
  Effect.gen(function*() {
    if (spec.address !== undefined) {
      yield* spec.namespace.run(["ip", "addr", "add", spec.address, "dev", spec.name])
    }
    yield* spec.namespace.run(["ip", "link", "set", spec.name, "up"])
    return {
      namespace: spec.namespace,
      name: spec.name,
      cidr: spec.address,
      address: spec.address?.split("/")[0]
    }
  })

/**
 * Links two namespaces with a veth pair created directly inside them (nothing appears in the current namespace),
 * addresses both ends and brings them up. The pair is destroyed with either namespace.
 */
export const vethPair = (
  a: InterfaceSpec,
  b: InterfaceSpec
): Effect.Effect<readonly [Interface, Interface], CommandError> =>
  Effect.gen(function*() {
    yield* run([
      "ip",
      "link",
      "add",
      a.name,
      "netns",
      a.namespace.name,
      "type",
      "veth",
      "peer",
      "name",
      b.name,
      "netns",
      b.namespace.name
    ])
    return [yield* configureInterface(a), yield* configureInterface(b)] as const
  })

/** Adds a route in a namespace (`destination` is a CIDR or `default`). */
export const addRoute = (
  ns: Namespace,
  destination: string,
  via: string
): Effect.Effect<void, CommandError> => Effect.asVoid(ns.run(["ip", "route", "add", destination, "via", via]))

/** Turns on IPv4 forwarding in a namespace (the setting is per namespace). */
export const enableForwarding = (ns: Namespace): Effect.Effect<void, CommandError> =>
  Effect.asVoid(ns.run(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"]))

/** A temporary directory, removed with everything in it when the scope closes. */
export const temporaryDirectory = (prefix: string): Effect.Effect<string, NetworkLabError, Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        const directory = Fs.mkdtempSync(Path.join(Os.tmpdir(), `${prefix}-`))
        holdUntilExit(`directory ${directory}`, () => Fs.rmSync(directory, { recursive: true, force: true }))
        return directory
      },
      catch: (cause) => new NetworkLabError({ reason: "cannot create a temporary directory", cause })
    }),
    (directory) =>
      Effect.sync(() => {
        Fs.rmSync(directory, { recursive: true, force: true })
        released(`directory ${directory}`)
      })
  )

/** Writes a file (`Effect` wrapper of `writeFileSync`). */
export const writeFile = (file: string, content: string): Effect.Effect<void, NetworkLabError> =>
  Effect.try({
    try: () => Fs.writeFileSync(file, content),
    catch: (cause) => new NetworkLabError({ reason: `cannot write ${file}`, cause })
  })

// -----------------------------------------------------------------------------
// long-running processes
// -----------------------------------------------------------------------------

/** How a process ended. */
export interface ProcessExit {
  readonly exitCode: number | null
  readonly signal: string | null
}

/** Options of {@link spawn}. */
export interface SpawnOptions {
  /** Run inside this namespace. */
  readonly namespace?: Where
  /** A name for logs and messages (default: the command's basename). */
  readonly name?: string | undefined
  /**
   * Bind `/dev/null` over `/dev/console` in the process's own mount namespace (needs `namespace`; `ip netns exec`
   * gives every command a private mount namespace, so nothing changes outside). Daemons that `syslog()` with
   * `LOG_CONS` while no syslog daemon runs write every line to the console otherwise, about a millisecond each.
   */
  readonly quietConsole?: boolean | undefined
  /** Wait after SIGTERM before SIGKILL on release (default 3 s). */
  readonly stopTimeout?: Duration.DurationInput | undefined
}

/** A process started by {@link spawn}, stopped (only it, by pid) when the scope closes. */
export interface LabProcess {
  readonly name: string
  readonly pid: number
  /** Waits until the process has exited. */
  readonly exited: Effect.Effect<ProcessExit>
  /** How it exited, or `None` while it runs. */
  readonly exitStatus: Effect.Effect<Option.Option<ProcessExit>>
  /** Its standard error so far (the last 256 KiB). */
  readonly stderr: Effect.Effect<string>
  /** Its standard output, line by line (the last 10,000 unread lines are kept; one reader). */
  readonly lines: Queue.Dequeue<string>
  /** Writes to its standard input. */
  readonly write: (text: string) => Effect.Effect<void, NetworkLabError>
  /** Sends a signal to it (only to its pid), e.g. `SIGUSR1`; nothing once it has exited. */
  readonly signal: (signal: NodeJS.Signals) => Effect.Effect<void>
  /** Stops it now: SIGTERM, then SIGKILL after the stop timeout. Idempotent; also done on release. */
  readonly stop: Effect.Effect<ProcessExit>
}

// The shell execs the daemon, so the pid we track is the daemon's.
const quietConsoleScript =
  "if [ -e /dev/console ]; then mount --bind /dev/null /dev/console 2>/dev/null; fi; exec \"$@\""

/**
 * Starts a long-running process (optionally inside a namespace) with piped standard streams. `argv` must end up
 * exec'ing the long-running program (as `ip netns exec` does), so the tracked pid is the program's; on release only
 * that pid is signalled (SIGTERM, then SIGKILL after `stopTimeout`).
 */
export const spawn = (
  argv: ReadonlyArray<string>,
  options: SpawnOptions = {}
): Effect.Effect<LabProcess, NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    if (options.quietConsole && namespaceName(options.namespace) === undefined) {
      return yield* Effect.dieMessage("spawn: quietConsole needs a namespace (a private mount namespace)")
    }
    const name = options.name ?? Path.basename(argv[0])
    const command = inNamespace(
      options.namespace,
      options.quietConsole ? ["sh", "-c", quietConsoleScript, "sh", ...argv] : argv
    )
    const stopTimeout = Duration.decode(options.stopTimeout ?? Duration.seconds(3))
    const lines = yield* Queue.sliding<string>(10_000)
    const exit = yield* Deferred.make<ProcessExit>()

    const acquire = Effect.async<LabProcess, NetworkLabError>((resume) => {
      let stderr = ""
      let partial = ""
      const child = ChildProcess.spawn(command[0], command.slice(1), { stdio: ["pipe", "pipe", "pipe"] })
      child.stdout.setEncoding("utf8").on("data", (chunk: string) => {
        const parts = (partial + chunk).split("\n")
        partial = parts.pop() ?? ""
        for (const line of parts) lines.unsafeOffer(line)
      })
      child.stderr.setEncoding("utf8").on("data", (chunk: string) => stderr = append(stderr, chunk, 256 << 10))
      child.stdin.on("error", () => {}) // EPIPE once it exits
      child.on("exit", (exitCode, signal) => {
        released(`pid ${child.pid}`)
        Deferred.unsafeDone(exit, Effect.succeed({ exitCode, signal }))
      })
      child.on("error", (cause) => {
        if (child.pid === undefined) {
          resume(Effect.fail(new NetworkLabError({ reason: `cannot start \`${formatCommand(command)}\``, cause })))
        }
      })
      child.on("spawn", () => {
        holdUntilExit(`pid ${child.pid}`, () => child.kill("SIGKILL"))
        const stop = Effect.gen(function*() {
          if (Option.isNone(yield* Deferred.poll(exit))) {
            child.kill("SIGTERM")
            // interruptible: a finalizer runs uninterruptibly, and the timeout must be able to cut the wait short
            const exited = yield* live(Effect.timeoutOption(Effect.interruptible(Deferred.await(exit)), stopTimeout))
            if (Option.isNone(exited)) {
              yield* Effect.logWarning(`${name} (pid ${child.pid}) ignored SIGTERM for ${Duration.format(stopTimeout)}`)
              child.kill("SIGKILL")
            }
          }
          return yield* Deferred.await(exit)
        })
        resume(Effect.succeed({
          name,
          pid: child.pid!,
          exited: Deferred.await(exit),
          exitStatus: Effect.flatMap(
            Deferred.poll(exit),
            Option.match({
              onNone: () => Effect.succeedNone,
              onSome: Effect.asSome
            })
          ),
          stderr: Effect.sync(() => stderr),
          lines,
          write: (text: string) =>
            Effect.async<void, NetworkLabError>((resumeWrite) => {
              child.stdin.write(text, (error) =>
                resumeWrite(
                  error
                    ? Effect.fail(new NetworkLabError({ reason: `cannot write to ${name}`, cause: error }))
                    : Effect.void
                ))
            }),
          signal: (signal: NodeJS.Signals) =>
            Effect.flatMap(Deferred.isDone(exit), (done) => done ? Effect.void : Effect.sync(() => child.kill(signal))),
          stop
        }))
      })
    })
    return yield* Effect.acquireRelease(acquire, (started) => Effect.asVoid(started.stop))
  })

// -----------------------------------------------------------------------------
// NAT-PMP probe
// -----------------------------------------------------------------------------

// Sends op 0 to gateway:5351 every 50 ms (ICMP errors ignored) until a reply arrives or the deadline passes;
// prints the reply as hex.
const probeScript = `
const dgram = require("node:dgram")
const [gateway, port, deadlineMillis] = process.argv.slice(1)
const socket = dgram.createSocket("udp4")
const deadline = Date.now() + Number(deadlineMillis)
socket.on("error", () => {})
socket.on("message", (message, rinfo) => {
  if (rinfo.address !== gateway) return
  process.stdout.write(message.toString("hex"))
  process.exit(0)
})
const send = () => {
  if (Date.now() > deadline) process.exit(2)
  socket.send(Buffer.from([0, 0]), Number(port), gateway, () => {})
  setTimeout(send, 50)
}
socket.bind(0, send)
`

/**
 * Asks a NAT-PMP gateway for its public address from inside a namespace (a small Node script), repeating every
 * 50 ms until it answers or `timeout` (default 5 s) passes. Returns the decoded answer, whatever its result code.
 */
export const probeNatPmp = (
  ns: Where,
  gateway: string,
  options: { readonly port?: number | undefined; readonly timeout?: Duration.DurationInput | undefined } = {}
): Effect.Effect<NatPmpMessage.Response, NetworkLabError | CommandError> =>
  Effect.gen(function*() {
    const timeout = Duration.toMillis(Duration.decode(options.timeout ?? Duration.seconds(5)))
    const port = options.port ?? NatPmpMessage.ServerPort
    const output = yield* run([process.execPath, "-e", probeScript, gateway, String(port), String(timeout)], {
      namespace: ns,
      timeout: Duration.millis(timeout + 5_000)
    }).pipe(
      Effect.catchIf(
        (error) => error.exitCode === 2,
        () =>
          Effect.fail(new NetworkLabError({ reason: `no NAT-PMP answer from ${gateway}:${port} within ${timeout} ms` }))
      )
    )
    const bytes = Uint8Array.from(Buffer.from(output.stdout.trim(), "hex"))
    return yield* Effect.mapError(
      NatPmpMessage.decodeResponse(bytes),
      (cause) => new NetworkLabError({ reason: `malformed NAT-PMP answer from ${gateway}`, cause })
    )
  })

// -----------------------------------------------------------------------------
// test traffic
// -----------------------------------------------------------------------------

// An echo server on 0.0.0.0:port: prints `listening`, then `<from address> <payload as hex>` for every TCP segment or
// UDP datagram it receives, and sends it back prefixed with `echo ` (unless the third argument is `silent`).
const echoServerScript = `
const [protocol, port, mode] = process.argv.slice(1)
const report = (from, data) => process.stdout.write(from + " " + data.toString("hex") + "\\n")
const reply = (data) => Buffer.concat([Buffer.from("echo "), data])
const listening = () => process.stdout.write("listening\\n")
if (protocol === "tcp") {
  const server = require("node:net").createServer((socket) => {
    socket.on("error", () => {})
    socket.on("data", (data) => {
      report(socket.remoteAddress, data)
      if (mode !== "silent") socket.write(reply(data))
    })
  })
  server.listen(Number(port), "0.0.0.0", listening)
} else {
  const socket = require("node:dgram").createSocket("udp4")
  socket.on("message", (data, from) => {
    report(from.address, data)
    if (mode !== "silent") socket.send(reply(data), from.port, from.address)
  })
  socket.bind(Number(port), "0.0.0.0", listening)
}
`

/** What an {@link echoServer} received: the sender's address and the bytes. */
export interface Received {
  readonly from: string
  /** The bytes as UTF-8 text. */
  readonly payload: string
  readonly bytes: Uint8Array
}

/** A running echo server; see {@link echoServer}. */
export interface EchoServer {
  readonly process: LabProcess
  /** Everything received so far, in order. */
  readonly received: Effect.Effect<ReadonlyArray<Received>>
}

/**
 * Starts an echo server on `0.0.0.0:port` (TCP or UDP) inside a namespace: every payload is recorded with its
 * sender's address and sent back prefixed with `echo ` (with `silent`, only recorded: a listener). Waits until it
 * listens; stopped when the scope closes.
 */
export const echoServer = (
  ns: Namespace,
  protocol: NatPmpMessage.Protocol,
  port: number,
  options: { readonly silent?: boolean | undefined } = {}
): Effect.Effect<EchoServer, NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    const mode = options.silent ? "silent" : "echo"
    const server = yield* spawn([process.execPath, "-e", echoServerScript, protocol, String(port), mode], {
      namespace: ns,
      name: `${protocol} echo server on port ${port} in ${ns.name}`
    })
    const first = yield* live(Effect.timeoutOption(Queue.take(server.lines), Duration.seconds(10)))
    if (Option.isNone(first) || first.value !== "listening") {
      const stderr = yield* server.stderr
      return yield* new NetworkLabError({ reason: `${server.name} did not start: ${firstLines(stderr)}` })
    }
    const received: Array<Received> = []
    yield* Effect.forkScoped(Effect.forever(Effect.map(Queue.take(server.lines), (line) => {
      const [from, hex] = line.split(" ")
      const bytes = Buffer.from(hex ?? "", "hex")
      received.push({ from, payload: bytes.toString(), bytes: Uint8Array.from(bytes) })
    })))
    return { process: server, received: Effect.sync(() => [...received]) }
  })

// Sends a payload to address:port (TCP or UDP) and prints the first reply; exit 3 with the error on stderr when
// there is none within the timeout.
const sendScript = `
const [protocol, address, port, payload, timeoutMillis] = process.argv.slice(1)
const fail = (message) => { process.stderr.write(message + "\\n"); process.exit(3) }
setTimeout(() => fail("no reply from " + address + ":" + port + " within " + timeoutMillis + " ms"), Number(timeoutMillis))
const done = (data) => { process.stdout.write(data.toString()); process.exit(0) }
if (protocol === "tcp") {
  const socket = require("node:net").connect(Number(port), address)
  socket.on("connect", () => socket.write(payload))
  socket.on("data", done)
  socket.on("error", (error) => fail(error.message))
} else {
  const socket = require("node:dgram").createSocket("udp4")
  socket.on("message", done)
  socket.on("error", (error) => fail(error.message))
  socket.send(payload, Number(port), address)
}
`

/**
 * Sends `payload` from inside a namespace to `address:port` (a TCP connection, or one UDP datagram) and returns the
 * first reply. Fails with a {@link CommandError} whose stderr says why (`connect ECONNREFUSED …`, or no reply within
 * `timeout`, default 3 s).
 */
export const sendAndReceive = (
  ns: Where,
  protocol: NatPmpMessage.Protocol,
  address: string,
  port: number,
  payload: string,
  timeout: Duration.DurationInput = Duration.seconds(3)
): Effect.Effect<string, CommandError> => {
  const millis = Duration.toMillis(Duration.decode(timeout))
  return Effect.map(
    run([process.execPath, "-e", sendScript, protocol, address, String(port), payload, String(millis)], {
      namespace: ns,
      timeout: Duration.millis(millis + 5_000)
    }),
    ({ stdout }) => stdout
  )
}

// -----------------------------------------------------------------------------
// the gateway topology
// -----------------------------------------------------------------------------

/** The namespaces and addresses of {@link gatewayLab}. */
export interface GatewayLab {
  /** The gateway's namespace: `vpnlan` toward the LAN, `ext0` toward the internet; forwards IPv4. */
  readonly vpn: Namespace
  /** The LAN client's namespace: `eth0`, default route via the gateway. */
  readonly cli: Namespace
  /** The "internet" behind `ext0`: `eth0`. */
  readonly inet: Namespace
  readonly lan: {
    /** e.g. `10.a.b.0/24`. */
    readonly network: string
    /** The gateway's LAN address (`vpnlan`), e.g. `10.a.b.1`. */
    readonly gateway: string
    /** The client's address, e.g. `10.a.b.2`. */
    readonly client: string
  }
  readonly ext: {
    readonly network: string
    /** The gateway's external address (`ext0`), e.g. `10.a.c.1`. */
    readonly gateway: string
    /** The internet peer's address, e.g. `10.a.c.2`. */
    readonly peer: string
  }
  /** A temporary directory for configuration files, removed with the lab. */
  readonly directory: string
  /** A third `/24` next to the LAN and the external link, unused by this lab (e.g. `10.a.(b+2)`, no `.0/24`). */
  readonly spareNetwork: string
}

/** Options of {@link gatewayLab}. */
export interface GatewayLabOptions {
  /** Namespace name prefix (default `nplab`): namespaces are `<prefix>-vpn-<pid>-<suffix>` etc. */
  readonly prefix?: string | undefined
  /** The role in the client namespace's name (default `cli`: `<prefix>-cli-<pid>-<suffix>`). */
  readonly clientRole?: string | undefined
  /** The client's interface toward the gateway (default `eth0`). */
  readonly clientInterface?: string | undefined
}

// Four consecutive /24s 10.a.b.0 … 10.a.(b+3).0 (b a multiple of 4): the LAN, the external link, one spare.
const randomNetworks = () => {
  const [a, b] = Crypto.randomBytes(2)
  const first = 1 + (a % 254)
  const lan = b & 0xfc
  return { lan: `10.${first}.${lan}`, ext: `10.${first}.${lan + 1}`, spare: `10.${first}.${lan + 2}` }
}

/**
 * Builds the lab topology (see the module documentation) with a random `10.a.b.0/24` LAN and `10.a.(b+1).0/24`
 * external link, so parallel labs are also distinct by address. Everything is removed when the scope closes.
 */
export const gatewayLab = (
  options: GatewayLabOptions = {}
): Effect.Effect<GatewayLab, CommandError | NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    const prefix = options.prefix ?? "nplab"
    yield* reapOrphanedNamespaces(prefix)
    const directory = yield* temporaryDirectory(prefix)
    const vpn = yield* namespace(`${prefix}-vpn`)
    const cli = yield* namespace(`${prefix}-${options.clientRole ?? "cli"}`)
    const inet = yield* namespace(`${prefix}-inet`)
    const networks = randomNetworks()
    const lan = { network: `${networks.lan}.0/24`, gateway: `${networks.lan}.1`, client: `${networks.lan}.2` }
    const ext = { network: `${networks.ext}.0/24`, gateway: `${networks.ext}.1`, peer: `${networks.ext}.2` }
    yield* vethPair(
      { namespace: vpn, name: "vpnlan", address: `${lan.gateway}/24` },
      { namespace: cli, name: options.clientInterface ?? "eth0", address: `${lan.client}/24` }
    )
    yield* vethPair(
      { namespace: vpn, name: "ext0", address: `${ext.gateway}/24` },
      { namespace: inet, name: "eth0", address: `${ext.peer}/24` }
    )
    yield* addRoute(cli, "default", lan.gateway)
    yield* enableForwarding(vpn)
    return { vpn, cli, inet, lan, ext, directory, spareNetwork: networks.spare }
  }).pipe(Effect.withSpan("NetworkLab.gatewayLab"))

// -----------------------------------------------------------------------------
// the double NAT topology
// -----------------------------------------------------------------------------

/** The namespaces and addresses of {@link doubleNatLab}. */
export interface DoubleNatLab {
  /** The gateway topology underneath: its client namespace (`cli`) is the router. */
  readonly gatewayLab: GatewayLab
  /** The internet: `eth0`, on the VPN gateway's external link. */
  readonly inet: Namespace
  /** The VPN gateway: `vpnlan` toward the router, `ext0` toward the internet; routes the home LAN via the router. */
  readonly vpn: Namespace
  /** The router: its VPN interface toward the gateway (default route), `lan0` toward the home LAN; forwards IPv4. */
  readonly router: Namespace
  /** The home LAN client: `eth0`, default route via the router. */
  readonly lan: Namespace
  /** The link between the VPN gateway and the router. */
  readonly vpnLink: {
    readonly network: string
    /** The VPN gateway's address, e.g. `10.a.b.1`. */
    readonly gateway: string
    /** The router's address (the source of its NAT-PMP requests), e.g. `10.a.b.2`. */
    readonly router: string
    /** The router's interface on it. */
    readonly routerInterface: string
  }
  /** The VPN gateway's external link. */
  readonly ext: GatewayLab["ext"]
  /** The home LAN behind the router. */
  readonly home: {
    readonly network: string
    /** The router's LAN address (`lan0`), e.g. `10.a.(b+2).1`. */
    readonly router: string
    readonly routerInterface: string
    /** The LAN client's address, e.g. `10.a.(b+2).2`. */
    readonly client: string
  }
  /** A temporary directory, removed with the lab. */
  readonly directory: string
}

/** Options of {@link doubleNatLab}. */
export interface DoubleNatLabOptions {
  /** Namespace name prefix (default `nplab`). */
  readonly prefix?: string | undefined
  /** The router's interface toward the VPN gateway (default `wg0`). */
  readonly routerVpnInterface?: string | undefined
}

/**
 * Builds a double NAT: a LAN client behind a router whose internet leg is a NAT-PMP VPN gateway.
 *
 * ```
 *   ns lan               ns router                           ns vpn                          ns inet
 *   eth0 .(b+2).2 <-> lan0 .(b+2).1 | wg0 .b.2  <->  vpnlan .b.1 | ext0 .(b+1).1  <->  eth0 .(b+1).2
 *   default via router   default via vpn, forwards           route to the LAN via router
 * ```
 *
 * All addresses are in a random `10.a.b.0/22`; everything is removed when the scope closes.
 */
export const doubleNatLab = (
  options: DoubleNatLabOptions = {}
): Effect.Effect<DoubleNatLab, CommandError | NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    const prefix = options.prefix ?? "nplab"
    const routerInterface = options.routerVpnInterface ?? "wg0"
    const gateway = yield* gatewayLab({ prefix, clientRole: "router", clientInterface: routerInterface })
    const router = gateway.cli
    const lan = yield* namespace(`${prefix}-lan`)
    const homeNet = gateway.spareNetwork
    const home = {
      network: `${homeNet}.0/24`,
      router: `${homeNet}.1`,
      routerInterface: "lan0",
      client: `${homeNet}.2`
    }
    yield* vethPair(
      { namespace: router, name: home.routerInterface, address: `${home.router}/24` },
      { namespace: lan, name: "eth0", address: `${home.client}/24` }
    )
    yield* addRoute(lan, "default", home.router)
    yield* addRoute(gateway.vpn, home.network, gateway.lan.client)
    yield* enableForwarding(router)
    return {
      gatewayLab: gateway,
      inet: gateway.inet,
      vpn: gateway.vpn,
      router,
      lan,
      vpnLink: {
        network: gateway.lan.network,
        gateway: gateway.lan.gateway,
        router: gateway.lan.client,
        routerInterface
      },
      ext: gateway.ext,
      home,
      directory: gateway.directory
    }
  }).pipe(Effect.withSpan("NetworkLab.doubleNatLab"))

// -----------------------------------------------------------------------------
// miniupnpd
// -----------------------------------------------------------------------------

/**
 * The nftables table miniupnpd-nftables expects before it starts (its chains, hooked into forward, prerouting and
 * postrouting). Debian's `nft_init.sh` is broken (a helper file is missing), so the lab loads this instead.
 */
export const miniUpnpdRuleset = `table inet filter {
  chain miniupnpd {
  }
  chain prerouting_miniupnpd {
  }
  chain postrouting_miniupnpd {
  }
  chain forward {
    type filter hook forward priority 0; policy accept;
    jump miniupnpd
  }
  chain prerouting {
    type nat hook prerouting priority -100; policy accept;
    jump prerouting_miniupnpd
  }
  chain postrouting {
    type nat hook postrouting priority 100; policy accept;
    jump postrouting_miniupnpd
  }
}
`

/** miniupnpd settings; see {@link miniUpnpdConfig}. */
export interface MiniUpnpdOptions {
  /** External interface (default `ext0`). */
  readonly extIfname?: string | undefined
  /** LAN interface it listens on (default `vpnlan`). */
  readonly listeningIp?: string | undefined
  /**
   * The public address it reports (default `5.6.7.8`; only reported, never contacted). `false` leaves it out:
   * miniupnpd then uses `ext0`'s private address, refuses port forwarding and answers every request with result 3.
   */
  readonly extIp?: string | false | undefined
  /** Permission rules, in order (default: allow ports 1024–65535 of the LAN, deny everything else). */
  readonly permissions?: ReadonlyArray<string> | undefined
}

/** The permission rules of the lab: the LAN may map ports 1024–65535 to ports 1024–65535, nothing else. */
export const defaultPermissions = (lanNetwork: string): ReadonlyArray<string> => [
  `allow 1024-65535 ${lanNetwork} 1024-65535`,
  "deny 0-65535 0.0.0.0/0 0-65535"
]

/** The miniupnpd configuration file: NAT-PMP only, secure mode, the given interfaces and permissions. */
export const miniUpnpdConfig = (lanNetwork: string, options: MiniUpnpdOptions = {}): string => {
  const extIp = options.extIp ?? "5.6.7.8"
  return [
    `ext_ifname=${options.extIfname ?? "ext0"}`,
    `listening_ip=${options.listeningIp ?? "vpnlan"}`,
    "enable_natpmp=yes",
    "enable_upnp=no",
    "secure_mode=yes",
    ...(extIp === false ? [] : [`ext_ip=${extIp}`]),
    ...(options.permissions ?? defaultPermissions(lanNetwork)),
    ""
  ].join("\n")
}

/** A running miniupnpd; see {@link startMiniUpnpd}. */
export interface MiniUpnpd {
  readonly process: LabProcess
  readonly configFile: string
  /** Its first answer to a public address request (the readiness probe). */
  readonly firstAnswer: NatPmpMessage.Response
  /** `nft list ruleset` in the gateway's namespace. */
  readonly ruleset: Effect.Effect<string, CommandError>
}

/** Options of {@link startMiniUpnpd}. */
export interface StartMiniUpnpdOptions extends MiniUpnpdOptions {
  /** Wait at most this long for the first answer (default 5 s). */
  readonly readyTimeout?: Duration.DurationInput | undefined
  /**
   * Require the first answer to succeed (default true): a result code other than 0 then fails the start with
   * miniupnpd's log. Set to false for a gateway that is expected to refuse (e.g. `extIp: false`).
   */
  readonly requireSuccess?: boolean | undefined
  /** Distinguishes the files of several miniupnpd runs in one lab (default `miniupnpd`). */
  readonly instance?: string | undefined
}

const logTail = (text: string, count = 15): string => text.trimEnd().split("\n").slice(-count).join("\n")

/**
 * Starts miniupnpd (foreground, pid tracked) in the lab's gateway namespace: loads {@link miniUpnpdRuleset} if the
 * table is not there yet, writes the configuration, starts `miniupnpd -f CONF -d -P PIDFILE` with a quiet console,
 * and polls NAT-PMP op 0 from the client namespace until it answers. It is stopped (SIGTERM, only its pid) when the
 * scope closes; a start that fails or times out fails with the tail of its log.
 */
export const startMiniUpnpd = (
  lab: GatewayLab,
  options: StartMiniUpnpdOptions = {}
): Effect.Effect<MiniUpnpd, CommandError | NetworkLabError, Scope.Scope> =>
  Effect.gen(function*() {
    const instance = options.instance ?? "miniupnpd"
    const tables = yield* lab.vpn.run(["nft", "list", "tables"])
    if (!/\btable inet filter\b/.test(tables.stdout)) {
      yield* lab.vpn.run(["nft", "-f", "-"], { input: miniUpnpdRuleset })
    }
    const configFile = Path.join(lab.directory, `${instance}.conf`)
    const pidFile = Path.join(lab.directory, `${instance}.pid`)
    yield* writeFile(configFile, miniUpnpdConfig(lab.lan.network, options))
    const daemon = yield* spawn(["miniupnpd", "-f", configFile, "-d", "-P", pidFile], {
      namespace: lab.vpn,
      name: `miniupnpd in ${lab.vpn.name}`,
      quietConsole: true
    })
    const timeout = Duration.decode(options.readyTimeout ?? Duration.seconds(5))
    const failure = (reason: string) =>
      Effect.flatMap(daemon.stderr, (log) =>
        Effect.fail(new NetworkLabError({ reason: `${reason}; its log ends with:\n${logTail(log)}` })))
    const exitedEarly = Effect.flatMap(
      daemon.exited,
      (exit) =>
        failure(`miniupnpd exited during start (code ${exit.exitCode}, signal ${exit.signal})`)
    )
    // Both sides interruptible, so the loser is stopped even when this runs inside an uninterruptible acquire.
    const firstAnswer = yield* Effect.raceFirst(
      Effect.interruptible(probeNatPmp(lab.cli, lab.lan.gateway, { timeout })).pipe(
        Effect.catchTag("NetworkLabError", () => failure(`miniupnpd did not answer within ${Duration.format(timeout)}`))
      ),
      Effect.interruptible(exitedEarly)
    )
    if ((options.requireSuccess ?? true) && firstAnswer.resultCode !== NatPmpMessage.ResultCode.Success) {
      return yield* failure(
        `miniupnpd answers the public address request with result ${firstAnswer.resultCode} (${
          NatPmpMessage.resultCodeMessage(firstAnswer.resultCode)
        })`
      )
    }
    return {
      process: daemon,
      configFile,
      firstAnswer,
      ruleset: Effect.map(lab.vpn.run(["nft", "list", "ruleset"]), (output) => output.stdout)
    }
  }).pipe(Effect.withSpan("NetworkLab.startMiniUpnpd"))

/** A `dnat` rule miniupnpd added (from `nft list ruleset`). */
export interface DnatRule {
  readonly protocol: NatPmpMessage.Protocol
  readonly externalPort: number
  readonly address: string
  readonly internalPort: number
}

/**
 * The port forwards in an `nft list ruleset` text, as miniupnpd-nftables writes them:
 * `iif "ext0" @nh,72,8 0x6 th dport 40000 dnat ip to 10.77.0.2:40000` (0x6 TCP, 0x11 UDP).
 */
export const parseDnatRules = (ruleset: string): ReadonlyArray<DnatRule> => {
  const rules: Array<DnatRule> = []
  const pattern = /@nh,72,8 (0x6|0x11) th dport (\d+) dnat ip to ([\d.]+):(\d+)/g
  for (const match of ruleset.matchAll(pattern)) {
    rules.push({
      protocol: match[1] === "0x6" ? "tcp" : "udp",
      externalPort: Number(match[2]),
      address: match[3],
      internalPort: Number(match[4])
    })
  }
  return rules
}

/**
 * Polls `get` every 100 ms (live clock) until `predicate` holds — the state of processes in a lab (nftables rules,
 * a daemon's mappings) settles on its own time; dies after `timeout` naming `what`.
 *
 * @since 0.1.0
 */
export const eventually = <A, E, R>(
  get: Effect.Effect<A, E, R>,
  predicate: (value: A) => boolean,
  what: string,
  timeout: Duration.DurationInput = Duration.seconds(5)
): Effect.Effect<A, E, R> =>
  Effect.gen(function*() {
    const deadline = Date.now() + Duration.toMillis(Duration.decode(timeout))
    while (true) {
      const value = yield* get
      if (predicate(value)) return value
      if (Date.now() > deadline) return yield* Effect.dieMessage(`timed out waiting for ${what}`)
      yield* Effect.sleep(Duration.millis(100))
    }
  })
