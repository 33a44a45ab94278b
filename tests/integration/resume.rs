//! Resume without gaps: a subscriber drops its connection and resumes with `since` a hundred times during a token
//! stream; its final state equals a fresh snapshot and the tokens arrive in order with no gap or duplicate. A
//! resume from another epoch gets a `resync` snapshot.

use crate::support::*;
use coworker::client::Client;
use serde_json::json;

const TOKENS: usize = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_resumes_100_times_during_a_stream_without_gaps() {
    let server = start_server().await;
    let producer = Client::connect(&server.url()).await.unwrap();
    let run = producer.run(json!({"operation": "interpret"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let stream = {
        let (producer, id) = (producer.clone(), id.clone());
        tokio::spawn(async move {
            for i in 0..TOKENS {
                producer
                    .patch_nowait(&id, json!([{"op": "append", "path": "output.tokens", "value": i}]))
                    .await
                    .unwrap();
                if i % 20 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            producer.patch(&id, json!([{"op": "set", "path": "output.done", "value": true}])).await.unwrap();
        })
    };

    let mut client = Client::connect(&server.url()).await.unwrap();
    let mut sub = client.subscribe("default", None, false).await.unwrap();
    let mut resynced = 0;
    for _ in 0..100 {
        // Take a frame or two, then drop the connection and resume on a new one.
        for _ in 0..2 {
            if let Ok(Some(update)) = tokio::time::timeout(std::time::Duration::from_millis(20), sub.next()).await {
                update.expect("every diff applies at its base");
            }
        }
        client.close().await;
        client = Client::connect(&server.url()).await.unwrap();
        sub = client.resume("default", None, &sub).await.unwrap();
        resynced += sub.resynced as usize;
    }
    assert_eq!(resynced, 0, "the history covered every resume");
    stream.await.unwrap();
    // Drain to the end of the stream.
    let done = tokio::time::timeout(WAIT, async {
        while sub.state()["activeRuns"][&id]["output"]["done"] != true {
            sub.next().await.unwrap().unwrap();
        }
    })
    .await;
    assert!(done.is_ok(), "the stream's end never arrived");
    let tokens = sub.state()["activeRuns"][&id]["output"]["tokens"].as_array().unwrap().clone();
    let expect: Vec<serde_json::Value> = (0..TOKENS).map(|i| json!(i)).collect();
    assert_eq!(tokens, expect, "every token once, in order");
    let fresh = client.subscribe("default", None, false).await.unwrap();
    assert_eq!(fresh.state(), sub.state());

    // Another epoch (a restarted server) cannot resume: a fresh snapshot flagged resync.
    let mut stale = fresh;
    stale.epoch ^= 1;
    let again = client.resume("default", None, &stale).await.unwrap();
    assert!(again.resynced);
    assert_eq!(again.state(), sub.state());
    // So does a seq the server never had.
    stale.epoch ^= 1;
    stale.seq += 1_000_000;
    let again = client.resume("default", None, &stale).await.unwrap();
    assert!(again.resynced);
}
