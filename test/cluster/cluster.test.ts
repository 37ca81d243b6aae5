/**
 * Real clusters of `tally node` processes on 127.0.0.1: formation, quorum reads and writes
 * from any coordinator, sloppy quorum with hinted handoff, strict mode, siblings across
 * coordinators, and a partition made with /admin/faults.
 */
import t from "tap"
import { clusterView, eventually, faults, get, keyOwnedBy, prefsOf, put, startCluster } from "./harness.ts"

t.test("3 and 5 node clusters form and agree on a balanced ring", async (t) => {
  for (const k of [3, 5]) {
    const c = await startCluster(t.testdir(), k)
    try {
      const views = await Promise.all(c.nodes.map(clusterView))
      for (const v of views) {
        t.same(v.owners, views[0]!.owners, `${k} nodes: same owners everywhere`)
        t.equal(v.nodes.length, k)
        for (const m of v.nodes) t.ok(m.partitions <= Math.ceil(64 / k) + 1 && m.partitions >= Math.floor(64 / k) - 1, `${m.id} owns ${m.partitions} of 64`)
      }
    } finally {
      await c.stopAll()
    }
  }
})

t.test("a 5-node cluster: R+W>N from any coordinator, handoff after a crash, strict mode", async (t) => {
  const c = await startCluster(t.testdir(), 5)
  t.teardown(() => c.stopAll())
  // Read-your-writes through every other coordinator.
  for (let i = 0; i < 20; i++) {
    const writer = c.nodes[i % 5]!
    t.equal((await put(writer, `ryw-${i}`, `v${i}`)).status, 204)
    for (const reader of c.nodes) {
      const r = await get(reader, `ryw-${i}`)
      if (r.status !== 200 || r.values[0] !== `v${i}`) t.fail(`ryw-${i} via ${reader.id}: ${r.status} ${r.body}`)
    }
  }
  t.pass("every read after an acknowledged write saw it, from every coordinator")

  // Kill a replica of some keys: writes to them still succeed, parked on a fallback.
  const victim = c.byId("n3")
  const coordinator = c.byId("n1")
  const keys: string[] = []
  for (let i = 0; keys.length < 10; i++) {
    const key = `hint-${i}`
    const prefs = await prefsOf(coordinator, key, 3)
    if (prefs.includes("n3")) keys.push(key)
  }
  await c.kill(victim)
  await eventually("n3 to be seen down", async () => ((await clusterView(coordinator)).nodes.find((m) => m.id === "n3")?.status === "down" ? true : undefined))
  for (const key of keys) t.equal((await put(coordinator, key, `parked-${key}`, "?w=2")).status, 204, `write to ${key} while n3 is down`)
  const parkedBefore = (await Promise.all(c.nodes.filter((x) => x !== victim).map(clusterView))).reduce((n, v) => n + (v.nodes.find((m) => m.id === "n3")?.parked ?? 0), 0)
  t.ok(parkedBefore >= keys.length, `${parkedBefore} writes parked for n3`)

  // Strict mode with two of three primaries down answers 503; sloppy still writes.
  const strictKey = await (async () => {
    for (let i = 0; ; i++) {
      const key = `strict-${i}`
      const prefs = await prefsOf(coordinator, key, 3)
      if (prefs.includes("n3") && prefs.includes("n4") && prefs[0] !== "n3" && prefs[0] !== "n4") return key
    }
  })()
  await c.kill(c.byId("n4"))
  await eventually("n4 to be seen down", async () => ((await clusterView(coordinator)).nodes.find((m) => m.id === "n4")?.status === "down" ? true : undefined))
  const strict = await put(coordinator, strictKey, "strict", "?sloppy=false")
  t.equal(strict.status, 503)
  const body = (await strict.json()) as { error: string; needed: number; got: number }
  t.equal(body.error, "quorum_not_met")
  t.equal(body.needed, 2)
  t.equal(body.got, 1)
  t.equal((await put(coordinator, strictKey, "sloppy")).status, 204, "sloppy mode writes with two primaries down")

  // Restart both: the parked writes arrive and the parked streams empty.
  await c.start(victim)
  await c.start(c.byId("n4"))
  await eventually("parked streams to empty", async () => {
    const views = await Promise.all(c.nodes.map(clusterView))
    return views.every((v) => v.nodes.every((m) => m.parked === 0)) ? true : undefined
  }, 30_000)
  for (const key of keys) {
    const r = await get(victim, key, "?r=1")
    // r=1 may be answered by any replica; ask n3's own copy through a strict read of one.
    t.equal(r.values[0], `parked-${key}`, `${key} readable`)
  }
  t.pass("parked writes delivered")
})

t.test("handoff delivers to the owner's own store", async (t) => {
  const c = await startCluster(t.testdir(), 3)
  t.teardown(() => c.stopAll())
  const victim = c.byId("n2")
  await c.kill(victim)
  await eventually("n2 down", async () => ((await clusterView(c.byId("n1"))).nodes.find((m) => m.id === "n2")?.status === "down" ? true : undefined))
  for (let i = 0; i < 30; i++) t.equal((await put(c.byId("n1"), `h${i}`, `v${i}`)).status, 204)
  const parked = (await clusterView(c.byId("n1"))).nodes.find((m) => m.id === "n2")!.parked
  t.equal(parked, 30, "every write parked for n2 on the coordinator")
  await c.start(victim)
  await eventually("n1's parked stream for n2 to empty", async () => ((await clusterView(c.byId("n1"))).nodes.find((m) => m.id === "n2")?.parked === 0 ? true : undefined), 30_000)
  // Cut n2 off from the others: what it answers now comes from its own store.
  await faults(victim, ["n1", "n3"])
  let found = 0
  for (let i = 0; i < 30; i++) {
    const r = await get(victim, `h${i}`, "?r=1")
    if (r.values[0] === `v${i}`) found++
  }
  t.equal(found, 30, "n2 holds every write made while it was down")
})

t.test("concurrent blind writes through different coordinators become siblings; the merged context resolves them everywhere", async (t) => {
  const c = await startCluster(t.testdir(), 3)
  t.teardown(() => c.stopAll())
  const results = await Promise.all(c.nodes.map((x, i) => put(x, "cart", `item-${i}`)))
  t.same(results.map((r) => r.status), [204, 204, 204])
  const r = await get(c.byId("n1"), "cart", "?r=3")
  t.equal(r.status, 300)
  t.same(r.values, ["item-0", "item-1", "item-2"])
  t.equal((await put(c.byId("n2"), "cart", "merged", "?w=3", r.context)).status, 204)
  for (const x of c.nodes) {
    const after = await get(x, "cart", "?r=1")
    t.same(after.values, ["merged"], `resolved on ${x.id}`)
  }
})

t.test("a partition with writes on both sides heals with every acknowledged write readable", async (t) => {
  const c = await startCluster(t.testdir(), 3)
  t.teardown(() => c.stopAll())
  const [a, b, d] = c.nodes as [typeof c.nodes[0], typeof c.nodes[0], typeof c.nodes[0]]
  for (let i = 0; i < 10; i++) await put(a, `p${i}`, "before")
  // {n1} | {n2, n3}
  await faults(a, ["n2", "n3"])
  await faults(b, ["n1"])
  await faults(d, ["n1"])
  await eventually("both sides to see the split", async () => {
    const va = await clusterView(a)
    const vb = await clusterView(b)
    return va.nodes.filter((m) => m.status === "down").length === 2 && vb.nodes.find((m) => m.id === "n1")?.status === "down" ? true : undefined
  })
  const acked = new Map<string, string[]>()
  const note = (key: string, v: string) => acked.set(key, [...(acked.get(key) ?? []), v])
  for (let i = 0; i < 10; i++) {
    // w=1 on the lone side, the default w=2 on the majority side.
    // Each side replaces what it reads ("before"); neither has seen the other's write.
    const ca = (await get(a, `p${i}`, "?r=1")).context
    const cb = (await get(b, `p${i}`)).context
    if ((await put(a, `p${i}`, `minority-${i}`, "?w=1", ca)).status === 204) note(`p${i}`, `minority-${i}`)
    if ((await put(b, `p${i}`, `majority-${i}`, "", cb)).status === 204) note(`p${i}`, `majority-${i}`)
  }
  t.equal([...acked.values()].flat().length, 20, "both sides acknowledged their writes")
  for (const x of c.nodes) await faults(x, [])
  await eventually("the split to heal", async () => ((await clusterView(a)).nodes.every((m) => m.status === "up") ? true : undefined))
  for (const [key, values] of acked) {
    const r = await eventually(`${key} to show both sides`, async () => {
      const res = await get(d, key, "?r=3")
      return values.every((v) => res.values.includes(v)) ? res : undefined
    })
    t.same(r.values, [...values].sort(), `${key}: both acknowledged writes survive, as siblings`)
  }
})

t.test("a node whose N or Q differs from the cluster's is refused with a clear error", async (t) => {
  const dataRoot = t.testdir()
  const c = await startCluster(dataRoot, 1)
  t.teardown(() => c.stopAll())
  const { spawn } = await import("node:child_process")
  for (const [flag, value] of [["--n", "5"], ["--partitions", "128"]] as const) {
    const port = c.nodes[0]!.port + 10
    const child = spawn(process.execPath, ["bin/tally.js", "node", "--id", "odd", "--port", String(port), "--data", `${dataRoot}/odd${flag}`, "--seeds", `127.0.0.1:${c.nodes[0]!.port}`, flag, value], { cwd: new URL("../..", import.meta.url).pathname, stdio: ["ignore", "pipe", "pipe"] })
    let err = ""
    let out = ""
    child.stderr!.on("data", (d: Buffer) => (err += d))
    child.stdout!.on("data", (d: Buffer) => (out += d))
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => child.kill("SIGKILL"), 30_000)
      child.on("exit", (c) => {
        clearTimeout(timer)
        resolve(c)
      })
    })
    t.not(code, 0, `${flag} ${value}: exits with an error`)
    t.notMatch(out, /^ready/m, `${flag} ${value}: never ready`)
    t.match(err, flag === "--n" ? /\bn\b.*differs|differs.*\bn\b/ : /partitions.*differs|differs.*partitions/, `${flag} ${value}: says which setting differs`)
  }
})
