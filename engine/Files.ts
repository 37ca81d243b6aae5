/**
 * The thin file-system seam of the engine: positional reads and writes, fdatasync and
 * directory sync, which effect's FileSystem does not offer, and a data-directory lock.
 * Plain synchronous calls, because the per-record hot path must not pay for an effect per
 * call, plus promise variants (`datasync`, `writeAllAsync`, `renameAsync`, `unlinkAsync`,
 * `syncDirAsync`) for work the engine keeps off the request path.
 *
 * Two layers: `layer` is node:fs; `layerMemory` (`makeMemoryFiles`) keeps files in memory and
 * models a disk that loses power, deterministically: names live in directories and become
 * durable only when their directory is synced, file contents become durable page by page
 * only when the file is synced, async operations really are in flight until they complete,
 * and any operation can be made to fail (`inject`), besides a full disk (`setQuota`).
 */
import * as fs from "node:fs"
import { createRequire } from "node:module"
import * as os from "node:os"
import * as path from "node:path"
import { Context, Layer } from "effect"
import { prng } from "./Prng.ts"

/** A held lock (see `FilesApi.tryLock`). Releasing twice is harmless. */
export interface FileLock {
  release(): void
}

/** Positional, descriptor-based file operations. Errors are thrown as node:fs errors. */
export interface FilesApi {
  mkdirp(dir: string): void
  list(dir: string): string[]
  exists(file: string): boolean
  /** Opens for reading and writing, creating the file when `create` is set. */
  open(file: string, create: boolean): number
  openRead(file: string): number
  size(fd: number): number
  read(fd: number, buf: Uint8Array, off: number, len: number, pos: number): number
  /** Writes all of `buf[off, off+len)` at `pos`. Throws on failure (some bytes may be written). */
  writeAll(fd: number, buf: Uint8Array, off: number, len: number, pos: number): void
  /** `writeAll` off the calling thread; `buf` must not change until it settles. */
  writeAllAsync(fd: number, buf: Uint8Array, off: number, len: number, pos: number): Promise<void>
  /** Grows the file with zeros to at least `bytes` (never shrinks it). Not synced. */
  preallocate(fd: number, bytes: number): void
  datasync(fd: number): Promise<void>
  datasyncSync(fd: number): void
  truncate(fd: number, len: number): void
  close(fd: number): void
  /**
   * `close` off the calling thread: the last close of an unlinked file frees its page cache,
   * which for a 64 MiB segment holds the caller for milliseconds.
   */
  closeAsync(fd: number): Promise<void>
  readFile(file: string): Buffer
  rename(from: string, to: string): void
  renameAsync(from: string, to: string): Promise<void>
  unlink(file: string): void
  unlinkAsync(file: string): Promise<void>
  /** fsync of a directory: makes the creates, renames and unlinks in it durable. */
  syncDir(dir: string): void
  syncDirAsync(dir: string): Promise<void>
  /**
   * Takes the exclusive lock of `file` (created if absent), or returns undefined if anyone
   * else holds it: another process, or another `tryLock` of the same file in this process.
   * The lock lives as long as the descriptor it holds open, so the kernel drops it when the
   * holder dies, however it dies. The holder's pid is written into the file for people to
   * read; nothing may trust it. The file is never removed (unlinking a locked file lets two
   * processes lock two different files of the same name).
   */
  tryLock(file: string): FileLock | undefined
  /** Free bytes on the device holding `dir`, when known. */
  freeBytes(dir: string): number | undefined
  /** Renames a directory and everything in it. */
  renameDir(from: string, to: string): void
  /** Removes a directory and everything in it; absent is fine. */
  removeDir(dir: string): void
}

/**
 * Writes `data` to `file` so that after return it is whole or absent, never partial: a
 * temporary file is written and synced, renamed over `file`, and the directory synced.
 */
export const writeFileDurable = (files: FilesApi, file: string, data: Uint8Array): void => {
  const tmp = `${file}.tmp`
  const fd = files.open(tmp, true)
  try {
    files.truncate(fd, 0)
    files.writeAll(fd, data, 0, data.length, 0)
    files.datasyncSync(fd)
  } finally {
    files.close(fd)
  }
  files.rename(tmp, file)
  files.syncDir(path.dirname(file))
}

/**
 * `writeFileDurable` with its write, syncs and rename off the calling thread. Two calls for
 * the same `file` must not overlap: they share the temporary file.
 */
export const writeFileDurableAsync = async (files: FilesApi, file: string, data: Uint8Array): Promise<void> => {
  const tmp = `${file}.tmp`
  const fd = files.open(tmp, true)
  try {
    files.truncate(fd, 0)
    await files.writeAllAsync(fd, data, 0, data.length, 0)
    await files.datasync(fd)
  } finally {
    files.close(fd)
  }
  await files.renameAsync(tmp, file)
  await files.syncDirAsync(path.dirname(file))
}

// ---- node:fs ---------------------------------------------------------------------------

/** The part of fs-native-extensions used here (it ships no types). */
interface NativeExtensions {
  /** Exclusive lock (open file description lock on Linux, flock on macOS); false if held elsewhere. */
  tryLock(fd: number): boolean
  unlock(fd: number): void
}

let native: NativeExtensions | undefined
/** Loaded on first use, so code that never locks never loads the addon. */
const nativeExtensions = (): NativeExtensions => (native ??= createRequire(import.meta.url)("fs-native-extensions") as NativeExtensions)

const ZEROS = Buffer.alloc(1 << 20)

const nodeWriteAsync = (fd: number, buf: Uint8Array, off: number, len: number, pos: number): Promise<number> =>
  new Promise((resolve, reject) => fs.write(fd, buf, off, len, pos, (err, n) => (err ? reject(err) : resolve(n))))

const nodeFiles: FilesApi = {
  mkdirp: (dir) => void fs.mkdirSync(dir, { recursive: true }),
  list: (dir) => fs.readdirSync(dir),
  exists: (file) => fs.existsSync(file),
  open: (file, create) => fs.openSync(file, create ? fs.constants.O_RDWR | fs.constants.O_CREAT : fs.constants.O_RDWR, 0o644),
  openRead: (file) => fs.openSync(file, "r"),
  size: (fd) => fs.fstatSync(fd).size,
  read: (fd, buf, off, len, pos) => fs.readSync(fd, buf, off, len, pos),
  writeAll: (fd, buf, off, len, pos) => {
    while (len > 0) {
      const n = fs.writeSync(fd, buf, off, len, pos)
      off += n
      pos += n
      len -= n
    }
  },
  writeAllAsync: async (fd, buf, off, len, pos) => {
    while (len > 0) {
      const n = await nodeWriteAsync(fd, buf, off, len, pos)
      off += n
      pos += n
      len -= n
    }
  },
  // fs-native-extensions has no posix_fallocate (its `trim` punches holes), so zeros are
  // written: the blocks are then really allocated, and a full disk shows up here.
  preallocate: (fd, bytes) => {
    let at = fs.fstatSync(fd).size
    while (at < bytes) at += fs.writeSync(fd, ZEROS, 0, Math.min(ZEROS.length, bytes - at), at)
  },
  datasync: (fd) =>
    new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()))),
  datasyncSync: (fd) => fs.fdatasyncSync(fd),
  truncate: (fd, len) => fs.ftruncateSync(fd, len),
  close: (fd) => fs.closeSync(fd),
  closeAsync: (fd) => new Promise((resolve, reject) => fs.close(fd, (e) => (e ? reject(e) : resolve()))),
  readFile: (file) => fs.readFileSync(file),
  rename: (from, to) => fs.renameSync(from, to),
  renameAsync: (from, to) => fs.promises.rename(from, to),
  unlink: (file) => fs.unlinkSync(file),
  unlinkAsync: (file) => fs.promises.unlink(file),
  syncDir: (dir) => {
    const fd = fs.openSync(dir, "r")
    try {
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
    }
  },
  syncDirAsync: async (dir) => {
    const h = await fs.promises.open(dir, "r")
    try {
      await h.sync()
    } finally {
      await h.close()
    }
  },
  tryLock: (file) => {
    const fd = fs.openSync(file, fs.constants.O_RDWR | fs.constants.O_CREAT, 0o644)
    let granted = false
    try {
      granted = nativeExtensions().tryLock(fd)
    } finally {
      if (!granted) fs.closeSync(fd)
    }
    if (!granted) return undefined
    try {
      const pid = Buffer.from(String(process.pid))
      fs.ftruncateSync(fd, 0)
      fs.writeSync(fd, pid, 0, pid.length, 0)
    } catch {
      // The pid is for people reading the file; the lock is held all the same.
    }
    let held = true
    return {
      release: () => {
        if (!held) return
        held = false
        // Closing the descriptor drops the lock; unlock first so it is gone even if close fails.
        try {
          nativeExtensions().unlock(fd)
        } finally {
          fs.closeSync(fd)
        }
      }
    }
  },
  freeBytes: (dir) => {
    try {
      const s = fs.statfsSync(dir)
      return s.bavail * s.bsize
    } catch {
      return undefined
    }
  },
  renameDir: (from, to) => fs.renameSync(from, to),
  removeDir: (dir) => fs.rmSync(dir, { recursive: true, force: true })
}

// ---- in memory -------------------------------------------------------------------------

/** The write-back unit of the modelled disk. */
export const PAGE_BYTES = 4096

/** A node-style errno exception (`code`, `errno`, `syscall`, `path`). */
const errno = (code: string, syscall: string, file?: string): NodeJS.ErrnoException => {
  const n = (os.constants.errno as Record<string, number | undefined>)[code]
  const e: NodeJS.ErrnoException = new Error(`${code}: ${syscall}${file === undefined ? "" : ` '${file}'`}`)
  e.code = code
  if (n !== undefined) e.errno = -n
  e.syscall = syscall
  if (file !== undefined) e.path = file
  return e
}

/** Operations a fault can be injected into (`openRead` counts as `open`, and so does the open in `tryLock`). */
export type FaultOp =
  | "open" | "read" | "writeAll" | "writeAllAsync" | "preallocate" | "datasync" | "datasyncSync" | "truncate"
  | "readFile" | "rename" | "renameAsync" | "unlink" | "unlinkAsync" | "syncDir" | "syncDirAsync"
  | "tryLock" | "mkdirp" | "list" | "renameDir" | "removeDir"

/** The operations that are in flight until they complete (see `holdSyncs`). */
export type AsyncOp = "datasync" | "writeAllAsync" | "renameAsync" | "unlinkAsync" | "syncDirAsync"

/**
 * A fault to inject: the next `times` calls of `op` on a matching path fail with `code`.
 * An async operation fails when it completes. A failed operation has no effect, except
 * that a write may have written `written` bytes, and a failed datasync leaves the pages it
 * was writing marked clean without their reaching the disk, as Linux does: they stay
 * readable, no later sync writes them, and a crash loses them.
 */
export interface Fault {
  readonly op: FaultOp
  /** The file (resolved path, exact) or a pattern it must match; any path when absent. For rename, either name. */
  readonly path?: string | RegExp
  /** errno code of the failure; default EIO. */
  readonly code?: "EIO" | "ENOSPC" | "EDQUOT" | "EROFS" | "EACCES" | "EBADF" | "ENOENT" | (string & {})
  /** How many calls fail; default 1. */
  readonly times?: number
  /** Matching calls that succeed first; default 0. */
  readonly after?: number
  /** writeAll / writeAllAsync: bytes that reach the file before the failure; default 0. */
  readonly written?: number
}

/** How a crash treats what was not synced. */
export interface CrashOptions {
  /** Draws every choice below from a PRNG with this seed: the same seed, the same outcome. */
  readonly seed?: number
  /** Whether unsynced page `page` (file offset / PAGE_BYTES) of `file` reached the disk. */
  readonly keepPage?: (file: string, page: number) => boolean
  /**
   * Whether a file whose size changed since its last sync has its new size (true) or its
   * durable one. Default: drawn with `seed`; the new size with `keepPage` alone; else durable.
   */
  readonly keepSize?: (file: string, durableSize: number, currentSize: number) => boolean
}

/**
 * The old model, kept for tests written against it: every file keeps its durable size plus
 * `keep(file, unsynced)` of the bytes appended since, all of them as written (a prefix).
 */
export type KeepPrefix = (file: string, unsynced: number) => number

/** What a crash did to a file that had unsynced changes. */
export interface CrashedFile {
  readonly file: string
  readonly durableSize: number
  readonly currentSize: number
  /** The size it has now. */
  readonly size: number
  readonly keptPages: ReadonlyArray<number>
  readonly lostPages: ReadonlyArray<number>
}

/** An in-memory file system modelling a disk that loses power, for tests. */
export interface MemoryFiles extends FilesApi {
  /**
   * Cuts the power: every directory goes back to its entries as of its last sync (files
   * created since vanish, renames revert, unlinked files come back), every file to its
   * durable content plus, per changed page, the page as written or not, and to its durable
   * or current size; bytes past the durable size that were not written read as zeros.
   * In-flight operations never complete, descriptors and locks are gone, held syncs are no
   * longer held. With no argument nothing unsynced survives. Returns what happened to
   * files with unsynced changes, in path order.
   */
  crash(how?: CrashOptions | KeepPrefix): CrashedFile[]
  /**
   * The process dies but the machine stays up (SIGKILL): its descriptors and locks are
   * gone and its in-flight operations never complete (nor make anything durable), while
   * everything it wrote stays readable and unsynced, for a later `crash` to lose.
   */
  killProcess(): void
  /** Limits the total bytes all files may hold; writes past it fail with ENOSPC. */
  setQuota(bytes: number | undefined): void
  usedBytes(): number
  /** Makes matching calls fail (see `Fault`). Faults are checked in the order injected. */
  inject(fault: Fault): void
  clearFaults(): void
  /**
   * From now on, async operations (those `which` selects; all by default) stay in flight
   * when they would complete, until `releaseSyncs`. Without holding they complete on a
   * later turn of the event loop, never synchronously.
   */
  holdSyncs(which?: (op: AsyncOp, file: string) => boolean): void
  /**
   * Completes the `count` oldest held operations (all by default) in the order issued;
   * without a count, also stops holding. Returns how many completed.
   */
  releaseSyncs(count?: number): number
  /** The async operations issued and not yet completed, oldest first. */
  inFlight(): Array<{ readonly op: AsyncOp; readonly file: string; readonly held: boolean }>
  /** Paths whose lock is held. */
  heldLocks(): string[]
}

interface MemInode {
  readonly kind: "file"
  /** Current content (what reads see); zero past `size`. */
  data: Buffer
  size: number
  /** Content on the disk, valid below `durableSize`. */
  durable: Buffer
  durableSize: number
  /** Pages whose content or size may differ from the disk's, each with the mutation that last touched it. */
  dirty: Map<number, number>
  /** Mutation counter, and the mutation the disk holds. */
  gen: number
  durableGen: number
}

interface MemDir {
  readonly kind: "dir"
  entries: Map<string, MemNode>
  /** The entries on the disk: as of the last sync of this directory. */
  durable: Map<string, MemNode>
  gen: number
  durableGen: number
}

type MemNode = MemInode | MemDir

interface Handle {
  readonly ino: MemInode
  file: string
  readonly writable: boolean
}

interface Flight {
  readonly op: AsyncOp
  readonly file: string
  readonly epoch: number
  /** Applies the operation; returns its error, if it fails. */
  readonly run: () => NodeJS.ErrnoException | undefined
  readonly resolve: () => void
  readonly reject: (e: unknown) => void
  held: boolean
}

const newFile = (): MemInode => ({ kind: "file", data: Buffer.alloc(0), size: 0, durable: Buffer.alloc(0), durableSize: 0, dirty: new Map(), gen: 0, durableGen: 0 })
const newDir = (): MemDir => ({ kind: "dir", entries: new Map(), durable: new Map(), gen: 0, durableGen: 0 })

/** `buf` with room for `n` bytes (new bytes zero). */
const withRoom = (buf: Buffer, n: number): Buffer => {
  if (n <= buf.length) return buf
  const grown = Buffer.alloc(Math.max(n, buf.length * 2, PAGE_BYTES))
  buf.copy(grown)
  return grown
}

/**
 * Makes an empty in-memory file system. Only `/` exists; its own entries are durable at
 * once (as if set up before the test), so `mkdirp("/data")` survives a crash, while a
 * directory made deeper survives only once its parent is synced.
 */
export const makeMemoryFiles = (): MemoryFiles => {
  const root = newDir()
  const fds = new Map<number, Handle>()
  const locks = new Map<string, object>()
  const faults: Array<{ fault: Fault; left: number; skip: number }> = []
  let flights: Flight[] = []
  let holding: ((op: AsyncOp, file: string) => boolean) | undefined
  let epoch = 0
  let nextFd = 3
  let quota: number | undefined

  const norm = (p: string) => path.resolve(p)
  const parts = (p: string) => norm(p).split(path.sep).filter((s) => s !== "")

  // ---- faults ----

  const matches = (pattern: string | RegExp | undefined, files: string[]) =>
    pattern === undefined || files.some((f) => (typeof pattern === "string" ? norm(pattern) === f : pattern.test(f)))

  /** The fault this call hits, if any (consuming it). */
  const hit = (op: FaultOp, ...files: string[]): { error: NodeJS.ErrnoException; written: number } | undefined => {
    for (let i = 0; i < faults.length; i++) {
      const f = faults[i]!
      if (f.fault.op !== op || !matches(f.fault.path, files)) continue
      if (f.skip > 0) {
        f.skip--
        continue
      }
      if (--f.left <= 0) faults.splice(i, 1)
      return { error: errno(f.fault.code ?? "EIO", op, files[0]), written: f.fault.written ?? 0 }
    }
    return undefined
  }
  const check = (op: FaultOp, ...files: string[]) => {
    const h = hit(op, ...files)
    if (h !== undefined) throw h.error
  }

  // ---- names ----

  const lookup = (p: string): MemNode | undefined => {
    let node: MemNode = root
    for (const name of parts(p)) {
      if (node.kind !== "dir") return undefined
      const next: MemNode | undefined = node.entries.get(name)
      if (next === undefined) return undefined
      node = next
    }
    return node
  }
  const dirAt = (p: string, syscall: string): MemDir => {
    const node = lookup(p)
    if (node === undefined) throw errno("ENOENT", syscall, norm(p))
    if (node.kind !== "dir") throw errno("ENOTDIR", syscall, norm(p))
    return node
  }
  /** The directory holding `p`, and `p`'s name in it. */
  const parentOf = (p: string, syscall: string): { dir: MemDir; name: string } => {
    const n = norm(p)
    const name = path.basename(n)
    if (name === "") throw errno("EBUSY", syscall, n)
    return { dir: dirAt(path.dirname(n), syscall), name }
  }
  /** Records a change of `dir`'s entries; `/` is always durable. */
  const changed = (dir: MemDir) => {
    dir.gen++
    if (dir === root) {
      root.durable = new Map(root.entries)
      root.durableGen = root.gen
    }
  }
  const link = (dir: MemDir, name: string, node: MemNode) => {
    dir.entries.set(name, node)
    changed(dir)
  }
  const unlinkName = (dir: MemDir, name: string) => {
    dir.entries.delete(name)
    changed(dir)
  }
  /** A snapshot of `dir`'s entries to make durable, now or when an async sync completes. */
  const dirSnapshot = (dir: MemDir) => {
    const entries = new Map(dir.entries)
    const gen = dir.gen
    return () => {
      if (gen <= dir.durableGen) return undefined
      dir.durable = entries
      dir.durableGen = gen
      return undefined
    }
  }

  /** Every file reachable from `/` through `side` ("entries" now, "durable" on disk), by path. */
  const walk = (side: "entries" | "durable", f: (file: string, node: MemNode) => void) => {
    const seen = new Set<MemNode>()
    const go = (dir: MemDir, at: string) => {
      for (const name of [...dir[side].keys()].sort()) {
        const node = dir[side].get(name)!
        const p = path.join(at, name)
        if (seen.has(node)) continue
        seen.add(node)
        f(p, node)
        if (node.kind === "dir") go(node, p)
      }
    }
    go(root, path.sep)
  }

  const used = () => {
    let n = 0
    walk("entries", (_, node) => {
      if (node.kind === "file") n += node.size
    })
    return n
  }

  // ---- contents ----

  const handle = (fd: number, syscall: string): Handle => {
    const h = fds.get(fd)
    if (h === undefined) throw errno("EBADF", syscall)
    return h
  }
  const writable = (fd: number, syscall: string): Handle => {
    const h = handle(fd, syscall)
    if (!h.writable) throw errno("EBADF", syscall, h.file)
    return h
  }
  /** Marks the pages of bytes [from, to) changed. */
  const touch = (ino: MemInode, from: number, to: number) => {
    ino.gen++
    for (let p = Math.floor(from / PAGE_BYTES); p * PAGE_BYTES < to; p++) ino.dirty.set(p, ino.gen)
  }
  const resize = (ino: MemInode, len: number) => {
    if (len < ino.size) ino.data.fill(0, len, ino.size)
    else ino.data = withRoom(ino.data, len)
    touch(ino, Math.min(len, ino.size), Math.max(len, ino.size))
    ino.size = len
  }
  /** Writes as much of the range as the quota lets through; throws ENOSPC if not all of it. */
  const put = (ino: MemInode, buf: Uint8Array, off: number, len: number, pos: number) => {
    const end = pos + len
    if (quota !== undefined && end > ino.size) {
      const room = Math.max(0, quota - used())
      if (end - ino.size > room) {
        // A full disk may still take part of the write: keep what fits, as a real one does.
        const fits = Math.min(len, ino.size + room - pos)
        if (fits > 0) put(ino, buf, off, fits, pos)
        throw errno("ENOSPC", "write")
      }
    }
    if (len <= 0) return
    ino.data = withRoom(ino.data, end)
    const from = Math.min(pos, ino.size)
    ino.data.set(buf.subarray(off, off + len), pos)
    ino.size = Math.max(ino.size, end)
    touch(ino, from, end)
  }
  const writeWithFaults = (op: "writeAll" | "writeAllAsync", h: Handle, buf: Uint8Array, off: number, len: number, pos: number, fault: { error: NodeJS.ErrnoException; written: number } | undefined) => {
    if (fault !== undefined) {
      const n = Math.max(0, Math.min(len, fault.written))
      if (n > 0) put(h.ino, buf, off, n, pos)
      throw fault.error
    }
    try {
      put(h.ino, buf, off, len, pos)
    } catch (e) {
      ;(e as NodeJS.ErrnoException).syscall = op
      ;(e as NodeJS.ErrnoException).path = h.file
      throw e
    }
  }
  /** What a sync would make durable, taken now; applied at once or when an async sync completes. */
  const fileSnapshot = (ino: MemInode) => {
    const gen = ino.gen
    const size = ino.size
    const pages = [...ino.dirty].map(([p, g]) => ({ p, g, bytes: Buffer.from(ino.data.subarray(p * PAGE_BYTES, (p + 1) * PAGE_BYTES)) }))
    return {
      apply: (): undefined => {
        if (gen <= ino.durableGen) return undefined
        for (const { p, g, bytes } of pages) {
          ino.durable = withRoom(ino.durable, (p + 1) * PAGE_BYTES)
          ino.durable.fill(0, p * PAGE_BYTES, (p + 1) * PAGE_BYTES)
          bytes.copy(ino.durable, p * PAGE_BYTES)
          if (ino.dirty.get(p) === g) ino.dirty.delete(p)
        }
        ino.durable = withRoom(ino.durable, size)
        ino.durableSize = size
        ino.durableGen = gen
        return undefined
      },
      /**
       * A failed sync, as on Linux: the pages it tried to write are marked clean without
       * reaching the disk, so they stay readable but no later sync writes them.
       */
      fail: () => {
        for (const { p, g } of pages) if (ino.dirty.get(p) === g) ino.dirty.delete(p)
      }
    }
  }

  // ---- async operations in flight ----

  const complete = (f: Flight) => {
    if (f.epoch !== epoch) return
    flights = flights.filter((x) => x !== f)
    const err = f.run()
    if (err === undefined) f.resolve()
    else f.reject(err)
  }
  /** Issues an async operation: `run` applies it when it completes, on a later turn at the soonest. */
  const inFlight = (op: AsyncOp, file: string, run: () => NodeJS.ErrnoException | undefined): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      const f: Flight = { op, file, epoch, run, resolve, reject, held: holding?.(op, file) === true }
      flights.push(f)
      setImmediate(() => {
        if (f.epoch !== epoch || f.held || !flights.includes(f)) return
        if (holding?.(op, file) === true) f.held = true
        else complete(f)
      })
    })
  /** Runs `f`, turning a throw into the returned error. */
  const attempt = (f: () => void): NodeJS.ErrnoException | undefined => {
    try {
      f()
      return undefined
    } catch (e) {
      return e as NodeJS.ErrnoException
    }
  }

  // ---- the operations ----

  const openFile = (file: string, create: boolean, writable: boolean): number => {
    const p = norm(file)
    check("open", p)
    const { dir, name } = parentOf(p, "open")
    let node = dir.entries.get(name)
    if (node === undefined) {
      if (!create) throw errno("ENOENT", "open", p)
      node = newFile()
      link(dir, name, node)
    }
    if (node.kind !== "file") throw errno("EISDIR", "open", p)
    const fd = nextFd++
    fds.set(fd, { ino: node, file: p, writable })
    return fd
  }
  const renameNow = (from: string, to: string, syscall: string) => {
    const f = norm(from)
    const t = norm(to)
    const src = parentOf(f, syscall)
    const node = src.dir.entries.get(src.name)
    if (node === undefined) throw errno("ENOENT", syscall, f)
    const dst = parentOf(t, syscall)
    const old = dst.dir.entries.get(dst.name)
    if (old === node) return
    if (old?.kind === "dir" && node.kind === "file") throw errno("EISDIR", syscall, t)
    if (old?.kind === "file" && node.kind === "dir") throw errno("ENOTDIR", syscall, t)
    if (old?.kind === "dir" && old.entries.size > 0) throw errno("ENOTEMPTY", syscall, t)
    if (node.kind === "dir" && (t === f || t.startsWith(f + path.sep))) throw errno("EINVAL", syscall, t)
    unlinkName(src.dir, src.name)
    link(dst.dir, dst.name, node)
    for (const h of fds.values()) {
      if (h.file === f) h.file = t
      else if (h.file.startsWith(f + path.sep)) h.file = t + h.file.slice(f.length)
    }
  }
  const unlinkNow = (file: string, syscall: string) => {
    const p = norm(file)
    const { dir, name } = parentOf(p, syscall)
    const node = dir.entries.get(name)
    if (node === undefined) throw errno("ENOENT", syscall, p)
    if (node.kind === "dir") throw errno("EISDIR", syscall, p)
    unlinkName(dir, name)
  }

  const api: MemoryFiles = {
    mkdirp: (dir) => {
      check("mkdirp", norm(dir))
      let node: MemDir = root
      let at: string = path.sep
      for (const name of parts(dir)) {
        at = path.join(at, name)
        let next = node.entries.get(name)
        if (next === undefined) {
          next = newDir()
          link(node, name, next)
        }
        if (next.kind !== "dir") throw errno("EEXIST", "mkdir", at)
        node = next
      }
    },
    list: (dir) => {
      check("list", norm(dir))
      return [...dirAt(dir, "scandir").entries.keys()]
    },
    exists: (file) => lookup(file) !== undefined,
    open: (file, create) => openFile(file, create, true),
    openRead: (file) => openFile(file, false, false),
    size: (fd) => handle(fd, "fstat").ino.size,
    read: (fd, buf, off, len, pos) => {
      const h = handle(fd, "read")
      check("read", h.file)
      const n = Math.max(0, Math.min(len, h.ino.size - pos))
      if (n > 0) buf.set(h.ino.data.subarray(pos, pos + n), off)
      return n
    },
    writeAll: (fd, buf, off, len, pos) => {
      const h = writable(fd, "write")
      writeWithFaults("writeAll", h, buf, off, len, pos, hit("writeAll", h.file))
    },
    writeAllAsync: (fd, buf, off, len, pos) => {
      let h: Handle
      try {
        h = writable(fd, "write")
      } catch (e) {
        return Promise.reject(e)
      }
      const fault = hit("writeAllAsync", h.file)
      return inFlight("writeAllAsync", h.file, () => attempt(() => writeWithFaults("writeAllAsync", h, buf, off, len, pos, fault)))
    },
    preallocate: (fd, bytes) => {
      const h = writable(fd, "fallocate")
      check("preallocate", h.file)
      if (bytes <= h.ino.size) return
      if (quota !== undefined && bytes - h.ino.size > Math.max(0, quota - used())) throw errno("ENOSPC", "fallocate", h.file)
      resize(h.ino, bytes)
    },
    datasync: (fd) => {
      let h: Handle
      try {
        h = handle(fd, "fdatasync")
      } catch (e) {
        return Promise.reject(e)
      }
      // What the sync writes is what was written before it was called.
      const snap = fileSnapshot(h.ino)
      const fault = hit("datasync", h.file)
      return inFlight("datasync", h.file, () => {
        if (fault === undefined) return snap.apply()
        snap.fail()
        return fault.error
      })
    },
    datasyncSync: (fd) => {
      const h = handle(fd, "fdatasync")
      const snap = fileSnapshot(h.ino)
      const fault = hit("datasyncSync", h.file)
      if (fault !== undefined) {
        snap.fail()
        throw fault.error
      }
      snap.apply()
    },
    truncate: (fd, len) => {
      const h = writable(fd, "ftruncate")
      check("truncate", h.file)
      if (len > h.ino.size && quota !== undefined && len - h.ino.size > Math.max(0, quota - used())) throw errno("ENOSPC", "ftruncate", h.file)
      resize(h.ino, len)
    },
    close: (fd) => {
      handle(fd, "close")
      fds.delete(fd)
    },
    closeAsync: async (fd) => {
      handle(fd, "close")
      fds.delete(fd)
    },
    readFile: (file) => {
      const p = norm(file)
      check("readFile", p)
      const node = lookup(p)
      if (node === undefined) throw errno("ENOENT", "open", p)
      if (node.kind !== "file") throw errno("EISDIR", "read", p)
      return Buffer.from(node.data.subarray(0, node.size))
    },
    rename: (from, to) => {
      check("rename", norm(from), norm(to))
      renameNow(from, to, "rename")
    },
    renameAsync: (from, to) => {
      const fault = hit("renameAsync", norm(from), norm(to))
      return inFlight("renameAsync", norm(from), () => fault?.error ?? attempt(() => renameNow(from, to, "rename")))
    },
    unlink: (file) => {
      check("unlink", norm(file))
      unlinkNow(file, "unlink")
    },
    unlinkAsync: (file) => {
      const fault = hit("unlinkAsync", norm(file))
      return inFlight("unlinkAsync", norm(file), () => fault?.error ?? attempt(() => unlinkNow(file, "unlink")))
    },
    syncDir: (dir) => {
      const d = dirAt(dir, "fsync")
      check("syncDir", norm(dir))
      dirSnapshot(d)()
    },
    syncDirAsync: (dir) => {
      let d: MemDir
      try {
        d = dirAt(dir, "fsync")
      } catch (e) {
        return Promise.reject(e)
      }
      const apply = dirSnapshot(d)
      const fault = hit("syncDirAsync", norm(dir))
      return inFlight("syncDirAsync", norm(dir), () => fault?.error ?? apply())
    },
    tryLock: (file) => {
      const p = norm(file)
      check("tryLock", p)
      if (locks.has(p)) return undefined
      const fd = openFile(p, true, true)
      const h = fds.get(fd)!
      try {
        const pid = Buffer.from(String(process.pid))
        resize(h.ino, 0)
        put(h.ino, pid, 0, pid.length, 0)
      } catch {
        // The pid is for people reading the file; the lock is held all the same.
      }
      const token = {}
      locks.set(p, token)
      return {
        release: () => {
          // A crash already dropped it, and someone may hold it again since.
          if (locks.get(p) !== token) return
          locks.delete(p)
          fds.delete(fd)
        }
      }
    },
    renameDir: (from, to) => {
      check("renameDir", norm(from), norm(to))
      renameNow(from, to, "rename")
    },
    removeDir: (dir) => {
      const p = norm(dir)
      check("removeDir", p)
      const parent = lookup(path.dirname(p))
      if (parent?.kind === "dir" && parent.entries.has(path.basename(p))) unlinkName(parent, path.basename(p))
    },
    freeBytes: () => (quota === undefined ? undefined : Math.max(0, quota - used())),
    killProcess: () => {
      epoch++
      flights = []
      holding = undefined
      fds.clear()
      locks.clear()
    },
    crash: (how) => {
      api.killProcess()
      const opts: CrashOptions = typeof how === "object" ? how : {}
      const random = opts.seed === undefined ? undefined : prng(opts.seed)
      const keepPage = opts.keepPage ?? (random ? () => random() < 0.5 : () => false)
      const keepSize = opts.keepSize ?? (random ? () => random() < 0.5 : opts.keepPage ? () => true : () => false)
      const report: CrashedFile[] = []
      // Names first: everything not reachable through synced entries is gone.
      const revert = (dir: MemDir) => {
        dir.entries = new Map(dir.durable)
        dir.gen++
        dir.durableGen = dir.gen
        for (const node of dir.entries.values()) if (node.kind === "dir") revert(node)
      }
      revert(root)
      walk("durable", (file, ino) => {
        if (ino.kind !== "file") return
        if (ino.dirty.size === 0 && ino.size === ino.durableSize) {
          ino.data = Buffer.alloc(ino.durableSize)
          ino.durable.copy(ino.data, 0, 0, ino.durableSize)
          ino.gen = ino.durableGen
          return
        }
        let size: number
        const kept: number[] = []
        const lost: number[] = []
        const out = Buffer.alloc(Math.max(ino.size, ino.durableSize))
        ino.durable.copy(out, 0, 0, Math.min(ino.durableSize, ino.durable.length))
        if (typeof how === "function") {
          const unsynced = Math.max(0, ino.size - ino.durableSize)
          size = ino.size <= ino.durableSize ? ino.size : ino.durableSize + Math.max(0, Math.min(unsynced, Math.floor(how(file, unsynced))))
          ino.data.copy(out, 0, 0, size)
        } else {
          size = ino.size === ino.durableSize || keepSize(file, ino.durableSize, ino.size) ? ino.size : ino.durableSize
          for (const p of [...ino.dirty.keys()].sort((a, b) => a - b)) {
            if (p * PAGE_BYTES >= size) continue
            if (keepPage(file, p)) {
              kept.push(p)
              out.fill(0, p * PAGE_BYTES, Math.min(out.length, (p + 1) * PAGE_BYTES))
              ino.data.copy(out, p * PAGE_BYTES, p * PAGE_BYTES, Math.min(ino.data.length, (p + 1) * PAGE_BYTES))
            } else {
              lost.push(p)
            }
          }
        }
        const content = Buffer.from(out.subarray(0, size))
        report.push({ file, durableSize: ino.durableSize, currentSize: ino.size, size, keptPages: kept, lostPages: lost })
        ino.data = Buffer.from(content)
        ino.durable = content
        ino.size = size
        ino.durableSize = size
        ino.dirty.clear()
        ino.gen++
        ino.durableGen = ino.gen
      })
      return report
    },
    setQuota: (bytes) => {
      quota = bytes
    },
    usedBytes: used,
    inject: (fault) => {
      faults.push({ fault, left: fault.times ?? 1, skip: fault.after ?? 0 })
    },
    clearFaults: () => {
      faults.length = 0
    },
    holdSyncs: (which = () => true) => {
      holding = which
    },
    releaseSyncs: (count) => {
      const held = flights.filter((f) => f.held)
      const now = count === undefined ? held : held.slice(0, Math.max(0, count))
      if (count === undefined) holding = undefined
      for (const f of now) complete(f)
      return now.length
    },
    inFlight: () => flights.map((f) => ({ op: f.op, file: f.file, held: f.held })),
    heldLocks: () => [...locks.keys()]
  }
  return api
}

/** The file-system service the engine writes through. */
export class Files extends Context.Service<Files, FilesApi>()("tally/engine/Files") {
  /** node:fs. */
  static readonly layer = Layer.succeed(Files, nodeFiles)
  /** A fresh in-memory file system (see `makeMemoryFiles`). */
  static readonly layerMemory = Layer.sync(Files, makeMemoryFiles)
  /** A given in-memory file system, so a test can crash it and reopen the engine on it. */
  static readonly layerFrom = (files: FilesApi) => Layer.succeed(Files, files)
}

/** node:fs as a plain value, for code outside Effect (benchmarks, tools). */
export const nodeFilesApi: FilesApi = nodeFiles
