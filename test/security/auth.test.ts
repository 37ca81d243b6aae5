/**
 * Who may use the client API (issue 11): /admin/* with --admin-token-file needs the bearer
 * token and without it answers loopback clients only; /kv with --client-token-file needs its
 * token; /ping, /health, /metrics stay open; a refusal is 401 unauthorized with the
 * registry's body; a token file is re-read when it changes; a bad token file stops the node.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import t from "tap"
import { isLoopbackAddress, parseTokens, routeClass, tokenMatches } from "../../src/api/Auth.ts"
import * as crypto from "node:crypto"
import { testNode } from "../api/helpers.ts"

const ADMIN = "admin-token-0123456789abcdef"
const CLIENT = "client-token-0123456789abcdef"

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-auth-"))
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
const file = (name: string, text: string) => {
  const p = path.join(dir, name)
  fs.writeFileSync(p, text)
  return p
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` })
const REMOTE = "203.0.113.7"

t.test("without token files: /admin/* answers loopback only, /kv and the probes answer anyone", async (t) => {
  const node = await testNode()
  t.teardown(() => node.close())
  const local = await node.app.inject({ method: "GET", url: "/admin/cluster", remoteAddress: "127.0.0.1" })
  t.equal(local.statusCode, 200, "loopback client may use admin routes")
  for (const url of ["/admin/cluster", "/admin/transfers", "/admin/aae"]) {
    const r = await node.app.inject({ method: "GET", url, remoteAddress: REMOTE })
    t.equal(r.statusCode, 401, `${url} from a remote client`)
    t.equal(r.json().error, "unauthorized")
    t.match(r.json().message, /loopback/)
  }
  const compact = await node.app.inject({ method: "POST", url: "/admin/compact", remoteAddress: "::ffff:198.51.100.1" })
  t.equal(compact.statusCode, 401, "an IPv4-mapped remote address is not loopback")
  t.equal((await node.app.inject({ method: "POST", url: "/admin/compact", remoteAddress: "::1" })).statusCode, 202, "::1 is loopback")
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/a", payload: "x", remoteAddress: REMOTE })).statusCode, 204, "/kv needs no token without --client-token-file")
  for (const url of ["/ping", "/health", "/metrics"]) t.equal((await node.app.inject({ method: "GET", url, remoteAddress: REMOTE })).statusCode, 200, `${url} is open`)
})

t.test("without an admin token, a browser page of another origin cannot use the loopback trust", async (t) => {
  const node = await testNode()
  t.teardown(() => node.close())
  const host = "127.0.0.1:8081"
  const leave = (headers: Record<string, string>) => node.app.inject({ method: "POST", url: "/admin/compact", headers: { host, ...headers }, remoteAddress: "127.0.0.1" })
  for (const [what, headers] of [
    ["a page of another site (Origin)", { origin: "https://evil.example" }],
    ["DNS rebinding: same host and port, but the page's name", { origin: "http://evil.example:8081", host: "evil.example:8081" }],
    ["another local app (other port)", { origin: "http://127.0.0.1:3000" }],
    ["a sandboxed page or a file (Origin: null)", { origin: "null" }],
    ["Sec-Fetch-Site: cross-site, no Origin", { "sec-fetch-site": "cross-site" }],
    ["Sec-Fetch-Site: same-site", { "sec-fetch-site": "same-site" }]
  ] as const) {
    const r = await leave(headers)
    t.equal(r.statusCode, 401, `${what}: refused before the route acts`)
    t.match(r.json().message, /browser pages of other origins/)
  }
  t.equal((await leave({})).statusCode, 202, "curl or tally admin from loopback (no Origin) still works")
  t.equal((await leave({ origin: `http://${host}`, "sec-fetch-site": "same-origin" })).statusCode, 202, "so does the node's own page (/ui) on a loopback origin")
  t.equal((await leave({ origin: "http://localhost:8081", host: "localhost:8081" })).statusCode, 202, "and on localhost")
  t.equal((await node.app.inject({ method: "GET", url: "/admin/cluster", headers: { host, "sec-fetch-site": "none" }, remoteAddress: "127.0.0.1" })).statusCode, 200, "an address typed in the browser (Sec-Fetch-Site: none) is the user's own")
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/a", payload: "x", headers: { host, origin: "https://evil.example" }, remoteAddress: "127.0.0.1" })).statusCode, 204, "/kv is not affected (CORS governs what a page may read)")
})

t.test("a percent-encoded path is classed by what it reaches: /%61dmin/... is an admin route", async (t) => {
  const open = await testNode()
  t.teardown(() => open.close())
  for (const url of ["/%61dmin/compact", "/%61%64min/compact", "/admin%2Fcompact"]) {
    const r = await open.app.inject({ method: "POST", url, remoteAddress: REMOTE })
    t.not(r.statusCode, 202, `${url} from a remote client does not compact (${r.statusCode})`)
  }
  t.equal((await open.app.inject({ method: "POST", url: "/%61dmin/compact", remoteAddress: REMOTE })).statusCode, 401, "refused as an admin route")
  t.equal((await open.app.inject({ method: "POST", url: "/%61dmin/compact", headers: { origin: "https://evil.example" }, remoteAddress: "127.0.0.1" })).statusCode, 401, "and from a foreign page on loopback")
  const tokened = await testNode({ adminTokenFile: file("admin-enc", `${ADMIN}\n`), clientTokenFile: file("client-enc", `${CLIENT}\n`) })
  t.teardown(() => tokened.close())
  t.equal((await tokened.app.inject({ method: "POST", url: "/%61dmin/compact", remoteAddress: "127.0.0.1" })).statusCode, 401, "with --admin-token-file the token is needed however the path is spelled")
  t.equal((await tokened.app.inject({ method: "PUT", url: "/%6Bv/a", payload: "x", remoteAddress: REMOTE })).statusCode, 401, "and /%6Bv/... needs the client token")
})

t.test("without an admin token, a Host that is a DNS name (DNS rebinding) is refused on loopback; addresses and localhost are not", async (t) => {
  const node = await testNode()
  t.teardown(() => node.close())
  const get = (host: string) => node.app.inject({ method: "GET", url: "/admin/cluster", headers: { host }, remoteAddress: "127.0.0.1" })
  t.equal((await get("evil.example:8081")).statusCode, 401, "a rebound name: its page would read admin answers as same-origin GETs (no Origin header)")
  for (const host of ["127.0.0.1:8081", "localhost:8081", "[::1]:8081", "10.1.2.3:8081"]) t.equal((await get(host)).statusCode, 200, `${host} is fine`)
})

t.test("a stored value is served sandboxed and not sniffed, so a stored page cannot act as the node's origin", async (t) => {
  const node = await testNode()
  t.teardown(() => node.close())
  await node.app.inject({ method: "PUT", url: "/kv/page", payload: "<script>fetch('/admin/leave',{method:'POST'})</script>", headers: { "content-type": "text/html" } })
  const r = await node.app.inject({ method: "GET", url: "/kv/page" })
  t.equal(r.headers["content-type"], "text/html", "the writer's type is kept")
  t.equal(r.headers["content-security-policy"], "sandbox")
  t.equal(r.headers["x-content-type-options"], "nosniff")
})

t.test("--admin-token-file: /admin/* needs the token, from anywhere", async (t) => {
  const node = await testNode({ adminTokenFile: file("admin", `# rotation: both lines are accepted\n${ADMIN}\n${ADMIN}-next\n`) })
  t.teardown(() => node.close())
  for (const [what, headers] of [["no header", {}], ["a wrong token", bearer("x".repeat(30))], ["a prefix of it", bearer(ADMIN.slice(0, -1))], ["not Bearer", { authorization: `Basic ${ADMIN}` }], ["the client token", bearer(CLIENT)]] as const) {
    const r = await node.app.inject({ method: "GET", url: "/admin/cluster", headers, remoteAddress: "127.0.0.1" })
    t.equal(r.statusCode, 401, `${what}: 401, even from loopback`)
    t.same(Object.keys(r.json()).sort(), ["error", "message"])
    t.equal(r.json().error, "unauthorized")
    t.equal(r.headers["www-authenticate"], 'Bearer realm="tally"')
  }
  const posted = await node.app.inject({ method: "POST", url: "/admin/remove", payload: { node: "x" }, remoteAddress: REMOTE })
  t.equal(posted.statusCode, 401, "a mutating admin route is refused before it acts")
  t.equal((await node.app.inject({ method: "GET", url: "/admin/cluster", headers: bearer(ADMIN), remoteAddress: REMOTE })).statusCode, 200, "the token works from a remote client")
  t.equal((await node.app.inject({ method: "GET", url: "/admin/cluster", headers: bearer(`${ADMIN}-next`), remoteAddress: REMOTE })).statusCode, 200, "so does the second line")
  t.equal((await node.app.inject({ method: "GET", url: "/kv/a", remoteAddress: REMOTE })).statusCode, 404, "/kv is not covered by the admin token")
})

t.test("--client-token-file: /kv and /kv/* need the token; the probes do not", async (t) => {
  const node = await testNode({ clientTokenFile: file("client", `${CLIENT}\n`) })
  t.teardown(() => node.close())
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/a", payload: "x" })).statusCode, 401, "PUT without a token")
  t.equal((await node.app.inject({ method: "GET", url: "/kv/a", headers: bearer(ADMIN) })).statusCode, 401, "GET with another token")
  t.equal((await node.app.inject({ method: "DELETE", url: "/kv/a", headers: bearer("nope-nope-nope-nope") })).statusCode, 401, "DELETE with a wrong token")
  t.equal((await node.app.inject({ method: "GET", url: "/kv/a" })).statusCode, 401, "a read is protected too")
  t.equal((await node.app.inject({ method: "PUT", url: "/kv/a", payload: "x", headers: bearer(CLIENT) })).statusCode, 204)
  const got = await node.app.inject({ method: "GET", url: "/kv/a", headers: bearer(CLIENT) })
  t.equal(got.statusCode, 200)
  t.equal(got.body, "x")
  for (const url of ["/ping", "/health", "/metrics"]) t.equal((await node.app.inject({ method: "GET", url })).statusCode, 200, `${url} stays open`)
})

t.test("a token file is re-read when it changes; a broken rewrite keeps the old tokens", async (t) => {
  const p = file("rotating", `${ADMIN}\n`)
  const node = await testNode({ adminTokenFile: p })
  t.teardown(() => node.close())
  const status = async (token: string) => (await node.app.inject({ method: "GET", url: "/admin/cluster", headers: bearer(token), remoteAddress: REMOTE })).statusCode
  t.equal(await status(ADMIN), 200)
  const NEW = "rotated-token-fedcba9876543210"
  fs.writeFileSync(p, `${NEW}\n`)
  const until = async (cond: () => Promise<boolean>) => {
    for (let i = 0; i < 100 && !(await cond()); i++) await new Promise((r) => setTimeout(r, 100))
  }
  await until(async () => (await status(NEW)) === 200)
  t.equal(await status(NEW), 200, "the new token is accepted")
  t.equal(await status(ADMIN), 401, "the removed one is not")
  fs.writeFileSync(p, "\n# emptied by mistake\n")
  await new Promise((r) => setTimeout(r, 2500))
  t.equal(await status(NEW), 200, "an emptied file keeps the tokens in force")
})

t.test("a missing, empty or weak token file stops the node at start, saying why", async (t) => {
  await t.rejects(testNode({ adminTokenFile: path.join(dir, "absent") }), /cannot read token file .*absent: no such file/)
  await t.rejects(testNode({ clientTokenFile: file("empty", "\n\n") }), /holds no token/)
  await t.rejects(testNode({ clientTokenFile: file("weak", "secret\n") }), /at least 16/)
})

t.test("the pieces", async (t) => {
  t.same(parseTokens("f", `  ${ADMIN}  \r\n\n# c\n${CLIENT}`), [ADMIN, CLIENT])
  const digests = [crypto.createHash("sha256").update(ADMIN).digest()]
  t.ok(tokenMatches(digests, ADMIN))
  t.notOk(tokenMatches(digests, ADMIN + "x"))
  t.notOk(tokenMatches([], ADMIN))
  for (const a of ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"]) t.ok(isLoopbackAddress(a), a)
  for (const a of [undefined, "0.0.0.0", "::", "10.0.0.1", "::ffff:10.0.0.1", "1127.0.0.1", "127.0.0.1.evil"]) t.notOk(isLoopbackAddress(a), String(a))
  t.equal(routeClass("/admin/cluster?x=1"), "admin")
  t.equal(routeClass("/kv?prefix=a"), "kv")
  t.equal(routeClass("/kv/a%2Fb"), "kv")
  t.equal(routeClass("/kvx"), "open")
  t.equal(routeClass("/administrator"), "open")
  t.equal(routeClass("/health"), "open")
})
