/**
 * The JSON-lines protocol between the lab tests (root namespace) and the NAT-PMP agent (natPmpAgent.ts), which runs
 * the project's NAT-PMP client inside a lab namespace: one request per line on the agent's stdin, one reply or event
 * per line on its stdout.
 */
import type { NatPmpClient, NatPmpMessage } from "@natpmp-bridge/core"

type Protocol = NatPmpMessage.Protocol

/** How the agent is started (JSON in its first argument). */
export interface AgentOptions {
  /** The NAT-PMP gateway; without it the agent only serves and sends test traffic. */
  readonly gateway?: string | undefined
  readonly initialTimeoutMillis?: number | undefined
  readonly maxAttempts?: number | undefined
  /** Listen for announcements on 224.0.0.1:5350 (default false). */
  readonly announcements?: boolean | undefined
}

/** What the tests ask of the agent. */
export type AgentCommand =
  | { readonly op: "publicAddress" }
  | { readonly op: "map"; readonly options: NatPmpClient.MapOptions }
  | { readonly op: "unmap"; readonly protocol: Protocol; readonly internalPort: number }
  | { readonly op: "unmapAll"; readonly protocol: Protocol }
  /** Starts `NatPmpClient.keep` under `key`; answers with the first mapping, then streams `keep` events. */
  | { readonly op: "keep"; readonly key: string; readonly options: NatPmpClient.MapOptions }
  /** Closes the keep-alive `key` (which deletes its mapping); answers when done. */
  | { readonly op: "release"; readonly key: string }
  /** An echo server on `0.0.0.0:port`; every connection or datagram is reported as a `traffic` event. */
  | { readonly op: "serve"; readonly protocol: Protocol; readonly port: number }
  /** Sends `payload` to `address:port` and answers with the echo (2 s timeout). */
  | {
    readonly op: "send"
    readonly protocol: Protocol
    readonly address: string
    readonly port: number
    readonly payload: string
  }

/** A request on the wire: a command with the id its reply carries. */
export type AgentRequest = AgentCommand & { readonly id: number }

/** An error as the agent reports it: the error's tag, message and own fields. */
export interface RemoteError {
  readonly _tag: string
  readonly message: string
  readonly [field: string]: unknown
}

/** A keep-alive event as the agent reports it (`NatPmpClient.KeepEvent` with errors flattened). */
export interface RemoteKeepEvent {
  readonly _tag: NatPmpClient.KeepEvent["_tag"]
  readonly mapping?: NatPmpClient.Mapping
  readonly previous?: NatPmpClient.Mapping
  readonly reason?: NatPmpClient.KeepReason
  readonly previousExternalPort?: number
  readonly error?: RemoteError
  readonly message?: string
}

/** Something the agent reports without being asked. */
export type AgentEvent =
  | { readonly event: "keep"; readonly key: string; readonly keepEvent: RemoteKeepEvent }
  | { readonly event: "traffic"; readonly protocol: Protocol; readonly port: number; readonly from: string }
  | { readonly event: "gateway"; readonly gatewayEvent: NatPmpClient.GatewayEvent }

/** What the agent writes: a reply to a request, or an event. */
export type AgentMessage =
  | { readonly id: number; readonly ok: true; readonly value: unknown }
  | { readonly id: number; readonly ok: false; readonly error: RemoteError }
  | AgentEvent

/** Flattens an error (a tagged error or anything else) for the wire. */
export const toRemoteError = (error: unknown): RemoteError => {
  if (typeof error === "object" && error !== null) {
    const fields: Record<string, unknown> = {}
    for (const [key, value] of Object.entries(error)) {
      if (key !== "cause" && (typeof value !== "object" || value === null)) fields[key] = value
    }
    const tag = "_tag" in error && typeof error._tag === "string" ? error._tag : "Error"
    const message = error instanceof Error ? error.message : String(error)
    return { ...fields, _tag: tag, message }
  }
  return { _tag: "Error", message: String(error) }
}
