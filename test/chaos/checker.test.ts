import t from "tap"
import { check, type WriteOp } from "../../chaos/Checker.ts"

t.test("the checker reports a lost element, an unexpected one and indeterminate ones", async (t) => {
  const history: WriteOp[] = [
    { key: "a", element: "c1-1", acked: true },
    { key: "a", element: "c1-2", acked: true },
    { key: "a", element: "c2-1", acked: false },
    { key: "b", element: "c2-2", acked: true },
    { key: "b", element: "c2-3", acked: false }
  ]
  const final = new Map([["a", ["c1-1", "c2-1"]], ["b", ["c2-2", "ghost"]]])
  const v = check(history, final)
  t.equal(v.acked, 3)
  t.same(v.lost, [{ key: "a", element: "c1-2" }])
  t.same(v.unexpected, [{ key: "b", element: "ghost" }])
  t.equal(v.indeterminateOk, 1)
  t.equal(v.indeterminateAbsent, 1)
})

t.test("a clean history passes; a key missing from the final reads loses all its acknowledged elements", async (t) => {
  const history: WriteOp[] = [{ key: "a", element: "x", acked: true }, { key: "b", element: "y", acked: true }]
  t.same(check(history, new Map([["a", ["x"]], ["b", ["y"]]])).lost, [])
  const v = check(history, new Map([["a", ["x"]]]))
  t.same(v.lost, [{ key: "b", element: "y" }])
  t.same(v.unexpected, [])
})
