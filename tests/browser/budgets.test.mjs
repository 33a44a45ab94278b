// The state budgets (protocol.md §2.3 check 6, §9) seen from the client, against real servers with small budgets: a
// refused element of a `patches` frame rejects exactly its own writes with the budget's code, later elements and
// frames still work, and `run` is refused with the same codes.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { connect, CoworkerError } from "../../web-demo/coworker.js";
import { harness } from "./server.mjs";

const { server, open } = harness(connect, WebSocket, after);
/** A client of a server of its own, started with `args`. */
async function client(args, options = {}) {
  const s = await server(args);
  return open(s.url, options);
}

const space = `budgets-${process.pid}`;
const token = (frame, i) => `${frame}.${i} ${"t".repeat(200)}`;

/** Sends one frame of `n` appends (they are queued in one tick) and waits for all of them to settle. */
async function frame(c, runId, f, n = 10) {
  const writes = Array.from({ length: n }, (_, i) => c.append(runId, "output.tokens", token(f, i)));
  return Promise.allSettled(writes);
}

test("appends past --max-run-bytes reject with run_too_large, frame by frame; the run stays usable and completes", async () => {
  const c = await client(["--max-run-bytes", "20000"], { maxOpsPerPatch: 10 }); // frame() is one element
  const run = await c.run({ operation: "interpret", space });
  await c.updateRunField(run.id, "output.scratch", "s".repeat(3000));
  const accepted = [];
  let refused = null;
  for (let f = 0; f < 40 && !refused; f++) {
    const outcomes = await frame(c, run.id, f);
    const states = new Set(outcomes.map((o) => o.status));
    assert.equal(states.size, 1, `frame ${f}: every write of a frame settles alike`);
    if (outcomes[0].status === "fulfilled") accepted.push(f);
    else refused = outcomes.map((o) => o.reason);
  }
  assert.ok(refused, "the budget was reached");
  assert.ok(accepted.length >= 3, `${accepted.length} frames accepted first`);
  for (const e of refused) {
    assert.ok(e instanceof CoworkerError);
    assert.equal(e.code, "run_too_large");
  }
  // One flush, one patches frame of two elements: ten appends, refused again while the run is full, then a write
  // that shrinks the run, accepted. The refusal rejects the writes of its own element only.
  const again = frame(c, run.id, "again");
  const shrink = c.updateRunField(run.id, "output.scratch", "");
  assert.ok((await again).every((o) => o.status === "rejected" && o.reason.code === "run_too_large"));
  await shrink;
  assert.ok((await frame(c, run.id, "after")).every((o) => o.status === "fulfilled"), "the run took writes again");

  const done = await c.complete(run.id);
  assert.equal(done.status, "completed");
  const expected = [...accepted, "after"].flatMap((f) => Array.from({ length: 10 }, (_, i) => token(f, i)));
  assert.deepEqual(done.output, { scratch: "", tokens: expected }, "exactly the accepted frames");

  // A new run whose context alone is past the budget is refused too.
  await assert.rejects(c.run({ operation: "interpret", space, input: { big: "i".repeat(25000) } }), { code: "run_too_large" });
});

test("the owner's budget (quota_state_bytes) and the server's (over_capacity) refuse writes and runs alike", async () => {
  for (const [flag, code] of [["--max-owner-state-bytes", "quota_state_bytes"], ["--max-state-bytes", "over_capacity"]]) {
    const c = await client([flag, "30000"]);
    const first = await c.run({ operation: "interpret", space });
    const second = await c.run({ operation: "interpret", space });
    let refused = null;
    for (let f = 0; f < 40 && !refused; f++) {
      const outcomes = await frame(c, f % 2 ? second.id : first.id, f);
      if (outcomes[0].status === "rejected") refused = outcomes;
    }
    assert.ok(refused?.every((o) => o.status === "rejected" && o.reason.code === code), `${flag}: ${refused?.[0].reason?.code}`);
    await assert.rejects(c.run({ operation: "interpret", space, input: { big: "i".repeat(10000) } }), { code }, flag);
    // Finishing a run gives its bytes back: a new run fits again.
    await c.complete(first.id);
    const third = await c.run({ operation: "interpret", space, input: { big: "i".repeat(10000) } });
    await c.complete(third.id);
    await c.complete(second.id);
  }
});
