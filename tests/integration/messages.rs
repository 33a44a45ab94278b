//! Every message of the protocol, end to end.

use crate::support::*;
use coworker::client::{Client, Update};
use serde_json::{Value, json};

#[tokio::test]
async fn run_replies_with_the_whole_context() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let r = c
        .request(json!({"type": "run", "id": 1, "run": {"operation": "interpret", "owner": "u1", "agent": "llm", "input": {"q": "hi"}}}))
        .await;
    assert_eq!(r["type"], "reply");
    assert_eq!(r["id"], 1);
    let run = &r["run"];
    let id = uuid::Uuid::parse_str(run["id"].as_str().unwrap()).unwrap();
    assert_eq!(id.get_version_num(), 7, "server-assigned ids are UUID v7");
    assert!(run["timestamp"].as_u64().unwrap() > 1_600_000_000_000);
    for (k, v) in [
        ("operation", json!("interpret")),
        ("doctype", Value::Null),
        ("flow", Value::Null),
        ("input", json!({"q": "hi"})),
        ("options", json!({})),
        ("owner", json!("u1")),
        ("agent", json!("llm")),
        ("parentRun", Value::Null),
        ("steps", json!([])),
        ("space", json!("default")),
        ("status", json!("running")),
        ("output", Value::Null),
        ("error", Value::Null),
        ("success", json!(false)),
        ("duration", json!(0)),
    ] {
        assert_eq!(run[k], v, "field {k}");
    }
    // In one fixed order: patches find the top-level fields by their position.
    let keys: Vec<&str> = run.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, coworker::model::context::FIELDS);
    // A client-supplied UUID is kept; a string request id is echoed.
    let mine = "0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f";
    let r = c.request(json!({"type": "run", "id": "x", "run": {"id": mine, "operation": "dialog"}})).await;
    assert_eq!(
        (r["id"].clone(), r["run"]["id"].clone(), r["run"]["owner"].clone()),
        (json!("x"), json!(mine), json!("system"))
    );
}

#[tokio::test]
async fn patch_complete_and_fail() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let id = c.start(json!({"operation": "interpret"})).await;
    // With an id: acknowledged.
    let r = c
        .request(json!({"type": "patch", "id": 2, "run": id, "ops": [{"op": "append", "path": "output.tokens", "value": "Hel"}]}))
        .await;
    assert_eq!(r, json!({"type": "reply", "id": 2}));
    // Without an id: no reply on success (the next frame answers the next request).
    c.send(json!({"type": "patch", "run": id, "ops": [{"op": "append", "path": "/output/tokens", "value": "lo"}]}))
        .await;
    let r = c.request(json!({"type": "complete", "id": 3, "run": id})).await;
    assert_eq!(r["id"], 3);
    let run = &r["run"];
    assert_eq!(run["status"], "completed");
    assert_eq!(run["success"], true);
    assert_eq!(run["output"], json!({"tokens": ["Hel", "lo"]}));
    assert!(run["duration"].is_u64());

    // complete with an output replaces it.
    let id = c.start(json!({"operation": "dialog"})).await;
    let r = c.request(json!({"type": "complete", "id": 4, "run": id, "output": {"value": "done"}})).await;
    assert_eq!(r["run"]["output"], json!({"value": "done"}));

    // fail keeps the run visible as failed.
    let id = c.start(json!({"operation": "interpret"})).await;
    let r =
        c.request(json!({"type": "fail", "id": 5, "run": id, "error": {"message": "model down", "code": "E1"}})).await;
    assert_eq!(r["run"]["status"], "failed");
    assert_eq!(r["run"]["success"], false);
    assert_eq!(r["run"]["error"], json!({"message": "model down", "code": "E1"}));
    let snap = c.request(json!({"type": "subscribe", "id": 6})).await;
    assert_eq!((snap["type"].as_str(), snap["id"].as_u64()), (Some("snapshot"), Some(6)));
    let state = &snap["state"];
    assert_eq!(state["activeRuns"][&id]["status"], "failed");
    assert_eq!(state["isLoading"], false);
    assert_eq!(state["activeAI"], json!([]));
}

#[tokio::test]
async fn subscribe_gets_a_snapshot_then_diffs_and_unsubscribe_stops_them() {
    let server = start_server().await;
    let producer = Client::connect(&server.url()).await.unwrap();
    let watcher = Client::connect(&server.url()).await.unwrap();
    let before = producer.run(json!({"operation": "interpret"})).await.unwrap();
    let before_id = before["id"].as_str().unwrap().to_string();
    producer.patch(&before_id, json!([{"op": "append", "path": "output.tokens", "value": "a"}])).await.unwrap();

    let mut sub = watcher.subscribe("default", None, false).await.unwrap();
    assert_eq!(sub.state()["activeRuns"][&before_id]["output"]["tokens"], json!(["a"]));
    assert_eq!(sub.state()["activeAI"], json!([before_id]));
    assert_eq!(sub.state()["isLoading"], true);
    assert_eq!(sub.state()["currentRun"], Value::Null);

    producer.patch(&before_id, json!([{"op": "append", "path": "output.tokens", "value": "b"}])).await.unwrap();
    let u = sub.next().await.unwrap().unwrap();
    assert!(matches!(u, Update::Diff { .. }), "{u:?}");
    assert_eq!(sub.state()["activeRuns"][&before_id]["output"]["tokens"], json!(["a", "b"]));

    sub.unsubscribe().await.unwrap();
    // After the unsubscribe reply nothing more arrives for that subscription. Frame-level check on a raw client:
    // a diff for a dropped subscription would be delivered no later than the next diff of a live one.
    let mut raw = Raw::connect(&server).await;
    let snap = raw.request(json!({"type": "subscribe", "id": 1, "space": "default"})).await;
    let old = snap["sub"].as_u64().unwrap();
    let r = raw.request(json!({"type": "unsubscribe", "id": 2, "sub": old})).await;
    assert_eq!(r, json!({"type": "reply", "id": 2, "sub": old}));
    producer.patch(&before_id, json!([{"op": "append", "path": "output.tokens", "value": "c"}])).await.unwrap();
    let snap = raw.request(json!({"type": "subscribe", "id": 3, "space": "default"})).await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    let new = snap["sub"].as_u64().unwrap();
    assert_eq!(snap["state"]["activeRuns"][&before_id]["output"]["tokens"], json!(["a", "b", "c"]));
    producer.patch(&before_id, json!([{"op": "append", "path": "output.tokens", "value": "d"}])).await.unwrap();
    let diff = raw.recv().await;
    assert_eq!((diff["type"].as_str(), diff["sub"].as_u64()), (Some("diff"), Some(new)), "{diff}");
    assert_eq!(diff["base"], snap["seq"]);
    let r = raw.request(json!({"type": "unsubscribe", "id": 4, "sub": old})).await;
    assert_eq!(r["code"], "unknown_subscription");
}

#[tokio::test]
async fn events_report_the_lifecycle() {
    let server = start_server().await;
    let producer = Client::connect(&server.url()).await.unwrap();
    let watcher = Client::connect(&server.url()).await.unwrap();
    let mut sub = watcher.subscribe("default", Some(&["isLoading"]), true).await.unwrap();
    let a = producer.run(json!({"operation": "interpret"})).await.unwrap();
    let a = a["id"].as_str().unwrap();
    producer.complete(a, Some(json!("ok"))).await.unwrap();
    let b = producer.run(json!({"operation": "dialog"})).await.unwrap();
    let b = b["id"].as_str().unwrap();
    producer.fail(b, json!({"message": "closed"})).await.unwrap();
    let mut events = Vec::new();
    while events.len() < 4 {
        if let Update::Event { name, run } = sub.next().await.unwrap().unwrap() {
            events.push((name, run["id"].as_str().unwrap().to_string(), run["status"].as_str().unwrap().to_string()));
        }
    }
    assert_eq!(
        events,
        vec![
            ("before:run".into(), a.to_string(), "running".into()),
            ("after:run".into(), a.to_string(), "completed".into()),
            ("before:run".into(), b.to_string(), "running".into()),
            ("error:run".into(), b.to_string(), "failed".into()),
        ]
    );
}

#[tokio::test]
async fn healthz_answers() {
    let server = start_server().await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
}

#[tokio::test]
async fn shutdown_closes_every_connection_with_1001() {
    let server = start_server().await;
    let mut a = Raw::connect(&server).await;
    let mut b = Raw::connect(&server).await;
    b.request(json!({"type": "subscribe", "id": 1})).await;
    a.start(json!({"operation": "interpret"})).await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(a.recv_close().await, Some(1001));
    // b may first get the diff for a's run.
    let close = loop {
        match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut b.ws)).await.expect("closed in time") {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(close, Some(1001));
    tokio::time::timeout(WAIT, stopping).await.expect("server stopped in time").unwrap();
}

#[tokio::test]
async fn metrics_are_exposed_in_prometheus_format() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let id = c.start(json!({"operation": "interpret"})).await;
    c.request(json!({"type": "subscribe", "id": 1})).await;
    // Patch latency is sampled (one patch in 64 per thread): send enough.
    for _ in 0..200 {
        c.send(json!({"type": "patch", "run": id, "ops": [{"op": "append", "path": "output.t", "value": "x"}]})).await;
    }
    c.send(json!({"type": "patch", "id": 2, "run": id, "ops": [{"op": "set", "path": "output.n", "value": 1}]})).await;
    while c.recv().await["id"] != 2 {} // diffs may come first
    c.send(json!({"type": "patch", "id": 3, "run": id, "ops": [{"op": "set", "path": "status", "value": 1}]})).await;
    while c.recv().await["id"] != 3 {}
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).await.unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for name in [
        "coworker_connections",
        "coworker_subscriptions",
        "coworker_active_runs",
        "coworker_frames_sent_total",
        "coworker_bytes_sent_total",
        "coworker_patch_seconds_bucket",
        "coworker_flush_seconds_bucket",
        "coworker_errors_total{code=\"read_only_path\"}",
    ] {
        assert!(body.contains(name), "/metrics lacks {name}:\n{body}");
    }
}

#[tokio::test]
async fn a_snapshot_larger_than_any_write_buffer_is_delivered() {
    // 100 runs of 60 KB each: a 6 MB snapshot, one frame. It used to exceed tungstenite's write-buffer cap (then
    // 4 MiB + 64 KiB), and the subscriber's connection was dropped without a word.
    let server = start_server().await;
    let c = Client::connect(&server.url()).await.unwrap();
    let text = "x".repeat(60_000);
    for _ in 0..100 {
        let run = c.run(json!({"operation": "interpret"})).await.unwrap();
        let id = run["id"].as_str().unwrap();
        c.patch(id, json!([{"op": "set", "path": "output.text", "value": text}])).await.unwrap();
    }
    let watcher = Client::connect(&server.url()).await.unwrap();
    let sub = watcher.subscribe("default", None, false).await.expect("the snapshot arrives");
    let runs = sub.state()["activeRuns"].as_object().unwrap();
    assert_eq!(runs.len(), 100);
    assert!(runs.values().all(|r| r["output"]["text"] == text.as_str()));
}
