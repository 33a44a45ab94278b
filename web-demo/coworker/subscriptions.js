// Subscriptions: each `subscribe()` of the client, sent again on every connection (with `since`, to resume from its
// mirror's seq, protocol.md §2.6), the frames routed to it by the server's `sub` id, its callback called once per
// frame that changed its state, and the lifecycle events of the subscribed spaces, each announced once.
import { CoworkerError } from "./errors.js";
import { Mirror } from "./mirror.js";

const MAX_SEEN_EVENTS = 10000;

/** One `subscribe()`: what it asked for, its mirror, and the server's `sub` id on the current connection. */
class Subscription {
  constructor(callback, { space, views, events }) {
    this.callback = callback;
    this.space = space;
    this.views = views;
    this.events = events;
    this.sub = null;
    this.closed = false;
    this.mirror = new Mirror();
  }

  request() {
    const msg = { type: "subscribe", space: this.space, events: this.events };
    if (this.views) msg.views = this.views;
    const since = this.mirror.since();
    if (since) msg.since = since;
    return msg;
  }
}

export class Subscriptions {
  /**
   * @param {import("./requests.js").Requests} requests
   * @param {(name: string, value: *) => void} emit the client's event emitter (lifecycle events, errors)
   */
  constructor(requests, emit) {
    this.requests = requests;
    this.emit = emit;
    this.live = new Set(); // every live subscribe(), across connections
    this.bySub = new Map(); // the server's sub id → Subscription, on the current connection
    this.seenEvents = new Set();
    /** @type {import("./mirror.js").Snapshot|null} the shape of the most recently updated subscription */
    this.latest = null;
  }

  /** @returns {() => void} unsubscribe */
  add(callback, options) {
    const s = new Subscription(callback, options);
    this.live.add(s);
    this.start(s);
    return () => {
      if (s.closed) return;
      s.closed = true;
      this.live.delete(s);
      if (s.sub !== null && this.bySub.get(s.sub) === s) {
        this.bySub.delete(s.sub);
        this.requests.request({ type: "unsubscribe", sub: s.sub }).catch(() => {});
      }
    };
  }

  /** Sends the subscription's `subscribe` (sent again when the connection opens, when it is not open now). */
  start(s) {
    if (!this.requests.isOpen() || s.closed) return;
    const started = (frame) => {
      if (s.closed) {
        this.requests.request({ type: "unsubscribe", sub: frame.sub }).catch(() => {});
        return;
      }
      this.bySub.set(frame.sub, s);
      s.sub = frame.sub;
      if (s.mirror.started(frame)) this.publish(s);
    };
    this.requests.request(s.request(), started).catch((e) => {
      if (s.closed || e.code === "connection_lost" || e.code === "closed") return; // resent on the next connection
      // Refused (unknown_view, forbidden, quota_subscriptions, …): retrying would be refused the same way.
      s.closed = true;
      this.live.delete(s);
      this.emit("error", e);
    });
  }

  /** A connection opened: every live subscription subscribes again. */
  connected() {
    for (const s of this.live) this.start(s);
  }

  /** The connection is gone, and with it every `sub` id. */
  lost() {
    this.bySub.clear();
  }

  /** A `snapshot` or `diff` frame that is not the answer to a `subscribe`. */
  frame(frame) {
    const s = this.bySub.get(frame.sub);
    if (!s) return;
    let changed;
    try {
      changed = s.mirror.next(frame);
    } catch (e) {
      this.restart(s, e.message);
      return;
    }
    if (changed) this.publish(s);
  }

  /** An `event` frame: emitted once, even when two subscriptions of one space both get it. */
  event(frame) {
    if (!this.bySub.has(frame.sub)) return;
    const key = `${frame.name} ${frame.run?.id}`;
    if (this.seenEvents.has(key)) return;
    this.seenEvents.add(key);
    if (this.seenEvents.size > MAX_SEEN_EVENTS) this.seenEvents.delete(this.seenEvents.values().next().value);
    this.emit(frame.name, frame.run);
  }

  /** An active run of a subscribed space, by id. */
  activeRun(id) {
    for (const s of this.live) {
      const run = s.mirror.state?.activeRuns?.[id];
      if (run) return run;
    }
    return undefined;
  }

  /** A diff did not fit (a server bug): drop this subscription and start over from a fresh snapshot. */
  restart(s, why) {
    this.emit("error", new CoworkerError("state_mismatch", `${why}; subscribing again`));
    this.bySub.delete(s.sub);
    this.requests.request({ type: "unsubscribe", sub: s.sub }).catch(() => {});
    s.mirror.forget();
    this.start(s);
  }

  publish(s) {
    this.latest = s.mirror.snapshot;
    try {
      s.callback(s.mirror.snapshot);
    } catch (e) {
      console.error("coworker: a subscriber threw", e);
    }
  }
}
