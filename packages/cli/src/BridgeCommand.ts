/**
 * The `natpmp-bridge` command: `serve`, `check`, `status` and `demo`.
 */
import * as Command from "@effect/cli/Command"
import type * as Option from "effect/Option"
import type { ExtractedFlags, ParsedSettings } from "./BridgeSettingsOptions.js"
import * as CheckCommand from "./CheckCommand.js"
import type { CommandFailure } from "./CliMain.js"
import { UsageError } from "./CliMain.js"
import * as DemoCommand from "./DemoCommand.js"
import * as ServeCommand from "./ServeCommand.js"
import * as StatusCommand from "./StatusCommand.js"

/** The commands whose flags are the bridge settings. */
export const settingsCommands = ["serve", "check"] as const

export const make = (
  extracted: ExtractedFlags
): Command.Command<
  "natpmp-bridge",
  never,
  UsageError | CommandFailure,
  {
    readonly subcommand: Option.Option<
      ParsedSettings | CheckCommand.CheckSettings | StatusCommand.StatusSettings | DemoCommand.DemoSettings
    >
  }
> =>
  Command.make("natpmp-bridge").pipe(
    Command.withHandler(() => new UsageError({ reason: "missing command: serve, check, status or demo" })),
    Command.withDescription(
      "NAT-PMP server for double NAT: LAN clients behind a MikroTik router whose internet leg is a NAT-PMP VPN " +
        "(e.g. ProtonVPN) get public ports through the VPN and matching dst-nat rules on the router"
    ),
    Command.withSubcommands([
      ServeCommand.make(extracted),
      CheckCommand.make(extracted),
      StatusCommand.command,
      DemoCommand.command
    ])
  )
