/**
 * The {@link Router} of a MikroTik (RouterOS v6 or v7) over the RouterOS API client of core.
 *
 * At construction it determines the VPN in-interface: the configured one (`MIKROTIK_IN_INTERFACE`), or the
 * interface through which the router reaches the VPN gateway (routes, then addresses). It never guesses: when
 * neither works, construction fails with {@link InInterfaceNotFoundError}.
 *
 * @since 0.1.0
 */
import { RouterOsClient, RouterOsCommands } from "@natpmp-bridge/core"
import * as Effect from "effect/Effect"
import * as Either from "effect/Either"
import * as Layer from "effect/Layer"
import type { Ipv4Network } from "./ClientPolicy.js"
import { formatNetwork, parseNetwork } from "./ClientPolicy.js"
import type { NatRule, RuleSpec, Service } from "./Router.js"
import { InInterfaceNotFoundError, Router, RouterError } from "./Router.js"

/** Options of the MikroTik router. */
/** Rule ids for a one-line message: all of a few, the first ones and the count of many. */
const describeIds = (ids: ReadonlyArray<string>): string =>
  ids.length <= 10 ? `rule(s) ${ids.join(",")}` : `${ids.length} rules (${ids.slice(0, 10).join(",")},…)`

export interface Options {
  /** The VPN gateway; the in-interface is the one the router reaches it through. */
  readonly vpnGateway: string
  /** The VPN in-interface, when it must not be detected. */
  readonly inInterface?: string | undefined
}

const routerError = (operation: string) => (error: RouterOsClient.RouterOsError): RouterError =>
  new RouterError({ operation, reason: error.message, cause: error })

const toNatRule = (rule: RouterOsCommands.NatRule): NatRule => rule

const ruleInput = (spec: RuleSpec, inInterface: string): RouterOsCommands.NatRuleInput => ({
  chain: "dstnat",
  action: "dst-nat",
  protocol: spec.protocol,
  inInterface,
  dstPort: spec.dstPort,
  toAddresses: spec.toAddress,
  toPorts: spec.toPort,
  comment: spec.comment
})

/**
 * The router's LAN networks: the networks of its enabled static addresses, excluding the VPN interface. Dynamic
 * addresses (DHCP client, PPPoE: the ISP side) are left out too; `ALLOWED_CLIENTS` overrides all this.
 */
export const lanNetworksOf = (
  addresses: ReadonlyArray<RouterOsCommands.IpAddress>,
  vpnInterface: string
): ReadonlyArray<Ipv4Network> => {
  const networks = new Map<string, Ipv4Network>()
  for (const address of addresses) {
    if (address.disabled || address.invalid || address.dynamic) continue
    const iface = address.actualInterface ?? address.interface
    if (iface === vpnInterface || address.interface === vpnInterface) continue
    const parsed = parseNetwork(address.address)
    if (Either.isRight(parsed)) networks.set(formatNetwork(parsed.right), parsed.right)
  }
  return [...networks.values()]
}

/** Creates the router service over the `RouterOsClient` in context. */
export const make = (
  options: Options
): Effect.Effect<Service, RouterError | InInterfaceNotFoundError, RouterOsClient.RouterOsClient> =>
  Effect.gen(function*() {
    const client = yield* RouterOsClient.RouterOsClient
    const provide = Effect.provideService(RouterOsClient.RouterOsClient, client)

    const configured = options.inInterface?.trim()
    const inInterface = configured !== undefined && configured !== ""
      ? configured
      : yield* RouterOsCommands.interfaceTowards(options.vpnGateway).pipe(
        provide,
        Effect.catchTags({
          InterfaceNotFoundError: (error) =>
            Effect.fail(new InInterfaceNotFoundError({ gateway: error.gateway, reason: error.reason }))
        }),
        Effect.mapError((error) =>
          error._tag === "InInterfaceNotFoundError" ? error : routerError("detecting the VPN interface")(error)
        )
      )
    const addresses = yield* RouterOsCommands.listAddresses.pipe(
      provide,
      Effect.mapError(routerError("reading /ip/address"))
    )
    const vpnAddresses = addresses
      .filter((address) =>
        !address.disabled && (address.interface === inInterface || address.actualInterface === inInterface)
      )
      .map((address) => address.address.split("/")[0])
    yield* Effect.logInfo(`VPN in-interface ${inInterface} (${configured ? "configured" : "detected"})`).pipe(
      Effect.annotateLogs({ vpnGateway: options.vpnGateway })
    )

    /** The dstnat chain's rules, those `keep` accepts when given (filtered as they arrive). */
    const dstNatRules = (keep?: (rule: NatRule) => boolean) =>
      RouterOsCommands.listNatRules({
        chain: "dstnat",
        keep: keep === undefined ? undefined : (rule) => keep(toNatRule(rule))
      }).pipe(
        provide,
        Effect.map((rules) => rules.map(toNatRule)),
        Effect.mapError(routerError("listing dstnat rules"))
      )

    const service: Service = {
      inInterface,
      vpnAddresses,
      lanNetworks: RouterOsCommands.listAddresses.pipe(
        provide,
        Effect.mapError(routerError("reading /ip/address")),
        Effect.map((rows) => lanNetworksOf(rows, inInterface))
      ),
      dstNatRules: dstNatRules(),
      dstNatRulesWhere: dstNatRules,
      addRule: (spec) =>
        RouterOsCommands.addNatRule(ruleInput(spec, inInterface)).pipe(
          provide,
          Effect.mapError(routerError(`adding the rule "${spec.comment}"`))
        ),
      updateRule: (id, spec, current) =>
        RouterOsCommands.setNatRule(id, {
          ...ruleInput(spec, inInterface),
          ...(current?.inInterfaceList ? { inInterfaceList: "" } : {}),
          ...(current?.dstAddress ? { dstAddress: "" } : {}),
          ...(current === undefined || current.disabled ? { disabled: false } : {})
        }).pipe(provide, Effect.mapError(routerError(`updating rule ${id}`))),
      removeRules: (ids) =>
        RouterOsCommands.removeNatRules(ids, { ignoreMissing: true }).pipe(
          provide,
          Effect.mapError(routerError(`removing ${describeIds(ids)}`))
        )
    }
    return service
  }).pipe(Effect.annotateLogs({ service: "MikroTikRouter" }))

/** A layer providing {@link Router} over the `RouterOsClient` in context. */
export const layer = (
  options: Options
): Layer.Layer<Router, RouterError | InInterfaceNotFoundError, RouterOsClient.RouterOsClient> =>
  Layer.effect(Router, make(options))
