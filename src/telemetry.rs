//! Prometheus metrics: one process-wide recorder, the metric names (documented in protocol.md, "Metrics"), and
//! cached handles for the hot paths so recording is an atomic update, not a registry lookup.

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::{LazyLock, OnceLock};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the recorder (once per process) and returns the handle that renders `/metrics`.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let buckets =
                [1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 0.1];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
                .expect("buckets are not empty")
                .build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("another metrics recorder is installed; /metrics will be empty");
            }
            handle
        })
        .clone()
}

pub static CONNECTIONS: LazyLock<Gauge> = LazyLock::new(|| gauge!("coworker_connections"));
pub static SUBSCRIPTIONS: LazyLock<Gauge> = LazyLock::new(|| gauge!("coworker_subscriptions"));
pub static SPACES: LazyLock<Gauge> = LazyLock::new(|| gauge!("coworker_spaces"));
pub static FRAMES_SENT: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_frames_sent_total"));
pub static BYTES_SENT: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_bytes_sent_total"));
/// Diff payloads serialized: one per view set with changes per tick, however many subscribers share it.
pub static DIFFS_RENDERED: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_diffs_rendered_total"));
pub static DIFFS_MERGED: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_diffs_merged_total"));
pub static RESYNCS: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_resyncs_total"));
/// States rendered for snapshots: one per view set and seq, however many subscribers get it.
pub static SNAPSHOTS_RENDERED: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_snapshots_rendered_total"));
/// Cluster mode: from an entry's publish (the sender's clock) to its apply on this node.
pub static ENTRY_LAG_SECONDS: LazyLock<Histogram> = LazyLock::new(|| histogram!("coworker_cluster_entry_lag_seconds"));
/// Cluster mode: entries this node published, and entries it applied (its own and other nodes').
pub static ENTRIES_PUBLISHED: LazyLock<Counter> =
    LazyLock::new(|| counter!("coworker_cluster_entries_published_total"));
pub static ENTRIES_APPLIED: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_cluster_entries_applied_total"));
/// Cluster mode: snapshots written, spaces taken from a snapshot, and entries applied while catching up.
pub static SNAPSHOTS_WRITTEN: LazyLock<Counter> =
    LazyLock::new(|| counter!("coworker_cluster_snapshots_written_total"));
pub static SNAPSHOTS_LOADED: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_cluster_snapshots_loaded_total"));
pub static CATCH_UP_ENTRIES: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_cluster_catch_up_entries_total"));
pub static PACED_CONNECTIONS: LazyLock<Gauge> = LazyLock::new(|| gauge!("coworker_paced_connections"));
pub static SLOW_CLOSES: LazyLock<Counter> = LazyLock::new(|| counter!("coworker_slow_subscriber_closes_total"));
pub static PATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| histogram!("coworker_patch_seconds"));
pub static FLUSH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| histogram!("coworker_flush_seconds"));

/// Patches timed for `coworker_patch_seconds`: one in this many, per thread (timing every one would cost more
/// than a tenth of the patch itself).
pub const PATCH_SAMPLE: u32 = 64;

/// Whether to time this patch.
pub fn sample_patch() -> bool {
    thread_local!(static N: std::cell::Cell<u32> = const { std::cell::Cell::new(0) });
    N.with(|n| {
        let v = n.get().wrapping_add(1);
        n.set(v);
        v % PATCH_SAMPLE == 0
    })
}

/// Counts a write refused by a memory budget or a rate limit, by code.
pub fn refusal(code: crate::error::ErrorCode) {
    counter!("coworker_refusals_total", "code" => code.as_str()).increment(1);
}

/// Counts an error sent to a client, by code.
pub fn error(code: crate::error::ErrorCode) {
    counter!("coworker_errors_total", "code" => code.as_str()).increment(1);
}

/// Drains histogram samples into their buckets. The exporter keeps raw samples until then, so without this a server
/// that is never scraped would hold every patch's sample in memory: call it every few seconds.
pub fn upkeep() {
    install().run_upkeep();
}

/// The gauges computed at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct Gauges {
    pub active_runs: usize,
    pub state_bytes: usize,
    pub largest_run_bytes: usize,
    pub max_state_bytes: usize,
    pub max_owner_state_bytes: usize,
    pub max_run_bytes: usize,
}

/// Sets the gauges computed at scrape time and renders the text format.
pub fn render(g: Gauges) -> String {
    let handle = install();
    gauge!("coworker_active_runs").set(g.active_runs as f64);
    gauge!("coworker_state_bytes").set(g.state_bytes as f64);
    gauge!("coworker_largest_run_bytes").set(g.largest_run_bytes as f64);
    gauge!("coworker_max_state_bytes").set(g.max_state_bytes as f64);
    gauge!("coworker_max_owner_state_bytes").set(g.max_owner_state_bytes as f64);
    gauge!("coworker_max_run_bytes").set(g.max_run_bytes as f64);
    handle.render()
}
