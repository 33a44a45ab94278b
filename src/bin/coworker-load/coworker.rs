//! The scenarios against a coworker server, through the crate's own client: producers for `ai`, `fanout`, `keys`
//! and `pipeline`, subscribers that check every item they see, and the final comparison of every subscriber's
//! state with a fresh snapshot taken at the same `seq`.

use crate::measure::{Live, Rng, Sequencer, Tally, now_us};
use crate::{Args, Outcome, Scenario, Window};
use coworker::client::{Client, RawSubscription, Subscription, Update, Writer};
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

/// A counting subscriber (`--verify K`: all subscribers past the first K): it keeps no state. It still checks
/// every token's number per run, and that each diff starts where the last one ended; only the final comparison
/// with a fresh snapshot is left to the full subscribers. What it reads is in [`TokenReader`].
struct Counting {
    client: Client,
    sub: RawSubscription,
    reader: TokenReader,
}

/// One diff in this many that the byte scanner read is also parsed in full and compared with the scan.
const CHECK_EVERY: u64 = 64;

/// Reads a counting subscriber's frames. A diff made only of token appends, nearly every frame while tokens
/// stream, is read from its byte layout ([`scan_tokens`]), one diff in [`CHECK_EVERY`] of those also with a full
/// parse that must agree; any other frame (the snapshot, a run's first token, a run entering or leaving, view
/// ops, `output.done`) is read with a typed, borrowing serde parse.
struct TokenReader {
    tally: Tally,
    /// The order check, which also knows each run's position in `output.tokens` (the tokens it has seen).
    seq: Sequencer,
    at: Option<u64>,
    /// `false`: every frame goes through the full parse (the tests' reference).
    scanning: bool,
    /// The last scan (reused: no allocation per frame).
    scan: Scan,
    /// Diffs read by the scanner, checked ones included.
    scanned: u64,
    /// Whether a disagreement of scan and parse was already reported on stderr.
    reported: bool,
    /// The run ids of the last scanned diff, in op order, with their sequencer slots: the runs come in the same
    /// order diff after diff, so an id is compared with the one at its place last time, not hashed and looked up.
    recent: Vec<([u8; RUN_ID_LEN], usize)>,
    /// Each op's slot in the diff being read.
    slots: Vec<usize>,
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

/// What [`scan_tokens`] read of a diff.
#[derive(Default)]
struct Scan {
    base: u64,
    seq: u64,
    /// Per op: where its run id starts in the frame, and its tokens in `tokens`.
    ops: Vec<(usize, std::ops::Range<usize>)>,
    /// `(number, sent µs)` of every token, all ops' in a row.
    tokens: Vec<(u64, u64)>,
}

/// The layout `coworker::protocol::diff` gives a diff, up to `sub`'s number.
const DIFF_HEAD: &[u8] = br#"{"type":"diff","sub":"#;
/// The layout `coworker::protocol::push_run_op` gives an append, up to the run id.
const APPEND_HEAD: &[u8] = br#"{"op":"append","path":"/activeRuns/"#;
/// What follows the run id in an append to `output.tokens`, up to the first item.
const TOKENS_VALUE: &[u8] = br#"/output/tokens","value":["#;
/// A run id on the wire: a hyphenated UUID.
const RUN_ID_LEN: usize = 36;

/// A cursor over a frame's bytes; each read is `None` when the bytes are not what it expects.
struct Bytes<'a> {
    b: &'a [u8],
    at: usize,
}

impl Bytes<'_> {
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        let end = self.at + s.len();
        (self.b.get(self.at..end)? == s).then(|| self.at = end)
    }

    fn byte(&mut self, c: u8) -> Option<()> {
        (self.b.get(self.at) == Some(&c)).then(|| self.at += 1)
    }

    /// Whether the next byte is `c`, taken if so.
    fn eat(&mut self, c: u8) -> bool {
        self.byte(c).is_some()
    }

    /// A decimal number: at least one digit, no overflow.
    fn number(&mut self) -> Option<u64> {
        let start = self.at;
        let mut n: u64 = 0;
        while let Some(d) = self.b.get(self.at).filter(|d| d.is_ascii_digit()) {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
            self.at += 1;
        }
        (self.at > start).then_some(n)
    }

    /// Where a run id starts (its bytes are checked when the reader meets an id it does not know).
    fn run_id(&mut self) -> Option<usize> {
        let start = self.at;
        self.b.get(start..start + RUN_ID_LEN)?;
        self.at += RUN_ID_LEN;
        Some(start)
    }
}

/// Reads a diff whose ops are all appends of tokens (`"<n>:<sent µs>"` strings) to runs' `output.tokens`, from
/// its byte layout (`coworker::protocol::diff` around `push_run_op`s), into `out`. `None` for any other frame, or
/// any byte that is not where that layout puts it (an escaped string, another op, another key order): the caller
/// then parses the frame in full.
fn scan_tokens(text: &str, out: &mut Scan) -> Option<()> {
    out.ops.clear();
    out.tokens.clear();
    let mut r = Bytes { b: text.as_bytes(), at: 0 };
    r.lit(DIFF_HEAD)?;
    r.number()?;
    r.lit(br#","seq":"#)?;
    out.seq = r.number()?;
    r.lit(br#","base":"#)?;
    out.base = r.number()?;
    r.lit(br#","ops":["#)?;
    if !r.eat(b']') {
        loop {
            r.lit(APPEND_HEAD)?;
            let id = r.run_id()?;
            r.lit(TOKENS_VALUE)?;
            let first = out.tokens.len();
            if !r.eat(b']') {
                loop {
                    r.byte(b'"')?;
                    let i = r.number()?;
                    r.byte(b':')?;
                    let sent = r.number()?;
                    r.byte(b'"')?;
                    out.tokens.push((i, sent));
                    if r.eat(b']') {
                        break;
                    }
                    r.byte(b',')?;
                }
            }
            r.byte(b'}')?;
            out.ops.push((id, first..out.tokens.len()));
            if r.eat(b']') {
                break;
            }
            r.byte(b',')?;
        }
    }
    r.byte(b'}')?;
    (r.at == r.b.len()).then_some(())
}

impl TokenReader {
    fn new(scanning: bool) -> TokenReader {
        TokenReader {
            tally: Tally::default(),
            seq: Sequencer::default(),
            at: None,
            scanning,
            scan: Scan::default(),
            scanned: 0,
            reported: false,
            recent: Vec::new(),
            slots: Vec::new(),
        }
    }

    /// Reads one frame; `Err` when it is not what the protocol sends.
    fn read(&mut self, text: &str, live: &Live) -> Result<(), serde_json::Error> {
        let now = now_us();
        if !(self.scanning && scan_tokens(text, &mut self.scan).is_some()) {
            return self.parse(text, now, live);
        }
        self.scanned += 1;
        if self.scanned % CHECK_EVERY == 1 && !self.agrees(text)? {
            // The scanner misread a frame: count it, say it once, and take the full parse's reading.
            self.tally.errors += 1;
            if !std::mem::replace(&mut self.reported, true) {
                eprintln!("coworker-load: the token scanner disagrees with the full parse of a diff: {text}");
            }
            return self.parse(text, now, live);
        }
        if !self.resolve(text) {
            return self.parse(text, now, live);
        }
        if Some(self.scan.base) != self.at {
            self.tally.errors += 1; // a diff must start where the last frame ended
        }
        self.at = Some(self.scan.seq);
        let (Scan { ops, tokens, .. }, before) = (&self.scan, self.tally.delivered);
        for ((_, range), &slot) in ops.iter().zip(&self.slots) {
            self.seq.see_numbered(slot, &tokens[range.clone()], now, &mut self.tally);
        }
        Live::add(&live.delivered, self.tally.delivered - before);
        Ok(())
    }

    /// Finds the sequencer slot of each op of the last scan, into `slots`. `false` when a run id is not one.
    fn resolve(&mut self, text: &str) -> bool {
        self.slots.clear();
        for (k, (at, _)) in self.scan.ops.iter().enumerate() {
            let Ok(id) = <[u8; RUN_ID_LEN]>::try_from(&text.as_bytes()[*at..*at + RUN_ID_LEN]) else { return false };
            match self.recent.get_mut(k) {
                Some((known, slot)) if *known == id => self.slots.push(*slot),
                place => {
                    if !id.iter().all(|c| c.is_ascii_hexdigit() || *c == b'-') {
                        return false;
                    }
                    // ASCII only, so a str.
                    let slot = self.seq.slot(std::str::from_utf8(&id).expect("ASCII"));
                    match place {
                        Some(p) => *p = (id, slot),
                        None => self.recent.push((id, slot)),
                    }
                    self.slots.push(slot);
                }
            }
        }
        true
    }

    /// Whether a full parse of `text` reads what the last scan read.
    fn agrees(&self, text: &str) -> Result<bool, serde_json::Error> {
        let frame: FrameLite<'_> = serde_json::from_str(text)?;
        let s = &self.scan;
        if frame.ty != "diff"
            || (frame.base, frame.seq) != (Some(s.base), Some(s.seq))
            || frame.ops.len() != s.ops.len()
        {
            return Ok(false);
        }
        for (op, (id, range)) in frame.ops.iter().zip(&s.ops) {
            let Some(id) = text.get(*id..*id + RUN_ID_LEN) else { return Ok(false) };
            let path = format!("/activeRuns/{id}/output/tokens");
            let Some(value) = op.value else { return Ok(false) };
            let items: Vec<Cow<'_, str>> = serde_json::from_str(value.get())?;
            let read: Vec<_> = items.iter().map(|t| crate::measure::token(Some(t))).collect();
            if op.op != "append"
                || op.path != path
                || !read.iter().copied().eq(s.tokens[range.clone()].iter().map(|t| Some(*t)))
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads one frame with a full (typed, borrowing) parse.
    fn parse(&mut self, text: &str, now: u64, live: &Live) -> Result<(), serde_json::Error> {
        let frame: FrameLite<'_> = serde_json::from_str(text)?;
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
}

impl Counting {
    async fn start(url: &str, space: &str, scenario: Scenario) -> Result<Counting, String> {
        let client = connect(url).await?;
        let sub = client.subscribe_raw(space, views(scenario)).await.map_err(|e| e.to_string())?;
        Ok(Counting { client, sub, reader: TokenReader::new(true) })
    }

    async fn step(&mut self, live: &Live, wait: Duration) -> bool {
        let tally = &mut self.reader.tally;
        let text = match tokio::time::timeout(wait, self.sub.next()).await {
            Err(_) => return false,
            Ok(Some(text)) => text,
            Ok(None) => {
                // Counting subscribers do not resume: a lost connection is an error.
                tally.errors += 1;
                Live::add(&live.errors, 1);
                tokio::time::sleep(wait).await;
                return false;
            }
        };
        tally.frames += 1;
        Live::add(&live.frames, 1);
        if self.reader.read(&text, live).is_err() {
            self.reader.tally.errors += 1;
            Live::add(&live.errors, 1);
        }
        true
    }

    fn finish(mut self) -> Tally {
        self.reader.tally.bytes = self.client.received_bytes();
        self.reader.tally
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
            Subscriber::Counting(c) => &c.reader.tally,
        }
    }
}

/// Counts the errors a producer connection got for its fire-and-forget patches.
struct Producer {
    client: Client,
    errors: tokio::sync::mpsc::UnboundedReceiver<Value>,
    /// `--batch`: the coalescing writer the tokens go through.
    writer: Option<Writer>,
    /// The round trip of the first request after streaming (µs; 0 before it): what a request on a connection
    /// the server reads once per tick waits.
    request_us: std::sync::atomic::AtomicU64,
}

impl Producer {
    async fn connect(url: &str, batch: Option<u64>) -> Result<Producer, String> {
        let client = connect(url).await?;
        let errors = client.unsolicited_errors();
        let writer = batch.map(|ms| client.writer(Duration::from_millis(ms)));
        Ok(Producer { client, errors, writer, request_us: Default::default() })
    }

    fn errors(&mut self) -> u64 {
        let refused = self.writer.as_ref().map_or(0, Writer::refused);
        std::iter::from_fn(|| self.errors.try_recv().ok()).count() as u64 + refused
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
        if let Some(writer) = &p.writer {
            // Not awaited one by one: refusals are counted by the writer.
            for id in runs {
                drop(
                    writer
                        .patch(id, &json!([{"op": "append", "path": "output.tokens", "value": format!("{i}:{now}")}])),
                );
            }
            Live::add(&live.produced, runs.len() as u64);
            i += 1;
            continue;
        }
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
    if let Some(writer) = &p.writer {
        writer.flush().await.map_err(|e| format!("producer: {e}"))?;
    }
    for (n, id) in runs.iter().enumerate() {
        let asked = Instant::now();
        p.client
            .patch(id, json!([{"op": "set", "path": "output.done", "value": true}]))
            .await
            .map_err(|e| e.to_string())?;
        if n == 0 {
            p.request_us.store(asked.elapsed().as_micros().max(1) as u64, std::sync::atomic::Ordering::Relaxed);
        }
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
        producers.push(Producer::connect(args.producer_url(), args.batch).await?);
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
    let (mut producer_errors, mut finished, mut request_us) = (0, Vec::new(), Vec::new());
    for p in producing {
        let (p, runs, errors) = p.await.map_err(|e| e.to_string())??;
        request_us.extend(Some(p.request_us.load(std::sync::atomic::Ordering::Relaxed)).filter(|us| *us > 0));
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
    let usage = window.close();
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
        request_us,
        produced: Live::get(&live.produced),
        tally,
        mismatches,
        every_item_expected,
        streaming_s,
        usage,
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

#[cfg(test)]
mod tests {
    use super::*;
    use coworker::feed::journal::push_compacted;
    use coworker::feed::render::{Cut, RunDelta};
    use coworker::model::change::Change;
    use coworker::model::context::{Class, RunId};
    use coworker::model::patch;
    use coworker::model::path::PathLimits;
    use coworker::protocol::{self, ClientMsg, ParseLimits};
    use coworker::space::views::{View, ViewSet, Views};
    use serde_json::Map;

    const LIMITS: ParseLimits = ParseLimits {
        path: PathLimits { max_bytes: 1024, max_depth: 32 },
        max_ops_per_patch: 100,
        max_patches_per_frame: 100,
        max_ops_per_frame: 1000,
        max_json_depth: 32,
    };
    const SUB: u64 = 7;

    struct Run {
        id: RunId,
        ctx: Map<String, Value>,
        /// The tick's compacted changes, as the journal keeps them.
        changes: Vec<Change>,
        entering: bool,
        next: u64,
    }

    /// A space of `interpret` runs on the server's own path: producer frames parsed by `protocol::parse`, applied
    /// by `model::patch`, compacted by the journal, each tick rendered by `feed::render` for an `activeAI`
    /// subscriber and framed by `protocol::diff`.
    struct Space {
        runs: Vec<Run>,
        views: Views,
        view_ops: Vec<coworker::space::views::ViewOp>,
        seq: u64,
        frames: Vec<String>,
    }

    const AI: Class = Class(Class::PRESENT | Class::LOADING | Class::AI);

    impl Space {
        fn new() -> Space {
            let set = ViewSet::from_views([View::ActiveAi]);
            let state = protocol::state(protocol::StateParts {
                views: set,
                current: None,
                runs: std::iter::empty::<(RunId, String)>(),
                loading: false,
                dialogs: std::iter::empty(),
                ai: std::iter::empty(),
                pipelines: std::iter::empty::<(RunId, std::iter::Empty<RunId>)>(),
            });
            let snapshot = protocol::snapshot(&Some(json!(1)), SUB, 1, 0, &state, false);
            Space { runs: Vec::new(), views: Views::default(), view_ops: Vec::new(), seq: 0, frames: vec![snapshot] }
        }

        fn start(&mut self) -> usize {
            let id = uuid::Uuid::now_v7();
            let mut ctx = Map::new();
            for (k, v) in [("id", json!(id)), ("operation", json!("interpret")), ("status", json!("running"))] {
                ctx.insert(k.into(), v);
            }
            ctx.insert("output".into(), Value::Null);
            self.views.add(id, None, AI, &mut self.view_ops);
            self.runs.push(Run { id, ctx, changes: Vec::new(), entering: true, next: 0 });
            self.runs.len() - 1
        }

        /// One producer frame, as `stream_tokens` writes it.
        fn patch(&mut self, run: usize, frame: String) {
            let Ok(ClientMsg::Patch { ops, .. }) = protocol::parse(&frame, &LIMITS) else { panic!("{frame}") };
            let r = &mut self.runs[run];
            for c in patch::apply(&mut r.ctx, ops).unwrap().changes {
                push_compacted(&mut r.changes, c);
            }
        }

        fn token(&mut self, run: usize) {
            let (id, i) = (self.runs[run].id, self.runs[run].next);
            self.runs[run].next += 1;
            let now = now_us();
            self.patch(
                run,
                format!(
                    r#"{{"type":"patch","run":"{id}","ops":[{{"op":"append","path":"output.tokens","value":"{i}:{now}"}}]}}"#
                ),
            );
        }

        fn tick(&mut self) {
            let runs = self
                .runs
                .iter_mut()
                .filter(|r| r.entering || !r.changes.is_empty())
                .map(|r| RunDelta {
                    id: r.id,
                    before: if r.entering { Class::ABSENT } else { AI },
                    after: AI,
                    full: std::mem::take(&mut r.entering).then(|| serde_json::to_string(&r.ctx).unwrap()),
                    changes: std::mem::take(&mut r.changes),
                })
                .collect();
            let views = std::mem::take(&mut self.view_ops);
            let cut = Cut { seq: self.seq + 1, runs, views, loading: None, current: None, events: Vec::new() };
            let set = ViewSet::from_views([View::ActiveAi]);
            if let Some(chunk) = cut.render(&[set], false).diffs.remove(0).1 {
                self.frames.push(protocol::diff(SUB, self.seq, self.seq + 1, &[chunk]));
                self.seq += 1;
            }
        }
    }

    /// (delivered, lost, out of order, errors, latencies recorded)
    fn counts(r: &TokenReader) -> (u64, u64, u64, u64, u64) {
        let t = &r.tally;
        (t.delivered, t.lost, t.out_of_order, t.errors, t.latency.len())
    }

    #[test]
    fn the_token_scanner_counts_what_a_full_parse_counts() {
        let mut space = Space::new();
        let (a, b) = (space.start(), space.start());
        space.tick();
        let mut produced = 0;
        for tick in 0..200u64 {
            if tick == 50 {
                space.start(); // a run entering among appends: its `add` and the view op go to the full parse
            }
            for run in 0..space.runs.len() {
                // Zero to three tokens per run per tick.
                for _ in 0..(tick + run as u64) % 4 {
                    space.token(run);
                    produced += 1;
                }
            }
            if tick == 80 {
                space.runs[b].next += 1; // a token that never comes: one lost
            }
            if tick == 120 {
                // An item not in the token format, escaped on the wire: an error either way.
                let id = space.runs[a].id;
                space.patch(a, format!(r#"{{"type":"patch","run":"{id}","ops":[{{"op":"append","path":"output.tokens","value":"a\"b"}}]}}"#));
            }
            space.tick();
        }
        for run in 0..space.runs.len() {
            let id = space.runs[run].id;
            space.patch(
                run,
                format!(r#"{{"type":"patch","run":"{id}","ops":[{{"op":"set","path":"output.done","value":true}}]}}"#),
            );
        }
        space.tick();

        let live = Live::default();
        let (mut scanning, mut parsing) = (TokenReader::new(true), TokenReader::new(false));
        for frame in &space.frames {
            scanning.read(frame, &live).unwrap();
            parsing.read(frame, &live).unwrap();
        }
        assert_eq!(counts(&scanning), counts(&parsing));
        assert_eq!(counts(&parsing), (produced, 1, 0, 1, produced), "one lost, one unreadable");
        // The diffs made only of token appends are most of them, and the scanner read every one: a change of the
        // wire layout that the scanner does not follow fails here.
        let appends_only = |f: &&String| {
            let ops = f.matches(r#"{"op":""#).count();
            f.starts_with(r#"{"type":"diff""#)
                && f.matches(r#"{"op":"append","path":"/activeRuns/"#).count() == ops
                && f.matches(r#"/output/tokens","value":["#).count() == ops
                && !f.contains('\\')
        };
        let appends_only = space.frames.iter().filter(appends_only).count() as u64;
        assert!(appends_only > 150, "{appends_only} of {} frames", space.frames.len());
        assert_eq!(scanning.scanned, appends_only);
        assert!(!scanning.reported, "the sampled full parses agreed with the scans");
    }

    #[test]
    fn the_scanner_leaves_other_frames_to_the_full_parse() {
        let mut scan = Scan::default();
        let id = "0190f5c2-0000-7000-8000-000000000001";
        let op = |value: &str| format!(r#"{{"op":"append","path":"/activeRuns/{id}/output/tokens","value":{value}}}"#);
        let ok = protocol::diff(3, 4, 5, &[op(r#"["1:2","3:4"]"#), op(r#"["5:6"]"#)]);
        assert!(scan_tokens(&ok, &mut scan).is_some());
        assert_eq!((scan.base, scan.seq, scan.tokens.len(), scan.ops.len()), (4, 5, 3, 2));
        for value in
            [r#"["1:2",3]"#, r#"["1:\u0032"]"#, r#"["1:2"],"x":1"#, r#"["1:99999999999999999999"]"#, r#"[" 1:2"]"#]
        {
            assert!(scan_tokens(&protocol::diff(3, 4, 5, &[op(value)]), &mut scan).is_none(), "{value}");
        }
        let other = format!(r#"{{"op":"replace","path":"/activeRuns/{id}/output/tokens","value":["1:2"]}}"#);
        assert!(scan_tokens(&protocol::diff(3, 4, 5, &[op(r#"["1:2"]"#), other]), &mut scan).is_none());
        assert!(scan_tokens(&format!("{ok} "), &mut scan).is_none());
    }
}
