//! Limits and liveness: the message rate limit, the idle timeout for a client that stops answering pings, and the
//! write deadline for a subscriber that stops reading. Each keeps a healthy control connection working.

use crate::support::*;
use coworker::client::ClientError;
use coworker::config::{EngineConfig, Limits};
use coworker::plugin::hooks::Hooks;
use futures::SinkExt;
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

fn with_limits(limits: Limits) -> EngineConfig {
    EngineConfig { limits, ..EngineConfig::default() }
}

/// A WebSocket client made of a bare TCP socket: it never answers pings and reads only when told to.
async fn bare_client(server: &TestServer) -> TcpStream {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
    s
}

/// Reads until the server closes the socket; returns the close code of the last close frame seen, if any.
async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut all)).await.expect("the server closed the socket");
    all
}

#[tokio::test(start_paused = true)]
async fn flooding_gets_rate_limited_then_closed_with_1008() {
    let _hb = heartbeat();
    let limits = Limits { messages_per_second: 1, message_burst: 50, ..Limits::default() };
    let server = start_with(with_limits(limits), Hooks::default()).await;
    let mut control = Raw::connect(&server).await;
    let mut flood = Raw::connect(&server).await;
    let id = flood.start(json!({"operation": "interpret"})).await;
    for n in 0..200 {
        // Requests (with ids): a refused one must still be answered, with its id.
        let m = json!({"type": "patch", "id": format!("p{n}"), "run": id,
                       "ops": [{"op": "append", "path": "output.t", "value": "x"}]});
        flood.ws.feed(Message::Text(m.to_string().into())).await.unwrap();
    }
    flood.ws.flush().await.unwrap();
    let mut refused = 0;
    let code = loop {
        match futures::StreamExt::next(&mut flood.ws).await {
            Some(Ok(Message::Text(t))) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "reply" {
                    continue;
                }
                assert_eq!(v["code"], "rate_limited", "{v}");
                // The first 49 patches were accepted (replies skipped above); refusals answer p49, p50, …
                assert_eq!(v["id"], format!("p{}", 49 + refused), "the refusal echoes the request's id: {v}");
                refused += 1;
            }
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(1008));
    assert_eq!(refused, 50, "one refusal per message past the burst, until the close");
    // 49 appends went through (the run start took one token); none of the refused ones did.
    let snap = control.request(json!({"type": "subscribe", "id": 1})).await;
    assert_eq!(snap["state"]["activeRuns"][&id]["output"]["t"].as_array().unwrap().len(), 49);
}

#[tokio::test(start_paused = true)]
async fn a_client_that_stops_answering_pings_is_closed() {
    let _hb = heartbeat();
    let limits =
        Limits { ping_interval: Duration::from_secs(1), idle_timeout: Duration::from_secs(3), ..Limits::default() };
    let server = start_with(with_limits(limits), Hooks::default()).await;
    let mut silent = bare_client(&server).await;
    // The client reads in the background, and tungstenite answers pings as it reads.
    let lively = coworker::client::Client::connect(&server.url()).await.unwrap();
    let started = tokio::time::Instant::now();
    let bytes = read_to_end(&mut silent).await;
    assert!(tokio::time::Instant::now() - started >= Duration::from_secs(3), "closed before the idle timeout");
    // Pings (0x89) came first, then a close frame (0x88) with code 4000.
    let close_at = bytes.iter().position(|b| *b == 0x88).expect("a close frame");
    assert_eq!(u16::from_be_bytes([bytes[close_at + 2], bytes[close_at + 3]]), 4000);
    assert_eq!(bytes[0], 0x89, "the server pinged first");
    // A client that answers pings stays.
    lively.subscribe("default", None, false).await.expect("still connected after the idle timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_dropped_and_nobody_else_notices() {
    let limits = Limits { write_timeout: Duration::from_millis(500), ..Limits::default() };
    let server = start_with(with_limits(limits), Hooks::default()).await;
    let mut stuck = bare_client(&server).await;
    stuck.write_all(&text_frame(br#"{"type":"subscribe","id":1}"#)).await.unwrap();
    let producer = coworker::client::Client::connect(&server.url()).await.unwrap();
    let healthy = coworker::client::Client::connect(&server.url()).await.unwrap();
    let mut watch = healthy.subscribe("default", None, false).await.unwrap();
    let run = producer.run(json!({"operation": "interpret"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let big = "x".repeat(40_000);
    // Replace one 40 KB field over and over (the state stays small) until the server gives up on the stuck
    // subscriber: its socket buffers fill (a resync snapshot each tick), and a write waits past the deadline.
    // Bounded by wall-clock time, not a patch count: the kernel's buffers may absorb a few seconds of ticks.
    let mut dropped = false;
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    for i in 0.. {
        if std::time::Instant::now() > give_up {
            break;
        }
        producer
            .patch_nowait(&id, json!([{"op": "set", "path": "output.blob", "value": format!("{i}{big}")}]))
            .await
            .unwrap();
        if i % 100 == 0 {
            // Acknowledged: under the rate limit this may be refused, and then the refusal answers it.
            match producer.patch(&id, json!([{"op": "set", "path": "output.i", "value": i}])).await {
                Ok(()) => {}
                Err(ClientError::Server { code, .. }) if code == "rate_limited" => {}
                Err(e) => panic!("{e}"),
            }
            if healthz(&server).await["connections"] == 2 {
                dropped = true;
                break;
            }
        }
    }
    assert!(dropped, "the stuck subscriber was never dropped");
    // The flood may have emptied the producer's rate bucket: retry a refused patch (the bucket refills).
    for _ in 0..100 {
        match producer.patch(&id, json!([{"op": "set", "path": "output.i", "value": "done"}])).await {
            Err(ClientError::Server { code, .. }) if code == "rate_limited" => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => {
                other.unwrap();
                break;
            }
        }
    }
    let seen = tokio::time::timeout(WAIT, async {
        while watch.state()["activeRuns"][&id]["output"]["i"] != "done" {
            watch.next().await.unwrap().unwrap();
        }
    })
    .await;
    assert!(seen.is_ok(), "the healthy subscriber kept up");
    // The stuck one was cut off: reading now drains what the socket held, then ends.
    let bytes = read_to_end(&mut stuck).await;
    assert!(!bytes.is_empty() && bytes.len() < 100_000_000, "{} bytes", bytes.len());
}

#[tokio::test(start_paused = true)]
async fn half_open_handshakes_are_closed_by_the_deadline_while_new_clients_connect() {
    rlimit::increase_nofile_limit(8192).unwrap();
    let _hb = heartbeat();
    let limits = Limits { handshake_timeout: Duration::from_secs(5), ..Limits::default() };
    let server = start_with(with_limits(limits), Hooks::default()).await;
    let started = tokio::time::Instant::now();
    let mut half_open = Vec::new();
    for _ in 0..1000 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n").await.unwrap();
        half_open.push(s);
    }
    // A well-behaved client still gets in and is served.
    let mut ok = Raw::connect(&server).await;
    ok.start(json!({"operation": "interpret"})).await;
    for mut s in half_open {
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(WAIT * 10, s.read_to_end(&mut buf)).await.expect("the server closed it");
    }
    assert!(tokio::time::Instant::now() - started >= Duration::from_secs(5), "closed before the deadline");
    let r = ok.request(json!({"type": "subscribe", "id": 1})).await;
    assert_eq!(r["type"], "snapshot");
}

#[tokio::test]
async fn connections_past_the_limit_are_refused_and_the_others_keep_working() {
    let limits = Limits { max_connections: 4, ..Limits::default() };
    let server = start_with(with_limits(limits), Hooks::default()).await;
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(Raw::connect(&server).await);
    }
    let refused = tokio_tungstenite::connect_async(server.url()).await.unwrap_err();
    assert!(refused.to_string().contains("503"), "the fifth connection is refused with 503: {refused}");
    let r = open[0].request(json!({"type": "subscribe", "id": 1})).await;
    assert_eq!(r["type"], "snapshot");
    drop(open.pop());
    // Once one leaves, a new one gets in (the server notices the close asynchronously).
    let mut admitted = false;
    for _ in 0..500 {
        if tokio_tungstenite::connect_async(server.url()).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling, bounded: 5 s at most
    }
    assert!(admitted);
}

#[tokio::test(start_paused = true)]
async fn each_quota_has_its_own_error_code() {
    let _hb = heartbeat();
    let limits = Limits {
        max_active_runs_per_owner: 3,
        runs_per_second_per_owner: 1,
        run_burst_per_owner: 6,
        max_subscriptions_per_connection: 2,
        ..Limits::default()
    };
    let server = start_with(with_limits(limits), Hooks::default()).await;
    let mut c = Raw::connect(&server).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(c.start(json!({"operation": "interpret", "owner": "ann"})).await);
    }
    let r = c.request(json!({"type": "run", "id": 1, "run": {"operation": "interpret", "owner": "ann"}})).await;
    assert_eq!(r["code"], "quota_active_runs");
    // Another owner is not affected; a finished run frees a slot.
    c.start(json!({"operation": "interpret", "owner": "bob"})).await;
    c.request(json!({"type": "complete", "id": 2, "run": ids.pop().unwrap()})).await;
    // Keep starting (and finishing) Ann's runs: the start bucket (6, refilling at 1/s) runs dry.
    let mut started = 3;
    let refused = loop {
        let r = c.request(json!({"type": "run", "id": 3, "run": {"operation": "interpret", "owner": "ann"}})).await;
        if r["type"] == "error" {
            break r;
        }
        started += 1;
        c.request(json!({"type": "complete", "id": 4, "run": r["run"]["id"]})).await;
        assert!(started < 40, "the start quota never applied");
    };
    assert_eq!(refused["code"], "quota_runs_started", "{refused}");
    assert!(started >= 6, "refused after {started} starts, before the burst was spent");

    for i in 0..2 {
        assert_eq!(c.request(json!({"type": "subscribe", "id": 10 + i})).await["type"], "snapshot");
    }
    let r = c.request(json!({"type": "subscribe", "id": 12})).await;
    assert_eq!(r["code"], "quota_subscriptions");
}
