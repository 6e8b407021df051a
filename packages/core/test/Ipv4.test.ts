import { describe, expect, it } from "@effect/vitest"
import { Ipv4 } from "@natpmp-bridge/core"
import * as FastCheck from "effect/FastCheck"

describe("Ipv4", () => {
  it("parses dotted quads at the boundaries", () => {
    expect(Ipv4.parse("0.0.0.0")).toBe(0)
    expect(Ipv4.parse("255.255.255.255")).toBe(0xffffffff)
    expect(Ipv4.parse("192.168.88.1")).toBe(0xc0a85801)
    expect(Ipv4.parse("10.0.0.255")).toBe(0x0a0000ff)
  })

  it("rejects anything but four decimal parts 0-255 without leading zeros", () => {
    for (
      const bad of [
        "",
        "1.2.3",
        "1.2.3.4.5",
        "1.2.3.256",
        "1.2.3.-1",
        "1.2.3.01",
        "01.2.3.4",
        "1.2.3.0x1",
        "1.2..4",
        " 1.2.3.4",
        "1.2.3.4 ",
        "1.2.3.1000",
        "a.b.c.d",
        "1.2.3.4/24"
      ]
    ) {
      expect(Ipv4.parse(bad), bad).toBeUndefined()
    }
  })

  it("formats unsigned 32-bit integers", () => {
    expect(Ipv4.format(0)).toBe("0.0.0.0")
    expect(Ipv4.format(0xffffffff)).toBe("255.255.255.255")
    expect(Ipv4.format(0x0a020001)).toBe("10.2.0.1")
  })

  it("round-trips every address", () => {
    FastCheck.assert(
      FastCheck.property(FastCheck.integer({ min: 0, max: 0xffffffff }), (value) => {
        expect(Ipv4.parse(Ipv4.format(value))).toBe(value)
      })
    )
    FastCheck.assert(
      FastCheck.property(FastCheck.ipV4(), (text) => {
        expect(Ipv4.format(Ipv4.parse(text)!)).toBe(text)
      })
    )
  })

  it("parses CIDRs, a bare address as /32", () => {
    expect(Ipv4.parseCidr("192.168.88.1/24")).toEqual({ address: 0xc0a85801, prefix: 24 })
    expect(Ipv4.parseCidr("10.2.0.1")).toEqual({ address: 0x0a020001, prefix: 32 })
    expect(Ipv4.parseCidr("0.0.0.0/0")).toEqual({ address: 0, prefix: 0 })
    for (const bad of ["1.2.3.4/33", "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/100", "1.2.3/8", "1.2.3.4/8/8", "/8"]) {
      expect(Ipv4.parseCidr(bad), bad).toBeUndefined()
    }
  })

  it("masks, networks and containment", () => {
    expect(Ipv4.mask(0)).toBe(0)
    expect(Ipv4.mask(24)).toBe(0xffffff00)
    expect(Ipv4.mask(32)).toBe(0xffffffff)
    expect(Ipv4.format(Ipv4.network(Ipv4.parse("192.168.88.17")!, 24))).toBe("192.168.88.0")
    const lan = Ipv4.parseCidr("192.168.88.1/24")!
    expect(Ipv4.contains(lan, Ipv4.parse("192.168.88.254")!)).toBe(true)
    expect(Ipv4.contains(lan, Ipv4.parse("192.168.89.1")!)).toBe(false)
    expect(Ipv4.contains(Ipv4.parseCidr("0.0.0.0/0")!, 0xffffffff)).toBe(true)
    expect(Ipv4.contains(Ipv4.parseCidr("10.2.0.1")!, Ipv4.parse("10.2.0.2")!)).toBe(false)
  })
})
