/**
 * Every error the storage engine can report, each with a stable `code` that callers,
 * logs and the HTTP layer may rely on. docs/storage.md lists them; test/engine/errors.test.ts
 * fails when this list and that page disagree.
 */
import { Schema } from "effect"

/** The key is empty or longer than 1024 bytes of UTF-8. */
export class InvalidKey extends Schema.TaggedError<InvalidKey>()("InvalidKey", {
  message: Schema.String
}) {
  readonly code = "invalid_key"
}

/** The value (or metadata) is larger than the configured maximum. */
export class ValueTooLarge extends Schema.TaggedError<ValueTooLarge>()("ValueTooLarge", {
  size: Schema.Number,
  limit: Schema.Number,
  message: Schema.String
}) {
  readonly code = "value_too_large"
}

/** The disk is full (ENOSPC or EDQUOT). Nothing of the failed write was kept. */
export class DiskFull extends Schema.TaggedError<DiskFull>()("DiskFull", {
  path: Schema.String,
  message: Schema.String
}) {
  readonly code = "disk_full"
}

/** Any other I/O failure: the operation failed and its effects were rolled back. */
export class IoError extends Schema.TaggedError<IoError>()("IoError", {
  path: Schema.String,
  message: Schema.String,
  cause: Schema.Defect()
}) {
  readonly code = "io_error"
}

/** Another live process holds the data directory's lock file. */
export class DataDirLocked extends Schema.TaggedError<DataDirLocked>()("DataDirLocked", {
  dir: Schema.String,
  pid: Schema.Number,
  message: Schema.String
}) {
  readonly code = "data_dir_locked"
}

/** A stored record failed its checksum when read: the value is never returned. */
export class CorruptRecord extends Schema.TaggedError<CorruptRecord>()("CorruptRecord", {
  segment: Schema.Number,
  offset: Schema.Number,
  message: Schema.String
}) {
  readonly code = "corrupt_record"
}

/** The engine was closed. */
export class EngineClosed extends Schema.TaggedError<EngineClosed>()("EngineClosed", {
  message: Schema.String
}) {
  readonly code = "engine_closed"
}

/**
 * The engine stopped taking writes after a failure it cannot undo in this process: an fsync
 * that failed (the page cache can no longer be trusted: PostgreSQL's "fsyncgate"), a write
 * error other than a full disk, or an error after a compaction's commit point. Reads go on;
 * a restart recovers from what is on disk.
 */
export class StorageFailed extends Schema.TaggedError<StorageFailed>()("StorageFailed", {
  message: Schema.String
}) {
  readonly code = "storage_failed"
}

/** More writes are waiting for the disk than the engine accepts (`maxPendingBytes`); retry shortly. */
export class Overloaded extends Schema.TaggedError<Overloaded>()("Overloaded", {
  pendingBytes: Schema.Number,
  message: Schema.String
}) {
  readonly code = "overloaded"
}

/** A file in the data directory is of a format this build does not know (a newer Tally wrote it). Nothing was changed. */
export class UnknownFormat extends Schema.TaggedError<UnknownFormat>()("UnknownFormat", {
  file: Schema.String,
  version: Schema.Number,
  message: Schema.String
}) {
  readonly code = "unknown_format"
}

/** A file the engine cannot read safely (a segment whose header is destroyed, a damaged control file). Nothing was changed. */
export class CorruptFile extends Schema.TaggedError<CorruptFile>()("CorruptFile", {
  file: Schema.String,
  message: Schema.String
}) {
  readonly code = "corrupt_file"
}

/** A reader of `changes` asked for history that compaction has already removed: take a snapshot (scanPartition) and read changes from its LSN. */
export class SnapshotRequired extends Schema.TaggedError<SnapshotRequired>()("SnapshotRequired", {
  fromLsn: Schema.Number,
  lowWatermark: Schema.Number,
  message: Schema.String
}) {
  readonly code = "snapshot_required"
}

/** Any error the engine can fail with. */
export type EngineError =
  | InvalidKey
  | ValueTooLarge
  | DiskFull
  | IoError
  | DataDirLocked
  | CorruptRecord
  | EngineClosed
  | StorageFailed
  | Overloaded
  | UnknownFormat
  | CorruptFile
  | SnapshotRequired

/** Every engine error class, for documentation checks and `instanceof` tests. */
export const engineErrors = [
  InvalidKey,
  ValueTooLarge,
  DiskFull,
  IoError,
  DataDirLocked,
  CorruptRecord,
  EngineClosed,
  StorageFailed,
  Overloaded,
  UnknownFormat,
  CorruptFile,
  SnapshotRequired
] as const

/** True for the engine's own typed errors (as opposed to defects). */
export const isEngineError = (e: unknown): e is EngineError => engineErrors.some((C) => e instanceof C)

const FULL = new Set(["ENOSPC", "EDQUOT"])

/** Maps a node:fs exception to the engine's typed error. */
export const fromFsError = (path: string, cause: unknown): DiskFull | IoError => {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code
  if (code !== undefined && FULL.has(code)) {
    return new DiskFull({ path, message: `no space left on the device holding ${path}; free space and retry` })
  }
  return new IoError({ path, message: `${code ?? "I/O error"} on ${path}: ${String((cause as Error)?.message ?? cause)}`, cause })
}
