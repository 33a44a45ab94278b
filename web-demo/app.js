// The live demo page: every active run of one space (`?space=`, default `default`), rendered from the client's
// snapshot shape at most once per animation frame, and controls that start dialogs, AI streams, pipelines, a
// failing run and a data select. Cards are kept per run id and only touched when their run object changed
// (snapshots are immutable, so an unchanged run is the same object). A write this page made that the server refused
// (a state budget such as `run_too_large`, protocol.md §9) is shown on its run's card.
import { CoworkerClient } from "./coworker.js";

const params = new URLSearchParams(location.search);
const space = params.get("space") || "default";
const scheme = location.protocol === "https:" ? "wss" : "ws";
const client = new CoworkerClient(`${scheme}://${location.host}/ws`);
globalThis.coworker = client; // for the console (and the end-to-end test)
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

/** Creates an element: h("div", {class: "x", "data-testid": "y"}, child, "text", …). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}
const short = (id) => (id ? id.slice(-8) : "");
const setText = (el, text) => {
  if (el.textContent !== text) el.textContent = text;
};
const setClass = (el, cls) => {
  if (el.className !== cls) el.className = cls;
};

/** Keeps `container`'s children in the order of `items`, one element per key, created once and then updated. */
function reconcile(container, items, key, create, update) {
  const old = container._keyed ?? new Map();
  const next = new Map();
  let prev = null;
  for (const item of items) {
    const k = key(item);
    const el = old.get(k) ?? create(item);
    update(el, item);
    next.set(k, el);
    const want = prev ? prev.nextSibling : container.firstChild;
    if (want !== el) container.insertBefore(el, want);
    prev = el;
  }
  for (const [k, el] of old) if (!next.has(k)) el.remove();
  container._keyed = next;
}

// ---- connection ---------------------------------------------------------------------------------------------
const statusEl = $("status");
function showStatus(s) {
  setText(statusEl, s);
  statusEl.dataset.state = s;
}
showStatus(client.status);
client.on("status", showStatus);
client.on("error", (e) => note(e));
client.ready.catch((e) => note(`cannot connect: ${e.message}`));
setText($("space"), space);

// ---- state from the server ----------------------------------------------------------------------------------
/** @type {import("./coworker.js").Snapshot|null} */
let view = null;
let frameArrivedAt = null; // the first frame not painted yet
/** Runs that completed recently (from `after:run`): kept on screen a while, so a finished answer stays readable. */
const finished = new Map();
const KEEP_FINISHED_MS = 20000;
const events = [];
let eventsAdded = 0;
/** Writes of this page that the server refused, by run id: shown on the run's card while it is on screen. */
const writeErrors = new Map(); // run id → {error, at}
const BUDGETS = {
  run_too_large: "the run is at its size budget",
  quota_state_bytes: "this owner's runs are at their state budget",
  over_capacity: "the server's state budget is spent",
};

client.subscribe((snapshot) => {
  view = snapshot;
  frameArrivedAt ??= performance.now();
  queueRender();
}, { space });

for (const name of ["before:run", "after:run", "error:run"]) {
  client.on(name, (run) => {
    if (run.space !== space) return;
    events.push({ name, run, at: new Date() });
    eventsAdded += 1;
    if (name === "after:run") finished.set(run.id, { run, until: Date.now() + KEEP_FINISHED_MS });
    queueRender();
  });
}

let renderQueued = false;
function queueRender() {
  if (renderQueued) return;
  renderQueued = true;
  requestAnimationFrame(() => {
    renderQueued = false;
    render();
  });
}

// ---- live figures -------------------------------------------------------------------------------------------
let framesBefore = 0;
let tokensSeen = 0;
let tokensBefore = 0;
const tokenCounts = new Map(); // run id → tokens already counted
const latencies = []; // producer's sentAt → render, this second
const paints = []; // frame arrival → render, this second
const history = { frames: Array(40).fill(0), tokens: Array(40).fill(0) };
const median = (xs) => (xs.length ? [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] : null);

function spark(name, value) {
  const xs = history[name];
  xs.push(value);
  if (xs.length > 40) xs.shift();
  const max = Math.max(1, ...xs);
  const step = 120 / 39;
  const points = xs.map((v, i) => `${(120 - (xs.length - 1 - i) * step).toFixed(1)},${(26 - (v / max) * 24).toFixed(1)}`);
  const svg = document.querySelector(`[data-testid="spark-${name}"]`);
  svg.querySelector(".line").setAttribute("d", `M${points.join("L")}`);
  const left = points[0].split(",")[0];
  svg.querySelector(".area").setAttribute("d", `M${left},28L${points.join("L")}L120,28Z`);
}

setInterval(() => {
  const frames = client.framesReceived - framesBefore;
  const tokens = tokensSeen - tokensBefore;
  framesBefore = client.framesReceived;
  tokensBefore = tokensSeen;
  setText($("fig-frames"), String(frames));
  setText($("fig-tokens"), String(tokens));
  spark("frames", frames);
  spark("tokens", tokens);
  const lat = median(latencies);
  const paint = median(paints);
  setText($("fig-latency"), lat === null ? "–" : `${Math.round(lat)} ms`);
  setText($("fig-paint"), paint === null ? "–" : `${paint.toFixed(1)} ms`);
  latencies.length = 0;
  paints.length = 0;
  if (finished.size || view?.activeRuns && Object.keys(view.activeRuns).length) queueRender(); // ages, expiries
}, 1000);

// ---- rendering ----------------------------------------------------------------------------------------------
function badge(el, run) {
  setText(el, run.status);
  setClass(el, `badge ${run.status}`);
}

function render() {
  if (!view) return;
  const now = Date.now();
  if (frameArrivedAt !== null) {
    paints.push(performance.now() - frameArrivedAt);
    frameArrivedAt = null;
  }
  for (const [id, f] of finished) if (f.until < now || view.activeRuns[id]) finished.delete(id);
  // A refusal stays while its run is on screen (a completed run's `after:run` may come a moment after the diff).
  for (const [id, w] of writeErrors) if (!view.activeRuns[id] && !finished.has(id) && now - w.at > 5000) writeErrors.delete(id);
  const runs = Object.values(view.activeRuns);
  const recent = [...finished.values()].map((f) => f.run);

  // Dialogs: every running dialog of the space, and failed ones while they linger.
  const dialogs = [...view.activeDialogs, ...runs.filter((r) => r.operation === "dialog" && r.status === "failed")];
  reconcile($("dialogs"), dialogs, (r) => r.id, dialogCard, (el, run) => {
    updateDialogCard(el, run);
    showWriteError(el, [run.id]);
  });

  // AI: running interpret runs (also pipeline steps), failed ones while they linger, recently completed ones.
  const ai = [
    ...view.activeAI,
    ...runs.filter((r) => r.operation === "interpret" && r.status === "failed"),
    ...recent.filter((r) => r.operation === "interpret" && !r.parentRun),
  ];
  reconcile($("ai-runs"), ai, (r) => r.id, aiCard, (el, run) => {
    updateAiCard(el, run, now);
    showWriteError(el, [run.id]);
  });

  // Pipelines: groups with members or a pipeline root, and pipelines that completed recently.
  const groups = Object.entries(view.activePipelines)
    .filter(([, members]) => members.length > 1 || members[0]?.operation === "pipeline")
    .map(([rootId, members]) => ({ rootId, root: members[0], members }));
  for (const run of recent) {
    if (run.operation === "pipeline" && !view.activePipelines[run.id]) groups.push({ rootId: run.id, root: run, members: [run] });
  }
  reconcile($("pipelines"), groups, (g) => g.rootId, pipelineCard, (el, g) => {
    const children = updatePipelineCard(el, g, recent);
    showWriteError(el, [g.rootId, ...children.map((c) => c.id)]);
  });

  // Every run of the space.
  reconcile($("all-runs"), runs, (r) => r.id, runRow, (el, run) => updateRunRow(el, run, now));
  $("all-runs-empty").hidden = runs.length > 0;
  setText($("fig-runs"), String(runs.length));
  const loading = view.isLoading ? "busy" : "idle";
  $("loading").dataset.state = loading;
  setText($("loading-text"), loading);

  renderCurrent(view.currentRun);
  renderEvents();
}

function cardShell(kind, run, ...body) {
  const status = h("span", { "data-testid": "run-status" });
  const label = h("span", { class: "who" });
  const id = h("code", { class: "id", title: run.id }, short(run.id));
  const extra = h("span", { class: "extra" });
  const error = h("div", { class: "error-line", "data-testid": "run-error", hidden: true });
  const writeError = h("div", { class: "error-line write-error", "data-testid": "write-error", role: "alert", hidden: true });
  const el = h("article", { class: `card ${kind}`, "data-testid": `${kind}-card`, "data-run-id": run.id },
    h("div", { class: "meta" }, status, label, id, extra), ...body, error, writeError);
  Object.assign(el, { _status: status, _label: label, _extra: extra, _error: error, _writeError: writeError, _run: null });
  return el;
}

/** The latest refused write of this page to any of `ids` (a card's run, or a pipeline's runs), on the card. */
function showWriteError(el, ids) {
  const refused = ids.map((id) => writeErrors.get(id)).find(Boolean);
  const text = refused ? describe(refused.error) : "";
  setText(el._writeError, text);
  el._writeError.hidden = !text;
}

/** `code: what it means` for the budget codes, the error's own message otherwise. */
const describe = (e) => (BUDGETS[e.code] ? `${e.code}: ${BUDGETS[e.code]}` : String(e.message ?? e));

/** A failed run's error, on its own line under the card. */
function showError(el, run) {
  const message = run.status === "failed" ? run.error?.message ?? "failed" : "";
  setText(el._error, message);
  el._error.hidden = !message;
}

function dialogCard(run) {
  const text = h("div", { class: "dialog-text", "data-testid": "dialog-text" });
  const el = cardShell("dialog", run, text);
  el._text = text;
  return el;
}

function updateDialogCard(el, run) {
  if (el._run === run) return;
  el._run = run;
  badge(el._status, run);
  setClass(el, `card dialog ${run.status}`);
  setText(el._label, run.agent ? String(run.agent) : "dialog");
  const value = typeof run.output?.value === "string" ? run.output.value : "";
  setText(el._text, value);
  setText(el._extra, `${value.length} chars`);
  showError(el, run);
}

function aiCard(run) {
  const text = h("div", { class: "ai-text", "data-testid": "ai-text" });
  const el = cardShell("ai", run, text);
  el._extra.setAttribute("data-testid", "ai-count-seen");
  el._text = text;
  el._follow = true; // keep the newest tokens in view until the reader scrolls up
  text.addEventListener("scroll", () => {
    el._follow = text.scrollTop + text.clientHeight >= text.scrollHeight - 8;
  });
  return el;
}

function updateAiCard(el, run, now) {
  if (el._run === run) return;
  el._run = run;
  badge(el._status, run);
  setClass(el, `card ai ${run.status}`);
  setText(el._label, run.parentRun ? `${run.agent ?? "step"} · in ${short(run.parentRun)}` : String(run.agent ?? "interpret"));
  const tokens = Array.isArray(run.output?.tokens) ? run.output.tokens : [];
  const counted = tokenCounts.get(run.id) ?? 0;
  if (tokens.length > counted) {
    tokensSeen += tokens.length - counted;
    tokenCounts.set(run.id, tokens.length);
    if (typeof run.output?.sentAt === "number") latencies.push(Math.max(0, now - run.output.sentAt));
  }
  const seconds = (run.status === "running" ? now - run.timestamp : run.duration) / 1000;
  const rate = seconds > 0.2 ? ` · ${Math.round(tokens.length / seconds)}/s` : "";
  setText(el._extra, `${tokens.length} token${tokens.length === 1 ? "" : "s"}${rate}`);
  showError(el, run);
  setText(el._text, tokens.join(""));
  if (el._follow) el._text.scrollTop = el._text.scrollHeight;
}

function pipelineCard(g) {
  const steps = h("ol", { class: "steps" });
  const children = h("ul", { class: "children" });
  const el = cardShell("pipeline", g.root, steps, children);
  el.setAttribute("data-testid", "pipeline");
  el.setAttribute("data-root-id", g.rootId);
  Object.assign(el, { _steps: steps, _children: children });
  return el;
}

function updatePipelineCard(el, g, recent) {
  const { root, members } = g;
  badge(el._status, root);
  setClass(el, `card pipeline ${root.status}`);
  setText(el._label, `${root.operation}${root.agent ? ` · ${root.agent}` : ""}`);
  const steps = Array.isArray(root.steps) ? root.steps : [];
  const done = steps.filter((s) => s?.status === "done").length;
  setText(el._extra, steps.length ? `${done}/${steps.length} steps` : "");
  showError(el, root);
  reconcile(el._steps, steps.map((s, i) => ({ s, i })), (x) => x.i,
    () => h("li", { "data-testid": "pipeline-step" }),
    (li, { s }) => {
      setClass(li, `step ${s?.status ?? "pending"}`);
      setText(li, String(s?.name ?? "step"));
    });
  // Children: the group's other members, and those that completed recently (from their after:run events).
  const ids = new Set(members.map((r) => r.id));
  const children = [...members.slice(1), ...recent.filter((r) => ids.has(r.parentRun) && !ids.has(r.id))]
    .sort((x, y) => x.timestamp - y.timestamp);
  reconcile(el._children, children, (r) => r.id,
    (c) => {
      const li = h("li", { "data-testid": "pipeline-child", "data-run-id": c.id },
        h("span", { "data-testid": "run-status" }), h("span", { class: "op" }), h("code", { class: "id" }, short(c.id)),
        h("span", { class: "child-out" }));
      return li;
    },
    (li, c) => {
      if (li._run === c) return;
      li._run = c;
      setClass(li, `child ${c.status}`);
      const [status, op, , out] = li.children;
      badge(status, c);
      setText(op, `${c.operation}${c.agent ? ` · ${c.agent}` : ""}`);
      const tokens = Array.isArray(c.output?.tokens) ? c.output.tokens.join("") : "";
      setText(out, c.status === "failed" ? c.error?.message ?? "" : tokens);
    });
  return children;
}

function runRow(run) {
  const cells = Array.from({ length: 7 }, () => h("td"));
  const status = h("span", { "data-testid": "run-status" });
  cells[0].append(h("code", { title: run.id }, short(run.id)));
  cells[3].append(status);
  cells[5].className = "num";
  const tr = h("tr", { "data-testid": "run-row", "data-run-id": run.id }, cells);
  Object.assign(tr, { _cells: cells, _status: status, _run: null });
  return tr;
}

function updateRunRow(tr, run, now) {
  const c = tr._cells;
  const age = run.status === "failed" ? run.duration : now - run.timestamp;
  setText(c[5], age < 60000 ? `${(age / 1000).toFixed(1)} s` : `${Math.round(age / 60000)} min`);
  if (tr._run === run) return;
  tr._run = run;
  setClass(tr, run.status);
  setText(c[1], run.operation);
  setText(c[2], run.agent == null ? "–" : typeof run.agent === "string" ? run.agent : JSON.stringify(run.agent));
  badge(tr._status, run);
  setText(c[4], run.parentRun ? short(run.parentRun) : "–");
  setText(c[6], run.error?.message ?? "");
}

let renderedCurrent;
function renderCurrent(run) {
  if (run === renderedCurrent) return;
  renderedCurrent = run;
  const box = $("current");
  if (!run) {
    box.replaceChildren(h("p", { class: "empty" }, "No data operation has completed in this space yet."));
    return;
  }
  const out = run.output ?? {};
  const rows = Array.isArray(out.data) ? out.data : [];
  const fields = Array.isArray(out.schema?.fields) ? out.schema.fields : [];
  // The server's list columns (`name`, then the schema's in_list_view fields), or the schema's own marks.
  let columns = out.viewConfig?.listColumns ?? ["name", ...fields.filter((f) => f.in_list_view).map((f) => f.fieldname)];
  columns = columns.map((c) => (typeof c === "string" ? c : c?.fieldname ?? String(c)));
  if (columns.length <= 1) columns = [...new Set(rows.flatMap((r) => Object.keys(r)))].slice(0, 6);
  const field = (c) => fields.find((f) => f.fieldname === c);
  const label = (c) => field(c)?.label ?? (c === "name" ? "Name" : c);
  const numeric = (c) => ["Int", "Float"].includes(field(c)?.fieldtype);
  box.replaceChildren(
    h("div", { class: "meta" }, h("span", { class: `badge ${run.status}`, "data-testid": "run-status" }, run.status),
      h("strong", {}, `${run.operation} ${run.doctype ?? ""}`),
      h("span", { class: "extra" }, `${rows.length} of ${out.meta?.total ?? rows.length} rows · ${run.duration} ms`)),
    h("div", { class: "table-wrap" },
      h("table", { "data-testid": "current-table", class: "data" },
        h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", { class: numeric(c) ? "num" : null }, label(c))))),
        h("tbody", {}, ...rows.map((r) =>
          h("tr", {}, ...columns.map((c) => h("td", { class: numeric(c) ? "num" : null },
            c === "status" && r[c] ? h("span", { class: `tag ${String(r[c]).toLowerCase()}` }, fmt(r[c])) : fmt(r[c])))))))),
  );
}
const fmt = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

let eventsRendered = 0;
function renderEvents() {
  if (eventsRendered === eventsAdded) return;
  const log = $("event-log");
  const fresh = events.slice(-(eventsAdded - eventsRendered));
  eventsRendered = eventsAdded;
  for (const e of fresh) {
    log.prepend(h("li", { class: e.name.replace(":", "-") },
      h("time", {}, e.at.toLocaleTimeString([], { hour12: false })),
      h("span", { class: "ev" }, e.name),
      h("span", { class: "op" }, e.run.operation + (e.run.doctype ? ` ${e.run.doctype}` : "")),
      h("code", { class: "id" }, short(e.run.id)),
      h("span", { class: "why" }, e.run.error?.message ?? (e.name === "after:run" ? `${e.run.duration} ms` : ""))));
  }
  while (log.children.length > 24) log.lastElementChild.remove();
  events.splice(0, Math.max(0, events.length - 24));
  $("event-log-empty").hidden = log.children.length > 0;
}

// ---- controls -----------------------------------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
let noticeTimer;
function note(e) {
  const el = $("notice");
  el.textContent = e ? String(e.message ?? e) : "";
  clearTimeout(noticeTimer);
  noticeTimer = setTimeout(() => (el.textContent = ""), 8000);
}

/** A write to `runId` was refused: shown on the run's card (the page goes on). */
function writeFailed(runId, error) {
  writeErrors.set(runId, { error, at: Date.now() });
  queueRender();
}

/** A later write to `runId` went through: its card no longer shows the refusal. */
function writeAccepted(runId) {
  if (writeErrors.delete(runId)) queueRender();
}

// Dialog: the first keystroke starts a dialog run; every keystroke sets the whole `output.value`.
const input = $("dialog-input");
let dialogRun = null; // a promise of the run's id
input.addEventListener("input", async () => {
  const mine = (dialogRun ??= client.run({ operation: "dialog", space, agent: "browser", input: { prompt: "Type here" } })
    .then((run) => run.id));
  let id;
  try {
    id = await mine;
    // The field's text now: keystrokes that landed while the run was starting collapse into this one write.
    await client.updateRunField(id, "output.value", input.value);
    writeAccepted(id);
  } catch (e) {
    if (id && BUDGETS[e.code]) {
      writeFailed(id, e); // the run is still there: a shorter text fits again
      return;
    }
    if (dialogRun === mine) dialogRun = null; // the next keystroke starts a new run
    note(e);
  }
});
$("dialog-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const mine = dialogRun;
  if (!mine) return;
  dialogRun = null;
  input.value = "";
  try {
    await client.complete(await mine);
  } catch (e) {
    note(e);
  }
});

// AI: words at the chosen rate; a timer paces them (animation frames stop in hidden tabs), the client coalesces
// each frame's tokens into one patch, and `output.sentAt` carries the send time for the latency figure. A refused
// write (e.g. `run_too_large`) stops the stream: the card shows why, and the run completes with what was accepted.
const WORDS = "Runs are context objects that are also their own audit records; the server coalesces every change into one diff per tick for every subscriber. ".split(/(?<= )/);
const rateInput = $("ai-rate");
rateInput.addEventListener("input", () => setText($("ai-rate-value"), `${rateInput.value}/s`));
$("ai-start").addEventListener("click", async () => {
  const rate = Math.max(1, Math.min(1000, Number(rateInput.value) || 100));
  const count = Math.max(1, Math.min(100000, Math.floor(Number($("ai-count").value)) || 200));
  let run;
  try {
    run = await client.run({ operation: "interpret", space, agent: "browser-ai", input: { rate, count } });
  } catch (e) {
    note(e);
    return;
  }
  const started = performance.now();
  let sent = 0;
  let broken = null;
  while (sent < count && !broken) {
    const due = Math.min(count, Math.floor(((performance.now() - started) / 1000) * rate) + 1);
    if (due > sent) {
      const writes = [];
      for (; sent < due; sent++) writes.push(client.append(run.id, "output.tokens", WORDS[sent % WORDS.length]));
      writes.push(client.updateRunField(run.id, "output.sentAt", Date.now()));
      // Settled before the next tokens are queued: once a frame is refused no later one can land, so the text the
      // server keeps has no gap (a smaller frame sent behind a refused one could still fit).
      broken = (await Promise.allSettled(writes)).find((r) => r.status === "rejected")?.reason ?? null;
    }
    if (!broken) await sleep(Math.max(4, Math.min(16, 1000 / rate)));
  }
  if (broken) writeFailed(run.id, broken);
  try {
    await client.complete(run.id);
  } catch (e) {
    note(e);
  }
});

// Pipeline: a root with three steps; each step runs a child that streams a little and completes (or fails). A
// refused write is shown on the pipeline's card, and the pipeline goes on.
$("pipeline-start").addEventListener("click", async () => {
  const names = ["fetch", "analyze", "summarize"];
  const says = { fetch: ["Fetching ", "3 sources", "… done"], analyze: ["Analyzing ", "the sources", "… done"],
    summarize: ["Summarizing ", "the findings", "… done"] };
  const failAt = $("pipeline-fail").checked ? 1 : -1;
  try {
    const root = await client.run({ operation: "pipeline", space, agent: "browser",
      input: { plan: names }, steps: names.map((name) => ({ name, status: "pending" })) });
    for (const [i, name] of names.entries()) {
      client.updateRunStep(root.id, i, { status: "running" }).catch((e) => writeFailed(root.id, e));
      const child = await client.run({ operation: "interpret", parentRun: root.id, agent: name, input: { step: name } });
      for (const w of says[name]) {
        await sleep(220);
        client.append(child.id, "output.tokens", w).catch((e) => writeFailed(child.id, e));
      }
      await sleep(250);
      if (i === failAt) {
        await client.fail(child.id, { message: `${name} failed (on purpose)`, code: "demo" });
        await client.updateRunStep(root.id, i, { status: "failed" }).catch((e) => writeFailed(root.id, e));
        await client.fail(root.id, { message: `step ${name} failed`, code: "demo" });
        return;
      }
      await client.complete(child.id);
      await client.updateRunStep(root.id, i, { status: "done" }).catch((e) => writeFailed(root.id, e));
    }
    await sleep(600);
    await client.complete(root.id, { summary: `${names.length} steps done` });
  } catch (e) {
    note(e);
  }
});

// A run that fails: shown as failed, then gone after the server's linger period.
$("fail-start").addEventListener("click", async () => {
  try {
    const run = await client.run({ operation: "dialog", space, agent: "doomed", input: { will: "fail" } });
    await client.updateRunField(run.id, "output.value", "about to fail…").catch((e) => writeFailed(run.id, e));
    await sleep(600);
    await client.fail(run.id, { message: "failed on purpose", code: "demo" });
  } catch (e) {
    note(e);
  }
});

// Current run: create the demo schema and tasks when missing, then select the tasks (a data operation).
const TASKS = [["demo-task-1", "Write the protocol", "Done", 3], ["demo-task-2", "Coalesce diffs", "Doing", 5],
  ["demo-task-3", "Ship the demo", "Open", 2], ["demo-task-4", "Measure latency", "Open", 3]];
const created = (p) => p.catch((e) => (e.run?.error?.code === "conflict" ? null : Promise.reject(e))); // another tab won
$("select-run").addEventListener("click", async () => {
  try {
    const schema = await client.run({ operation: "select", doctype: "Schema", space,
      input: { where: { _schema_doctype: "Task" }, take: 1 }, options: { includeSchema: false } });
    if (!schema.output?.data?.length) {
      await created(client.run({ operation: "create", doctype: "Schema", space, input: { data: {
        _schema_doctype: "Task",
        fields: [
          { fieldname: "title", fieldtype: "Data", reqd: 1, in_list_view: 1, label: "Title" },
          { fieldname: "status", fieldtype: "Select", options: "Open\nDoing\nDone", in_list_view: 1, label: "Status" },
          { fieldname: "points", fieldtype: "Int", in_list_view: 1, label: "Points" },
          { fieldname: "notes", fieldtype: "Text", label: "Notes" },
        ] } } }));
    }
    const existing = await client.run({ operation: "select", doctype: "Task", space, input: { take: 1000 },
      options: { includeSchema: false } });
    const have = new Set((existing.output?.data ?? []).map((d) => d.name));
    for (const [name, title, status, points] of TASKS) {
      if (!have.has(name)) {
        await created(client.run({ operation: "create", doctype: "Task", space, input: { data: { name, title, status, points } } }));
      }
    }
    await client.run({ operation: "select", doctype: "Task", space, input: { orderBy: { title: "asc" }, take: 20 } });
  } catch (e) {
    note(e);
  }
});

queueRender();
