// The client's connection handling in Node against real server processes: `hello` on every connection, writes held
// until its reply, the limits it tells, authentication through the `bearer.` subprotocol, and the dead-socket probe
// (through a TCP proxy that can stop forwarding without closing, as a network gone away does).
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer, connect as tcpConnect } from "node:net";
import WebSocket from "ws";
import { connect } from "../../web-demo/coworker.js";
import { harness, until } from "./server.mjs";

const { server, open } = harness(connect, WebSocket, after);

/**
 * A WebSocket class that logs what the client sends and receives, in order, as [connection number, "sent" or
 * "received", frame].
 */
function timeline() {
  const log = [];
  let connections = 0;
  class Logging extends WebSocket {
    constructor(...args) {
      super(...args);
      const n = ++connections;
      this.n = n;
      this.addEventListener("message", (e) => log.push([n, "received", JSON.parse(String(e.data))]));
    }
    send(data) {
      log.push([this.n, "sent", JSON.parse(data)]);
      super.send(data);
    }
  }
  return { log, WebSocket: Logging };
}

/**
 * A TCP proxy on 127.0.0.1 to `port`. `freeze()` makes its current connections drop everything in both directions
 * without closing them (a half-open connection: network gone, laptop slept); connections made later work.
 */
async function proxy(port) {
  const pairs = new Set();
  const server = createServer((client) => {
    const upstream = tcpConnect(port, "127.0.0.1");
    const pair = { client, upstream, frozen: false };
    pairs.add(pair);
    client.on("data", (d) => pair.frozen || upstream.write(d));
    upstream.on("data", (d) => pair.frozen || client.write(d));
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    for (const socket of [client, upstream]) {
      socket.on("close", end);
      socket.on("error", end);
    }
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    freeze: () => pairs.forEach((p) => (p.frozen = true)),
    close: () => new Promise((resolve) => {
      pairs.forEach((p) => (p.client.destroy(), p.upstream.destroy()));
      server.close(resolve);
    }),
  };
}

/** Resolves when the client's status next becomes `want`. */
function status(client, want) {
  return new Promise((resolve) => {
    const off = client.on("status", (s) => s === want && (off(), resolve()));
  });
}

/** An HS256 JWT (protocol.md §2.1). */
function jwt(secret, claims) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part(claims)}`;
  return `${body}.${createHmac("sha256", secret).update(body).digest("base64url")}`;
}

test("hello on every connection (no token in development mode); writes wait for its reply and follow its limits", async () => {
  const small = await server(["--max-message-bytes", "16384"]);
  const t = timeline();
  const c = await open(small.url, { WebSocket: t.WebSocket, minBackoffMs: 200, maxBackoffMs: 300 });
  assert.equal(c.limits.maxMessageBytes, 16384);
  assert.equal(c.limits.maxOpsPerPatch, 256);
  const run = await c.run({ operation: "interpret", space: `hello-${process.pid}` });

  // 40 writes of 1 KB: frames of at most the server's 16 KiB (a larger one would be closed with 1009).
  const big = "k".repeat(1000);
  await Promise.all(Array.from({ length: 40 }, () => c.append(run.id, "output.big", big)));
  const patches = () => t.log.filter(([, dir, f]) => dir === "sent" && f.type === "patches").map(([n, , f]) => [n, f]);
  assert.ok(patches().length >= 3, `${patches().length} patches frames`);
  for (const [, p] of patches()) assert.ok(JSON.stringify(p).length <= 16384, `${JSON.stringify(p).length} bytes`);

  // Writes made while the connection is down go out on the next one, only after its hello was answered.
  const reconnecting = status(c, "reconnecting");
  c.ws.terminate();
  await reconnecting;
  const offline = Array.from({ length: 5 }, (_, i) => c.append(run.id, "output.tokens", `offline ${i}`));
  await Promise.all(offline);
  const second = t.log.filter(([n]) => n === 2);
  assert.deepEqual(second[0][2], { type: "hello", id: second[0][2].id }, "hello first, without a token");
  const answered = second.findIndex(([, dir, f]) => dir === "received" && f.id === second[0][2].id);
  const firstPatch = second.findIndex(([, dir, f]) => dir === "sent" && f.type === "patches");
  assert.ok(answered >= 0 && firstPatch > answered, `hello answered at ${answered}, first patch at ${firstPatch}`);
  const hellos = t.log.filter(([, dir, f]) => dir === "sent" && f.type === "hello");
  assert.deepEqual(hellos.map(([n]) => n), [1, 2], "one hello per connection");

  const done = await c.complete(run.id);
  assert.equal(done.output.big.length, 40);
  assert.deepEqual(done.output.tokens, Array.from({ length: 5 }, (_, i) => `offline ${i}`));

  // The options stay in force where they are lower than the server's limits.
  const t2 = timeline();
  const capped = await open(small.url, { WebSocket: t2.WebSocket, maxOpsPerPatch: 50 });
  const run2 = await capped.run({ operation: "interpret", space: `hello-${process.pid}` });
  await Promise.all(Array.from({ length: 120 }, (_, i) => capped.append(run2.id, "output.n", i)));
  const sent2 = t2.log.filter(([, dir, f]) => dir === "sent" && f.type === "patches").map(([, , f]) => f);
  assert.deepEqual(sent2.map((f) => f.patches.map((e) => e.ops.length)), [[50, 50, 20]], "one frame, three elements");
  await capped.complete(run2.id);
});

test("complete right after the socket opened still follows the run's writes", async () => {
  const s = await server();
  const producer = await open(s.url);
  const run = await producer.run({ operation: "interpret", space: `order-${process.pid}` });
  const t = timeline();
  const c = await open(s.url, { WebSocket: t.WebSocket, minBackoffMs: 20, maxBackoffMs: 50 });
  c.ws.terminate();
  // Queued while offline; complete() called as soon as the new socket opens, before its hello is answered.
  const writes = [c.append(run.id, "output.tokens", "a"), c.append(run.id, "output.tokens", "b")];
  await status(c, "open");
  const done = await c.complete(run.id);
  await Promise.all(writes);
  assert.deepEqual(done.output, { tokens: ["a", "b"] });
  const second = t.log.filter(([n, dir]) => n === 2 && dir === "sent").map(([, , f]) => f.type);
  assert.deepEqual(second, ["hello", "patches", "complete"]);
});

test("a token given only as the bearer subprotocol is sent with hello too", async () => {
  const secret = "test-secret-for-the-browser-client";
  const authed = await server(["--jwt-secret", secret]);
  const token = jwt(secret, { sub: "ann", read: ["*"], write: ["*"], exp: Math.floor(Date.now() / 1000) + 3600 });
  const t = timeline();
  const c = await open(authed.url, { WebSocket: t.WebSocket, protocols: ["coworker.v1", `bearer.${token}`] });
  const hello = t.log.find(([, dir, f]) => dir === "sent" && f.type === "hello")[2];
  assert.equal(hello.token, token);
  const run = await c.run({ operation: "interpret", space: `bearer-${process.pid}` });
  assert.equal(run.owner, "ann");
  await c.append(run.id, "output.tokens", "x");
  assert.deepEqual((await c.complete(run.id)).output, { tokens: ["x"] });
  assert.equal(c.status, "open");
});

test("a connection that goes silent is probed with hello, dropped, and the client reconnects and resumes", async () => {
  const s = await server();
  const p = await proxy(Number(new URL(s.url).port));
  try {
    const space = `dead-${process.pid}`;
    const t = timeline();
    const statuses = [];
    const c = await open(`ws://127.0.0.1:${p.port}/ws`, { WebSocket: t.WebSocket, deadSocketMs: 300, probeTimeoutMs: 300,
      minBackoffMs: 50, maxBackoffMs: 100 });
    c.on("status", (st) => statuses.push([st, Date.now()]));
    c.subscribe(() => {}, { space });
    const producer = await open(s.url);
    const run = await producer.run({ operation: "interpret", space });
    await until(() => c.getActiveRun(run.id), 5000, "the run on the proxied client");

    // A healthy but quiet connection: probed (a hello, answered) and kept.
    await new Promise((r) => setTimeout(r, 800));
    const probes = t.log.filter(([n, dir, f]) => n === 1 && dir === "sent" && f.type === "hello").length - 1;
    assert.ok(probes >= 1, `${probes} probes`);
    assert.deepEqual(statuses, [], "no reconnection while the server answers");

    // The path dies without a close: the client notices within the probe's time, and what waited rejects.
    p.freeze();
    const frozenAt = Date.now();
    const inFlight = c.run({ operation: "interpret", space }).then(() => null, (e) => e);
    for (let i = 0; i < 60; i++) {
      await producer.append(run.id, "output.tokens", `${i}`);
      if (i % 10 === 9) await new Promise((r) => setTimeout(r, 20));
    }
    const answer = await Promise.race([inFlight, new Promise((r) => setTimeout(() => r({ code: "still waiting after 3 s" }), 3000))]);
    assert.equal(answer?.code, "connection_lost");
    const lostAt = statuses.find(([st]) => st === "reconnecting")?.[1];
    assert.ok(lostAt - frozenAt < 300 + 300 + 400, `lost after ${lostAt - frozenAt} ms`);
    await until(() => c.status === "open", 5000, "the reconnection");
    await producer.updateRunField(run.id, "output.done", true);

    // It resubscribed with `since`, on a new connection through the proxy, and ends equal to a fresh subscriber.
    const resubscribe = t.log.find(([n, dir, f]) => n === 2 && dir === "sent" && f.type === "subscribe");
    assert.ok(resubscribe?.[2].since, JSON.stringify(resubscribe));
    const fresh = await open(s.url);
    const shapes = [];
    fresh.subscribe((x) => shapes.push(x), { space });
    const expected = await until(() => shapes.at(-1)?.activeRuns[run.id]?.output?.done && shapes.at(-1), 5000, "the fresh state");
    await until(() => c.getCurrent().seq === expected.seq, 5000, "the reconnected client at the fresh seq");
    assert.deepEqual(c.getCurrent(), expected);
    assert.equal(c.getActiveRun(run.id).output.tokens.length, 60);
    await producer.complete(run.id);
  } finally {
    await p.close();
  }
});

test("the probe carries no token (the server answers it without closing, even once the token expired), and setToken still works", async () => {
  const secret = "test-secret-for-the-browser-client";
  const authed = await server(["--jwt-secret", secret]);
  const claims = { sub: "bob", read: ["*"], write: ["*"] };
  const t = timeline();
  const c = await open(authed.url, { WebSocket: t.WebSocket, token: jwt(secret, { ...claims, exp: Math.floor(Date.now() / 1000) + 2 }),
    deadSocketMs: 200, probeTimeoutMs: 300, minBackoffMs: 50 });
  const errors = [];
  c.on("error", (e) => errors.push(e.code));
  await until(() => errors.includes("token_expired"), 5000, "token_expired");
  const expiredAt = t.log.length;
  await new Promise((r) => setTimeout(r, 700)); // silent: probed at least twice
  const probes = t.log.slice(expiredAt).filter(([, dir]) => dir === "sent").map(([, , f]) => f);
  assert.ok(probes.length >= 2 && probes.every((f) => f.type === "hello" && !("token" in f)), JSON.stringify(probes));
  assert.equal(c.status, "open");
  const { owner } = await c.setToken(jwt(secret, { ...claims, exp: Math.floor(Date.now() / 1000) + 3600 }));
  assert.equal(owner, "bob");
  const run = await c.run({ operation: "interpret", space: `expiry-${process.pid}` });
  await c.complete(run.id);
  assert.deepEqual(errors, ["token_expired"]);
  assert.ok(t.log.every(([n]) => n === 1), "one connection throughout");
});
