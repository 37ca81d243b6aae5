/**
 * Real `tally node` processes on 127.0.0.1 for cluster tests: start, kill, restart, and
 * helpers to find which nodes hold a key. Every wait is bounded.
 */
import { spawn, type ChildProcess } from "node:child_process"
import * as path from "node:path"
import { partitionOf, preferenceList, type Ring } from "../../src/ring/Ring.ts"

const root = path.resolve(import.meta.dirname, "../..")

export interface ClusterNode {
  readonly id: string
  readonly port: number
  readonly url: string
  child: ChildProcess | undefined
  log: string
}

export interface Cluster {
  readonly nodes: ClusterNode[]
  readonly n: number
  start(node: ClusterNode): Promise<void>
  kill(node: ClusterNode, signal?: NodeJS.Signals): Promise<void>
  stopAll(): Promise<void>
  byId(id: string): ClusterNode
  /** Starts one more node, joining through `seed` (default the first node). */
  add(seed?: ClusterNode): Promise<ClusterNode>
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

/** Polls `f` until it returns a value other than undefined, or fails after `ms`. */
export const eventually = async <A>(what: string, f: () => Promise<A | undefined>, ms = 20_000): Promise<A> => {
  const deadline = Date.now() + ms
  let last: unknown
  while (Date.now() < deadline) {
    try {
      const v = await f()
      if (v !== undefined) return v
    } catch (e) {
      last = e
    }
    await sleep(200)
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${String(last)}` : ""}`)
}

/** Starts `k` nodes joined through the first; resolves when all agree on a ring of k members, all up. */
export const startCluster = async (dataRoot: string, k: number, opts: { n?: number; basePort?: number; extra?: string[] } = {}): Promise<Cluster> => {
  // Client ports 10000-13999, cluster ports +1000: apart from the other test files' ranges.
  const base = opts.basePort ?? 10000 + Math.floor(Math.random() * 1000) * 4
  const n = opts.n ?? 3
  const nodes: ClusterNode[] = Array.from({ length: k }, (_, i) => ({ id: `n${i + 1}`, port: base + i, url: `http://127.0.0.1:${base + i}`, child: undefined, log: "" }))
  const seedOf = new Map<ClusterNode, ClusterNode>()
  const argsOf = (node: ClusterNode, i: number) => [
    "bin/tally.js", "node",
    "--id", node.id,
    "--port", String(node.port),
    "--cluster-port", String(node.port + 1000),
    "--data", path.join(dataRoot, node.id),
    "--n", String(n),
    "--enable-fault-injection",
    "--log-level", "warn",
    ...(i === 0 ? [] : ["--seeds", `127.0.0.1:${seedOf.get(node)?.port ?? base}`]),
    ...(opts.extra ?? [])
  ]
  const start = (node: ClusterNode) =>
    new Promise<void>((resolve, reject) => {
      const i = nodes.indexOf(node)
      const child = spawn(process.execPath, argsOf(node, i), { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
      node.child = child
      let out = ""
      const timer = setTimeout(() => reject(new Error(`${node.id} not ready in 30 s:\n${node.log}`)), 30_000)
      child.stdout!.on("data", (d: Buffer) => {
        out += d
        if (/^ready /m.test(out)) {
          clearTimeout(timer)
          resolve()
        }
      })
      child.stderr!.on("data", (d: Buffer) => (node.log += d))
      child.on("exit", (code, signal) => {
        clearTimeout(timer)
        if (node.child === child) node.child = undefined
        if (!/^ready /m.test(out)) reject(new Error(`${node.id} exited (${code ?? signal}) before ready:\n${node.log}`))
      })
    })
  const kill = async (node: ClusterNode, signal: NodeJS.Signals = "SIGKILL") => {
    const child = node.child
    if (child === undefined) return
    await new Promise<void>((resolve) => {
      child.on("exit", () => resolve())
      child.kill(signal)
    })
  }
  const cluster: Cluster = {
    nodes,
    n,
    start,
    kill,
    stopAll: async () => {
      await Promise.all(nodes.map((node) => kill(node, "SIGTERM")))
    },
    byId: (id) => nodes.find((x) => x.id === id)!,
    add: async (seed) => {
      const i = nodes.length
      const node: ClusterNode = { id: `n${i + 1}`, port: base + i, url: `http://127.0.0.1:${base + i}`, child: undefined, log: "" }
      nodes.push(node)
      if (seed !== undefined) seedOf.set(node, seed)
      await start(node)
      return node
    }
  }
  await start(nodes[0]!)
  await Promise.all(nodes.slice(1).map(start))
  await eventually(`${k} nodes to agree on the ring`, async () => {
    const views = await Promise.all(nodes.map((x) => clusterView(x)))
    const ok = views.every((v) => v.nodes.length === k && v.nodes.every((m) => m.status === "up") && JSON.stringify(v.owners) === JSON.stringify(views[0]!.owners))
    return ok ? true : undefined
  }, 40_000)
  return cluster
}

export interface View {
  readonly nodes: Array<{ id: string; address: string; status: string; partitions: number; parked: number }>
  readonly n: number
  readonly partitions: number
  readonly owners: string[]
  readonly settled: boolean
  readonly ringVersion: number
}

/** Waits until every listed node reports a settled ring of the same version with `members`. */
export const settledOn = (nodes: ReadonlyArray<ClusterNode>, members: number, ms = 120_000) =>
  eventually(`a settled ring of ${members} members`, async () => {
    const views = await Promise.all(nodes.map((x) => clusterView(x)))
    const v0 = views[0]!
    const ok = views.every((v) => v.settled && v.ringVersion === v0.ringVersion && new Set(v.owners).size === members && JSON.stringify(v.owners) === JSON.stringify(v0.owners))
    return ok ? v0 : undefined
  }, ms)

export const clusterView = async (node: ClusterNode): Promise<View> => (await fetch(`${node.url}/admin/cluster`)).json() as Promise<View>

/** The preference list of `key` according to `node`'s view. */
export const prefsOf = async (node: ClusterNode, key: string, n: number): Promise<string[]> => {
  const v = await clusterView(node)
  const ring: Ring = { partitions: v.partitions, owners: v.owners, version: 0, members: [...new Set(v.owners)].sort() }
  return preferenceList(ring, partitionOf(key, v.partitions), n)
}

/** A key whose preference list includes `id` (and, if given, does not start with `notFirst`). */
export const keyOwnedBy = async (node: ClusterNode, id: string, n: number, prefix = "k"): Promise<string> => {
  for (let i = 0; ; i++) {
    const key = `${prefix}-${i}`
    if ((await prefsOf(node, key, n)).includes(id)) return key
  }
}

export const put = (node: ClusterNode, key: string, value: string, q = "", context?: string) =>
  fetch(`${node.url}/kv/${encodeURIComponent(key)}${q}`, { method: "PUT", body: value, headers: { "content-type": "text/plain", ...(context ? { "x-context": context } : {}) } })

export const get = async (node: ClusterNode, key: string, q = "") => {
  const res = await fetch(`${node.url}/kv/${encodeURIComponent(key)}${q}`)
  const text = await res.text()
  const values = res.status === 200 ? [text] : res.status === 300 ? (JSON.parse(text).siblings as Array<{ value: string }>).map((s) => Buffer.from(s.value, "base64").toString()).sort() : []
  return { status: res.status, values, context: res.headers.get("x-context") ?? undefined, body: text }
}

export const faults = (node: ClusterNode, drop: string[]) =>
  fetch(`${node.url}/admin/faults`, { method: "POST", body: JSON.stringify({ drop }), headers: { "content-type": "application/json" } })

// ---- strict load and its checks, shared by the membership tests (joins, transfer-kill) ------

/** A write the cluster acknowledged: its value, the context it returned, its issue order. */
export interface AckedWrite {
  value: string
  context: string | undefined
  seq: number
  /** The node that coordinated it and when it answered (Date.now()), where known. */
  via?: string
  ackedAt?: number
}

/** What a test wrote: the newest acknowledged write per key, and every value ever issued. */
export interface WriteHistory {
  readonly acked: Map<string, AckedWrite>
  /** Per key, each issued value with its issue sequence number (acknowledged or not). */
  readonly issued: Map<string, Map<string, number>>
  seq: number
}

export const newHistory = (): WriteHistory => ({ acked: new Map(), issued: new Map(), seq: 0 })

/** Issues a value for `key`; returns its sequence number. */
const issue = (h: WriteHistory, key: string, value: string): number => {
  const seq = ++h.seq
  let m = h.issued.get(key)
  if (m === undefined) h.issued.set(key, (m = new Map()))
  m.set(value, seq)
  return seq
}

const ack = (h: WriteHistory, key: string, value: string, seq: number, context: string | undefined, via?: string) => {
  const prev = h.acked.get(key)
  if (prev === undefined || prev.seq < seq) h.acked.set(key, { value, context, seq, ...(via === undefined ? {} : { via, ackedAt: Date.now() }) })
}

/**
 * Whether `values` (what a read, or one replica, returned for `key`) is acceptable given the
 * write acknowledged before the read began: it holds that value, or one issued after it (a later
 * write, acknowledged or not, whose context may have replaced it).
 */
export const acceptable = (h: WriteHistory, key: string, want: AckedWrite, values: ReadonlyArray<string>): boolean =>
  values.includes(want.value) || values.some((v) => (h.issued.get(key)?.get(v) ?? 0) > want.seq)

/** Writes `count` keys `<prefix>-<i>` with values of `bytes` bytes, `w` acknowledgements, `parallel` at a time. */
export const preload = async (h: WriteHistory, nodes: ReadonlyArray<ClusterNode>, count: number, opts: { prefix?: string; bytes?: number; w?: number; parallel?: number } = {}) => {
  const prefix = opts.prefix ?? "pre"
  const pad = "x".repeat(Math.max(0, (opts.bytes ?? 0) - 24))
  const parallel = opts.parallel ?? 32
  let next = 0
  const failures: string[] = []
  await Promise.all(Array.from({ length: parallel }, async () => {
    for (let i = next++; i < count; i = next++) {
      const key = `${prefix}-${i}`
      const value = `${key}@pre|${pad}`
      const seq = issue(h, key, value)
      const res = await put(nodes[i % nodes.length]!, key, value, `?w=${opts.w ?? 3}`)
      if (res.status === 204) ack(h, key, value, seq, res.headers.get("x-context") ?? undefined, nodes[i % nodes.length]!.id)
      else failures.push(`${key}: ${res.status} ${await res.text()}`)
    }
  }))
  return failures
}

/** One read that missed an acknowledged write. */
export interface Anomaly {
  readonly key: string
  /** The node that coordinated the read, and when it was sent and answered (Date.now()). */
  readonly via: string
  readonly sentAt: number
  readonly answeredAt: number
  readonly status: number
  readonly values: string[]
  readonly want: AckedWrite
  /** What `diagnose` found right after. */
  readonly diagnosis?: string
}

export interface LoadReport {
  /** Reads that missed an acknowledged write: `<ms since start> <key>: <what>`. */
  readonly anomalies: string[]
  readonly details: Anomaly[]
  readonly reads: number
  readonly writes: number
  readonly failed: number
  readonly reasons: string
}

/**
 * Clients that write (w=2&sloppy=false) and read (r=2&sloppy=false) through random nodes of
 * `nodes()` until stopped. A third of the writes create keys, the rest overwrite acknowledged
 * ones with their context. A read that answers 404 or neither the value acknowledged when it
 * began nor a later one is an anomaly.
 */
export const strictLoad = (
  nodes: () => ReadonlyArray<ClusterNode>,
  h: WriteHistory,
  opts: { writers?: number; readers?: number; tag?: string; diagnose?: (key: string, via: ClusterNode, want: AckedWrite) => Promise<string> } = {}
) => {
  const W = "?w=2&sloppy=false&timeout=5000"
  const R = "?r=2&sloppy=false&timeout=5000"
  const t0 = Date.now()
  let stop = false
  const anomalies: string[] = []
  const details: Anomaly[] = []
  let reads = 0
  let writes = 0
  let failed = 0
  const reasons = new Map<string, number>()
  const why = (r: string) => reasons.set(r, (reasons.get(r) ?? 0) + 1)
  const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(Math.random() * xs.length)]!
  const tag = opts.tag ?? "live"
  const writer = async (w: number) => {
    for (let i = 0; !stop; i++) {
      const targets = nodes()
      if (targets.length === 0 || h.acked.size === 0) {
        await sleep(50)
        continue
      }
      const key = i % 3 === 0 ? `${tag}-${w}-${i}` : pick([...h.acked.keys()])
      const value = `${key}@${w}.${i}`
      const seq = issue(h, key, value)
      const via = pick(targets)
      const res = await put(via, key, value, W, h.acked.get(key)?.context).catch(() => undefined)
      if (res?.status === 204) {
        ack(h, key, value, seq, res.headers.get("x-context") ?? undefined, via.id)
        writes++
      } else {
        failed++
        why(res === undefined ? "write: connection" : `write: ${res.status} ${((await res.json().catch(() => ({}))) as { error?: string }).error}`)
      }
    }
  }
  const reader = async () => {
    while (!stop) {
      const targets = nodes()
      const keys = [...h.acked.keys()]
      if (keys.length === 0 || targets.length === 0) {
        await sleep(50)
        continue
      }
      const key = pick(keys)
      const want = h.acked.get(key)!
      const via = pick(targets)
      const sentAt = Date.now()
      const r = await get(via, key, R).catch(() => undefined)
      const answeredAt = Date.now()
      if (r === undefined || r.status >= 500) {
        failed++
        why(r === undefined ? "read: connection" : `read: ${r.status} ${(JSON.parse(r.body || "{}") as { error?: string }).error}`)
        continue
      }
      reads++
      if (r.status === 404 || !acceptable(h, key, want, r.values)) {
        const diagnosis = opts.diagnose === undefined ? undefined : await opts.diagnose(key, via, want).catch((e) => `diagnosis failed: ${String(e)}`)
        const what = r.status === 404 ? "404" : `read ${r.values.map((v) => v.split("|")[0]).join(" | ")}`
        const by = want.via === undefined ? "" : ` (coordinated by ${want.via}, answered ${sentAt - want.ackedAt!} ms before this read was sent)`
        anomalies.push(`${answeredAt - t0} ms ${key} via ${via.id}: ${what}, acknowledged ${want.value.split("|")[0]}${by}${diagnosis === undefined ? "" : `; ${diagnosis}`}`)
        details.push({ key, via: via.id, sentAt, answeredAt, status: r.status, values: r.values, want, ...(diagnosis === undefined ? {} : { diagnosis }) })
      }
    }
  }
  const runs = [
    ...Array.from({ length: opts.writers ?? 2 }, (_, w) => writer(w)),
    ...Array.from({ length: opts.readers ?? 2 }, () => reader())
  ]
  return {
    stop: async (): Promise<LoadReport> => {
      stop = true
      await Promise.all(runs)
      return { anomalies, details, reads, writes, failed, reasons: [...reasons].map(([k, v]) => `${k}: ${v}`).join(", ") }
    }
  }
}

/**
 * Every acknowledged key, read once strictly through a node of `nodes`, and looked up on each of
 * its N owners (by `nodes[0]`'s ring) with `GET /admin/local/:key`. Returns what is wrong.
 */
export const checkAcked = async (nodes: ReadonlyArray<ClusterNode>, h: WriteHistory, n: number) => {
  const unreadable: string[] = []
  const missing: string[] = []
  let i = 0
  const entries = [...h.acked]
  let next = 0
  const v = await clusterView(nodes[0]!)
  const ring: Ring = { partitions: v.partitions, owners: v.owners, version: 0, members: [...new Set(v.owners)].sort() }
  await Promise.all(Array.from({ length: 16 }, async () => {
    for (let j = next++; j < entries.length; j = next++) {
      const [key, want] = entries[j]!
      const r = await get(nodes[i++ % nodes.length]!, key, "?r=2&sloppy=false&timeout=5000")
      if (r.status !== 200 && r.status !== 300) unreadable.push(`${key}: ${r.status} ${r.body.slice(0, 120)}`)
      else if (!acceptable(h, key, want, r.values)) unreadable.push(`${key}: read ${r.values.map((v) => v.split("|")[0]).join(" | ")}, acknowledged ${want.value.split("|")[0]}`)
      for (const id of preferenceList(ring, partitionOf(key, v.partitions), n)) {
        const node = nodes.find((x) => x.id === id)
        if (node === undefined) {
          missing.push(`${key}: owner ${id} is not among the nodes checked`)
          continue
        }
        const local = (await (await fetch(`${node.url}/admin/local/${encodeURIComponent(key)}`)).json()) as { found: boolean; versions?: Array<{ value: string }> }
        const values = (local.versions ?? []).map((v) => Buffer.from(v.value, "base64").toString())
        if (!local.found || !acceptable(h, key, want, values)) missing.push(`${key} on ${id}: ${values.map((v) => v.split("|")[0]).join(" | ") || "absent"}, acknowledged ${want.value.split("|")[0]}`)
      }
    }
  }))
  return { unreadable, missing }
}
