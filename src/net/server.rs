//! The HTTP side: binds the routes (`/ws`, `/healthz`, the web demo at `/`), configures the WebSocket limits, tracks
//! every session, and shuts down in order: stop accepting, close every socket with 1001, wait (bounded), stop the
//! engine.

use crate::cluster::Cluster;
use crate::config::EngineConfig;
use crate::engine::Engine;
use crate::engine::sequencer::{Local, Sequencer};
use crate::net::auth::Auth;
use crate::net::pace::{Pace, PacedIo};
use crate::net::session;
use crate::plugin::data;
use crate::plugin::hooks::Hooks;
use crate::protocol::PROTOCOL_VERSION;
use crate::store::Store;
use crate::store::postgres::{self, PgOptions, PgStore};
use crate::store::sqlite::{SqliteStore, StoreOptions};
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::json;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;
use tower_http::services::ServeDir;

#[derive(Clone)]
struct AppState {
    engine: Engine,
    shutdown: CancellationToken,
    sessions: TaskTracker,
    auth: Option<Auth>,
    allowed_origins: Arc<Vec<String>>,
    /// The port the server listens on: the default Origin allowlist is the loopback pages of this port.
    listen_port: u16,
}

/// The subprotocol a client may offer, and the prefix of the one that carries its token (`bearer.<jwt>`).
const SUBPROTOCOL: &str = "coworker.v1";
const TOKEN_PREFIX: &str = "bearer.";

/// Bytes tungstenite reads at a time per connection. Its 128 KiB default costs 1.3 GB for 10,000 idle sockets.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes buffered before tungstenite writes; a tick's frames for one connection go out in one write.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// The folder served at `/` (the web demo); `None` serves nothing there.
    pub web_root: Option<PathBuf>,
    pub engine: EngineConfig,
    /// How long shutdown waits for connections to close after sending them 1001.
    pub shutdown_grace: Duration,
    /// Where the database lives; `None` keeps it in memory (nothing survives a restart).
    pub data_dir: Option<PathBuf>,
    /// A `postgres://` URL: documents, schemas and the audit trail in that PostgreSQL database instead of SQLite
    /// under `data_dir`.
    pub database_url: Option<String>,
    /// Token verification; `None` is development mode (every caller trusted).
    pub auth: Option<Auth>,
    /// Origins allowed to open a WebSocket (exact match). Empty: the server's own origin, and localhost origins.
    pub allowed_origins: Vec<String>,
    /// Cluster mode: the NATS servers and this node's part (needs `database_url`). `None`: a single node.
    pub cluster: Option<crate::cluster::Settings>,
    /// Serve `/autobahn`, an echo endpoint on the production accept path and limits, for the conformance suite.
    pub autobahn_echo: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            web_root: None,
            engine: EngineConfig::default(),
            shutdown_grace: Duration::from_secs(3),
            data_dir: None,
            database_url: None,
            auth: None,
            allowed_origins: Vec::new(),
            cluster: None,
            autobahn_echo: false,
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, with the given plugins and operations (the data operations
/// and the schema validator are added to them). Opens the store first: a database that cannot be opened or
/// written is an error before anything is served.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    hooks: Hooks,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let backend = Backend::open(&config).await?;
    serve_with(listener, config, hooks, backend, shutdown).await
}

/// What a server is built from beyond its config: where finished runs and documents are kept, and what orders
/// each space's events.
#[derive(Debug, Clone)]
pub struct Backend {
    pub store: Arc<dyn Store>,
    pub sequencer: Arc<dyn Sequencer>,
}

impl Backend {
    /// The store the config names, and the single-node sequencer: PostgreSQL at `config.database_url`, or else
    /// the embedded SQLite in `config.data_dir` (a scratch database without one). Fails with a one-line reason when
    /// the URL is not a `postgres://` one or the database cannot be reached or set up.
    pub async fn open(config: &Config) -> std::io::Result<Backend> {
        if config.cluster.is_some() && config.database_url.is_none() {
            return Err(std::io::Error::other(
                "cluster mode needs a shared store: give --database-url (COWORKER_DATABASE_URL) a postgres:// URL",
            ));
        }
        let query_timeout = config.engine.limits.query_timeout;
        let store: Arc<dyn Store> = match &config.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let options = PgOptions { query_timeout, ..PgOptions::default() };
                let store = PgStore::open(url, options).await.map_err(std::io::Error::other)?;
                tracing::info!(url = %postgres::redacted(url), "store: PostgreSQL");
                Arc::new(store)
            }
            Some(url) => {
                return Err(std::io::Error::other(format!(
                    "--database-url must be a postgres:// URL, not {}",
                    postgres::redacted(url)
                )));
            }
            None => {
                let options = StoreOptions { query_timeout, ..StoreOptions::default() };
                let store = SqliteStore::open(config.data_dir.as_deref(), options).map_err(std::io::Error::other)?;
                match &config.data_dir {
                    Some(dir) => tracing::info!(path = %crate::store::sqlite::db_path(dir).display(), "store: SQLite"),
                    None => tracing::info!("store: SQLite, a scratch database"),
                }
                Arc::new(store)
            }
        };
        let sequencer: Arc<dyn Sequencer> = match &config.cluster {
            Some(settings) => Arc::new(Cluster::connect(settings.clone()).await.map_err(std::io::Error::other)?),
            None => Arc::new(Local),
        };
        Ok(Backend { store, sequencer })
    }
}

/// [`serve`] with the store and the sequencer given.
pub async fn serve_with(
    listener: TcpListener,
    config: Config,
    hooks: Hooks,
    backend: Backend,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let Backend { store, sequencer } = backend;
    let mut hooks = hooks;
    data::install(&mut hooks, store.clone(), config.auth.is_some(), config.engine.limits.max_output_bytes)
        .await
        .map_err(std::io::Error::other)?;
    let engine = Engine::with_sequencer(config.engine.clone(), hooks, store, sequencer);
    let state = AppState {
        engine: engine.clone(),
        shutdown: CancellationToken::new(),
        sessions: TaskTracker::new(),
        auth: config.auth.clone(),
        allowed_origins: Arc::new(config.allowed_origins.clone()),
        listen_port: listener.local_addr().map(|a| a.port()).unwrap_or(config.listen.port()),
    };
    let mut app =
        Router::new().route("/ws", get(ws_handler)).route("/healthz", get(healthz)).route("/metrics", get(metrics));
    if config.autobahn_echo {
        app = app.route("/autobahn", get(autobahn_echo));
    }
    if let Some(root) = &config.web_root {
        app = app.fallback_service(ServeDir::new(root));
    }
    let app = app.with_state(state.clone());
    tokio::spawn(upkeep(engine.clone(), state.shutdown.clone()));
    let limits = config.engine.limits.clone();
    // Logged once the store is open and the routes are built: a supervisor that sees this line can connect.
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, web_root = ?config.web_root, "listening; WebSocket at ws://{addr}/ws"),
        Err(e) => tracing::warn!(error = %e, "listening on an unknown address"),
    }
    accept_loop(listener, app, &state, &limits, shutdown).await;
    state.sessions.close();
    if tokio::time::timeout(config.shutdown_grace, state.sessions.wait()).await.is_err() {
        tracing::warn!("some connections did not close within the grace period");
    }
    engine.shutdown();
    Ok(())
}

/// Accepts connections until `shutdown`, each served by hyper with a deadline on the request head (a client that
/// sends half its headers is dropped) and a cap on open connections; then stops accepting, tells every WebSocket
/// session to close (1001) and lets plain HTTP connections finish.
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    state: &AppState,
    limits: &crate::config::Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let conns = TaskTracker::new();
    let pace_producers = state.engine.config().pace_producers;
    let http = {
        let mut b = hyper::server::conn::http1::Builder::new();
        b.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(limits.handshake_timeout);
        b
    };
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::pin!(shutdown);
    loop {
        let (tcp, _peer) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, most likely: wait a little rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if open.load(std::sync::atomic::Ordering::Relaxed) + state.sessions.len() >= limits.max_connections {
            tracing::warn!("connection limit reached; refusing a connection");
            tokio::spawn(refuse_full(tcp));
            continue;
        }
        let _ = tcp.set_nodelay(true);
        // With pacing on, the connection's pace reaches its WebSocket session through the upgrade request.
        let pace = pace_producers.then(Pace::new);
        let service = hyper_util::service::TowerToHyperService::new(app.clone().map_request({
            let pace = pace.clone();
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                if let Some(pace) = &pace {
                    req.extensions_mut().insert(pace.clone());
                }
                req
            }
        }));
        let io = hyper_util::rt::TokioIo::new(PacedIo::new(tcp, pace));
        let conn = http.serve_connection(io, service).with_upgrades();
        let (open, stop) = (open.clone(), state.shutdown.clone());
        open.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        conns.spawn(async move {
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            open.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        });
    }
    tracing::info!("shutting down: closing connections");
    drop(listener);
    state.shutdown.cancel();
    conns.close();
    // Requests in flight finish; a client still sending its request head is cut off by the handshake deadline.
    let _ = tokio::time::timeout(limits.handshake_timeout, conns.wait()).await;
}

/// Answers a connection past the cap with 503 and the `server_full` code, then closes it (bounded: a peer that does
/// not read gets nothing).
async fn refuse_full(mut tcp: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"code":"server_full","message":"too many connections"}"#;
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), tcp.write_all(response.as_bytes())).await;
}

/// Whether a browser page from `origin` may connect: an exact match of the allowlist, or (with no allowlist) a
/// loopback page (`localhost`, `127.0.0.1`, `[::1]`) on the port the server listens on. The request's `Host` is
/// not trusted: a DNS-rebinding page sends `Host` and `Origin` of its own domain, and that domain may resolve to
/// this machine. An Origin with userinfo, a path or anything but `http`/`https` is never allowed. No `Origin`
/// header means a non-browser client: authentication guards it.
fn origin_allowed(origin: &str, listen_port: u16, allowed: &[String]) -> bool {
    let Some((default_port, authority)) = origin_parts(origin) else { return false };
    if !allowed.is_empty() {
        return allowed.iter().any(|a| a == origin);
    }
    // The host, and the rest of the authority (empty, or `:port`).
    let (host, rest) = match authority.strip_prefix('[') {
        Some(v6) => match v6.find(']') {
            Some(end) => authority.split_at(end + 2),
            None => return false,
        },
        None => authority.split_at(authority.find(':').unwrap_or(authority.len())),
    };
    let port = match rest.strip_prefix(':') {
        Some(p) => p.parse::<u16>().ok(),
        None => rest.is_empty().then_some(default_port),
    };
    matches!(host.to_ascii_lowercase().as_str(), "localhost" | "127.0.0.1" | "[::1]") && port == Some(listen_port)
}

/// An `http`/`https` origin's default port and its authority, which must carry no userinfo, path, query or
/// fragment.
fn origin_parts(origin: &str) -> Option<(u16, &str)> {
    let (scheme, authority) = origin.split_once("://")?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    (!authority.is_empty() && !authority.contains(['@', '/', '?', '#', '\\'])).then_some((default_port, authority))
}

async fn ws_handler(
    ws: WebSocketUpgrade,
    headers: HeaderMap,
    pace: Option<Extension<Arc<Pace>>>,
    State(state): State<AppState>,
) -> Response {
    if let Some(origin) = headers.get(header::ORIGIN)
        && !origin.to_str().is_ok_and(|o| origin_allowed(o, state.listen_port, &state.allowed_origins))
    {
        tracing::info!(origin = ?origin, "refused a WebSocket from a foreign origin");
        return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
    }
    let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).and_then(|h| h.to_str().ok()).unwrap_or_default();
    let token = offered.split(',').map(str::trim).find_map(|p| p.strip_prefix(TOKEN_PREFIX));
    let caller = match (&state.auth, token) {
        (Some(auth), Some(token)) => match auth.verify(token) {
            Ok(c) => Some(c),
            Err(e) => return (StatusCode::UNAUTHORIZED, e.message).into_response(),
        },
        _ => None,
    };
    // Counted as a session from the upgrade request on, so that shutdown also waits for sessions still starting.
    let tracked = state.sessions.token();
    configure(ws, &state.engine.config().limits).protocols([SUBPROTOCOL]).on_upgrade(move |socket| {
        let AppState { engine, shutdown, auth, .. } = state;
        async move {
            let pace = pace.map(|Extension(p)| p);
            session::serve(socket, engine, shutdown.child_token(), auth, caller, pace).await;
            drop(tracked);
        }
    })
}

/// The WebSocket settings every endpoint uses: small buffers, the message size limit.
fn configure(ws: WebSocketUpgrade, limits: &crate::config::Limits) -> WebSocketUpgrade {
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        // No cap of tungstenite's own: a snapshot is one frame as large as the space's state, and a frame over
        // the cap would be refused and the connection dropped. What one connection may have waiting is bounded
        // before this buffer, by its reply queue and its subscriptions' pending slots.
        .max_write_buffer_size(usize::MAX)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
}

/// `/autobahn` (only with `--autobahn-echo`): echoes every text and binary message, through the same accept code
/// and WebSocket settings as `/ws`. A message over the limit closes with 1009 and invalid UTF-8 with 1007, as on
/// `/ws`.
async fn autobahn_echo(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    use axum::extract::ws::{CloseFrame, Message};
    configure(ws, &state.engine.config().limits).on_upgrade(|mut socket| async move {
        while let Some(msg) = socket.recv().await {
            let reply = match msg {
                Ok(m @ (Message::Text(_) | Message::Binary(_))) => m,
                Ok(_) => continue,
                Err(e) => {
                    if let Some((code, reason)) = session::transport::close_code_for(&e) {
                        let _ = socket.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        session::transport::drain_after_close(&mut socket).await;
                    }
                    break;
                }
            };
            if socket.send(reply).await.is_err() {
                break;
            }
        }
    })
}

/// Every few seconds: drains the metrics' histogram samples, and forgets the accounts of owners that hold nothing.
async fn upkeep(engine: Engine, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => {
                crate::telemetry::upkeep();
                engine.budgets().sweep();
            }
        }
    }
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let engine = &state.engine;
    let limits = &engine.config().limits;
    let gauges = crate::telemetry::Gauges {
        active_runs: engine.active_runs(),
        state_bytes: engine.budgets().state_bytes(),
        largest_run_bytes: engine.largest_run_bytes(),
        max_state_bytes: limits.max_state_bytes,
        max_owner_state_bytes: limits.max_owner_state_bytes,
        max_run_bytes: limits.max_run_bytes,
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::telemetry::render(gauges))
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    let budgets = state.engine.budgets();
    Json(json!({
        "status": if state.engine.health().is_err() {
            "degraded"
        } else if budgets.over_capacity() {
            "over_capacity"
        } else {
            "ok"
        },
        "replicated": state.engine.replicated(),
        "protocol": PROTOCOL_VERSION,
        "activeRuns": state.engine.active_runs(),
        "connections": state.sessions.len(),
        "spaces": state.engine.spaces(),
        "stateBytes": budgets.state_bytes(),
        "maxStateBytes": state.engine.config().limits.max_state_bytes,
    }))
}

#[cfg(test)]
mod tests {
    use super::origin_allowed;

    #[test]
    fn origins() {
        assert!(origin_allowed("http://127.0.0.1:8080", 8080, &[]));
        assert!(origin_allowed("http://localhost:8080", 8080, &[]));
        assert!(origin_allowed("http://LocalHost:8080", 8080, &[]));
        assert!(origin_allowed("http://[::1]:8080", 8080, &[]));
        assert!(origin_allowed("http://localhost", 80, &[]), "the scheme's default port");
        assert!(origin_allowed("https://localhost", 443, &[]));
        assert!(!origin_allowed("http://localhost:5173", 8080, &[]), "another port on this machine");
        assert!(!origin_allowed("http://evil.example:8080", 8080, &[]), "DNS rebinding: Host would say the same");
        assert!(!origin_allowed("http://localhost:1@evil.example", 8080, &[]), "userinfo");
        assert!(!origin_allowed("http://localhost:8080@evil.example:8080", 8080, &[]), "userinfo");
        assert!(!origin_allowed("http://localhost.evil.example:8080", 8080, &[]));
        assert!(!origin_allowed("http://localhost:8080/x", 8080, &[]));
        assert!(!origin_allowed("http://localhost:80800", 8080, &[]));
        assert!(!origin_allowed("http://[::1:8080", 8080, &[]));
        assert!(!origin_allowed("null", 8080, &[]));
        assert!(!origin_allowed("file://localhost:8080", 8080, &[]));
        let list = vec!["https://app.example".to_string()];
        assert!(origin_allowed("https://app.example", 8080, &list));
        assert!(!origin_allowed("http://localhost:8080", 8080, &list), "an allowlist replaces the default");
        let odd = vec!["https://a@app.example".to_string()];
        assert!(!origin_allowed("https://a@app.example", 8080, &odd), "userinfo, even when listed");
    }
}
