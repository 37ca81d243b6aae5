/**
 * The dashboard at `GET /ui`: one static page (src/ui/dashboard.html, inline script and
 * style, nothing fetched from elsewhere) that polls this node's /admin routes and /metrics
 * and draws the ring, members, transfers, anti-entropy, parked hints and request rates. The
 * page holds no data itself, so it is served to anyone; its requests carry the admin token
 * the user gave it. The Content-Security-Policy allows exactly its own script and style
 * (by hash) and requests to this node.
 */
import { createHash } from "node:crypto"
import * as fs from "node:fs"
import type { FastifyInstance } from "fastify"
import { errorResponses } from "../api/OpenApi.ts"

const PAGE = fs.readFileSync(new URL("./dashboard.html", import.meta.url), "utf8")

const hashes = (tag: string): string =>
  [...PAGE.matchAll(new RegExp(`<${tag}>([\\s\\S]*?)</${tag}>`, "g"))].map((m) => `'sha256-${createHash("sha256").update(m[1]!).digest("base64")}'`).join(" ")

/** What the page may load and where it may connect: itself only. */
export const CONTENT_SECURITY_POLICY = [
  "default-src 'none'",
  `script-src ${hashes("script")}`,
  `style-src ${hashes("style")}`,
  "connect-src 'self'",
  "img-src 'self' data:",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'"
].join("; ")

/** Registers GET /ui on `app`. */
export const registerDashboard = (app: FastifyInstance): void => {
  app.get("/ui", {
    config: { op: "ui" },
    schema: {
      summary: "The live dashboard (HTML)",
      description: "Ring, members with status and phi, transfers, anti-entropy, parked hints, request rates and latency; polls /admin/* and /metrics. `?token=` keeps an admin token for the tab; `?interval=` sets the poll period in ms.",
      tags: ["operations"],
      response: { 200: { description: "the page", content: { "text/html": { schema: { type: "string" } } } }, ...errorResponses([]) }
    }
  }, async (_req, reply) =>
    reply
      .type("text/html; charset=utf-8")
      .header("content-security-policy", CONTENT_SECURITY_POLICY)
      .header("cache-control", "no-cache")
      .header("referrer-policy", "no-referrer")
      .header("x-content-type-options", "nosniff")
      .send(PAGE))
}
