/**
 * `tally/client`: a TypeScript client of the HTTP API (CONTRACT.md, docs/client.md). Reads
 * return the value or the siblings with the context that covers them; `update` is Riak's
 * read-resolve-modify-write loop. A call goes to the nodes in turn, moving on after a 503, a
 * 504 or a connection error, with exponential backoff and full jitter, bounded in attempts
 * and time; a node that answered 503 with `Retry-After` is not tried again before that.
 * Only web APIs (`fetch`, `AbortController`, `Uint8Array`, `TextEncoder`, `TextDecoder`,
 * `setTimeout`): it runs in browsers, Deno and Node alike.
 */
import { type Attempt, isErrorCode, isRetryableCode, TallyError } from "./TallyError.ts"

export { type Attempt, TallyError, type TallyErrorCode } from "./TallyError.ts"

/** How a call retries. */
export interface RetryPolicy {
  /** Attempts in all, the first included (default 6). */
  readonly attempts: number
  /** Backoff before the second attempt, doubled each time after (default 50 ms). */
  readonly baseDelayMs: number
  /** Longest backoff (default 2 s). */
  readonly maxDelayMs: number
  /** No attempt starts after this long from the call (default 30 s). */
  readonly deadlineMs: number
}

/** The defaults of RetryPolicy. */
export const DEFAULT_RETRY: RetryPolicy = { attempts: 6, baseDelayMs: 50, maxDelayMs: 2_000, deadlineMs: 30_000 }

/**
 * The wait before attempt `attempt + 1` (attempt counts from 1): full jitter, uniform in
 * [0, min(max, base * 2^(attempt-1))), so that clients retrying together spread out.
 */
export const backoffMs = (policy: RetryPolicy, attempt: number, random: () => number): number =>
  Math.floor(random() * Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1)))

/**
 * A `Retry-After` header (RFC 9110 §10.2.3) as milliseconds to wait from `now`: delay-seconds
 * (`1`) or an HTTP date; undefined when absent or not either form. A date in the past is 0.
 */
export const retryAfterMs = (header: string | null | undefined, now: number): number | undefined => {
  if (header === null || header === undefined) return undefined
  const v = header.trim()
  if (/^\d+$/.test(v)) return Number(v) * 1_000
  if (!/[A-Za-z]/.test(v)) return undefined
  const at = Date.parse(v)
  return Number.isNaN(at) ? undefined : Math.max(0, at - now)
}

/** What a TallyClient needs. */
export interface TallyClientOptions {
  /** Client addresses of any nodes, such as `http://127.0.0.1:8081`. */
  readonly nodes: ReadonlyArray<string>
  /** Sent as `Authorization: Bearer <token>` (a node started with `--client-token-file`). */
  readonly token?: string
  /** How long one attempt may wait for its answer (default 15 s, past a node's 10 s quorum timeout). */
  readonly attemptTimeoutMs?: number
  readonly retry?: Partial<RetryPolicy>
  /** The fetch to use (default the global one, which keeps connections alive). */
  readonly fetch?: typeof globalThis.fetch
  /** For tests: the source of jitter, in [0, 1), and the wait between attempts. */
  readonly random?: () => number
  readonly sleep?: (ms: number) => Promise<void>
  /** For tests: the clock the retry deadline is measured on (default Date.now). */
  readonly now?: () => number
}

/** Per-call settings of a read. */
export interface ReadOptions {
  /** Read quorum: 1..N, "quorum" or "all" (default the node's). */
  readonly r?: number | "quorum" | "all"
  /** `false`: count only the N primary replicas (default true). */
  readonly sloppy?: boolean
  /** The node's quorum timeout in ms (default the node's). */
  readonly timeout?: number
  readonly signal?: AbortSignal
}

/** Per-call settings of a write. */
export interface WriteOptions {
  /** Write quorum: 1..N, "quorum" or "all" (default the node's). */
  readonly w?: number | "quorum" | "all"
  readonly sloppy?: boolean
  readonly timeout?: number
  readonly signal?: AbortSignal
}

/** A key with one value. */
export interface TallyValue {
  readonly value: Uint8Array
  readonly contentType: string
  /** Opaque: pass it to `put` or `delete` to replace what you read. */
  readonly context: string
}

/** One of a key's concurrent versions. */
export interface TallySibling {
  readonly value: Uint8Array
  readonly contentType: string
  readonly lastModified: Date
}

/** A key with concurrent versions: resolve them and write one back with `context`. */
export interface TallySiblings {
  readonly siblings: ReadonlyArray<TallySibling>
  readonly context: string
}

/** What `get` finds. */
export type TallyObject = TallyValue | TallySiblings

/** A value to write: bytes, text (stored as UTF-8), or either with its content type. */
export type ValueInput = Uint8Array | string | { readonly value: Uint8Array | string; readonly contentType?: string }

/** Merges siblings into the one value to keep. */
export type Resolver = (siblings: ReadonlyArray<TallySibling>) => ValueInput | Promise<ValueInput>

/** Settings of `update`. */
export interface UpdateOptions extends ReadOptions, WriteOptions {
  /** Merges siblings; without it, siblings fail the update with `unresolved_siblings`. */
  readonly resolve?: Resolver
  /** Read-modify-write rounds before giving up (default 10). */
  readonly maxRounds?: number
}

/** Whether `o` has siblings. */
export const hasSiblings = (o: TallyObject): o is TallySiblings => "siblings" in o

const utf8 = new TextEncoder()
const fromUtf8 = new TextDecoder()

/** A value's bytes as text (UTF-8). */
export const text = (value: Uint8Array): string => fromUtf8.decode(value)

const B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
const B64_INDEX = new Map([...B64].map((c, i) => [c, i]))

/** Standard base64 (the siblings' values) to bytes; undefined when it is not base64. */
export const decodeBase64 = (s: string): Uint8Array | undefined => {
  const clean = s.replace(/=+$/, "")
  if (clean.length % 4 === 1) return undefined
  const out = new Uint8Array(Math.floor((clean.length * 3) / 4))
  let bits = 0
  let acc = 0
  let j = 0
  for (const c of clean) {
    const v = B64_INDEX.get(c)
    if (v === undefined) return undefined
    acc = (acc << 6) | v
    bits += 6
    if (bits >= 8) {
      bits -= 8
      out[j++] = (acc >> bits) & 0xff
    }
  }
  return out
}

/** `bytes` as fetch takes a body: over an ArrayBuffer, copied when it is a SharedArrayBuffer's (or another realm's). */
const fetchable = (bytes: Uint8Array): Uint8Array<ArrayBuffer> => (bytes.buffer instanceof ArrayBuffer ? (bytes as Uint8Array<ArrayBuffer>) : new Uint8Array(bytes))

const toBody = (input: ValueInput): { readonly bytes: Uint8Array<ArrayBuffer>; readonly contentType: string } => {
  if (typeof input === "string") return { bytes: utf8.encode(input), contentType: "text/plain; charset=utf-8" }
  if (input instanceof Uint8Array) return { bytes: fetchable(input), contentType: "application/octet-stream" }
  const inner = toBody(input.value)
  return { bytes: inner.bytes, contentType: input.contentType ?? inner.contentType }
}

/** `input` as bytes, typed `contentType` unless it names its own. */
const withType = (input: ValueInput, contentType: string) => {
  const body = toBody(input)
  return typeof input === "object" && !(input instanceof Uint8Array) && input.contentType !== undefined ? body : { bytes: body.bytes, contentType }
}

/** What one key holds as a read saw it, tombstone context included (a write should carry it). */
type Read =
  | { readonly _tag: "value"; readonly object: TallyValue }
  | { readonly _tag: "siblings"; readonly object: TallySiblings }
  | { readonly _tag: "missing"; readonly context: string | undefined }

interface Answer {
  readonly status: number
  readonly headers: Headers
  readonly body: Uint8Array
  readonly node: string
}

const isObject = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null

const parseJson = (body: Uint8Array): unknown => {
  try {
    return JSON.parse(fromUtf8.decode(body)) as unknown
  } catch {
    return undefined
  }
}

const badAnswer = (node: string, status: number, message: string) =>
  new TallyError({ code: "bad_answer", status, node, message: `${node} answered ${status}: ${message}` })

/** A node's error answer as a TallyError with the registry's code. */
const errorOf = (a: Answer): TallyError => {
  const parsed = parseJson(a.body)
  if (isObject(parsed) && typeof parsed.error === "string") {
    const message = typeof parsed.message === "string" ? parsed.message : `HTTP ${a.status}`
    if (!isErrorCode(parsed.error)) return badAnswer(a.node, a.status, `unknown error code ${parsed.error}: ${message}`)
    return new TallyError({
      code: parsed.error,
      status: a.status,
      node: a.node,
      message,
      needed: typeof parsed.needed === "number" ? parsed.needed : undefined,
      got: typeof parsed.got === "number" ? parsed.got : undefined
    })
  }
  return badAnswer(a.node, a.status, "not an error of the API (is this a Tally node?)")
}

const abortReason = (signal: AbortSignal): unknown => signal.reason ?? new DOMException("aborted", "AbortError")

/** A Tally client over any nodes of one cluster. */
export class TallyClient {
  readonly #nodes: ReadonlyArray<string>
  readonly #retry: RetryPolicy
  readonly #attemptTimeoutMs: number
  readonly #fetch: typeof globalThis.fetch
  readonly #random: () => number
  readonly #sleep: (ms: number) => Promise<void>
  readonly #token: string | undefined
  readonly #now: () => number
  /** Where the next call starts, so that calls spread over the nodes. */
  #next = 0

  constructor(options: TallyClientOptions) {
    if (options.nodes.length === 0) throw new TypeError("TallyClient needs at least one node address")
    this.#nodes = options.nodes.map((node) => {
      let url: URL
      try {
        url = new URL(node)
      } catch {
        throw new TypeError(`not a node address: ${node}; give one such as http://127.0.0.1:8081`)
      }
      if ((url.protocol !== "http:" && url.protocol !== "https:") || url.pathname !== "/" || url.search !== "" || url.hash !== "") {
        throw new TypeError(`a node address is http(s)://host:port without a path; got ${node}`)
      }
      return url.origin
    })
    this.#retry = { ...DEFAULT_RETRY, ...options.retry }
    this.#attemptTimeoutMs = options.attemptTimeoutMs ?? 15_000
    // The global fetch, looked up per call: a bare reference loses its `this` in browsers.
    this.#fetch = options.fetch ?? ((input, init) => globalThis.fetch(input, init))
    this.#random = options.random ?? Math.random
    this.#sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)))
    this.#token = options.token
    this.#now = options.now ?? Date.now
  }

  /** The value of `key`, its siblings, or undefined when it has none. */
  async get(key: string, options: ReadOptions = {}): Promise<TallyObject | undefined> {
    const read = await this.#read(key, options)
    return read._tag === "missing" ? undefined : read.object
  }

  /** Stores `value` under `key`; with the `context` you read it replaces what you read, else it is a sibling. */
  async put(key: string, value: ValueInput, options: WriteOptions & { readonly context?: string; readonly contentType?: string } = {}): Promise<{ readonly context: string }> {
    const body = toBody(value)
    const headers: Record<string, string> = { "content-type": options.contentType ?? body.contentType }
    if (options.context !== undefined) headers["x-context"] = options.context
    const a = await this.#call("PUT", key, writeQuery(options), { headers, body: body.bytes, signal: options.signal })
    if (a.status !== 204 && a.status !== 200) throw errorOf(a)
    const context = a.headers.get("x-context")
    if (context === null) throw badAnswer(a.node, a.status, "a write answered without X-Context")
    return { context }
  }

  /**
   * Deletes `key`: what `context` covers, else what a read finds now (a delete without a
   * context would be concurrent with the value and remove nothing). Deleting a key that has
   * no value does nothing. `blind: true` sends the delete without a context.
   */
  async delete(key: string, options: WriteOptions & ReadOptions & { readonly context?: string; readonly blind?: boolean } = {}): Promise<void> {
    let context = options.context
    if (context === undefined && options.blind !== true) {
      const read = await this.#read(key, options)
      if (read._tag === "missing") return
      context = read.object.context
    }
    const headers: Record<string, string> = context === undefined ? {} : { "x-context": context }
    const a = await this.#call("DELETE", key, writeQuery(options), { headers, signal: options.signal })
    if (a.status !== 204 && a.status !== 200) throw errorOf(a)
  }

  /**
   * Reads `key`, merges its siblings with `resolve`, applies `fn` to the value (undefined when
   * there is none) and writes the result with the context it read, so that the write replaces
   * exactly what `fn` saw. A write made meanwhile by someone else is not lost: it becomes a
   * sibling that the next read resolves. When the write fails in a way worth retrying (503,
   * 504, no node), or the key has too many siblings, the round starts again from the read,
   * so `fn` and `resolve` must be pure functions of what they are given. `fn` returning
   * undefined writes nothing. Resolves to what was written.
   */
  async update(
    key: string,
    fn: (current: Uint8Array | undefined) => ValueInput | undefined | Promise<ValueInput | undefined>,
    options: UpdateOptions = {}
  ): Promise<{ readonly value: Uint8Array; readonly contentType: string; readonly context: string } | undefined> {
    const rounds = options.maxRounds ?? 10
    let last: TallyError | undefined
    for (let round = 1; round <= rounds; round++) {
      const read = await this.#read(key, options)
      let current: Uint8Array | undefined
      let context: string | undefined
      let contentType: string | undefined
      if (read._tag === "missing") {
        context = read.context
      } else if (read._tag === "value") {
        current = read.object.value
        contentType = read.object.contentType
        context = read.object.context
      } else {
        if (options.resolve === undefined) {
          throw new TallyError({ code: "unresolved_siblings", message: `${key} has ${read.object.siblings.length} siblings and update was given no resolve function` })
        }
        const resolved = await options.resolve(read.object.siblings)
        const types = new Set(read.object.siblings.map((s) => s.contentType))
        // A merge of siblings that share a type has that type, unless the resolver names one.
        const merged = types.size === 1 ? withType(resolved, [...types][0]!) : toBody(resolved)
        current = merged.bytes
        contentType = merged.contentType
        context = read.object.context
      }
      const next = await fn(current)
      if (next === undefined) return undefined
      // The value keeps the content type it had, unless fn names one.
      const body = contentType === undefined ? toBody(next) : withType(next, contentType)
      try {
        const written = await this.put(key, { value: body.bytes, contentType: body.contentType }, { ...options, ...(context === undefined ? {} : { context }) })
        return { value: body.bytes, contentType: body.contentType, context: written.context }
      } catch (e) {
        if (!(e instanceof TallyError) || !(e.retryable || e.code === "too_many_siblings")) throw e
        last = e
        await this.#sleep(backoffMs(this.#retry, round, this.#random))
      }
    }
    throw new TallyError({
      code: last?.code ?? "unreachable",
      status: last?.status,
      node: last?.node,
      message: `update of ${key} did not succeed in ${rounds} rounds: ${last?.message ?? "no answer"}`,
      attempts: last?.attempts
    })
  }

  async #read(key: string, options: ReadOptions): Promise<Read> {
    const a = await this.#call("GET", key, readQuery(options), { headers: {}, signal: options.signal })
    const context = a.headers.get("x-context") ?? undefined
    if (a.status === 200) {
      if (context === undefined) throw badAnswer(a.node, 200, "a value came without X-Context")
      return { _tag: "value", object: { value: a.body, contentType: a.headers.get("content-type") ?? "application/octet-stream", context } }
    }
    if (a.status === 300) {
      const parsed = parseJson(a.body)
      if (!isObject(parsed) || typeof parsed.context !== "string" || !Array.isArray(parsed.siblings)) throw badAnswer(a.node, 300, "siblings not as the API describes them")
      const siblings = parsed.siblings.map((s: unknown): TallySibling => {
        const value = isObject(s) && typeof s.value === "string" ? decodeBase64(s.value) : undefined
        if (!isObject(s) || value === undefined) throw badAnswer(a.node, 300, "a sibling without a base64 value")
        return {
          value,
          contentType: typeof s.contentType === "string" ? s.contentType : "application/octet-stream",
          lastModified: new Date(typeof s.lastModified === "string" ? s.lastModified : 0)
        }
      })
      return { _tag: "siblings", object: { siblings, context: parsed.context } }
    }
    if (a.status === 404) {
      const e = errorOf(a)
      if (e.code === "not_found") return { _tag: "missing", context }
      throw e
    }
    throw errorOf(a)
  }

  /**
   * One request, tried on the nodes in turn: another node after a retryable answer (503,
   * 504) or a connection error, after a backoff. Any other answer is returned as it is.
   */
  async #call(
    method: string,
    key: string,
    query: URLSearchParams,
    init: { readonly headers: Record<string, string>; readonly body?: Uint8Array<ArrayBuffer>; readonly signal?: AbortSignal | undefined }
  ): Promise<Answer> {
    const keyBytes = utf8.encode(key).length
    if (keyBytes < 1 || keyBytes > 1024) throw new TallyError({ code: "bad_request", message: `a key is 1 to 1024 bytes of UTF-8; got ${keyBytes} bytes` })
    const qs = query.toString()
    const path = `/kv/${encodeURIComponent(key)}${qs === "" ? "" : `?${qs}`}`
    const headers = this.#token === undefined ? init.headers : { ...init.headers, authorization: `Bearer ${this.#token}` }
    const started = this.#now()
    const first = this.#next++ % this.#nodes.length
    const attempts: Array<Attempt> = []
    /** Per node, the time before which it asked (Retry-After on a 503) not to be tried again. */
    const notBefore = new Map<string, number>()
    const nodeAt = (attempt: number) => this.#nodes[(first + attempt - 1) % this.#nodes.length]!
    for (let attempt = 1; ; attempt++) {
      const node = nodeAt(attempt)
      let failure: TallyError
      try {
        const a = await this.#attempt(node, method, path, headers, init.body, init.signal)
        if (!isRetryableStatus(a)) return a
        failure = errorOf(a)
        attempts.push({ node, reason: failure.code })
        if (a.status === 503) {
          const now = this.#now()
          const wait = retryAfterMs(a.headers.get("retry-after"), now)
          if (wait !== undefined) notBefore.set(node, now + wait)
        }
      } catch (e) {
        if (init.signal?.aborted === true) throw abortReason(init.signal)
        const reason = connectionReason(e)
        attempts.push({ node, reason })
        failure = new TallyError({ code: "unreachable", node, message: `cannot reach ${node}: ${reason}` })
      }
      // The backoff with jitter, or longer when the next node said Retry-After; a wait that
      // would pass the deadline is not waited: the call fails now instead.
      const backoff = backoffMs(this.#retry, attempt, this.#random)
      const delay = Math.max(backoff, (notBefore.get(nodeAt(attempt + 1)) ?? 0) - this.#now())
      if (attempt >= this.#retry.attempts || this.#now() - started + delay >= this.#retry.deadlineMs) {
        const unreachable = attempts.every((x) => !isErrorCode(x.reason))
        throw new TallyError({
          code: unreachable ? "unreachable" : failure.code,
          status: failure.status,
          node: failure.node,
          needed: failure.needed,
          got: failure.got,
          message: unreachable
            ? `no node answered ${method} ${path} in ${attempts.length} attempts: ${attempts.map((x) => `${x.node}: ${x.reason}`).join("; ")}`
            : `${failure.message} (after ${attempts.length} attempts: ${attempts.map((x) => `${x.node}: ${x.reason}`).join("; ")})`,
          attempts
        })
      }
      await this.#sleep(delay)
      if (init.signal?.aborted === true) throw abortReason(init.signal)
    }
  }

  /** One attempt on one node, its body read in full (so the connection goes back to the pool). */
  async #attempt(node: string, method: string, path: string, headers: Record<string, string>, body: Uint8Array<ArrayBuffer> | undefined, signal: AbortSignal | undefined): Promise<Answer> {
    const controller = new AbortController()
    const timer = setTimeout(() => controller.abort(new DOMException(`no answer in ${this.#attemptTimeoutMs} ms`, "TimeoutError")), this.#attemptTimeoutMs)
    const onAbort = () => controller.abort(signal?.reason)
    signal?.addEventListener("abort", onAbort, { once: true })
    try {
      const res = await this.#fetch(`${node}${path}`, { method, headers, ...(body === undefined ? {} : { body }), signal: controller.signal })
      return { status: res.status, headers: res.headers, body: new Uint8Array(await res.arrayBuffer()), node }
    } finally {
      clearTimeout(timer)
      signal?.removeEventListener("abort", onAbort)
    }
  }
}

const isRetryableStatus = (a: Answer): boolean => {
  if (a.status !== 503 && a.status !== 504) return false
  const parsed = parseJson(a.body)
  // A 503 or 504 from something other than a node (a proxy) is worth another node too.
  return !(isObject(parsed) && typeof parsed.error === "string") || isRetryableCode(parsed.error)
}

/** Why a fetch failed, as briefly as the platform tells it. */
const connectionReason = (e: unknown): string => {
  if (isObject(e) && (e.name === "TimeoutError" || e.name === "AbortError")) return typeof e.message === "string" && e.message !== "" ? e.message : "no answer in time"
  const cause = isObject(e) ? e.cause : undefined
  if (isObject(cause) && typeof cause.code === "string") return cause.code
  if (isObject(cause) && typeof cause.message === "string") return cause.message
  return e instanceof Error ? e.message : String(e)
}

const quorum = (v: number | "quorum" | "all"): string => String(v)

/** The query of a read (`r`) or a write (`w`): the quorum, sloppy and timeout when given. */
const quorumQuery = (name: "r" | "w", count: number | "quorum" | "all" | undefined, o: { readonly sloppy?: boolean | undefined; readonly timeout?: number | undefined }): URLSearchParams => {
  const q = new URLSearchParams()
  if (count !== undefined) q.set(name, quorum(count))
  if (o.sloppy !== undefined) q.set("sloppy", String(o.sloppy))
  if (o.timeout !== undefined) q.set("timeout", String(o.timeout))
  return q
}

const readQuery = (o: ReadOptions): URLSearchParams => quorumQuery("r", o.r, o)
const writeQuery = (o: WriteOptions): URLSearchParams => quorumQuery("w", o.w, o)
