//! The `patches` frame: many runs' patches in one frame. Each element applies or fails on its own, all or nothing
//! and in order; the reply (with an `id`) or the error frames (without) say which failed and why; frame limits
//! refuse the whole frame; and on one connection `patch` and `patches` frames apply in the order they were sent.

use crate::support::*;
use coworker::client::Client;
use coworker::config::{EngineConfig, Limits};
use serde_json::{Value, json};

fn append(value: &str) -> Value {
    json!([{"op": "append", "path": "output.tokens", "value": value}])
}

/// The runs' states from a fresh snapshot.
async fn runs(server: &TestServer) -> Value {
    let c = Client::connect(&server.url()).await.unwrap();
    let sub = c.subscribe("default", None, false).await.unwrap();
    sub.state()["activeRuns"].clone()
}

#[tokio::test]
async fn each_element_applies_on_its_own_and_the_reply_names_the_failures() {
    let server = start_server().await;
    let mut p = Raw::connect(&server).await;
    let (a, b, done) = (
        p.start(json!({"operation": "interpret"})).await,
        p.start(json!({"operation": "interpret"})).await,
        p.start(json!({"operation": "interpret"})).await,
    );
    p.request(json!({"type": "complete", "id": 90, "run": done})).await;
    let unknown = "0190f5c2-0000-7000-8000-00000000dead";
    let reply = p
        .request(json!({"type": "patches", "id": 7, "patches": [
            {"run": a, "ops": append("a1")},
            // Fails as a whole: its second op cannot apply (`output.tokens` of `a` is an array, not an object);
            // its first op must not apply either.
            {"run": b, "ops": [{"op": "append", "path": "output.tokens", "value": "b-lost"},
                                {"op": "set", "path": "output.tokens.x", "value": 1}]},
            {"run": unknown, "ops": append("u")},
            {"run": done, "ops": append("late")},
            {"run": "not-a-uuid", "ops": append("x")},
            {"run": b, "ops": append("b1")},
            {"run": a, "ops": []},
            {"run": a, "ops": append("a2")},
        ]}))
        .await;
    assert_eq!(reply["type"], "reply", "{reply}");
    assert_eq!(reply["id"], 7);
    let errors: Vec<(u64, String)> = reply["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["index"].as_u64().unwrap(), e["code"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (1, "type_mismatch".to_string()),
            (2, "unknown_run".to_string()),
            (3, "run_finished".to_string()),
            (4, "bad_message".to_string()),
            (6, "bad_message".to_string()),
        ],
        "{reply}"
    );
    assert!(reply["errors"].as_array().unwrap().iter().all(|e| e["message"].is_string()));
    let state = runs(&server).await;
    assert_eq!(state[&a]["output"]["tokens"], json!(["a1", "a2"]));
    assert_eq!(state[&b]["output"]["tokens"], json!(["b1"]), "the failed element applied nothing");

    // Every element applied: an empty list.
    let reply = p.request(json!({"type": "patches", "id": 8, "patches": [{"run": a, "ops": append("a3")}]})).await;
    assert_eq!(reply, json!({"type": "reply", "id": 8, "errors": []}));
}

#[tokio::test]
async fn without_an_id_each_failed_element_gets_an_error_frame_with_its_index_and_run() {
    let server = start_server().await;
    let mut p = Raw::connect(&server).await;
    let a = p.start(json!({"operation": "interpret"})).await;
    let unknown = "0190f5c2-0000-7000-8000-00000000beef";
    p.send(json!({"type": "patches", "patches": [
        {"run": unknown, "ops": append("u")},
        {"run": a, "ops": append("a1")},
        {"run": a, "ops": [{"op": "merge", "path": "output.x", "value": 1}]},
        {"ops": append("no run")},
    ]}))
    .await;
    let first = p.recv().await;
    assert_eq!(
        (&first["type"], &first["code"], &first["index"], &first["run"]),
        (&json!("error"), &json!("unknown_run"), &json!(0), &json!(unknown)),
        "{first}"
    );
    let second = p.recv().await;
    assert_eq!((&second["code"], &second["index"], &second["run"]), (&json!("bad_message"), &json!(2), &json!(a)));
    let third = p.recv().await;
    assert_eq!((&third["code"], &third["index"]), (&json!("bad_message"), &json!(3)));
    assert!(third.get("run").is_none() && third.get("id").is_none(), "{third}");
    // Nothing else was sent for the element that applied: the next frame answers the next request.
    let reply = p.request(json!({"type": "patch", "id": 5, "run": a, "ops": append("a2")})).await;
    assert_eq!(reply, json!({"type": "reply", "id": 5}));
    assert_eq!(runs(&server).await[&a]["output"]["tokens"], json!(["a1", "a2"]));
}

#[tokio::test]
async fn a_frame_over_its_limits_is_refused_whole() {
    let limits = Limits { max_patches_per_frame: 3, max_ops_per_frame: 4, max_ops_per_patch: 2, ..Limits::default() };
    let server = start_with(EngineConfig { limits, ..EngineConfig::default() }, Default::default()).await;
    let mut p = Raw::connect(&server).await;
    let hello = p.request(json!({"type": "hello", "id": 1})).await;
    assert_eq!(hello["limits"]["maxPatchesPerFrame"], 3);
    assert_eq!(hello["limits"]["maxOpsPerFrame"], 4);
    let a = p.start(json!({"operation": "interpret"})).await;
    let two = json!([{"op": "append", "path": "output.tokens", "value": "x"},
                     {"op": "append", "path": "output.tokens", "value": "y"}]);
    let too_many_elements = json!({"type": "patches", "id": 2, "patches": (0..4).map(|_| json!({"run": a, "ops": append("x")})).collect::<Vec<_>>()});
    let too_many_ops = json!({"type": "patches", "id": 3, "patches": (0..3).map(|_| json!({"run": a, "ops": two})).collect::<Vec<_>>()});
    for frame in [too_many_elements, too_many_ops] {
        let reply = p.request(frame.clone()).await;
        assert_eq!((&reply["type"], &reply["code"]), (&json!("error"), &json!("limit_exceeded")), "{reply}");
        assert_eq!(reply["id"], frame["id"]);
    }
    // An element over the per-patch limit fails alone.
    let three = json!([{"op": "append", "path": "output.tokens", "value": "1"},
                       {"op": "append", "path": "output.tokens", "value": "2"},
                       {"op": "append", "path": "output.tokens", "value": "3"}]);
    let reply = p
        .request(
            json!({"type": "patches", "id": 4, "patches": [{"run": a, "ops": three}, {"run": a, "ops": append("ok")}]}),
        )
        .await;
    assert_eq!(
        reply["errors"],
        json!([{"index": 0, "code": "limit_exceeded", "message": "more than 2 ops in one patch"}])
    );
    for bad in [
        json!({"type": "patches", "id": 5}),
        json!({"type": "patches", "id": 5, "patches": []}),
        json!({"type": "patches", "id": 5, "patches": {"run": a}}),
    ] {
        let reply = p.request(bad.clone()).await;
        assert_eq!((&reply["code"], &reply["id"]), (&json!("bad_message"), &json!(5)), "{bad} → {reply}");
    }
    // Nothing of the refused frames applied.
    assert_eq!(runs(&server).await[&a]["output"]["tokens"], json!(["ok"]));
}

#[tokio::test]
async fn patch_and_patches_frames_on_one_connection_apply_in_the_order_sent() {
    let server = start_server().await;
    let mut p = Raw::connect(&server).await;
    let (a, b) = (p.start(json!({"operation": "interpret"})).await, p.start(json!({"operation": "interpret"})).await);
    let mut expected_a = Vec::new();
    for i in 0..50 {
        if i % 3 == 0 {
            p.send(json!({"type": "patch", "run": a, "ops": append(&format!("p{i}"))})).await;
            expected_a.push(format!("p{i}"));
        } else {
            p.send(json!({"type": "patches", "patches": [
                {"run": a, "ops": append(&format!("s{i}a"))},
                {"run": b, "ops": append(&format!("s{i}b"))},
                {"run": a, "ops": append(&format!("s{i}c"))},
            ]}))
            .await;
            expected_a.extend([format!("s{i}a"), format!("s{i}c")]);
        }
    }
    // A request after them is answered after they applied.
    p.request(json!({"type": "patch", "id": 1, "run": b, "ops": append("end")})).await;
    let state = runs(&server).await;
    assert_eq!(state[&a]["output"]["tokens"], json!(expected_a));
    let b_tokens = state[&b]["output"]["tokens"].as_array().unwrap().clone();
    assert_eq!(b_tokens.len(), 34);
    assert_eq!(b_tokens.last().unwrap(), "end");
}

/// A server whose connections may send only `burst` messages (and one more per second): writes that went out as
/// more frames than that would be refused `rate_limited`.
async fn strict_server(burst: u32, max_patches_per_frame: usize) -> TestServer {
    let limits = Limits { messages_per_second: 1, message_burst: burst, max_patches_per_frame, ..Limits::default() };
    start_with(EngineConfig { limits, ..EngineConfig::default() }, Default::default()).await
}

#[tokio::test]
async fn the_coalescing_writer_sends_a_tick_of_writes_as_one_frame_and_answers_each_write() {
    let server = strict_server(2, 1024).await;
    let mut starter = Raw::connect(&server).await;
    let (a, b) = (
        starter.start(json!({"operation": "interpret"})).await,
        starter.start(json!({"operation": "interpret"})).await,
    );
    let unknown = "0190f5c2-0000-7000-8000-00000000f00d";
    let client = Client::connect(&server.url()).await.unwrap();
    let writer = client.writer(std::time::Duration::from_millis(50));
    let mut written = Vec::new();
    for i in 0..20 {
        written.push((a.clone(), writer.patch(&a, &append(&format!("a{i}")))));
        written.push((b.clone(), writer.patch(&b, &append(&format!("b{i}")))));
        if i % 4 == 0 {
            written.push((unknown.to_string(), writer.patch(unknown, &append("u"))));
        }
    }
    for (run, w) in written {
        match w.await {
            Ok(()) => assert_ne!(run, unknown),
            Err(coworker::client::ClientError::Server { code, .. }) => {
                assert_eq!((run.as_str(), code.as_str()), (unknown, "unknown_run"))
            }
            Err(e) => panic!("write to {run}: {e}"),
        }
    }
    assert_eq!(writer.refused(), 5);
    let state = runs(&server).await;
    let expect = |p: &str| json!((0..20).map(|i| format!("{p}{i}")).collect::<Vec<_>>());
    assert_eq!(state[&a]["output"]["tokens"], expect("a"), "every write applied, in order: one frame, not 45");
    assert_eq!(state[&b]["output"]["tokens"], expect("b"));
}

#[tokio::test]
async fn the_coalescing_writer_splits_at_the_frame_limits() {
    let server = strict_server(3, 4).await;
    let mut starter = Raw::connect(&server).await;
    let a = starter.start(json!({"operation": "interpret"})).await;
    let client = Client::connect(&server.url()).await.unwrap();
    let config = coworker::client::WriterConfig {
        interval: std::time::Duration::from_millis(50),
        max_elements: 4,
        ..Default::default()
    };
    let writer = client.writer_with(config);
    let written: Vec<_> = (0..12).map(|i| writer.patch(&a, &append(&i.to_string()))).collect();
    for w in written {
        w.await.expect("applied: three frames of four elements, within the server's limits and burst");
    }
    let tokens: Vec<String> = (0..12).map(|i| i.to_string()).collect();
    assert_eq!(runs(&server).await[&a]["output"]["tokens"], json!(tokens));
}
