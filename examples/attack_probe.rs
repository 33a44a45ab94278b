//! The adversarial probe as a reproducible program: ten attacks on a running server, each printing one line of
//! figures (or, with `--json`, one JSON object), so that the same script gives before/after figures for two builds.
//!
//! ```text
//! cargo run --release --example attack_probe -- --url ws://127.0.0.1:PORT/ws --pid PID \
//!     [--secret S] [--data-dir DIR] [--runs N] [--json] ATTACK
//! ```
//!
//! Start a **fresh server for each attack** (a new temporary `--data-dir`, a free port); the attacks leave spaces,
//! runs, quotas and documents behind that would change the next one's figures. Attacks marked (auth) need the
//! server started with `--jwt-secret S` and the same `--secret S` here; the others need development mode (no key).
//! `--pid` is the server's process id: CPU time and RSS are read from `/proc/PID/stat` and `/proc/PID/status`.
//!
//! | attack | mode | what |
//! |---|---|---|
//! | `trail` | dev, `--data-dir` | selects on `Run` that read the audit trail, which records what they read |
//! | `acks` | dev, `--data-dir`, `--runs` | slow `where` queries over a large trail, and a `complete` behind them |
//! | `tenancy` | auth | another owner reads, re-schemas and deletes alice's documents |
//! | `spaces` | auth | 10,000 spaces from one read-only token; takes 65 s more for the reclaim check |
//! | `revocation` | auth | a refreshed token without read, and an expired token: are diffs still delivered? |
//! | `jwt` | auth | exp = 2^64-1, 1,000 of them (quota leak), nbf in the future, empty sub |
//! | `rebinding` | dev | WebSocket upgrades with a foreign Origin/Host |
//! | `resync` / `resync7` | dev | a reader that never reads, with 56 view sets on 1 connection / on 7 |
//! | `skip` | dev | `select` with `skip` = 2^63 |
//! | `memory1` / `memory24` | dev | appends of 60 KB tokens from 1 connection (15 s) / 24 owners (10 s) |
//!
//! Safety caps: `trail` stops when a reply passes 64 MB or the server's RSS 4 GB; `acks` gives up waiting after
//! 120 s; `resync` and `memory*` stop at an RSS of 6 GB.

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;
type R<T> = Result<T, String>;

const MB: u64 = 1_000_000;

// ---------------------------------------------------------------------------------------------------------------
// Options

struct Opts {
    url: String,
    pid: u32,
    secret: Option<String>,
    data_dir: Option<String>,
    runs: u64,
    json: bool,
    attack: String,
}

const USAGE: &str = "usage: attack_probe --url ws://HOST:PORT/ws --pid PID [--secret S] [--data-dir DIR] [--runs N] \
[--json] ATTACK
ATTACK: trail acks tenancy spaces revocation jwt rebinding resync resync7 skip memory1 memory24
Each attack expects a fresh server of its own (new --data-dir, free port). tenancy, spaces, revocation and jwt need \
the server in authenticated mode (--jwt-secret S) and --secret S here; the others need development mode. trail and \
acks need --data-dir (the server's). For memory1/memory24 the new server is meant to run with \
--max-state-bytes 268435456.";

fn opts() -> R<Opts> {
    let mut o = Opts {
        url: String::new(),
        pid: 0,
        secret: None,
        data_dir: None,
        runs: 100_000,
        json: false,
        attack: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--url" => o.url = val()?,
            "--pid" => o.pid = val()?.parse().map_err(|e| format!("--pid: {e}"))?,
            "--secret" => o.secret = Some(val()?),
            "--data-dir" => o.data_dir = Some(val()?),
            "--runs" => o.runs = val()?.parse().map_err(|e| format!("--runs: {e}"))?,
            "--json" => o.json = true,
            "-h" | "--help" => return Err(USAGE.into()),
            s if !s.starts_with('-') => o.attack = s.to_string(),
            s => return Err(format!("unknown flag {s}\n{USAGE}")),
        }
    }
    if o.url.is_empty() || o.pid == 0 || o.attack.is_empty() {
        return Err(USAGE.into());
    }
    Ok(o)
}

fn secret(o: &Opts) -> R<String> {
    o.secret.clone().ok_or_else(|| format!("attack {} needs --secret (an authenticated server)", o.attack))
}

fn data_dir(o: &Opts) -> R<String> {
    o.data_dir.clone().ok_or_else(|| format!("attack {} needs --data-dir (the server's)", o.attack))
}

/// `host:port` of a `ws://host:port/path` URL.
fn authority(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

fn port_of(url: &str) -> String {
    authority(url).rsplit(':').next().unwrap_or("80").to_string()
}

// ---------------------------------------------------------------------------------------------------------------
// The server process, from /proc

fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// CPU seconds (user + system) the process has used.
fn cpu_secs(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return f64::NAN };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After the command: state is field 3, utime 14, stime 15.
    let ticks = f.get(11).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    ticks as f64 / clk_tck()
}

fn status_kb(pid: u32, key: &str) -> u64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return 0 };
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Resident set size in bytes (0 when the process is gone).
fn rss(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:") * 1024
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Samples the server's RSS every 50 ms: peak, and whether it passed `cap`.
struct RssWatch {
    peak: Arc<AtomicU64>,
    over: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl RssWatch {
    fn start(pid: u32, cap: u64) -> RssWatch {
        let w = RssWatch {
            peak: Arc::new(AtomicU64::new(rss(pid))),
            over: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (peak, over, stop) = (w.peak.clone(), w.over.clone(), w.stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = rss(pid);
                peak.fetch_max(r, Ordering::Relaxed);
                if r > cap {
                    over.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        w
    }
    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
    fn over(&self) -> bool {
        self.over.load(Ordering::Relaxed)
    }
}

impl Drop for RssWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Plain HTTP (metrics, healthz, upgrade requests with chosen headers)

async fn http_raw(addr: &str, request: &str, limit: usize) -> R<String> {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        s.write_all(request.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            if buf.len() >= limit {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(Duration::from_secs(10), fut).await.map_err(|_| "http timeout".to_string())?
}

async fn http_get(url: &str, path: &str) -> R<String> {
    let addr = authority(url);
    let resp =
        http_raw(&addr, &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"), 1 << 24).await?;
    Ok(resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
}

/// The value of a Prometheus sample (`name` with its labels as written): 0 when it is absent (the server exports
/// a counter only once it was incremented; a counter the server does not have at all reads 0 too), `None` when
/// `/metrics` could not be read.
async fn metric(url: &str, sample: &str) -> Option<f64> {
    let body = http_get(url, "/metrics").await.ok()?;
    if !body.contains("# TYPE ") {
        return None;
    }
    Some(
        body.lines()
            .find(|l| l.starts_with(sample) && l[sample.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0),
    )
}

fn delta(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    Some(b? - a?)
}

fn opt(v: Option<f64>) -> String {
    v.map(|v| format!("{v}")).unwrap_or_else(|| "n/a".into())
}

async fn healthz(url: &str) -> Value {
    let body = http_get(url, "/healthz").await.unwrap_or_default();
    // A chunked body holds the JSON object on one line.
    body.lines().find(|l| l.starts_with('{')).and_then(|l| serde_json::from_str(l).ok()).unwrap_or(Value::Null)
}

// ---------------------------------------------------------------------------------------------------------------
// A WebSocket connection: a reader task that counts every frame and error code, and hands over the frames that
// answer a request (those with an `id`), plus every frame when `keep` is on.

#[derive(Default)]
struct Stats {
    frames: AtomicU64,
    bytes: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    closed: AtomicBool,
    close_code: Mutex<Option<u16>>,
}

impl Stats {
    fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().unwrap().clone()
    }
    fn close_code(&self) -> Option<u16> {
        *self.close_code.lock().unwrap()
    }
}

struct Conn {
    sink: Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>,
    rx: mpsc::UnboundedReceiver<(String, Instant)>,
    stats: Arc<Stats>,
    next_id: u64,
    /// Frames that arrived while a request waited for its answer.
    stash: VecDeque<(String, Instant)>,
}

/// The `id` of a frame; read from its head when the frame is large (the server writes `type` then `id`).
fn frame_id(text: &str) -> Option<Value> {
    if text.len() < (1 << 20) {
        return serde_json::from_str::<Value>(text).ok()?.get("id").cloned().filter(|v| !v.is_null());
    }
    let head = &text[..text.len().min(200)];
    let at = head.find("\"id\":")? + 5;
    let end = head[at..].find([',', '}'])? + at;
    serde_json::from_str(&head[at..end]).ok()
}

fn error_code(text: &str) -> Option<String> {
    let maybe = text.starts_with("{\"type\":\"error\"") || (text.len() < 4096 && text.contains("\"type\":\"error\""));
    if !maybe {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    (v["type"] == "error").then(|| v["code"].as_str().unwrap_or("?").to_string())
}

impl Conn {
    async fn open(url: &str) -> R<Conn> {
        Conn::open_with(url, false).await
    }

    /// With `keep`, every frame is handed over (subscription frames included); otherwise only those with an id.
    async fn open_with(url: &str, keep: bool) -> R<Conn> {
        let config = WebSocketConfig::default().max_frame_size(None).max_message_size(Some(1 << 30));
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), connect_async_with_config(url, Some(config), true))
            .await
            .map_err(|_| "connect timeout".to_string())?
            .map_err(|e| e.to_string())?;
        let (sink, mut stream) = ws.split();
        let stats = Arc::new(Stats::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let st = stats.clone();
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                match msg {
                    Ok(Message::Text(t)) => {
                        let now = Instant::now();
                        let t = t.as_str();
                        st.frames.fetch_add(1, Ordering::Relaxed);
                        st.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                        if let Some(code) = error_code(t) {
                            *st.errors.lock().unwrap().entry(code).or_default() += 1;
                        }
                        if keep || frame_id(t).is_some() {
                            let _ = tx.send((t.to_string(), now));
                        }
                    }
                    Ok(Message::Close(f)) => {
                        *st.close_code.lock().unwrap() = f.map(|f| u16::from(f.code));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            st.closed.store(true, Ordering::Relaxed);
        });
        Ok(Conn { sink: Arc::new(tokio::sync::Mutex::new(sink)), rx, stats, next_id: 1, stash: VecDeque::new() })
    }

    async fn send_text(&self, text: String) -> R<()> {
        self.sink.lock().await.send(Message::Text(text.into())).await.map_err(|e| e.to_string())
    }

    async fn send(&self, v: &Value) -> R<()> {
        self.send_text(v.to_string()).await
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Sends `msg` with a fresh id (unless it has one) and waits for the frame that answers it: the parsed frame
    /// (`Null` for one over 64 MB, which is only measured), its size in bytes, and the time it took.
    async fn request(&mut self, mut msg: Value, wait: Duration) -> R<(Value, usize, Duration)> {
        if msg.get("id").is_none() {
            msg["id"] = json!(self.fresh_id());
        }
        let id = msg["id"].clone();
        let t0 = Instant::now();
        self.send(&msg).await?;
        let deadline = t0 + wait;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.rx.recv()).await {
                Err(_) => return Err(format!("no answer within {} s", wait.as_secs_f64())),
                Ok(None) => return Err(format!("connection closed (close code {:?})", self.stats.close_code())),
                Ok(Some((text, at))) => {
                    if frame_id(&text).as_ref() == Some(&id) {
                        let len = text.len();
                        let v = if len > 64 * MB as usize {
                            Value::Null
                        } else {
                            serde_json::from_str(&text).unwrap_or(Value::Null)
                        };
                        return Ok((v, len, at - t0));
                    }
                    self.stash.push_back((text, at));
                }
            }
        }
    }

    /// The next frame, stashed ones first; `None` after `wait`.
    async fn next(&mut self, wait: Duration) -> Option<(Value, Instant)> {
        if let Some((t, at)) = self.stash.pop_front() {
            return Some((serde_json::from_str(&t).unwrap_or(Value::Null), at));
        }
        let (t, at) = tokio::time::timeout(wait, self.rx.recv()).await.ok()??;
        Some((serde_json::from_str(&t).unwrap_or(Value::Null), at))
    }

    /// Every frame that arrives within `wait` (stashed ones included).
    async fn drain(&mut self, wait: Duration) -> Vec<Value> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next(left).await {
                Some((v, _)) => out.push(v),
                None => return out,
            }
        }
    }

    async fn close(&self) {
        let mut s = self.sink.lock().await;
        let _ = s.send(Message::Close(None)).await;
        let _ = s.close().await;
    }
}

/// What answered a request: `"reply"`, `"snapshot"`, an error code, or what went wrong.
fn outcome(r: &R<(Value, usize, Duration)>) -> String {
    match r {
        Ok((v, _, _)) if v["type"] == "error" => v["code"].as_str().unwrap_or("?").to_string(),
        Ok((v, _, _)) => v["type"].as_str().unwrap_or("?").to_string(),
        Err(e) => format!("({e})"),
    }
}

/// A data run's answer: `ok`, or `frame code/run error code`.
fn data_outcome(r: &R<(Value, usize, Duration)>) -> String {
    match r {
        Ok((v, _, _)) if v["type"] == "error" => {
            let inner = v["run"]["error"]["code"]
                .as_str()
                .filter(|c| Some(*c) != v["code"].as_str())
                .map(|c| format!("/{c}"))
                .unwrap_or_default();
            format!("{}{inner}", v["code"].as_str().unwrap_or("?"))
        }
        Ok(_) => "ok".into(),
        Err(e) => format!("({e})"),
    }
}

const W: Duration = Duration::from_secs(10);

async fn live_run(c: &mut Conn, run: Value) -> R<String> {
    let (v, _, _) = c.request(json!({"type": "run", "run": run}), W).await?;
    v["run"]["id"].as_str().map(str::to_string).ok_or_else(|| format!("run refused: {v}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Tokens

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64
}

fn token(secret: &str, claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("HS256 encoding")
}

fn tok(secret: &str, sub: &str, read: &[&str], write: &[&str]) -> String {
    token(secret, json!({"sub": sub, "exp": now_s() + 3600, "read": read, "write": write}))
}

async fn authed(url: &str, token: &str) -> R<Conn> {
    let mut c = Conn::open(url).await?;
    let (v, _, _) = c.request(json!({"type": "hello", "token": token}), W).await?;
    if v["type"] != "reply" {
        return Err(format!("hello refused: {v}"));
    }
    Ok(c)
}

// ---------------------------------------------------------------------------------------------------------------
// Output

struct Report {
    attack: &'static str,
    line: String,
    json: Value,
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / MB as f64)
}

fn db_bytes(dir: &str) -> u64 {
    ["coworker.db", "coworker.db-wal"]
        .iter()
        .map(|f| std::fs::metadata(format!("{dir}/{f}")).map(|m| m.len()).unwrap_or(0))
        .sum()
}

fn codes(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "none".into();
    }
    m.iter().map(|(k, v)| format!("{k}×{v}")).collect::<Vec<_>>().join(",")
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

// ---------------------------------------------------------------------------------------------------------------
// 1. Trail amplification

async fn trail(o: &Opts) -> R<Report> {
    let dir = data_dir(o)?;
    let mut c = Conn::open(&o.url).await?;
    for i in 0..5 {
        let id = live_run(&mut c, json!({"operation": "tiny", "input": {"i": i}})).await?;
        c.request(json!({"type": "complete", "run": id}), W).await?;
    }
    let mut sizes = Vec::new();
    let mut stopped = None;
    for n in 1..=18u32 {
        let r = c
            .request(
                json!({"type": "run", "run": {"operation": "select", "doctype": "Run", "input": {"take": 1000}}}),
                Duration::from_secs(120),
            )
            .await;
        let (v, len, took) = match r {
            Ok(x) => x,
            Err(e) => {
                stopped = Some(format!("request {n} got no answer: {e}"));
                break;
            }
        };
        eprintln!("trail: request {n}: {len} bytes in {:.2} s ({})", took.as_secs_f64(), v["type"]);
        sizes.push(len as u64);
        let r = rss(o.pid);
        if len as u64 > 64 * MB || r > 4_000 * MB {
            stopped = Some(format!("stopped at request {n}, reply {len} bytes, RSS {}", mb(r)));
            break;
        }
    }
    let at = |n: usize| sizes.get(n - 1).copied();
    let rss_after = rss(o.pid);
    let db = db_bytes(&dir);
    let show = |n: usize| at(n).map(|b| format!("{b} B")).unwrap_or_else(|| "-".into());
    let line = format!(
        "trail: reply #2 {}, #10 {}, #18 {}{}; server RSS after {}; database {}",
        show(2),
        show(10),
        show(18),
        stopped.as_ref().map(|s| format!(" ({s})")).unwrap_or_default(),
        mb(rss_after),
        mb(db)
    );
    Ok(Report {
        attack: "trail",
        line,
        json: json!({"reply_bytes": sizes, "reply2": at(2), "reply10": at(10), "reply18": at(18),
                     "stopped": stopped, "rss_after": rss_after, "db_bytes": db}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 2. One query holds every acknowledgement

fn where_keys(n: usize) -> Value {
    Value::Object((0..n).map(|i| (format!("k{i}"), json!(0))).collect::<Map<_, _>>())
}

/// The heaviest select the new server allows: 16 conditions that every run meets, and an order on a JSON field.
fn heavy16() -> Value {
    json!({"operation": "select", "doctype": "Run", "input": {
        "where": {
            "input": {"ne": "a", "gt": "", "gte": "", "lt": "~", "lte": "~"},
            "output": {"ne": "a", "gt": "", "gte": "", "lt": "~", "lte": "~"},
            "options": {"ne": "a", "gt": "", "lt": "~"},
            "steps": {"ne": "a", "gt": "", "lt": "~"}
        },
        "orderBy": {"input": "desc"}}})
}

fn sel_where(n: usize) -> Value {
    json!({"operation": "select", "doctype": "Run", "input": {"where": where_keys(n)}})
}

/// Fills the audit trail with `n` finished runs, written into the `runs` table beside the running server.
fn fill_trail(dir: &str, n: u64) -> R<Value> {
    let path = format!("{dir}/coworker.db");
    let mut db = rusqlite::Connection::open(&path).map_err(|e| e.to_string())?;
    db.busy_timeout(Duration::from_secs(30)).map_err(|e| e.to_string())?;
    let schema: String = db
        .query_row("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'", [], |r| r.get(0))
        .map_err(|e| format!("no runs table in {path}: {e}"))?;
    let cols: Vec<String> = db
        .prepare("SELECT name FROM pragma_table_info('runs')")
        .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(|e| e.to_string())?;
    let want = ["id", "timestamp", "owner", "operation", "status", "parent_run", "doctype", "ctx"];
    if cols.len() != want.len() || cols.iter().zip(want).any(|(a, b)| a != b) {
        return Err(format!("unexpected runs schema: {schema}"));
    }
    let base = now_ms() - n - 1000;
    let tx = db.transaction().map_err(|e| e.to_string())?;
    {
        let mut st = tx
            .prepare(
                "INSERT INTO runs (id, timestamp, owner, operation, status, parent_run, doctype, ctx)
                 VALUES (?1, ?2, 'system', 'interpret', 'completed', NULL, NULL, ?3)",
            )
            .map_err(|e| e.to_string())?;
        for i in 0..n {
            let id = format!("00000000-0000-7000-8000-{i:012x}");
            let ts = base + i;
            let ctx = json!({"id": id, "timestamp": ts, "operation": "interpret", "doctype": null, "flow": null,
                "input": {"q": format!("question {i}")}, "options": {}, "owner": "system", "agent": "llm",
                "parentRun": null, "steps": [{"name": "think", "status": "done"}], "space": "default",
                "status": "completed", "output": {"answer": i}, "error": null, "success": true, "duration": 5});
            st.execute(rusqlite::params![id, ts as i64, ctx.to_string()]).map_err(|e| e.to_string())?;
        }
    }
    tx.commit().map_err(|e| e.to_string())?;
    Ok(json!({"schema": schema}))
}

struct Burst {
    complete: Option<f64>,
    selects: Vec<String>,
    slowest_select: f64,
}

/// Ten copies of `query` at once on ten connections, then a live run's `complete` on another: its latency.
async fn burst(url: &str, query: Value) -> R<Burst> {
    let mut producer = Conn::open(url).await?;
    let id = live_run(&mut producer, json!({"operation": "interpret"})).await?;
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let mut c = Conn::open(url).await?;
        let q = query.clone();
        tasks.push(tokio::spawn(async move {
            let r = c.request(json!({"type": "run", "run": q}), Duration::from_secs(120)).await;
            (data_outcome(&r), r.map(|(_, _, t)| t.as_secs_f64()).unwrap_or(f64::INFINITY))
        }));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = producer.request(json!({"type": "complete", "run": id}), Duration::from_secs(120)).await;
    let complete = match &r {
        Ok((v, _, t)) if v["type"] == "reply" => Some(t.as_secs_f64()),
        Ok((v, _, _)) => return Err(format!("complete refused: {v}")),
        Err(_) => None,
    };
    let mut selects = Vec::new();
    let mut slowest = 0f64;
    for t in tasks {
        // Bounded: each select waits at most 120 s from its start.
        let (what, took) = t.await.map_err(|e| e.to_string())?;
        slowest = slowest.max(took);
        selects.push(what);
    }
    Ok(Burst { complete, selects, slowest_select: slowest })
}

fn burst_json(b: &Burst) -> Value {
    let mut outcomes = BTreeMap::<String, u64>::new();
    for s in &b.selects {
        *outcomes.entry(s.clone()).or_default() += 1;
    }
    json!({"complete_s": b.complete, "complete_over_120s": b.complete.is_none(), "selects": outcomes,
           "slowest_select_s": if b.slowest_select.is_finite() { json!(b.slowest_select) } else { json!("> 120") }})
}

fn burst_line(b: &Burst) -> String {
    let mut outcomes = BTreeMap::<String, u64>::new();
    for s in &b.selects {
        *outcomes.entry(s.clone()).or_default() += 1;
    }
    format!(
        "complete {} (selects: {}, slowest {})",
        b.complete.map(|t| format!("{t:.3} s")).unwrap_or_else(|| "> 120 s".into()),
        codes(&outcomes),
        if b.slowest_select.is_finite() { format!("{:.2} s", b.slowest_select) } else { "> 120 s".into() }
    )
}

/// Waits until the server uses less than a tenth of a core over a second (at most 300 s); the seconds it took.
async fn settle(pid: u32) -> f64 {
    let t0 = Instant::now();
    let mut last = cpu_secs(pid);
    while t0.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = cpu_secs(pid);
        if now - last < 0.1 {
            break;
        }
        last = now;
    }
    t0.elapsed().as_secs_f64()
}

const SQLITE_TEXTS: [&str; 6] = [
    "too many SQL variables",
    "Expression tree is too large",
    "parser stack overflow",
    "SQL logic error",
    "sqlite",
    "no such",
];

async fn acks(o: &Opts) -> R<Report> {
    let dir = data_dir(o)?;
    let t0 = Instant::now();
    let schema = fill_trail(&dir, o.runs)?;
    eprintln!("acks: {} runs written into the trail in {:.1} s", o.runs, t0.elapsed().as_secs_f64());
    let mut c = Conn::open(&o.url).await?;

    // (a) one select with 900 keys that match nothing
    let cpu0 = cpu_secs(o.pid);
    let r = c.request(json!({"type": "run", "run": sel_where(900)}), Duration::from_secs(120)).await;
    let cpu_a = cpu_secs(o.pid) - cpu0;
    let a_what = data_outcome(&r);
    let a_time = r.as_ref().map(|(_, _, t)| t.as_secs_f64()).ok();
    eprintln!("acks (a): {a_what} in {a_time:?} s, server CPU {cpu_a:.2} s");

    // (c) 1,100 keys: what error, and does SQLite's own text reach the client?
    let r = c.request(json!({"type": "run", "run": sel_where(1100)}), Duration::from_secs(120)).await;
    let c_what = data_outcome(&r);
    let c_msg = match &r {
        Ok((v, _, _)) => {
            format!("{} | {}", v["message"].as_str().unwrap_or(""), v["run"]["error"]["message"].as_str().unwrap_or(""))
        }
        Err(e) => e.clone(),
    };
    let c_sqlite = SQLITE_TEXTS.iter().any(|t| c_msg.to_lowercase().contains(&t.to_lowercase()));
    eprintln!("acks (c): {c_what}: {c_msg}");

    // (b) ten at once, then a complete: first the heaviest query the new server allows, then 900 keys (last,
    // because on a server that serializes them it may leave work behind).
    let b16 = burst(&o.url, heavy16()).await?;
    eprintln!("acks (b16): {}", burst_line(&b16));
    // Queries given up on may still be running: wait until the server is idle, so that they do not count in the
    // next figure.
    let settle = settle(o.pid).await;
    eprintln!("acks: the server was idle again after {settle:.1} s");
    let b900 = burst(&o.url, sel_where(900)).await?;
    eprintln!("acks (b900): {}", burst_line(&b900));

    let line = format!(
        "acks ({} runs): (a) 900-key select {} in {} with server CPU {:.2} s; (b) 10×900-key: {}; \
         (b16) 10×16-condition: {}; (c) 1,100-key select: {} (SQLite text in message: {})",
        o.runs,
        a_what,
        a_time.map(|t| format!("{t:.3} s")).unwrap_or_else(|| "> 120 s".into()),
        cpu_a,
        burst_line(&b900),
        burst_line(&b16),
        c_what,
        if c_sqlite { "yes" } else { "no" }
    );
    Ok(Report {
        attack: "acks",
        line,
        json: json!({"runs": o.runs, "runs_schema": schema["schema"],
            "a": {"outcome": a_what, "reply_s": a_time, "server_cpu_s": cpu_a},
            "b900": burst_json(&b900), "b16": burst_json(&b16), "idle_again_after_b16_s": settle,
            "c": {"outcome": c_what, "message": c_msg, "sqlite_text": c_sqlite}}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 3. Tenancy

async fn tenancy(o: &Opts) -> R<Report> {
    let s = secret(o)?;
    let mut alice = authed(&o.url, &tok(&s, "alice", &["alice"], &["alice"])).await?;
    let mut bob = authed(&o.url, &tok(&s, "bob", &["bob"], &["bob"])).await?;
    let iban = "DE89370400440532013000";
    let data = |op: &str, space: &str, doctype: &str, input: Value| json!({"type": "run", "run": {"operation": op, "doctype": doctype, "space": space, "input": input}});
    let r =
        alice.request(data("create", "alice", "Invoice", json!({"data": {"name": "inv-1", "iban": iban}})), W).await;
    let created = data_outcome(&r);

    let seen = |r: &R<(Value, usize, Duration)>| -> (String, bool, usize) {
        let n = r.as_ref().ok().and_then(|(v, _, _)| v["run"]["output"]["data"].as_array().map(Vec::len));
        let saw = r.as_ref().map(|(v, _, _)| v.to_string().contains(iban)).unwrap_or(false);
        (data_outcome(r), saw, n.unwrap_or(0))
    };
    let r = bob.request(data("select", "bob", "Invoice", json!({})), W).await;
    let (sel_own, saw_own, rows_own) = seen(&r);
    let r = bob.request(data("select", "alice", "Invoice", json!({})), W).await;
    let (sel_alice, saw_alice, rows_alice) = seen(&r);

    let schema = json!({"data": {"_schema_doctype": "Invoice",
        "fields": [{"fieldname": "x", "fieldtype": "Data", "reqd": 1}]}});
    let r = bob.request(data("create", "bob", "Schema", schema), W).await;
    let schema_made = data_outcome(&r);
    let r =
        alice.request(data("create", "alice", "Invoice", json!({"data": {"name": "inv-2", "iban": iban}})), W).await;
    let alice_second = data_outcome(&r);
    let alice_rejected = alice_second != "ok";

    let r = bob.request(data("delete", "bob", "Invoice", json!({"where": {}})), W).await;
    let del = data_outcome(&r);
    let affected = r.as_ref().ok().and_then(|(v, _, _)| v["run"]["output"]["meta"]["affected"].as_u64());
    let r = alice.request(data("select", "alice", "Invoice", json!({})), W).await;
    let remaining = r.as_ref().ok().and_then(|(v, _, _)| v["run"]["output"]["data"].as_array().map(Vec::len));
    let alice_expected = if alice_rejected { 1 } else { 2 };

    let yn = |b: bool| if b { "yes" } else { "no" };
    let line = format!(
        "tenancy: alice create {created}; bob select in bob {sel_own} ({rows_own} rows, saw iban: {}), naming \
         alice's space {sel_alice} ({rows_alice} rows, saw iban: {}); bob's Schema {schema_made}, alice's next \
         create {alice_second} (rejected: {}); bob's delete where {{}} {del} (affected {}), alice's invoices \
         remaining {} of {alice_expected}",
        yn(saw_own),
        yn(saw_alice),
        yn(alice_rejected),
        affected.map(|a| a.to_string()).unwrap_or("-".into()),
        remaining.map(|a| a.to_string()).unwrap_or("-".into()),
    );
    Ok(Report {
        attack: "tenancy",
        line,
        json: json!({"alice_create": created,
            "bob_select_own_space": {"outcome": sel_own, "rows": rows_own, "saw_iban": saw_own},
            "bob_select_alice_space": {"outcome": sel_alice, "rows": rows_alice, "saw_iban": saw_alice},
            "bob_schema": schema_made, "alice_second_create": alice_second, "alice_rejected": alice_rejected,
            "bob_delete": del, "bob_delete_affected": affected, "alice_remaining": remaining,
            "alice_expected": alice_expected}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 4. Spaces exhaustion

/// A `run` in a new space and a `subscribe` to another new space, by an ordinary owner.
async fn victim_spaces(url: &str, s: &str, tag: &str) -> R<(String, String)> {
    let mut c = authed(url, &tok(s, "carol", &["*"], &["*"])).await?;
    let r = c
        .request(json!({"type": "run", "run": {"operation": "interpret", "space": format!("carol-run-{tag}")}}), W)
        .await;
    let run = outcome(&r);
    if let Ok((v, _, _)) = &r
        && let Some(id) = v["run"]["id"].as_str()
    {
        let _ = c.request(json!({"type": "complete", "run": id}), W).await;
    }
    let r = c.request(json!({"type": "subscribe", "space": format!("carol-sub-{tag}")}), W).await;
    let sub = outcome(&r);
    c.close().await;
    Ok((run, sub))
}

async fn spaces(o: &Opts) -> R<Report> {
    let s = secret(o)?;
    let mut m =
        authed(&o.url, &token(&s, json!({"sub": "mallory", "exp": now_s() + 3600, "read": ["*"], "write": []})))
            .await?;
    let t0 = Instant::now();
    let mut refused = BTreeMap::<String, u64>::new();
    let mut unsub_refused = BTreeMap::<String, u64>::new();
    let mut ok = 0u64;
    let total = 10_000u64;
    let batch = 50u64;
    let mut i = 0u64;
    while i < total {
        // 100 messages per batch, at most one batch per 15 ms: about 6,700 messages/s, under the per-connection
        // message rate (10,000/s), so that no subscribe or unsubscribe is dropped as rate_limited.
        let pace = tokio::time::sleep(Duration::from_millis(15));
        let n = batch.min(total - i);
        let mut ids = Vec::new();
        for k in 0..n {
            let id = m.fresh_id();
            ids.push(id);
            m.send(&json!({"type": "subscribe", "id": id, "space": format!("m-{}", i + k), "views": ["isLoading"]}))
                .await?;
        }
        let mut subs = Vec::new();
        let mut answered = 0;
        let deadline = Instant::now() + Duration::from_secs(30);
        while answered < ids.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((v, _)) = m.next(left).await else { return Err("subscribe answers stopped".into()) };
            let Some(id) = v["id"].as_u64() else { continue };
            if !ids.contains(&id) {
                continue;
            }
            answered += 1;
            if v["type"] == "error" {
                *refused.entry(v["code"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            } else if let Some(sub) = v["sub"].as_u64() {
                ok += 1;
                subs.push(sub);
            }
        }
        let mut unsub_ids = Vec::new();
        for sub in subs {
            let id = m.fresh_id();
            unsub_ids.push(id);
            m.send(&json!({"type": "unsubscribe", "id": id, "sub": sub})).await?;
        }
        let mut answered = 0;
        while answered < unsub_ids.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some((v, _)) = m.next(left).await else { return Err("unsubscribe answers stopped".into()) };
            if v["id"].as_u64().is_some_and(|id| unsub_ids.contains(&id)) {
                answered += 1;
                if v["type"] == "error" {
                    *unsub_refused.entry(v["code"].as_str().unwrap_or("?").to_string()).or_default() += 1;
                }
            }
        }
        i += n;
        pace.await;
    }
    let took = t0.elapsed().as_secs_f64();
    let health1 = healthz(&o.url).await;
    eprintln!("spaces: {total} subscribe/unsubscribe in {took:.1} s, {ok} ok, refused {refused:?}");
    let (run1, sub1) = victim_spaces(&o.url, &s, "1").await?;
    eprintln!("spaces: carol while mallory is connected: run {run1}, subscribe {sub1}");
    m.close().await;
    drop(m);

    // Slow unsubscribes, by a second read-only owner: 20 spaces, each left 100 ms after its snapshot (several
    // ticks later, when the space's task is idle). Whether each space was reclaimed is told later by a resume from
    // its epoch: granted (`resumed`) only when the very same space still exists.
    let slow_tok = token(&s, json!({"sub": "mallory2", "exp": now_s() + 3600, "read": ["*"], "write": []}));
    let mut m2 = authed(&o.url, &slow_tok).await?;
    let mut slow = Vec::new();
    let mut slow_refused = BTreeMap::<String, u64>::new();
    for k in 0..20 {
        let name = format!("slow-{k}");
        let r = m2.request(json!({"type": "subscribe", "space": name, "views": ["isLoading"]}), W).await;
        match &r {
            Ok((v, _, _)) if v["type"] == "snapshot" => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                m2.request(json!({"type": "unsubscribe", "sub": v["sub"]}), W).await?;
                slow.push((name, v["epoch"].as_u64().unwrap_or(0)));
            }
            _ => *slow_refused.entry(outcome(&r)).or_default() += 1,
        }
    }
    m2.close().await;
    drop(m2);
    eprintln!("spaces: {} slow subscribe/unsubscribe (refused: {slow_refused:?}); waiting 65 s", slow.len());
    tokio::time::sleep(Duration::from_secs(65)).await;
    let health2 = healthz(&o.url).await;
    let (run2, sub2) = victim_spaces(&o.url, &s, "2").await?;
    let mut check = authed(&o.url, &slow_tok).await?;
    let mut still = 0u64;
    for (name, epoch) in &slow {
        let r = check
            .request(
                json!({"type": "subscribe", "space": name, "views": ["isLoading"], "since": {"epoch": epoch, "seq": 0}}),
                W,
            )
            .await;
        if let Ok((v, _, _)) = &r {
            if v["resumed"] == true {
                still += 1;
            }
            if let Some(sub) = v["sub"].as_u64() {
                check.request(json!({"type": "unsubscribe", "sub": sub}), W).await?;
            }
        }
    }
    check.close().await;
    let slow_line = if slow.is_empty() {
        format!("slow unsubscribes: none granted ({})", codes(&slow_refused))
    } else {
        format!("of {} spaces left 100 ms after their snapshot, {still} still existed after 65 s", slow.len())
    };
    let line = format!(
        "spaces: 10,000 subscribe+unsubscribe in {took:.1} s, {ok} granted, refused {}; another owner's run in a \
         new space: {run1}, subscribe to a new space: {sub1}; 65 s after the attacker left: run {run2}, subscribe \
         {sub2} (unsubscribes refused: {}; healthz spaces {} then {}); {slow_line}",
        codes(&refused),
        codes(&unsub_refused),
        health1["spaces"],
        health2["spaces"]
    );
    Ok(Report {
        attack: "spaces",
        line,
        json: json!({"seconds": took, "granted": ok, "refused": refused, "unsubscribes_refused": unsub_refused,
            "victim_now": {"run": run1, "subscribe": sub1}, "victim_after_65s": {"run": run2, "subscribe": sub2},
            "healthz_spaces": [health1["spaces"], health2["spaces"]],
            "slow_unsubscribe": {"granted": slow.len(), "refused": slow_refused, "still_existing_after_65s": still}}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 5. Token revocation

fn diffs_for(frames: &[Value], sub: u64) -> (u64, u64) {
    let mut diffs = 0;
    let mut snapshots = 0;
    for f in frames {
        if f["sub"].as_u64() == Some(sub) {
            match f["type"].as_str() {
                Some("diff") => diffs += 1,
                Some("snapshot") => snapshots += 1,
                _ => {}
            }
        }
    }
    (diffs, snapshots)
}

async fn revocation(o: &Opts) -> R<Report> {
    let s = secret(o)?;
    let agent_tok =
        token(&s, json!({"sub": "agent", "exp": now_s() + 3600, "agent": true, "read": ["*"], "write": ["*"]}));
    let mut agent = authed(&o.url, &agent_tok).await?;
    let run = live_run(&mut agent, json!({"operation": "interpret", "space": "s"})).await?;
    let patch = |i: u32| json!({"type": "patch", "run": run, "ops": [{"op": "append", "path": "output.tokens", "value": format!("t{i}")}]});

    // (a) a refreshed token without read on `s`
    let mut ann = Conn::open_with(&o.url, true).await?;
    ann.request(json!({"type": "hello", "token": tok(&s, "ann", &["s"], &[])}), W).await?;
    let (snap, _, _) = ann.request(json!({"type": "subscribe", "space": "s"}), W).await?;
    let sub = snap["sub"].as_u64().ok_or_else(|| format!("ann's subscribe refused: {snap}"))?;
    let r = ann.request(json!({"type": "hello", "token": tok(&s, "ann", &[], &[])}), W).await;
    let refresh = outcome(&r);
    let ended = ann.stash.drain(..).any(|(t, _)| {
        let f = serde_json::from_str::<Value>(&t).unwrap_or_default();
        f["type"] == "error" && f["sub"].as_u64() == Some(sub)
    });
    for i in 0..10 {
        agent.request(patch(i), W).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let frames = ann.drain(Duration::from_millis(500)).await;
    let (a_diffs, a_snaps) = diffs_for(&frames, sub);
    eprintln!("revocation (a): refresh {refresh}, subscription ended with an error: {ended}, diffs {a_diffs}");
    ann.close().await;

    // (b) an expired token during its grace period
    let mut ann = Conn::open_with(&o.url, true).await?;
    let exp = now_s() + 3;
    ann.request(
        json!({"type": "hello", "token": token(&s, json!({"sub": "ann", "exp": exp, "read": ["s"], "write": []}))}),
        W,
    )
    .await?;
    let (snap, _, _) = ann.request(json!({"type": "subscribe", "space": "s"}), W).await?;
    let sub = snap["sub"].as_u64().ok_or_else(|| format!("ann's subscribe refused: {snap}"))?;
    // Wait for token_expired (with no id); diffs of other activity do not occur: only the agent writes here.
    let deadline = Instant::now() + Duration::from_secs(8);
    let mut expired_seen = false;
    let mut early = Vec::new();
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some((f, _)) = ann.next(left).await else { break };
        if f["type"] == "error" && f["code"] == "token_expired" {
            expired_seen = true;
            break;
        }
        early.push(f);
    }
    let t_exp = Instant::now();
    for i in 0..10 {
        agent.request(patch(100 + i), W).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut frames = ann.drain(Duration::from_millis(300)).await;
    let grace_s = t_exp.elapsed().as_secs_f64();
    let (b_diffs, b_snaps) = diffs_for(&frames, sub);
    frames.retain(|f| f["type"] == "error");
    eprintln!("revocation (b): token_expired seen {expired_seen}, then {b_diffs} diffs in {grace_s:.1} s");

    let line = format!(
        "revocation: (a) refreshed hello without read: {refresh}, subscription ended with an error: {}, diffs \
         still received for 10 patches: {a_diffs} (snapshots {a_snaps}); (b) token_expired {}, diffs received \
         for 10 patches during the grace period ({grace_s:.1} s): {b_diffs} (snapshots {b_snaps})",
        if ended { "yes" } else { "no" },
        if expired_seen { "received" } else { "NOT received within 8 s" }
    );
    Ok(Report {
        attack: "revocation",
        line,
        json: json!({"a": {"refresh": refresh, "subscription_ended": ended, "diffs": a_diffs, "snapshots": a_snaps},
            "b": {"token_expired": expired_seen, "diffs": b_diffs, "snapshots": b_snaps, "window_s": grace_s}}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 6. JWT edge cases

async fn jwt(o: &Opts) -> R<Report> {
    let s = secret(o)?;
    let max_exp = |sub: &str| token(&s, json!({"sub": sub, "exp": u64::MAX, "read": ["*"], "write": ["*"]}));
    let short = Duration::from_secs(3);

    // (a) exp = 2^64 - 1
    let mut c = Conn::open(&o.url).await?;
    let r = c.request(json!({"type": "hello", "token": max_exp("edge")}), short).await;
    let a_hello = outcome(&r);
    let r = c.request(json!({"type": "subscribe", "space": "edge"}), short).await;
    let a_after = outcome(&r);
    let a_alive = r.is_ok();
    c.close().await;

    // (b) 1,000 of them, closed, then an ordinary hello of the same owner
    let mut hellos = BTreeMap::<String, u64>::new();
    let tokn = max_exp("leak");
    let mut handles = Vec::new();
    let sem = Arc::new(tokio::sync::Semaphore::new(50));
    for _ in 0..1000 {
        let (url, t, sem) = (o.url.clone(), tokn.clone(), sem.clone());
        handles.push(tokio::spawn(async move {
            let _p = sem.acquire().await;
            let mut c = match Conn::open(&url).await {
                Ok(c) => c,
                Err(e) => return format!("(connect: {e})"),
            };
            let r = c.request(json!({"type": "hello", "token": t}), Duration::from_secs(2)).await;
            c.close().await;
            match &r {
                Err(e) if e.contains("closed") => "closed".to_string(),
                Err(_) => "no answer".to_string(),
                _ => outcome(&r),
            }
        }));
    }
    for h in handles {
        *hellos.entry(h.await.map_err(|e| e.to_string())?).or_default() += 1;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut c = Conn::open(&o.url).await?;
    let r = c.request(json!({"type": "hello", "token": tok(&s, "leak", &["*"], &["*"])}), short).await;
    let b_after = outcome(&r);
    c.close().await;

    // (c) nbf 60 s ahead, (d) empty sub
    let mut c = Conn::open(&o.url).await?;
    let nbf =
        token(&s, json!({"sub": "early", "exp": now_s() + 3600, "nbf": now_s() + 60, "read": ["*"], "write": ["*"]}));
    let r = c.request(json!({"type": "hello", "token": nbf}), short).await;
    let c_nbf = outcome(&r);
    c.close().await;
    let mut c = Conn::open(&o.url).await?;
    let r = c.request(json!({"type": "hello", "token": tok(&s, "", &["*"], &["*"])}), short).await;
    let d_empty = outcome(&r);
    c.close().await;

    let acc = |x: &str| if x == "reply" { "accepted".to_string() } else { x.to_string() };
    let line = format!(
        "jwt: (a) exp=2^64-1 hello {}, next request answered: {} ({a_after}); (b) 1,000 such hellos: {}, then a \
         normal hello of that owner: {}; (c) nbf +60 s: {}; (d) empty sub: {}",
        acc(&a_hello),
        if a_alive { "yes" } else { "no" },
        codes(&hellos),
        acc(&b_after),
        acc(&c_nbf),
        acc(&d_empty)
    );
    Ok(Report {
        attack: "jwt",
        line,
        json: json!({"a": {"hello": a_hello, "next_request": a_after, "alive": a_alive},
            "b": {"hellos": hellos, "normal_hello_after": b_after}, "c_nbf_future": c_nbf, "d_empty_sub": d_empty}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 7. DNS rebinding

async fn upgrade_status(url: &str, host: &str, origin: &str) -> R<String> {
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let addr = authority(url);
    let fut = async {
        let mut s = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        s.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(2).any(|w| w == b"\r\n") {
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let text = String::from_utf8_lossy(&buf).into_owned();
        Ok::<_, String>(text.split_whitespace().nth(1).unwrap_or("(no status)").to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await.map_err(|_| "timeout".to_string())?
}

async fn rebinding(o: &Opts) -> R<Report> {
    let port = port_of(&o.url);
    let own = authority(&o.url);
    let evil_host = format!("evil.example:{port}");
    let a = upgrade_status(&o.url, &evil_host, &format!("http://evil.example:{port}")).await?;
    let b = upgrade_status(&o.url, &own, "http://localhost:1@evil.example").await?;
    let b2 = upgrade_status(&o.url, &own, &format!("http://localhost:{port}@evil.example")).await?;
    let control = upgrade_status(&o.url, &own, &format!("http://localhost:{port}")).await?;
    let line = format!(
        "rebinding: Origin+Host evil.example:{port} → HTTP {a}; Origin http://localhost:1@evil.example → HTTP {b}; \
         Origin http://localhost:{port}@evil.example → HTTP {b2}; control Origin http://localhost:{port} → HTTP \
         {control} (101 = upgraded)"
    );
    Ok(Report {
        attack: "rebinding",
        line,
        json: json!({"evil_origin_and_host": a, "userinfo_origin": b, "userinfo_origin_same_port": b2,
                     "control_localhost": control}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 8. Resync storm

/// A WebSocket client on a bare TCP socket: it writes masked text frames and, after the upgrade's answer, never
/// reads a byte.
struct Mute {
    sock: TcpStream,
}

impl Mute {
    async fn open(url: &str) -> R<Mute> {
        let addr = authority(url);
        let mut sock = TcpStream::connect(&addr).await.map_err(|e| e.to_string())?;
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        sock.write_all(req.as_bytes()).await.map_err(|e| e.to_string())?;
        // Read the answer's head one byte at a time, so that nothing after it is taken off the socket.
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            let n = sock.read(&mut b).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("closed during the upgrade".into());
            }
            head.push(b[0]);
        }
        let status = String::from_utf8_lossy(&head).split_whitespace().nth(1).unwrap_or("").to_string();
        if status != "101" {
            return Err(format!("upgrade answered {status}"));
        }
        Ok(Mute { sock })
    }

    async fn send(&mut self, text: &str) -> R<()> {
        let p = text.as_bytes();
        let mut f = vec![0x81u8];
        match p.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n < 65536 => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&[0, 0, 0, 0]); // a zero mask leaves the payload as it is
        f.extend_from_slice(p);
        self.sock.write_all(&f).await.map_err(|e| e.to_string())
    }
}

const VIEWS: [&str; 6] = ["currentRun", "activeRuns", "isLoading", "activeDialogs", "activeAI", "activePipelines"];

/// The 63 non-empty subsets of the six views, largest first (the heaviest renders first).
fn view_sets() -> Vec<Vec<&'static str>> {
    let mut sets: Vec<Vec<&str>> =
        (1u32..64).map(|m| (0..6).filter(|i| m & (1 << i) != 0).map(|i| VIEWS[i]).collect()).collect();
    sets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    sets
}

async fn resync(o: &Opts, conns: usize) -> R<Report> {
    let space = "storm";
    let mut p = Conn::open(&o.url).await?;
    let text = "x".repeat(50_000);
    let mut runs = Vec::new();
    let t0 = Instant::now();
    for i in 0..16 {
        let id = live_run(&mut p, json!({"operation": "interpret", "space": space, "input": {"i": i}})).await?;
        for _ in 0..20 {
            let (v, _, _) = p
                .request(
                    json!({"type": "patch", "run": id, "ops": [{"op": "append", "path": "output.text", "value": text}]}),
                    W,
                )
                .await?;
            if v["type"] != "reply" {
                return Err(format!("filling the space: {v}"));
            }
        }
        runs.push(id);
    }
    eprintln!("resync: 16 runs of 1 MB in {space} in {:.1} s", t0.elapsed().as_secs_f64());

    // The victim: a run in another space, patched with an id every 20 ms.
    let mut v = Conn::open(&o.url).await?;
    let vrun = live_run(&mut v, json!({"operation": "interpret", "space": "calm"})).await?;
    let le0 = metric(&o.url, "coworker_errors_total{code=\"limit_exceeded\"}").await;
    let resyncs0 = metric(&o.url, "coworker_resyncs_total").await;
    let renders0 = metric(&o.url, "coworker_snapshots_rendered_total").await;

    // The mute readers: 56 distinct view sets, on one connection or spread over several.
    let sets = view_sets();
    let per = 56 / conns;
    let mut mutes = Vec::new();
    for k in 0..conns {
        let mut m = Mute::open(&o.url).await?;
        for (j, set) in sets[k * per..(k + 1) * per].iter().enumerate() {
            m.send(&json!({"type": "subscribe", "id": j + 1, "space": space, "views": set}).to_string()).await?;
        }
        mutes.push(m);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        let run = runs[0].clone();
        let sink = p.sink.clone();
        tokio::spawn(async move {
            let mut n = 0u64;
            let mut iv = tokio::time::interval(Duration::from_millis(5));
            while !stop.load(Ordering::Relaxed) {
                iv.tick().await;
                let m = json!({"type": "patch", "run": run, "ops": [{"op": "append", "path": "output.tokens", "value": "tok"}]});
                if sink.lock().await.send(Message::Text(m.to_string().into())).await.is_err() {
                    break;
                }
                n += 1;
            }
            n
        })
    };
    let watch = RssWatch::start(o.pid, 6_000 * MB);
    let rss0 = rss(o.pid);
    let cpu0 = cpu_secs(o.pid);
    let start = Instant::now();
    let mut rtts = Vec::new();
    let mut lost = 0u64;
    let mut iv = tokio::time::interval(Duration::from_millis(20));
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(10) && !watch.over() {
        iv.tick().await;
        i += 1;
        let r = v
            .request(
                json!({"type": "patch", "run": vrun, "ops": [{"op": "set", "path": "output.n", "value": i}]}),
                Duration::from_secs(5),
            )
            .await;
        match r {
            Ok((_, _, t)) => rtts.push(t.as_secs_f64() * 1000.0),
            Err(_) => lost += 1,
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(o.pid) - cpu0;
    let peak = watch.peak();
    let over = watch.over();
    stop.store(true, Ordering::Relaxed);
    let ticks = ticker.await.unwrap_or(0);
    let le = delta(le0, metric(&o.url, "coworker_errors_total{code=\"limit_exceeded\"}").await);
    let resyncs = delta(resyncs0, metric(&o.url, "coworker_resyncs_total").await);
    let renders = delta(renders0, metric(&o.url, "coworker_snapshots_rendered_total").await);
    drop(mutes);
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (p50, p99) = (pct(&rtts, 0.5), pct(&rtts, 0.99));
    let line = format!(
        "resync ({conns} mute connection{}, 56 view sets): over {wall:.1} s server CPU {:.0}% of one core, peak RSS \
         {} (from {}){}; other client's patch RTT p50 {p50:.1} ms, p99 {p99:.1} ms ({} answered, {lost} timed out \
         at 5 s); subscribes refused (limit_exceeded, from /metrics): {}; resyncs {}, snapshot renders {}; \
         producer ticks sent {ticks}",
        if conns == 1 { "" } else { "s" },
        cpu / wall * 100.0,
        mb(peak),
        mb(rss0),
        if over { " STOPPED at the 6 GB RSS cap" } else { "" },
        rtts.len(),
        opt(le),
        opt(resyncs),
        opt(renders)
    );
    Ok(Report {
        attack: if conns == 1 { "resync" } else { "resync7" },
        line,
        json: json!({"mute_connections": conns, "seconds": wall, "server_cpu_share": cpu / wall,
            "rss_before": rss0, "rss_peak": peak, "rss_cap_hit": over,
            "rtt_ms": {"p50": p50, "p99": p99, "answered": rtts.len(), "timed_out": lost},
            "refused_limit_exceeded": le, "resyncs": resyncs, "snapshot_renders": renders, "producer_ticks": ticks}),
    })
}

// ---------------------------------------------------------------------------------------------------------------
// 9. skip above i64::MAX

async fn skip(o: &Opts) -> R<Report> {
    let mut c = Conn::open(&o.url).await?;
    for n in ["n1", "n2", "n3"] {
        let r = c
            .request(json!({"type": "run", "run": {"operation": "create", "doctype": "Note", "input": {"data": {"name": n}}}}), W)
            .await;
        if data_outcome(&r) != "ok" {
            return Err(format!("create {n}: {}", data_outcome(&r)));
        }
    }
    let big: u64 = 9_223_372_036_854_775_808;
    let r = c
        .request(json!({"type": "run", "run": {"operation": "select", "doctype": "Note", "input": {"skip": big}}}), W)
        .await;
    let what = data_outcome(&r);
    let (rows, meta_skip) = match &r {
        Ok((v, _, _)) if v["type"] == "reply" => {
            (v["run"]["output"]["data"].as_array().map(Vec::len), v["run"]["output"]["meta"]["skip"].clone())
        }
        _ => (None, Value::Null),
    };
    let line = format!(
        "skip: select on 3 Notes with skip 2^63: {what}, rows {}, meta.skip {}",
        rows.map(|n| n.to_string()).unwrap_or("-".into()),
        meta_skip
    );
    Ok(Report { attack: "skip", line, json: json!({"outcome": what, "rows": rows, "meta_skip": meta_skip}) })
}

// ---------------------------------------------------------------------------------------------------------------
// 10. Memory

fn token_patch(run: &str, tok: &str) -> String {
    format!(r#"{{"type":"patch","run":"{run}","ops":[{{"op":"append","path":"output.tokens","value":"{tok}"}}]}}"#)
}

const TOKEN: usize = 60_000;

async fn memory1(o: &Opts) -> R<Report> {
    let tokn = "a".repeat(TOKEN);
    let mut c = Conn::open(&o.url).await?;
    let run = live_run(&mut c, json!({"operation": "interpret", "space": "mem"})).await?;
    let frame = token_patch(&run, &tokn);
    let watch = RssWatch::start(o.pid, 6_000 * MB);
    let rss0 = rss(o.pid);
    let cpu0 = cpu_secs(o.pid);
    let start = Instant::now();
    let mut sent = 0u64;
    let mut send_err = None;
    while start.elapsed() < Duration::from_secs(15) && !watch.over() {
        let mut sink = c.sink.lock().await;
        let mut res = Ok(());
        for _ in 0..8 {
            res = sink.feed(Message::Text(frame.clone().into())).await;
            if res.is_err() {
                break;
            }
            sent += 1;
        }
        if res.is_ok() {
            res = sink.flush().await;
        }
        if let Err(e) = res {
            send_err = Some(e.to_string());
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_secs(o.pid) - cpu0) / secs;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let peak = watch.peak();
    let over = watch.over();
    let errors = c.stats.errors();
    let refused: u64 = errors.values().sum();
    let accepted = sent.saturating_sub(refused) * TOKEN as u64;
    let health = healthz(&o.url).await;
    let close = c.stats.close_code();
    let line = format!(
        "memory1: one connection, 60 KB appends for {secs:.1} s: {sent} sent ({}), accepted ≈{} (sent − refused), \
         peak RSS growth {} (peak {}){}, server CPU {:.0}% of one core; errors {}; close {}; healthz stateBytes {}",
        mb(sent * TOKEN as u64),
        mb(accepted),
        mb(peak.saturating_sub(rss0)),
        mb(peak),
        if over { " STOPPED at the 6 GB RSS cap" } else { "" },
        cpu * 100.0,
        codes(&errors),
        close.map(|c| c.to_string()).unwrap_or_else(|| if c.stats.closed.load(Ordering::Relaxed) {
            format!("without a close frame ({})", send_err.clone().unwrap_or_default())
        } else {
            "none".into()
        }),
        health["stateBytes"]
    );
    Ok(Report {
        attack: "memory1",
        line,
        json: json!({"seconds": secs, "sent": sent, "sent_bytes": sent * TOKEN as u64, "accepted_bytes": accepted,
            "rss_before": rss0, "rss_peak": peak, "rss_growth": peak.saturating_sub(rss0), "rss_cap_hit": over,
            "server_cpu_share": cpu, "errors": errors, "close_code": close, "send_error": send_err, "healthz": health}),
    })
}

async fn memory24(o: &Opts) -> R<Report> {
    let watch = RssWatch::start(o.pid, 6_000 * MB);
    let rss0 = rss(o.pid);
    let cpu0 = cpu_secs(o.pid);
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for k in 0..24 {
        let (url, stop) = (o.url.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let tokn = "a".repeat(TOKEN);
            let mut c = Conn::open(&url).await?;
            let owner = format!("o{k}");
            let mut sent = 0u64;
            let mut runs = 0u64;
            let mut run_refused = BTreeMap::<String, u64>::new();
            'outer: while !stop.load(Ordering::Relaxed) {
                let r = c
                    .request(json!({"type": "run", "run": {"operation": "interpret", "owner": owner, "space": format!("mem-{k}")}}), W)
                    .await;
                let run = match &r {
                    Ok((v, _, _)) if v["type"] == "reply" => v["run"]["id"].as_str().unwrap_or("").to_string(),
                    _ => {
                        *run_refused.entry(outcome(&r)).or_default() += 1;
                        if c.stats.closed.load(Ordering::Relaxed) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                runs += 1;
                let frame = token_patch(&run, &tokn);
                // 100 tokens (6 MB) per run, then a new run.
                for _ in 0..(100 / 4) {
                    if stop.load(Ordering::Relaxed) {
                        break 'outer;
                    }
                    let mut sink = c.sink.lock().await;
                    for _ in 0..4 {
                        if sink.feed(Message::Text(frame.clone().into())).await.is_err() {
                            break 'outer;
                        }
                        sent += 1;
                    }
                    if sink.flush().await.is_err() {
                        break 'outer;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            Ok::<_, String>((sent, runs, c.stats.errors(), run_refused, c.stats.close_code()))
        }));
    }
    while start.elapsed() < Duration::from_secs(10) && !watch.over() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_secs(o.pid) - cpu0) / secs;
    let mut sent = 0u64;
    let mut runs = 0u64;
    let mut errors = BTreeMap::<String, u64>::new();
    let mut run_refused = BTreeMap::<String, u64>::new();
    let mut closes = BTreeMap::<String, u64>::new();
    let mut patch_refused = 0u64;
    for t in tasks {
        let (s, r, e, rr, close) = t.await.map_err(|e| e.to_string())??;
        sent += s;
        runs += r;
        let run_errs: u64 = rr.iter().filter(|(k, _)| !k.starts_with('(')).map(|(_, v)| *v).sum();
        patch_refused += e.values().sum::<u64>().saturating_sub(run_errs);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
        for (k, v) in rr {
            *run_refused.entry(k).or_default() += v;
        }
        *closes.entry(close.map(|c| c.to_string()).unwrap_or("open".into())).or_default() += 1;
    }
    let peak = watch.peak();
    let over = watch.over();
    let accepted = sent.saturating_sub(patch_refused) * TOKEN as u64;
    let health = healthz(&o.url).await;
    let line = format!(
        "memory24: 24 owners, 60 KB appends for {secs:.1} s: {sent} sent ({}), accepted ≈{}, {runs} runs started \
         (refused: {}), peak RSS growth {} (peak {}){}, server CPU {:.0}% of one core; errors {}; connections {}; \
         healthz stateBytes {}",
        mb(sent * TOKEN as u64),
        mb(accepted),
        codes(&run_refused),
        mb(peak.saturating_sub(rss0)),
        mb(peak),
        if over { " STOPPED at the 6 GB RSS cap" } else { "" },
        cpu * 100.0,
        codes(&errors),
        codes(&closes),
        health["stateBytes"]
    );
    Ok(Report {
        attack: "memory24",
        line,
        json: json!({"seconds": secs, "sent": sent, "sent_bytes": sent * TOKEN as u64, "accepted_bytes": accepted,
            "runs_started": runs, "runs_refused": run_refused, "rss_before": rss0, "rss_peak": peak,
            "rss_growth": peak.saturating_sub(rss0), "rss_cap_hit": over, "server_cpu_share": cpu,
            "errors": errors, "closes": closes,
            "healthz": health}),
    })
}

// ---------------------------------------------------------------------------------------------------------------

#[tokio::main]
async fn main() {
    let o = match opts() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !alive(o.pid) {
        eprintln!("no process {} (--pid must be the server's)", o.pid);
        std::process::exit(2);
    }
    eprintln!("attack {}: expects a fresh server of its own at {} (pid {})", o.attack, o.url, o.pid);
    let r = match o.attack.as_str() {
        "trail" => trail(&o).await,
        "acks" => acks(&o).await,
        "tenancy" => tenancy(&o).await,
        "spaces" => spaces(&o).await,
        "revocation" => revocation(&o).await,
        "jwt" => jwt(&o).await,
        "rebinding" => rebinding(&o).await,
        "resync" => resync(&o, 1).await,
        "resync7" => resync(&o, 7).await,
        "skip" => skip(&o).await,
        "memory1" => memory1(&o).await,
        "memory24" => memory24(&o).await,
        other => Err(format!("unknown attack {other}\n{USAGE}")),
    };
    match r {
        Ok(rep) => {
            let alive_after = alive(o.pid);
            if o.json {
                // The line goes to stderr, so that stdout holds the JSON object only.
                eprintln!("{}", rep.line);
                let mut j = rep.json;
                j["attack"] = json!(rep.attack);
                j["server_alive_after"] = json!(alive_after);
                println!("{j}");
            } else {
                println!("{}{}", rep.line, if alive_after { "" } else { " [the server process is gone]" });
            }
        }
        Err(e) => {
            let alive_after = alive(o.pid);
            if o.json {
                println!("{}", json!({"attack": o.attack, "failed": e, "server_alive_after": alive_after}));
            } else {
                println!("{}: probe failed: {e}{}", o.attack, if alive_after { "" } else { " [server gone]" });
            }
            std::process::exit(1);
        }
    }
}
