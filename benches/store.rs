//! Durable completions per second: the audit record of a finished run, committed with `synchronous=FULL`, by
//! group commit (every record waiting in the queue in one transaction) against one transaction, so one fsync, per
//! record. Each iteration submits `IN_FLIGHT` records at once, as many concurrent completions would, and waits until
//! all are durable. The database is a real file in a temporary directory on the machine's disk.

use coworker::store::AuditTrail;
use coworker::store::sqlite::{SqliteStore, StoreOptions};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const IN_FLIGHT: u64 = 256;

fn record(n: u64) -> Arc<Map<String, Value>> {
    let v = json!({
        "id": format!("00000000-0000-7000-8000-{n:012}"),
        "timestamp": 1_795_000_000_000u64 + n,
        "operation": "interpret",
        "owner": "bench",
        "status": "completed",
        "output": {"tokens": ["a", "few", "tokens", "of", "output"]},
        "success": true,
        "duration": 12
    });
    Arc::new(v.as_object().unwrap().clone())
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut group = c.benchmark_group("durable_completions");
    group.throughput(Throughput::Elements(IN_FLIGHT));
    group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for (label, max_batch) in [("group_commit", 1024), ("fsync_per_run", 1)] {
        let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
        let store = SqliteStore::open(Some(dir.path()), StoreOptions { max_batch, ..StoreOptions::default() }).unwrap();
        let next = AtomicU64::new(0);
        group.bench_function(label, |b| {
            b.to_async(&rt).iter(|| {
                let futs: Vec<_> =
                    (0..IN_FLIGHT).map(|_| store.append(record(next.fetch_add(1, Ordering::Relaxed)))).collect();
                async move {
                    for f in futs {
                        f.await.unwrap();
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
