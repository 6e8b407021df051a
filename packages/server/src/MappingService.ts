/**
 * The mapping lifecycle of the bridge: a LAN client's NAT-PMP mapping becomes a VPN mapping (public port P) plus a
 * dst-nat rule on the router (VPN in-interface, `dst-port=X` → `client:internalPort`).
 *
 * - New mapping: inside one `Scope`, every step registers its undo; a failure closes the scope and the undos run
 *   in reverse, so nothing is left behind. At most 2 router round trips (print for the conflict check, add).
 * - Renewal: one VPN request, 0 router round trips (1 `set` when the VPN changed the port in `same` mode).
 * - Delete: 1 router round trip; always succeeds; internal port 0 deletes all of the client's mappings of the
 *   protocol.
 * - Requests are serialized per key (client IP, protocol, internal port); a retransmission of a request still in
 *   flight joins it instead of starting another one.
 * - One expiry fiber, one reconciliation fiber, adoption of the bridge's own rules at startup, re-mapping when the
 *   VPN loses its state, and removal of every own rule and VPN mapping on shutdown.
 *
 * @since 0.1.0
 */
import { NatPmpMessage } from "@natpmp-bridge/core"
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Data from "effect/Data"
import * as Deferred from "effect/Deferred"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Fiber from "effect/Fiber"
import * as FiberId from "effect/FiberId"
import * as FiberRef from "effect/FiberRef"
import * as FiberSet from "effect/FiberSet"
import * as Layer from "effect/Layer"
import * as LogLevel from "effect/LogLevel"
import * as Option from "effect/Option"
import * as PubSub from "effect/PubSub"
import * as Queue from "effect/Queue"
import * as Random from "effect/Random"
import type * as Scope from "effect/Scope"
import { BridgeMetrics } from "./BridgeMetrics.js"
import { ClientPolicy } from "./ClientPolicy.js"
import * as KeyedLock from "./internal/KeyedLock.js"
import { LeaseTable } from "./internal/LeaseTable.js"
import * as PortSpec from "./PortSpec.js"
import type { NatRule, Protocol, RouterError, RuleSpec } from "./Router.js"
import {
  describeRule,
  findConflict,
  isOwnComment,
  ownershipComment,
  parseOwnership,
  Router,
  ruleMatchesSpec
} from "./Router.js"
import type { VpnEvent, VpnGatewayError } from "./VpnGateway.js"
import { resultCodeOf, VpnGateway } from "./VpnGateway.js"

// -----------------------------------------------------------------------------
// models
// -----------------------------------------------------------------------------

/**
 * How the VPN forwards a mapped port (DESIGN "Upstream port semantics"):
 * - `same`: traffic to public port P arrives at the router on port P (ProtonVPN); the rule matches `dst-port=P`.
 * - `translate`: it arrives on the internal port the bridge requested (RFC gateways); the rule matches that port.
 */
export type PortMode = "same" | "translate"

/** A mapping held by the bridge for a LAN client. */
export interface Lease {
  readonly client: string
  readonly protocol: Protocol
  readonly internalPort: number
  /** The internal port the bridge asked the VPN for (unique per protocol among the leases). */
  readonly upstreamPort: number
  /** The VPN's public port P (0 while unknown: a rule adopted in `translate` mode before its first renewal). */
  readonly externalPort: number
  /** The port the router rule matches (X). */
  readonly routerPort: number
  readonly ruleId: string
  /** The granted lifetime in seconds. */
  readonly lifetime: number
  /** Clock milliseconds. */
  readonly expiresAt: number
  /** Adopted at startup from a previous run's rule and not renewed since. */
  readonly adopted: boolean
  /** False when a rule update failed: the next renewal or reconciliation retries it. */
  readonly ruleInSync: boolean
}

/** What a reconciliation pass did. */
export interface ReconcileReport {
  /** Own rules without a lease, removed. */
  readonly removed: number
  /** Rules of live leases that had disappeared, created again. */
  readonly recreated: number
  /** Rules of live leases that had drifted (port, target, interface, disabled), set back. */
  readonly fixed: number
}

/** The bridge's own mapping state began anew (upstream state loss): LAN clients must be told (announcement). */
export interface StateReset {
  readonly reason: string
}

/** Options of the mapping service. */
export interface Options {
  /** Marks the bridge's rules (`natpmp-bridge:<bridgeId> ...`). */
  readonly bridgeId: string
  /** Default `same`. */
  readonly portMode?: PortMode | undefined
  /** Reconciliation period (default 60 s). */
  readonly reconcileInterval?: Duration.DurationInput | undefined
  /** How long rules adopted at startup live without a renewal (default 120 s). */
  readonly adoptionGrace?: Duration.DurationInput | undefined
  /** Every request is answered within this time (default 2 s). */
  readonly requestTimeout?: Duration.DurationInput | undefined
  /** Bound of the shutdown cleanup (default 10 s). */
  readonly shutdownTimeout?: Duration.DurationInput | undefined
}

// -----------------------------------------------------------------------------
// errors (internal to a request; they become result codes)
// -----------------------------------------------------------------------------

/** The port the new rule needs is used by another rule of the router. */
export class PortConflictError extends Data.TaggedError("PortConflictError")<{
  readonly protocol: Protocol
  readonly port: number
  readonly rule: string
}> {
  override get message(): string {
    return `${this.protocol} port ${this.port} on the VPN interface is taken by rule ${this.rule}`
  }
}

/** The client holds as many mappings as the quota allows. */
export class QuotaExceededError extends Data.TaggedError("QuotaExceededError")<{
  readonly client: string
  readonly quota: number
}> {
  override get message(): string {
    return `client ${this.client} already holds ${this.quota} mapping(s), the quota`
  }
}

/** No free upstream/router port could be found. */
export class NoFreePortError extends Data.TaggedError("NoFreePortError")<{
  readonly protocol: Protocol
}> {
  override get message(): string {
    return `no free ${this.protocol} port`
  }
}

type MappingError = PortConflictError | QuotaExceededError | NoFreePortError | RouterError | VpnGatewayError

const resultCodeOfError = (error: MappingError): number => {
  switch (error._tag) {
    case "PortConflictError":
    case "QuotaExceededError":
    case "NoFreePortError":
      return NatPmpMessage.ResultCode.OutOfResources
    case "RouterError":
      return NatPmpMessage.ResultCode.NetworkFailure
    case "VpnGatewayError":
      return resultCodeOf(error)
  }
}

// -----------------------------------------------------------------------------
// service
// -----------------------------------------------------------------------------

/** The mapping service. */
export interface Service {
  /** Seconds since the bridge's mapping state began (the epoch of every answer). */
  readonly epoch: Effect.Effect<number>
  /** The cached public address of the VPN (served for op 0). */
  readonly publicAddress: Effect.Effect<Option.Option<string>>
  /**
   * `epoch` and `publicAddress` read synchronously (for the NAT-PMP server's per-datagram answers), when the VPN
   * gateway offers its address so.
   */
  readonly unsafePublicAddressState?:
    | (() => { readonly epoch: number; readonly publicAddress: Option.Option<string> })
    | undefined
  /**
   * Answers a mapping request (op 1/2) of `client` (the datagram's source address) within the request timeout.
   * Never fails: failures are answered with their result code, internal port, external port 0 and lifetime 0.
   */
  readonly handle: (client: string, request: NatPmpMessage.MapRequest) => Effect.Effect<NatPmpMessage.MapResponse>
  /**
   * The same without a fiber of the caller's (the NAT-PMP server calls it from its socket callback): `reply` is
   * called once, from the fiber that has the answer, and the effect it returns runs there.
   */
  readonly unsafeHandle?:
    | ((
      client: string,
      request: NatPmpMessage.MapRequest,
      reply: (response: NatPmpMessage.MapResponse) => Effect.Effect<void>
    ) => void)
    | undefined
  /** The current leases. */
  readonly leases: Effect.Effect<ReadonlyArray<Lease>>
  /** Runs one reconciliation pass now. */
  readonly reconcile: Effect.Effect<ReconcileReport, RouterError>
  /** A subscription to state resets (to announce them), for the scope's life. */
  readonly subscribeResets: Effect.Effect<Queue.Dequeue<StateReset>, never, Scope.Scope>
}

/** The mapping service tag. */
export class MappingService extends Context.Tag("@natpmp-bridge/server/MappingService")<MappingService, Service>() {}

interface Answer {
  readonly resultCode: number
  readonly externalPort: number
  readonly lifetime: number
}

/**
 * A caller waiting for an answer until its deadline (clock milliseconds). `reply` is called once, from the fiber
 * that has the answer (the request's own, or the timekeeper at the deadline), and what it returns runs there.
 */
interface Waiting {
  readonly reply: (answer: Answer) => Effect.Effect<void>
  readonly deadline: number
  readonly onTimeout: Answer
}

/** A request in flight for a key, and everyone waiting for its answer (retransmissions join it). */
interface InFlight {
  readonly signature: string
  readonly waiters: Array<Waiting>
}

const failure = (resultCode: number): Answer => ({ resultCode, externalPort: 0, lifetime: 0 })
const deleted: Answer = { resultCode: NatPmpMessage.ResultCode.Success, externalPort: 0, lifetime: 0 }

const keyOf = (client: string, protocol: Protocol, internalPort: number): string =>
  `${client}/${protocol}/${internalPort}`

const upstreamKey = (protocol: Protocol, port: number): string => `${protocol}/${port}`

/**
 * A lease as one object literal, its properties always in this order: every lease held shares one hidden class.
 * Built by spreads (`{ ...draft, ruleId }`), 10,000 leases had one each, about 500 bytes apiece. The return type
 * requires every property of `Lease`, optional ones too: one added there and forgotten here does not compile.
 */
const normalLease = (lease: Lease): { readonly [K in keyof Lease]-?: Lease[K] } => ({
  client: lease.client,
  protocol: lease.protocol,
  internalPort: lease.internalPort,
  upstreamPort: lease.upstreamPort,
  externalPort: lease.externalPort,
  routerPort: lease.routerPort,
  ruleId: lease.ruleId,
  lifetime: lease.lifetime,
  expiresAt: lease.expiresAt,
  adopted: lease.adopted,
  ruleInSync: lease.ruleInSync
})

const DYNAMIC_PORTS = { min: 49152, max: 65535 }

/**
 * The undos of a new mapping's steps so far, run in reverse when it fails. A plain list rather than a `Scope` with a
 * finalizer per step: a finalizer costs two diffs of all the fiber's refs when the scope closes, even on success.
 */
type Undos = Array<() => Effect.Effect<void>>

/**
 * Runs `acquire` and registers `undo`, run when the new mapping fails. Unlike `acquireRelease`, `acquire` stays
 * interruptible: the bounded waits inside it (retransmission timeouts) rely on interruption.
 */
const step = <A, E, R>(
  undos: Undos,
  acquire: Effect.Effect<A, E, R>,
  undo: (a: A) => Effect.Effect<void>
): Effect.Effect<A, E, R> =>
  Effect.map(acquire, (a) => {
    undos.push(() => undo(a))
    return a
  })

/**
 * Runs the undos in reverse, each interruptible (their own timeouts need interruption; the cleanup itself runs
 * uninterruptibly), each attempted even when one before it was interrupted.
 */
const runUndos = (undos: Undos): Effect.Effect<void> =>
  Effect.forEach(undos.reverse(), (undo) => Effect.exit(Effect.interruptible(undo())), { discard: true })

/**
 * Creates the mapping service: adopts the bridge's own rules left by a previous run, then starts the expiry,
 * reconciliation and upstream-event fibers. When the scope closes it waits for requests in flight, then removes
 * every own rule (one remove) and VPN mapping, within the shutdown timeout.
 */
export const make = (
  options: Options
): Effect.Effect<Service, RouterError, Router | VpnGateway | ClientPolicy | Scope.Scope> =>
  Effect.gen(function*() {
    const router = yield* Router
    const vpn = yield* VpnGateway
    const policy = yield* ClientPolicy
    const metrics = yield* BridgeMetrics
    const bridgeId = options.bridgeId
    const portMode = options.portMode ?? "same"
    const reconcileInterval = Duration.decode(options.reconcileInterval ?? Duration.seconds(60))
    const adoptionGrace = Duration.decode(options.adoptionGrace ?? Duration.seconds(120))
    const requestTimeout = Duration.decode(options.requestTimeout ?? Duration.seconds(2))
    const shutdownTimeout = Duration.decode(options.shutdownTimeout ?? Duration.seconds(10))

    // Operations in flight run here, detached from the requests waiting for them. Created first: its finalizer
    // (interrupting what is left) runs last, after the shutdown cleanup below.
    const operations = yield* FiberSet.make<void, never>()

    const locks = KeyedLock.make()
    const leases = new LeaseTable<Lease>()
    /** Upstream (VPN internal) ports in use or reserved, by protocol/port → lease key. */
    const upstreamPorts = new Map<string, string>()
    /** New mappings in progress per client (quota). */
    const pendingNew = new Map<string, number>()
    /** Requests in flight per key, for coalescing retransmissions. */
    const inFlight = new Map<string, Array<InFlight>>()
    /**
     * Callers waiting for an answer, in arrival order, which is deadline order (one request timeout for all). One
     * timekeeper fiber answers those still waiting at their deadline: far cheaper than a timeout race per request.
     */
    const waiting = new Set<Waiting>()
    const requestTimeoutMillis = Duration.toMillis(requestTimeout)
    let timekeeperIdle = true
    const timekeeperWake = yield* Queue.sliding<void>(1)
    let epochStart = yield* Clock.currentTimeMillis
    let stopping = false

    const resets = yield* Effect.acquireRelease(PubSub.unbounded<StateReset>(), PubSub.shutdown)
    const wake = yield* Queue.sliding<void>(1)
    /**
     * When the expiry fiber looks at the leases next: while it sleeps, the earliest expiry it knows of (infinity
     * when there is no lease); -infinity while it is busy. Only a lease expiring before that needs to wake it.
     */
    let expiryCheckAt = Number.NEGATIVE_INFINITY
    const notify = (expiresAt: number) =>
      Effect.sync(() => {
        if (expiresAt < expiryCheckAt) wake.unsafeOffer(undefined)
      })

    const epochAt = (now: number) => Math.max(0, Math.floor((now - epochStart) / 1000))
    const epoch = Effect.map(Clock.currentTimeMillis, epochAt)
    const clock = yield* Effect.clock
    /** The epoch now, read outside a fiber (the answers given from callbacks). */
    const unsafeEpoch = () => epochAt(clock.unsafeCurrentTimeMillis())
    const unsafePublicAddress = vpn.unsafePublicAddress

    const specOf = (lease: Lease): RuleSpec => ({
      protocol: lease.protocol,
      dstPort: lease.routerPort,
      toAddress: lease.client,
      toPort: lease.internalPort,
      comment: ownershipComment({
        bridgeId,
        protocol: lease.protocol,
        client: lease.client,
        internalPort: lease.internalPort
      })
    })

    const setLease = (key: string, lease: Lease) =>
      Effect.zipRight(
        Effect.sync(() => {
          leases.set(key, normalLease(lease))
          upstreamPorts.set(upstreamKey(lease.protocol, lease.upstreamPort), key)
        }),
        notify(lease.expiresAt)
      )

    const releaseUpstream = (protocol: Protocol, port: number, key: string) =>
      Effect.sync(() => {
        const upstream = upstreamKey(protocol, port)
        if (upstreamPorts.get(upstream) === key) upstreamPorts.delete(upstream)
      })

    const logUndo = (what: string) => <E extends { readonly message: string }>(effect: Effect.Effect<void, E>) =>
      effect.pipe(Effect.catchAll((error) => Effect.logWarning(`rollback: ${what} failed: ${error.message}`)))

    /**
     * Removes leases (under their locks): one router remove for all rules, VPN unmaps concurrently. `quiet` logs the
     * removal at debug level only (a client's delete of one mapping: the server's request line already tells it).
     */
    const dropLeases = (dropped: ReadonlyArray<readonly [string, Lease]>, why: string, quiet = false) =>
      Effect.gen(function*() {
        if (dropped.length === 0) return
        // the expiry fiber need not wake: a removed lease at most makes it look once for nothing
        for (const [key] of dropped) leases.delete(key)
        const unmap = ([key, lease]: readonly [string, Lease]) =>
          vpn.unmap(lease.protocol, lease.upstreamPort).pipe(
            Effect.catchAll((error) => Effect.logWarning(`${why}: VPN unmap failed: ${error.message}`)),
            Effect.zipRight(releaseUpstream(lease.protocol, lease.upstreamPort, key))
          )
        // the rule removal runs in a fiber of its own while this one unmaps (one fork instead of one per step)
        const removing = yield* Effect.fork(
          router.removeRules(dropped.map(([, lease]) => lease.ruleId)).pipe(
            Effect.catchAll((error) =>
              Effect.logWarning(`${why}: ${error.message} (reconciliation will remove the rule(s))`)
            )
          )
        )
        if (dropped.length === 1) yield* unmap(dropped[0])
        else yield* Effect.forEach(dropped, unmap, { concurrency: "unbounded", discard: true })
        // awaited, not joined: nothing of the removal's fiber refs is wanted back (a join diffs them all)
        yield* Fiber.await(removing)
        const message = `${why}: ${dropped.length} mapping(s) removed`
        yield* (quiet ? Effect.logDebug(message) : Effect.logInfo(message)).pipe(
          Effect.annotateLogs({ mappings: dropped.map(([key]) => key).join(" ") })
        )
      })

    // -------------------------------------------------------------------------
    // new mapping
    // -------------------------------------------------------------------------

    /**
     * The dstnat rules for a conflict check. New mappings arriving while a print is in flight share it instead of
     * each printing the whole table (a burst of N new mappings costs far fewer than N prints). Rules of the bridge's
     * own concurrent mappings need no print: their ports are reserved locally. A finished print is also reused for
     * a while in proportion to its cost (twice as long as it took, plus 0.25 ms per rule, at most 1 s): with a table
     * of thousands of rules, a steady stream of new mappings then prints at most about once a second instead of
     * once per mapping (reading a print costs the bridge about 20 µs per rule: printing then takes at most about a
     * tenth of its time).
     */
    let printInFlight: Deferred.Deferred<ReadonlyArray<NatRule>, RouterError> | undefined
    let lastPrint:
      | {
        readonly rules: ReadonlyArray<NatRule>
        readonly printed: number
        readonly at: number
        readonly took: number
      }
      | undefined
    /**
     * What a conflict check needs of a print: an own rule that is exactly the rule of its live lease is left out
     * (`leases.routerPortTaken` covers it). Held while it arrives and kept for reuse, a whole print of thousands of
     * the bridge's own rules would outlive the young generation and be promoted, every second of a burst of new
     * mappings; left out as they arrive, they never leave it.
     */
    const isConflictCandidate = (rule: NatRule): boolean => {
      if (!isOwnComment(rule.comment, bridgeId)) return true
      const owner = parseOwnership(rule.comment)
      if (Option.isNone(owner)) return true
      const lease = leases.get(keyOf(owner.value.client, owner.value.protocol, owner.value.internalPort))
      return lease === undefined || lease.ruleId !== rule.id ||
        !ruleMatchesSpec(rule, specOf(lease), router.inInterface)
    }
    const sharedRules: Effect.Effect<ReadonlyArray<NatRule>, RouterError> = Effect.flatMap(
      Clock.currentTimeMillis,
      (started) => {
        if (printInFlight !== undefined) return Deferred.await(printInFlight)
        if (
          lastPrint !== undefined &&
          started - lastPrint.at < Math.min(1000, 2 * lastPrint.took + lastPrint.printed / 4)
        ) {
          return Effect.succeed(lastPrint.rules)
        }
        const result = Deferred.unsafeMake<ReadonlyArray<NatRule>, RouterError>(FiberId.none)
        printInFlight = result
        let printed = 0
        // filtered as the rules arrive, and again at the end for the leases recorded meanwhile (the rule of a lease
        // removed meanwhile stays out: its removal is under way, and a removal that fails leaves an orphan to the
        // reconciliation, as when the lease goes while this print is reused)
        const keep = (rule: NatRule) => {
          printed++
          return isConflictCandidate(rule)
        }
        return router.dstNatRulesWhere(keep).pipe(
          Effect.map((rules) => ({ rules: rules.filter(isConflictCandidate), printed })),
          Effect.exit,
          Effect.flatMap((exit) =>
            Effect.flatMap(Clock.currentTimeMillis, (at) => {
              printInFlight = undefined
              if (Exit.isSuccess(exit)) lastPrint = { ...exit.value, at, took: at - started }
              const rules = Exit.map(exit, (printed) => printed.rules)
              return Effect.zipRight(Deferred.done(result, rules), rules)
            })
          ),
          Effect.onInterrupt(() =>
            Effect.sync(() => {
              if (printInFlight === result) printInFlight = undefined
            }).pipe(Effect.zipRight(Deferred.interrupt(result)))
          )
        )
      }
    )

    const reserveUpstream = (
      protocol: Protocol,
      candidates: ReadonlyArray<number>,
      key: string,
      free: (port: number) => boolean
    ) =>
      Effect.gen(function*() {
        const isFree = (port: number) =>
          port > 0 && port <= 65535 && !upstreamPorts.has(upstreamKey(protocol, port)) && free(port)
        let chosen = candidates.find(isFree)
        for (let i = 0; chosen === undefined && i < 64; i++) {
          const port = yield* Random.nextIntBetween(DYNAMIC_PORTS.min, DYNAMIC_PORTS.max + 1)
          if (isFree(port)) chosen = port
        }
        if (chosen === undefined) return yield* new NoFreePortError({ protocol })
        upstreamPorts.set(upstreamKey(protocol, chosen), key)
        return chosen
      })

    /** A new mapping: its steps' undos run in reverse when it fails, then its quota reservation is released. */
    const create = (client: string, request: NatPmpMessage.MapRequest, lifetime: number) =>
      Effect.suspend(() => {
        const undos: Undos = []
        let reserved = false
        const release = Effect.sync(() => {
          if (!reserved) return
          const left = (pendingNew.get(client) ?? 1) - 1
          if (left <= 0) pendingNew.delete(client)
          else pendingNew.set(client, left)
        })
        return createSteps(client, request, lifetime, undos, () => {
          reserved = true
          pendingNew.set(client, (pendingNew.get(client) ?? 0) + 1)
        }).pipe(
          Effect.onExit((exit) =>
            Exit.isSuccess(exit) || undos.length === 0 ? release : Effect.ensuring(runUndos(undos), release)
          )
        )
      })

    const createSteps = (
      client: string,
      request: NatPmpMessage.MapRequest,
      lifetime: number,
      undos: Undos,
      reserve: () => void
    ) =>
      Effect.gen(function*() {
        const { internalPort, protocol } = request
        const key = keyOf(client, protocol, internalPort)
        const held = leases.heldBy(client) + (pendingNew.get(client) ?? 0)
        if (held >= policy.clientQuota) {
          return yield* new QuotaExceededError({ client, quota: policy.clientQuota })
        }
        reserve()
        const use = (port: number) => ({
          protocol,
          port,
          inInterface: router.inInterface,
          vpnAddresses: router.vpnAddresses
        })
        const checkFree = (rules: ReadonlyArray<NatRule>, port: number) =>
          Effect.gen(function*() {
            const conflict = findConflict(rules, use(port))
            if (Option.isSome(conflict)) {
              return yield* new PortConflictError({ protocol, port, rule: describeRule(conflict.value) })
            }
            if (leases.routerPortTaken(protocol, port, key)) {
              return yield* new PortConflictError({ protocol, port, rule: "of another mapping of the bridge" })
            }
          })

        // The VPN mapping of the reserved upstream port, deleted again if a later step fails.
        const mapUpstream = (port: number) =>
          step(
            undos,
            vpn.map({
              protocol,
              internalPort: port,
              suggestedExternalPort: request.suggestedExternalPort,
              lifetime
            }).pipe(
              // without an answer the gateway may still have made the mapping (only its answer was lost): delete it
              Effect.tapError((error) =>
                error.reason === "Timeout"
                  ? logUndo("VPN unmap after a timeout")(vpn.unmap(protocol, port))
                  : Effect.void
              )
            ),
            () => logUndo("VPN unmap")(vpn.unmap(protocol, port))
          )

        let upstreamPort: number
        let routerPort: number
        let upstream: { readonly externalPort: number; readonly lifetime: number }
        if (portMode === "same") {
          upstreamPort = yield* step(
            undos,
            reserveUpstream(protocol, [internalPort], key, () => true),
            (port) => releaseUpstream(protocol, port, key)
          )
          upstream = yield* mapUpstream(upstreamPort)
          routerPort = upstream.externalPort
          const rules = yield* sharedRules
          yield* checkFree(rules, routerPort)
        } else {
          const rules = yield* sharedRules
          const candidates = [internalPort, request.suggestedExternalPort]
          upstreamPort = yield* step(
            undos,
            reserveUpstream(
              protocol,
              candidates,
              key,
              (port) => Option.isNone(findConflict(rules, use(port))) && !leases.routerPortTaken(protocol, port, key)
            ),
            (port) => releaseUpstream(protocol, port, key)
          )
          routerPort = upstreamPort
          upstream = yield* mapUpstream(upstreamPort)
        }
        const now = yield* Clock.currentTimeMillis
        const draft: Omit<Lease, "ruleId"> = {
          client,
          protocol,
          internalPort,
          upstreamPort,
          externalPort: upstream.externalPort,
          routerPort,
          lifetime: upstream.lifetime,
          expiresAt: now + upstream.lifetime * 1000,
          adopted: false,
          ruleInSync: true
        }
        const ruleId = yield* step(
          undos,
          router.addRule(specOf({ ...draft, ruleId: "" })),
          (id) => logUndo(`removing rule ${id}`)(router.removeRules([id]))
        )
        const lease: Lease = { ...draft, ruleId }
        yield* setLease(key, lease)
        yield* Effect.logInfo(
          `mapped ${protocol} ${client}:${internalPort} ← public port ${lease.externalPort} (rule ${ruleId}, ` +
            `dst-port ${routerPort}, ${lease.lifetime} s)`
        )
        return lease
      })

    // -------------------------------------------------------------------------
    // renewal
    // -------------------------------------------------------------------------

    const renew = (key: string, lease: Lease, request: NatPmpMessage.MapRequest, lifetime: number) =>
      Effect.gen(function*() {
        const upstream = yield* vpn.map({
          protocol: lease.protocol,
          internalPort: lease.upstreamPort,
          suggestedExternalPort: lease.externalPort !== 0 ? lease.externalPort : request.suggestedExternalPort,
          lifetime
        })
        const now = yield* Clock.currentTimeMillis
        const routerPort = portMode === "same" ? upstream.externalPort : lease.upstreamPort
        let renewed: Lease = {
          ...lease,
          externalPort: upstream.externalPort,
          routerPort,
          lifetime: upstream.lifetime,
          expiresAt: now + upstream.lifetime * 1000,
          adopted: false
        }
        if (routerPort !== lease.routerPort || !lease.ruleInSync) {
          if (routerPort !== lease.routerPort) {
            yield* Effect.logInfo(`VPN changed the public port from ${lease.externalPort} to ${upstream.externalPort}`)
          }
          const updated = yield* Effect.either(router.updateRule(lease.ruleId, specOf(renewed)))
          renewed = { ...renewed, ruleInSync: updated._tag === "Right" }
          yield* setLease(key, renewed)
          if (updated._tag === "Left") return yield* updated.left
        } else {
          yield* setLease(key, renewed)
        }
        return renewed
      })

    // -------------------------------------------------------------------------
    // requests
    // -------------------------------------------------------------------------

    const toAnswer = (effect: Effect.Effect<Lease, MappingError>): Effect.Effect<Answer> =>
      effect.pipe(
        Effect.map((lease): Answer => ({
          resultCode: NatPmpMessage.ResultCode.Success,
          externalPort: lease.externalPort,
          lifetime: lease.lifetime
        })),
        Effect.catchAll((error) =>
          Effect.as(
            Effect.logWarning(`request failed: ${error.message}`),
            failure(resultCodeOfError(error))
          )
        )
      )

    const mapOrRenew = (client: string, request: NatPmpMessage.MapRequest, lifetime: number): Effect.Effect<Answer> => {
      const key = keyOf(client, request.protocol, request.internalPort)
      return locks.withLock(
        key,
        Effect.suspend(() => {
          const lease = leases.get(key)
          return toAnswer(
            lease === undefined ? create(client, request, lifetime) : renew(key, lease, request, lifetime)
          )
        })
      )
    }

    const deleteOne = (client: string, protocol: Protocol, internalPort: number): Effect.Effect<Answer> => {
      const key = keyOf(client, protocol, internalPort)
      return locks.withLock(
        key,
        Effect.suspend(() => {
          const lease = leases.get(key)
          return lease === undefined ? Effect.void : dropLeases([[key, lease]], "deleted by the client", true)
        })
      ).pipe(Effect.as(deleted))
    }

    const deleteAll = (client: string, protocol: Protocol): Effect.Effect<Answer> => {
      const prefix = `${client}/${protocol}/`
      const keys = [...new Set([...leases.keys(), ...inFlight.keys()])].filter((key) =>
        key.startsWith(prefix) && key !== `${prefix}0`
      )
      return locks.withLocks(
        keys,
        Effect.suspend(() =>
          dropLeases(
            [...leases.entries()].filter(([key]) => key.startsWith(prefix)),
            "deleted by the client (all of its mappings)"
          )
        )
      ).pipe(Effect.as(deleted))
    }

    const runOperation = yield* FiberSet.runtime(operations)<never>()
    // whether a debug line would be written at all (the level is the bridge's, set around its layers)
    const debugLogged = LogLevel.lessThanEqual(yield* FiberRef.get(FiberRef.currentMinimumLogLevel), LogLevel.Debug)

    /** Answers `waiter` unless it was answered already (its deadline passed, or the request settled). */
    const answerOnce = (waiter: Waiting, answer: Answer): Effect.Effect<void> =>
      waiting.delete(waiter)
        ? waiter.reply(answer).pipe(Effect.catchAllCause((cause) => Effect.logError("answering failed", cause)))
        : Effect.void

    /**
     * Runs `work` in a fiber of its own, detached from the caller (it completes even if the answer times out),
     * unless an identical request of the same key is in flight: then `reply` joins that one. Either way `reply` gets
     * `onTimeout` if no answer is there within the request timeout.
     */
    const submit = (
      key: string,
      signature: string,
      work: Effect.Effect<Answer>,
      onTimeout: Answer,
      reply: (answer: Answer) => Effect.Effect<void>
    ): void => {
      const waiter: Waiting = {
        reply,
        deadline: clock.unsafeCurrentTimeMillis() + requestTimeoutMillis,
        onTimeout
      }
      waiting.add(waiter)
      if (timekeeperIdle) {
        timekeeperIdle = false
        timekeeperWake.unsafeOffer(undefined)
      }
      const requests = inFlight.get(key) ?? []
      const joined = requests.find((entry) => entry.signature === signature)
      if (joined !== undefined) {
        joined.waiters.push(waiter)
        if (debugLogged) {
          runOperation(Effect.logDebug("retransmission joins the request in flight").pipe(Effect.annotateLogs({ key })))
        }
        return
      }
      const entry: InFlight = { signature, waiters: [waiter] }
      requests.push(entry)
      inFlight.set(key, requests)
      // an interrupted request (shutdown) answers nobody: its callers get their timeout answer at the deadline
      const settle = (exit: Exit.Exit<Answer>) =>
        Effect.suspend(() => {
          const list = inFlight.get(key)
          if (list !== undefined) {
            const index = list.indexOf(entry)
            if (index >= 0) list.splice(index, 1)
            if (list.length === 0) inFlight.delete(key)
          }
          if (Exit.isFailure(exit)) return Effect.void
          return entry.waiters.length === 1
            ? answerOnce(entry.waiters[0], exit.value)
            : Effect.forEach(entry.waiters, (each) => answerOnce(each, exit.value), { discard: true })
        })
      runOperation(
        work.pipe(
          Effect.catchAllCause((cause) =>
            Effect.as(
              Effect.logError("request failed unexpectedly", cause),
              failure(NatPmpMessage.ResultCode.NetworkFailure)
            )
          ),
          Effect.onExit(settle),
          Effect.asVoid
        )
      )
    }

    /** Answers the callers still waiting at their deadline with their timeout answer. */
    const timekeeper = Effect.forever(Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      let next: number | undefined
      for (const waiter of waiting) {
        if (waiter.deadline > now) {
          next = waiter.deadline
          break
        }
        yield* answerOnce(waiter, waiter.onTimeout)
      }
      if (next === undefined) {
        timekeeperIdle = true
        yield* Queue.take(timekeeperWake)
      } else {
        yield* Effect.sleep(Duration.millis(next - now))
      }
    }))

    const responseTo = (request: NatPmpMessage.MapRequest, answer: Answer): NatPmpMessage.MapResponse => ({
      _tag: "MapResponse",
      protocol: request.protocol,
      resultCode: answer.resultCode,
      epoch: unsafeEpoch(),
      internalPort: request.internalPort,
      externalPort: answer.externalPort,
      lifetime: answer.lifetime
    })

    const unsafeHandle = (
      client: string,
      request: NatPmpMessage.MapRequest,
      reply: (response: NatPmpMessage.MapResponse) => Effect.Effect<void>
    ): void => {
      const { internalPort, protocol } = request
      const key = keyOf(client, protocol, internalPort)
      const annotate = Effect.annotateLogs({ key, client, protocol, internalPort })
      const answer = (result: Answer) => reply(responseTo(request, result))
      if (stopping) {
        runOperation(answer(failure(NatPmpMessage.ResultCode.NetworkFailure)))
      } else if (request.lifetime === 0) {
        if (internalPort === 0) {
          submit(key, "delete-all", annotate(deleteAll(client, protocol)), deleted, answer)
        } else {
          submit(key, "delete", annotate(deleteOne(client, protocol, internalPort)), deleted, answer)
        }
      } else if (internalPort === 0) {
        runOperation(
          Effect.logWarning("refused: a mapping of internal port 0 (only valid to delete all mappings)").pipe(
            annotate,
            Effect.zipRight(answer(failure(NatPmpMessage.ResultCode.NotAuthorized)))
          )
        )
      } else {
        const lifetime = Math.min(request.lifetime, policy.maxLifetime)
        submit(
          key,
          `map/${request.suggestedExternalPort}/${request.lifetime}`,
          annotate(mapOrRenew(client, request, lifetime)),
          failure(NatPmpMessage.ResultCode.NetworkFailure),
          answer
        )
      }
    }

    const handle = (client: string, request: NatPmpMessage.MapRequest): Effect.Effect<NatPmpMessage.MapResponse> =>
      Effect.async<NatPmpMessage.MapResponse>((resume) => {
        unsafeHandle(client, request, (response) => Effect.sync(() => resume(Effect.succeed(response))))
      })

    // -------------------------------------------------------------------------
    // expiry
    // -------------------------------------------------------------------------

    const expireDue = (now: number) =>
      Effect.suspend(() => {
        const due = leases.takeExpired(now)
        if (due.length === 0) return Effect.void
        return locks.withLocks(
          due.map(([key]) => key),
          Effect.gen(function*() {
            const at = yield* Clock.currentTimeMillis
            // under the locks: a renewal that won the race has replaced the lease and moved `expiresAt`
            const expired = due.flatMap(([key]) => {
              const lease = leases.get(key)
              return lease !== undefined && lease.expiresAt <= at ? [[key, lease] as const] : []
            })
            yield* dropLeases(expired, "expired")
          })
        ).pipe(
          // whatever was not removed (an interruption) goes back on the schedule
          Effect.ensuring(Effect.sync(() => {
            for (const [key, lease] of due) leases.reschedule(key, lease)
          }))
        )
      })

    const expiryLoop = Effect.forever(Effect.gen(function*() {
      const now = yield* Clock.currentTimeMillis
      yield* expireDue(now)
      const after = yield* Clock.currentTimeMillis
      // from here to the wait no other fiber runs: a lease recorded later sees `expiryCheckAt` and wakes us if needed
      const next = leases.nextExpiry()
      if (next <= after) return
      expiryCheckAt = next
      const waitForChange = Queue.take(wake)
      yield* (next === Number.POSITIVE_INFINITY
        ? waitForChange
        : Effect.raceFirst(Effect.sleep(Duration.millis(next - after)), waitForChange)).pipe(
          Effect.ensuring(Effect.sync(() => {
            expiryCheckAt = Number.NEGATIVE_INFINITY
          }))
        )
    }))

    // -------------------------------------------------------------------------
    // reconciliation
    // -------------------------------------------------------------------------

    const reconcile: Effect.Effect<ReconcileReport, RouterError> = Effect.gen(function*() {
      // leases recorded before the print: a lease recorded later may have a rule the print does not show yet
      const snapshot = [...leases.entries()]
      const rules = yield* router.dstNatRules
      const byId = new Map(rules.map((rule) => [rule.id, rule]))
      const orphans: Array<string> = []
      for (const rule of rules) {
        if (!isOwnComment(rule.comment, bridgeId)) continue
        const owner = parseOwnership(rule.comment)
        if (Option.isNone(owner)) {
          orphans.push(rule.id)
          continue
        }
        const key = keyOf(owner.value.client, owner.value.protocol, owner.value.internalPort)
        // the rule of a live lease (the common case) needs no lock: if the lease goes, its rule goes with it
        if (leases.get(key)?.ruleId === rule.id) continue
        // under the key's lock: a new mapping that added this rule has recorded its lease by then
        const orphan = yield* locks.withLock(key, Effect.sync(() => leases.get(key)?.ruleId !== rule.id))
        if (orphan) orphans.push(rule.id)
      }
      let recreated = 0
      let fixed = 0
      for (const [key, before] of snapshot) {
        const rule = byId.get(before.ruleId)
        if (rule !== undefined && ruleMatchesSpec(rule, specOf(before), router.inInterface)) continue
        yield* locks.withLock(
          key,
          Effect.gen(function*() {
            const lease = leases.get(key)
            if (lease === undefined || lease.ruleId !== before.ruleId) return
            const spec = specOf(lease)
            if (rule === undefined) {
              const ruleId = yield* router.addRule(spec)
              yield* setLease(key, { ...lease, ruleId, ruleInSync: true })
              recreated++
              yield* Effect.logWarning(`rule ${lease.ruleId} of ${key} had disappeared: created again as ${ruleId}`)
            } else if (!ruleMatchesSpec(rule, spec, router.inInterface)) {
              yield* router.updateRule(rule.id, spec, rule)
              yield* setLease(key, { ...lease, ruleInSync: true })
              fixed++
              yield* Effect.logWarning(`rule ${rule.id} of ${key} had drifted (${describeRule(rule)}): set back`)
            }
          }).pipe(Effect.catchAll((error) => Effect.logWarning(`reconciliation of ${key}: ${error.message}`)))
        )
      }
      if (orphans.length > 0) {
        yield* router.removeRules(orphans)
        yield* Effect.logInfo(`reconciliation removed ${orphans.length} own rule(s) without a mapping`).pipe(
          Effect.annotateLogs({ rules: orphans.join(",") })
        )
      }
      yield* vpn.refreshPublicAddress.pipe(
        Effect.catchAll((error) => Effect.logWarning(`cannot refresh the VPN public address: ${error.message}`))
      )
      yield* metrics.reconciled({ removed: orphans.length, recreated, fixed })
      return { removed: orphans.length, recreated, fixed }
    }).pipe(Effect.tapError(() => metrics.reconcileFailed), Effect.annotateLogs({ task: "reconcile" }))

    // -------------------------------------------------------------------------
    // upstream state loss
    // -------------------------------------------------------------------------

    const onUpstreamEvent = (event: VpnEvent) =>
      Effect.gen(function*() {
        const reason = event._tag === "StateLost"
          ? `the VPN gateway lost its mappings (epoch ${event.previousEpoch} → ${event.epoch})`
          : `the VPN public address changed from ${event.previous} to ${event.current}`
        yield* Effect.logWarning(`${reason}: re-mapping ${leases.size} mapping(s) upstream`)
        epochStart = yield* Clock.currentTimeMillis
        for (const key of [...leases.keys()].sort()) {
          yield* locks.withLock(
            key,
            Effect.suspend(() => {
              const lease = leases.get(key)
              if (lease === undefined) return Effect.void
              const request: NatPmpMessage.MapRequest = {
                _tag: "MapRequest",
                protocol: lease.protocol,
                internalPort: lease.internalPort,
                suggestedExternalPort: lease.externalPort,
                lifetime: lease.lifetime
              }
              return renew(key, lease, request, Math.max(1, lease.lifetime)).pipe(
                Effect.catchAll((error) => Effect.logWarning(`re-mapping ${key} failed: ${error.message}`))
              )
            })
          )
        }
        yield* PubSub.publish(resets, { reason })
      })

    // -------------------------------------------------------------------------
    // startup adoption
    // -------------------------------------------------------------------------

    const adopt = Effect.gen(function*() {
      const rules = yield* router.dstNatRules
      const now = yield* Clock.currentTimeMillis
      const orphans: Array<string> = []
      for (const rule of rules) {
        if (!isOwnComment(rule.comment, bridgeId)) continue
        const owner = parseOwnership(rule.comment)
        const port = PortSpec.single(rule.dstPort)
        if (Option.isNone(owner) || Option.isNone(port) || rule.protocol !== owner.value.protocol) {
          orphans.push(rule.id)
          continue
        }
        const { client, internalPort, protocol } = owner.value
        const key = keyOf(client, protocol, internalPort)
        if (leases.has(key)) {
          orphans.push(rule.id) // a duplicate
          continue
        }
        const routerPort = port.value
        // the upstream port is not in the comment: in `translate` mode it is the rule's port, in `same` mode the
        // bridge prefers the internal port (a wrong guess only costs a new public port at the first renewal)
        const reserved = yield* Effect.either(
          reserveUpstream(protocol, portMode === "translate" ? [routerPort] : [internalPort], key, () => true)
        )
        if (reserved._tag === "Left" || (portMode === "translate" && reserved.right !== routerPort)) {
          if (reserved._tag === "Right") yield* releaseUpstream(protocol, reserved.right, key)
          orphans.push(rule.id)
          continue
        }
        const upstreamPort = reserved.right
        const lease: Lease = {
          client,
          protocol,
          internalPort,
          upstreamPort,
          externalPort: portMode === "same" ? routerPort : 0,
          routerPort,
          ruleId: rule.id,
          lifetime: Math.max(1, Math.floor(Duration.toSeconds(adoptionGrace))),
          expiresAt: now + Duration.toMillis(adoptionGrace),
          adopted: true,
          ruleInSync: true
        }
        yield* setLease(key, { ...lease, ruleInSync: ruleMatchesSpec(rule, specOf(lease), router.inInterface) })
      }
      if (orphans.length > 0) yield* router.removeRules(orphans)
      if (leases.size > 0 || orphans.length > 0) {
        yield* Effect.logInfo(
          `adopted ${leases.size} rule(s) of a previous run for ${Duration.format(adoptionGrace)}; removed ` +
            `${orphans.length} unusable own rule(s)`
        )
      }
    }).pipe(Effect.annotateLogs({ task: "adopt" }))

    // -------------------------------------------------------------------------
    // shutdown
    // -------------------------------------------------------------------------

    // a finalizer runs uninterruptibly: the cleanup is made interruptible so its timeout (and the VPN client's
    // retransmission timeouts) can work
    const shutdown = Effect.gen(function*() {
      stopping = true
      yield* FiberSet.awaitEmpty(operations).pipe(Effect.timeout(Duration.times(shutdownTimeout, 0.5)), Effect.ignore)
      const all = [...leases.entries()]
      const ownRuleIds = router.dstNatRules.pipe(
        Effect.map((rules) => rules.filter((rule) => isOwnComment(rule.comment, bridgeId)).map((rule) => rule.id))
      )
      const ownRules = yield* ownRuleIds.pipe(Effect.orElseSucceed(() => all.map(([, lease]) => lease.ruleId)))
      leases.clear()
      // the rules are what must not outlive the bridge (a VPN mapping expires by itself): a failed removal (a reply
      // late behind the VPN unmaps, a dropped connection) is tried again from a fresh print of the own rules
      const removeOwnRules = Effect.gen(function*() {
        let ids = ownRules
        for (let attempt = 1; ids.length > 0; attempt++) {
          const removed = yield* Effect.either(router.removeRules(ids))
          if (removed._tag === "Right") return ids.length
          yield* Effect.logWarning(`shutdown: ${removed.left.message}${attempt < 3 ? " (trying again)" : ""}`)
          if (attempt === 3) return 0
          ids = yield* ownRuleIds.pipe(Effect.orElseSucceed(() => ids))
        }
        return 0
      })
      const [removedRules] = yield* Effect.all([
        removeOwnRules,
        Effect.forEach(all, ([, lease]) =>
          vpn.unmap(lease.protocol, lease.upstreamPort).pipe(
            Effect.catchAll((error) => Effect.logWarning(`shutdown: VPN unmap failed: ${error.message}`))
          ), { concurrency: "unbounded", discard: true })
      ], { concurrency: "unbounded" })
      yield* Effect.logInfo(`shutdown: removed ${removedRules} rule(s) and ${all.length} VPN mapping(s)`)
    }).pipe(
      Effect.interruptible,
      Effect.timeout(shutdownTimeout),
      Effect.catchAll(() =>
        Effect.logWarning(`shutdown cleanup did not finish within ${Duration.format(shutdownTimeout)}`)
      ),
      Effect.annotateLogs({ task: "shutdown" })
    )
    yield* Effect.addFinalizer(() => shutdown)

    // -------------------------------------------------------------------------
    // start
    // -------------------------------------------------------------------------

    yield* adopt
    const upstreamEvents = yield* vpn.subscribe
    yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(upstreamEvents), onUpstreamEvent)))
    yield* Effect.forkScoped(expiryLoop.pipe(Effect.annotateLogs({ task: "expiry" })))
    yield* Effect.forkScoped(timekeeper)
    yield* Effect.forkScoped(Effect.forever(
      Effect.zipRight(
        Effect.sleep(reconcileInterval),
        reconcile.pipe(Effect.catchAll((error) => Effect.logWarning(`reconciliation failed: ${error.message}`)))
      )
    ))

    return {
      epoch,
      publicAddress: vpn.publicAddress,
      unsafePublicAddressState: unsafePublicAddress === undefined ? undefined : () => ({
        epoch: unsafeEpoch(),
        publicAddress: unsafePublicAddress()
      }),
      handle,
      unsafeHandle,
      leases: Effect.sync(() => [...leases.values()]),
      reconcile,
      subscribeResets: PubSub.subscribe(resets)
    } satisfies Service
  }).pipe(Effect.annotateLogs({ service: "MappingService" }))

/** A layer providing {@link MappingService}. */
export const layer = (
  options: Options
): Layer.Layer<MappingService, RouterError, Router | VpnGateway | ClientPolicy> =>
  Layer.scoped(MappingService, make(options))
