#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn test suite (fuzzingclient) against /autobahn, an echo endpoint on the
# production accept path and limits, and checks the report. Cases 12.* and 13.* (permessage-deflate) are not run.
# Expected failures, by design: 9.* send messages of 64 KiB to 16 MiB and the server closes anything over its
# 64 KiB limit with 1009. Everything else must be OK, NON-STRICT or INFORMATIONAL.
# Needs Python 2.7.18 from pyenv (on the machine) and PyPI (autobahntestsuite goes into a virtualenv).
set -euo pipefail
cd "$(dirname "$0")/.."
PY2="$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")/versions/2.7.18/bin/python"
[ -x "$PY2" ] || { echo "autobahn: Python 2.7.18 not found at $PY2 (pyenv)" >&2; exit 1; }
VENV="${AUTOBAHN_VENV:-target/autobahn-venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
if [ ! -x "$VENV/bin/wstest" ]; then
    echo "autobahn: installing autobahntestsuite into $VENV"
    "$PY2" -m pip install -q --disable-pip-version-check --target "$VENV-boot" virtualenv==20.15.1 2>/dev/null
    PYTHONPATH="$VENV-boot" "$PY2" -m virtualenv -q "$VENV" >/dev/null
    "$VENV/bin/pip" install -q --disable-pip-version-check autobahntestsuite 2>/dev/null
fi
cargo build --locked --quiet --bin coworker
work="$(mktemp -d)"
trap 'kill "$server" 2>/dev/null || true; [ -n "${AUTOBAHN_KEEP:-}" ] || rm -rf "$work"' EXIT
target/debug/coworker --listen 127.0.0.1:0 --autobahn-echo --data-dir "$work/data" --web-root /nonexistent \
    >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do grep -q "WebSocket at" "$work/server.log" && break; sleep 0.1; done
port="$(sed -n 's/.*WebSocket at ws:\/\/127.0.0.1:\([0-9]*\)\/ws.*/\1/p' "$work/server.log" | head -1)"
[ -n "$port" ] || { echo "autobahn: the server did not start" >&2; cat "$work/server.log" >&2; exit 1; }
cat >"$work/fuzzingclient.json" <<JSON
{"outdir": "$work/reports", "servers": [{"agent": "coworker", "url": "ws://127.0.0.1:$port/autobahn"}],
 "cases": ["*"], "exclude-cases": ["12.*", "13.*"], "exclude-agent-cases": {}}
JSON
(cd "$work" && "$VENV/bin/wstest" -m fuzzingclient -s fuzzingclient.json >"$work/wstest.log" 2>&1)
python3 - "$work/reports/index.json" <<'PY'
import json, sys, collections
cases = json.load(open(sys.argv[1]))["coworker"]
counts = collections.Counter(c["behavior"] for c in cases.values())
def expected(k, c):
    if c["behavior"] in ("OK", "NON-STRICT", "INFORMATIONAL"):
        return True
    # A 9.* message over the size limit, closed with 1009: by design.
    return k.startswith("9.") and c["behavior"] == "FAILED" and c.get("remoteCloseCode") == 1009
bad = sorted(k for k, c in cases.items() if not expected(k, c))
print("autobahn: %d cases: %s" % (len(cases), ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
print("autobahn: 9.* closed with 1009 (messages over the 64 KiB limit, by design): %d"
      % sum(1 for k, c in cases.items() if k.startswith("9.") and c["behavior"] == "FAILED"))
if bad:
    print("autobahn: unexpected results: " + ", ".join("%s=%s" % (k, cases[k]["behavior"]) for k in bad))
    sys.exit(1)
print("autobahn: conformance as expected (no unexpected result in %d cases)" % len(cases))
PY
