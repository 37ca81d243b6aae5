/** Small helpers shared by the engine tests: open a Log without Effect and write to it. */
import { defaultLogConfig, Log, type LogConfig, type Written } from "../../engine/Log.ts"
import type { FilesApi } from "../../engine/Files.ts"
import { RecordType } from "../../engine/Record.ts"

export const openLog = (files: FilesApi, dir: string, config: Partial<LogConfig> = {}): Log =>
  Log.open(files, { ...defaultLogConfig, tombstoneGraceMs: 0, ...config, dir })

export const put = (log: Log, key: string, value: string | Uint8Array, meta?: Uint8Array, partition = 0): Promise<Written> =>
  new Promise((resolve, reject) =>
    log.append(RecordType.Put, key, partition, typeof value === "string" ? Buffer.from(value) : value, meta, (err, w) => (err ? reject(err) : resolve(w!)))
  )

export const del = (log: Log, key: string, partition = 0): Promise<Written> =>
  new Promise((resolve, reject) => log.append(RecordType.Tombstone, key, partition, undefined, undefined, (err, w) => (err ? reject(err) : resolve(w!))))

/** The value of `key` as a string, "<deleted>" for a tombstone, undefined if absent. */
export const valueOf = (log: Log, key: string): string | undefined => {
  const e = log.read(key)
  if (e === undefined) return undefined
  return e.type === RecordType.Tombstone ? "<deleted>" : Buffer.from(e.value).toString()
}

/** The whole index as sorted [key, segment, offset, size, lsn, tombstone] rows. */
export const indexRows = (log: Log) =>
  [...log.index.entries()].map(([k, l]) => [k, l.segment, l.offset, l.size, l.lsn, l.tombstone] as const).sort((a, b) => (a[0] < b[0] ? -1 : 1))
