// The demo page in real headless Chromium (Debian's package, driven by playwright-core): two pages on one space.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startServer, ROOT } from "./server.mjs";

const CHROMIUM = process.env.CHROMIUM ?? "/usr/bin/chromium";
const WORDS = "Runs are context objects that are also their own audit records; the server coalesces every change into one diff per tick for every subscriber. ".split(/(?<= )/);

let server, browser, a, b;
const consoleErrors = [];

async function openPage(url, name) {
  const page = await browser.newPage({ viewport: { width: 1440, height: 1000 } });
  page.on("console", (m) => m.type() === "error" && consoleErrors.push(`${name}: ${m.text()}`));
  page.on("pageerror", (e) => consoleErrors.push(`${name}: ${e.message}`));
  await page.goto(url);
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
  const url = `${server.http}/?space=e2e-${process.pid}`;
  a = await openPage(url, "A");
  b = await openPage(url, "B");
});

after(async () => {
  await browser?.close();
  await server?.stop();
});

test("page A types into a dialog and page B shows the same text", async () => {
  const text = "Hello from page A, typed key by key.";
  await a.getByTestId("dialog-input").pressSequentially(text, { delay: 15 });
  await b.getByTestId("dialog-text").filter({ hasText: text }).waitFor({ timeout: 10000 });
  const shown = await b.getByTestId("dialog-text").allTextContents();
  assert.ok(shown.includes(text), JSON.stringify(shown));
  await a.getByTestId("dialog-done").click();
  await b.getByTestId("dialog-text").filter({ hasText: text }).waitFor({ state: "detached", timeout: 10000 });
});

test("an AI stream of 500 tokens appears complete and in order on both pages", async () => {
  const expected = Array.from({ length: 500 }, (_, i) => WORDS[i % WORDS.length]).join("");
  await a.getByTestId("ai-count").fill("500");
  await a.getByTestId("ai-rate").fill("1000");
  await a.getByTestId("ai-start").click();
  for (const page of [a, b]) {
    // Exact text: every token, each once, in order (the card stays after the run completes).
    await page.getByTestId("ai-text").filter({ hasText: expected }).waitFor({ timeout: 20000 });
    const texts = await page.getByTestId("ai-text").allTextContents();
    assert.ok(texts.includes(expected), `${texts.map((t) => t.length)} characters, want ${expected.length}`);
    await page.getByTestId("ai-count-seen").filter({ hasText: "500 tokens" }).first().waitFor({ timeout: 5000 });
  }
});

test("a pipeline shows its children under its root", async () => {
  await a.getByTestId("pipeline-start").click();
  const pipeline = b.getByTestId("pipeline").filter({ has: b.getByTestId("pipeline-child") });
  await pipeline.first().waitFor({ timeout: 10000 });
  const rootId = await pipeline.first().getAttribute("data-root-id");
  assert.ok(rootId);
  // Children appear inside the root's card as the steps advance (finished ones stay listed).
  await b.locator(`[data-root-id="${rootId}"] [data-testid="pipeline-child"]`).nth(1).waitFor({ timeout: 10000 });
  await b.locator(`[data-root-id="${rootId}"] .step.done`).first().waitFor({ timeout: 10000 });
  const steps = await b.locator(`[data-root-id="${rootId}"] .step`).allTextContents();
  assert.deepEqual(steps, ["fetch", "analyze", "summarize"]);
});

test("a failed run shows as failed, then disappears after the linger", async () => {
  await a.getByTestId("fail-start").click();
  const row = b.locator('[data-testid="run-row"].failed');
  await row.first().waitFor({ timeout: 10000 });
  const id = await row.first().getAttribute("data-run-id");
  const seen = Date.now();
  assert.equal(await b.locator(`[data-run-id="${id}"] [data-testid="run-status"]`).textContent(), "failed");
  await b.locator(`[data-testid="run-row"][data-run-id="${id}"]`).waitFor({ state: "detached", timeout: 10000 });
  const gone = Date.now() - seen;
  assert.ok(gone < 5000, `gone after ${gone} ms (linger 1500 ms)`);
});

test("the current run shows a select result as a table with the schema's columns", async () => {
  await a.getByTestId("select-run").click();
  const table = b.getByTestId("current-table");
  await table.locator("tbody tr").nth(2).waitFor({ timeout: 15000 });
  // The server's viewConfig: `name`, then the schema's in_list_view fields, labelled from the schema.
  assert.deepEqual(await table.locator("th").allTextContents(), ["Name", "Title", "Status", "Points"]);
  assert.deepEqual(await table.locator("tbody tr td:nth-child(2)").allTextContents(),
    ["Coalesce diffs", "Ship the demo", "Write the protocol"]);
});

test("a screenshot of the page mid-activity, and no console errors", async () => {
  await a.getByTestId("ai-count").fill("4000");
  await a.getByTestId("ai-rate").fill("60");
  await a.getByTestId("ai-start").click();
  await a.getByTestId("pipeline-fail").check();
  await a.getByTestId("pipeline-start").click();
  await a.getByTestId("dialog-input").pressSequentially("Drafting a reply while the AI streams…", { delay: 10 });
  await b.getByTestId("pipeline-child").nth(1).waitFor({ timeout: 10000 });
  await new Promise((r) => setTimeout(r, 1200));
  const dir = join(ROOT, "tests", "browser", "artifacts");
  mkdirSync(dir, { recursive: true });
  await b.screenshot({ path: join(dir, "demo.png"), fullPage: true });
  assert.deepEqual(consoleErrors, []);
});
