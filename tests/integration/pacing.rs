//! Tick-paced reading of producing connections: a connection that keeps sending answerless writes is read once
//! per tick, just before the spaces flush, so its writes reach subscribers in the same flush as when read at once,
//! and a request it sends is handled before that flush, not a tick later. Under tokio's paused clock with a long
//! tick, so that what happens between two boundaries is deterministic. Pacing is on only with `pace_producers`
//! (`--pace-producers`); the rest of the suite runs without it.

use crate::support::*;
use coworker::config::EngineConfig;
use coworker::engine::ticker;
use coworker::plugin::hooks::Hooks;
use serde_json::{Value, json};
use std::time::Duration;
use tokio::time::Instant;

fn token(run: &str, value: &str) -> Value {
    json!({"type": "patch", "run": run, "ops": [{"op": "append", "path": "output.tokens", "value": value}]})
}

/// The next diff frame on `c` (skipping replies and events), as text.
async fn next_diff(c: &mut Raw) -> String {
    loop {
        let f = c.recv().await;
        if f["type"] == "diff" {
            return f.to_string();
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_paced_producer_is_read_before_each_flush_and_its_requests_are_not_delayed_past_it() {
    let _hb = heartbeat();
    let tick = Duration::from_secs(1);
    let server =
        start_with(EngineConfig { tick, pace_producers: true, ..EngineConfig::default() }, Hooks::default()).await;
    // With Nagle's algorithm off, as browsers, the `ws` package and this crate's client send: with it on, a
    // message that follows an unacknowledged one waits in the client for the server's delayed acknowledgement.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(server.url(), None, true).await.unwrap();
    let mut p = Raw { ws };
    let mut q = Raw::connect(&server).await;
    let (a, b) = (p.start(json!({"operation": "interpret"})).await, p.start(json!({"operation": "interpret"})).await);
    let c = q.start(json!({"operation": "interpret"})).await;
    let snapshot = p.request(json!({"type": "subscribe", "id": "s", "views": ["activeAI"]})).await;
    assert_eq!(snapshot["type"], "snapshot");

    // Answerless writes: the connection is paced from the 16th on. (Token values are quoted, with letters no UUID
    // holds, so that a run id in a diff never passes for one.)
    for i in 0..20 {
        p.send(token(&a, &format!("tok-a{i}"))).await;
    }
    while !next_diff(&mut p).await.contains("\"tok-a19\"") {}
    let metrics = http_get(server.addr, "/metrics").await;
    assert_eq!(metric(&metrics, "coworker_paced_connections"), Some(1.0), "the producer is paced");

    // In the middle of a tick: one more paced write, and a request. Exactly one tick later another (unpaced)
    // producer writes: the paced connection's messages must have been handled before that, so their diff comes
    // first. (Read at the next tick, they are; left for the tick after, they would not be.)
    let mid = ticker::boundary_after(Instant::now(), tick) + tick / 2;
    tokio::time::sleep_until(mid).await;
    p.send(token(&a, "tok-a20")).await;
    p.send(json!({"type": "complete", "id": 7, "run": b})).await;
    tokio::time::sleep_until(mid + tick).await;
    q.send(token(&c, "tok-c0")).await;
    let (mut reply, mut diffs) = (None, Vec::new());
    while reply.is_none() || !diffs.iter().any(|d: &String| d.contains("\"tok-c0\"")) {
        let f = p.recv().await;
        match f["type"].as_str() {
            Some("diff") => diffs.push(f.to_string()),
            Some("reply") => reply = Some(f),
            _ => {}
        }
    }
    let reply = reply.unwrap();
    assert_eq!((&reply["id"], &reply["run"]["status"]), (&json!(7), &json!("completed")), "{reply}");
    let completed = format!("\"remove\",\"path\":\"/activeRuns/{b}\"");
    let first = &diffs[0];
    assert!(first.contains("\"tok-a20\"") && first.contains(&completed), "not handled within a tick: {diffs:?}");
    assert!(!first.contains("\"tok-c0\""), "{diffs:?}");
    // The request ended the pacing.
    let metrics = http_get(server.addr, "/metrics").await;
    assert_eq!(metric(&metrics, "coworker_paced_connections"), Some(0.0));
}
