import { describe, expect, it } from "@effect/vitest"
import { NftDstNat } from "@natpmp-bridge/core/testing"

const rule = (fields: Record<string, string>) => ({
  ".id": "*1A",
  chain: "dstnat",
  action: "dst-nat",
  disabled: "false",
  ...fields
})

describe("NftDstNat", () => {
  it("renders a bridge rule as an nftables dnat rule named by its RouterOS id", () => {
    const rendering = NftDstNat.render([
      rule({
        protocol: "tcp",
        "in-interface": "wg0",
        "dst-port": "41000",
        "to-addresses": "10.1.2.2",
        "to-ports": "41000",
        comment: "natpmp-bridge:lab tcp 10.1.2.2:41000",
        bytes: "0",
        packets: "0",
        log: "false",
        "log-prefix": ""
      })
    ])
    expect(rendering.rules).toStrictEqual([`iifname "wg0" tcp dport 41000 dnat to 10.1.2.2:41000 comment "*1A"`])
    expect(rendering.skipped).toStrictEqual([])
    // one transaction: create (so the delete cannot fail), delete, fill
    expect(rendering.script).toBe(
      [
        "table ip natpmp_bridge_router",
        "delete table ip natpmp_bridge_router",
        "table ip natpmp_bridge_router {",
        "  chain dstnat {",
        "    type nat hook prerouting priority -100; policy accept;",
        `    iifname "wg0" tcp dport 41000 dnat to 10.1.2.2:41000 comment "*1A"`,
        "  }",
        "}",
        ""
      ].join("\n")
    )
  })

  it("understands port lists and ranges, addresses, negation and a protocol without ports", () => {
    const rendering = NftDstNat.render([
      rule({ protocol: "udp", "dst-port": "1000-2000,3000", "to-addresses": "10.0.0.5" }),
      rule({
        ".id": "*1B",
        protocol: "tcp",
        "dst-port": "!22",
        "src-address": "192.0.2.0/24",
        "to-addresses": "10.0.0.6"
      }),
      rule({ ".id": "*1C", protocol: "gre", "dst-address": "198.51.100.1", "to-addresses": "10.0.0.7" }),
      rule({ ".id": "*1D", "in-interface": "!ether1", "to-addresses": "10.0.0.8-10.0.0.9" })
    ], "t")
    expect(rendering.rules).toStrictEqual([
      `udp dport { 1000-2000, 3000 } dnat to 10.0.0.5 comment "*1A"`,
      `ip saddr 192.0.2.0/24 tcp dport != 22 dnat to 10.0.0.6 comment "*1B"`,
      `ip daddr 198.51.100.1 meta l4proto gre dnat to 10.0.0.7 comment "*1C"`,
      `iifname != "ether1" dnat to 10.0.0.8-10.0.0.9 comment "*1D"`
    ])
    expect(rendering.script).toContain("table ip t {")
  })

  it("leaves out what it cannot render exactly, never rendering a rule broader than RouterOS means it", () => {
    const rendering = NftDstNat.render([
      rule({ protocol: "tcp", "dst-port": "80", "to-addresses": "10.0.0.5", "connection-mark": "x" }),
      rule({ ".id": "*1B", protocol: "tcp", "dst-port": "80" }),
      rule({ ".id": "*1C", protocol: "tcp", "in-interface": "wg0\" accept; #", "to-addresses": "10.0.0.5" }),
      rule({ ".id": "*1D", protocol: "gre", "dst-port": "80", "to-addresses": "10.0.0.5" }),
      rule({ ".id": "*1E", protocol: "tcp", "dst-port": "99999", "to-addresses": "10.0.0.5" }),
      // not reported: disabled, another chain or action
      rule({ ".id": "*1F", disabled: "true", protocol: "tcp", "dst-port": "80", "to-addresses": "10.0.0.5" }),
      rule({ ".id": "*20", chain: "srcnat", action: "masquerade" }),
      rule({ ".id": "*21", action: "redirect", "to-ports": "80" })
    ])
    expect(rendering.rules).toStrictEqual([])
    expect(rendering.skipped).toStrictEqual([
      { id: "*1A", reason: "cannot render connection-mark" },
      { id: "*1B", reason: "no to-addresses" },
      { id: "*1C", reason: `cannot render in-interface=wg0" accept; #` },
      { id: "*1D", reason: "ports with protocol gre" },
      { id: "*1E", reason: "cannot render dst-port=99999" }
    ])
  })
})
