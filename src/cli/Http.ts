/**
 * How the command line talks to a node: one HTTP request with a deadline, a network failure
 * told in words (Unreachable, exit 3) and a node's error answer as a RequestFailed (exit 1).
 * Shared by the key-value clients and `tally admin`, so both fail the same way.
 */
import * as Effect from "effect/Effect"
import * as Option from "effect/Option"
import * as Predicate from "effect/Predicate"
import { messageOf, RequestFailed, Unreachable, UsageError } from "./Errors.ts"

/** A node's answer, body read in full. */
export interface Answer {
  readonly response: Response
  readonly body: Uint8Array
}

/** What to send besides the method and address. */
export interface RequestInit {
  readonly headers?: Readonly<Record<string, string>>
  readonly body?: Uint8Array | string
  /** How long to wait for the whole answer. */
  readonly timeoutMs: number
}

/** The first node of `npm start` (`tally cluster --nodes 3`): where commands go by default. */
export const DEFAULT_URL = "http://127.0.0.1:8081"

/** A node address and where it came from, for messages. */
export interface NodeUrl {
  readonly url: string
  /** `--url`, `TALLY_URL` or `default`. */
  readonly source: string
}

/** `--url` if given, else `TALLY_URL` if set, else DEFAULT_URL (as redis-cli and etcdctl read their env). */
export const resolveUrl = (flag: Option.Option<string>, env: NodeJS.ProcessEnv = process.env): NodeUrl =>
  Option.isSome(flag)
    ? { url: flag.value, source: "--url" }
    : env.TALLY_URL !== undefined && env.TALLY_URL !== ""
    ? { url: env.TALLY_URL, source: "TALLY_URL" }
    : { url: DEFAULT_URL, source: "default" }

/**
 * `url` if it is a node's http:// or https:// address, with no path, query or fragment:
 * commands add /kv/<key> or /admin/... themselves, so a path would silently address
 * something else. `example` and `source` (the flag or variable) go into the message otherwise.
 */
export const checkUrl = (url: string, example: string, source = "--url"): Effect.Effect<URL, UsageError> => {
  let parsed: URL | undefined
  try {
    parsed = new URL(url)
  } catch {
    parsed = undefined
  }
  if (parsed === undefined || (parsed.protocol !== "http:" && parsed.protocol !== "https:")) {
    return Effect.fail(new UsageError({ message: `${source} must be an http:// or https:// address such as ${example}; got ${url}` }))
  }
  if (parsed.pathname !== "/" || parsed.search !== "" || parsed.hash !== "") {
    const extra = `${parsed.pathname === "/" ? "" : parsed.pathname}${parsed.search}${parsed.hash}`
    return Effect.fail(new UsageError({ message: `${source} must be a node's address without a path, such as ${example}; got ${url} (remove ${extra}: tally adds the /kv/ or /admin/ path itself)` }))
  }
  return Effect.succeed(parsed)
}

/** `base` (as the user gave it, perhaps with a trailing slash) joined with an absolute `path`. */
export const joinUrl = (base: string, path: string): string => `${base.replace(/\/+$/, "")}${path}`

const NETWORK_REASONS: Readonly<Record<string, string>> = {
  ECONNREFUSED: "connection refused; is a node running there?",
  ENOTFOUND: "unknown host",
  EAI_AGAIN: "the host name could not be resolved",
  ECONNRESET: "the connection was reset",
  EHOSTUNREACH: "no route to host",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "the connection timed out"
}

const networkReason = (e: unknown): string => {
  if (Predicate.hasProperty(e, "name") && (e.name === "TimeoutError" || e.name === "AbortError")) return "no answer in time"
  const cause = Predicate.hasProperty(e, "cause") ? e.cause : undefined
  const code = Predicate.hasProperty(cause, "code") && Predicate.isString(cause.code) ? cause.code : undefined
  if (code !== undefined) return NETWORK_REASONS[code] ?? code
  return Predicate.hasProperty(cause, "message") && Predicate.isString(cause.message) ? cause.message : messageOf(e)
}

/**
 * The bearer token for a node started with --client-token-file (or --admin-token-file):
 * `TALLY_TOKEN`, as etcdctl and the Docker CLI take theirs from the environment, so it stays
 * out of the process list. HTTPS to a node with a private CA: `NODE_EXTRA_CA_CERTS=ca.pem`,
 * which Node itself reads. Undefined: no token is sent.
 */
export const envToken = (env: NodeJS.ProcessEnv = process.env): string | undefined => {
  const t = env.TALLY_TOKEN?.trim()
  return t === undefined || t === "" ? undefined : t
}

/**
 * Sends one request to `url`; fails with Unreachable (naming `node`) when no HTTP answer comes
 * back. The token of envToken goes along, unless the caller sent its own Authorization.
 */
export const send = (method: string, node: string, url: string, init: RequestInit): Effect.Effect<Answer, Unreachable> =>
  Effect.tryPromise({
    try: async (signal) => {
      const token = envToken()
      const response = await fetch(url, {
        method,
        headers: { ...(token === undefined ? {} : { authorization: `Bearer ${token}` }), ...init.headers },
        ...(init.body !== undefined ? { body: init.body } : {}),
        signal: AbortSignal.any([signal, AbortSignal.timeout(init.timeoutMs)])
      })
      return { response, body: new Uint8Array(await response.arrayBuffer()) }
    },
    catch: (e) => new Unreachable({ url: node, reason: networkReason(e) })
  })

/** The node's error answer as a RequestFailed, whatever its body. */
export const failure = (response: Response, body: Uint8Array): RequestFailed => {
  const text = Buffer.from(body).toString("utf8")
  let parsed: unknown
  try {
    parsed = JSON.parse(text)
  } catch {
    parsed = undefined
  }
  if (Predicate.isObject(parsed) && Predicate.isString(parsed.error)) {
    let message = Predicate.isString(parsed.message) ? parsed.message : response.statusText
    if (parsed.needed !== undefined || parsed.got !== undefined) message += ` (needed ${String(parsed.needed)}, got ${String(parsed.got)})`
    return new RequestFailed({ status: response.status, code: parsed.error, message })
  }
  const detail = text.trim().slice(0, 200)
  return new RequestFailed({ status: response.status, code: `http_${response.status}`, message: detail === "" ? response.statusText : detail })
}
