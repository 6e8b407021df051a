/**
 * libnatpmp's `natpmpc` (Debian package natpmpc), run inside a lab namespace ({@link NetworkLab}), with its output
 * parsed: the reference client the project's client and bridge are compared with.
 *
 * @since 0.1.0
 */
import * as Data from "effect/Data"
import * as Effect from "effect/Effect"
import type * as NatPmpMessage from "../NatPmpMessage.js"
import type * as NetworkLab from "./NetworkLab.js"

/** natpmpc failed, or printed something this wrapper does not understand. */
export class NatpmpcError extends Data.TaggedError("NatpmpcError")<{
  readonly reason: string
  readonly output: string
}> {
  get message(): string {
    const printed = this.output.split("\n").map((line) => line.trim()).filter((line) => line !== "").join(" | ")
    return `natpmpc ${this.reason}; it printed: ${printed}`
  }
}

/** What natpmpc reported for a public address request. */
export interface PublicAddress {
  readonly publicAddress: string
  readonly epoch: number
}

/** What natpmpc reported for a mapping request. */
export interface Mapping {
  readonly protocol: NatPmpMessage.Protocol
  readonly internalPort: number
  readonly externalPort: number
  readonly lifetime: number
  readonly epoch: number
}

/** A mapping request in natpmpc's terms (`-a <public port> <private port> <protocol> <lifetime>`). */
export interface MapArguments {
  readonly protocol: NatPmpMessage.Protocol
  readonly publicPort: number
  readonly privatePort: number
  readonly lifetime: number
}

/** natpmpc's whole output, stdout and stderr, whether it succeeded or not. */
const natpmpc = (ns: NetworkLab.Namespace, args: ReadonlyArray<string>) =>
  ns.run(["natpmpc", ...args]).pipe(
    Effect.map(({ stderr, stdout }) => ({ ok: true, output: `${stdout}${stderr}` })),
    Effect.catchTag("CommandError", (error) =>
      error.timedOut
        ? Effect.fail(new NatpmpcError({ reason: "ran past its timeout", output: `${error.stdout}${error.stderr}` }))
        : Effect.succeed({ ok: false, output: `${error.stdout}${error.stderr}` }))
  )

const lastEpoch = (output: string): number | undefined => {
  const epochs = [...output.matchAll(/^epoch = (\d+)$/gm)]
  return epochs.length === 0 ? undefined : Number(epochs[epochs.length - 1][1])
}

/** `natpmpc -g <gateway>`: the public address and epoch. */
export const publicAddress = (
  ns: NetworkLab.Namespace,
  gateway: string
): Effect.Effect<PublicAddress, NatpmpcError> =>
  Effect.gen(function*() {
    const { ok, output } = yield* natpmpc(ns, ["-g", gateway])
    const address = /^Public IP address : ([\d.]+)$/m.exec(output)
    const epoch = lastEpoch(output)
    if (!ok || address === null || epoch === undefined) {
      return yield* new NatpmpcError({ reason: "reported no public address", output })
    }
    return { publicAddress: address[1], epoch }
  })

/**
 * `natpmpc -g <gateway> -a <public> <private> <protocol> <lifetime>`: the mapping it reports. A refused request
 * fails with the reason natpmpc printed (`readnatpmpresponseorretry() failed : not authorized`).
 */
export const map = (
  ns: NetworkLab.Namespace,
  gateway: string,
  request: MapArguments
): Effect.Effect<Mapping, NatpmpcError> =>
  Effect.gen(function*() {
    const { ok, output } = yield* natpmpc(ns, [
      "-g",
      gateway,
      "-a",
      String(request.publicPort),
      String(request.privatePort),
      request.protocol,
      String(request.lifetime)
    ])
    // libnatpmp 20150609 spells it "liftime".
    const mapped = /^Mapped public port (\d+) protocol (TCP|UDP) to local port (\d+) lif(?:e)?time (\d+)$/m.exec(output)
    const epoch = lastEpoch(output)
    if (!ok || mapped === null || epoch === undefined) {
      const failed = /readnatpmpresponseorretry\(\) failed : (.*)$/m.exec(output)
      return yield* new NatpmpcError({
        reason: failed === null ? "reported no mapping" : `failed: ${failed[1]}`,
        output
      })
    }
    return {
      protocol: mapped[2] === "TCP" ? "tcp" : "udp",
      externalPort: Number(mapped[1]),
      internalPort: Number(mapped[3]),
      lifetime: Number(mapped[4]),
      epoch
    }
  })
