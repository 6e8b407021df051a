/**
 * A NAT-PMP load generator in a process of its own (so it never shares an event loop with what it measures): it
 * keeps `window` PUBLIC_ADDRESS requests (op 0) in flight, spread over one socket per source address, sends a new
 * request for every answer, and counts the answers received during `durationMs` (after `warmupMs`). A socket whose
 * requests all went unanswered for 200 ms refills its share of the window (lost datagrams never shrink it).
 *
 *   node node_modules/vite-node/vite-node.mjs bench/support/load-generator.ts '<json options>'
 *
 * Options: `target` {address, port}, `sources` (addresses to bind, e.g. ["127.0.0.20", …]), `window`,
 * `durationMs`, `warmupMs`. Prints one line `RESULT {"answers":…,"seconds":…,"perSecond":…,"sent":…,"refills":…}`.
 */
import * as Dgram from "node:dgram"

interface Options {
  readonly target: { readonly address: string; readonly port: number }
  readonly sources: ReadonlyArray<string>
  readonly window: number
  readonly durationMs: number
  readonly warmupMs: number
}

const options: Options = JSON.parse(process.argv[2] ?? "{}")
const request = Buffer.from([0, 0])

interface Source {
  readonly socket: Dgram.Socket
  readonly share: number
  outstanding: number
  lastAnswer: number
}

let counting = false
let answers = 0
let sent = 0
let refills = 0
let failures = 0

const send = (source: Source) => {
  source.outstanding++
  sent++
  source.socket.send(request, options.target.port, options.target.address, (error) => {
    if (error) failures++
  })
}

const open = (address: string, share: number): Promise<Source> =>
  new Promise((resolve, reject) => {
    const socket = Dgram.createSocket("udp4")
    const source: Source = { socket, share, outstanding: 0, lastAnswer: Date.now() }
    socket.on("error", () => {
      failures++
    })
    socket.on("message", (message) => {
      if (message.length < 12 || message[1] !== 128) return
      source.outstanding = Math.max(0, source.outstanding - 1)
      source.lastAnswer = Date.now()
      if (counting) answers++
      send(source)
    })
    socket.once("error", reject)
    socket.bind(0, address, () => resolve(source))
  })

const main = async () => {
  const sources = await Promise.all(
    options.sources.map((address, index) =>
      open(
        address,
        Math.floor(options.window / options.sources.length) + (index < options.window % options.sources.length ? 1 : 0)
      )
    )
  )
  const refill = setInterval(() => {
    const now = Date.now()
    for (const source of sources) {
      if (now - source.lastAnswer > 200) {
        refills++
        source.outstanding = 0
        source.lastAnswer = now
      }
      while (source.outstanding < source.share) send(source)
    }
  }, 50)
  for (const source of sources) {
    while (source.outstanding < source.share) send(source)
  }
  await new Promise((resolve) => setTimeout(resolve, options.warmupMs))
  counting = true
  const started = process.hrtime.bigint()
  await new Promise((resolve) => setTimeout(resolve, options.durationMs))
  counting = false
  const seconds = Number(process.hrtime.bigint() - started) / 1e9
  clearInterval(refill)
  for (const source of sources) source.socket.close()
  console.log(`RESULT ${JSON.stringify({ answers, seconds, perSecond: answers / seconds, sent, refills, failures })}`)
}

main().catch((error) => {
  console.error(String(error))
  process.exit(1)
})
