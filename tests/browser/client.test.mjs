// The browser client (web-demo/coworker.js) in Node against a real server process: requests, the snapshot shape,
// events, errors, client-side coalescing into `patches` frames (frames counted on the wire, each write settled by
// its element) and reconnection with resume.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:net";
import WebSocket from "ws";
import { connect, shape, applyDiff, CoworkerClient, CoworkerError } from "../../web-demo/coworker.js";
import { harness, startServer, until } from "./server.mjs";

const started = harness(connect, WebSocket, after);
const { open, track } = started;
let server;
before(async () => {
  server = await started.server();
});

/** A WebSocket class that records every frame the client sends and receives (parsed). */
function wire() {
  const sent = [];
  const received = [];
  class Recording extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (e) => received.push(JSON.parse(String(e.data))));
    }
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  return { sent, received, WebSocket: Recording };
}

let spaceN = 0;
const freshSpace = () => `client-test-${process.pid}-${++spaceN}`;
const range = (n, f = (i) => `${i}`) => Array.from({ length: n }, (_, i) => f(i));

test("connect, run, field writes, steps, complete and fail answer with contexts; close ends with 'closed'", async () => {
  const statuses = [];
  const c = new CoworkerClient(server.url, { WebSocket });
  track(c);
  c.on("status", (s) => statuses.push(s));
  assert.equal(c.status, "connecting");
  assert.equal(await c.ready, c);
  assert.equal(c.status, "open");
  const space = freshSpace();
  const run = await c.run({ operation: "interpret", space, agent: "node", input: { q: "hi" } });
  assert.equal(run.status, "running");
  assert.equal(run.space, space);
  assert.deepEqual(run.input, { q: "hi" });
  await Promise.all([
    c.append(run.id, "output.tokens", "Hel"),
    c.append(run.id, "output.tokens", "lo"),
    c.updateRunField(run.id, "output.text", "Hello"),
    c.updateRunField(run.id, "/output/meta", { by: "pointer" }),
    c.updateRunStep(run.id, 0, { name: "think", status: "running" }),
    c.updateRunStep(run.id, 0, { status: "done" }),
  ]);
  const done = await c.complete(run.id);
  assert.equal(done.status, "completed");
  assert.equal(done.success, true);
  assert.deepEqual(done.output, { tokens: ["Hel", "lo"], text: "Hello", meta: { by: "pointer" } });
  assert.deepEqual(done.steps, [{ name: "think", status: "done" }]);

  const withOutput = await c.run({ operation: "interpret", space });
  assert.deepEqual((await c.complete(withOutput.id, { answer: 42 })).output, { answer: 42 });

  const other = await c.run({ operation: "dialog", space });
  c.updateRunField(other.id, "output.value", "typed before failing"); // buffered: fail must send it first
  const failed = await c.fail(other.id, { message: "it broke", code: "E1" });
  assert.equal(failed.status, "failed");
  assert.deepEqual(failed.error, { message: "it broke", code: "E1" });
  assert.equal(failed.output.value, "typed before failing");

  c.close();
  assert.equal(c.status, "closed");
  assert.deepEqual(statuses, ["open", "closed"]);
  await assert.rejects(c.append(run.id, "output.tokens", "late"), { code: "closed" });
});

test("server errors reject with their code (and the failed run where the server sends one)", async () => {
  const c = await open(server.url);
  const space = freshSpace();
  await assert.rejects(c.updateRunField("0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f", "output.x", 1), { code: "unknown_run" });
  const run = await c.run({ operation: "interpret", space });
  await assert.rejects(c.updateRunField(run.id, "status", "done"), { code: "read_only_path" });
  await assert.rejects(c.updateRunField(run.id, "output..x", 1), { code: "bad_path" });
  await assert.rejects(c.run({ operation: "" }), { code: "bad_message" });
  await assert.rejects(c.run({ operation: "interpret", parentRun: "0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f" }),
    { code: "unknown_parent" });
  await assert.rejects(c.run({ operation: "interpret", id: run.id }), { code: "duplicate_run" });
  // A refused subscribe has no promise: it is reported through on("error").
  const refused = new Promise((resolve) => {
    const off = c.on("error", (e) => (off(), resolve(e)));
  });
  c.subscribe(() => assert.fail("no snapshot for a refused subscription"), { space, views: ["nope"] });
  assert.equal((await refused).code, "unknown_view");
  // A data operation that fails: the frame's code, and the failed context with the operation's own code.
  const err = await c.run({ operation: "update", doctype: "Task", space, input: { name: "no-such-task", data: { a: 1 } } })
    .then(() => null, (e) => e);
  assert.equal(err?.code, "operation_failed");
  assert.equal(err.run.status, "failed");
  assert.equal(err.run.error.code, "not_found");
  await c.complete(run.id);
  await assert.rejects(c.complete(run.id), { code: "run_finished" });
  await assert.rejects(c.fail(run.id, "again"), { code: "run_finished" });
  await assert.rejects(c.append(run.id, "output.tokens", "late"), { code: "run_finished" });
  assert.equal(c.status, "open", "errors leave the connection open");
});

test("subscribe gives the seed's snapshot shape, rebuilt exactly once per received frame, and lifecycle events", async () => {
  const space = freshSpace();
  const w = wire();
  const watcher = await open(server.url, { WebSocket: w.WebSocket });
  const producer = await open(server.url);
  const shapes = [];
  const events = [];
  for (const name of ["before:run", "after:run", "error:run"]) watcher.on(name, (run) => events.push([name, run.id]));
  const unsubscribe = watcher.subscribe((s) => shapes.push(s), { space });
  await until(() => shapes.length > 0, 5000, "the snapshot");
  assert.deepEqual(shapes[0], {
    currentRun: null, activeRuns: {}, isLoading: false, activeDialogs: [], activeAI: [], activePipelines: {},
    pendingRuns: [], seq: shapes[0].seq,
  });

  const root = await producer.run({ operation: "pipeline", space, steps: [{ name: "a", status: "running" }] });
  const ai = await producer.run({ operation: "interpret", space, parentRun: root.id });
  const dialog = await producer.run({ operation: "dialog", space });
  await Promise.all([producer.updateRunField(dialog.id, "output.value", "hello"), producer.append(ai.id, "output.tokens", "tok")]);
  const s = await until(() => {
    const last = watcher.getCurrent();
    return last?.activeDialogs[0]?.output?.value === "hello" && last.activeAI[0]?.output?.tokens?.length === 1 && last;
  }, 5000, "the runs in the views");
  // Arrays of run objects, not ids; pipelines map a root to its runs, root first; pendingRuns = unfinished runs.
  assert.deepEqual(s.activeDialogs.map((r) => r.id), [dialog.id]);
  assert.deepEqual(s.activeAI.map((r) => r.id), [ai.id]);
  assert.equal(s.activeAI[0], s.activeRuns[ai.id], "the same run object everywhere");
  assert.deepEqual(s.activePipelines[root.id].map((r) => r.id), [root.id, ai.id]);
  assert.deepEqual(s.activePipelines[dialog.id].map((r) => r.id), [dialog.id]);
  assert.deepEqual(Object.keys(s.activePipelines).sort(), [root.id, dialog.id].sort());
  assert.equal(s.isLoading, true);
  assert.deepEqual(s.pendingRuns.map((r) => r.id).sort(), [root.id, ai.id, dialog.id].sort());
  assert.equal(watcher.getActiveRun(ai.id).output.tokens[0], "tok");
  assert.equal(watcher.getActiveRun("0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f"), undefined);

  await producer.complete(ai.id);
  await producer.fail(dialog.id, { message: "no", code: "E1" });
  await until(() => events.some(([n, id]) => n === "after:run" && id === ai.id), 5000, "after:run");
  await until(() => events.some(([n, id]) => n === "error:run" && id === dialog.id), 5000, "error:run");
  assert.deepEqual(events.filter(([n]) => n === "before:run").map(([, id]) => id), [root.id, ai.id, dialog.id]);
  // The failed run lingers in activeRuns and its pipeline group, marked failed, but leaves the dialogs and pendingRuns.
  const lingering = await until(() => {
    const last = watcher.getCurrent();
    return last.activeRuns[dialog.id]?.status === "failed" && !last.activeRuns[ai.id] && last;
  }, 5000, "the failed run lingering");
  assert.deepEqual(lingering.activeDialogs, []);
  assert.deepEqual(lingering.pendingRuns.map((r) => r.id), [root.id]);
  assert.deepEqual(lingering.activePipelines[root.id].map((r) => r.id), [root.id]);
  // ... and is gone after the linger (1500 ms).
  await until(() => !watcher.getCurrent().activeRuns[dialog.id], 5000, "the failed run to leave");

  // A data operation: currentRun is its final context.
  await producer.run({ operation: "select", doctype: "Run", space, input: { take: 1 } });
  await until(() => watcher.getCurrent()?.currentRun?.operation === "select", 5000, "currentRun");

  // Exactly one rebuild per snapshot or diff frame of this subscription, whatever the number of ops in it.
  const frames = w.received.filter((f) => f.type === "snapshot" || f.type === "diff");
  assert.equal(shapes.length, frames.length, `${shapes.length} rebuilds for ${frames.length} frames`);
  assert.ok(frames.some((f) => f.type === "diff" && f.ops.length > 1), "some diff carried several ops");
  assert.deepEqual(shapes.map((x) => x.seq), frames.map((f) => f.seq));

  // on() returns its off function.
  const offCalls = [];
  const off = watcher.on("after:run", (run) => offCalls.push(run.id));
  off();
  const later = await producer.run({ operation: "interpret", space });
  await producer.complete(later.id);
  await until(() => events.some(([n, id]) => n === "after:run" && id === later.id), 5000, "after:run of the later run");
  assert.deepEqual(offCalls, []);

  // unsubscribe() stops the callbacks and the events.
  const before = shapes.length;
  const eventsBefore = events.length;
  unsubscribe();
  await until(() => w.sent.some((m) => m.type === "unsubscribe"), 5000, "the unsubscribe");
  const last = await producer.run({ operation: "interpret", space });
  await producer.complete(last.id);
  const check = await open(server.url);
  const seen = [];
  check.on("after:run", (run) => seen.push(run.id));
  let ready = false;
  check.subscribe(() => (ready = true), { space });
  await until(() => ready, 5000, "the other subscriber's snapshot");
  const again = await producer.run({ operation: "interpret", space });
  await producer.complete(again.id);
  await until(() => seen.includes(again.id), 5000, "another subscriber to see the space move on");
  assert.equal(shapes.length, before);
  assert.equal(events.length, eventsBefore);
});

test("snapshots are immutable: a diff copies what it changes, unchanged runs keep their identity", async () => {
  const space = freshSpace();
  const watcher = await open(server.url);
  const producer = await open(server.url);
  const shapes = [];
  watcher.subscribe((s) => shapes.push(s), { space });
  const a = await producer.run({ operation: "interpret", space });
  const b = await producer.run({ operation: "interpret", space });
  await producer.append(a.id, "output.tokens", "x");
  const first = await until(() => watcher.getActiveRun(a.id)?.output?.tokens && watcher.getCurrent(), 5000, "run a");
  const frozen = JSON.stringify(first);
  await producer.append(a.id, "output.tokens", "y");
  const second = await until(() => watcher.getCurrent().activeRuns[a.id].output.tokens.length === 2 && watcher.getCurrent(),
    5000, "the second token");
  assert.equal(JSON.stringify(first), frozen, "the earlier snapshot did not change");
  assert.notEqual(second.activeRuns[a.id], first.activeRuns[a.id]);
  assert.equal(second.activeRuns[b.id], first.activeRuns[b.id], "an unchanged run is the same object");
  await producer.complete(a.id);
  await producer.complete(b.id);

  // The applier on its own: nested adds, removes, appends to arrays and strings, escaped keys.
  const s0 = { activeRuns: { r: { output: { t: ["a"], s: "x", "a/b": 1 }, steps: [] } }, activeAI: ["r"] };
  const copy = structuredClone(s0);
  const s1 = applyDiff(s0, [
    { op: "append", path: "/activeRuns/r/output/t", value: ["b", "c"] },
    { op: "append", path: "/activeRuns/r/output/s", value: "yz" },
    { op: "replace", path: "/activeRuns/r/output/a~1b", value: 2 },
    { op: "add", path: "/activeRuns/r/steps/0", value: { n: 1 } },
    { op: "remove", path: "/activeAI/0" },
  ]);
  assert.deepEqual(s0, copy);
  assert.deepEqual(s1, { activeRuns: { r: { output: { t: ["a", "b", "c"], s: "xyz", "a/b": 2 }, steps: [{ n: 1 }] } }, activeAI: [] });
  assert.throws(() => applyDiff(s0, [{ op: "append", path: "/activeRuns/r/output/s", value: ["x"] }]));
});

test("the shape: pendingRuns holds the unfinished runs, views hold run objects", () => {
  const pending = { id: "p", operation: "select", status: "pending" };
  const running = { id: "r", operation: "interpret", status: "running" };
  const failed = { id: "f", operation: "dialog", status: "failed", parentRun: "r" };
  const s = shape({ activeRuns: { p: pending, r: running, f: failed }, activeAI: ["r"], activeDialogs: [],
    activePipelines: { p: ["p"], r: ["r", "f"] }, isLoading: true }, 3);
  assert.deepEqual(s.pendingRuns, [pending, running]);
  assert.deepEqual(s.activeAI, [running]);
  assert.deepEqual(s.activePipelines, { p: [pending], r: [running, failed] });
  assert.equal(s.currentRun, null);
  assert.equal(s.seq, 3);
});

test("local writes are coalesced: one patches frame per animation frame, an element per run, in order", async () => {
  const w = wire();
  const c = await open(server.url, { WebSocket: w.WebSocket });
  assert.equal(c.limits.maxPatchesPerFrame, 1024);
  assert.equal(c.limits.maxOpsPerFrame, 4096);
  const run = await c.run({ operation: "interpret", space: freshSpace() });
  const frames = () => w.sent.filter((m) => m.type === "patches");
  const elementSizes = (f) => f.patches.map((e) => e.ops.length);
  assert.ok(!w.sent.some((m) => m.type === "patch"), "no single-run patch frames");

  // 200 appends and 50 keystrokes in one tick: one frame; the keystrokes (consecutive sets of a path) collapse.
  const writes = [];
  for (let i = 0; i < 200; i++) writes.push(c.append(run.id, "output.tokens", `t${i}`));
  for (let i = 1; i <= 50; i++) writes.push(c.updateRunField(run.id, "output.value", "x".repeat(i)));
  await Promise.all(writes);
  assert.equal(frames().length, 1, "one patches frame");
  assert.equal(frames()[0].patches.length, 1, "one element: one run");
  assert.equal(frames()[0].patches[0].run, run.id);
  assert.equal(frames()[0].patches[0].ops.length, 201, "the 50 sets of one path collapsed into the last");
  assert.deepEqual(frames()[0].patches[0].ops.at(-1), { op: "set", path: "output.value", value: "x".repeat(50) });

  // Sets are collapsed only when consecutive: set, append, set keep their order.
  await Promise.all([c.updateRunField(run.id, "output.mark", 1), c.append(run.id, "output.tokens", "mid"),
    c.updateRunField(run.id, "output.mark", 2)]);
  assert.deepEqual(frames()[1].patches[0].ops.map((o) => o.op), ["set", "append", "set"]);

  // Past the server's 256 ops per patch, the run's ops are split in order into elements of one frame.
  const more = [];
  for (let i = 0; i < 600; i++) more.push(c.append(run.id, "output.more", i));
  await Promise.all(more);
  assert.equal(frames().length, 3);
  assert.deepEqual(elementSizes(frames()[2]), [256, 256, 88]);
  assert.ok(frames()[2].patches.every((e) => e.run === run.id));

  // And past the server's 64 KiB messages, into several frames by size (100 writes of 2 KB).
  const big = "b".repeat(2000);
  await Promise.all(range(100, () => c.append(run.id, "output.big", big)));
  const sized = frames().slice(3);
  assert.ok(sized.length >= 4 && sized.length <= 5, `${sized.length} frames`);
  for (const f of sized) assert.ok(Buffer.byteLength(JSON.stringify(f)) <= 65536);
  assert.equal(sized.flatMap(elementSizes).reduce((x, y) => x + y), 100);
  // A single write larger than a message is refused locally, and the connection stays usable.
  await assert.rejects(c.updateRunField(run.id, "output.huge", "h".repeat(70000)), { code: "message_too_large" });

  // Writes spread over time: never more than one patches frame per frame (16 ms in Node).
  const spreadFrom = frames().length;
  const started = Date.now();
  for (let i = 0; i < 100; i++) {
    c.append(run.id, "output.spread", i);
    if (i % 10 === 9) await new Promise((r) => setTimeout(r, 5));
  }
  await c.updateRunField(run.id, "output.end", true);
  const spread = frames().length - spreadFrom;
  assert.ok(spread <= Math.ceil((Date.now() - started) / 16) + 1 && spread < 20, `${spread} frames for 101 writes`);

  const done = await c.complete(run.id);
  assert.deepEqual(done.output.tokens, [...range(200, (i) => `t${i}`), "mid"]);
  assert.equal(done.output.value, "x".repeat(50));
  assert.equal(done.output.mark, 2);
  assert.deepEqual(done.output.more, range(600, (i) => i));
  assert.equal(done.output.big.length, 100);
  assert.equal(done.output.huge, undefined);
  assert.deepEqual(done.output.spread, range(100, (i) => i));
  assert.ok(!w.sent.some((m) => m.type === "patch"), "no single-run patch frames");
});

test("writes to several runs in one animation frame go out as one patches frame, an element per run", async () => {
  const w = wire();
  const c = await open(server.url, { WebSocket: w.WebSocket });
  const space = freshSpace();
  const runs = await Promise.all(range(5, () => c.run({ operation: "interpret", space })));
  const frames = () => w.sent.filter((m) => m.type === "patches");
  const writes = [];
  for (let round = 0; round < 3; round++) {
    for (const [i, run] of runs.entries()) {
      writes.push(c.append(run.id, "output.tokens", `${i}.${round}`));
      if (i === 2) writes.push(c.updateRunStep(run.id, round, { name: `step ${round}` }));
    }
  }
  writes.push(c.updateRunField(runs[4].id, "output.value", "last"));
  const framesBefore = w.sent.length;
  await Promise.all(writes);
  assert.deepEqual(w.sent.slice(framesBefore).map((m) => m.type), ["patches"], "one frame for the five runs");
  const [frame] = frames();
  // Runs in the order they were first written, each run's ops in the order they were made.
  assert.deepEqual(frame.patches.map((e) => e.run), runs.map((r) => r.id));
  assert.deepEqual(frame.patches.map((e) => e.ops.length), [3, 3, 6, 3, 4]);
  assert.deepEqual(frame.patches[2].ops.map((o) => o.op), ["append", "step", "append", "step", "append", "step"]);
  for (const [i, run] of runs.entries()) {
    const done = await c.complete(run.id);
    assert.deepEqual(done.output.tokens, range(3, (r) => `${i}.${r}`));
  }

  // complete() sends the buffered writes of every run at once, in one frame, before its own request.
  const [a, b] = await Promise.all(range(2, () => c.run({ operation: "interpret", space })));
  const sentBefore = w.sent.length;
  const pending = [c.append(a.id, "output.tokens", "a"), c.append(b.id, "output.tokens", "b")];
  const doneA = await c.complete(a.id);
  await Promise.all(pending);
  assert.deepEqual(w.sent.slice(sentBefore).map((m) => m.type), ["patches", "complete"]);
  assert.deepEqual(w.sent[sentBefore].patches.map((e) => e.run), [a.id, b.id]);
  assert.deepEqual(doneA.output, { tokens: ["a"] });
  assert.deepEqual((await c.complete(b.id)).output, { tokens: ["b"] });
});

test("a refused element rejects the writes of its own run only; the other elements of the frame apply", async () => {
  const w = wire();
  const c = await open(server.url, { WebSocket: w.WebSocket });
  const space = freshSpace();
  const [fine, broken, finished, other] = await Promise.all(range(4, () => c.run({ operation: "interpret", space })));
  await c.complete(finished.id);
  const unknown = "0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f";
  const sentBefore = w.sent.length;
  const outcomes = Promise.allSettled([
    c.append(fine.id, "output.tokens", "a"), // 0
    c.append(broken.id, "output.tokens", "kept?"), // 1: its element holds a bad op below
    c.append(unknown, "output.tokens", "x"), // 2
    c.append(finished.id, "output.tokens", "late"), // 3
    c.updateRunField(other.id, "output.value", 1), // 4
    c.append(fine.id, "output.tokens", "b"), // 5: the same element as 0
    c.updateRunField(broken.id, "output.tokens[5]", "gap"), // 6: index past the end refuses its element
    c.updateRunField(unknown, "output.y", 2), // 7
  ]);
  const settled = await outcomes;
  assert.deepEqual(w.sent.slice(sentBefore).map((m) => m.type), ["patches"], "one frame");
  assert.deepEqual(w.sent[sentBefore].patches.map((e) => e.run), [fine.id, broken.id, unknown, finished.id, other.id]);
  const reply = w.received.find((f) => f.id === w.sent[sentBefore].id);
  assert.deepEqual(reply.errors.map((e) => [e.index, e.code]),
    [[1, "index_out_of_range"], [2, "unknown_run"], [3, "run_finished"]]);
  const codes = settled.map((o) => (o.status === "fulfilled" ? "ok" : o.reason.code));
  assert.deepEqual(codes, ["ok", "index_out_of_range", "unknown_run", "run_finished", "ok", "ok", "index_out_of_range",
    "unknown_run"]);
  for (const o of settled.filter((x) => x.status === "rejected")) assert.ok(o.reason instanceof CoworkerError);
  assert.deepEqual((await c.complete(fine.id)).output, { tokens: ["a", "b"] });
  assert.equal((await c.complete(broken.id)).output?.tokens, undefined, "the refused element changed nothing");
  assert.deepEqual((await c.complete(other.id)).output, { value: 1 });
  assert.equal(c.status, "open");
});

test("a write's promise settles with its element's outcome: a bad op rejects the writes of its element only", async () => {
  const w = wire();
  const c = await open(server.url, { WebSocket: w.WebSocket });
  const run = await c.run({ operation: "interpret", space: freshSpace() });
  const fine = [c.append(run.id, "output.tokens", "a"), c.append(run.id, "output.value", 1)];
  const broken = c.updateRunField(run.id, "output.tokens[5]", "gap"); // index past the end: the element is refused
  await assert.rejects(broken, { code: "index_out_of_range" });
  for (const p of fine) await assert.rejects(p, { code: "index_out_of_range" });
  await c.append(run.id, "output.tokens", "b");
  assert.deepEqual((await c.complete(run.id)).output, { tokens: ["b"] }, "the refused element changed nothing");
});

test("past maxPatchesPerFrame and maxOpsPerFrame the writes go out in several patches frames, in order", async () => {
  // Messages of 4 MiB, so that the element and op counts bind before the bytes do.
  const roomy = await started.server(["--max-message-bytes", String(4 << 20)]);
  const w = wire();
  const c = await open(roomy.url, { WebSocket: w.WebSocket });
  assert.equal(c.limits.maxPatchesPerFrame, 1024);
  assert.equal(c.limits.maxOpsPerFrame, 4096);
  const space = freshSpace();
  const frames = () => w.sent.filter((m) => m.type === "patches");

  // 1,100 runs written in one tick: 1,024 elements, then 76.
  const runs = [];
  for (let i = 0; i < 1100; i += 100) runs.push(...(await Promise.all(range(100, () => c.run({ operation: "interpret", space })))));
  await Promise.all(runs.map((run, i) => c.append(run.id, "output.tokens", `r${i}`)));
  assert.deepEqual(frames().map((f) => f.patches.length), [1024, 76]);
  assert.deepEqual(frames().flatMap((f) => f.patches.map((e) => e.run)), runs.map((r) => r.id), "in order");

  // 5 runs × 1,000 ops: elements of 256 ops at most, frames of 4,096 ops at most (4,096 then 904).
  const five = runs.slice(0, 5);
  const from = frames().length;
  await Promise.all(five.flatMap((run) => range(1000, (i) => c.append(run.id, "output.n", i))));
  const split = frames().slice(from);
  const ops = (f) => f.patches.reduce((n, e) => n + e.ops.length, 0);
  assert.deepEqual(split.map(ops), [4096, 904]);
  for (const f of split) assert.ok(f.patches.every((e) => e.ops.length <= 256));
  // The fifth run's ops straddle the two frames: 96 in the first, 904 in the second.
  assert.deepEqual(split[1].patches.map((e) => e.run), Array(split[1].patches.length).fill(five[4].id));

  // A lower option stays in force: 3 elements per frame.
  const capped = await open(roomy.url, { WebSocket: w.WebSocket, maxPatchesPerFrame: 3 });
  const from2 = frames().length;
  await Promise.all(runs.slice(0, 7).map((run) => capped.append(run.id, "output.tokens", "capped")));
  assert.deepEqual(frames().slice(from2).map((f) => f.patches.length), [3, 3, 1]);

  for (const run of five) {
    const done = await c.complete(run.id);
    assert.deepEqual(done.output.n, range(1000, (i) => i));
    assert.deepEqual(done.output.tokens, [`r${runs.indexOf(run)}`, "capped"]);
  }
  const last = await c.complete(runs[1099].id);
  assert.deepEqual(last.output, { tokens: ["r1099"] });
});

test("a server whose hello does not tell maxPatchesPerFrame gets one patch frame per run, as before patches", async () => {
  const sent = [];
  // The hello reply's limits without the two frame limits: a server that predates `patches`.
  class Older extends WebSocket {
    set onmessage(fn) {
      super.onmessage = fn && ((event) => {
        const frame = JSON.parse(String(event.data));
        if (frame.limits) {
          delete frame.limits.maxPatchesPerFrame;
          delete frame.limits.maxOpsPerFrame;
        }
        fn({ data: JSON.stringify(frame) });
      });
    }
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  const c = await open(server.url, { WebSocket: Older });
  const space = freshSpace();
  const [a, b] = await Promise.all(range(2, () => c.run({ operation: "interpret", space })));
  const outcomes = await Promise.allSettled([c.append(a.id, "output.tokens", "a"), c.append(b.id, "output.tokens", "b"),
    c.updateRunField(b.id, "output.tokens[5]", "gap"), ...range(300, (i) => c.append(a.id, "output.n", i))]);
  assert.ok(!sent.some((m) => m.type === "patches"));
  assert.deepEqual(sent.filter((m) => m.type === "patch").map((m) => [m.run, m.ops.length]),
    [[a.id, 256], [a.id, 45], [b.id, 2]]);
  assert.deepEqual(outcomes.slice(0, 3).map((o) => o.status), ["fulfilled", "rejected", "rejected"]);
  assert.equal(outcomes[2].reason.code, "index_out_of_range");
  const done = await c.complete(a.id);
  assert.deepEqual(done.output.tokens, ["a"]);
  assert.equal(done.output.n.length, 300);
  await c.complete(b.id);
});

test("after a dropped connection the client reconnects, resumes, and ends equal to a fresh subscriber", async () => {
  const space = freshSpace();
  const statuses = [];
  const w = wire();
  const c = await open(server.url, { WebSocket: w.WebSocket, minBackoffMs: 50, maxBackoffMs: 200 });
  c.on("status", (s) => statuses.push(s));
  c.subscribe(() => {}, { space });
  const producer = await open(server.url);
  const run = await producer.run({ operation: "interpret", space });
  const own = await c.run({ operation: "dialog", space }); // the reconnecting client produces too
  await until(() => c.getActiveRun(run.id) && c.getActiveRun(own.id), 5000, "the runs");
  const lost = [];
  for (let i = 0; i < 300; i++) {
    producer.append(run.id, "output.tokens", `${i}`);
    if (i === 100) {
      // The socket dies mid-stream, without a close frame; a request in flight rejects, writes wait.
      c.request({ type: "hello" }).catch((e) => lost.push(e));
      c.ws.terminate();
    }
    if (i >= 100 && i < 110) c.updateRunField(own.id, "output.value", `while offline ${i}`);
    if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
  }
  await producer.updateRunField(run.id, "output.done", true);
  await until(() => c.status === "open" && c.getActiveRun(own.id)?.output?.value === "while offline 109", 10000,
    "the reconnection and the buffered writes");
  assert.equal(lost.length, 1);
  assert.equal(lost[0].code, "connection_lost");
  assert.ok(statuses.includes("reconnecting") && statuses.at(-1) === "open", statuses.join(" → "));
  // It resumed: a second subscribe with `since`, granted.
  const subscribes = w.sent.filter((m) => m.type === "subscribe");
  assert.equal(subscribes.length, 2);
  assert.ok(subscribes[1].since && subscribes[1].since.seq > 0, JSON.stringify(subscribes[1]));
  assert.ok(w.received.some((f) => f.resumed === true), "the resume was granted");

  const fresh = await open(server.url);
  const shapes = [];
  fresh.subscribe((s) => shapes.push(s), { space });
  const expected = await until(() => {
    const last = shapes.at(-1);
    return last?.activeRuns[run.id]?.output?.done && last.activeRuns[own.id]?.output?.value === "while offline 109" && last;
  }, 5000, "the fresh state");
  await until(() => c.getCurrent().seq === expected.seq, 10000, "the reconnected client at the fresh seq");
  assert.deepEqual(c.getCurrent(), expected);
  assert.deepEqual(c.getCurrent().activeRuns[run.id].output.tokens, range(300));
});

test("a close that reconnecting cannot fix (4001, bad token) stops the client instead of retrying", async () => {
  const authed = await startServer(["--jwt-secret", "test-secret-for-the-browser-client"]);
  try {
    let opened = 0;
    class Counting extends WebSocket {
      constructor(...args) {
        super(...args);
        opened += 1;
      }
    }
    const c = new CoworkerClient(authed.url, { WebSocket: Counting, token: "not-a-jwt", minBackoffMs: 10, maxBackoffMs: 20 });
    track(c);
    const errors = [];
    c.on("error", (e) => errors.push(e.code));
    await assert.rejects(c.ready, { code: "unauthenticated" });
    await until(() => c.status === "closed", 5000, "the client to stop");
    await new Promise((r) => setTimeout(r, 300)); // would be many retries at 10–20 ms backoff
    assert.equal(opened, 1, "no reconnection attempt");
    assert.ok(errors.includes("closed_4001"), errors.join(", "));
  } finally {
    await authed.stop();
  }
});

test("connecting to nothing rejects with connect_failed and does not retry", async () => {
  const port = await new Promise((resolve) => {
    const s = createServer().listen(0, "127.0.0.1", () => {
      const { port: p } = s.address();
      s.close(() => resolve(p));
    });
  });
  const c = new CoworkerClient(`ws://127.0.0.1:${port}/ws`, { WebSocket, minBackoffMs: 10 });
  track(c);
  await assert.rejects(c.ready, { code: "connect_failed" });
  assert.equal(c.status, "closed");
});

test("frames delivered in the same task as a subscribe answer are applied, not dropped", async () => {
  // Node's `ws` may hand several frames to onmessage within one task (one TCP read); this socket always does,
  // holding every message for 30 ms and then delivering the lot synchronously.
  class Batching extends WebSocket {
    set onmessage(fn) {
      const held = [];
      super.onmessage = (event) => {
        if (held.push(event) === 1) setTimeout(() => held.splice(0).forEach((e) => fn(e)), 30);
      };
    }
  }
  const space = freshSpace();
  const producer = await open(server.url);
  const run = await producer.run({ operation: "interpret", space });
  const c = await open(server.url, { WebSocket: Batching });
  c.subscribe(() => {}, { space });
  for (let i = 0; i < 40; i++) {
    await producer.append(run.id, "output.tokens", `${i}`); // one tick apart or less: snapshot and diffs pile up
  }
  await until(() => c.getActiveRun(run.id)?.output?.tokens?.length === 40, 5000, "all 40 tokens");
  assert.deepEqual(c.getActiveRun(run.id).output.tokens, range(40));
});

test("two subscriptions of one space announce each event once", async () => {
  const space = freshSpace();
  const c = await open(server.url);
  const seen = [];
  c.on("after:run", (run) => seen.push(run.id));
  const got = [[], []];
  c.subscribe((s) => got[0].push(s), { space });
  c.subscribe((s) => got[1].push(s), { space, views: ["activeAI"] });
  await until(() => got[0].length && got[1].length, 5000, "both snapshots");
  const run = await c.run({ operation: "interpret", space });
  await c.complete(run.id);
  await until(() => seen.length, 5000, "after:run");
  await until(() => got[1].at(-1).activeAI.length === 0 && got[1].length > 1, 5000, "the narrowed view");
  assert.deepEqual(seen, [run.id]);
  assert.deepEqual(Object.keys(got[1].at(-1)), Object.keys(got[0].at(-1)), "the same shape for a narrowed view set");
});
