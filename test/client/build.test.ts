/**
 * The prebuilt client (tsconfig.client.json, npm install's prepare script): built afresh into
 * a temporary directory, it is the client's three modules and nothing else, imports only its
 * own files (no effect, no node: module, no process, Buffer or require), and does a put and a
 * get against a fake fetch when plain JavaScript imports it, in Node without type stripping
 * and in headless Chromium. dist/client, what `tally/client` resolves to, matches that build.
 */
import { spawnSync } from "node:child_process"
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as os from "node:os"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import t from "tap"
import { chromium } from "playwright-core"

const root = path.resolve(import.meta.dirname, "../..")
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc")
const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => fs.existsSync(p))

/** What the build emits, relative to its output directory. */
const EXPECTED = ["ErrorCodes.d.ts", "ErrorCodes.js", "client/Client.d.ts", "client/Client.js", "client/TallyError.d.ts", "client/TallyError.js"]

const out = fs.mkdtempSync(path.join(os.tmpdir(), "tally-client-build-"))
t.teardown(() => fs.rmSync(out, { recursive: true, force: true }))
const build = spawnSync(process.execPath, [tsc, "-p", "tsconfig.client.json", "--outDir", out], { cwd: root, encoding: "utf8" })

const filesUnder = (dir: string): Array<string> =>
  fs.existsSync(dir) ? (fs.readdirSync(dir, { recursive: true, encoding: "utf8" }) as Array<string>).filter((f) => fs.statSync(path.join(dir, f)).isFile()).map((f) => f.split(path.sep).join("/")).sort() : []

/**
 * A plain ES module next to the build: a put and a get against a fake fetch that keeps one
 * key, then a 503 quorum_not_met that must come back as a TallyError with the registry's code.
 */
const USE = `import { TallyClient, TallyError, text, hasSiblings } from "./client/Client.js"

export const run = async () => {
  const calls = []
  const stored = new Map()
  const fetch = async (url, init) => {
    const u = new URL(url)
    const body = init.body === undefined ? undefined : new TextDecoder().decode(init.body)
    calls.push({ url: u.pathname + u.search, method: init.method, contentType: init.headers["content-type"], body })
    if (u.pathname === "/kv/down") return new Response(JSON.stringify({ error: "quorum_not_met", message: "1 of 2", needed: 2, got: 1 }), { status: 503, headers: { "content-type": "application/json" } })
    if (init.method === "PUT") {
      stored.set(u.pathname, { body, type: init.headers["content-type"] })
      return new Response(null, { status: 204, headers: { "x-context": "ctx-1" } })
    }
    const v = stored.get(u.pathname)
    if (v === undefined) return new Response(JSON.stringify({ error: "not_found", message: "no value" }), { status: 404, headers: { "content-type": "application/json" } })
    return new Response(v.body, { status: 200, headers: { "content-type": v.type, "x-context": "ctx-1" } })
  }
  const client = new TallyClient({ nodes: ["http://127.0.0.1:8081"], fetch, retry: { attempts: 1 } })
  const put = await client.put("cart:1", "apples", { w: 2 })
  const got = await client.get("cart:1")
  const missing = await client.get("cart:2")
  let failure
  try {
    await client.get("down")
  } catch (e) {
    failure = { isTallyError: e instanceof TallyError, code: e.code, status: e.status, retryable: e.retryable, needed: e.needed }
  }
  return {
    calls,
    put,
    got: got === undefined || hasSiblings(got) ? got : { value: text(got.value), contentType: got.contentType, context: got.context },
    missing: missing === undefined,
    failure
  }
}
`

/** What `run` returns, as JSON (no undefined fields: a GET has no body and no content type). */
const EXPECTED_RUN = {
  calls: [
    { url: "/kv/cart%3A1?w=2", method: "PUT", contentType: "text/plain; charset=utf-8", body: "apples" },
    { url: "/kv/cart%3A1", method: "GET" },
    { url: "/kv/cart%3A2", method: "GET" },
    { url: "/kv/down", method: "GET" }
  ],
  put: { context: "ctx-1" },
  got: { value: "apples", contentType: "text/plain; charset=utf-8", context: "ctx-1" },
  missing: true,
  failure: { isTallyError: true, code: "quorum_not_met", status: 503, retryable: true, needed: 2 }
}

t.test("tsconfig.client.json builds the client's three modules with their types, and nothing else", async (t) => {
  t.equal(build.status, 0, `tsc -p tsconfig.client.json succeeds: ${build.stdout}${build.stderr}`)
  t.same(filesUnder(out), EXPECTED)
})

t.test("the built client imports only its own files and uses no Node-only API", async (t) => {
  const emitted = new Set(filesUnder(out))
  const js = [...emitted].filter((f) => f.endsWith(".js"))
  t.ok(js.length >= 3, "there is JavaScript to scan")
  for (const f of js) {
    const code = fs.readFileSync(path.join(out, f), "utf8").replace(/\/\*[\s\S]*?\*\/|\/\/.*$/gm, "")
    const specifiers = [...code.matchAll(/\bfrom\s*["']([^"']+)["']|\bimport\s*(?:\(\s*)?["']([^"']+)["']/g)].map((m) => (m[1] ?? m[2])!)
    for (const s of specifiers) {
      t.match(s, /^\.\.?\//, `${f} imports a relative file, not a package (effect) or a node: module: ${s}`)
      const target = path.relative(out, path.resolve(path.dirname(path.join(out, f)), s)).split(path.sep).join("/")
      t.ok(emitted.has(target), `${f}: ${s} is one of the built files`)
    }
    t.notMatch(code, /\bprocess\b|\bBuffer\b|\brequire\s*\(/, `${f}: no process, Buffer or require`)
  }
})

t.test("plain JavaScript imports the built client and does a put and a get (Node, no type stripping)", async (t) => {
  // The package.json next to dist/ says "type": "module"; the temporary build needs its own.
  fs.writeFileSync(path.join(out, "package.json"), JSON.stringify({ type: "module" }))
  fs.writeFileSync(path.join(out, "use.js"), USE)
  const ran = spawnSync(process.execPath, ["--no-experimental-strip-types", "--input-type=module", "-e", `const { run } = await import(${JSON.stringify(path.join(out, "use.js"))}); console.log(JSON.stringify(await run()))`], {
    cwd: out,
    encoding: "utf8"
  })
  t.equal(ran.status, 0, ran.stderr)
  t.same(JSON.parse(ran.stdout), EXPECTED_RUN)
})

t.test("a browser page imports the built client and does a put and a get", { skip: CHROMIUM === undefined ? "no Chromium at /usr/bin/chromium: .ci/run installs Debian's chromium package (apt-get install -y chromium)" : false }, async (t) => {
  fs.writeFileSync(path.join(out, "use.js"), USE)
  const browser = await chromium.launch({
    executablePath: CHROMIUM!,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
  })
  t.teardown(() => browser.close())
  const page = await browser.newPage()
  // The page's origin is served from the build directory; nothing goes to the network.
  await page.route("http://tally.test/**", async (route) => {
    const file = new URL(route.request().url()).pathname
    if (file === "/") return route.fulfill({ contentType: "text/html", body: "<!doctype html><title>tally client</title>" })
    const local = path.join(out, file)
    if (!local.startsWith(out + path.sep) || !fs.existsSync(local)) return route.fulfill({ status: 404, body: "" })
    return route.fulfill({ contentType: "text/javascript", body: fs.readFileSync(local, "utf8") })
  })
  const errors: Array<string> = []
  page.on("pageerror", (e) => errors.push(e.message))
  await page.goto("http://tally.test/")
  const result: unknown = await page.evaluate(async () => {
    const url = "http://tally.test/use.js"
    const use = (await import(url)) as { run: () => Promise<unknown> }
    // As JSON, the same shape the Node run prints.
    return JSON.parse(JSON.stringify(await use.run())) as unknown
  })
  t.same(result, EXPECTED_RUN)
  t.same(errors, [])
})

t.test("tally/client resolves to dist/client, which matches a fresh build (run npm install or npm run prepare after editing src/client)", async (t) => {
  const resolved = fileURLToPath(import.meta.resolve("tally/client"))
  t.equal(path.relative(root, resolved).split(path.sep).join("/"), "dist/client/client/Client.js")
  const dist = path.join(root, "dist/client")
  t.same(filesUnder(dist).filter((f) => EXPECTED.includes(f)), EXPECTED, "dist/client holds the built client")
  for (const f of EXPECTED) {
    if (!fs.existsSync(path.join(dist, f))) continue
    t.equal(fs.readFileSync(path.join(dist, f), "utf8"), fs.readFileSync(path.join(out, f), "utf8"), `dist/client/${f} is up to date`)
  }
})
