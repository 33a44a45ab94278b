//! The `coworker` binary: reads flags and environment, binds, and serves until Ctrl-C or SIGTERM.

use clap::Parser;
use coworker::config::{Config, EngineConfig, Limits};
use coworker::hooks::Hooks;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;

/// Coworker: a WebSocket server for live run state. Serves /ws, /healthz and the web demo at /.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the bound address is logged.
    #[arg(long, env = "COWORKER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Coalescing interval in milliseconds: each subscription gets at most one diff frame per tick.
    #[arg(long, env = "COWORKER_TICK_MS", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    tick_ms: u64,

    /// How long a failed run stays visible in activeRuns, in milliseconds.
    #[arg(long, env = "COWORKER_LINGER_MS", default_value_t = 3000)]
    linger_ms: u64,

    /// Largest WebSocket message accepted, in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "COWORKER_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    max_message_bytes: usize,

    /// Directory of the database (coworker.db, SQLite in WAL mode): documents, schemas and the audit trail.
    #[arg(long, env = "COWORKER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// Folder served at / (the web demo). Nothing is served there if it does not exist.
    #[arg(long, env = "COWORKER_WEB_ROOT", default_value = "web-demo")]
    web_root: PathBuf,
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,tower_http=warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let args = Args::parse();
    let config = Config {
        listen: args.listen,
        web_root: args.web_root.is_dir().then_some(args.web_root),
        engine: EngineConfig {
            tick: Duration::from_millis(args.tick_ms),
            linger: Duration::from_millis(args.linger_ms),
            limits: Limits { max_message_bytes: args.max_message_bytes, ..Limits::default() },
        },
        data_dir: Some(args.data_dir),
        ..Config::default()
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("coworker: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match listener.local_addr() {
        Ok(addr) => tracing::info!(%addr, web_root = ?config.web_root, "listening; WebSocket at ws://{addr}/ws"),
        Err(e) => tracing::warn!(error = %e, "listening on an unknown address"),
    }
    match coworker::serve(listener, config, Hooks::default(), shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coworker: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
