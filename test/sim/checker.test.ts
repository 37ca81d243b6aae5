import t from "tap"
import { checkSets, elementsOf, type SetHistory } from "../../chaos/Checker.ts"
import * as Dvv from "../../src/versions/Dvv.ts"

const history = (over: Partial<SetHistory>): SetHistory => ({ writes: [], deletes: [], reads: [], finalReads: new Map(), finalVersions: new Map(), ...over })

t.test("an acknowledged element a delete had read may be gone; one no delete read is lost", async (t) => {
  const v = checkSets(history({
    writes: [{ key: "a", element: "x", acked: true }, { key: "a", element: "y", acked: true }],
    deletes: [{ key: "a", read: ["x"], context: Dvv.encodeContext(new Map([["n1@1", 1]])), acked: false }],
    finalReads: new Map([["a", []]])
  }))
  t.same(v.lost, [{ key: "a", element: "y" }])
  t.equal(v.covered, 1)
})

t.test("a read of an element nobody wrote is reported, once", async (t) => {
  const v = checkSets(history({
    writes: [{ key: "a", element: "x", acked: true }],
    reads: [{ key: "a", elements: ["x", "ghost"] }, { key: "a", elements: ["ghost"] }, { key: "b", elements: ["x"] }],
    finalReads: new Map([["a", ["x"]]])
  }))
  t.same(v.unexpectedReads, [{ key: "a", element: "ghost" }, { key: "b", element: "x" }])
})

t.test("a live version an acknowledged delete's context covers is a resurrection; a concurrent one is not", async (t) => {
  const context = Dvv.encodeContext(new Map([["n1@a", 2]]))
  const v = checkSets(history({
    writes: [{ key: "a", element: "x", acked: true }],
    deletes: [{ key: "a", read: ["x"], context, acked: true }, { key: "a", read: [], context: Dvv.encodeContext(new Map([["n2@b", 9]])), acked: false }],
    finalReads: new Map([["a", ["x", "z"]]]),
    finalVersions: new Map([["a", [{ dot: "n1@a:2", elements: ["x"] }, { dot: "n1@a:3", elements: ["z"] }, { dot: "n2@b:1", elements: ["z"] }]]])
  }))
  t.same(v.resurrected, [{ key: "a", dot: "n1@a:2" }], "only the covered dot of the acknowledged delete")
  t.equal(v.deletesAcked, 1)
})

t.test("elementsOf reads a value, siblings, and nothing from a 404", async (t) => {
  t.same(elementsOf(200, JSON.stringify(["a"])), ["a"])
  const sib = (xs: string[]) => ({ value: Buffer.from(JSON.stringify(xs)).toString("base64") })
  t.same(elementsOf(300, JSON.stringify({ siblings: [sib(["a"]), sib(["b", "c"])] })), ["a", "b", "c"])
  t.same(elementsOf(404, "{}"), [])
})
