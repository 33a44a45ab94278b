// The browser client (web-demo/coworker.js) in Node against a real server process: requests, the snapshot shape,
// events, errors, client-side coalescing (frames counted on the wire) and reconnection with resume.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { connect, shape } from "../../web-demo/coworker.js";
import { startServer, until } from "./server.mjs";

let server;
before(async () => {
  server = await startServer();
});
// Every client is closed at the end, also when a test failed half-way: a client left open keeps reconnecting to
// the stopped server, and the test process would never exit.
const clients = [];
async function open(url, options) {
  const c = await connect(url, options);
  clients.push(c);
  return c;
}
after(async () => {
  for (const c of clients) c.close();
  await server?.stop();
});

/** A WebSocket that records every frame the client sends. */
function recording() {
  const sent = [];
  class Recording extends WebSocket {
    send(data) {
      sent.push(JSON.parse(data));
      super.send(data);
    }
  }
  return { sent, WebSocket: Recording };
}

const opts = { WebSocket };
let spaceN = 0;
const freshSpace = () => `client-test-${process.pid}-${++spaceN}`;

test("run, field writes, steps, complete and fail answer with contexts", async () => {
  const c = await open(server.url, opts);
  const space = freshSpace();
  const run = await c.run({ operation: "interpret", space, agent: "node", input: { q: "hi" } });
  assert.equal(run.status, "running");
  assert.equal(run.space, space);
  await Promise.all([
    c.append(run.id, "output.tokens", "Hel"),
    c.append(run.id, "output.tokens", "lo"),
    c.updateRunField(run.id, "output.text", "Hello"),
    c.updateRunStep(run.id, 0, { name: "think", status: "done" }),
  ]);
  const done = await c.complete(run.id);
  assert.equal(done.status, "completed");
  assert.deepEqual(done.output, { tokens: ["Hel", "lo"], text: "Hello" });
  assert.deepEqual(done.steps, [{ name: "think", status: "done" }]);

  const other = await c.run({ operation: "dialog", space });
  c.updateRunField(other.id, "output.value", "typed before failing"); // buffered: fail must flush it first
  const failed = await c.fail(other.id, "it broke");
  assert.equal(failed.status, "failed");
  assert.deepEqual(failed.error, { message: "it broke" });
  assert.equal(failed.output.value, "typed before failing");
  c.close();
});

test("server errors reject with their code", async () => {
  const c = await open(server.url, opts);
  await assert.rejects(c.updateRunField("0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f", "output.x", 1), { code: "unknown_run" });
  const run = await c.run({ operation: "interpret", space: freshSpace() });
  await assert.rejects(c.updateRunField(run.id, "status", "done"), { code: "read_only_path" });
  await assert.rejects(c.run({ operation: "" }), { code: "bad_message" });
  await c.complete(run.id);
  await assert.rejects(c.complete(run.id), { code: "run_finished" });
  c.close();
});

test("subscribe gives the seed's snapshot shape, rebuilt once per frame, and lifecycle events", async () => {
  const space = freshSpace();
  const watcher = await open(server.url, opts);
  const producer = await open(server.url, opts);
  const shapes = [];
  const events = [];
  for (const name of ["before:run", "after:run", "error:run"]) watcher.on(name, (run) => events.push([name, run.id]));
  const frames0 = watcher.framesReceived;
  const unsubscribe = watcher.subscribe((s) => shapes.push(s), { space });
  await until(() => shapes.length > 0, 5000, "the snapshot");
  assert.deepEqual(shapes[0].activeAI, []);

  const root = await producer.run({ operation: "pipeline", space, steps: [{ name: "a", status: "running" }] });
  const ai = await producer.run({ operation: "interpret", space, parentRun: root.id });
  const dialog = await producer.run({ operation: "dialog", space });
  await producer.updateRunField(dialog.id, "output.value", "hello");
  await producer.append(ai.id, "output.tokens", "tok");
  const s = await until(() => {
    const last = watcher.getCurrent();
    return last?.activeDialogs[0]?.output?.value === "hello" && last.activeAI[0]?.output?.tokens?.length === 1 && last;
  }, 5000, "the runs in the views");
  // Arrays of run objects, not ids; pipelines map a root to its runs, root first.
  assert.equal(s.activeDialogs[0].id, dialog.id);
  assert.equal(s.activeAI[0].id, ai.id);
  assert.deepEqual(s.activePipelines[root.id].map((r) => r.id), [root.id, ai.id]);
  assert.deepEqual(s.activePipelines[dialog.id].map((r) => r.id), [dialog.id]);
  assert.equal(s.isLoading, true);
  assert.deepEqual(s.pendingRuns, []);
  assert.equal(watcher.getActiveRun(ai.id).output.tokens[0], "tok");
  // One rebuild per received frame: the callback never ran more often than frames arrived.
  assert.ok(shapes.length <= watcher.framesReceived - frames0, `${shapes.length} rebuilds`);

  await producer.complete(ai.id);
  await producer.fail(dialog.id, { message: "no", code: "E1" });
  await until(() => events.some(([n, id]) => n === "after:run" && id === ai.id), 5000, "after:run");
  await until(() => events.some(([n, id]) => n === "error:run" && id === dialog.id), 5000, "error:run");
  assert.ok(events.some(([n, id]) => n === "before:run" && id === root.id));
  // A data operation: currentRun is its final context.
  await producer.run({ operation: "select", doctype: "Run", space, input: { take: 1 } });
  await until(() => watcher.getCurrent()?.currentRun?.operation === "select", 5000, "currentRun");

  unsubscribe();
  watcher.close();
  producer.close();
});

test("pendingRuns holds the runs whose status is pending", () => {
  const pending = { id: "p", operation: "select", status: "pending" };
  const running = { id: "r", operation: "interpret", status: "running" };
  const s = shape({ activeRuns: { p: pending, r: running }, activeAI: ["r"], activePipelines: { p: ["p"], r: ["r"] } }, 3);
  assert.deepEqual(s.pendingRuns, [pending]);
  assert.deepEqual(s.activeAI, [running]);
  assert.equal(s.seq, 3);
});

test("local writes are coalesced: one patch frame per run per animation frame", async () => {
  const rec = recording();
  const c = await open(server.url, { WebSocket: rec.WebSocket });
  const run = await c.run({ operation: "interpret", space: freshSpace() });
  const writes = [];
  for (let i = 0; i < 200; i++) writes.push(c.append(run.id, "output.tokens", `t${i}`));
  for (let i = 1; i <= 50; i++) writes.push(c.updateRunField(run.id, "output.value", "x".repeat(i)));
  await Promise.all(writes);
  const patches = rec.sent.filter((m) => m.type === "patch");
  assert.equal(patches.length, 1, "200 appends and 50 keystrokes in one frame: one patch");
  assert.equal(patches[0].ops.length, 201, "the 50 sets of one path collapsed into the last");
  const done = await c.complete(run.id);
  assert.deepEqual(done.output.tokens, Array.from({ length: 200 }, (_, i) => `t${i}`));
  assert.equal(done.output.value, "x".repeat(50));
  c.close();
});

test("after a dropped connection the client reconnects, resumes, and ends equal to the server", async () => {
  const space = freshSpace();
  const statuses = [];
  const c = await open(server.url, { WebSocket, minBackoffMs: 50, maxBackoffMs: 200 });
  c.on("status", (s) => statuses.push(s));
  c.subscribe(() => {}, { space });
  const producer = await open(server.url, opts);
  const run = await producer.run({ operation: "interpret", space });
  await until(() => c.getActiveRun(run.id), 5000, "the run");
  for (let i = 0; i < 300; i++) {
    producer.append(run.id, "output.tokens", `${i}`);
    if (i === 100) c.ws.terminate(); // the socket dies mid-stream, without a close frame
    if (i % 20 === 0) await new Promise((r) => setTimeout(r, 5));
  }
  await producer.updateRunField(run.id, "output.done", true);
  const fresh = await open(server.url, opts);
  const shapes = [];
  fresh.subscribe((s) => shapes.push(s), { space });
  await until(() => shapes.length && c.status === "open", 10000, "reconnection and a fresh snapshot");
  const expected = await until(() => {
    const last = shapes[shapes.length - 1];
    return last.activeRuns[run.id]?.output?.done && last;
  }, 5000, "the fresh state");
  await until(() => JSON.stringify(c.getCurrent()?.activeRuns) === JSON.stringify(expected.activeRuns), 10000,
    "the reconnected client's state to equal the server's");
  assert.deepEqual(c.getCurrent().activeRuns[run.id].output.tokens, Array.from({ length: 300 }, (_, i) => `${i}`));
  assert.ok(statuses.includes("reconnecting") && statuses.at(-1) === "open", statuses.join(" → "));
  c.close();
  producer.close();
  fresh.close();
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
    const c = await open(authed.url, { WebSocket: Counting, token: "not-a-jwt", minBackoffMs: 10, maxBackoffMs: 20 });
    const errors = [];
    c.on("error", (e) => errors.push(e.code));
    await until(() => c.status === "closed", 5000, "the client to stop");
    await new Promise((r) => setTimeout(r, 300)); // would be many retries at 10–20 ms backoff
    assert.equal(opened, 1, "no reconnection attempt");
    assert.ok(errors.includes("unauthenticated") && errors.includes("closed_4001"), errors.join(", "));
  } finally {
    await authed.stop();
  }
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
  const producer = await open(server.url, opts);
  const run = await producer.run({ operation: "interpret", space });
  const c = await open(server.url, { WebSocket: Batching });
  c.subscribe(() => {}, { space });
  for (let i = 0; i < 40; i++) {
    await producer.append(run.id, "output.tokens", `${i}`); // one tick apart or less: snapshot and diffs pile up
  }
  await until(() => c.getActiveRun(run.id)?.output?.tokens?.length === 40, 5000, "all 40 tokens");
  assert.deepEqual(c.getActiveRun(run.id).output.tokens, Array.from({ length: 40 }, (_, i) => `${i}`));
  c.close();
  producer.close();
});
