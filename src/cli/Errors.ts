/**
 * Every way a `tally` command fails, with the text it prints to stderr and the exit code it
 * ends with: 1 when a node answered with an error, 2 for a usage error, 3 when no node
 * answered, 4 when the key has no value, 5 when it has siblings. Scripts rely on these codes
 * (docs/operations.md and `tally --help` list them); keep them stable. Under `--json` the
 * same failures are one line of JSON on stderr instead, `{"error": {"code", "message", ...}}`
 * (jsonReport), with the same exit codes.
 */
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"

/** Exit codes of the `tally` command. */
export const ExitCode = {
  ok: 0,
  /** A node answered 4xx/5xx, or a node or cluster failed. */
  failed: 1,
  /** Bad flags, arguments or settings. */
  usage: 2,
  /** No node answered at the given address. */
  unreachable: 3,
  /** The key has no value (`get`, `delete`). */
  notFound: 4,
  /** The key holds concurrent versions (`get`): they were printed; write one back with the context. */
  siblings: 5
} as const

/** The exit codes as `--help` shows them. */
export const EXIT_CODES_HELP = "Exit codes: 0 done, 1 the node answered with an error, 2 usage error, 3 no node answered, 4 not found, 5 siblings (printed, with the context to resolve them)."

/** Bad flags or arguments, found by the command itself. */
export class UsageError extends Schema.TaggedError<UsageError>()("UsageError", {
  message: Schema.String
}) {
  readonly exitCode = ExitCode.usage
  get report(): string {
    return `error: ${this.message}`
  }
}

/** `tally node` settings that do not resolve; each message names its flag, variable or file key. */
export class InvalidSettings extends Schema.TaggedError<InvalidSettings>()("InvalidSettings", {
  errors: Schema.Array(Schema.String)
}) {
  readonly exitCode = ExitCode.usage
  override get message(): string {
    return this.errors.join("; ")
  }
  get report(): string {
    return this.errors.map((e) => `error: ${e}`).join("\n")
  }
}

/** The node answered with an error (`{"error": code, "message": ...}`). */
export class RequestFailed extends Schema.TaggedError<RequestFailed>()("RequestFailed", {
  status: Schema.Number,
  code: Schema.String,
  message: Schema.String
}) {
  readonly exitCode = ExitCode.failed
  get report(): string {
    return `error: ${this.code}: ${this.message}`
  }
}

/** The node answered with success but not with what CONTRACT.md says it sends. */
export class BadAnswer extends Schema.TaggedError<BadAnswer>()("BadAnswer", {
  url: Schema.String,
  message: Schema.String
}) {
  readonly exitCode = ExitCode.failed
  get report(): string {
    return `error: bad_answer: ${this.url}: ${this.message}`
  }
}

/** The key has no value (404). */
export class NotFound extends Schema.TaggedError<NotFound>()("NotFound", {
  key: Schema.String
}) {
  readonly exitCode = ExitCode.notFound
  override get message(): string {
    return `not found: ${this.key}`
  }
  get report(): string {
    return "not found"
  }
}

/** The key holds concurrent versions; they are on stdout already, so nothing more is said. */
export class SiblingsFound extends Schema.TaggedError<SiblingsFound>()("SiblingsFound", {
  key: Schema.String,
  count: Schema.Number
}) {
  readonly exitCode = ExitCode.siblings
  override get message(): string {
    return `${this.count} siblings: ${this.key}`
  }
  get report(): string {
    return ""
  }
}

/** No answer from the node: refused, unresolvable, reset or timed out. */
export class Unreachable extends Schema.TaggedError<Unreachable>()("Unreachable", {
  url: Schema.String,
  reason: Schema.String
}) {
  readonly exitCode = ExitCode.unreachable
  override get message(): string {
    return `cannot reach ${this.url}: ${this.reason}`
  }
  get report(): string {
    return `error: unreachable: ${this.message}`
  }
}

/** A node or the local cluster could not start, or stopped badly. */
export class NodeFailed extends Schema.TaggedError<NodeFailed>()("NodeFailed", {
  message: Schema.String
}) {
  readonly exitCode = ExitCode.failed
  get report(): string {
    return `error: ${this.message}`
  }
}

/** Any failure above. */
export type CliFailure = UsageError | InvalidSettings | RequestFailed | BadAnswer | NotFound | SiblingsFound | Unreachable | NodeFailed

/** Whether `u` is one of the failures above. */
export const isCliFailure = (u: unknown): u is CliFailure =>
  Predicate.hasProperty(u, "exitCode") && Predicate.isNumber(u.exitCode) && Predicate.hasProperty(u, "report")

/** A thrown value's message, for reports. */
export const messageOf = (e: unknown): string => (e instanceof Error ? e.message : String(e))

/** The code a failure has in its `--json` report: the node's own for RequestFailed. */
export const failureCode = (f: CliFailure): string => {
  switch (f._tag) {
    case "UsageError":
    case "InvalidSettings":
      return "usage"
    case "RequestFailed":
      return f.code
    case "BadAnswer":
      return "bad_answer"
    case "NotFound":
      return "not_found"
    case "SiblingsFound":
      return "siblings"
    case "Unreachable":
      return "unreachable"
    case "NodeFailed":
      return "node_failed"
  }
}

/**
 * A failure as `--json` prints it: one line `{"error": {"code", "message", "exitCode", ...}}`
 * for stderr, with what else the failure knows (`status`, `url`, `key`, `errors`). The empty
 * string for SiblingsFound, which prints nothing more (its JSON document is on stdout).
 */
export const jsonReport = (f: CliFailure): string => {
  if (f._tag === "SiblingsFound") return ""
  const extra: Record<string, unknown> =
    f._tag === "RequestFailed" ? { status: f.status }
    : f._tag === "Unreachable" ? { url: f.url, reason: f.reason }
    : f._tag === "BadAnswer" ? { url: f.url }
    : f._tag === "NotFound" ? { key: f.key }
    : f._tag === "InvalidSettings" ? { errors: f.errors }
    : {}
  return jsonError(failureCode(f), f.message, f.exitCode, extra)
}

/** One line of JSON reporting an error, for `--json`: `{"error": {"code", "message", "exitCode", ...extra}}`. */
export const jsonError = (code: string, message: string, exitCode: number, extra: Record<string, unknown> = {}): string =>
  JSON.stringify({ error: { code, message, exitCode, ...extra } })

/**
 * Whether the command line asks for `--json` (before any `--`): failures are then reported
 * as JSON, parse errors included, which come before any command has read its flags.
 */
export const wantsJson = (args: ReadonlyArray<string>): boolean => {
  for (const a of args) {
    if (a === "--") return false
    if (a === "--json" || a === "--json=true") return true
  }
  return false
}
