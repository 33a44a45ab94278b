//! Cluster mode: real coworker processes over one real nats-server (JetStream, started here on a free port with a
//! temporary store) and one PostgreSQL database of their own. Every node serves one state; a node killed with
//! SIGKILL costs its subscribers a resume on another node; a broker killed and restarted costs writes an
//! `unavailable`, never an acknowledged completion.

use crate::support::{Process, WAIT, heavy, snapshot_when};
use coworker::client::{Client, ClientError, Subscription};
use coworker::store::postgres::TestDatabase;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// A nats-server with JetStream of the test's own. Killed when dropped.
struct Nats {
    child: std::process::Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let child = Nats::spawn(port, &dir);
        Nats { child, port, dir }
    }

    fn spawn(port: u16, dir: &tempfile::TempDir) -> std::process::Child {
        let mut child = std::process::Command::new("nats-server")
            .args(["-js", "-sd", dir.path().to_str().unwrap(), "-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server is installed (scripts/test.sh installs Debian's nats-server)");
        let deadline = std::time::Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if std::time::Instant::now() >= deadline {
                // Not left behind holding the port.
                let _ = child.kill();
                let _ = child.wait();
                panic!("nats-server did not listen on {port}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and store.
    fn restart(&mut self) {
        self.child = Nats::spawn(self.port, &self.dir);
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

/// NATS, PostgreSQL and `n` nodes.
struct TestCluster {
    nodes: Vec<Process>,
    nats: Nats,
    db: TestDatabase,
}

impl TestCluster {
    async fn start(n: usize) -> TestCluster {
        let nats = Nats::start();
        let db = TestDatabase::create().await;
        let nodes = (1..=n).map(|i| node(&nats, &db, i)).collect();
        TestCluster { nodes, nats, db }
    }

    fn url(&self, i: usize) -> &str {
        &self.nodes[i].url
    }

    async fn remove(self) {
        let TestCluster { nodes, nats, db } = self;
        drop(nodes);
        drop(nats);
        db.drop_now().await;
    }
}

fn node(nats: &Nats, db: &TestDatabase, i: usize) -> Process {
    Process::start(&["--cluster", &nats.url(), "--database-url", &db.url, "--node-name", &format!("node{i}")])
}

async fn connect(url: &str) -> Client {
    Client::connect(url).await.unwrap()
}

fn append(text: String) -> Value {
    json!([{"op": "append", "path": "output.text", "value": text}])
}

/// Applies `sub`'s diffs until its state is at `seq`; every update must be a diff (no resync).
async fn follow_to(sub: &mut Subscription, seq: u64) {
    while sub.seq < seq {
        let update = tokio::time::timeout(WAIT, sub.next()).await.expect("diffs keep coming").expect("connected");
        match update.unwrap() {
            coworker::client::Update::Diff { .. } | coworker::client::Update::Event { .. } => {}
            coworker::client::Update::Resync { seq } => panic!("a resync at {seq}: a diff went missing"),
        }
    }
    assert_eq!(sub.seq, seq, "past the snapshot's seq");
}

fn output_text(state: &Value, run: &str) -> String {
    // Appends to a missing path make an array of the appended strings.
    let text = &state["activeRuns"][run]["output"]["text"];
    text.as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default()
}

/// Token numbers in `text` ("0,1,2,"), checked to be exactly 0..n in order: no gap, no duplicate.
fn assert_tokens(text: &str, n: usize) {
    let got: Vec<usize> = text.split(',').filter(|t| !t.is_empty()).map(|t| t.parse().unwrap()).collect();
    let want: Vec<usize> = (0..n).collect();
    assert_eq!(got, want, "tokens out of order, missing or repeated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_serve_one_state() {
    let _heavy = heavy().await;
    let cluster = TestCluster::start(3).await;
    let (n1, n2, n3) = (connect(cluster.url(0)).await, connect(cluster.url(1)).await, connect(cluster.url(2)).await);
    let mut sub2 = n2.subscribe("room", None, false).await.unwrap();
    let mut sub3 = n3.subscribe("room", None, false).await.unwrap();

    // A producer on node 1 streams into a run; subscribers on nodes 2 and 3 apply every diff.
    let run = n1.run(json!({"operation": "interpret", "space": "room"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    const TOKENS: usize = 300;
    for t in 0..TOKENS {
        n1.patch_nowait(&id, append(format!("{t},"))).await.unwrap();
    }
    n1.patch(&id, json!([{"op": "set", "path": "output.done", "value": true}])).await.unwrap();
    let (state1, seq1) = snapshot_when(&n1, "room", |s| s["activeRuns"][id.as_str()]["output"]["done"] == true).await;
    assert_tokens(&output_text(&state1, &id), TOKENS);
    for sub in [&mut sub2, &mut sub3] {
        follow_to(sub, seq1).await;
        assert_eq!(sub.state(), &state1, "a subscriber's state differs from node 1's snapshot at the same seq");
    }

    // A run created on node 2 in a space the others do not hold yet, patched through nodes 1 and 3.
    let other = n2.run(json!({"operation": "task", "space": "other"})).await.unwrap();
    let oid = other["id"].as_str().unwrap().to_string();
    n1.patch(&oid, json!([{"op": "set", "path": "output.a", "value": 1}])).await.unwrap();
    n3.patch(&oid, json!([{"op": "set", "path": "output.b", "value": 2}])).await.unwrap();
    n2.patch(&oid, json!([{"op": "set", "path": "output.c", "value": 3}])).await.unwrap();
    let has_all = |s: &Value| s["activeRuns"][oid.as_str()]["output"] == json!({"a": 1, "b": 2, "c": 3});
    let snapshots = [
        snapshot_when(&n1, "other", has_all).await,
        snapshot_when(&n2, "other", has_all).await,
        snapshot_when(&n3, "other", has_all).await,
    ];
    assert!(snapshots.iter().all(|s| s == &snapshots[0]), "the nodes disagree: {snapshots:?}");

    // A completion acknowledged on node 3 is in the shared trail, read through node 1.
    let done = n3.complete(&oid, Some(json!({"by": "node3"}))).await.unwrap();
    assert_eq!(done["status"], "completed");
    let page = n1
        .run(json!({"operation": "select", "doctype": "Run", "input": {"where": {"id": oid}, "take": 10}}))
        .await
        .unwrap();
    let rows = page["output"]["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{page}");
    assert_eq!(rows[0]["output"], json!({"by": "node3"}));

    // A write refused by the state machine is refused on every node alike: the run has finished.
    let e = n1.patch(&oid, json!([{"op": "set", "path": "output.x", "value": 1}])).await.unwrap_err();
    assert!(matches!(e, ClientError::Server { ref code, .. } if code == "run_finished"), "{e:?}");
    cluster.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_costs_its_subscribers_a_resume_elsewhere() {
    let _heavy = heavy().await;
    let cluster = TestCluster::start(3).await;
    let (n1, n2, n3) = (connect(cluster.url(0)).await, connect(cluster.url(1)).await, connect(cluster.url(2)).await);
    let run = n1.run(json!({"operation": "interpret", "space": "live"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let mut sub = n2.subscribe("live", None, false).await.unwrap();
    // Node 3 holds the space too (another subscriber there), as a node behind a load balancer usually does.
    let _watcher = n3.subscribe("live", None, false).await.unwrap();

    const TOKENS: usize = 400;
    let producer = {
        let (n1, id) = (n1.clone(), id.clone());
        tokio::spawn(async move {
            for t in 0..TOKENS {
                n1.patch_nowait(&id, append(format!("{t},"))).await.unwrap();
                if t % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            n1.patch(&id, json!([{"op": "set", "path": "output.done", "value": true}])).await.unwrap();
        })
    };
    // Some diffs arrive through node 2, then node 2 dies.
    while output_text(sub.state(), &id).len() < 200 {
        tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap().unwrap();
    }
    cluster.nodes[1].signal("-KILL");
    // Whatever node 2 sent before it died is applied; then the connection ends.
    while let Ok(Some(update)) = tokio::time::timeout(WAIT, sub.next()).await {
        update.unwrap();
    }
    let seen = output_text(sub.state(), &id);
    let resumed = n3.resume("live", None, &sub).await.unwrap();
    assert!(!resumed.resynced, "node 3 could not serve the diffs after seq {}", sub.seq);
    let mut sub = resumed;
    producer.await.unwrap();
    let (state1, seq1) = snapshot_when(&n1, "live", |s| s["activeRuns"][id.as_str()]["output"]["done"] == true).await;
    follow_to(&mut sub, seq1).await;
    assert_tokens(&output_text(sub.state(), &id), TOKENS);
    assert!(output_text(sub.state(), &id).starts_with(&seen));
    assert_eq!(sub.state(), &state1, "the resumed state differs from a fresh snapshot");
    cluster.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_no_acknowledged_completion() {
    let _heavy = heavy().await;
    let mut cluster = TestCluster::start(3).await;
    let (n1, n2) = (connect(cluster.url(0)).await, connect(cluster.url(1)).await);
    let mut sub = n2.subscribe("jobs", None, false).await.unwrap();
    let acked = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let refused = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let worker = {
        let (acked, refused, stop) = (acked.clone(), refused.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let step = async {
                    let run = n1.run(json!({"operation": "task", "space": "jobs"})).await?;
                    let id = run["id"].as_str().unwrap().to_string();
                    n1.patch(&id, json!([{"op": "set", "path": "output.n", "value": n}])).await?;
                    n1.complete(&id, Some(json!({"n": n}))).await?;
                    Ok::<_, ClientError>(id)
                };
                match step.await {
                    Ok(id) => acked.lock().push(id),
                    Err(ClientError::Server { code, .. }) => {
                        refused.lock().push(code);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => {
                        refused.lock().push(format!("{e:?}"));
                        return;
                    }
                }
            }
        })
    };
    let count = |v: &Arc<parking_lot::Mutex<Vec<String>>>| v.lock().len();
    while count(&acked) < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.nats.kill();
    let before = count(&refused);
    while count(&refused) < before + 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While the broker is gone the nodes say so, and serve nothing new.
    let n3 = connect(cluster.url(2)).await;
    let e = n3.subscribe("fresh-space", None, false).await.map(|_| ()).unwrap_err();
    assert!(matches!(e, ClientError::Server { ref code, .. } if code == "unavailable"), "{e:?}");
    cluster.nats.restart();
    let after = count(&acked);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while count(&acked) < after + 20 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no completion after the broker came back; node 1 logged:\n{}",
            cluster.nodes[0].log.lock().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    worker.await.unwrap();

    let refused = refused.lock().clone();
    assert!(refused.iter().all(|c| c == "unavailable"), "refusals other than unavailable: {refused:?}");
    let acked = acked.lock().clone();
    let trail = crate::support::trail(&n3, json!({"operation": "task"})).await;
    for id in &acked {
        assert!(trail.contains_key(id), "acknowledged completion {id} is missing from the trail");
    }
    // The subscriber that stayed on node 2 ends with the state a fresh subscriber gets there.
    let (state, seq) = snapshot_when(&n2, "jobs", |_| true).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while sub.seq < seq {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::timeout(WAIT, sub.next()).await.unwrap().unwrap().unwrap();
    }
    assert_eq!(sub.state(), &state);
    eprintln!("broker restart: {} acknowledged, {} refused with unavailable", acked.len(), refused.len());
    cluster.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_producers_on_two_nodes_land_in_one_order_everywhere() {
    let _heavy = heavy().await;
    let cluster = TestCluster::start(3).await;
    let (n1, n2, n3) = (connect(cluster.url(0)).await, connect(cluster.url(1)).await, connect(cluster.url(2)).await);
    let run = n1.run(json!({"operation": "interpret", "space": "duet"})).await.unwrap();
    let id = run["id"].as_str().unwrap().to_string();
    let _holder = n2.subscribe("duet", None, false).await.unwrap();
    const EACH: usize = 150;
    let write = |c: Client, tag: &'static str| {
        let id = id.clone();
        tokio::spawn(async move {
            for i in 0..EACH {
                c.patch_nowait(&id, append(format!("{tag}{i};"))).await.unwrap();
            }
            c.patch(&id, json!([{"op": "set", "path": format!("output.{tag}"), "value": true}])).await.unwrap();
        })
    };
    let (a, b) = (write(n1.clone(), "a"), write(n2.clone(), "b"));
    a.await.unwrap();
    b.await.unwrap();
    let both = |s: &Value| {
        s["activeRuns"][id.as_str()]["output"]["a"] == true && s["activeRuns"][id.as_str()]["output"]["b"] == true
    };
    let states = [
        snapshot_when(&n1, "duet", both).await,
        snapshot_when(&n2, "duet", both).await,
        snapshot_when(&n3, "duet", both).await,
    ];
    assert!(states.iter().all(|s| s == &states[0]), "the nodes applied different orders");
    let text = output_text(&states[0].0, &id);
    for tag in ["a", "b"] {
        let mine: Vec<usize> =
            text.split(';').filter_map(|t| t.strip_prefix(tag)).map(|n| n.parse().unwrap()).collect();
        assert_eq!(mine, (0..EACH).collect::<Vec<_>>(), "producer {tag}'s writes out of order or lost");
    }
    cluster.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_runs_fail_with_producer_lost_once() {
    let _heavy = heavy().await;
    let cluster = TestCluster::start(2).await;
    let (n1, n2) = (connect(cluster.url(0)).await, connect(cluster.url(1)).await);
    let mut sub = n2.subscribe("orphans", None, false).await.unwrap();
    let lost = n1.run(json!({"operation": "interpret", "space": "orphans"})).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    n1.patch(&lost, append("half an answer".into())).await.unwrap();
    let kept = n2.run(json!({"operation": "interpret", "space": "orphans"})).await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    n2.patch(&kept, append("still here".into())).await.unwrap();
    cluster.nodes[0].signal("-KILL");
    // Node 1's heartbeat stops; once its key is gone (NODE_TTL, 15 s) node 2 fails the run it was producing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
    while sub.state()["activeRuns"][lost.as_str()]["status"] != "failed" {
        assert!(tokio::time::Instant::now() < deadline, "the run of the dead node never failed: {}", sub.state());
        let _ = tokio::time::timeout(Duration::from_secs(1), sub.next()).await;
    }
    let run = &sub.state()["activeRuns"][lost.as_str()];
    assert_eq!(run["error"]["code"], "producer_lost", "{run}");
    assert_eq!(sub.state()["activeRuns"][kept.as_str()]["status"], "running", "a live node's run is left alone");
    let page = n2
        .run(json!({"operation": "select", "doctype": "Run", "input": {"where": {"id": lost}, "take": 10}}))
        .await
        .unwrap();
    let rows = page["output"]["data"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "recorded once: {page}");
    assert_eq!(rows[0]["error"]["code"], "producer_lost");
    cluster.remove().await;
}

/// A counter from a node's `/metrics`.
async fn node_metric(node: &Process, name: &str) -> f64 {
    let addr = node.url.trim_start_matches("ws://").trim_end_matches("/ws").parse().unwrap();
    crate::support::metric(&crate::support::http_get(addr, "/metrics").await, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_joins_late_starts_from_a_snapshot() {
    let _heavy = heavy().await;
    let nats = Nats::start();
    let db = TestDatabase::create().await;
    let args = |i: usize| {
        let name = format!("node{i}");
        vec![
            "--cluster".to_string(),
            nats.url(),
            "--database-url".into(),
            db.url.clone(),
            "--node-name".into(),
            name,
            "--cluster-snapshot-every".into(),
            "10".into(),
        ]
    };
    let start = |i: usize| {
        let a = args(i);
        Process::start(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let p1 = start(1);
    let n1 = connect(&p1.url).await;
    let id =
        n1.run(json!({"operation": "interpret", "space": "late"})).await.unwrap()["id"].as_str().unwrap().to_string();
    // Each patch waits for its answer: an entry each.
    for t in 0..40 {
        n1.patch(&id, append(format!("{t},"))).await.unwrap();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while node_metric(&p1, "coworker_cluster_snapshots_written_total").await < 1.0 {
        assert!(tokio::time::Instant::now() < deadline, "node 1 wrote no snapshot");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in 40..50 {
        n1.patch(&id, append(format!("{t},"))).await.unwrap();
    }
    let p2 = start(2);
    let n2 = connect(&p2.url).await;
    let all = |s: &Value| output_text(s, &id).split(',').filter(|t| !t.is_empty()).count() == 50;
    let on2 = snapshot_when(&n2, "late", all).await;
    let on1 = snapshot_when(&n1, "late", all).await;
    assert_eq!(on2, on1, "the late node's state differs");
    assert_tokens(&output_text(&on2.0, &id), 50);
    assert_eq!(node_metric(&p2, "coworker_cluster_snapshots_loaded_total").await, 1.0);
    let replayed = node_metric(&p2, "coworker_cluster_catch_up_entries_total").await;
    assert!(replayed < 50.0, "node 2 replayed {replayed} entries: it did not start from the snapshot");
    drop((p1, p2, nats));
    db.drop_now().await;
}

#[test]
fn cluster_mode_without_a_shared_store_refuses_to_start() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_coworker"))
        .args(["--listen", "127.0.0.1:0", "--cluster", "nats://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cluster mode needs a shared store"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}
