/**
 * GET /openapi.json: a valid OpenAPI 3.1 document (checked against the official schema) that
 * lists every route and every error code docs/api.md states, each operation described with
 * its parameters and answers; and the route schemas it is made from still accept what the
 * contract accepts.
 */
import * as fs from "node:fs"
import { Validator } from "@seriousme/openapi-schema-validator"
import t, { type Test } from "tap"
import { errorCodes } from "../../src/Errors.ts"
import { testNode } from "./helpers.ts"

const doc = fs.readFileSync(new URL("../../docs/api.md", import.meta.url), "utf8")

type Operation = { summary?: string; parameters?: Array<{ in: string; name: string }>; requestBody?: { content: Record<string, unknown> }; responses: Record<string, { description: string; content?: Record<string, { schema: Schema }> }> }
type Schema = { properties?: { error?: { enum?: string[] } }; oneOf?: Schema[] }
type Document = { openapi: string; paths: Record<string, Record<string, Operation>>; components: { responses?: Record<string, { description: string; content: Record<string, { schema: Schema }> }> } }

const load = async (t: Test) => {
  const node = await testNode({ enableFaultInjection: true })
  t.teardown(() => node.close())
  const res = await node.app.inject({ method: "GET", url: "/openapi.json" })
  t.equal(res.statusCode, 200)
  t.match(res.headers["content-type"], /^application\/json/)
  return { node, spec: res.json() as Document }
}

/** Every `METHOD /path` docs/api.md names (in headings, tables and lists), as OpenAPI paths. */
const documentedRoutes = (): Array<[string, string]> => {
  const found = new Set<string>()
  // A line about 405 names a method a path does not answer (`POST /kv/k`): not a route.
  for (const line of doc.split("\n").filter((l) => !l.includes("405"))) {
    for (const m of line.matchAll(/`(GET|PUT|DELETE|POST) (\/[^`\s?]*)/g)) found.add(`${m[1]!.toLowerCase()} ${m[2]!.replace(/:([a-z]+)/g, "{$1}")}`)
  }
  return [...found].map((s) => s.split(" ") as [string, string])
}

/** The error codes of docs/api.md's errors table, with their status. */
const documentedErrors = (): Array<[string, number]> => [...doc.matchAll(/^\| (\d{3}) \| `([a-z_]+)` \|/gm)].map((m) => [m[2]!, Number(m[1])])

t.test("the document is valid OpenAPI 3.1", async (t) => {
  const { spec } = await load(t)
  t.equal(spec.openapi, "3.1.0")
  const result = await new Validator().validate(spec as unknown as Parameters<Validator["validate"]>[0])
  t.same(result.errors ?? [], [], "no schema errors")
  t.ok(result.valid, "valid against the OpenAPI 3.1 schema")
})

t.test("every route of docs/api.md is in the document, summarised, with its answers and errors", async (t) => {
  const { spec } = await load(t)
  const routes = documentedRoutes()
  t.ok(routes.length >= 15, `docs/api.md names ${routes.length} routes`)
  for (const [method, path] of routes) {
    const op = spec.paths[path]?.[method]
    if (!t.ok(op, `${method.toUpperCase()} ${path} is documented`)) continue
    t.ok(op!.summary, `${method.toUpperCase()} ${path} has a summary`)
    const statuses = Object.keys(op!.responses)
    t.ok(statuses.some((s) => /^[23]/.test(s)), `${method.toUpperCase()} ${path} has a success answer`)
    t.ok(statuses.includes("400") && statuses.includes("500"), `${method.toUpperCase()} ${path} lists its errors`)
    for (const p of path.matchAll(/\{([a-z]+)\}/g)) t.ok(op!.parameters?.some((x) => x.in === "path" && x.name === p[1]), `${path} documents {${p[1]}}`)
  }
  // No route is served undocumented either.
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) t.ok(op.summary, `${method.toUpperCase()} ${path} (served) has a summary`)
  }
})

t.test("the /kv routes document their parameters, headers and bodies", async (t) => {
  const { spec } = await load(t)
  const kv = spec.paths["/kv/{key}"]!
  for (const m of ["get", "put", "delete"]) {
    const names = (kv[m]!.parameters ?? []).map((p) => `${p.in}:${p.name}`)
    for (const q of ["query:r", "query:w", "query:sloppy", "query:timeout", "path:key"]) t.ok(names.includes(q), `${m} documents ${q}`)
  }
  t.ok(kv.put!.parameters!.some((p) => p.in === "header" && p.name === "x-context"), "PUT takes X-Context")
  t.same(Object.keys(kv.put!.requestBody!.content), ["*/*"], "PUT takes a body of any content type")
  t.ok(kv.get!.responses["300"]!.content!["application/json"], "GET documents the siblings answer")
  t.ok(kv.get!.responses["200"]!.content!["*/*"], "GET answers the value as stored")
  const list = spec.paths["/kv"]!.get!
  t.same((list.parameters ?? []).map((p) => p.name).sort(), ["cursor", "limit", "prefix", "timeout"])
})

t.test("every error code of docs/api.md is in the document, under its status", async (t) => {
  const { spec } = await load(t)
  const rows = documentedErrors()
  t.same(new Set(rows.map(([c]) => c)), new Set(Object.keys(errorCodes)), "the docs table and the registry agree")
  const codesOf = (s: Schema | undefined): string[] => [...(s?.properties?.error?.enum ?? []), ...(s?.oneOf ?? []).flatMap(codesOf)]
  for (const [code, status] of rows) {
    const inRoutes = Object.values(spec.paths).flatMap((ops) => Object.values(ops)).some((op) => codesOf(op.responses[String(status)]?.content?.["application/json"]?.schema).includes(code))
    const component = spec.components.responses?.[code]
    const inComponents = component !== undefined && component.description.startsWith(`${status} `) && codesOf(component.content["application/json"]?.schema).includes(code)
    t.ok(inRoutes || inComponents, `${status} ${code} is documented`)
  }
})

t.test("the route schemas accept what the contract accepts", async (t) => {
  const { node } = await load(t)
  // A value of any content type is stored as given (a body no JSON schema could validate).
  for (const [i, ct] of ["application/json", "image/png", "application/x-tally; v=1", "text/plain; charset=latin1"].entries()) {
    const put = await node.app.inject({ method: "PUT", url: `/kv/any${i}`, payload: Buffer.from([0, 1, 2, 255]), headers: { "content-type": ct } })
    t.equal(put.statusCode, 204, `PUT with Content-Type ${ct}`)
    const got = await node.app.inject({ method: "GET", url: `/kv/any${i}` })
    t.equal(got.headers["content-type"], ct)
    t.same([...got.rawPayload], [0, 1, 2, 255])
  }
  const ctx = (await node.app.inject({ method: "GET", url: "/kv/any0" })).headers["x-context"] as string
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/any0?w=1&timeout=500&sloppy=false", payload: "v", headers: { "x-context": ctx } })).statusCode, 204)
  t.equal((await node.app.inject({ method: "DELETE", url: "/kv/any0", headers: { "x-context": ctx } })).statusCode, 204)
  t.equal((await node.app.inject({ method: "POST", url: "/admin/remove", payload: "{}" })).json().error, "bad_request", "remove's body is still read by its handler")
  // The documented answers are the answers: the fields the node sends are not filtered.
  const health = (await node.app.inject({ method: "GET", url: "/health" })).json() as Record<string, unknown>
  for (const k of ["status", "node", "uptimeSeconds", "keys", "lastLsn", "segments", "cluster"]) t.ok(k in health, `/health still has ${k}`)
  t.equal((await node.app.inject({ method: "GET", url: "/kv/any0?bogus=1" })).statusCode, 400, "unknown parameters are still refused")
})
