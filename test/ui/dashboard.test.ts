/**
 * The dashboard at /ui in headless Chromium (Debian's, driven by playwright-core): on a real
 * three-node cluster it renders the three members up and the ring, and a node killed with
 * SIGKILL turns down on the page. Skips, saying why, only when no Chromium can be found
 * (.ci/run installs Debian's package when it is missing). With TALLY_SCREENSHOT=<file> it
 * saves a screenshot there (docs/dashboard.png was made so).
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import t from "tap"
import { chromium, type Browser } from "playwright-core"
import { startCluster } from "../cluster/harness.ts"
import { quiet, testNode, testSettings } from "../api/helpers.ts"
import { startNode } from "../../src/node/Node.ts"

/** The page's document as the callbacks run in the browser see it (this file has no DOM types). */
interface PageDocument {
  querySelectorAll(selector: string): { readonly length: number }
  querySelector(selector: string): { getAttribute(name: string): string | null; readonly textContent: string | null } | null
}
type InPage = { readonly document: PageDocument }

const CHROMIUM = ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => fs.existsSync(p))

const launch = async (): Promise<Browser> => {
  // The flags that work on these machines (no network beyond loopback, running as root);
  // playwright gives every launch a fresh, empty profile of its own.
  return chromium.launch({
    executablePath: CHROMIUM!,
    headless: true,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
  })
}

t.test("GET /ui: one self-contained page, with a policy that allows only itself", async (t) => {
  const node = await testNode()
  t.teardown(() => node.close())
  const res = await node.app.inject({ method: "GET", url: "/ui" })
  t.equal(res.statusCode, 200)
  t.match(res.headers["content-type"], /^text\/html/)
  const csp = String(res.headers["content-security-policy"])
  t.match(csp, /default-src 'none'/)
  t.match(csp, /connect-src 'self'/)
  t.match(csp, /script-src 'sha256-[A-Za-z0-9+/=]+'/)
  t.notMatch(res.body, /<script[^>]+src=|<link[^>]+href="(?!data:)|https?:\/\/(?!www\.w3\.org\/2000\/svg")/, "nothing loaded from elsewhere")
})

t.test("the dashboard shows a real cluster's members, and a killed node turns down", { skip: CHROMIUM === undefined ? "no Chromium at /usr/bin/chromium: .ci/run installs Debian's chromium package (apt-get install -y chromium)" : false }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-ui-"))
  const cluster = await startCluster(dir, 3)
  const browser = await launch()
  t.teardown(async () => {
    await browser.close()
    await cluster.stopAll()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const [n1, , n3] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0]]
  for (let i = 0; i < 40; i++) await fetch(`${n1.url}/kv/k${i}`, { method: "PUT", body: "v" })
  const page = await browser.newPage({ viewport: { width: 1400, height: 1000 } })
  const problems: string[] = []
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`))
  page.on("console", (m) => {
    if (m.type() === "error") problems.push(`console: ${m.text()}`)
  })
  await page.goto(`${n1.url}/ui?interval=500&token=not-needed-on-loopback`)
  t.notMatch(page.url(), /token=/, "the token leaves the address bar")
  t.equal(await page.evaluate(() => (globalThis as unknown as { sessionStorage: { getItem(k: string): string | null } }).sessionStorage.getItem("tally-admin-token")), "not-needed-on-loopback", "and is kept for the tab")

  const statuses = () => page.$$eval("#members tbody tr[data-node]", (rows) => Object.fromEntries(rows.map((r) => [r.getAttribute("data-node"), r.getAttribute("data-status")])))
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.querySelectorAll("#members tbody tr[data-status=up]").length === 3, undefined, { timeout: 30_000 }).catch((e: Error) => {
    throw new Error(`${e.message}; the page said: ${problems.join("; ") || "nothing"}`)
  })
  t.same(await statuses(), { n1: "up", n2: "up", n3: "up" }, "three members, all up")
  t.equal(await page.textContent("#node"), "n1", "the node it is served by")
  t.equal(await page.$$eval("#ring path[data-partition]", (ps) => ps.length), 64, "the ring: 64 partitions")
  t.same(new Set(await page.$$eval("#ring path[data-partition]", (ps) => ps.map((p) => p.getAttribute("data-owner")))), new Set(["n1", "n2", "n3"]), "coloured by three owners")
  t.ok(Number(await page.textContent('#members tr[data-node="n2"] td:nth-child(3)')) < 8, "n2's phi is shown and low")
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.querySelector('#requests tr[data-op="put"] td:nth-child(6)')?.textContent === "40", undefined, { timeout: 10_000 })
  t.pass("request counts per operation")
  t.ok(await page.$$eval("#aae tbody tr", (rows) => rows.length) >= 1, "anti-entropy per partition")

  await cluster.kill(n3, "SIGKILL")
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.querySelector('#members tr[data-node="n3"]')?.getAttribute("data-status") === "down", undefined, { timeout: 60_000 })
  t.same(await statuses(), { n1: "up", n2: "up", n3: "down" }, "n3 turns down")
  // Writes while n3 is down are parked for it: the hints show up.
  for (let i = 0; i < 20; i++) await fetch(`${n1.url}/kv/h${i}`, { method: "PUT", body: "v" })
  await page.waitForFunction(() => Number((globalThis as unknown as InPage).document.querySelector('#members tr[data-node="n3"] td:nth-child(5)')?.textContent) > 0, undefined, { timeout: 15_000 })
  t.pass("parked hints for n3")
  const shot = process.env.TALLY_SCREENSHOT
  if (shot !== undefined && shot !== "") await page.screenshot({ path: shot, fullPage: true })
  t.same(problems, [], "no script errors and nothing the page's policy blocked")
})

t.test("with --admin-token-file the page asks for the token, then sends it as Bearer", { skip: CHROMIUM === undefined ? "no Chromium at /usr/bin/chromium: .ci/run installs Debian's chromium package" : false }, async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-ui-token-"))
  const tokenFile = path.join(dir, "admin-token")
  const token = "dashboard-test-token-0123456789abcdef"
  fs.writeFileSync(tokenFile, `${token}\n`)
  const port = 14000 + Math.floor(Math.random() * 1000)
  const node = await startNode(testSettings({ id: "solo", port, clusterPort: port + 1000, data: path.join(dir, "solo"), adminTokenFile: tokenFile }), { memory: true, logStream: quiet() })
  const browser = await launch()
  t.teardown(async () => {
    await browser.close()
    await node.close()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  t.equal((await fetch(`${node.url}/admin/cluster`)).status, 401, "the node wants the token")
  const page = await browser.newPage()
  const sent: Array<string | undefined> = []
  page.on("request", (r) => {
    if (r.url().includes("/admin/cluster")) sent.push(r.headers().authorization)
  })
  await page.goto(`${node.url}/ui?interval=300`)
  await page.waitForSelector("#token-form:not([hidden])", { timeout: 15_000 })
  t.pass("without a token the page asks for one")
  await page.fill("#token-input", token)
  await page.click("#token-form button")
  await page.waitForFunction(() => (globalThis as unknown as InPage).document.querySelector('#members tr[data-node="solo"]')?.getAttribute("data-status") === "up", undefined, { timeout: 15_000 })
  t.pass("with it, the members show")
  t.ok(await page.isHidden("#token-form"), "and the form goes away")
  t.equal(sent.at(-1), `Bearer ${token}`, "sent as a Bearer header")
})
