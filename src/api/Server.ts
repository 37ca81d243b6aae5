/**
 * The client HTTP API of a node (Fastify), exactly as ../shared/CONTRACT.md states it:
 * /kv/:key with causal contexts and siblings, /ping, /health, /metrics, /admin/cluster and,
 * when enabled, /admin/faults. Bodies of any content type are kept as raw bytes. Every
 * failure becomes `{"error": code, "message": ...}` with the code's status (src/Errors.ts);
 * no input is answered with a 500.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from "fastify"
import { Cause, Effect, Exit } from "effect"
import type { Coordinator, ReadResult } from "../coordinator/Coordinator.ts"
import { siblingWarning, type Coordinated } from "../replica/Replica.ts"
import { DEFAULTS } from "../config/Settings.ts"
import { ApiError, apiError } from "../Errors.ts"
import type { Metrics } from "../metrics/Metrics.ts"
import * as Dvv from "../versions/Dvv.ts"
import { liveSiblings, type Sibling } from "../versions/Sibling.ts"
import { registerAdmission } from "./Admission.ts"
import { registerAuth, type AuthConfig } from "./Auth.ts"
import { type CorsOrigins, registerCors } from "./Cors.ts"
import type { HttpsFiles } from "./Https.ts"
import { parseContentType, parseContext, parseKey, parseQuorum, QUERY_SCHEMA, type KvQuery, type RequestDefaults } from "./Request.ts"
import { registerDashboard } from "../ui/Dashboard.ts"
import { type KeysDeps, registerKeys } from "./Keys.ts"
import { registerOpenApi } from "./OpenApi.ts"

/** What the API needs from the node. */
export interface ApiDeps {
  readonly nodeId: string
  /** Runs a coordinator effect (the node's runtime). */
  readonly run: <A>(f: (c: Coordinator["Service"]) => Effect.Effect<A, ApiError>) => Promise<Exit.Exit<A, ApiError>>
  /** The coordinator's plain lane (Coordinator.now): no Effect runtime per request. Absent: always `run`. */
  readonly plain?: Coordinator["Service"]["now"] | undefined
  /** Current request defaults and limits (live settings). */
  readonly settings: () => RequestDefaults & { readonly maxValueBytes: number }
  readonly metrics: Metrics
  /**
   * GET /health: `status` "ok" answers 200; anything else ("degraded", "joining") answers
   * 503 with the `reason`. Other fields are figures.
   */
  readonly health: () => { readonly status: string; readonly reason?: string } & Record<string, unknown>
  /** Membership changes (POST /admin/leave, /admin/remove) and transfers (GET /admin/transfers). */
  readonly admin: {
    readonly leave: () => Promise<ApiError | undefined>
    readonly remove: (node: string) => Promise<ApiError | undefined>
    readonly transfers: () => Promise<ReadonlyArray<unknown>>
    /** What this node itself stores for a key (GET /admin/local/:key), for operators and tests. */
    readonly local: (key: string) => Promise<Record<string, unknown>>
    /** Anti-entropy per partition (GET /admin/aae). */
    readonly aae: () => Record<string, unknown>
    /** Starts a compaction now, reaping what may be reaped (POST /admin/compact). */
    readonly compact: () => void
  }
  /** Fault injection, when the node was started with --enable-fault-injection. */
  readonly faults?: { readonly set: (drop: ReadonlyArray<string>) => void; readonly get: () => ReadonlyArray<string> }
  /** The node's logger (pino), shared with the Effect runtime. */
  readonly logger: Logger
  /** Key listing (GET /kv); absent: the route is not served. */
  readonly keys?: KeysDeps
  /** Token files of /admin/* and /kv (Auth.ts); absent: admin from loopback only, kv open. */
  readonly auth?: AuthConfig
  /** Origins whose browser pages may call /kv (`--cors-origin`); undefined: no CORS headers. */
  readonly cors?: CorsOrigins
  /** Certificate and key: the API serves HTTPS. */
  readonly https?: HttpsFiles | undefined
  /** Requests served at once (Admission.ts); absent: DEFAULTS.maxRequestsInFlight. */
  readonly maxRequestsInFlight?: number | undefined
  /**
   * The node's wall clock, ms: a write's `lastModified`. The node passes its Effect Clock's,
   * so the simulator's per-node skew reaches what clients see; absent: Date.now.
   */
  readonly now?: (() => number) | undefined
}

type Logger = FastifyBaseLogger

/** Hard ceiling on any request body, whatever the live value limit says. */
const BODY_CEILING = 1 << 30
/** Longest accepted path parameter: a 1024-byte key, every byte percent-encoded. */
const MAX_PARAM = 1024 * 3 + 16

const reqContext = (req: FastifyRequest) => req.headers["x-context"]

type RequestWithType = FastifyRequest & { clientContentType: string | undefined }

/** A request's body parsed as JSON, or undefined when it is not JSON. */
const jsonBody = (req: FastifyRequest): unknown => {
  try {
    return JSON.parse((req.body as Buffer | undefined)?.toString("utf8") ?? "") as unknown
  } catch {
    return undefined
  }
}

const sendError = (reply: FastifyReply, e: ApiError) => reply.code(e.status).type("application/json").send(e.toBody())

/** One debug line per answered request (method, path, status, ms); nothing at info and above. */
class RequestLog extends LogController {
  override incomingRequest(): void {}
  override routeNotFound(): void {}
  override requestCompleted(error: Error | null | undefined, req: FastifyRequest, reply: FastifyReply): void {
    const line = { method: req.method, url: req.url, status: reply.statusCode, ms: Math.round(reply.elapsedTime * 10) / 10 }
    if (error) reply.log.error({ ...line, err: error }, "request failed")
    else reply.log.debug(line, "request")
  }
}

/** A route's path as a pattern for concrete paths: `:param` is one segment, `*` the rest. */
const pathPattern = (url: string): RegExp =>
  new RegExp(`^${url.split("/").map((seg) => (seg.startsWith(":") ? "[^/]+" : seg === "*" ? ".*" : seg.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))).join("/")}/?$`)

/** Builds the Fastify app (not listening). */
export const buildServer = (deps: ApiDeps): FastifyInstance => {
  const now = deps.now ?? Date.now
  const app = Fastify({
    // HTTPS changes only the server underneath, not the app's routes or types: typed as {} so
    // Fastify's overloads keep the plain-HTTP instance type the rest of the code is written to.
    ...(deps.https === undefined ? {} : ({ https: { cert: deps.https.cert, key: deps.https.key } } as {})),
    loggerInstance: deps.logger,
    routerOptions: { maxParamLength: MAX_PARAM },
    bodyLimit: BODY_CEILING,
    forceCloseConnections: "idle",
    return503OnClosing: true,
    // Per-request lines at debug only: at info they would cost more than the request.
    logController: new RequestLog(),
    frameworkErrors: (err, _req, reply) =>
      sendError(reply, apiError("bad_request", `malformed request: ${err.message}; keys are UTF-8, URL-encoded in the path`)),
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, allErrors: false } }
  })
  // Before any route: it documents (and attaches the schemas of) every route declared after it.
  registerOpenApi(app)

  // Who may connect, before anything else reads the request: the in-flight bound, then tokens.
  const maxInFlight = deps.maxRequestsInFlight ?? DEFAULTS.maxRequestsInFlight
  registerAdmission(app, () => maxInFlight, () => deps.metrics.limitHit("http_in_flight"))
  // Before the token check: a browser's preflight carries no token.
  if (deps.cors !== undefined) registerCors(app, deps.cors)
  registerAuth(app, deps.auth ?? {}, deps.logger)

  // Values are bytes whatever their type, even one Fastify could not parse as a media type:
  // the client's header is kept aside for storage and the body is read as plain bytes.
  app.decorateRequest("clientContentType", undefined)
  app.addHook("onRequest", (req, _reply, done) => {
    const ct = req.headers["content-type"]
    ;(req as RequestWithType).clientContentType = ct
    if (ct !== undefined) req.headers["content-type"] = "application/octet-stream"
    done()
  })
  // The size limit is live, so it is checked here rather than by Fastify's bodyLimit.
  app.removeAllContentTypeParsers()
  app.addContentTypeParser("*", (req, payload, done) => {
    const limit = deps.settings().maxValueBytes
    const declared = Number(req.headers["content-length"] ?? 0)
    const tooLarge = (n: number) => apiError("value_too_large", `the value is ${n} bytes or more; the limit is ${limit}`)
    if (declared > limit) {
      payload.resume()
      return done(tooLarge(declared), undefined)
    }
    const chunks: Buffer[] = []
    let size = 0
    let failed = false
    payload.on("data", (c: Buffer) => {
      if (failed) return
      size += c.length
      if (size > limit) {
        failed = true
        done(tooLarge(size), undefined)
        return
      }
      chunks.push(c)
    })
    payload.on("end", () => {
      if (!failed) done(null, Buffer.concat(chunks, size))
    })
    payload.on("error", (err) => {
      if (!failed) {
        failed = true
        done(apiError("bad_request", `the request body could not be read: ${err.message}`), undefined)
      }
    })
  })

  app.setErrorHandler((err: unknown, req, reply) => {
    if (err instanceof ApiError) return sendError(reply, err)
    const e = err as { validation?: unknown; statusCode?: number; message?: string; code?: string }
    if (e.validation !== undefined) {
      return sendError(reply, apiError("bad_request", `invalid request: ${e.message ?? "bad parameter"}; query parameters are r, w (1..N, quorum, all), sloppy (true|false), timeout (ms)`))
    }
    if (e.statusCode === 413) return sendError(reply, apiError("value_too_large", e.message ?? "the request body is too large"))
    if (e.statusCode !== undefined && e.statusCode >= 400 && e.statusCode < 500) return sendError(reply, apiError("bad_request", e.message ?? "bad request"))
    if (e.statusCode === 503) return sendError(reply, apiError("unavailable", "the node is shutting down"))
    req.log.error({ err }, "unexpected error")
    return sendError(reply, apiError("internal_error", "an unexpected error occurred; it is a bug, please report it with the node's log"))
  })

  // Which methods each route path answers, so a known path asked with another method is a 405.
  const routeMethods: Array<{ readonly pattern: RegExp; readonly methods: Set<string> }> = []
  app.addHook("onRoute", (route) => {
    const methods = [route.method].flat()
    const known = routeMethods.find((r) => r.pattern.source === pathPattern(route.url).source)
    if (known !== undefined) for (const m of methods) known.methods.add(m)
    else routeMethods.push({ pattern: pathPattern(route.url), methods: new Set(methods) })
  })
  app.setNotFoundHandler((req, reply) => {
    const path = req.url.split("?")[0] ?? ""
    const allowed = new Set(routeMethods.filter((r) => r.pattern.test(path)).flatMap((r) => [...r.methods]))
    if (allowed.size > 0) {
      const allow = [...allowed].join(", ")
      return sendError(reply.header("allow", allow), apiError("method_not_allowed", `${path} does not answer ${req.method}; it answers ${allow}`))
    }
    return sendError(reply, apiError("not_found", `no route ${req.method} ${path}`))
  })

  app.addHook("onResponse", (req, reply, done) => {
    const op = (req.routeOptions.config as { op?: string } | undefined)?.op ?? "other"
    deps.metrics.request(op, reply.statusCode, reply.elapsedTime / 1000)
    done()
  })

  /** Runs a coordinator call; an ApiError becomes the reply, a defect a 500. */
  const call = async <A>(reply: FastifyReply, f: (c: Coordinator["Service"]) => Effect.Effect<A, ApiError>): Promise<A | undefined> => {
    const exit = await deps.run(f)
    if (Exit.isSuccess(exit)) return exit.value
    const failure = exit.cause.reasons.find(Cause.isFailReason)
    if (failure !== undefined) {
      sendError(reply, failure.error)
      return undefined
    }
    if (exit.cause.reasons.every(Cause.isInterruptReason)) {
      sendError(reply, apiError("unavailable", "the node is shutting down; retry on another node"))
      return undefined
    }
    throw Cause.squash(exit.cause)
  }

  const kv = { schema: { querystring: QUERY_SCHEMA } }

  app.get<{ Params: { key: string }; Querystring: KvQuery }>("/kv/:key", { ...kv, config: { op: "get" } }, async (req, reply) => {
    const key = parseKey(req.params.key)
    if (key instanceof ApiError) return sendError(reply, key)
    const q = parseQuorum("r", req.query, deps.settings())
    if (q instanceof ApiError) return sendError(reply, q)
    let res: ReadResult | undefined
    if (deps.plain === undefined) res = await call(reply, (c) => c.get(key, q))
    else {
      try {
        const r = deps.plain.get(key, q)
        res = r instanceof Promise ? await r : r
      } catch (e) {
        if (e instanceof ApiError) return sendError(reply, e)
        throw e
      }
    }
    if (res === undefined) return reply
    const o = res.object
    if (o === undefined) return sendError(reply, apiError("not_found", `no value for key ${JSON.stringify(key)}`))
    const context = Dvv.encodeContext(Dvv.join(o))
    const live = liveSiblings(o)
    reply.header("x-context", context)
    if (live.length === 0) return sendError(reply, apiError("not_found", `key ${JSON.stringify(key)} was deleted`))
    if (live.length === 1) {
      const s = live[0]!
      // A stored value is served with the type its writer gave, text/html included: sandboxed
      // and not sniffed, so a page stored here runs in an opaque origin and cannot use this
      // node's own origin (and the loopback trust of /admin/*) in a visitor's browser.
      return reply.code(200).header("content-type", s.contentType).header("content-security-policy", "sandbox").header("x-content-type-options", "nosniff")
        .header("last-modified", new Date(s.lastModified).toUTCString()).send(Buffer.from(s.value.buffer, s.value.byteOffset, s.value.length))
    }
    return reply.code(300).type("application/json").send({
      context,
      siblings: live.map((s) => ({
        value: Buffer.from(s.value.buffer, s.value.byteOffset, s.value.length).toString("base64"),
        contentType: s.contentType,
        lastModified: new Date(s.lastModified).toISOString()
      }))
    })
  })

  const write = async (req: FastifyRequest<{ Params: { key: string }; Querystring: KvQuery }>, reply: FastifyReply, deleted: boolean) => {
    const key = parseKey(req.params.key)
    if (key instanceof ApiError) return sendError(reply, key)
    const q = parseQuorum("w", req.query, deps.settings())
    if (q instanceof ApiError) return sendError(reply, q)
    const context = parseContext(reqContext(req))
    if (context instanceof ApiError) return sendError(reply, context)
    const contentType = deleted ? "" : parseContentType((req as RequestWithType).clientContentType)
    if (contentType instanceof ApiError) return sendError(reply, contentType)
    const body = deleted ? Buffer.alloc(0) : ((req.body as Buffer | undefined) ?? Buffer.alloc(0))
    const sibling: Sibling = { value: body, contentType, lastModified: now(), deleted }
    let res: Coordinated | undefined
    if (deps.plain === undefined) res = await call(reply, (c) => c.put(key, context, sibling, q))
    else {
      try {
        const r = await deps.plain.put(key, context, sibling, q)
        // The replica's Effect path logs this warning itself; the plain lane has no logger there.
        if (r.warn) req.log.warn(siblingWarning(key, r.object))
        res = r
      } catch (e) {
        if (e instanceof ApiError) return sendError(reply, e)
        throw e
      }
    }
    if (res === undefined) return reply
    const n = Dvv.size(res.object)
    deps.metrics.object(n, res.bytes)
    if (n >= 25) deps.metrics.siblingWarning()
    return reply.code(204).header("x-context", Dvv.encodeContext(res.context)).send()
  }

  app.put<{ Params: { key: string }; Querystring: KvQuery }>("/kv/:key", { ...kv, config: { op: "put" } }, (req, reply) => write(req, reply, false))
  app.delete<{ Params: { key: string }; Querystring: KvQuery }>("/kv/:key", { ...kv, config: { op: "delete" } }, (req, reply) => write(req, reply, true))

  if (deps.keys !== undefined) registerKeys(app, deps.keys)
  registerDashboard(app)

  app.get("/ping", { config: { op: "ping" } }, async (_req, reply) => reply.type("text/plain").send("OK"))

  app.get("/health", { config: { op: "health" } }, async (_req, reply) => {
    const h = deps.health()
    return reply.code(h.status === "ok" ? 200 : 503).send({ node: deps.nodeId, ...h })
  })

  app.get("/metrics", { config: { op: "metrics" } }, async (_req, reply) =>
    reply.type(deps.metrics.registry.contentType).send(await deps.metrics.scrape())
  )

  app.get("/admin/cluster", { config: { op: "cluster" } }, async (_req, reply) => {
    const view = await call(reply, (c) => c.cluster)
    return view === undefined ? reply : view
  })

  app.get("/admin/transfers", { config: { op: "transfers" } }, async () => ({ transfers: await deps.admin.transfers() }))
  app.get<{ Params: { key: string } }>("/admin/local/:key", { config: { op: "local" } }, async (req, reply) => {
    const key = parseKey(req.params.key)
    if (key instanceof ApiError) return sendError(reply, key)
    return deps.admin.local(key)
  })
  app.get("/admin/aae", { config: { op: "aae" } }, async () => deps.admin.aae())
  app.post("/admin/compact", { config: { op: "compact" } }, async (_req, reply) => {
    deps.admin.compact()
    return reply.code(202).send({ node: deps.nodeId, status: "compacting", message: "a full compaction runs now; it reaps the tombstones that may be reaped" })
  })
  app.post("/admin/leave", { config: { op: "leave" } }, async (_req, reply) => {
    const err = await deps.admin.leave()
    if (err !== undefined) return sendError(reply, err)
    return reply.code(202).send({ node: deps.nodeId, status: "leaving", message: "this node hands its partitions to their new owners, then leaves the ring and exits" })
  })
  app.post("/admin/remove", { config: { op: "remove" } }, async (req, reply) => {
    const body = jsonBody(req)
    if (body === undefined) return sendError(reply, apiError("bad_request", 'send JSON {"node": "<id>"}'))
    const node = (body as { node?: unknown } | null)?.node
    if (typeof node !== "string" || !Dvv.NODE_ID.test(node)) return sendError(reply, apiError("bad_request", 'send JSON {"node": "<id>"} with a valid node id'))
    const err = await deps.admin.remove(node)
    if (err !== undefined) return sendError(reply, err)
    return reply.code(202).send({ node, status: "removing", message: `${node}'s partitions are re-replicated from the surviving replicas` })
  })

  const faults = deps.faults
  if (faults !== undefined) {
    app.get("/admin/faults", { config: { op: "faults" } }, async () => ({ drop: faults.get() }))
    app.post("/admin/faults", { config: { op: "faults" } }, async (req, reply) => {
      const body = jsonBody(req)
      if (body === undefined) return sendError(reply, apiError("bad_request", 'send JSON {"drop": ["<node id>", ...]}'))
      const drop = (body as { drop?: unknown } | null)?.drop
      if (!Array.isArray(drop) || !drop.every((d) => typeof d === "string" && Dvv.NODE_ID.test(d))) {
        return sendError(reply, apiError("bad_request", 'send JSON {"drop": ["<node id>", ...]} with valid node ids'))
      }
      faults.set(drop)
      return { drop: faults.get() }
    })
  }

  return app
}
