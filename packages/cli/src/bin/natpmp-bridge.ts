import * as LogLevel from "effect/LogLevel"
import * as BridgeCommand from "../BridgeCommand.js"
import { extractLogLevel } from "../BridgeSettingsOptions.js"
import { runMain } from "../CliMain.js"

const { argv, extracted } = extractLogLevel(process.argv, BridgeCommand.settingsCommands)

runMain(BridgeCommand.make(extracted), {
  name: "natpmp-bridge",
  version: "0.1.0",
  defaultLogLevel: LogLevel.Info,
  argv,
  hideUnknownArguments: true
})
