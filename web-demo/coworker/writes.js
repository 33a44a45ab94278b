// Local writes to live runs: buffered per run and sent as one `patch` frame per run per animation frame
// (protocol.md §2.3), split in order past the server's limits (ops per patch, message bytes: from the `hello` reply,
// §9), and held while the connection cannot take them: offline, and before its `hello` is answered. Each write's
// promise settles with the reply to the frame that carried it, so a refused frame (a bad op, a budget such as
// `run_too_large`) rejects exactly its own writes.
import { CoworkerError } from "./errors.js";

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

export class Writes {
  /**
   * @param {import("./requests.js").Requests} requests
   * @param {{schedule?: (fn: () => void) => void, maxOpsPerPatch?: number, maxMessageBytes?: number}} options
   *   `maxOpsPerPatch` and `maxMessageBytes` are used until the server tells its own, and stay when lower
   */
  constructor(requests, { schedule, maxOpsPerPatch, maxMessageBytes }) {
    this.requests = requests;
    this.schedule = schedule ?? nextFrame;
    this.caps = { maxOpsPerPatch, maxMessageBytes };
    this.maxOpsPerPatch = maxOpsPerPatch ?? 256;
    this.maxMessageBytes = maxMessageBytes ?? 65536;
    this.buffers = new Map(); // run id → [{text, set, waiters}] writes waiting for the next frame
    this.flushScheduled = false;
    this.sendable = false; // this connection's `hello` is answered
    this.wakers = []; // whenSendable() promises waiting for `sendable` to change
    this.closed = false;
  }

  /** Takes the server's limits (a `hello` reply's `limits`, protocol.md §2.1); a lower option stays in force. */
  limit(limits) {
    const pick = (option, server, current) => (Number.isInteger(server) && server > 0 ? Math.min(option ?? server, server) : current);
    this.maxOpsPerPatch = pick(this.caps.maxOpsPerPatch, limits.maxOpsPerPatch, this.maxOpsPerPatch);
    this.maxMessageBytes = pick(this.caps.maxMessageBytes, limits.maxMessageBytes, this.maxMessageBytes);
  }

  /** The connection may take writes now (its `hello` is answered): send what waited. */
  resume() {
    this.sendable = true;
    this.wake();
    this.flush();
  }

  /** The connection is gone: hold the writes for the next one. */
  pause() {
    this.sendable = false;
    this.wake();
  }

  /** The client stopped: reject every buffered write with `error`, and every later one with `closed`. */
  close(error) {
    this.closed = true;
    this.pause();
    const buffers = [...this.buffers.values()];
    this.buffers.clear();
    for (const entries of buffers) for (const e of entries) for (const w of e.waiters) w.reject(error);
  }

  wake() {
    for (const wake of this.wakers.splice(0)) wake();
  }

  /**
   * Sends the run's buffered writes now; when the open connection cannot take them yet, returns a promise that does
   * so once it can (or resolves when the connection is lost, with the writes still buffered).
   * @returns {Promise<void>|undefined}
   */
  drain(runId) {
    if (this.sendable || !this.requests.isOpen()) {
      this.flushRun(runId);
      return undefined;
    }
    return new Promise((resolve) => this.wakers.push(resolve)).then(() => this.flushRun(runId));
  }

  /**
   * Buffers one op for the run's next patch frame. Resolves (or rejects with `.code`) with the reply to the frame
   * that carried it. `setPath` marks a `set`, which replaces a `set` of the same path just before it.
   */
  queue(runId, op, setPath) {
    return new Promise((resolve, reject) => {
      if (this.closed) {
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

  /** Sends every run's buffered writes now, one patch frame per run (kept for later when they cannot go out). */
  flush() {
    for (const runId of [...this.buffers.keys()]) this.flushRun(runId);
  }

  /**
   * Sends one run's buffered writes now: one patch frame, split in order past the server's op and size limits.
   * Each write's promise settles with the reply to its frame.
   */
  flushRun(runId) {
    const entries = this.buffers.get(runId);
    if (!entries || !this.sendable || !this.requests.isOpen()) return;
    this.buffers.delete(runId);
    const head = `{"type":"patch","run":${JSON.stringify(runId)},"ops":[`;
    const room = this.maxMessageBytes - utf8Length(head) - 32; // the id and the closing brackets
    let chunk = [];
    let bytes = 0;
    const send = () => {
      const sent = chunk;
      const ops = sent.map((e) => e.text).join(",");
      this.requests.requestText((id) => `${head}${ops}],"id":${id}}`).then(
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
}
