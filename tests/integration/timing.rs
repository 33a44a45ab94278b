//! Time-dependent behaviour, under tokio's paused clock: the linger of failed runs, coalescing within a tick,
//! and immediate delivery after an idle period. Each test runs a [`heartbeat`] so that virtual time advances at
//! most 1 ms per socket wait (see its doc).

use crate::support::*;
use coworker::client::Client;
use coworker::config::EngineConfig;
use coworker::plugin::hooks::Hooks;
use futures::SinkExt;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// A long tick for the coalescing tests: socket waits advance the paused clock (see `heartbeat`), and a burst must
/// stay well inside one tick of virtual time however many waits it takes.
const LONG_TICK: Duration = Duration::from_secs(5);

fn long_tick() -> EngineConfig {
    EngineConfig { tick: LONG_TICK, ..EngineConfig::default() }
}

#[tokio::test(start_paused = true)]
async fn a_failed_run_stays_visible_for_the_linger_then_leaves() {
    let _hb = heartbeat();
    let server = start_server().await;
    let p = Client::connect(&server.url()).await.unwrap();
    let w = Client::connect(&server.url()).await.unwrap();
    let mut sub = w.subscribe("default", None, false).await.unwrap();
    let run = p.run(json!({"operation": "interpret"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let failed_at = Instant::now();
    p.fail(&id, json!({"message": "boom"})).await.unwrap();
    let mut seen_failed = None;
    let gone_at = loop {
        sub.next().await.unwrap().unwrap();
        let r = &sub.state()["activeRuns"][&id];
        if r["status"] == "failed" && seen_failed.is_none() {
            seen_failed = Some(Instant::now() - failed_at);
        }
        if r.is_null() {
            break Instant::now() - failed_at;
        }
    };
    // Under the paused clock every socket wait advances virtual time (see `heartbeat`), so only the lower bound of
    // a duration is exact: the run must be shown failed first, and must not leave before the linger has passed.
    assert!(seen_failed.is_some(), "the failed run was shown before it left");
    assert!(gone_at >= Duration::from_millis(3000), "removed after {gone_at:?}, before the 3000 ms linger");
    // Patching it now says it finished.
    let e = p.patch(&id, json!([{"op": "set", "path": "output.x", "value": 1}])).await.unwrap_err();
    assert!(matches!(e, coworker::client::ClientError::Server { ref code, .. } if code == "run_finished"), "{e:?}");
}

#[tokio::test(start_paused = true)]
async fn a_burst_of_1000_appends_reaches_a_subscriber_as_at_most_a_few_frames() {
    let _hb = heartbeat();
    let server = start_with(long_tick(), Hooks::default()).await;
    let mut producer = Raw::connect(&server).await;
    let mut watcher = Raw::connect(&server).await;
    let id = producer.start(json!({"operation": "interpret"})).await;
    let snap = watcher.request(json!({"type": "subscribe", "id": 1})).await;
    let mut state = snap["state"].clone();
    let mut seq = snap["seq"].as_u64().unwrap();
    // The burst is written with one flush, so it reaches the server at once: under the paused clock, a runtime
    // that waits on socket readiness also lets virtual time jump to the next timer (the tick).
    for i in 0..1000 {
        let frame = json!({"type": "patch", "run": id, "ops": [{"op": "append", "path": "output.tokens", "value": format!("t{i}")}]});
        producer.ws.feed(Message::Text(frame.to_string().into())).await.unwrap();
    }
    producer.ws.flush().await.unwrap();
    let ack = producer.request(json!({"type": "patch", "id": "last", "run": id, "ops": [{"op": "set", "path": "output.done", "value": true}]})).await;
    assert_eq!(ack["type"], "reply");
    let mut frames = 0;
    while state["activeRuns"][&id]["output"]["done"] != true {
        let d = watcher.recv().await;
        assert_eq!(d["type"], "diff", "{d}");
        assert_eq!(d["base"].as_u64(), Some(seq), "diffs chain without gaps");
        let ops = d["ops"].as_array().unwrap();
        assert!(ops.len() <= 2, "appends to one path merge into one op per frame: {} ops", ops.len());
        coworker::client::apply_ops(&mut state, ops).unwrap();
        seq = d["seq"].as_u64().unwrap();
        frames += 1;
    }
    assert!(frames <= 3, "1,000 appends in one burst took {frames} frames");
    let expect: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
    assert_eq!(state["activeRuns"][&id]["output"]["tokens"], json!(expect));
}

#[tokio::test(start_paused = true)]
async fn a_change_after_idle_is_sent_at_once_and_frames_stay_small_on_a_huge_run() {
    let _hb = heartbeat();
    let server = start_with(long_tick(), Hooks::default()).await;
    let mut producer = Raw::connect(&server).await;
    let mut watcher = Raw::connect(&server).await;
    let id = producer.start(json!({"operation": "interpret"})).await;
    // A big run: 100,000 tokens, set in batches.
    for batch in 0..400 {
        let ops: Vec<_> = (0..250)
            .map(|i| json!({"op": "append", "path": "output.tokens", "value": format!("token-{}", batch * 250 + i)}))
            .collect();
        producer.send(json!({"type": "patch", "run": id, "ops": ops})).await;
    }
    let ack = producer
        .request(json!({"type": "patch", "id": 1, "run": id, "ops": [{"op": "set", "path": "output.n", "value": 1}]}))
        .await;
    assert_eq!(ack["type"], "reply", "{ack}");
    let snap = watcher.request(json!({"type": "subscribe", "id": 1})).await;
    assert!(snap.to_string().len() > 1_000_000, "the snapshot carries the whole run");
    tokio::time::sleep(LONG_TICK * 2).await;
    let sent = Instant::now();
    producer
        .send(json!({"type": "patch", "run": id, "ops": [{"op": "append", "path": "output.tokens", "value": "next"}]}))
        .await;
    let d = watcher.ws_next_text().await;
    let took = Instant::now() - sent;
    assert!(took < LONG_TICK / 2, "a change after an idle period took {took:?}: it must not wait for a tick");
    assert!(d.len() < 300, "a one-token diff on a 100,000-token run is {} bytes: {d}", d.len());
}
