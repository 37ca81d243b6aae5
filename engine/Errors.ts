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

/** The engine was closed, or stopped accepting writes after an unrecoverable fsync failure. */
export class EngineClosed extends Schema.TaggedError<EngineClosed>()("EngineClosed", {
  message: Schema.String
}) {
  readonly code = "engine_closed"
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

/** Every engine error class, for documentation checks and `instanceof` tests. */
export const engineErrors = [
  InvalidKey,
  ValueTooLarge,
  DiskFull,
  IoError,
  DataDirLocked,
  CorruptRecord,
  EngineClosed
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
