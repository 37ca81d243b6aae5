/**
 * A ring that changes under load, black-box with real processes: a 3-node cluster holding
 * keys grows to 6, one node at a time, while clients write and read strictly
 * (w=2&sloppy=false, r=2&sloppy=false). No read of an acknowledged key may answer 404 or an
 * older value, and at the end every key is stored on each of its N owners. Then a node
 * leaves (and exits 0), and a killed node is removed, with the same checks.
 */
import t from "tap"
import { clusterView, eventually, get, prefsOf, put, settledOn, startCluster, type ClusterNode } from "./harness.ts"

const STRICT_W = "?w=2&sloppy=false&timeout=5000"
const STRICT_R = "?r=2&sloppy=false&timeout=5000"

interface Acked { value: string; context: string | undefined; seq: number }

const load = (nodes: () => ReadonlyArray<ClusterNode>, acked: Map<string, Acked>, issued: Map<string, Set<string>>) => {
  let stop = false
  const anomalies: string[] = []
  let reads = 0
  let writes = 0
  let failed = 0
  const reasons = new Map<string, number>()
  const why = (r: string) => reasons.set(r, (reasons.get(r) ?? 0) + 1)
  const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(Math.random() * xs.length)]!
  const writer = async (w: number) => {
    for (let i = 0; !stop; i++) {
      const key = i % 3 === 0 ? `live-${w}-${i}` : pick([...acked.keys()])
      const value = `${key}@${w}.${i}`
      const seq = ++issuedSeq.n
      seqOf.set(value, seq)
      issued.set(key, (issued.get(key) ?? new Set()).add(value))
      const res = await put(pick(nodes()), key, value, STRICT_W, acked.get(key)?.context).catch(() => undefined)
      if (res?.status === 204) {
        const prev = acked.get(key)
        if (prev === undefined || prev.seq < seq) acked.set(key, { value, context: res.headers.get("x-context") ?? undefined, seq })
        writes++
      } else {
        failed++
        why(res === undefined ? "connection" : `${res.status} ${((await res.json().catch(() => ({}))) as { error?: string }).error}`)
      }
    }
  }
  const reader = async () => {
    while (!stop) {
      const keys = [...acked.keys()]
      if (keys.length === 0) continue
      const key = pick(keys)
      const want = acked.get(key)!
      const r = await get(pick(nodes()), key, STRICT_R).catch(() => undefined)
      if (r === undefined || r.status >= 500) {
        failed++
        continue
      }
      reads++
      // Acceptable: the value acknowledged when the read began, or something issued after it
      // (a later write, whose context may have replaced it).
      if (r.status === 404) anomalies.push(`${key}: 404, acknowledged ${want.value}`)
      else if (!r.values.includes(want.value) && !r.values.some((v) => issued.get(key)?.has(v) && (seqOf.get(v) ?? 0) > want.seq)) {
        anomalies.push(`${key}: read ${r.values.join("|")}, acknowledged ${want.value}`)
      }
    }
  }
  const runs = [writer(0), writer(1), reader(), reader()]
  return {
    stop: async () => {
      stop = true
      await Promise.all(runs)
      return { anomalies, reads, writes, failed, reasons: [...reasons].map(([k, v]) => `${k}: ${v}`).join(", ") }
    }
  }
}

/** Every value ever issued gets a global sequence number, in issue order. */
const issuedSeq = { n: 0 }
const seqOf = new Map<string, number>()

/** Every acknowledged key is stored, with its acknowledged value, on each of its owners. */
const onOwners = async (t: { equal: (...args: never[]) => unknown } & { equal(a: unknown, b: unknown, m: string): unknown }, nodes: ReadonlyArray<ClusterNode>, acked: Map<string, Acked>, n: number) => {
  let missing = 0
  const examples: string[] = []
  for (const [key, want] of acked) {
    const owners = await prefsOf(nodes[0]!, key, n)
    for (const id of owners) {
      const node = nodes.find((x) => x.id === id)!
      const local = (await (await fetch(`${node.url}/admin/local/${encodeURIComponent(key)}`)).json()) as { found: boolean; versions?: Array<{ value: string }> }
      const values = (local.versions ?? []).map((v) => Buffer.from(v.value, "base64").toString())
      // The acknowledged value, or a later one (a write that missed its quorum may still
      // have been applied, and replaced it through its context).
      if (!local.found || !values.some((v) => v === want.value || (seqOf.get(v) ?? 0) > want.seq)) {
        missing++
        if (examples.length < 5) examples.push(`${key} on ${id}: ${values.join("|") || "absent"}`)
      }
    }
  }
  t.equal(missing, 0, `every acknowledged key on each of its ${n} owners${examples.length ? `: ${examples.join("; ")}` : ""}`)
}

t.test("grow 3 -> 6 under strict reads and writes, then a leave and a remove", async (t) => {
  const c = await startCluster(t.testdir(), 3, { basePort: 10000 + Math.floor(Math.random() * 800) * 4 })
  t.teardown(() => c.stopAll())
  const acked = new Map<string, Acked>()
  const issued = new Map<string, Set<string>>()
  for (let i = 0; i < 200; i++) {
    const res = await put(c.nodes[i % 3]!, `pre-${i}`, `pre-${i}@9.${i}`, "?w=3")
    t.equal(res.status, 204)
    acked.set(`pre-${i}`, { value: `pre-${i}@9.${i}`, context: res.headers.get("x-context") ?? undefined, seq: ++issuedSeq.n })
    seqOf.set(`pre-${i}@9.${i}`, issuedSeq.n)
    issued.set(`pre-${i}`, new Set([`pre-${i}@9.${i}`]))
  }
  const up = () => c.nodes.filter((x) => x.child !== undefined)
  const traffic = load(up, acked, issued)
  for (let k = 4; k <= 6; k++) {
    const before = Date.now()
    await c.add(c.nodes[(k - 1) % 3])
    const v = await settledOn(up(), k)
    t.comment(`${k} nodes settled in ${Date.now() - before} ms at ring version ${v.ringVersion}`)
  }
  let r = await traffic.stop()
  t.same(r.anomalies.slice(0, 10), [], `growth: ${r.reads} strict reads, ${r.writes} strict writes (${r.failed} failed: ${r.reasons}), no stale or missing read`)
  await onOwners(t, up(), acked, 3)

  // A leave: the node hands everything over and exits 0.
  const traffic2 = load(up, acked, issued)
  const leaver = c.byId("n6")
  const exited = new Promise<number | null>((resolve) => leaver.child!.once("exit", (code) => resolve(code)))
  const res = await fetch(`${leaver.url}/admin/leave`, { method: "POST" })
  t.equal(res.status, 202, "leave accepted")
  t.equal(await exited, 0, "the leaver exits 0")
  await settledOn(up(), 5)
  r = await traffic2.stop()
  t.same(r.anomalies.slice(0, 10), [], `leave: ${r.reads} strict reads, ${r.writes} writes, no stale or missing read`)
  await onOwners(t, up(), acked, 3)

  // A remove: a node killed for good; its partitions re-replicated from the survivors.
  const victim = c.byId("n5")
  await c.kill(victim)
  await eventually("n5 seen down", async () => ((await clusterView(c.nodes[0]!)).nodes.find((x) => x.id === "n5")?.status === "down" ? true : undefined), 30_000)
  const traffic3 = load(up, acked, issued)
  const rm = await fetch(`${c.nodes[0]!.url}/admin/remove`, { method: "POST", body: JSON.stringify({ node: "n5" }), headers: { "content-type": "application/json" } })
  t.equal(rm.status, 202, "remove accepted")
  await settledOn(up(), 4)
  r = await traffic3.stop()
  t.same(r.anomalies.slice(0, 10), [], `remove: ${r.reads} strict reads, ${r.writes} writes, no stale or missing read`)
  await onOwners(t, up(), acked, 3)
  const view = await clusterView(c.nodes[0]!)
  t.same(view.nodes.map((x) => x.id).sort(), ["n1", "n2", "n3", "n4"], "n5 and n6 are out of the ring")
})
