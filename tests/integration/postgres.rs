//! PostgreSQL as the store, where it differs from SQLite: a URL that cannot be used is a one-line error at start
//! that never shows the password; connections cut under load lose no acknowledged completion and record nothing
//! twice; and while the database is unreachable, live runs, patches and subscriptions go on, completions are
//! refused with `store_unavailable` after a bounded wait, and their records are written once it is back.

use crate::support::*;
use coworker::client::{Client, ClientError};
use coworker::store::postgres::TestDatabase;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Runs the binary with `args` until it exits (at most 30 s); its exit status and everything it printed.
fn run_to_exit(args: &[&str]) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_coworker"))
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = wait_for_exit(&mut child, Duration::from_secs(30)) else {
        let _ = child.kill();
        panic!("the server started with {args:?}");
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut out).unwrap();
    (status, out)
}

#[test]
fn a_database_url_that_cannot_be_used_is_a_clear_error_at_start() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/coworker");
    let (status, out) = run_to_exit(&["--database-url", &url]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("PostgreSQL at postgres://postgres:***@127.0.0.1:{port}/coworker")), "{out}");
    assert!(!out.contains("hunter2"), "the password was shown: {out}");
    assert!(!out.contains("listening"), "{out}");
    let (status, out) = run_to_exit(&["--database-url", "mysql://root:hunter2@127.0.0.1/x"]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("must be a postgres:// URL") && !out.contains("hunter2"), "{out}");
}

/// Cuts every connection to `db` from the server side.
async fn cut_connections(admin: &tokio_postgres::Client, db: &str) {
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&db],
        )
        .await
        .unwrap();
}

async fn admin() -> tokio_postgres::Client {
    let url = std::env::var("COWORKER_TEST_DATABASE_URL").unwrap_or_else(|_| TestDatabase::DEFAULT_URL.into());
    let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    client
}

fn code(e: &ClientError) -> String {
    match e {
        ClientError::Server { code, .. } => code.clone(),
        other => format!("{other:?}"),
    }
}

/// The trail's records of `operation`, by run id, each counted.
async fn trail(c: &Client, operation: &str) -> HashMap<String, (usize, Value)> {
    let mut out: HashMap<String, (usize, Value)> = HashMap::new();
    let mut skip = 0;
    loop {
        let page = c
            .run(json!({"operation": "select", "doctype": "Run",
                "input": {"where": {"operation": operation}, "take": 1000, "skip": skip}}))
            .await
            .unwrap();
        let rows = page["output"]["data"].as_array().unwrap().clone();
        if rows.is_empty() {
            return out;
        }
        skip += rows.len();
        for r in rows {
            let e = out.entry(r["id"].as_str().unwrap().to_string()).or_insert((0, r.clone()));
            e.0 += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_cut_under_load_lose_no_acknowledged_completion() {
    let store = TestStore::postgres().await;
    let TestStore::Postgres(db) = &store else { unreachable!() };
    let db_name = db.url.rsplit('/').next().unwrap().to_string();
    let server = store.start().await;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut workers = Vec::new();
    for w in 0..8 {
        let (url, acked, refused, stop) = (server.url(), acked.clone(), refused.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let c = Client::connect(&url).await.unwrap();
            while !stop.is_cancelled() {
                let run = c.run(json!({"operation": "fault-test", "owner": format!("w{w}")})).await.unwrap();
                let id = run["id"].as_str().unwrap().to_string();
                match c.complete(&id, Some(json!({"w": w}))).await {
                    Ok(_) => acked.lock().push(id),
                    Err(e) => refused.lock().push((id, code(&e))),
                }
            }
        }));
    }
    let admin = admin().await;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cut_connections(&admin, &db_name).await;
    }
    stop.cancel();
    for w in workers {
        w.await.unwrap();
    }
    let c = Client::connect(&server.url()).await.unwrap();
    let trail = trail(&c, "fault-test").await;
    let (acked, refused) = (acked.lock().clone(), refused.lock().clone());
    assert!(acked.len() > 50, "too few completions to mean anything: {}", acked.len());
    for id in &acked {
        let (n, rec) = trail.get(id).unwrap_or_else(|| panic!("acknowledged run {id} is not in the trail"));
        assert_eq!((*n, &rec["status"]), (1, &json!("completed")), "{rec}");
    }
    for (id, code) in &refused {
        assert_eq!(code, "store_unavailable", "run {id}");
        assert!(trail.get(id).is_none_or(|(n, _)| *n == 1), "run {id} recorded twice");
    }
    eprintln!("fault test: {} acknowledged, {} refused, {} in the trail", acked.len(), refused.len(), trail.len());
    drop(c);
    server.stop().await;
    store.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_database_is_unreachable_live_runs_go_on_and_completions_wait_then_are_refused() {
    let store = TestStore::postgres().await;
    let TestStore::Postgres(db) = &store else { unreachable!() };
    let db_name = db.url.rsplit('/').next().unwrap().to_string();
    let server = store.start().await;
    let c = Client::connect(&server.url()).await.unwrap();
    let mut sub = c.subscribe("default", None, false).await.unwrap();
    let run = c.run(json!({"operation": "outage-test"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();

    // The database goes away: no new connection is allowed, and the open ones are cut.
    let admin = admin().await;
    admin.batch_execute(&format!("ALTER DATABASE {db_name} WITH ALLOW_CONNECTIONS false")).await.unwrap();
    cut_connections(&admin, &db_name).await;
    // Streaming and subscriptions go on.
    for t in 0..20 {
        c.patch(&id, json!([{"op": "append", "path": "output.tokens", "value": t}])).await.unwrap();
    }
    let streamed = tokio::time::timeout(WAIT, async {
        while sub.state()["activeRuns"][&id]["output"]["tokens"].as_array().map(Vec::len) != Some(20) {
            sub.next().await.unwrap().unwrap();
        }
    })
    .await;
    assert!(streamed.is_ok(), "the stream stopped with the database");
    // A completion waits a bounded time, then is refused as unavailable.
    let started = std::time::Instant::now();
    let e = c.complete(&id, None).await.unwrap_err();
    assert_eq!(code(&e), "store_unavailable", "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(30), "waited {:?}", started.elapsed());

    // Back: the pool reconnects by itself, the refused run's record is written, and completions are acknowledged.
    admin.batch_execute(&format!("ALTER DATABASE {db_name} WITH ALLOW_CONNECTIONS true")).await.unwrap();
    let other = c.run(json!({"operation": "outage-test"})).await.unwrap();
    let done = tokio::time::timeout(Duration::from_secs(30), c.complete(other["id"].as_str().unwrap(), None)).await;
    done.expect("a completion once the database is back").unwrap();
    let recorded = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some((1, rec)) = trail(&c, "outage-test").await.get(&id) {
                return rec.clone();
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the refused completion's record once the database is back");
    assert_eq!(recorded["output"]["tokens"].as_array().map(Vec::len), Some(20));
    drop(c);
    server.stop().await;
    store.remove().await;
}
