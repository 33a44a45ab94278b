//! The attacks an adversarial probe found getting through (issue "Attacks that get through today"), one test each,
//! each asserting the code or behaviour that stops it and that the attacker's target is unharmed. The probe that
//! measured them before and after is `examples/attack_probe.rs`.

use crate::support::*;
use coworker::auth::Auth;
use coworker::config::{Config, EngineConfig, Limits};
use coworker::hooks::Hooks;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &[u8] = b"attack-secret";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn sign(claims: Value) -> String {
    encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET)).unwrap()
}

fn token(sub: &str, read: &[&str], write: &[&str]) -> String {
    sign(json!({"sub": sub, "read": read, "write": write, "exp": now() + 3600}))
}

async fn secured(limits: Limits) -> TestServer {
    let config = Config {
        auth: Some(Auth::hs256(SECRET)),
        engine: EngineConfig { limits, ..EngineConfig::default() },
        ..Config::default()
    };
    start_config(config, Hooks::default()).await
}

async fn hello(c: &mut Raw, token: &str) -> Value {
    c.request(json!({"type": "hello", "id": "h", "token": token})).await
}

/// Finding 6: an `exp` of 2^64-1 panicked the session ("overflow when adding duration to instant") and leaked the
/// owner's connection quota for good; `nbf` in the future and an empty `sub` were accepted.
#[tokio::test]
async fn jwt_edge_cases_neither_panic_nor_leak_nor_pass() {
    let server = secured(Limits { max_connections_per_owner: 3, ..Limits::default() }).await;
    let forever = sign(json!({"sub": "ann", "read": ["*"], "write": ["*"], "exp": u64::MAX}));
    for _ in 0..20 {
        let mut c = Raw::connect(&server).await;
        let r = hello(&mut c, &forever).await;
        assert_eq!(r["owner"], "ann", "{r}");
        assert_eq!(r["expires"], u64::MAX);
        // The session is alive: it answers.
        assert_eq!(c.request(json!({"type": "subscribe", "id": 2})).await["type"], "snapshot");
    }
    // Twenty connections came and went: the quota of three is whole again.
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut c = Raw::connect(&server).await;
        assert_eq!(hello(&mut c, &token("ann", &["*"], &["*"])).await["owner"], "ann");
        held.push(c);
    }
    let early = sign(json!({"sub": "ann", "read": ["*"], "write": ["*"], "exp": now() + 60, "nbf": now() + 30}));
    let nobody = sign(json!({"sub": "", "read": ["*"], "write": ["*"], "exp": now() + 60}));
    for bad in [early, nobody] {
        let mut c = Raw::connect(&server).await;
        let r = hello(&mut c, &bad).await;
        assert_eq!(r["code"], "unauthenticated", "{r}");
        assert_eq!(c.recv_close().await, Some(4001));
    }
}

/// Finding 9: a `skip` above i64::MAX wrapped to a negative OFFSET and read rows from the start, while `meta.skip`
/// echoed the huge value.
#[tokio::test]
async fn a_skip_past_what_sql_takes_is_refused() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let create =
        json!({"type": "run", "id": 1, "run": {"operation": "create", "doctype": "Note", "input": {"data": {"t": 1}}}});
    assert_eq!(c.request(create).await["type"], "reply");
    let select = |skip: Value| json!({"type": "run", "id": 2, "run": {"operation": "select", "doctype": "Note", "input": {"skip": skip}}});
    let r = c.request(select(json!(1u64 << 63))).await;
    assert_eq!(r["code"], "operation_failed", "{r}");
    assert_eq!(r["run"]["error"]["code"], "bad_message");
    let r = c.request(select(json!(i64::MAX))).await;
    assert_eq!(r["run"]["output"]["data"], json!([]), "{r}");
    assert_eq!(r["run"]["output"]["meta"]["skip"], i64::MAX);
}

/// Finding 7: with no `--allowed-origin`, the Origin was compared with the request's own Host, so a page on a
/// rebinding domain (`Origin` and `Host` both `evil.example:PORT`, the domain resolving to 127.0.0.1) was upgraded
/// and could drive a development server, which has no authentication. Userinfo in Origin was accepted too.
#[tokio::test]
async fn dns_rebinding_and_userinfo_origins_are_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start_server().await;
    let port = server.addr.port();
    let upgrade = |origin: String, host: String| async move {
        let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
        let req = format!(
            "GET /ws HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).await.unwrap();
        String::from_utf8_lossy(&head).to_string()
    };
    let evil = format!("evil.example:{port}");
    assert!(upgrade(format!("http://{evil}"), evil.clone()).await.contains("403"), "rebinding");
    assert!(upgrade(format!("http://localhost:1@evil.example:{port}"), evil.clone()).await.contains("403"));
    assert!(upgrade(format!("http://localhost:{port}@evil.example"), evil.clone()).await.contains("403"));
    assert!(upgrade(format!("http://localhost:{port}"), evil).await.contains("101"), "a loopback page is welcome");
}
