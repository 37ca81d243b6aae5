/**
 * Crash safety with real processes: a writer child (fixtures/writer.ts) puts and removes
 * keys with 32 writes outstanding and is killed by SIGKILL 50 to 400 ms after its first
 * acknowledged write, 25 times on the same directory, in about half of the runs while
 * background compaction merges segments (tombstones included) every few ms. After each kill,
 * before the next child writes, this process opens the directory and checks every key:
 *
 * - it reads the newest state known for it (the last acknowledged write, or what the
 *   previous check saw), or the write of that key that was in flight at the kill;
 * - never an older state (a lost ack, or a deleted key come back), never a missing key
 *   whose put was acknowledged, never bytes other than those that write put.
 *
 * A key has one write outstanding at a time, so "in flight" is at most one attempt, and
 * generations (carried in each record's metadata) order a key's attempts.
 */
import { fileURLToPath } from "node:url"
import t from "tap"
import { defaultLogConfig, Log, type Entry } from "../../engine/Log.ts"
import { nodeFilesApi } from "../../engine/Files.ts"
import { RecordType } from "../../engine/Record.ts"
import { compactionLeftovers, dirUsage, genOf, keyName, KEYS, rng, sha256, valueOf } from "./fixtures/model.ts"
import { runChild } from "./fixtures/proc.ts"

const WRITER = fileURLToPath(new URL("./fixtures/writer.ts", import.meta.url))
const CYCLES = 25
const MAX_SEGMENT_BYTES = 128 * 1024
const seed = Number(process.env.CRASH_SEED ?? Date.now() % 1_000_000_000)
const random = rng(seed)

type Kind = "p" | "d"

/** One write of a key: its generation and whether it was a put or a remove. */
interface Version {
  readonly gen: number
  readonly kind: Kind
  /** The LSN the engine acknowledged it with, if it was acknowledged. */
  readonly lsn?: number
}

/** Never written: reads as absent, and anything written later is newer. */
const NOTHING: Version = { gen: 0, kind: "d" }

/**
 * Judges what was read of `key` against its known state and the write of it in flight at
 * the kill: either what is wrong, or which of the two it was.
 */
const judge = (key: string, e: Entry | undefined, known: Version, inFlight: Version | undefined): { error?: string; seen?: Version } => {
  const allowed = inFlight === undefined ? [known] : [known, inFlight]
  const describe = (v: Version) => `${v.kind === "p" ? "put" : "remove"} gen ${v.gen}${v.lsn === undefined ? "" : ` lsn ${v.lsn}`}`
  const want = `want ${allowed.map(describe).join(" or ")}`
  if (e === undefined) {
    // An absent key is a removed one whose tombstone compaction dropped (or one never written).
    const removed = allowed.filter((v) => v.kind === "d").at(-1)
    return removed === undefined ? { error: `${key}: missing; ${want}` } : { seen: removed }
  }
  const gen = genOf(e.meta)
  const v = allowed.find((a) => a.gen === gen)
  if (e.key !== key) return { error: `${key}: read returned key ${e.key}` }
  if (gen === undefined || v === undefined) {
    const older = gen !== undefined && gen < known.gen
    return { error: `${key}: read ${e.type === RecordType.Put ? "put" : "tombstone"} gen ${gen} lsn ${e.lsn}${older ? " (OLDER than known)" : ""}; ${want}` }
  }
  if ((v.kind === "p") !== (e.type === RecordType.Put)) return { error: `${key}: gen ${gen} read as type ${e.type}; ${want}` }
  if (v.lsn !== undefined && v.lsn !== e.lsn) return { error: `${key}: gen ${gen} read with lsn ${e.lsn}, acknowledged with lsn ${v.lsn}` }
  if (v.kind === "p") {
    const expected = valueOf(key, gen!)
    if (!Buffer.from(e.value).equals(expected)) return { error: `${key}: gen ${gen} value differs (${e.value.length} bytes read, ${expected.length} written)` }
  } else if (e.value.length !== 0) {
    return { error: `${key}: tombstone gen ${gen} carries a value` }
  }
  return { seen: { ...v, lsn: e.lsn } }
}

/**
 * Background compaction often enough that kills land in the middle of it, and mostly
 * partial: segments are picked by their dead share alone, so a merge leaves out segments
 * (earlier outputs above all) that still hold older values of keys it holds tombstones of.
 * About one cycle in four merges all sealed segments instead (they are all "small").
 */
const compactionConfig = () => ({
  compactionIntervalMs: [5, 20, 50][random.int(3)]!,
  compactDeadRatio: 0.2 + random.next() * 0.5,
  compactDeadBytes: MAX_SEGMENT_BYTES,
  compactSmallBytes: random.next() < 0.25 ? 2 * MAX_SEGMENT_BYTES : 0,
  tombstoneGraceMs: 0
})

t.test("acknowledged writes survive SIGKILL, with and without compaction running", async (t) => {
  t.comment(`seed ${seed} (rerun with CRASH_SEED=${seed})`)
  const dir = t.testdir()
  const keys = Array.from({ length: KEYS }, (_, i) => keyName(i))
  const keySet = new Set(keys)
  const known = new Map<string, Version>(keys.map((k) => [k, NOTHING]))
  // Compaction runs in 9 to 16 cycles picked at random.
  const withCompaction = new Set<number>()
  const compactingCycles = 9 + random.int(8)
  while (withCompaction.size < compactingCycles) withCompaction.add(1 + random.int(CYCLES))
  let totalAcks = 0
  let totalCompactions = 0
  let killsMidCompaction = 0
  let landedInFlight = 0

  for (let cycle = 1; cycle <= CYCLES; cycle++) {
    const compacting = withCompaction.has(cycle)
    const overrides = { maxSegmentBytes: MAX_SEGMENT_BYTES, ...(compacting ? compactionConfig() : { compactionIntervalMs: 0 }) }
    const delay = 50 + random.int(351)
    const inFlight = new Map<string, Version>()
    const ackErrors: string[] = []
    let acks = 0
    let removes = 0
    let compactions = 0
    let killed = false
    const run = await runChild(WRITER, [dir, String(cycle), String(seed * 100 + cycle), JSON.stringify(overrides)], (line, child) => {
      const [tag, key, genText, kind, lsnText, hash] = line.split(" ")
      if (tag === "I") {
        inFlight.set(key!, { gen: Number(genText), kind: kind as Kind })
      } else if (tag === "A") {
        const gen = Number(genText)
        const prev = known.get(key!)!
        const attempt = inFlight.get(key!)
        if (attempt?.gen !== gen || attempt.kind !== kind) ackErrors.push(`ack of ${key} gen ${gen} that was not the attempt in flight`)
        if (gen <= prev.gen) ackErrors.push(`ack of ${key} gen ${gen} after gen ${prev.gen}`)
        if (kind === "p" && hash !== sha256(valueOf(key!, gen))) ackErrors.push(`ack of ${key} gen ${gen} reports a hash the parent does not compute`)
        inFlight.delete(key!)
        known.set(key!, { gen, kind: kind as Kind, lsn: Number(lsnText) })
        // The clock starts at the first acknowledged write: under load, opening the
        // directory and the first fsyncs can take longer than the shortest delay.
        if (acks === 0) {
          setTimeout(() => {
            killed = true
            child.kill("SIGKILL")
          }, delay)
        }
        acks++
        if (kind === "d") removes++
      } else if (tag === "C") {
        compactions = Number(key)
      }
    }, 20_000)
    t.equal(run.signal, "SIGKILL", `cycle ${cycle}: the writer died by SIGKILL`, { stderr: run.stderr, code: run.code })
    t.ok(killed, `cycle ${cycle}: the writer had writes acknowledged and was killed ${delay} ms after the first`)
    t.same(ackErrors.slice(0, 20), [], `cycle ${cycle}: the acknowledgements are consistent`)

    // A kill mid-compaction leaves outputs (*.seg.tmp) before its commit point, MERGE after it.
    const leftovers = compactionLeftovers(dirUsage(dir).files)
    if (leftovers.some((f) => f === "MERGE" || f.endsWith(".seg.tmp"))) killsMidCompaction++

    // The check runs in this process, on the directory exactly as the kill left it.
    const log = Log.open(nodeFilesApi, { ...defaultLogConfig, dir, maxSegmentBytes: MAX_SEGMENT_BYTES })
    const errors: string[] = []
    let landed = 0
    let lost = 0
    try {
      for (const key of keys) {
        const attempt = inFlight.get(key)
        let entry: Entry | undefined
        try {
          entry = log.read(key)
        } catch (e) {
          errors.push(`${key}: read failed: ${String(e)}`)
          continue
        }
        const { error, seen } = judge(key, entry, known.get(key)!, attempt)
        if (error !== undefined) {
          errors.push(error)
          continue
        }
        if (attempt !== undefined) {
          if (seen!.gen === attempt.gen) landed++
          else lost++
        }
        // What was read is now durable: later reads must never go back before it.
        known.set(key, seen!)
      }
      for (const key of log.index.keys()) if (!keySet.has(key)) errors.push(`a key nobody wrote: ${JSON.stringify(key)}`)
    } finally {
      await log.close()
    }
    const after = compactionLeftovers(dirUsage(dir).files)
    t.same(errors.slice(0, 20), [], `cycle ${cycle}: all ${KEYS} keys read back their newest acknowledged state (${errors.length} errors)`)
    t.same(after, [], `cycle ${cycle}: recovery left no MERGE or .tmp file`)

    totalAcks += acks
    totalCompactions += compactions
    landedInFlight += landed
    t.comment(
      `cycle ${String(cycle).padStart(2)}${compacting ? ` [compaction every ${overrides.compactionIntervalMs} ms]` : ""}: ` +
        `killed ${delay} ms after the first ack, ${acks} acks checked (${acks - removes} put, ${removes} remove), ` +
        `${landed + lost} in flight (${landed} landed, ${lost} lost)` +
        (compacting ? `, ${compactions} compactions done` : "") +
        (leftovers.length > 0 ? `, left at the kill: ${leftovers.join(" ")}` : "") +
        (log.damage.length > 0 ? `, recovery: ${log.damage.map((d) => `${d.action} ${d.length} bytes of segment ${d.segment}`).join(", ")}` : "")
    )
  }
  const { files, bytes } = dirUsage(dir)
  t.comment(`total: ${totalAcks} acks over ${CYCLES} kills, ${landedInFlight} unacknowledged writes found on disk, ${totalCompactions} compactions in ${withCompaction.size} cycles, ${killsMidCompaction} kills mid-compaction; ${files.length} files, ${(bytes / 1048576).toFixed(1)} MiB`)
  t.ok(totalCompactions + killsMidCompaction > 0, "background compaction ran in the cycles that enabled it")
})
