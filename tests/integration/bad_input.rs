//! Bad input: every case gets its documented error code, the connection stays open, and nothing is half-applied.

use crate::support::*;
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn patch(id: &str, ops: Value) -> Value {
    json!({"type": "patch", "id": "p", "run": id, "ops": ops})
}

#[tokio::test]
async fn every_bad_message_gets_its_code_and_the_connection_survives() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let id = c.start(json!({"operation": "interpret"})).await;
    c.request(patch(
        &id,
        json!([{"op": "set", "path": "output.n", "value": 5}, {"op": "set", "path": "output.s", "value": "str"}]),
    ))
    .await;
    let done = c.start(json!({"operation": "dialog"})).await;
    c.request(json!({"type": "complete", "id": 0, "run": done})).await;
    let failed = c.start(json!({"operation": "dialog"})).await;
    c.request(json!({"type": "fail", "id": 0, "run": failed, "error": {"message": "x"}})).await;
    let unknown = "0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f";

    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "bad_json"),
        ("".into(), "bad_json"),
        ("[1,2,3]".into(), "bad_message"),
        (json!({"id": 1}).to_string(), "bad_message"),
        (json!({"type": "launch", "id": 1}).to_string(), "unknown_type"),
        (json!({"type": "patch", "id": 1, "run": id}).to_string(), "bad_message"),
        (json!({"type": "patch", "id": 1, "ops": []}).to_string(), "bad_message"),
        (
            json!({"type": "patch", "id": 1, "run": "not-a-uuid", "ops": [{"op": "set", "path": "a", "value": 1}]})
                .to_string(),
            "bad_message",
        ),
        (json!({"type": "run", "id": 1, "run": {}}).to_string(), "bad_message"),
        (json!({"type": "run", "id": 1, "run": {"operation": "x", "steps": 5}}).to_string(), "bad_message"),
        (json!({"type": "run", "id": 1, "run": {"operation": "x", "id": "nope"}}).to_string(), "bad_message"),
        (json!({"type": "run", "id": 1, "run": {"operation": "x", "id": id}}).to_string(), "duplicate_run"),
        (json!({"type": "run", "id": 1, "run": {"operation": "x", "id": done}}).to_string(), "duplicate_run"),
        (
            json!({"type": "run", "id": 1, "run": {"operation": "x", "parentRun": unknown}}).to_string(),
            "unknown_parent",
        ),
        (json!({"type": "complete", "id": 1}).to_string(), "bad_message"),
        (json!({"type": "fail", "id": 1, "run": id}).to_string(), "bad_message"),
        (json!({"type": "fail", "id": 1, "run": id, "error": {"code": "x"}}).to_string(), "bad_message"),
        (json!({"type": "subscribe", "id": 1, "views": ["activeEverything"]}).to_string(), "unknown_view"),
        (json!({"type": "subscribe", "id": 1, "space": ""}).to_string(), "bad_message"),
        (json!({"type": "unsubscribe", "id": 1, "sub": 424242}).to_string(), "unknown_subscription"),
        (patch(unknown, json!([{"op": "set", "path": "output.x", "value": 1}])).to_string(), "unknown_run"),
        (json!({"type": "complete", "id": 1, "run": unknown}).to_string(), "unknown_run"),
        (patch(&done, json!([{"op": "set", "path": "output.x", "value": 1}])).to_string(), "run_finished"),
        (json!({"type": "complete", "id": 1, "run": done}).to_string(), "run_finished"),
        (json!({"type": "fail", "id": 1, "run": done, "error": {"message": "m"}}).to_string(), "run_finished"),
        (patch(&failed, json!([{"op": "set", "path": "output.x", "value": 1}])).to_string(), "run_finished"),
        (json!({"type": "complete", "id": 1, "run": failed}).to_string(), "run_finished"),
        (json!({"type": "fail", "id": 1, "run": failed, "error": {"message": "m"}}).to_string(), "run_finished"),
        (patch(&id, json!([{"op": "set", "path": "", "value": 1}])).to_string(), "bad_path"),
        (patch(&id, json!([{"op": "set", "path": "output..x", "value": 1}])).to_string(), "bad_path"),
        (patch(&id, json!([{"op": "set", "path": "/output/~9", "value": 1}])).to_string(), "bad_path"),
        (patch(&id, json!([{"op": "set", "path": "status", "value": "completed"}])).to_string(), "read_only_path"),
        (patch(&id, json!([{"op": "set", "path": "/id", "value": "x"}])).to_string(), "read_only_path"),
        (patch(&id, json!([{"op": "remove", "path": "output"}])).to_string(), "read_only_path"),
        (patch(&id, json!([{"op": "append", "path": "output.n", "value": 1}])).to_string(), "type_mismatch"),
        (patch(&id, json!([{"op": "append", "path": "output.s", "value": 1}])).to_string(), "type_mismatch"),
        (patch(&id, json!([{"op": "set", "path": "output.s.deeper", "value": 1}])).to_string(), "type_mismatch"),
        (patch(&id, json!([{"op": "set", "path": "steps[4]", "value": 1}])).to_string(), "index_out_of_range"),
        (patch(&id, json!([{"op": "step", "index": 3, "value": {}}])).to_string(), "index_out_of_range"),
        (patch(&id, json!([{"op": "step", "index": 0, "value": 5}])).to_string(), "bad_message"),
        (patch(&id, json!([{"op": "remove", "path": "output.nope"}])).to_string(), "path_not_found"),
        (patch(&id, json!([{"op": "explode", "path": "output"}])).to_string(), "bad_message"),
        (patch(&id, json!([{"op": "set", "path": "output.x"}])).to_string(), "bad_message"),
        (
            patch(&id, json!(vec![json!({"op": "set", "path": "output.x", "value": 1}); 300])).to_string(),
            "limit_exceeded",
        ),
    ];
    for (frame, code) in &cases {
        c.send_text(frame).await;
        let r = c.recv().await;
        assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some(*code)), "frame {frame}: {r}");
        assert!(r["message"].as_str().is_some_and(|m| !m.is_empty()), "{r}");
        let parsed: Option<Value> = serde_json::from_str(frame).ok();
        if let Some(req) = parsed.as_ref().and_then(|v| v.get("id")) {
            assert_eq!(&r["id"], req, "the error echoes the request id: {frame}");
        }
    }

    // Binary frames get an error too.
    c.ws.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    let r = c.recv().await;
    assert_eq!(r["code"], "binary_frame");

    // A fire-and-forget patch that fails still reports its error.
    c.send(json!({"type": "patch", "run": id, "ops": [{"op": "append", "path": "output.n", "value": 1}]})).await;
    let r = c.recv().await;
    assert_eq!((r["code"].as_str(), r.get("id")), (Some("type_mismatch"), None));

    // The connection still works, and none of the failed patches left a trace.
    let r = c.request(json!({"type": "complete", "id": "end", "run": id})).await;
    assert_eq!(r["run"]["output"], json!({"n": 5, "s": "str"}));
    assert_eq!(r["run"]["steps"], json!([]));
}

#[tokio::test]
async fn a_patch_that_fails_midway_changes_nothing_and_subscribers_see_nothing() {
    let server = start_server().await;
    let mut producer = Raw::connect(&server).await;
    let mut watcher = Raw::connect(&server).await;
    let id = producer.start(json!({"operation": "interpret"})).await;
    producer.request(patch(&id, json!([{"op": "set", "path": "output.tokens", "value": ["a"]}]))).await;
    let snap = watcher.request(json!({"type": "subscribe", "id": 1})).await;
    let r = producer
        .request(patch(
            &id,
            json!([
                {"op": "append", "path": "output.tokens", "value": "b"},
                {"op": "set", "path": "output.text", "value": "hello"},
                {"op": "step", "index": 0, "value": {"name": "s"}},
                {"op": "remove", "path": "output.tokens[0]"},
                {"op": "append", "path": "output.text", "value": 5}
            ]),
        ))
        .await;
    assert_eq!(r["code"], "type_mismatch", "{r}");
    producer.request(patch(&id, json!([{"op": "set", "path": "output.marker", "value": 1}]))).await;
    let d = watcher.recv().await;
    assert_eq!(d["base"], snap["seq"]);
    let mut state = snap["state"].clone();
    coworker::client::apply_ops(&mut state, d["ops"].as_array().unwrap()).unwrap();
    let run = &state["activeRuns"][&id];
    assert_eq!(run["output"], json!({"tokens": ["a"], "marker": 1}), "only the later patch shows");
    assert_eq!(run["steps"], json!([]));
}

#[tokio::test]
async fn an_oversized_message_closes_with_1009_and_invalid_utf8_with_1007() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let big = "x".repeat(70 * 1024);
    c.send_text(&json!({"type": "run", "run": {"operation": big}}).to_string()).await;
    assert_eq!(c.recv_close().await, Some(1009));

    // Invalid UTF-8 in a text frame: send raw bytes on a plain TCP socket speaking WebSocket.
    let mut c = Raw::connect(&server).await;
    let frame = tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
        vec![0xff, 0xfe, 0x22],
        tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode::Data(
            tokio_tungstenite::tungstenite::protocol::frame::coding::Data::Text,
        ),
        true,
    );
    c.ws.send(Message::Frame(frame)).await.unwrap();
    assert_eq!(c.recv_close().await, Some(1007));
    // Other clients are unaffected.
    let mut ok = Raw::connect(&server).await;
    ok.start(json!({"operation": "dialog"})).await;
}

#[tokio::test]
async fn deeply_nested_json_is_refused_before_parsing() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let deep =
        format!(r#"{{"type":"run","id":1,"run":{{"operation":"x","input":{}1{}}}}}"#, "[".repeat(100), "]".repeat(100));
    c.send_text(&deep).await;
    let r = c.recv().await;
    assert_eq!(r["code"], "limit_exceeded", "{r}");
    c.start(json!({"operation": "dialog"})).await;
}
