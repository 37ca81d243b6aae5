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
