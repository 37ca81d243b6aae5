import * as fs from "node:fs"
import * as path from "node:path"
import { Cause, Effect, Exit, Option } from "effect"
import t from "tap"
import { Engine } from "../../engine/Engine.ts"
import { DataDirLocked, DiskFull, EngineClosed, engineErrors, InvalidKey, ValueTooLarge } from "../../engine/Errors.ts"
import { makeMemoryFiles, nodeFilesApi } from "../../engine/Files.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"

const failure = async (p: Promise<unknown>) => {
  try {
    await p
  } catch (e) {
    return e
  }
  return undefined
}

t.test("bad keys and values get typed errors and leave the store usable", async (t) => {
  const log = openLog(makeMemoryFiles(), DIR, { maxValueBytes: 100 })
  t.type(await failure(put(log, "", "v")), InvalidKey, "empty key")
  t.type(await failure(put(log, "k".repeat(1025), "v")), InvalidKey, "1025-byte key")
  t.type(await failure(put(log, "é".repeat(513), "v")), InvalidKey, "513 two-byte characters are 1026 bytes")
  // A lone surrogate's UTF-8 bytes would read back as "a\uFFFD", another key, which a restart
  // would then overwrite by LSN (a peer's message can carry such a string; HTTP paths cannot).
  await put(log, "a\uFFFD", "legit")
  t.type(await failure(put(log, "a\uD800", "v")), InvalidKey, "a key with a lone surrogate")
  t.equal(valueOf(log, "a\uFFFD"), "legit", "and the key its bytes would have named is untouched")
  await put(log, "k".repeat(1024), "v")
  t.equal(valueOf(log, "k".repeat(1024)), "v", "a 1024-byte key is fine")
  const big = (await failure(put(log, "k", Buffer.alloc(101)))) as ValueTooLarge
  t.type(big, ValueTooLarge)
  t.equal(big.code, "value_too_large")
  t.equal(big.limit, 100)
  await put(log, "k", Buffer.alloc(100, 1))
  t.equal(log.read("k")!.value.length, 100)
  log.reconfigure({ maxValueBytes: 200 })
  await put(log, "k", Buffer.alloc(150, 1))
  t.equal(log.read("k")!.value.length, 150, "the limit is live")
  await log.close()
  t.type(await failure(put(log, "k", "v")), EngineClosed, "closed")
})

t.test("a full disk fails the write, keeps what was acknowledged, and recovers when space returns", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR, { maxSegmentBytes: 1 << 20 })
  for (let i = 0; i < 10; i++) await put(log, `a${i}`, "x".repeat(100))
  const before = files.usedBytes()
  files.setQuota(before + 250)
  // Concurrent writes share a batch: the whole batch fails, none of it is half-kept.
  const results = await Promise.allSettled(Array.from({ length: 5 }, (_, i) => put(log, `b${i}`, "y".repeat(100))))
  const errs = results.filter((r) => r.status === "rejected").map((r) => (r as PromiseRejectedResult).reason)
  t.ok(errs.length > 0, `${errs.length} writes refused`)
  for (const e of errs) {
    t.type(e, DiskFull)
    t.equal((e as DiskFull).code, "disk_full")
  }
  const okSizes = results.filter((r) => r.status === "fulfilled").length * (36 + 2 + 100)
  t.equal(files.usedBytes(), before + okSizes, "the failed batch was cut off the segment")
  for (let i = 0; i < 10; i++) t.equal(valueOf(log, `a${i}`), "x".repeat(100))
  results.forEach((r, i) =>
    t.equal(valueOf(log, `b${i}`), r.status === "fulfilled" ? "y".repeat(100) : undefined, `b${i} visible only if acknowledged`)
  )
  files.setQuota(undefined)
  await put(log, "c", "after")
  t.equal(valueOf(log, "c"), "after", "writes work again once there is space")
  log.abandonForTest()
  files.crash()
  const reopened = openLog(files, DIR)
  t.equal(reopened.damage.length, 0, "no damage left behind")
  t.equal(valueOf(reopened, "c"), "after")
  t.equal(valueOf(reopened, "a9"), "x".repeat(100))
  await reopened.close()
})

// The lock itself, with real processes (zombies, races, live holders): lock.test.ts.
t.test("a data directory locked by an open log is refused; close releases it", async (t) => {
  const dir = t.testdir()
  // Whatever pid a LOCK file names is never trusted: only the lock on it counts.
  fs.writeFileSync(path.join(dir, "LOCK"), String(process.ppid))
  const log = openLog(nodeFilesApi, dir)
  await put(log, "k", "v")
  const err = (() => {
    try {
      openLog(nodeFilesApi, dir)
    } catch (e) {
      return e
    }
  })()
  t.type(err, DataDirLocked, "twice in one process")
  t.equal((err as DataDirLocked).code, "data_dir_locked")
  t.equal((err as DataDirLocked).pid, process.pid, "it names the holder")
  t.match((err as DataDirLocked).message, dir)
  await log.close()
  t.ok(fs.existsSync(path.join(dir, "LOCK")), "close leaves the LOCK file (unlinking a locked file races the next opener)")
  const again = openLog(nodeFilesApi, dir)
  t.equal(valueOf(again, "k"), "v", "close released the lock")
  await again.close()
})

t.test("the Effect service reports the same typed errors", async (t) => {
  const exit = await Effect.runPromiseExit(
    Effect.scoped(Effect.gen(function*() {
      const e = yield* Engine
      yield* e.put("", 0, Buffer.from("v"))
    }).pipe(Effect.provide(Engine.layerMemory({ dir: DIR, compactionIntervalMs: 0 }))))
  )
  t.ok(Exit.isFailure(exit))
  if (Exit.isFailure(exit)) {
    const err = Cause.squash(exit.cause)
    t.type(err, InvalidKey)
  }
  const got = await Effect.runPromise(
    Effect.scoped(Effect.gen(function*() {
      const e = yield* Engine
      yield* e.put("k", 0, Buffer.from("v"))
      return yield* e.get("k")
    }).pipe(Effect.provide(Engine.layerMemory({ dir: DIR, compactionIntervalMs: 0 }))))
  )
  t.equal(Option.isSome(got) && Buffer.from(got.value.value).toString(), "v")
})

t.test("every error code is documented in docs/storage.md", async (t) => {
  const doc = fs.readFileSync(new URL("../../docs/storage.md", import.meta.url), "utf8")
  for (const E of engineErrors) {
    const code = (new (E as any)({ message: "", dir: "", pid: 0, path: "", size: 0, limit: 0, segment: 0, offset: 0, cause: undefined, pendingBytes: 0, file: "", version: 0, fromLsn: 0, lowWatermark: 0 })).code as string
    t.match(doc, `\`${code}\``, `${code} is documented`)
  }
})
