// Requests and their answers: each request gets a fresh id, and the `reply` or `error` that echoes it settles its
// promise (protocol.md §1, §10). What still waits when the connection goes rejects all at once.
import { CoworkerError } from "./errors.js";

export class Requests {
  /** @param {import("./transport.js").Transport} transport */
  constructor(transport) {
    this.transport = transport;
    this.nextId = 1;
    this.pending = new Map(); // request id → {resolve, reject, onAnswer}
  }

  isOpen() {
    return this.transport.isOpen();
  }

  /** Sends `text(id)` as a request with a fresh id; resolves with its answer, rejects with a CoworkerError. */
  requestText(text, onAnswer) {
    return new Promise((resolve, reject) => {
      if (!this.transport.isOpen()) {
        reject(new CoworkerError("not_connected", `the connection is ${this.transport.status}`));
        return;
      }
      const id = this.nextId++;
      this.pending.set(id, { resolve, reject, onAnswer });
      this.transport.send(text(id));
    });
  }

  /**
   * Sends `msg` with a fresh id; resolves with the answering frame, rejects with a {@link CoworkerError}.
   * `onAnswer`, if given, is called with a successful answer as soon as it is received, before any later frame.
   */
  request(msg, onAnswer) {
    return this.requestText((id) => JSON.stringify({ ...msg, id }), onAnswer);
  }

  /** Settles the request that `frame` answers. False when it answers none (no id, a diff or event, an unknown id). */
  answer(frame) {
    if (frame.id === undefined || frame.id === null || frame.type === "diff" || frame.type === "event") return false;
    const waiter = this.pending.get(frame.id);
    if (!waiter) return false;
    this.pending.delete(frame.id);
    if (frame.type === "error") {
      waiter.reject(new CoworkerError(frame.code, frame.message, frame.run));
    } else {
      // Synchronously, not in a promise callback: the next frames (a subscription's first diff) may be
      // delivered in this same task, before any promise callback runs.
      waiter.onAnswer?.(frame);
      waiter.resolve(frame);
    }
    return true;
  }

  /** Rejects every request still waiting with `error`. */
  failAll(error) {
    const waiters = [...this.pending.values()];
    this.pending.clear();
    for (const w of waiters) w.reject(error);
  }
}
