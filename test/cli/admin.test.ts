/**
 * `tally admin` against stand-in nodes (fixtures/stub-node.ts) that serve canned /admin
 * answers: each command's plain output and --json, the POST bodies sent, exit codes for a
 * node's error, no node and bad usage, and --watch / --wait polling until no transfer is
 * left, as plain lines since a test's stdout is no terminal.
 */
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import t, { type Test } from "tap"
import { aaeView, clusterView, transferSteps } from "./fixtures/stub-node.ts"
import { freePort, noStack, run, start, stub } from "./fixtures/tally.ts"

/**
 * A stub node, stopped when `t` ends. Its port is drawn from 26000-31999, which no other
 * suite uses and the kernel does not hand out for outgoing connections; a port found taken
 * is drawn again.
 */
const stubNode = async (t: Test, id: string, env: Record<string, string> = {}) => {
  for (let attempt = 1; ; attempt++) {
    const port = 26000 + Math.floor(Math.random() * 6000)
    const node = start(["node", "--id", id, "--port", String(port)], { TALLY_TEST_NODE_MODULE: stub, ...env }, undefined, 120_000)
    try {
      await node.waitFor("ready line", () => node.stdout().includes("ready"))
    } catch (e) {
      await node.exited
      await new Promise((r) => setTimeout(r, 200)) // the last of stderr
      if (attempt < 5 && node.stderr().includes("EADDRINUSE")) continue
      throw e
    }
    let stopping = false
    void node.exited.then((exit) => {
      if (!stopping) t.comment(`stub node ${id} on ${port} exited by itself: ${JSON.stringify(exit)}; stderr: ${node.stderr()}`)
    })
    t.teardown(() => {
      stopping = true
      if (node.child.exitCode === null && node.child.signalCode === null) node.child.kill("SIGKILL")
    })
    const url = `http://127.0.0.1:${port}`
    const posts = async () => ((await (await fetch(`${url}/stub`)).json()) as { posts: Array<{ path: string; body: string; authorization: string | null }> }).posts
    const reset = async () => void (await fetch(`${url}/stub/reset`, { method: "POST" }))
    return { port, url, node, posts, reset }
  }
}

const admin = (args: ReadonlyArray<string>) => run(["admin", ...args])

/** What --watch prints for the stub's transfer sequence, from its first step. */
const watchLines = (self: string) =>
  [
    `partition 3 ${self}->n2 running 20/100`,
    `partition 7 n3->${self} pending 0/40`,
    `partition 3 ${self}->n2 running 60/100`,
    `partition 7 n3->${self} running 20/40`,
    `partition 3 ${self}->n2 done 100/100`,
    `partition 7 n3->${self} running 40/40`,
    `partition 7 n3->${self} done 40/40`,
    "no transfers: the ring is settled"
  ].join("\n") + "\n"

t.test("status, ring and transfers: tables and lines, or the node's JSON", async (t) => {
  const { url, port, reset } = await stubNode(t, "n1")
  const [status, statusJson, ring, ringJson] = await Promise.all([
    admin(["status", "--url", url]),
    admin(["status", "--url", url, "--json"]),
    admin(["ring", "--url", `${url}/`]),
    admin(["ring", "--url", url, "--json"])
  ])
  t.equal(status.code, 0)
  t.equal(status.stderr, "")
  t.equal(
    status.stdout.toString(),
    [
      "ID  ADDRESS          STATUS   PARTITIONS  PARKED",
      `n1  127.0.0.1:${port + 1000}  up       6           0`,
      "n2  127.0.0.1:9082   suspect  5           12",
      "n3  127.0.0.1:9083   leaving  5           0",
      "3 members, n 3, 16 partitions",
      "ring: not settled; partitions are moving (tally admin transfers shows them)",
      ""
    ].join("\n")
  )
  t.equal(statusJson.code, 0)
  t.same(JSON.parse(statusJson.stdout.toString()), clusterView("n1", port, false), "--json is the node's answer")
  t.equal(statusJson.stdout.toString().split("\n").length, 2, "on one line")

  t.equal(ring.code, 0, "a trailing slash on --url is fine")
  t.equal(
    ring.stdout.toString(),
    ["16 partitions, n 3", "OWNER  COUNT  PARTITIONS", "n1     6      0-2, 9-11", "n2     5      3-5, 12-13", "n3     5      6-8, 14-15", ""].join("\n")
  )
  t.same(JSON.parse(ringJson.stdout.toString()), clusterView("n1", port, false))

  await reset()
  const transfers = await admin(["transfers", "--url", url])
  t.equal(transfers.code, 0)
  t.equal(transfers.stdout.toString(), "partition 3 n1->n2 running 20/100\npartition 7 n3->n1 pending 0/40\n")
  await reset()
  const transfersJson = await admin(["transfers", "--url", url, "--json"])
  t.same(JSON.parse(transfersJson.stdout.toString()), { transfers: transferSteps("n1")[0] })
  const [, , empty, emptyJson] = [await admin(["transfers", "--url", url]), await admin(["transfers", "--url", url]), await admin(["transfers", "--url", url]), await admin(["transfers", "--url", url, "--json"])]
  t.equal(empty!.stdout.toString(), "no transfers: the ring is settled\n")
  t.equal(emptyJson!.stdout.toString(), '{"transfers":[]}\n')
})

t.test("aae: a row per partition, or the node's JSON; compact: POST /admin/compact", async (t) => {
  const { url, posts } = await stubNode(t, "n1")
  const [plain, json, compact, compactJson] = [
    await admin(["aae", "--url", url]),
    await admin(["aae", "--url", url, "--json"]),
    await admin(["compact", "--url", url]),
    await admin(["compact", "--url", url, "--json"])
  ]
  t.equal(plain.code, 0)
  t.equal(plain.stderr, "")
  const lines = plain.stdout.toString().split("\n")
  t.equal(lines[0], "node n1: 2 partitions, tombstone grace 86400 s")
  t.match(lines[1], /^PARTITION +KEYS +PEERS +LAST EXCHANGE +EXCHANGES +COMPARED +REPAIRED +BYTES +TOMBSTONES$/)
  t.match(lines[2], /^2 +120 +n2,n3 +\d+d ago +14 +40 +6 +20480 +reapable up to 2025-12-31T00:00:00.000Z$/, "sorted by partition")
  t.match(lines[3], /^5 +3 +n2 +never +0 +0 +0 +0 +kept: no clean anti-entropy exchange with every other primary yet$/)
  t.equal(lines[4], "total: 14 exchanges, 40 keys compared, 6 repaired, 20480 bytes")
  t.same(JSON.parse(json.stdout.toString()), aaeView("n1"), "--json is the node's answer")
  t.equal(json.stdout.toString().split("\n").length, 2, "on one line")

  t.equal(compact.code, 0)
  t.equal(compact.stdout.toString(), "node n1 is compacting: it reaps the tombstones that may be reaped (tally admin aae says which may)\n")
  t.same(JSON.parse(compactJson.stdout.toString()), { node: "n1", status: "compacting", message: "stub" })
  t.same((await posts()).map((p) => p.path), ["/admin/compact", "/admin/compact"])
})

t.test("transfers --watch polls until the list is empty: plain lines, or one JSON answer per line", async (t) => {
  const { url, reset } = await stubNode(t, "n1")
  await reset()
  const started = Date.now()
  const watch = await admin(["transfers", "--watch", "--url", url])
  t.equal(watch.code, 0)
  t.equal(watch.stdout.toString(), watchLines("n1"), "a line per change, done when a transfer leaves the list, then settled")
  t.ok(Date.now() - started >= 3_000, "polled every second: 4 polls take 3 s at least")
  t.equal(watch.stderr, "")

  await reset()
  const json = await admin(["transfers", "--watch", "--json", "--interval", "50", "--url", url])
  t.equal(json.code, 0)
  t.same(
    json.stdout.toString().trimEnd().split("\n").map((l) => JSON.parse(l) as unknown),
    transferSteps("n1").map((transfers) => ({ transfers })),
    "every poll's answer, the last one empty"
  )
})

t.test("remove sends the node's id; --wait follows the re-replication", async (t) => {
  const { url, posts } = await stubNode(t, "n1")
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-admin-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  fs.writeFileSync(path.join(dir, "token"), "s3cret\n")

  const removed = await admin(["remove", "n2", "--url", url, "--admin-token-file", path.join(dir, "token")])
  t.equal(removed.code, 0)
  t.equal(removed.stdout.toString(), "removed n2; its partitions are re-replicated from the surviving replicas (tally admin transfers --watch follows it)\n")
  t.same(await posts(), [{ path: "/admin/remove", body: '{"node":"n2"}', authorization: "Bearer s3cret" }], "the body and the token, trimmed")

  const json = await admin(["remove", "n3", "--url", url, "--json"])
  t.equal(json.code, 0)
  t.equal(json.stdout.toString(), '{"node":"n3","status":"removed"}\n')

  const waited = await admin(["remove", "n2", "--wait", "--interval", "50", "--url", url])
  t.equal(waited.code, 0)
  t.equal(waited.stdout.toString(), `removed n2; its partitions are re-replicated from the surviving replicas\n${watchLines("n1")}`)

  const unknown = await admin(["remove", "n9", "--url", url])
  t.equal(unknown.code, 1, "the node's error exits 1")
  t.equal(unknown.stderr, "error: bad_request: n9 is not a member\n")
  t.equal(unknown.stdout.length, 0)
  t.same((await posts()).map((p) => p.body), ['{"node":"n2"}', '{"node":"n3"}', '{"node":"n2"}', '{"node":"n9"}'])
})

t.test("leave: 202, then --wait follows the handoff until the list is empty or the node has gone", async (t) => {
  const plain = await stubNode(t, "n1")
  const left = await admin(["leave", "--url", plain.url])
  t.equal(left.code, 0)
  t.equal(left.stdout.toString(), "node n1 is leaving: it hands its partitions to their new owners, then exits\n")
  t.same(await plain.posts(), [{ path: "/admin/leave", body: "{}", authorization: null }])

  const waited = await stubNode(t, "n4")
  const follow = await admin(["leave", "--wait", "--interval", "50", "--url", waited.url])
  t.equal(follow.code, 0)
  t.equal(follow.stdout.toString(), `node n4 is leaving: it hands its partitions to their new owners, then exits\n${watchLines("n4")}`)
  t.same(await waited.node.exited, { code: 0, signal: null }, "the node exited after its handoff")

  const gone = await stubNode(t, "n5", { STUB_LEAVE_EXIT_AT: "1" })
  const early = await admin(["leave", "--wait", "--json", "--interval", "200", "--url", gone.url])
  t.equal(early.code, 0, "a leaving node that stops answering has finished")
  t.same(early.stdout.toString().trimEnd().split("\n").map((l) => JSON.parse(l) as unknown), [
    { node: "n5", status: "leaving" },
    { transfers: transferSteps("n5")[0] },
    { transfers: transferSteps("n5")[1] }
  ])
  const again = await stubNode(t, "n6", { STUB_LEAVE_EXIT_AT: "0" })
  const plainGone = await admin(["leave", "--wait", "--interval", "200", "--url", again.url])
  t.equal(plainGone.code, 0)
  t.equal(
    plainGone.stdout.toString(),
    "node n6 is leaving: it hands its partitions to their new owners, then exits\n" +
      "partition 3 n6->n2 running 20/100\npartition 7 n3->n6 pending 0/40\n" +
      "partition 3 n6->n2 done 100/100\npartition 7 n3->n6 done 40/40\n" +
      `${again.url} stopped answering, as a leaving node does once it has handed off its partitions and exited\n`
  )
})

t.test("a node's error exits 1, an answer of the wrong shape exits 1, no node exits 3", async (t) => {
  const failing = await stubNode(t, "n1", { STUB_ADMIN_ERROR: "not_joined" })
  const calls = [["status"], ["ring"], ["transfers"], ["transfers", "--watch"], ["leave"], ["remove", "n2"], ["aae"], ["compact"]]
  // Four processes at a time: a loaded machine must not push one past its 20 s.
  const batched = async (f: (args: ReadonlyArray<string>) => ReturnType<typeof admin>) => {
    const out: Array<Awaited<ReturnType<typeof admin>>> = []
    for (let i = 0; i < calls.length; i += 4) out.push(...(await Promise.all(calls.slice(i, i + 4).map(f))))
    return out
  }
  const failed = await batched((args) => admin([...args, "--url", failing.url]))
  for (const [i, args] of calls.entries()) {
    const r = failed[i]!
    t.equal(r.code, 1, `${args.join(" ")} exits 1`)
    t.equal(r.stderr, "error: not_joined: stub: the admin routes fail\n")
    t.equal(r.stdout.length, 0)
  }

  const minimal = await stubNode(t, "n1", { STUB_CLUSTER_MINIMAL: "1" })
  const status = await admin(["status", "--url", minimal.url])
  t.equal(status.code, 0, "settled and owners are optional in the status")
  t.match(status.stdout.toString(), "ring: this node does not say whether it is settled\n")
  const ring = await admin(["ring", "--url", minimal.url])
  t.equal(ring.code, 1)
  t.equal(ring.stderr, `error: bad_answer: ${minimal.url}: /admin/cluster does not list the partitions' owners\n`)
  const wrong = await admin(["status", "--url", `${minimal.url}/stub`])
  t.equal(wrong.code, 2, "a --url with a path is refused before anything is sent")
  t.match(wrong.stderr, `error: --url must be a node's address without a path, such as http://127.0.0.1:8081; got ${minimal.url}/stub (remove /stub`)

  const port = await freePort()
  const gone = await batched((args) => admin([...args, "--url", `http://127.0.0.1:${port}`]))
  for (const [i, args] of calls.entries()) {
    const r = gone[i]!
    t.equal(r.code, 3, `${args.join(" ")} exits 3`)
    t.equal(r.stderr, `error: unreachable: cannot reach http://127.0.0.1:${port}: connection refused; is a node running there?\n`)
  }
})

t.test("usage errors exit 2 before anything is sent; help lists every subcommand and flag", async (t) => {
  const usages = [
    ["admin"],
    ["admin", "bogus"],
    ["admin", "remove"],
    ["admin", "remove", "not an id"],
    ["admin", "status", "--url", "ftp://x"],
    ["admin", "transfers", "--watch", "--interval", "0"],
    ["admin", "status", "--admin-token-file", "/nonexistent/token"],
    ["admin", "ring", "--bogus"]
  ]
  const ran = await Promise.all(usages.map((args) => run(args)))
  for (const [i, args] of usages.entries()) {
    const r = ran[i]!
    t.equal(r.code, 2, `${args.join(" ")} exits 2`)
    t.equal(r.stdout.length, 0)
    noStack(t, r.stderr)
  }
  t.equal(ran[3]!.stderr, 'error: a node id is 1 to 64 of A-Z a-z 0-9 _ . -; got "not an id"\n')
  t.equal(ran[4]!.stderr, "error: --url must be an http:// or https:// address such as http://127.0.0.1:8081; got ftp://x\n")
  t.equal(ran[6]!.stderr, "error: cannot read --admin-token-file /nonexistent/token: no such file\n")

  const help = await run(["admin", "--help"])
  t.equal(help.code, 0)
  for (const c of ["status", "ring", "transfers", "leave", "remove", "aae", "compact"]) t.match(help.stdout.toString(), c)
  const flags = [
    ["status", ["--url", "--json", "--admin-token-file"]],
    ["ring", ["--url", "--json"]],
    ["transfers", ["--url", "--json", "--watch", "--interval"]],
    ["leave", ["--url", "--json", "--wait", "--interval"]],
    ["remove", ["--url", "--json", "--wait", "<node>"]],
    ["aae", ["--url", "--json", "--admin-token-file"]],
    ["compact", ["--url", "--json", "--admin-token-file"]]
  ] as const
  const helps = [
    ...(await Promise.all(flags.slice(0, 4).map(([cmd]) => run(["admin", cmd, "--help"])))),
    ...(await Promise.all(flags.slice(4).map(([cmd]) => run(["admin", cmd, "--help"]))))
  ]
  for (const [i, [cmd, names]] of flags.entries()) {
    const text = helps[i]!.stdout.toString()
    t.equal(helps[i]!.code, 0, `admin ${cmd} --help exits 0`)
    for (const f of names) t.match(text, f, `admin ${cmd} --help lists ${f}`)
    t.match(text.replace(/\s+/g, " "), "(default $TALLY_URL, else http://127.0.0.1:8081)")
  }
})
