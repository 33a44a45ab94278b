// Coworker client: ES modules, no dependencies, for browsers and Node (pass `WebSocket` in Node, e.g. the `ws`
// package's). It speaks protocol.md. This entry module wires the parts and is the public API (`connect`,
// `CoworkerClient`, `CoworkerError`, `applyDiff`, `shape`); each part owns one concern and knows the others only
// through the narrow calls made here:
//   coworker/transport.js      the socket: reconnection with jittered backoff, final closes, the dead-socket watchdog
//                              and the status. Pure connection logic, so it knows nothing of message types.
//   coworker/requests.js       request ids matched to their `reply`/`error`; the one place that settles promises.
//   coworker/writes.js         writes coalesced per run per animation frame into one `patches` frame (an element per
//                              run), split past the server's limits, held until the connection's `hello` is
//                              answered; each write settles with its element. Batching rules live apart from the socket.
//   coworker/subscriptions.js  `subscribe()` across connections: resubscribe with `since`, route frames by `sub`,
//                              callbacks, events once each.
//   coworker/mirror.js         the normalized wire state of one subscription, `applyDiff` and the snapshot `shape`:
//                              pure data, testable without a socket.
//   coworker/errors.js         `CoworkerError`, shared by all.
// The client itself decides what goes on the wire at the protocol level: `hello` on every connection (its `limits`
// feed the writes' splitting and the watchdog), the probe, and the dispatch of received frames.
import { CoworkerError } from "./coworker/errors.js";
import { Transport } from "./coworker/transport.js";
import { Requests } from "./coworker/requests.js";
import { Writes } from "./coworker/writes.js";
import { Subscriptions } from "./coworker/subscriptions.js";

export { CoworkerError } from "./coworker/errors.js";
export { applyDiff, shape } from "./coworker/mirror.js";

/** @typedef {import("./coworker/mirror.js").RunContext} RunContext */
/** @typedef {import("./coworker/mirror.js").Snapshot} Snapshot */

/**
 * The limits a server tells in its `hello` reply (protocol.md §2.1, §9).
 * @typedef {Object} Limits
 * @property {number} maxMessageBytes
 * @property {number} maxOpsPerPatch ops in one `patch`, and in one element of a `patches` frame
 * @property {number} [maxPatchesPerFrame] elements in one `patches` frame (absent: a server without `patches`)
 * @property {number} [maxOpsPerFrame] ops in all the elements of one `patches` frame together
 * @property {number} maxRunBytes
 * @property {number} messagesPerSecond
 * @property {number} bytesPerSecond
 * @property {number} pingIntervalMs
 * @property {number} idleTimeoutMs
 * @property {number} tickMs
 */

/**
 * @typedef {Object} ConnectOptions
 * @property {typeof WebSocket} [WebSocket] the WebSocket constructor (required in Node: e.g. the `ws` package's)
 * @property {string} [token] a JWT, sent with `hello` on every (re)connection and with each probe (default: the
 *   token of a `bearer.<jwt>` entry of `protocols`)
 * @property {string|string[]} [protocols] WebSocket subprotocols (e.g. `["coworker.v1", "bearer.<jwt>"]`)
 * @property {number} [minBackoffMs=250] first reconnection delay, doubled per failed attempt (times 0.5–1)
 * @property {number} [maxBackoffMs=5000] longest reconnection delay
 * @property {(fn: () => void) => void} [schedule] when buffered writes go out (default: the next animation frame,
 *   or 100 ms when the page gets none, e.g. a hidden tab; a 16 ms timer where there is no requestAnimationFrame)
 * @property {number} [maxOpsPerPatch] ops per element of a `patches` frame: the server's `maxOpsPerPatch` from the
 *   `hello` reply, or this when lower (256 while the server has not told)
 * @property {number} [maxPatchesPerFrame] elements (runs' batches of ops) per `patches` frame: the server's
 *   `maxPatchesPerFrame`, or this when lower (1024 while the server has not told)
 * @property {number} [maxOpsPerFrame] ops per `patches` frame, all its elements together: the server's
 *   `maxOpsPerFrame`, or this when lower (4096 while the server has not told)
 * @property {number} [maxMessageBytes] bytes per message: the server's `maxMessageBytes` from the `hello` reply,
 *   or this when lower (65536 while the server has not told)
 * @property {number} [deadSocketMs] silence after which the client probes the connection with a `hello`
 *   (default: the server's `pingIntervalMs`, 20000 until it is known); a socket not open by then is lost too
 * @property {number} [probeTimeoutMs=5000] how long after a probe a silent connection counts as lost
 */

/** The JWT of a `bearer.<jwt>` subprotocol, if there is one. */
function bearerToken(protocols) {
  const list = typeof protocols === "string" ? [protocols] : protocols ?? [];
  const entry = list.find((p) => p.startsWith("bearer."));
  return entry ? entry.slice("bearer.".length) : null;
}

/** A connection to a Coworker server that reconnects by itself. Create it with {@link connect}. */
export class CoworkerClient {
  /** @param {string} url @param {ConnectOptions} [options] */
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.token = options.token ?? bearerToken(options.protocols);
    /** @type {Limits|null} the server's limits, from the last `hello` reply */
    this.limits = null;
    this.listeners = new Map(); // event name → Set<fn>
    this.transport = new Transport(url, options, {
      opened: (first) => this.opened(first),
      received: (text) => this.receive(text),
      probe: () => this.probe(),
      lost: (error) => this.lost(error),
      stopped: (error) => this.stopped(error),
      status: (status) => this.emit("status", status),
    });
    this.requests = new Requests(this.transport);
    this.writes = new Writes(this.requests, options);
    this.subscriptions = new Subscriptions(this.requests, (name, value) => this.emit(name, value));
    /** Resolves with the client once the first connection is open and its `hello` answered. */
    this.ready = new Promise((resolve, reject) => {
      this.readyResolve = resolve;
      this.readyReject = reject;
    });
    this.ready.catch(() => {}); // reported to whoever awaits it, never as an unhandled rejection
    this.transport.open();
  }

  /** @type {'connecting'|'open'|'reconnecting'|'closed'} */
  get status() {
    return this.transport.status;
  }

  /** The current WebSocket. */
  get ws() {
    return this.transport.ws;
  }

  /** Frames received, on every connection so far. */
  get framesReceived() {
    return this.transport.framesReceived;
  }

  /** Frames sent, on every connection so far. */
  get framesSent() {
    return this.transport.framesSent;
  }

  // --- connection ---------------------------------------------------------------------------------------------

  hello() {
    return this.token ? { type: "hello", token: this.token } : { type: "hello" };
  }

  /** A `hello` reply: its limits now apply. */
  helloAnswered(frame) {
    if (!frame.limits) return;
    this.limits = frame.limits;
    this.writes.limit(frame.limits);
    if (this.options.deadSocketMs === undefined && frame.limits.pingIntervalMs > 0) {
      this.transport.setDeadSocketMs(frame.limits.pingIntervalMs);
    }
  }

  /**
   * A socket opened: `hello` first (the server answers in order, so the subscribes pipelined behind it run
   * authenticated), and the writes once it is answered.
   */
  opened(first) {
    const hello = this.requests.request(this.hello(), (frame) => {
      this.helloAnswered(frame);
      this.writes.resume();
    });
    this.subscriptions.connected();
    hello.then(
      () => this.readyResolve(this),
      (e) => {
        if (e.code === "connection_lost" || e.code === "closed") return; // the next connection says hello again
        if (first) this.readyReject(e);
        else this.emit("error", e);
      },
    );
  }

  /**
   * The connection was silent for `deadSocketMs`: ask for an answer (any frame will do). A `hello` without a token
   * does not re-authenticate: the server answers with the limits, or `token_expired`, and keeps the connection.
   */
  probe() {
    this.requests.request({ type: "hello" }, (frame) => this.helloAnswered(frame)).catch(() => {});
  }

  /** The socket is gone: what waited for an answer rejects, writes wait for the next connection's `hello`. */
  lost(error) {
    this.writes.pause();
    this.requests.failAll(error);
    this.subscriptions.lost();
  }

  /** The transport gave up by itself (`connect_failed`, or a close that retrying cannot fix). */
  stopped(error) {
    if (error.code !== "connect_failed") this.emit("error", error);
    this.readyReject(error); // when nothing settled it yet
    this.writes.close(new CoworkerError("closed", "the client stopped before the write was sent"));
  }

  /**
   * Presents a fresh token (after `token_expired`, protocol.md §2.1); it is also used for later reconnections.
   * @param {string} token @returns {Promise<{owner: string|null, expires: number|null}>}
   */
  async setToken(token) {
    this.token = token;
    const { owner, expires } = await this.request({ type: "hello", token }, (frame) => this.helloAnswered(frame));
    return { owner, expires };
  }

  /** Closes for good: buffered writes go out first; no reconnection; requests still waiting reject. */
  close() {
    if (this.transport.stopped && this.status === "closed") return;
    this.writes.flush();
    this.readyReject(new CoworkerError("closed", "closed before the connection was ready"));
    this.requests.failAll(new CoworkerError("closed", "the client was closed before the answer"));
    this.writes.close(new CoworkerError("closed", "the client was closed before the write was sent"));
    this.subscriptions.lost();
    this.transport.stop();
  }

  // --- frames -------------------------------------------------------------------------------------------------

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit("error", new CoworkerError("bad_frame", "the server sent a frame that is not JSON"));
      return;
    }
    if (this.requests.answer(frame)) return;
    switch (frame.type) {
      case "snapshot":
      case "diff":
        this.subscriptions.frame(frame);
        return;
      case "event":
        this.subscriptions.event(frame);
        return;
      case "error":
        this.emit("error", new CoworkerError(frame.code, frame.message, frame.run));
        return;
      default:
    }
  }

  /**
   * Sends `msg` with a fresh id; resolves with the answering frame, rejects with a {@link CoworkerError}.
   * `onAnswer`, if given, is called with a successful answer as soon as it is received, before any later frame.
   */
  request(msg, onAnswer) {
    return this.requests.request(msg, onAnswer);
  }

  // --- runs ---------------------------------------------------------------------------------------------------

  /**
   * Starts a run (protocol.md §2.2): the single entry point. Resolves with its context; for a server-side operation
   * (select, create, update, delete) once it finished. A refused run rejects with `.code` (and `.run` when failed),
   * e.g. `quota_state_bytes` or `over_capacity` when a state budget is spent (§9).
   * @param {Object} config `{operation, doctype?, input?, options?, agent?, parentRun?, steps?, space?, id?, …}`
   * @returns {Promise<RunContext>}
   */
  async run(config) {
    return (await this.request({ type: "run", run: config })).run;
  }

  /**
   * Sets `path` (dotted like `output.value`, or a JSON Pointer) of a live run. Coalesced: the last value per frame.
   * Like every write, it rejects with `.code` when the server refuses its run's element of the `patches` frame (the
   * other runs' elements still apply) or the whole frame, e.g. `run_finished`, `run_too_large`,
   * `quota_state_bytes` or `over_capacity` past a state budget (protocol.md §9).
   */
  updateRunField(runId, path, value) {
    return this.writes.queue(runId, { op: "set", path, value }, path);
  }

  /** Appends one item to the array (or text to the string) at `path`. All appends of a frame go out in order. */
  append(runId, path, value) {
    return this.writes.queue(runId, { op: "append", path, value });
  }

  /** Shallow-merges `updates` into `steps[index]` (`index == steps.length` pushes it). */
  updateRunStep(runId, index, updates) {
    return this.writes.queue(runId, { op: "step", index, value: updates });
  }

  /** Sends every run's buffered writes now (one `patches` frame), when the connection can take them. */
  flush() {
    this.writes.flush();
  }

  /** Completes a run right after its buffered writes (sent with every run's); resolves with its final context. */
  async complete(runId, output) {
    const draining = this.writes.drain(runId);
    if (draining) await draining;
    const msg = { type: "complete", run: runId };
    if (output !== undefined) msg.output = output;
    return (await this.request(msg)).run;
  }

  /**
   * Fails a run right after its buffered writes; resolves with its final context.
   * @param {string} runId @param {string|Error|{message: string, code?: string}} error
   */
  async fail(runId, error) {
    const draining = this.writes.drain(runId);
    if (draining) await draining;
    let err = error;
    if (typeof error === "string") err = { message: error };
    else if (error instanceof Error) err = typeof error.code === "string" ? { message: error.message, code: error.code } : { message: error.message };
    return (await this.request({ type: "fail", run: runId, error: err })).run;
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
    return this.subscriptions.add(callback, { space, views, events });
  }

  /** The latest snapshot shape (of the most recently updated subscription). @returns {Snapshot|null} */
  getCurrent() {
    return this.subscriptions.latest;
  }

  /** An active run of a subscribed space, by id. @returns {RunContext|undefined} */
  getActiveRun(id) {
    return this.subscriptions.activeRun(id);
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
 * Connects to a Coworker server. Resolves with the client once the socket is open and its `hello` answered (the
 * token accepted); rejects with `.code` (`connect_failed`, `unauthenticated`, …) when the first attempt fails. Later
 * losses reconnect.
 * @param {string} url e.g. `ws://127.0.0.1:8080/ws`
 * @param {ConnectOptions} [options]
 * @returns {Promise<CoworkerClient>}
 */
export function connect(url, options) {
  return new CoworkerClient(url, options).ready;
}
