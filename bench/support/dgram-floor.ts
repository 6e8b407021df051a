/**
 * The floor of a NAT-PMP server written on `node:dgram`: a bare socket that answers every datagram with the same 12
 * bytes (a PUBLIC_ADDRESS response), nothing else. What the bridge costs per answer above this is its own; the rest
 * is node's UDP path.
 *
 *   node node_modules/vite-node/vite-node.mjs bench/support/dgram-floor.ts '{"listen":"127.0.0.1:0"}'
 *
 * Prints `READY {"address":…,"port":…}` on standard error when bound; exits when its standard input closes.
 */
import * as Dgram from "node:dgram"

const { listen } = JSON.parse(process.argv[2] ?? "{}") as { readonly listen?: string }
const [address, port] = (listen ?? "127.0.0.1:0").split(":")
const answer = Buffer.from([0, 128, 0, 0, 0, 0, 0, 1, 203, 0, 113, 7])
const socket = Dgram.createSocket("udp4")
socket.on("message", (_, from) => socket.send(answer, from.port, from.address))
socket.bind(Number(port), address, () => {
  const bound = socket.address()
  process.stderr.write(`READY ${JSON.stringify({ address: bound.address, port: bound.port })}\n`)
})
process.stdin.resume()
process.stdin.on("end", () => process.exit(0))
