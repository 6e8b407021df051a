/**
 * Runs an @effect/cli command as a process: the few platform services the CLI
 * needs (not the whole NodeContext), one-line usage errors, exit codes and
 * signal handling.
 *
 * Exit codes: 0 success (also after Ctrl-C / SIGTERM ended a long-running
 * command cleanly), 1 a runtime failure (gateway, router, network), 2 a usage
 * error (bad or missing arguments).
 */
import * as Command from "@effect/cli/Command"
import * as Descriptor from "@effect/cli/CommandDescriptor"
import type * as HelpDoc from "@effect/cli/HelpDoc"
import type * as Span from "@effect/cli/HelpDoc/Span"
import type * as Usage from "@effect/cli/Usage"
import * as ValidationError from "@effect/cli/ValidationError"
import * as NodePath from "@effect/platform-node/NodePath"
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as FileSystem from "@effect/platform/FileSystem"
import * as Terminal from "@effect/platform/Terminal"
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as HashMap from "effect/HashMap"
import * as Layer from "effect/Layer"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as Scope from "effect/Scope"

/** A command line that parses but makes no sense (e.g. `unmap --all 80`). Exit code 2. */
export class UsageError extends Data.TaggedError("UsageError")<{ readonly reason: string }> {
  override get message() {
    return this.reason
  }
}

/** Something to report to the user as one line and exit with `exitCode` (a handler's own failure). */
export class CommandFailure extends Data.TaggedError("CommandFailure")<{
  readonly reason: string
  readonly exitCode: number
  readonly json?: Record<string, unknown> | undefined
}> {
  override get message() {
    return this.reason
  }
}

const spanText = (span: Span.Span): string => {
  switch (span._tag) {
    case "Text":
    case "URI":
      return span.value
    case "Highlight":
    case "Weak":
    case "Strong":
      return spanText(span.value)
    case "Sequence":
      return spanText(span.left) + spanText(span.right)
  }
}

const docLines = (doc: HelpDoc.HelpDoc): Array<string> => {
  switch (doc._tag) {
    case "Empty":
      return []
    case "Header":
    case "Paragraph":
      return [spanText(doc.value)]
    case "DescriptionList":
      return doc.definitions.flatMap(([span, inner]) => [spanText(span), ...docLines(inner)])
    case "Enumeration":
      return doc.elements.flatMap(docLines)
    case "Sequence":
      return [...docLines(doc.left), ...docLines(doc.right)]
  }
}

/** Renders a HelpDoc (as found in a ValidationError) as one plain line. */
export const helpDocToLine = (doc: HelpDoc.HelpDoc): string =>
  docLines(doc).flatMap((line) => line.split("\n")).map((line) => line.trim()).filter((line) => line.length > 0)
    .join(" ")

/**
 * The Node terminal, loaded only when something interactive (`--wizard`) asks for it: its module
 * graph (readline, mailboxes) costs startup time every other command would pay for nothing.
 */
const lazyTerminal = Layer.scoped(
  Terminal.Terminal,
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const terminal = yield* Effect.cached(
      Effect.promise(() => import("@effect/platform-node/NodeTerminal")).pipe(
        Effect.flatMap((module) => Scope.extend(module.make(), scope))
      )
    )
    return Terminal.Terminal.of({
      columns: Effect.flatMap(terminal, (t) => t.columns),
      rows: Effect.flatMap(terminal, (t) => t.rows),
      isTTY: Effect.flatMap(terminal, (t) => t.isTTY),
      readInput: Effect.flatMap(terminal, (t) => t.readInput),
      readLine: Effect.flatMap(terminal, (t) => t.readLine),
      display: (text) => Effect.flatMap(terminal, (t) => t.display(text))
    })
  })
)

/**
 * The services @effect/cli needs, without NodeContext (startup time matters): the CLIs take no
 * file arguments, so the file system is a no-op one; the terminal loads on first use.
 */
export const CliEnvironment = Layer.mergeAll(FileSystem.layerNoop({}), NodePath.layer, lazyTerminal)

const ansi = /\x1b\[[0-9;]*m/g

/**
 * The console @effect/cli runs with: its multi-line parse error docs are dropped (we print one
 * line), and help text loses its colours when stdout is not a terminal.
 */
const quietErrorConsole = Effect.map(Effect.console, (console): Console.Console => ({
  ...console,
  error: () => Effect.void,
  log: (...args) =>
    process.stdout.isTTY ?
      console.log(...args) :
      console.log(...args.map((arg) => typeof arg === "string" ? arg.replace(ansi, "") : arg))
}))

/** Human-readable one-line description of any failure a handler may leave unhandled. */
export const describeError = (error: unknown): string => {
  if (typeof error === "object" && error !== null) {
    const message = (error as { message?: unknown }).message
    if (typeof message === "string" && message.length > 0) return message
    const tag = (error as { _tag?: unknown })._tag
    if (typeof tag === "string") return tag
  }
  return String(error)
}

/** Any failure as a {@link CommandFailure} with its one-line message. */
export const toCommandFailure = (exitCode: number) => (error: unknown): CommandFailure =>
  error instanceof CommandFailure ? error : new CommandFailure({ reason: describeError(error), exitCode })

const exitCodeOf = (exit: Exit.Exit<unknown, unknown>): number =>
  Exit.match(exit, {
    onSuccess: (code) => (typeof code === "number" ? code : 0),
    onFailure: (cause) => (Cause.isInterruptedOnly(cause) ? 0 : 1)
  })

interface Flag {
  /** The long name, e.g. `--udp`. */
  readonly long: string
  /** Whether the flag takes a value (`--port 5351`); booleans do not. */
  readonly takesValue: boolean
}

const collectFlags = (usage: Usage.Usage, into: Map<string, Flag>): Map<string, Flag> => {
  switch (usage._tag) {
    case "Named": {
      const names = usage.names.filter((name) => name.startsWith("-"))
      const long = names.find((name) => name.startsWith("--")) ?? names[0]
      for (const name of names) into.set(name, { long, takesValue: Option.isSome(usage.acceptedValues) })
      return into
    }
    case "Optional":
    case "Repeated":
      return collectFlags(usage.usage, into)
    case "Alternation":
    case "Concat":
      return collectFlags(usage.right, collectFlags(usage.left, into))
    case "Empty":
    case "Mixed":
      return into
  }
}

const builtInFlags: ReadonlyArray<readonly [string, Flag]> = [
  ["--help", { long: "--help", takesValue: false }],
  ["-h", { long: "--help", takesValue: false }],
  ["--version", { long: "--version", takesValue: false }],
  ["--wizard", { long: "--wizard", takesValue: false }],
  ["--completions", { long: "--completions", takesValue: true }],
  ["--log-level", { long: "--log-level", takesValue: true }]
]

const isNumber = (token: string) => /^-\d+(\.\d+)?$/.test(token)

/**
 * Fixes two things @effect/cli does not do the way a NAT-PMP client user expects:
 * an unknown flag is reported as such (not as "'--foo' is not a integer"), and a boolean flag
 * never swallows the next word (`natpmp map -u 0 5000` is UDP with public port 0, not `--udp=false`).
 */
export const normalizeArgv = <Name extends string, R, E, A>(
  command: Command.Command<Name, R, E, A>,
  argv: ReadonlyArray<string>
): Either.Either<ReadonlyArray<string>, UsageError> => {
  const [runtime, script, ...args] = argv
  const subcommands = Command.getSubcommands(command)
  const subcommandIndex = args.findIndex((arg) => !arg.startsWith("-"))
  const subcommand = subcommandIndex === -1 ? Option.none() : HashMap.get(subcommands, args[subcommandIndex])
  if (Option.isNone(subcommand)) return Either.right(argv)
  const flags = collectFlags(Descriptor.getUsage(subcommand.value), new Map(builtInFlags))
  const out = args.slice(0, subcommandIndex + 1)
  for (let i = subcommandIndex + 1; i < args.length; i++) {
    const token = args[i]
    if (token === "--") {
      out.push(...args.slice(i))
      break
    }
    if (!token.startsWith("-") || token === "-" || isNumber(token)) {
      out.push(token)
      continue
    }
    const name = token.includes("=") ? token.slice(0, token.indexOf("=")) : token
    const flag = flags.get(name)
    if (flag === undefined) {
      return Either.left(new UsageError({ reason: `unknown option '${name}' for '${args[subcommandIndex]}'` }))
    }
    if (flag.takesValue) {
      if (!token.includes("=") && i + 1 >= args.length) {
        return Either.left(new UsageError({ reason: `option '${name}' needs a value` }))
      }
      out.push(token)
      if (!token.includes("=") && i + 1 < args.length) out.push(args[++i])
    } else {
      out.push(token.includes("=") ? `${flag.long}${token.slice(name.length)}` : `${flag.long}=true`)
    }
  }
  return Either.right([runtime, script, ...out])
}

export interface MainOptions {
  readonly name: string
  readonly version: string
  /** Log level unless LOG_LEVEL says otherwise. */
  readonly defaultLogLevel: LogLevel.LogLevel
  /** The command line (default `process.argv`). */
  readonly argv?: ReadonlyArray<string> | undefined
  /**
   * Never repeat a stray argument in the error line: a password typed without its flag would otherwise end up in
   * the service's logs (journald, container logs).
   */
  readonly hideUnknownArguments?: boolean | undefined
}

/** @effect/cli's "Received unknown argument: '…'" without the argument, when `hide` is set. */
export const usageLine = (line: string, hide: boolean): string =>
  hide ? line.replace(/Received unknown argument: '.*'/s, "unexpected argument (not repeated here)") : line

/**
 * Runs `command` with `process.argv` as the process main. Usage errors print one line on stderr
 * and exit 2; other failures print their message (never a stack trace) and exit 1.
 */
export const runMain = <Name extends string, R extends CliEnvironmentServices, E, A>(
  command: Command.Command<Name, R, E, A>,
  options: MainOptions
): void => {
  const name = options.name
  // `natpmp --help | head -1`: a closed pipe ends the output, it is not an error
  for (const stream of [process.stdout, process.stderr]) {
    stream.on("error", (error: NodeJS.ErrnoException) => {
      if (error.code === "EPIPE") process.exit(process.exitCode ?? 0)
    })
  }
  const cli = Command.run(command, { name, version: options.version })
  const parsed = normalizeArgv(command, options.argv ?? process.argv)
  const run: Effect.Effect<void, unknown, R | CliEnvironmentServices> = Either.isLeft(parsed)
    ? Effect.fail(parsed.left)
    : cli(parsed.right).pipe(
      // @effect/cli prints its own (multi-line) docs on a parse error; we print one line instead
      Effect.withConsole(Effect.runSync(quietErrorConsole))
    )
  const program = run.pipe(
    Effect.as(0),
    Effect.catchAll((error: unknown) => {
      if (ValidationError.isValidationError(error)) {
        if (ValidationError.isHelpRequested(error)) return Effect.succeed(0)
        const line = usageLine(helpDocToLine(error.error), options.hideUnknownArguments === true)
        return Effect.as(
          Console.error(`${name}: ${line.length > 0 ? line : "invalid command line"} (see ${name} --help)`),
          2
        )
      }
      if (error instanceof UsageError) {
        return Effect.as(Console.error(`${name}: ${error.reason} (see ${name} --help)`), 2)
      }
      if (error instanceof CommandFailure) {
        return Effect.as(
          Console.error(error.json !== undefined ? JSON.stringify(error.json) : `${name}: ${error.reason}`),
          error.exitCode
        )
      }
      return Effect.as(Console.error(`${name}: ${describeError(error)}`), 1)
    }),
    Effect.catchAllDefect((defect) => Effect.as(Console.error(`${name}: internal error: ${describeError(defect)}`), 1))
  )
  NodeRuntime.runMain(
    program.pipe(
      Effect.provide(CliEnvironment),
      Logger.withMinimumLogLevel(logLevelFromEnv(options.defaultLogLevel)),
      Effect.provide(Logger.replace(Logger.defaultLogger, stderrLogger))
    ) as Effect.Effect<number, never, Exclude<R, CliEnvironmentServices>> as Effect.Effect<number>,
    {
      disableErrorReporting: true,
      disablePrettyLogger: true,
      teardown: (exit, onExit) => onExit(exitCodeOf(exit))
    }
  )
}

type CliEnvironmentServices = Layer.Layer.Success<typeof CliEnvironment>

/** logfmt lines on stderr, so stdout carries only results (`--json` stays parseable). */
const stderrLogger = Logger.map(Logger.logfmtLogger, (line) => {
  process.stderr.write(line + "\n")
})

/** The log level LOG_LEVEL names (DEBUG, INFO, WARN/WARNING, ERROR, ...), or `fallback`. */
export const logLevelFromEnv = (fallback: LogLevel.LogLevel): LogLevel.LogLevel => {
  const value = process.env.LOG_LEVEL?.trim().toUpperCase()
  const label = value === "WARN" ? "WARNING" : value
  return Option.getOrElse(
    Option.fromNullable(LogLevel.allLevels.find((level) => level.label === label)),
    () => fallback
  )
}
