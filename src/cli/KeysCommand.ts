/**
 * `tally keys`: lists the cluster's keys through GET /kv, page after page, one key a line (a
 * key with control characters, a newline say, is printed as a JSON string so that lines stay
 * keys). Expensive on the cluster, as the route is: for operators and scripts.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import { Command, Flag } from "effect/cli"
import { DEFAULT_URL, urlFlag, writeErr, writeOut } from "./ClientCommands.ts"
import { BadAnswer, UsageError } from "./Errors.ts"
import * as Http from "./Http.ts"

/** Keys asked for per request (the node's largest page is 10000). */
const PAGE = 1000

interface Page {
  readonly keys: ReadonlyArray<string>
  readonly cursor: string | null
}

const isPage = (v: unknown): v is Page =>
  Predicate.isObject(v) && Array.isArray(v.keys) && v.keys.every(Predicate.isString) && (v.cursor === null || Predicate.isString(v.cursor))

/** A key as one line: as is, or JSON-quoted when it holds control characters or could be mistaken for a quoted one. */
export const keyLine = (key: string): string => (/[\u0000-\u001f\u007f]/.test(key) || key.startsWith('"') ? JSON.stringify(key) : key)

/** `tally keys`. */
export const keysCommand = Command.make(
  "keys",
  {
    url: urlFlag,
    prefix: Flag.String("prefix").pipe(Flag.withMetavar("P"), Flag.withDescription("only keys that start with P (default: every key)"), Flag.withDefault("")),
    limit: Flag.Int("limit").pipe(Flag.withMetavar("N"), Flag.withDescription("print at most N keys, then the cursor to go on from (default: all)"), Flag.optional),
    cursor: Flag.String("cursor").pipe(Flag.withMetavar("C"), Flag.withDescription("go on from a cursor an earlier --limit printed (default: from the first key)"), Flag.optional),
    json: Flag.Boolean("json").pipe(Flag.withDescription(`print {"keys": [...], "cursor": ...} on stdout instead (default off)`), Flag.withDefault(false)),
    timeout: Flag.Int("timeout").pipe(Flag.withMetavar("MS"), Flag.withDescription("how long each page may take (default: the node's)"), Flag.optional)
  },
  Effect.fnUntraced(function*({ url, prefix, limit, cursor, json, timeout }) {
    const node = Http.resolveUrl(url)
    yield* Http.checkUrl(node.url, DEFAULT_URL, node.source)
    const max = Option.getOrUndefined(limit)
    if (max !== undefined && max < 1) return yield* new UsageError({ message: `--limit must be a positive number of keys; got ${max}` })
    const timeoutMs = Option.getOrUndefined(timeout)
    if (timeoutMs !== undefined && timeoutMs < 1) return yield* new UsageError({ message: `--timeout must be a positive number of milliseconds; got ${timeoutMs}` })
    const collected: string[] = []
    let next: string | null = Option.getOrNull(cursor)
    let printed = 0
    do {
      const want = max === undefined ? PAGE : Math.min(PAGE, max - printed)
      const qs = new URLSearchParams({ limit: String(want), ...(prefix === "" ? {} : { prefix }), ...(next === null ? {} : { cursor: next }), ...(timeoutMs === undefined ? {} : { timeout: String(timeoutMs) }) })
      const { response, body } = yield* Http.send("GET", node.url, Http.joinUrl(node.url, `/kv?${qs}`), { timeoutMs: (timeoutMs ?? 60_000) + 5_000 })
      if (response.status !== 200) return yield* Http.failure(response, body)
      let page: unknown
      try {
        page = JSON.parse(Buffer.from(body).toString("utf8"))
      } catch {
        page = undefined
      }
      if (!isPage(page)) return yield* new BadAnswer({ url: node.url, message: "GET /kv did not answer {\"keys\": [...], \"cursor\": ...}" })
      if (json) collected.push(...page.keys)
      else if (page.keys.length > 0) yield* writeOut(page.keys.map((k) => `${keyLine(k)}\n`).join(""))
      printed += page.keys.length
      next = page.cursor
    } while (next !== null && (max === undefined || printed < max))
    if (json) return yield* writeOut(`${JSON.stringify({ keys: collected, cursor: next })}\n`)
    if (next !== null) yield* writeErr(`more keys follow; go on with: tally keys${prefix === "" ? "" : ` --prefix ${JSON.stringify(prefix)}`} --cursor ${next}\n`)
  })
).pipe(
  Command.withDescription("List the cluster's keys in UTF-8 byte order (expensive: reads every partition; for operators and scripts)"),
  Command.withExamples([
    { command: "tally keys --prefix user/", description: "every key that starts with user/" },
    { command: "tally keys --limit 100 --json", description: "the first 100 keys and the cursor after them, as JSON" }
  ])
)
