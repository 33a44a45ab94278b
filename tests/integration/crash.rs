//! The crash test, on SQLite and on PostgreSQL: the server process is killed with SIGKILL at random moments while
//! clients complete runs. After each restart, every run whose completion was acknowledged is in the trail with its
//! final output, and no run appears twice.

use crate::support::*;
use coworker::client::Client;
use parking_lot::Mutex;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

const ROUNDS: usize = 8;
const CLIENTS: usize = 16;

/// A small xorshift generator seeded from the clock: each run of the suite kills at different moments.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

async fn producer(url: String, round: usize, worker: usize, acked: Arc<Mutex<Vec<(String, Value)>>>) {
    let Ok(c) = Client::connect(&url).await else { return };
    for i in 0.. {
        let Ok(run) = c.run(json!({"operation": "crash-test", "owner": format!("w{worker}")})).await else { return };
        let id = run["id"].as_str().unwrap().to_string();
        if c.patch_nowait(&id, json!([{"op": "append", "path": "output.tokens", "value": "t"}])).await.is_err() {
            return;
        }
        let output = json!({"round": round, "worker": worker, "i": i, "tokens": ["final"]});
        match c.complete(&id, Some(output.clone())).await {
            Ok(ctx) => {
                assert_eq!(ctx["output"], output);
                acked.lock().push((id, output));
            }
            Err(_) => return,
        }
    }
}

async fn acknowledged_completions_survive_sigkill(store: &TestStore) {
    let args = store.args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    let acked = Arc::new(Mutex::new(Vec::new()));
    for round in 0..ROUNDS {
        let server = Process::start(&args);
        let workers: Vec<_> =
            (0..CLIENTS).map(|w| tokio::spawn(producer(server.url.clone(), round, w, acked.clone()))).collect();
        let delay = 150 + next(&mut seed) % 600;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        server.signal("-KILL");
        for w in workers {
            tokio::time::timeout(Duration::from_secs(30), w)
                .await
                .expect("producers stop once the server is gone")
                .unwrap();
        }
        drop(server);
    }
    let acked = acked.lock().clone();
    assert!(acked.len() > ROUNDS * 10, "too few completions to mean anything: {}", acked.len());

    let server = Process::start(&args);
    let c = Client::connect(&server.url).await.unwrap();
    let trail = crate::support::trail(&c, json!({"operation": "crash-test"})).await;
    for (id, output) in &acked {
        let rec = trail.get(id).unwrap_or_else(|| panic!("acknowledged run {id} is missing from the trail"));
        assert_eq!(rec["status"], "completed", "{rec}");
        assert_eq!(&rec["output"], output, "{rec}");
    }
    eprintln!("crash test: {} acknowledged completions over {ROUNDS} kills, {} in the trail", acked.len(), trail.len());
}

crate::on_both_stores!(acknowledged_completions_survive_sigkill);
