/**
 * The long fuzz run of the internode frame parser (issue 10: at least 1M inputs). Each
 * generated case (fuzz/frameInputs.ts) is checked, then mutated (bit flips, byte
 * overwrites, cuts, re-chunking) and checked again. Prints figures, then one JSON line last.
 *
 *     npm run fuzz -- [--inputs 1000000] [--seed N] [--mutations 9]
 */
import fc from "fast-check"
import { parseArgs } from "node:util"
import { FUZZ_MAX, anyCase, checkCase, type Case } from "./frameInputs.ts"

const { values } = parseArgs({ options: { inputs: { type: "string", default: "1000000" }, seed: { type: "string" }, mutations: { type: "string", default: "9" } } })
const target = Number(values.inputs)
const seed = values.seed === undefined ? Date.now() % 2 ** 31 : Number(values.seed)
const mutations = Number(values.mutations)

let state = seed >>> 0 || 1
const rand = (n: number): number => {
  state ^= state << 13
  state ^= state >>> 17
  state ^= state << 5
  return (state >>> 0) % n
}

const mutate = (c: Case): Case => {
  const bytes = Buffer.from(Buffer.concat(c.chunks))
  const edits = 1 + rand(4)
  for (let i = 0; i < edits && bytes.length > 0; i++) {
    const at = rand(bytes.length)
    switch (rand(3)) {
      case 0: bytes[at] = bytes[at]! ^ (1 << rand(8)); break
      case 1: bytes[at] = rand(256); break
      default: bytes.writeUInt8([0x00, 0xff, 0xc1, 0xdb, 0xdd, 0xdf, 0xc6, 0xc9][rand(8)]!, at)
    }
  }
  const end = rand(4) === 0 ? rand(bytes.length + 1) : bytes.length
  const chunks: Uint8Array[] = []
  for (let at = 0; at < end;) {
    const n = Math.min(end - at, rand(3) === 0 ? 1 + rand(8) : 1 + rand(end))
    chunks.push(bytes.subarray(at, at + n))
    at += n
  }
  return { family: `mutated-${c.family}`, chunks, expect: { kind: "any" } }
}

const families = new Map<string, number>()
const failures: Array<{ family: string; problem: string; hex: string }> = []
let inputs = 0
let bytes = 0
let peakRss = 0
const started = performance.now()
let lastReport = started
const check = (c: Case) => {
  inputs++
  families.set(c.family, (families.get(c.family) ?? 0) + 1)
  for (const ch of c.chunks) bytes += ch.length
  const problem = checkCase(c)
  if (problem !== undefined && failures.length < 20) failures.push({ family: c.family, problem, hex: Buffer.concat(c.chunks).toString("hex").slice(0, 400) })
}

console.log(`fuzzing the frame parser: ${target} inputs, seed ${seed}, limit ${FUZZ_MAX} bytes, ${mutations} mutations per generated case`)
const mrng = fc.sample(anyCase, { numRuns: 1, seed }) // warm the arbitraries
void mrng
for (let batch = 0; inputs < target; batch++) {
  for (const c of fc.sample(anyCase, { numRuns: 1000, seed: seed + batch })) {
    check(c)
    for (let m = 0; m < mutations && inputs < target; m++) check(mutate(c))
    if (inputs >= target) break
  }
  peakRss = Math.max(peakRss, process.memoryUsage().rss)
  const now = performance.now()
  if (now - lastReport > 10_000) {
    lastReport = now
    console.log(`  ${inputs} inputs, ${Math.round(inputs / ((now - started) / 1000))}/s, ${failures.length} failures, rss ${Math.round(peakRss / 2 ** 20)} MiB`)
  }
}
const seconds = (performance.now() - started) / 1000
console.log(`inputs by family:`)
for (const [f, n] of [...families].sort()) console.log(`  ${f.padEnd(28)} ${n}`)
console.log(`${inputs} inputs (${(bytes / 2 ** 20).toFixed(1)} MiB) in ${seconds.toFixed(1)} s, ${Math.round(inputs / seconds)}/s; peak rss ${Math.round(peakRss / 2 ** 20)} MiB; ${failures.length} failures`)
for (const f of failures) console.log(`FAIL ${f.family}: ${f.problem}\n  bytes ${f.hex}`)
console.log(JSON.stringify({ inputs, seed, seconds: Math.round(seconds * 10) / 10, perSecond: Math.round(inputs / seconds), bytes, peakRssMiB: Math.round(peakRss / 2 ** 20), failures: failures.length, families: Object.fromEntries([...families].sort()) }))
process.exitCode = failures.length === 0 ? 0 : 1
