//! A space's state is a function of its event log. A property test applies one random log to two fresh models
//! (one of them through the event encoding) and finds them equal, snapshots included. A live server under a mixed
//! load records its log; replayed into a fresh model, it gives the server's own fresh snapshot.

use crate::support::*;
use coworker::Config;
use coworker::client::Client;
use coworker::config::{EngineConfig, Limits};
use coworker::engine::sequencer::{Local, Recording};
use coworker::feed::render_state;
use coworker::model::context::{ProducerId, RunId, Status};
use coworker::model::patch::PatchOp;
use coworker::model::path::{Path, PathLimits};
use coworker::model::size::Budget;
use coworker::plugin::hooks::Hooks;
use coworker::space::event::{Allowance, End, SpaceEvent};
use coworker::space::model::{Rules, SpaceModel};
use coworker::space::views::ViewSet;
use proptest::prelude::*;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::time::Duration;

fn ctx(id: RunId, operation: &str, status: Status) -> Map<String, Value> {
    let v = json!({
        "id": id.to_string(), "timestamp": 5, "operation": operation, "doctype": null, "flow": null, "input": null,
        "options": {}, "owner": "ann", "agent": null, "parentRun": null, "steps": [], "space": "s",
        "status": status.as_str(), "output": null, "error": null, "success": false, "duration": 0,
    });
    v.as_object().unwrap().clone()
}

fn op() -> impl Strategy<Value = PatchOp> {
    let path = prop::sample::select(vec!["output", "output.t", "output.n", "steps[0]", "input.a.b", "flow"]);
    let value = prop_oneof![Just(json!("tok")), Just(json!(7)), Just(json!({"k": [1]})), Just(json!(null))];
    let limits = PathLimits { max_bytes: 64, max_depth: 8 };
    (0..4u8, path, value, 0..3usize).prop_map(move |(kind, p, v, i)| {
        let p = Path::parse(p, limits).unwrap();
        match kind {
            0 => PatchOp::set(p, v),
            1 => PatchOp::append(p, v),
            2 => PatchOp::step(i, Map::from_iter([("s".to_string(), v)])),
            _ => PatchOp::remove(p),
        }
    })
}

fn event() -> impl Strategy<Value = SpaceEvent> {
    let run = (1..7u128).prop_map(RunId::from_u128);
    let producer = (1..3u64).prop_map(|c| ProducerId { node: 1, connection: c });
    let operation = prop::sample::select(vec!["dialog", "interpret", "select", "task"]);
    let at = 5..2000u64;
    prop_oneof![
        4 => (run.clone(), operation, prop::option::of(run.clone()), prop::option::of(producer.clone())).prop_map(
            |(id, op, parent, producer)| {
                let status = if op == "select" { Status::Pending } else { Status::Running };
                SpaceEvent::RunStarted { id, timestamp: 5, parent, status, ctx: ctx(id, op, status), producer }
            }
        ),
        6 => (run.clone(), prop::collection::vec(op(), 0..4), prop::option::of(producer.clone()), 0..4000u64)
            .prop_map(|(run, ops, producer, bytes)| {
                let allowance = Allowance { bytes, budget: Budget::Owner };
                SpaceEvent::Patched { run, ops, producer, allowance }
            }),
        2 => (run.clone(), at.clone()).prop_map(|(run, at_ms)| SpaceEvent::Finished {
            run, end: End::Completed { output: Some(json!(at_ms)) }, at_ms
        }),
        2 => (run.clone(), at.clone()).prop_map(|(run, at_ms)| SpaceEvent::Finished {
            run, end: End::Failed { error: json!({"code": "x"}) }, at_ms
        }),
        1 => run.clone().prop_map(|run| SpaceEvent::LingerExpired { run }),
        1 => (run.clone(), producer, at).prop_map(|(run, producer, at_ms)| SpaceEvent::ProducerLost { run, producer, at_ms }),
        1 => run.prop_map(|id| SpaceEvent::Rejected { id, ctx: ctx(id, "task", Status::Failed) }),
    ]
}

const RULES: Rules = Rules { linger_ms: 300, max_run_bytes: 8192, finished_memory: 4 };

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// `b` is fed the encoded log; `c` starts from a snapshot of `a` taken after `cut` events (as a cluster node
    /// that joins late) and is fed the rest.
    #[test]
    fn two_models_fed_one_log_end_equal(log in prop::collection::vec(event(), 1..60), cut in 0usize..60) {
        let (mut a, mut b) = (SpaceModel::new(RULES), SpaceModel::new(RULES));
        let mut c = None;
        for (i, e) in log.into_iter().enumerate() {
            if i == cut {
                c = Some(SpaceModel::restore(RULES, &a.snapshot()).unwrap());
            }
            let decoded = SpaceEvent::decode(&e.encode()).unwrap();
            let rc = c.as_mut().map(|c| c.apply(SpaceEvent::decode(&e.encode()).unwrap()).map(|x| x.is_noop()));
            let (ra, rb) = (a.apply(e).map(|x| x.is_noop()), b.apply(decoded).map(|x| x.is_noop()));
            if let Some(rc) = rc {
                prop_assert_eq!(rc.map_err(|e| e.code), ra.clone().map_err(|e| e.code));
            }
            prop_assert_eq!(ra.map_err(|e| e.code), rb.map_err(|e| e.code));
            prop_assert_eq!(a.to_json(), b.to_json());
        }
        let c = c.unwrap_or_else(|| SpaceModel::restore(RULES, &a.snapshot()).unwrap());
        prop_assert_eq!(a.to_json(), c.to_json());
        for views in [ViewSet::ALL, ViewSet::from_views([coworker::space::views::View::ActiveAi])] {
            prop_assert_eq!(render_state(&a, views), render_state(&b, views));
            prop_assert_eq!(render_state(&a, views), render_state(&c, views));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_of_a_live_servers_log_equals_its_snapshot() {
    let limits = Limits { producer_grace: Duration::from_millis(200), ..Limits::default() };
    let engine = EngineConfig { linger: Duration::from_secs(2), limits: limits.clone(), ..EngineConfig::default() };
    let config = Config { engine, ..Config::default() };
    let recording = Arc::new(Recording::new(Local));
    let mut backend = coworker::net::server::Backend::open(&config).await.unwrap();
    backend.sequencer = recording.clone();
    let server = start_backend(config, Hooks::default(), backend).await;
    let (a, b) = (Client::connect(&server.url()).await.unwrap(), Client::connect(&server.url()).await.unwrap());

    // Streams, a pipeline, steps, completions, an early failure (its linger ends), a data run (`currentRun`).
    let root = a.run(json!({"operation": "dialog"})).await.unwrap();
    let root_id = root["id"].as_str().unwrap().to_string();
    let mut streams = Vec::new();
    for i in 0..4 {
        let run = a.run(json!({"operation": "interpret", "parentRun": root_id})).await.unwrap();
        streams.push(run["id"].as_str().unwrap().to_string());
        a.patch(&streams[i], json!([{"op": "step", "index": 0, "value": {"name": "think"}}])).await.unwrap();
    }
    let early = a.run(json!({"operation": "task"})).await.unwrap()["id"].as_str().unwrap().to_string();
    a.fail(&early, json!({"code": "boom", "message": "early"})).await.unwrap();
    for t in 0..50 {
        for id in &streams {
            a.patch_nowait(id, json!([{"op": "append", "path": "output.tokens", "value": t}])).await.unwrap();
        }
    }
    a.patch(&streams[0], json!([{"op": "set", "path": "output.done", "value": true}])).await.unwrap();
    a.complete(&streams[1], None).await.unwrap();
    a.complete(&streams[2], Some(json!({"answer": 42}))).await.unwrap();
    a.run(json!({"operation": "create", "doctype": "Note", "input": {"data": {"t": 1}}})).await.unwrap();
    // A producer whose connection drops: its run fails with `producer_lost` after the grace.
    let orphan = b.run(json!({"operation": "interpret"})).await.unwrap()["id"].as_str().unwrap().to_string();
    b.patch(&orphan, json!([{"op": "append", "path": "output.tokens", "value": "x"}])).await.unwrap();
    b.close().await;
    snapshot_when(&a, "default", |s| {
        s["activeRuns"][&orphan]["status"] == "failed" && s["activeRuns"].get(&early).is_none()
    })
    .await;
    // A late failure, still lingering when the snapshot is taken (its linger is 2 s; the snapshot is taken at once).
    a.fail(&streams[3], json!({"code": "late", "message": "late"})).await.unwrap();
    let (state, seq) = snapshot_when(&a, "default", |s| s["activeRuns"][&streams[3]]["status"] == "failed").await;
    assert_eq!(state["currentRun"]["operation"], "create");

    let log: Vec<_> = recording.log().into_iter().filter(|r| &*r.space == "default" && r.position <= seq).collect();
    let positions: Vec<u64> = log.iter().map(|r| r.position).collect();
    assert_eq!(positions, (1..=seq).collect::<Vec<_>>(), "every position up to the snapshot's, once");
    let rules = Rules { linger_ms: 2000, max_run_bytes: limits.max_run_bytes, finished_memory: limits.finished_memory };
    let mut model = SpaceModel::new(rules);
    for r in &log {
        model.apply(SpaceEvent::decode(&r.bytes).unwrap()).expect("a logged event applies again");
    }
    let replayed: Value = serde_json::from_str(&render_state(&model, ViewSet::ALL)).unwrap();
    assert_eq!(replayed, state);
    let kinds: std::collections::BTreeSet<&str> = log
        .iter()
        .map(|r| match SpaceEvent::decode(&r.bytes).unwrap() {
            SpaceEvent::RunStarted { .. } => "started",
            SpaceEvent::Patched { .. } => "patched",
            SpaceEvent::Finished { end: End::Completed { .. }, .. } => "completed",
            SpaceEvent::Finished { end: End::Failed { .. }, .. } => "failed",
            SpaceEvent::LingerExpired { .. } => "linger",
            SpaceEvent::ProducerLost { .. } => "lost",
            SpaceEvent::Rejected { .. } => "rejected",
        })
        .collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["completed", "failed", "linger", "lost", "patched", "started"]);
}
