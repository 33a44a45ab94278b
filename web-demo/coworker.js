// Coworker client: one ES module, no dependencies, for browsers and Node (pass `WebSocket` in Node, e.g. the `ws`
// package's). It speaks protocol.md: requests matched to their answers by id; local writes buffered per run and sent
// as one `patch` frame per run per animation frame; subscriptions that keep the normalized wire state (snapshot +
// diffs, §5/§6) and rebuild the seed's `CoworkerState` snapshot shape once per received frame; lifecycle events;
// and reconnection with jittered exponential backoff and `since` resume (§2.6).

/**
 * A run context (protocol.md §2.2). Treat it as read-only: the client replaces, never mutates, what it handed out.
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
 * The seed's `CoworkerState` snapshot, rebuilt from the wire state once per received frame. Snapshots are
 * immutable: a diff copies what it changes (and the containers above it), so an older snapshot stays as it was and
 * a run object keeps its identity for as long as it does not change.
 * @typedef {Object} Snapshot
 * @property {RunContext|null} currentRun the space's last completed data operation (select/create/update/delete)
 * @property {Object<string, RunContext>} activeRuns run id → context (failed runs stay for the server's linger)
 * @property {boolean} isLoading some run of the space is pending or running
 * @property {RunContext[]} activeDialogs running `dialog` runs, in the order they started
 * @property {RunContext[]} activeAI running `interpret` runs, in the order they started
 * @property {Object<string, RunContext[]>} activePipelines root id → its runs, the root first
 * @property {RunContext[]} pendingRuns the runs not finished yet (status `pending` or `running`), as in the seed
 * @property {number} seq the space's tick this state is at
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (required in Node: e.g. the `ws` package's)
 * @property {string} [token] a JWT, sent with `hello` on every (re)connection
 * @property {string|string[]} [protocols] WebSocket subprotocols (e.g. `["coworker.v1", "bearer.<jwt>"]`)
 * @property {number} [minBackoffMs=250] first reconnection delay, doubled per failed attempt (times 0.5–1)
 * @property {number} [maxBackoffMs=5000] longest reconnection delay
 * @property {(fn: () => void) => void} [schedule] when buffered writes go out (default: the next animation frame,
 *   or 100 ms when the page gets none, e.g. a hidden tab; a 16 ms timer where there is no requestAnimationFrame)
 * @property {number} [maxOpsPerPatch=256] the server's `max_ops_per_patch` (protocol.md §9)
 * @property {number} [maxMessageBytes=65536] the server's `--max-message-bytes`
 */

/** An error from the server (protocol.md §7) or from the connection. `code` is the server's error code. */
export class CoworkerError extends Error {
  /** @param {string} code @param {string} message @param {RunContext} [run] the failed context, when the server sent one */
  constructor(code, message, run) {
    super(`${code}: ${message}`);
    this.name = "CoworkerError";
    this.code = code;
    if (run !== undefined) this.run = run;
  }
}

const OPEN = 1;
/** Close codes after which reconnecting would fail the same way (protocol.md §8). */
const FINAL_CLOSE_CODES = new Map([
  [1008, "too many messages were refused as rate_limited"],
  [4001, "not authenticated"],
  [4002, "the token expired"],
  [4003, "too many connections for this owner"],
]);
const MAX_SEEN_EVENTS = 10000;

function decodePointer(path) {
  return path.split("/").slice(1).map((k) => k.replace(/~1/g, "/").replace(/~0/g, "~"));
}

/**
 * Applies a diff's ops (RFC 6902 add/remove/replace, plus `append`; protocol.md §6) to `root` without changing it:
 * every container on an op's path is copied once per call, everything else is shared. Returns the new root.
 * Throws when an op does not fit the state (which a correct server never sends).
 * @param {Object} root @param {Array<{op: string, path: string, value?: *}>} ops @returns {Object}
 */
export function applyDiff(root, ops) {
  const fresh = new WeakSet(); // containers made (or received) during this call: safe to change in place
  const own = (v) => {
    if (v === null || typeof v !== "object" || fresh.has(v)) return v;
    const copy = Array.isArray(v) ? v.slice() : { ...v };
    fresh.add(copy);
    return copy;
  };
  let doc = own(root);
  for (const op of ops) {
    if (op.value !== null && typeof op.value === "object") fresh.add(op.value);
    const keys = decodePointer(op.path);
    if (keys.length === 0) {
      if (op.op !== "replace") throw new Error(`diff op ${op.op} on the whole state`);
      doc = op.value;
      continue;
    }
    let parent = doc;
    for (let i = 0; i < keys.length - 1; i++) {
      const key = Array.isArray(parent) ? Number(keys[i]) : keys[i];
      const child = parent[key];
      if (child === null || typeof child !== "object") throw new Error(`diff path ${op.path} does not exist`);
      parent = parent[key] = own(child);
    }
    const last = keys[keys.length - 1];
    const isArray = Array.isArray(parent);
    const index = isArray ? (last === "-" ? parent.length : Number(last)) : last;
    if (isArray && !(index >= 0 && index <= parent.length)) throw new Error(`diff index ${op.path} out of range`);
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
        if (Array.isArray(target) && Array.isArray(op.value)) {
          const items = (parent[index] = own(target));
          for (const item of op.value) items.push(item);
        } else if (typeof target === "string" && typeof op.value === "string") {
          parent[index] = target + op.value;
        } else {
          throw new Error(`append does not fit the value at ${op.path}`);
        }
        break;
      }
      default:
        throw new Error(`unknown diff op ${op.op}`);
    }
  }
  return doc;
}

/**
 * Rebuilds the seed's snapshot shape from a wire state (whose views hold run ids) at `seq`.
 * @param {Object} state @param {number} [seq] @returns {Snapshot}
 */
export function shape(state, seq = 0) {
  const runs = state.activeRuns ?? {};
  const pick = (ids) => {
    const out = [];
    for (const id of ids ?? []) if (runs[id]) out.push(runs[id]);
    return out;
  };
  const activePipelines = {};
  for (const [root, ids] of Object.entries(state.activePipelines ?? {})) activePipelines[root] = pick(ids);
  const pendingRuns = [];
  for (const run of Object.values(runs)) if (run.status === "pending" || run.status === "running") pendingRuns.push(run);
  return {
    currentRun: state.currentRun ?? null,
    activeRuns: runs,
    isLoading: state.isLoading ?? false,
    activeDialogs: pick(state.activeDialogs),
    activeAI: pick(state.activeAI),
    activePipelines,
    pendingRuns,
    seq,
  };
}

/** UTF-8 length of a string (what the server counts against its message limit). */
function utf8Length(s) {
  let n = s.length;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 0xd800 && c <= 0xdfff) n += 1; // half of a 4-byte pair
    else if (c > 0x7ff) n += 2;
    else if (c > 0x7f) n += 1;
  }
  return n;
}

/** The next animation frame, or 100 ms when none comes (hidden tabs get no animation frames). */
function nextFrame(fn) {
  if (typeof requestAnimationFrame !== "function") {
    setTimeout(fn, 16);
    return;
  }
  let done = false;
  const once = () => {
    if (done) return;
    done = true;
    fn();
  };
  requestAnimationFrame(once);
  setTimeout(once, 100);
}

/** One `subscribe` of a client: its wire state survives reconnections (it resumes from its seq). */
class Subscription {
  constructor(client, callback, { space, views, events }) {
    this.client = client;
    this.callback = callback;
    this.space = space;
    this.views = views;
    this.events = events;
    this.sub = null; // the server's id on the current connection
    this.epoch = null;
    this.seq = null;
    this.state = null; // the wire state (protocol.md §5), null until the first snapshot
    this.snapshot = null; // its shape, rebuilt once per frame
    this.closed = false;
    this.resumes = 0; // granted `since` resumes
    this.resyncs = 0; // snapshots that replaced a state (resync, or a refused resume)
  }

  request() {
    const msg = { type: "subscribe", space: this.space, events: this.events };
    if (this.views) msg.views = this.views;
    if (this.state !== null && this.epoch !== null) msg.since = { epoch: this.epoch, seq: this.seq };
    return msg;
  }

  /** The answer to `subscribe`: a snapshot, or a granted resume (the missed diffs follow). */
  started(frame) {
    this.sub = frame.sub;
    this.epoch = frame.epoch;
    if (frame.type === "snapshot") {
      if (this.state !== null) this.resyncs += 1;
      this.state = frame.state;
      this.seq = frame.seq;
      this.publish();
    } else {
      this.resumes += 1;
      this.seq = frame.seq;
    }
  }

  /** A later frame of this subscription: a diff, or a snapshot flagged `resync` after an overflow. */
  frame(frame) {
    if (frame.type === "snapshot") {
      this.resyncs += 1;
      this.state = frame.state;
      this.seq = frame.seq;
    } else if (frame.type === "diff") {
      if (this.state === null) return;
      if (frame.base !== this.seq) {
        this.restart(`a diff from seq ${frame.base} reached a state at seq ${this.seq}`);
        return;
      }
      try {
        this.state = applyDiff(this.state, frame.ops);
      } catch (e) {
        this.restart(e.message);
        return;
      }
      this.seq = frame.seq;
    } else {
      return;
    }
    this.publish();
  }

  /** A diff did not fit (a server bug): drop this subscription and start over from a fresh snapshot. */
  restart(why) {
    this.client.emit("error", new CoworkerError("state_mismatch", `${why}; subscribing again`));
    this.client.subs.delete(this.sub);
    this.client.request({ type: "unsubscribe", sub: this.sub }).catch(() => {});
    this.state = null;
    this.client.resubscribe(this);
  }

  publish() {
    this.snapshot = shape(this.state, this.seq);
    this.client.latest = this.snapshot;
    try {
      this.callback(this.snapshot);
    } catch (e) {
      console.error("coworker: a subscriber threw", e);
    }
  }
}

/** A connection to a Coworker server that reconnects by itself. Create it with {@link connect}. */
export class CoworkerClient {
  /** @param {string} url @param {ConnectOptions} [options] */
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket: pass options.WebSocket (in Node: the `ws` package)");
    this.token = options.token ?? null;
    this.schedule = options.schedule ?? nextFrame;
    this.minBackoffMs = options.minBackoffMs ?? 250;
    this.maxBackoffMs = options.maxBackoffMs ?? 5000;
    this.maxOpsPerPatch = options.maxOpsPerPatch ?? 256;
    this.maxMessageBytes = options.maxMessageBytes ?? 65536;
    /** @type {'connecting'|'open'|'reconnecting'|'closed'} */
    this.status = "connecting";
    /** @type {Snapshot|null} */
    this.latest = null;
    this.nextId = 1;
    this.pending = new Map(); // request id → {resolve, reject, onAnswer}
    this.subs = new Map(); // the server's sub id → Subscription, on the current connection
    this.subscriptions = new Set(); // every live subscribe(), across connections
    this.listeners = new Map(); // event name → Set<fn>
    this.buffers = new Map(); // run id → [{text, set, waiters}] writes waiting for the next frame
    this.flushScheduled = false;
    this.attempt = 0;
    this.everOpened = false;
    this.stopped = false;
    this.retryTimer = null;
    this.framesReceived = 0;
    this.framesSent = 0;
    this.seenEvents = new Set();
    /** Resolves with the client once the first connection is open (and its `hello` answered, with a token). */
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.ready.catch(() => {}); // reported to whoever awaits it, never as an unhandled rejection
    this.open();
  }

  // --- connection ---------------------------------------------------------------------------------------------

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.emit("status", status);
  }

  isOpen() {
    return this.ws?.readyState === OPEN;
  }

  open() {
    this.retryTimer = null;
    let ws;
    try {
      ws = new this.WebSocket(this.url, this.options.protocols);
    } catch (e) {
      this.lost({ code: 1006, reason: String(e?.message ?? e) });
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      const first = !this.everOpened;
      this.everOpened = true;
      // Pipelined: the server answers in order, so the subscribes and writes below run authenticated.
      const hello = this.token ? this.request({ type: "hello", token: this.token }) : null;
      this.setStatus("open");
      for (const s of this.subscriptions) this.resubscribe(s);
      this.flush();
      if (!hello) {
        this.readyResolve(this);
        return;
      }
      hello.then(
        () => this.readyResolve(this),
        (e) => {
          if (first) this.readyReject(e);
          else if (e.code !== "connection_lost") this.emit("error", e);
        },
      );
    };
    ws.onmessage = (event) => {
      if (this.ws === ws) this.receive(typeof event.data === "string" ? event.data : String(event.data));
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this.lost(event);
    };
    ws.onerror = () => {}; // a close event follows
  }

  /** The socket is gone: answer what waited, then reconnect (or stop, when retrying cannot help). */
  lost(event) {
    const code = event?.code;
    this.failPending(new CoworkerError("connection_lost", `the connection closed (${code ?? "no code"}) before the answer`));
    this.subs.clear();
    if (!this.stopped && !this.everOpened) {
      this.stopped = true;
      this.readyReject(new CoworkerError("connect_failed", `cannot connect to ${this.url}`));
    }
    if (!this.stopped && FINAL_CLOSE_CODES.has(code)) {
      this.stopped = true;
      this.emit("error", new CoworkerError(`closed_${code}`, event.reason || FINAL_CLOSE_CODES.get(code)));
    }
    if (this.stopped) {
      this.failBuffers(new CoworkerError("closed", "the client stopped before the write was sent"));
      this.setStatus("closed");
      return;
    }
    this.setStatus("reconnecting");
    const delay = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt = Math.min(this.attempt + 1, 30);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  failPending(error) {
    const waiters = [...this.pending.values()];
    this.pending.clear();
    for (const w of waiters) w.reject(error);
  }

  failBuffers(error) {
    const buffers = [...this.buffers.values()];
    this.buffers.clear();
    for (const entries of buffers) for (const e of entries) for (const w of e.waiters) w.reject(error);
  }

  /**
   * Presents a fresh token (after `token_expired`, protocol.md §2.1); it is also used for later reconnections.
   * @param {string} token @returns {Promise<{owner: string|null, expires: number|null}>}
   */
  async setToken(token) {
    this.token = token;
    const { owner, expires } = await this.request({ type: "hello", token });
    return { owner, expires };
  }

  /** Closes for good: buffered writes go out first; no reconnection; requests still waiting reject. */
  close() {
    if (this.stopped && this.status === "closed") return;
    if (this.isOpen()) this.flush();
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (!this.everOpened) this.readyReject(new CoworkerError("closed", "closed before the connection opened"));
    this.failPending(new CoworkerError("closed", "the client was closed before the answer"));
    this.failBuffers(new CoworkerError("closed", "the client was closed before the write was sent"));
    this.subs.clear();
    try {
      this.ws?.close(1000);
    } catch {
      // already closing
    }
    this.setStatus("closed");
  }

  // --- frames -------------------------------------------------------------------------------------------------

  receive(text) {
    this.framesReceived += 1;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit("error", new CoworkerError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    if (frame.id !== undefined && frame.id !== null && frame.type !== "diff" && frame.type !== "event") {
      const waiter = this.pending.get(frame.id);
      if (waiter) {
        this.pending.delete(frame.id);
        if (frame.type === "error") {
          waiter.reject(new CoworkerError(frame.code, frame.message, frame.run));
        } else {
          // Synchronously, not in a promise callback: the next frames (a subscription's first diff) may be
          // delivered in this same task, before any promise callback runs.
          waiter.onAnswer?.(frame);
          waiter.resolve(frame);
        }
        return;
      }
    }
    switch (frame.type) {
      case "snapshot":
      case "diff":
        this.subs.get(frame.sub)?.frame(frame);
        return;
      case "event": {
        if (!this.subs.has(frame.sub)) return;
        // Two subscriptions of one space both get the space's events: announce each once.
        const key = `${frame.name} ${frame.run?.id}`;
        if (this.seenEvents.has(key)) return;
        this.seenEvents.add(key);
        if (this.seenEvents.size > MAX_SEEN_EVENTS) this.seenEvents.delete(this.seenEvents.values().next().value);
        this.emit(frame.name, frame.run);
        return;
      }
      case "error":
        this.emit("error", new CoworkerError(frame.code, frame.message, frame.run));
        return;
      default:
    }
  }

  /** Sends `text(id)` as a request with a fresh id; resolves with its answer, rejects with a CoworkerError. */
  requestText(text, onAnswer) {
    return new Promise((resolve, reject) => {
      if (!this.isOpen()) {
        reject(new CoworkerError("not_connected", `the connection is ${this.status}`));
        return;
      }
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject, onAnswer });
      this.framesSent += 1;
      this.ws.send(text(id));
    });
  }

  /**
   * Sends `msg` with a fresh id; resolves with the answering frame, rejects with a {@link CoworkerError}.
   * `onAnswer`, if given, is called with a successful answer as soon as it is received, before any later frame.
   */
  request(msg, onAnswer) {
    return this.requestText((id) => JSON.stringify({ ...msg, id }), onAnswer);
  }

  // --- runs ---------------------------------------------------------------------------------------------------

  /**
   * Starts a run (protocol.md §2.2): the single entry point. Resolves with its context; for a server-side operation
   * (select, create, update, delete) once it finished. A refused run rejects with `.code` (and `.run` when failed).
   * @param {Object} config `{operation, doctype?, input?, options?, agent?, parentRun?, steps?, space?, id?, …}`
   * @returns {Promise<RunContext>}
   */
  async run(config) {
    return (await this.request({ type: "run", run: config })).run;
  }

  /** Sets `path` (dotted like `output.value`, or a JSON Pointer) of a live run. Coalesced: the last value per frame. */
  updateRunField(runId, path, value) {
    return this.queue(runId, { op: "set", path, value }, path);
  }

  /** Appends one item to the array (or text to the string) at `path`. All appends of a frame go out in order. */
  append(runId, path, value) {
    return this.queue(runId, { op: "append", path, value });
  }

  /** Shallow-merges `updates` into `steps[index]` (`index == steps.length` pushes it). */
  updateRunStep(runId, index, updates) {
    return this.queue(runId, { op: "step", index, value: updates });
  }

  /** Completes a run right after its buffered writes; resolves with its final context. */
  async complete(runId, output) {
    this.flushRun(runId);
    const msg = { type: "complete", run: runId };
    if (output !== undefined) msg.output = output;
    return (await this.request(msg)).run;
  }

  /**
   * Fails a run right after its buffered writes; resolves with its final context.
   * @param {string} runId @param {string|Error|{message: string, code?: string}} error
   */
  async fail(runId, error) {
    this.flushRun(runId);
    let err = error;
    if (typeof error === "string") err = { message: error };
    else if (error instanceof Error) err = typeof error.code === "string" ? { message: error.message, code: error.code } : { message: error.message };
    return (await this.request({ type: "fail", run: runId, error: err })).run;
  }

  /**
   * Buffers one op for the run's next patch frame. Resolves (or rejects with `.code`) with the reply to the frame
   * that carried it. `setPath` marks a `set`, which replaces a `set` of the same path just before it.
   */
  queue(runId, op, setPath) {
    return new Promise((resolve, reject) => {
      if (this.stopped) {
        reject(new CoworkerError("closed", "the client is closed"));
        return;
      }
      let entries = this.buffers.get(runId);
      if (!entries) this.buffers.set(runId, (entries = []));
      const last = entries[entries.length - 1];
      const text = JSON.stringify(op); // the value as it is now, even if the caller changes it before the frame
      if (setPath !== undefined && last && last.set === setPath) {
        last.text = text; // a keystroke supersedes the previous one of the same frame
        last.waiters.push({ resolve, reject });
      } else {
        entries.push({ text, set: setPath, waiters: [{ resolve, reject }] });
      }
      if (!this.flushScheduled) {
        this.flushScheduled = true;
        this.schedule(() => {
          this.flushScheduled = false;
          this.flush();
        });
      }
    });
  }

  /** Sends every run's buffered writes now, one patch frame per run (kept for the reconnection when offline). */
  flush() {
    if (!this.isOpen()) return;
    for (const runId of [...this.buffers.keys()]) this.flushRun(runId);
  }

  /**
   * Sends one run's buffered writes now: one patch frame, split in order past the server's op and size limits.
   * Each write's promise settles with the reply to its frame.
   */
  flushRun(runId) {
    const entries = this.buffers.get(runId);
    if (!entries || !this.isOpen()) return;
    this.buffers.delete(runId);
    const head = `{"type":"patch","run":${JSON.stringify(runId)},"ops":[`;
    const room = this.maxMessageBytes - utf8Length(head) - 32; // the id and the closing brackets
    let chunk = [];
    let bytes = 0;
    const send = () => {
      const sent = chunk;
      const ops = sent.map((e) => e.text).join(",");
      this.requestText((id) => `${head}${ops}],"id":${id}}`).then(
        () => sent.forEach((e) => e.waiters.forEach((w) => w.resolve())),
        (err) => sent.forEach((e) => e.waiters.forEach((w) => w.reject(err))),
      );
      chunk = [];
      bytes = 0;
    };
    for (const e of entries) {
      const size = utf8Length(e.text) + 1;
      if (size > room) {
        const err = new CoworkerError("message_too_large", `one write of ${size} bytes exceeds the server's ${this.maxMessageBytes}-byte messages`);
        e.waiters.forEach((w) => w.reject(err));
        continue;
      }
      if (chunk.length === this.maxOpsPerPatch || bytes + size > room) send();
      chunk.push(e);
      bytes += size;
    }
    if (chunk.length) send();
  }

  // --- state --------------------------------------------------------------------------------------------------

  /**
   * Subscribes to a space. `callback` gets the seed's snapshot shape after the snapshot and then once per frame
   * (each diff frame, however many ops it holds). Survives reconnections (it resumes with `since`).
   * @param {(s: Snapshot) => void} callback
   * @param {{space?: string, views?: string[], events?: boolean}} [options] `events` (default true) feeds `on()`
   * @returns {() => void} unsubscribe
   */
  subscribe(callback, { space = "default", views, events = true } = {}) {
    const s = new Subscription(this, callback, { space, views, events });
    this.subscriptions.add(s);
    this.resubscribe(s);
    return () => {
      if (s.closed) return;
      s.closed = true;
      this.subscriptions.delete(s);
      if (s.sub !== null && this.subs.get(s.sub) === s) {
        this.subs.delete(s.sub);
        this.request({ type: "unsubscribe", sub: s.sub }).catch(() => {});
      }
    };
  }

  resubscribe(s) {
    if (!this.isOpen() || s.closed) return; // sent when the connection opens
    const started = (frame) => {
      if (s.closed) {
        this.request({ type: "unsubscribe", sub: frame.sub }).catch(() => {});
        return;
      }
      this.subs.set(frame.sub, s);
      s.started(frame);
    };
    this.request(s.request(), started).catch((e) => {
      if (s.closed || e.code === "connection_lost" || e.code === "closed") return; // resent on the next connection
      // Refused (unknown_view, forbidden, quota_subscriptions, …): retrying would be refused the same way.
      s.closed = true;
      this.subscriptions.delete(s);
      this.emit("error", e);
    });
  }

  /** The latest snapshot shape (of the most recently updated subscription). @returns {Snapshot|null} */
  getCurrent() {
    return this.latest;
  }

  /** An active run of a subscribed space, by id. @returns {RunContext|undefined} */
  getActiveRun(id) {
    for (const s of this.subscriptions) {
      const run = s.state?.activeRuns?.[id];
      if (run) return run;
    }
    return undefined;
  }

  /**
   * Listens to `before:run`, `after:run`, `error:run` (the lifecycle events of subscribed spaces, each once),
   * `status` (`connecting`, `open`, `reconnecting`, `closed`) and `error` (a CoworkerError not tied to a request).
   * @param {string} name @param {(value: *) => void} fn @returns {() => void} off
   */
  on(name, fn) {
    if (!this.listeners.has(name)) this.listeners.set(name, new Set());
    this.listeners.get(name).add(fn);
    return () => this.listeners.get(name)?.delete(fn);
  }

  emit(name, value) {
    for (const fn of [...(this.listeners.get(name) ?? [])]) {
      try {
        fn(value);
      } catch (e) {
        console.error(`coworker: a listener of ${name} threw`, e);
      }
    }
  }
}

/**
 * Connects to a Coworker server. Resolves with the client once the socket is open (and the token accepted); rejects
 * with `.code` (`connect_failed`, `unauthenticated`, …) when the first attempt fails. Later losses reconnect.
 * @param {string} url e.g. `ws://127.0.0.1:8080/ws`
 * @param {ConnectOptions} [options]
 * @returns {Promise<CoworkerClient>}
 */
export function connect(url, options) {
  return new CoworkerClient(url, options).ready;
}
