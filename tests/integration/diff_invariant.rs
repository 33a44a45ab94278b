//! The diff invariant, as a property: random runs, patches (valid and not; alone, batched through the coalescing
//! writer, and streamed by a producer the server may pace), completions, failures and subscriptions against a real
//! server with a 10 ms tick and a short linger, with pacing on or off. Every subscription applies its diffs
//! with the client's applier (standard ops through the `json-patch` crate), which rejects any diff whose `base`
//! is not the seq it is at; at the end each subscription's state must equal a fresh snapshot of the same views.

use crate::support::*;
use coworker::client::{Client, Subscription};
use coworker::config::EngineConfig;
use coworker::plugin::hooks::Hooks;
use proptest::prelude::*;
use serde_json::{Value, json};
use std::time::Duration;

const OPERATIONS: [&str; 6] = ["dialog", "interpret", "select", "update", "pipeline", "custom"];
const SPACES: [&str; 2] = ["default", "other"];
const VIEW_SETS: [Option<&[&str]>; 7] = [
    None,
    Some(&["activeAI"]),
    Some(&["activeDialogs", "isLoading"]),
    Some(&["activePipelines"]),
    Some(&["currentRun"]),
    Some(&["activeRuns", "activeAI", "activeDialogs"]),
    Some(&["activeDialogs", "activeAI"]),
];
const PATHS: [&str; 14] = [
    "output.value",
    "output.tokens",
    "/output/tokens",
    "output.text",
    "output.a.b",
    "steps[0].status",
    "/steps/1/name",
    "input.q",
    "currentStep",
    "output.list[0]",
    "/output/a~1b",
    "agent",
    "output",
    "steps[0]",
];

fn value(i: usize) -> Value {
    match i % 9 {
        0 => json!("x"),
        1 => json!("tok "),
        2 => json!(1),
        3 => json!({"k": [1, 2], "s": "v"}),
        4 => json!([1]),
        5 => Value::Null,
        6 => json!(true),
        7 => json!("ü\"\n\\"),
        _ => json!({"status": "running", "name": "n"}),
    }
}

#[derive(Debug, Clone)]
enum Op {
    Set(usize, usize),
    Append(usize, usize),
    Step(usize, usize),
    Remove(usize),
}

#[derive(Debug, Clone)]
enum Step {
    Start {
        op: usize,
        parent: Option<usize>,
        space: usize,
    },
    Patch {
        run: usize,
        ops: Vec<Op>,
        wait: bool,
    },
    Complete {
        run: usize,
        output: Option<usize>,
    },
    Fail {
        run: usize,
    },
    Subscribe {
        views: usize,
        space: usize,
    },
    /// Writes to several runs through the coalescing writer, not awaited: one `patches` frame per few ms.
    Batch {
        writes: Vec<(usize, Vec<Op>)>,
    },
    /// Answerless appends in a row from another connection: enough for the server to pace it (when pacing is on).
    Stream {
        run: usize,
        count: usize,
    },
    Yield,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PATHS.len(), 0..9usize).prop_map(|(p, v)| Op::Set(p, v)),
        (0..PATHS.len(), 0..9usize).prop_map(|(p, v)| Op::Append(p, v)),
        (0..3usize, 0..9usize).prop_map(|(i, v)| Op::Step(i, v)),
        (0..PATHS.len()).prop_map(Op::Remove),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0..OPERATIONS.len(), proptest::option::of(0..8usize), 0..2usize)
            .prop_map(|(op, parent, space)| Step::Start { op, parent, space }),
        6 => (0..8usize, proptest::collection::vec(op(), 1..4), any::<bool>())
            .prop_map(|(run, ops, wait)| Step::Patch { run, ops, wait }),
        1 => (0..8usize, proptest::option::of(0..9usize)).prop_map(|(run, output)| Step::Complete { run, output }),
        1 => (0..8usize).prop_map(|run| Step::Fail { run }),
        1 => (0..VIEW_SETS.len(), 0..2usize).prop_map(|(views, space)| Step::Subscribe { views, space }),
        2 => proptest::collection::vec((0..8usize, proptest::collection::vec(op(), 1..3)), 1..5)
            .prop_map(|writes| Step::Batch { writes }),
        1 => (0..8usize, 10..30usize).prop_map(|(run, count)| Step::Stream { run, count }),
        1 => Just(Step::Yield),
    ]
}

fn wire_op(op: &Op) -> Value {
    match op {
        Op::Set(p, v) => json!({"op": "set", "path": PATHS[*p], "value": value(*v)}),
        Op::Append(p, v) => json!({"op": "append", "path": PATHS[*p], "value": value(*v)}),
        Op::Step(i, v) => {
            json!({"op": "step", "index": i, "value": value(*v % 2 + 3).as_object().map_or(json!({"n": 1}), |_| json!({"status": "s", "n": v}))})
        }
        Op::Remove(p) => json!({"op": "remove", "path": PATHS[*p]}),
    }
}

struct Watch {
    views: usize,
    space: usize,
    sub: Subscription,
}

async fn check_case(steps: Vec<Step>, paced: bool) -> Result<(), String> {
    let config = EngineConfig {
        tick: Duration::from_millis(10),
        linger: Duration::from_millis(15),
        pace_producers: paced,
        ..EngineConfig::default()
    };
    let server = start_with(config, Hooks::default()).await;
    let producer = Client::connect(&server.url()).await.map_err(|e| e.to_string())?;
    let writer = producer.writer(Duration::from_millis(3));
    let streamer = Client::connect(&server.url()).await.map_err(|e| e.to_string())?;
    let watcher = Client::connect(&server.url()).await.map_err(|e| e.to_string())?;
    let mut watches = Vec::new();
    for (views, space) in [(0, 0), (1, 0), (3, 0), (0, 1), (4, 1)] {
        let sub = watcher.subscribe(SPACES[space], VIEW_SETS[views], false).await.map_err(|e| e.to_string())?;
        watches.push(Watch { views, space, sub });
    }
    let mut runs: Vec<String> = Vec::new();
    let pick = |runs: &[String], i: usize| runs.get(i % runs.len().max(1)).cloned();
    for step in steps {
        match step {
            Step::Start { op, parent, space } => {
                let mut run = json!({"operation": OPERATIONS[op]});
                if matches!(OPERATIONS[op], "select" | "update") {
                    // Data operations execute on the server and complete into currentRun.
                    run["doctype"] = json!("Task");
                    run["input"] = json!({"where": {}, "data": {"seen": true}});
                }
                match parent.and_then(|p| pick(&runs, p)) {
                    Some(p) => run["parentRun"] = json!(p),
                    None => run["space"] = json!(SPACES[space]),
                }
                if let Ok(ctx) = producer.run(run).await {
                    runs.push(ctx["id"].as_str().unwrap().to_string());
                }
            }
            Step::Patch { run, ops, wait } => {
                let Some(id) = pick(&runs, run) else { continue };
                let ops = Value::Array(ops.iter().map(wire_op).collect());
                if wait {
                    let _ = producer.patch(&id, ops).await;
                } else {
                    producer.patch_nowait(&id, ops).await.map_err(|e| e.to_string())?;
                }
            }
            Step::Complete { run, output } => {
                if let Some(id) = pick(&runs, run) {
                    let _ = producer.complete(&id, output.map(value)).await;
                }
            }
            Step::Fail { run } => {
                if let Some(id) = pick(&runs, run) {
                    let _ = producer.fail(&id, json!({"message": "failed on purpose"})).await;
                }
            }
            Step::Subscribe { views, space } => {
                let sub = watcher.subscribe(SPACES[space], VIEW_SETS[views], false).await.map_err(|e| e.to_string())?;
                watches.push(Watch { views, space, sub });
            }
            Step::Batch { writes } => {
                for (run, ops) in writes {
                    if let Some(id) = pick(&runs, run) {
                        drop(writer.patch(&id, &Value::Array(ops.iter().map(wire_op).collect())));
                    }
                }
            }
            Step::Stream { run, count } => {
                let Some(id) = pick(&runs, run) else { continue };
                for i in 0..count {
                    let ops = json!([{"op": "append", "path": "output.stream", "value": i}]);
                    streamer.patch_nowait(&id, ops).await.map_err(|e| e.to_string())?;
                }
            }
            Step::Yield => tokio::task::yield_now().await,
        }
        for w in &mut watches {
            w.sub.drain().map_err(|e| format!("subscription {} ({:?}): {e}", w.sub.sub, VIEW_SETS[w.views]))?;
        }
    }
    // Every producer request so far is applied once these round trips return (the writer's frames go out first).
    writer.flush().await.map_err(|e| e.to_string())?;
    for client in [&producer, &streamer] {
        client
            .request(json!({"type": "subscribe", "space": "default", "views": ["isLoading"]}))
            .await
            .map_err(|e| e.to_string())?;
    }
    for w in &mut watches {
        converge(&watcher, w).await?;
    }
    drop(server);
    Ok(())
}

/// Waits until the subscription's state equals a fresh snapshot of the same views. Failed runs may still be
/// expiring, so a fresh snapshot is retaken a few times; a subscription that applies a gapped or duplicated diff
/// fails at once.
async fn converge(client: &Client, w: &mut Watch) -> Result<(), String> {
    let label = format!("subscription {} on {} with {:?}", w.sub.sub, SPACES[w.space], VIEW_SETS[w.views]);
    let mut fresh_state = Value::Null;
    for _ in 0..20 {
        let fresh = client.subscribe(SPACES[w.space], VIEW_SETS[w.views], false).await.map_err(|e| e.to_string())?;
        fresh_state = fresh.state().clone();
        let seq = fresh.seq;
        fresh.unsubscribe().await.map_err(|e| e.to_string())?;
        let deadline = tokio::time::Instant::now() + Duration::from_millis(500);
        loop {
            w.sub.drain().map_err(|e| format!("{label}: {e}"))?;
            if *w.sub.state() == fresh_state {
                return Ok(());
            }
            if w.sub.seq >= seq {
                break; // Moved past the fresh snapshot: retake it.
            }
            match tokio::time::timeout_at(deadline, w.sub.next()).await {
                Ok(Some(Ok(_))) => {}
                Ok(Some(Err(e))) => return Err(format!("{label}: {e}")),
                Ok(None) => return Err(format!("{label}: connection closed")),
                Err(_) => break,
            }
        }
    }
    Err(format!("{label} never matched a fresh snapshot.\n local: {}\n fresh: {fresh_state}", w.sub.state()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_subscriber_state_equals_a_fresh_snapshot(steps in proptest::collection::vec(step(), 1..60), paced: bool) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let result = rt.block_on(check_case(steps, paced));
        prop_assert!(result.is_ok(), "{}", result.unwrap_err());
    }
}
