/**
 * `tally get`, `tally put` and `tally delete`: clients of a node's HTTP API (CONTRACT.md).
 * Values go to stdout byte for byte; everything else (contexts, errors) goes to stderr, so
 * `tally get k > file` saves exactly the value. `--json` prints one JSON document on stdout
 * instead (values in base64), for scripts. A key not found exits 4, siblings exit 5.
 */
import * as fs from "node:fs"
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import { Argument, Command, Flag } from "effect/cli"
import { EXIT_CODES_HELP, messageOf, NotFound, SiblingsFound, UsageError } from "./Errors.ts"
import * as Http from "./Http.ts"

/** Where the client commands send their requests unless --url or TALLY_URL say otherwise. */
export const DEFAULT_URL = Http.DEFAULT_URL

/** How long a request may wait for its answer unless `--timeout` says otherwise. */
const DEFAULT_CLIENT_TIMEOUT_MS = 60_000

const MAX_KEY_BYTES = 1024

// ---- requests ---------------------------------------------------------------------------

/** What every request needs. */
interface Target {
  readonly url: string
  readonly key: string
  readonly query: Readonly<Record<string, string | undefined>>
  readonly timeoutMs: number | undefined
}

const checkKey = (key: string): Effect.Effect<string, UsageError> => {
  const bytes = Buffer.byteLength(key, "utf8")
  return bytes >= 1 && bytes <= MAX_KEY_BYTES
    ? Effect.succeed(key)
    : Effect.fail(new UsageError({ message: `a key must be 1 to ${MAX_KEY_BYTES} bytes of UTF-8; got ${bytes} bytes` }))
}

const checkQuorum = (flag: string, value: Option.Option<string>): Effect.Effect<string | undefined, UsageError> =>
  Option.match(value, {
    onNone: () => Effect.succeed(undefined),
    onSome: (v) =>
      /^([1-9]\d*|quorum|all)$/.test(v)
        ? Effect.succeed(v)
        : Effect.fail(new UsageError({ message: `--${flag} must be an integer from 1 to N, quorum or all; got ${v}` }))
  })

const requestUrl = (target: Target): string => {
  const params = new URLSearchParams()
  for (const [k, v] of Object.entries(target.query)) if (v !== undefined) params.set(k, v)
  if (target.timeoutMs !== undefined) params.set("timeout", String(target.timeoutMs))
  const qs = params.toString()
  return Http.joinUrl(target.url, `/kv/${encodeURIComponent(target.key)}${qs === "" ? "" : `?${qs}`}`)
}

/** Sends one request; fails with Unreachable when no HTTP answer comes back. */
const send = (method: string, target: Target, init: { readonly headers?: Record<string, string>; readonly body?: Uint8Array } = {}) =>
  Http.send(method, target.url, requestUrl(target), {
    ...init,
    timeoutMs: target.timeoutMs !== undefined ? target.timeoutMs + 5_000 : DEFAULT_CLIENT_TIMEOUT_MS
  })

const writeTo = (stream: NodeJS.WriteStream, data: string | Uint8Array) =>
  Effect.callback<void>((resume) => {
    stream.write(data, () => resume(Effect.void))
  })

/** Writes to stdout and waits until it is handed to the OS. */
export const writeOut = (data: string | Uint8Array) => writeTo(process.stdout, data)
/** Writes to stderr and waits until it is handed to the OS. */
export const writeErr = (data: string | Uint8Array) => writeTo(process.stderr, data)

// ---- siblings ---------------------------------------------------------------------------

/** One concurrent version in a 300 answer. */
export interface Sibling {
  readonly value: string
  readonly contentType: string
  readonly lastModified: string
}

const utf8 = new TextDecoder("utf-8", { fatal: true })

/** `bytes` as text if they are valid UTF-8 without control characters (tabs and newlines aside). */
export const asText = (bytes: Uint8Array): string | undefined => {
  try {
    const text = utf8.decode(bytes)
    return /[\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]/.test(text) ? undefined : text
  } catch {
    return undefined
  }
}

/** A shell word for `s`: as is when safe, single-quoted otherwise. */
const shellWord = (s: string): string => (/^[A-Za-z0-9_.:/=@%+-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`)

/** The readable listing of a 300 answer: one block per sibling, then the context that resolves them. */
export const formatSiblings = (key: string, context: string, siblings: ReadonlyArray<Sibling>): string => {
  const blocks = siblings.map((s, i) => {
    const bytes = Buffer.from(s.value, "base64")
    const text = asText(bytes)
    const value = text === undefined
      ? `value (base64, ${bytes.length} bytes): ${s.value}`
      : text.includes("\n")
      ? `value (${bytes.length} bytes):\n${text.replace(/\n$/, "").split("\n").map((l) => `  ${l}`).join("\n")}`
      : `value: ${text}`
    return [`sibling ${i + 1} of ${siblings.length}`, `content-type: ${s.contentType}`, `last-modified: ${s.lastModified}`, value].join("\n")
  })
  return [
    `${siblings.length} concurrent versions of ${JSON.stringify(key)}.`,
    "",
    blocks.join("\n\n"),
    "",
    "To resolve them, write the value to keep with this context:",
    `context: ${context}`,
    `  tally put ${shellWord(key)} VALUE --context ${shellWord(context)}`,
    ""
  ].join("\n")
}

const parseSiblings = (body: Uint8Array): { readonly context: string; readonly siblings: ReadonlyArray<Sibling> } | undefined => {
  let parsed: unknown
  try {
    parsed = JSON.parse(Buffer.from(body).toString("utf8"))
  } catch {
    return undefined
  }
  if (!Predicate.isObject(parsed) || !Predicate.isString(parsed.context) || !Array.isArray(parsed.siblings)) return undefined
  const siblings = parsed.siblings.map((s: unknown): Sibling => ({
    value: Predicate.isObject(s) && Predicate.isString(s.value) ? s.value : "",
    contentType: Predicate.isObject(s) && Predicate.isString(s.contentType) ? s.contentType : "(none)",
    lastModified: Predicate.isObject(s) && Predicate.isString(s.lastModified) ? s.lastModified : "(unknown)"
  }))
  return { context: parsed.context, siblings }
}

// ---- commands ----------------------------------------------------------------------------

/** `--url`, shared with `tally admin`: optional, so that TALLY_URL can stand in for it. */
export const urlFlag = Flag.String("url").pipe(
  Flag.withMetavar("URL"),
  Flag.withDescription(`address of any node, without a path (default $TALLY_URL, else ${DEFAULT_URL})`),
  Flag.optional
)
/** `--json`: one document on stdout, for scripts. */
const jsonFlag = Flag.Boolean("json").pipe(Flag.withDescription("print one JSON document on stdout instead, values in base64 (default off)"), Flag.withDefault(false))
const timeoutFlag = Flag.Int("timeout").pipe(
  Flag.withMetavar("MS"),
  Flag.withDescription("how long the node may take to reach its quorum (default: the node's)"),
  Flag.optional
)
const verboseFlag = (what: string) =>
  Flag.Boolean("verbose").pipe(Flag.withAlias("v"), Flag.withDescription(`print ${what} X-Context to stderr (default off)`), Flag.withDefault(false))
const quorumFlag = (name: "r" | "w", what: string) =>
  Flag.String(name).pipe(Flag.withMetavar(name.toUpperCase()), Flag.withDescription(`${what} quorum: 1..N, quorum or all (default: the node's)`), Flag.optional)
const keyArgument = Argument.String("key").pipe(Argument.withDescription("the key, 1 to 1024 bytes of UTF-8"))

const target = Effect.fnUntraced(function*(url: Option.Option<string>, key: string, query: Record<string, string | undefined>, timeout: Option.Option<number>) {
  const node = Http.resolveUrl(url)
  yield* Http.checkUrl(node.url, DEFAULT_URL, node.source)
  yield* checkKey(key)
  const timeoutMs = Option.getOrUndefined(timeout)
  if (timeoutMs !== undefined && timeoutMs < 1) return yield* new UsageError({ message: `--timeout must be a positive number of milliseconds; got ${timeoutMs}` })
  return { url: node.url, key, query, timeoutMs } satisfies Target
})

const contextOf = (response: Response): string | undefined => response.headers.get("x-context") ?? undefined

const printContext = (response: Response) => {
  const context = contextOf(response)
  return context === undefined ? Effect.void : writeErr(`X-Context: ${context}\n`)
}

const printJson = (doc: Record<string, unknown>) => writeOut(`${JSON.stringify(doc)}\n`)

const base64 = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).toString("base64")

/** `tally get <key>`. */
export const getCommand = Command.make(
  "get",
  {
    key: keyArgument,
    url: urlFlag,
    r: quorumFlag("r", "read"),
    verbose: verboseFlag("the"),
    json: jsonFlag,
    timeout: timeoutFlag
  },
  Effect.fnUntraced(function*({ key, url, r, verbose, json, timeout }) {
    const t = yield* target(url, key, { r: yield* checkQuorum("r", r) }, timeout)
    const { response, body } = yield* send("GET", t)
    if (response.status === 200) {
      const context = contextOf(response) ?? null
      if (json) return yield* printJson({ key, found: true, context, contentType: response.headers.get("content-type"), value: base64(body) })
      if (verbose) yield* printContext(response)
      return yield* writeOut(body)
    }
    if (response.status === 300) {
      const siblings = parseSiblings(body)
      if (siblings === undefined) return yield* Http.failure(response, body)
      if (json) yield* printJson({ key, found: true, context: siblings.context, siblings: siblings.siblings })
      else yield* writeOut(formatSiblings(key, siblings.context, siblings.siblings))
      return yield* new SiblingsFound({ key, count: siblings.siblings.length })
    }
    if (response.status === 404 && Http.failure(response, body).code === "not_found") {
      if (json) yield* printJson({ key, found: false, context: contextOf(response) ?? null })
      else if (verbose) yield* printContext(response)
      return yield* new NotFound({ key })
    }
    return yield* Http.failure(response, body)
  })
).pipe(
  Command.withDescription(
    "Print the value of a key to stdout, or its concurrent versions (siblings) and the context that resolves them. " +
      `Not found exits 4, siblings exit 5. ${EXIT_CODES_HELP}`
  ),
  Command.withExamples([
    { command: "tally get greeting", description: "print the value" },
    { command: "tally get greeting --r all -v", description: "read from every replica; print the context too" },
    { command: "tally get greeting --json", description: `{"key","found","context","contentType","value" (base64)} or "siblings"` }
  ])
)

const readStdin = Effect.tryPromise({
  try: async () => {
    if (process.stdin.isTTY) process.stderr.write("reading the value from stdin; end it with Ctrl-D\n")
    const chunks: Array<Buffer> = []
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer)
    return new Uint8Array(Buffer.concat(chunks))
  },
  catch: (e) => new UsageError({ message: `cannot read the value from stdin: ${messageOf(e)}` })
})

const readValueFile = (file: string) =>
  Effect.try({
    try: () => new Uint8Array(fs.readFileSync(file)),
    catch: (e) => new UsageError({ message: `cannot read --file ${file}: ${Predicate.hasProperty(e, "code") && e.code === "ENOENT" ? "no such file" : messageOf(e)}` })
  })

/** `tally put <key> [value]`. */
export const putCommand = Command.make(
  "put",
  {
    key: keyArgument,
    value: Argument.String("value").pipe(Argument.withDescription("the value; without it, --file or stdin"), Argument.optional),
    url: urlFlag,
    w: quorumFlag("w", "write"),
    context: Flag.String("context").pipe(Flag.withMetavar("CTX"), Flag.withDescription("the X-Context you read, to replace what you read (default none: a concurrent write)"), Flag.optional),
    contentType: Flag.String("content-type").pipe(
      Flag.withMetavar("TYPE"),
      Flag.withDescription("Content-Type to store (default text/plain; charset=utf-8 for a value argument, else application/octet-stream)"),
      Flag.optional
    ),
    file: Flag.String("file").pipe(Flag.withMetavar("FILE"), Flag.withDescription("read the value from this file (default: the argument, else stdin)"), Flag.optional),
    verbose: verboseFlag("the new version's"),
    json: jsonFlag,
    timeout: timeoutFlag
  },
  Effect.fnUntraced(function*({ key, value, url, w, context, contentType, file, verbose, json, timeout }) {
    if (Option.isSome(value) && Option.isSome(file)) {
      return yield* new UsageError({ message: "give the value either as an argument or with --file, not both" })
    }
    const t = yield* target(url, key, { w: yield* checkQuorum("w", w) }, timeout)
    const body = Option.isSome(value)
      ? new Uint8Array(Buffer.from(value.value, "utf8"))
      : Option.isSome(file)
      ? yield* readValueFile(file.value)
      : yield* readStdin
    const headers: Record<string, string> = {
      "content-type": Option.getOrElse(contentType, () => (Option.isSome(value) ? "text/plain; charset=utf-8" : "application/octet-stream"))
    }
    if (Option.isSome(context)) headers["x-context"] = context.value
    const { response, body: answer } = yield* send("PUT", t, { headers, body })
    if (response.status >= 200 && response.status < 300) {
      if (json) return yield* printJson({ key, context: contextOf(response) ?? null })
      if (verbose) yield* printContext(response)
      return
    }
    return yield* Http.failure(response, answer)
  })
).pipe(
  Command.withDescription(`Store a value under a key. ${EXIT_CODES_HELP}`),
  Command.withExamples([
    { command: "tally put greeting hello", description: "store a text value" },
    { command: "tally put photo --file cat.jpg --content-type image/jpeg", description: "store a file" },
    { command: "tally put greeting hi --context CTX", description: "replace the version(s) you read" }
  ])
)

/**
 * The context a delete should carry: what the key holds now. A delete without one is
 * concurrent with the stored value and removes nothing, so the value is read first.
 */
const currentContext = Effect.fnUntraced(function*(t: Target) {
  const { response, body } = yield* send("GET", { ...t, query: {} })
  if (response.status === 200) {
    const context = contextOf(response)
    if (context !== undefined) return context
  }
  if (response.status === 300) {
    const siblings = parseSiblings(body)
    if (siblings !== undefined) return siblings.context
  }
  if (response.status === 404 && Http.failure(response, body).code === "not_found") return yield* new NotFound({ key: t.key })
  return yield* Http.failure(response, body)
})

/** `tally delete <key>`. */
export const deleteCommand = Command.make(
  "delete",
  {
    key: keyArgument,
    url: urlFlag,
    w: quorumFlag("w", "write"),
    context: Flag.String("context").pipe(Flag.withMetavar("CTX"), Flag.withDescription("delete what this X-Context covers (default: read the key's context first)"), Flag.optional),
    blind: Flag.Boolean("blind").pipe(
      Flag.withDescription("send the delete without reading first and without a context: it is concurrent with what is stored and removes nothing it has not seen (default off)"),
      Flag.withDefault(false)
    ),
    verbose: verboseFlag("the tombstone's"),
    json: jsonFlag,
    timeout: timeoutFlag
  },
  Effect.fnUntraced(function*({ key, url, w, context, blind, verbose, json, timeout }) {
    if (blind && Option.isSome(context)) return yield* new UsageError({ message: "give either --context or --blind, not both" })
    const t = yield* target(url, key, { w: yield* checkQuorum("w", w) }, timeout)
    const ctx = Option.isSome(context) ? context.value : blind ? undefined : yield* currentContext(t)
    const headers: Record<string, string> = ctx !== undefined ? { "x-context": ctx } : {}
    const { response, body } = yield* send("DELETE", t, { headers })
    if (response.status >= 200 && response.status < 300) {
      if (json) return yield* printJson({ key, context: contextOf(response) ?? null })
      if (verbose) yield* printContext(response)
      return
    }
    if (response.status === 404 && Http.failure(response, body).code === "not_found") return yield* new NotFound({ key })
    return yield* Http.failure(response, body)
  })
).pipe(
  Command.withDescription(
    "Delete a key: reads its context first, so that the delete covers the value stored now (--context gives one, --blind sends none). " +
      `Not found exits 4. ${EXIT_CODES_HELP}`
  ),
  Command.withExamples([
    { command: "tally delete greeting", description: "read the key's context, then delete what it covers" },
    { command: "tally delete greeting --context CTX", description: "delete the version(s) you read" }
  ])
)
