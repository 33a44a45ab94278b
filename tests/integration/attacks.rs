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

/// Finding 5, first half: a `hello` with the same `sub` and fewer spaces in `read` stopped new subscribes, but the
/// old subscription kept delivering the space's data.
#[tokio::test]
async fn a_refreshed_token_ends_the_subscriptions_it_no_longer_allows() {
    let server = secured(Limits::default()).await;
    let mut agent = Raw::connect(&server).await;
    hello(&mut agent, &sign(json!({"sub": "ops", "read": ["*"], "write": ["*"], "agent": true, "exp": now() + 3600})))
        .await;
    let in_a = agent.start(json!({"operation": "interpret", "space": "a"})).await;
    let in_b = agent.start(json!({"operation": "interpret", "space": "b"})).await;
    let mut ann = Raw::connect(&server).await;
    hello(&mut ann, &token("ann", &["a", "b"], &[])).await;
    let sub_a = ann.request(json!({"type": "subscribe", "id": 1, "space": "a"})).await["sub"].clone();
    let sub_b = ann.request(json!({"type": "subscribe", "id": 2, "space": "b"})).await["sub"].clone();
    assert_ne!(sub_a, sub_b);
    // Refreshed with `read: ["a"]`: the reply, and an error that ends the subscription of `b`.
    ann.send(json!({"type": "hello", "id": "h", "token": token("ann", &["a"], &[])})).await;
    let (mut replied, mut ended) = (false, false);
    while !(replied && ended) {
        let f = ann.recv().await;
        match f["type"].as_str() {
            Some("reply") => replied = true,
            Some("error") => {
                assert_eq!((&f["code"], &f["sub"]), (&json!("forbidden"), &sub_b), "{f}");
                ended = true;
            }
            _ => panic!("unexpected {f}"),
        }
    }
    // Space `b` changes: nothing reaches ann. Space `a` changes: its diff does.
    let set = |run: &str, v: &str| json!({"type": "patch", "id": v, "run": run, "ops": [{"op": "set", "path": "output.v", "value": v}]});
    assert_eq!(agent.request(set(&in_b, "secret of b")).await["type"], "reply");
    assert_eq!(agent.request(set(&in_a, "news of a")).await["type"], "reply");
    let f = ann.recv().await;
    assert_eq!((&f["type"], &f["sub"]), (&json!("diff"), &sub_a), "{f}");
    assert!(!f.to_string().contains("secret of b"));
    assert_eq!(
        ann.request(json!({"type": "unsubscribe", "id": 3, "sub": sub_b})).await["code"],
        "unknown_subscription"
    );
}

/// Finding 5, second half: after `token_expired`, the connection kept receiving diffs for the whole grace period.
#[tokio::test(start_paused = true)]
async fn an_expired_connection_gets_no_data_until_it_presents_a_valid_token() {
    let _hb = heartbeat();
    let server = secured(Limits { token_grace: std::time::Duration::from_secs(30), ..Limits::default() }).await;
    let mut agent = Raw::connect(&server).await;
    hello(&mut agent, &sign(json!({"sub": "ops", "read": ["*"], "write": ["*"], "agent": true, "exp": u64::MAX})))
        .await;
    let run = agent.start(json!({"operation": "interpret"})).await;
    let mut ann = Raw::connect(&server).await;
    let short = sign(json!({"sub": "ann", "read": ["*"], "write": [], "exp": now() + 2}));
    hello(&mut ann, &short).await;
    // A `hello` without a token asks what the connection stands on, and changes nothing.
    let probe = ann.request(json!({"type": "hello", "id": "probe"})).await;
    assert_eq!((&probe["owner"], &probe["limits"]["tickMs"]), (&json!("ann"), &json!(16)), "{probe}");
    assert_eq!(ann.request(json!({"type": "subscribe", "id": 1})).await["type"], "snapshot");
    assert_eq!(ann.recv().await["code"], "token_expired");
    let probe = ann.request(json!({"type": "hello", "id": "probe"})).await;
    assert_eq!((&probe["code"], &probe["id"]), (&json!("token_expired"), &json!("probe")), "the connection stays");
    for i in 0..5 {
        let p = json!({"type": "patch", "id": i, "run": run, "ops": [{"op": "set", "path": "output.v", "value": i}]});
        assert_eq!(agent.request(p).await["type"], "reply");
    }
    // Nothing arrives while the token is expired (a wait of 5 s of paused time, well inside the grace).
    let quiet = tokio::time::timeout(std::time::Duration::from_secs(5), ann.recv()).await;
    assert!(quiet.is_err(), "data reached an expired connection: {:?}", quiet.ok());
    // A fresh token: the hello's reply, then what the subscription missed.
    assert_eq!(hello(&mut ann, &token("ann", &["*"], &[])).await["owner"], "ann");
    let f = ann.recv().await;
    assert!(f["type"] == "diff" || f["type"] == "snapshot", "{f}");
    assert!(f.to_string().contains(r#""v":4"#) || f.to_string().contains(r#""value":4"#), "{f}");
}

/// Finding 4: a token with `read: ["*"]` and `write: []` subscribed and unsubscribed 10,000 space names; every
/// other user's `run` or `subscribe` in a new space then got `limit_exceeded`, even after the attacker left, since
/// spaces were never freed.
#[tokio::test(start_paused = true)]
async fn spaces_count_against_their_creator_and_empty_ones_are_reclaimed() {
    let _hb = heartbeat();
    let server = secured(Limits { max_spaces: 30, max_spaces_per_owner: 10, ..Limits::default() }).await;
    let mut mallory = Raw::connect(&server).await;
    hello(&mut mallory, &token("mallory", &["*"], &[])).await;
    let mut refused = None;
    for i in 0..25 {
        let r = mallory.request(json!({"type": "subscribe", "id": i, "space": format!("junk-{i}")})).await;
        if r["type"] == "error" {
            refused = Some((i, r));
            break;
        }
        assert_eq!(mallory.request(json!({"type": "unsubscribe", "id": "u", "sub": r["sub"]})).await["type"], "reply");
    }
    let (at, r) = refused.expect("the space quota never applied");
    assert_eq!((at, r["code"].as_str()), (10, Some("quota_spaces")), "{r}");
    // Others are unharmed: new spaces for runs and subscriptions.
    let mut ann = Raw::connect(&server).await;
    hello(&mut ann, &token("ann", &["*"], &["*"])).await;
    for i in 0..5 {
        ann.start(json!({"operation": "interpret", "space": format!("ann-{i}")})).await;
    }
    assert_eq!(ann.request(json!({"type": "subscribe", "id": 1, "space": "ann-new"})).await["type"], "snapshot");
    assert_eq!(healthz(&server).await["spaces"], 16);
    // Once the attacker's spaces held nothing for the resume window, they are reclaimed; so is its quota.
    drop(mallory);
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    assert_eq!(healthz(&server).await["spaces"], 6, "ann's five spaces with runs and the one she watches");
    let mut mallory = Raw::connect(&server).await;
    hello(&mut mallory, &token("mallory", &["*"], &[])).await;
    let r = mallory.request(json!({"type": "subscribe", "id": 1, "space": "junk-again"})).await;
    assert_eq!(r["type"], "snapshot", "{r}");
}
