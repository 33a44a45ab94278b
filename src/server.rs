//! The HTTP side: binds the routes (`/ws`, `/healthz`, the web demo at `/`), configures the WebSocket limits, tracks
//! every session, and shuts down in order: stop accepting, close every socket with 1001, wait (bounded), stop the
//! engine.

use crate::config::Config;
use crate::data;
use crate::engine::Engine;
use crate::hooks::Hooks;
use crate::protocol::PROTOCOL_VERSION;
use crate::session;
use crate::store::{SqliteStore, Store, StoreOptions};
use axum::Router;
use axum::extract::State;
use axum::extract::ws::WebSocketUpgrade;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::services::ServeDir;

#[derive(Clone)]
struct AppState {
    engine: Engine,
    shutdown: CancellationToken,
    sessions: TaskTracker,
}

/// Bytes tungstenite reads at a time per connection. Its 128 KiB default costs 1.3 GB for 10,000 idle sockets.
const READ_BUFFER_BYTES: usize = 4 * 1024;
/// Bytes buffered before tungstenite writes; a tick's frames for one connection go out in one write.
const WRITE_BUFFER_BYTES: usize = 64 * 1024;

/// Serves on `listener` until `shutdown` resolves, with the given plugins and operations (the data operations
/// and the schema validator are added to them). Opens the store first: a database that cannot be opened or
/// written is an error before anything is served.
pub async fn serve(
    listener: TcpListener,
    config: Config,
    hooks: Hooks,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let store: Arc<dyn Store> = Arc::new(
        SqliteStore::open(config.data_dir.as_deref(), StoreOptions::default()).map_err(std::io::Error::other)?,
    );
    let mut hooks = hooks;
    data::install(&mut hooks, store.clone()).await.map_err(std::io::Error::other)?;
    let engine = Engine::new(config.engine.clone(), hooks, store);
    let state = AppState { engine: engine.clone(), shutdown: CancellationToken::new(), sessions: TaskTracker::new() };
    let mut app = Router::new().route("/ws", get(ws_handler)).route("/healthz", get(healthz));
    if let Some(root) = &config.web_root {
        app = app.fallback_service(ServeDir::new(root));
    }
    let app = app.with_state(state.clone());
    let token = state.shutdown.clone();
    let stop = async move {
        shutdown.await;
        tracing::info!("shutting down: closing connections");
        token.cancel();
    };
    axum::serve(listener, app).with_graceful_shutdown(stop).await?;
    state.sessions.close();
    if tokio::time::timeout(config.shutdown_grace, state.sessions.wait()).await.is_err() {
        tracing::warn!("some connections did not close within the grace period");
    }
    engine.shutdown();
    Ok(())
}

async fn ws_handler(ws: WebSocketUpgrade, State(state): State<AppState>) -> impl IntoResponse {
    let limits = &state.engine.config().limits;
    ws.read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(limits.max_pending_bytes * 4 + WRITE_BUFFER_BYTES)
        .max_message_size(limits.max_message_bytes)
        .max_frame_size(limits.max_message_bytes)
        .on_upgrade(move |socket| {
            let AppState { engine, shutdown, sessions } = state;
            sessions.track_future(session::serve(socket, engine, shutdown.child_token()))
        })
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    Json(json!({
        "status": "ok",
        "protocol": PROTOCOL_VERSION,
        "activeRuns": state.engine.active_runs(),
        "connections": state.sessions.len(),
    }))
}
