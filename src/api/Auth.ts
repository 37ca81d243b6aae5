/**
 * Who may use the client API (../shared/CONTRACT.md "Who may connect"). `/admin/*` needs
 * `Authorization: Bearer <token>` when the node has `--admin-token-file`, and otherwise
 * answers loopback clients only; `/kv` and `/kv/*` need a token when it has
 * `--client-token-file`. `/ping`, `/health`, `/metrics` and `/openapi.json` stay open, as
 * Riak's `/ping` and `/stats` are: load balancers and Prometheus probe them without
 * credentials, and they change nothing. A refusal is `401 unauthorized`.
 *
 * A token file holds one token a line (blank lines and `#` comments ignored), each at least
 * 16 characters; any of them is accepted, so a token is rotated by adding the new one, moving
 * the clients, then removing the old. The file is polled and re-read when it changes: a file
 * that became unreadable or empty keeps the tokens it had, with a warning.
 */
import * as crypto from "node:crypto"
import * as fs from "node:fs"
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from "fastify"
import { apiError } from "../Errors.ts"

/** Shortest token accepted: a guessable token is no protection. */
export const MIN_TOKEN_LENGTH = 16
/** How often a token file is checked for changes. */
export const TOKEN_POLL_MS = 1000

/** Where the tokens come from; an absent file: that class of routes needs none. */
export interface AuthConfig {
  readonly adminTokenFile?: string | undefined
  readonly clientTokenFile?: string | undefined
  /** How often to look for a changed token file (tests shorten it). */
  readonly pollMs?: number
}

/** A token file that cannot be used, named, with what to do. */
export class TokenFileError extends Error {}

/** The tokens of a token file's text; fails with the reason when there is none or one is too short. */
export const parseTokens = (file: string, text: string): ReadonlyArray<string> => {
  const tokens = text.split(/\r?\n/).map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"))
  if (tokens.length === 0) throw new TokenFileError(`token file ${file} holds no token; write one token (at least ${MIN_TOKEN_LENGTH} characters) on a line`)
  const short = tokens.findIndex((t) => t.length < MIN_TOKEN_LENGTH)
  if (short >= 0) throw new TokenFileError(`token ${short + 1} in ${file} has ${tokens[short]!.length} characters; a token needs at least ${MIN_TOKEN_LENGTH} (e.g. openssl rand -hex 32)`)
  if (tokens.some((t) => /\s/.test(t))) throw new TokenFileError(`a token in ${file} contains white space; tokens are one word a line`)
  return tokens
}

/** Reads a token file; throws a TokenFileError that says why it cannot be used. */
export const readTokenFile = (file: string): ReadonlyArray<string> => {
  let text: string
  try {
    text = fs.readFileSync(file, "utf8")
  } catch (e) {
    const code = (e as { code?: unknown }).code
    throw new TokenFileError(`cannot read token file ${file}: ${code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : String(e)}`)
  }
  return parseTokens(file, text)
}

const digest = (s: string): Buffer => crypto.createHash("sha256").update(s).digest()

/**
 * Whether `given` is one of `tokens`, in time that does not depend on where they differ:
 * both sides are hashed to 32 bytes first, so even their lengths do not leak.
 */
export const tokenMatches = (tokens: ReadonlyArray<Buffer>, given: string): boolean => {
  const g = digest(given)
  let ok = false
  for (const t of tokens) ok = crypto.timingSafeEqual(t, g) || ok
  return ok
}

/** Whether a client address is loopback: 127.0.0.0/8, ::1, or either mapped into IPv6. */
export const isLoopbackAddress = (addr: string | undefined): boolean =>
  addr !== undefined && (addr === "::1" || /^(::ffff:)?127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/i.test(addr))

/** The routes a request addresses, for the check. */
export type RouteClass = "admin" | "kv" | "open"

export const routeClass = (url: string): RouteClass => {
  const path = url.split("?")[0] ?? ""
  if (path === "/admin" || path.startsWith("/admin/")) return "admin"
  if (path === "/kv" || path.startsWith("/kv/")) return "kv"
  return "open"
}

/** A token file's tokens (as digests), re-read when the file changes. */
class TokenSet {
  private digests: ReadonlyArray<Buffer>
  private readonly listener: (cur: fs.Stats, prev: fs.Stats) => void
  readonly file: string

  constructor(file: string, pollMs: number, log: FastifyBaseLogger) {
    this.file = file
    this.digests = readTokenFile(file).map(digest)
    this.listener = (cur, prev) => {
      if (cur.mtimeMs === prev.mtimeMs && cur.size === prev.size && cur.ino === prev.ino) return
      try {
        this.digests = readTokenFile(file).map(digest)
        log.info(`token file ${file} re-read: ${this.digests.length} token(s) accepted`)
      } catch (e) {
        log.warn(`${(e as Error).message}; the tokens read before stay in force`)
      }
    }
    fs.watchFile(file, { interval: pollMs, persistent: false }, this.listener)
  }

  matches(given: string): boolean {
    return tokenMatches(this.digests, given)
  }

  close(): void {
    fs.unwatchFile(this.file, this.listener)
  }
}

const STRICTNESS: Record<RouteClass, number> = { open: 0, kv: 1, admin: 2 }

/**
 * The class of what a request will reach: the strictest of the route Fastify matched and the
 * percent-decoded path. The raw URL alone is not enough: the router decodes `/%61dmin/leave`
 * to `/admin/leave` and runs that route, which a check of the raw text classed as open.
 */
const classOf = (req: FastifyRequest): RouteClass => {
  const raw = routeClass(req.url)
  const matched = req.routeOptions.url === undefined ? raw : routeClass(req.routeOptions.url)
  let cls = STRICTNESS[matched] > STRICTNESS[raw] ? matched : raw
  // Every request passes here: decode only a path that has escapes in it.
  if (req.url.includes("%")) {
    try {
      const decoded = routeClass(decodeURIComponent(req.url.split("?")[0] ?? ""))
      if (STRICTNESS[decoded] > STRICTNESS[cls]) cls = decoded
    } catch {
      // Malformed escapes: the router refuses the request (400) before any route runs.
    }
  }
  return cls
}

/** Whether a request's Host names the node by an IP address or a loopback name, not a DNS name a page could rebind to 127.0.0.1. */
const hostIsAddress = (req: FastifyRequest): boolean => {
  const host = req.headers.host
  if (host === undefined) return true
  try {
    const h = new URL(`http://${host}`).hostname
    return isLoopbackName(h) || /^\d{1,3}(\.\d{1,3}){3}$/.test(h) || h.startsWith("[")
  } catch {
    return false
  }
}

/** Whether a host name (from a URL) names this machine's loopback: `localhost`, 127.0.0.0/8, `[::1]`. */
const isLoopbackName = (hostname: string): boolean =>
  hostname === "localhost" || hostname.endsWith(".localhost") || isLoopbackAddress(hostname.replace(/^\[(.*)\]$/, "$1"))

/**
 * Whether a browser sent the request for a page of another origin. Without an admin token,
 * /admin/* trusts a loopback client; a browser on the node's host is one, so any web page its
 * user opens could otherwise POST /admin/leave or /admin/remove to 127.0.0.1 (a no-body POST
 * needs no CORS preflight). Browsers mark such requests: `Sec-Fetch-Site` other than
 * same-origin or none, and an `Origin` header on every POST. An Origin must be this very host
 * and a loopback name, which also turns away DNS rebinding (a page of evil.example whose name
 * now resolves to 127.0.0.1 is same-origin to the browser, but its Origin names evil.example).
 * Clients that are not browsers (curl, tally admin) send neither header.
 */
const fromForeignPage = (req: FastifyRequest): boolean => {
  const site = req.headers["sec-fetch-site"]
  if (site !== undefined && site !== "same-origin" && site !== "none") return true
  const origin = req.headers.origin
  if (origin === undefined) return false
  try {
    const u = new URL(origin)
    return u.host !== req.headers.host || !isLoopbackName(u.hostname)
  } catch {
    return true // "null" (a sandboxed page or a file) or garbage
  }
}

const bearer = (req: FastifyRequest): string | undefined => {
  const h = req.headers.authorization
  const m = typeof h === "string" ? /^Bearer[ ]+(\S+)\s*$/i.exec(h) : null
  return m?.[1]
}

/**
 * Registers the check on `app` (an onRequest hook, before any body is read). Reads the token
 * files now: a missing or unusable one throws a TokenFileError, so the node does not start.
 */
export const registerAuth = (app: FastifyInstance, config: AuthConfig, log: FastifyBaseLogger): void => {
  const pollMs = config.pollMs ?? TOKEN_POLL_MS
  const admin = config.adminTokenFile === undefined ? undefined : new TokenSet(config.adminTokenFile, pollMs, log)
  const client = config.clientTokenFile === undefined ? undefined : new TokenSet(config.clientTokenFile, pollMs, log)
  app.addHook("onClose", (_app, done) => {
    admin?.close()
    client?.close()
    done()
  })
  const refuse = (reply: FastifyReply, message: string) => {
    const e = apiError("unauthorized", message)
    return reply.code(e.status).header("www-authenticate", 'Bearer realm="tally"').type("application/json").send(e.toBody())
  }
  app.addHook("onRequest", (req, reply, done) => {
    const cls = classOf(req)
    if (cls === "open") return done()
    const tokens = cls === "admin" ? admin : client
    if (tokens === undefined) {
      if (cls === "kv") return done()
      if (isLoopbackAddress(req.socket.remoteAddress)) {
        if (!fromForeignPage(req) && hostIsAddress(req)) return done()
        return refuse(reply, "admin routes refuse requests from browser pages of other origins, and requests whose Host is a DNS name other than localhost (DNS rebinding), when the node has no --admin-token-file: a web page must not drive the node through its visitor's loopback; use tally admin or curl with the node's address, or start the node with --admin-token-file")
      }
      return refuse(reply, "admin routes answer loopback clients only: this node has no --admin-token-file; ask from the node's own host, or start it with one and send Authorization: Bearer <token>")
    }
    const given = bearer(req)
    if (given === undefined) return refuse(reply, `${cls === "admin" ? "/admin/*" : "/kv"} needs Authorization: Bearer <token> (the node's --${cls === "admin" ? "admin" : "client"}-token-file)`)
    if (!tokens.matches(given)) return refuse(reply, "the bearer token is not one this node accepts")
    done()
  })
}
