/**
 * The baseline of npm run bench:http: a bare Fastify server answering GET and PUT /kv/:key
 * from a JS Map, with the same body handling as a node (raw bytes, any content type) and no
 * logging. Prints `ready <url>` once listening.
 */
import Fastify from "fastify"

const port = Number(process.argv[2] ?? 9090)
const app = Fastify({ logger: false, routerOptions: { maxParamLength: 4096 } })
const store = new Map<string, { value: Buffer; type: string }>()
app.removeAllContentTypeParsers()
app.addContentTypeParser("*", { parseAs: "buffer" }, (_req, body, done) => done(null, body))
app.get<{ Params: { key: string } }>("/kv/:key", async (req, reply) => {
  const v = store.get(req.params.key)
  if (v === undefined) return reply.code(404).send({ error: "not_found", message: "no value" })
  return reply.header("content-type", v.type).send(v.value)
})
app.put<{ Params: { key: string } }>("/kv/:key", async (req, reply) => {
  store.set(req.params.key, { value: req.body as Buffer, type: req.headers["content-type"] ?? "application/octet-stream" })
  return reply.code(204).send()
})
await app.listen({ host: "127.0.0.1", port })
console.log(`ready bare http://127.0.0.1:${port}`)
process.on("SIGTERM", () => void app.close().then(() => process.exit(0)))
