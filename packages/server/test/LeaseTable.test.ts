import { describe, expect, it } from "@effect/vitest"
import { Prng } from "@natpmp-bridge/core/testing"
import { LeaseTable } from "../src/internal/LeaseTable.js"

interface TestLease {
  readonly client: string
  readonly protocol: string
  readonly routerPort: number
  readonly expiresAt: number
}

const lease = (client: string, routerPort: number, expiresAt: number, protocol = "tcp"): TestLease => ({
  client,
  protocol,
  routerPort,
  expiresAt
})

describe("LeaseTable", () => {
  it("counts the leases per client and knows the router ports in use", () => {
    const table = new LeaseTable<TestLease>()
    table.set("a/tcp/1", lease("a", 1000, 10))
    table.set("a/udp/1", lease("a", 1000, 10, "udp"))
    table.set("b/tcp/2", lease("b", 2000, 10))
    expect([table.heldBy("a"), table.heldBy("b"), table.heldBy("c")]).toEqual([2, 1, 0])
    expect(table.routerPortTaken("tcp", 1000, "x")).toBe(true)
    expect(table.routerPortTaken("tcp", 1000, "a/tcp/1")).toBe(false) // its own port
    expect(table.routerPortTaken("udp", 2000, "x")).toBe(false)
    // a renewal that moves the port frees the old one
    table.set("a/tcp/1", lease("a", 1001, 20))
    expect(table.routerPortTaken("tcp", 1000, "x")).toBe(false)
    expect(table.routerPortTaken("tcp", 1001, "x")).toBe(true)
    expect(table.heldBy("a")).toBe(2)
    table.delete("a/tcp/1")
    expect([table.heldBy("a"), table.size, table.routerPortTaken("tcp", 1001, "x")]).toEqual([1, 2, false])
    table.clear()
    expect([table.size, table.heldBy("b"), table.nextExpiry()]).toEqual([0, 0, Number.POSITIVE_INFINITY])
  })

  it("gives the expired leases in expiry order, skipping replaced and removed ones", () => {
    const table = new LeaseTable<TestLease>()
    table.set("k1", lease("a", 1, 30))
    table.set("k2", lease("a", 2, 10))
    table.set("k3", lease("a", 3, 20))
    expect(table.nextExpiry()).toBe(10)
    table.set("k2", lease("a", 2, 50)) // renewed
    table.delete("k3")
    expect(table.nextExpiry()).toBe(30)
    expect(table.takeExpired(29)).toEqual([])
    const due = table.takeExpired(40)
    expect(due.map(([key]) => key)).toEqual(["k1"])
    // not removed by whoever took it: back on the schedule
    table.reschedule("k1", due[0][1])
    expect(table.nextExpiry()).toBe(30)
    // removed meanwhile: stays off
    const again = table.takeExpired(40)
    table.delete("k1")
    table.reschedule("k1", again[0][1])
    expect(table.nextExpiry()).toBe(50)
  })

  it("agrees with a scan of all leases through random changes (seeded)", () => {
    const random = new Prng.Prng(20261121)
    const table = new LeaseTable<TestLease>()
    const model = new Map<string, TestLease>()
    let now = 0
    for (let step = 0; step < 20_000; step++) {
      const key = `c${random.int(40)}/${random.pick(["tcp", "udp"])}/${random.int(10)}`
      const action = random.int(10)
      if (action < 6) {
        const [client, protocol] = key.split("/")
        const value = lease(client, random.between(1, 30), now + random.between(1, 500), protocol)
        table.set(key, value)
        model.set(key, value)
      } else if (action < 8) {
        expect(table.delete(key)).toBe(model.delete(key))
      } else {
        now += random.int(50)
        const due = table.takeExpired(now)
        const expected = [...model].filter(([, value]) => value.expiresAt <= now).map(([k]) => k).sort()
        expect(due.map(([k]) => k).sort()).toEqual(expected)
        for (const [k] of due) {
          if (random.chance(0.5)) {
            table.delete(k)
            model.delete(k)
          }
        }
        for (const [k, value] of due) table.reschedule(k, value)
      }
      const client = `c${random.int(40)}`
      expect(table.heldBy(client)).toBe([...model.values()].filter((value) => value.client === client).length)
      const port = random.between(1, 30)
      expect(table.routerPortTaken("tcp", port, key)).toBe(
        [...model].some(([k, value]) => k !== key && value.protocol === "tcp" && value.routerPort === port)
      )
      const earliest = Math.min(...[...model.values()].map((value) => value.expiresAt))
      expect(table.nextExpiry()).toBe(earliest)
      expect(table.size).toBe(model.size)
    }
  })
})
