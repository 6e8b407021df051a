/**
 * RouterOS API client against the simulator over one loopback TCP connection, with the simulator
 * in a child process (like a real router: client and router do not share an event loop) and in
 * the same process.
 *
 *   npx vitest bench --run --project core packages/core/bench/routeros.bench.ts
 *
 * "1 command" benches: hz = commands/s, mean = round-trip time per command (ms).
 * "batch of 100" benches: commands/s = hz × 100, per-command time = mean / 100.
 */
import { RouterOsClient, RouterOsCommands, RouterOsProtocol } from "@natpmp-bridge/core"
import { RouterOsSimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Layer from "effect/Layer"
import * as Redacted from "effect/Redacted"
import * as Scope from "effect/Scope"
import * as ChildProcess from "node:child_process"
import * as Path from "node:path"
import { afterAll, beforeAll, bench, describe } from "vitest"

const BATCH = 100

const natRules = Array.from({ length: 50 }, (_, i) => ({
  chain: "dstnat",
  action: "dst-nat",
  protocol: i % 2 === 0 ? "tcp" : "udp",
  "in-interface": "wg-proton",
  "dst-port": String(40000 + i),
  "to-addresses": "192.168.88.20",
  "to-ports": String(40000 + i),
  comment: `natpmp-bridge:bench ${i}`
}))

/** Starts the simulator in a child process; resolves its port. */
const spawnSimulator = (): Promise<{ port: number; child: ChildProcess.ChildProcess }> =>
  new Promise((resolve, reject) => {
    const root = Path.resolve(__dirname, "../../..")
    const child = ChildProcess.spawn(
      process.execPath,
      [Path.join(root, "node_modules/vite-node/vite-node.mjs"), Path.join(__dirname, "routeros-simulator-process.ts")],
      { cwd: root, stdio: ["pipe", "pipe", "inherit"] }
    )
    let out = ""
    child.stdout!.on("data", (chunk: Buffer) => {
      out += chunk.toString()
      const m = /PORT=(\d+)/.exec(out)
      if (m !== null) resolve({ port: Number(m[1]), child })
    })
    child.on("exit", (code) => reject(new Error(`simulator process exited with ${code}`)))
  })

interface Target {
  scope: Scope.CloseableScope
  client: RouterOsClient.Service
  layer: Layer.Layer<RouterOsClient.RouterOsClient>
}

const open = async (connect: Effect.Effect<RouterOsClient.Service, unknown, Scope.Scope>): Promise<Target> => {
  const scope = Effect.runSync(Scope.make())
  const client = await Effect.runPromise(Scope.extend(connect, scope))
  return { scope, client, layer: Layer.succeed(RouterOsClient.RouterOsClient, client) }
}

const options = { time: 1500, warmupTime: 200 }

const suite = (name: string, target: () => Target) =>
  describe(name, () => {
    const identity = () => target().client.command("/system/identity/print")

    bench("sequential: 1 command (/system/identity/print)", async () => {
      await Effect.runPromise(identity())
    }, options)

    bench(`sequential: batch of ${BATCH} commands, one at a time`, async () => {
      await Effect.runPromise(Effect.forEach(Array.from({ length: BATCH }), identity, { discard: true }))
    }, options)

    bench(`concurrent: batch of ${BATCH} commands in flight with tags`, async () => {
      await Effect.runPromise(
        Effect.forEach(Array.from({ length: BATCH }), identity, { concurrency: "unbounded", discard: true })
      )
    }, options)

    bench("sequential: 1 typed print of 52 dst-nat rules", async () => {
      await Effect.runPromise(Effect.provide(RouterOsCommands.listDstNatRules, target().layer))
    }, options)

    bench("sequential: add + remove a dst-nat rule (2 round trips)", async () => {
      await Effect.runPromise(
        Effect.gen(function*() {
          const id = yield* RouterOsCommands.addNatRule({
            protocol: "tcp",
            inInterface: "wg-proton",
            dstPort: 51413,
            toAddresses: "192.168.88.20",
            toPorts: 51413,
            comment: "natpmp-bridge:bench"
          })
          yield* RouterOsCommands.removeNatRules([id])
        }).pipe(Effect.provide(target().layer))
      )
    }, options)
  })

let remote: Target
let child: ChildProcess.ChildProcess | undefined
let local: Target

beforeAll(async () => {
  const spawned = await spawnSimulator()
  child = spawned.child
  remote = await open(
    RouterOsClient.make({ host: "127.0.0.1", port: spawned.port, user: "admin", password: Redacted.make("bench") })
  )
  local = await open(
    Effect.flatMap(
      RouterOsSimulator.make({ password: "bench", ...RouterOsSimulator.vpnRouterV7(), natRules }),
      (sim) => RouterOsClient.make(sim.clientOptions)
    )
  )
}, 60_000)

afterAll(async () => {
  await Effect.runPromise(Scope.close(remote.scope, Exit.void))
  await Effect.runPromise(Scope.close(local.scope, Exit.void))
  child?.stdin?.end()
})

suite("RouterOS API over one connection, simulator in a child process", () => remote)
suite("RouterOS API over one connection, simulator in the same process", () => local)

describe("RouterOS API decoder", () => {
  // ~1 MB of typical print replies, fed in 16 KiB chunks like a socket delivers them
  const row = RouterOsProtocol.encodeSentence([
    "!re",
    "=.id=*1A",
    "=chain=dstnat",
    "=action=dst-nat",
    "=protocol=tcp",
    "=dst-port=51413",
    "=in-interface=wg-proton",
    "=to-addresses=192.168.88.20",
    "=to-ports=51413",
    "=comment=natpmp-bridge:abc tcp 192.168.88.20:51413",
    "=disabled=false",
    ".tag=42"
  ])
  const stream = Buffer.concat(Array.from({ length: Math.ceil(1_000_000 / row.length) }, () => row))
  const chunks: Array<Uint8Array> = []
  for (let i = 0; i < stream.length; i += 16384) chunks.push(stream.subarray(i, i + 16384))

  let _decoded = 0
  bench(`decode ${(stream.length / 1e6).toFixed(1)} MB of !re sentences in 16 KiB chunks`, () => {
    const decoder = new RouterOsProtocol.SentenceDecoder(() => {
      _decoded++
    })
    for (const chunk of chunks) decoder.push(chunk)
  }, options)
})
