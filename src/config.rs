//! Every tunable number in one place, with its default. Nothing else in the crate invents a limit.

use std::time::Duration;

/// Limits on what one client can make the server hold or do. protocol.md lists each with its default.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest WebSocket message accepted (bytes); larger ones close the connection with 1009.
    pub max_message_bytes: usize,
    /// Ops in one `patch`, and in one element of a `patches` frame.
    pub max_ops_per_patch: usize,
    /// Elements (one run's ops each) in one `patches` frame.
    pub max_patches_per_frame: usize,
    /// Ops in all the elements of one `patches` frame together.
    pub max_ops_per_frame: usize,
    /// Bytes in one patch path.
    pub max_path_bytes: usize,
    /// Segments in one patch path.
    pub max_path_depth: usize,
    /// Nesting of arrays and objects in one message.
    pub max_json_depth: usize,
    /// Bytes a subscription may have waiting (merged diffs and events) before it is resynced with a snapshot.
    pub max_pending_bytes: usize,
    /// Replies and errors queued for one connection's writer before its reader waits.
    pub reply_queue: usize,
    /// Spaces that may exist at once.
    pub max_spaces: usize,
    /// Spaces one owner may have created that still exist (a space is reclaimed once it holds no run and no
    /// subscriber and its resume history has aged out).
    pub max_spaces_per_owner: usize,
    /// How many finished run ids are remembered, so that late patches get `run_finished` rather than `unknown_run`.
    pub finished_memory: usize,
    /// Messages per second one connection may send, sustained (token bucket).
    pub messages_per_second: u32,
    /// Messages one connection may send at once (the bucket's size).
    pub message_burst: u32,
    /// How often the server pings an idle connection.
    pub ping_interval: Duration,
    /// A connection from which nothing (not even a pong) arrives for this long is closed (4000).
    pub idle_timeout: Duration,
    /// A connection whose socket accepts no bytes for this long while the server has frames for it is closed.
    pub write_timeout: Duration,
    /// With authentication on, a connection that has not sent a valid token within this time is closed (4001).
    pub auth_timeout: Duration,
    /// After its token expires, a connection has this long to send a fresh `hello` before it is closed (4002).
    pub token_grace: Duration,
    /// Runs one owner may start per second, sustained (token bucket).
    pub runs_per_second_per_owner: u32,
    /// Runs one owner may start at once (the bucket's size).
    pub run_burst_per_owner: u32,
    /// Runs of one owner that may be active at once.
    pub max_active_runs_per_owner: usize,
    /// Subscriptions one connection may hold.
    pub max_subscriptions_per_connection: usize,
    /// Distinct view sets among one connection's subscriptions (each is rendered apart).
    pub max_view_sets_per_connection: usize,
    /// Distinct view sets one space renders (those of its subscribers, and of the last minute's).
    pub max_view_sets_per_space: usize,
    /// Authenticated connections one owner may hold.
    pub max_connections_per_owner: usize,
    /// Connections (HTTP and WebSocket) open at once; more are refused at accept.
    pub max_connections: usize,
    /// A client that has not sent its complete HTTP request head within this time is disconnected.
    pub handshake_timeout: Duration,
    /// After a producer's connection drops, its live runs wait this long for it (or any connection allowed to)
    /// to change them again; then they fail with `producer_lost`.
    pub producer_grace: Duration,
    /// State bytes ([`crate::model::size`]) one run may hold: a write that would take it past this is refused whole
    /// (`run_too_large`).
    pub max_run_bytes: usize,
    /// State bytes the live runs of one owner may hold together (`quota_state_bytes`).
    pub max_owner_state_bytes: usize,
    /// State bytes the whole server may hold: every live run, and each space's `currentRun` (`over_capacity`).
    pub max_state_bytes: usize,
    /// Message payload bytes per second one connection may send, sustained (token bucket).
    pub bytes_per_second: u64,
    /// Payload bytes one connection may send at once (the bucket's size).
    pub byte_burst: u64,
    /// Bytes of rendered diffs the resume histories of all spaces hold together.
    pub max_history_bytes: usize,
    /// Bytes of diffs and events one connection's subscriptions may have waiting together; past it, the
    /// subscription that would add more is resynced, as with `max_pending_bytes`.
    pub max_connection_pending_bytes: usize,
    /// Bytes of replies and errors queued for one connection's writer; past it the server stops reading the
    /// connection until the writer has written some.
    pub max_reply_bytes: usize,
    /// Runs with a server-side operation (data operations included) one connection may have executing at once;
    /// past it the server stops reading the connection until one ends.
    pub max_operations_per_connection: usize,
    /// Bytes of documents one data operation's output carries at most (`select`'s rows, the documents an
    /// `update` or `delete` changed); a longer output is cut and says so (`meta.truncated`).
    pub max_output_bytes: usize,
    /// The longest one store statement may run before it is interrupted (`query_timeout`).
    pub query_timeout: Duration,
}

/// A quarter of the machine's memory (`MemTotal` in /proc/meminfo), or 1 GiB where that cannot be read: the
/// default server state budget. The rest is for what the budget does not count (buffers of connections and
/// subscriptions, resume history, the allocator's slack) and for the rest of the machine.
pub fn default_max_state_bytes() -> usize {
    static DEFAULT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *DEFAULT.get_or_init(|| {
        let total_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
            m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.trim().strip_suffix("kB")?.trim().parse::<usize>().ok())
        });
        total_kib.map_or(1 << 30, |kib| kib * 1024 / 4)
    })
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 64 * 1024,
            max_ops_per_patch: 256,
            max_patches_per_frame: 1024,
            max_ops_per_frame: 4096,
            max_path_bytes: 1024,
            max_path_depth: 32,
            max_json_depth: 64,
            max_pending_bytes: 1024 * 1024,
            reply_queue: 256,
            max_spaces: 10_000,
            max_spaces_per_owner: 1_000,
            finished_memory: 100_000,
            messages_per_second: 10_000,
            message_burst: 5_000,
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
            token_grace: Duration::from_secs(30),
            producer_grace: Duration::from_secs(30),
            runs_per_second_per_owner: 1_000,
            run_burst_per_owner: 10_000,
            max_active_runs_per_owner: 100_000,
            max_subscriptions_per_connection: 64,
            max_view_sets_per_connection: 8,
            max_view_sets_per_space: 16,
            max_connections_per_owner: 1_000,
            max_connections: 16_384,
            handshake_timeout: Duration::from_secs(10),
            max_run_bytes: 16 << 20,
            max_owner_state_bytes: 256 << 20,
            max_state_bytes: default_max_state_bytes(),
            bytes_per_second: 64 << 20,
            byte_burst: 64 << 20,
            max_history_bytes: 256 << 20,
            max_connection_pending_bytes: 8 << 20,
            max_reply_bytes: 8 << 20,
            max_operations_per_connection: 16,
            max_output_bytes: 1 << 20,
            query_timeout: Duration::from_secs(2),
        }
    }
}

/// Engine timing and limits.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The coalescing interval: at most one diff frame per subscription per tick.
    pub tick: Duration,
    /// How long a failed run stays visible in `activeRuns`.
    pub linger: Duration,
    /// Read a connection that keeps sending answerless writes once per tick instead of as its messages arrive
    /// (`net::pace`). Off by default: BENCHMARKS.md, "Paced producers", has what it saves and what it costs.
    pub pace_producers: bool,
    pub limits: Limits,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            tick: Duration::from_millis(16),
            linger: Duration::from_millis(3000),
            pace_producers: false,
            limits: Limits::default(),
        }
    }
}
