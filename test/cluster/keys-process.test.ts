/**
 * Listing keys on real `tally node` processes: three nodes, N=3; with one killed (SIGKILL),
 * every key is still listed from the other replicas, and paging returns each exactly once,
 * from whichever node is asked; `tally keys` prints the same.
 */
import { execFile } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import t from "tap"
import { compareKeys } from "../../src/keys/KeyPage.ts"
import { clusterView, eventually, startCluster } from "./harness.ts"

const root = path.resolve(import.meta.dirname, "../..")

const listAll = async (url: string, limit: number, prefix = "") => {
  const out: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const qs = new URLSearchParams({ limit: String(limit), ...(prefix === "" ? {} : { prefix }), ...(cursor === null ? {} : { cursor }) })
    const res = await fetch(`${url}/kv?${qs}`)
    if (res.status !== 200) throw new Error(`${res.status} ${await res.text()}`)
    const page = (await res.json()) as { keys: string[]; cursor: string | null }
    out.push(...page.keys)
    cursor = page.cursor
    pages++
  } while (cursor !== null && pages < 1000)
  return { out, pages }
}

const tally = (args: string[]) =>
  new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, ["bin/tally.js", ...args], { cwd: root, timeout: 60_000 }, (err, stdout, stderr) => resolve({ code: err ? (typeof err.code === "number" ? err.code : null) : 0, stdout, stderr }))
  })

t.test("a node killed: every key still listed once, page by page, from the others", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-keys-"))
  const cluster = await startCluster(dir, 3)
  t.teardown(async () => {
    await cluster.stopAll()
    fs.rmSync(dir, { recursive: true, force: true })
  })
  const [n1, n2, n3] = cluster.nodes as [typeof cluster.nodes[0], typeof cluster.nodes[0], typeof cluster.nodes[0]]
  const keys = Array.from({ length: 300 }, (_, i) => `item:${(i * 7919) % 1000}`)
  for (let i = 0; i < keys.length; i += 50) {
    await Promise.all(keys.slice(i, i + 50).map(async (k) => {
      const res = await fetch(`${n1.url}/kv/${encodeURIComponent(k)}?w=3`, { method: "PUT", body: "v" })
      if (res.status !== 204) throw new Error(`PUT ${k}: ${res.status}`)
    }))
  }
  const expected = [...keys].sort(compareKeys)
  t.same((await listAll(n2.url, 1000)).out, expected, "all 300 keys with every node up")

  await cluster.kill(n3, "SIGKILL")
  // At once, before the failure detector says so: n3's requests fail and go to the next replica.
  const early = await listAll(n1.url, 64)
  t.same(early.out, expected, "every key exactly once, in order, right after the kill")
  t.equal(early.pages, Math.ceil(300 / 64))
  await eventually("n3 seen down", async () => ((await clusterView(n1)).nodes.find((m) => m.id === "n3")?.status === "down" ? true : undefined), 30_000)
  const later = await listAll(n2.url, 7)
  t.same(later.out, expected, "every key exactly once with n3 down, 7 a page")
  t.equal(new Set(later.out).size, 300)
  t.same((await listAll(n1.url, 10, "item:9")).out, expected.filter((k) => k.startsWith("item:9")), "a prefix")

  const cli = await tally(["keys", "--url", n1.url, "--prefix", "item:1"])
  t.equal(cli.code, 0, cli.stderr)
  t.same(cli.stdout.trim().split("\n"), expected.filter((k) => k.startsWith("item:1")), "tally keys prints the same keys")
  const limited = await tally(["keys", "--url", n2.url, "--limit", "5", "--json"])
  t.equal(limited.code, 0, limited.stderr)
  const json = JSON.parse(limited.stdout) as { keys: string[]; cursor: string | null }
  t.same(json.keys, expected.slice(0, 5))
  t.type(json.cursor, "string", "--json gives the cursor to go on from")
  const text = await tally(["keys", "--url", n2.url, "--limit", "5"])
  t.same(text.stdout.trim().split("\n"), expected.slice(0, 5))
  t.match(text.stderr, `--cursor ${json.cursor}`, "past --limit, the cursor to go on from is on stderr")
  const rest = await tally(["keys", "--url", n2.url, "--cursor", json.cursor!])
  t.same(rest.stdout.trim().split("\n"), expected.slice(5), "--cursor goes on where --limit stopped")
})
