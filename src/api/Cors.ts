/**
 * CORS for the client API, so that tally/client can run in a browser page served from another
 * origin than the nodes (docs/client.md). Off unless `--cors-origin` names origins (or `*`):
 * without it a node sends no CORS headers and browsers keep other origins' pages from reading
 * its answers. Only `/kv` takes part: the admin routes stay same-origin whatever the flag,
 * so a page cannot drive membership changes from a browser on an operator's machine.
 *
 * @fastify/cors does the protocol (preflights answered in the onRequest hook, before the
 * token check, which a preflight cannot pass: browsers send no Authorization on it; Vary:
 * Origin for a list of origins). Registered before the auth hook for that reason.
 */
import fastifyCors, { type FastifyCorsOptions } from "@fastify/cors"
import type { FastifyInstance } from "fastify"

/** `*`, or the allowed origins. */
export type CorsOrigins = "*" | ReadonlyArray<string>

/** Parses the `--cors-origin` value (checked by Settings' pattern): `*`, or origins separated by commas. */
export const parseCorsOrigins = (value: string): CorsOrigins => (value === "*" ? "*" : value.split(",").map((o) => o.replace(/\/$/, "")))

/** Whether a request path belongs to the client API. */
const isClientPath = (url: string): boolean => url === "/kv" || url.startsWith("/kv/") || url.startsWith("/kv?")

export const registerCors = (app: FastifyInstance, origins: CorsOrigins): void => {
  const options: FastifyCorsOptions = {
    origin: origins === "*" ? "*" : [...origins],
    methods: ["GET", "HEAD", "PUT", "DELETE"],
    // What tally/client sends: the value's type, the context it read, a client token.
    allowedHeaders: ["Content-Type", "X-Context", "Authorization"],
    // What it reads: the new context, and when to retry a 503.
    exposedHeaders: ["X-Context", "Retry-After"],
    maxAge: 600
  }
  app.register(fastifyCors, {
    delegator: (req, cb) => cb(null, isClientPath(req.url) ? options : { origin: false })
  })
}
