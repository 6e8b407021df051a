/**
 * The bridge with its simulators (RouterOS 7 router, ProtonVPN-like VPN gateway) in a process of its own, for
 * benchmarks that load it from another process (or another network namespace).
 *
 *   node node_modules/vite-node/vite-node.mjs bench/support/bridge-process.ts '<json options>'
 *
 * Options (JSON, all optional): `listen` ("address:port", default "127.0.0.1:0"), `allowedClients` (networks,
 * default ["127.0.0.16/28"]), `clientQuota`, `logLevel` (the bridge's, default "Info" as shipped). Prints
 * `READY {"address":…,"port":…}` on standard error when the bridge answers, then reads commands, one per line on
 * standard input, and answers each with one line `REPLY <json>` on standard error (standard output is the bridge's
 * log):
 *
 * - `direct <concurrency> <count>`: does the bridge's upstream work for `count` new mappings straight against the
 *   simulators (VPN map, dstnat print, rule add; then, untimed, rule remove and VPN unmap) with `concurrency`
 *   workers, over one NAT-PMP client and one RouterOS connection like the bridge's; replies the latency of each new
 *   mapping in milliseconds.
 * - `commands`: the router API commands received since the last `commands` (path → count), then resets them.
 * - `seed <n>`: adds `n` dstnat rules of someone else to the router.
 * - `reconcile`: runs one reconciliation pass now; replies its report.
 * - `cpu`: the CPU time this process has used so far (user + system), in milliseconds.
 *
 * Runs until SIGTERM, SIGINT or until its standard input closes.
 */
import { NatPmpClient, RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import * as Logger from "effect/Logger"
import * as LogLevel from "effect/LogLevel"
import * as Queue from "effect/Queue"
import * as Readline from "node:readline"

interface Options {
  readonly listen?: string
  readonly allowedClients?: ReadonlyArray<string>
  readonly clientQuota?: number
  readonly logLevel?: LogLevel.Literal
}

const options: Options = JSON.parse(process.argv[2] ?? "{}")
const [listenAddress, listenPort] = (options.listen ?? "127.0.0.1:0").split(":")

// the protocol goes to standard error, the bridge's log to standard output
const reply = (value: unknown) => Effect.sync(() => process.stderr.write(`REPLY ${JSON.stringify(value)}\n`))

const main = Effect.scoped(Effect.gen(function*() {
  const harness = yield* BridgeHarness.make({
    bridge: {
      listen: { address: listenAddress, port: Number(listenPort ?? 0) },
      allowedClients: [...(options.allowedClients ?? ["127.0.0.16/28"])],
      announce: false,
      ...(options.clientQuota === undefined ? {} : { clientQuota: options.clientQuota })
    }
  })
  const vpnClient = yield* NatPmpClient.make({
    gateway: harness.vpn.address,
    port: harness.vpn.port,
    announcements: false
  })
  const routerClient = yield* RouterOsClient.make(harness.router.clientOptions)
  const commands = yield* Queue.unbounded<string | undefined>()
  const lines = Readline.createInterface({ input: process.stdin })
  lines.on("line", (line) => commands.unsafeOffer(line))
  lines.on("close", () => commands.unsafeOffer(undefined))
  process.once("SIGTERM", () => commands.unsafeOffer(undefined))
  process.once("SIGINT", () => commands.unsafeOffer(undefined))
  yield* harness.router.resetCounters
  process.stderr.write(`READY ${JSON.stringify({ address: harness.bridge.address, port: harness.bridge.port })}\n`)

  let nextPort = 30000
  const upstreamNew = (internalPort: number) =>
    Effect.gen(function*() {
      const started = performance.now()
      const mapping = yield* vpnClient.map({ protocol: "tcp", internalPort, lifetime: 60 })
      yield* RouterOsCommands.listDstNatRules
      const id = yield* RouterOsCommands.addNatRule({
        protocol: "tcp",
        inInterface: "wg-proton",
        dstPort: String(mapping.externalPort),
        toAddresses: "127.0.0.20",
        toPorts: String(internalPort),
        comment: `natpmp-bridge:direct tcp 127.0.0.20:${internalPort}`
      })
      const elapsed = performance.now() - started
      yield* RouterOsCommands.removeNatRules([id])
      yield* vpnClient.unmap("tcp", internalPort)
      return elapsed
    }).pipe(Effect.provideService(RouterOsClient.RouterOsClient, routerClient))

  const direct = (concurrency: number, count: number) =>
    Effect.gen(function*() {
      const latencies: Array<number> = []
      let left = count
      const worker = Effect.gen(function*() {
        while (left > 0) {
          left--
          latencies.push(yield* upstreamNew(nextPort++))
        }
      })
      yield* Effect.all(Array.from({ length: concurrency }, () => worker), { concurrency: "unbounded" })
      return latencies
    })

  while (true) {
    const command = yield* Queue.take(commands)
    if (command === undefined) return
    const [name, ...args] = command.trim().split(/\s+/)
    switch (name) {
      case "direct": {
        yield* reply(yield* direct(Number(args[0]), Number(args[1])))
        break
      }
      case "commands": {
        const log = yield* harness.router.commandLog
        yield* harness.router.resetCounters
        const counts: Record<string, number> = {}
        for (const path of log) counts[path] = (counts[path] ?? 0) + 1
        yield* reply(counts)
        break
      }
      case "seed": {
        for (let i = 0; i < Number(args[0]); i++) {
          yield* harness.router.addNatRule({
            chain: "dstnat",
            action: "dst-nat",
            protocol: "tcp",
            "in-interface": "wg-proton",
            "dst-port": String(10000 + i),
            "to-addresses": "127.0.0.30",
            "to-ports": String(10000 + i),
            comment: `someone else's rule ${i}`
          })
        }
        yield* reply({ seeded: Number(args[0]) })
        break
      }
      case "cpu": {
        const usage = process.cpuUsage()
        yield* reply((usage.user + usage.system) / 1000)
        break
      }
      case "reconcile": {
        yield* reply(yield* harness.bridge.mapping.reconcile)
        break
      }
      default:
        yield* reply({ error: `unknown command ${name}` })
    }
  }
}))

Effect.runPromise(main.pipe(Logger.withMinimumLogLevel(LogLevel.fromLiteral(options.logLevel ?? "Info")))).then(
  () => process.exit(0),
  (error) => {
    console.error(String(error))
    process.exit(1)
  }
)
