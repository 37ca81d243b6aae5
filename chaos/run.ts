/**
 * npm run chaos -- --seconds 60 --nodes 5 [--seed S] [--clients C] [--keys K]: a chaos run
 * against real processes. Progress on stderr; one JSON line last on stdout; exits 1 when an
 * acknowledged element was lost or an unexpected one appeared.
 */
import { cleanupHooks, runChaos } from "./Chaos.ts"

const arg = (name: string, dflt: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : dflt
}

const seed = arg("seed", Math.floor(Math.random() * 2 ** 31))
process.on("SIGINT", () => {
  process.stderr.write("SIGINT: killing the nodes\n")
  void Promise.all([...cleanupHooks].map((f) => f())).finally(() => process.exit(130))
})
const r = await runChaos({ seconds: arg("seconds", 60), nodes: arg("nodes", 5), seed, clients: arg("clients", 8), keys: arg("keys", 12), convergeSeconds: arg("converge-seconds", 90) })
const { nemesisLog: _log, lostElements, unexpectedElements, ...summary } = r
if (lostElements.length > 0) process.stderr.write(`LOST: ${JSON.stringify(lostElements)}\n`)
if (unexpectedElements.length > 0) process.stderr.write(`UNEXPECTED: ${JSON.stringify(unexpectedElements)}\n`)
process.stderr.write(`replay: npm run chaos -- --seconds ${arg("seconds", 60)} --nodes ${arg("nodes", 5)} --seed ${seed}\n`)
process.stdout.write(`${JSON.stringify(summary)}\n`)
process.exit(r.lost > 0 || r.unexpected > 0 ? 1 : 0)
