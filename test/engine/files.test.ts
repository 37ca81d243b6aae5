/**
 * The file-system seam (engine/Files.ts). Mostly the in-memory model of a disk that loses
 * power, each behaviour with a test that fails if the model stops doing it:
 *
 * - names: a create, rename, unlink, mkdir or rmdir is durable only once its directory is
 *   synced; a crash reverts every directory to its synced entries;
 * - contents: a sync makes a file's content and size durable; at a crash every changed
 *   page is written back or not, independently, from a seed or a callback, and the size
 *   is the durable or the current one, so an unsynced tail can have holes;
 * - async operations are in flight until they complete, can be held there, and a crash
 *   while they are makes nothing of them durable and leaves their promises unsettled;
 * - faults: every operation can be made to fail, `times` times, with an errno code;
 * - locks: exclusive per path, dropped by a crash or a process death (killProcess);
 *
 * and, on node:fs, the new operations (async variants, preallocate, tryLock).
 */
import * as fs from "node:fs"
import * as path from "node:path"
import t from "tap"
import {
  makeMemoryFiles, nodeFilesApi, writeFileDurable, writeFileDurableAsync, PAGE_BYTES,
  type FaultOp, type FilesApi, type MemoryFiles
} from "../../engine/Files.ts"
import { openLog, put, valueOf } from "./helpers.ts"

const DIR = "/data"
const A = path.join(DIR, "a")
const B = path.join(DIR, "b")

const fresh = (): MemoryFiles => {
  const files = makeMemoryFiles()
  files.mkdirp(DIR)
  return files
}

/** Creates or overwrites `file` with `data`; synced (content only) when `sync`. */
const writeFile = (files: FilesApi, file: string, data: string | Buffer, sync = true) => {
  const buf = typeof data === "string" ? Buffer.from(data) : data
  const fd = files.open(file, true)
  files.truncate(fd, 0)
  files.writeAll(fd, buf, 0, buf.length, 0)
  if (sync) files.datasyncSync(fd)
  files.close(fd)
}

const text = (files: FilesApi, file: string) => (files.exists(file) ? files.readFile(file).toString() : undefined)

/** Lets `n` turns of the event loop pass. */
const turns = async (n = 3) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r))
}

/** Tracks whether a promise settled. */
const watch = (p: Promise<unknown>) => {
  const s = { settled: false, error: undefined as unknown }
  p.then(() => (s.settled = true), (e) => ((s.settled = true), (s.error = e)))
  return s
}

const errorOf = async (f: () => unknown): Promise<NodeJS.ErrnoException | undefined> => {
  try {
    await f()
  } catch (e) {
    return e as NodeJS.ErrnoException
  }
  return undefined
}

// ---- names ---------------------------------------------------------------------------

t.test("names are durable only once their directory is synced", async (t) => {
  t.test("a file created without syncDir is gone after a crash, even with its data synced", async (t) => {
    const files = fresh()
    writeFile(files, A, "data")
    t.equal(text(files, A), "data", "there before the crash")
    files.crash()
    t.notOk(files.exists(A), "gone after it")
    t.same(files.list(DIR), [])

    writeFile(files, A, "data")
    files.syncDir(DIR)
    files.crash()
    t.equal(text(files, A), "data", "with syncDir it survives")
  })

  t.test("a rename without syncDir reverts", async (t) => {
    const files = fresh()
    writeFile(files, A, "content")
    files.syncDir(DIR)
    files.rename(A, B)
    t.same([files.exists(A), text(files, B)], [false, "content"], "renamed before the crash")
    files.crash()
    t.same([text(files, A), files.exists(B)], ["content", false], "back under its old name after it")

    files.rename(A, B)
    files.syncDir(DIR)
    files.crash()
    t.same([files.exists(A), text(files, B)], [false, "content"], "with syncDir the rename holds")
  })

  t.test("a rename over an existing file without syncDir brings the old file back", async (t) => {
    const files = fresh()
    writeFile(files, B, "old")
    writeFile(files, A, "new")
    files.syncDir(DIR)
    files.rename(A, B)
    files.crash()
    t.same([text(files, A), text(files, B)], ["new", "old"])
  })

  t.test("an unlink without syncDir comes back, with its durable content", async (t) => {
    const files = fresh()
    writeFile(files, A, "durable")
    files.syncDir(DIR)
    const fd = files.open(A, false)
    files.writeAll(fd, Buffer.from("UNSYNCED"), 0, 8, 0)
    files.close(fd)
    files.unlink(A)
    t.notOk(files.exists(A), "gone before the crash")
    files.crash()
    t.equal(text(files, A), "durable", "back after it, without the unsynced write")

    files.unlink(A)
    files.syncDir(DIR)
    files.crash()
    t.notOk(files.exists(A), "with syncDir the unlink holds")
  })

  t.test("an unlinked file stays readable through open descriptors", async (t) => {
    const files = fresh()
    writeFile(files, A, "still here")
    const fd = files.open(A, false)
    files.unlink(A)
    const buf = Buffer.alloc(10)
    t.equal(files.read(fd, buf, 0, 10, 0), 10)
    t.equal(buf.toString(), "still here")
    files.close(fd)
  })

  t.test("a directory made by mkdirp is durable once its parent is synced; / is always synced", async (t) => {
    const files = makeMemoryFiles()
    files.mkdirp("/data/sub/deeper")
    files.crash()
    t.ok(files.exists("/data"), "a directory in / survives at once (so tests can start)")
    t.notOk(files.exists("/data/sub"), "a deeper one does not")

    files.mkdirp("/data/sub/deeper")
    files.syncDir("/data")
    files.crash()
    t.ok(files.exists("/data/sub"), "synced into its parent, it survives")
    t.notOk(files.exists("/data/sub/deeper"), "its own new child was not synced")
  })

  t.test("renameDir and removeDir revert without a sync of the parent", async (t) => {
    const files = fresh()
    files.mkdirp("/data/x")
    writeFile(files, "/data/x/f", "in x")
    files.syncDir("/data/x")
    files.syncDir(DIR)
    files.renameDir("/data/x", "/data/y")
    t.equal(text(files, "/data/y/f"), "in x", "renamed with its files")
    files.crash()
    t.same([text(files, "/data/x/f"), files.exists("/data/y")], ["in x", false], "renameDir reverted")
    files.removeDir("/data/x")
    t.notOk(files.exists("/data/x"))
    files.crash()
    t.equal(text(files, "/data/x/f"), "in x", "removeDir reverted")
    files.removeDir("/data/x")
    files.syncDir(DIR)
    files.crash()
    t.notOk(files.exists("/data/x"), "with a sync it holds")
  })

  t.test("an unsynced create under a renamed directory follows the directory's synced state", async (t) => {
    const files = fresh()
    files.mkdirp("/data/x")
    files.syncDir(DIR)
    writeFile(files, "/data/x/f", "f")
    files.syncDir("/data/x")
    writeFile(files, "/data/x/g", "g")
    files.crash()
    t.same(files.list("/data/x"), ["f"])
  })
})

t.test("writeFileDurable and writeFileDurableAsync leave the old or the new file at any crash point", async (t) => {
  /**
   * A view of `files` whose power goes at step `at`: step 2i is just before its i-th call,
   * step 2i+1 just after it (for an async call: issued, still in flight). "crash" is thrown.
   */
  const dyingAt = (files: MemoryFiles, at: number, seed: number) => {
    let calls = 0
    let dead = false
    const die = () => {
      if (!dead) files.crash({ seed })
      dead = true
      throw new Error("crash")
    }
    return new Proxy(files, {
      get(target, prop, receiver) {
        const v = Reflect.get(target, prop, receiver) as unknown
        if (typeof v !== "function") return v
        return (...args: unknown[]) => {
          const i = calls++
          if (dead || 2 * i === at) die()
          const r = (v as (...a: unknown[]) => unknown).apply(target, args)
          if (2 * i + 1 === at) die()
          return r
        }
      }
    })
  }
  const oldData = Buffer.alloc(3 * PAGE_BYTES, "o")
  const newData = Buffer.alloc(5 * PAGE_BYTES + 17, "n")
  for (const variant of ["sync", "async"] as const) {
    let points = 0
    let sawOld = 0
    let sawNew = 0
    for (let at = 0; ; at++) {
      let finished = false
      for (let seed = 1; seed <= 8; seed++) {
        const files = fresh()
        writeFileDurable(files, A, oldData)
        const dying = dyingAt(files, at, seed)
        try {
          if (variant === "sync") writeFileDurable(dying, A, newData)
          else await writeFileDurableAsync(dying, A, newData)
          finished = true
          files.crash({ seed })
        } catch (e) {
          if ((e as Error).message !== "crash") throw e
        }
        const got = files.readFile(A)
        if (got.equals(oldData)) sawOld++
        else if (got.equals(newData)) sawNew++
        else t.fail(`${variant}: crash at step ${at}, seed ${seed}: ${got.length} bytes, neither old nor new`)
        if (finished && !got.equals(newData)) t.fail(`${variant}: finished but the new content was lost (seed ${seed})`)
      }
      points++
      if (finished) break
    }
    t.ok(sawOld > 0 && sawNew > 0, `${variant}: ${points} crash points, old content ${sawOld} times, new ${sawNew} times, never anything else`)
  }
})

t.test("a rewrite in place, which writeFileDurable avoids, can be left empty by a crash", async (t) => {
  const files = fresh()
  writeFile(files, A, "v1")
  files.syncDir(DIR)
  const fd = files.open(A, false)
  files.truncate(fd, 0)
  files.crash({ keepSize: () => true })
  t.equal(text(files, A), "", "the truncate reached the disk, the rewrite did not")
  void fd
})

// ---- contents ------------------------------------------------------------------------

/** A file of one synced page of "d", then `pages` unsynced pages of "u". */
const withUnsyncedTail = (pages: number) => {
  const files = fresh()
  writeFile(files, A, Buffer.alloc(PAGE_BYTES, "d"))
  files.syncDir(DIR)
  const fd = files.open(A, false)
  const tail = Buffer.alloc(pages * PAGE_BYTES, "u")
  files.writeAll(fd, tail, 0, tail.length, PAGE_BYTES)
  files.close(fd)
  return files
}

/** Per page of `buf`: "d", "u" or "0" if it is all that byte (zero for 0), "?" if mixed. */
const pagesOf = (buf: Buffer) => {
  let s = ""
  for (let at = 0; at < buf.length; at += PAGE_BYTES) {
    const page = buf.subarray(at, at + PAGE_BYTES)
    const first = page[0]!
    const c = page.every((b) => b === first) ? (first === 0 ? "0" : String.fromCharCode(first)) : "?"
    s += c
  }
  return s
}

t.test("datasync makes content and size durable; without it a crash keeps the durable state", async (t) => {
  const files = fresh()
  writeFile(files, A, "synced")
  files.syncDir(DIR)
  const fd = files.open(A, false)
  files.writeAll(fd, Buffer.from(" and more"), 0, 9, 6)
  files.crash()
  t.equal(text(files, A), "synced", "the unsynced append is gone")

  const fd2 = files.open(A, false)
  files.writeAll(fd2, Buffer.from(" and more"), 0, 9, 6)
  await files.datasync(fd2)
  files.crash()
  t.equal(text(files, A), "synced and more", "synced, it stays")
  void fd
})

t.test("an unsynced overwrite and an unsynced truncate revert at a crash", async (t) => {
  const files = fresh()
  writeFile(files, A, "0123456789")
  files.syncDir(DIR)
  let fd = files.open(A, false)
  files.writeAll(fd, Buffer.from("XY"), 0, 2, 3)
  files.crash()
  t.equal(text(files, A), "0123456789", "overwrite reverted")
  fd = files.open(A, false)
  files.truncate(fd, 4)
  t.equal(text(files, A), "0123")
  files.crash()
  t.equal(text(files, A), "0123456789", "truncate reverted")
  fd = files.open(A, false)
  files.writeAll(fd, Buffer.from("XY"), 0, 2, 3)
  files.crash({ keepPage: () => true })
  t.equal(text(files, A), "012XY56789", "or written back, when the page is")
})

t.test("a seed gives holes in an unsynced tail, page by page", async (t) => {
  const PAGES = 16
  let holes = 0
  let prefixesOnly = 0
  const sizes = new Set<number>()
  for (let seed = 1; seed <= 40; seed++) {
    const files = withUnsyncedTail(PAGES)
    files.crash({ seed })
    const buf = files.readFile(A)
    sizes.add(buf.length)
    const pages = pagesOf(buf)
    if (!/^d[u0]*$/.test(pages)) t.fail(`seed ${seed}: pages ${pages}: the synced page is damaged, or a page is torn`)
    if (/0u/.test(pages)) holes++
    else prefixesOnly++
  }
  t.same([...sizes].sort((a, b) => a - b), [PAGE_BYTES, (PAGES + 1) * PAGE_BYTES], "the size is either the durable or the current one")
  t.ok(holes > 0, `${holes} of 40 seeds left holes (a zero page before a written one); ${prefixesOnly} did not`)
})

t.test("the same seed gives the same result; other seeds differ", async (t) => {
  const run = (seed: number) => {
    const files = withUnsyncedTail(24)
    const report = files.crash({ seed })
    return { pages: pagesOf(files.readFile(A)), report }
  }
  const first = run(1234)
  t.same(run(1234), first, "seed 1234 twice: the same pages and report")
  const others = new Set([5, 6, 7, 8, 9].map((s) => run(s).pages))
  t.ok(others.size > 1 || !others.has(first.pages), "other seeds give other outcomes")
})

t.test("keepPage and keepSize choose what was written back", async (t) => {
  let files = withUnsyncedTail(6)
  const asked: Array<[string, number]> = []
  const report = files.crash({ keepPage: (file, page) => (asked.push([file, page]), page % 2 === 0) })
  t.equal(pagesOf(files.readFile(A)), "d0u0u0u", "even pages kept, odd ones zeros; the current size")
  t.same(asked, [1, 2, 3, 4, 5, 6].map((p) => [A, p]), "asked once per changed page, in order")
  t.same(report, [{ file: A, durableSize: PAGE_BYTES, currentSize: 7 * PAGE_BYTES, size: 7 * PAGE_BYTES, keptPages: [2, 4, 6], lostPages: [1, 3, 5] }], "and reported")

  files = withUnsyncedTail(6)
  files.crash({ keepPage: () => true, keepSize: () => false })
  t.equal(pagesOf(files.readFile(A)), "d", "the durable size cuts the tail off")
})

t.test("the old prefix model: crash((file, unsynced) => n) keeps the durable part and n more bytes", async (t) => {
  const files = withUnsyncedTail(2)
  const seen: Array<[string, number]> = []
  files.crash((file, unsynced) => (seen.push([file, unsynced]), 100))
  t.same(seen, [[A, 2 * PAGE_BYTES]])
  const buf = files.readFile(A)
  t.equal(buf.length, PAGE_BYTES + 100)
  t.ok(buf.subarray(PAGE_BYTES).every((b) => b === "u".charCodeAt(0)), "the kept bytes are as written")
})

t.test("preallocate grows with zeros, never shrinks, and is not durable until synced", async (t) => {
  const files = fresh()
  writeFile(files, A, "abc")
  files.syncDir(DIR)
  const fd = files.open(A, false)
  files.preallocate(fd, 10_000)
  t.equal(files.size(fd), 10_000)
  t.same([...files.readFile(A).subarray(0, 4)], [97, 98, 99, 0])
  files.preallocate(fd, 10)
  t.equal(files.size(fd), 10_000, "never shrinks")
  files.crash()
  t.equal(text(files, A), "abc", "unsynced, it is gone after a crash")
  const fd2 = files.open(A, false)
  files.preallocate(fd2, 5000)
  files.datasyncSync(fd2)
  files.crash()
  t.equal(files.readFile(A).length, 5000, "synced, it stays")
  files.setQuota(files.usedBytes() + 100)
  const fd3 = files.open(A, false)
  t.equal((await errorOf(() => files.preallocate(fd3, 6000)))?.code, "ENOSPC", "a full disk refuses it")
  t.equal(files.size(fd3), 5000, "and nothing was allocated")
})

// ---- in flight -----------------------------------------------------------------------

t.test("datasync never completes synchronously", async (t) => {
  const files = fresh()
  const fd = files.open(A, true)
  files.writeAll(fd, Buffer.from("x"), 0, 1, 0)
  const s = watch(files.datasync(fd))
  await Promise.resolve()
  await Promise.resolve()
  t.notOk(s.settled, "not settled after the microtasks of this turn")
  t.same(files.inFlight(), [{ op: "datasync", file: A, held: false }], "it is in flight")
  await turns(2)
  t.ok(s.settled, "settled on a later turn")
  t.same(files.inFlight(), [])
})

t.test("a sync in flight at the crash makes nothing durable, and its promise never settles", async (t) => {
  const files = fresh()
  writeFile(files, A, "before")
  files.syncDir(DIR)
  const fd = files.open(A, false)
  files.writeAll(fd, Buffer.from(" after"), 0, 6, 6)
  files.holdSyncs()
  const sync = watch(files.datasync(fd))
  const dirSync = watch(files.syncDirAsync(DIR))
  writeFile(files, B, "new file")
  await turns(5)
  t.same(files.inFlight().map((f) => [f.op, f.held]), [["datasync", true], ["syncDirAsync", true]], "both held in flight")
  t.notOk(sync.settled || dirSync.settled, "neither settled")
  files.crash()
  t.equal(text(files, A), "before", "the held datasync made nothing durable")
  t.notOk(files.exists(B), "the held syncDirAsync made nothing durable")
  t.equal(files.releaseSyncs(), 0, "nothing is left to release after the crash")
  await turns(5)
  t.notOk(sync.settled || dirSync.settled, "and their promises never settle")
})

t.test("a sync makes durable what was written before it was called, not after", async (t) => {
  const files = fresh()
  writeFile(files, A, "")
  files.syncDir(DIR)
  const fd = files.open(A, false)
  files.writeAll(fd, Buffer.from("first"), 0, 5, 0)
  files.holdSyncs()
  const s = watch(files.datasync(fd))
  files.writeAll(fd, Buffer.from(" second"), 0, 7, 5)
  t.equal(files.releaseSyncs(), 1)
  await turns(1)
  t.ok(s.settled && s.error === undefined, "completed")
  files.crash()
  t.equal(text(files, A), "first")
})

t.test("releaseSyncs(n) completes the oldest n; holdSyncs can pick operations", async (t) => {
  const files = fresh()
  const fd = files.open(A, true)
  files.syncDir(DIR)
  files.holdSyncs((op) => op === "datasync")
  const one = watch(files.datasync(fd))
  const two = watch(files.datasync(fd))
  const dir = watch(files.syncDirAsync(DIR))
  await turns(3)
  t.ok(dir.settled, "a syncDirAsync is not held by a datasync filter")
  t.notOk(one.settled || two.settled)
  t.equal(files.releaseSyncs(1), 1)
  await turns(1)
  t.same([one.settled, two.settled], [true, false], "only the oldest completed")
  const three = watch(files.datasync(fd))
  await turns(3)
  t.notOk(three.settled, "still holding after a counted release")
  t.equal(files.releaseSyncs(), 2)
  await turns(1)
  t.ok(two.settled && three.settled)
  const four = watch(files.datasync(fd))
  await turns(3)
  t.ok(four.settled, "releaseSyncs() stopped holding")
})

t.test("renameAsync, unlinkAsync and writeAllAsync take effect when they complete, and not if the power goes first", async (t) => {
  const files = fresh()
  writeFile(files, A, "a")
  writeFile(files, "/data/gone", "g")
  files.syncDir(DIR)
  files.holdSyncs()
  const fd = files.open(A, false)
  const ops = [watch(files.renameAsync(A, B)), watch(files.unlinkAsync("/data/gone")), watch(files.writeAllAsync(fd, Buffer.from("Z"), 0, 1, 0))]
  await turns(3)
  t.same([text(files, A), files.exists(B), files.exists("/data/gone")], ["a", false, true], "nothing applied while in flight")
  files.releaseSyncs()
  await turns(1)
  t.ok(ops.every((o) => o.settled && o.error === undefined), "all completed")
  t.same([files.exists(A), text(files, B), files.exists("/data/gone")], [false, "Z", false], "all applied")

  files.crash()
  t.same([text(files, A), files.exists(B), files.exists("/data/gone")], ["a", false, true], "unsynced, all reverted by a crash")
  files.holdSyncs()
  const late = watch(files.renameAsync(A, B))
  await turns(2)
  files.crash()
  files.syncDir(DIR)
  t.same([files.exists(A), files.exists(B)], [true, false], "an in-flight rename never happened")
  await turns(3)
  t.notOk(late.settled)
})

t.test("killProcess: in-flight operations never complete, descriptors and locks go, the page cache stays", async (t) => {
  const files = fresh()
  writeFile(files, A, "synced")
  files.syncDir(DIR)
  const fd = files.open(A, false)
  files.writeAll(fd, Buffer.from(" unsynced"), 0, 9, 6)
  const lock = files.tryLock(path.join(DIR, "LOCK"))
  files.holdSyncs()
  const sync = watch(files.datasync(fd))
  await turns(2)
  files.killProcess()
  t.equal(text(files, A), "synced unsynced", "what the process wrote is still readable")
  t.equal((await errorOf(() => files.size(fd)))?.code, "EBADF", "its descriptors are closed")
  t.same(files.heldLocks(), [], "its locks are released")
  t.same(files.inFlight(), [], "its in-flight sync is gone")
  await turns(3)
  t.notOk(sync.settled, "and never settles")
  files.crash()
  t.equal(text(files, A), "synced", "the sync it had in flight made nothing durable")
  lock!.release()
})

t.test("appends whose fsync is in flight at the cut are lost, and their writers never hear back", async (t) => {
  const files = makeMemoryFiles()
  const log = openLog(files, DIR)
  await put(log, "before", "acknowledged")
  files.holdSyncs((op) => op === "datasync")
  const during = watch(put(log, "during", "in flight"))
  while (!files.inFlight().some((f) => f.op === "datasync" && f.held)) await turns(1)
  t.equal(valueOf(log, "during"), undefined, "not visible while its fsync is in flight")
  log.abandonForTest()
  files.crash()
  await turns(3)
  t.notOk(during.settled, "the writer was never answered")
  const reopened = openLog(files, DIR)
  t.equal(valueOf(reopened, "before"), "acknowledged")
  t.equal(valueOf(reopened, "during"), undefined, "the in-flight append is not there")
  await reopened.close()
})

// ---- faults --------------------------------------------------------------------------

/** For each injectable operation, a call of it that succeeds when nothing is injected. */
const calls: Record<FaultOp, (files: MemoryFiles) => () => unknown> = {
  open: (f) => () => f.close(f.open(A, true)),
  read: (f) => {
    writeFile(f, A, "r")
    const fd = f.openRead(A)
    return () => f.read(fd, Buffer.alloc(1), 0, 1, 0)
  },
  writeAll: (f) => {
    const fd = f.open(A, true)
    return () => f.writeAll(fd, Buffer.from("w"), 0, 1, 0)
  },
  writeAllAsync: (f) => {
    const fd = f.open(A, true)
    return () => f.writeAllAsync(fd, Buffer.from("w"), 0, 1, 0)
  },
  preallocate: (f) => {
    const fd = f.open(A, true)
    let n = 0
    return () => f.preallocate(fd, ++n * 100)
  },
  datasync: (f) => {
    const fd = f.open(A, true)
    return () => f.datasync(fd)
  },
  datasyncSync: (f) => {
    const fd = f.open(A, true)
    return () => f.datasyncSync(fd)
  },
  truncate: (f) => {
    const fd = f.open(A, true)
    return () => f.truncate(fd, 0)
  },
  readFile: (f) => {
    writeFile(f, A, "r")
    return () => f.readFile(A)
  },
  rename: (f) => {
    writeFile(f, A, "r")
    let [from, to] = [A, B]
    return () => {
      f.rename(from, to)
      ;[from, to] = [to, from]
    }
  },
  renameAsync: (f) => {
    writeFile(f, A, "r")
    let [from, to] = [A, B]
    return async () => {
      await f.renameAsync(from, to)
      ;[from, to] = [to, from]
    }
  },
  unlink: (f) => () => {
    if (!f.exists(A)) writeFile(f, A, "u")
    f.unlink(A)
  },
  unlinkAsync: (f) => () => {
    if (!f.exists(A)) writeFile(f, A, "u")
    return f.unlinkAsync(A)
  },
  syncDir: (f) => () => f.syncDir(DIR),
  syncDirAsync: (f) => () => f.syncDirAsync(DIR),
  tryLock: (f) => () => f.tryLock(path.join(DIR, "LOCK"))!.release(),
  mkdirp: (f) => () => f.mkdirp("/data/sub"),
  list: (f) => () => f.list(DIR),
  renameDir: (f) => {
    f.mkdirp("/data/x")
    let [from, to] = ["/data/x", "/data/y"]
    return () => {
      f.renameDir(from, to)
      ;[from, to] = [to, from]
    }
  },
  removeDir: (f) => () => {
    f.mkdirp("/data/x")
    f.removeDir("/data/x")
  }
}

t.test("every injectable operation fails when injected, exactly `times` times, and only on its path", async (t) => {
  for (const [op, setup] of Object.entries(calls) as Array<[FaultOp, (f: MemoryFiles) => () => unknown]>) {
    await t.test(op, async (t) => {
      const files = fresh()
      const call = setup(files)
      t.equal(await errorOf(call), undefined, "succeeds without a fault")
      files.inject({ op, code: "EIO", times: 2 })
      const errs = [await errorOf(call), await errorOf(call), await errorOf(call), await errorOf(call)]
      t.same(errs.map((e) => e?.code), ["EIO", "EIO", undefined, undefined], "fails twice, then works")
      t.equal(errs[0]?.syscall, op, "a node-style errno error, naming the operation")
      t.equal(typeof errs[0]?.errno, "number")
      files.inject({ op, path: "/elsewhere", code: "EIO" })
      t.equal(await errorOf(call), undefined, "a fault for another path does not hit it")
      files.clearFaults()
      files.inject({ op, path: /^\/data(\/|$)/, code: "ENOSPC", after: 1 })
      t.equal(await errorOf(call), undefined, "`after` lets a call through first")
      t.equal((await errorOf(call))?.code, "ENOSPC", "then a matching pattern hits it, with the code asked for")
      t.equal(await errorOf(call), undefined, "`times` defaults to one")
    })
  }
})

t.test("a failed operation has no effect; a failed write may leave a prefix", async (t) => {
  const files = fresh()
  writeFile(files, A, "content")
  files.syncDir(DIR)
  files.inject({ op: "rename" })
  t.ok(await errorOf(() => files.rename(A, B)))
  t.same([files.exists(A), files.exists(B)], [true, false], "a failed rename renamed nothing")
  files.inject({ op: "unlink" })
  t.ok(await errorOf(() => files.unlink(A)))
  t.ok(files.exists(A), "a failed unlink removed nothing")
  writeFile(files, B, "b")
  files.inject({ op: "syncDir" })
  t.ok(await errorOf(() => files.syncDir(DIR)))
  files.crash()
  t.notOk(files.exists(B), "a failed syncDir made nothing durable")

  const fd = files.open(A, false)
  files.inject({ op: "writeAll", code: "ENOSPC", written: 3 })
  const e = await errorOf(() => files.writeAll(fd, Buffer.from("ABCDEF"), 0, 6, 7))
  t.equal(e?.code, "ENOSPC")
  t.equal(text(files, A), "contentABC", "the first `written` bytes reached the file")
  files.inject({ op: "writeAllAsync", written: 2 })
  t.equal((await errorOf(() => files.writeAllAsync(fd, Buffer.from("xyz"), 0, 3, 0)))?.code, "EIO")
  t.equal(text(files, A), "xyntentABC")
})

t.test("a failed fsync loses its pages for good, as on Linux: a later successful one does not write them", async (t) => {
  const files = fresh()
  writeFile(files, A, Buffer.alloc(PAGE_BYTES, "d"))
  files.syncDir(DIR)
  const fd = files.open(A, false)
  files.writeAll(fd, Buffer.alloc(PAGE_BYTES, "u"), 0, PAGE_BYTES, PAGE_BYTES)
  files.inject({ op: "datasync" })
  t.equal((await errorOf(() => files.datasync(fd)))?.code, "EIO")
  t.equal(pagesOf(files.readFile(A)), "du", "the data is still readable")
  await files.datasync(fd)
  files.crash({ keepPage: () => true })
  t.equal(pagesOf(files.readFile(A)), "d0", "but after the crash the page is zeros, though a sync succeeded")

  // What the engine does after a failed fsync: cut the batch off and sync the cut.
  const fd2 = files.open(A, false)
  files.writeAll(fd2, Buffer.alloc(10, "u"), 0, 10, PAGE_BYTES)
  files.inject({ op: "datasyncSync" })
  t.ok(await errorOf(() => files.datasyncSync(fd2)))
  files.truncate(fd2, PAGE_BYTES)
  files.datasyncSync(fd2)
  files.crash({ seed: 3 })
  t.equal(pagesOf(files.readFile(A)), "d", "truncating and syncing the cut is safe")
})

t.test("setQuota still refuses writes past it, keeping what fits", async (t) => {
  const files = fresh()
  const fd = files.open(A, true)
  files.setQuota(10)
  t.equal((await errorOf(() => files.writeAll(fd, Buffer.alloc(15, "q"), 0, 15, 0)))?.code, "ENOSPC")
  t.equal(files.usedBytes(), 10)
  t.equal(files.freeBytes(DIR), 0)
  files.setQuota(undefined)
  files.writeAll(fd, Buffer.alloc(15, "q"), 0, 15, 0)
  t.equal(files.usedBytes(), 15)
})

// ---- locks ---------------------------------------------------------------------------

t.test("memory locks: exclusive per path, released by release() and by a crash", async (t) => {
  const files = fresh()
  const LOCK = path.join(DIR, "LOCK")
  const first = files.tryLock(LOCK)
  t.ok(first, "granted")
  t.equal(text(files, LOCK), String(process.pid), "the file names the holder")
  t.equal(files.tryLock(LOCK), undefined, "a second open in this process is refused")
  t.ok(files.tryLock(path.join(DIR, "OTHER")), "another path is another lock")
  first!.release()
  first!.release()
  const second = files.tryLock(LOCK)
  t.ok(second, "granted again after release")
  files.crash()
  t.same(files.heldLocks(), [], "a crash drops every lock")
  const third = files.tryLock(LOCK)
  t.ok(third, "granted after the crash")
  second!.release()
  t.same(files.heldLocks(), [LOCK], "a handle from before the crash cannot drop the new holder's lock")
  third!.release()
})

// ---- node:fs -------------------------------------------------------------------------

t.test("node: tryLock is exclusive across descriptors, leaves the file, and names the holder", async (t) => {
  const dir = t.testdir()
  const file = path.join(dir, "LOCK")
  const lock = nodeFilesApi.tryLock(file)
  t.ok(lock, "granted")
  t.equal(fs.readFileSync(file, "utf8"), String(process.pid))
  t.equal(nodeFilesApi.tryLock(file), undefined, "a second open of the file in this process is refused")
  lock!.release()
  lock!.release()
  t.ok(fs.existsSync(file), "release leaves the file")
  const again = nodeFilesApi.tryLock(file)
  t.ok(again, "granted after release")
  again!.release()
  t.throws(() => nodeFilesApi.tryLock(path.join(dir, "missing", "LOCK")), { code: "ENOENT" })
})

t.test("node: async variants, preallocate and writeFileDurableAsync", async (t) => {
  const dir = t.testdir()
  const f = nodeFilesApi
  const a = path.join(dir, "a")
  const fd = f.open(a, true)
  await f.writeAllAsync(fd, Buffer.from("hello world"), 6, 5, 0)
  await f.datasync(fd)
  t.equal(fs.readFileSync(a, "utf8"), "world")
  f.preallocate(fd, 9000)
  t.equal(f.size(fd), 9000, "preallocate grows the file")
  f.preallocate(fd, 100)
  t.equal(f.size(fd), 9000, "and never shrinks it")
  t.equal(fs.readFileSync(a).subarray(0, 6).toString(), "world\0")
  f.close(fd)
  await f.renameAsync(a, path.join(dir, "b"))
  await f.syncDirAsync(dir)
  t.same(fs.readdirSync(dir), ["b"])
  await f.unlinkAsync(path.join(dir, "b"))
  t.same(fs.readdirSync(dir), [])
  await writeFileDurableAsync(f, path.join(dir, "c"), Buffer.from("durable"))
  t.same(fs.readdirSync(dir), ["c"], "no temporary file left")
  t.equal(fs.readFileSync(path.join(dir, "c"), "utf8"), "durable")
  await t.rejects(f.unlinkAsync(path.join(dir, "nope")), { code: "ENOENT" })
  await t.rejects(f.syncDirAsync(path.join(dir, "nope")), { code: "ENOENT" })
})
