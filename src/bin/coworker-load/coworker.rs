//! The scenarios against a coworker server, through the crate's own client: producers for `ai`, `fanout`, `keys`
//! and `pipeline`, subscribers that check every item they see, and the final comparison of every subscriber's
//! state with a fresh snapshot taken at the same `seq`.

use crate::measure::{Live, Rng, Sequencer, Tally, now_us};
use crate::{Args, Outcome, Scenario, Window};
use coworker::client::{Client, RawSubscription, Subscription, Update};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// Connections opened concurrently while setting up.
const CONNECTING_AT_ONCE: usize = 64;

/// The text every `keys` typist types, over and over: a subscriber can check any prefix of it.
const TEXT: &str = "The quick brown fox jumps over the lazy dog; pack my box with five dozen liquor jugs. ";

/// The first `len` characters of the endless typed text.
fn typed(len: usize) -> String {
    TEXT.chars().cycle().take(len).collect()
}

/// The view set each scenario's subscribers ask for.
fn views(scenario: Scenario) -> Option<&'static [&'static str]> {
    match scenario {
        Scenario::Ai => Some(&["activeAI"]),
        Scenario::Keys => Some(&["activeDialogs"]),
        Scenario::Fanout | Scenario::Pipeline => None,
    }
}

async fn connect(url: &str) -> Result<Client, String> {
    Client::connect(url).await.map_err(|e| format!("cannot connect to {url}: {e}"))
}

/// What a subscriber checks in the runs a frame touched.
enum Check {
    /// `output.tokens` items `"<n>:<sent µs>"`, numbered from 0 per run.
    Tokens { seq: Sequencer },
    /// `output.value` must be a prefix of the typed text that only grows; `output.t` is the last keystroke's time.
    Keys { len: HashMap<String, usize> },
    /// `steps[k].status == "done"` must grow as a prefix; `steps[k].t` is when step k was done.
    Steps { done: HashMap<String, usize> },
}

impl Check {
    fn new(scenario: Scenario) -> Check {
        match scenario {
            Scenario::Ai | Scenario::Fanout => Check::Tokens { seq: Sequencer::default() },
            Scenario::Keys => Check::Keys { len: HashMap::new() },
            Scenario::Pipeline => Check::Steps { done: HashMap::new() },
        }
    }

    /// Looks at the runs in `touched` (all runs when `None`) of the state, after a frame was applied.
    fn observe(&mut self, state: &Value, touched: Option<&[String]>, tally: &mut Tally, live: &Live) {
        let Some(active) = state["activeRuns"].as_object() else { return };
        let now = now_us();
        let mut look = |id: &str, run: &Value| self.run(id, run, now, tally, live);
        match touched {
            Some(ids) => ids.iter().filter_map(|id| active.get(id).map(|r| (id, r))).for_each(|(id, r)| look(id, r)),
            None => active.iter().for_each(|(id, r)| look(id, r)),
        }
    }

    fn run(&mut self, id: &str, run: &Value, now: u64, tally: &mut Tally, live: &Live) {
        match self {
            Check::Tokens { seq } => {
                let tokens = run["output"]["tokens"].as_array().map(Vec::as_slice).unwrap_or_default();
                seq.see_token_list(id, tokens, Value::as_str, now, tally, live);
            }
            Check::Keys { len } => {
                let Some(value) = run["output"]["value"].as_str() else { return };
                let before = len.get(id).copied().unwrap_or(0);
                if value.len() < before {
                    tally.out_of_order += 1;
                } else if value.len() > before {
                    if value != typed(value.len()) {
                        tally.errors += 1;
                    }
                    let sent = run["output"]["t"].as_u64().unwrap_or(now);
                    tally.record(live, sent, now);
                    tally.delivered += (value.len() - before - 1) as u64;
                    Live::add(&live.delivered, (value.len() - before - 1) as u64);
                }
                len.insert(id.to_string(), value.len());
            }
            Check::Steps { done } => {
                let steps = run["steps"].as_array().map(Vec::as_slice).unwrap_or_default();
                let prefix = steps.iter().take_while(|s| s["status"] == "done").count();
                if steps[prefix..].iter().any(|s| s["status"] == "done") {
                    tally.out_of_order += 1;
                }
                let before = done.get(id).copied().unwrap_or(0);
                if prefix < before {
                    tally.out_of_order += 1;
                }
                for step in steps.iter().take(prefix).skip(before) {
                    tally.record(live, step["t"].as_u64().unwrap_or(now), now);
                }
                if prefix > before {
                    done.insert(id.to_string(), prefix);
                }
            }
        }
    }
}

/// One subscriber: its connection, its subscription with the local state, and what it saw.
struct Watcher {
    url: String,
    space: String,
    scenario: Scenario,
    client: Client,
    sub: Subscription,
    tally: Tally,
    check: Check,
    /// Bytes received by earlier connections of this subscriber.
    bytes_before: u64,
}

impl Watcher {
    async fn start(url: &str, space: &str, scenario: Scenario) -> Result<Watcher, String> {
        let client = connect(url).await?;
        let sub = client.subscribe(space, views(scenario), false).await.map_err(|e| e.to_string())?;
        Ok(Watcher {
            url: url.into(),
            space: space.into(),
            scenario,
            client,
            sub,
            tally: Tally::default(),
            check: Check::new(scenario),
            bytes_before: 0,
        })
    }

    /// Waits up to `wait` for one frame and checks it. `false` when none came.
    async fn step(&mut self, live: &Live, wait: Duration) -> bool {
        let update = match tokio::time::timeout(wait, self.sub.next()).await {
            Err(_) => return false,
            Ok(update) => update,
        };
        match update {
            Some(Ok(update)) => {
                self.tally.frames += 1;
                Live::add(&live.frames, 1);
                match update {
                    Update::Diff { runs, .. } => {
                        self.check.observe(self.sub.state(), Some(&runs), &mut self.tally, live)
                    }
                    Update::Resync { .. } => self.check.observe(self.sub.state(), None, &mut self.tally, live),
                    Update::Event { .. } => {}
                }
            }
            Some(Err(_)) => {
                // A diff that does not apply: the local state is broken; start over from a fresh snapshot.
                self.count_error(live);
                self.reconnect(live, false).await;
            }
            None => self.reconnect(live, true).await,
        }
        true
    }

    fn count_error(&mut self, live: &Live) {
        self.tally.errors += 1;
        Live::add(&live.errors, 1);
    }

    /// A new connection that resumes the subscription (`resume`), or starts a fresh one.
    async fn reconnect(&mut self, live: &Live, resume: bool) {
        for attempt in 0..5u64 {
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            let Ok(client) = Client::connect(&self.url).await else { continue };
            let views = views(self.scenario);
            let sub = if resume {
                client.resume(&self.space, views, &self.sub).await
            } else {
                client.subscribe(&self.space, views, false).await
            };
            let Ok(sub) = sub else { continue };
            self.bytes_before += self.client.received_bytes();
            self.tally.reconnects += 1;
            (self.client, self.sub) = (client, sub);
            self.check.observe(self.sub.state(), None, &mut self.tally, live);
            return;
        }
        self.count_error(live);
    }

    fn finish(mut self) -> Tally {
        self.tally.bytes = self.bytes_before + self.client.received_bytes();
        self.tally
    }
}

/// A counting subscriber (`--verify K`: all subscribers past the first K): it keeps no state and reads of each
/// frame only what carries tokens, with a typed, borrowing parse. It still checks every token's number per run,
/// and that each diff starts where the last one ended; only the final comparison with a fresh snapshot is left to
/// the full subscribers.
struct Counting {
    client: Client,
    sub: RawSubscription,
    tally: Tally,
    /// The order check, which also knows each run's position in `output.tokens` (the tokens it has seen).
    seq: Sequencer,
    at: Option<u64>,
}

#[derive(Deserialize)]
struct FrameLite<'a> {
    #[serde(rename = "type", borrow)]
    ty: Cow<'a, str>,
    base: Option<u64>,
    seq: Option<u64>,
    #[serde(borrow, default)]
    ops: Vec<OpLite<'a>>,
    #[serde(borrow)]
    state: Option<StateLite<'a>>,
}

#[derive(Deserialize)]
struct OpLite<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow)]
    path: Cow<'a, str>,
    #[serde(borrow)]
    value: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct StateLite<'a> {
    #[serde(rename = "activeRuns", borrow, default)]
    active_runs: HashMap<Cow<'a, str>, &'a RawValue>,
}

#[derive(Deserialize)]
struct RunLite<'a> {
    #[serde(borrow)]
    output: Option<OutputLite<'a>>,
}

#[derive(Deserialize)]
struct OutputLite<'a> {
    #[serde(borrow)]
    tokens: Option<Vec<Cow<'a, str>>>,
}

impl Counting {
    async fn start(url: &str, space: &str, scenario: Scenario) -> Result<Counting, String> {
        let client = connect(url).await?;
        let sub = client.subscribe_raw(space, views(scenario)).await.map_err(|e| e.to_string())?;
        let (tally, seq) = (Tally::default(), Sequencer::default());
        Ok(Counting { client, sub, tally, seq, at: None })
    }

    async fn step(&mut self, live: &Live, wait: Duration) -> bool {
        let text = match tokio::time::timeout(wait, self.sub.next()).await {
            Err(_) => return false,
            Ok(Some(text)) => text,
            Ok(None) => {
                // Counting subscribers do not resume: a lost connection is an error.
                self.tally.errors += 1;
                Live::add(&live.errors, 1);
                tokio::time::sleep(wait).await;
                return false;
            }
        };
        self.tally.frames += 1;
        Live::add(&live.frames, 1);
        if self.read(&text, live).is_err() {
            self.tally.errors += 1;
            Live::add(&live.errors, 1);
        }
        true
    }

    fn read(&mut self, text: &str, live: &Live) -> Result<(), serde_json::Error> {
        let frame: FrameLite<'_> = serde_json::from_str(text)?;
        let now = now_us();
        match frame.ty.as_ref() {
            "snapshot" => {
                self.at = frame.seq;
                for (id, run) in frame.state.map(|s| s.active_runs).unwrap_or_default() {
                    let run: RunLite<'_> = serde_json::from_str(run.get())?;
                    self.whole(&id, run.output.and_then(|o| o.tokens), now, live);
                }
            }
            "diff" => {
                if frame.base != self.at {
                    self.tally.errors += 1; // a diff must start where the last frame ended
                }
                self.at = frame.seq;
                for op in frame.ops {
                    let Some(rest) = op.path.strip_prefix("/activeRuns/") else { continue };
                    let (id, field) = rest.split_once('/').unwrap_or((rest, ""));
                    let Some(value) = op.value else { continue };
                    match (op.op.as_ref(), field) {
                        ("append", "output/tokens") => {
                            let items: Vec<Cow<'_, str>> = serde_json::from_str(value.get())?;
                            self.feed(id, &items, now, live);
                        }
                        ("add" | "replace", "") => {
                            let run: RunLite<'_> = serde_json::from_str(value.get())?;
                            self.whole(id, run.output.and_then(|o| o.tokens), now, live);
                        }
                        ("add" | "replace", "output") => {
                            let out: Option<OutputLite<'_>> = serde_json::from_str(value.get())?;
                            self.whole(id, out.and_then(|o| o.tokens), now, live);
                        }
                        ("add" | "replace", "output/tokens") => {
                            let items: Option<Vec<Cow<'_, str>>> = serde_json::from_str(value.get())?;
                            self.whole(id, items, now, live);
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A run's whole token list: the items past those already seen are new.
    fn whole(&mut self, id: &str, tokens: Option<Vec<Cow<'_, str>>>, now: u64, live: &Live) {
        let tokens = tokens.unwrap_or_default();
        self.seq.see_token_list(id, &tokens, |t| Some(t.as_ref()), now, &mut self.tally, live);
    }

    fn feed(&mut self, id: &str, items: &[Cow<'_, str>], now: u64, live: &Live) {
        self.seq.see_tokens(id, items.iter().map(|t| Some(t.as_ref())), now, &mut self.tally, live);
    }

    fn finish(mut self) -> Tally {
        self.tally.bytes = self.client.received_bytes();
        self.tally
    }
}

/// A subscriber of either kind.
enum Subscriber {
    Full(Box<Watcher>),
    Counting(Box<Counting>),
}

impl Subscriber {
    async fn step(&mut self, live: &Live, wait: Duration) -> bool {
        match self {
            Subscriber::Full(w) => w.step(live, wait).await,
            Subscriber::Counting(c) => c.step(live, wait).await,
        }
    }
    fn tally(&self) -> &Tally {
        match self {
            Subscriber::Full(w) => &w.tally,
            Subscriber::Counting(c) => &c.tally,
        }
    }
}

/// Counts the errors a producer connection got for its fire-and-forget patches.
struct Producer {
    client: Client,
    errors: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl Producer {
    async fn connect(url: &str) -> Result<Producer, String> {
        let client = connect(url).await?;
        let errors = client.unsolicited_errors();
        Ok(Producer { client, errors })
    }

    fn errors(&mut self) -> u64 {
        std::iter::from_fn(|| self.errors.try_recv().ok()).count() as u64
    }
}

fn patch_frame(run: &str, ops: Value) -> String {
    json!({"type": "patch", "run": run, "ops": ops}).to_string()
}

/// `ai` and `fanout`: every tick, one token into each run of this connection, sent in one write.
async fn stream_tokens(p: &Producer, runs: &[String], rate: u64, until: Instant, live: &Live) -> Result<(), String> {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut i = 0u64;
    while Instant::now() < until {
        tick.tick().await;
        let now = now_us();
        let frames: Vec<String> = runs
            .iter()
            .map(|id| {
                format!(
                    r#"{{"type":"patch","run":"{id}","ops":[{{"op":"append","path":"output.tokens","value":"{i}:{now}"}}]}}"#
                )
            })
            .collect();
        p.client.send_batch(frames).await.map_err(|e| format!("producer: {e}"))?;
        Live::add(&live.produced, runs.len() as u64);
        i += 1;
    }
    for id in runs {
        p.client
            .patch(id, json!([{"op": "set", "path": "output.done", "value": true}]))
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `keys`: one typist per run, bursts of 3–10 keystrokes at twice the mean rate, then a pause, with ±30 % jitter.
/// Each keystroke sets the whole `output.value` (the seed's dialog convention) and `output.t`.
async fn type_keys(p: &Producer, run: &str, seed: u64, rate: u64, until: Instant, live: &Live) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let gap = 1_000_000 / rate;
    let jitter = |rng: &mut Rng, us: u64| Duration::from_micros(us * (70 + rng.below(61)) / 100);
    let mut len = 0;
    'typing: while Instant::now() < until {
        let burst = 3 + rng.below(8);
        for _ in 0..burst {
            tokio::time::sleep(jitter(&mut rng, gap / 2)).await;
            if Instant::now() >= until {
                break 'typing;
            }
            len += 1;
            let ops = json!([{"op": "set", "path": "output.value", "value": typed(len)},
                             {"op": "set", "path": "output.t", "value": now_us()}]);
            p.client.send_raw(patch_frame(run, ops)).await.map_err(|e| e.to_string())?;
            Live::add(&live.produced, 1);
        }
        tokio::time::sleep(jitter(&mut rng, burst * gap / 2)).await;
    }
    p.client.patch(run, json!([{"op": "set", "path": "output.done", "value": true}])).await.map_err(|e| e.to_string())
}

/// `pipeline`: one pipeline after another, each a root with `children` steps; each step runs a child run that
/// streams a token and then completes, or fails (every fifth), before the root marks the step done.
async fn pipelines(
    p: &Producer,
    args: &Args,
    space: &str,
    slot: u64,
    until: Instant,
    live: &Live,
) -> Result<(), String> {
    let gap = Duration::from_micros(1_000_000 / args.rate);
    let c = &p.client;
    let err = |e: coworker::client::ClientError| e.to_string();
    for n in 0u64.. {
        if Instant::now() >= until {
            break;
        }
        let steps: Vec<Value> =
            (0..args.children).map(|k| json!({"name": format!("step-{k}"), "status": "pending"})).collect();
        let root = c
            .run(json!({"operation": "pipeline", "space": space, "agent": "coworker-load", "steps": steps}))
            .await
            .map_err(err)?;
        let root = root["id"].as_str().unwrap_or_default().to_string();
        for k in 0..args.children {
            let step = |status: &str| json!([{"op": "step", "index": k, "value": {"status": status, "t": now_us()}}]);
            c.patch_nowait(&root, step("running")).await.map_err(err)?;
            let child = c
                .run(json!({"operation": "interpret", "parentRun": root, "agent": "coworker-load", "input": {"step": k}}))
                .await
                .map_err(err)?;
            let child = child["id"].as_str().unwrap_or_default().to_string();
            c.patch_nowait(&child, json!([{"op": "append", "path": "output.tokens", "value": format!("step {k}")}]))
                .await
                .map_err(err)?;
            tokio::time::sleep(gap).await;
            if (slot + n + k) % 5 == 4 {
                c.fail(&child, json!({"code": "load_failure", "message": "every fifth child fails"}))
                    .await
                    .map_err(err)?;
            } else {
                c.complete(&child, Some(json!({"step": k}))).await.map_err(err)?;
            }
            c.patch_nowait(&root, step("done")).await.map_err(err)?;
            Live::add(&live.produced, 1);
            tokio::time::sleep(gap).await;
        }
        // Let subscribers see the last step before the root leaves the views.
        tokio::time::sleep(gap).await;
        c.complete(&root, None).await.map_err(err)?;
    }
    Ok(())
}

/// What one producer connection does.
struct Job {
    slot: u64,
    conns: u64,
    runs: Vec<String>,
    args: Args,
    space: String,
    until: Instant,
}

/// Runs one producer connection's share of the scenario; returns the connection, its runs, and the errors its
/// fire-and-forget patches got.
async fn drive(mut p: Producer, job: Job, live: Arc<Live>) -> Result<(Producer, Vec<String>, u64), String> {
    let (args, until, live) = (&job.args, job.until, &*live);
    match args.scenario {
        Scenario::Ai | Scenario::Fanout => stream_tokens(&p, &job.runs, args.rate, until, live).await?,
        Scenario::Keys => {
            let typists = job.runs.iter().enumerate().map(|(i, run)| {
                let seed = job.slot << 32 | i as u64;
                type_keys(&p, run, seed, args.rate, until, live)
            });
            futures::future::try_join_all(typists).await?;
        }
        Scenario::Pipeline => {
            let slots = (job.slot..args.runs).step_by(job.conns as usize);
            futures::future::try_join_all(slots.map(|s| pipelines(&p, args, &job.space, s, until, live))).await?;
        }
    }
    let errors = p.errors();
    Ok((p, job.runs, errors))
}

/// Runs the scenario against a coworker server.
pub async fn run(args: &Args, live: Arc<Live>) -> Result<Outcome, String> {
    let space = format!("load-{}", uuid::Uuid::now_v7());
    let control = connect(args.producer_url()).await?;
    // Many at a time: each subscribe waits for the space's next flush.
    let full = args.verify.unwrap_or(args.subscribers).min(args.subscribers);
    let space_ref = space.as_str();
    let watchers: Vec<Subscriber> = futures::stream::iter(0..args.subscribers)
        .map(|n| async move {
            let space = space_ref;
            Ok::<_, String>(if n < full {
                Subscriber::Full(Box::new(Watcher::start(args.subscriber_url(n), space, args.scenario).await?))
            } else {
                Subscriber::Counting(Box::new(Counting::start(args.subscriber_url(n), space, args.scenario).await?))
            })
        })
        .buffer_unordered(CONNECTING_AT_ONCE)
        .try_collect()
        .await?;
    let conns = match args.scenario {
        Scenario::Fanout => args.runs,
        _ => args.runs.min(32),
    };
    let mut producers = Vec::new();
    for _ in 0..conns {
        producers.push(Producer::connect(args.producer_url()).await?);
    }
    // The live runs, spread over the producer connections (none up front for `pipeline`).
    let mut owned: Vec<Vec<String>> = vec![Vec::new(); conns as usize];
    let mut roots = Vec::new();
    if args.scenario != Scenario::Pipeline {
        let operation = if args.scenario == Scenario::Keys { "dialog" } else { "interpret" };
        for r in 0..args.runs {
            let mut run = json!({"operation": operation, "space": space, "agent": "coworker-load"});
            if args.nested {
                if r % 10 == 0 {
                    let root = control
                        .run(json!({"operation": "pipeline", "space": space, "agent": "coworker-load"}))
                        .await
                        .map_err(|e| e.to_string())?;
                    roots.push(root["id"].as_str().unwrap_or_default().to_string());
                }
                run["parentRun"] = json!(roots.last());
            }
            let p = &producers[(r % conns) as usize];
            let ctx = p.client.run(run).await.map_err(|e| format!("starting run {r}: {e}"))?;
            owned[(r % conns) as usize].push(ctx["id"].as_str().unwrap_or_default().to_string());
        }
    }

    let window = Window::open(&args.server_pid);
    let started = Instant::now();
    let until = started + Duration::from_secs_f64(args.duration);
    // Once the producers are done: how many items each subscriber should see (when all must arrive).
    let (total_tx, total) = watch::channel(None::<Option<u64>>);
    let watching: Vec<_> = watchers
        .into_iter()
        .map(|mut w| {
            let (live, total) = (live.clone(), total.clone());
            tokio::spawn(async move {
                let mut quiet_since = Instant::now();
                loop {
                    if let Some(expected) = *total.borrow() {
                        let quiet = quiet_since.elapsed() > Duration::from_secs(if expected.is_some() { 3 } else { 1 });
                        let t = w.tally();
                        if quiet || expected.is_some_and(|n| t.delivered + t.lost >= n) {
                            break;
                        }
                    }
                    if w.step(&live, Duration::from_millis(100)).await {
                        quiet_since = Instant::now();
                    }
                }
                w
            })
        })
        .collect();
    let producing: Vec<_> = producers
        .into_iter()
        .zip(owned)
        .enumerate()
        .map(|(slot, (p, runs))| {
            let job = Job { slot: slot as u64, conns, runs, args: args.clone(), space: space.clone(), until };
            tokio::spawn(drive(p, job, live.clone()))
        })
        .collect();
    crate::progress(args, &live, started, until).await;
    let (mut producer_errors, mut finished) = (0, Vec::new());
    for p in producing {
        let (p, runs, errors) = p.await.map_err(|e| e.to_string())??;
        producer_errors += errors;
        finished.push((p, runs));
    }
    let streaming_s = started.elapsed().as_secs_f64();
    let every_item_expected = args.scenario != Scenario::Pipeline;
    let _ = total_tx.send(Some(every_item_expected.then(|| Live::get(&live.produced))));
    let (mut watchers, mut counting) = (Vec::new(), Vec::new());
    for w in watching {
        match w.await.map_err(|e| e.to_string())? {
            Subscriber::Full(w) => watchers.push(*w),
            Subscriber::Counting(c) => counting.push(*c),
        }
    }
    // Closed once the subscribers have it all, as for the peers: the CPU of delivering the tail counts.
    let (usage, load_cpu_us) = window.close();
    let mismatches = compare(&control, &space, args.scenario, &mut watchers, &live).await?;
    // Leave the server as found: complete the runs this load started (their records go to the audit trail).
    let completing = finished.iter().flat_map(|(p, runs)| runs.iter().map(move |r| p.client.complete(r, None)));
    futures::future::join_all(completing).await;
    for root in &roots {
        let _ = control.complete(root, None).await;
    }
    let mut tally = Tally::default();
    for w in watchers {
        tally.merge(&w.finish());
    }
    for c in counting {
        tally.merge(&c.finish());
    }
    tally.errors += producer_errors;
    Ok(Outcome {
        produced: Live::get(&live.produced),
        tally,
        mismatches,
        every_item_expected,
        streaming_s,
        usage,
        load_cpu_us,
    })
}

/// Brings every subscriber to the `seq` of a fresh snapshot and counts those whose state differs from it. When a
/// subscriber has already gone past it (the state moved on, e.g. a linger expired), it tries again.
async fn compare(
    control: &Client,
    space: &str,
    scenario: Scenario,
    watchers: &mut [Watcher],
    live: &Live,
) -> Result<u64, String> {
    for _ in 0..20 {
        let fresh = control.subscribe(space, views(scenario), false).await.map_err(|e| e.to_string())?;
        let target = fresh.seq;
        let mut ahead = false;
        for w in watchers.iter_mut() {
            while w.sub.seq < target && w.step(live, Duration::from_secs(10)).await {}
            ahead |= w.sub.seq > target;
        }
        if !ahead {
            let differ = watchers.iter().filter(|w| w.sub.seq != target || w.sub.state() != fresh.state());
            return Ok(differ.count() as u64);
        }
        fresh.unsubscribe().await.map_err(|e| e.to_string())?;
    }
    Err("the space never stood still long enough to compare the subscribers' states".into())
}
