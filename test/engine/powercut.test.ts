/**
 * Power cuts with writes really in flight, on the crash model of Files.ts (unsynced
 * directory entries lost, unsynced pages written back or not, independently): for many
 * seeds, writers keep appending across segment rotations while some fsyncs complete and
 * others are still in flight, then the power goes. After reopening, every acknowledged write
 * reads back exactly, nothing reads back that was never written, and the log takes writes.
 */
import t from "tap"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { RecordType } from "../../engine/Record.ts"
import { openLog, put } from "./helpers.ts"

const DIR = "/data"
// 24 seeds in CI; POWERCUT_SEEDS=500 for a long run.
const SEEDS = Number(process.env.POWERCUT_SEEDS ?? 24)

const rng = (seed: number) => {
  let s = seed >>> 0 || 1
  return () => {
    s ^= s << 13
    s ^= s >>> 17
    s ^= s << 5
    return (s >>> 0) / 0x1_0000_0000
  }
}

const valueFor = (key: string, gen: number) => `${key}:${gen}:${"z".repeat((gen * 37) % 200)}`

t.test(`power cut with fsyncs in flight, ${SEEDS} seeds`, async (t) => {
  let inFlightAtCut = 0
  let ackedTotal = 0
  for (let seed = 1; seed <= SEEDS; seed++) {
    const random = rng(seed)
    const files = makeMemoryFiles()
    const log = openLog(files, DIR, { maxSegmentBytes: 4096, preallocate: seed % 2 === 0, fsync: seed % 3 === 0 ? "always" : "batch", random })
    const acked = new Map<string, number>()
    const issued = new Map<string, Set<number>>()
    let gen = 0
    files.holdSyncs()
    const pending: Array<Promise<void>> = []
    let cut = false
    for (let round = 0; round < 40; round++) {
      for (let w = 0; w < 8; w++) {
        const key = `k${Math.floor(random() * 30)}`
        const g = ++gen
        if (!issued.has(key)) issued.set(key, new Set())
        issued.get(key)!.add(g)
        pending.push(put(log, key, valueFor(key, g)).then(
          () => {
            if (!cut && (acked.get(key) ?? 0) < g) acked.set(key, g)
          },
          () => undefined
        ))
      }
      // Let some held operations complete, in order, and their continuations run.
      files.releaseSyncs(Math.floor(random() * 4))
      for (let i = 0; i < 3; i++) await new Promise((r) => setImmediate(r))
    }
    inFlightAtCut += files.inFlight().length
    cut = true
    log.abandonForTest()
    files.crash({ seed })
    const reopened = openLog(files, DIR, { random })
    for (const [key, g] of acked) {
      const e = reopened.read(key)
      const got = e === undefined || e.type !== RecordType.Put ? undefined : Buffer.from(e.value).toString()
      const gotGen = got === undefined ? undefined : Number(got.split(":")[1])
      if (gotGen === undefined || gotGen < g) t.fail(`seed ${seed}: ${key} lost its acknowledged gen ${g} (reads ${got})`)
    }
    for (const key of [...reopened.index.keys()]) {
      const e = reopened.read(key)!
      const v = Buffer.from(e.value).toString()
      const g = Number(v.split(":")[1])
      if (!issued.get(key)?.has(g) || v !== valueFor(key, g)) t.fail(`seed ${seed}: ${key} reads ${v.slice(0, 40)}, never written`)
    }
    await put(reopened, "after", "ok")
    await reopened.close()
    ackedTotal += acked.size
  }
  t.ok(inFlightAtCut > 0, `${inFlightAtCut} operations were in flight at the cuts`)
  t.ok(ackedTotal > 0, `${ackedTotal} acknowledged keys checked`)
})
