/**
 * Fail-stop and group-commit bounds: an fsync or write failure stops writes (reads go on, a
 * restart recovers); a full disk fails only its batch; thousands of queued writes failing do
 * not recurse; batches split at the segment limit; the pending queue is bounded; and an error
 * after a compaction's commit point stops the log, the next start finishing the compaction.
 */
import * as path from "node:path"
import t from "tap"
import { compact, selectInputs } from "../../engine/Compaction.ts"
import { DiskFull, Overloaded, StorageFailed } from "../../engine/Errors.ts"
import { makeMemoryFiles } from "../../engine/Files.ts"
import { del, openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"
const settle = <T>(p: Promise<T>) => p.then((v) => ({ ok: true as const, v }), (e: unknown) => ({ ok: false as const, e }))

t.test("a failed fsync makes the log fail-stop: writes refused, reads served, a restart recovers", async (t) => {
  const files = makeMemoryFiles()
  const failures: string[] = []
  let log = openLog(files, DIR, { onFailure: (f) => failures.push(f.message) })
  for (let i = 0; i < 20; i++) await put(log, `k${i}`, `v${i}`)
  const seg = log.active.file
  const sizeBefore = files.readFile(seg).length
  files.inject({ op: "datasync", path: seg })
  const a = await settle(put(log, "lost", "x"))
  t.notOk(a.ok, "the write whose fsync failed is not acknowledged")
  t.type(!a.ok && a.e, StorageFailed)
  t.equal(failures.length, 1, "the failure is reported once")
  t.match(failures[0], /fsync/)
  t.ok(log.failed instanceof StorageFailed, "the log says why it stopped")
  t.equal(log.snapshotStats().failed, 1)
  // Later writes fail at once, even though the disk would take them now.
  const b = await settle(put(log, "later", "y"))
  t.type(!b.ok && b.e, StorageFailed, "later writes are refused")
  t.equal(valueOf(log, "k3"), "v3", "reads go on")
  // Nothing is truncated or rewritten after the failure: the page cache is not trusted.
  t.ok(files.readFile(seg).length >= sizeBefore, "the file was not cut back")
  log.abandonForTest()
  files.crash()
  log = openLog(files, DIR)
  t.equal(log.failed, undefined, "a restart recovers")
  for (let i = 0; i < 20; i++) t.equal(valueOf(log, `k${i}`), `v${i}`)
  t.equal(valueOf(log, "later"), undefined)
  await put(log, "after", "z")
  t.equal(valueOf(log, "after"), "z")
  await log.close()
})

t.test("a write error other than a full disk is fail-stop too; a full disk fails only its batch", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR)
  await put(log, "a", "1")
  files.inject({ op: "writeAll", path: log.active.file, code: "ENOSPC", written: 10 })
  const full = await settle(put(log, "b", "2"))
  t.type(!full.ok && full.e, DiskFull, "ENOSPC: disk_full")
  t.equal(log.failed, undefined, "a full disk is not fail-stop")
  await put(log, "c", "3")
  t.equal(valueOf(log, "c"), "3", "writes work again once there is space")
  files.inject({ op: "writeAll", path: log.active.file, code: "EIO" })
  const io = await settle(put(log, "d", "4"))
  t.type(!io.ok && io.e, StorageFailed, "EIO: fail-stop")
  t.ok(log.failed)
  t.equal(valueOf(log, "a"), "1")
  log.abandonForTest()
})

t.test("thousands of queued writes failing do not overflow the stack (fsync=always, full disk)", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { fsync: "always", preallocate: false })
  await put(log, "first", "ok")
  files.setQuota(files.usedBytes())
  const N = 20_000
  const results = await Promise.all(Array.from({ length: N }, (_, i) => settle(put(log, `q${i}`, "v".repeat(50)))))
  t.equal(results.filter((r) => !r.ok && r.e instanceof DiskFull).length, N, "every queued write failed with disk_full")
  files.setQuota(undefined)
  await put(log, "again", "ok")
  t.equal(valueOf(log, "again"), "ok", "the log goes on")
  await log.close()
})

t.test("a batch never makes a segment larger than the limit", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 2048, preallocate: false })
  await Promise.all(Array.from({ length: 200 }, (_, i) => put(log, `key-${i}`, `value-${i}-${"x".repeat(i % 30)}`)))
  await log.close()
  const sizes = files.list(DIR).filter((f) => f.endsWith(".seg")).map((f) => files.readFile(path.join(DIR, f)).length)
  t.ok(sizes.length > 5, `${sizes.length} segments`)
  t.ok(sizes.every((s) => s <= 2048), `largest segment ${Math.max(...sizes)} bytes`)
  const reopened = openLog(files, DIR)
  for (let i = 0; i < 200; i++) t.equal(valueOf(reopened, `key-${i}`), `value-${i}-${"x".repeat(i % 30)}`)
  await reopened.close()
})

t.test("the pending queue is bounded: past maxPendingBytes writes are refused, not queued", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxPendingBytes: 10_000, preallocate: false })
  await put(log, "warm", "up")
  files.holdSyncs()
  const writes = Array.from({ length: 300 }, (_, i) => settle(put(log, `p${i}`, "v".repeat(100))))
  await new Promise((r) => setImmediate(r))
  files.releaseSyncs()
  const results = await Promise.all(writes)
  const refused = results.filter((r) => !r.ok && r.e instanceof Overloaded).length
  const acked = results.filter((r) => r.ok).length
  t.ok(refused > 0, `${refused} refused with overloaded`)
  t.ok(acked > 0, `${acked} acknowledged`)
  t.equal(refused + acked, 300)
  t.equal(log.snapshotStats().overloaded, refused)
  await log.close()
})

const compacting = async (files = makeMemoryFiles()) => {
  const log = openLog(files, DIR, { maxSegmentBytes: 1024, preallocate: false })
  for (let round = 0; round < 4; round++) {
    for (let i = 0; i < 40; i++) await put(log, `k${i}`, `r${round}-${i}`)
  }
  for (let i = 0; i < 40; i += 5) await del(log, `k${i}`)
  await put(log, "tail", "t")
  return { files, log }
}

const expectFinal = (t: { fail: (m: string) => void; equal: (a: unknown, b: unknown) => void }, log: ReturnType<typeof openLog>) => {
  for (let i = 0; i < 40; i++) {
    const want = i % 5 === 0 ? ["<deleted>", undefined] : [`r3-${i}`]
    const got = valueOf(log, `k${i}`)
    if (!want.includes(got)) t.fail(`k${i} is ${got}, expected ${want.join(" or ")}`)
  }
  t.equal(valueOf(log, "tail"), "t")
}

for (const step of ["renameAsync", "syncDirAsync", "unlinkAsync"] as const) {
  t.test(`an I/O error after the compaction's commit point (${step}) is fail-stop, and the next start rolls forward`, async (t) => {
    const { files, log } = await compacting()
    const inputs = selectInputs(log, true)
    let committed = false
    // Armed at the commit point, so the steps before it are not the ones that fail.
    const arm = () => {
      committed = true
      files.inject({ op: step })
    }
    const r = await settle(compact(log, inputs, () => false, { afterManifest: arm }))
    t.ok(committed, "the manifest was written")
    t.notOk(r.ok, "compaction failed")
    t.ok(log.failed instanceof StorageFailed, "the log stopped taking writes")
    t.match(log.failed?.message ?? "", /commit point/)
    expectFinal(t, log)
    log.abandonForTest()
    files.clearFaults()
    files.crash()
    const reopened = openLog(files, DIR)
    expectFinal(t, reopened)
    t.notOk(files.list(DIR).some((f) => f === "MERGE" || f.endsWith(".tmp")), "no manifest or temporary file left")
    for (const id of inputs.map((s) => s.id)) t.notOk(files.exists(reopened.pathOf(id, "seg")), `input ${id} deleted`)
    await reopened.close()
  })
}

t.test("an I/O error before the commit point leaves the log writable and the inputs whole", async (t) => {
  const { files, log } = await compacting()
  const inputs = selectInputs(log, true)
  files.inject({ op: "writeAllAsync", path: /\.seg\.tmp$/, after: 3 })
  const r = await settle(compact(log, inputs))
  t.notOk(r.ok, "compaction failed")
  t.equal(log.failed, undefined, "the log still takes writes")
  t.notOk(files.list(DIR).some((f) => f.endsWith(".tmp") || f === "MERGE"), "outputs removed")
  for (const s of inputs) t.ok(files.exists(s.file), `input ${s.id} kept`)
  await put(log, "more", "m")
  expectFinal(t, log)
  await log.close()
})

t.test("a crash at each step after the commit point is finished at the next start", async (t) => {
  for (const hook of ["afterManifest", "afterRename", "beforeUnlink"] as const) {
    const { files, log } = await compacting()
    const inputs = selectInputs(log, true)
    const crashNow = () => {
      log.abandonForTest()
      files.crash({ seed: 7 })
      throw new Error("power cut")
    }
    await settle(compact(log, inputs, () => false, { [hook]: crashNow }))
    const reopened = openLog(files, DIR)
    expectFinal(t, reopened)
    t.notOk(files.list(DIR).some((f) => f === "MERGE" || f.endsWith(".tmp")), `${hook}: nothing left over`)
    await reopened.close()
  }
})
