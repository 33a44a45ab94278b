// The live demo page: every active run of one space, rendered from the client's snapshot shape once per
// animation frame, plus controls that start dialogs, AI streams, pipelines, failing runs and a data select.
import { connect } from "./coworker.js";

const params = new URLSearchParams(location.search);
const space = params.get("space") || "default";
const scheme = location.protocol === "https:" ? "wss" : "ws";
const client = await connect(`${scheme}://${location.host}/ws`);
const $ = (id) => document.querySelector(`[data-testid="${id}"]`);

/** Creates an element: h("div", {class: "x", "data-testid": "y"}, child, "text", …). */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) el.append(c instanceof Node ? c : String(c ?? ""));
  return el;
}

// ---- state from the server ----------------------------------------------------------------------------------
let view = null;
/** Runs that completed recently (from `after:run`), kept on screen a while so a finished answer stays readable. */
const finished = new Map();
const KEEP_FINISHED_MS = 20000;
const events = [];
let renderQueued = false;

client.subscribe((snapshot) => {
  view = snapshot;
  queueRender();
}, { space });

for (const name of ["before:run", "after:run", "error:run"]) {
  client.on(name, (run) => {
    if (run.space !== space) return;
    events.unshift({ name, run, at: new Date() });
    events.length = Math.min(events.length, 60);
    if (name === "after:run") finished.set(run.id, { run, until: Date.now() + KEEP_FINISHED_MS });
    queueRender();
  });
}

const statusEl = $("status");
const showStatus = (s) => {
  statusEl.textContent = s;
  statusEl.dataset.state = s;
};
showStatus(client.status);
client.on("status", showStatus);
$("space").textContent = space;

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
let tokensBefore = 0;
let tokensSeen = 0;
const latencies = [];
setInterval(() => {
  $("fig-frames").textContent = String(client.framesReceived - framesBefore);
  $("fig-tokens").textContent = String(tokensSeen - tokensBefore);
  framesBefore = client.framesReceived;
  tokensBefore = tokensSeen;
  const sorted = [...latencies].sort((a, b) => a - b);
  $("fig-latency").textContent = sorted.length ? `${sorted[Math.floor(sorted.length / 2)]} ms` : "–";
  latencies.length = 0;
}, 1000);
const tokenCounts = new Map();

// ---- rendering ----------------------------------------------------------------------------------------------
function statusBadge(run) {
  return h("span", { class: `badge ${run.status}`, "data-testid": "run-status" }, run.status);
}

function render() {
  if (!view) return;
  const now = Date.now();
  for (const [id, f] of finished) if (f.until < now || view.activeRuns[id]) finished.delete(id);

  // Dialogs: every running dialog of the space.
  const dialogs = $("dialogs");
  dialogs.replaceChildren(
    ...view.activeDialogs.map((run) =>
      h("div", { class: "card dialog", "data-testid": "dialog-card", "data-run-id": run.id },
        h("div", { class: "meta" }, statusBadge(run), h("code", {}, run.id.slice(-8)), run.agent ? ` ${run.agent}` : ""),
        h("div", { class: "dialog-text", "data-testid": "dialog-text" }, run.output?.value ?? ""))),
  );
  if (!view.activeDialogs.length) dialogs.append(h("p", { class: "empty" }, "No one is typing."));

  // AI: running interpret runs, then the ones that just completed.
  const ai = $("ai-runs");
  const aiRuns = [...view.activeAI, ...[...finished.values()].map((f) => f.run).filter((r) => r.operation === "interpret" && !r.parentRun)];
  ai.replaceChildren(
    ...aiRuns.map((run) => {
      const tokens = Array.isArray(run.output?.tokens) ? run.output.tokens : [];
      const before = tokenCounts.get(run.id) ?? 0;
      if (tokens.length > before) {
        tokensSeen += tokens.length - before;
        tokenCounts.set(run.id, tokens.length);
        if (typeof run.output?.sentAt === "number") latencies.push(Math.max(0, Date.now() - run.output.sentAt));
      }
      return h("div", { class: "card ai", "data-testid": "ai-card", "data-run-id": run.id },
        h("div", { class: "meta" }, statusBadge(run), h("code", {}, run.id.slice(-8)),
          h("span", { class: "count", "data-testid": "ai-count-seen" }, `${tokens.length} tokens`)),
        h("div", { class: "ai-text", "data-testid": "ai-text" }, tokens.join("")));
    }),
  );
  if (!aiRuns.length) ai.append(h("p", { class: "empty" }, "No AI run is streaming."));

  // Pipelines: groups whose root is a pipeline or that have members, root first.
  const pipes = $("pipelines");
  const groups = Object.entries(view.activePipelines).filter(([, runs]) => runs.length > 1 || runs[0]?.operation === "pipeline");
  pipes.replaceChildren(
    ...groups.map(([rootId, runs]) => {
      const [root, ...active] = runs;
      // Children that already completed stay listed under their root (from their after:run events).
      const members = new Set(runs.map((r) => r.id));
      const done = [...finished.values()].map((f) => f.run).filter((r) => members.has(r.parentRun) && !members.has(r.id));
      const children = [...done, ...active].sort((x, y) => x.timestamp - y.timestamp);
      const steps = Array.isArray(root.steps) ? root.steps : [];
      return h("div", { class: "card pipeline", "data-testid": "pipeline", "data-root-id": rootId },
        h("div", { class: "meta" }, statusBadge(root), h("strong", {}, root.operation), h("code", {}, rootId.slice(-8))),
        h("ol", { class: "steps" }, ...steps.map((s) => h("li", { class: `step ${s.status ?? "pending"}` }, s.name ?? "step"))),
        h("ul", { class: "children" }, ...children.map((c) =>
          h("li", { "data-testid": "pipeline-child", "data-run-id": c.id, class: c.status },
            statusBadge(c), h("span", {}, ` ${c.operation} `), h("code", {}, c.id.slice(-8)),
            h("span", { class: "child-out" }, Array.isArray(c.output?.tokens) ? ` ${c.output.tokens.join("")}` : "")))));
    }),
  );
  if (!groups.length) pipes.append(h("p", { class: "empty" }, "No pipeline is running."));

  // Every run of the space (failed ones stay, marked, for the server's linger period).
  const all = $("all-runs");
  all.replaceChildren(
    ...Object.values(view.activeRuns).map((run) =>
      h("tr", { "data-testid": "run-row", "data-run-id": run.id, class: run.status },
        h("td", {}, h("code", {}, run.id.slice(-8))), h("td", {}, run.operation), h("td", {}, statusBadge(run)),
        h("td", {}, run.parentRun ? h("code", {}, run.parentRun.slice(-8)) : "–"),
        h("td", {}, run.error?.message ?? ""))),
  );
  $("loading").textContent = view.isLoading ? "busy" : "idle";
  $("loading").dataset.state = view.isLoading ? "busy" : "idle";

  // Current run: the last completed data operation, as a table with the schema's list columns.
  renderCurrent(view.currentRun);

  const log = $("event-log");
  log.replaceChildren(
    ...events.slice(0, 40).map((e) =>
      h("li", { class: e.name.replace(":", "-") },
        h("time", {}, e.at.toLocaleTimeString()), h("span", { class: "ev" }, e.name),
        ` ${e.run.operation} `, h("code", {}, e.run.id.slice(-8)), e.run.error?.message ? ` ${e.run.error.message}` : "")),
  );
}

function renderCurrent(run) {
  const box = $("current");
  if (!run) {
    box.replaceChildren(h("p", { class: "empty" }, "No data operation has completed in this space yet."));
    return;
  }
  const out = run.output ?? {};
  const rows = Array.isArray(out.data) ? out.data : [];
  const fields = out.schema?.fields ?? [];
  let columns = out.viewConfig?.listColumns ?? fields.filter((f) => f.in_list_view).map((f) => f.fieldname);
  columns = columns.map((c) => (typeof c === "string" ? c : c.fieldname ?? String(c)));
  if (!columns.length) columns = [...new Set(rows.flatMap((r) => Object.keys(r)))].slice(0, 5);
  const label = (c) => fields.find((f) => f.fieldname === c)?.label ?? (c === "name" ? "Name" : c);
  box.replaceChildren(
    h("div", { class: "meta" }, statusBadge(run), h("strong", {}, `${run.operation} ${run.doctype ?? ""}`),
      ` ${rows.length} row${rows.length === 1 ? "" : "s"} in ${run.duration} ms`),
    h("table", { "data-testid": "current-table" },
      h("thead", {}, h("tr", {}, ...columns.map((c) => h("th", {}, label(c))))),
      h("tbody", {}, ...rows.map((r) => h("tr", {}, ...columns.map((c) => h("td", {}, fmt(r[c])))))),
    ),
  );
}

const fmt = (v) => (v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));

// ---- controls -----------------------------------------------------------------------------------------------
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const note = (e) => {
  const el = $("notice");
  el.textContent = e ? String(e.message ?? e) : "";
};

// Dialog: the first keystroke starts a dialog run; every keystroke sets the whole `output.value`.
let dialogRun = null;
let dialogStarting = null;
$("dialog-input").addEventListener("input", async (ev) => {
  try {
    if (!dialogRun) {
      dialogStarting ??= client.run({ operation: "dialog", space, agent: "browser", input: { prompt: "Type here" } });
      dialogRun = (await dialogStarting).id;
    }
    // The field's text now (later keystrokes may have landed while the run was starting).
    await client.updateRunField(dialogRun, "output.value", ev.target.value);
  } catch (e) {
    note(e);
  }
});
$("dialog-done").addEventListener("click", async () => {
  if (!dialogRun) return;
  const id = dialogRun;
  dialogRun = null;
  dialogStarting = null;
  $("dialog-input").value = "";
  await client.complete(id).catch(note);
});

// AI: a stream of words at the chosen rate; each frame's tokens go out as one patch, with the send time.
const WORDS = "Runs are context objects that are also their own audit records; the server coalesces every change into one diff per tick for every subscriber. ".split(/(?<= )/);
$("ai-rate").addEventListener("input", (e) => ($("ai-rate-value").textContent = `${e.target.value}/s`));
$("ai-start").addEventListener("click", async () => {
  const rate = Math.max(1, Math.min(1000, Number($("ai-rate").value) || 50));
  const count = Math.max(1, Math.min(100000, Number($("ai-count").value) || 200));
  try {
    const run = await client.run({ operation: "interpret", space, agent: "browser-ai", input: { rate, count } });
    const started = performance.now();
    let sent = 0;
    while (sent < count) {
      await new Promise((r) => requestAnimationFrame(r));
      const due = Math.min(count, Math.floor(((performance.now() - started) / 1000) * rate) + 1);
      const writes = [];
      for (; sent < due; sent++) writes.push(client.append(run.id, "output.tokens", WORDS[sent % WORDS.length]));
      if (writes.length) writes.push(client.updateRunField(run.id, "output.sentAt", Date.now()));
      Promise.all(writes).catch(note);
    }
    await client.complete(run.id);
  } catch (e) {
    note(e);
  }
});

// Pipeline: a root with three steps; each step runs a child that streams a little and completes (or fails).
$("pipeline-start").addEventListener("click", async () => {
  const names = ["fetch", "analyze", "summarize"];
  const failAt = $("pipeline-fail").checked ? 1 : -1;
  try {
    const root = await client.run({ operation: "pipeline", space, agent: "browser",
      steps: names.map((name) => ({ name, status: "pending" })) });
    for (const [i, name] of names.entries()) {
      await client.updateRunStep(root.id, i, { status: "running" });
      const child = await client.run({ operation: "interpret", parentRun: root.id, agent: name, input: { step: name } });
      for (const w of [`${name} `, "… ", "done"]) {
        await sleep(250);
        client.append(child.id, "output.tokens", w);
      }
      await sleep(300);
      if (i === failAt) {
        await client.fail(child.id, { message: `${name} failed (on purpose)`, code: "demo" });
        await client.updateRunStep(root.id, i, { status: "failed" });
        await client.fail(root.id, { message: `step ${name} failed`, code: "demo" });
        return;
      }
      await client.complete(child.id, { step: name, tokens: ["done"] });
      await client.updateRunStep(root.id, i, { status: "done" });
    }
    await sleep(800);
    await client.complete(root.id);
  } catch (e) {
    note(e);
  }
});

// A run that fails: shown as failed, then gone after the server's linger period.
$("fail-start").addEventListener("click", async () => {
  try {
    const run = await client.run({ operation: "dialog", space, agent: "browser", input: { will: "fail" } });
    await client.updateRunField(run.id, "output.value", "about to fail…");
    await sleep(600);
    await client.fail(run.id, { message: "failed on purpose", code: "demo" });
  } catch (e) {
    note(e);
  }
});

// Current run: make sure the demo schema and a few tasks exist, then select them (a data operation).
$("select-run").addEventListener("click", async () => {
  const quiet = (p) => p.catch((e) => (e.code === "operation_failed" ? null : Promise.reject(e)));
  try {
    await quiet(client.run({ operation: "create", doctype: "Schema", space, input: { data: {
      _schema_doctype: "Task",
      fields: [
        { fieldname: "title", fieldtype: "Data", reqd: 1, in_list_view: 1, label: "Title" },
        { fieldname: "status", fieldtype: "Select", options: "Open\nDoing\nDone", in_list_view: 1, label: "Status" },
        { fieldname: "points", fieldtype: "Int", in_list_view: 1, label: "Points" },
        { fieldname: "notes", fieldtype: "Text" },
      ] } } }));
    const tasks = [["Write the protocol", "Done", 3], ["Coalesce diffs", "Doing", 5], ["Ship the demo", "Open", 2]];
    for (const [i, [title, status, points]] of tasks.entries()) {
      await quiet(client.run({ operation: "create", doctype: "Task", space,
        input: { data: { name: `demo-task-${i + 1}`, title, status, points } } }));
    }
    await client.run({ operation: "select", doctype: "Task", space, input: { orderBy: { title: "asc" }, take: 20 } });
  } catch (e) {
    note(e);
  }
});

queueRender();
