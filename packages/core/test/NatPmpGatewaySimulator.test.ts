import { assert, describe, expect, it } from "@effect/vitest"
import { NatPmpMessage } from "@natpmp-bridge/core"
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Queue from "effect/Queue"
import * as TestClock from "effect/TestClock"
import type * as Dgram from "node:dgram"
import { eventually, gatewayAndClient, nowhere, rawSocket, realSleep, sendFrom, sleeperAt } from "./NatPmpFixtures.js"

const bytes = (...values: ReadonlyArray<number>) => Uint8Array.from(values)

/** A raw socket whose received datagrams (decoded as responses) land in a queue, with their arrival order. */
const peer = Effect.gen(function*() {
  const socket = yield* rawSocket()
  const inbox = yield* Queue.unbounded<Uint8Array>()
  socket.on("message", (message: Buffer) => inbox.unsafeOffer(new Uint8Array(message)))
  const next = Effect.map(Queue.take(inbox), (datagram) => ({
    raw: datagram,
    response: Either.getOrThrow(NatPmpMessage.decodeResponse(datagram))
  }))
  return { socket, inbox, next, port: (socket as Dgram.Socket).address().port }
})

describe("NatPmpGatewaySimulator", () => {
  describe("RFC server rules for malformed input", () => {
    it.scoped("answers another version with an 8-byte result 1, an unknown opcode with result 5", () =>
      Effect.gen(function*() {
        const simulator = yield* NatPmpGatewaySimulator.make({ announceTo: nowhere, epoch: 3 })
        const client = yield* peer
        const gateway = { address: simulator.address, port: simulator.port }
        yield* sendFrom(client.socket, bytes(2, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), gateway)
        expect((yield* client.next).raw).toStrictEqual(bytes(0, 129, 0, 1, 0, 0, 0, 3))
        yield* sendFrom(client.socket, bytes(0, 42), gateway)
        expect((yield* client.next).raw).toStrictEqual(bytes(0, 170, 0, 5, 0, 0, 0, 3))
        expect((yield* simulator.counters).unsupported).toBe(2)
      }))

    it.live("ignores responses, runts and truncated requests", () =>
      Effect.gen(function*() {
        const simulator = yield* NatPmpGatewaySimulator.make({ announceTo: nowhere })
        const client = yield* peer
        const gateway = { address: simulator.address, port: simulator.port }
        for (const datagram of [bytes(0, 128, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), bytes(0), bytes(0, 1, 0, 0, 0, 80)]) {
          yield* sendFrom(client.socket, datagram, gateway)
        }
        yield* eventually(simulator.counters, (c) => c.ignored === 3, "three ignored datagrams")
        yield* sendFrom(client.socket, bytes(0, 0), gateway) // a real request answers after the ignored ones
        expect((yield* client.next).response._tag).toBe("PublicAddressResponse")
        expect(yield* Queue.size(client.inbox)).toBe(0)
        const received = yield* simulator.received
        expect(received.map((r) => r.datagram._tag)).toStrictEqual(["Ignore", "Ignore", "Ignore", "Request"])
      }).pipe(Effect.scoped))
  })

  describe("\"rfc\" mode", () => {
    it.scoped("honours a free suggested port, picks another when it is taken, and is idempotent", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient()
        const a = yield* client.map({ protocol: "udp", internalPort: 1000, suggestedExternalPort: 40000 })
        const again = yield* client.map({ protocol: "udp", internalPort: 1000, suggestedExternalPort: 12345 })
        const b = yield* client.map({ protocol: "udp", internalPort: 1001, suggestedExternalPort: 40000 })
        const tcp = yield* client.map({ protocol: "tcp", internalPort: 1001, suggestedExternalPort: 40000 })
        expect([a.externalPort, again.externalPort, tcp.externalPort]).toStrictEqual([40000, 40000, 40000])
        expect(b.externalPort).not.toBe(40000)
        expect(yield* simulator.mappings).toHaveLength(3)
      }))

    it.scoped("caps the lifetime, expires mappings and answers 4 when out of ports", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({
          simulator: { maxLifetime: 600, portRange: { min: 50000, max: 50000 } }
        })
        const mapping = yield* client.map({ protocol: "tcp", internalPort: 22, lifetime: 7200 })
        expect(mapping).toMatchObject({ externalPort: 50000, lifetime: 600 })
        const error = yield* Effect.flip(client.map({ protocol: "tcp", internalPort: 23 }))
        expect(error).toMatchObject({ _tag: "NatPmpResultError", resultCode: 4 })
        yield* TestClock.adjust("600 seconds")
        expect(yield* simulator.mappings).toStrictEqual([])
        expect((yield* client.map({ protocol: "tcp", internalPort: 23 })).externalPort).toBe(50000)
      }))

    it.scoped("resetEpoch drops the mappings and restarts the epoch", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({ simulator: { epoch: 500 } })
        yield* client.map({ protocol: "udp", internalPort: 53 })
        yield* TestClock.adjust("5 seconds")
        expect(yield* simulator.epoch).toBe(505)
        yield* simulator.resetEpoch
        expect(yield* simulator.epoch).toBe(0)
        expect(yield* simulator.mappings).toStrictEqual([])
      }))
  })

  describe("\"protonvpn\" mode", () => {
    it.scoped("ignores the suggested port, caps the lifetime at 60 s and shares the port between UDP and TCP", () =>
      Effect.gen(function*() {
        const { client } = yield* gatewayAndClient({ simulator: { mode: "protonvpn" } })
        const udp = yield* client.map({ protocol: "udp", internalPort: 51413, suggestedExternalPort: 51413 })
        const tcp = yield* client.map({ protocol: "tcp", internalPort: 51413, suggestedExternalPort: 1 })
        expect(udp.externalPort).toBeGreaterThanOrEqual(32768)
        expect(udp).toMatchObject({ internalPort: 51413, lifetime: 60 })
        expect(tcp.externalPort).toBe(udp.externalPort)
        const renewed = yield* client.map({ protocol: "udp", internalPort: 51413, suggestedExternalPort: 0 })
        expect(renewed.externalPort).toBe(udp.externalPort)
      }))

    it.scoped("changePortsOnRenewal gives a renewal a new port", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({ simulator: { mode: "protonvpn" } })
        const first = yield* client.map({ protocol: "udp", internalPort: 9999 })
        yield* simulator.changePortsOnRenewal(true)
        const second = yield* client.map({
          protocol: "udp",
          internalPort: 9999,
          suggestedExternalPort: first.externalPort
        })
        expect(second.externalPort).not.toBe(first.externalPort)
        expect((yield* simulator.mappings).map((m) => m.externalPort)).toStrictEqual([second.externalPort])
      }))
  })

  it.scoped("announces 10 times, 250 ms apart at first, doubling, with the current epoch", () =>
    Effect.gen(function*() {
      const listener = yield* peer
      const simulator = yield* NatPmpGatewaySimulator.make({
        announceTo: { address: "127.0.0.1", port: listener.port },
        publicAddress: "192.0.2.10"
      })
      yield* simulator.setPublicAddress("192.0.2.20")
      const first = yield* listener.next
      expect(first.response).toStrictEqual({
        _tag: "PublicAddressResponse",
        resultCode: 0,
        epoch: 0,
        publicAddress: "192.0.2.20"
      })
      const gaps = [250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 64000]
      let elapsed = 0
      for (const gap of gaps) {
        yield* sleeperAt(elapsed + gap)
        yield* TestClock.adjust(gap - 1)
        yield* realSleep(5)
        expect(yield* Queue.size(listener.inbox)).toBe(0)
        yield* TestClock.adjust(1)
        elapsed += gap
        const { response } = yield* listener.next
        assert(response._tag === "PublicAddressResponse")
        expect(response.epoch).toBe(Math.floor(elapsed / 1000))
      }
      yield* TestClock.adjust("10 minutes")
      yield* realSleep(10)
      expect(yield* Queue.size(listener.inbox)).toBe(0)
    }))
})
