// The mirror of one subscription's state: the normalized wire state (protocol.md §5) kept from its snapshot and
// diffs (§6) at the space's `seq`, and the seed's `CoworkerState` snapshot shape rebuilt from it once per frame.
// Pure data: it sends nothing; a diff that does not fit throws, and the subscription starts over.

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

/** One subscription's wire state and its shape. It outlives connections: a reconnection resumes from its `seq`. */
export class Mirror {
  constructor() {
    this.epoch = null;
    this.seq = null;
    this.state = null; // the wire state (protocol.md §5), null until the first snapshot
    /** @type {Snapshot|null} its shape, rebuilt once per frame that changed it */
    this.snapshot = null;
    this.resumes = 0; // granted `since` resumes
    this.resyncs = 0; // snapshots that replaced a state (resync, or a refused resume)
  }

  /** Where a new `subscribe` can resume from (protocol.md §2.6), or undefined while there is no state. */
  since() {
    return this.state !== null && this.epoch !== null ? { epoch: this.epoch, seq: this.seq } : undefined;
  }

  /** The answer to `subscribe`: a snapshot, or a granted resume (the missed diffs follow). True when the state changed. */
  started(frame) {
    this.epoch = frame.epoch;
    if (frame.type === "snapshot") {
      if (this.state !== null) this.resyncs += 1;
      this.replace(frame);
      return true;
    }
    this.resumes += 1;
    this.seq = frame.seq;
    return false;
  }

  /**
   * A later frame: a diff, or a snapshot flagged `resync` after an overflow. True when the state changed; throws when
   * a diff does not fit (a server bug).
   */
  next(frame) {
    if (frame.type === "snapshot") {
      this.resyncs += 1;
      this.replace(frame);
      return true;
    }
    if (frame.type !== "diff" || this.state === null) return false;
    if (frame.base !== this.seq) throw new Error(`a diff from seq ${frame.base} reached a state at seq ${this.seq}`);
    this.state = applyDiff(this.state, frame.ops);
    this.seq = frame.seq;
    this.snapshot = shape(this.state, this.seq);
    return true;
  }

  /** Drops the state: the next `subscribe` asks for a fresh snapshot. */
  forget() {
    this.state = null;
  }

  replace(frame) {
    this.state = frame.state;
    this.seq = frame.seq;
    this.snapshot = shape(this.state, this.seq);
  }
}
