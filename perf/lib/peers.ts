/**
 * The peers of perf/engine.ts, measured on the same data in the same process: lmdb (LMDB,
 * memory-mapped B+tree) and classic-level (LevelDB). Each loads the keys through its bulk
 * path, reports its open time after a clean close, random reads, and durable puts.
 */
import * as path from "node:path"
import { ClassicLevel } from "classic-level"
import { open, type RootDatabase } from "lmdb"
import { keyOf, valueOf } from "./data.ts"
import { poolRate, progress, serialRate, settle, syncRate, tempDir, type RunOptions, type Throughput } from "./measure.ts"

/** Everything measured on one peer. */
export interface PeerResult {
  readonly durability: string
  readonly loadPerSecond: number
  readonly rssBytesPerKey: number
  readonly openMs: number
  /** Read figures by label; `main` is the one compared with Tally. */
  readonly reads: Record<string, number>
  /** Durable puts by concurrency. */
  readonly puts: Record<number, Throughput>
  /** A second durable configuration, where the store has one. */
  readonly altDurability?: string
  readonly altPuts?: Record<number, Throughput>
}

const LOAD_CHUNK = 10_000

/** Bulk-loads with `load`, closes, then times `reopen`: load rate, RSS growth per key, open time. */
const loadAndReopen = async (keys: number, load: () => Promise<void> | void, close: () => Promise<void>, reopen: () => Promise<void>) => {
  await settle()
  const rss0 = process.memoryUsage().rss
  const t0 = performance.now()
  await load()
  const loadPerSecond = keys / ((performance.now() - t0) / 1000)
  await settle()
  const rssBytesPerKey = (process.memoryUsage().rss - rss0) / keys
  await close()
  await settle()
  const o0 = performance.now()
  await reopen()
  return { loadPerSecond, rssBytesPerKey, openMs: performance.now() - o0 }
}

/** lmdb with binary values; `overlappingSync: false` so a put resolves only after its commit is synced. */
export const runLmdb = async (o: RunOptions): Promise<PeerResult> => {
  const tmp = tempDir("lmdb")
  const options = { path: path.join(tmp.dir, "db"), encoding: "binary" as const, overlappingSync: false }
  let db: RootDatabase<Buffer, string> | undefined
  try {
    progress(`lmdb: loading ${o.keys} keys`)
    db = open<Buffer, string>(options)
    const { loadPerSecond, rssBytesPerKey, openMs } = await loadAndReopen(
      o.keys,
      () => {
        for (let from = 0; from < o.keys; from += LOAD_CHUNK) {
          const to = Math.min(o.keys, from + LOAD_CHUNK)
          db!.transactionSync(() => {
            for (let i = from; i < to; i++) db!.putSync(keyOf(i), valueOf(i))
          })
        }
      },
      async () => {
        await db!.close()
        db = undefined
      },
      async () => {
        db = open<Buffer, string>(options)
        if (db.get(o.readKeys[0]!) === undefined) throw new Error("lmdb: key missing after reopen")
      }
    )

    progress("lmdb: reads")
    const keys = o.readKeys
    const mask = keys.length - 1
    let misses = 0
    const read = (i: number) => {
      if (db!.get(keys[i & mask]!) === undefined) misses++
    }
    syncRate(o.warmMs, read)
    const main = syncRate(o.readMs, read)
    if (misses > 0) throw new Error(`lmdb reads: ${misses} misses`)

    let w = o.keys
    const put = () => {
      const k = w++
      return db!.put(keyOf(k), valueOf(k))
    }
    const puts: Record<number, Throughput> = {}
    for (const c of o.concurrency) {
      progress(`lmdb: durable puts at concurrency ${c}`)
      await poolRate(c, o.warmMs, put)
      puts[c] = await poolRate(c, o.writeMs, put)
    }

    // The default overlappingSync resolves a put at commit, before the flush; its durable
    // point is the `flushed` promise that separateFlushed attaches to each put.
    await db.close()
    db = open<Buffer, string>({ path: options.path, encoding: "binary", separateFlushed: true })
    const putFlushed = () => {
      const k = w++
      const p = db!.put(keyOf(k), valueOf(k)) as Promise<boolean> & { flushed?: PromiseLike<unknown> }
      if (p.flushed === undefined) throw new Error("lmdb: put has no flushed promise")
      return p.flushed
    }
    const altPuts: Record<number, Throughput> = {}
    for (const c of o.concurrency) {
      progress(`lmdb: durable puts (overlappingSync, awaiting flushed) at concurrency ${c}`)
      await poolRate(c, o.warmMs, putFlushed)
      altPuts[c] = await poolRate(c, o.writeMs, putFlushed)
    }
    return {
      durability: "overlappingSync: false (put resolves after its commit is fsynced)",
      loadPerSecond,
      rssBytesPerKey,
      openMs,
      reads: { main },
      puts,
      altDurability: "default overlappingSync with separateFlushed: true, awaiting put(...).flushed",
      altPuts
    }
  } finally {
    await db?.close()
    tmp.remove()
  }
}

/** classic-level with utf8 keys and Buffer values; each measured put uses `{ sync: true }`. */
export const runClassicLevel = async (o: RunOptions): Promise<PeerResult> => {
  const tmp = tempDir("level")
  const location = path.join(tmp.dir, "db")
  const options = { keyEncoding: "utf8", valueEncoding: "buffer" } as const
  let db: ClassicLevel<string, Buffer> | undefined
  try {
    progress(`classic-level: loading ${o.keys} keys`)
    db = new ClassicLevel<string, Buffer>(location, options)
    await db.open()
    const { loadPerSecond, rssBytesPerKey, openMs } = await loadAndReopen(
      o.keys,
      async () => {
        for (let from = 0; from < o.keys; from += LOAD_CHUNK) {
          const ops: Array<{ type: "put"; key: string; value: Buffer }> = []
          for (let i = from; i < Math.min(o.keys, from + LOAD_CHUNK); i++) ops.push({ type: "put", key: keyOf(i), value: valueOf(i) })
          await db!.batch(ops)
        }
      },
      async () => {
        await db!.close()
        db = undefined
      },
      async () => {
        db = new ClassicLevel<string, Buffer>(location, options)
        await db.open()
        if ((await db.get(o.readKeys[0]!)) === undefined) throw new Error("classic-level: key missing after reopen")
      }
    )

    const keys = o.readKeys
    const mask = keys.length - 1
    let misses = 0
    progress("classic-level: reads (await get)")
    const getOne = async (i: number) => {
      if ((await db!.get(keys[i & mask]!)) === undefined) misses++
      return 1
    }
    await serialRate(o.warmMs, getOne)
    const main = await serialRate(o.readMs, getOne)
    progress("classic-level: reads (getSync)")
    const getSync = (i: number) => {
      if (db!.getSync(keys[i & mask]!) === undefined) misses++
    }
    syncRate(o.warmMs, getSync)
    const sync = syncRate(o.readMs, getSync)
    progress("classic-level: reads (getMany of 64)")
    const getMany = async (i: number) => {
      const at = (i * 64) & mask
      const vs = await db!.getMany(keys.slice(at, at + 64))
      for (const v of vs) if (v === undefined) misses++
      return vs.length
    }
    await serialRate(o.warmMs, getMany)
    const many = await serialRate(o.readMs, getMany)
    if (misses > 0) throw new Error(`classic-level reads: ${misses} misses`)

    let w = o.keys
    const put = () => {
      const k = w++
      return db!.put(keyOf(k), valueOf(k), { sync: true })
    }
    const puts: Record<number, Throughput> = {}
    for (const c of o.concurrency) {
      progress(`classic-level: durable puts at concurrency ${c}`)
      await poolRate(c, o.warmMs, put)
      puts[c] = await poolRate(c, o.writeMs, put)
    }
    return {
      durability: "{ sync: true } on every put",
      loadPerSecond,
      rssBytesPerKey,
      openMs,
      reads: { main, getSync: sync, getMany64: many },
      puts
    }
  } finally {
    await db?.close()
    tmp.remove()
  }
}
