/**
 * PUBLIC_ADDRESS (op 0) answers per second: the bridge vs miniupnpd, loaded by the same external load generator.
 *
 *   npm run build && node node_modules/vite-node/vite-node.mjs bench/public-address.bench.ts
 *
 * The load generator (bench/support/load-generator.ts) is a process of its own in a client network namespace: it
 * keeps WINDOW requests in flight from SOURCES addresses for DURATION_MS and counts the answers. It loads in turn
 *
 * - the bridge with its simulators (bench/support/bridge-process.ts, bundled like the bin) in a namespace of their
 *   own, reached over a veth link, and
 * - miniupnpd (Debian miniupnpd-nftables, NAT-PMP only, as a daemon without debug logging, i.e. as deployed) in
 *   the gateway namespace of NetworkLab's topology, reached over a veth link too,
 *
 * - for scale, a bare `node:dgram` socket answering cached bytes (bench/support/dgram-floor.ts) in the bridge's
 *   namespace: the floor of any server written on node's UDP sockets,
 *
 * two rounds each, alternating, and reports the mean answers/s of each, the bridge's ratio to miniupnpd, and the CPU
 * time each server used per answer (from /proc). Needs root, miniupnpd, nft and ip; without them the bridge is
 * measured alone on loopback and miniupnpd is reported as skipped.
 */
import { NetworkLab } from "@natpmp-bridge/core/testing"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Fs from "node:fs"
import * as Path from "node:path"
import * as BenchResult from "./lib/BenchResult.js"
import { bridgeEnv, cpuMsOf } from "./lib/Processes.js"
import type { Child } from "./support/Child.js"
import { bundled, round, runForResult, start, viteNode } from "./support/Child.js"

const WINDOW = 100
const SOURCES = 4
const DURATION_MS = 4000
const WARMUP_MS = 1000
const ROUNDS = 2

interface Target {
  readonly name: string
  readonly address: string
  readonly port: number
  readonly sources: ReadonlyArray<string>
  readonly pid: number
}

interface Measured {
  readonly perSecond: number
  readonly cpuPerAnswer: number
}

/** One run of the load generator (inside `namespace` when given) against `target`. */
const load = (target: Target, namespace: string | undefined): Effect.Effect<Measured> =>
  Effect.promise(async () => {
    const before = cpuMsOf(target.pid)
    const result = await runForResult([
      ...(namespace === undefined ? [] : ["ip", "netns", "exec", namespace]),
      ...viteNode("bench/support/load-generator.ts", [JSON.stringify({
        target: { address: target.address, port: target.port },
        sources: target.sources,
        window: WINDOW,
        durationMs: DURATION_MS,
        warmupMs: WARMUP_MS
      })])
    ])
    // the server's CPU over warm-up and measurement, per answer counted (an upper bound)
    const cpu = cpuMsOf(target.pid) - before
    const answers = result.answers * (DURATION_MS + WARMUP_MS) / DURATION_MS
    console.log(
      `${target.name}: ${Math.round(result.perSecond)} answers/s (${result.answers} in ${
        result.seconds.toFixed(2)
      } s, ${result.refills} refills), server CPU ${(cpu * 1000 / answers).toFixed(1)} µs/answer`
    )
    return { perSecond: result.perSecond, cpuPerAnswer: cpu * 1000 / answers }
  })

/** A node server (the bridge, the floor), started with the bridge's deployed environment. */
const bridgeProcess = (argv: ReadonlyArray<string>) =>
  Effect.acquireRelease(
    Effect.promise(() => start(argv, bridgeEnv())),
    (child: Child) => Effect.promise(() => child.stop())
  )

/** miniupnpd as a daemon (no debug log) in the lab's gateway namespace; killed by the pid of its pid file. */
const miniUpnpdDaemon = (lab: NetworkLab.GatewayLab) =>
  Effect.gen(function*() {
    const tables = yield* lab.vpn.run(["nft", "list", "tables"])
    if (!/\btable inet filter\b/.test(tables.stdout)) {
      yield* lab.vpn.run(["nft", "-f", "-"], { input: NetworkLab.miniUpnpdRuleset })
    }
    const configFile = Path.join(lab.directory, "bench-miniupnpd.conf")
    const pidFile = Path.join(lab.directory, "bench-miniupnpd.pid")
    yield* NetworkLab.writeFile(configFile, NetworkLab.miniUpnpdConfig(lab.lan.network))
    const pid = yield* Effect.acquireRelease(
      Effect.gen(function*() {
        // no syslog daemon here: what it logs would go to the console, so /dev/console is /dev/null for it
        yield* lab.vpn.run([
          "sh",
          "-c",
          "mount --bind /dev/null /dev/console 2>/dev/null; exec miniupnpd -f \"$1\" -P \"$2\"",
          "sh",
          configFile,
          pidFile
        ])
        for (let i = 0; i < 100 && !Fs.existsSync(pidFile); i++) yield* Effect.sleep(Duration.millis(50))
        return Number(Fs.readFileSync(pidFile, "utf8").trim())
      }),
      (pid) =>
        Effect.gen(function*() {
          try {
            process.kill(pid, "SIGTERM")
          } catch {
            return
          }
          for (let i = 0; i < 60 && Fs.existsSync(`/proc/${pid}`); i++) yield* Effect.sleep(Duration.millis(50))
        })
    )
    yield* NetworkLab.probeNatPmp(lab.cli, lab.lan.gateway)
    return pid
  })

const withLab = Effect.gen(function*() {
  const lab = yield* NetworkLab.gatewayLab({ prefix: "npbench" })
  const lanPrefix = lab.lan.client.split(".").slice(0, 3).join(".")
  const miniSources = Array.from({ length: SOURCES }, (_, i) => `${lanPrefix}.${i + 2}`)
  for (const address of miniSources.slice(1)) yield* lab.cli.run(["ip", "addr", "add", `${address}/24`, "dev", "eth0"])
  const miniPid = yield* miniUpnpdDaemon(lab)

  const bridgeNs = yield* NetworkLab.namespace("npbench-brg")
  const bridgePrefix = `172.30.${1 + Math.floor(Math.random() * 254)}`
  yield* NetworkLab.vethPair(
    { namespace: bridgeNs, name: "lan0", address: `${bridgePrefix}.1/24` },
    { namespace: lab.cli, name: "eth1", address: `${bridgePrefix}.2/24` }
  )
  const bridgeSources = Array.from({ length: SOURCES }, (_, i) => `${bridgePrefix}.${i + 2}`)
  for (const address of bridgeSources.slice(1)) {
    yield* lab.cli.run(["ip", "addr", "add", `${address}/24`, "dev", "eth1"])
  }
  /** A server of bench/support, bundled, in the bridge's namespace. */
  const inBridgeNamespace = (script: string, options: object) =>
    Effect.flatMap(
      Effect.promise(() => bundled(script, [JSON.stringify(options)])),
      (argv) => bridgeProcess(["ip", "netns", "exec", bridgeNs.name, ...argv])
    )
  const bridge = yield* inBridgeNamespace("bench/support/bridge-process.ts", {
    listen: `${bridgePrefix}.1:5351`,
    allowedClients: [`${bridgePrefix}.0/24`]
  })
  const floor = yield* inBridgeNamespace("bench/support/dgram-floor.ts", { listen: `${bridgePrefix}.1:5352` })

  const targets: ReadonlyArray<Target> = [
    { name: "miniupnpd", address: lab.lan.gateway, port: 5351, sources: miniSources, pid: miniPid },
    { name: "bridge", address: bridge.ready.address, port: bridge.ready.port, sources: bridgeSources, pid: bridge.pid },
    { name: "floor", address: floor.ready.address, port: floor.ready.port, sources: bridgeSources, pid: floor.pid }
  ]
  const results = new Map<string, Array<Measured>>(targets.map((target) => [target.name, []]))
  for (let round = 0; round < ROUNDS; round++) {
    for (const target of round % 2 === 0 ? targets : [...targets].reverse()) {
      results.get(target.name)!.push(yield* load(target, lab.cli.name))
    }
  }
  return results
})

const bridgeAlone = Effect.gen(function*() {
  const bridge = yield* bridgeProcess(
    yield* Effect.promise(() =>
      bundled("bench/support/bridge-process.ts", [
        JSON.stringify({ listen: "127.0.0.1:0", allowedClients: ["127.0.0.16/28"] })
      ])
    )
  )
  const target: Target = {
    name: "bridge",
    address: bridge.ready.address,
    port: bridge.ready.port,
    sources: Array.from({ length: SOURCES }, (_, i) => `127.0.0.${20 + i}`),
    pid: bridge.pid
  }
  const measured: Array<Measured> = []
  for (let round = 0; round < ROUNDS; round++) measured.push(yield* load(target, undefined))
  return new Map([["bridge", measured]])
})

const mean = (values: ReadonlyArray<number>) => values.reduce((sum, value) => sum + value, 0) / values.length

const main = Effect.gen(function*() {
  const missing = yield* NetworkLab.missingPrerequisites()
  if (missing.length > 0) {
    console.log(`miniupnpd skipped (needs ${missing.join(", ")}): the bridge alone, on loopback`)
  }
  const results = yield* Effect.scoped(missing.length > 0 ? bridgeAlone : withLab)
  const bridge = results.get("bridge")!
  const metrics: Record<string, BenchResult.Metric> = {
    bridge_answers_per_s: {
      value: Math.round(mean(bridge.map((run) => run.perSecond))),
      unit: "answers/s",
      label: `bridge PUBLIC_ADDRESS answers, ${WINDOW} in flight from ${SOURCES} addresses`
    },
    bridge_cpu_per_answer: {
      value: round(mean(bridge.map((run) => run.cpuPerAnswer)), 1),
      unit: "µs",
      label: "bridge CPU time per PUBLIC_ADDRESS answer"
    }
  }
  const floor = results.get("floor")
  if (floor !== undefined) {
    metrics.floor_answers_per_s = {
      value: Math.round(mean(floor.map((run) => run.perSecond))),
      unit: "answers/s",
      label: "a bare node:dgram socket answering cached bytes (the floor of a node server), same generator"
    }
    metrics.floor_cpu_per_answer = {
      value: round(mean(floor.map((run) => run.cpuPerAnswer)), 1),
      unit: "µs",
      label: "bare node:dgram CPU time per answer"
    }
  }
  const mini = results.get("miniupnpd")
  if (mini !== undefined) {
    const miniRate = mean(mini.map((run) => run.perSecond))
    metrics.miniupnpd_answers_per_s = {
      value: Math.round(miniRate),
      unit: "answers/s",
      label: `miniupnpd PUBLIC_ADDRESS answers, same generator and window`
    }
    metrics.miniupnpd_cpu_per_answer = {
      value: round(mean(mini.map((run) => run.cpuPerAnswer)), 1),
      unit: "µs",
      label: "miniupnpd CPU time per PUBLIC_ADDRESS answer"
    }
    metrics.ratio = {
      value: round(mean(bridge.map((run) => run.perSecond)) / miniRate, 2),
      unit: "×",
      label: "bridge answers/s ÷ miniupnpd answers/s"
    }
  }
  BenchResult.emit({ bench: "public-address", metrics })
})

Effect.runPromise(main).catch((error) => {
  console.error(String(error))
  process.exit(1)
})
