import { describe, expect, it } from "@effect/vitest"
import { RouterOsClient, RouterOsProtocol } from "@natpmp-bridge/core"
import { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Cause from "effect/Cause"
import * as ConfigProvider from "effect/ConfigProvider"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as Logger from "effect/Logger"
import * as Option from "effect/Option"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as Net from "node:net"

const PASSWORD = "s3cret-Pa55"

const startSimulator = (options?: RouterOsSimulator.Options) =>
  RouterOsSimulator.make({ user: "api", password: PASSWORD, ...RouterOsSimulator.vpnRouterV7(), ...options })

const connect = (sim: RouterOsSimulator.Simulator, options?: Partial<RouterOsClient.Options>) =>
  RouterOsClient.make({
    ...sim.clientOptions,
    reconnect: { retries: 2, initialDelay: "10 millis", maxDelay: "50 millis" },
    ...options
  })

/** A port nothing listens on. */
const closedPort = Effect.async<number>((resume) => {
  const server = Net.createServer()
  server.listen(0, "127.0.0.1", () => {
    const port = (server.address() as Net.AddressInfo).port
    server.close(() => resume(Effect.succeed(port)))
  })
})

/**
 * A raw TCP server that answers `/login` with `!done` and every other command with the bytes
 * `reply(words)` returns (for protocol misbehaviour the simulator never shows).
 */
const rawServer = (reply: (words: ReadonlyArray<string>, tag: string) => Uint8Array | undefined) =>
  Effect.acquireRelease(
    Effect.async<{ server: Net.Server; port: number; connections: () => number; closed: () => number }>((resume) => {
      let connections = 0
      let closed = 0
      const server = Net.createServer((socket) => {
        connections++
        socket.on("error", () => {})
        socket.on("close", () => closed++)
        const decoder = new RouterOsProtocol.SentenceDecoder((words) => {
          const tag = words.find((w) => w.startsWith(".tag="))?.slice(5) ?? ""
          if (words[0] === "/login") socket.write(RouterOsProtocol.encodeSentence(["!done", `.tag=${tag}`]))
          else {
            const bytes = reply(words, tag)
            if (bytes !== undefined) socket.write(bytes)
          }
        })
        socket.on("data", (chunk) => decoder.push(chunk))
      })
      server.listen(
        0,
        "127.0.0.1",
        () =>
          resume(
            Effect.succeed({
              server,
              port: (server.address() as Net.AddressInfo).port,
              connections: () => connections,
              closed: () => closed
            })
          )
      )
    }),
    ({ server }) => Effect.sync(() => server.close())
  )

const captureLogs = () => {
  const lines: Array<string> = []
  const logger = Logger.make(({ annotations, message }) => {
    lines.push(JSON.stringify({ message, annotations: [...annotations] }))
  })
  return { lines, layer: Logger.replace(Logger.defaultLogger, logger) }
}

describe("RouterOsClient", () => {
  it.scopedLive("logs in (plain) and runs a print", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      const result = yield* client.command("/system/resource/print", { proplist: ["version", "board-name"] })
      expect(result.rows).toEqual([{ version: "7.16.2 (stable)", "board-name": "hAP ax^2" }])
      expect(Option.isNone(result.ret)).toBe(true)
      expect(yield* sim.commandCount()).toBe(1)
      expect(yield* sim.connections).toBe(1)
      expect(client.address).toBe(`127.0.0.1:${sim.port}`)
    }))

  it.scopedLive("logs in with the legacy MD5 challenge when !done carries =ret=", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator({ login: "legacy" })
      const client = yield* connect(sim)
      const result = yield* client.command("/ip/address/print", { queries: ["?interface=bridge"] })
      expect(result.rows.map((r) => r["address"])).toEqual(["192.168.88.1/24"])
    }))

  it.scopedLive("fails with a typed login error carrying the router's message, never the password", () =>
    Effect.gen(function*() {
      const logs = captureLogs()
      const sim = yield* startSimulator()
      const error = yield* connect(sim, { password: Redacted.make("wrong-" + PASSWORD) }).pipe(
        Effect.flip,
        Effect.provide(logs.layer)
      )
      expect(error._tag).toBe("RouterOsLoginError")
      expect(error.message).toBe(`RouterOS login as "api" failed: invalid user name or password (6)`)
      const legacy = yield* startSimulator({ login: "legacy" })
      const legacyError = yield* connect(legacy, { password: Redacted.make("nope") }).pipe(Effect.flip)
      expect(legacyError).toMatchObject({ _tag: "RouterOsLoginError", reason: "cannot log in" })
      yield* legacy.setRejectLogin(true)
      const rejected = yield* connect(legacy).pipe(Effect.flip)
      expect(rejected._tag).toBe("RouterOsLoginError")
      // login errors are not retried
      expect(yield* sim.connections).toBe(1)
      const everything = [...logs.lines, error.message, String(error), JSON.stringify(error)].join("\n")
      expect(everything).not.toContain(PASSWORD)
    }))

  it.scopedLive("fails with a typed trap error (message and category)", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      const missing = yield* client.command("/ip/firewall/nat/remove", { attributes: { ".id": "*99" } }).pipe(
        Effect.flip
      )
      expect(missing).toMatchObject({
        _tag: "RouterOsTrapError",
        path: "/ip/firewall/nat/remove",
        reason: "no such item"
      })
      const bad = yield* client.command("/ip/firewall/nat/add", {
        attributes: { chain: "dstnat", protocol: "tcp", "dst-port": "70000" }
      }).pipe(Effect.flip)
      expect(bad).toMatchObject({ _tag: "RouterOsTrapError", category: 1 })
      const unknown = yield* client.command("/no/such/thing").pipe(Effect.flip)
      expect(unknown).toMatchObject({ _tag: "RouterOsTrapError", reason: "no such command prefix", category: 0 })
      // the connection survives traps
      expect(yield* sim.connections).toBe(1)
    }))

  it.scopedLive("returns =ret= and handles !empty replies", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator({ emptyReplies: true })
      const client = yield* connect(sim)
      const added = yield* client.command("/ip/firewall/nat/add", {
        attributes: {
          chain: "dstnat",
          action: "dst-nat",
          protocol: "tcp",
          "dst-port": 8080,
          "to-addresses": "10.0.0.1"
        }
      })
      expect(Option.getOrThrow(added.ret)).toMatch(/^\*[0-9A-F]+$/)
      const none = yield* client.command("/ip/firewall/nat/print", { queries: ["?chain=srcnat"] })
      expect(none.rows).toEqual([])
      yield* sim.setEmptyReplies(false)
      expect((yield* client.command("/ip/firewall/nat/print", { queries: ["?chain=srcnat"] })).rows).toEqual([])
    }))

  it.scopedLive("keeps only the rows a filter accepts; a filter that throws ends its command, not the connection", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      yield* Effect.forEach([1, 2, 3, 4], (i) =>
        client.command("/ip/firewall/nat/add", {
          attributes: { chain: "dstnat", action: "dst-nat", protocol: "tcp", "dst-port": 7000 + i, comment: `r${i}` }
        }))
      const seen: Array<string> = []
      const even = yield* client.command("/ip/firewall/nat/print", {
        queries: ["?chain=dstnat"],
        proplist: ["comment", "dst-port"],
        keep: (row) => {
          seen.push(row.comment)
          return Number(row["dst-port"]) % 2 === 0
        }
      })
      expect(even.rows).toEqual([{ comment: "r2", "dst-port": "7002" }, { comment: "r4", "dst-port": "7004" }])
      expect(seen).toEqual(["r1", "r2", "r3", "r4"])

      const exit = yield* client.command("/ip/firewall/nat/print", {
        queries: ["?chain=dstnat"],
        keep: (row) => {
          // eslint-disable-next-line no-restricted-syntax -- a filter that throws is what is tested
          if (row.comment === "r3") throw new Error("bad filter")
          return true
        }
      }).pipe(Effect.exit)
      const cause = Exit.isFailure(exit) ? exit.cause : Cause.empty
      expect(Cause.isDie(cause)).toBe(true)
      expect(String(Cause.squash(cause))).toContain("bad filter")
      // the rows after the throw are swallowed, the print is cancelled; the connection serves the next command
      const all = yield* client.command("/ip/firewall/nat/print", { queries: ["?chain=dstnat"], proplist: ["comment"] })
      expect(all.rows.map((row) => row.comment)).toEqual(["r1", "r2", "r3", "r4"])
      expect(yield* sim.commandCount("/cancel")).toBe(1)
      expect(yield* sim.connections).toBe(1)
    }))

  it.scopedLive("runs many commands concurrently on one connection, replies routed by tag", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      const ids = yield* Effect.forEach(
        Array.from({ length: 40 }, (_, i) => i),
        (i) =>
          client.command("/ip/firewall/nat/add", {
            attributes: {
              chain: "dstnat",
              action: "dst-nat",
              protocol: "udp",
              "dst-port": 20000 + i,
              "to-addresses": "192.168.88.20",
              comment: `rule ${i}`
            }
          }).pipe(Effect.map((r) => Option.getOrThrow(r.ret))),
        { concurrency: "unbounded" }
      )
      expect(new Set(ids).size).toBe(40)
      // concurrent prints with different queries each get their own rows
      yield* sim.setReplyDelay("20 millis")
      const results = yield* Effect.forEach(
        Array.from({ length: 40 }, (_, i) => i),
        (i) => client.command("/ip/firewall/nat/print", { queries: [`?dst-port=${20000 + i}`], proplist: ["comment"] }),
        { concurrency: "unbounded" }
      )
      results.forEach((r, i) => expect(r.rows).toEqual([{ comment: `rule ${i}` }]))
      expect(yield* sim.connections).toBe(1)
    }))

  it.scopedLive("interrupting a command sends /cancel and keeps the connection usable", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      yield* sim.setReplyDelay("5 seconds")
      const fiber = yield* client.command("/ip/firewall/nat/print").pipe(Effect.fork)
      yield* Effect.sleep("100 millis")
      const started = Date.now()
      yield* Fiber.interrupt(fiber)
      expect(Date.now() - started).toBeLessThan(1000)
      yield* Effect.sleep("100 millis")
      expect(yield* sim.commandCount("/cancel")).toBe(1)
      yield* sim.setReplyDelay(0)
      const result = yield* client.command("/system/identity/print")
      expect(result.rows).toEqual([{ name: "MikroTik" }])
      expect(yield* sim.connections).toBe(1)
    }))

  it.scopedLive("times out a command after its timeout and cancels it on the router", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim, { commandTimeout: "150 millis" })
      yield* sim.setReplyDelay("2 seconds")
      const error = yield* client.command("/ip/route/print").pipe(Effect.flip)
      expect(error._tag).toBe("RouterOsTimeoutError")
      expect(error.message).toBe("RouterOS /ip/route/print got no reply within 150ms")
      const perCommand = yield* client.command("/ip/route/print", { timeout: "50 millis" }).pipe(Effect.flip)
      expect(perCommand._tag).toBe("RouterOsTimeoutError")
      yield* Effect.sleep("50 millis")
      expect(yield* sim.commandCount("/cancel")).toBe(2)
      yield* sim.setReplyDelay(0)
      expect((yield* client.command("/ip/route/print")).rows.length).toBe(5)
    }))

  it.scopedLive("fails in-flight commands when the connection is lost, and the next command reconnects", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      yield* sim.setReplyDelay("1 second")
      const fibers = yield* Effect.forEach([1, 2, 3], () => client.command("/ip/address/print").pipe(Effect.fork))
      yield* Effect.sleep("100 millis")
      yield* sim.disconnectAll
      const exits = yield* Effect.forEach(fibers, Fiber.await)
      for (const exit of exits) {
        expect(Exit.isFailure(exit)).toBe(true)
        if (Exit.isFailure(exit)) {
          const error = Option.getOrThrow(Exit.causeOption(exit).pipe(Option.flatMap((c) => Option.fromNullable(c))))
          expect(String(error)).toContain("RouterOsConnectionError")
        }
      }
      yield* sim.setReplyDelay(0)
      expect((yield* client.command("/ip/address/print")).rows.length).toBe(3)
      expect(yield* sim.connections).toBe(2)

      // a drop while the command is being answered
      yield* sim.dropAfter(1)
      yield* client.command("/system/identity/print")
      const dropped = yield* client.command("/system/identity/print").pipe(Effect.flip)
      expect(dropped).toMatchObject({ _tag: "RouterOsConnectionError" })
      expect(["Closed", "Reset"]).toContain((dropped as RouterOsClient.RouterOsConnectionError).reason)
      expect((yield* client.command("/system/identity/print")).rows).toEqual([{ name: "MikroTik" }])
      expect(yield* sim.connections).toBe(3)
    }))

  it.scopedLive("turns !fatal into a typed error and reconnects afterwards", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      yield* sim.fatalOnNextCommand("too many commands")
      const error = yield* client.command("/ip/route/print").pipe(Effect.flip)
      expect(error).toMatchObject({ _tag: "RouterOsFatalError", reason: "too many commands" })
      expect(error.message).toBe("RouterOS closed the API session: too many commands")
      expect((yield* client.command("/ip/route/print")).rows.length).toBe(5)
      expect(yield* sim.connections).toBe(2)
    }))

  it.scopedLive("fails with Refused after bounded retries, and reconnects when the router is back", () =>
    Effect.gen(function*() {
      const port = yield* closedPort
      const started = Date.now()
      const error = yield* RouterOsClient.make({
        host: "127.0.0.1",
        port,
        user: "api",
        password: Redacted.make(PASSWORD),
        reconnect: { retries: 3, initialDelay: "20 millis", maxDelay: "40 millis" }
      }).pipe(Effect.flip)
      expect(error).toMatchObject({ _tag: "RouterOsConnectionError", reason: "Refused" })
      expect(error.message).toContain(`RouterOS API at 127.0.0.1:${port}: connection refused`)
      // 20 + 40 + 40 ms of backoff
      expect(Date.now() - started).toBeGreaterThanOrEqual(90)

      // router restarts on the same port: the next command reconnects
      const sim = yield* startSimulator()
      const client = yield* connect(sim)
      yield* sim.dropAfter(0)
      yield* client.command("/ip/route/print").pipe(Effect.flip)
      expect((yield* client.command("/ip/route/print")).rows.length).toBe(5)
    }))

  it.scopedLive("times out a connection whose TLS handshake never completes", () =>
    Effect.gen(function*() {
      const { port } = yield* rawServer(() => undefined)
      const error = yield* RouterOsClient.make({
        host: "127.0.0.1",
        port,
        user: "api",
        password: Redacted.make(PASSWORD),
        tls: true,
        connectTimeout: "200 millis",
        reconnect: false
      }).pipe(Effect.flip)
      expect(error).toMatchObject({ _tag: "RouterOsConnectionError", reason: "Timeout" })
    }))

  it.scopedLive("drops a connection whose router stops answering, so the next command reconnects", () =>
    Effect.gen(function*() {
      let silent = true
      const server = yield* rawServer((_, tag) =>
        silent ? undefined : RouterOsProtocol.encodeSentence(["!done", `.tag=${tag}`])
      )
      const client = yield* RouterOsClient.make({
        host: "127.0.0.1",
        port: server.port,
        user: "api",
        password: Redacted.make(PASSWORD),
        commandTimeout: "100 millis",
        connectTimeout: "200 millis",
        reconnect: false
      })
      const error = yield* client.command("/ip/route/print").pipe(Effect.flip)
      expect(error._tag).toBe("RouterOsTimeoutError")
      // no reply to the /cancel within connectTimeout: the connection is given up
      for (let i = 0; i < 100 && server.closed() === 0; i++) yield* Effect.sleep("20 millis")
      expect(server.closed()).toBe(1)
      silent = false
      const result = yield* RouterOsClient.command("/ip/route/print").pipe(
        Effect.provideService(RouterOsClient.RouterOsClient, client)
      )
      expect(result.rows).toEqual([])
      expect(server.connections()).toBe(2)
    }))

  it.scopedLive("fails with a protocol error on a control byte and tolerates unknown replies and stray tags", () =>
    Effect.gen(function*() {
      const { port } = yield* rawServer((words, tag) => {
        const enc = RouterOsProtocol.encodeSentence
        if (words[0] === "/good") {
          return Buffer.concat([
            enc(["!re", "=x=1", ".tag=999"]),
            enc(["!future-reply", `.tag=${tag}`]),
            enc(["!re", "=a=b=c", `.tag=${tag}`]),
            enc(["!done", `.tag=${tag}`])
          ])
        }
        return Uint8Array.of(0x03, 0x21, 0x72, 0x65, 0xF8)
      })
      const client = yield* RouterOsClient.make({
        host: "127.0.0.1",
        port,
        user: "api",
        password: Redacted.make(PASSWORD),
        reconnect: false
      })
      expect((yield* client.command("/good")).rows).toEqual([{ a: "b=c" }])
      const error = yield* client.command("/bad").pipe(Effect.flip)
      expect(error._tag).toBe("RouterOsProtocolError")
      expect(error.message).toContain("reserved control byte 0xF8")
    }))

  it.scopedLive("router messages with line breaks or escape sequences give one-line, printable error messages", () =>
    Effect.gen(function*() {
      const hostile = "line one\nline two\r\u001b[2J\u2028end"
      const enc = RouterOsProtocol.encodeSentence
      const { port } = yield* rawServer((words, tag) =>
        words[0] === "/trap"
          ? Buffer.concat([enc(["!trap", `=message=${hostile}`, `.tag=${tag}`]), enc(["!done", `.tag=${tag}`])])
          : enc(["!fatal", hostile])
      )
      const client = yield* RouterOsClient.make({
        host: "127.0.0.1",
        port,
        user: "api",
        password: Redacted.make(PASSWORD),
        reconnect: false
      })
      const trap = yield* client.command("/trap").pipe(Effect.flip)
      const fatal = yield* client.command("/fatal").pipe(Effect.flip)
      expect(trap._tag).toBe("RouterOsTrapError")
      expect(fatal._tag).toBe("RouterOsFatalError")
      for (const error of [trap, fatal]) {
        expect(error.message).not.toMatch(/[\u0000-\u001f\u007f-\u009f\u2028\u2029]/)
        expect(error.message).toContain("line one\\nline two\\r\\u001b[2J\\u2028end")
      }
      // the structured reason keeps the router's text as sent
      expect(trap._tag === "RouterOsTrapError" && trap.reason).toBe(hostile)
      const login = new RouterOsClient.RouterOsLoginError({ user: "a\nb", reason: "bad\r\npassword" })
      expect(login.message).toBe("RouterOS login as \"a\\nb\" failed: bad\\r\\npassword")
    }))

  it.scopedLive("fails in-flight and later commands once the client's scope is closed", () =>
    Effect.gen(function*() {
      const sim = yield* startSimulator()
      const scope = yield* Scope.make()
      const client = yield* connect(sim).pipe(Scope.extend(scope))
      yield* sim.setReplyDelay("1 second")
      const fiber = yield* client.command("/ip/route/print").pipe(Effect.fork)
      yield* Effect.sleep("50 millis")
      yield* Scope.close(scope, Exit.void)
      const error = yield* Fiber.join(fiber).pipe(Effect.flip)
      expect(error).toMatchObject({ _tag: "RouterOsConnectionError", reason: "Closed" })
      const after = yield* client.command("/ip/route/print").pipe(Effect.flip)
      expect(after.message).toContain("client shut down")
      yield* Effect.sleep("50 millis")
      expect(yield* sim.activeConnections).toBe(0)
    }))

  describe("layerConfig", () => {
    const load = (env: Record<string, string>) =>
      Effect.withConfigProvider(RouterOsClient.config, ConfigProvider.fromMap(new Map(Object.entries(env))))

    it.effect("reads the MIKROTIK_API_* variables", () =>
      Effect.gen(function*() {
        const options = yield* load({ MIKROTIK_API_ADDRESS: "192.168.88.1:8728", MIKROTIK_API_PASSWORD: "pw" })
        expect(options).toMatchObject({ host: "192.168.88.1", port: 8728, user: "admin", tls: false })
        expect(Redacted.value(options.password)).toBe("pw")
        const secure = yield* load({
          MIKROTIK_API_ADDRESS: "router.lan",
          MIKROTIK_API_USER: "bridge",
          MIKROTIK_API_PASSWORD: "pw",
          MIKROTIK_API_TLS: "true",
          MIKROTIK_API_TLS_FINGERPRINT: "ab".repeat(32)
        })
        expect(secure).toMatchObject({ host: "router.lan", port: undefined, user: "bridge" })
        expect(secure.tls).toEqual({ fingerprint256: "ab".repeat(32) })
        expect(RouterOsClient.defaultPort(secure.tls)).toBe(8729)
        const v6 = yield* load({ MIKROTIK_API_ADDRESS: "[fd00::1]:8729", MIKROTIK_API_PASSWORD: "pw" })
        expect(v6).toMatchObject({ host: "fd00::1", port: 8729 })
        const adh = yield* load({
          MIKROTIK_API_ADDRESS: "r",
          MIKROTIK_API_PASSWORD: "pw",
          MIKROTIK_API_TLS: "anonymous-dh"
        })
        expect(adh.tls).toEqual({ anonymousDh: true })
      }))

    it.effect("fails with one line naming the bad variable", () =>
      Effect.gen(function*() {
        const message = (env: Record<string, string>) => load(env).pipe(Effect.flip, Effect.map(String))
        const tls = yield* message({
          MIKROTIK_API_ADDRESS: "r:1",
          MIKROTIK_API_PASSWORD: "pw",
          MIKROTIK_API_TLS: "maybe"
        })
        expect(tls).toContain("MIKROTIK_API_TLS")
        expect(tls).toContain("maybe")
        expect(tls.split("\n").length).toBe(1)
        const address = yield* message({ MIKROTIK_API_ADDRESS: "r:99999", MIKROTIK_API_PASSWORD: "pw" })
        expect(address).toContain("MIKROTIK_API_ADDRESS")
        const missing = yield* message({ MIKROTIK_API_ADDRESS: "r:1" })
        expect(missing).toContain("MIKROTIK_API_PASSWORD")
        const pinWithoutTls = yield* message({
          MIKROTIK_API_ADDRESS: "r",
          MIKROTIK_API_PASSWORD: "pw",
          MIKROTIK_API_TLS_FINGERPRINT: "ab".repeat(32)
        })
        expect(pinWithoutTls).toContain("MIKROTIK_API_TLS_FINGERPRINT")
        expect(Either.isLeft(RouterOsClient.parseAddress("a b"))).toBe(true)
      }))
  })

  it("formats durations in timeout messages", () => {
    const error = new RouterOsClient.RouterOsTimeoutError({ path: "/x", timeout: Duration.seconds(2) })
    expect(error.message).toBe("RouterOS /x got no reply within 2s")
  })
})
