//! Slow subscribers cost bounded memory: ten subscribers that never read while a producer sends 200 MB of patches
//! replacing one 40 KB field (the state stays small). The server process's RSS (from /proc) grows by at most
//! 64 MB, and a healthy subscriber keeps up: its p99 lag stays under a second.

use crate::support::*;
use coworker::client::Client;
use serde_json::json;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::AsyncWriteExt;

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_subscribers_cost_bounded_memory_and_nobody_else_notices() {
    let _turn = heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let server = Process::start(&["--data-dir", dir.path().to_str().unwrap()]);
    let addr = server.url.trim_start_matches("ws://").trim_end_matches("/ws").to_string();
    let pid = server.child.id();

    // Ten subscribers that subscribe and then never read a byte.
    let mut stuck = Vec::new();
    for _ in 0..10 {
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let payload = br#"{"type":"subscribe","id":1}"#;
        let mut frame = vec![0x81, 0x80 | payload.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(payload);
        s.write_all(&frame).await.unwrap();
        stuck.push(s);
    }
    let producer = Client::connect(&server.url).await.unwrap();
    let healthy = Client::connect(&server.url).await.unwrap();
    let mut watch = healthy.subscribe("default", None, false).await.unwrap();
    let run = producer.run(json!({"operation": "interpret"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let baseline = rss_bytes(pid);

    let lags = tokio::spawn({
        let id = id.clone();
        async move {
            let mut lags = Vec::new();
            loop {
                match tokio::time::timeout(Duration::from_secs(30), watch.next()).await {
                    Ok(Some(Ok(_))) => {}
                    other => panic!("the healthy subscriber stalled: {other:?}"),
                }
                let out = &watch.state()["activeRuns"][&id]["output"];
                if let Some(sent) = out["sentAt"].as_u64() {
                    lags.push(now_us().saturating_sub(sent));
                }
                if out["done"] == true {
                    return lags;
                }
            }
        }
    });

    let blob = "x".repeat(40_000);
    let mut peak = baseline;
    let started = Instant::now();
    for i in 0..5_000u64 {
        // 5,000 x 40 KB = 200 MB of patches.
        let ops = json!([{"op": "set", "path": "output.blob", "value": format!("{i:08}{blob}")},
                         {"op": "set", "path": "output.sentAt", "value": now_us()}]);
        if i % 100 == 0 {
            producer.patch(&id, ops).await.unwrap();
            peak = peak.max(rss_bytes(pid));
        } else {
            producer.patch_nowait(&id, ops).await.unwrap();
        }
    }
    producer.patch(&id, json!([{"op": "set", "path": "output.done", "value": true}])).await.unwrap();
    peak = peak.max(rss_bytes(pid));
    let mut lags = lags.await.unwrap();
    lags.sort_unstable();
    let p99 = lags[lags.len() * 99 / 100];
    let growth = peak.saturating_sub(baseline);
    eprintln!(
        "slow subscribers: 200 MB sent in {:?}; server RSS {} MB -> peak {} MB (+{} MB); healthy p99 lag {} ms over {} diffs",
        started.elapsed(),
        baseline >> 20,
        peak >> 20,
        growth >> 20,
        p99 / 1000,
        lags.len()
    );
    assert!(growth <= 64 << 20, "server RSS grew by {} MB", growth >> 20);
    assert!(p99 < 1_000_000, "the healthy subscriber's p99 lag was {} ms", p99 / 1000);
    drop(stuck);
}
