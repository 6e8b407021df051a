/**
 * What `natpmp map` (and `map --keep`) prints about a mapping and its life: one human line or one
 * JSON object per result or event, with stable field names.
 */
import type { NatPmpClient } from "@natpmp-bridge/core"
import * as Duration from "effect/Duration"
import type * as Effect from "effect/Effect"
import { emit, protocolName } from "./Output.js"

/** Where the mapping lives: the gateway and the public address it reported last. */
export interface MappingContext {
  readonly gateway: string
  readonly publicAddress: string
  readonly json: boolean
}

const mappingFields = (context: MappingContext, mapping: NatPmpClient.Mapping) => ({
  gateway: context.gateway,
  publicAddress: context.publicAddress,
  protocol: mapping.protocol,
  internalPort: mapping.internalPort,
  externalPort: mapping.externalPort,
  lifetime: mapping.lifetime,
  epoch: mapping.epoch
})

const describe = (context: MappingContext, mapping: NatPmpClient.Mapping) =>
  `public port ${mapping.externalPort} protocol ${protocolName(mapping.protocol)} to local port ` +
  `${mapping.internalPort} lifetime ${mapping.lifetime} (gateway ${context.gateway}, public IP ${context.publicAddress})`

/** The result of a one-shot `natpmp map`. */
export const mapped = (context: MappingContext, mapping: NatPmpClient.Mapping): Effect.Effect<void> =>
  emit(context.json, `Mapped ${describe(context, mapping)}`, { type: "mapped", ...mappingFields(context, mapping) })

const verb: Record<NatPmpClient.KeepReason, string> = {
  initial: "Mapped",
  renewal: "Renewed",
  "gateway-reset": "Re-mapped after a gateway reset:",
  announcement: "Re-mapped after an address announcement:"
}

/** One event of `natpmp map --keep`. */
export const keepEvent = (context: MappingContext, event: NatPmpClient.KeepEvent): Effect.Effect<void> => {
  switch (event._tag) {
    case "Mapped":
      return emit(context.json, `${verb[event.reason]} ${describe(context, event.mapping)}`, {
        type: "mapped",
        reason: event.reason,
        ...mappingFields(context, event.mapping)
      })
    case "PortChanged":
      return emit(
        context.json,
        `Public port changed from ${event.previousExternalPort} to ${event.mapping.externalPort} ` +
          `(protocol ${protocolName(event.mapping.protocol)}, local port ${event.mapping.internalPort})`,
        {
          type: "portChanged",
          previousExternalPort: event.previousExternalPort,
          ...mappingFields(context, event.mapping)
        }
      )
    case "MappingFailed":
      return emit(
        context.json,
        `${event.reason === "renewal" ? "Renewal" : "Re-mapping"} failed: ${event.error.message}; ` +
          `retrying in ${Duration.format(event.retryIn)}`,
        {
          type: "mappingFailed",
          reason: event.reason,
          error: event.error._tag,
          message: event.error.message,
          retryInMs: Duration.toMillis(event.retryIn)
        }
      )
    case "Unmapped":
      return emit(
        context.json,
        `Deleted mapping public port ${event.mapping.externalPort} protocol ${protocolName(event.mapping.protocol)} ` +
          `local port ${event.mapping.internalPort} (gateway ${context.gateway})`,
        { type: "unmapped", ...mappingFields(context, event.mapping) }
      )
    case "UnmapFailed":
      return emit(
        context.json,
        `Could not delete mapping public port ${event.mapping.externalPort} protocol ` +
          `${protocolName(event.mapping.protocol)} local port ${event.mapping.internalPort}: ${event.message}`,
        { type: "unmapFailed", message: event.message, ...mappingFields(context, event.mapping) }
      )
  }
}

/** A gateway event seen while keeping a mapping (the re-mapping that follows is a `keepEvent`). */
export const gatewayEvent = (context: MappingContext, event: NatPmpClient.GatewayEvent): Effect.Effect<void> => {
  switch (event._tag) {
    case "GatewayReset":
      return emit(
        context.json,
        `Gateway ${context.gateway} lost its mappings (epoch ${event.epoch}, expected at least ${event.expectedEpoch}); ` +
          `re-mapping`,
        {
          type: "gatewayReset",
          gateway: context.gateway,
          epoch: event.epoch,
          previousEpoch: event.previousEpoch,
          expectedEpoch: event.expectedEpoch
        }
      )
    case "Announcement":
      return emit(
        context.json,
        `Gateway ${context.gateway} announced public IP ${event.publicAddress}` +
          (event.previousPublicAddress === undefined ? "" : ` (was ${event.previousPublicAddress})`),
        {
          type: "announcement",
          gateway: context.gateway,
          publicAddress: event.publicAddress,
          previousPublicAddress: event.previousPublicAddress ?? null,
          epoch: event.epoch
        }
      )
  }
}
