/**
 * The `tally` command line: `node`, `cluster`, the `get`/`put`/`delete` clients and `admin`.
 * This module runs on import (bin/tally.js) and owns the process exit code: 0 on success, 1
 * when a node answered with an error or failed, 2 for usage errors, 3 when no node answered,
 * 4 for a key not found, 5 for siblings (Errors.ts).
 */
import * as fs from "node:fs"
import * as NodeServices from "@effect/platform-node/NodeServices"
import * as Cause from "effect/Cause"
import * as Console from "effect/Console"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import { CliConfig, CliError, CliOutput, Command, Flag, GlobalFlag } from "effect/cli"
import { adminCommand } from "./AdminCommands.ts"
import { deleteCommand, getCommand, putCommand } from "./ClientCommands.ts"
import { keysCommand } from "./KeysCommand.ts"
import { clusterCommand } from "./ClusterCommand.ts"
import { EXIT_CODES_HELP, ExitCode, isCliFailure, jsonError, jsonReport, wantsJson } from "./Errors.ts"
import { DEFAULT_URL } from "./Http.ts"
import { nodeCommand } from "./NodeCommand.ts"

const VERSION = (() => {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version?: unknown }
    return typeof pkg.version === "string" ? pkg.version : "unknown"
  } catch {
    return "unknown"
  }
})()

/** `--version` without the built-in `-v` alias, which `get` uses for `--context`. */
const Version = GlobalFlag.Action({
  flag: Flag.Boolean("version").pipe(Flag.withDescription("Show the version"), Flag.withDefault(false)),
  run: (_, { version }) => Console.log(`tally ${version}`)
})

/** `--json` anywhere on the command line: every failure is reported as one line of JSON on stderr. */
const json = wantsJson(process.argv.slice(2))

/**
 * Help on stdout when asked for; usage errors on stderr, one line each, with a pointer to the
 * help, or under `--json` one JSON object for all of them.
 */
const presenter: CliOutput.Presenter = {
  present: (event) =>
    Effect.gen(function*() {
      const formatter = yield* CliOutput.Formatter
      switch (event._tag) {
        case "Help":
          if (event.reason === "Requested") return yield* Console.log(formatter.formatHelpDoc(event.helpDoc))
          return yield* Console.error(formatter.formatHelpDoc(event.helpDoc))
        case "Version":
          return yield* Console.log(`${event.name} ${event.version}`)
        case "InvalidInvocation":
          if (json) {
            const messages = event.errors.map((e) => e.message)
            return yield* Console.error(jsonError("usage", messages.join("; "), ExitCode.usage, { errors: messages, help: `${event.commandPath.join(" ")} --help` }))
          }
          for (const error of event.errors) yield* Console.error(`error: ${error.message}`)
          return yield* Console.error(`Run "${event.commandPath.join(" ")} --help" for its flags.`)
      }
    })
}

/** The whole command tree. */
export const tally = Command.make("tally").pipe(
  Command.withDescription(`Tally, a Dynamo-style distributed key-value store. Commands reach the node at --url, else $TALLY_URL, else ${DEFAULT_URL} (the first node of npm start). ${EXIT_CODES_HELP}`),
  Command.withSubcommands([nodeCommand, clusterCommand, getCommand, putCommand, deleteCommand, keysCommand, adminCommand])
)

/** The exit code for how the program ended, after printing what the user needs to know. */
const finish = (exit: Exit.Exit<void, unknown>): number => {
  if (Exit.isSuccess(exit)) return ExitCode.ok
  if (Cause.hasInterruptsOnly(exit.cause)) return 130
  const error = Cause.squash(exit.cause)
  if (isCliFailure(error)) {
    const report = json ? jsonReport(error) : error.report
    if (report !== "") process.stderr.write(`${report}\n`)
    return error.exitCode
  }
  if (CliError.isCliError(error)) {
    // Parse errors were already printed by the presenter; a bare `tally` printed its help.
    if (error._tag !== "ShowHelp") process.stderr.write(json ? `${jsonError("usage", error.message, ExitCode.usage)}\n` : `error: ${error.message}\n`)
    return ExitCode.usage
  }
  if (json) {
    process.stderr.write(`${jsonError("internal_error", Cause.pretty(exit.cause), ExitCode.failed)}\n`)
    return ExitCode.failed
  }
  process.stderr.write(`internal error: ${Cause.pretty(exit.cause)}\n`)
  return ExitCode.failed
}

const program = Command.run(tally, { version: VERSION }).pipe(
  Effect.provide(CliConfig.layer({ builtIns: [GlobalFlag.Help, Version, GlobalFlag.Completions] })),
  Effect.provide(CliOutput.layerPresenter(presenter)),
  Effect.provide(NodeServices.layer)
)

// `tally get k | head -c 10`: a reader that stops early is not an error.
for (const stream of [process.stdout, process.stderr]) {
  stream.on("error", (e: NodeJS.ErrnoException) => {
    if (e.code !== "EPIPE") throw e
  })
}

void Effect.runPromiseExit(program).then((exit) => {
  const code = finish(exit)
  process.exitCode = code
  // Whatever a library left open must not keep a finished command alive.
  setTimeout(() => process.exit(code), 2_000).unref()
})
