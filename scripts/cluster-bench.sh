#!/usr/bin/env bash
# Cluster figures for BENCHMARKS.md: the same load (producers on the first node, subscribers spread over all nodes)
# against a single node without NATS, and against clusters of 1, 2 and 3 nodes sharing one nats-server (JetStream)
# and one PostgreSQL database. Reports delivered tokens per second, p99, the broker's messages per second (from
# nats-server's /varz: messages in + out), and the server CPU per delivered token summed over every node and
# nats-server. Every process is started fresh for every measurement; the servers and the broker share core 0,
# the load tool has core 1. Prints one markdown table row per measurement; raw results: target/bench/cluster.jsonl.
#
# Usage: ./scripts/cluster-bench.sh      RUNS=100 RATE=100 SUBS=30 DURATION=10 REPS=2 by default;
#        PIN=0 ./scripts/cluster-bench.sh   lets every process run on any core (the servers then share both cores
#        with the load tool)
# Needs: Linux with 2+ cores, taskset, curl, psql; nats-server and PostgreSQL (scripts/postgres.sh) as the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-100}; RATE=${RATE:-100}; SUBS=${SUBS:-30}; DURATION=${DURATION:-10}; REPS=${REPS:-2}; PIN=${PIN:-1}
if [ "$PIN" = 1 ]; then CORE0=(taskset -c 0); CORE1=(taskset -c 1); else CORE0=(); CORE1=(); fi
export PATH="$PATH:/usr/sbin"
OUT=target/bench; mkdir -p "$OUT"; RESULTS=$OUT/cluster.jsonl; : > "$RESULTS"
TMP=$(mktemp -d)
PIDS=()
stop_all() { for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; PIDS=(); }
read -r ADMIN PG_DIR < <(./scripts/postgres.sh start | tail -1)
trap 'stop_all; [ -n "${PG_DIR:-}" ] && ./scripts/postgres.sh stop "$PG_DIR"; rm -rf "$TMP"' EXIT
cargo build --release --locked --bin coworker --bin coworker-load >&2
ulimit -n "$(ulimit -Hn)"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$1$2" >/dev/null && return 0; sleep 0.05; done
  echo "nothing on $1 after 30 s; the logs:" >&2; tail -n 20 "$TMP"/*.log >&2; return 1
}
varz() { curl -sf "http://127.0.0.1:$1/varz" | python3 -c 'import json,sys; v=json.load(sys.stdin); print(v["in_msgs"] + v["out_msgs"])'; }

measure() { # nodes (0: a single node without NATS), rep
  local nodes=$1 urls=() pids=() db="coworker_bench_$$_$1_$2" nats_mon="" args=()
  psql "$ADMIN" -qc "CREATE DATABASE $db" >/dev/null
  local dburl="${ADMIN%/*}/$db"
  if [ "$nodes" -gt 0 ]; then
    local np; np=$(free_port); nats_mon=$(free_port)
    rm -rf "$TMP/js"; mkdir -p "$TMP/js"
    "${CORE0[@]}" nats-server -js -sd "$TMP/js" -a 127.0.0.1 -p "$np" -m "$nats_mon" >"$TMP/nats.log" 2>&1 &
    PIDS+=($!); pids+=($!)
    wait_http "$nats_mon" /varz
    args=(--cluster "nats://127.0.0.1:$np")
  fi
  for i in $(seq "$(( nodes > 0 ? nodes : 1 ))"); do
    local port; port=$(free_port)
    "${CORE0[@]}" target/release/coworker --listen "127.0.0.1:$port" --database-url "$dburl" "${args[@]}" \
      --node-name "node$i" >"$TMP/node$i.log" 2>&1 &
    PIDS+=($!); pids+=($!); urls+=("ws://127.0.0.1:$port/ws")
    wait_http "$port" /healthz
  done
  local before=0 after=0
  [ -n "$nats_mon" ] && before=$(varz "$nats_mon")
  local url_list pid_list
  url_list=$(IFS=,; echo "${urls[*]}"); pid_list=$(IFS=,; echo "${pids[*]}")
  "${CORE1[@]}" target/release/coworker-load --runs "$RUNS" --rate "$RATE" --subscribers "$SUBS" \
    --duration "$DURATION" --verify 2 --url "$url_list" --server-pid "$pid_list" --json >"$TMP/load.json" || true
  [ -n "$nats_mon" ] && after=$(varz "$nats_mon")
  stop_all
  psql "$ADMIN" -qc "DROP DATABASE $db" >/dev/null
  python3 - "$nodes" "$before" "$after" "$TMP/load.json" "$RESULTS" <<'PY'
import json, sys
nodes, before, after, path, results = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
r = json.load(open(path))
r["nodes"] = nodes
r["broker_msgs_per_s"] = (after - before) / r["duration_s"] if nodes else 0
open(results, "a").write(json.dumps(r) + "\n")
label = "single node, no NATS" if nodes == 0 else f"cluster of {nodes}"
cpu = r.get("server_cpu_us_per_delivered_token")
print(f"| {label} | {r['tokens_delivered_per_s']:,.0f} | {r['latency_ms']['p99']:.1f} | {r['broker_msgs_per_s']:,.0f} | "
      f"{cpu:.2f} | {'yes' if r['ok'] else 'NO'} |")
PY
}

echo "| setup | delivered tokens/s | p99 ms | broker msgs/s | server CPU µs per delivered token (nodes + nats-server) | nothing lost |"
echo "|---|---|---|---|---|---|"
for rep in $(seq "$REPS"); do
  for nodes in 0 1 2 3; do measure "$nodes" "$rep"; done
done
