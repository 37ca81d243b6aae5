/**
 * tally/client in a browser page from another origin than the node (src/api/Cors.ts), with
 * real processes: a node started with `--cors-origin` answers the preflight before its token
 * check and lets the page read answers and their X-Context; a node without the flag sends no
 * CORS headers, so the same page cannot; the admin routes never take part; an origin not
 * listed gets nothing; a malformed flag value is refused at start.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as http from "node:http"
import * as path from "node:path"
import t from "tap"
import { chromium } from "playwright-core"

const root = path.resolve(import.meta.dirname, "../..")
const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => fs.existsSync(p))
// Ports apart from the other test files' ranges.
const base = 24000 + Math.floor(Math.random() * 200) * 4
const TOKEN = "browser-token-0123456789"

const startNode = (args: string[]): Promise<{ child: ChildProcess; url: string }> =>
  new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["bin/tally.js", "node", "--log-level", "warn", ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let out = ""
    let err = ""
    child.stdout!.on("data", (d: Buffer) => {
      out += d
      const m = /^ready (\S+) (http:\/\/\S+)$/m.exec(out)
      if (m) resolve({ child, url: m[2]! })
    })
    child.stderr!.on("data", (d: Buffer) => (err += d))
    child.on("exit", (code) => reject(new Error(`node exited with ${code}: ${err}`)))
    setTimeout(() => reject(new Error(`node not ready in 20 s: ${err}`)), 20_000).unref()
  })

const dir = t.testdir()
const tokenFile = path.join(dir, "client-token")
fs.writeFileSync(tokenFile, `${TOKEN}\n`)
/** The page's origin: another port on loopback is another origin. */
const pageOrigin = `http://127.0.0.1:${base + 2}`

const nodes = Promise.all([
  startNode(["--id", "cors", "--port", String(base), "--cluster-port", String(base + 1000), "--data", path.join(dir, "a"), "--cors-origin", `https://elsewhere.example,${pageOrigin}`, "--client-token-file", tokenFile]),
  startNode(["--id", "plain", "--port", String(base + 1), "--cluster-port", String(base + 1001), "--data", path.join(dir, "b"), "--client-token-file", tokenFile])
])
t.teardown(async () => {
  for (const n of await nodes) n.child.kill("SIGKILL")
})

const preflight = (url: string, origin: string, method = "PUT") =>
  fetch(url, { method: "OPTIONS", headers: { origin, "access-control-request-method": method, "access-control-request-headers": "content-type,x-context,authorization" } })

t.test("the preflight and the answers carry what a browser needs, on /kv only, for listed origins only", async (t) => {
  const [cors, plain] = await nodes
  const pre = await preflight(`${cors!.url}/kv/cart`, pageOrigin)
  t.equal(pre.status, 204, "the preflight is answered without a token (browsers send none on it)")
  t.equal(pre.headers.get("access-control-allow-origin"), pageOrigin)
  t.match(pre.headers.get("access-control-allow-methods") ?? "", /PUT/)
  t.match((pre.headers.get("access-control-allow-headers") ?? "").toLowerCase(), /x-context/)
  t.match((pre.headers.get("access-control-allow-headers") ?? "").toLowerCase(), /authorization/)

  const put = await fetch(`${cors!.url}/kv/cart`, { method: "PUT", body: "apples", headers: { origin: pageOrigin, authorization: `Bearer ${TOKEN}`, "content-type": "text/plain" } })
  t.equal(put.status, 204)
  t.equal(put.headers.get("access-control-allow-origin"), pageOrigin, "the answer names the origin")
  t.match((put.headers.get("access-control-expose-headers") ?? "").toLowerCase(), /x-context/, "and lets the page read X-Context")
  t.equal((await fetch(`${cors!.url}/kv/cart`, { headers: { origin: pageOrigin } })).status, 401, "the token is still needed for the request itself")

  const stranger = await fetch(`${cors!.url}/kv/cart`, { headers: { origin: "https://evil.example", authorization: `Bearer ${TOKEN}` } })
  t.equal(stranger.headers.get("access-control-allow-origin"), null, "an origin not listed gets no CORS header")
  const admin = await preflight(`${cors!.url}/admin/remove`, pageOrigin, "POST")
  t.equal(admin.headers.get("access-control-allow-origin"), null, "the admin routes take no part")
  t.not(admin.status, 204)
  const adminGet = await fetch(`${cors!.url}/admin/cluster`, { headers: { origin: pageOrigin } })
  t.equal(adminGet.headers.get("access-control-allow-origin"), null)

  const none = await preflight(`${plain!.url}/kv/cart`, pageOrigin)
  t.equal(none.headers.get("access-control-allow-origin"), null, "a node without --cors-origin sends no CORS headers")
  t.not(none.status, 204)
})

t.test("a malformed --cors-origin is refused at start with the reason", async (t) => {
  for (const bad of ["https://a.example/path", "a.example", "https://a.example, https://b.example"]) {
    const r = spawnSync(process.execPath, ["bin/tally.js", "node", "--port", String(base + 3), "--data", path.join(dir, "c"), "--cors-origin", bad], { cwd: root, encoding: "utf8", timeout: 20_000 })
    t.not(r.status, 0, `${JSON.stringify(bad)} is refused`)
    t.match(r.stderr, /cors-origin/, `and the message names the flag: ${r.stderr.trim().split("\n")[0]}`)
  }
})

t.test("in Chromium, a page on another origin uses tally/client against the node with --cors-origin, and cannot without it", { skip: CHROMIUM === undefined ? "no Chromium at /usr/bin/chromium: .ci/run installs Debian's chromium package (apt-get install -y chromium)" : false }, async (t) => {
  const [cors, plain] = await nodes
  // The page and the prebuilt client, served from the page's origin.
  const dist = path.join(root, "dist/client")
  const server = http.createServer((req, res) => {
    const file = new URL(req.url ?? "/", pageOrigin).pathname
    if (file === "/") return res.writeHead(200, { "content-type": "text/html" }).end("<!doctype html><title>cart</title>")
    const local = path.join(dist, file)
    if (!local.startsWith(dist + path.sep) || !fs.existsSync(local)) return res.writeHead(404).end()
    res.writeHead(200, { "content-type": "text/javascript" }).end(fs.readFileSync(local))
  })
  await new Promise<void>((r) => server.listen(base + 2, "127.0.0.1", r))
  t.teardown(() => server.close())
  const browser = await chromium.launch({ executablePath: CHROMIUM!, headless: true, args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"] })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  await page.goto(`${pageOrigin}/`)
  const run = (node: string) =>
    page.evaluate(async ({ node, token, module }) => {
      const { TallyClient, text } = (await import(module)) as typeof import("../../src/client/Client.ts")
      const client = new TallyClient({ nodes: [node], token, retry: { attempts: 1 } })
      try {
        const put = await client.put("cart:browser", "apples")
        const got = await client.get("cart:browser")
        return { ok: true, context: typeof put.context, value: got !== undefined && "value" in got ? text(got.value) : null }
      } catch (e) {
        return { ok: false, error: String((e as Error).name) + ": " + String((e as { code?: string }).code ?? (e as Error).message) }
      }
    }, { node, token: TOKEN, module: `${pageOrigin}/client/Client.js` })
  const allowed = await run(cors!.url)
  t.same(allowed, { ok: true, context: "string", value: "apples" }, "with --cors-origin: put and get work and the context is readable")
  const refused = await run(plain!.url)
  t.equal(refused.ok, false, `without it the browser keeps the answer from the page: ${refused.ok ? "" : refused.error}`)
})
