//! A producer whose connection drops: its live runs stay running for the grace period, in which a reconnected
//! producer can carry on with the same run ids; after it they fail with `producer_lost` and linger as failed runs.

use crate::support::*;
use coworker::client::Client;
use serde_json::json;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn runs_of_a_lost_producer_fail_after_the_grace_unless_it_comes_back() {
    let _hb = heartbeat();
    let server = start_server().await;
    let watcher = Client::connect(&server.url()).await.unwrap();
    let mut sub = watcher.subscribe("default", None, false).await.unwrap();
    let mut producer = Raw::connect(&server).await;
    let lost = producer.start(json!({"operation": "interpret"})).await;
    let resumed = producer.start(json!({"operation": "dialog"})).await;
    producer.request(json!({"type": "patch", "id": 1, "run": lost, "ops": [{"op": "append", "path": "output.tokens", "value": "a"}]})).await;
    // The TCP connection drops without a close frame.
    drop(producer);
    let dropped_at = Instant::now();

    // Another connection carries on with one of the runs within the grace.
    let back = Client::connect(&server.url()).await.unwrap();
    back.patch(&resumed, json!([{"op": "set", "path": "output.value", "value": "still typing"}])).await.unwrap();

    let failed_at = tokio::time::timeout(Duration::from_secs(300), async {
        loop {
            sub.next().await.unwrap().unwrap();
            if sub.state()["activeRuns"][&lost]["status"] == "failed" {
                break Instant::now();
            }
        }
    })
    .await
    .expect("the lost producer's run failed");
    assert!(
        failed_at - dropped_at >= Duration::from_secs(30),
        "failed after {:?}, before the grace",
        failed_at - dropped_at
    );
    let state = sub.state();
    assert_eq!(state["activeRuns"][&lost]["error"]["code"], "producer_lost");
    assert_eq!(state["activeRuns"][&lost]["output"]["tokens"], json!(["a"]));
    assert_eq!(state["activeRuns"][&resumed]["status"], "running", "its producer came back");
    back.complete(&resumed, None).await.unwrap();
}

/// A producer in another process (a shell holding a raw WebSocket) is killed with SIGKILL: its run fails with
/// `producer_lost` once the grace has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_producer_process_loses_its_runs() {
    use coworker::Config;
    use coworker::config::{EngineConfig, Limits};
    let limits = Limits { producer_grace: std::time::Duration::from_millis(300), ..Limits::default() };
    let config = Config { engine: EngineConfig { limits, ..EngineConfig::default() }, ..Config::default() };
    let server = start_config(config, coworker::plugin::hooks::Hooks::default()).await;
    let watcher = Client::connect(&server.url()).await.unwrap();
    let mut sub = watcher.subscribe("default", Some(&["activeAI"]), false).await.unwrap();
    let id = "0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f";
    // The run frame, masked with a zero key (so the payload goes as is).
    let payload = format!(r#"{{"type":"run","run":{{"id":"{id}","operation":"interpret"}}}}"#);
    let mut frame = format!("\\x81\\x{:02x}\\x00\\x00\\x00\\x00", 0x80 | payload.len());
    frame.push_str(&payload.replace('"', "\\x22"));
    let script = format!(
        "exec 3<>/dev/tcp/127.0.0.1/{port}; \
         printf 'GET /ws HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n' >&3; \
         sleep 0.2; printf '{frame}' >&3; exec sleep 600",
        port = server.addr.port()
    );
    let mut child = std::process::Command::new("bash").args(["-c", &script]).spawn().unwrap();
    let appeared = tokio::time::timeout(WAIT, async {
        while sub.state()["activeAI"] != json!([id]) {
            sub.next().await.unwrap().unwrap();
        }
    })
    .await;
    assert!(appeared.is_ok(), "the other process's run never started");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let lost = tokio::time::timeout(WAIT, async {
        while sub.state()["activeAI"] != json!([]) {
            sub.next().await.unwrap().unwrap();
        }
    })
    .await;
    assert!(lost.is_ok(), "the run of the killed producer never failed");
    // The failure is in the trail: its record may land a moment after the state change that subscribers saw
    // (reads do not queue behind writes), so look until it is there.
    let recorded = tokio::time::timeout(WAIT, async {
        loop {
            let select = json!({"operation": "select", "doctype": "Run", "input": {"where": {"id": id}}});
            let trail = watcher.run(select).await.unwrap();
            if let Some(run) = trail["output"]["data"].get(0) {
                return run["error"]["code"].clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(recorded.expect("the failure was recorded"), "producer_lost");
}
