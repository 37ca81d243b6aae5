/**
 * The deterministic whole-cluster simulator: one seed, one run. 3 to 9 real nodes in this
 * process over a simulated network (MemoryNetwork), disk (in-memory files) and clock
 * (VirtualTime), clients doing read-merge-write of sets plus deletes through the nodes' HTTP
 * apps (inject), a nemesis (network, node, disk and membership faults, clock skew), then
 * healing, convergence and the set-full checker (chaos/Checker.ts).
 *
 * Everything a run does is a function of its seed: timers, clocks and Math.random are
 * virtual for its length, the workload and the nemesis draw from seeded generators, and the
 * network from its own. The event log (every client operation and answer, every fault, every
 * message delivered, the final reads) is hashed; the same seed and commit give the same hash.
 */
import { createHash } from "node:crypto"
import { checkSets, elementsOf, type DeleteOp, type FinalVersion, type ReadOp, type SetVerdict, type WriteOp } from "../chaos/Checker.ts"
import { partitionOf, preferenceList } from "../src/ring/Ring.ts"
import { MemoryNetwork } from "../src/transport/MemoryNetwork.ts"
import * as Dvv from "../src/versions/Dvv.ts"
import * as Replica from "../src/replica/Replica.ts"
import { defaultNodeConfig, SimNode, type SimNodeConfig } from "./SimNode.ts"
import { prng } from "../engine/Prng.ts"
import { EPOCH_MS, Stalled, VirtualLoop, wallNow } from "./VirtualTime.ts"

/** The fault kinds of the nemesis. */
export const faultKinds = [
  "partition", "oneWay", "lossy", "duplicate", "slow", "pause", "kill", "crash", "wipe",
  "fsyncError", "diskFull", "bitFlip", "skew", "join", "leave", "remove"
] as const
export type FaultKind = (typeof faultKinds)[number]

/** What a run is given. */
export interface SimOptions {
  readonly seed: number
  /** Nodes at the start, 3..9. */
  readonly nodes?: number
  /** Client operations (a read then a write or a delete) to attempt. */
  readonly ops?: number
  readonly clients?: number
  readonly keys?: number
  /** Fault kinds the nemesis may inject (default all). */
  readonly faults?: ReadonlyArray<FaultKind>
  /** The test-only switch that turns merges into last-write-wins (Dvv.unsafeTesting). */
  readonly lww?: boolean
  /** The test-only switch that reintroduces kv679: a node reuses its epoch (Replica.unsafeTesting). */
  readonly kv679?: boolean
  /** Keep the whole event log in the result (it is always hashed). */
  readonly keepLog?: boolean
  readonly node?: Partial<SimNodeConfig>
}

/** What a run found. */
export interface SimResult {
  readonly seed: number
  readonly ok: boolean
  /** Why the run failed, when it did. */
  readonly problems: string[]
  /** SHA-256 of the event log. */
  readonly hash: string
  readonly events: number
  readonly attempted: number
  readonly acked: number
  readonly lost: number
  readonly covered: number
  readonly unexpected: number
  readonly resurrected: number
  readonly deletesAcked: number
  /** Tombstones compaction reaped on the nodes up at the end. */
  readonly reapedTombstones: number
  readonly converged: boolean
  readonly convergenceMs: number
  readonly faults: Record<FaultKind, number>
  readonly virtualMs: number
  readonly wallMs: number
  readonly tasks: number
  readonly verdict?: SetVerdict
  /** The last lines of the event log (all of them with keepLog). */
  readonly log: string[]
  /** The command that replays this run. */
  readonly replay: string
  /** Wall ms spent starting the cluster, in the workload, healing and converging, checking (not in the log: not deterministic). */
  readonly phasesMs: { readonly start: number; readonly workload: number; readonly converge: number; readonly check: number }
}

/** The command line that replays a run with these options. */
export const replayCommand = (o: SimOptions): string =>
  ["npm run sim --", `--seed ${o.seed}`, `--nodes ${o.nodes ?? 5}`, `--ops ${o.ops ?? 1000}`,
    ...(o.clients !== undefined ? [`--clients ${o.clients}`] : []), ...(o.keys !== undefined ? [`--keys ${o.keys}`] : []),
    ...(o.faults !== undefined ? [`--faults ${o.faults.length === 0 ? "none" : o.faults.join(",")}`] : []), ...(o.lww ? ["--lww"] : []), ...(o.kv679 ? ["--kv679"] : [])].join(" ")

type View = { nodes: Array<{ id: string; status: string; parked: number }>; owners: string[]; settled: boolean; ringVersion: number; partitions: number }

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms))

const phases = (start: number, marks: ReadonlyArray<number>, end: number) => {
  const at = (i: number) => marks[i] ?? end
  return { start: at(0) - start, workload: at(1) - at(0), converge: at(2) - at(1), check: end - at(2) }
}

/** Runs one seed. Never throws for a failure of Tally's: that is in `problems`. */
export const runSim = async (o: SimOptions): Promise<SimResult> => {
  const nodesN = Math.min(9, Math.max(3, o.nodes ?? 5))
  const opsN = o.ops ?? 1000
  const clientsN = o.clients ?? Math.max(4, nodesN * 2)
  const keysN = o.keys ?? Math.max(4, Math.ceil(opsN / 60))
  const enabled = o.faults ?? faultKinds
  const config = { ...defaultNodeConfig, ...(o.node ?? {}) }
  const loop = new VirtualLoop(o.seed)
  const wall0 = wallNow()
  const hash = createHash("sha256")
  const tail: string[] = []
  let events = 0
  const log = (line: string) => {
    const l = `${loop.nowMs() - EPOCH_MS} ${line}`
    hash.update(l)
    hash.update("\n")
    events++
    if (o.keepLog) tail.push(l)
    else {
      tail.push(l)
      if (tail.length > 400) tail.splice(0, 200)
    }
  }
  const problems: string[] = []
  const faults = Object.fromEntries(faultKinds.map((k) => [k, 0])) as Record<FaultKind, number>
  const writes: WriteOp[] = []
  const deletes: DeleteOp[] = []
  const reads: ReadOp[] = []
  let attempted = 0
  let converged = false
  let convergenceMs = 0
  let verdict: SetVerdict | undefined
  let reaped = 0
  const marks: number[] = []
  const mark = () => marks.push(wallNow())

  const saved = { lww: Dvv.unsafeTesting.lastWriteWins, kv679: Replica.unsafeTesting.reuseEpoch }
  Dvv.unsafeTesting.lastWriteWins = o.lww === true
  Replica.unsafeTesting.reuseEpoch = o.kv679 === true
  try {
    await loop.run(async () => {
      const network = new MemoryNetwork({ seed: o.seed ^ 0x2545f491, defaults: { latencyMs: 1, jitterMs: 3 } })
      network.onDeliver = (from, to, kind) => log(`d ${from}>${to} ${kind}`)
      const wl = prng(o.seed ^ 0x5eed)
      const nm = prng(o.seed ^ 0xfa17)
      const pick = <A>(r: () => number, xs: ReadonlyArray<A>): A => xs[Math.floor(r() * xs.length)]!
      const sims: SimNode[] = []
      let nextId = 1
      const newNode = () => {
        const n = new SimNode(`n${nextId++}`, network, config)
        sims.push(n)
        return n
      }
      const members = () => sims.filter((n) => n.state !== "removed")
      const upNodes = () => sims.filter((n) => n.state === "up" && !network.isPaused(n.id))
      const seedsFor = (n: SimNode) => members().filter((x) => x !== n && x.state === "up").map((x) => x.id)
      const inject = async (n: SimNode, method: "GET" | "PUT" | "DELETE" | "POST", url: string, body?: string, headers: Record<string, string> = {}, ms = 15_000) => {
        const app = n.node?.app
        if (app === undefined) return undefined
        const timer = new Promise<undefined>((r) => setTimeout(() => r(undefined), ms))
        const res = app.inject({ method, url, headers, ...(body === undefined ? {} : { payload: body }) }).then(
          (r) => ({ status: r.statusCode, body: r.body, context: r.headers["x-context"] as string | undefined }),
          () => undefined
        )
        return Promise.race([res, timer])
      }
      const view = async (n: SimNode) => {
        const r = await inject(n, "GET", "/admin/cluster", undefined, {}, 5000)
        return r?.status === 200 ? (JSON.parse(r.body) as View) : undefined
      }
      const until = async (what: string, f: () => Promise<boolean>, ms: number, every = 200) => {
        const deadline = Date.now() + ms
        while (Date.now() < deadline) {
          if (await f().catch(() => false)) return true
          await sleep(every)
        }
        log(`gave up waiting for ${what}`)
        return false
      }
      const agreed = async (ns: SimNode[]) => {
        const vs = await Promise.all(ns.map(view))
        if (vs.some((v) => v === undefined)) return undefined
        const v0 = vs[0]!
        const ok = vs.every((v) => v!.settled && v!.ringVersion === v0.ringVersion && v!.owners.join() === v0.owners.join() && v!.nodes.every((m) => m.status === "up" || !ns.some((x) => x.id === m.id)))
        return ok ? v0 : undefined
      }
      const keys = Array.from({ length: keysN }, (_, i) => `set-${i}`)
      /** The live versions of `key` on `n` (dot and elements), sorted by dot. */
      const localOf = async (n: SimNode, key: string): Promise<FinalVersion[] | undefined> => {
        const r = await inject(n, "GET", `/admin/local/${key}`, undefined, {}, 5000)
        if (r?.status !== 200) return undefined
        const j = JSON.parse(r.body) as { found: boolean; versions?: Array<{ dot: string; deleted: boolean; value: string }> }
        return (j.versions ?? []).filter((v) => !v.deleted).map((v) => ({ dot: v.dot, elements: JSON.parse(Buffer.from(v.value, "base64").toString()) as string[] })).sort((a, b) => (a.dot < b.dot ? -1 : 1))
      }
      /** Why the replicas have not converged (every primary of every key the same live versions, on a ring all agree on), or undefined. */
      const divergence = async (): Promise<string | undefined> => {
        const ms = members()
        const out = ms.filter((n) => n.state !== "up" || network.isPaused(n.id))
        if (out.length > 0) return `not up: ${out.map((n) => `${n.id} ${n.state}`)}`
        const vs = await Promise.all(ms.map(view))
        if (vs.some((v) => v === undefined)) return "a node did not answer /admin/cluster"
        const v0 = vs[0]!
        for (const [i, v] of vs.entries()) {
          if (!v!.settled) return `${ms[i]!.id}: ring ${v!.ringVersion} not settled`
          if (v!.ringVersion !== v0.ringVersion || v!.owners.join() !== v0.owners.join()) return `${ms[i]!.id} has ring ${v!.ringVersion}, ${ms[0]!.id} ${v0.ringVersion}`
          const bad = v!.nodes.filter((m) => m.status !== "up" && ms.some((x) => x.id === m.id))
          if (bad.length > 0) return `${ms[i]!.id} sees ${bad.map((m) => `${m.id} ${m.status}`)}`
        }
        const owners = new Set(v0.owners)
        if (owners.size !== ms.length) return `the ring has owners ${[...owners].sort()} for members ${ms.map((n) => n.id)}`
        // A write may live only in hints (its coordinator and a fallback parked it while the
        // primaries could not take it): the primaries agreeing says nothing about it until every
        // parked write is delivered, so neither a disk wipe nor the final reads may go first.
        const parked = vs.flatMap((v, i) => v!.nodes.filter((m) => m.parked > 0).map((m) => `${ms[i]!.id} holds ${m.parked} for ${m.id}`))
        if (parked.length > 0) return `parked writes not yet delivered: ${parked.join(", ")}`
        const ring = { partitions: v0.partitions, owners: v0.owners, version: v0.ringVersion, members: [...owners].sort() }
        for (const key of keys) {
          const prefs = preferenceList(ring, partitionOf(key, ring.partitions), 3)
          const locals = await Promise.all(prefs.map((id) => localOf(sims.find((x) => x.id === id)!, key)))
          const shown = locals.map((l) => (l === undefined ? "?" : l.map((v) => v.dot).join(" ")))
          if (shown.some((x) => x === "?" || x !== shown[0])) return `${key} differs on ${prefs}: ${shown.join(" | ")}`
        }
        return undefined
      }
      const convergedNow = async () => (await divergence()) === undefined

      // ---- the cluster
      const first = newNode()
      await first.start([])
      log(`start ${first.id}`)
      for (let i = 1; i < nodesN; i++) {
        const n = newNode()
        await n.start([first.id])
        log(`start ${n.id}`)
      }
      if (!(await until("the first ring to settle", async () => (await agreed(members())) !== undefined && (await agreed(members()))!.owners.length > 0 && new Set((await agreed(members()))!.owners).size === nodesN, 120_000))) {
        problems.push(`the first ring of ${nodesN} nodes did not settle`)
        return
      }
      log("cluster up")
      mark()
      // Clock skew from the start: each node's wall clock up to 2 s off.
      if (enabled.includes("skew")) for (const n of sims) n.skewMs = Math.floor((nm() - 0.5) * 4000)

      // ---- clients
      let running = true
      let opsLeft = opsN
      const client = async (c: number) => {
        for (let i = 0; running && opsLeft > 0; i++) {
          opsLeft--
          await sleep(1 + Math.floor(wl() * 200))
          const key = pick(wl, keys)
          const ups = upNodes()
          const deleting = wl() < 0.04
          if (ups.length === 0) continue
          const n = pick(wl, ups)
          const element = `c${c}-${i}`
          attempted++
          // Some reads ask one replica only (a stale context is a client's right), some writes go blind.
          const r = wl() < 0.3 ? "&r=1" : ""
          const blind = !deleting && wl() < 0.1
          const g = blind ? { status: 404, body: "", context: undefined } : await inject(n, "GET", `/kv/${key}?timeout=3000${r}`, undefined, {}, 5000)
          if (!blind) log(`c${c} get${r} ${key} @${n.id} -> ${g?.status ?? "none"}`)
          if (g === undefined || (g.status !== 200 && g.status !== 300 && g.status !== 404)) continue
          const read = elementsOf(g.status, g.body)
          if (!blind) reads.push({ key, elements: read })
          const headers: Record<string, string> = g.context === undefined ? {} : { "x-context": g.context }
          if (deleting) {
            const op: DeleteOp = { key, read, context: g.context ?? "", acked: false }
            deletes.push(op)
            const d = await inject(n, "DELETE", `/kv/${key}?timeout=3000`, undefined, headers)
            if (d?.status === 204) (op as { acked: boolean }).acked = true
            log(`c${c} delete ${key} @${n.id} -> ${d?.status ?? "none"}`)
            continue
          }
          const set = [...new Set([...read, element])].sort()
          const op: WriteOp = { key, element, acked: false }
          writes.push(op)
          const w = await inject(n, "PUT", `/kv/${key}?timeout=3000`, JSON.stringify(set), { ...headers, "content-type": "application/json" })
          if (w?.status === 204) (op as { acked: boolean }).acked = true
          log(`c${c} put ${key} +${element} @${n.id} -> ${w?.status ?? "none"}`)
        }
      }
      const clients = Array.from({ length: clientsN }, (_, c) => client(c))
      void Promise.all(clients).then(() => (running = false))

      // ---- nemesis
      const pending: Array<Promise<void>> = []
      const busy = new Set<SimNode>()
      let destructive = false
      // Log-uniform in 200 ms .. 10 s: short blips and faults long enough for the failure detector.
      const hold = () => Math.floor(200 * Math.pow(50, nm()))
      const background = (what: string, f: () => Promise<void>) => {
        pending.push(f().then(() => log(what), (e: unknown) => log(`${what} failed: ${String(e).slice(0, 200)}`)))
      }
      const restart = async (n: SimNode) => {
        await n.start(seedsFor(n)).then(() => log(`restarted ${n.id}`), (e: unknown) => log(`restart ${n.id} failed: ${String(e).slice(0, 200)}`))
      }
      const idle = () => members().filter((n) => n.state === "up" && !busy.has(n) && !network.isPaused(n.id))
      /**
       * A disk may go (wipe, bit flip, remove, leave) when no other is going and the replicas
       * have converged since the last one went: an acknowledged write has two durable copies,
       * and losing both before anti-entropy copies it again is a loss no store can avoid.
       */
      let convergedSinceDestructive = true
      let lastCheck = -Infinity
      const safeForDestructive = async () => {
        if (destructive || members().length < 3) return false
        // A convergence check reads every key on every primary: at most one each 2 s.
        if (!convergedSinceDestructive && Date.now() - lastCheck >= 2000) {
          lastCheck = Date.now()
          convergedSinceDestructive = await convergedNow()
        }
        return convergedSinceDestructive
      }
      const groups = () => {
        const ms = [...members()].sort(() => nm() - 0.5)
        const cut = 1 + Math.floor(nm() * Math.floor(ms.length / 2))
        return [ms.slice(0, cut).map((n) => n.id), ms.slice(cut).map((n) => n.id)] as const
      }
      // A destructive kind drawn at an unsafe moment waits (in order) and is tried first from then on.
      const deferred: FaultKind[] = []
      const nemesis = async () => {
        while (running && enabled.length > 0) {
          await sleep(100 + Math.floor(nm() * 900))
          if (!running) break
          const kind = deferred.length > 0 && nm() < 0.7 ? deferred.shift()! : pick(nm, enabled)
          const destructiveKind = kind === "wipe" || kind === "bitFlip" || kind === "remove" || kind === "leave"
          if (destructiveKind && !(await safeForDestructive())) {
            if (deferred.length < 4) deferred.push(kind)
            continue
          }
          if (kind === "join" && (members().length >= Math.min(9, nodesN + 2) || destructive)) continue
          const candidates = idle()
          const needsNode = !["partition", "oneWay", "lossy", "duplicate", "slow", "skew", "join"].includes(kind)
          if (needsNode && candidates.length === 0) continue
          // At most one node down or paused at a time (two in clusters of five or more).
          const down = members().filter((n) => n.state !== "up" || network.isPaused(n.id)).length
          if (needsNode && down >= (members().length >= 5 ? 2 : 1)) continue
          if (destructiveKind) convergedSinceDestructive = false
          if (kind === "leave" || kind === "remove") {
            if (members().length <= 3) continue
          }
          faults[kind]++
          const n = candidates.length > 0 ? pick(nm, candidates) : undefined
          switch (kind) {
            case "partition": {
              const [a, b] = groups()
              log(`fault partition ${a} | ${b}`)
              network.partition(a, b)
              background("healed partition", async () => {
                await sleep(hold())
                network.heal()
              })
              break
            }
            case "oneWay": {
              const [a, b] = groups()
              log(`fault one-way ${a} -> ${b}`)
              network.cutOneWay(a, b)
              background("healed one-way", async () => {
                await sleep(hold())
                network.heal()
              })
              break
            }
            case "lossy":
            case "duplicate":
            case "slow": {
              const ms = members()
              const a = pick(nm, ms)
              const b = pick(nm, ms.filter((x) => x !== a))
              const conditions = kind === "lossy" ? { latencyMs: 1, jitterMs: 3, loss: 0.3 } : kind === "duplicate" ? { latencyMs: 1, jitterMs: 5, duplicate: 0.5 } : { latencyMs: 50 + Math.floor(nm() * 400), jitterMs: 200 }
              log(`fault ${kind} ${a.id}<->${b.id} ${JSON.stringify(conditions)}`)
              network.setLink(a.id, b.id, conditions)
              background(`cleared ${kind}`, async () => {
                await sleep(hold())
                network.setLink(a.id, b.id, { latencyMs: 1, jitterMs: 3 })
              })
              break
            }
            case "pause": {
              log(`fault pause ${n!.id}`)
              busy.add(n!)
              network.pause(n!.id)
              background(`resumed ${n!.id}`, async () => {
                await sleep(hold())
                network.resume(n!.id)
                busy.delete(n!)
              })
              break
            }
            case "kill":
            case "crash": {
              busy.add(n!)
              if (kind === "kill") n!.kill()
              else log(`crash ${n!.id}: ${n!.crash(Math.floor(nm() * 2 ** 31))} files lost unsynced changes`)
              log(`fault ${kind} ${n!.id}`)
              background(`back ${n!.id}`, async () => {
                await sleep(hold())
                await restart(n!)
                busy.delete(n!)
              })
              break
            }
            case "wipe":
            case "bitFlip": {
              busy.add(n!)
              destructive = true
              if (kind === "wipe") n!.wipe()
              else {
                n!.kill()
                log(`bit flip ${n!.id}: ${n!.flipBit(nm) ?? "no segment"}`)
              }
              log(`fault ${kind} ${n!.id}`)
              background(`back ${n!.id}`, async () => {
                await sleep(hold())
                await restart(n!)
                busy.delete(n!)
                destructive = false
              })
              break
            }
            case "fsyncError":
            case "diskFull": {
              busy.add(n!)
              if (kind === "fsyncError") n!.disk.inject({ op: "datasync", code: "EIO", times: 1 })
              else n!.disk.setQuota(n!.disk.usedBytes() + Math.floor(nm() * 8192))
              log(`fault ${kind} ${n!.id}`)
              background(`repaired ${n!.id}`, async () => {
                await sleep(hold())
                n!.disk.clearFaults()
                n!.disk.setQuota(undefined)
                // An engine that failed an fsync or a write is read-only until restart.
                const h = await inject(n!, "GET", "/health", undefined, {}, 5000)
                if (h?.status !== 200 && n!.state === "up") {
                  log(`restart ${n!.id} after ${kind} (health ${h?.status ?? "none"})`)
                  await n!.stop().catch(() => n!.kill())
                  await restart(n!)
                }
                busy.delete(n!)
              })
              break
            }
            case "skew": {
              const m = pick(nm, members())
              m.skewMs = Math.floor((nm() - 0.5) * 20_000)
              log(`fault skew ${m.id} ${m.skewMs} ms`)
              break
            }
            case "join": {
              const j = newNode()
              busy.add(j)
              log(`fault join ${j.id}`)
              background(`joined ${j.id}`, async () => {
                await j.start(seedsFor(j))
                busy.delete(j)
              })
              break
            }
            case "leave": {
              destructive = true
              busy.add(n!)
              log(`fault leave ${n!.id}`)
              const r = await inject(n!, "POST", "/admin/leave", "{}", { "content-type": "application/json" })
              log(`leave ${n!.id} -> ${r?.status ?? "none"}`)
              background(`left ${n!.id}`, async () => {
                if (r?.status === 202 && n!.node !== undefined) {
                  const left = n!.node.left
                  const done = await Promise.race([left.then(() => true), sleep(120_000).then(() => false)])
                  if (done) {
                    await n!.stop()
                    n!.state = "removed"
                  } else log(`${n!.id} did not leave in 120 s`)
                }
                busy.delete(n!)
                destructive = false
              })
              break
            }
            case "remove": {
              destructive = true
              busy.add(n!)
              n!.kill()
              log(`fault remove ${n!.id}`)
              background(`removed ${n!.id}`, async () => {
                const ok = await until(`remove ${n!.id}`, async () => {
                  const asked = upNodes().filter((x) => x !== n)
                  if (asked.length === 0) return false
                  const r = await inject(pick(nm, asked), "POST", "/admin/remove", JSON.stringify({ node: n!.id }), { "content-type": "application/json" })
                  return r?.status === 202
                }, 30_000, 500)
                if (ok) n!.state = "removed"
                else await restart(n!)
                busy.delete(n!)
                destructive = false
              })
              break
            }
          }
        }
      }
      await Promise.all([...clients, nemesis()])
      log(`workload done: ${attempted} ops`)
      mark()

      // ---- heal
      await Promise.all(pending)
      log("heal")
      network.heal()
      network.clearLinks()
      for (const n of sims) {
        network.resume(n.id)
        n.disk.clearFaults()
        n.disk.setQuota(undefined)
      }
      for (const n of members()) {
        if (n.state === "up") {
          const h = await inject(n, "GET", "/health", undefined, {}, 5000)
          if (h?.status !== 200) {
            log(`heal: restart ${n.id} (health ${h?.status ?? "none"})`)
            await n.stop().catch(() => n.kill())
          }
        }
        if (n.state === "down") await restart(n)
      }
      const healedAt = Date.now()
      converged = await until("convergence", convergedNow, 300_000, 500)
      convergenceMs = Date.now() - healedAt
      log(converged ? `converged after ${convergenceMs} ms` : "did not converge")
      mark()
      if (!converged) problems.push(`replicas did not converge within 300 s of healing: ${(await divergence())?.slice(0, 500)}`)

      // ---- final reads and versions
      const finalReads = new Map<string, string[]>()
      const finalVersions = new Map<string, FinalVersion[]>()
      const v0 = await agreed(members())
      for (const key of keys) {
        let got: string[] | undefined
        for (const n of upNodes()) {
          const r = await inject(n, "GET", `/kv/${key}?r=all&timeout=5000`)
          if (r !== undefined && (r.status === 200 || r.status === 300 || r.status === 404)) {
            got = elementsOf(r.status, r.body)
            break
          }
        }
        if (got === undefined) problems.push(`no final read of ${key} answered`)
        finalReads.set(key, got ?? [])
        log(`final ${key} ${(got ?? []).length} elements`)
        if (v0 !== undefined) {
          const ring = { partitions: v0.partitions, owners: v0.owners, version: v0.ringVersion, members: [...new Set(v0.owners)].sort() }
          const p = preferenceList(ring, partitionOf(key, ring.partitions), 3)[0]!
          finalVersions.set(key, (await localOf(sims.find((x) => x.id === p)!, key)) ?? [])
        }
      }
      verdict = checkSets({ writes, deletes, reads, finalReads, finalVersions })
      log(`verdict acked ${verdict.acked} lost ${verdict.lost.length} covered ${verdict.covered} unexpected ${verdict.unexpected.length + verdict.unexpectedReads.length} resurrected ${verdict.resurrected.length}`)
      if (verdict.lost.length > 0) problems.push(`${verdict.lost.length} acknowledged writes lost, e.g. ${JSON.stringify(verdict.lost.slice(0, 5))}`)
      if (verdict.unexpected.length + verdict.unexpectedReads.length > 0) problems.push(`values never written were read: ${JSON.stringify([...verdict.unexpected, ...verdict.unexpectedReads].slice(0, 5))}`)
      if (verdict.resurrected.length > 0) problems.push(`deleted versions came back: ${JSON.stringify(verdict.resurrected.slice(0, 5))}`)
      // Tombstones reaped by compaction (deleted keys must stay deleted through this).
      for (const n of upNodes()) {
        const m = await inject(n, "GET", "/metrics", undefined, {}, 5000)
        reaped += Number(/^tally_engine_dropped_tombstones_total (\d+)/m.exec(m?.body ?? "")?.[1] ?? 0)
      }
      log(`reaped tombstones ${reaped}`)
      // Stop everything: a fiber left running would run on into the next run in this process.
      let stopped = false
      await Promise.race([
        Promise.all([...sims.filter((n) => n.state === "up").map((n) => n.stop().catch(() => undefined)), ...sims.flatMap((n) => n.teardowns)]).then(() => (stopped = true)),
        sleep(60_000)
      ])
      if (!stopped) problems.push("a node did not shut down within 60 s of being stopped or killed")
    })
  } catch (e) {
    problems.push(e instanceof Stalled ? e.message : `the run threw: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
  } finally {
    Dvv.unsafeTesting.lastWriteWins = saved.lww
    Replica.unsafeTesting.reuseEpoch = saved.kv679
  }
  const stats = loop.stats()
  return {
    seed: o.seed,
    ok: problems.length === 0,
    problems,
    hash: hash.digest("hex"),
    events,
    attempted,
    acked: verdict?.acked ?? 0,
    lost: verdict?.lost.length ?? 0,
    covered: verdict?.covered ?? 0,
    unexpected: (verdict?.unexpected.length ?? 0) + (verdict?.unexpectedReads.length ?? 0),
    resurrected: verdict?.resurrected.length ?? 0,
    deletesAcked: verdict?.deletesAcked ?? 0,
    reapedTombstones: reaped,
    converged,
    convergenceMs,
    faults,
    virtualMs: stats.virtualMs,
    wallMs: wallNow() - wall0,
    tasks: stats.tasks,
    ...(verdict === undefined ? {} : { verdict }),
    log: tail,
    replay: replayCommand(o),
    phasesMs: phases(wall0, marks, wallNow())
  }
}
