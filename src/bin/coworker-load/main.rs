//! `coworker-load`: the load-testing client. Runs a scenario for a while against a coworker server (through the
//! crate's client module) or, for side-by-side figures, against a peer system with the same measurement; prints a
//! summary table or one JSON object, and exits 1 when any item was lost, out of order, or a final state differs.

mod coworker;
mod measure;
mod peers;

use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use measure::{Live, Tally};
use serde_json::{Value, json};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// `--runs` AI runs (`interpret`), each appending `--rate` tokens/s to `output.tokens`.
    Ai,
    /// `--runs` dialog runs; typists set the whole `output.value` on each keystroke, `--rate` keys/s in bursts.
    Keys,
    /// `--runs` token streams (one producer connection each, so use a few), watched by subscribers of every view.
    Fanout,
    /// `--runs` pipelines at once: roots whose `--children` steps each run a child that completes or fails.
    Pipeline,
}

impl Scenario {
    /// What one produced item is, for the summary.
    fn unit(self) -> &'static str {
        match self {
            Scenario::Ai | Scenario::Fanout => "token",
            Scenario::Keys => "keystroke",
            Scenario::Pipeline => "step",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// A coworker server (the real protocol).
    Coworker,
    /// `examples/naive_broadcast.rs`: one frame per token per subscriber (scenario `ai` only).
    Naive,
    /// A Socket.IO 4 server (`bench/peers/socketio-server.mjs`): rooms, one emit per token (scenario `ai` only).
    Socketio,
    /// nats-server's WebSocket listener: one publish per token (scenario `ai` only).
    Nats,
}

/// Load-test a coworker server (or a peer, for comparison). Prints a summary, or one JSON object with --json
/// (fields in the README); exits 1 when an item was lost or out of order or a final state differs from a fresh
/// snapshot, 2 on a usage or connection error.
#[derive(Debug, Clone, Parser)]
#[command(version, about)]
pub struct Args {
    #[arg(long, value_enum, default_value = "ai")]
    scenario: Scenario,
    /// The system under load.
    #[arg(long, value_enum, default_value = "coworker")]
    target: Target,
    /// Runs (streams, dialogs, or pipelines running at once).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    runs: u64,
    /// Items per second per run: tokens, keystrokes (mean), or pipeline step transitions.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    rate: u64,
    /// Subscribers watching the whole space.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(0..=19_000))]
    subscribers: u64,
    /// Seconds of streaming.
    #[arg(long, default_value_t = 5.0, value_parser = parse_duration)]
    duration: f64,
    /// The server's WebSocket URL; for a cluster, several (comma-separated or repeated): producers connect to the
    /// first, and subscribers are spread over all of them in turn.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws", value_delimiter = ',')]
    url: Vec<String>,
    /// `ai`: nest the AI runs under pipeline roots, ten per root.
    #[arg(long)]
    nested: bool,
    /// `pipeline`: steps (and child runs) per pipeline.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=100))]
    children: u64,
    /// Only the first K subscribers keep the full state and are compared with a fresh snapshot at the end; the
    /// others count and check every token without keeping state (cheaper for the tool; `ai` and `fanout` only).
    #[arg(long, value_name = "K")]
    verify: Option<u64>,
    /// Print one JSON object (field names in the README) instead of the table.
    #[arg(long)]
    json: bool,
    /// The server's process id, to report its CPU time and memory (from /proc); several (comma-separated or
    /// repeated) are summed: a cluster's nodes and its broker.
    #[arg(long, value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// `ai` and `fanout` producers write through the client's coalescing writer: one `patches` frame per MS
    /// milliseconds (default 16) for all the runs of a connection, instead of one `patch` frame per token.
    #[arg(long, value_name = "MS", num_args = 0..=1, default_missing_value = "16")]
    batch: Option<u64>,
}

impl Args {
    /// Where producers (and the control connection) go.
    pub fn producer_url(&self) -> &str {
        &self.url[0]
    }

    /// Where the `n`th subscriber goes.
    pub fn subscriber_url(&self, n: u64) -> &str {
        &self.url[n as usize % self.url.len()]
    }
}

fn parse_duration(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(d) if d > 0.0 && d <= 86_400.0 => Ok(d),
        _ => Err(format!("'{s}' is not a number of seconds between 0 and 86400")),
    }
}

/// What a finished load run measured.
pub struct Outcome {
    pub produced: u64,
    pub tally: Tally,
    /// Subscribers whose final state differed from a fresh snapshot.
    pub mismatches: u64,
    /// Whether every subscriber must have seen every produced item (not for `pipeline`, whose finished roots leave
    /// the views and may take their last step with them within one tick).
    pub every_item_expected: bool,
    pub streaming_s: f64,
    /// The server's CPU µs and RSS, this process's own CPU µs (to show whether the load tool was the
    /// bottleneck), over the measuring window.
    pub usage: Usage,
    /// `ai`/`fanout` on coworker: each producer connection's first request after streaming, its round trip (µs).
    pub request_us: Vec<u64>,
}

/// The server's (and this process's) CPU time over the measuring window: from the start of streaming until the
/// subscribers had everything.
pub struct Window {
    pids: Vec<u32>,
    before: Option<(u64, u64)>,
    load_before: u64,
    opened: Instant,
}

/// CPU time over a window: the server's µs and RSS (with `--server-pid`), this process's µs, the window's seconds.
pub struct Usage {
    pub server: Option<(u64, u64)>,
    pub load_cpu_us: u64,
    pub window_s: f64,
}

/// CPU µs and RSS summed over `pids` (`None` without any, or when one is gone).
fn usage(pids: &[u32]) -> Option<(u64, u64)> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| measure::server_usage(*p)).try_fold((0, 0), |(c, r), u| u.map(|(c1, r1)| (c + c1, r + r1)))
}

impl Window {
    pub fn open(pids: &[u32]) -> Window {
        let load_before = measure::server_usage(std::process::id()).map_or(0, |(cpu, _)| cpu);
        Window { pids: pids.to_vec(), before: usage(pids), load_before, opened: Instant::now() }
    }
    /// The server's CPU µs and RSS, and this process's CPU µs, since `open`.
    pub fn close(self) -> Usage {
        let load = measure::server_usage(std::process::id()).map_or(0, |(cpu, _)| cpu.saturating_sub(self.load_before));
        let server = self.before.zip(usage(&self.pids));
        Usage {
            server: server.map(|((cpu0, _), (cpu1, rss))| (cpu1.saturating_sub(cpu0), rss)),
            load_cpu_us: load,
            window_s: self.opened.elapsed().as_secs_f64(),
        }
    }
}

/// Shows live figures until `until`.
pub async fn progress(args: &Args, live: &Live, started: Instant, until: Instant) {
    let bar = if args.json { ProgressBar::hidden() } else { ProgressBar::new((args.duration * 1000.0) as u64) };
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {elapsed} {msg}").unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let unit = args.scenario.unit();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(250).min(until - Instant::now())).await;
        let secs = started.elapsed().as_secs_f64().max(0.001);
        bar.set_position(started.elapsed().as_millis() as u64);
        bar.set_message(format!(
            "{unit}s produced {:.0}/s, delivered {:.0}/s, frames {:.0}/s, errors {}",
            Live::get(&live.produced) as f64 / secs,
            Live::get(&live.delivered) as f64 / secs,
            Live::get(&live.frames) as f64 / secs,
            Live::get(&live.errors),
        ));
    }
    bar.finish_and_clear();
}

async fn run(args: Args) -> Result<bool, String> {
    if args.verify.is_some() && !matches!(args.scenario, Scenario::Ai | Scenario::Fanout) {
        return Err("--verify applies to --scenario ai and fanout only".into());
    }
    if args.batch.is_some()
        && !matches!((args.target, args.scenario), (Target::Coworker, Scenario::Ai | Scenario::Fanout))
    {
        return Err("--batch applies to --target coworker with --scenario ai and fanout only".into());
    }
    if args.target != Target::Coworker && args.scenario != Scenario::Ai {
        return Err(format!("--target {:?} runs only --scenario ai", args.target).to_lowercase());
    }
    let connections = args.subscribers + args.runs.min(32) + 64;
    let limit =
        rlimit::increase_nofile_limit(u64::MAX).map_err(|e| format!("cannot raise the open-file limit: {e}"))?;
    if connections > limit {
        return Err(format!(
            "{connections} connections need more open files than this process may open ({limit}); \
             raise the hard limit (ulimit -Hn) or use fewer subscribers"
        ));
    }
    let live = Arc::new(Live::default());
    let outcome = match args.target {
        Target::Coworker => coworker::run(&args, live).await?,
        peer => peers::run(peer, &args, live).await?,
    };
    let summary = summarize(&args, &outcome);
    if args.json {
        println!("{summary}");
    } else {
        print_table(&summary);
    }
    Ok(summary["ok"] == true)
}

fn summarize(args: &Args, o: &Outcome) -> Value {
    let t = &o.tally;
    let s = o.streaming_s;
    let missing = if o.every_item_expected { (o.produced * args.subscribers).saturating_sub(t.delivered) } else { 0 };
    let lost = t.lost + missing;
    let ok = lost == 0 && t.out_of_order == 0 && t.errors == 0 && o.mismatches == 0;
    let cpu_us = o.usage.server.map(|(cpu, _)| cpu);
    let window = o.usage.window_s.max(1e-3);
    let ms = |q: f64| t.latency.value_at_quantile(q) as f64 / 1000.0;
    json!({
        "target": format!("{:?}", args.target).to_lowercase(),
        "scenario": format!("{:?}", args.scenario).to_lowercase(),
        "unit": args.scenario.unit(),
        "runs": args.runs,
        "rate": args.rate,
        "subscribers": args.subscribers,
        "duration_s": s,
        "tokens_produced": o.produced,
        "tokens_delivered": t.delivered,
        "tokens_produced_per_s": o.produced as f64 / s,
        "tokens_delivered_per_s": t.delivered as f64 / s,
        "frames_received": t.frames,
        "frames_per_s": t.frames as f64 / s,
        "frames_per_subscriber_per_s": t.frames as f64 / s / args.subscribers.max(1) as f64,
        "bytes_received": t.bytes,
        "bytes_per_s": t.bytes as f64 / s,
        "latency_ms": {"p50": ms(0.5), "p99": ms(0.99), "p999": ms(0.999), "max": t.latency.max() as f64 / 1000.0},
        "lost": lost,
        "out_of_order": t.out_of_order,
        "errors": t.errors,
        "state_mismatches": o.mismatches,
        "reconnects": t.reconnects,
        "server_cpu_us": cpu_us,
        "server_cpu_us_per_delivered_token": cpu_us.filter(|_| t.delivered > 0).map(|c| c as f64 / t.delivered as f64),
        "server_cpu_us_per_produced_token": cpu_us.filter(|_| o.produced > 0).map(|c| c as f64 / o.produced as f64),
        "server_rss_bytes": o.usage.server.map(|(_, rss)| rss),
        "server_cpu_share": cpu_us.map(|c| c as f64 / (window * 1e6)),
        "load_cpu_us": o.usage.load_cpu_us,
        "load_cpu_share": o.usage.load_cpu_us as f64 / (window * 1e6),
        "window_s": window,
        "batch_ms": args.batch,
        "request_ms": request_ms(&o.request_us),
        "ok": ok,
    })
}

/// `{"n","p50","max"}` of round trips in µs, as ms (null without any).
fn request_ms(us: &[u64]) -> Value {
    let mut sorted = us.to_vec();
    sorted.sort_unstable();
    let ms = |v: u64| v as f64 / 1000.0;
    match (sorted.get(sorted.len() / 2), sorted.last()) {
        (Some(p50), Some(max)) => json!({"n": sorted.len(), "p50": ms(*p50), "max": ms(*max)}),
        _ => Value::Null,
    }
}

fn print_table(s: &Value) {
    let row = |k: &str, v: String| println!("{k:<34} {v}");
    let f = |k: &str| s[k].as_f64().unwrap_or(0.0);
    let unit = s["unit"].as_str().unwrap_or("token");
    row(
        "scenario",
        format!(
            "{} on {}: {} runs x {} {unit}s/s, {} subscribers",
            s["scenario"].as_str().unwrap_or_default(),
            s["target"].as_str().unwrap_or_default(),
            s["runs"],
            s["rate"],
            s["subscribers"]
        ),
    );
    row("duration", format!("{:.1} s", f("duration_s")));
    row(&format!("{unit}s produced"), format!("{} ({:.0}/s)", s["tokens_produced"], f("tokens_produced_per_s")));
    row(&format!("{unit}s delivered"), format!("{} ({:.0}/s)", s["tokens_delivered"], f("tokens_delivered_per_s")));
    row(
        "frames received",
        format!(
            "{} ({:.0}/s, {:.1}/s per subscriber)",
            s["frames_received"],
            f("frames_per_s"),
            f("frames_per_subscriber_per_s")
        ),
    );
    row("bytes received", format!("{:.1} MB ({:.2} MB/s)", f("bytes_received") / 1e6, f("bytes_per_s") / 1e6));
    let l = &s["latency_ms"];
    row("latency p50 / p99 / p999 / max", format!("{} / {} / {} / {} ms", l["p50"], l["p99"], l["p999"], l["max"]));
    row("lost / out of order / errors", format!("{} / {} / {}", s["lost"], s["out_of_order"], s["errors"]));
    row("state mismatches / reconnects", format!("{} / {}", s["state_mismatches"], s["reconnects"]));
    for which in ["delivered", "produced"] {
        if let Some(c) = s[format!("server_cpu_us_per_{which}_token")].as_f64() {
            row(&format!("server CPU per {which} {unit}"), format!("{c:.3} us"));
        }
    }
    if let Some(rss) = s["server_rss_bytes"].as_u64() {
        row("server RSS", format!("{} MB", rss >> 20));
    }
    row("load tool CPU", format!("{:.0} % of one core", f("load_cpu_share") * 100.0));
    row(
        "result",
        if s["ok"] == true {
            "ok".into()
        } else {
            "FAILED: items lost or out of order, errors, or states differ".into()
        },
    );
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version print as usual; a bad flag is one line, like every other error of this tool.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
            eprintln!("coworker-load: {first} (see --help)");
            return ExitCode::from(2);
        }
    };
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("coworker-load: {e}");
            ExitCode::from(2)
        }
    }
}
