//! The `coworker` binary: reads flags and environment, binds, and serves until Ctrl-C or SIGTERM.

use clap::Parser;
use coworker::Config;
use coworker::config::{EngineConfig, Limits};
use coworker::net::auth::Auth;
use coworker::plugin::hooks::Hooks;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::TcpListener;

/// glibc's malloc spent a quarter of the ingress path in `_int_malloc`, `unlink_chunk` and `malloc_consolidate`
/// (perf, BENCHMARKS.md); mimalloc's per-thread free lists cut that.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

    /// Read a connection that keeps sending answerless writes (patch or patches without an id) once per tick,
    /// just before the flush, instead of as each message arrives: fewer wakeups, a longer latency tail.
    #[arg(long, env = "COWORKER_PACE_PRODUCERS")]
    pace_producers: bool,

    /// How long a failed run stays visible in activeRuns, in milliseconds.
    #[arg(long, env = "COWORKER_LINGER_MS", default_value_t = 3000)]
    linger_ms: u64,

    /// Largest WebSocket message accepted, in bytes; larger ones close the connection with 1009.
    #[arg(long, env = "COWORKER_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    max_message_bytes: usize,

    /// State bytes one run may hold (its JSON plus 80 bytes per value); a write past it gets run_too_large.
    #[arg(long, env = "COWORKER_MAX_RUN_BYTES", default_value_t = Limits::default().max_run_bytes)]
    max_run_bytes: usize,

    /// State bytes the live runs of one owner may hold together; past it quota_state_bytes.
    #[arg(long, env = "COWORKER_MAX_OWNER_STATE_BYTES", default_value_t = Limits::default().max_owner_state_bytes)]
    max_owner_state_bytes: usize,

    /// State bytes the whole server may hold; past it writes that grow state get over_capacity.
    /// Default: a quarter of the machine's memory.
    #[arg(long, env = "COWORKER_MAX_STATE_BYTES")]
    max_state_bytes: Option<usize>,

    /// Bytes of diffs and events one subscription may have waiting for a slow reader before it is resynced.
    #[arg(long, env = "COWORKER_MAX_PENDING_BYTES", default_value_t = Limits::default().max_pending_bytes)]
    max_pending_bytes: usize,

    /// Message bytes per second one connection may send (sustained; the burst is the same amount).
    #[arg(long, env = "COWORKER_MAX_BYTES_PER_SECOND", default_value_t = Limits::default().bytes_per_second)]
    max_bytes_per_second: u64,

    /// Directory of the database (coworker.db, SQLite in WAL mode): documents, schemas and the audit trail.
    #[arg(long, env = "COWORKER_DATA_DIR", default_value = "./data")]
    data_dir: PathBuf,

    /// A postgres:// URL: keep documents, schemas and the audit trail in that PostgreSQL database instead of
    /// SQLite under --data-dir.
    #[arg(long, env = "COWORKER_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// Cluster mode: NATS server URLs (comma-separated), whose JetStream orders every space's changes for all
    /// nodes. Needs --database-url (the nodes share one store).
    #[arg(long, env = "COWORKER_CLUSTER")]
    cluster: Option<String>,

    /// Cluster mode: a node writes a snapshot of a space it holds after this many log entries of it (or 10 s after
    /// the last, if anything changed). A node that takes a space reads the newest snapshot, then the log after it.
    #[arg(long, env = "COWORKER_CLUSTER_SNAPSHOT_EVERY", default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    cluster_snapshot_every: u64,

    /// This node's name in cluster mode (logs, NATS's connection list). Default: the host name and a random
    /// suffix.
    #[arg(long, env = "COWORKER_NODE_NAME")]
    node_name: Option<String>,

    /// Shared secret for HS256 tokens. With no key the server is in development mode (everyone trusted).
    #[arg(long, env = "COWORKER_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,

    /// PEM file with the RSA or EC public key for RS256/ES256 tokens.
    #[arg(long, env = "COWORKER_JWT_PUBLIC_KEY", conflicts_with = "jwt_secret")]
    jwt_public_key: Option<PathBuf>,

    /// Origin allowed to open a WebSocket (exact match; repeat the flag for more). Default: the server's own
    /// origin and localhost pages.
    #[arg(long = "allowed-origin", env = "COWORKER_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,

    /// Allow development mode (no authentication) on an address other than loopback. Anyone who can reach the
    /// port can then read and change every run.
    #[arg(long)]
    insecure_no_auth_on_public_address: bool,

    /// Serve /autobahn, an echo endpoint for the WebSocket conformance suite (scripts/autobahn.sh).
    #[arg(long, hide = true)]
    autobahn_echo: bool,

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
    let auth = match (&args.jwt_secret, &args.jwt_public_key) {
        (Some(secret), _) => Some(Auth::hs256(secret.as_bytes())),
        (None, Some(path)) => {
            match std::fs::read(path).map_err(|e| e.to_string()).and_then(|pem| Auth::public_pem(&pem)) {
                Ok(a) => Some(a),
                Err(e) => {
                    eprintln!("coworker: --jwt-public-key {}: {e}", path.display());
                    return ExitCode::FAILURE;
                }
            }
        }
        (None, None) => None,
    };
    if auth.is_none() && !args.listen.ip().is_loopback() && !args.insecure_no_auth_on_public_address {
        eprintln!(
            "coworker: refusing to listen on {} without authentication: set --jwt-secret or --jwt-public-key, \
             or pass --insecure-no-auth-on-public-address",
            args.listen
        );
        return ExitCode::FAILURE;
    }
    if auth.is_none() {
        tracing::warn!("development mode: no token key configured, every client is trusted");
    }
    let config = Config {
        auth,
        allowed_origins: args.allowed_origins.clone(),
        autobahn_echo: args.autobahn_echo,
        listen: args.listen,
        web_root: args.web_root.is_dir().then_some(args.web_root),
        engine: EngineConfig {
            tick: Duration::from_millis(args.tick_ms),
            linger: Duration::from_millis(args.linger_ms),
            pace_producers: args.pace_producers,
            limits: Limits {
                max_message_bytes: args.max_message_bytes,
                max_run_bytes: args.max_run_bytes,
                max_pending_bytes: args.max_pending_bytes,
                max_owner_state_bytes: args.max_owner_state_bytes,
                max_state_bytes: args.max_state_bytes.unwrap_or_else(coworker::config::default_max_state_bytes),
                bytes_per_second: args.max_bytes_per_second,
                byte_burst: args.max_bytes_per_second,
                ..Limits::default()
            },
        },
        data_dir: Some(args.data_dir),
        database_url: args.database_url,
        cluster: args.cluster.map(|urls| coworker::cluster::Settings {
            snapshot_every: args.cluster_snapshot_every,
            ..coworker::cluster::Settings::new(urls, args.node_name.unwrap_or_else(node_name))
        }),
        ..Config::default()
    };
    let limits = &config.engine.limits;
    tracing::info!(
        max_state_bytes = limits.max_state_bytes,
        from = if args.max_state_bytes.is_some() { "--max-state-bytes" } else { "a quarter of the machine's memory" },
        max_owner_state_bytes = limits.max_owner_state_bytes,
        max_run_bytes = limits.max_run_bytes,
        "state budgets"
    );
    // Each connection is a file descriptor: lift the soft limit to the hard one, and say what it allows.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if (n as usize) < config.engine.limits.max_connections + 64 => tracing::warn!(
            open_files = n,
            max_connections = config.engine.limits.max_connections,
            "the open-file limit allows fewer connections than max_connections; raise it (ulimit -Hn)"
        ),
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let shutdown = match shutdown_signal() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("coworker: cannot install the signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let listener = match TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("coworker: cannot listen on {}: {e}", config.listen);
            return ExitCode::FAILURE;
        }
    };
    match coworker::serve(listener, config, Hooks::default(), shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coworker: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The host name and a random suffix: distinct for every process on one host.
fn node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    let suffix = uuid::Uuid::now_v7().as_u64_pair().1 & 0xff_ffff;
    format!("{}-{suffix:06x}", if host.is_empty() { "coworker" } else { &host })
}

/// Installs the SIGINT (Ctrl-C) and SIGTERM handlers now (on unix) and returns a future that resolves on either. Installed before
/// the address is logged: a signal sent as soon as a supervisor sees the server listening must be a clean
/// shutdown, not the default action. (A handler installed on first poll left that window open.)
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
        Ok(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        })
    }
    // Not built or tested here (Linux only): elsewhere Ctrl-C is still registered on first poll, so the window
    // described above stays open on those platforms.
    #[cfg(not(unix))]
    {
        Ok(async {
            if tokio::signal::ctrl_c().await.is_err() {
                std::future::pending::<()>().await
            }
        })
    }
}
