//! The attacks an adversarial probe found getting through (issue "Attacks that get through today"), one test each,
//! each asserting the code or behaviour that stops it and that the attacker's target is unharmed. The probe that
//! measured them before and after is `examples/attack_probe.rs`.

use crate::support::jwt::{hello, now, sign, token};
use crate::support::*;
use coworker::Config;
use coworker::config::{EngineConfig, Limits};
use coworker::plugin::hooks::Hooks;
use serde_json::{Value, json};

async fn secured(limits: Limits) -> TestServer {
    crate::support::jwt::secured(limits, vec![]).await
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

/// The attack probe found this one in the fix above: a space whose last subscriber left some time after its last
/// flush was never reclaimed (its task slept on a deadline computed while the subscriber was there).
#[tokio::test(start_paused = true)]
async fn a_space_is_reclaimed_when_its_subscriber_leaves_later() {
    let _hb = heartbeat();
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    let r = c.request(json!({"type": "subscribe", "id": 1, "space": "late"})).await;
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert_eq!(c.request(json!({"type": "unsubscribe", "id": 2, "sub": r["sub"]})).await["type"], "reply");
    assert_eq!(healthz(&server).await["spaces"], 1, "kept for the resume window");
    tokio::time::sleep(std::time::Duration::from_secs(61)).await;
    assert_eq!(healthz(&server).await["spaces"], 0, "reclaimed once the window passed");
}

fn data_run(operation: &str, doctype: &str, input: Value, space: Option<&str>) -> Value {
    let mut run = json!({"operation": operation, "doctype": doctype, "input": input});
    if let Some(s) = space {
        run["space"] = json!(s);
    }
    json!({"type": "run", "id": operation, "run": run})
}

/// Finding 1: a `select` on `Run` is itself a run, and its whole output was recorded in the trail, so the next
/// `select` returned it again inside a bigger output: from ~110-byte requests, the reply doubled every time (2.2 MB
/// at the 10th, 562 MB at the 18th). It also reached every subscriber of the space as `currentRun`.
#[tokio::test]
async fn reading_the_trail_does_not_record_what_it_read() {
    let server = start_server().await;
    let mut c = Raw::connect(&server).await;
    for _ in 0..5 {
        let id = c.start(json!({"operation": "interpret"})).await;
        assert_eq!(c.request(json!({"type": "complete", "id": "c", "run": id})).await["type"], "reply");
    }
    let mut sizes = Vec::new();
    for _ in 0..18 {
        let text = {
            c.send(data_run("select", "Run", json!({"take": 1000}), None)).await;
            c.ws_next_text().await
        };
        let reply: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(reply["type"], "reply", "{text}");
        sizes.push(text.len());
    }
    // Each select adds one small record (its request and a summary of what it returned), not its output.
    assert!(sizes[17] <= sizes[1] + 16 * 2_000, "replies grew from {} to {} bytes: {sizes:?}", sizes[1], sizes[17]);
    let selects =
        c.request(data_run("select", "Run", json!({"where": {"operation": "select"}, "take": 1}), None)).await;
    let recorded = &selects["run"]["output"]["data"][0];
    let output = recorded["output"].as_object().unwrap();
    assert_eq!(output.keys().collect::<Vec<_>>(), ["meta"], "the trail keeps a summary of a read: {recorded}");
    assert_eq!(recorded["output"]["meta"]["take"], 1000, "{recorded}");
    assert!(recorded["output"]["meta"]["returned"].as_u64().is_some_and(|n| n > 5), "{recorded}");
}

/// Every server-produced output is bounded: a `select` of large documents stops at `max_output_bytes` and says so.
#[tokio::test]
async fn a_select_output_is_bounded_and_says_it_was_cut() {
    let limits = Limits { max_output_bytes: 100_000, ..Limits::default() };
    let server = start_with(EngineConfig { limits, ..EngineConfig::default() }, Hooks::default()).await;
    let mut c = Raw::connect(&server).await;
    let blob = "d".repeat(30_000);
    for i in 0..10 {
        let r =
            c.request(data_run("create", "Big", json!({"data": {"name": format!("b{i}"), "blob": blob}}), None)).await;
        assert_eq!(r["type"], "reply", "{r}");
    }
    let r = c.request(data_run("select", "Big", json!({"take": 10}), None)).await;
    let meta = &r["run"]["output"]["meta"];
    assert_eq!((meta["total"].as_u64(), meta["truncated"].as_bool()), (Some(10), Some(true)), "{meta}");
    let returned = meta["returned"].as_u64().unwrap();
    assert!((1..10).contains(&returned) && r["run"]["output"]["data"].as_array().unwrap().len() as u64 == returned);
    // The rest is there to page through.
    let r = c.request(data_run("select", "Big", json!({"take": 10, "skip": returned}), None)).await;
    assert_eq!(r["run"]["output"]["data"][0]["name"], format!("b{returned}"));
}

/// Finding 3: documents and schemas had no tenant boundary: bob read alice's `Invoice` (with its `iban`), created a
/// `Schema` for `Invoice` that then rejected alice's next create, and deleted all her invoices with `{"where":{}}`.
#[tokio::test]
async fn documents_and_schemas_belong_to_a_space() {
    let server = secured(Limits::default()).await;
    let mut alice = Raw::connect(&server).await;
    hello(&mut alice, &token("alice", &["alice"], &["alice"])).await;
    let mut bob = Raw::connect(&server).await;
    hello(&mut bob, &token("bob", &["bob"], &["bob"])).await;
    let invoice = json!({"data": {"name": "inv-1", "iban": "DE89 3704 0044 0532 0130 00"}});
    let r = alice.request(data_run("create", "Invoice", invoice, Some("alice"))).await;
    assert_eq!(r["type"], "reply", "{r}");
    // Bob cannot run in alice's space at all; in his own, he sees no invoice.
    let r = bob.request(data_run("select", "Invoice", json!({}), Some("alice"))).await;
    assert_eq!(r["code"], "forbidden", "{r}");
    let r = bob.request(data_run("select", "Invoice", json!({"where": {}}), Some("bob"))).await;
    assert_eq!(r["run"]["output"]["meta"]["total"], 0, "{r}");
    assert!(!r.to_string().contains("DE89"));
    // His schema binds his space only.
    let schema =
        json!({"data": {"_schema_doctype": "Invoice", "fields": [{"fieldname": "x", "fieldtype": "Data", "reqd": 1}]}});
    assert_eq!(bob.request(data_run("create", "Schema", schema, Some("bob"))).await["type"], "reply");
    let r = alice.request(data_run("create", "Invoice", json!({"data": {"name": "inv-2"}}), Some("alice"))).await;
    assert_eq!(r["type"], "reply", "bob's schema does not apply in alice's space: {r}");
    let r = bob.request(data_run("create", "Invoice", json!({"data": {"name": "b-1"}}), Some("bob"))).await;
    assert_eq!(r["code"], "rejected", "it applies in his: {r}");
    // His delete of everything deletes his documents only.
    let r = bob.request(data_run("delete", "Invoice", json!({"where": {}}), Some("bob"))).await;
    assert_eq!(r["run"]["output"]["meta"]["affected"], 0, "{r}");
    let r = alice.request(data_run("select", "Invoice", json!({}), Some("alice"))).await;
    assert_eq!(r["run"]["output"]["meta"]["total"], 2, "{r}");
}

/// Finding 2: all store work ran on one thread, one request after another: a `select` on `Run` with 900 `where`
/// keys that matched nothing took 21 s of CPU on a 100,000-run trail, ten of them delayed another client's
/// `complete` reply by 218 s, and 1,100 keys failed with SQLite's own error text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_read_holds_no_acknowledgement_and_queries_are_bounded() {
    let _turn = heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let limits = Limits { query_timeout: std::time::Duration::from_millis(100), ..Limits::default() };
    let config = Config {
        data_dir: Some(dir.path().to_path_buf()),
        engine: EngineConfig { limits, ..EngineConfig::default() },
        ..Config::default()
    };
    let server = start_config(config, Hooks::default()).await;
    let mut c = Raw::connect(&server).await;
    // A trail of 30,000 runs, written straight into the file.
    {
        let mut db = rusqlite::Connection::open(coworker::store::sqlite::db_path(dir.path())).unwrap();
        db.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
        let tx = db.transaction().unwrap();
        for i in 0..30_000 {
            let id = format!("00000000-0000-7000-8000-{i:012}");
            let ctx = json!({"id": id, "timestamp": i, "operation": "interpret", "owner": "x", "input": {"n": i, "pad": "p".repeat(100)}});
            tx.execute("INSERT INTO runs (id, timestamp, owner, operation, status, ctx) VALUES (?1, ?2, 'x', 'interpret', 'completed', ?3)",
                rusqlite::params![id, i, ctx.to_string()]).unwrap();
        }
        tx.commit().unwrap();
    }
    // 1,100 `where` keys: refused before any SQL, with our own words.
    let many: serde_json::Map<String, Value> = (0..1_100).map(|i| (format!("k{i}"), json!(i))).collect();
    let r = c.request(data_run("select", "Run", json!({"where": many}), None)).await;
    assert_eq!(r["run"]["error"], json!({"code": "limit_exceeded", "message": "more than 16 conditions in `where`"}));
    // Ten slow reads (a full scan and sort on a JSON field, under conditions that hold for every row), then a
    // completion on another connection: its acknowledgement does not wait for them.
    let heavy = json!({"where": {"input": {"ne": "a", "gt": "", "gte": "", "lt": "~", "lte": "~"}},
                       "orderBy": {"input": "desc"}});
    let started = std::time::Instant::now();
    let mut readers = Vec::new();
    for _ in 0..10 {
        let mut r = Raw::connect(&server).await;
        r.send(data_run("select", "Run", heavy.clone(), None)).await;
        readers.push(tokio::spawn(async move {
            let f = r.recv().await;
            (std::time::Instant::now(), f)
        }));
    }
    let mut producer = Raw::connect(&server).await;
    let id = producer.start(json!({"operation": "interpret"})).await;
    let done = producer.request(json!({"type": "complete", "id": "c", "run": id})).await;
    assert_eq!(done["type"], "reply", "{done}");
    let acknowledged = std::time::Instant::now();
    // Each read either finished or was stopped at the time limit, with our code and words.
    let (mut timeouts, mut last) = (0, started);
    for r in readers {
        let (at, f) = r.await.unwrap();
        last = last.max(at);
        if f["run"]["error"]["code"] == "query_timeout" {
            timeouts += 1;
            let text = f["run"]["error"].to_string().to_lowercase();
            assert!(!text.contains("sqlite") && !text.contains("interrupt"), "{text}");
        } else {
            assert_eq!(f["type"], "reply", "{}", f["code"]);
        }
    }
    assert!(timeouts > 0, "no read ran into the time limit: the check proves nothing");
    assert!(
        acknowledged < last,
        "the completion was acknowledged after {:?}, once every read had ended ({:?})",
        acknowledged - started,
        last - started
    );
}
