/**
 * A RouterOS API client: one TCP (8728) or TLS (8729) connection, many concurrent commands
 * multiplexed with `.tag`, `/cancel` on interruption, typed errors, per-command timeouts and
 * reconnection with bounded backoff.
 *
 * @since 0.1.0
 */
import * as Config from "effect/Config"
import * as ConfigError from "effect/ConfigError"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Runtime from "effect/Runtime"
import * as Schedule from "effect/Schedule"
import * as Scope from "effect/Scope"
import * as Crypto from "node:crypto"
import * as Fs from "node:fs"
import * as Net from "node:net"
import * as Tls from "node:tls"
import type { Attributes, CommandParts, Reply, Sentence } from "./RouterOsProtocol.js"
import { commandWords, encodeSentence, parseReply, RouterOsProtocolError, SentenceDecoder } from "./RouterOsProtocol.js"

export {
  /**
   * @since 0.1.0
   * @category errors
   */
  RouterOsProtocolError
} from "./RouterOsProtocol.js"

// -----------------------------------------------------------------------------
// Errors
// -----------------------------------------------------------------------------

/** Text from the router on one printable line: control characters and line separators are escaped. */
const printable = (text: string): string =>
  text.replace(
    /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/g,
    (c) =>
      c === "\n"
        ? "\\n"
        : c === "\r"
        ? "\\r"
        : c === "\t"
        ? "\\t"
        : `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`
  )

/**
 * The router answered a command with `!trap`. `reason` is the router's message
 * (e.g. `no such item`), `category` its trap category when given.
 *
 * @since 0.1.0
 * @category errors
 */
export class RouterOsTrapError extends Data.TaggedError("RouterOsTrapError")<{
  readonly path: string
  readonly reason: string
  readonly category: number | undefined
}> {
  override get message(): string {
    return `RouterOS ${this.path} failed: ${printable(this.reason)}`
  }
}

/**
 * The router sent `!fatal` and closed the connection.
 *
 * @since 0.1.0
 * @category errors
 */
export class RouterOsFatalError extends Data.TaggedError("RouterOsFatalError")<{
  readonly reason: string
}> {
  override get message(): string {
    return `RouterOS closed the API session: ${printable(this.reason) || "fatal error"}`
  }
}

/**
 * The router refused the credentials. `reason` is the router's message, e.g.
 * `invalid user name or password (6)`. The password never appears in it.
 *
 * @since 0.1.0
 * @category errors
 */
export class RouterOsLoginError extends Data.TaggedError("RouterOsLoginError")<{
  readonly user: string
  readonly reason: string
}> {
  override get message(): string {
    return `RouterOS login as "${printable(this.user)}" failed: ${printable(this.reason)}`
  }
}

/**
 * Why a connection could not be made or was lost.
 *
 * @since 0.1.0
 * @category errors
 */
export type ConnectionFailure =
  | "Refused"
  | "Reset"
  | "Timeout"
  | "Closed"
  | "Unreachable"
  | "NotFound"
  | "Tls"
  | "Unknown"

const failureText: Record<ConnectionFailure, string> = {
  Refused: "connection refused",
  Reset: "connection reset",
  Timeout: "connection timed out",
  Closed: "connection closed",
  Unreachable: "host unreachable",
  NotFound: "host not found",
  Tls: "TLS failure",
  Unknown: "connection failed"
}

/**
 * The connection to the router could not be made (refused, timeout, TLS verification, ...) or
 * was lost (reset, closed) while a command was in flight.
 *
 * @since 0.1.0
 * @category errors
 */
export class RouterOsConnectionError extends Data.TaggedError("RouterOsConnectionError")<{
  readonly address: string
  readonly reason: ConnectionFailure
  readonly detail?: string | undefined
  readonly cause?: unknown
}> {
  override get message(): string {
    const detail = this.detail === undefined ? "" : `: ${this.detail}`
    return `RouterOS API at ${this.address}: ${failureText[this.reason]}${detail}`
  }
}

/**
 * A command got no complete reply within its timeout (it was cancelled on the router).
 *
 * @since 0.1.0
 * @category errors
 */
export class RouterOsTimeoutError extends Data.TaggedError("RouterOsTimeoutError")<{
  readonly path: string
  readonly timeout: Duration.Duration
}> {
  override get message(): string {
    return `RouterOS ${this.path} got no reply within ${Duration.format(this.timeout)}`
  }
}

/**
 * Every way a command can fail.
 *
 * @since 0.1.0
 * @category errors
 */
export type RouterOsError =
  | RouterOsTrapError
  | RouterOsFatalError
  | RouterOsProtocolError
  | RouterOsLoginError
  | RouterOsConnectionError
  | RouterOsTimeoutError

// -----------------------------------------------------------------------------
// Options
// -----------------------------------------------------------------------------

/**
 * TLS (API-SSL, port 8729). By default the certificate is verified against the system CAs (or
 * `ca` / `caFile`) and the host name. `fingerprint256` pins the certificate instead (SHA-256 of
 * the DER certificate, hex, colons optional): chain and name are then not checked.
 * `anonymousDh` accepts RouterOS's certificate-less anonymous Diffie-Hellman: encrypted but
 * unauthenticated, so only as an explicit opt-in.
 *
 * @since 0.1.0
 * @category options
 */
export interface TlsOptions {
  /** Trusted CA certificate(s), PEM contents. */
  readonly ca?: string | Uint8Array | ReadonlyArray<string | Uint8Array> | undefined
  /** Path of a PEM file with trusted CA certificate(s). */
  readonly caFile?: string | undefined
  /** Pinned SHA-256 fingerprint of the router's certificate. */
  readonly fingerprint256?: string | undefined
  /** Accept anonymous DH (no certificate). */
  readonly anonymousDh?: boolean | undefined
  /** Name to verify in the certificate and send as SNI (default: `host` unless it is an IP). */
  readonly servername?: string | undefined
}

/**
 * Reconnection: a lost or failed connection is re-opened by the next command with up to `retries`
 * further attempts after the first, waiting `initialDelay` doubling up to `maxDelay` in between.
 *
 * @since 0.1.0
 * @category options
 */
export interface ReconnectOptions {
  readonly retries?: number | undefined
  readonly initialDelay?: Duration.DurationInput | undefined
  readonly maxDelay?: Duration.DurationInput | undefined
}

/**
 * @since 0.1.0
 * @category options
 */
export interface Options {
  readonly host: string
  /** Default 8728, or 8729 with TLS. */
  readonly port?: number | undefined
  readonly user: string
  readonly password: Redacted.Redacted<string>
  /** `false` (default) for plain TCP; `true` or options for TLS. */
  readonly tls?: boolean | TlsOptions | undefined
  /**
   * Per connection attempt (TCP + TLS handshake). Default 5 seconds. Also how long the router
   * may take to answer the `/cancel` of a timed-out command before the connection is
   * considered dead (and re-opened by the next command).
   */
  readonly connectTimeout?: Duration.DurationInput | undefined
  /** Default time a command may take before it is cancelled. Default 10 seconds. */
  readonly commandTimeout?: Duration.DurationInput | undefined
  /** `false` disables retries of connection attempts. */
  readonly reconnect?: false | ReconnectOptions | undefined
}

/**
 * A command: attributes, queries and `.proplist` (see `RouterOsProtocol.CommandParts`), an
 * optional timeout overriding the client's `commandTimeout` and an optional filter of its rows.
 *
 * @since 0.1.0
 * @category models
 */
export interface CommandOptions extends CommandParts {
  readonly timeout?: Duration.DurationInput | undefined
  /**
   * Keeps only the `!re` rows it accepts, dropping the others as they arrive: a print of thousands of rows is
   * filtered without ever being held whole. Called once per row, in order, synchronously as the row is read
   * (outside any fiber). If it throws, the command dies with that defect and is cancelled on the router.
   */
  readonly keep?: ((row: Attributes) => boolean) | undefined
}

/**
 * The reply of a command: the `!re` rows in order (RouterOS property names, e.g. `.id`,
 * `dst-port`) and the `=ret=` of `!done` (e.g. the `.id` an `add` created).
 *
 * @since 0.1.0
 * @category models
 */
export interface CommandResult {
  readonly rows: ReadonlyArray<Attributes>
  readonly ret: Option.Option<string>
}

/**
 * @since 0.1.0
 * @category models
 */
export interface Service {
  /** `host:port` of the router. */
  readonly address: string
  /**
   * Runs one command, e.g. `command("/ip/firewall/nat/print", { queries: ["?chain=dstnat"] })`.
   * Commands run concurrently on one connection. Interrupting the effect sends `/cancel`.
   */
  readonly command: (path: string, options?: CommandOptions) => Effect.Effect<CommandResult, RouterOsError>
}

/**
 * @since 0.1.0
 * @category tags
 */
export class RouterOsClient extends Context.Tag("@natpmp-bridge/core/RouterOsClient")<RouterOsClient, Service>() {}

/**
 * Runs a command with the `RouterOsClient` of the context.
 *
 * @since 0.1.0
 * @category accessors
 */
export const command = (
  path: string,
  options?: CommandOptions
): Effect.Effect<CommandResult, RouterOsError, RouterOsClient> =>
  Effect.flatMap(RouterOsClient, (client) => client.command(path, options))

// -----------------------------------------------------------------------------
// Connection
// -----------------------------------------------------------------------------

type Resume = (effect: Effect.Effect<CommandResult, RouterOsError>) => void

interface Pending {
  readonly path: string
  rows: Array<Attributes>
  readonly keep: ((row: Attributes) => boolean) | undefined
  trap: Extract<Reply, { _tag: "Trap" }> | undefined
  /** `undefined` once cancelled: remaining replies are swallowed until `!done`. */
  resume: Resume | undefined
  /** For `/cancel`: closes the connection if the router does not answer it in time. */
  watchdog?: ReturnType<typeof setTimeout> | undefined
}

const errorReason = (error: NodeJS.ErrnoException, tls: boolean): ConnectionFailure => {
  switch (error.code) {
    case "ECONNREFUSED":
      return "Refused"
    case "ECONNRESET":
    case "EPIPE":
    case "ECONNABORTED":
      return "Reset"
    case "ETIMEDOUT":
      return "Timeout"
    case "EHOSTUNREACH":
    case "ENETUNREACH":
    case "EHOSTDOWN":
    case "ENETDOWN":
      return "Unreachable"
    case "ENOTFOUND":
    case "EAI_AGAIN":
    case "EAI_NONAME":
      return "NotFound"
    default:
      return tls ? "Tls" : "Unknown"
  }
}

const errorDetail = (error: NodeJS.ErrnoException): string => {
  if (error.code === "ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE") {
    return "handshake failure: no cipher in common (a RouterOS api-ssl service without a certificate offers only anonymous DH)"
  }
  const text = typeof error.message === "string" ? error.message : String(error)
  // OpenSSL messages are multi-line "<id>:error:<code>:SSL routines:<function>:<reason>:<file>..."
  const openssl = /:SSL routines:[^:]*:([^:]+):/.exec(text)
  return openssl !== null ? openssl[1] : text.split("\n")[0].trim()
}

const connectionError = (address: string, error: unknown, tls: boolean): RouterOsConnectionError => {
  const e = error as NodeJS.ErrnoException
  return new RouterOsConnectionError({ address, reason: errorReason(e, tls), detail: errorDetail(e), cause: error })
}

const normalizeFingerprint = (fingerprint: string): string => fingerprint.replace(/[^0-9a-fA-F]/g, "").toLowerCase()

class Connection {
  alive = true
  scope: Scope.CloseableScope | undefined = undefined
  /** Closed on purpose: not worth a warning. */
  quiet = false
  closeError: RouterOsError | undefined = undefined
  private tagCounter = 0
  private readonly pending = new Map<string, Pending>()
  private readonly decoder: SentenceDecoder

  constructor(
    private readonly socket: Net.Socket,
    private readonly address: string,
    tls: boolean,
    private readonly cancelDeadlineMillis: number,
    private readonly onClose: (connection: Connection, error: RouterOsError) => void,
    private readonly onStray: (reply: Reply) => void
  ) {
    this.decoder = new SentenceDecoder((sentence) => this.onSentence(sentence))
    socket.setNoDelay(true)
    socket.setKeepAlive(true, 30_000)
    socket.on("data", (chunk: Buffer) => {
      const result = this.decoder.push(chunk)
      if (Either.isLeft(result)) this.close(result.left)
    })
    socket.on("error", (error) => this.close(connectionError(address, error, tls)))
    socket.on("close", () => this.close(new RouterOsConnectionError({ address, reason: "Closed" })))
  }

  /** Registers the tag, then writes the command. Returns the tag. */
  send(path: string, parts: CommandOptions | undefined, resume: Resume): string {
    const tag = (++this.tagCounter).toString(10)
    this.pending.set(tag, { path, rows: [], keep: parts?.keep, trap: undefined, resume })
    this.write(encodeSentence(commandWords(path, parts, tag)))
    return tag
  }

  /** Writes issued in the same tick (concurrent commands) leave in one segment. */
  private write(bytes: Uint8Array): void {
    if (!this.corked) {
      this.corked = true
      this.socket.cork()
      process.nextTick(this.uncork)
    }
    this.socket.write(bytes)
  }

  private corked = false
  private readonly uncork = () => {
    this.corked = false
    this.socket.uncork()
  }

  /** Stops a command: its later replies are swallowed, the router is asked to `/cancel` it. */
  cancel(tag: string): void {
    const entry = this.pending.get(tag)
    if (entry === undefined || entry.resume === undefined) return
    entry.resume = undefined
    entry.rows = []
    if (!this.alive) return
    const cancelTag = (++this.tagCounter).toString(10)
    // a router that does not even answer /cancel is gone: drop the connection so the next command reconnects
    const watchdog = setTimeout(() =>
      this.close(
        new RouterOsConnectionError({
          address: this.address,
          reason: "Timeout",
          detail: "the router stopped answering (no reply to /cancel)"
        })
      ), this.cancelDeadlineMillis)
    this.pending.set(cancelTag, {
      path: "/cancel",
      rows: [],
      keep: undefined,
      trap: undefined,
      resume: undefined,
      watchdog
    })
    this.write(encodeSentence(["/cancel", `=tag=${tag}`, `.tag=${cancelTag}`]))
  }

  close(error: RouterOsError): void {
    if (!this.alive) return
    this.alive = false
    this.closeError = error
    this.socket.destroy()
    const failed = Effect.fail(error)
    for (const entry of this.pending.values()) {
      clearTimeout(entry.watchdog)
      entry.resume?.(failed)
    }
    this.pending.clear()
    this.onClose(this, error)
  }

  /**
   * Whether the command of `tag` keeps `row`. A `keep` that throws ends the command with its defect; the router is
   * asked to `/cancel` it, so that the rest of a long print is not sent for nothing.
   */
  private kept(tag: string, entry: Pending, row: Attributes): boolean {
    if (entry.keep === undefined) return true
    try {
      return entry.keep(row)
    } catch (defect) {
      const resume = entry.resume
      this.cancel(tag)
      resume?.(Effect.die(defect))
      return false
    }
  }

  private onSentence(words: Sentence): void {
    const reply = parseReply(words)
    if (reply._tag === "Fatal") {
      this.close(new RouterOsFatalError({ reason: reply.message }))
      return
    }
    const entry = reply.tag === undefined ? undefined : this.pending.get(reply.tag)
    if (entry === undefined) {
      this.onStray(reply)
      return
    }
    switch (reply._tag) {
      case "Re":
        if (entry.resume !== undefined && this.kept(reply.tag!, entry, reply.attributes)) {
          entry.rows.push(reply.attributes)
        }
        return
      case "Trap":
        if (entry.trap === undefined) entry.trap = reply
        return
      case "Done": {
        this.pending.delete(reply.tag!)
        clearTimeout(entry.watchdog)
        const resume = entry.resume
        if (resume === undefined) return
        const trap = entry.trap
        resume(
          trap === undefined
            ? Effect.succeed({ rows: entry.rows, ret: Option.fromNullable(reply.ret) })
            : Effect.fail(new RouterOsTrapError({ path: entry.path, reason: trap.message, category: trap.category }))
        )
        return
      }
      default:
        return
    }
  }
}

// -----------------------------------------------------------------------------
// Client
// -----------------------------------------------------------------------------

const tlsEnabled = (tls: Options["tls"]): TlsOptions | undefined =>
  tls === undefined || tls === false ? undefined : tls === true ? {} : tls

/**
 * The port used when none is given: 8729 with TLS, else 8728.
 *
 * @since 0.1.0
 * @category constructors
 */
export const defaultPort = (tls: Options["tls"]): number => tlsEnabled(tls) === undefined ? 8728 : 8729

/** Longest delay a Node timer supports; longer (or infinite) timeouts mean no timeout. */
const MAX_TIMER_MILLIS = 2_147_483_647

const ANONYMOUS_DH_CIPHERS = "ADH-AES256-GCM-SHA384:ADH-AES128-GCM-SHA256:ADH-AES256-SHA256:ADH-AES256-SHA:@SECLEVEL=0"

const legacyResponse = (password: string, challenge: string): string =>
  "00" +
  Crypto.createHash("md5").update(Buffer.of(0)).update(password, "utf8").update(Buffer.from(challenge, "hex")).digest(
    "hex"
  )

/**
 * Opens the client: connects and logs in (failing if that is impossible after the retries), and
 * closes the connection when the scope closes.
 *
 * @since 0.1.0
 * @category constructors
 */
export const make = (options: Options): Effect.Effect<Service, RouterOsError, Scope.Scope> =>
  Effect.gen(function*() {
    const tlsOptions = tlsEnabled(options.tls)
    const port = options.port ?? defaultPort(options.tls)
    const address = Net.isIPv6(options.host) ? `[${options.host}]:${port}` : `${options.host}:${port}`
    const connectTimeout = Duration.decode(options.connectTimeout ?? Duration.seconds(5))
    const commandTimeout = Duration.decode(options.commandTimeout ?? Duration.seconds(10))
    const cancelDeadline = Math.min(Duration.toMillis(connectTimeout), MAX_TIMER_MILLIS)
    const annotate = Effect.annotateLogs({ routeros: address })
    const runtime = yield* Effect.runtime<never>()
    const runFork = Runtime.runFork(runtime)
    const clientScope = yield* Effect.scope

    const secureContext = tlsOptions === undefined ? undefined : yield* tlsConnectOptions(address, tlsOptions)
    const pinned = tlsOptions?.fingerprint256 === undefined
      ? undefined
      : normalizeFingerprint(tlsOptions.fingerprint256)
    if (tlsOptions?.anonymousDh === true) {
      yield* annotate(
        Effect.logWarning("RouterOS API over anonymous-DH TLS: encrypted but the router is not authenticated")
      )
    }

    const closedError = () => new RouterOsConnectionError({ address, reason: "Closed", detail: "client shut down" })
    let current: Connection | undefined = undefined
    let shutdown = false
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        shutdown = true
        current?.close(closedError())
        current = undefined
      })
    )

    const onClose = (connection: Connection, error: RouterOsError) => {
      if (current === connection) current = undefined
      if (!shutdown && !connection.quiet) {
        runFork(
          Effect.logWarning("RouterOS API connection lost").pipe(Effect.annotateLogs("error", error.message), annotate)
        )
      }
      if (connection.scope !== undefined) runFork(Scope.close(connection.scope, Exit.void))
    }
    const onStray = (reply: Reply) =>
      runFork(
        Effect.logDebug("RouterOS API reply without a pending command").pipe(
          Effect.annotateLogs({ reply: reply._tag, tag: String(reply.tag) }),
          annotate
        )
      )

    const openSocket = Effect.async<Connection, RouterOsConnectionError>((resume) => {
      const socket = secureContext === undefined
        ? Net.connect({ host: options.host, port })
        : Tls.connect({ ...secureContext, host: options.host, port })
      const onError = (error: Error) => {
        socket.destroy()
        resume(Effect.fail(connectionError(address, error, secureContext !== undefined)))
      }
      socket.once("error", onError)
      socket.once(secureContext === undefined ? "connect" : "secureConnect", () => {
        socket.off("error", onError)
        if (pinned !== undefined) {
          const cert = (socket as Tls.TLSSocket).getPeerCertificate()
          const actual = cert?.fingerprint256 === undefined ? "" : normalizeFingerprint(cert.fingerprint256)
          if (actual !== pinned) {
            socket.destroy()
            return resume(Effect.fail(
              new RouterOsConnectionError({
                address,
                reason: "Tls",
                detail: `certificate fingerprint ${cert?.fingerprint256 ?? "(none)"} does not match the pinned one`
              })
            ))
          }
        }
        resume(
          Effect.succeed(new Connection(socket, address, secureContext !== undefined, cancelDeadline, onClose, onStray))
        )
      })
      return Effect.sync(() => socket.destroy())
    }).pipe(
      Effect.timeoutFail({
        duration: connectTimeout,
        onTimeout: () =>
          new RouterOsConnectionError({
            address,
            reason: "Timeout",
            detail: `after ${Duration.format(connectTimeout)}`
          })
      })
    )

    const runOn = (
      connection: Connection,
      path: string,
      parts: CommandOptions | undefined
    ): Effect.Effect<CommandResult, RouterOsError> => {
      const timeout = parts?.timeout === undefined ? commandTimeout : Duration.decode(parts.timeout)
      // the timeout is a plain timer owned by the command (cheaper than racing a sleeping fiber on this hot path)
      return Effect.async<CommandResult, RouterOsError>((resume) => {
        if (!connection.alive) {
          resume(Effect.fail(connection.closeError!))
          return
        }
        let timer: ReturnType<typeof setTimeout> | undefined = undefined
        const tag = connection.send(path, parts, (result) => {
          clearTimeout(timer)
          resume(result)
        })
        const millis = Duration.toMillis(timeout)
        if (millis <= MAX_TIMER_MILLIS) {
          timer = setTimeout(() => {
            connection.cancel(tag)
            resume(Effect.fail(new RouterOsTimeoutError({ path, timeout })))
          }, millis)
        }
        return Effect.sync(() => {
          clearTimeout(timer)
          connection.cancel(tag)
        })
      })
    }

    const login = (connection: Connection) =>
      Effect.gen(function*() {
        const password = Redacted.value(options.password)
        const asLoginError = <A>(effect: Effect.Effect<A, RouterOsError>) =>
          Effect.catchTag(
            effect,
            "RouterOsTrapError",
            (trap) => Effect.fail(new RouterOsLoginError({ user: options.user, reason: trap.reason }))
          )
        const first = yield* runOn(connection, "/login", { attributes: { name: options.user, password } }).pipe(
          asLoginError
        )
        if (Option.isNone(first.ret)) return
        // pre-6.43 router: answer the MD5 challenge
        const challenge = first.ret.value
        if (!/^(?:[0-9a-fA-F]{2})+$/.test(challenge)) {
          return yield* new RouterOsProtocolError({ reason: "login reply carries a malformed challenge" })
        }
        yield* runOn(connection, "/login", {
          attributes: { name: options.user, response: legacyResponse(password, challenge) }
        }).pipe(asLoginError)
      })

    const open: Effect.Effect<Connection, RouterOsError> = Effect.gen(function*() {
      // each connection lives in its own scope, closed when the connection is lost or the client closes
      const scope = yield* Scope.fork(clientScope, ExecutionStrategy.sequential)
      // acquisition stays interruptible (connect timeout); an interrupted attempt destroys its socket
      const connection = yield* Effect.acquireRelease(
        Effect.interruptible(openSocket),
        (connection) =>
          Effect.sync(() => {
            connection.quiet = true
            connection.close(closedError())
          })
      ).pipe(Scope.extend(scope), Effect.onError(() => Scope.close(scope, Exit.void)))
      connection.scope = scope
      if (!connection.alive) yield* Scope.close(scope, Exit.void)
      yield* login(connection).pipe(Effect.onError(() => Scope.close(scope, Exit.void)))
      return connection
    })

    const reconnect = options.reconnect === undefined ? {} : options.reconnect
    const retrySchedule = reconnect === false
      ? Schedule.stop
      : Schedule.exponential(reconnect.initialDelay ?? Duration.millis(100), 2).pipe(
        Schedule.modifyDelay((_, delay) =>
          Duration.min(delay, Duration.decode(reconnect.maxDelay ?? Duration.seconds(2)))
        ),
        Schedule.intersect(Schedule.recurs(reconnect.retries ?? 3))
      )

    const connectWithRetry = open.pipe(
      Effect.tapError((error) =>
        error._tag === "RouterOsConnectionError"
          ? Effect.logInfo("RouterOS API connection attempt failed").pipe(Effect.annotateLogs("error", error.message))
          : Effect.void
      ),
      Effect.retry({ schedule: retrySchedule, while: (error) => error._tag === "RouterOsConnectionError" }),
      Effect.tap((connection) =>
        Effect.sync(() => {
          current = connection
        })
      ),
      Effect.tap(Effect.logInfo("RouterOS API connected")),
      annotate
    )

    const lock = yield* Effect.makeSemaphore(1)
    const connection: Effect.Effect<Connection, RouterOsError> = Effect.suspend(() => {
      if (current !== undefined && current.alive) return Effect.succeed(current)
      if (shutdown) return Effect.fail(closedError())
      return lock.withPermits(1)(
        Effect.suspend(() => {
          if (current !== undefined && current.alive) return Effect.succeed(current)
          if (shutdown) return Effect.fail(closedError())
          return connectWithRetry
        })
      )
    })

    const command = (path: string, parts?: CommandOptions): Effect.Effect<CommandResult, RouterOsError> =>
      Effect.flatMap(connection, (c) => runOn(c, path, parts))

    yield* connection

    return RouterOsClient.of({ address, command })
  })

const tlsConnectOptions = (
  address: string,
  options: TlsOptions
): Effect.Effect<Tls.ConnectionOptions, RouterOsConnectionError> =>
  Effect.gen(function*() {
    const servername = options.servername === undefined ? {} : { servername: options.servername }
    if (options.anonymousDh === true) {
      return { ...servername, ciphers: ANONYMOUS_DH_CIPHERS, maxVersion: "TLSv1.2", rejectUnauthorized: false }
    }
    if (options.fingerprint256 !== undefined) {
      if (normalizeFingerprint(options.fingerprint256).length !== 64) {
        return yield* new RouterOsConnectionError({
          address,
          reason: "Tls",
          detail: "the pinned SHA-256 fingerprint must be 64 hex digits"
        })
      }
      return { ...servername, rejectUnauthorized: false }
    }
    const toPem = (pem: string | Uint8Array) => typeof pem === "string" ? pem : Buffer.from(pem)
    const ca: Array<string | Buffer> = options.ca === undefined
      ? []
      : typeof options.ca === "string" || options.ca instanceof Uint8Array
      ? [toPem(options.ca)]
      : options.ca.map(toPem)
    if (options.caFile !== undefined) {
      const file = options.caFile
      ca.push(
        yield* Effect.try({
          try: () => Fs.readFileSync(file),
          catch: (cause) =>
            new RouterOsConnectionError({ address, reason: "Tls", detail: `cannot read CA file ${file}`, cause })
        })
      )
    }
    return { ...servername, rejectUnauthorized: true, ...(ca.length === 0 ? {} : { ca }) }
  })

/**
 * @since 0.1.0
 * @category layers
 */
export const layer = (options: Options): Layer.Layer<RouterOsClient, RouterOsError> =>
  Layer.scoped(RouterOsClient, make(options))

/**
 * Parses `host:port`, `host` or `[v6]:port`.
 *
 * @since 0.1.0
 * @category config
 */
export const parseAddress = (input: string): Either.Either<{ host: string; port: number | undefined }, string> => {
  const text = input.trim()
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text)
  const plain = /^([^:\s]+)(?::(\d+))?$/.exec(text)
  const match = bracketed ?? plain ?? (Net.isIPv6(text) ? [text, text, undefined] : null)
  if (match === null || match[1] === undefined || match[1] === "") {
    return Either.left(`expected host or host:port, got "${input}"`)
  }
  if (match[2] === undefined) return Either.right({ host: match[1], port: undefined })
  const port = Number(match[2])
  if (!Number.isInteger(port) || port < 1 || port > 65535) return Either.left(`invalid port in "${input}"`)
  return Either.right({ host: match[1], port })
}

const configError = (name: string, message: string) => ConfigError.InvalidData([name], message)

/**
 * Client options from the environment:
 * `MIKROTIK_API_ADDRESS` (host or host:port, required), `MIKROTIK_API_USER` (default `admin`),
 * `MIKROTIK_API_PASSWORD` (required, redacted), `MIKROTIK_API_TLS` (`false` default, `true`,
 * or `anonymous-dh`), `MIKROTIK_API_TLS_CA` (CA file), `MIKROTIK_API_TLS_FINGERPRINT` (pinned SHA-256).
 * A bad value fails with one line naming the variable.
 *
 * @since 0.1.0
 * @category config
 */
export const config: Config.Config<Options> = Config.all({
  address: Config.string("MIKROTIK_API_ADDRESS").pipe(
    Config.mapOrFail((value) => Either.mapLeft(parseAddress(value), (e) => configError("MIKROTIK_API_ADDRESS", e)))
  ),
  user: Config.string("MIKROTIK_API_USER").pipe(Config.withDefault("admin")),
  password: Config.redacted("MIKROTIK_API_PASSWORD"),
  tls: Config.string("MIKROTIK_API_TLS").pipe(
    Config.withDefault("false"),
    Config.mapOrFail((value) => {
      const v = value.trim().toLowerCase()
      if (["false", "no", "off", "0", ""].includes(v)) return Either.right("off" as const)
      if (["true", "yes", "on", "1"].includes(v)) return Either.right("verify" as const)
      if (v === "anonymous-dh") return Either.right("anonymous-dh" as const)
      return Either.left(
        configError("MIKROTIK_API_TLS", `expected true, false or anonymous-dh, got "${value}"`)
      )
    })
  ),
  caFile: Config.option(Config.string("MIKROTIK_API_TLS_CA")),
  fingerprint: Config.option(Config.string("MIKROTIK_API_TLS_FINGERPRINT")).pipe(
    Config.mapOrFail((value) =>
      Option.isSome(value) && normalizeFingerprint(value.value).length !== 64
        ? Either.left(configError("MIKROTIK_API_TLS_FINGERPRINT", "expected a SHA-256 fingerprint (64 hex digits)"))
        : Either.right(value)
    )
  )
}).pipe(
  Config.mapOrFail(
    ({ address, caFile, fingerprint, password, tls, user }): Either.Either<Options, ConfigError.ConfigError> => {
      if (tls !== "verify" && Option.isSome(caFile)) {
        return Either.left(configError("MIKROTIK_API_TLS_CA", "needs MIKROTIK_API_TLS=true"))
      }
      if (tls !== "verify" && Option.isSome(fingerprint)) {
        return Either.left(configError("MIKROTIK_API_TLS_FINGERPRINT", "needs MIKROTIK_API_TLS=true"))
      }
      const secure: Options["tls"] = tls === "off"
        ? false
        : tls === "anonymous-dh"
        ? { anonymousDh: true }
        : {
          ...(Option.isSome(caFile) ? { caFile: caFile.value } : {}),
          ...(Option.isSome(fingerprint) ? { fingerprint256: fingerprint.value } : {})
        }
      return Either.right({ host: address.host, port: address.port, user, password, tls: secure })
    }
  )
)

/**
 * The client configured from the environment (see {@link config}).
 *
 * @since 0.1.0
 * @category layers
 */
export const layerConfig: Layer.Layer<RouterOsClient, RouterOsError | ConfigError.ConfigError> = Layer.scoped(
  RouterOsClient,
  Effect.flatMap(config, make)
)
