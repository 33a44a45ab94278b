//! Patch apply time is flat: it depends neither on how many runs are active nor on how big the patched run is.
//!
//! Two groups, each measuring `Engine::patch` alone (from the registry lookup to the journal push):
//! - `patch_by_active_runs/append/N`: N live `interpret` runs in one space (N = 10, 1 000, 100 000); each iteration
//!   appends one short token to `output.tokens` of one of up to 8 runs spread over the space, round robin.
//! - `patch_by_run_size/{append,set}/K`: one live run whose `output.tokens` holds K tokens (K = 10, 10 000,
//!   1 000 000); `append` pushes one more token, `set` replaces `output.value` with a ~100-char string (a keystroke).
//!
//! How the runtime and the journal are handled, and why:
//! - `Engine::patch` is synchronous, but every change it makes is also pushed onto the space's journal, which only
//!   the space's ticker task empties, at most once per tick (16 ms). That task only runs while the tokio runtime
//!   is driven. Calling `patch` in a plain `b.iter` loop would never drive it: the tick's merged append would grow
//!   without bound (millions of tokens, all kept in memory and serialized by one giant flush at the end), which is
//!   not the state a server is ever in. So each benchmark uses `iter_custom` and works in batches of at most 256
//!   patches: the batch's ops are built untimed, only the `patch` calls are timed, and between batches the
//!   runtime is driven (`block_on` of two `yield_now`s: the first lets the timer driver fire the ticker's tick
//!   sleep, the second lets the woken ticker run). The journal therefore holds at most one tick of changes, as
//!   in a server, and the ticker's flush (which runs on this same current-thread runtime, only inside those
//!   untimed `block_on`s) never overlaps a timed section. Criterion plans iteration counts from the wall time of
//!   the whole routine, so the untimed work shortens the measurement, not the run time of the bench.
//! - A run created in the tick in progress has its changes dropped from the journal (its whole context is sent
//!   instead). The setup therefore waits a few ticks after creating and pre-filling runs, so that every measured
//!   patch takes the real path: journaled and compacted.
//! - Appends grow the array they measure. To keep "K tokens" true (and memory bounded) the tokens appended by a
//!   batch are removed again after it, untimed, by `remove` patches of at most 256 ops (the protocol's limit) on the
//!   last indexes. The journal then alternates merged appends and removals within a tick; each append still
//!   either starts a new journal entry or merges into the previous one, as it would while streaming.
//! - Batches are pre-built so that building paths and values (the protocol parser's work in a server) is not
//!   timed; dropping the ops inside `patch` is.
//!
//! When the binary runs without `--bench` (as `cargo test --all-targets` does), criterion runs each routine once;
//! the largest parameters are skipped then, to keep that quick in a debug build.
//!
//! Run with `cargo bench --bench patch`.

use coworker::engine::caller::Caller;
use coworker::model::context::RunId;
use coworker::model::patch::PatchOp;
use coworker::model::path::{Path, PathLimits};
use coworker::protocol::{self, ClientMsg, ParseLimits, RunSpec};
use coworker::store::sqlite::{SqliteStore, StoreOptions};
use coworker::{Engine, EngineConfig, Hooks};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::Value;
use std::cell::OnceCell;
use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// The server's allocator (see `src/main.rs`), so that allocation costs here are the server's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

static TRUSTED: std::sync::LazyLock<Caller> = std::sync::LazyLock::new(Caller::trusted);
/// The engine's defaults, without the per-owner run quotas (the setup starts 100,000 runs at once).
fn unlimited() -> EngineConfig {
    let limits = coworker::config::Limits {
        runs_per_second_per_owner: u32::MAX,
        run_burst_per_owner: u32::MAX,
        max_active_runs_per_owner: usize::MAX,
        ..Default::default()
    };
    EngineConfig { limits, ..EngineConfig::default() }
}

const LIMITS: PathLimits = PathLimits { max_bytes: 1024, max_depth: 32 };
/// Patches per timed batch; the runtime is driven between batches.
const BATCH: u64 = 256;
/// The protocol's `max_ops_per_patch` default, respected by the untimed set-up and clean-up patches too.
const MAX_OPS: usize = 256;
/// Runs appended to, round robin, in the active-runs group.
const TARGETS: usize = 8;
/// Tokens already in each target run of the active-runs group.
const BASE_TOKENS: usize = 10;

fn path(p: &str) -> Path {
    Path::parse(p, LIMITS).expect("a valid path")
}

fn token(i: usize) -> Value {
    Value::String(format!("tok{}", i % 100))
}

/// Whether criterion measures (`cargo bench`) rather than only checking that each routine runs (`cargo test`).
fn measuring() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// A current-thread runtime with an engine created inside it (creating a space spawns its ticker task). The
/// engine has the server's store, on an in-memory database: a patch never touches it, only `complete` does.
struct Fixture {
    rt: Runtime,
    engine: Engine,
}

impl Fixture {
    fn new() -> Fixture {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
        let engine = {
            let _guard = rt.enter();
            let store = SqliteStore::open(None, StoreOptions::default()).expect("an in-memory store");
            Engine::new(unlimited(), Hooks::default(), Arc::new(store))
        };
        Fixture { rt, engine }
    }

    /// Starts `n` live `interpret` runs in the default space.
    fn start_runs(&self, n: usize) -> Vec<RunId> {
        self.rt.block_on(async {
            let mut ids = Vec::with_capacity(n);
            for _ in 0..n {
                let spec = RunSpec { operation: "interpret".into(), ..RunSpec::default() };
                let ctx = self.engine.run(spec, &TRUSTED).await.expect("a live run starts");
                let id = ctx["id"].as_str().expect("a run id").parse().expect("a uuid");
                ids.push(id);
            }
            ids
        })
    }

    /// Sets `output.tokens` of `id` to `k` tokens.
    fn fill(&self, id: RunId, k: usize) {
        let tokens = Value::Array((0..k).map(token).collect());
        self.engine
            .patch(id, vec![PatchOp::set(path("output.tokens"), tokens)], &TRUSTED)
            .now()
            .expect("a single node answers at once")
            .expect("fill");
    }

    /// Lets the ticker flush everything journaled so far and start a new tick.
    fn settle(&self) {
        let tick = self.engine.config().tick;
        self.rt.block_on(async { tokio::time::sleep(tick * 3).await });
    }

    /// Lets the ticker run if its tick is due (see the top of the file).
    fn drive(&self) {
        self.rt.block_on(async {
            tokio::task::yield_now().await;
            tokio::task::yield_now().await;
        });
    }

    /// Removes the last `appended` tokens of a run whose `output.tokens` held `base` before them.
    fn truncate(&self, id: RunId, base: usize, appended: usize) {
        let indexes: Vec<usize> = (base..base + appended).rev().collect();
        for chunk in indexes.chunks(MAX_OPS) {
            let ops = chunk.iter().map(|i| PatchOp::remove(path(&format!("output.tokens[{i}]")))).collect();
            self.engine.patch(id, ops, &TRUSTED).now().expect("a single node answers at once").expect("truncate");
        }
    }

    /// Times `iters` single-op patches, in batches; `op(i)` builds the `i`th patch (run and op), untimed.
    /// `after(counts)` runs untimed after each batch, with how many patches each of `targets` received.
    fn time_patches(
        &self,
        iters: u64,
        targets: &[RunId],
        op: &mut dyn FnMut(u64) -> PatchOp,
        after: &mut dyn FnMut(&[usize]),
    ) -> Duration {
        self.time_batches(
            iters,
            targets,
            |i, id| (id, vec![op(i)]),
            |engine, (id, ops)| black_box(engine.patch(id, ops, &TRUSTED).now().expect("at once")).expect("patch"),
            after,
        )
    }

    /// Like [`Fixture::time_patches`], but from the wire: `text(i)` builds the `i`th `patch` message (untimed), and
    /// what is timed is the server's handling of it: `protocol::parse`, then `Engine::patch`.
    fn time_messages(
        &self,
        iters: u64,
        targets: &[RunId],
        text: &mut dyn FnMut(u64, RunId) -> String,
        after: &mut dyn FnMut(&[usize]),
    ) -> Duration {
        let limits = ParseLimits {
            path: LIMITS,
            max_ops_per_patch: MAX_OPS,
            max_patches_per_frame: 1024,
            max_ops_per_frame: 4096,
            max_json_depth: 64,
        };
        self.time_batches(
            iters,
            targets,
            text,
            |engine, text| {
                let Ok(ClientMsg::Patch { run, ops, .. }) = protocol::parse(&text, &limits) else {
                    panic!("not a valid patch: {text}");
                };
                black_box(engine.patch(run, ops, &TRUSTED).now().expect("at once")).expect("patch");
            },
            after,
        )
    }

    /// The batching both share: item `i` goes to `targets[i % len]` and is built by `build` (untimed); only
    /// `handle` is timed; the runtime is driven between batches.
    fn time_batches<T>(
        &self,
        iters: u64,
        targets: &[RunId],
        mut build: impl FnMut(u64, RunId) -> T,
        mut handle: impl FnMut(&Engine, T),
        after: &mut dyn FnMut(&[usize]),
    ) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0;
        let mut counts = vec![0; targets.len()];
        while done < iters {
            let n = (iters - done).min(BATCH);
            counts.iter_mut().for_each(|c| *c = 0);
            let batch: Vec<T> = (done..done + n)
                .map(|i| {
                    let t = i as usize % targets.len();
                    counts[t] += 1;
                    build(i, targets[t])
                })
                .collect();
            let start = Instant::now();
            for item in batch {
                handle(&self.engine, item);
            }
            total += start.elapsed();
            after(&counts);
            self.drive();
            done += n;
        }
        total
    }

    /// Completes `id` and returns its final `output`.
    fn finish(&self, id: RunId) -> Value {
        let finished =
            self.engine.complete(id, None, &TRUSTED).now().expect("a single node answers at once").expect("complete");
        finished.run["output"].clone()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.engine.shutdown();
    }
}

fn group_settings(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group.sample_size(20).warm_up_time(Duration::from_millis(700)).measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
}

/// The active-runs fixture: `n` live runs, and the few that are appended to (each holding [`BASE_TOKENS`] tokens).
fn active_runs(n: usize) -> (Fixture, Vec<RunId>) {
    let fx = Fixture::new();
    let ids = fx.start_runs(n);
    assert_eq!(fx.engine.active_runs(), n);
    let spread = TARGETS.min(n);
    let targets: Vec<RunId> = (0..spread).map(|i| ids[i * n / spread]).collect();
    for &id in &targets {
        fx.fill(id, BASE_TOKENS);
    }
    fx.settle();
    (fx, targets)
}

/// The run-size fixture: one live run whose `output.tokens` holds `k` tokens.
fn big_run(k: usize) -> (Fixture, RunId) {
    let fx = Fixture::new();
    let id = fx.start_runs(1)[0];
    fx.fill(id, k);
    fx.settle();
    (fx, id)
}

// Fixtures are built lazily, inside the first call of a benchmark's closure: criterion only calls it when the
// benchmark matches the command line's filter, so `cargo bench --bench patch -- set/` builds no 100 000-run space.

fn by_active_runs(c: &mut Criterion) {
    let mut group = c.benchmark_group("patch_by_active_runs");
    group_settings(&mut group);
    let sizes: &[usize] = if measuring() { &[10, 1_000, 100_000] } else { &[10, 1_000] };
    let tokens = path("output.tokens");
    for &n in sizes {
        let fixture = OnceCell::new();
        group.bench_with_input(BenchmarkId::new("append", n), &n, |b, &n| {
            let (fx, targets) = fixture.get_or_init(|| active_runs(n));
            b.iter_custom(|iters| {
                fx.time_patches(
                    iters,
                    targets,
                    &mut |i| PatchOp::append(tokens.clone(), token(i as usize)),
                    &mut |counts| {
                        for (&id, &m) in targets.iter().zip(counts) {
                            fx.truncate(id, BASE_TOKENS, m);
                        }
                    },
                )
            })
        });
        if let Some((fx, targets)) = fixture.get() {
            for &id in targets {
                let output = fx.finish(id);
                assert_eq!(output["tokens"].as_array().map(Vec::len), Some(BASE_TOKENS), "tokens restored");
            }
        }
    }
    group.finish();
}

fn by_run_size(c: &mut Criterion) {
    let mut group = c.benchmark_group("patch_by_run_size");
    group_settings(&mut group);
    let sizes: &[usize] = if measuring() { &[10, 10_000, 1_000_000] } else { &[10, 10_000] };
    let keystroke: String = "The quick brown fox jumps over the lazy dog; ".repeat(3)[..100].to_string();
    let tokens = path("output.tokens");
    let value = path("output.value");
    for &k in sizes {
        let fixture = OnceCell::new();
        group.bench_with_input(BenchmarkId::new("append", k), &k, |b, &k| {
            let (fx, id) = fixture.get_or_init(|| big_run(k));
            b.iter_custom(|iters| {
                fx.time_patches(
                    iters,
                    &[*id],
                    &mut |i| PatchOp::append(tokens.clone(), token(i as usize)),
                    &mut |counts| fx.truncate(*id, k, counts[0]),
                )
            })
        });
        if let Some((fx, _)) = fixture.get() {
            fx.settle();
        }
        group.bench_with_input(BenchmarkId::new("set", k), &k, |b, &k| {
            let (fx, id) = fixture.get_or_init(|| big_run(k));
            b.iter_custom(|iters| {
                fx.time_patches(
                    iters,
                    &[*id],
                    &mut |i| {
                        // A keystroke: the same ~100-char text with its last character changing.
                        let mut text = keystroke.clone();
                        text.pop();
                        text.push(char::from(b'a' + (i % 26) as u8));
                        PatchOp::set(value.clone(), Value::String(text))
                    },
                    &mut |_| {},
                )
            })
        });
        if let Some((fx, id)) = fixture.get() {
            let output = fx.finish(*id);
            assert_eq!(output["tokens"].as_array().map(Vec::len), Some(k), "tokens restored");
        }
    }
    group.finish();
}

/// Ingress from the wire text: one `append` token message, parsed and applied, spread round robin over every one of
/// N live runs (so that, as in a server streaming into many runs, each patch finds its run cold in the cache).
fn ingress(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingress_parse_and_patch");
    group_settings(&mut group);
    for n in [10, 1_000] {
        let fixture = OnceCell::new();
        group.bench_with_input(BenchmarkId::new("append", n), &n, |b, &n| {
            let (fx, ids) = fixture.get_or_init(|| {
                let fx = Fixture::new();
                let ids = fx.start_runs(n);
                for &id in &ids {
                    fx.fill(id, BASE_TOKENS);
                }
                fx.settle();
                (fx, ids)
            });
            b.iter_custom(|iters| {
                fx.time_messages(
                    iters,
                    ids,
                    &mut |i, run| {
                        format!(
                            r#"{{"type":"patch","run":"{run}","ops":[{{"op":"append","path":"output.tokens","value":"{i}:1764500000000000"}}]}}"#
                        )
                    },
                    &mut |counts| {
                        for (&id, &m) in ids.iter().zip(counts) {
                            if m > 0 {
                                fx.truncate(id, BASE_TOKENS, m);
                            }
                        }
                    },
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, by_active_runs, by_run_size, ingress);
criterion_main!(benches);
