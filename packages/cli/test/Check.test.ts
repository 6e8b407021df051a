/**
 * `natpmp-bridge check` generates every RouterOS command a user pastes (API user and group, API service restriction,
 * redirect rule, container network, environment and container), for the router's own addresses and interfaces as
 * read from the RouterOS simulator, and changes nothing on the router.
 */
import { describe, expect, it } from "@effect/vitest"
import { NatPmpGatewaySimulator, RouterOsSimulator } from "@natpmp-bridge/core/testing"
import { BridgeHarness } from "@natpmp-bridge/server/testing"
import * as Effect from "effect/Effect"
import { lines, run } from "./BinRunner.js"
import { passwordEnv, upstreamFlags } from "./BridgeFlags.js"

const simulators = BridgeHarness.makeEnvironment({ vpn: { publicAddress: "203.0.113.7" } })

type Environment = Effect.Effect.Success<typeof simulators>

/** Settings for the simulators: the password from the environment, like in production. */
const flagsFor = (environment: Environment) => [...upstreamFlags(environment), "--bridge-id", "checktest"]

const envFor = passwordEnv

interface Report {
  readonly type: string
  readonly ok: boolean
  readonly failures: ReadonlyArray<string>
  readonly router: Record<string, unknown>
  readonly vpnGateway: Record<string, unknown>
  readonly bridge: { readonly host: string; readonly user: string; readonly variant: string }
  readonly steps: ReadonlyArray<{ readonly id: string; readonly title: string; readonly commands: Array<string> }>
  readonly commands: ReadonlyArray<string>
  readonly notes: ReadonlyArray<string>
}

/** Runs check and asserts that the router's NAT table and the VPN's mappings are unchanged. */
const checkReadOnly = (environment: Environment, args: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    const before = yield* environment.router.natRules
    const result = yield* run("natpmp-bridge", ["check", ...flagsFor(environment), ...args], {
      env: envFor(environment)
    })
    expect(yield* environment.router.natRules).toStrictEqual(before)
    const log = yield* environment.router.commandLog
    expect(log.filter((path) => !/\/(print|getall)$/.test(path) && path !== "/quit" && path !== "/cancel"))
      .toStrictEqual([])
    expect(yield* environment.vpn.mappings).toStrictEqual([])
    return result
  })

const stepOf = (report: Report, id: string) => report.steps.find((step) => step.id === id)?.commands ?? []

describe("natpmp-bridge check commands", () => {
  it.scopedLive(
    "a LAN host: API group and user, API service restriction and the redirect, as text and JSON",
    () =>
      Effect.gen(function*() {
        const environment = yield* simulators
        const result = yield* checkReadOnly(environment, ["--bridge-host", "10.10.0.2", "--listen-addr", ":5351"])
        expect(result.code, result.stderr + result.stdout).toBe(0)
        const out = result.stdout
        expect(out).toContain("RouterOS commands for the bridge at 10.10.0.2")
        expect(out).toContain("/user group add name=natpmp-bridge policy=read,write,api comment=natpmp-bridge")
        expect(out).toContain(
          "/user add name=natpmp-bridge group=natpmp-bridge address=10.10.0.2/32 " +
            "password=\"<MIKROTIK_API_PASSWORD>\" comment=natpmp-bridge"
        )
        expect(out).toContain("/ip service set api address=10.10.0.2/32 disabled=no")
        expect(out).toContain(
          "/ip firewall nat add chain=dstnat in-interface=bridge dst-address=127.0.0.17 protocol=udp dst-port=5351 " +
            "action=dst-nat to-addresses=10.10.0.2 to-ports=5351 comment=\"NAT-PMP requests to natpmp-bridge\""
        )
        // the admin user gets a dedicated one
        expect(out).toContain("Note: Set MIKROTIK_API_USER=natpmp-bridge")
        expect(out).not.toContain("/container")
        // every command line is a RouterOS command or a comment: the block pastes as it is
        const block = lines(out.slice(out.indexOf("RouterOS commands for")))
          .slice(1)
          .filter((line) => !line.startsWith("Note: "))
        for (const line of block) expect(line).toMatch(/^(#|\/)/)
        expect(out).not.toContain(environment.router.password)

        const json = yield* checkReadOnly(environment, [
          "--bridge-host",
          "10.10.0.2",
          "--listen-addr",
          ":5351",
          "--json"
        ])
        expect(json.code, json.stderr).toBe(0)
        expect(lines(json.stdout)).toHaveLength(1)
        const report = JSON.parse(json.stdout) as Report
        expect(report).toMatchObject({
          type: "check",
          ok: true,
          failures: [],
          router: {
            version: "7.16.2 (stable)",
            vpnInterface: "wg-proton",
            vpnInterfaceSource: "detected",
            lanAddresses: [{ interface: "bridge", address: "127.0.0.17/28" }],
            clients: { networks: ["127.0.0.16/28"] },
            ownRules: []
          },
          vpnGateway: { publicAddress: "203.0.113.7" },
          bridge: { host: "10.10.0.2", user: "natpmp-bridge", variant: "host" }
        })
        expect(report.steps.map((step) => step.id)).toStrictEqual(["api-user", "api-service", "redirect"])
        expect(report.commands).toStrictEqual(report.steps.flatMap((step) => step.commands))
        for (const command of report.commands) expect(out).toContain(command)
        expect(json.stdout).not.toContain(environment.router.password)
      }),
    40_000
  )

  it.scopedLive(
    "API-SSL and a dedicated user: api-ssl is the service restricted and the user keeps its name",
    () =>
      Effect.gen(function*() {
        const router = yield* RouterOsSimulator.make({
          ...RouterOsSimulator.vpnRouterV7({ vpnGateway: "127.0.0.1", lanAddress: "127.0.0.17/28" }),
          user: "bridge-api",
          password: "pw",
          tls: { anonymousDh: true }
        })
        const vpn = yield* NatPmpGatewaySimulator.make({
          address: "127.0.0.1",
          publicAddress: "203.0.113.7",
          announceTo: { address: "127.0.0.1", port: 9 }
        })
        const result = yield* run("natpmp-bridge", [
          "check",
          "--vpn-gateway",
          "127.0.0.1",
          "--vpn-gateway-port",
          String(vpn.port),
          "--mikrotik-api-address",
          `127.0.0.1:${router.port}`,
          "--mikrotik-api-user",
          "bridge-api",
          "--mikrotik-api-tls",
          "anonymous-dh",
          "--bridge-host",
          "10.10.0.2",
          "--json"
        ], { env: { MIKROTIK_API_PASSWORD: "pw" } })
        expect(result.code, result.stderr).toBe(0)
        const report = JSON.parse(result.stdout) as Report
        expect(report.bridge.user).toBe("bridge-api")
        expect(stepOf(report, "api-user")[1]).toMatch(
          /^\/user add name=bridge-api group=natpmp-bridge address=10\.10\.0\.2\/32 /
        )
        expect(stepOf(report, "api-service")).toStrictEqual([
          "/ip service set api-ssl address=10.10.0.2/32 disabled=no"
        ])
        expect(report.notes.join(" ")).not.toMatch(/MIKROTIK_API_USER=/)
        expect(yield* router.commandCount("/ip/firewall/nat/add")).toBe(0)
      }),
    40_000
  )

  it.scopedLive(
    "an unreachable router: exit 1, the JSON report names the failure and holds no command",
    () =>
      Effect.gen(function*() {
        const environment = yield* simulators
        const result = yield* run("natpmp-bridge", [
          "check",
          ...flagsFor(environment).map((arg) =>
            arg === `${environment.router.host}:${environment.router.port}` ? "127.0.0.1:1" : arg
          ),
          "--json"
        ], { env: envFor(environment) })
        expect(result.code).toBe(1)
        const report = JSON.parse(result.stdout) as Report
        expect(report).toMatchObject({ ok: false, failures: ["router"], vpnGateway: { publicAddress: "203.0.113.7" } })
        expect(report.router).toHaveProperty("error")
        expect(report.commands).toStrictEqual([])
        expect(JSON.parse(lines(result.stderr).at(-1)!)).toMatchObject({
          type: "error",
          message: "check failed: router"
        })
      }),
    40_000
  )

  it.scopedLive(
    "a RouterOS container: network, environment list, container, and everything points at it",
    () =>
      Effect.gen(function*() {
        const environment = yield* simulators
        const result = yield* checkReadOnly(environment, [
          "--container",
          "--container-address",
          "172.31.53.2/30",
          "--container-image",
          "natpmp-bridge.tar",
          "--container-root-dir",
          "usb1/natpmp-bridge",
          "--vpn-port-mode",
          "same",
          "--json"
        ])
        expect(result.code, result.stderr).toBe(0)
        const report = JSON.parse(result.stdout) as Report
        expect(report.bridge).toStrictEqual({ host: "172.31.53.2", user: "natpmp-bridge", variant: "container" })
        expect(report.steps.map((step) => step.id)).toStrictEqual([
          "api-user",
          "api-service",
          "container-network",
          "container",
          "redirect"
        ])
        expect(stepOf(report, "api-user")[1]).toContain("address=172.31.53.2/32")
        expect(stepOf(report, "api-service")).toStrictEqual(["/ip service set api address=172.31.53.2/32 disabled=no"])
        expect(stepOf(report, "container-network")).toStrictEqual([
          "/interface veth add name=veth-natpmp address=172.31.53.2/30 gateway=172.31.53.1 comment=natpmp-bridge",
          "/interface bridge add name=containers comment=natpmp-bridge",
          "/interface bridge port add bridge=containers interface=veth-natpmp",
          "/ip address add address=172.31.53.1/30 interface=containers comment=natpmp-bridge",
          "/interface list member add list=LAN interface=containers comment=natpmp-bridge",
          "/ip firewall nat add chain=srcnat src-address=172.31.53.0/30 out-interface=wg-proton action=masquerade " +
          "comment=\"natpmp-bridge to the VPN gateway\""
        ])
        const container = stepOf(report, "container")
        const envs = container.filter((command) => command.startsWith("/container envs add "))
        const variables = Object.fromEntries(envs.map((command) => {
          const [, name, key, value] = /^\/container envs add name=(\S+) key=(\S+) value=(.*)$/.exec(command)!
          expect(name).toBe("natpmp-bridge")
          return [key, value]
        }))
        expect(variables).toStrictEqual({
          VPN_GATEWAY: "127.0.0.1",
          VPN_GATEWAY_PORT: String(environment.vpn.port),
          VPN_PORT_MODE: "same",
          BRIDGE_ID: "checktest",
          // detected, pinned for the container
          MIKROTIK_IN_INTERFACE: "wg-proton",
          // the router as the container reaches it, with the dedicated user
          MIKROTIK_API_ADDRESS: `172.31.53.1:${environment.router.port}`,
          MIKROTIK_API_USER: "natpmp-bridge",
          MIKROTIK_API_PASSWORD: "\"<MIKROTIK_API_PASSWORD>\""
        })
        expect(container.slice(envs.length)).toStrictEqual([
          "/container add file=natpmp-bridge.tar interface=veth-natpmp envlist=natpmp-bridge " +
          "root-dir=usb1/natpmp-bridge start-on-boot=yes logging=yes comment=natpmp-bridge",
          "/container start [find where comment=natpmp-bridge]"
        ])
        expect(stepOf(report, "redirect")).toStrictEqual([
          "/ip firewall nat add chain=dstnat in-interface=bridge dst-address=127.0.0.17 protocol=udp dst-port=5351 " +
          "action=dst-nat to-addresses=172.31.53.2 to-ports=5351 comment=\"NAT-PMP requests to natpmp-bridge\""
        ])
        // the container network is not the clients': no warning about answers bypassing the router
        expect(report.notes.join(" ")).not.toMatch(/inside the clients' network/)
      }),
    40_000
  )

  it.scopedLive(
    "RouterOS 7.21+ names environment lists with list= and containers take envlists=",
    () =>
      Effect.gen(function*() {
        const environment = yield* simulators
        yield* environment.router.setVersion("7.21.4 (stable)")
        const result = yield* checkReadOnly(environment, [
          "--container",
          "--container-image",
          "ghcr.io/example/natpmp-bridge:0.1.0",
          "--json"
        ])
        expect(result.code, result.stderr).toBe(0)
        const container = stepOf(JSON.parse(result.stdout) as Report, "container")
        expect(container[0]).toMatch(/^\/container envs add list=natpmp-bridge key=VPN_GATEWAY value=127\.0\.0\.1$/)
        expect(container.at(-2)).toMatch(
          /^\/container add remote-image=ghcr\.io\/example\/natpmp-bridge:0\.1\.0 interface=veth-natpmp envlists=natpmp-bridge /
        )
      }),
    40_000
  )

  it.scopedLive(
    "a bridge host inside the clients' network gets the warning and the hint to use a container",
    () =>
      Effect.gen(function*() {
        const environment = yield* simulators
        const result = yield* checkReadOnly(environment, ["--bridge-host", "127.0.0.20"])
        expect(result.code, result.stderr).toBe(0)
        expect(result.stdout).toMatch(/Note: 127\.0\.0\.20 is inside the clients' network.*--container/)
      }),
    40_000
  )

  it.live.each(
    [
      [["--container", "--container-address", "172.31.53.2"], /--container-address: expected an address with a prefix/],
      [["--container", "--container-address", "172.31.53.0/30"], /--container-address: .* network's own address/],
      [
        ["--container", "--bridge-host", "10.0.0.9"],
        /--bridge-host: with --container the bridge is at .*172\.31\.53\.2/
      ]
    ] as const
  )("bad container flags: one line, exit 2 (%j)", ([args, message]) =>
    Effect.gen(function*() {
      const result = yield* run("natpmp-bridge", [
        "check",
        "--vpn-gateway",
        "127.0.0.1",
        "--mikrotik-api-address",
        "127.0.0.1:1",
        ...args
      ], { env: { MIKROTIK_API_PASSWORD: "x" } })
      expect(result.code, result.stderr).toBe(2)
      expect(result.stdout).toBe("")
      expect(lines(result.stderr)).toHaveLength(1)
      expect(result.stderr).toMatch(message)
    }))
})
