import { assert, describe, expect, it } from "@effect/vitest"
import { NatPmpClient, NatPmpMessage } from "@natpmp-bridge/core"
import { NatPmpGatewaySimulator } from "@natpmp-bridge/core/testing"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Fiber from "effect/Fiber"
import * as Option from "effect/Option"
import * as Queue from "effect/Queue"
import * as TestClock from "effect/TestClock"
import type * as Dgram from "node:dgram"
import { eventually, gatewayAndClient, rawSocket, realSleep, sendFrom, sleeperWithin } from "./NatPmpFixtures.js"

describe("NatPmpClient", () => {
  describe("requests", () => {
    it.scoped("publicAddress returns the gateway's address and epoch", () =>
      Effect.gen(function*() {
        const { client } = yield* gatewayAndClient({ simulator: { publicAddress: "198.51.100.9", epoch: 42 } })
        const info = yield* client.publicAddress
        expect(info).toStrictEqual({ publicAddress: "198.51.100.9", epoch: 42 })
      }))

    it.scoped("map returns the granted mapping and the gateway holds it", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient()
        const mapping = yield* client.map({
          protocol: "tcp",
          internalPort: 51413,
          suggestedExternalPort: 40000,
          lifetime: 3600
        })
        expect(mapping).toStrictEqual({
          protocol: "tcp",
          internalPort: 51413,
          externalPort: 40000,
          lifetime: 3600,
          epoch: 0
        })
        const mappings = yield* simulator.mappings
        expect(mappings.map(({ externalPort, internalPort, protocol }) => ({ protocol, internalPort, externalPort })))
          .toStrictEqual([{ protocol: "tcp", internalPort: 51413, externalPort: 40000 }])
      }))

    it.scoped("map defaults to lifetime 7200 and lets the gateway pick the port", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient()
        const mapping = yield* client.map({ protocol: "udp", internalPort: 6881 })
        expect(mapping.lifetime).toBe(7200)
        expect(mapping.externalPort).toBeGreaterThanOrEqual(1024)
        const [received] = yield* simulator.received
        assert(received.datagram._tag === "Request" && received.datagram.request._tag === "MapRequest")
        expect(received.datagram.request).toMatchObject({ suggestedExternalPort: 0, lifetime: 7200 })
      }))

    it.scoped("unmap deletes one mapping; unmapAll deletes all of a protocol", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient()
        yield* client.map({ protocol: "udp", internalPort: 1000 })
        yield* client.map({ protocol: "udp", internalPort: 1001 })
        yield* client.map({ protocol: "tcp", internalPort: 1000 })
        yield* client.unmap("udp", 1000)
        expect((yield* simulator.mappings).map((m) => `${m.protocol}/${m.internalPort}`).sort())
          .toStrictEqual(["tcp/1000", "udp/1001"])
        yield* client.unmap("udp", 1000) // deleting a missing mapping succeeds
        yield* client.unmapAll("udp")
        expect((yield* simulator.mappings).map((m) => `${m.protocol}/${m.internalPort}`)).toStrictEqual(["tcp/1000"])
        const last = (yield* simulator.received).at(-1)
        assert(last?.datagram._tag === "Request" && last.datagram.request._tag === "MapRequest")
        expect(last.datagram.request).toMatchObject({ internalPort: 0, suggestedExternalPort: 0, lifetime: 0 })
      }))

    it.scoped.each([1, 2, 3, 4, 5, 17])(
      "result code %i fails with NatPmpResultError",
      (code) =>
        Effect.gen(function*() {
          const { client, simulator } = yield* gatewayAndClient()
          yield* simulator.setResultCode(code)
          const mapError = yield* Effect.flip(client.map({ protocol: "udp", internalPort: 4000 }))
          assert(mapError._tag === "NatPmpResultError")
          expect(mapError.resultCode).toBe(code)
          expect(mapError.opcode).toBe(1)
          expect(mapError.message).toBe(
            `NAT-PMP gateway 127.0.0.1:${simulator.port} failed the UDP mapping request with result ${code}: ${
              NatPmpMessage.resultCodeMessage(code)
            }`
          )
          const addressError = yield* Effect.flip(client.publicAddress)
          assert(addressError._tag === "NatPmpResultError")
          expect(addressError).toMatchObject({ resultCode: code, opcode: 0 })
          expect(addressError.message).not.toContain("\n")
        })
    )

    it.scoped("a socket that cannot be set up fails make with NatPmpSocketError", () =>
      Effect.gen(function*() {
        const error = yield* Effect.flip(
          NatPmpClient.make({ gateway: "127.0.0.1", port: 70000, announcements: false })
        )
        expect(error._tag).toBe("NatPmpSocketError")
        expect(error.message).toMatch(/^NAT-PMP socket error: connect 127\.0\.0\.1:70000 failed: [^\n]+$/)
      }))

    it.scoped("invalid arguments are defects with a clear message", () =>
      Effect.gen(function*() {
        const { client } = yield* gatewayAndClient()
        const exit = yield* Effect.exit(client.map({ protocol: "udp", internalPort: 70000 }))
        expect(String(exit)).toContain("internalPort must be an integer in 1..65535, got 70000")
      }))

    it.live("localAddress binds the request socket to that address", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({ client: { localAddress: "127.0.0.20" } })
        yield* client.publicAddress
        const received = yield* simulator.received
        expect(received.map((datagram) => datagram.from.address)).toEqual(["127.0.0.20"])
      }).pipe(Effect.scoped))
  })

  describe("retransmission", () => {
    it.scoped("a silent gateway is asked 9 times, at 0, 250, 750, 1750 … 63750 ms, then times out at 127.75 s", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient()
        yield* simulator.setSilent(true)
        const fiber = yield* Effect.fork(client.publicAddress)
        const sends = [0, 250, 750, 1750, 3750, 7750, 15750, 31750, 63750]
        for (let i = 0; i < sends.length; i++) {
          const deadline = i + 1 < sends.length ? sends[i + 1] : 127750
          yield* eventually(simulator.requestCount, (n) => n === i + 1, `send ${i + 1}`)
          // the client's timer is asleep (it wakes at the deadline, or earlier on its way there)
          yield* sleeperWithin(sends[i], deadline)
          yield* TestClock.adjust(deadline - sends[i] - 1)
          yield* realSleep(5)
          expect(yield* simulator.requestCount).toBe(i + 1)
          yield* TestClock.adjust(1)
        }
        const error = yield* Fiber.join(fiber).pipe(Effect.flip)
        assert(error._tag === "NatPmpTimeoutError")
        expect(error.attempts).toBe(9)
        expect(Duration.toMillis(error.elapsed)).toBe(127750)
        expect(error.message).toBe(
          `no answer from NAT-PMP gateway 127.0.0.1:${simulator.port} to the public address request after 9 attempts (2m 7s 750ms)`
        )
        expect(yield* simulator.requestCount).toBe(9)
      }))

    it.live("a silent gateway times out after maxAttempts sends with a short initial timeout", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({
          client: { initialTimeout: Duration.millis(20), maxAttempts: 3 }
        })
        yield* simulator.setSilent(true)
        const started = Date.now()
        const error = yield* Effect.flip(client.map({ protocol: "udp", internalPort: 5000 }))
        const elapsed = Date.now() - started
        assert(error._tag === "NatPmpTimeoutError")
        expect(error.message).toContain("to the UDP mapping request after 3 attempts (140ms)")
        expect(elapsed).toBeGreaterThanOrEqual(135)
        expect(elapsed).toBeLessThan(1000)
        expect(yield* simulator.requestCount).toBe(3)
      }).pipe(Effect.scoped))

    it.live("a gateway that answers the second send is accepted", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({ client: { initialTimeout: Duration.millis(30) } })
        yield* simulator.setSilent(true)
        const fiber = yield* Effect.fork(client.publicAddress)
        yield* eventually(simulator.requestCount, (n) => n === 1, "the first send")
        yield* simulator.setSilent(false)
        const info = yield* Fiber.join(fiber)
        expect(info.publicAddress).toBe("203.0.113.1")
        expect(yield* simulator.requestCount).toBe(2)
      }).pipe(Effect.scoped))

    it.live("ICMP port unreachable ends the wait early with NatPmpUnreachableError", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient()
        yield* simulator.setUnreachable(true)
        const started = Date.now()
        const error = yield* Effect.flip(client.map({ protocol: "tcp", internalPort: 8080 }))
        assert(error._tag === "NatPmpUnreachableError")
        expect(Date.now() - started).toBeLessThan(1000)
        expect(error.message).toBe(
          `NAT-PMP gateway 127.0.0.1:${simulator.port} is unreachable (ICMP port unreachable): it does not speak NAT-PMP`
        )
        yield* simulator.setUnreachable(false)
        const mapping = yield* client.map({ protocol: "tcp", internalPort: 8080 })
        expect(mapping.internalPort).toBe(8080)
      }).pipe(Effect.scoped))

    it.live("inside an uninterruptible region a silent gateway still times out after maxAttempts sends", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({
          client: { initialTimeout: Duration.millis(20), maxAttempts: 3 }
        })
        yield* simulator.setSilent(true)
        const error = yield* Effect.flip(Effect.uninterruptible(client.unmap("udp", 5000)))
        assert(error._tag === "NatPmpTimeoutError")
        expect(error.message).toContain("to the UDP mapping request after 3 attempts (140ms)")
        expect(yield* simulator.requestCount).toBe(3)
      }).pipe(Effect.scoped))

    it.live("an unmap in the release of an interrupted fiber times out after maxAttempts sends", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({
          client: { initialTimeout: Duration.millis(20), maxAttempts: 3 }
        })
        yield* simulator.setSilent(true)
        const released = yield* Deferred.make<Either.Either<void, NatPmpClient.NatPmpError>>()
        const fiber = yield* Effect.fork(Effect.scoped(
          Effect.acquireRelease(
            Effect.void,
            () =>
              Effect.flatMap(Effect.either(client.unmap("tcp", 8080)), (result) => Deferred.succeed(released, result))
          ).pipe(Effect.zipRight(Effect.never))
        ))
        yield* Effect.yieldNow()
        yield* Fiber.interrupt(fiber)
        const result = yield* Deferred.await(released)
        assert(Either.isLeft(result) && result.left._tag === "NatPmpTimeoutError")
        expect(result.left.message).toContain("to the TCP mapping request after 3 attempts (140ms)")
        expect(yield* simulator.requestCount).toBe(3)
      }).pipe(Effect.scoped))
  })

  describe("which replies are accepted", () => {
    it.live("a reply from another port is ignored", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient()
        yield* simulator.setResponseDelay(Duration.millis(100))
        const impostor = yield* rawSocket()
        const fiber = yield* Effect.fork(client.publicAddress)
        const [request] = yield* eventually(simulator.received, (r) => r.length === 1, "the request")
        const forged = NatPmpMessage.encodeResponse({
          _tag: "PublicAddressResponse",
          resultCode: 0,
          epoch: 1,
          publicAddress: "192.0.2.66"
        })
        yield* sendFrom(impostor, forged, request.from)
        const info = yield* Fiber.join(fiber)
        expect(info.publicAddress).toBe("203.0.113.1")
      }).pipe(Effect.scoped))

    it.live("replies for another opcode or internal port are skipped while waiting for the right one", () =>
      Effect.gen(function*() {
        // A scripted gateway: answers each mapping request with two wrong replies, then the right one.
        const gateway = yield* rawSocket()
        gateway.on("message", (bytes: Buffer, from: Dgram.RemoteInfo) => {
          const decoded = NatPmpMessage.decodeRequest(new Uint8Array(bytes))
          if (decoded._tag === "Left" || decoded.right._tag !== "MapRequest") return
          const request = decoded.right
          const reply = (response: NatPmpMessage.Response) =>
            gateway.send(NatPmpMessage.encodeResponse(response), from.port, from.address)
          const base = { resultCode: 0, epoch: 7, externalPort: 1, lifetime: 60 } as const
          reply({ _tag: "MapResponse", ...base, protocol: "tcp", internalPort: request.internalPort })
          reply({ _tag: "MapResponse", ...base, protocol: "udp", internalPort: request.internalPort + 1 })
          reply({ _tag: "PublicAddressResponse", resultCode: 0, epoch: 7, publicAddress: "192.0.2.1" })
          reply({ _tag: "MapResponse", ...base, protocol: "udp", internalPort: request.internalPort, externalPort: 2 })
        })
        const client = yield* NatPmpClient.make({
          gateway: "127.0.0.1",
          port: gateway.address().port,
          announcements: false
        })
        const mapping = yield* client.map({ protocol: "udp", internalPort: 3000 })
        expect(mapping).toStrictEqual({ protocol: "udp", internalPort: 3000, externalPort: 2, lifetime: 60, epoch: 7 })
      }).pipe(Effect.scoped))

    it.live("concurrent callers are serialized: the gateway never sees two outstanding requests", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({ simulator: { responseDelay: Duration.millis(15) } })
        const mappings = yield* Effect.forEach(
          Array.from({ length: 10 }, (_, i) => 7000 + i),
          (internalPort) => client.map({ protocol: "tcp", internalPort }),
          { concurrency: "unbounded" }
        )
        expect(new Set(mappings.map((m) => m.internalPort)).size).toBe(10)
        expect(yield* simulator.maxConcurrency).toBe(1)
        expect((yield* simulator.counters).mapTcp).toBe(10)
      }).pipe(Effect.scoped))
  })

  describe("gateway events", () => {
    it.scoped("an epoch that goes backwards (RFC 6886 §3.6) is a GatewayReset", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({ simulator: { epoch: 100 } })
        const events = yield* client.subscribe
        yield* client.publicAddress
        yield* TestClock.adjust("60 seconds")
        const steady = yield* client.publicAddress
        expect(steady.epoch).toBe(160)
        expect(yield* Queue.size(events)).toBe(0)
        yield* TestClock.adjust("10 seconds")
        yield* simulator.resetEpoch
        const afterReset = yield* client.publicAddress
        expect(afterReset.epoch).toBe(0)
        const event = yield* Queue.take(events)
        expect(event).toStrictEqual(
          NatPmpClient.GatewayEvent.GatewayReset({
            gateway: "127.0.0.1",
            epoch: 0,
            previousEpoch: 160,
            expectedEpoch: 168
          })
        )
      }))

    it.scoped("an epoch within 2 s of the 7/8 estimate is no reset", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({ simulator: { epoch: 10 } })
        const events = yield* client.subscribe
        yield* client.publicAddress
        yield* TestClock.adjust("16 seconds")
        yield* simulator.resetEpoch
        yield* TestClock.adjust("22 seconds") // gateway epoch 22, estimate floor(10 + 38 × 7/8) = 43: reset
        yield* client.publicAddress
        expect((yield* Queue.take(events))._tag).toBe("GatewayReset")
        yield* TestClock.adjust("8 seconds") // gateway epoch 30, estimate 22 + 7 = 29: fine
        yield* client.publicAddress
        expect(yield* Queue.size(events)).toBe(0)
      }))

    it.scoped("an announcement from the gateway is surfaced once per new address", () =>
      Effect.gen(function*() {
        const { client, simulator } = yield* gatewayAndClient({
          client: { announcements: { address: "127.0.0.1", port: 0 } }
        })
        assert(Option.isSome(client.announcementListener))
        const listener = client.announcementListener.value
        const events = yield* client.subscribe

        // A forged announcement from another address is ignored.
        const impostor = yield* rawSocket("127.0.0.2")
        yield* sendFrom(
          impostor,
          NatPmpMessage.encodeResponse({
            _tag: "PublicAddressResponse",
            resultCode: 0,
            epoch: 0,
            publicAddress: "192.0.2.66"
          }),
          listener
        )

        yield* simulator.setPublicAddress("198.51.100.7")
        const event = yield* Queue.take(events)
        expect(event).toStrictEqual(
          NatPmpClient.GatewayEvent.Announcement({
            gateway: "127.0.0.1",
            publicAddress: "198.51.100.7",
            previousPublicAddress: undefined,
            epoch: 0
          })
        )
        // The repeats of the same announcement are not surfaced again.
        yield* TestClock.adjust("1 second")
        yield* realSleep(50) // let the repeats at 250 ms and 750 ms arrive
        expect(yield* Queue.size(events)).toBe(0)

        yield* simulator.setPublicAddress("198.51.100.8")
        expect(yield* Queue.take(events)).toMatchObject({
          _tag: "Announcement",
          publicAddress: "198.51.100.8",
          previousPublicAddress: "198.51.100.7"
        })
      }))

    it.scoped("a busy announcement port is logged, not fatal", () =>
      Effect.gen(function*() {
        const busy = yield* rawSocket()
        const { client } = yield* gatewayAndClient({
          client: { announcements: { address: "127.0.0.1", port: busy.address().port } }
        })
        expect(client.announcementListener).toStrictEqual(Option.none())
        expect((yield* client.publicAddress).publicAddress).toBe("203.0.113.1")
      }))
  })

  it.scoped("layer provides the service", () =>
    Effect.gen(function*() {
      const simulator = yield* NatPmpGatewaySimulator.make()
      const info = yield* NatPmpClient.NatPmpClient.pipe(
        Effect.flatMap((client) => client.publicAddress),
        Effect.provide(NatPmpClient.layer({ gateway: "127.0.0.1", port: simulator.port, announcements: false }))
      )
      expect(info.publicAddress).toBe("203.0.113.1")
    }))
})
