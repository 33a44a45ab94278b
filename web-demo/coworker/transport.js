// The socket: one WebSocket at a time to one URL, opened again after a loss with jittered exponential backoff, given
// up after a close that retrying cannot fix (protocol.md §8), and dropped when it has gone silent. Browsers cannot
// see WebSocket pings, so a half-open connection (network gone, laptop slept) would otherwise hang forever: when
// nothing has arrived for `deadSocketMs`, the owner sends a probe, and when nothing arrives within `probeTimeoutMs`
// of it, the socket counts as lost. Owns the connection status and the frame counters; knows nothing of messages.
import { CoworkerError } from "./errors.js";

const OPEN = 1;
/** Close codes after which reconnecting would fail the same way (protocol.md §8). */
const FINAL_CLOSE_CODES = new Map([
  [1008, "too many messages were refused as rate_limited"],
  [4001, "not authenticated"],
  [4002, "the token expired"],
  [4003, "too many connections for this owner"],
]);

/** @typedef {'connecting'|'open'|'reconnecting'|'closed'} Status */

/**
 * What the transport tells its owner, synchronously from socket events and timers.
 * @typedef {Object} TransportHooks
 * @property {(first: boolean) => void} opened a socket opened (`first`: the first one ever)
 * @property {(text: string) => void} received a text frame arrived
 * @property {() => void} probe nothing arrived for `deadSocketMs`: send a request that the server answers
 * @property {(error: CoworkerError) => void} lost the socket is gone (`connection_lost`); a reconnection follows,
 *   unless `stopped` is called right after
 * @property {(error: CoworkerError) => void} stopped it gives up by itself: the first attempt failed
 *   (`connect_failed`) or the server closed for good (`closed_<code>`)
 * @property {(status: Status) => void} status the status changed
 */

export class Transport {
  /**
   * @param {string} url
   * @param {import("../coworker.js").ConnectOptions} options
   * @param {TransportHooks} hooks
   */
  constructor(url, options, hooks) {
    this.url = url;
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new Error("no WebSocket: pass options.WebSocket (in Node: the `ws` package)");
    this.protocols = options.protocols;
    this.minBackoffMs = options.minBackoffMs ?? 250;
    this.maxBackoffMs = options.maxBackoffMs ?? 5000;
    this.deadSocketMs = options.deadSocketMs ?? 20000;
    this.probeTimeoutMs = options.probeTimeoutMs ?? 5000;
    this.hooks = hooks;
    /** @type {Status} */
    this.status = "connecting";
    /** @type {WebSocket|null} */
    this.ws = null;
    this.attempt = 0;
    this.everOpened = false;
    this.stopped = false;
    this.retryTimer = null;
    this.watchTimer = null;
    this.heardAt = 0; // when the current socket last showed life (created, opened, a frame)
    this.probedAt = null; // when the unanswered probe went out
    this.framesReceived = 0;
    this.framesSent = 0;
  }

  isOpen() {
    return this.ws?.readyState === OPEN;
  }

  /** Sends one text frame on the open socket. */
  send(text) {
    this.framesSent += 1;
    this.ws.send(text);
  }

  open() {
    this.retryTimer = null;
    let ws;
    try {
      ws = new this.WebSocket(this.url, this.protocols);
    } catch (e) {
      this.closed({ code: 1006, reason: String(e?.message ?? e) });
      return;
    }
    this.ws = ws;
    this.heard();
    this.watch();
    ws.onopen = () => {
      if (this.ws !== ws) return;
      this.attempt = 0;
      const first = !this.everOpened;
      this.everOpened = true;
      this.heard();
      this.hooks.opened(first);
      this.setStatus("open");
    };
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      this.framesReceived += 1;
      this.heard();
      this.hooks.received(typeof event.data === "string" ? event.data : String(event.data));
    };
    ws.onclose = (event) => {
      if (this.ws === ws) this.closed(event);
    };
    ws.onerror = () => {}; // a close event follows
  }

  heard() {
    this.heardAt = Date.now();
    this.probedAt = null;
  }

  /** Sets the silence after which the socket is probed (the server's ping interval), and re-plans the check. */
  setDeadSocketMs(ms) {
    this.deadSocketMs = ms;
    if (this.watchTimer !== null) this.watch();
  }

  /**
   * The dead-socket check, run at each deadline (frames only stamp `heardAt`, so a busy socket costs no timers):
   * silent for `deadSocketMs` → probe; no frame within `probeTimeoutMs` of the probe → lost. A socket that has not
   * even opened by the first deadline is lost too.
   */
  watch() {
    clearTimeout(this.watchTimer);
    this.watchTimer = null;
    const ws = this.ws;
    if (!ws || this.stopped) return;
    const now = Date.now();
    let left;
    if (this.probedAt !== null) {
      left = this.probedAt + this.probeTimeoutMs - now;
      if (left <= 0) return this.drop(`nothing arrived within ${this.probeTimeoutMs} ms of a probe`);
    } else {
      left = this.heardAt + this.deadSocketMs - now;
      if (left <= 0 && ws.readyState !== OPEN) return this.drop(`the socket did not open within ${this.deadSocketMs} ms`);
      if (left <= 0) {
        this.probedAt = now;
        this.hooks.probe();
        left = this.probeTimeoutMs;
      }
    }
    this.watchTimer = setTimeout(() => this.watch(), left);
  }

  /** Gives up on a silent socket: detached first, so its late events cannot count as another loss. */
  drop(why) {
    const ws = this.ws;
    ws.onopen = ws.onmessage = ws.onclose = null;
    try {
      if (typeof ws.terminate === "function") ws.terminate(); // Node's `ws`: no closing handshake to wait for
      else ws.close();
    } catch {
      // already closing
    }
    this.closed({ reason: why });
  }

  /** The socket is gone: tell the owner, then reconnect (or stop, when retrying cannot help). */
  closed(event) {
    clearTimeout(this.watchTimer);
    this.watchTimer = null;
    const code = event?.code;
    this.hooks.lost(new CoworkerError("connection_lost", `the connection closed (${code ?? event?.reason ?? "no code"}) before the answer`));
    let stop = null;
    if (!this.everOpened) stop = new CoworkerError("connect_failed", `cannot connect to ${this.url}`);
    else if (FINAL_CLOSE_CODES.has(code)) stop = new CoworkerError(`closed_${code}`, event.reason || FINAL_CLOSE_CODES.get(code));
    if (stop) {
      this.stopped = true;
      this.hooks.stopped(stop);
      this.setStatus("closed");
      return;
    }
    this.setStatus("reconnecting");
    const delay = Math.min(this.maxBackoffMs, this.minBackoffMs * 2 ** this.attempt) * (0.5 + Math.random() / 2);
    this.attempt = Math.min(this.attempt + 1, 30);
    this.retryTimer = setTimeout(() => this.open(), delay);
  }

  /** Closes for good, at the owner's request: no reconnection, and no more hooks but the status. */
  stop() {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    clearTimeout(this.watchTimer);
    const ws = this.ws;
    if (ws) {
      ws.onopen = ws.onmessage = ws.onclose = null;
      try {
        ws.close(1000);
      } catch {
        // already closing
      }
    }
    this.setStatus("closed");
  }

  setStatus(status) {
    if (this.status === status) return;
    this.status = status;
    this.hooks.status(status);
  }
}
