/** The anti-entropy time window: UTC hours, wrapping midnight. */
import t from "tap"
import { withinWindow } from "../../src/aae/AntiEntropy.ts"

const at = (h: number, m = 0) => Date.UTC(2026, 0, 1, h, m)

t.test("exchanges run only inside the window", async (t) => {
  t.ok(withinWindow(undefined, at(3)), "no window: always")
  t.ok(withinWindow({ from: 5, to: 5 }, at(17)), "from = to: all day")
  t.ok(withinWindow({ from: 1, to: 5 }, at(1)), "start is inside")
  t.ok(withinWindow({ from: 1, to: 5 }, at(4, 59)))
  t.notOk(withinWindow({ from: 1, to: 5 }, at(5)), "end is outside")
  t.notOk(withinWindow({ from: 1, to: 5 }, at(0, 59)))
  t.ok(withinWindow({ from: 22, to: 4 }, at(23)), "wraps midnight")
  t.ok(withinWindow({ from: 22, to: 4 }, at(2)))
  t.notOk(withinWindow({ from: 22, to: 4 }, at(12)))
})
