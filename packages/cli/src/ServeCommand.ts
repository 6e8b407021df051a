/**
 * `natpmp-bridge serve`: runs the bridge until SIGINT/SIGTERM, then shuts it down gracefully (own rules and VPN
 * mappings removed, bounded by the shutdown timeout).
 */
import * as Command from "@effect/cli/Command"
import { Bridge } from "@natpmp-bridge/server"
import * as Effect from "effect/Effect"
import type { ExtractedFlags, ParsedSettings } from "./BridgeSettingsOptions.js"
import { resolveConfig, settingsOptions } from "./BridgeSettingsOptions.js"
import type { CommandFailure, UsageError } from "./CliMain.js"
import { toCommandFailure } from "./CliMain.js"

export const make = (
  extracted: ExtractedFlags
): Command.Command<"serve", never, UsageError | CommandFailure, ParsedSettings> =>
  Command.make("serve", settingsOptions, (flags) =>
    Effect.flatMap(
      resolveConfig(flags, extracted),
      (config) => Effect.mapError(Bridge.serve(config), toCommandFailure(1))
    )).pipe(
      Command.withDescription(
        "run the NAT-PMP bridge: answer LAN clients' NAT-PMP requests by mapping a port on the VPN gateway and adding " +
          "the matching dst-nat rule on the MikroTik; stops cleanly on SIGINT/SIGTERM. Every flag can also be given " +
          "as its environment variable; a flag wins over its variable."
      )
    )
