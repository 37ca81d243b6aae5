import * as fs from "node:fs"
import t from "tap"
import { errorCodes } from "../../src/Errors.ts"

const doc = fs.readFileSync(new URL("../../docs/api.md", import.meta.url), "utf8")
const contract = fs.readFileSync(new URL("../../../shared/CONTRACT.md", import.meta.url), "utf8")

t.test("docs/api.md lists every error code with its status, and nothing else", async (t) => {
  const rows = [...doc.matchAll(/^\| (\d{3}) \| `([a-z_]+)` \|/gm)].map((m) => [m[2]!, Number(m[1])] as const)
  t.same(new Map(rows), new Map(Object.entries(errorCodes).map(([code, e]) => [code, e.status])))
})

t.test("every error code in CONTRACT.md exists with the status it states", async (t) => {
  for (const m of contract.matchAll(/`(\d{3}) ([a-z_]+)`/g)) {
    const code = m[2] as keyof typeof errorCodes
    t.ok(code in errorCodes, `${code} is defined`)
    t.equal(errorCodes[code]?.status, Number(m[1]), `${code} is ${m[1]}`)
  }
})
