#!/usr/bin/env bash
# Regenerates the measured tables of BENCHMARKS.md (between its "bench:begin" and "bench:end" markers):
# this server side by side with a naive tokio-tungstenite broadcast, Socket.IO 4 and nats-server, all driven by
# the same coworker-load harness; then this server's ceiling, ingress cost, frames and write syscalls per
# subscriber per tick, memory per idle connection, and CPU per delivered token as subscribers and runs grow.
#
# The side-by-side and the ingress loads are also run against the naive broadcast with no subscribers: the floor,
# what reading the producers' messages costs on this machine, which any server pays before it sends anything.
#
# Then the capacity of one core: every system at 100 runs x 100 tokens/s to 10 ... 500 subscribers, once each;
# and paced (--pace-producers) and batched (--batch) producers against the usual ones.
#
# Method: each server is pinned to core 0 and the load tool to core 1 (taskset); every server is started fresh
# for every measurement; the side-by-side configuration runs REPS times, alternating the systems, and the report
# gives medians. Raw results: target/bench/results.jsonl.
#
# Usage: ./scripts/bench.sh            (about 15 minutes)
#        REPS=1 DURATION=4 ./scripts/bench.sh   (a quick look)
#        ONLY=capacity ./scripts/bench.sh       (one section: side-by-side, keys, ingress, ceiling, syscalls, idle,
#                                                grid, instructions, capacity or pacing; raw results in target/bench/$ONLY.jsonl,
#                                                its tables printed, BENCHMARKS.md left alone)
# Needs: Linux with 2+ cores, taskset, strace; installs nats-server and valgrind (apt-get) and socket.io (npm) when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
REPS=${REPS:-3}
DURATION=${DURATION:-10}
OUT=target/bench
ONLY=${ONLY:-}
SECTIONS="side-by-side keys ingress ceiling syscalls idle grid instructions capacity pacing"
if [ -n "$ONLY" ] && ! [[ " $SECTIONS " == *" $ONLY "* ]]; then
  echo "bench: ONLY must be one of: $SECTIONS" >&2
  exit 2
fi
RESULTS=$OUT/${ONLY:-results}.jsonl
mkdir -p "$OUT"
: > "$RESULTS"
TMP=$(mktemp -d)
trap 'stop_server; rm -rf "$TMP"' EXIT

ulimit -n "$(ulimit -Hn)"
if ! command -v nats-server >/dev/null; then
  SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq nats-server
fi
if [ ! -d bench/peers/node_modules ]; then (cd bench/peers && npm ci --no-audit --no-fund --silent); fi
cargo build --release --locked --bin coworker --bin coworker-load --example naive_broadcast

LOAD=target/release/coworker-load
SERVER_PID=
URL=

wait_port() {
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench: nothing listens on port $1" >&2
  return 1
}

# start_server SYSTEM: starts it pinned to core 0; sets SERVER_PID and URL.
start_server() {
  case "$1" in
    coworker)
      rm -rf "$TMP/data"
      taskset -c 0 target/release/coworker --listen 127.0.0.1:18080 --data-dir "$TMP/data" >"$TMP/server.log" 2>&1 &
      SERVER_PID=$!; URL=ws://127.0.0.1:18080/ws; wait_port 18080 ;;
    coworker-paced)
      rm -rf "$TMP/data"
      taskset -c 0 target/release/coworker --listen 127.0.0.1:18080 --data-dir "$TMP/data" --pace-producers \
        >"$TMP/server.log" 2>&1 &
      SERVER_PID=$!; URL=ws://127.0.0.1:18080/ws; wait_port 18080 ;;
    naive)
      taskset -c 0 target/release/examples/naive_broadcast 127.0.0.1:18081 >"$TMP/server.log" 2>&1 &
      SERVER_PID=$!; URL=ws://127.0.0.1:18081; wait_port 18081 ;;
    socketio)
      taskset -c 0 node bench/peers/socketio-server.mjs 18082 >"$TMP/server.log" 2>&1 &
      SERVER_PID=$!; URL="ws://127.0.0.1:18082/socket.io/?EIO=4&transport=websocket"; wait_port 18082 ;;
    nats)
      printf 'listen: 127.0.0.1:18084\nwebsocket { listen: "127.0.0.1:18083", no_tls: true, compression: false }\n' \
        >"$TMP/nats.conf"
      taskset -c 0 nats-server -c "$TMP/nats.conf" >"$TMP/server.log" 2>&1 &
      SERVER_PID=$!; URL=ws://127.0.0.1:18083; wait_port 18083 ;;
  esac
}

stop_server() {
  if [ -n "${SERVER_PID:-}" ]; then
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
  fi
}

# measure LABEL SYSTEM [coworker-load flags...]: one fresh server, one load run, one JSON line in the results.
measure() {
  local label=$1 system=$2
  shift 2
  start_server "$system"
  echo "bench: $label ($system): $*" >&2
  local json
  if json=$(taskset -c 1 "$LOAD" --target "${system%-paced}" --url "$URL" --server-pid "$SERVER_PID" --json "$@"); then :; fi
  stop_server
  if [ -z "$json" ]; then json='{"ok":false,"failed_to_run":true}'; fi
  python3 -c 'import json,sys; d=json.loads(sys.argv[3]); d["label"]=sys.argv[1]; d["system"]=sys.argv[2]; print(json.dumps(d))' \
    "$label" "$system" "$json" >>"$RESULTS"
}

metric() { curl -s "http://127.0.0.1:18080/metrics" | awk -v m="$1" '$1 == m {print $2}'; }

# want SECTION: whether this run measures it (all of them unless ONLY names one).
want() { [ -z "$ONLY" ] || [ "$ONLY" = "$1" ]; }

# 1. Side by side: many AI runs streaming to many subscribers, one core for the server.
if want side-by-side; then
  for rep in $(seq 1 "$REPS"); do
    for system in coworker naive socketio nats; do
      measure side-by-side "$system" --scenario ai --runs 100 --rate 100 --subscribers 10 --duration "$DURATION"
    done
    # The same producers with no subscribers: what reading their messages costs (the naive broadcast reads each
    # frame, parses its room and finds nobody to send to), and this server's own ingress at this load.
    measure floor-side naive --scenario ai --runs 100 --rate 100 --subscribers 0 --duration "$DURATION"
    measure side-ingress coworker --scenario ai --runs 100 --rate 100 --subscribers 0 --duration "$DURATION"
  done
fi

# 2. Keystrokes, per delivered keystroke.
if want keys; then
  for rep in $(seq 1 "$REPS"); do
    measure keys coworker --scenario keys --runs 100 --rate 10 --subscribers 10 --duration "$DURATION"
  done
fi

# 3. Ingress alone: no subscribers.
if want ingress; then
  for rep in $(seq 1 "$REPS"); do
    measure ingress coworker --scenario ai --runs 1000 --rate 100 --subscribers 0 --duration "$DURATION"
    measure floor-ingress naive --scenario ai --runs 1000 --rate 100 --subscribers 0 --duration "$DURATION"
  done
fi

# 4. The ceiling on one core. Two subscribers keep the full state; the others count and check every token without
#    a state (--verify 2), so that one core of load can drive one core of server.
if want ceiling; then
  for cfg in "100 100 100" "100 100 200" "1000 100 10" "1000 100 30"; do
    set -- $cfg
    measure ceiling coworker --scenario ai --runs "$1" --rate "$2" --subscribers "$3" --verify 2 --duration "$DURATION"
  done
fi

# 5. Frames, renders and write syscalls per subscriber per tick (strace counts the server's write calls for 5 s).
if want syscalls; then
  start_server coworker
  taskset -c 1 "$LOAD" --url "$URL" --scenario ai --runs 20 --rate 1000 --subscribers 10 --duration 9 --json \
    >"$TMP/strace-load.json" &
  LOAD_PID=$!
  sleep 3
  before=$(printf '%s %s %s' "$(metric coworker_frames_sent_total)" "$(metric coworker_diffs_rendered_total)" \
    "$(metric coworker_flush_seconds_count)")
  timeout -s INT 5 strace -c -f -e trace=write,writev,sendto,sendmsg -p "$SERVER_PID" -o "$OUT/strace.txt" || true
  after=$(printf '%s %s %s' "$(metric coworker_frames_sent_total)" "$(metric coworker_diffs_rendered_total)" \
    "$(metric coworker_flush_seconds_count)")
  wait "$LOAD_PID" || true
  stop_server
  python3 - "$before" "$after" "$TMP/strace-load.json" "$OUT/strace.txt" >>"$RESULTS" <<'EOF'
import json, re, sys
b = [float(x or 0) for x in sys.argv[1].split()]
a = [float(x or 0) for x in sys.argv[2].split()]
load = json.load(open(sys.argv[3]))
calls = 0
for line in open(sys.argv[4]):
    m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(write|writev|sendto|sendmsg)\s*$", line)
    if m:
        calls += int(m.group(1))
print(json.dumps({"label": "syscalls", "system": "coworker", "frames_sent": a[0] - b[0],
                  "diffs_rendered": a[1] - b[1], "ticks": a[2] - b[2], "write_calls": calls, "load": load}))
EOF
fi

# 6. Memory per idle connection: 10,000 subscribers against none.
if want idle; then
  measure idle-0 coworker --scenario fanout --runs 1 --rate 1 --subscribers 0 --duration 5
  measure idle-10000 coworker --scenario fanout --runs 1 --rate 1 --subscribers 10000 --duration 10
fi

# 7. Cost as work grows: 2,000 tokens/s in total, spread over 10 / 100 / 1,000 runs, to 10 / 100 / 1,000 subscribers.
if want grid; then
  for subs in 10 100 1000; do
    for runs in 10 100 1000; do
      measure "grid" coworker --scenario ai --runs "$runs" --rate $((2000 / runs)) --subscribers "$subs" --verify 2 \
        --duration "$DURATION"
    done
  done
fi

# 8. User-space instructions per produced token (callgrind): a count that moves about ±2 % between runs on this noisy
#    machine, for comparing builds (see scripts/instructions.sh).
if want instructions; then
  ./scripts/instructions.sh target/release/coworker >"$OUT/instructions.txt"
  python3 - "$OUT/instructions.txt" >>"$RESULTS" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
ir = re.search(r"instructions per produced token: ([\d,]+)", text)
load = re.search(r"load: (.*) \(ok: (\w+)\)", text)
print(json.dumps({"label": "instructions", "system": "coworker", "ir_per_token": int(ir.group(1).replace(",", "")),
                  "load_flags": load.group(1), "ok": load.group(2) == "True"}))
EOF
fi

# 9. Capacity on one core: 100 AI runs x 100 tokens/s to 10 ... 500 subscribers, every system once per load
#    (REPS-independent), smallest load first; coworker with --verify 2 as in section 4. The report marks each cell
#    sustained, bounded by the load tool, or saturated.
if want capacity; then
  for subs in 10 50 100 200 500; do
    for system in coworker naive socketio nats; do
      verify=()
      if [ "$system" = coworker ]; then verify=(--verify 2); fi
      measure capacity "$system" --scenario ai --runs 100 --rate 100 --subscribers "$subs" ${verify[@]+"${verify[@]}"} \
        --duration "$DURATION"
    done
  done
fi

# 10. Paced and batched producers: the same load with the server reading producers once per tick
#     (--pace-producers) and without, alternating; ingress at 1,000 runs with paced one-message-per-token producers
#     and with batched ones (--batch: one `patches` frame per producer connection per 16 ms).
if want pacing; then
  for rep in $(seq 1 "$REPS"); do
    measure pacing-off coworker --scenario ai --runs 100 --rate 100 --subscribers 10 --duration "$DURATION"
    measure pacing-on coworker-paced --scenario ai --runs 100 --rate 100 --subscribers 10 --duration "$DURATION"
    measure ingress-paced coworker-paced --scenario ai --runs 1000 --rate 100 --subscribers 0 --duration "$DURATION"
    measure ingress-batch coworker --scenario ai --runs 1000 --rate 100 --subscribers 0 --batch --duration "$DURATION"
    measure ingress-unpaced coworker --scenario ai --runs 1000 --rate 100 --subscribers 0 --duration "$DURATION"
  done
fi

if [ -n "$ONLY" ]; then
  python3 scripts/bench_report.py "$RESULTS" -
  echo "bench: $ONLY measured; raw results in $RESULTS (BENCHMARKS.md untouched)" >&2
else
  python3 scripts/bench_report.py "$RESULTS" BENCHMARKS.md
  echo "bench: BENCHMARKS.md updated from $RESULTS" >&2
fi
