/**
 * Compaction while the store is in use, and compaction cut short by SIGKILL.
 *
 * (a) In this process: a full compaction runs while fibers keep writing and reading; every
 *     read must be a write of that key no older than its last acknowledged one, and at the
 *     end every key reads its newest write, before and after a restart, in fewer bytes.
 * (b) In a child (fixtures/compactor.ts): a merge killed at each of its steps (before the
 *     manifest, after it, before the inputs are unlinked), as a full merge and as a partial
 *     one whose removed keys still have older values in segments left out of the merge
 *     (Bitcask #82); and a long merge killed at random moments. After each kill the
 *     directory is reopened here: every key reads its last write, removed keys stay
 *     removed, and no MERGE or .tmp file is left.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import { Effect, Fiber, Option } from "effect"
import t, { type Test } from "tap"
import type { CompactionResult } from "../../engine/Compaction.ts"
import { Engine } from "../../engine/Engine.ts"
import { nodeFilesApi } from "../../engine/Files.ts"
import { defaultLogConfig, fileNames, Log, type Entry } from "../../engine/Log.ts"
import { RecordType } from "../../engine/Record.ts"
import {
  bulkHistory, checkState, finalState, tailOps, tombstoneHistory, writeHistory,
  BULK_MAX_VALUE, BULK_SEGMENT_BYTES, STEPS_SEGMENT_BYTES
} from "./fixtures/dataset.ts"
import { compactionLeftovers, dirUsage, genOf, metaOf, rng, valueOf } from "./fixtures/model.ts"
import { runChild, type ChildRun } from "./fixtures/proc.ts"

const COMPACTOR = fileURLToPath(new URL("./fixtures/compactor.ts", import.meta.url))
const seed = Number(process.env.CRASH_SEED ?? Date.now() % 1_000_000_000)
const random = rng(seed)
t.comment(`seed ${seed} (rerun with CRASH_SEED=${seed})`)

/** The JSON after `tag ` on the line of `run` that starts with it. */
const lineOf = <A>(run: ChildRun, tag: string): A | undefined => {
  const line = run.lines.find((l) => l.startsWith(`${tag} `))
  return line === undefined ? undefined : (JSON.parse(line.slice(tag.length + 1)) as A)
}

t.test("full compaction while fibers write and read", async (t) => {
  const dir = t.testdir()
  const N = 20_000
  const MAX_VALUE = 300
  const keys = Array.from({ length: N }, (_, i) => `c${String(i).padStart(5, "0")}`)
  type Kind = "p" | "d"
  /** Every write ever issued per key (generation -> kind): what a read may return. */
  const issued = new Map<string, Map<number, Kind>>(keys.map((k) => [k, new Map()]))
  /** The last acknowledged write per key: a read may not return anything older. */
  const acked = new Map<string, { gen: number; kind: Kind }>()
  const errors: string[] = []

  /** Why `got` is not an acceptable read of `key` given the floor at the time, if it is not. */
  const judge = (key: string, got: Option.Option<Entry>, floor: { gen: number; kind: Kind } | undefined, exact: boolean): string | undefined => {
    const writes = issued.get(key)!
    const atLeast = floor?.gen ?? 0
    if (Option.isNone(got)) {
      // Absent: removed (compaction may drop the tombstone), or a remove being committed.
      if (floor === undefined || floor.kind === "d") return undefined
      if (!exact && [...writes].some(([g, k]) => g > atLeast && k === "d")) return undefined
      return `${key}: missing; last acknowledged is put gen ${floor.gen}`
    }
    const e = got.value
    const gen = genOf(e.meta)
    const kind = gen === undefined ? undefined : writes.get(gen)
    const what = `${e.type === RecordType.Put ? "put" : "tombstone"} gen ${gen}`
    if (kind === undefined) return `${key}: read ${what}, which was never written`
    if (gen! < atLeast) return `${key}: read ${what}, OLDER than the acknowledged gen ${atLeast}`
    if (exact && gen !== atLeast) return `${key}: read ${what}, the newest is gen ${atLeast}`
    if ((kind === "p") !== (e.type === RecordType.Put)) return `${key}: read ${what}, written as ${kind === "p" ? "put" : "remove"}`
    if (kind === "p" && !Buffer.from(e.value).equals(valueOf(key, gen!, MAX_VALUE))) return `${key}: ${what} reads back different bytes`
    return undefined
  }

  const layer = Engine.layer({ dir, fsync: "batch", maxSegmentBytes: 256 * 1024, compactionIntervalMs: 0, tombstoneGraceMs: 0 })
  const run = <A>(program: Effect.Effect<A, unknown, Engine>) => Effect.runPromise(Effect.scoped(Effect.provide(program, layer)))

  const write = (e: Engine["Service"], key: string, gen: number, kind: Kind) =>
    Effect.gen(function*() {
      issued.get(key)!.set(gen, kind)
      if (kind === "p") yield* e.put(key, 0, valueOf(key, gen, MAX_VALUE), metaOf(gen))
      else yield* e.remove(key, 0, metaOf(gen))
      acked.set(key, { gen, kind })
    })

  const checkAll = (e: Engine["Service"]) =>
    Effect.gen(function*() {
      const wrong: string[] = []
      for (const key of keys) {
        const why = judge(key, yield* e.get(key), acked.get(key), true)
        if (why !== undefined) wrong.push(why)
      }
      return wrong
    })

  const summary = await run(Effect.gen(function*() {
    const e = yield* Engine
    // Three generations: all keys, then three quarters, then half of them with a tenth removed.
    for (const gen of [1, 2, 3]) {
      yield* Effect.forEach(keys, (key, i) => {
        if (gen === 2 && i % 4 === 0) return Effect.void
        if (gen === 3 && i % 2 === 0) return i % 10 === 4 ? write(e, key, gen, "d") : Effect.void
        return write(e, key, gen, "p")
      }, { concurrency: 64, discard: true })
    }
    const before = dirUsage(dir).bytes
    const statsBefore = yield* e.stats

    let stop = false
    let compacting = false
    let reads = 0
    let readsDuring = 0
    let writesDuring = 0
    let nextGen = 100
    const inFlight = new Set<string>()
    const writer = Effect.gen(function*() {
      while (!stop) {
        let key = keys[random.int(N)]!
        while (inFlight.has(key)) key = keys[random.int(N)]!
        inFlight.add(key)
        yield* write(e, key, nextGen++, random.next() < 0.1 ? "d" : "p")
        inFlight.delete(key)
        if (compacting) writesDuring++
      }
    })
    const reader = Effect.gen(function*() {
      while (!stop) {
        const key = keys[random.int(N)]!
        const floor = acked.get(key)
        const why = judge(key, yield* e.get(key), floor, false)
        if (why !== undefined && errors.length < 50) errors.push(why)
        reads++
        if (compacting) readsDuring++
        if (reads % 32 === 0) yield* Effect.yieldNow
      }
    })
    const writers = yield* Effect.forkChild(Effect.all(Array.from({ length: 16 }, () => writer), { concurrency: "unbounded", discard: true }))
    const readers = yield* Effect.forkChild(Effect.all([reader, reader], { concurrency: "unbounded", discard: true }))
    const results: Array<CompactionResult | undefined> = []
    for (let i = 0; i < 3; i++) {
      yield* Effect.sleep(100)
      compacting = true
      results.push(yield* e.compact({ full: true }))
      compacting = false
    }
    stop = true
    yield* Fiber.join(writers)
    yield* Fiber.join(readers)
    const wrong = yield* checkAll(e)
    // What the writers added during the compactions is compacted too once they stop: the
    // disk then holds the live data, the active segment and its preallocated spare.
    results.push(yield* e.compact({ full: true }))
    const after = dirUsage(dir).bytes
    return { before, after, statsBefore, statsAfter: yield* e.stats, results, reads, readsDuring, writesDuring, wrong }
  }))

  t.same(errors, [], `${summary.reads} concurrent reads each returned a write of their key, none older than acknowledged`)
  t.ok(summary.readsDuring > 0, `reads went on during compaction (${summary.readsDuring})`)
  t.ok(summary.writesDuring > 0, `writes were acknowledged during compaction (${summary.writesDuring})`)
  t.ok(summary.results.every((r) => r !== undefined && r.inputs.length > 0), "each compaction had inputs")
  t.ok(summary.results.some((r) => r!.droppedTombstones > 0), "tombstones were dropped")
  t.same(summary.wrong.slice(0, 20), [], `after the writers stopped, all ${N} keys read their newest write`)
  t.ok(summary.before > summary.after, "disk usage went down")
  t.comment(`disk: ${summary.before} bytes before, ${summary.after} after (${summary.statsBefore.segments} -> ${summary.statsAfter.segments} segments)`)
  t.comment(`compactions: ${summary.results.map((r) => `${r!.inputs.length} segments, ${r!.bytesBefore} -> ${r!.bytesAfter} bytes, ${r!.droppedTombstones} tombstones dropped`).join("; ")}`)
  t.comment(`${summary.reads} reads (${summary.readsDuring} during compaction), ${summary.writesDuring} writes acknowledged during compaction`)

  // The compaction outputs, their hints and the index agree after a restart.
  const reopened = await run(Effect.gen(function*() {
    return yield* checkAll(yield* Engine)
  }))
  t.same(reopened.slice(0, 20), [], "after a restart, all keys read their newest write")
})

const STEPS = ["beforeManifest", "afterManifest", "afterRename", "beforeUnlink"] as const

/** The plan a `steps` child prints before compacting. */
interface Plan {
  readonly inputs: number[]
  readonly sealed: Array<{ id: number; minLsn: number; maxLsn: number }>
  readonly active: { id: number; minLsn: number; maxLsn: number }
  readonly firstRemoval: number
}

const reopenAndCheck = async (t: Test, dir: string, segmentBytes: number, expected: ReturnType<typeof finalState>, maxValue?: number) => {
  for (const pass of ["first reopen (recovery)", "second reopen (from hints)"]) {
    const log = Log.open(nodeFilesApi, { ...defaultLogConfig, dir, maxSegmentBytes: segmentBytes })
    try {
      const errors = checkState(log, expected, maxValue)
      t.same(errors.slice(0, 20), [], `${pass}: every key reads its last write, removed keys stay removed (${errors.length} wrong)`)
    } finally {
      await log.close()
    }
    t.same(compactionLeftovers(dirUsage(dir).files), [], `${pass}: no MERGE or .tmp file is left`)
  }
}

t.test("a merge killed at each step", async (t) => {
  const { ops } = tombstoneHistory()
  const expected = finalState(ops)
  for (const variant of ["full", "partial"] as const) {
    for (const step of ["none", ...STEPS] as const) {
      await t.test(`${variant} merge, ${step === "none" ? "not killed" : `killed ${step}`}`, async (t) => {
        const dir = t.testdir()
        const run = await runChild(COMPACTOR, ["steps", dir, variant, step])
        const plan = lineOf<Plan>(run, "P")
        if (plan === undefined) return t.fail("the child printed its plan", { stderr: run.stderr })
        const inputs = new Set(plan.inputs)
        const outside = plan.sealed.filter((s) => !inputs.has(s.id))
        t.ok(plan.inputs.length >= 2, `the merge has inputs (${plan.inputs.join(",")})`)
        t.ok(plan.active.maxLsn >= 0, "the active segment holds records, so tombstones may be dropped")
        if (variant === "full") {
          t.same(outside, [], "a full merge takes every sealed segment")
        } else {
          // The removed keys' first values live in the segments left out: dropping their
          // tombstones in this merge would bring those values back.
          t.ok(outside.length >= 2 && outside.every((s) => s.maxLsn < plan.firstRemoval), `segments ${outside.map((s) => s.id).join(",")} with the older values stay out`)
          t.ok(plan.sealed.some((s) => inputs.has(s.id) && s.minLsn <= plan.firstRemoval && s.maxLsn >= plan.firstRemoval), "the segment with the first removal is merged")
        }

        const files = dirUsage(dir).files
        const segTmp = files.filter((f) => f.endsWith(".seg.tmp"))
        const inputFiles = plan.inputs.map(fileNames.segName)
        if (step === "none") {
          t.equal(run.code, 0, "the child finished", { stderr: run.stderr })
          const r = lineOf<CompactionResult>(run, "R")
          if (r === undefined) return t.fail("the child printed the compaction's result")
          if (variant === "full") t.ok(r.droppedTombstones > 0, `a full merge drops tombstones (${r.droppedTombstones})`)
          else t.equal(r.droppedTombstones, 0, "a partial merge keeps the tombstones whose keys have older values outside it")
          t.comment(`${variant}: ${r.inputs.length} inputs -> ${r.outputs.length} outputs, ${r.bytesBefore} -> ${r.bytesAfter} bytes, ${r.liveRecords} records kept, ${r.droppedTombstones} tombstones dropped`)
        } else {
          t.equal(run.signal, "SIGKILL", "the child died by SIGKILL", { stderr: run.stderr, code: run.code })
          t.ok(run.lines.includes(`K ${step}`), `it died at ${step}`)
          t.comment(`left by the kill: ${compactionLeftovers(files).join(" ")}`)
          if (step === "beforeManifest") {
            t.ok(segTmp.length > 0 && !files.includes("MERGE"), "outputs are .tmp and there is no manifest")
          } else if (step === "afterManifest") {
            t.ok(segTmp.length > 0 && files.includes("MERGE"), "outputs are .tmp and the manifest is written")
          } else {
            t.ok(segTmp.length === 0 && files.includes("MERGE"), "outputs are renamed and the manifest is still there")
          }
          t.ok(inputFiles.every((f) => files.includes(f)), "every input segment is still there")
        }

        await reopenAndCheck(t, dir, STEPS_SEGMENT_BYTES, expected)
        if (variant === "partial") {
          const log = Log.open(nodeFilesApi, { ...defaultLogConfig, dir, maxSegmentBytes: STEPS_SEGMENT_BYTES })
          try {
            const removed = [...expected.values()].filter((op) => op.kind === "d")
            const kept = removed.filter((op) => log.read(op.key)?.type === RecordType.Tombstone)
            t.equal(kept.length, removed.length, `all ${removed.length} tombstones are still there`)
          } finally {
            await log.close()
          }
        }
        const left = dirUsage(dir).files
        if (step === "beforeManifest") t.ok(inputFiles.every((f) => left.includes(f)), "rolled back: the inputs remain")
        else t.ok(inputFiles.every((f) => !left.includes(f)), "rolled forward: the inputs are gone")
      })
    }
  }
})

t.test("a long merge killed at random moments", async (t) => {
  const root = t.testdir()
  const template = path.join(root, "template")
  const bulk = bulkHistory()
  const expected = finalState([...bulk, ...tailOps()])
  const log = Log.open(nodeFilesApi, { ...defaultLogConfig, dir: template, maxSegmentBytes: BULK_SEGMENT_BYTES })
  await writeHistory(log, bulk, BULK_MAX_VALUE, 256)
  await log.close()
  const copy = (name: string) => {
    const dir = path.join(root, name)
    fs.cpSync(template, dir, { recursive: true })
    return dir
  }

  // One uninterrupted run measures how long the merge takes.
  const calibration = copy("calibration")
  const full = await runChild(COMPACTOR, ["long", calibration])
  t.equal(full.code, 0, "an uninterrupted merge finishes", { stderr: full.stderr })
  const done = full.lines.find((l) => l.startsWith("D "))?.split(" ")
  if (done === undefined) return t.fail("the child printed how long the merge took")
  const ms = Number(done[1])
  const result = JSON.parse(done.slice(2).join(" ")) as CompactionResult
  t.ok(result.droppedTombstones > 0, "it drops tombstones")
  t.comment(`uninterrupted: ${ms} ms, ${result.inputs.length} segments -> ${result.outputs.length}, ${result.bytesBefore} -> ${result.bytesAfter} bytes, ${result.droppedTombstones} tombstones dropped`)
  await reopenAndCheck(t, calibration, BULK_SEGMENT_BYTES, expected, BULK_MAX_VALUE)

  // Kills spread over the merge's duration, one in each fifth of it.
  const RUNS = 5
  const outcomes: string[] = []
  for (let i = 0; i < RUNS; i++) {
    const delay = Math.round((ms * (i + random.next())) / RUNS)
    await t.test(`killed ${delay} ms into the merge`, async (t) => {
      const dir = copy(`run${i}`)
      let finished = false
      const run = await runChild(COMPACTOR, ["long", dir], (line, child) => {
        if (line === "C") setTimeout(() => child.kill("SIGKILL"), delay)
        if (line.startsWith("D ")) finished = true
      })
      t.ok(run.signal === "SIGKILL" || (finished && run.code === 0), "the child died by SIGKILL, or finished first", { stderr: run.stderr, code: run.code })
      const left = compactionLeftovers(dirUsage(dir).files)
      const phase = finished ? "after it finished" : left.includes("MERGE") ? "after the commit point" : left.some((f) => f.endsWith(".seg.tmp")) ? "while writing outputs" : "before any output"
      outcomes.push(`${delay} ms: ${phase}`)
      t.comment(`killed ${phase}; left: ${left.join(" ") || "nothing"}`)
      await reopenAndCheck(t, dir, BULK_SEGMENT_BYTES, expected, BULK_MAX_VALUE)
    })
  }
  t.comment(`kills: ${outcomes.join("; ")}`)
})
