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
