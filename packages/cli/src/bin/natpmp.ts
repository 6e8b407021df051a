import * as LogLevel from "effect/LogLevel"
import { runMain } from "../CliMain.js"
import { command } from "../NatPmpCommand.js"

runMain(command, { name: "natpmp", version: "0.1.0", defaultLogLevel: LogLevel.Warning })
