// Local writes to live runs: buffered per run, and sent once per animation frame as one `patches` frame holding an
// element per run with writes (protocol.md §2.3), split in order past the server's limits (ops per element, elements
// and ops per frame, message bytes: from the `hello` reply, §9), and held while the connection cannot take them:
// offline, and before its `hello` is answered. Each write's promise settles with its element's outcome in the reply,
// so a refused element (a bad op, a finished run, a budget such as `run_too_large`) rejects exactly its own writes,
// and a refused frame (`limit_exceeded`, the connection lost) the writes of all its elements. A server whose limits
// do not tell `maxPatchesPerFrame` predates `patches`: it gets one `patch` frame per element instead.
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

/**
 * A buffered write: its op as JSON text, the path when it is a `set`, and the promises it settles.
 * @typedef {{text: string, set?: string, waiters: {resolve: Function, reject: Function}[]}} Entry
 */
/** One run's writes in one element (one `patch` frame for an older server). @typedef {{run: string, entries: Entry[]}} Element */

/** Bytes of a frame's envelope: `{"type":"patches","patches":[` … `],"id":N}`, with room for any id. */
const FRAME_BYTES = utf8Length('{"type":"patches","patches":[],"id":}') + 20;

/** Bytes an element adds to a frame besides its ops: `{"run":"…","ops":[]}` and a comma. */
function elementBytes(runId) {
  return utf8Length(`{"run":${JSON.stringify(runId)},"ops":[]},`);
}

/**
 * Packs the flushed writes into frames, in order: elements of one run and at most `maxOpsPerPatch` ops; frames of
 * at most `maxPatchesPerFrame` elements, `maxOpsPerFrame` ops and `maxMessageBytes` bytes. Owns the splitting rules
 * only: it sends nothing.
 */
class Packer {
  /** @param {{maxOpsPerPatch: number, maxPatchesPerFrame: number, maxOpsPerFrame: number, maxMessageBytes: number}} limits */
  constructor(limits) {
    this.limits = limits;
    /** @type {{elements: Element[], ops: number, bytes: number}[]} */
    this.frames = [];
    this.frame = null;
    /** @type {Element|null} the element the next write of its run joins */
    this.element = null;
  }

  /** Adds a write of `runId` after the ones before it. False when it cannot fit even in a frame of its own. */
  add(runId, entry) {
    const size = utf8Length(entry.text) + 1;
    const { maxOpsPerPatch, maxOpsPerFrame, maxMessageBytes } = this.limits;
    const overhead = this.overhead(runId);
    if (FRAME_BYTES + overhead + size > maxMessageBytes) return false;
    const { frame, element } = this;
    if (element?.run === runId && element.entries.length < maxOpsPerPatch && frame.ops < maxOpsPerFrame &&
      frame.bytes + size <= maxMessageBytes) {
      element.entries.push(entry);
    } else {
      this.open(runId, overhead, size);
      this.element.entries.push(entry);
    }
    this.frame.ops += 1;
    this.frame.bytes += size;
    return true;
  }

  /** Bytes an element of `runId` adds besides its ops (kept for the run being packed). */
  overhead(runId) {
    if (this.overheadOf?.run !== runId) this.overheadOf = { run: runId, bytes: elementBytes(runId) };
    return this.overheadOf.bytes;
  }

  /**
   * Starts an element of `runId` (`overhead` bytes besides its ops) for a first write of `size` bytes: in the
   * current frame, or in a new one when that one is full by any of its limits.
   */
  open(runId, overhead, size) {
    const { maxPatchesPerFrame, maxOpsPerFrame, maxMessageBytes } = this.limits;
    const frame = this.frame;
    if (!frame || frame.elements.length >= maxPatchesPerFrame || frame.ops >= maxOpsPerFrame ||
      frame.bytes + overhead + size > maxMessageBytes) {
      this.frame = { elements: [], ops: 0, bytes: FRAME_BYTES };
      this.frames.push(this.frame);
    }
    this.element = { run: runId, entries: [] };
    this.frame.elements.push(this.element);
    this.frame.bytes += overhead; // add() counts the write itself
  }
}

/** The text of a `patches` frame of `elements`, given its id. */
function patchesText(elements) {
  const body = elements.map((el) => `{"run":${JSON.stringify(el.run)},"ops":[${el.entries.map((e) => e.text).join(",")}]}`);
  return (id) => `{"type":"patches","patches":[${body.join(",")}],"id":${id}}`;
}

/** The text of a `patch` frame of one element, given its id (for a server that predates `patches`). */
function patchText(element) {
  const ops = element.entries.map((e) => e.text).join(",");
  return (id) => `{"type":"patch","run":${JSON.stringify(element.run)},"ops":[${ops}],"id":${id}}`;
}

/** Rejects every write of `elements` with `error`. */
function rejectAll(elements, error) {
  for (const el of elements) for (const e of el.entries) for (const w of e.waiters) w.reject(error);
}

/**
 * Settles the writes of `elements` with the reply to their frame: an element its `errors` lists by `index` rejects
 * with that code, the others resolve (a `patch` frame's reply lists none).
 */
function settle(elements, reply) {
  const failed = new Map((Array.isArray(reply.errors) ? reply.errors : []).map((e) => [e.index, e]));
  elements.forEach((el, i) => {
    const error = failed.get(i);
    if (error) rejectAll([el], new CoworkerError(error.code, error.message));
    else for (const e of el.entries) for (const w of e.waiters) w.resolve();
  });
}

export class Writes {
  /**
   * @param {import("./requests.js").Requests} requests
   * @param {{schedule?: (fn: () => void) => void, maxOpsPerPatch?: number, maxPatchesPerFrame?: number,
   *   maxOpsPerFrame?: number, maxMessageBytes?: number}} options
   *   the limits are used until the server tells its own, and stay when lower
   */
  constructor(requests, { schedule, maxOpsPerPatch, maxPatchesPerFrame, maxOpsPerFrame, maxMessageBytes }) {
    this.requests = requests;
    this.schedule = schedule ?? nextFrame;
    this.caps = { maxOpsPerPatch, maxPatchesPerFrame, maxOpsPerFrame, maxMessageBytes };
    this.maxOpsPerPatch = maxOpsPerPatch ?? 256;
    this.maxPatchesPerFrame = maxPatchesPerFrame ?? 1024;
    this.maxOpsPerFrame = maxOpsPerFrame ?? 4096;
    this.maxMessageBytes = maxMessageBytes ?? 65536;
    this.batched = false; // the server takes `patches` frames (its limits tell maxPatchesPerFrame)
    this.buffers = new Map(); // run id → [Entry] writes waiting for the next frame, runs in the order first written
    this.flushScheduled = false;
    this.sendable = false; // this connection's `hello` is answered
    this.wakers = []; // whenSendable() promises waiting for `sendable` to change
    this.closed = false;
  }

  /** Takes the server's limits (a `hello` reply's `limits`, protocol.md §2.1); a lower option stays in force. */
  limit(limits) {
    const pick = (option, server, current) => (Number.isInteger(server) && server > 0 ? Math.min(option ?? server, server) : current);
    this.maxOpsPerPatch = pick(this.caps.maxOpsPerPatch, limits.maxOpsPerPatch, this.maxOpsPerPatch);
    this.maxPatchesPerFrame = pick(this.caps.maxPatchesPerFrame, limits.maxPatchesPerFrame, this.maxPatchesPerFrame);
    this.maxOpsPerFrame = pick(this.caps.maxOpsPerFrame, limits.maxOpsPerFrame, this.maxOpsPerFrame);
    this.maxMessageBytes = pick(this.caps.maxMessageBytes, limits.maxMessageBytes, this.maxMessageBytes);
    this.batched = Number.isInteger(limits.maxPatchesPerFrame) && limits.maxPatchesPerFrame > 0;
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
   * Sends the buffered writes now, the run's with every other run's; when the open connection cannot take them yet,
   * returns a promise that does so once it can (or resolves when the connection is lost, with the writes still
   * buffered).
   * @returns {Promise<void>|undefined}
   */
  drain(runId) {
    if (this.sendable || !this.requests.isOpen()) {
      this.flush();
      return undefined;
    }
    return new Promise((resolve) => this.wakers.push(resolve)).then(() => this.flush());
  }

  /**
   * Buffers one op for the run's element of the next frame. Resolves (or rejects with `.code`) with that element's
   * outcome in the reply. `setPath` marks a `set`, which replaces a `set` of the same path just before it.
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

  /**
   * Sends every run's buffered writes now (kept for later when they cannot go out): one `patches` frame, split in
   * order past the limits. A write larger than a message by itself is rejected here with `message_too_large`.
   */
  flush() {
    if (this.buffers.size === 0 || !this.sendable || !this.requests.isOpen()) return;
    const runs = [...this.buffers];
    this.buffers.clear();
    const packer = new Packer({
      maxOpsPerPatch: this.maxOpsPerPatch,
      maxPatchesPerFrame: this.batched ? this.maxPatchesPerFrame : 1,
      maxOpsPerFrame: this.batched ? this.maxOpsPerFrame : this.maxOpsPerPatch,
      maxMessageBytes: this.maxMessageBytes,
    });
    for (const [runId, entries] of runs) {
      for (const e of entries) {
        if (packer.add(runId, e)) continue;
        const size = utf8Length(e.text);
        const err = new CoworkerError("message_too_large", `one write of ${size} bytes exceeds the server's ${this.maxMessageBytes}-byte messages`);
        e.waiters.forEach((w) => w.reject(err));
      }
    }
    for (const frame of packer.frames) this.send(frame.elements);
  }

  /** Sends one frame of `elements`; each element's writes settle with its outcome in the reply. */
  send(elements) {
    const text = this.batched ? patchesText(elements) : patchText(elements[0]);
    this.requests.requestText(text).then((reply) => settle(elements, reply), (err) => rejectAll(elements, err));
  }
}
