// The demo page in real headless Chromium (Debian's package, driven by playwright-core; no browser download): two
// pages A and B on one space of a real server process, plus a producer outside the browser (the client in Node).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import WebSocket from "ws";
import { chromium } from "playwright-core";
import { connect } from "../../web-demo/coworker.js";
import { startServer, ROOT } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
// The words the page's AI stream cycles through (web-demo/app.js).
const WORDS = "Runs are context objects that are also their own audit records; the server coalesces every change into one diff per tick for every subscriber. ".split(/(?<= )/);
const SPACE = `e2e-${process.pid}`;

let server, browser, a, b, outside;
const consoleErrors = [];

async function openPage(url, name) {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(`${name}: ${m.text()}`));
  page.on("pageerror", (e) => consoleErrors.push(`${name}: ${e.message}`));
  page.on("requestfailed", (r) => consoleErrors.push(`${name}: ${r.url()} ${r.failure()?.errorText}`));
  const response = await page.goto(url);
  assert.equal(response.status(), 200);
  await page.getByTestId("status").filter({ hasText: "open" }).waitFor({ timeout: 10000 });
  return page;
}

before(async () => {
  server = await startServer();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
  const url = `${server.http}/?space=${SPACE}`;
  a = await openPage(url, "A");
  b = await openPage(url, "B");
});

after(async () => {
  outside?.close();
  await browser?.close();
  await server?.stop();
});

test("the page is served with its module scripts and shows its space", async () => {
  const res = await fetch(`${server.http}/coworker.js`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type") ?? "", /javascript/);
  assert.equal(await b.getByTestId("space").textContent(), SPACE);
});

test("page A types into a dialog and page B shows the same text", async () => {
  const text = "Hello from page A, typed key by key.";
  await a.getByTestId("dialog-input").pressSequentially(text, { delay: 15 });
  const card = b.getByTestId("dialog-card").filter({ has: b.getByTestId("dialog-text").filter({ hasText: text }) });
  await card.waitFor({ timeout: 10000 });
  assert.equal(await card.getByTestId("dialog-text").textContent(), text);
  const id = await card.getAttribute("data-run-id");
  assert.equal(await a.locator(`[data-testid="dialog-card"][data-run-id="${id}"] [data-testid="dialog-text"]`).textContent(), text);
  await a.getByTestId("dialog-done").click();
  await b.locator(`[data-testid="dialog-card"][data-run-id="${id}"]`).waitFor({ state: "detached", timeout: 10000 });
});

test("an AI stream of 500 tokens appears complete and in order on both pages (B's socket dropped mid-stream)", async () => {
  const expected = Array.from({ length: 500 }, (_, i) => WORDS[i % WORDS.length]).join("");
  await a.getByTestId("ai-count").fill("500");
  await a.getByTestId("ai-rate").fill("1000");
  assert.equal(await a.getByTestId("ai-rate-value").textContent(), "1000/s");
  await a.getByTestId("ai-start").click();
  // B loses its connection while the tokens stream; it reconnects, resumes and must still get every token.
  await b.getByTestId("ai-card").filter({ has: b.locator(".badge.running") }).first().waitFor({ timeout: 10000 });
  await b.evaluate(() => globalThis.coworker.ws.close());
  await b.getByTestId("status").filter({ hasText: "reconnecting" }).waitFor({ timeout: 5000 });
  for (const page of [a, b]) {
    // Exact text: every token, each once, in order (the card stays a while after the run completed).
    const card = page.getByTestId("ai-card").filter({ has: page.getByTestId("ai-count-seen").filter({ hasText: "500 tokens" }) });
    await card.filter({ has: page.locator(".badge.completed") }).waitFor({ timeout: 20000 });
    assert.equal(await card.getByTestId("ai-text").textContent(), expected);
  }
  await b.getByTestId("status").filter({ hasText: "open" }).waitFor({ timeout: 5000 });
  // The page that produced the tokens measured token → screen from the producer's timestamp.
  await a.getByTestId("fig-latency").filter({ hasText: /^\d+ ms$/ }).waitFor({ timeout: 5000 });
});

test("runs started outside the browser show up on the page", async () => {
  outside = await connect(server.url, { WebSocket });
  const run = await outside.run({ operation: "interpret", space: SPACE, agent: "node-producer" });
  const card = b.locator(`[data-testid="ai-card"][data-run-id="${run.id}"]`);
  await card.waitFor({ timeout: 10000 });
  for (const t of ["from ", "a ", "producer ", "outside"]) outside.append(run.id, "output.tokens", t);
  await card.getByTestId("ai-text").filter({ hasText: "from a producer outside" }).waitFor({ timeout: 10000 });
  assert.equal(await b.locator(`[data-testid="run-row"][data-run-id="${run.id}"] td:nth-child(3)`).textContent(), "node-producer");
  await outside.complete(run.id);
  await b.locator(`[data-testid="run-row"][data-run-id="${run.id}"]`).waitFor({ state: "detached", timeout: 10000 });
});

test("a pipeline shows its children under its root", async () => {
  await a.getByTestId("pipeline-start").click();
  const pipeline = b.getByTestId("pipeline").filter({ has: b.getByTestId("pipeline-child") });
  await pipeline.first().waitFor({ timeout: 10000 });
  const rootId = await pipeline.first().getAttribute("data-root-id");
  const card = b.locator(`[data-testid="pipeline"][data-root-id="${rootId}"]`);
  assert.deepEqual(await card.getByTestId("pipeline-step").allTextContents(), ["fetch", "analyze", "summarize"]);
  // Children appear inside the root's card as the steps advance, and stay listed once they completed.
  await card.getByTestId("pipeline-child").nth(2).waitFor({ timeout: 10000 });
  await card.locator(".step.done").nth(2).waitFor({ timeout: 10000 });
  await b.locator(`[data-testid="pipeline"][data-root-id="${rootId}"].completed`).waitFor({ timeout: 10000 });
  assert.equal(await card.getByTestId("pipeline-child").count(), 3);
  assert.deepEqual(await card.locator('[data-testid="pipeline-child"] .op').allTextContents(),
    ["interpret · fetch", "interpret · analyze", "interpret · summarize"]);
});

test("a failed run shows as failed, then disappears after the linger", async () => {
  await a.getByTestId("fail-start").click();
  const row = b.locator('[data-testid="run-row"].failed');
  await row.first().waitFor({ timeout: 10000 });
  const seen = Date.now();
  const id = await row.first().getAttribute("data-run-id");
  assert.equal(await b.locator(`[data-testid="run-row"][data-run-id="${id}"] [data-testid="run-status"]`).textContent(), "failed");
  const card = b.locator(`[data-testid="dialog-card"][data-run-id="${id}"]`);
  assert.match(await card.getAttribute("class"), /\bfailed\b/);
  assert.equal(await card.getByTestId("run-status").textContent(), "failed");
  await b.locator(`[data-testid="run-row"][data-run-id="${id}"]`).waitFor({ state: "detached", timeout: 10000 });
  const gone = Date.now() - seen;
  assert.ok(gone > 900 && gone < 5000, `gone after ${gone} ms (linger 1500 ms)`);
  assert.equal(await card.count(), 0);
});

test("the current run shows a select result as a table with the schema's columns", async () => {
  await a.getByTestId("select-run").click();
  const table = b.getByTestId("current-table");
  await table.locator("tbody tr").nth(3).waitFor({ timeout: 15000 });
  // The server's viewConfig: `name`, then the schema's in_list_view fields, labelled from the schema.
  assert.deepEqual(await table.locator("th").allTextContents(), ["Name", "Title", "Status", "Points"]);
  assert.deepEqual(await table.locator("tbody tr td:nth-child(2)").allTextContents(),
    ["Coalesce diffs", "Measure latency", "Ship the demo", "Write the protocol"]);
  // A second select (from page B) finds the schema and the tasks and creates nothing: no failed (conflict) runs.
  await b.evaluate(() => {
    const seen = (globalThis.seen = { errors: 0, selects: 0, creates: 0 });
    globalThis.coworker.on("error:run", () => (seen.errors += 1));
    globalThis.coworker.on("after:run", (r) => {
      if (r.operation === "create") seen.creates += 1;
      if (r.operation === "select" && r.doctype === "Task") seen.selects += 1;
    });
  });
  await b.getByTestId("select-run").click();
  await b.waitForFunction(() => globalThis.seen.selects >= 2, null, { timeout: 10000 });
  assert.deepEqual(await b.evaluate(() => globalThis.seen), { errors: 0, selects: 2, creates: 0 });
  assert.equal(await table.locator("tbody tr").count(), 4);
});

test("a stream past the server's --max-run-bytes shows run_too_large on its card, completes with what was accepted, and the page goes on", async () => {
  const small = await startServer(["--max-run-bytes", "20000"]);
  let page;
  try {
    page = await openPage(`${small.http}/?space=${SPACE}-budget`, "budget");
    await page.getByTestId("ai-count").fill("500");
    await page.getByTestId("ai-rate").fill("1000");
    await page.getByTestId("ai-start").click();
    const card = page.getByTestId("ai-card").filter({ has: page.getByTestId("write-error").filter({ hasText: "run_too_large" }) });
    await card.waitFor({ timeout: 10000 });
    assert.equal(await card.getByTestId("write-error").textContent(), "run_too_large: the run is at its size budget");
    // The stream stopped there and the run completed with the tokens the server took (the card shows its final context).
    await card.filter({ has: page.locator(".badge.completed") }).waitFor({ timeout: 10000 });
    const kept = Number((await card.getByTestId("ai-count-seen").textContent()).split(" ")[0]);
    assert.ok(kept > 50 && kept < 500, `${kept} tokens kept`);
    assert.equal(await card.getByTestId("ai-text").textContent(),
      Array.from({ length: kept }, (_, i) => WORDS[i % WORDS.length]).join(""));
    // The page goes on: a short stream completes whole, with no error on its card.
    await page.getByTestId("ai-count").fill("20");
    await page.getByTestId("ai-start").click();
    const next = page.getByTestId("ai-card").filter({ has: page.getByTestId("ai-count-seen").filter({ hasText: /^20 tokens/ }) });
    await next.filter({ has: page.locator(".badge.completed") }).waitFor({ timeout: 10000 });
    assert.equal(await next.getByTestId("write-error").isHidden(), true);
    assert.equal(await page.getByTestId("status").textContent(), "open");
    await page.screenshot({ path: join(ROOT, "tests", "browser", "artifacts", "budget.png") });
  } finally {
    await page?.close(); // before its server stops: reconnection attempts would log console errors
    await small.stop();
  }
});

test("a screenshot of the page mid-activity, and no console errors", async () => {
  await a.getByTestId("ai-count").fill("4000");
  await a.getByTestId("ai-rate").fill("60");
  await a.getByTestId("ai-start").click();
  await a.getByTestId("pipeline-fail").check();
  await a.getByTestId("pipeline-start").click();
  await a.getByTestId("dialog-input").pressSequentially("Drafting a reply while the AI streams…", { delay: 10 });
  // Content in every panel: a dialog, a streaming answer, a pipeline with a failed step, the table, runs, events.
  await b.getByTestId("dialog-text").filter({ hasText: "Drafting a reply while the AI streams…" }).waitFor({ timeout: 10000 });
  await b.getByTestId("pipeline").locator(".step.failed").waitFor({ timeout: 10000 });
  await b.getByTestId("ai-card").filter({ has: b.locator(".badge.running") }).getByTestId("ai-count-seen")
    .filter({ hasText: /^([6-9]\d|\d{3,}) tokens/ }).waitFor({ timeout: 10000 });
  await b.getByTestId("fig-tokens").filter({ hasText: /^[1-9]\d*$/ }).waitFor({ timeout: 5000 });
  const dir = join(ROOT, "tests", "browser", "artifacts");
  mkdirSync(dir, { recursive: true });
  await b.screenshot({ path: join(dir, "demo.png"), fullPage: true });
  assert.deepEqual(consoleErrors, []);
});
