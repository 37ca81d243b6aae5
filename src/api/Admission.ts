/**
 * A bound on the HTTP requests a node serves at once (`--max-requests-in-flight`). Past it a
 * request is answered at once with `503 unavailable` and `Retry-After: 1`, before its body is
 * read, instead of queueing without end: memory stays bounded under a flood and clients (the
 * TypeScript client, load balancers) move to another node or back off. `/ping`, `/health` and
 * `/metrics` are not counted and never refused, so a busy node is still seen as alive.
 */
import type { FastifyInstance, FastifyRequest } from "fastify"
import { apiError } from "../Errors.ts"

/** Paths that neither count nor are refused. */
const UNCOUNTED = new Set(["/ping", "/health", "/metrics"])

/** Seconds a refused client is told to wait. */
export const RETRY_AFTER_SECONDS = 1

/** Registers the bound; `limit()` is read per request, `onRefused` counts each refusal (a metric). */
export const registerAdmission = (app: FastifyInstance, limit: () => number, onRefused: () => void): { readonly inFlight: () => number } => {
  let inFlight = 0
  const counted = new WeakSet<FastifyRequest>()
  const release = (req: FastifyRequest) => {
    if (counted.delete(req)) inFlight--
  }
  app.addHook("onRequest", (req, reply, done) => {
    if (UNCOUNTED.has(req.url.split("?")[0] ?? "")) return done()
    if (inFlight >= limit()) {
      onRefused()
      const e = apiError("unavailable", `this node is serving ${inFlight} requests, its limit (--max-requests-in-flight); retry in ${RETRY_AFTER_SECONDS} s or on another node`)
      return reply.code(e.status).header("retry-after", String(RETRY_AFTER_SECONDS)).type("application/json").send(e.toBody())
    }
    inFlight++
    counted.add(req)
    // A client that goes away mid-request gets no onResponse: its socket's close releases it.
    reply.raw.once("close", () => release(req))
    done()
  })
  app.addHook("onResponse", (req, _reply, done) => {
    release(req)
    done()
  })
  return { inFlight: () => inFlight }
}
