#!/usr/bin/env python3
"""Turns scripts/bench.sh's raw results (one JSON object per line) into the tables of BENCHMARKS.md, replacing
what lies between the `<!-- bench:begin -->` and `<!-- bench:end -->` markers.

Usage: python3 scripts/bench_report.py target/bench/results.jsonl BENCHMARKS.md
       python3 scripts/bench_report.py target/bench/capacity.jsonl -   (prints the sections the results hold)
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TICK_MS = 16


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(next(l for l in open("/proc/meminfo") if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1048576:.0f} GiB"
    except (OSError, StopIteration):
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{os.cpu_count()} vCPU {model}{mem}, Linux {platform.release()}, {rustc}"


def fmt(x, digits=2):
    return "n/a" if x is None else f"{x:,.{digits}f}"


def med(rows, key):
    vals = [key(r) for r in rows if key(r) is not None]
    return statistics.median(vals) if vals else None


def cpu_delivered(r):
    return r.get("server_cpu_us_per_delivered_token")


def per_produced(r):
    return r.get("server_cpu_us_per_produced_token")


def each(rows, key, digits=2):
    return ", ".join(fmt(key(r), digits) for r in rows)


def p99(r):
    return (r.get("latency_ms") or {}).get("p99")


def main(results_path, doc_path):
    rows = [json.loads(l) for l in open(results_path) if l.strip()]
    by = lambda label: [r for r in rows if r.get("label") == label]
    out = []
    w = out.append
    w(BEGIN)
    w("")
    w(f"## Measured with `./scripts/bench.sh` ({datetime.date.today().isoformat()})")
    w("")
    w(f"Machine: {machine()}. Server pinned to core 0, `coworker-load` to core 1 (`taskset`); every server")
    w("started fresh for each measurement; the side-by-side runs alternate the systems, and each figure below")
    w("is the median of the repetitions (all values in brackets). CPU is the server process's user + system time")
    w("from `/proc` over the streaming window, divided by the tokens all subscribers received. Raw results:")
    w("`target/bench/results.jsonl`.")
    w("")

    side = by("side-by-side")
    if side:
        w("### 1. Side by side: 100 AI runs x 100 tokens/s x 10 subscribers (100,000 deliveries/s), server on one core")
        w("")
        w("| system | server CPU per delivered token | delivered/s | latency p99 | frames per subscriber per s | server RSS | load tool CPU | correct |")
        w("|---|---|---|---|---|---|---|---|")
    medians = {}
    for system in ["coworker", "naive", "socketio", "nats"]:
        rs = [r for r in side if r["system"] == system]
        if not rs:
            continue
        m = med(rs, cpu_delivered)
        medians[system] = m
        name = {"coworker": "**coworker** (coalesced diffs)", "naive": "naive tokio-tungstenite broadcast",
                "socketio": "Socket.IO 4 (rooms)", "nats": "nats-server 2.9 WebSocket"}[system]
        ok = "yes" if all(r.get("ok") for r in rs) else "NO"
        w(f"| {name} | {fmt(m)} µs [{each(rs, cpu_delivered)}] | {fmt(med(rs, lambda r: r.get('tokens_delivered_per_s')), 0)} | "
          f"{fmt(med(rs, p99), 1)} ms | {fmt(med(rs, lambda r: r.get('frames_per_subscriber_per_s')), 1)} | "
          f"{fmt(med(rs, lambda r: (r.get('server_rss_bytes') or 0) / 1048576), 0)} MB | "
          f"{fmt(med(rs, lambda r: 100 * r.get('load_cpu_share', 0)), 0)} % | {ok} |")
    if side:
        w("")
    if medians.get("coworker"):
        ratios = [f"{s}: **{medians[s] / medians['coworker']:.1f}x**" for s in ["naive", "socketio", "nats"]
                  if medians.get(s)]
        w("Server CPU per delivered token, relative to coworker (higher means coworker is cheaper): "
          + ", ".join(ratios) + ".")
        w("")
    floor, own = by("floor-side"), by("side-ingress")
    if floor and own:
        f, o = med(floor, per_produced), med(own, per_produced)
        low = min(f, o)
        subs = side[0].get("subscribers", 10) if side else 10
        w(f"**The floor at this load: the same producers, no subscribers.** Reading the producers' messages costs "
          f"the naive broadcast **{fmt(f)} µs per produced token** [{each(floor, per_produced)}] (it reads each "
          f"frame, parses its room and finds nobody to send to); coworker's whole ingress (read, parse, apply, "
          f"journal) costs {fmt(o)} µs [{each(own, per_produced)}]. The lower of the two, {fmt(low)} µs per "
          f"produced token ({fmt(low / subs, 3)} µs per delivered token at {subs} subscribers), is about what any "
          f"server pays here before it sends anything.")
        bounds = [f"against {s}: **{medians[s] * subs / low:.1f}x**" for s in ["naive", "socketio"] if medians.get(s)]
        if bounds:
            w("A server that paid only that, with no fan-out at all, would measure " + ", ".join(bounds) + ".")
        if medians.get("coworker"):
            w(f"Coworker's coalesced fan-out to {subs} subscribers (its CPU with them, less its ingress without): "
              f"{fmt(medians['coworker'] * subs - o)} µs per produced token.")
        w("")

    keys = by("keys")
    if keys:
        w("### 2. Keystrokes: 100 dialog runs x 10 keys/s (bursts) x 10 subscribers")
        w("")
        w(f"Server CPU per delivered keystroke: **{fmt(med(keys, cpu_delivered))} µs** "
          f"[{each(keys, cpu_delivered)}], latency p99 {fmt(med(keys, p99), 1)} ms, "
          f"{fmt(med(keys, lambda r: r.get('frames_per_subscriber_per_s')), 1)} frames per subscriber per s.")
        w("")

    ingress = by("ingress")
    if ingress:
        w("### 3. Ingress: 1,000 runs x 100 tokens/s, no subscribers (read, parse, apply, journal)")
        w("")
        w(f"Server CPU per produced token: **{fmt(med(ingress, per_produced))} µs** [{each(ingress, per_produced)}] "
          f"at {fmt(med(ingress, lambda r: r.get('tokens_produced_per_s')), 0)} tokens/s.")
        floor = by("floor-ingress")
        if floor:
            w(f"The floor, the same producers against the naive broadcast (read each frame, parse its room, drop it): "
              f"**{fmt(med(floor, per_produced))} µs** per produced token [{each(floor, per_produced)}].")
        w("")

    ceiling = by("ceiling")
    if ceiling:
        w(f"### 4. Ceiling on one core (target: p99 within tick + 10 ms = {TICK_MS + 10} ms, nothing lost)")
        w("")
        w("Two subscribers keep the full state and are compared with a fresh snapshot; the others check every token's")
        w("number per run without a state (`--verify 2`). \"server CPU busy\" is the share of its one core the server used.")
        w("")
        w("| runs x tokens/s x subscribers | delivered/s | server CPU per delivered token | server CPU busy | p99 | load tool CPU | lost / errors | within target |")
        w("|---|---|---|---|---|---|---|---|")
        for r in ceiling:
            share = 100 * (busy(r) or 0)
            within = r.get("ok") and (p99(r) or 1e9) <= TICK_MS + 10
            w(f"| {r['runs']} x {r['rate']} x {r['subscribers']} | {fmt(r.get('tokens_delivered_per_s'), 0)} | "
              f"{fmt(cpu_delivered(r), 3)} µs | {share:.0f} % | {fmt(p99(r), 1)} ms | "
              f"{100 * r.get('load_cpu_share', 0):.0f} % | {r.get('lost')} / {r.get('errors')} | "
              f"{'yes' if within else 'no'} |")
        w("")

    sys_rows = by("syscalls")
    if sys_rows:
        s = sys_rows[0]
        # strace -c's table: socket writes (sendto/sendmsg/writev) apart from plain write() (tokio's eventfd wakeups).
        counts = {}
        strace = os.path.join(os.path.dirname(results_path), "strace.txt")
        if os.path.exists(strace):
            for line in open(strace):
                parts = line.split()
                if parts and parts[-1] in ("write", "writev", "sendto", "sendmsg") and parts[-2].isdigit():
                    counts[parts[-1]] = int(parts[-2]) if len(parts) < 6 else int(parts[3])
        socket_writes = sum(v for k, v in counts.items() if k != "write")
        load = s.get("load", {})
        subs = load.get("subscribers", 10)
        ticks = s.get("ticks") or 1
        w("### 5. Frames, serializations and write syscalls per tick (20 runs x 1,000 tokens/s x 10 subscribers)")
        w("")
        w(f"Over a 5 s window under `strace -c`: {s['ticks']:.0f} ticks with changes, {s['diffs_rendered']:.0f} diff "
          f"serializations ({s['diffs_rendered'] / ticks:.2f} per tick: one view set), {s['frames_sent']:.0f} frames "
          f"sent ({s['frames_sent'] / ticks / subs:.2f} per subscriber per tick), {socket_writes} socket write syscalls "
          f"(`sendto`; {socket_writes / ticks / subs:.2f} per subscriber per tick) and {counts.get('write', 0)} plain "
          f"`write`s (tokio's eventfd wakeups, about one per tick). At the subscriber: "
          f"{fmt(load.get('frames_per_subscriber_per_s'), 1)} frames per s for "
          f"{fmt(load.get('tokens_produced_per_s'), 0)} tokens produced per s. Full counts: `target/bench/strace.txt`.")
        w("")

    idle0, idle = by("idle-0"), by("idle-10000")
    if idle0 and idle:
        base, full = idle0[0].get("server_rss_bytes") or 0, idle[0].get("server_rss_bytes") or 0
        n = idle[0].get("subscribers", 10000)
        w(f"### 6. Idle subscribers: {n:,} connections, each subscribed to a space with one run (1 token/s)")
        w("")
        w(f"Server RSS {base / 1048576:.0f} MB without them, {full / 1048576:.0f} MB with them: "
          f"**{(full - base) / n / 1024:.1f} KiB per connection** (target: under 30 KiB). "
          f"Correct: {'yes' if idle[0].get('ok') else 'NO'}.")
        w("")

    grid = by("grid")
    if grid:
        w("### 7. Cost as work grows: 2,000 tokens/s in total, over 10 / 100 / 1,000 runs, to 10 / 100 / 1,000 subscribers")
        w("")
        w("Server CPU per delivered token (p99 latency; load tool CPU), with `--verify 2` as in section 4. A cell whose")
        w("load tool CPU is near 100 % is bounded by the load tool, not the server.")
        w("")
        runs = sorted({r["runs"] for r in grid})
        w("| subscribers \\ runs | " + " | ".join(f"{x:,}" for x in runs) + " |")
        w("|---" * (len(runs) + 1) + "|")
        for subs in sorted({r["subscribers"] for r in grid}):
            cells = []
            for x in runs:
                r = next((r for r in grid if r["runs"] == x and r["subscribers"] == subs), None)
                if r is None:
                    cells.append("")
                    continue
                bad = "" if r.get("ok") else ", NOT OK"
                cells.append(f"{fmt(cpu_delivered(r), 3)} µs ({fmt(p99(r), 0)} ms; {100 * r.get('load_cpu_share', 0):.0f} %{bad})")
            w(f"| {subs:,} | " + " | ".join(cells) + " |")
        w("")

    instr = by("instructions")
    if instr:
        r = instr[0]
        w("### 8. User-space instructions per produced token (callgrind)")
        w("")
        w(f"**{r['ir_per_token']:,}** instructions per token at `{r['load_flags']}` "
          f"(correct: {'yes' if r.get('ok') else 'NO'}): everything the server runs in user space (read, parse, "
          "apply, journal, render, fan-out, writes), over a 6 s window. `./scripts/instructions.sh [binary]` "
          "gives the count for any build (it moves about ±2 % between runs), to compare two builds on this noisy "
          "machine.")
        w("")
    capacity(by("capacity"), w)
    pacing(by, w)
    w(END)

    block = "\n".join(out)
    if doc_path == "-":
        # Only the sections the results hold, without the markers and the machine line (`ONLY=... bench.sh`).
        first = next((i for i, l in enumerate(out) if l.startswith("### ")), len(out) - 1)
        print("\n".join(out[first:-1]).rstrip("\n"))
        return
    doc = open(doc_path).read()
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    open(doc_path, "w").write(doc)


# Section 9: what one core sustains. A cell is "sustained" when p99 <= TICK_MS + 10 ms and nothing was lost, out of
# order or in error; else "saturated" when the server used >= LOAD_BOUND of its core; else "bounded by the load
# tool" when the tool used >= LOAD_BOUND of its core or produced less than PRODUCED_BOUND of what was asked (it
# could not keep its own pace, so the figures measure it, not the server); else "over the latency target, neither
# process saturated".
# Both CPU shares are CPU time over the measuring window (streaming, then the subscribers catching up) per second
# of that window (`window_s`).
LOAD_BOUND = 0.90
PRODUCED_BOUND = 0.90
CAPACITY_SYSTEMS = ["coworker", "naive", "socketio", "nats"]
CAPACITY_NAMES = {"coworker": "coworker", "naive": "naive broadcast", "socketio": "Socket.IO 4", "nats": "nats-server"}


def verdict(r):
    if r.get("failed_to_run"):
        return "did not finish (stopped)"
    asked = r.get("runs", 0) * r.get("rate", 0)
    clean = r.get("ok") and not r.get("lost") and not r.get("errors") and not r.get("out_of_order")
    if clean and (p99(r) or 1e9) <= TICK_MS + 10:
        return "sustained"
    if (busy(r) or 0) >= LOAD_BOUND:
        return "saturated"
    if r.get("load_cpu_share", 0) >= LOAD_BOUND or (r.get("tokens_produced_per_s") or 0) < PRODUCED_BOUND * asked:
        return "bounded by the load tool"
    return "over the latency target, neither process saturated"


def busy(r):
    """The share of its one core the server used over the measuring window."""
    if r.get("server_cpu_share") is not None:
        return r["server_cpu_share"]
    cpu = r.get("server_cpu_us")
    return None if cpu is None else cpu / (r.get("duration_s") or 1) / 1e6


def capacity(rows, w):
    if not rows:
        return
    rows = sorted(rows, key=lambda r: (CAPACITY_SYSTEMS.index(r["system"]) if r.get("system") in CAPACITY_SYSTEMS
                                       else 99, r.get("subscribers", 0)))
    runs, rate = rows[0].get("runs", 100), rows[0].get("rate", 100)
    subs = sorted({r.get("subscribers") for r in rows if r.get("subscribers") is not None})
    w(f"### 9. Capacity on one core: {runs} AI runs x {rate} tokens/s to {', '.join(f'{s:,}' for s in subs)} subscribers")
    w("")
    w("One run per cell, every server started fresh on core 0, the load tool on core 1; `--verify 2` for coworker as")
    w("in section 4 (the other subscribers count and check every token without a state), and every peer")
    w("subscriber checks every token. **sustained**: p99 within tick + 10 ms "
      f"({TICK_MS + 10} ms) and nothing lost, out of order or in error; **saturated**: not sustained, and the server "
      f"used {LOAD_BOUND * 100:.0f} % or more of its core; **bounded by the load tool**: not "
      f"sustained, the server below {LOAD_BOUND * 100:.0f} %, and the tool used {LOAD_BOUND * 100:.0f} % or more of its "
      f"core or produced less than {PRODUCED_BOUND * 100:.0f} % of the tokens asked (the figures then measure the tool, "
      "not the server); otherwise **over the latency target, neither process saturated**. Both CPU shares are CPU "
      "time from the start of streaming until the subscribers had every token, per second of that window; "
      "\"delivered/s\" is per second of streaming, so a server that fell behind shows what it was asked to carry, "
      "delivered late.")
    w("")
    w("| system | subscribers | delivered/s | server CPU | server CPU per delivered token | p99 | load tool CPU | lost / errors | verdict |")
    w("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        b = busy(r)
        w(f"| {CAPACITY_NAMES.get(r.get('system'), r.get('system'))} | {r.get('subscribers', 0):,} | "
          f"{fmt(r.get('tokens_delivered_per_s'), 0)} | {'n/a' if b is None else f'{b * 100:.0f} %'} | "
          f"{fmt(cpu_delivered(r), 3)} µs | {fmt(p99(r), 1)} ms | {100 * r.get('load_cpu_share', 0):.0f} % | "
          f"{r.get('lost', 'n/a')} / {r.get('errors', 'n/a')} | {verdict(r)} |")
    w("")
    best = []
    for system in CAPACITY_SYSTEMS:
        rs = [r for r in rows if r.get("system") == system]
        if not rs:
            continue
        held = [r for r in rs if verdict(r) == "sustained"]
        name = CAPACITY_NAMES[system]
        if not held:
            best.append(f"{name}: none of these loads")
            continue
        top = max(held, key=lambda r: r.get("tokens_delivered_per_s") or 0)
        # The largest load held, and nothing larger was tried: the ceiling lies higher.
        above = "at least " if top.get("subscribers") == max(r.get("subscribers", 0) for r in rs) else ""
        best.append(f"{name}: {above}**{fmt(top.get('tokens_delivered_per_s'), 0)}/s** "
                    f"({top.get('subscribers'):,} subscribers)")
    w("Most deliveries per second sustained on one core: " + "; ".join(best) + ".")
    ran = [r for r in rows if r.get("system") == "coworker" and not r.get("failed_to_run")]
    if ran:
        top = max(ran, key=lambda r: r.get("tokens_delivered_per_s") or 0)
        b = busy(top)
        w(f"At the largest load the tool drove, {top.get('subscribers'):,} subscribers "
          f"({fmt(top.get('tokens_delivered_per_s'), 0)} deliveries/s, {verdict(top)}, the tool at "
          f"{100 * top.get('load_cpu_share', 0):.0f} % of its core), coworker used "
          f"**{'n/a' if b is None else f'{b * 100:.0f} %'}** of its core.")
    w("")



def pacing(by, w):
    off, on = by("pacing-off"), by("pacing-on")
    paced, batch, unpaced = by("ingress-paced"), by("ingress-batch"), by("ingress-unpaced")
    if not (off or on or paced or batch):
        return
    req = lambda key: (lambda r: (r.get("request_ms") or {}).get(key))
    w("### 10. Paced and batched producers (`--pace-producers`, `coworker-load --batch`)")
    w("")
    w("The same load with the server reading each producer connection as its messages arrive (the default) and once")
    w("per tick (`--pace-producers`), alternating; medians (all values in brackets). \"First request\" is each")
    w("producer connection's first request after streaming, the one that ends its pacing: its round trip, median")
    w("and worst over the 32 connections.")
    w("")
    w("| 100 runs x 100 tokens/s x 10 subscribers | server CPU per delivered token | p99 | p999 | first request p50 / max |")
    w("|---|---|---|---|---|")
    for name, rows in (("read on arrival", off), ("paced", on)):
        if rows:
            p999 = lambda r: (r.get("latency_ms") or {}).get("p999")
            w(f"| {name} | {fmt(med(rows, cpu_delivered), 2)} µs [{each(rows, cpu_delivered)}] | "
              f"{fmt(med(rows, p99), 1)} ms [{each(rows, p99, 1)}] | {fmt(med(rows, p999), 1)} ms | "
              f"{fmt(med(rows, req('p50')), 1)} / {fmt(med(rows, req('max')), 1)} ms |")
    w("")
    w("| 1,000 runs x 100 tokens/s, no subscribers | server CPU per produced token |")
    w("|---|---|")
    for name, rows in (("one message per token, read on arrival", unpaced), ("one message per token, paced", paced),
                       ("`--batch` (one `patches` frame per connection per 16 ms)", batch)):
        if rows:
            w(f"| {name} | {fmt(med(rows, per_produced), 2)} µs [{each(rows, per_produced)}] |")
    w("")

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
