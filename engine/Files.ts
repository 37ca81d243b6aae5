/**
 * The thin file-system seam of the engine: positional reads and writes, fdatasync and
 * directory sync, which effect's FileSystem does not offer. Plain synchronous calls except
 * `datasync`, because the per-record hot path must not pay for an effect per call.
 *
 * Two layers: `layer` is node:fs; `layerMemory` keeps files in memory and tracks, per file,
 * how many bytes were made durable, so tests can simulate a power cut (`crash`) and a full
 * disk (`setQuota`) deterministically.
 */
import * as fs from "node:fs"
import * as path from "node:path"
import { Context, Layer } from "effect"

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
  datasync(fd: number): Promise<void>
  datasyncSync(fd: number): void
  truncate(fd: number, len: number): void
  close(fd: number): void
  readFile(file: string): Buffer
  rename(from: string, to: string): void
  unlink(file: string): void
  syncDir(dir: string): void
  /** Free bytes on the device holding `dir`, when known. */
  freeBytes(dir: string): number | undefined
  /** Renames a directory and everything in it. */
  renameDir(from: string, to: string): void
  /** Removes a directory and everything in it; absent is fine. */
  removeDir(dir: string): void
}

/** Writes `data` to `file` so that after return it is whole or absent, never partial. */
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
  datasync: (fd) =>
    new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()))),
  datasyncSync: (fd) => fs.fdatasyncSync(fd),
  truncate: (fd, len) => fs.ftruncateSync(fd, len),
  close: (fd) => fs.closeSync(fd),
  readFile: (file) => fs.readFileSync(file),
  rename: (from, to) => fs.renameSync(from, to),
  unlink: (file) => fs.unlinkSync(file),
  syncDir: (dir) => {
    const fd = fs.openSync(dir, "r")
    try {
      fs.fsyncSync(fd)
    } finally {
      fs.closeSync(fd)
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

const errno = (code: string, message: string): NodeJS.ErrnoException =>
  Object.assign(new Error(`${code}: ${message}`), { code })

interface MemFile {
  data: Buffer
  length: number
  /** Bytes known durable: survive `crash`. */
  synced: number
}

/** An in-memory file system with crash and full-disk simulation, for tests. */
export interface MemoryFiles extends FilesApi {
  /** Simulates a power cut: every file keeps its durable prefix plus `keepUnsynced` of the rest. */
  crash(keepUnsynced?: (file: string, unsynced: number) => number): void
  /** Limits the total bytes all files may hold; writes past it fail with ENOSPC. */
  setQuota(bytes: number | undefined): void
  usedBytes(): number
}

/** Makes an empty in-memory file system. */
export const makeMemoryFiles = (): MemoryFiles => {
  const files = new Map<string, MemFile>()
  const dirs = new Set<string>()
  const fds = new Map<number, { file: string; mem: MemFile }>()
  let nextFd = 3
  let quota: number | undefined
  const used = () => {
    let n = 0
    for (const f of files.values()) n += f.length
    return n
  }
  const handle = (fd: number) => {
    const h = fds.get(fd)
    if (h === undefined) throw errno("EBADF", `bad file descriptor ${fd}`)
    return h
  }
  const norm = (p: string) => path.resolve(p)
  const openFile = (file: string, create: boolean): number => {
    const p = norm(file)
    let mem = files.get(p)
    if (mem === undefined) {
      if (!create) throw errno("ENOENT", `no such file ${p}`)
      if (!dirs.has(path.dirname(p))) throw errno("ENOENT", `no such directory ${path.dirname(p)}`)
      mem = { data: Buffer.alloc(4096), length: 0, synced: 0 }
      files.set(p, mem)
    }
    const fd = nextFd++
    fds.set(fd, { file: p, mem })
    return fd
  }
  const api: MemoryFiles = {
    mkdirp: (dir) => {
      let d = norm(dir)
      while (!dirs.has(d)) {
        dirs.add(d)
        const up = path.dirname(d)
        if (up === d) break
        d = up
      }
    },
    list: (dir) => {
      const d = norm(dir)
      if (!dirs.has(d)) throw errno("ENOENT", `no such directory ${d}`)
      const entries = [...files.keys(), ...dirs].filter((f) => f !== d && path.dirname(f) === d).map((f) => path.basename(f))
      return [...new Set(entries)]
    },
    exists: (file) => files.has(norm(file)) || dirs.has(norm(file)),
    open: openFile,
    openRead: (file) => openFile(file, false),
    size: (fd) => handle(fd).mem.length,
    read: (fd, buf, off, len, pos) => {
      const { mem } = handle(fd)
      const n = Math.max(0, Math.min(len, mem.length - pos))
      if (n > 0) buf.set(mem.data.subarray(pos, pos + n), off)
      return n
    },
    writeAll: (fd, buf, off, len, pos) => {
      const { mem } = handle(fd)
      const end = pos + len
      const growth = Math.max(0, end - mem.length)
      if (quota !== undefined && used() + growth > quota) {
        // A full disk may still take part of the write: keep what fits, as a real one does.
        const room = Math.max(0, quota - used())
        if (room > 0 && pos <= mem.length) api.writeAll(fd, buf, off, Math.min(len, mem.length - pos + room), pos)
        throw errno("ENOSPC", "no space left on device")
      }
      if (end > mem.data.length) {
        const grown = Buffer.alloc(Math.max(end, mem.data.length * 2))
        mem.data.copy(grown, 0, 0, mem.length)
        mem.data = grown
      }
      if (pos > mem.length) mem.data.fill(0, mem.length, pos)
      mem.data.set(buf.subarray(off, off + len), pos)
      mem.length = Math.max(mem.length, end)
    },
    datasync: async (fd) => {
      api.datasyncSync(fd)
    },
    datasyncSync: (fd) => {
      const { mem } = handle(fd)
      mem.synced = mem.length
    },
    truncate: (fd, len) => {
      const { mem } = handle(fd)
      if (len > mem.length) api.writeAll(fd, Buffer.alloc(len - mem.length), 0, len - mem.length, mem.length)
      mem.length = len
      mem.synced = Math.min(mem.synced, len)
    },
    close: (fd) => {
      handle(fd)
      fds.delete(fd)
    },
    readFile: (file) => {
      const mem = files.get(norm(file))
      if (mem === undefined) throw errno("ENOENT", `no such file ${file}`)
      return Buffer.from(mem.data.subarray(0, mem.length))
    },
    rename: (from, to) => {
      const mem = files.get(norm(from))
      if (mem === undefined) throw errno("ENOENT", `no such file ${from}`)
      files.delete(norm(from))
      files.set(norm(to), mem)
      for (const h of fds.values()) if (h.mem === mem) h.file = norm(to)
    },
    unlink: (file) => {
      if (!files.delete(norm(file))) throw errno("ENOENT", `no such file ${file}`)
    },
    syncDir: () => {},
    renameDir: (from, to) => {
      const f = norm(from)
      const t = norm(to)
      const under = (p: string) => p === f || p.startsWith(f + path.sep)
      for (const d of [...dirs].filter(under)) {
        dirs.delete(d)
        dirs.add(t + d.slice(f.length))
      }
      for (const [file, mem] of [...files].filter(([p]) => under(p))) {
        files.delete(file)
        files.set(t + file.slice(f.length), mem)
      }
    },
    removeDir: (dir) => {
      const d = norm(dir)
      const under = (p: string) => p === d || p.startsWith(d + path.sep)
      for (const x of [...dirs].filter(under)) dirs.delete(x)
      for (const file of [...files.keys()].filter(under)) files.delete(file)
    },
    freeBytes: () => (quota === undefined ? undefined : Math.max(0, quota - used())),
    crash: (keepUnsynced = () => 0) => {
      fds.clear()
      for (const [file, mem] of files) {
        const unsynced = mem.length - mem.synced
        mem.length = mem.synced + Math.max(0, Math.min(unsynced, keepUnsynced(file, unsynced)))
        mem.synced = mem.length
      }
    },
    setQuota: (bytes) => {
      quota = bytes
    },
    usedBytes: used
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
