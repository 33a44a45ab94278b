//! `coworker-load`: the load-testing client. Speaks the real protocol through the crate's client module, runs a
//! scenario for a while, measures throughput and token-to-subscriber latency (HdrHistogram), checks at the end that
//! every subscriber's state equals a fresh snapshot with no token lost or out of order, and exits non-zero if not.

use clap::{Parser, ValueEnum};
use coworker::client::{Client, Subscription};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// AI runs (`interpret`) appending tokens to `output.tokens`.
    Ai,
}

/// Load-test a coworker server. Prints a summary (or one JSON object with --json); exits 1 when any subscriber
/// lost a token, saw one out of order, or ended with a state that differs from a fresh snapshot.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[arg(long, value_enum, default_value = "ai")]
    scenario: Scenario,
    /// Runs streaming at once.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    runs: u64,
    /// Tokens per second per run.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    rate: u64,
    /// Subscribers watching the whole space.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=19_000))]
    subscribers: u64,
    /// Seconds of streaming.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// The server's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// Print one JSON object (field names in the README) instead of the table.
    #[arg(long)]
    json: bool,
    /// The server's process id, to report its CPU time and memory (from /proc).
    #[arg(long)]
    server_pid: Option<u32>,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// The server's CPU time (µs) and RSS (bytes), from /proc.
fn server_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit(')').next()?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    let hz = 100; // USER_HZ on Linux
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()?;
    Some((ticks * 1_000_000 / hz, rss_kb * 1024))
}

/// What one subscriber saw.
struct Seen {
    latency: Histogram<u64>,
    tokens: u64,
    frames: u64,
    lost: u64,
    out_of_order: u64,
    mismatch: bool,
    /// The subscriber's state at the end, compared with a fresh snapshot.
    state: Value,
}

/// Follows one subscription: for every run, the tokens (`"<seq>:<sent µs>"`) must arrive in order with no gap.
async fn watch(mut sub: Subscription, done: Arc<AtomicU64>, runs: u64, delivered: Arc<AtomicU64>) -> Seen {
    let mut seen = Seen {
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
        tokens: 0,
        frames: 0,
        lost: 0,
        out_of_order: 0,
        mismatch: false,
        state: Value::Null,
    };
    let mut next: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
    loop {
        let finished = done.load(Ordering::Acquire) >= runs;
        let update = tokio::time::timeout(Duration::from_secs(if finished { 2 } else { 30 }), sub.next()).await;
        match update {
            Ok(Some(Ok(_))) => seen.frames += 1,
            Ok(Some(Err(_))) | Ok(None) => {
                seen.mismatch = true;
                seen.state = sub.state().clone();
                return seen;
            }
            Err(_) => {
                seen.state = sub.state().clone();
                return seen; // quiet: the stream is over
            }
        }
        let now = now_us();
        let Some(active) = sub.state()["activeRuns"].as_object() else { continue };
        let mut all_done = true;
        for (id, run) in active {
            let tokens = run["output"]["tokens"].as_array().map(Vec::as_slice).unwrap_or_default();
            all_done &= run["output"]["done"] == true;
            let from = *next.get(id).unwrap_or(&0);
            for t in tokens.iter().skip(from as usize) {
                let Some((i, sent)) = t.as_str().and_then(|s| s.split_once(':')) else { continue };
                let (Ok(i), Ok(sent)) = (i.parse::<u64>(), sent.parse::<u64>()) else { continue };
                let want = next.entry(id.clone()).or_insert(0);
                match i.cmp(want) {
                    std::cmp::Ordering::Equal => {}
                    std::cmp::Ordering::Greater => seen.lost += i - *want,
                    std::cmp::Ordering::Less => seen.out_of_order += 1,
                }
                *want = i + 1;
                let _ = seen.latency.record(now.saturating_sub(sent).max(1));
                seen.tokens += 1;
                delivered.fetch_add(1, Ordering::Relaxed);
            }
        }
        if all_done && active.len() as u64 >= runs {
            seen.state = sub.state().clone();
            return seen;
        }
    }
}

/// Streams tokens into `runs` at `rate` per second each until `until`, then marks them done.
async fn produce(
    client: Client,
    runs: Vec<String>,
    rate: u64,
    until: Instant,
    produced: Arc<AtomicU64>,
) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        for id in &runs {
            let token = format!("{i}:{}", now_us());
            client
                .patch_nowait(id, json!([{"op": "append", "path": "output.tokens", "value": token}]))
                .await
                .map_err(|e| e.to_string())?;
        }
        produced.fetch_add(runs.len() as u64, Ordering::Relaxed);
        i += 1;
    }
    for id in &runs {
        client
            .patch(id, json!([{"op": "set", "path": "output.done", "value": true}]))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

async fn connect(url: &str) -> Result<Client, String> {
    Client::connect(url).await.map_err(|e| format!("cannot connect to {url}: {e}"))
}

async fn run(args: Args) -> Result<bool, String> {
    let producers = args.runs.min(32);
    let needed = args.subscribers + producers + 64;
    let limit =
        rlimit::increase_nofile_limit(u64::MAX).map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if needed > limit {
        return Err(format!("{needed} connections need more open files than the limit allows ({limit})"));
    }
    let space = format!("load-{}", uuid::Uuid::now_v7());
    let control = connect(&args.url).await?;
    let mut subs = Vec::new();
    for _ in 0..args.subscribers {
        let c = connect(&args.url).await?;
        let sub = c.subscribe(&space, Some(&["activeAI"]), false).await.map_err(|e| e.to_string())?;
        subs.push((c, sub));
    }
    // Runs, spread over the producer connections.
    let mut groups: Vec<(Client, Vec<String>)> = Vec::new();
    for _ in 0..producers {
        groups.push((connect(&args.url).await?, Vec::new()));
    }
    for r in 0..args.runs {
        let (client, runs) = &mut groups[(r % producers) as usize];
        let ctx = client
            .run(json!({"operation": "interpret", "space": space, "agent": "coworker-load"}))
            .await
            .map_err(|e| e.to_string())?;
        runs.push(ctx["id"].as_str().unwrap_or_default().to_string());
    }
    let usage_before = args.server_pid.and_then(server_usage);
    let produced = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    let watchers: Vec<_> = subs
        .into_iter()
        .map(|(c, sub)| {
            let (done, delivered) = (done.clone(), delivered.clone());
            let runs = args.runs;
            tokio::spawn(async move {
                let seen = watch(sub, done, runs, delivered).await;
                (c, seen)
            })
        })
        .collect();
    let producer_tasks: Vec<_> = groups
        .into_iter()
        .map(|(c, runs)| {
            let (produced, done, n) = (produced.clone(), done.clone(), runs.len() as u64);
            tokio::spawn(async move {
                let r = produce(c, runs, args.rate, until, produced).await;
                done.fetch_add(n, Ordering::Release);
                r
            })
        })
        .collect();
    let bar = ProgressBar::new((args.duration * 1000.0) as u64).with_style(
        ProgressStyle::with_template("{bar:30} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "produced {:.0}/s, delivered {:.0}/s",
            produced.load(Ordering::Relaxed) as f64 / secs,
            delivered.load(Ordering::Relaxed) as f64 / secs
        ));
    }
    bar.finish_and_clear();
    for p in producer_tasks {
        p.await.map_err(|e| e.to_string())??;
    }
    let streaming = started.elapsed().as_secs_f64();
    let usage_after = args.server_pid.and_then(server_usage);
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut frames, mut tokens, mut lost, mut out_of_order, mut mismatches) = (0, 0, 0, 0, 0);
    let fresh = control.subscribe(&space, Some(&["activeAI"]), false).await.map_err(|e| e.to_string())?;
    for w in watchers {
        let (_client, seen) = w.await.map_err(|e| e.to_string())?;
        let _ = latency.add(&seen.latency);
        frames += seen.frames;
        tokens += seen.tokens;
        lost += seen.lost;
        out_of_order += seen.out_of_order;
        mismatches += (seen.mismatch || seen.state != *fresh.state()) as u64;
    }
    let produced = produced.load(Ordering::Relaxed);
    let expected = produced * args.subscribers;
    let missing = expected.saturating_sub(tokens);
    let ok = lost == 0 && out_of_order == 0 && mismatches == 0 && missing == 0;
    let cpu_us = match (usage_before, usage_after) {
        (Some((a, _)), Some((b, _))) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let summary = json!({
        "scenario": "ai",
        "runs": args.runs,
        "rate": args.rate,
        "subscribers": args.subscribers,
        "duration_s": streaming,
        "tokens_produced": produced,
        "tokens_delivered": tokens,
        "tokens_produced_per_s": produced as f64 / streaming,
        "tokens_delivered_per_s": tokens as f64 / streaming,
        "frames_received": frames,
        "frames_per_s": frames as f64 / streaming,
        "latency_ms": {
            "p50": latency.value_at_quantile(0.5) as f64 / 1000.0,
            "p99": latency.value_at_quantile(0.99) as f64 / 1000.0,
            "p999": latency.value_at_quantile(0.999) as f64 / 1000.0,
            "max": latency.max() as f64 / 1000.0,
        },
        "lost": lost + missing,
        "out_of_order": out_of_order,
        "errors": mismatches,
        "server_cpu_us": cpu_us,
        "server_cpu_us_per_delivered_token": cpu_us.map(|c| c as f64 / tokens.max(1) as f64),
        "server_rss_bytes": usage_after.map(|(_, rss)| rss),
        "ok": ok,
    });
    if args.json {
        println!("{summary}");
    } else {
        print_table(&summary);
    }
    Ok(ok)
}

fn print_table(s: &Value) {
    let row = |k: &str, v: String| println!("{k:<34} {v}");
    row("scenario", format!("ai: {} runs x {} tokens/s, {} subscribers", s["runs"], s["rate"], s["subscribers"]));
    row("duration", format!("{:.1} s", s["duration_s"].as_f64().unwrap_or(0.0)));
    row(
        "tokens produced",
        format!("{} ({:.0}/s)", s["tokens_produced"], s["tokens_produced_per_s"].as_f64().unwrap_or(0.0)),
    );
    row(
        "tokens delivered",
        format!("{} ({:.0}/s)", s["tokens_delivered"], s["tokens_delivered_per_s"].as_f64().unwrap_or(0.0)),
    );
    row("frames received", format!("{} ({:.0}/s)", s["frames_received"], s["frames_per_s"].as_f64().unwrap_or(0.0)));
    let l = &s["latency_ms"];
    row("latency p50 / p99 / p999 / max", format!("{} / {} / {} / {} ms", l["p50"], l["p99"], l["p999"], l["max"]));
    row("lost / out of order / errors", format!("{} / {} / {}", s["lost"], s["out_of_order"], s["errors"]));
    if let Some(c) = s["server_cpu_us_per_delivered_token"].as_f64() {
        row("server CPU per delivered token", format!("{c:.3} us"));
        row("server RSS", format!("{} MB", s["server_rss_bytes"].as_u64().unwrap_or(0) >> 20));
    }
    row(
        "result",
        if s["ok"] == true { "ok".into() } else { "FAILED: tokens lost, out of order, or states differ".into() },
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("coworker-load: {e}");
            ExitCode::from(2)
        }
    }
}
