import { describe, expect, it } from "@effect/vitest"
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as dgram from "node:dgram"
import { lines, run, start } from "./BinRunner.js"

const nowhere = { address: "127.0.0.1", port: 9 }

const gateway = (options: NatPmpGatewaySimulator.Options = {}) =>
  Effect.map(
    NatPmpGatewaySimulator.make({ publicAddress: "203.0.113.7", announceTo: nowhere, ...options }),
    (simulator) => ({ simulator, args: ["-g", "127.0.0.1", "--port", String(simulator.port)] })
  )

const natpmp = (...args: Array<string>) => run("natpmp", args)

/** A UDP port that was free a moment ago (for the announcement listener of `map --keep`). */
const freeUdpPort = Effect.async<number>((resume) => {
  const socket = dgram.createSocket("udp4")
  socket.bind(0, "127.0.0.1", () => {
    const port = socket.address().port
    socket.close(() => resume(Effect.succeed(port)))
  })
})

const json = (line: string) => JSON.parse(line) as Record<string, unknown>

/** Every failure prints exactly one line on stderr, nothing on stdout, and never a stack trace. */
const expectOneLineFailure = (result: { code: number | null; stdout: string; stderr: string }, code: number) => {
  expect(result.code, result.stderr).toBe(code)
  expect(result.stdout).toBe("")
  expect(lines(result.stderr)).toHaveLength(1)
  expect(result.stderr).not.toMatch(/\n\s+at /)
}

describe("natpmp", () => {
  describe("map", () => {
    it.scopedLive("maps TCP by default and names gateway, public IP, ports, protocol and lifetime", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        const result = yield* natpmp("map", ...args, "40000", "40000")
        expect(result.code, result.stderr).toBe(0)
        expect(result.stdout).toBe(
          "Mapped public port 40000 protocol TCP to local port 40000 lifetime 3600 " +
            "(gateway 127.0.0.1, public IP 203.0.113.7)\n"
        )
        const [mapping] = yield* simulator.mappings
        expect(mapping).toMatchObject({ protocol: "tcp", internalPort: 40000, externalPort: 40000, lifetime: 3600 })
      }))

    it.scopedLive("maps UDP with -u and --lifetime, public port 0 letting the gateway choose", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        const result = yield* natpmp("map", ...args, "-u", "-l", "600", "0", "5000")
        expect(result.code, result.stderr).toBe(0)
        const [mapping] = yield* simulator.mappings
        expect(mapping).toMatchObject({ protocol: "udp", internalPort: 5000, lifetime: 600 })
        expect(result.stdout).toBe(
          `Mapped public port ${mapping.externalPort} protocol UDP to local port 5000 lifetime 600 ` +
            "(gateway 127.0.0.1, public IP 203.0.113.7)\n"
        )
      }))

    it.scopedLive("--json prints one object with stable field names; the long flags work too", () =>
      Effect.gen(function*() {
        const { simulator } = yield* gateway({ epoch: 100 })
        const result = yield* natpmp(
          "map",
          "--json",
          "--udp",
          "--lifetime",
          "120",
          "--gateway",
          "127.0.0.1",
          "--port",
          String(simulator.port),
          "6000",
          "6001"
        )
        expect(result.code, result.stderr).toBe(0)
        expect(lines(result.stdout)).toHaveLength(1)
        const record = json(result.stdout)
        expect(Object.keys(record)).toStrictEqual([
          "type",
          "gateway",
          "publicAddress",
          "protocol",
          "internalPort",
          "externalPort",
          "lifetime",
          "epoch"
        ])
        expect(record).toMatchObject({
          type: "mapped",
          gateway: "127.0.0.1",
          publicAddress: "203.0.113.7",
          protocol: "udp",
          internalPort: 6001,
          externalPort: 6000,
          lifetime: 120
        })
        expect(record.epoch).toBeGreaterThanOrEqual(100)
      }))

    it.scopedLive("shows the lifetime the gateway granted (ProtonVPN-style gateway: 60 s, random port)", () =>
      Effect.gen(function*() {
        const { args } = yield* gateway({ mode: "protonvpn" })
        const result = yield* natpmp("map", ...args, "--json", "40000", "40000")
        expect(result.code, result.stderr).toBe(0)
        const record = json(result.stdout)
        expect(record.lifetime).toBe(60)
        expect(record.externalPort).toBeGreaterThanOrEqual(32768)
      }))
  })

  describe("address", () => {
    it.scopedLive("prints the public address, human and --json", () =>
      Effect.gen(function*() {
        const { args } = yield* gateway({ epoch: 7 })
        const human = yield* natpmp("address", ...args)
        expect(human.code, human.stderr).toBe(0)
        expect(human.stdout).toMatch(/^Public IP address 203\.0\.113\.7 \(gateway 127\.0\.0\.1, epoch \d+\)\n$/)
        const result = yield* natpmp("address", ...args, "--json")
        expect(result.code, result.stderr).toBe(0)
        const record = json(result.stdout)
        expect(Object.keys(record)).toStrictEqual(["type", "gateway", "publicAddress", "epoch"])
        expect(record).toMatchObject({ type: "address", gateway: "127.0.0.1", publicAddress: "203.0.113.7" })
      }))
  })

  describe("unmap", () => {
    it.scopedLive("deletes one mapping, or with --all every mapping of the protocol", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        for (const mapArgs of [["7000", "7000"], ["7001", "7001"], ["-u", "7000", "7000"]]) {
          expect((yield* natpmp("map", ...args, ...mapArgs)).code).toBe(0)
        }
        const one = yield* natpmp("unmap", ...args, "7000")
        expect(one.code, one.stderr).toBe(0)
        expect(one.stdout).toBe("Deleted mapping protocol TCP local port 7000 (gateway 127.0.0.1)\n")
        const remaining = (yield* simulator.mappings).map((m) => `${m.protocol}/${m.internalPort}`).sort()
        expect(remaining).toStrictEqual(["tcp/7001", "udp/7000"])

        const all = yield* natpmp("unmap", ...args, "--all", "--json")
        expect(all.code, all.stderr).toBe(0)
        expect(json(all.stdout)).toStrictEqual({
          type: "unmapped",
          gateway: "127.0.0.1",
          protocol: "tcp",
          internalPort: 0,
          all: true
        })
        expect((yield* simulator.mappings).map((m) => `${m.protocol}/${m.internalPort}`)).toStrictEqual(["udp/7000"])

        const udp = yield* natpmp("unmap", ...args, "-u", "7000", "--json")
        expect(json(udp.stdout)).toStrictEqual({
          type: "unmapped",
          gateway: "127.0.0.1",
          protocol: "udp",
          internalPort: 7000,
          all: false
        })
        expect(yield* simulator.mappings).toStrictEqual([])
      }))
  })

  describe("map --keep", () => {
    it.scopedLive("renews at half the lifetime and deletes the mapping on SIGINT", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        const keep = yield* start("natpmp", [
          "map",
          ...args,
          "--keep",
          "-l",
          "2",
          "--announcements",
          "off",
          "7100",
          "7100"
        ])
        yield* keep.waitForLine((line) => line.startsWith("Mapped public port 7100 protocol TCP to local port 7100"))
        yield* keep.waitForLine((line) => line.startsWith("Renewed public port 7100"), "5 seconds")
        expect((yield* simulator.counters).mapTcp).toBeGreaterThanOrEqual(2)
        yield* keep.kill("SIGINT")
        const result = yield* keep.exit
        expect(result.code, result.stderr).toBe(0)
        expect(lines(result.stdout).at(-1)).toBe(
          "Deleted mapping public port 7100 protocol TCP local port 7100 (gateway 127.0.0.1)"
        )
        expect(yield* simulator.mappings).toStrictEqual([])
      }))

    it.scopedLive("--json: one event per line; follows a port change; SIGTERM unmaps too", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        const keep = yield* start("natpmp", [
          "map",
          ...args,
          "--keep",
          "--json",
          "-u",
          "-l",
          "2",
          "--announcements",
          "off",
          "7200",
          "7201"
        ])
        const first = json(yield* keep.waitForLine((line) => line.includes(`"reason":"initial"`)))
        expect(first).toMatchObject({ type: "mapped", protocol: "udp", internalPort: 7201, externalPort: 7200 })
        yield* simulator.changePortsOnRenewal(true)
        const changed = json(yield* keep.waitForLine((line) => line.includes(`"type":"portChanged"`), "5 seconds"))
        expect(changed).toMatchObject({ previousExternalPort: 7200, internalPort: 7201, protocol: "udp" })
        expect(changed.externalPort).not.toBe(7200)
        yield* keep.kill("SIGTERM")
        const result = yield* keep.exit
        expect(result.code, result.stderr).toBe(0)
        const events = lines(result.stdout).map(json)
        expect(events.map((event) => event.type)).toContain("mapped")
        expect(events.at(-1)).toMatchObject({ type: "unmapped", protocol: "udp", internalPort: 7201 })
        expect(yield* simulator.mappings).toStrictEqual([])
      }))

    it.scopedLive("reports address announcements and a gateway reset, and re-maps", () =>
      Effect.gen(function*() {
        // epoch 100, so that going back to 0 is a reset whatever the timing (RFC 6886 §3.6 allows 2 s of slack)
        const { args, simulator } = yield* gateway({ epoch: 100 })
        const port = yield* freeUdpPort
        const keep = yield* start("natpmp", [
          "map",
          ...args,
          "--keep",
          "--json",
          "--announcements",
          `127.0.0.1:${port}`,
          "7300",
          "7300"
        ])
        yield* keep.waitForLine((line) => line.includes(`"reason":"initial"`))
        yield* simulator.setAnnounceTo({ address: "127.0.0.1", port })
        yield* simulator.setPublicAddress("198.51.100.20")
        const announcement = json(yield* keep.waitForLine((line) => line.includes(`"type":"announcement"`)))
        expect(announcement).toMatchObject({ publicAddress: "198.51.100.20", previousPublicAddress: "203.0.113.7" })
        const remapped = json(yield* keep.waitForLine((line) => line.includes(`"reason":"announcement"`), "8 seconds"))
        expect(remapped).toMatchObject({ type: "mapped", publicAddress: "198.51.100.20", internalPort: 7300 })
        yield* simulator.resetEpoch
        const reset = json(yield* keep.waitForLine((line) => line.includes(`"type":"gatewayReset"`)))
        expect(reset).toMatchObject({ gateway: "127.0.0.1", epoch: 0 })
        yield* keep.waitForLine((line) => line.includes(`"reason":"gateway-reset"`), "8 seconds")
        expect((yield* simulator.mappings).map((m) => m.internalPort)).toStrictEqual([7300])
        yield* keep.kill("SIGINT")
        expect((yield* keep.exit).code).toBe(0)
        expect(yield* simulator.mappings).toStrictEqual([])
      }), 30_000)

    it.scopedLive("fails with exit 1 when the first mapping fails", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        yield* simulator.setResultCode(2)
        const result = yield* natpmp("map", ...args, "--keep", "--announcements", "off", "7400", "7400")
        expectOneLineFailure(result, 1)
        expect(result.stderr).toMatch(/result 2/)
      }))
  })

  describe("bad arguments: one line on stderr, exit 2", () => {
    const cases: ReadonlyArray<readonly [string, ReadonlyArray<string>, RegExp]> = [
      ["public port out of range", ["map", "70000", "1"], /public_port must be an integer from 0 to 65535, got 70000/],
      ["private port out of range", ["map", "1", "65536"], /private_port must be an integer from 1 to 65535/],
      ["private port 0", ["map", "1", "0"], /private_port must be an integer from 1 to 65535, got 0/],
      ["non-numeric port", ["map", "abc", "1"], /'abc'/],
      [
        "negative lifetime",
        ["map", "-l", "-1", "1", "1"],
        /--lifetime must be an integer from 1 to 4294967295, got -1/
      ],
      [
        "lifetime 0",
        ["map", "--lifetime", "0", "1", "1"],
        /--lifetime .* got 0 \(to delete a mapping use 'natpmp unmap'\)/
      ],
      ["lifetime too long", ["map", "-l", "4294967296", "1", "1"], /--lifetime/],
      ["unknown flag", ["map", "--frobnicate", "1", "1"], /unknown option '--frobnicate' for 'map'/],
      ["unknown short flag", ["map", "-x", "1", "1"], /unknown option '-x'/],
      ["flag of another command", ["address", "--udp"], /unknown option '--udp' for 'address'/],
      ["bad gateway address", ["map", "-g", "10.2.0", "1", "1"], /--gateway must be an IPv4 address .* got '10\.2\.0'/],
      ["host name as gateway", ["address", "-g", "router.lan"], /--gateway must be an IPv4 address/],
      ["bad gateway port", ["address", "--port", "0"], /--port must be an integer from 1 to 65535, got 0/],
      ["bad timeout", ["address", "--timeout", "0"], /--timeout must be an integer/],
      ["bad retries", ["address", "--retries", "-1"], /--retries must be an integer from 0 to 20, got -1/],
      ["bad announcements", ["map", "--keep", "--announcements", "nowhere", "1", "1"], /--announcements must be/],
      ["missing private port", ["map", "1"], /Missing argument <private_port>/],
      ["too many arguments", ["map", "1", "2", "3"], /unknown argument: '3'/],
      ["missing value", ["map", "1", "2", "-g"], /option '-g' needs a value/],
      ["unmap without port", ["unmap"], /missing private_port \(or --all/],
      ["unmap with port and --all", ["unmap", "--all", "80"], /either private_port or --all/],
      ["unknown command", ["mapp"], /Invalid subcommand/],
      ["no command", [], /missing command: map, address or unmap/]
    ]
    it.live.each(cases)("%s", ([, args, message]) =>
      Effect.gen(function*() {
        const result = yield* natpmp(...args)
        expectOneLineFailure(result, 2)
        expect(result.stderr).toMatch(/^natpmp: /)
        expect(result.stderr).toMatch(message)
      }))
  })

  describe("gateway errors: the RFC meaning on one line, exit 1", () => {
    const meanings: ReadonlyArray<readonly [number, RegExp]> = [
      [1, /result 1: .*version/i],
      [2, /result 2: .*(authori|refused)/i],
      [3, /result 3: .*network failure/i],
      [4, /result 4: .*out of resources/i],
      [5, /result 5: .*opcode/i]
    ]
    it.scopedLive.each(meanings)("result code %i", ([code, message]) =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        yield* simulator.setResultCode(code)
        const result = yield* natpmp("map", ...args, "-u", "40000", "40000")
        expectOneLineFailure(result, 1)
        expect(result.stderr).toMatch(message)
        expect(result.stderr).toMatch(/^natpmp: NAT-PMP gateway 127\.0\.0\.1:\d+ failed/)
      }))

    it.scopedLive("--json: the error is one JSON object on stderr", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        yield* simulator.setResultCode(4)
        const result = yield* natpmp("map", ...args, "--json", "40000", "40000")
        expectOneLineFailure(result, 1)
        const record = json(result.stderr)
        expect(Object.keys(record)).toStrictEqual(["type", "error", "message", "resultCode", "opcode"])
        expect(record).toMatchObject({ type: "error", error: "NatPmpResultError", resultCode: 4, opcode: 0 })
      }))

    it.scopedLive("a silent gateway times out after the given retries", () =>
      Effect.gen(function*() {
        const { args, simulator } = yield* gateway()
        yield* simulator.setSilent(true)
        const result = yield* natpmp("address", ...args, "--timeout", "30", "--retries", "2")
        expectOneLineFailure(result, 1)
        expect(result.stderr).toMatch(/no answer from NAT-PMP gateway 127\.0\.0\.1:\d+ .* after 3 attempts/)
        expect((yield* simulator.counters).publicAddress).toBe(3)
        expect(result.millis).toBeLessThan(5_000)
      }))

    it.scopedLive("a port where nothing speaks NAT-PMP is reported as unreachable", () =>
      Effect.gen(function*() {
        const port = yield* freeUdpPort
        const result = yield* natpmp("address", "-g", "127.0.0.1", "--port", String(port), "--timeout", "100")
        expectOneLineFailure(result, 1)
        expect(result.stderr).toMatch(/unreachable .* does not speak NAT-PMP/)
      }))
  })

  describe("--help", () => {
    it.live("documents the commands and every option, exit 0", () =>
      Effect.gen(function*() {
        const top = yield* natpmp("--help")
        expect(top.code).toBe(0)
        for (const word of ["map", "address", "unmap", "--keep", "--json", "--udp", "--lifetime", "--gateway"]) {
          expect(top.stdout).toContain(word)
        }
        expect(top.stdout).not.toMatch(/\x1b\[/) // no colours when not a terminal
        const map = yield* natpmp("map", "--help")
        expect(map.code).toBe(0)
        for (
          const word of [
            "<public_port>",
            "<private_port>",
            "--udp",
            "--lifetime",
            "--gateway",
            "--port",
            "--timeout",
            "--retries",
            "--json",
            "--keep",
            "--announcements"
          ]
        ) {
          expect(map.stdout).toContain(word)
        }
        const unmap = yield* natpmp("unmap", "--help")
        expect(unmap.stdout).toContain("--all")
      }))
  })
})
