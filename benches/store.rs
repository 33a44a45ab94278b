//! The two store backends, side by side.
//!
//! `durable_completions`: the audit record of a finished run, durable when the future resolves, by group commit
//! (every record waiting in the queue in one transaction: SQLite commits them with `synchronous=FULL`, PostgreSQL
//! inserts them with one multi-row statement) against one transaction per record. Each iteration submits
//! `IN_FLIGHT` records at once, as many concurrent completions would, and waits until all are durable. SQLite's
//! database is a real file in a temporary directory on the machine's disk; PostgreSQL's is a database of its own on
//! the server `COWORKER_TEST_DATABASE_URL` names (`scripts/postgres.sh` provides one), dropped at the end.
//!
//! `newest_runs_of_an_owner`: a `select` of the newest 50 runs of one owner (of 100) from a trail of 1,000,000
//! runs (1,000 when the benches only run once as tests).

use coworker::store::postgres::{PgOptions, PgStore, TestDatabase};
use coworker::store::sqlite::{SqliteStore, StoreOptions};
use coworker::store::{Paging, RunQuery, Store};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const IN_FLIGHT: u64 = 256;

fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn record(n: u64) -> Arc<Map<String, Value>> {
    let v = json!({
        "id": format!("00000000-0000-7000-8000-{n:012}"),
        "timestamp": 1_795_000_000_000u64 + n,
        "operation": "interpret",
        "owner": format!("owner-{}", n % 100),
        "status": "completed",
        "output": {"tokens": ["a", "few", "tokens", "of", "output"]},
        "success": true,
        "duration": 12
    });
    Arc::new(v.as_object().unwrap().clone())
}

/// A store of each backend, with the given group-commit batch.
async fn stores(max_batch: usize) -> (Vec<(&'static str, Arc<dyn Store>)>, tempfile::TempDir, TestDatabase) {
    let dir = tempfile::tempdir_in(std::env::current_dir().unwrap()).unwrap();
    let sqlite = SqliteStore::open(Some(dir.path()), StoreOptions { max_batch, ..StoreOptions::default() }).unwrap();
    let db = TestDatabase::create().await;
    let pg = PgStore::open(&db.url, PgOptions { max_batch, ..PgOptions::default() }).await.unwrap();
    (vec![("sqlite", Arc::new(sqlite)), ("postgres", Arc::new(pg))], dir, db)
}

fn durable_completions(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut group = c.benchmark_group("durable_completions");
    group.throughput(Throughput::Elements(IN_FLIGHT));
    group.sample_size(10).measurement_time(Duration::from_secs(8)).warm_up_time(Duration::from_secs(1));
    for (label, max_batch) in [("group_commit", 1024), ("commit_per_run", 1)] {
        let (stores, _dir, db) = rt.block_on(stores(max_batch));
        for (backend, store) in &stores {
            let next = AtomicU64::new(0);
            group.bench_function(format!("{backend}/{label}"), |b| {
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
        drop(stores);
        rt.block_on(db.drop_now());
    }
    group.finish();
}

fn newest_runs_of_an_owner(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let mut group = c.benchmark_group("newest_runs_of_an_owner");
    group.sample_size(50);
    let trail: u64 = if measuring() { 1_000_000 } else { 1_000 };
    let (stores, _dir, db) = rt.block_on(stores(1024));
    for (backend, store) in &stores {
        rt.block_on(async {
            for chunk in (0..trail).collect::<Vec<_>>().chunks(10_000) {
                let futs: Vec<_> = chunk.iter().map(|&n| store.append(record(n))).collect();
                for f in futs {
                    f.await.unwrap();
                }
            }
        });
        let query = RunQuery {
            filter: vec![],
            owner: Some("owner-7".into()),
            order: vec![],
            paging: Paging { take: 50, skip: 0, max_bytes: 1 << 20 },
        };
        group.bench_function(format!("{backend}/{trail}"), |b| {
            b.to_async(&rt).iter(|| async {
                let page = store.runs(query.clone()).await.unwrap();
                assert_eq!(page.docs.len() as u64, (trail / 100).min(50));
            })
        });
    }
    drop(stores);
    rt.block_on(db.drop_now());
    group.finish();
}

criterion_group!(benches, durable_completions, newest_runs_of_an_owner);
criterion_main!(benches);
