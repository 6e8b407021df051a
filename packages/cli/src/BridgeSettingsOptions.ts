/**
 * The `natpmp-bridge serve` / `check` flags: one `--flag` per bridge setting, generated from the server's settings
 * table (`BridgeConfig.settings`), so every environment variable has its flag and `--help` lists them all with
 * their variable and default. A flag given wins over its variable.
 */
import * as Options from "@effect/cli/Options"
import { BridgeConfig } from "@natpmp-bridge/server"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import { UsageError } from "./CliMain.js"

type SettingName = BridgeConfig.SettingName

const settingNames = Object.keys(BridgeConfig.settings) as Array<SettingName>

const describe = (setting: BridgeConfig.Setting): string =>
  `${setting.description} [env ${setting.env}` +
  (setting.required ? ", required as flag or variable" : "") +
  (setting.default === undefined ? "" : `, default ${setting.default}`) +
  "]" +
  (setting.secret ? " (prefer the environment variable: flags are visible to other local users)" : "")

const settingOption = (setting: BridgeConfig.Setting) =>
  Options.text(setting.flag).pipe(
    Options.withPseudoName(setting.env),
    Options.optional,
    Options.withDescription(describe(setting))
  )

/** One optional text flag per setting, keyed by setting name. */
export const settingsOptions = Object.fromEntries(
  settingNames.map((name) => [name, settingOption(BridgeConfig.settings[name])])
) as { readonly [K in SettingName]: Options.Options<Option.Option<string>> }

export type ParsedSettings = { readonly [K in SettingName]: Option.Option<string> }

/**
 * `--log-level` is also a built-in option of @effect/cli (which would take the flag for itself and drop it), so the
 * bin takes it out of the command line before parsing and hands it over here.
 */
export interface ExtractedFlags {
  readonly logLevel: string | undefined
}

/** Takes `--log-level X` / `--log-level=X` out of a `serve`/`check` command line. */
export const extractLogLevel = (
  argv: ReadonlyArray<string>,
  commands: ReadonlyArray<string>
): { readonly argv: ReadonlyArray<string>; readonly extracted: ExtractedFlags } => {
  const flag = `--${BridgeConfig.settings.logLevel.flag}`
  const [runtime, script, ...args] = argv
  const commandIndex = args.findIndex((arg) => !arg.startsWith("-"))
  if (commandIndex === -1 || !commands.includes(args[commandIndex])) return { argv, extracted: { logLevel: undefined } }
  const out: Array<string> = []
  let logLevel: string | undefined
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]
    if (i > commandIndex && arg === flag && i + 1 < args.length) {
      logLevel = args[++i]
    } else if (i > commandIndex && arg.startsWith(`${flag}=`)) {
      logLevel = arg.slice(flag.length + 1)
    } else {
      out.push(arg)
    }
  }
  return { argv: [runtime, script, ...out], extracted: { logLevel } }
}

/** The bridge configuration from the flags over the environment; a bad or missing value is a usage error. */
export const resolveConfig = (
  parsed: ParsedSettings,
  extracted: ExtractedFlags
): Effect.Effect<BridgeConfig.BridgeConfig, UsageError> => {
  const flags: Record<string, string | undefined> = {}
  for (const name of settingNames) flags[name] = Option.getOrUndefined(parsed[name])
  if (extracted.logLevel !== undefined) flags.logLevel = extracted.logLevel
  return BridgeConfig.resolve(flags).pipe(Effect.mapError((error) => new UsageError({ reason: error.message })))
}
