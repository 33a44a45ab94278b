// Starts the real server binary for a test file: 127.0.0.1 port 0, a fresh data directory, the web demo at `/`.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

/** Starts `target/debug/coworker` (or COWORKER_BIN); resolves with {url, http, pid, stop()}. */
export async function startServer(extraArgs = []) {
  const bin = process.env.COWORKER_BIN ?? join(ROOT, "target", "debug", "coworker");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run cargo build --bin coworker first`);
  const data = mkdtempSync(join(tmpdir(), "coworker-browser-"));
  const child = spawn(bin, ["--listen", "127.0.0.1:0", "--web-root", join(ROOT, "web-demo"), "--linger-ms", "1500",
    "--data-dir", data, ...extraArgs], { stdio: ["ignore", "pipe", "pipe"] });
  let log = "";
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the server did not start:\n${log}`)), 20000);
    const onData = (chunk) => {
      log += chunk;
      const m = /WebSocket at (ws:\/\/[0-9.:]+\/ws)/.exec(log);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    child.on("exit", (code) => reject(new Error(`the server exited (${code}):\n${log}`)));
  });
  return {
    url,
    http: url.replace(/^ws/, "http").replace(/\/ws$/, ""),
    pid: child.pid,
    log: () => log,
    async stop() {
      child.kill("SIGTERM");
      await new Promise((r) => (child.exitCode !== null ? r() : child.on("exit", r)));
      rmSync(data, { recursive: true, force: true });
    },
  };
}

/** Polls `check` until it returns a truthy value (or throws after `ms`). */
export async function until(check, ms = 10000, what = "condition") {
  const deadline = Date.now() + ms;
  let last;
  while (Date.now() < deadline) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`);
}
