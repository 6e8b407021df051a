/**
 * The NAT-PMP agent: a small program the lab tests bundle (esbuild, from the sources) and run inside a lab namespace
 * with `ip netns exec`, because the project's client is a library and the test process lives in the root namespace.
 * It speaks the JSON-lines protocol of AgentProtocol.ts: it runs the project's NatPmpClient (requests, keep-alives)
 * and serves/sends test traffic. Logs go to stderr; stdout carries only the protocol. It exits when stdin closes or
 * on SIGTERM, closing its keep-alives first (which deletes their mappings).
 */
import { NatPmpClient } from "@natpmp-bridge/core"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as ExecutionStrategy from "effect/ExecutionStrategy"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Scope from "effect/Scope"
import * as Stream from "effect/Stream"
import * as Dgram from "node:dgram"
import * as Net from "node:net"
import * as Readline from "node:readline"
import type { AgentCommand, AgentMessage, AgentOptions, AgentRequest, RemoteKeepEvent } from "./AgentProtocol.js"
import { toRemoteError } from "./AgentProtocol.js"

const write = (message: AgentMessage) => Effect.sync(() => process.stdout.write(JSON.stringify(message) + "\n"))

const toRemoteKeepEvent = (event: NatPmpClient.KeepEvent): RemoteKeepEvent => {
  switch (event._tag) {
    case "Mapped":
      return {
        _tag: event._tag,
        mapping: event.mapping,
        reason: event.reason,
        ...(event.previous ? { previous: event.previous } : {})
      }
    case "PortChanged":
      return { _tag: event._tag, mapping: event.mapping, previousExternalPort: event.previousExternalPort }
    case "MappingFailed":
      return { _tag: event._tag, reason: event.reason, error: toRemoteError(event.error) }
    case "Unmapped":
      return { _tag: event._tag, mapping: event.mapping }
    case "UnmapFailed":
      return { _tag: event._tag, mapping: event.mapping, message: event.message }
  }
}

class AgentError extends Error {
  readonly _tag = "AgentError"
}

const fail = (message: string) => Effect.fail(new AgentError(message))

/** An echo server on 0.0.0.0:port for the life of the scope. */
const serve = (protocol: "tcp" | "udp", port: number) =>
  Effect.acquireRelease(
    Effect.async<() => void, AgentError>((resume) => {
      const report = (from: string) => Effect.runFork(write({ event: "traffic", protocol, port, from }))
      if (protocol === "tcp") {
        const server = Net.createServer((socket) => {
          report(socket.remoteAddress ?? "?")
          socket.on("error", () => {})
          socket.on("data", (data) => socket.write(data))
        })
        server.once("error", (error) => resume(fail(`tcp listen on ${port}: ${error.message}`)))
        server.listen(port, "0.0.0.0", () => resume(Effect.succeed(() => server.close())))
      } else {
        const socket = Dgram.createSocket("udp4")
        socket.on("message", (message, remote) => {
          report(remote.address)
          socket.send(message, remote.port, remote.address)
        })
        socket.once("error", (error) => resume(fail(`udp bind on ${port}: ${error.message}`)))
        socket.bind(port, "0.0.0.0", () => resume(Effect.succeed(() => socket.close())))
      }
    }),
    (close) => Effect.sync(close)
  )

/** One round trip to an echo server: sends `payload`, answers with what came back. */
const send = (protocol: "tcp" | "udp", address: string, port: number, payload: string) =>
  Effect.async<{ readonly reply: string }, AgentError>((resume) => {
    let settled = false
    const settle = (effect: Effect.Effect<{ readonly reply: string }, AgentError>) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      cleanup()
      resume(effect)
    }
    let cleanup = () => {}
    const timer = setTimeout(() => settle(fail(`no ${protocol} echo from ${address}:${port} within 2 s`)), 2000)
    if (protocol === "tcp") {
      const socket = Net.connect(port, address)
      cleanup = () => socket.destroy()
      socket.on("connect", () => socket.write(payload))
      socket.on("data", (data) => settle(Effect.succeed({ reply: data.toString() })))
      socket.on("error", (error) => settle(fail(`tcp to ${address}:${port}: ${error.message}`)))
    } else {
      const socket = Dgram.createSocket("udp4")
      cleanup = () => socket.close()
      socket.on("message", (message) => settle(Effect.succeed({ reply: message.toString() })))
      socket.on("error", (error) => settle(fail(`udp to ${address}:${port}: ${error.message}`)))
      socket.send(payload, port, address)
    }
    return Effect.sync(() => settle(fail("interrupted")))
  })

const main = (options: AgentOptions) =>
  Effect.gen(function*() {
    const client = options.gateway === undefined ? undefined : yield* NatPmpClient.make({
      gateway: options.gateway,
      initialTimeout: Duration.millis(options.initialTimeoutMillis ?? 250),
      maxAttempts: options.maxAttempts ?? 9,
      announcements: options.announcements ? {} : false
    })
    if (client !== undefined) {
      yield* Effect.forkScoped(
        Stream.runForEach(client.events, (gatewayEvent) => write({ event: "gateway", gatewayEvent }))
      )
    }
    const withClient = <A, E>(f: (client: NatPmpClient.Service) => Effect.Effect<A, E>) =>
      client === undefined ? fail("the agent was started without a gateway") : f(client)
    const keeps = new Map<string, Scope.CloseableScope>()
    const agentScope = yield* Effect.scope

    const execute = (command: AgentCommand): Effect.Effect<unknown, unknown> => {
      switch (command.op) {
        case "publicAddress":
          return withClient((c) => c.publicAddress)
        case "map":
          return withClient((c) => c.map(command.options))
        case "unmap":
          return withClient((c) => c.unmap(command.protocol, command.internalPort))
        case "unmapAll":
          return withClient((c) => c.unmapAll(command.protocol))
        case "keep":
          return withClient((c) =>
            Effect.gen(function*() {
              if (keeps.has(command.key)) return yield* fail(`keep-alive ${command.key} exists`)
              const scope = yield* Scope.fork(agentScope, ExecutionStrategy.sequential)
              const alive = yield* NatPmpClient.keep({
                ...command.options,
                remapDelay: Effect.succeed(Duration.zero),
                retryDelay: Duration.millis(500),
                onEvent: (event) => write({ event: "keep", key: command.key, keepEvent: toRemoteKeepEvent(event) })
              }).pipe(
                Effect.provideService(NatPmpClient.NatPmpClient, c),
                Scope.extend(scope),
                Effect.onError((cause) => Scope.close(scope, Exit.failCause(cause)))
              )
              keeps.set(command.key, scope)
              return yield* alive.mapping
            })
          )
        case "release":
          return Effect.gen(function*() {
            const scope = keeps.get(command.key)
            if (scope === undefined) return yield* fail(`no keep-alive ${command.key}`)
            keeps.delete(command.key)
            yield* Scope.close(scope, Exit.void)
            return null
          })
        case "serve":
          return Effect.as(Scope.extend(serve(command.protocol, command.port), agentScope), null)
        case "send":
          return send(command.protocol, command.address, command.port, command.payload)
      }
    }

    const lines = yield* Queue.unbounded<string | null>()
    const reader = Readline.createInterface({ input: process.stdin })
    reader.on("line", (line) => lines.unsafeOffer(line))
    reader.on("close", () => lines.unsafeOffer(null))
    yield* write({ id: 0, ok: true, value: "ready" })
    // requests run concurrently; the agent ends when its stdin closes
    while (true) {
      const line = yield* Queue.take(lines)
      if (line === null) break
      if (line.trim() === "") continue
      const request = JSON.parse(line) as AgentRequest
      yield* Effect.forkIn(
        execute(request).pipe(
          Effect.matchEffect({
            onSuccess: (value) => write({ id: request.id, ok: true, value: value ?? null }),
            onFailure: (error) => write({ id: request.id, ok: false, error: toRemoteError(error) })
          })
        ),
        agentScope
      )
    }
  })

const stderrLogger = Logger.map(Logger.logfmtLogger, (line) => process.stderr.write(line + "\n"))
const options = JSON.parse(process.argv[2] ?? "{}") as AgentOptions
const fiber = Effect.runFork(
  Effect.scoped(main(options)).pipe(
    Effect.provide(Logger.replace(Logger.defaultLogger, stderrLogger)),
    Logger.withMinimumLogLevel(LogLevel.Debug)
  )
)
process.once("SIGTERM", () => Effect.runFork(Fiber.interrupt(fiber)))
fiber.addObserver((exit) => {
  if (Exit.isFailure(exit) && !Exit.isInterrupted(exit)) {
    process.stderr.write(`agent failed: ${String(exit.cause)}\n`)
    process.exitCode = 1
  }
  process.exit()
})
