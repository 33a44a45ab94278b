// The client's one error type. Owns nothing else: every module rejects with it, and the entry module re-exports it.

/** An error from the server (protocol.md §7) or from the connection. `code` is the server's error code. */
export class CoworkerError extends Error {
  /** @param {string} code @param {string} message @param {import("./mirror.js").RunContext} [run] the failed context, when the server sent one */
  constructor(code, message, run) {
    super(`${code}: ${message}`);
    this.name = "CoworkerError";
    this.code = code;
    if (run !== undefined) this.run = run;
  }
}
