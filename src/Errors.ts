/**
 * Every error a node reports to a client: one definition site, a stable code, an HTTP
 * status, documented in docs/api.md (test/api/errors-doc.test.ts fails when they differ).
 * Engine errors are mapped here too, so no storage failure reaches a client as a 500. The
 * table of codes itself lives in src/ErrorCodes.ts, which imports nothing (the client reads it).
 */
import { Schema } from "effect"
import type { EngineError } from "../engine/Errors.ts"
import { type ErrorCode, errorCodes } from "./ErrorCodes.ts"

/** The codes and their statuses, re-exported so that importers of this module keep them. */
export { type ErrorCode, errorCodes } from "./ErrorCodes.ts"

/** An error a client sees: `{"error": code, "message": ..., ...details}` with the code's status. */
export class ApiError extends Schema.TaggedError<ApiError>()("ApiError", {
  code: Schema.Literals(Object.keys(errorCodes) as [ErrorCode, ...ErrorCode[]]),
  message: Schema.String,
  needed: Schema.optional(Schema.Number),
  got: Schema.optional(Schema.Number)
}) {
  get status(): number {
    return errorCodes[this.code].status
  }

  /** The JSON body. */
  toBody(): Record<string, unknown> {
    const body: Record<string, unknown> = { error: this.code, message: this.message }
    if (this.needed !== undefined) body.needed = this.needed
    if (this.got !== undefined) body.got = this.got
    return body
  }
}

/** Shorthand constructor. */
export const apiError = (code: ErrorCode, message: string, extra?: { needed?: number; got?: number }): ApiError =>
  new ApiError({ code, message, ...extra })

/** What a client sees for an engine failure. */
export const fromEngineError = (e: EngineError): ApiError => {
  switch (e._tag) {
    case "InvalidKey":
      return apiError("bad_request", e.message)
    case "ValueTooLarge":
      return apiError("value_too_large", e.message)
    case "DiskFull":
      return apiError("disk_full", e.message)
    case "Overloaded":
      return apiError("unavailable", e.message)
    case "IoError":
    case "CorruptRecord":
    case "EngineClosed":
    case "DataDirLocked":
    case "StorageFailed":
    case "UnknownFormat":
    case "CorruptFile":
    case "SnapshotRequired":
      return apiError("storage_error", e.message)
  }
}
