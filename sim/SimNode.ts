/**
 * One node of a simulated cluster: its disk (in-memory files that outlive its processes), the
 * process running on it (a real assembled node: engine, replica, coordinator, membership,
 * handoff, transfers, anti-entropy, HTTP app), its clock skew, and the node faults: kill,
 * power loss (unsynced writes and directory entries lost), disk wipe, fsync errors, a full
 * disk, bit flips, restart. Pausing is the network's (MemoryNetwork.pause).
 */
import { Clock, Effect } from "effect"
import { Writable } from "node:stream"
import * as path from "node:path"
import { DEFAULTS, type NodeSettings } from "../src/config/Settings.ts"
import { assembleNode, type AssembledNode } from "../src/node/Node.ts"
import type { MemoryNetwork } from "../src/transport/MemoryNetwork.ts"
import { makeMemoryFiles, type FilesApi, type MemoryFiles } from "../engine/Files.ts"
import { SEGMENT_HEADER_BYTES } from "../engine/SegmentHeader.ts"

/** Settings every simulated node shares (small ring, fast anti-entropy, a short tombstone grace). */
export interface SimNodeConfig {
  readonly partitions: number
  readonly aaeIntervalMs: number
  readonly tombstoneGraceMs: number
  readonly compactionIntervalMs: number
  readonly maxSegmentBytes: number
}

export const defaultNodeConfig: SimNodeConfig = {
  partitions: 16,
  aaeIntervalMs: 300,
  tombstoneGraceMs: 5_000,
  compactionIntervalMs: 2_000,
  maxSegmentBytes: 64 * 1024
}

const quiet = () => new Writable({ write: (_c, _e, cb) => cb() })

/**
 * The files one process sees: the disk's, until the process dies. A dead process changes
 * nothing: its calls fail with EIO, and so do its operations in flight (which on the disk
 * never complete), so the torn-down node's layers all close: none of its fibers lives on
 * into the rest of the run or into the next run in this process.
 */
const processView = (disk: MemoryFiles): { readonly files: FilesApi; readonly kill: () => void } => {
  let alive = true
  const dead = () => Object.assign(new Error("EIO: the process is dead"), { code: "EIO" })
  let die: (e: Error) => void = () => {}
  const died = new Promise<never>((_, reject) => (die = reject))
  died.catch(() => undefined)
  const files = new Proxy(disk, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver) as unknown
      if (typeof v !== "function") return v
      const f = v as (...a: unknown[]) => unknown
      const async = typeof key === "string" && (key.endsWith("Async") || key === "datasync")
      return (...args: unknown[]) => {
        if (!alive) {
          if (async) return Promise.reject(dead())
          throw dead()
        }
        const r = f.apply(target, args)
        return async ? Promise.race([r as Promise<unknown>, died]) : r
      }
    }
  })
  return {
    files,
    kill: () => {
      alive = false
      die(dead())
    }
  }
}

/** A wall clock `skew` ms off the virtual one; sleeps on the shared virtual timers. */
const skewedClock = (skew: () => number): Clock.Clock => {
  const base = Effect.runSync(Effect.clockWith((c) => Effect.succeed(c)))
  const now = () => Date.now() + skew()
  return {
    currentTimeMillisUnsafe: now,
    currentTimeMillis: Effect.sync(now),
    currentTimeNanosUnsafe: () => BigInt(Math.floor(now())) * 1_000_000n,
    currentTimeNanos: Effect.sync(() => BigInt(Math.floor(now())) * 1_000_000n),
    monotonicTimeNanosUnsafe: () => process.hrtime.bigint(),
    monotonicTimeNanos: Effect.sync(() => process.hrtime.bigint()),
    sleep: (d) => base.sleep(d)
  }
}

export type NodeState = "up" | "starting" | "down" | "removed"

/** A simulated node. */
export class SimNode {
  readonly id: string
  disk: MemoryFiles = makeMemoryFiles()
  skewMs = 0
  state: NodeState = "down"
  /** The running process, when up. */
  node: AssembledNode | undefined
  /** Times this node's process started. */
  starts = 0
  /** Teardowns of killed processes still under way (a run waits for them before it ends). */
  readonly teardowns: Array<Promise<void>> = []
  private view: { readonly files: FilesApi; readonly kill: () => void } | undefined
  private readonly network: MemoryNetwork
  private readonly config: SimNodeConfig

  constructor(id: string, network: MemoryNetwork, config: SimNodeConfig) {
    this.id = id
    this.network = network
    this.config = config
  }

  get dataDir(): string {
    return `/data/${this.id}`
  }

  private settings(): NodeSettings {
    return {
      ...DEFAULTS,
      id: this.id,
      port: 0,
      clusterPort: 0,
      data: this.dataDir,
      logLevel: "silent",
      config: undefined,
      partitions: this.config.partitions,
      aaeIntervalMs: this.config.aaeIntervalMs,
      compaction: { ...DEFAULTS.compaction, intervalMs: this.config.compactionIntervalMs, tombstoneGraceMs: this.config.tombstoneGraceMs }
    }
  }

  /** Starts a process on this node's disk, joining through `seeds`; resolves once it serves. */
  async start(seeds: ReadonlyArray<string>): Promise<void> {
    if (this.state !== "down") throw new Error(`${this.id} is ${this.state}`)
    this.state = "starting"
    this.starts++
    const view = processView(this.disk)
    this.view = view
    const skew = () => this.skewMs
    try {
      this.node = await assembleNode(this.settings(), {
        memory: true,
        network: this.network,
        files: view.files,
        logStream: quiet(),
        ...(seeds.length === 0 ? {} : { seedIds: seeds }),
        clock: skewedClock(skew),
        engine: { maxSegmentBytes: this.config.maxSegmentBytes, preallocate: false, now: () => Date.now() + skew(), random: () => Math.random() }
      })
      this.state = "up"
    } catch (e) {
      view.kill()
      this.network.disconnect(this.id)
      this.state = "down"
      throw e
    }
  }

  /** The process dies at once (SIGKILL): off the network, its files frozen; what it wrote stays, unsynced. */
  kill(): void {
    if (this.state !== "up" && this.state !== "starting") return
    this.network.disconnect(this.id)
    this.view?.kill()
    this.disk.killProcess()
    const node = this.node
    this.node = undefined
    this.state = "down"
    // The dead process's fibers and timers are stopped; its files no longer answer.
    if (node !== undefined) this.teardowns.push(node.close().catch(() => undefined))
  }

  /** Power loss: the process dies and the disk keeps only what was synced (seeded choice of pages). */
  crash(seed: number): number {
    this.kill()
    return this.disk.crash({ seed }).length
  }

  /** The disk is replaced by an empty one (amnesia): the next start is a fresh node under the same id. */
  wipe(): void {
    this.kill()
    this.disk = makeMemoryFiles()
  }

  /** Flips one bit of a synced segment file (the node must be down); returns the file, or undefined if none. */
  flipBit(random: () => number): string | undefined {
    const segs = this.listSegments()
    if (segs.length === 0) return undefined
    const file = segs[Math.floor(random() * segs.length)]!
    const fd = this.disk.open(file, false)
    let at: number
    try {
      const size = this.disk.size(fd)
      if (size <= SEGMENT_HEADER_BYTES) return undefined
      // In the records: a damaged header is a different failure (the segment is refused).
      at = SEGMENT_HEADER_BYTES + Math.floor(random() * (size - SEGMENT_HEADER_BYTES))
      const b = new Uint8Array(1)
      this.disk.read(fd, b, 0, 1, at)
      b[0] = b[0]! ^ (1 << Math.floor(random() * 8))
      this.disk.writeAll(fd, b, 0, 1, at)
      this.disk.datasyncSync(fd)
    } finally {
      this.disk.close(fd)
    }
    return `${file}@${at}`
  }

  private listSegments(): string[] {
    const out: string[] = []
    const walk = (dir: string) => {
      let names: string[]
      try {
        names = this.disk.list(dir)
      } catch {
        return
      }
      for (const n of [...names].sort()) {
        const p = path.join(dir, n)
        if (n.endsWith(".seg")) out.push(p)
        else if (!n.includes(".")) walk(p)
      }
    }
    walk(this.dataDir)
    return out
  }

  /** Graceful stop (flush, fsync, release); the node stays a member. */
  async stop(): Promise<void> {
    const node = this.node
    if (node === undefined) return
    this.node = undefined
    this.state = "down"
    try {
      await node.close()
    } finally {
      this.network.disconnect(this.id)
      // Then the process exits, which releases whatever it still held: a close that failed
      // (an engine fail-stopped by an fsync error) must not leave its directory locks to
      // refuse the restart, as the kernel's would not after a real exit.
      this.view?.kill()
      this.disk.killProcess()
    }
  }
}
