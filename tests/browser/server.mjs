// Starts the real server binary for a test file: 127.0.0.1 port 0, a fresh data directory, the web demo at `/`.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

export const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");

// Servers still running when the test process ends (a crash, an interrupt) are killed with it.
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.once(signal, () => {
    for (const child of running) child.kill("SIGKILL");
    process.exit(128 + (signal === "SIGINT" ? 2 : 15));
  });
}

/**
 * Starts `target/debug/coworker` (or $COWORKER_BIN) with `--linger-ms 1500`; resolves with
 * {url: "ws://127.0.0.1:PORT/ws", http: "http://127.0.0.1:PORT", pid, log(), stop()}.
 */
export async function startServer(extraArgs = []) {
  const bin = process.env.COWORKER_BIN ?? join(ROOT, "target", "debug", "coworker");
  if (!existsSync(bin)) throw new Error(`${bin} is missing: run cargo build --bin coworker first`);
  const data = mkdtempSync(join(tmpdir(), "coworker-browser-"));
  const child = spawn(bin, ["--listen", "127.0.0.1:0", "--web-root", join(ROOT, "web-demo"), "--linger-ms", "1500",
    "--data-dir", data, ...extraArgs], { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, NO_COLOR: "1" } });
  running.add(child);
  const exited = new Promise((resolve) => child.once("exit", resolve));
  exited.then(() => running.delete(child));
  let log = "";
  try {
    const url = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the server did not start within 20 s:\n${log}`)), 20000);
      const onData = (chunk) => {
        log += chunk;
        // The log line (stdout, through tracing): "… listening; WebSocket at ws://127.0.0.1:PORT/ws"
        const m = /listening; WebSocket at (ws:\/\/[0-9.:]+\/ws)/.exec(log);
        if (m) {
          clearTimeout(timer);
          resolve(m[1]);
        }
      };
      child.stdout.on("data", onData);
      child.stderr.on("data", onData);
      exited.then((code) => {
        clearTimeout(timer);
        reject(new Error(`the server exited (${code}) before listening:\n${log}`));
      });
    });
    return {
      url,
      http: url.replace(/^ws/, "http").replace(/\/ws$/, ""),
      pid: child.pid,
      log: () => log,
      async stop() {
        if (child.exitCode === null && child.signalCode === null) {
          child.kill("SIGTERM");
          // It closes its sessions with 1001 and waits up to 3 s for them; do not wait longer than that.
          const killer = setTimeout(() => child.kill("SIGKILL"), 5000);
          await exited;
          clearTimeout(killer);
        }
        rmSync(data, { recursive: true, force: true });
      },
    };
  } catch (e) {
    child.kill("SIGKILL");
    rmSync(data, { recursive: true, force: true });
    throw e;
  }
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

/**
 * Clients and servers a test file starts, closed at its end also when a test failed half-way (a client left open
 * keeps reconnecting to a stopped server, and the test process would never exit). Call it at the top of a file.
 * @param {Function} connect the client's `connect`; @param {Function} WebSocket the constructor for Node
 */
export function harness(connect, WebSocket, after) {
  const servers = [];
  const clients = [];
  after(async () => {
    for (const c of clients) c.close();
    for (const s of servers) await s.stop();
  });
  return {
    /** A server process of its own, with extra flags. */
    async server(args = []) {
      const s = await startServer(args);
      servers.push(s);
      return s;
    },
    /** A client, closed at the end. */
    async open(url, options = {}) {
      const c = await connect(url, { WebSocket, ...options });
      clients.push(c);
      return c;
    },
    /** A client made otherwise, closed at the end too. */
    track(c) {
      clients.push(c);
      return c;
    },
  };
}
