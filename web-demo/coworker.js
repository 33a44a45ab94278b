// Coworker browser client: one ES module, no dependencies, for browsers and Node (pass `WebSocket` in Node).
// It speaks protocol.md: requests matched to replies by id, fire-and-forget patches coalesced per animation frame
// and per run, subscriptions that keep the normalized wire state (snapshot + diffs) and rebuild the seed's
// snapshot shape once per received frame, events, and reconnection with jittered backoff and `since` resume.

/**
 * @typedef {Object} RunContext
 * @property {string} id
 * @property {number} timestamp
 * @property {string} operation
 * @property {string|null} doctype
 * @property {*} flow
 * @property {*} input
 * @property {Object} options
 * @property {string} owner
 * @property {*} agent
 * @property {string|null} parentRun
 * @property {Array<Object>} steps
 * @property {string} space
 * @property {'pending'|'running'|'completed'|'failed'} status
 * @property {*} output
 * @property {*} error
 * @property {boolean} success
 * @property {number} duration
 */

/**
 * The shape the seed's `CoworkerState.getSnapshot()` had, rebuilt from the wire state once per frame.
 * @typedef {Object} Snapshot
 * @property {RunContext|null} currentRun
 * @property {Object<string, RunContext>} activeRuns
 * @property {boolean} isLoading
 * @property {RunContext[]} activeDialogs
 * @property {RunContext[]} activeAI
 * @property {Object<string, RunContext[]>} activePipelines root id → its runs, root first
 * @property {RunContext[]} pendingRuns runs whose server-side operation is executing
 * @property {number} seq
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (required in Node: e.g. the `ws` package's)
 * @property {string} [token] a JWT sent with `hello` on every (re)connection
 * @property {number} [minBackoffMs=250] first reconnect delay (before jitter)
 * @property {number} [maxBackoffMs=5000] longest reconnect delay
 * @property {(fn: () => void) => void} [schedule] how local writes are batched (default: requestAnimationFrame,
 *   or a 16 ms timer where there is none)
 */

/** An error from the server (protocol.md §7) or the connection. `code` is the server's error code. */
export class CoworkerError extends Error {
  /** @param {string} code @param {string} message @param {RunContext} [run] */
  constructor(code, message, run) {
    super(`${code}: ${message}`);
    this.name = "CoworkerError";
    this.code = code;
    this.run = run;
  }
}

const OPEN = 1;
/** Close codes after which reconnecting would fail the same way (protocol.md §8): 1008 flooding, 4001 not
 * authenticated, 4002 token expired, 4003 too many connections for the owner. */
const FINAL_CLOSE_CODES = new Set([1008, 4001, 4002, 4003]);

/** Applies one diff op (RFC 6902 add/remove/replace, plus `append`) to `doc` in place; returns the new root. */
export function applyOp(doc, op) {
  const keys = op.path.split("/").slice(1).map((k) => k.replace(/~1/g, "/").replace(/~0/g, "~"));
  if (keys.length === 0) {
    return op.op === "remove" ? undefined : structuredClone(op.value);
  }
  let parent = doc;
  for (const k of keys.slice(0, -1)) {
    parent = parent[Array.isArray(parent) ? Number(k) : k];
    if (parent === undefined || parent === null) throw new Error(`diff path ${op.path} does not exist`);
  }
  const last = keys[keys.length - 1];
  const isArray = Array.isArray(parent);
  const index = isArray ? (last === "-" ? parent.length : Number(last)) : last;
  switch (op.op) {
    case "add":
      if (isArray) parent.splice(index, 0, op.value);
      else parent[index] = op.value;
      break;
    case "replace":
      parent[index] = op.value;
      break;
    case "remove":
      if (isArray) parent.splice(index, 1);
      else delete parent[index];
      break;
    case "append": {
      const target = parent[index];
      if (Array.isArray(target) && Array.isArray(op.value)) target.push(...op.value);
      else if (typeof target === "string" && typeof op.value === "string") parent[index] = target + op.value;
      else throw new Error(`append type mismatch at ${op.path}`);
      break;
    }
    default:
      throw new Error(`unknown diff op ${op.op}`);
  }
  return doc;
}

/** Rebuilds the seed's snapshot shape from a wire state (ids → run objects). */
export function shape(state, seq = 0) {
  const runs = state.activeRuns ?? {};
  const pick = (ids) => (ids ?? []).map((id) => runs[id]).filter(Boolean);
  const pipelines = {};
  for (const [root, ids] of Object.entries(state.activePipelines ?? {})) pipelines[root] = pick(ids);
  return {
    currentRun: state.currentRun ?? null,
    activeRuns: runs,
    isLoading: state.isLoading ?? false,
    activeDialogs: pick(state.activeDialogs),
    activeAI: pick(state.activeAI),
    activePipelines: pipelines,
    pendingRuns: Object.values(runs).filter((r) => r.status === "pending"),
    seq,
  };
}

class Subscription {
  constructor(client, callback, space, views) {
    this.client = client;
    this.callback = callback;
    this.space = space;
    this.views = views;
    this.sub = null;
    this.epoch = null;
    this.seq = null;
    this.state = null;
    this.snapshot = null;
    this.closed = false;
  }

  request() {
    const msg = { type: "subscribe", space: this.space, events: true };
    if (this.views) msg.views = this.views;
    if (this.state !== null && this.epoch !== null) msg.since = { epoch: this.epoch, seq: this.seq };
    return msg;
  }

  /** The answer to a subscribe: a snapshot, or a granted resume. */
  started(frame) {
    this.sub = frame.sub;
    this.epoch = frame.epoch;
    if (frame.type === "snapshot") {
      this.state = frame.state;
      this.seq = frame.seq;
      this.publish();
    } else {
      this.seq = frame.seq; // resumed: the missed diffs follow
    }
  }

  frame(frame) {
    if (frame.type === "snapshot") {
      this.state = frame.state;
      this.seq = frame.seq;
    } else if (frame.type === "diff") {
      if (this.state === null) return; // a fresh subscription is on its way
      if (frame.base !== this.seq) {
        // Cannot happen with a correct server; start over from a fresh snapshot rather than show a wrong state,
        // and drop the old subscription so that none of its frames reach the new state.
        this.client.subs.delete(this.sub);
        this.client.request({ type: "unsubscribe", sub: this.sub }).catch(() => {});
        this.state = null;
        this.client.resubscribe(this);
        return;
      }
      for (const op of frame.ops) this.state = applyOp(this.state, op);
      this.seq = frame.seq;
    } else {
      return;
    }
    this.publish();
  }

  publish() {
    this.snapshot = shape(this.state, this.seq);
    this.client.latest = this.snapshot;
    this.callback(this.snapshot);
  }
}

/** A connection to a coworker server. Create it with {@link connect}. */
export class CoworkerClient {
  /** @param {string} url @param {ConnectOptions} [options] */
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket: pass options.WebSocket (in Node: the `ws` package)");
    this.schedule =
      options.schedule ??
      (typeof requestAnimationFrame === "function" ? (fn) => requestAnimationFrame(fn) : (fn) => setTimeout(fn, 16));
    /** @type {'connecting'|'open'|'reconnecting'|'closed'} */
    this.status = "connecting";
    this.latest = null;
    this.nextId = 1;
    this.pending = new Map(); // request id → {resolve, reject, onAnswer}
    this.subs = new Map(); // sub id → Subscription
    this.subscriptions = new Set();
    this.listeners = new Map(); // event name → Set<fn>
    this.buffers = new Map(); // run id → {ops, waiters}
    this.flushScheduled = false;
    this.attempt = 0;
    this.stopped = false;
    this.framesReceived = 0;
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.open();
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit("status", status);
  }

  open() {
    const ws = new this.WebSocket(this.url);
    this.ws = ws;
    ws.onopen = () => {
      this.attempt = 0;
      if (this.options.token) this.send({ type: "hello", token: this.options.token });
      this.setStatus("open");
      this.readyResolve(this);
      for (const s of this.subscriptions) this.resubscribe(s);
      this.flush();
    };
    ws.onmessage = (event) => this.receive(typeof event.data === "string" ? event.data : String(event.data));
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      const lost = new CoworkerError("connection_lost", "the connection closed before the answer");
      for (const { reject } of this.pending.values()) reject(lost);
      this.pending.clear();
      this.subs.clear();
      if (FINAL_CLOSE_CODES.has(event?.code)) {
        // Retrying cannot help (bad or expired token, owner's connection quota, flooding): stop and say why.
        this.stopped = true;
        this.emit("error", new CoworkerError(`closed_${event.code}`, event.reason || "closed by the server"));
      }
      if (this.stopped) {
        this.setStatus("closed");
        return;
      }
      this.setStatus("reconnecting");
      const base = this.options.minBackoffMs ?? 250;
      const cap = this.options.maxBackoffMs ?? 5000;
      const delay = Math.min(cap, base * 2 ** this.attempt) * (0.5 + Math.random() / 2);
      this.attempt += 1;
      setTimeout(() => !this.stopped && this.open(), delay);
    };
    ws.onerror = () => {
      if (this.attempt === 0 && this.status === "connecting") {
        this.readyReject(new CoworkerError("connect_failed", `cannot connect to ${this.url}`));
      }
    };
  }

  receive(text) {
    this.framesReceived += 1;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (frame.id !== undefined && frame.id !== null && this.pending.has(frame.id)) {
      const waiter = this.pending.get(frame.id);
      this.pending.delete(frame.id);
      if (frame.type === "error") {
        waiter.reject(new CoworkerError(frame.code, frame.message, frame.run));
      } else {
        // Synchronously, not in a promise callback: Node's `ws` may deliver the next frames (a subscription's
        // first diff) in the same task, before any promise callback runs.
        waiter.onAnswer?.(frame);
        waiter.resolve(frame);
      }
      return;
    }
    if (frame.type === "event") {
      this.emit(frame.name, frame.run);
      return;
    }
    if (frame.type === "error") {
      this.emit("error", new CoworkerError(frame.code, frame.message, frame.run));
      return;
    }
    const sub = this.subs.get(frame.sub);
    if (sub) sub.frame(frame);
  }

  send(msg) {
    if (this.ws.readyState === OPEN) this.ws.send(JSON.stringify(msg));
  }

  /**
   * Sends `msg` with a fresh id; resolves with the answering frame, rejects with a {@link CoworkerError}.
   * `onAnswer`, if given, is called with a successful answer as it is received, before any later frame.
   */
  request(msg, onAnswer) {
    return new Promise((resolve, reject) => {
      if (this.ws.readyState !== OPEN) {
        reject(new CoworkerError("not_connected", `the connection is ${this.status}`));
        return;
      }
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject, onAnswer });
      this.ws.send(JSON.stringify({ ...msg, id }));
    });
  }

  // --- runs -------------------------------------------------------------------------------------------------

  /** Starts a run (protocol.md §2.2); resolves with its context. @returns {Promise<RunContext>} */
  async run(config) {
    return (await this.request({ type: "run", run: config })).run;
  }

  /** Sets `path` (dotted or JSON Pointer) of a run to `value`. Coalesced: the last value per path per frame. */
  updateRunField(runId, path, value) {
    return this.queue(runId, { op: "set", path, value });
  }

  /** Appends `value` to the array (or string) at `path`. Coalesced: all appends of a frame go in one patch. */
  append(runId, path, value) {
    return this.queue(runId, { op: "append", path, value });
  }

  /** Shallow-merges `updates` into `steps[index]` (pushes at `index == steps.length`). */
  updateRunStep(runId, index, updates) {
    return this.queue(runId, { op: "step", index, value: updates });
  }

  /** Completes a run after its buffered writes; resolves with its final context. */
  async complete(runId, output) {
    await this.flushRun(runId);
    const msg = { type: "complete", run: runId };
    if (output !== undefined) msg.output = output;
    return (await this.request(msg)).run;
  }

  /** Fails a run after its buffered writes (`error` is a string or `{message, code?}`); resolves with its context. */
  async fail(runId, error) {
    await this.flushRun(runId);
    const err = typeof error === "string" ? { message: error } : error;
    return (await this.request({ type: "fail", run: runId, error: err })).run;
  }

  /** Buffers one op for `runId`; resolves when the patch frame that carries it is acknowledged. */
  queue(runId, op) {
    let buf = this.buffers.get(runId);
    if (!buf) {
      buf = { ops: [], waiters: [] };
      this.buffers.set(runId, buf);
    }
    const last = buf.ops[buf.ops.length - 1];
    if (op.op === "set" && last && last.op === "set" && last.path === op.path) {
      last.value = op.value; // a keystroke supersedes the previous one in the same frame
    } else {
      buf.ops.push(op);
    }
    const done = new Promise((resolve, reject) => buf.waiters.push({ resolve, reject }));
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      this.schedule(() => this.flush());
    }
    return done;
  }

  /** Sends every run's buffered ops now: one patch frame per run (split past 256 ops, the server's limit). */
  flush() {
    this.flushScheduled = false;
    if (this.ws.readyState !== OPEN) return; // kept for the reconnection
    for (const runId of [...this.buffers.keys()]) this.flushRun(runId);
  }

  flushRun(runId) {
    const buf = this.buffers.get(runId);
    if (!buf || this.ws.readyState !== OPEN) return Promise.resolve();
    this.buffers.delete(runId);
    const sent = [];
    for (let i = 0; i < buf.ops.length; i += 256) {
      sent.push(this.request({ type: "patch", run: runId, ops: buf.ops.slice(i, i + 256) }));
    }
    const all = Promise.all(sent);
    all.then(
      () => buf.waiters.forEach((w) => w.resolve()),
      (e) => buf.waiters.forEach((w) => w.reject(e)),
    );
    return all.then(
      () => undefined,
      () => undefined,
    );
  }

  // --- state --------------------------------------------------------------------------------------------------

  /**
   * Subscribes to a space. `callback` gets the seed's snapshot shape after the snapshot and after every frame.
   * @param {(s: Snapshot) => void} callback
   * @param {{space?: string, views?: string[]}} [options]
   * @returns {() => void} unsubscribe
   */
  subscribe(callback, { space = "default", views } = {}) {
    const s = new Subscription(this, callback, space, views);
    this.subscriptions.add(s);
    if (this.ws.readyState === OPEN) this.resubscribe(s);
    return () => {
      s.closed = true;
      this.subscriptions.delete(s);
      if (s.sub !== null && this.subs.get(s.sub) === s) {
        this.subs.delete(s.sub);
        this.request({ type: "unsubscribe", sub: s.sub }).catch(() => {});
      }
    };
  }

  resubscribe(s) {
    const started = (frame) => {
      if (s.closed) {
        this.request({ type: "unsubscribe", sub: frame.sub }).catch(() => {});
        return;
      }
      this.subs.set(frame.sub, s);
      s.started(frame);
    };
    this.request(s.request(), started).catch((e) => this.emit("error", e));
  }

  /** The latest snapshot shape of the most recently updated subscription. @returns {Snapshot|null} */
  getCurrent() {
    return this.latest;
  }

  /** An active run of any subscription, by id. @returns {RunContext|undefined} */
  getActiveRun(id) {
    for (const s of this.subscriptions) {
      const run = s.state?.activeRuns?.[id];
      if (run) return run;
    }
    return undefined;
  }

  /**
   * Listens to `before:run`, `after:run`, `error:run` (lifecycle events of subscribed spaces), `status`, `error`.
   * @returns {() => void} off
   */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name)?.delete(fn);
  }

  emit(name, value) {
    for (const fn of this.listeners.get(name) ?? []) fn(value);
  }

  /** Closes for good (no reconnection). */
  close() {
    this.stopped = true;
    this.ws.close();
  }
}

/**
 * Connects to a coworker server; resolves once the socket is open (it then reconnects by itself).
 * @param {string} url e.g. `ws://127.0.0.1:8080/ws`
 * @param {ConnectOptions} [options]
 * @returns {Promise<CoworkerClient>}
 */
export function connect(url, options) {
  return new CoworkerClient(url, options).ready;
}
