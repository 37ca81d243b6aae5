/**
 * A node's settings and where they come from: command-line flags, then `TALLY_<FLAG>`
 * environment variables, then the JSON `--config` file, then defaults. Resolution is a pure
 * function that reports every problem at once, each naming the flag, variable or file key
 * at fault and what it expects. `LIVE_SETTINGS` lists what may change without a restart.
 */
import * as fs from "node:fs"
import * as Predicate from "effect/Predicate"
import * as Result from "effect/Result"
import { MAX_VALUE_BYTES } from "../../engine/Record.ts"
import { DEFAULT_COMPACTION_INTERVAL_MS } from "../../engine/Engine.ts"
import { defaultLogConfig } from "../../engine/Log.ts"
import * as Dvv from "../versions/Dvv.ts"

/** The `--fsync` modes: `batch` acknowledges a write after a group fsync it shares. */
export const FSYNC_MODES = ["always", "batch", "never"] as const
export type FsyncMode = (typeof FSYNC_MODES)[number]

/** The `--log-level` values, most severe first; `silent` logs nothing. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const
export type LogLevel = (typeof LOG_LEVELS)[number]

/** A member to join through, by its client address. */
export interface Seed {
  readonly host: string
  readonly port: number
}

/** UTC hours [from, to) in which anti-entropy exchanges run; from > to wraps midnight. */
export interface HourWindow {
  readonly from: number
  readonly to: number
}

/** When the storage engine compacts its segments. */
export interface CompactionSettings {
  /** A sealed segment is compacted once this share of its bytes is dead. */
  readonly deadRatio: number
  /** ...or once it holds this many dead bytes. */
  readonly deadBytes: number
  /** Sealed segments smaller than this are merged together. */
  readonly smallBytes: number
  /** How often to look for segments to compact; 0 turns background compaction off. */
  readonly intervalMs: number
  /** Tombstones younger than this are kept, so replicas can learn of the delete. */
  readonly tombstoneGraceMs: number
}

/** Everything a node is started with. */
export interface NodeSettings {
  readonly id: string
  readonly host: string
  readonly port: number
  readonly clusterPort: number
  readonly data: string
  readonly seeds: ReadonlyArray<Seed>
  readonly n: number
  readonly r: number
  readonly w: number
  readonly partitions: number
  readonly fsync: FsyncMode
  readonly maxValueBytes: number
  readonly logLevel: LogLevel
  readonly enableFaultInjection: boolean
  readonly config: string | undefined
  /** File of the cluster secret (src/transport/Tls.ts); undefined: internode traffic is plain TCP. */
  readonly clusterSecretFile?: string | undefined
  /** File of the bearer token(s) /admin/* needs (src/api/Auth.ts); undefined: loopback clients only. */
  readonly adminTokenFile?: string | undefined
  /** File of the bearer token(s) /kv needs; undefined: no token. */
  readonly clientTokenFile?: string | undefined
  /** Origins a browser page may call the client API from (CORS), comma-separated, or `*`; undefined: none. */
  readonly corsOrigin?: string | undefined
  /** Certificate and key (PEM) of the client API's HTTPS; both or neither. */
  readonly tlsCert?: string | undefined
  readonly tlsKey?: string | undefined
  /** HTTP requests served at once; more are answered 503 with Retry-After. The bounds below: DEFAULTS when absent (embedded nodes). */
  readonly maxRequestsInFlight?: number | undefined
  /** Internode connections accepted at once; more are closed as they arrive. */
  readonly maxInboundConnections?: number | undefined
  /** Largest internode frame before a peer's hello is accepted. */
  readonly maxHelloFrameBytes?: number | undefined
  /** Largest internode frame after it. */
  readonly maxFrameBytes?: number | undefined
  /** Read repairs running at once; past it a GET skips its repair (anti-entropy catches up). */
  readonly maxReadRepairs?: number | undefined
  /** Partition transfers this node receives at once (live). */
  readonly transferConcurrency: number
  /** Most bytes per second this node pulls in transfers, 0 for no limit (live). */
  readonly transferBytesPerSecond: number
  /** Pause between anti-entropy exchanges, ms; 0 turns anti-entropy off (live). */
  readonly aaeIntervalMs: number
  /** The UTC hours exchanges run in; null: at any hour (live). */
  readonly aaeWindow: HourWindow | null
  readonly compaction: CompactionSettings
}

/** The settings a running node applies without a restart, by their config-file names. */
export const LIVE_SETTINGS = [
  "r",
  "w",
  "logLevel",
  "maxValueBytes",
  "transferConcurrency",
  "transferBytesPerSecond",
  "aaeIntervalMs",
  "aaeWindow",
  "tombstoneGrace",
  "compaction.deadRatio",
  "compaction.deadBytes",
  "compaction.smallBytes",
  "compaction.tombstoneGraceMs"
] as const
export type LiveSettingName = (typeof LIVE_SETTINGS)[number]

/** The live compaction settings. */
export type LiveCompactionSettings = Pick<CompactionSettings, "deadRatio" | "deadBytes" | "smallBytes" | "tombstoneGraceMs">

/**
 * The live settings. A patch (`Partial<LiveSettingsShape>`) holds only what changed, and its
 * `compaction` only the fields that changed: no key is ever present with `undefined`.
 */
export interface LiveSettingsShape {
  readonly r: number
  readonly w: number
  readonly logLevel: LogLevel
  readonly maxValueBytes: number
  readonly transferConcurrency: number
  readonly transferBytesPerSecond: number
  readonly aaeIntervalMs: number
  readonly aaeWindow: HourWindow | null
  readonly compaction: Partial<LiveCompactionSettings>
}

/** Defaults of the settings that do not depend on others. */
export const DEFAULTS = {
  host: "127.0.0.1",
  port: 8080,
  seeds: [] as ReadonlyArray<Seed>,
  n: 3,
  r: 2,
  w: 2,
  partitions: 64,
  fsync: "batch" as FsyncMode,
  maxValueBytes: 1024 * 1024,
  logLevel: "info" as LogLevel,
  enableFaultInjection: false,
  maxRequestsInFlight: 1024,
  maxInboundConnections: 512,
  maxHelloFrameBytes: 64 * 1024,
  maxFrameBytes: 64 * 1024 * 1024,
  maxReadRepairs: 256,
  transferConcurrency: 2,
  transferBytesPerSecond: 0,
  aaeIntervalMs: 1_000,
  aaeWindow: null as HourWindow | null,
  // The engine's own defaults, so the two can never disagree.
  compaction: {
    deadRatio: defaultLogConfig.compactDeadRatio,
    deadBytes: defaultLogConfig.compactDeadBytes,
    smallBytes: defaultLogConfig.compactSmallBytes,
    intervalMs: DEFAULT_COMPACTION_INTERVAL_MS,
    tombstoneGraceMs: defaultLogConfig.tombstoneGraceMs
  } satisfies CompactionSettings
} as const

/** The settings that are top-level fields of NodeSettings. */
type SettingKey = Exclude<keyof NodeSettings, "compaction">

/**
 * The settings that have a command-line flag (and so an environment variable and a top-level
 * config-file key). `tombstoneGrace` is in seconds and sets `compaction.tombstoneGraceMs`.
 */
export type FlagKey = SettingKey | "tombstoneGrace"

/** Flag values as parsed from the command line, by setting name; absent or undefined: not given. */
export type FlagValues = { readonly [K in FlagKey]?: string | number | boolean | undefined }

/** The process environment, or any part of it. */
export type EnvValues = Readonly<Record<string, string | undefined>>

/** Where settings come from. `file` is the parsed JSON of the `--config` file. */
export interface SettingsSources {
  readonly flags?: FlagValues | undefined
  readonly env?: EnvValues | undefined
  readonly file?: unknown
}

/** One flag of `tally node`, for the command line and its help. */
export interface NodeFlag {
  readonly key: FlagKey
  /** Name without dashes, e.g. `cluster-port`. */
  readonly flag: string
  /** Its environment variable, e.g. `TALLY_CLUSTER_PORT`. */
  readonly env: string
  /** Placeholder in help, e.g. `P`; undefined for a switch. */
  readonly metavar: string | undefined
  readonly description: string
  /** The default, as help shows it. */
  readonly default: string
}

/** `TALLY_` + the flag name upper-cased, dashes to underscores. */
export const envName = (flag: string): string => `TALLY_${flag.toUpperCase().replaceAll("-", "_")}`

const flag = (key: FlagKey, name: string, metavar: string | undefined, description: string, dflt: string): NodeFlag => ({
  key,
  flag: name,
  env: envName(name),
  metavar,
  description,
  default: dflt
})

/** Every flag of `tally node`, in help order. */
export const NODE_FLAGS: ReadonlyArray<NodeFlag> = [
  flag("id", "id", "NAME", "unique node name, [A-Za-z0-9_.-]{1,64}", "node-<port>"),
  flag("host", "host", "ADDR", "address to listen on and to advertise", DEFAULTS.host),
  flag("port", "port", "P", "client HTTP port", String(DEFAULTS.port)),
  flag("clusterPort", "cluster-port", "P", "internode port", "port + 1000"),
  flag("data", "data", "DIR", "data directory; created if missing", "./data/<id>"),
  flag("seeds", "seeds", "H:P,...", "client addresses of existing members to join through", "none: a new cluster"),
  flag("n", "n", "N", "cluster default for replicas per key", String(DEFAULTS.n)),
  flag("r", "r", "R", "cluster default read quorum, 1..n (live)", `${DEFAULTS.r}, or n if smaller`),
  flag("w", "w", "W", "cluster default write quorum, 1..n (live)", `${DEFAULTS.w}, or n if smaller`),
  flag("partitions", "partitions", "Q", "ring size, 1..4096, fixed when the cluster is created", String(DEFAULTS.partitions)),
  flag("fsync", "fsync", "always|batch|never", "when writes are fsynced; batch = group commit", DEFAULTS.fsync),
  flag("maxValueBytes", "max-value-bytes", "BYTES", "largest value accepted (live)", String(DEFAULTS.maxValueBytes)),
  flag("logLevel", "log-level", LOG_LEVELS.join("|"), "log verbosity (live)", DEFAULTS.logLevel),
  flag("transferConcurrency", "transfer-concurrency", "K", "partition transfers this node receives at once (live)", String(DEFAULTS.transferConcurrency)),
  flag("transferBytesPerSecond", "transfer-rate", "BYTES", "most bytes per second this node pulls in transfers, 0 for no limit (live)", "0"),
  flag("aaeIntervalMs", "aae-interval", "MS", "pause between anti-entropy exchanges, 0 turns anti-entropy off (live)", String(DEFAULTS.aaeIntervalMs)),
  flag("aaeWindow", "aae-window", "H-H", "UTC hours [from, to) in which anti-entropy exchanges run, e.g. 22-6; always: any hour (live)", "always"),
  flag("tombstoneGrace", "tombstone-grace", "S", "seconds a tombstone is kept at least; it goes only once every primary holds it (live)", String(DEFAULTS.compaction.tombstoneGraceMs / 1000)),
  flag("clusterSecretFile", "cluster-secret-file", "FILE", "secret shared by the cluster's nodes: internode traffic is TLS, authenticated with it; a second line is a previous secret still accepted; needed to listen beyond loopback", "none: plain TCP, loopback only"),
  flag("adminTokenFile", "admin-token-file", "FILE", "bearer token /admin/* needs (one a line, all accepted; re-read when it changes)", "none: /admin/* answers loopback clients only"),
  flag("clientTokenFile", "client-token-file", "FILE", "bearer token /kv needs (one a line, all accepted; re-read when it changes)", "none"),
  flag("corsOrigin", "cors-origin", "ORIGINS", "origins (scheme://host[:port], comma-separated) whose browser pages may call /kv, or * for any: CORS headers on /kv only", "none: no CORS headers"),
  flag("tlsCert", "tls-cert", "FILE", "PEM certificate (chain) of the client API: it serves HTTPS; with --tls-key", "none: HTTP"),
  flag("tlsKey", "tls-key", "FILE", "PEM private key of --tls-cert", "none"),
  flag("maxRequestsInFlight", "max-requests-in-flight", "K", "HTTP requests served at once; more are answered 503 with Retry-After", String(DEFAULTS.maxRequestsInFlight)),
  flag("maxInboundConnections", "max-inbound-connections", "K", "internode connections accepted at once; more are closed", String(DEFAULTS.maxInboundConnections)),
  flag("maxHelloFrameBytes", "max-hello-frame-bytes", "BYTES", "largest internode frame before a peer's hello is accepted", String(DEFAULTS.maxHelloFrameBytes)),
  flag("maxFrameBytes", "max-frame-bytes", "BYTES", "largest internode frame after the hello", String(DEFAULTS.maxFrameBytes)),
  flag("maxReadRepairs", "max-read-repairs", "K", "read repairs running at once; past it a GET skips its repair (anti-entropy catches up)", String(DEFAULTS.maxReadRepairs)),
  flag("config", "config", "FILE", "JSON config file with the same settings; watched for live changes", "none"),
  flag("enableFaultInjection", "enable-fault-injection", undefined, "turn on POST /admin/faults (tests only)", "off")
]

const FLAG_BY_KEY = new Map(NODE_FLAGS.map((f) => [f.key, f]))

// ---- value kinds ------------------------------------------------------------------------

type Kind =
  | { readonly type: "int"; readonly min: number; readonly max: number; readonly expected?: string | undefined }
  | { readonly type: "ratio" }
  | { readonly type: "text"; readonly pattern: RegExp; readonly expected: string }
  | { readonly type: "literal"; readonly values: ReadonlyArray<string> }
  | { readonly type: "boolean" }
  | { readonly type: "seeds" }
  | { readonly type: "window" }

const MAX_INT = Number.MAX_SAFE_INTEGER
/** `--tombstone-grace` in ms must stay a safe integer. */
const MAX_GRACE_SECONDS = Math.floor(MAX_INT / 1000)
const PORT: Kind = { type: "int", min: 1, max: 65535 }
/** A node id: Dvv.NODE_ID (it names directories, so "." and ".." are refused). */
const ID_PATTERN = Dvv.NODE_ID

const TOP_KINDS: { readonly [K in FlagKey]: Kind } = {
  id: { type: "text", pattern: ID_PATTERN, expected: '1 to 64 characters from A-Z, a-z, 0-9, "_", "." and "-", other than "." and ".."' },
  host: { type: "text", pattern: /^[^\s/]+$/, expected: "a host name or IP address" },
  port: PORT,
  clusterPort: PORT,
  data: { type: "text", pattern: /\S/, expected: "a directory path" },
  seeds: { type: "seeds" },
  n: { type: "int", min: 1, max: 64 },
  r: { type: "int", min: 1, max: 64 }, // checked against n instead: see quorumKind
  w: { type: "int", min: 1, max: 64 },
  partitions: { type: "int", min: 1, max: 4096 },
  fsync: { type: "literal", values: FSYNC_MODES },
  maxValueBytes: { type: "int", min: 1, max: MAX_VALUE_BYTES },
  logLevel: { type: "literal", values: LOG_LEVELS },
  enableFaultInjection: { type: "boolean" },
  transferConcurrency: { type: "int", min: 1, max: 64 },
  transferBytesPerSecond: { type: "int", min: 0, max: MAX_INT },
  aaeIntervalMs: { type: "int", min: 0, max: MAX_INT },
  aaeWindow: { type: "window" },
  tombstoneGrace: { type: "int", min: 0, max: MAX_GRACE_SECONDS },
  clusterSecretFile: { type: "text", pattern: /\S/, expected: "a file path" },
  adminTokenFile: { type: "text", pattern: /\S/, expected: "a file path" },
  clientTokenFile: { type: "text", pattern: /\S/, expected: "a file path" },
  corsOrigin: { type: "text", pattern: /^(\*|https?:\/\/[^\s,/]+(,https?:\/\/[^\s,/]+)*)$/, expected: "* or origins like https://app.example.com:8443, comma-separated, no paths" },
  tlsCert: { type: "text", pattern: /\S/, expected: "a file path" },
  tlsKey: { type: "text", pattern: /\S/, expected: "a file path" },
  maxRequestsInFlight: { type: "int", min: 1, max: 1_000_000 },
  maxInboundConnections: { type: "int", min: 1, max: 1_000_000 },
  maxHelloFrameBytes: { type: "int", min: 1024, max: 2 ** 32 - 1 },
  maxFrameBytes: { type: "int", min: 1024, max: 2 ** 32 - 1 },
  maxReadRepairs: { type: "int", min: 0, max: 1_000_000 },
  config: { type: "text", pattern: /\S/, expected: "a file path" }
}

const SETTING_KEYS = (Object.keys(TOP_KINDS) as ReadonlyArray<FlagKey>).filter((k): k is SettingKey => k !== "tombstoneGrace")

/** r and w: 1..n, or any positive integer while n itself is invalid (that is reported alone). */
const quorumKind = (n: unknown, nGiven: boolean): Kind => {
  const max = Predicate.isNumber(n) ? n : nGiven ? MAX_INT : DEFAULTS.n
  return { type: "int", min: 1, max, expected: max === MAX_INT ? undefined : `an integer from 1 to n (${max})` }
}

const COMPACTION_KINDS: { readonly [K in keyof CompactionSettings]: Kind } = {
  deadRatio: { type: "ratio" },
  deadBytes: { type: "int", min: 0, max: MAX_INT },
  smallBytes: { type: "int", min: 0, max: MAX_INT },
  intervalMs: { type: "int", min: 0, max: MAX_INT },
  tombstoneGraceMs: { type: "int", min: 0, max: MAX_INT }
}
const COMPACTION_KEYS = Object.keys(COMPACTION_KINDS) as ReadonlyArray<keyof CompactionSettings>
const FILE_KEYS: ReadonlyArray<string> = [...Object.keys(TOP_KINDS).filter((k) => k !== "config"), "compaction"]

const expectedOf = (kind: Kind): string => {
  switch (kind.type) {
    case "int":
      if (kind.expected !== undefined) return kind.expected
      if (kind.max === MAX_INT) return kind.min === 0 ? "a non-negative integer" : `an integer of at least ${kind.min}`
      return `an integer from ${kind.min} to ${kind.max}`
    case "ratio":
      return "a number above 0 and at most 1"
    case "text":
      return kind.expected
    case "literal":
      return `one of ${kind.values.join(", ")}`
    case "boolean":
      return "true or false"
    case "seeds":
      return "a comma-separated list of HOST:PORT"
    case "window":
      return 'UTC hours FROM-TO (FROM 0 to 23, TO 0 to 24, not equal), such as "22-6", or "always"'
  }
}

const typeName = (v: unknown): string =>
  v === null ? "null" : Array.isArray(v) ? "an array" : typeof v === "object" ? "an object" : `a ${typeof v}`

const clip = (s: string): string => (s.length > 60 ? `${s.slice(0, 57)}...` : s)

/** How a bad value is shown: command-line text as typed, JSON values with their type when it is wrong. */
const shown = (raw: unknown, textual: boolean, kind: Kind): string => {
  if (textual && Predicate.isString(raw)) return raw !== "" && !/\s/.test(raw) ? clip(raw) : JSON.stringify(clip(raw))
  const json = JSON.stringify(raw) ?? String(raw)
  const wantsType = kind.type === "int" || kind.type === "ratio" ? "number" : kind.type === "boolean" ? "boolean" : kind.type === "seeds" || kind.type === "window" ? undefined : "string"
  const wrongType = wantsType !== undefined && typeof raw !== wantsType
  return wrongType ? `${clip(json)} (${typeName(raw)})` : clip(json)
}

type Parsed<A> = { readonly ok: true; readonly value: A } | { readonly ok: false; readonly detail?: string }
const ok = <A>(value: A): Parsed<A> => ({ ok: true, value })
const bad = (detail?: string): Parsed<never> => (detail === undefined ? { ok: false } : { ok: false, detail })

const parseSeed = (text: string): Parsed<Seed> => {
  const m = /^(?:\[([^\]]+)\]|([^:\s]+)):(\d+)$/.exec(text.trim())
  const port = m === null ? NaN : Number(m[3])
  if (m === null || !Number.isInteger(port) || port < 1 || port > 65535) {
    return bad(`${JSON.stringify(text.trim())} is not HOST:PORT with a port from 1 to 65535`)
  }
  return ok({ host: (m[1] ?? m[2])!, port })
}

const parseSeeds = (raw: unknown): Parsed<ReadonlyArray<Seed>> => {
  if (!Predicate.isString(raw) && !Array.isArray(raw)) return bad()
  const items: ReadonlyArray<unknown> = Predicate.isString(raw) ? raw.split(",").filter((s) => s.trim() !== "") : raw
  const seeds: Array<Seed> = []
  for (const item of items) {
    if (Predicate.isString(item)) {
      const s = parseSeed(item)
      if (!s.ok) return s
      seeds.push(s.value)
    } else if (Predicate.isObject(item) && Predicate.isString(item.host) && item.host !== "" && Predicate.isNumber(item.port)) {
      const port = item.port
      if (!Number.isInteger(port) || port < 1 || port > 65535) return bad(`${JSON.stringify(item)} has no port from 1 to 65535`)
      seeds.push({ host: item.host, port })
    } else {
      return bad(`${clip(JSON.stringify(item) ?? String(item))} is neither "HOST:PORT" nor {"host": ..., "port": ...}`)
    }
  }
  return ok(seeds)
}

const TRUE_WORDS = ["true", "1", "yes", "on"]
const FALSE_WORDS = ["false", "0", "no", "off"]

/** Parses one value; `textual` for command-line and environment text, otherwise a JSON value. */
const parseValue = (kind: Kind, raw: unknown, textual: boolean): Parsed<unknown> => {
  switch (kind.type) {
    case "int": {
      const v = textual && Predicate.isString(raw) ? (/^[+-]?\d+$/.test(raw.trim()) ? Number(raw.trim()) : NaN) : raw
      return Predicate.isNumber(v) && Number.isInteger(v) && v >= kind.min && v <= kind.max ? ok(v) : bad()
    }
    case "ratio": {
      const v = textual && Predicate.isString(raw) && raw.trim() !== "" ? Number(raw.trim()) : raw
      return Predicate.isNumber(v) && Number.isFinite(v) && v > 0 && v <= 1 ? ok(v) : bad()
    }
    case "text":
      return Predicate.isString(raw) && kind.pattern.test(raw) ? ok(raw) : bad()
    case "literal":
      return Predicate.isString(raw) && kind.values.includes(raw) ? ok(raw) : bad()
    case "boolean": {
      if (Predicate.isBoolean(raw)) return ok(raw)
      if (!textual || !Predicate.isString(raw)) return bad()
      const word = raw.trim().toLowerCase()
      return TRUE_WORDS.includes(word) ? ok(true) : FALSE_WORDS.includes(word) ? ok(false) : bad()
    }
    case "seeds":
      return parseSeeds(raw)
    case "window":
      return parseWindow(raw)
  }
}

/** `"22-6"`, `"always"` (or null in a config file: any hour), or `{"from": 22, "to": 6}` in a config file. */
const parseWindow = (raw: unknown): Parsed<HourWindow | null> => {
  if (raw === null || (Predicate.isString(raw) && raw.trim().toLowerCase() === "always")) return ok(null)
  let from: unknown
  let to: unknown
  if (Predicate.isString(raw)) {
    const m = /^\s*(\d{1,2})\s*-\s*(\d{1,2})\s*$/.exec(raw)
    if (m === null) return bad()
    from = Number(m[1])
    to = Number(m[2])
  } else if (Predicate.isObject(raw)) {
    from = raw.from
    to = raw.to
  } else {
    return bad()
  }
  const hour = (h: unknown, max: number): h is number => Predicate.isNumber(h) && Number.isInteger(h) && h >= 0 && h <= max
  return hour(from, 23) && hour(to, 24) && from !== to ? ok({ from, to }) : bad()
}

// ---- resolution -------------------------------------------------------------------------

/** Where a value was found, to name it in messages. */
interface Origin {
  readonly label: string
  readonly raw: unknown
  readonly textual: boolean
}

const kebabToCamel = (s: string): string => s.replace(/-([a-z])/g, (_, c: string) => c.toUpperCase())

const fileLabel = (key: string, path: string | undefined) => `"${key}" in ${path ?? "the config file"}`

/** The file's values by canonical key, with the spelling used; reports unknown and duplicate keys. */
const readFileObject = (
  obj: Record<string, unknown>,
  known: ReadonlyArray<string>,
  prefix: string,
  path: string | undefined,
  errors: Array<string>
): Map<string, { readonly key: string; readonly raw: unknown }> => {
  const out = new Map<string, { readonly key: string; readonly raw: unknown }>()
  for (const [key, raw] of Object.entries(obj)) {
    const canonical = kebabToCamel(key)
    const shownKey = prefix + key
    if (prefix === "" && canonical === "config") {
      errors.push(`${fileLabel(shownKey, path)}: a config file cannot name another config file; remove the key`)
    } else if (!known.includes(canonical)) {
      errors.push(`unknown setting ${fileLabel(shownKey, path)}; known settings are ${known.map((k) => prefix + k).join(", ")}`)
    } else if (out.has(canonical)) {
      errors.push(`"${out.get(canonical)!.key}" and "${shownKey}" in ${path ?? "the config file"} are the same setting; keep one`)
    } else {
      out.set(canonical, { key: shownKey, raw })
    }
  }
  return out
}

/** The `--config` path given by flag or environment, if any. */
export const configPath = (sources: Pick<SettingsSources, "flags" | "env">): string | undefined => {
  const fromFlag = sources.flags?.config
  if (Predicate.isString(fromFlag) && fromFlag !== "") return fromFlag
  const fromEnv = sources.env?.[envName("config")]
  return fromEnv !== undefined && fromEnv !== "" ? fromEnv : undefined
}

/**
 * Resolves a node's settings from its sources, highest precedence first: flags, environment,
 * config file, defaults. Fails with every problem found, one clear sentence each.
 */
export const resolveSettings = (sources: SettingsSources): Result.Result<NodeSettings, ReadonlyArray<string>> => {
  const errors: Array<string> = []
  const flags = sources.flags ?? {}
  const env = sources.env ?? {}
  const path = configPath(sources)

  let fileTop = new Map<string, { readonly key: string; readonly raw: unknown }>()
  let fileCompaction = new Map<string, { readonly key: string; readonly raw: unknown }>()
  if (sources.file !== undefined) {
    if (!Predicate.isObject(sources.file)) {
      errors.push(`${path === undefined ? "the config file" : `config file ${path}`} must hold a JSON object such as {"port": 8080}; got ${typeName(sources.file)}`)
    } else {
      fileTop = readFileObject(sources.file, FILE_KEYS, "", path, errors)
      const compaction = fileTop.get("compaction")
      if (compaction !== undefined) {
        if (Predicate.isObject(compaction.raw)) {
          fileCompaction = readFileObject(compaction.raw, COMPACTION_KEYS, `${compaction.key}.`, path, errors)
        } else {
          errors.push(`${fileLabel(compaction.key, path)} must be an object such as {"deadRatio": 0.4}; got ${clip(JSON.stringify(compaction.raw) ?? "")} (${typeName(compaction.raw)})`)
        }
      }
    }
  }

  for (const key of Object.keys(flags)) {
    if (!(key in TOP_KINDS)) errors.push(`unknown flag setting "${key}"`)
  }

  const origins = new Map<FlagKey, Origin>()
  const values: Partial<Record<FlagKey, unknown>> = {}
  for (const key of Object.keys(TOP_KINDS) as ReadonlyArray<FlagKey>) {
    const meta = FLAG_BY_KEY.get(key)!
    const fromFlag = flags[key]
    const fromEnv = env[meta.env]
    const fromFile = fileTop.get(key)
    const origin: Origin | undefined = fromFlag !== undefined
      ? { label: `--${meta.flag}`, raw: Predicate.isNumber(fromFlag) ? String(fromFlag) : fromFlag, textual: true }
      : fromEnv !== undefined && fromEnv !== ""
      ? { label: meta.env, raw: fromEnv, textual: true }
      : fromFile !== undefined && key !== "config"
      ? { label: fileLabel(fromFile.key, path), raw: fromFile.raw, textual: false }
      : undefined
    if (origin === undefined) continue
    origins.set(key, origin)
    const kind = key === "r" || key === "w" ? quorumKind(values.n, origins.has("n")) : TOP_KINDS[key]
    const parsed = parseValue(kind, origin.raw, origin.textual)
    if (parsed.ok) values[key] = parsed.value
    else errors.push(`${origin.label} must be ${expectedOf(kind)}; ${parsed.detail ?? `got ${shown(origin.raw, origin.textual, kind)}`}`)
  }

  const compaction: Record<string, number> = { ...DEFAULTS.compaction }
  for (const key of COMPACTION_KEYS) {
    const fromFile = fileCompaction.get(key)
    if (fromFile === undefined) continue
    const kind = COMPACTION_KINDS[key]
    const parsed = parseValue(kind, fromFile.raw, false)
    if (parsed.ok) compaction[key] = parsed.value as number
    else errors.push(`${fileLabel(fromFile.key, path)} must be ${expectedOf(kind)}; got ${shown(fromFile.raw, false, kind)}`)
  }

  const graceFile = fileTop.get("tombstoneGrace")
  const graceMsFile = fileCompaction.get("tombstoneGraceMs")
  if (graceFile !== undefined && graceMsFile !== undefined) {
    errors.push(`"${graceFile.key}" and "${graceMsFile.key}" in ${path ?? "the config file"} are the same setting (seconds and milliseconds); keep one`)
  }
  const grace = values.tombstoneGrace as number | undefined
  if (grace !== undefined) compaction.tombstoneGraceMs = grace * 1000

  const port = (values.port as number | undefined) ?? DEFAULTS.port
  let clusterPort = values.clusterPort as number | undefined
  if (clusterPort === undefined && !origins.has("clusterPort")) {
    clusterPort = port + 1000
    if (clusterPort > 65535) {
      errors.push(`the cluster port defaults to the client port + 1000 = ${clusterPort}, above 65535; set --cluster-port`)
    }
  }
  if (clusterPort !== undefined && clusterPort === port && origins.has("clusterPort")) {
    errors.push(`${origins.get("clusterPort")!.label} must differ from the client port (${port}); got ${clusterPort}`)
  }

  if ((values.tlsCert === undefined) !== (values.tlsKey === undefined) && (origins.has("tlsCert") || origins.has("tlsKey"))) {
    errors.push(values.tlsCert === undefined ? "--tls-key needs --tls-cert (the certificate it belongs to)" : "--tls-cert needs --tls-key (its private key)")
  }
  const maxFrame = (values.maxFrameBytes as number | undefined) ?? DEFAULTS.maxFrameBytes
  const maxHello = (values.maxHelloFrameBytes as number | undefined) ?? DEFAULTS.maxHelloFrameBytes
  if (maxHello > maxFrame) errors.push(`--max-hello-frame-bytes (${maxHello}) must be at most --max-frame-bytes (${maxFrame})`)

  const nValue = (values.n as number | undefined) ?? DEFAULTS.n
  if (errors.length > 0) return Result.fail(errors)

  const id = (values.id as string | undefined) ?? `node-${port}`
  return Result.succeed({
    id,
    host: (values.host as string | undefined) ?? DEFAULTS.host,
    port,
    clusterPort: clusterPort!,
    data: (values.data as string | undefined) ?? `./data/${id}`,
    seeds: (values.seeds as ReadonlyArray<Seed> | undefined) ?? DEFAULTS.seeds,
    n: nValue,
    r: (values.r as number | undefined) ?? Math.min(DEFAULTS.r, nValue),
    w: (values.w as number | undefined) ?? Math.min(DEFAULTS.w, nValue),
    partitions: (values.partitions as number | undefined) ?? DEFAULTS.partitions,
    fsync: (values.fsync as FsyncMode | undefined) ?? DEFAULTS.fsync,
    transferConcurrency: (values.transferConcurrency as number | undefined) ?? DEFAULTS.transferConcurrency,
    transferBytesPerSecond: (values.transferBytesPerSecond as number | undefined) ?? DEFAULTS.transferBytesPerSecond,
    aaeIntervalMs: (values.aaeIntervalMs as number | undefined) ?? DEFAULTS.aaeIntervalMs,
    aaeWindow: values.aaeWindow === undefined ? DEFAULTS.aaeWindow : (values.aaeWindow as HourWindow | null),
    maxValueBytes: (values.maxValueBytes as number | undefined) ?? DEFAULTS.maxValueBytes,
    logLevel: (values.logLevel as LogLevel | undefined) ?? DEFAULTS.logLevel,
    enableFaultInjection: (values.enableFaultInjection as boolean | undefined) ?? DEFAULTS.enableFaultInjection,
    config: path,
    clusterSecretFile: values.clusterSecretFile as string | undefined,
    adminTokenFile: values.adminTokenFile as string | undefined,
    clientTokenFile: values.clientTokenFile as string | undefined,
    corsOrigin: values.corsOrigin as string | undefined,
    tlsCert: values.tlsCert as string | undefined,
    tlsKey: values.tlsKey as string | undefined,
    maxRequestsInFlight: (values.maxRequestsInFlight as number | undefined) ?? DEFAULTS.maxRequestsInFlight,
    maxInboundConnections: (values.maxInboundConnections as number | undefined) ?? DEFAULTS.maxInboundConnections,
    maxHelloFrameBytes: maxHello,
    maxFrameBytes: maxFrame,
    maxReadRepairs: (values.maxReadRepairs as number | undefined) ?? DEFAULTS.maxReadRepairs,
    compaction: compaction as unknown as CompactionSettings
  })
}

/** Parses config-file text; fails with one clear message if it is not JSON. */
export const parseConfigText = (path: string, text: string): Result.Result<unknown, ReadonlyArray<string>> => {
  try {
    return Result.succeed(JSON.parse(text) as unknown)
  } catch (e) {
    return Result.fail([`config file ${path} is not valid JSON: ${e instanceof Error ? e.message : String(e)}`])
  }
}

/** Reads and parses the config file at `path`. */
export const readConfigFile = (path: string): Result.Result<unknown, ReadonlyArray<string>> => {
  let text: string
  try {
    text = fs.readFileSync(path, "utf8")
  } catch (e) {
    const code = Predicate.isObject(e) && Predicate.isString(e.code) ? e.code : undefined
    const why = code === "ENOENT" ? "no such file" : code === "EACCES" ? "permission denied" : code === "EISDIR" ? "it is a directory" : String(e)
    return Result.fail([`cannot read config file ${path}: ${why}`])
  }
  return parseConfigText(path, text)
}

/** Resolves settings from flags and environment, reading the `--config` file they name, if any. */
export const loadSettings = (sources: Pick<SettingsSources, "flags" | "env">): Result.Result<NodeSettings, ReadonlyArray<string>> => {
  const path = configPath(sources)
  if (path === undefined) return resolveSettings(sources)
  const file = readConfigFile(path)
  return Result.isFailure(file) ? Result.fail(file.failure) : resolveSettings({ ...sources, file: file.success })
}

// ---- changes ----------------------------------------------------------------------------

/** The live part of a node's settings. */
export const liveSettings = (s: NodeSettings): LiveSettingsShape => ({
  r: s.r,
  w: s.w,
  logLevel: s.logLevel,
  maxValueBytes: s.maxValueBytes,
  transferConcurrency: s.transferConcurrency,
  transferBytesPerSecond: s.transferBytesPerSecond,
  aaeIntervalMs: s.aaeIntervalMs,
  aaeWindow: s.aaeWindow,
  compaction: {
    deadRatio: s.compaction.deadRatio,
    deadBytes: s.compaction.deadBytes,
    smallBytes: s.compaction.smallBytes,
    tombstoneGraceMs: s.compaction.tombstoneGraceMs
  }
})

/** What changed from `old` to `next`. */
export interface SettingsDiff {
  /** The live settings that changed, with their new values; empty when none did. */
  readonly live: Partial<LiveSettingsShape>
  /** The other settings that changed, by config-file name (`port`, `compaction.intervalMs`). */
  readonly restartNeeded: ReadonlyArray<string>
}

const sameValue = (a: unknown, b: unknown) => a === b || JSON.stringify(a) === JSON.stringify(b)

/** Splits the changes from `old` to `next` into a live patch and the names that need a restart. */
export const diffSettings = (old: NodeSettings, next: NodeSettings): SettingsDiff => {
  const live: { -readonly [K in keyof LiveSettingsShape]?: LiveSettingsShape[K] } = {}
  const compaction: { -readonly [K in keyof LiveCompactionSettings]?: number } = {}
  const restartNeeded: Array<string> = []
  for (const key of SETTING_KEYS) {
    if (sameValue(old[key], next[key])) continue
    if (key === "r" || key === "w" || key === "maxValueBytes" || key === "transferConcurrency" || key === "transferBytesPerSecond" || key === "aaeIntervalMs") live[key] = next[key]
    else if (key === "aaeWindow") live.aaeWindow = next.aaeWindow
    else if (key === "logLevel") live.logLevel = next.logLevel
    else restartNeeded.push(key)
  }
  for (const key of COMPACTION_KEYS) {
    if (old.compaction[key] === next.compaction[key]) continue
    if (key === "intervalMs") restartNeeded.push(`compaction.${key}`)
    else compaction[key] = next.compaction[key]
  }
  if (Object.keys(compaction).length > 0) live.compaction = compaction
  return { live, restartNeeded }
}

/** `settings` with a live patch applied. */
export const applyLivePatch = (settings: NodeSettings, patch: Partial<LiveSettingsShape>): NodeSettings => ({
  ...settings,
  ...(patch.r !== undefined ? { r: patch.r } : {}),
  ...(patch.w !== undefined ? { w: patch.w } : {}),
  ...(patch.logLevel !== undefined ? { logLevel: patch.logLevel } : {}),
  ...(patch.maxValueBytes !== undefined ? { maxValueBytes: patch.maxValueBytes } : {}),
  ...(patch.transferConcurrency !== undefined ? { transferConcurrency: patch.transferConcurrency } : {}),
  ...(patch.transferBytesPerSecond !== undefined ? { transferBytesPerSecond: patch.transferBytesPerSecond } : {}),
  ...(patch.aaeIntervalMs !== undefined ? { aaeIntervalMs: patch.aaeIntervalMs } : {}),
  ...(patch.aaeWindow !== undefined ? { aaeWindow: patch.aaeWindow } : {}),
  compaction: { ...settings.compaction, ...patch.compaction }
})

/** Whether a message at `level` is shown when the node logs at `current`. */
export const shouldLog = (current: LogLevel, level: Exclude<LogLevel, "silent">): boolean =>
  current !== "silent" && LOG_LEVELS.indexOf(level) <= LOG_LEVELS.indexOf(current)
