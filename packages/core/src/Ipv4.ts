/**
 * IPv4 addresses and networks: strict dotted-quad parsing to unsigned 32-bit integers, formatting, and CIDR math.
 *
 * @since 0.1.0
 */

/**
 * An IPv4 network (or an address with a prefix): `address` as an unsigned 32-bit integer, `prefix` 0-32.
 *
 * @since 0.1.0
 * @category models
 */
export interface Cidr {
  readonly address: number
  readonly prefix: number
}

const OCTET = /^(0|[1-9][0-9]{0,2})$/

/**
 * `a.b.c.d` → unsigned 32-bit integer, or `undefined` unless it is exactly four decimal parts 0-255 without
 * leading zeros.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parse = (text: string): number | undefined => {
  const parts = text.split(".")
  if (parts.length !== 4) return undefined
  let value = 0
  for (const part of parts) {
    if (!OCTET.test(part)) return undefined
    const byte = Number(part)
    if (byte > 255) return undefined
    value = value * 256 + byte
  }
  return value
}

/**
 * Unsigned 32-bit integer → `a.b.c.d`.
 *
 * @since 0.1.0
 * @category formatting
 */
export const format = (value: number): string =>
  [value >>> 24, (value >>> 16) & 255, (value >>> 8) & 255, value & 255].join(".")

/**
 * The network mask of a prefix length as an unsigned 32-bit integer (`24` → `0xffffff00`).
 *
 * @since 0.1.0
 * @category networks
 */
export const mask = (prefix: number): number => prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0

/**
 * The network address of `address` under `prefix` (host bits cleared).
 *
 * @since 0.1.0
 * @category networks
 */
export const network = (address: number, prefix: number): number => (address & mask(prefix)) >>> 0

/**
 * `a.b.c.d/n` (n 0-32, decimal) or a bare `a.b.c.d` (a /32); host bits are kept.
 *
 * @since 0.1.0
 * @category parsing
 */
export const parseCidr = (text: string): Cidr | undefined => {
  const slash = text.indexOf("/")
  const address = parse(slash < 0 ? text : text.slice(0, slash))
  const prefixText = slash < 0 ? "32" : text.slice(slash + 1)
  if (address === undefined || !/^\d{1,2}$/.test(prefixText)) return undefined
  const prefix = Number(prefixText)
  return prefix <= 32 ? { address, prefix } : undefined
}

/**
 * Whether `address` (unsigned 32-bit integer) lies in `cidr`'s network.
 *
 * @since 0.1.0
 * @category networks
 */
export const contains = (cidr: Cidr, address: number): boolean =>
  network(cidr.address, cidr.prefix) === network(address, cidr.prefix)
