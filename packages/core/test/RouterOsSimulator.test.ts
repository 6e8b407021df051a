import { describe, expect, it } from "@effect/vitest"
import { RouterOsClient, RouterOsProtocol } from "@natpmp-bridge/core"
import { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as FastCheck from "effect/FastCheck"
import * as Option from "effect/Option"
import * as Net from "node:net"

/** A bare API session: sends sentences, collects reply sentences and notices the close. */
const rawSession = (port: number) =>
  Effect.acquireRelease(
    Effect.async<{
      readonly socket: Net.Socket
      readonly replies: Array<ReadonlyArray<string>>
      readonly closed: () => boolean
    }>((resume) => {
      const replies: Array<ReadonlyArray<string>> = []
      let closed = false
      const decoder = new RouterOsProtocol.SentenceDecoder((s) => replies.push(s))
      const socket = Net.connect({ host: "127.0.0.1", port }, () =>
        resume(Effect.succeed({ socket, replies, closed: () => closed })))
      socket.on("data", (chunk) =>
        decoder.push(chunk))
      socket.on("error", () => {})
      socket.on("close", () => {
        closed = true
      })
    }),
    ({ socket }) => Effect.sync(() => socket.destroy())
  ).pipe(
    Effect.map((session) => ({
      ...session,
      send: (...words: ReadonlyArray<string>) =>
        Effect.sync(() => session.socket.write(RouterOsProtocol.encodeSentence(words))),
      waitFor: (predicate: (replies: ReadonlyArray<ReadonlyArray<string>>) => boolean) =>
        Effect.gen(function*() {
          for (let i = 0; i < 200 && !predicate(session.replies); i++) yield* Effect.sleep("5 millis")
          expect(predicate(session.replies), JSON.stringify(session.replies)).toBe(true)
          return session.replies
        })
    }))
  )

const start = (options?: RouterOsSimulator.Options) => RouterOsSimulator.make({ password: "pw", ...options })

const clientFor = (sim: RouterOsSimulator.Simulator) => RouterOsClient.make({ ...sim.clientOptions, reconnect: false })

const rows = [
  { name: "a", n: "1", kind: "x", disabled: "false" },
  { name: "b", n: "5", kind: "y", disabled: "true" },
  { name: "c", n: "10", disabled: "no" },
  { name: "d", n: "20", kind: "x", disabled: "false" }
]

describe("RouterOsSimulator", () => {
  it.scopedLive("evaluates ? queries: equality, ?-, ?<, ?>, and ?# stack operations", () =>
    Effect.gen(function*() {
      const sim = yield* start({ natRules: rows })
      const client = yield* clientFor(sim)
      const names = (queries: ReadonlyArray<string>) =>
        client.command("/ip/firewall/nat/print", { queries, proplist: ["name"] }).pipe(
          Effect.map((r) => r.rows.map((row) => row["name"]).join(""))
        )
      expect(yield* names([])).toBe("abcd")
      expect(yield* names(["?kind=x"])).toBe("ad")
      expect(yield* names(["?=kind=x"])).toBe("ad")
      expect(yield* names(["?kind"])).toBe("abd")
      expect(yield* names(["?-kind"])).toBe("c")
      expect(yield* names(["?name=a", "?name=c", "?#|"])).toBe("ac")
      expect(yield* names(["?kind=x", "?#!"])).toBe("bc")
      expect(yield* names(["?<n=6"])).toBe("ab")
      expect(yield* names(["?>n=5"])).toBe("cd")
      expect(yield* names(["?disabled=false"])).toBe("acd")
      expect(yield* names(["?disabled=yes"])).toBe("b")
      // (kind=x AND n>1) OR name=b
      expect(yield* names(["?kind=x", "?>n=1", "?#&", "?name=b", "?#|"])).toBe("bd")
      // stack index: copy the value at index 1 over the whole stack
      expect(yield* names(["?name=a", "?name=b", "?#1"])).toBe("a")
      const counted = yield* client.command("/ip/firewall/nat/print", { attributes: { "count-only": "" } })
      expect(counted.ret).toMatchObject({ value: "4" })
      const bad = yield* client.command("/ip/firewall/nat/print", { queries: ["?#x"] }).pipe(Effect.flip)
      expect(bad._tag).toBe("RouterOsTrapError")
    }))

  it.scopedLive("allocates .id values like *1A and honours place-before", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const client = yield* clientFor(sim)
      const add = (port: number, extra?: Record<string, string>) =>
        client.command("/ip/firewall/nat/add", {
          attributes: { chain: "dstnat", action: "dst-nat", protocol: "tcp", "dst-port": port, ...extra }
        }).pipe(Effect.map((r) => r.ret))
      expect(yield* add(1)).toMatchObject({ value: "*1A" })
      expect(yield* add(2)).toMatchObject({ value: "*1B" })
      yield* add(3, { "place-before": "*1A" })
      expect((yield* sim.natRules).map((r) => r["dst-port"])).toEqual(["3", "1", "2"])
      const unknown = yield* client.command("/ip/firewall/nat/add", { attributes: { chain: "dstnat", colour: "red" } })
        .pipe(Effect.flip)
      expect(unknown).toMatchObject({ reason: "unknown parameter colour" })
      const noChain = yield* client.command("/ip/firewall/nat/add", { attributes: { action: "accept" } }).pipe(
        Effect.flip
      )
      expect(noChain).toMatchObject({ reason: "failure: chain not set" })
    }))

  it.scopedLive("counts commands per path (not /login) and connections", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const client = yield* clientFor(sim)
      yield* client.command("/ip/route/print")
      yield* client.command("/ip/route/print")
      yield* client.command("/ip/address/print")
      expect(yield* sim.commandCount()).toBe(3)
      expect(yield* sim.commandCount("/ip/route/print")).toBe(2)
      expect(yield* sim.commandCount("/login")).toBe(0)
      yield* sim.resetCounters
      expect(yield* sim.commandCount()).toBe(0)
      expect(yield* sim.connections).toBe(1)
      expect(yield* sim.activeConnections).toBe(1)
    }))

  it.scopedLive("speaks the raw protocol: tags, !empty for 7.18+, !fatal before login and on /quit", () =>
    Effect.gen(function*() {
      const sim = yield* start({ version: "7.18.2 (stable)" })
      const early = yield* rawSession(sim.port)
      yield* early.send("/ip/route/print", ".tag=1")
      yield* early.waitFor(() => early.closed())
      expect(early.replies).toEqual([["!fatal", "not logged in"]])

      const s = yield* rawSession(sim.port)
      yield* s.send("/login", "=name=admin", "=password=pw", ".tag=a")
      yield* s.send("/ip/firewall/nat/print", ".tag=b")
      yield* s.send("/system/resource/print", ".proplist=version", ".tag=c")
      yield* s.send("/quit")
      const replies = yield* s.waitFor(() => s.closed())
      expect(replies).toEqual([
        ["!done", ".tag=a"],
        ["!empty", ".tag=b"],
        ["!done", ".tag=b"],
        ["!re", "=version=7.18.2 (stable)", ".tag=c"],
        ["!done", ".tag=c"],
        ["!fatal", "session terminated on request"]
      ])
    }))

  it.scopedLive("cancels delayed commands with /cancel (one tag or all)", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const s = yield* rawSession(sim.port)
      yield* s.send("/login", "=name=admin", "=password=pw")
      yield* sim.setReplyDelay("10 seconds")
      yield* s.send("/ip/route/print", ".tag=1")
      yield* s.send("/ip/route/print", ".tag=2")
      yield* s.send("/ip/route/print", ".tag=3")
      yield* s.send("/cancel", "=tag=2", ".tag=9")
      yield* s.waitFor((r) => r.some((w) => w[0] === "!done" && w[1] === ".tag=9"))
      expect(s.replies.slice(1)).toEqual([
        ["!trap", "=category=2", "=message=interrupted", ".tag=2"],
        ["!done", ".tag=2"],
        ["!done", ".tag=9"]
      ])
      yield* s.send("/cancel")
      yield* s.waitFor((r) => r.length === 9)
      expect(s.replies.slice(4).map((w) => w.join(" "))).toEqual([
        "!trap =category=2 =message=interrupted .tag=1",
        "!done .tag=1",
        "!trap =category=2 =message=interrupted .tag=3",
        "!done .tag=3",
        "!done"
      ])
    }))

  it.scopedLive("drops a connection after N commands and answers !fatal on demand", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const s = yield* rawSession(sim.port)
      yield* s.send("/login", "=name=admin", "=password=pw")
      yield* sim.dropAfter(2)
      yield* s.send("/system/identity/print", ".tag=1")
      yield* s.send("/system/identity/print", ".tag=2")
      yield* s.send("/system/identity/print", ".tag=3")
      yield* s.waitFor(() => s.closed())
      expect(s.replies.filter((w) => w[0] === "!done").length).toBe(3) // login + 2 commands
      expect(yield* sim.commandCount()).toBe(3)

      const t = yield* rawSession(sim.port)
      yield* t.send("/login", "=name=admin", "=password=pw")
      yield* sim.fatalOnNextCommand("out of memory")
      yield* t.send("/ip/route/print")
      yield* t.waitFor(() => t.closed())
      expect(t.replies.at(-1)).toEqual(["!fatal", "out of memory"])
      expect(yield* sim.connections).toBe(2)
    }))

  it.scopedLive("traps the commands of one path on demand; stops and restarts the service on the same port", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const s = yield* rawSession(sim.port)
      yield* s.send("/login", "=name=admin", "=password=pw")
      yield* sim.trapOn("/ip/firewall/nat/add", "failure: already have such rule")
      yield* s.send("/ip/firewall/nat/add", "=chain=dstnat", ".tag=1")
      yield* s.send("/ip/route/print", "=count-only=", ".tag=2")
      yield* s.waitFor((replies) => replies.filter((w) => w[0] === "!done").length === 3)
      expect(s.replies).toContainEqual(["!trap", "=message=failure: already have such rule", ".tag=1"])
      expect(yield* sim.natRules).toEqual([])
      yield* sim.clearFaults
      yield* s.send("/ip/firewall/nat/add", "=chain=dstnat", ".tag=3")
      yield* s.waitFor((replies) => replies.some((w) => w[0] === "!done" && w.includes(".tag=3")))
      expect(yield* sim.natRules).toHaveLength(1)

      yield* sim.setDown(true)
      yield* s.waitFor(() => s.closed())
      const refused = yield* Effect.async<string>((resume) => {
        const socket = Net.connect({ host: "127.0.0.1", port: sim.port })
        socket.on("connect", () => {
          socket.destroy()
          resume(Effect.succeed("connected"))
        })
        socket.on("error", (error: NodeJS.ErrnoException) => resume(Effect.succeed(error.code ?? "error")))
      })
      expect(refused).toBe("ECONNREFUSED")
      yield* sim.setDown(false)
      const t = yield* rawSession(sim.port)
      yield* t.send("/login", "=name=admin", "=password=pw")
      yield* t.send("/ip/firewall/nat/print", "=count-only=")
      yield* t.waitFor((replies) => replies.some((w) => w[0] === "!done" && w.includes("=ret=1")))
    }))

  it.scopedLive("tolerates any bytes: !fatal on protocol errors, other sessions unaffected", () =>
    Effect.gen(function*() {
      const sim = yield* start()
      const client = yield* clientFor(sim)
      const control = yield* rawSession(sim.port)
      yield* control.send("/login", "=name=admin", "=password=pw")
      control.socket.write(Uint8Array.of(0x04, 0x2F, 0x71, 0x75, 0x69, 0xFF))
      yield* control.waitFor(() => control.closed())
      expect(control.replies.at(-1)?.[0]).toBe("!fatal")
      expect(control.replies.at(-1)?.[1]).toContain("reserved control byte 0xFF")

      const samples = FastCheck.sample(FastCheck.uint8Array({ minLength: 1, maxLength: 300 }), 60)
      yield* Effect.forEach(samples, (bytes) =>
        Effect.scoped(
          Effect.gen(function*() {
            const s = yield* rawSession(sim.port)
            s.socket.write(bytes)
            yield* Effect.sleep("2 millis")
          })
        ), { concurrency: 10 })
      // a long sentence whose words keep the simulator waiting is closed with the client
      expect((yield* client.command("/system/identity/print")).rows).toEqual([{ name: "MikroTik" }])
    }))

  it.scopedLive("answers arbitrary well-formed sentences after login without failing", () =>
    Effect.gen(function*() {
      const sim = yield* start({ natRules: rows, ...RouterOsSimulator.vpnRouterV7() })
      const path = FastCheck.constantFrom(
        "/ip/firewall/nat/print",
        "/ip/firewall/nat/add",
        "/ip/firewall/nat/set",
        "/ip/firewall/nat/remove",
        "/ip/route/print",
        "/ip/address/print",
        "/system/resource/print",
        "/cancel",
        "/login",
        "/nope",
        "",
        "!re"
      )
      const word = FastCheck.oneof(
        FastCheck.string(),
        FastCheck.tuple(
          FastCheck.constantFrom("=", "?", "?-", "?<", "?>", "?#", ".", "=.id=", "=.proplist=", ".tag="),
          FastCheck.string()
        ).map(([a, b]) => a + b),
        FastCheck.constantFrom("=chain=dstnat", "=dst-port=1-2,3", "=protocol=tcp", "=place-before=*1A", "?#|&!.0")
      )
      const sentences = FastCheck.sample(
        FastCheck.tuple(path, FastCheck.array(word, { maxLength: 6 })).map(([p, ws]) => [p, ...ws]),
        300
      )
      const s = yield* rawSession(sim.port)
      yield* s.send("/login", "=name=admin", "=password=pw")
      for (const sentence of sentences) {
        if (sentence[0] !== "") yield* s.send(...sentence)
      }
      yield* s.send("/system/identity/print", ".tag=last")
      yield* s.waitFor((r) => r.some((w) => w[0] === "!done" && w.includes(".tag=last")) || s.closed())
      expect(yield* sim.activeConnections).toBeGreaterThanOrEqual(0)
      const client = yield* clientFor(sim)
      expect((yield* client.command("/system/identity/print")).rows).toEqual([{ name: "MikroTik" }])
    }))

  it.scopedLive("serves the v6 and v7 seeds", () =>
    Effect.gen(function*() {
      const v6 = yield* start(RouterOsSimulator.vpnRouterV6({ vpnInterface: "ovpn-proton", vpnGateway: "10.8.0.1" }))
      const routes = yield* v6.routes
      expect(routes.find((r) => r["gateway"] === "10.8.0.1")?.["gateway-status"]).toBe(
        "10.8.0.1 reachable via  ovpn-proton"
      )
      expect((yield* v6.addresses).find((a) => a["interface"] === "ovpn-proton")).toMatchObject({
        address: "10.8.0.2/32",
        network: "10.8.0.1"
      })
      const v7 = yield* start(RouterOsSimulator.vpnRouterV7())
      expect((yield* v7.routes).every((r) => /^\*[0-9A-F]+$/.test(r[".id"]))).toBe(true)
    }))
})

describe("RouterOsSimulator onNatChange", () => {
  it.scopedLive("sees the whole table at start and after each change; replies wait for it and keep their order", () =>
    Effect.gen(function*() {
      const seen: Array<ReadonlyArray<string>> = []
      let busy = false
      const sim = yield* start({
        natRules: [{ chain: "dstnat", action: "accept", comment: "seed" }],
        onNatChange: (rules) =>
          Effect.gen(function*() {
            expect(busy).toBe(false) // one call at a time
            busy = true
            yield* Effect.sleep("30 millis")
            seen.push(rules.map((rule) => rule.comment ?? ""))
            busy = false
          })
      })
      expect(seen).toStrictEqual([["seed"]])
      const client = yield* clientFor(sim)
      const add = (comment: string) =>
        client.command("/ip/firewall/nat/add", { attributes: { chain: "dstnat", action: "accept", comment } })
      const added = yield* add("a")
      // answered only once the backend has the rule
      expect(seen).toStrictEqual([["seed"], ["seed", "a"]])
      // a print sent right behind a change is answered after it; a failed command does not call the backend
      const [, printed, failed] = yield* Effect.all([
        add("b"),
        client.command("/ip/firewall/nat/print"),
        Effect.flip(client.command("/ip/firewall/nat/remove", { attributes: { ".id": "*FFF" } }))
      ], { concurrency: "unbounded" })
      expect(printed.rows.map((row) => row["comment"])).toStrictEqual(["seed", "a", "b"])
      expect(failed._tag).toBe("RouterOsTrapError")
      expect(seen).toStrictEqual([["seed"], ["seed", "a"], ["seed", "a", "b"]])
      yield* client.command("/ip/firewall/nat/remove", { attributes: { ".id": Option.getOrElse(added.ret, () => "") } })
      yield* sim.setNatRule("*1A", { comment: "seed2" })
      expect(seen.slice(3)).toStrictEqual([["seed", "b"], ["seed2", "b"]])
    }))
})
