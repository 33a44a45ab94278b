//! Authentication and permissions: bad tokens are refused before any run data is sent, owners cannot touch each
//! other's runs, spaces follow the token's read and write lists, the Origin allowlist, token expiry.

use crate::support::jwt::*;
use crate::support::*;
use coworker::config::Limits;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test]
async fn bad_tokens_are_refused_before_any_run_data() {
    let server = secured(Limits::default(), vec![]).await;
    let mut ann = Raw::connect(&server).await;
    assert_eq!(hello(&mut ann, &token("ann", &["*"], &["*"])).await["owner"], "ann");
    let id = ann.start(json!({"operation": "interpret", "input": {"secret": "ann's data"}})).await;

    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let claims = json!({"sub": "mallory", "read": ["*"], "write": ["*"], "exp": now() + 3600});
    let good = token_with(claims.clone(), SECRET);
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    parts[1] = b64.encode(json!({"sub": "ann", "read": ["*"], "write": ["*"], "exp": now() + 3600}).to_string());
    let tampered = parts.join(".");
    let alg_none = format!("{}.{}.", b64.encode(r#"{"alg":"none","typ":"JWT"}"#), b64.encode(claims.to_string()));
    let expired = token_with(json!({"sub": "mallory", "read": ["*"], "write": ["*"], "exp": now() - 5}), SECRET);
    let wrong_key = token_with(claims.clone(), b"another-secret");
    let no_exp = token_with(json!({"sub": "mallory", "read": ["*"], "write": ["*"]}), SECRET);
    for (label, bad) in [
        ("missing", None),
        ("tampered", Some(tampered)),
        ("alg none", Some(alg_none)),
        ("expired", Some(expired)),
        ("wrong key", Some(wrong_key)),
        ("no exp", Some(no_exp)),
    ] {
        let mut m = Raw::connect(&server).await;
        // Before authenticating, nothing is served.
        let r = m.request(json!({"type": "subscribe", "id": 1})).await;
        assert_eq!(r["code"], "unauthenticated", "{label}: {r}");
        let r = m
            .request(
                json!({"type": "patch", "id": 2, "run": id, "ops": [{"op": "set", "path": "output.x", "value": 1}]}),
            )
            .await;
        assert_eq!(r["code"], "unauthenticated", "{label}: {r}");
        let mut msg = json!({"type": "hello", "id": 3});
        if let Some(t) = &bad {
            msg["token"] = json!(t);
        }
        let r = m.request(msg).await;
        assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("unauthenticated")), "{label}: {r}");
        assert!(!r.to_string().contains("ann's data"));
        assert_eq!(m.recv_close().await, Some(4001), "{label}");
    }
    // The control connection is unaffected, and the run untouched.
    let r = ann.request(json!({"type": "complete", "id": 9, "run": id})).await;
    assert_eq!(r["run"]["output"], Value::Null);
}

#[tokio::test]
async fn a_token_in_the_subprotocol_authenticates_the_upgrade() {
    let server = secured(Limits::default(), vec![]).await;
    let mut req = server.url().into_client_request().unwrap();
    let offer = format!("coworker.v1, bearer.{}", token("ann", &["*"], &["*"]));
    req.headers_mut().insert("Sec-WebSocket-Protocol", offer.parse().unwrap());
    let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "coworker.v1");
    let mut c = Raw { ws };
    let r = c.request(json!({"type": "subscribe", "id": 1})).await;
    assert_eq!(r["type"], "snapshot");
    // A bad token in the subprotocol is refused at the handshake.
    let mut req = server.url().into_client_request().unwrap();
    req.headers_mut().insert("Sec-WebSocket-Protocol", "coworker.v1, bearer.not-a-token".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");
}

#[tokio::test]
async fn owners_and_spaces_are_enforced() {
    let server = secured(Limits::default(), vec![]).await;
    let mut ann = Raw::connect(&server).await;
    hello(&mut ann, &token("ann", &["team"], &["team"])).await;
    let mut bob = Raw::connect(&server).await;
    hello(&mut bob, &token("bob", &["team"], &["team"])).await;
    let mut agent = Raw::connect(&server).await;
    let agent_token =
        token_with(json!({"sub": "llm", "read": [], "write": ["team"], "agent": true, "exp": now() + 3600}), SECRET);
    hello(&mut agent, &agent_token).await;

    let r = ann.request(json!({"type": "run", "id": 1, "run": {"operation": "interpret", "space": "team"}})).await;
    assert_eq!(r["run"]["owner"], "ann", "runs carry the token's owner");
    let id = r["run"]["id"].as_str().unwrap().to_string();
    let r =
        ann.request(json!({"type": "run", "id": 2, "run": {"operation": "x", "space": "team", "owner": "bob"}})).await;
    assert_eq!(r["code"], "forbidden");
    let r = ann.request(json!({"type": "run", "id": 3, "run": {"operation": "x", "space": "elsewhere"}})).await;
    assert_eq!(r["code"], "forbidden", "no write permission on the space");
    let r = ann.request(json!({"type": "subscribe", "id": 4, "space": "elsewhere"})).await;
    assert_eq!(r["code"], "forbidden", "no read permission on the space");

    // Bob cannot change Ann's run: exactly the error of a run that does not exist.
    let ghost = "0190f5c2-7a4e-7c1a-9a3e-2f4b5c6d7e8f";
    for target in [id.as_str(), ghost] {
        for msg in [
            json!({"type": "patch", "id": 5, "run": target, "ops": [{"op": "set", "path": "output.x", "value": 1}]}),
            json!({"type": "complete", "id": 6, "run": target}),
            json!({"type": "fail", "id": 7, "run": target, "error": {"message": "no"}}),
        ] {
            let r = bob.request(msg).await;
            let expect =
                json!({"type": "error", "id": r["id"], "code": "unknown_run", "message": "no active run has this id"});
            assert_eq!(r, expect);
        }
    }
    // An agent may patch it.
    let r = agent.request(json!({"type": "patch", "id": 8, "run": id, "ops": [{"op": "append", "path": "output.tokens", "value": "hi"}]})).await;
    assert_eq!(r["type"], "reply", "{r}");
    let r = ann.request(json!({"type": "complete", "id": 9, "run": id})).await;
    assert_eq!(r["run"]["output"], json!({"tokens": ["hi"]}));

    // The audit trail shows each owner only their own runs.
    let b = bob.request(json!({"type": "run", "id": 10, "run": {"operation": "dialog", "space": "team"}})).await;
    let b_id = b["run"]["id"].as_str().unwrap().to_string();
    bob.request(json!({"type": "complete", "id": 11, "run": b_id})).await;
    let r = bob
        .request(json!({"type": "run", "id": 12, "run": {"operation": "select", "doctype": "Run", "space": "team"}}))
        .await;
    let owners: Vec<&str> =
        r["run"]["output"]["data"].as_array().unwrap().iter().map(|x| x["owner"].as_str().unwrap()).collect();
    assert!(!owners.is_empty() && owners.iter().all(|o| *o == "bob"), "{owners:?}");
}

#[tokio::test]
async fn origins_outside_the_allowlist_get_403() {
    let try_origin = |server: &TestServer, origin: &str| {
        let mut req = server.url().into_client_request().unwrap();
        req.headers_mut().insert("Origin", origin.parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let server = secured(Limits::default(), vec![]).await;
    let port = server.addr.port();
    assert!(try_origin(&server, &format!("http://localhost:{port}")).await.is_ok());
    assert!(try_origin(&server, &format!("http://{}", server.addr)).await.is_ok(), "the server's own origin");
    // Since the DNS-rebinding finding, other loopback ports are foreign too (a page of another local app).
    assert!(try_origin(&server, "http://localhost:5173").await.is_err());
    let e = try_origin(&server, "https://evil.example").await.unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    // No Origin header: a non-browser client, guarded by authentication.
    assert!(tokio_tungstenite::connect_async(server.url()).await.is_ok());

    let server = secured(Limits::default(), vec!["https://app.example".into()]).await;
    assert!(try_origin(&server, "https://app.example").await.is_ok());
    assert!(
        try_origin(&server, &format!("http://localhost:{}", server.addr.port())).await.is_err(),
        "an allowlist replaces the defaults"
    );
}

#[tokio::test(start_paused = true)]
async fn no_token_in_time_closes_4001_and_an_expired_token_closes_4002_after_the_grace() {
    let _hb = heartbeat();
    let limits =
        Limits { auth_timeout: Duration::from_secs(5), token_grace: Duration::from_secs(20), ..Limits::default() };
    let server = secured(limits, vec![]).await;
    let mut silent = Raw::connect(&server).await;
    let started = tokio::time::Instant::now();
    assert_eq!(silent.recv_close().await, Some(4001));
    assert!(tokio::time::Instant::now() - started >= Duration::from_secs(5));

    let short =
        |secs: u64| token_with(json!({"sub": "ann", "read": ["*"], "write": ["*"], "exp": now() + secs}), SECRET);
    let mut c = Raw::connect(&server).await;
    hello(&mut c, &short(2)).await;
    let r = c.recv().await;
    assert_eq!(r["code"], "token_expired", "{r}");
    let r = c.request(json!({"type": "subscribe", "id": 1})).await;
    assert_eq!(r["code"], "token_expired", "requests wait for a fresh token");
    // A fresh token within the grace keeps the connection.
    let r = hello(&mut c, &short(3600)).await;
    assert_eq!(r["owner"], "ann");
    let r = c.request(json!({"type": "subscribe", "id": 2})).await;
    assert_eq!(r["type"], "snapshot");
    // A token of another subject is not a refresh.
    let r = hello(&mut c, &token("bob", &["*"], &["*"])).await;
    assert_eq!(r["code"], "forbidden");
    assert_eq!(c.recv_close().await, Some(4001));

    let mut late = Raw::connect(&server).await;
    let hello_at = tokio::time::Instant::now();
    hello(&mut late, &short(2)).await;
    assert_eq!(late.recv().await["code"], "token_expired");
    let code = loop {
        match late.ws.next().await {
            Some(Ok(Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(code, Some(4002));
    // The token had at least one more whole second to live, then the 20 s grace.
    assert!(tokio::time::Instant::now() - hello_at >= Duration::from_secs(21), "closed before the grace ended");
}

#[tokio::test]
async fn an_owner_past_its_connection_quota_is_refused_with_4003() {
    let server = secured(Limits { max_connections_per_owner: 2, ..Limits::default() }, vec![]).await;
    let ann = token("ann", &["*"], &["*"]);
    let mut a1 = Raw::connect(&server).await;
    let mut a2 = Raw::connect(&server).await;
    assert_eq!(hello(&mut a1, &ann).await["owner"], "ann");
    assert_eq!(hello(&mut a2, &ann).await["owner"], "ann");
    let mut a3 = Raw::connect(&server).await;
    assert_eq!(hello(&mut a3, &ann).await["code"], "quota_connections");
    assert_eq!(a3.recv_close().await, Some(4003));
    let mut b = Raw::connect(&server).await;
    assert_eq!(hello(&mut b, &token("bob", &["*"], &["*"])).await["owner"], "bob", "other owners are not affected");
    // When one of Ann's connections closes, her slot is free again.
    a1.ws.close(None).await.unwrap();
    let mut admitted = false;
    for _ in 0..500 {
        let mut again = Raw::connect(&server).await;
        if hello(&mut again, &ann).await["owner"] == "ann" {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await; // polling, bounded: 5 s at most
    }
    assert!(admitted);
    drop(a2);
}

/// Logs at debug level never show a token or the secret, and user-supplied strings cannot forge log lines.
#[tokio::test]
async fn logs_hold_no_tokens_or_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let secret = "log-test-secret-0123456789";
    let server = Process::start_with_env(
        &["--data-dir", dir.path().to_str().unwrap()],
        &[("COWORKER_JWT_SECRET", secret), ("RUST_LOG", "debug")],
    );
    let good = token_with(json!({"sub": "ann", "read": ["*"], "write": ["*"], "exp": now() + 60}), secret.as_bytes());
    let bad = token_with(json!({"sub": "eve", "exp": now() + 60}), b"wrong");
    for t in [&good, &bad] {
        let (ws, _) = tokio_tungstenite::connect_async(&server.url).await.unwrap();
        let mut c = Raw { ws };
        let r = c.request(json!({"type": "hello", "id": 1, "token": t})).await;
        if r["type"] == "reply" {
            c.send_text("{\"type\":\"nope\\n2026-11-24T00:00:00Z ERROR forged\",\"id\":2}").await;
            assert_eq!(c.recv().await["code"], "unknown_type");
        }
    }
    // Origins are logged when refused: one with a newline escape cannot break the line.
    let mut req = server.url.clone().into_client_request().unwrap();
    req.headers_mut().insert("Origin", "https://evil.example/\\nERROR forged".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_err());
    // Wait (bounded) until the refusal has reached the log pipe.
    for _ in 0..500 {
        if server.log.lock().iter().any(|l| l.contains("foreign origin")) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let log = server.log.lock().join("\n");
    assert!(log.contains("foreign origin"), "the refusal was logged: {log}");
    for s in [good.as_str(), bad.as_str(), secret] {
        assert!(!log.contains(s), "the log holds a token or the secret");
    }
    assert!(!log.lines().any(|l| l.starts_with("ERROR forged") || l.starts_with("2026-11-24T00:00:00Z ERROR forged")));
}
