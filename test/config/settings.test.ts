import * as fs from "node:fs"
import * as os from "node:os"
import * as path from "node:path"
import { Result } from "effect"
import t from "tap"
import {
  applyLivePatch,
  DEFAULTS,
  diffSettings,
  envName,
  LIVE_SETTINGS,
  loadSettings,
  NODE_FLAGS,
  resolveSettings,
  shouldLog,
  type NodeSettings,
  type SettingsSources
} from "../../src/config/Settings.ts"

const ok = (sources: SettingsSources): NodeSettings => {
  const r = resolveSettings(sources)
  if (Result.isFailure(r)) throw new Error(`expected valid settings, got: ${r.failure.join(" | ")}`)
  return r.success
}

const errorsOf = (sources: SettingsSources): ReadonlyArray<string> => {
  const r = resolveSettings(sources)
  if (Result.isSuccess(r)) throw new Error(`expected errors, got ${JSON.stringify(r.success)}`)
  return r.failure
}

t.test("defaults", async (t) => {
  t.same(ok({}), {
    id: "node-8080",
    host: "127.0.0.1",
    port: 8080,
    clusterPort: 9080,
    data: "./data/node-8080",
    seeds: [],
    n: 3,
    r: 2,
    w: 2,
    partitions: 64,
    fsync: "batch",
    maxValueBytes: 1048576,
    logLevel: "info",
    enableFaultInjection: false,
    config: undefined,
    transferConcurrency: 2,
    transferBytesPerSecond: 0,
    aaeIntervalMs: 1000,
    aaeWindow: null,
    maxRequestsInFlight: 1024,
    maxInboundConnections: 512,
    maxHelloFrameBytes: 65536,
    maxFrameBytes: 67108864,
    maxReadRepairs: 256,
    compaction: { deadRatio: 0.4, deadBytes: 32 * 1024 * 1024, smallBytes: 4 * 1024 * 1024, intervalMs: 30000, tombstoneGraceMs: 86400000 }
  })
  const s = ok({ flags: { port: "8081" } })
  t.equal(s.id, "node-8081", "id follows the port")
  t.equal(s.clusterPort, 9081, "cluster port is port + 1000")
  t.equal(s.data, "./data/node-8081", "data follows the id")
  t.equal(ok({ flags: { id: "alpha" } }).data, "./data/alpha")
  const one = ok({ flags: { n: "1" } })
  t.equal(one.r, 1, "default r is capped by n")
  t.equal(one.w, 1, "default w is capped by n")
})

t.test("precedence: flags > env > file > defaults", async (t) => {
  const file = { port: 7000, w: 1, r: 1, host: "10.0.0.1", logLevel: "debug" }
  const env = { TALLY_PORT: "7001", TALLY_W: "3", TALLY_HOST: "10.0.0.2" }
  const flags = { port: "7002" }
  const s = ok({ flags, env, file })
  t.equal(s.port, 7002, "flag beats env and file")
  t.equal(s.w, 3, "env beats file")
  t.equal(s.host, "10.0.0.2", "env beats file")
  t.equal(s.r, 1, "file beats default")
  t.equal(s.logLevel, "debug", "file beats default")
  t.equal(s.fsync, "batch", "default when nobody sets it")
  t.equal(ok({ env, file }).port, 7001)
  t.equal(ok({ file }).port, 7000)
  t.equal(ok({ env: { TALLY_PORT: "" }, file }).port, 7000, "an empty variable counts as unset")
})

t.test("every flag has its TALLY_ variable", async (t) => {
  t.equal(envName("cluster-port"), "TALLY_CLUSTER_PORT")
  t.equal(envName("max-value-bytes"), "TALLY_MAX_VALUE_BYTES")
  const s = ok({
    env: {
      TALLY_ID: "x.1",
      TALLY_HOST: "0.0.0.0",
      TALLY_PORT: "9000",
      TALLY_CLUSTER_PORT: "9500",
      TALLY_DATA: "/tmp/d",
      TALLY_SEEDS: "a:1, [::1]:2",
      TALLY_N: "5",
      TALLY_R: "3",
      TALLY_W: "4",
      TALLY_PARTITIONS: "128",
      TALLY_FSYNC: "always",
      TALLY_MAX_VALUE_BYTES: "100",
      TALLY_LOG_LEVEL: "warn",
      TALLY_ENABLE_FAULT_INJECTION: "true",
      TALLY_TRANSFER_CONCURRENCY: "3",
      TALLY_TRANSFER_RATE: "1000000",
      TALLY_AAE_INTERVAL: "250",
      TALLY_AAE_WINDOW: "22-6",
      TALLY_TOMBSTONE_GRACE: "60",
      TALLY_CONFIG: undefined
    }
  })
  t.same(
    { ...s, compaction: undefined },
    {
      id: "x.1",
      host: "0.0.0.0",
      port: 9000,
      clusterPort: 9500,
      data: "/tmp/d",
      seeds: [{ host: "a", port: 1 }, { host: "::1", port: 2 }],
      n: 5,
      r: 3,
      w: 4,
      partitions: 128,
      fsync: "always",
      maxValueBytes: 100,
      logLevel: "warn",
      enableFaultInjection: true,
      config: undefined,
      transferConcurrency: 3,
      transferBytesPerSecond: 1000000,
      aaeIntervalMs: 250,
      aaeWindow: { from: 22, to: 6 },
      maxRequestsInFlight: 1024,
      maxInboundConnections: 512,
      maxHelloFrameBytes: 65536,
      maxFrameBytes: 67108864,
      maxReadRepairs: 256,
      compaction: undefined
    }
  )
  t.equal(s.compaction.tombstoneGraceMs, 60_000, "TALLY_TOMBSTONE_GRACE is seconds")
  for (const f of NODE_FLAGS) t.equal(f.env, envName(f.flag), `${f.flag} -> ${f.env}`)
  t.equal(ok({ env: { TALLY_ENABLE_FAULT_INJECTION: "0" } }).enableFaultInjection, false)
  t.equal(ok({ flags: { enableFaultInjection: false }, env: { TALLY_ENABLE_FAULT_INJECTION: "yes" } }).enableFaultInjection, false, "--no-flag beats env")
})

t.test("config file: camelCase and flag spellings, nested compaction, seeds forms", async (t) => {
  const s = ok({
    flags: { config: "tally.json" },
    file: {
      "max-value-bytes": 100,
      clusterPort: 9999,
      "log-level": "trace",
      enableFaultInjection: true,
      seeds: ["h:1", { host: "g", port: 2 }],
      compaction: { deadRatio: 0.5, "dead-bytes": 10, intervalMs: 0 }
    }
  })
  t.equal(s.maxValueBytes, 100)
  t.equal(s.clusterPort, 9999)
  t.equal(s.logLevel, "trace")
  t.equal(s.enableFaultInjection, true)
  t.equal(s.config, "tally.json")
  t.same(s.seeds, [{ host: "h", port: 1 }, { host: "g", port: 2 }])
  t.same(s.compaction, { ...DEFAULTS.compaction, deadRatio: 0.5, deadBytes: 10, intervalMs: 0 })
  t.same(ok({ file: { seeds: "a:1,b:2" } }).seeds, [{ host: "a", port: 1 }, { host: "b", port: 2 }])
})

t.test("validation errors name the source and what is expected", async (t) => {
  t.same(errorsOf({ flags: { w: "5" } }), ["--w must be an integer from 1 to n (3); got 5"])
  t.same(errorsOf({ flags: { r: "4", n: "3" } }), ["--r must be an integer from 1 to n (3); got 4"])
  t.same(errorsOf({ env: { TALLY_R: "0" } }), ["TALLY_R must be an integer from 1 to n (3); got 0"])
  t.same(errorsOf({ flags: { n: "5" }, env: { TALLY_W: "6" } }), ["TALLY_W must be an integer from 1 to n (5); got 6"])
  t.same(errorsOf({ flags: { n: "0" } }), ["--n must be an integer from 1 to 64; got 0"], "r and w are not blamed for a bad n")
  t.same(errorsOf({ flags: { port: "abc" } }), ["--port must be an integer from 1 to 65535; got abc"])
  t.same(errorsOf({ flags: { port: "70000" } }), ["--port must be an integer from 1 to 65535; got 70000"])
  t.same(errorsOf({ flags: { port: "1.5" } }), ["--port must be an integer from 1 to 65535; got 1.5"])
  t.same(errorsOf({ flags: { port: "" } }), ['--port must be an integer from 1 to 65535; got ""'])
  t.same(errorsOf({ flags: { partitions: "5000" } }), ["--partitions must be an integer from 1 to 4096; got 5000"])
  t.same(errorsOf({ flags: { partitions: "0" } }), ["--partitions must be an integer from 1 to 4096; got 0"])
  t.same(errorsOf({ flags: { id: "a b" } }), ['--id must be 1 to 64 characters from A-Z, a-z, 0-9, "_", "." and "-", other than "." and ".."; got "a b"'])
  t.match(errorsOf({ flags: { id: "x".repeat(65) } })[0], /^--id must be 1 to 64 characters/)
  t.same(errorsOf({ flags: { fsync: "sometimes" } }), ["--fsync must be one of always, batch, never; got sometimes"])
  t.same(errorsOf({ env: { TALLY_LOG_LEVEL: "loud" } }), ["TALLY_LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent; got loud"])
  t.same(errorsOf({ env: { TALLY_ENABLE_FAULT_INJECTION: "maybe" } }), ["TALLY_ENABLE_FAULT_INJECTION must be true or false; got maybe"])
  t.same(errorsOf({ flags: { seeds: "a:1,b" } }), ['--seeds must be a comma-separated list of HOST:PORT; "b" is not HOST:PORT with a port from 1 to 65535'])
  t.same(errorsOf({ flags: { seeds: "a:0" } }), ['--seeds must be a comma-separated list of HOST:PORT; "a:0" is not HOST:PORT with a port from 1 to 65535'])
  t.same(errorsOf({ flags: { maxValueBytes: "0" } }), ["--max-value-bytes must be an integer from 1 to 268435456; got 0"])
  t.same(errorsOf({ flags: { port: "65000" } }), ["the cluster port defaults to the client port + 1000 = 66000, above 65535; set --cluster-port"])
  t.same(errorsOf({ flags: { port: "9000", clusterPort: "9000" } }), ["--cluster-port must differ from the client port (9000); got 9000"])
  t.equal(errorsOf({ flags: { port: "x", w: "9", fsync: "no" } }).length, 3, "every problem is reported at once")
})

t.test("config file errors: unknown keys, wrong types, bad shapes", async (t) => {
  const flags = { config: "t.json" }
  t.same(errorsOf({ flags, file: { prot: 1 } }), [
    'unknown setting "prot" in t.json; known settings are id, host, port, clusterPort, data, seeds, n, r, w, partitions, fsync, maxValueBytes, logLevel, enableFaultInjection, transferConcurrency, transferBytesPerSecond, aaeIntervalMs, aaeWindow, tombstoneGrace, clusterSecretFile, adminTokenFile, clientTokenFile, corsOrigin, tlsCert, tlsKey, maxRequestsInFlight, maxInboundConnections, maxHelloFrameBytes, maxFrameBytes, maxReadRepairs, compaction'
  ])
  t.same(errorsOf({ flags, file: { port: "8080" } }), ['"port" in t.json must be an integer from 1 to 65535; got "8080" (a string)'])
  t.same(errorsOf({ flags, file: { w: 5 } }), ['"w" in t.json must be an integer from 1 to n (3); got 5'])
  t.same(errorsOf({ flags, file: { "max-value-bytes": true } }), ['"max-value-bytes" in t.json must be an integer from 1 to 268435456; got true (a boolean)'])
  t.same(errorsOf({ flags, file: { enableFaultInjection: "true" } }), ['"enableFaultInjection" in t.json must be true or false; got "true" (a string)'])
  t.same(errorsOf({ flags, file: { fsync: 1 } }), ['"fsync" in t.json must be one of always, batch, never; got 1 (a number)'])
  t.same(errorsOf({ flags, file: { seeds: [1] } }), ['"seeds" in t.json must be a comma-separated list of HOST:PORT; 1 is neither "HOST:PORT" nor {"host": ..., "port": ...}'])
  t.same(errorsOf({ flags, file: { compaction: 5 } }), ['"compaction" in t.json must be an object such as {"deadRatio": 0.4}; got 5 (a number)'])
  t.same(errorsOf({ flags, file: { compaction: { deadRatio: 0 } } }), ['"compaction.deadRatio" in t.json must be a number above 0 and at most 1; got 0'])
  t.same(errorsOf({ flags, file: { compaction: { deadBytes: -1 } } }), ['"compaction.deadBytes" in t.json must be a non-negative integer; got -1'])
  t.same(errorsOf({ flags, file: { compaction: { ratio: 1 } } }), [
    'unknown setting "compaction.ratio" in t.json; known settings are compaction.deadRatio, compaction.deadBytes, compaction.smallBytes, compaction.intervalMs, compaction.tombstoneGraceMs'
  ])
  t.same(errorsOf({ flags, file: { maxValueBytes: 1, "max-value-bytes": 2 } }), ['"maxValueBytes" and "max-value-bytes" in t.json are the same setting; keep one'])
  t.same(errorsOf({ flags, file: { config: "other.json" } }), ['"config" in t.json: a config file cannot name another config file; remove the key'])
  t.same(errorsOf({ flags, file: [1] }), ['config file t.json must hold a JSON object such as {"port": 8080}; got an array'])
  t.same(errorsOf({ file: "x" }), ['the config file must hold a JSON object such as {"port": 8080}; got a string'])
  t.same(errorsOf({ flags: { config: "t.json", w: "9" }, file: { n: 5 } }), ["--w must be an integer from 1 to n (5); got 9"], "n from the file bounds w from a flag")
})

t.test("loadSettings reads the --config file named by flag or environment", async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "tally-settings-"))
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }))
  const file = path.join(dir, "tally.json")
  fs.writeFileSync(file, JSON.stringify({ port: 8100, maxValueBytes: 100, compaction: { deadRatio: 0.5 } }))
  const byFlag = loadSettings({ flags: { config: file } })
  t.ok(Result.isSuccess(byFlag))
  if (Result.isSuccess(byFlag)) {
    t.equal(byFlag.success.port, 8100)
    t.equal(byFlag.success.maxValueBytes, 100)
    t.equal(byFlag.success.compaction.deadRatio, 0.5)
    t.equal(byFlag.success.config, file)
  }
  const byEnv = loadSettings({ env: { TALLY_CONFIG: file, TALLY_PORT: "8200" } })
  t.ok(Result.isSuccess(byEnv) && byEnv.success.port === 8200 && byEnv.success.maxValueBytes === 100)

  const missing = loadSettings({ flags: { config: path.join(dir, "nope.json") } })
  t.same(Result.isFailure(missing) && missing.failure, [`cannot read config file ${path.join(dir, "nope.json")}: no such file`])
  fs.writeFileSync(file, "{ port: 1 ")
  const broken = loadSettings({ flags: { config: file } })
  t.ok(Result.isFailure(broken))
  if (Result.isFailure(broken)) t.match(broken.failure[0], new RegExp(`^config file ${file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")} is not valid JSON: `))
})

t.test("diffSettings separates live changes from those needing a restart", async (t) => {
  const old = ok({})
  t.same(diffSettings(old, old), { live: {}, restartNeeded: [] })
  const next = ok({
    flags: { w: "3", r: "1", port: "8090", clusterPort: "9080", logLevel: "debug", seeds: "a:1", fsync: "always" },
    file: { maxValueBytes: 5, compaction: { deadRatio: 0.9, intervalMs: 5, tombstoneGraceMs: 7 } }
  })
  const d = diffSettings(old, next)
  t.same(d.live, { r: 1, w: 3, maxValueBytes: 5, logLevel: "debug", compaction: { deadRatio: 0.9, tombstoneGraceMs: 7 } })
  t.same(d.restartNeeded, ["id", "port", "data", "seeds", "fsync", "compaction.intervalMs"])
  for (const v of Object.values(d.live.compaction ?? {})) t.not(v, undefined, "no undefined keys in a patch")
  t.same(applyLivePatch(old, d.live), { ...old, r: 1, w: 3, maxValueBytes: 5, logLevel: "debug", compaction: { ...old.compaction, deadRatio: 0.9, tombstoneGraceMs: 7 } })
  t.same(LIVE_SETTINGS, ["r", "w", "logLevel", "maxValueBytes", "transferConcurrency", "transferBytesPerSecond", "aaeIntervalMs", "aaeWindow", "tombstoneGrace", "compaction.deadRatio", "compaction.deadBytes", "compaction.smallBytes", "compaction.tombstoneGraceMs"])
})

t.test("--tombstone-grace is seconds, sets compaction.tombstoneGraceMs, and changes live", async (t) => {
  const flag = NODE_FLAGS.find((f) => f.key === "tombstoneGrace")
  t.same(flag && { flag: flag.flag, env: flag.env, metavar: flag.metavar, default: flag.default }, { flag: "tombstone-grace", env: "TALLY_TOMBSTONE_GRACE", metavar: "S", default: "86400" })
  t.equal(ok({}).compaction.tombstoneGraceMs, 86_400_000, "default 86400 s")
  t.equal(ok({ flags: { tombstoneGrace: "1" } }).compaction.tombstoneGraceMs, 1000)
  t.equal(ok({ flags: { tombstoneGrace: "0" } }).compaction.tombstoneGraceMs, 0)
  t.equal(ok({ file: { tombstoneGrace: 30 } }).compaction.tombstoneGraceMs, 30_000, "top-level file key, in seconds")
  t.equal(ok({ file: { "tombstone-grace": 30 } }).compaction.tombstoneGraceMs, 30_000, "in the flag's spelling")
  t.equal(ok({ file: { compaction: { tombstoneGraceMs: 1500 } } }).compaction.tombstoneGraceMs, 1500, "the file's milliseconds")
  t.equal(ok({ flags: { tombstoneGrace: "2" }, file: { compaction: { tombstoneGraceMs: 1500 } } }).compaction.tombstoneGraceMs, 2000, "the flag beats the file")
  t.equal(ok({ env: { TALLY_TOMBSTONE_GRACE: "3" }, file: { tombstoneGrace: 4 } }).compaction.tombstoneGraceMs, 3000, "the environment beats the file")
  t.notOk("tombstoneGrace" in ok({ flags: { tombstoneGrace: "2" } }), "not a setting of its own")
  t.same(errorsOf({ flags: { tombstoneGrace: "-1" } }), ["--tombstone-grace must be an integer from 0 to 9007199254740; got -1"])
  t.same(errorsOf({ flags: { tombstoneGrace: "1.5" } }), ["--tombstone-grace must be an integer from 0 to 9007199254740; got 1.5"])
  t.same(errorsOf({ flags: { config: "t.json" }, file: { tombstoneGrace: 1, compaction: { tombstoneGraceMs: 1000 } } }), [
    '"tombstoneGrace" and "compaction.tombstoneGraceMs" in t.json are the same setting (seconds and milliseconds); keep one'
  ])
  const old = ok({ flags: { config: "t.json" }, file: { tombstoneGrace: 10 } })
  const next = ok({ flags: { config: "t.json" }, file: { tombstoneGrace: 20 } })
  t.same(diffSettings(old, next), { live: { compaction: { tombstoneGraceMs: 20_000 } }, restartNeeded: [] }, "a changed file applies live")
  const pinned = ok({ flags: { config: "t.json", tombstoneGrace: "5" }, file: { tombstoneGrace: 10 } })
  t.same(diffSettings(pinned, ok({ flags: { config: "t.json", tombstoneGrace: "5" }, file: { tombstoneGrace: 20 } })), { live: {}, restartNeeded: [] }, "the flag still wins")
})

t.test("--aae-window is UTC hours FROM-TO, or always, and changes live", async (t) => {
  t.same(ok({ flags: { aaeWindow: "22-6" } }).aaeWindow, { from: 22, to: 6 }, "wrapping midnight")
  t.same(ok({ flags: { aaeWindow: " 1 - 5 " } }).aaeWindow, { from: 1, to: 5 })
  t.same(ok({ flags: { aaeWindow: "0-24" } }).aaeWindow, { from: 0, to: 24 })
  t.equal(ok({ flags: { aaeWindow: "always" } }).aaeWindow, null)
  t.same(ok({ file: { aaeWindow: { from: 3, to: 4 } } }).aaeWindow, { from: 3, to: 4 }, "an object in the file")
  t.equal(ok({ file: { aaeWindow: null } }).aaeWindow, null, "null in the file: any hour")
  const expected = 'must be UTC hours FROM-TO (FROM 0 to 23, TO 0 to 24, not equal), such as "22-6", or "always"'
  t.same(errorsOf({ flags: { aaeWindow: "5-5" } }), [`--aae-window ${expected}; got 5-5`])
  t.same(errorsOf({ flags: { aaeWindow: "24-2" } }), [`--aae-window ${expected}; got 24-2`])
  t.same(errorsOf({ env: { TALLY_AAE_WINDOW: "night" } }), [`TALLY_AAE_WINDOW ${expected}; got night`])
  t.same(errorsOf({ flags: { config: "t.json" }, file: { aaeWindow: 5 } }), [`"aaeWindow" in t.json ${expected}; got 5`])
  const old = ok({ file: { aaeWindow: "1-2" } })
  t.same(diffSettings(old, ok({ file: { aaeWindow: "always" } })), { live: { aaeWindow: null }, restartNeeded: [] })
  t.same(diffSettings(ok({}), old), { live: { aaeWindow: { from: 1, to: 2 } }, restartNeeded: [] })
  t.same(applyLivePatch(old, { aaeWindow: null }).aaeWindow, null)
})

t.test("shouldLog filters by level", async (t) => {
  t.ok(shouldLog("info", "warn"))
  t.ok(shouldLog("info", "info"))
  t.notOk(shouldLog("info", "debug"))
  t.notOk(shouldLog("silent", "fatal"))
  t.ok(shouldLog("trace", "debug"))
})

t.test("--cluster-secret-file: none by default; flag, TALLY_CLUSTER_SECRET_FILE or file key; a restart to change", async (t) => {
  t.equal(ok({}).clusterSecretFile, undefined, "no secret by default: plain TCP")
  const f = NODE_FLAGS.find((x) => x.key === "clusterSecretFile")!
  t.equal(f.flag, "cluster-secret-file")
  t.equal(f.env, "TALLY_CLUSTER_SECRET_FILE")
  t.equal(f.metavar, "FILE")
  t.equal(ok({ flags: { clusterSecretFile: "/etc/tally/secret" } }).clusterSecretFile, "/etc/tally/secret")
  t.equal(ok({ env: { TALLY_CLUSTER_SECRET_FILE: "/s" } }).clusterSecretFile, "/s")
  t.equal(ok({ flags: { config: "t.json" }, file: { "cluster-secret-file": "/f" } }).clusterSecretFile, "/f")
  t.same(errorsOf({ flags: { clusterSecretFile: " " } }), ['--cluster-secret-file must be a file path; got " "'])
  t.same(diffSettings(ok({}), ok({ flags: { clusterSecretFile: "/s" } })), { live: {}, restartNeeded: ["clusterSecretFile"] })
  t.same(errorsOf({ flags: { tlsCert: "/c" } }), ["--tls-cert needs --tls-key (its private key)"])
  t.same(errorsOf({ flags: { tlsKey: "/k" } }), ["--tls-key needs --tls-cert (the certificate it belongs to)"])
  t.same(errorsOf({ flags: { maxHelloFrameBytes: "2000000", maxFrameBytes: "1048576" } }), ["--max-hello-frame-bytes (2000000) must be at most --max-frame-bytes (1048576)"])
})

t.test("a node id of . or .. is refused: it names directories", async (t) => {
  for (const id of [".", ".."]) {
    const r = resolveSettings({ flags: { id }, env: {} })
    t.ok(Result.isFailure(r), `--id ${id} refused`)
  }
  t.ok(Result.isSuccess(resolveSettings({ flags: { id: "a..b" }, env: {} })), "dots inside an id are fine")
})
