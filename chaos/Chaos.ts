/**
 * A chaos run against real `tally node` processes: concurrent read-merge-write clients of
 * sets, a seeded nemesis (partitions through /admin/faults, SIGKILL and restart,
 * SIGSTOP/SIGCONT, disk wipe, join and remove), then healing, convergence and the checker.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process"
import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { partitionOf, preferenceList, type Ring } from "../src/ring/Ring.ts"
import { prng } from "../engine/Prng.ts"
import { check, elementsOf, type WriteOp } from "./Checker.ts"

const root = path.resolve(import.meta.dirname, "..")

/** What a run is given. */
export interface ChaosOptions {
  readonly seconds: number
  readonly nodes: number
  readonly seed: number
  readonly clients?: number
  readonly keys?: number
  readonly basePort?: number
  /** Longest wait for convergence after healing, in seconds. */
  readonly convergeSeconds?: number
  readonly log?: (line: string) => void
}

/** The fault kinds the nemesis injects. */
export const faultKinds = ["partition", "kill", "pause", "wipe", "membership"] as const
export type FaultKind = (typeof faultKinds)[number]

/** What a run reports (the JSON line). */
export interface ChaosResult {
  seed: number
  attempted: number
  acked: number
  lost: number
  unexpected: number
  indeterminateOk: number
  availability: number
  converged: boolean
  convergenceSeconds: number
  faults: Record<FaultKind, number>
  netns: string
  lostElements: Array<{ key: string; element: string }>
  unexpectedElements: Array<{ key: string; element: string }>
  nemesisLog: string[]
}

interface Proc {
  readonly id: string
  readonly port: number
  readonly url: string
  readonly dir: string
  child: ChildProcess | undefined
  removed: boolean
  paused: boolean
  log: string
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

const req = async (url: string, init: RequestInit = {}, ms = 3000) => {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(ms) })
  const body = await res.text()
  return { status: res.status, body, headers: res.headers }
}

/**
 * Probes whether network namespaces can be made here. Either way this run partitions through
 * /admin/faults only: the nodes share the loopback, and namespace partitions are not built yet.
 */
const probeNetns = (): string => {
  if (process.platform !== "linux") return "skipped: not Linux; partitions through /admin/faults only"
  const name = `tally-chaos-probe-${process.pid}`
  const add = spawnSync("ip", ["netns", "add", name], { stdio: "ignore", timeout: 5000 })
  if (add.status !== 0) return "skipped: ip netns add is not permitted here; partitions through /admin/faults only"
  spawnSync("ip", ["netns", "delete", name], { stdio: "ignore", timeout: 5000 })
  return "skipped: ip netns works here but namespace partitions are not implemented yet; partitions through /admin/faults only"
}

/** Runs one chaos run; every process it starts is killed and its directory removed before it returns. */
export const runChaos = async (o: ChaosOptions): Promise<ChaosResult> => {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`))
  const random = prng(o.seed)
  const clientsN = o.clients ?? 8
  const keysN = o.keys ?? 12
  const base = o.basePort ?? 20000 + Math.floor(Math.random() * 500) * 8
  const dataRoot = fs.mkdtempSync(path.join(os.tmpdir(), "tally-chaos-"))
  const procs: Proc[] = []
  const faults: Record<FaultKind, number> = { partition: 0, kill: 0, pause: 0, wipe: 0, membership: 0 }
  const nemesisLog: string[] = []
  let t0 = Date.now()
  const note = (l: string) => {
    const line = `[${((Date.now() - t0) / 1000).toFixed(1)}s] ${l}`
    nemesisLog.push(line)
    log(line)
  }

  const newProc = (i: number): Proc => ({ id: `n${i + 1}`, port: base + i, url: `http://127.0.0.1:${base + i}`, dir: path.join(dataRoot, `n${i + 1}`), child: undefined, removed: false, paused: false, log: "" })
  const members = () => procs.filter((p) => !p.removed)
  const live = () => members().filter((p) => p.child !== undefined && !p.paused)

  const start = (p: Proc, seeds: Proc[]) =>
    new Promise<void>((resolve, reject) => {
      const args = [
        "bin/tally.js", "node", "--id", p.id, "--port", String(p.port), "--cluster-port", String(p.port + 1000),
        "--data", p.dir, "--n", "3", "--partitions", "16", "--aae-interval", "100", "--enable-fault-injection", "--log-level", "warn",
        ...(seeds.length === 0 ? [] : ["--seeds", seeds.map((s) => `127.0.0.1:${s.port}`).join(",")])
      ]
      const child = spawn(process.execPath, args, { cwd: root, stdio: ["ignore", "pipe", "pipe"], detached: true })
      p.child = child
      p.paused = false
      let out = ""
      const timer = setTimeout(() => reject(new Error(`${p.id} not ready in 30 s:\n${p.log.slice(-2000)}`)), 30_000)
      child.stdout!.on("data", (d: Buffer) => {
        out += d
        if (/^ready /m.test(out)) {
          clearTimeout(timer)
          resolve()
        }
      })
      child.stderr!.on("data", (d: Buffer) => (p.log = (p.log + d).slice(-20_000)))
      child.on("exit", (code, signal) => {
        clearTimeout(timer)
        if (p.child === child) p.child = undefined
        if (!/^ready /m.test(out)) reject(new Error(`${p.id} exited (${code ?? signal}) before ready:\n${p.log.slice(-2000)}`))
      })
    })
  const signalGroup = (p: Proc, sig: NodeJS.Signals) => {
    const pid = p.child?.pid
    if (pid !== undefined) try { process.kill(-pid, sig) } catch { /* already gone */ }
  }
  const kill = async (p: Proc) => {
    const child = p.child
    if (child === undefined) return
    const exited = new Promise<void>((r) => child.once("exit", () => r()))
    signalGroup(p, "SIGKILL")
    await exited
    p.paused = false
  }
  const seedsFor = (p: Proc) => members().filter((x) => x !== p && x.child !== undefined && !x.paused)
  const restart = (p: Proc) => start(p, seedsFor(p))
  const setFaults = (p: Proc, drop: string[]) => req(`${p.url}/admin/faults`, { method: "POST", body: JSON.stringify({ drop }), headers: { "content-type": "application/json" } }).catch(() => undefined)
  const view = async (p: Proc) => JSON.parse((await req(`${p.url}/admin/cluster`)).body) as { nodes: Array<{ id: string; status: string }>; owners: string[]; partitions: number; settled: boolean; ringVersion: number }
  const until = async (what: string, f: () => Promise<boolean>, ms: number) => {
    const deadline = Date.now() + ms
    while (Date.now() < deadline) {
      if (await f().catch(() => false)) return true
      await sleep(250)
    }
    note(`gave up waiting for ${what} after ${ms / 1000} s`)
    return false
  }

  const cleanup = async () => {
    for (const p of procs) if (p.child !== undefined) { signalGroup(p, "SIGCONT"); signalGroup(p, "SIGKILL") }
    await Promise.all(procs.map((p) => kill(p)))
    fs.rmSync(dataRoot, { recursive: true, force: true })
  }
  cleanupHooks.add(cleanup)
  const netns = probeNetns()
  try {
    // ---- the cluster
    for (let i = 0; i < o.nodes; i++) procs.push(newProc(i))
    await start(procs[0]!, [])
    await Promise.all(procs.slice(1).map((p) => start(p, [procs[0]!])))
    await until(`${o.nodes} nodes to agree on a settled ring`, async () => {
      const vs = await Promise.all(procs.map(view))
      return vs.every((v) => v.settled && v.nodes.length === o.nodes && v.nodes.every((m) => m.status === "up") && v.ringVersion === vs[0]!.ringVersion && new Set(v.owners).size === o.nodes)
    }, 60_000)
    log(`network namespaces: ${netns}`)
    log(`cluster up after ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    t0 = Date.now()
    log(`cluster of ${o.nodes} up on ports ${base}..${base + o.nodes - 1}; seed ${o.seed}; ${clientsN} clients on ${keysN} keys for ${o.seconds} s`)

    // ---- clients
    const history: WriteOp[] = []
    let attempted = 0
    let ackedN = 0
    let running = true
    const clientRandom = prng(o.seed ^ 0x5eed)
    const client = async (c: number) => {
      for (let i = 0; running; i++) {
        const key = `set-${Math.floor(clientRandom() * keysN)}`
        const ms = members()
        const p = ms[Math.floor(clientRandom() * ms.length)]!
        const element = `c${c}-${i}`
        attempted++
        try {
          const g = await req(`${p.url}/kv/${key}`)
          if (g.status !== 200 && g.status !== 300 && g.status !== 404) throw new Error(`GET ${g.status}`)
          const set = new Set(elementsOf(g.status, g.body))
          set.add(element)
          const context = g.headers.get("x-context")
          const op = { key, element, acked: false }
          history.push(op)
          const w = await req(`${p.url}/kv/${key}`, { method: "PUT", body: JSON.stringify([...set].sort()), headers: { "content-type": "application/json", ...(context ? { "x-context": context } : {}) } })
          if (w.status === 204) {
            op.acked = true
            ackedN++
          }
        } catch {
          await sleep(50)
        }
      }
    }
    const progress = setInterval(() => log(`  ops ${attempted}, acked ${ackedN}, live ${live().map((p) => p.id).join(",")}`), 5000)
    const clients = Array.from({ length: clientsN }, (_, c) => client(c))

    // ---- nemesis: every kind once in a seeded order, then seeded picks
    const pick = <A>(xs: ReadonlyArray<A>): A => xs[Math.floor(random() * xs.length)]!
    // Every kind once first, in a seeded order but wipe before membership (a join keeps the
    // ring moving for a while, and a wipe waits for a settled ring).
    const order: FaultKind[] = [...faultKinds].sort(() => random() - 0.5)
    if (order.indexOf("wipe") > order.indexOf("membership")) {
      order[order.indexOf("wipe")] = "membership"
      order[order.lastIndexOf("membership")] = "wipe"
    }
    const deadline = t0 + o.seconds * 1000
    const hold = () => 800 + Math.floor(random() * 1500)
    let nextId = o.nodes
    const busy = new Set<Proc>()
    let destructive = false
    let destructiveEnded = 0
    const destructiveDone = () => {
      destructive = false
      destructiveEnded = Date.now()
    }
    // A disk may go (wipe, remove) only when no other is gone or going, every member is up and
    // they agree on a settled ring, 3 s after the last: losing two replicas before anti-entropy
    // and transfers re-replicate may lose data legitimately, and would not show a bug.
    const safeForDestructive = async () => {
      if (destructive || busy.size > 0 || Date.now() - destructiveEnded < 3000) return false
      const ms = members()
      if (ms.some((p) => p.child === undefined || p.paused)) return false
      const vs = await Promise.all(ms.map(view)).catch(() => undefined)
      return vs !== undefined && vs.every((v) => v.settled && v.ringVersion === vs[0]!.ringVersion && v.nodes.every((m) => m.status === "up"))
    }
    const pending: Promise<void>[] = []
    const idle = () => members().filter((x) => x.child !== undefined && !busy.has(x))
    const inBackground = (p: Proc, what: string, f: () => Promise<void>) => {
      busy.add(p)
      pending.push(f().then(() => note(what), (e) => note(`${what} failed: ${String(e).slice(0, 300)}`)).finally(() => busy.delete(p)))
    }
    // Past the deadline only to inject a kind not yet injected, for at most 30 s.
    while (Date.now() < deadline || (order.length > 0 && Date.now() < deadline + 30_000)) {
      const first = order.length > 0
      let kind = first ? order.shift()! : pick(faultKinds)
      const ms = members()
      if ((kind === "wipe" || kind === "membership") && !(await safeForDestructive())) {
        // Deferred: in the first round to the back of the queue, behind the kinds still to come.
        if (first) order.push(kind)
        await sleep(250)
        continue
      }
      if (idle().length === 0) kind = "partition"
      faults[kind]++
      if (kind === "partition") {
        const shuffled = [...ms].sort(() => random() - 0.5)
        const cut = 1 + Math.floor(random() * Math.floor(ms.length / 2))
        const a = shuffled.slice(0, cut)
        const b = shuffled.slice(cut)
        note(`partition ${a.map((p) => p.id)} | ${b.map((p) => p.id)}`)
        await Promise.all([...a.map((p) => setFaults(p, b.map((x) => x.id))), ...b.map((p) => setFaults(p, a.map((x) => x.id)))])
        await sleep(hold())
        await Promise.all(ms.map((p) => setFaults(p, [])))
        note("partition healed")
      } else if (kind === "kill") {
        const p = pick(idle())
        note(`SIGKILL ${p.id}`)
        busy.add(p)
        await kill(p)
        await sleep(hold())
        inBackground(p, `restarted ${p.id}`, () => restart(p))
      } else if (kind === "pause") {
        const p = pick(idle())
        note(`SIGSTOP ${p.id}`)
        p.paused = true
        signalGroup(p, "SIGSTOP")
        await sleep(hold())
        signalGroup(p, "SIGCONT")
        p.paused = false
        note(`SIGCONT ${p.id}`)
      } else if (kind === "wipe") {
        const p = pick(idle())
        note(`wipe ${p.id}: SIGKILL, rm -rf its data directory, restart`)
        busy.add(p)
        destructive = true
        await kill(p)
        fs.rmSync(p.dir, { recursive: true, force: true })
        await sleep(300)
        inBackground(p, `restarted ${p.id} empty`, () => restart(p).finally(destructiveDone))
      } else {
        const fresh = newProc(nextId++)
        procs.push(fresh)
        const victim = pick(idle())
        note(`join ${fresh.id}; SIGKILL ${victim.id} and remove it`)
        inBackground(fresh, `joined ${fresh.id}`, () => start(fresh, seedsFor(fresh)))
        busy.add(victim)
        destructive = true
        await kill(victim)
        pending.push((async () => {
          const ok = await until(`/admin/remove ${victim.id}`, async () => {
            const asked = members().filter((x) => x !== victim && x.child !== undefined && !x.paused)
            const r = await req(`${pick(asked).url}/admin/remove`, { method: "POST", body: JSON.stringify({ node: victim.id }), headers: { "content-type": "application/json" } })
            return r.status === 202
          }, 20_000)
          if (ok) {
            victim.removed = true
            note(`removed ${victim.id}`)
            await until("the ring to settle after the remove", async () => {
              const vs = await Promise.all(members().filter((x) => x.child !== undefined && !x.paused).map(view))
              return vs.every((v) => v.settled && v.ringVersion === vs[0]!.ringVersion)
            }, 30_000)
          } else {
            await restart(victim).catch(() => undefined)
            note(`remove of ${victim.id} refused; restarted it`)
          }
          busy.delete(victim)
          destructiveDone()
        })())
      }
      await sleep(300 + Math.floor(random() * 700))
    }
    running = false
    await Promise.all(clients)
    clearInterval(progress)
    log(`workload done: ${attempted} ops, ${ackedN} acknowledged`)

    // ---- heal
    await Promise.all(pending)
    note("heal: clear faults, SIGCONT, restart dead members")
    for (const p of members()) if (p.child !== undefined) { signalGroup(p, "SIGCONT"); p.paused = false }
    for (const p of members()) if (p.child === undefined) await restart(p).catch((e) => note(`heal restart ${p.id} failed: ${String(e).slice(0, 300)}`))
    await Promise.all(members().map((p) => setFaults(p, [])))
    const healedAt = Date.now()

    // ---- convergence: a settled ring everywhere, every primary's replica of every key the same
    const keys = Array.from({ length: keysN }, (_, i) => `set-${i}`)
    const localOf = async (p: Proc, key: string) => {
      const r = JSON.parse((await req(`${p.url}/admin/local/${key}`)).body) as { found: boolean; versions?: Array<{ dot: string; deleted: boolean; value: string }> }
      return (r.versions ?? []).filter((v) => !v.deleted).map((v) => v.dot).sort().join(" ")
    }
    let ring: Ring | undefined
    const converged = await until("convergence", async () => {
      const ms = members()
      const vs = await Promise.all(ms.map(view))
      const v0 = vs[0]!
      if (!vs.every((v) => v.settled && v.ringVersion === v0.ringVersion && JSON.stringify(v.owners) === JSON.stringify(v0.owners))) return false
      ring = { partitions: v0.partitions, owners: v0.owners, version: v0.ringVersion, members: [...new Set(v0.owners)].sort() }
      for (const key of keys) {
        const prefs = preferenceList(ring, partitionOf(key, ring.partitions), 3)
        const locals = await Promise.all(prefs.map((id) => localOf(ms.find((p) => p.id === id)!, key)))
        if (!locals.every((l) => l === locals[0])) return false
      }
      return true
    }, (o.convergeSeconds ?? 60) * 1000)
    const convergenceSeconds = (Date.now() - healedAt) / 1000
    note(converged ? `converged in ${convergenceSeconds.toFixed(1)} s` : `did not converge in ${convergenceSeconds.toFixed(1)} s`)

    // ---- final merged reads (r=all), checked
    const finalReads = new Map<string, string[]>()
    for (const key of keys) {
      let got: string[] | undefined
      for (const p of members()) {
        const r = await req(`${p.url}/kv/${key}?r=all`, {}, 5000).catch(() => undefined)
        if (r !== undefined && (r.status === 200 || r.status === 300 || r.status === 404)) {
          got = elementsOf(r.status, r.body)
          break
        }
      }
      if (got === undefined) note(`no final read of ${key} answered`)
      finalReads.set(key, got ?? [])
    }
    const v = check(history, finalReads)
    return {
      seed: o.seed,
      attempted,
      acked: v.acked,
      lost: v.lost.length,
      unexpected: v.unexpected.length,
      indeterminateOk: v.indeterminateOk,
      availability: attempted === 0 ? 0 : Number((v.acked / attempted).toFixed(4)),
      converged,
      convergenceSeconds: Number(convergenceSeconds.toFixed(2)),
      faults,
      netns,
      lostElements: v.lost.slice(0, 50),
      unexpectedElements: v.unexpected.slice(0, 50),
      nemesisLog
    }
  } finally {
    cleanupHooks.delete(cleanup)
    await cleanup()
  }
}

/** Cleanups of runs under way, for a SIGINT handler to call. */
export const cleanupHooks = new Set<() => Promise<void>>()
