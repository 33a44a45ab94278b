//! Test support: a real server on 127.0.0.1:0, a raw WebSocket client for frame-level assertions, and a plugin
//! that records hook calls.

use coworker::Config;
use coworker::config::EngineConfig;
use coworker::plugin::hooks::{Hooks, Plugin, RunContext};
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

/// How long a test waits for a frame it expects before failing. A failure-detection bound, not a sleep.
pub const WAIT: Duration = Duration::from_secs(10);

pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<()>>,
}

impl TestServer {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Shuts the server down and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

pub async fn start_server() -> TestServer {
    start_with(EngineConfig::default(), Hooks::default()).await
}

pub async fn start_with(engine: EngineConfig, hooks: Hooks) -> TestServer {
    start_config(Config { engine, ..Config::default() }, hooks).await
}

/// A store for one test, of either backend: a SQLite file in a temporary folder, or a PostgreSQL database of its
/// own (created on the server the tests use, dropped at the end). A server started on it, stopped, and started
/// again finds what the first one made durable.
pub enum TestStore {
    Sqlite(tempfile::TempDir),
    Postgres(coworker::store::postgres::TestDatabase),
}

impl TestStore {
    pub fn sqlite() -> TestStore {
        TestStore::Sqlite(tempfile::tempdir().unwrap())
    }

    pub async fn postgres() -> TestStore {
        TestStore::Postgres(coworker::store::postgres::TestDatabase::create().await)
    }

    /// The server's flags for this store.
    pub fn args(&self) -> Vec<String> {
        match self {
            TestStore::Sqlite(dir) => vec!["--data-dir".into(), dir.path().to_str().unwrap().into()],
            TestStore::Postgres(db) => vec!["--database-url".into(), db.url.clone()],
        }
    }

    pub fn config(&self) -> Config {
        match self {
            TestStore::Sqlite(dir) => Config { data_dir: Some(dir.path().to_path_buf()), ..Config::default() },
            TestStore::Postgres(db) => Config { database_url: Some(db.url.clone()), ..Config::default() },
        }
    }

    /// A server on this store.
    pub async fn start(&self) -> TestServer {
        start_config(self.config(), Hooks::default()).await
    }

    /// Removes what the store holds (a PostgreSQL database is dropped).
    pub async fn remove(self) {
        if let TestStore::Postgres(db) = self {
            db.drop_now().await;
        }
    }
}

/// Makes each listed `async fn name(store: &TestStore)` a test against SQLite and a test against PostgreSQL:
/// `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = $crate::support::TestStore::sqlite();
                    super::$name(&store).await;
                    store.remove().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store = $crate::support::TestStore::postgres().await;
                    super::$name(&store).await;
                    store.remove().await;
                }
            )*
        }
    };
}

pub async fn start_config(config: Config, hooks: Hooks) -> TestServer {
    let backend = coworker::net::server::Backend::open(&config).await.expect("the store opens");
    start_backend(config, hooks, backend).await
}

/// A server with the store and sequencer given.
pub async fn start_backend(config: Config, hooks: Hooks, backend: coworker::net::server::Backend) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = Config { listen: addr, ..config };
    let handle = tokio::spawn(async move {
        coworker::net::server::serve_with(listener, config, hooks, backend, async {
            let _ = stopped.await;
        })
        .await
        .expect("server runs");
    });
    TestServer { addr, stop: Some(stop), handle: Some(handle) }
}

/// A raw client: frames as JSON values.
pub struct Raw {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Raw {
    pub async fn connect(server: &TestServer) -> Raw {
        let (ws, _) = connect_async(server.url()).await.expect("connect");
        Raw { ws }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.expect("send");
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::Text(s.to_string().into())).await.expect("send");
    }

    /// The next frame (text frames only), failing the test after [`WAIT`].
    pub async fn recv(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("connection open")
                .expect("frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("server frames are JSON"),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// The next non-close message, or the close frame's code.
    pub async fn recv_close(&mut self) -> Option<u16> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("timed out waiting for close") {
                Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                Some(Ok(Message::Text(t))) => panic!("expected a close, got {t}"),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Sends a request and returns the next frame (the reply: replies to live operations come in order).
    pub async fn request(&mut self, v: Value) -> Value {
        self.send(v).await;
        self.recv().await
    }

    /// Starts a live run and returns its id.
    pub async fn start(&mut self, run: Value) -> String {
        let r = self.request(serde_json::json!({"type": "run", "id": "start", "run": run})).await;
        assert_eq!(r["type"], "reply", "{r}");
        r["run"]["id"].as_str().unwrap().to_string()
    }
}

/// Records every hook call as `(hook, operation)`.
#[derive(Default)]
pub struct RecordingPlugin {
    pub calls: Mutex<Vec<(String, String, String)>>,
    pub reject_operation: Option<String>,
}

impl RecordingPlugin {
    pub fn take(&self) -> Vec<(String, String, String)> {
        std::mem::take(&mut *self.calls.lock())
    }
}

impl Plugin for RecordingPlugin {
    fn before_run(&self, run: RunContext<'_>) -> Result<(), String> {
        self.calls.lock().push(("before".into(), run.operation().into(), run.status().into()));
        if self.reject_operation.as_deref() == Some(run.operation()) {
            return Err(format!("operation {} is not allowed", run.operation()));
        }
        Ok(())
    }

    fn after_run(&self, run: RunContext<'_>) {
        self.calls.lock().push(("after".into(), run.operation().into(), run.status().into()));
    }

    fn on_error(&self, run: RunContext<'_>, _error: &coworker::Error) {
        self.calls.lock().push(("error".into(), run.operation().into(), run.status().into()));
    }
}

pub fn hooks_with(plugin: Arc<RecordingPlugin>) -> Hooks {
    let mut hooks = Hooks::default();
    hooks.plugin(plugin);
    hooks
}

impl Raw {
    /// The next text frame as a string.
    pub async fn ws_next_text(&mut self) -> String {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await.expect("timed out").expect("open").expect("frame") {
                Message::Text(t) => return t.to_string(),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }
}

/// For tests under the paused clock. Tokio advances a paused clock to the next timer whenever the runtime is idle,
/// and a runtime waiting for a socket to become ready is idle: without a near timer, one loopback round trip
/// could jump the clock straight to the server's linger deadline or to a test's timeout. This task keeps a timer
/// 100 µs ahead, so the clock advances in 100 µs steps while the runtime waits on a socket. Each step costs a
/// microsecond or two of real time, so a socket wait still advances virtual time faster than real time (tens of
/// times on a loaded machine): tests assert lower bounds of durations and leave generous room above them. Drop
/// the handle to stop it.
pub struct Heartbeat(tokio::task::JoinHandle<()>);

pub fn heartbeat() -> Heartbeat {
    Heartbeat(tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_micros(100)).await;
        }
    }))
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The `coworker` binary running as its own process, with its log on a pipe.
pub struct Process {
    pub child: std::process::Child,
    pub url: String,
    /// Every line the server logged so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Process {
    /// Starts the binary with `args` plus `--listen 127.0.0.1:0`, and waits for the address it logs.
    pub fn start(args: &[&str]) -> Process {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Process {
        use std::io::{BufRead, BufReader};
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coworker"))
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("WebSocket at ").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
                }
                lines.lock().push(line);
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(30)).expect("the bound address is logged");
        Process { child, url, log }
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill").args([sig, &self.child.id().to_string()]).status().unwrap();
        assert!(ok.success());
    }
}

/// Waits up to `within` for `child` to exit, polling (a child process has no async wait here); `None` if it is
/// still running.
pub fn wait_for_exit(child: &mut std::process::Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET /healthz as JSON.
pub async fn healthz(server: &TestServer) -> serde_json::Value {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    let body = text.split("\r\n\r\n").nth(1).expect("a body");
    serde_json::from_str(body).expect("JSON")
}

/// GET `path` on the server over plain HTTP: the whole response, head and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// The value of one sample in Prometheus text (`name` with its labels, as written), if present.
pub fn metric(body: &str, name: &str) -> Option<f64> {
    body.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// A process's resident memory, from /proc.
pub fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

impl Process {
    /// The `host:port` the process listens on.
    pub fn addr(&self) -> SocketAddr {
        self.url.trim_start_matches("ws://").trim_end_matches("/ws").parse().expect("a socket address")
    }
}

/// One masked text frame, as a client must send it.
pub fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    let mask = [1u8, 2, 3, 4];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Authenticated-mode helpers: one HS256 secret, tokens with its claims, a server that verifies them.
pub mod jwt {
    use super::{Raw, TestServer, start_config};
    use coworker::Config;
    use coworker::config::{EngineConfig, Limits};
    use coworker::net::auth::Auth;
    use coworker::plugin::hooks::Hooks;
    use jsonwebtoken::{EncodingKey, Header, encode};
    use serde_json::{Value, json};

    pub const SECRET: &[u8] = b"test-secret";

    pub fn now() -> u64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
    }

    pub fn token_with(claims: Value, key: &[u8]) -> String {
        encode(&Header::default(), &claims, &EncodingKey::from_secret(key)).unwrap()
    }

    /// A token signed with [`SECRET`].
    pub fn sign(claims: Value) -> String {
        token_with(claims, SECRET)
    }

    /// A token for `sub` with these spaces, valid for an hour.
    pub fn token(sub: &str, read: &[&str], write: &[&str]) -> String {
        sign(json!({"sub": sub, "read": read, "write": write, "exp": now() + 3600}))
    }

    /// A server in authenticated mode (and with this Origin allowlist).
    pub async fn secured(limits: Limits, origins: Vec<String>) -> TestServer {
        let config = Config {
            auth: Some(Auth::hs256(SECRET)),
            allowed_origins: origins,
            engine: EngineConfig { limits, ..EngineConfig::default() },
            ..Config::default()
        };
        start_config(config, Hooks::default()).await
    }

    pub async fn hello(c: &mut Raw, token: &str) -> Value {
        c.request(json!({"type": "hello", "id": "h", "token": token})).await
    }
}

/// Tests that load the machine for seconds, or measure latencies, take this in turn: one of them at a time, so that
/// they neither skew each other's figures nor starve a timing-sensitive neighbour. (Tests run on their own runtimes;
/// a tokio mutex needs none.)
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Waits until `check` holds of a fresh snapshot of `space` on `client`'s server; returns that snapshot's state and
/// seq.
pub async fn snapshot_when(
    client: &coworker::client::Client,
    space: &str,
    check: impl Fn(&Value) -> bool,
) -> (Value, u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let sub = client.subscribe(space, None, false).await.unwrap();
        let (state, seq) = (sub.state().clone(), sub.seq);
        sub.unsubscribe().await.unwrap();
        if check(&state) {
            return (state, seq);
        }
        assert!(tokio::time::Instant::now() < deadline, "never reached: {state}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every record of the audit trail whose fields match `filter` (a `select` `where`), read page by page, by run id.
/// Fails the test when a run is in the trail twice.
pub async fn trail(client: &coworker::client::Client, filter: Value) -> std::collections::HashMap<String, Value> {
    let mut trail = std::collections::HashMap::new();
    let mut skip = 0;
    loop {
        let input = serde_json::json!({"where": filter, "take": 1000, "skip": skip});
        let page =
            client.run(serde_json::json!({"operation": "select", "doctype": "Run", "input": input})).await.unwrap();
        let rows = page["output"]["data"].as_array().unwrap().clone();
        if rows.is_empty() {
            return trail;
        }
        skip += rows.len();
        for r in rows {
            let id = r["id"].as_str().unwrap().to_string();
            assert!(trail.insert(id.clone(), r).is_none(), "run {id} appears twice in the trail");
        }
    }
}
