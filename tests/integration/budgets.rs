//! Memory budgets: a run, an owner and the whole server each have a budget of state bytes. A write past one is
//! refused whole with its own code, changes nothing, and leaves the run and the connection usable; the budget
//! comes back when runs finish; nothing acknowledged is lost. Also the byte rate per connection.

use crate::support::*;
use coworker::config::{EngineConfig, Limits};
use coworker::plugin::hooks::Hooks;
use serde_json::{Value, json};

fn server_with(limits: Limits) -> impl std::future::Future<Output = TestServer> {
    start_with(EngineConfig { limits, ..EngineConfig::default() }, Hooks::default())
}

/// A fresh snapshot of the default space, taken on a new connection.
async fn fresh_state(server: &TestServer) -> Value {
    let mut c = Raw::connect(server).await;
    let snap = c.request(json!({"type": "subscribe", "id": "fresh"})).await;
    assert_eq!(snap["type"], "snapshot", "{snap}");
    snap["state"].clone()
}

fn append(run: &str, id: u64, value: &str) -> Value {
    json!({"type": "patch", "id": id, "run": run, "ops": [{"op": "append", "path": "output.tokens", "value": value}]})
}

#[tokio::test]
async fn a_patch_past_the_run_budget_is_refused_whole_and_the_run_stays_usable() {
    let server = server_with(Limits { max_run_bytes: 16 * 1024, ..Limits::default() }).await;
    let mut c = Raw::connect(&server).await;
    let run = c.start(json!({"operation": "interpret"})).await;
    let token = "t".repeat(1000);
    let mut acked = 0u64;
    let refused = loop {
        let r = c.request(append(&run, acked, &token)).await;
        if r["type"] == "error" {
            break r;
        }
        acked += 1;
        assert!(acked < 100, "a 16 KiB run took {acked} 1 KB tokens");
    };
    assert_eq!(refused["code"], "run_too_large", "{refused}");
    assert!(acked >= 10, "refused after only {acked} tokens");
    // A two-op patch whose first op would fit is refused whole: nothing of it lands.
    let r = c
        .request(json!({"type": "patch", "id": "two", "run": run, "ops": [
            {"op": "set", "path": "output.small", "value": 1},
            {"op": "append", "path": "output.tokens", "value": token}]}))
        .await;
    assert_eq!(r["code"], "run_too_large", "{r}");
    let state = fresh_state(&server).await;
    let output = &state["activeRuns"][&run]["output"];
    assert_eq!(output["tokens"].as_array().unwrap().len() as u64, acked, "exactly the acknowledged tokens");
    assert!(output.get("small").is_none(), "the refused patch left nothing behind: {output}");
    // The run stays usable: a set that shrinks it, then growth again, then complete with every acknowledged write.
    let r = c
        .request(json!({"type": "patch", "id": "shrink", "run": run,
                             "ops": [{"op": "set", "path": "output.tokens", "value": ["kept"]}]}))
        .await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!(c.request(append(&run, 1000, &token)).await["type"], "reply");
    let done = c.request(json!({"type": "complete", "id": "done", "run": run})).await;
    assert_eq!(done["run"]["output"]["tokens"], json!(["kept", token]));
}

#[tokio::test]
async fn an_owners_runs_share_a_budget_that_comes_back_when_they_finish() {
    let server = server_with(Limits { max_owner_state_bytes: 40 * 1024, ..Limits::default() }).await;
    let mut c = Raw::connect(&server).await;
    let token = "o".repeat(4000);
    let mut runs = Vec::new();
    let refused = 'fill: loop {
        let run = c.start(json!({"operation": "interpret", "owner": "ann"})).await;
        runs.push(run.clone());
        for n in 0..3 {
            let r = c.request(append(&run, n, &token)).await;
            if r["type"] == "error" {
                break 'fill r;
            }
        }
        assert!(runs.len() < 20, "the owner budget never applied");
    };
    assert_eq!(refused["code"], "quota_state_bytes", "{refused}");
    // Another owner is not affected.
    let bob = c.start(json!({"operation": "interpret", "owner": "bob"})).await;
    assert_eq!(c.request(append(&bob, 1, &token)).await["type"], "reply");
    // Ann's finished runs give their bytes back.
    let last = runs.pop().unwrap();
    for run in &runs {
        assert_eq!(c.request(json!({"type": "complete", "id": "c", "run": run})).await["type"], "reply");
    }
    assert_eq!(c.request(append(&last, 9, &token)).await["type"], "reply", "growth is accepted again");
}

#[tokio::test]
async fn a_spent_server_budget_refuses_growth_and_serves_everything_else() {
    let limits = Limits { max_state_bytes: 64 * 1024, ..Limits::default() };
    let server = server_with(limits).await;
    let mut c = Raw::connect(&server).await;
    let token = "s".repeat(4000);
    let mut runs = Vec::new();
    let refused = 'fill: loop {
        let r = c.request(json!({"type": "run", "id": "r", "run": {"operation": "interpret"}})).await;
        if r["type"] == "error" {
            break r;
        }
        let run = r["run"]["id"].as_str().unwrap().to_string();
        runs.push(run.clone());
        for n in 0..4 {
            let r = c.request(append(&run, n, &token)).await;
            if r["type"] == "error" {
                break 'fill r;
            }
        }
        assert!(runs.len() < 40, "the server budget never applied");
    };
    assert_eq!(refused["code"], "over_capacity", "{refused}");
    // Fill what is left with small writes, until even one more token does not fit.
    let last = runs.last().unwrap().clone();
    for n in 10.. {
        if c.request(append(&last, n, "x")).await["type"] == "error" {
            break;
        }
        assert!(n < 1000);
    }
    let health: Value =
        serde_json::from_str(http_get(server.addr, "/healthz").await.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(health["status"], "over_capacity", "{health}");
    // New runs are refused (a new run grows state) ...
    let r = c.request(json!({"type": "run", "id": "new", "run": {"operation": "interpret"}})).await;
    assert_eq!(r["code"], "over_capacity", "{r}");
    // ... and so is growth of any run; shrinking, fail, complete and reads are served.
    let (a, b) = (runs[0].clone(), runs[1].clone());
    assert_eq!(c.request(append(&a, 100, "x")).await["code"], "over_capacity");
    let shrink = json!({"type": "patch", "id": "s", "run": a, "ops": [{"op": "set", "path": "output", "value": null}]});
    assert_eq!(c.request(shrink).await["type"], "reply");
    assert!(fresh_state(&server).await["activeRuns"].as_object().unwrap().len() == runs.len());
    let failed = c.request(json!({"type": "fail", "id": "f", "run": b, "error": {"message": "stop"}})).await;
    assert_eq!(failed["run"]["status"], "failed", "{failed}");
    for run in &runs[2..] {
        assert_eq!(c.request(json!({"type": "complete", "id": "c", "run": run})).await["type"], "reply");
    }
    // The budget came back: a new run grows again.
    let run = c.start(json!({"operation": "interpret"})).await;
    assert_eq!(c.request(append(&run, 1, &token)).await["type"], "reply");
    let metrics = http_get(server.addr, "/metrics").await;
    assert!(metric(&metrics, "coworker_refusals_total{code=\"over_capacity\"}").unwrap() >= 3.0, "{metrics}");
    assert_eq!(metric(&metrics, "coworker_max_state_bytes"), Some(64.0 * 1024.0));
    let state_bytes = metric(&metrics, "coworker_state_bytes").unwrap();
    assert!(state_bytes > 0.0 && state_bytes <= 64.0 * 1024.0, "{state_bytes}");
    assert!(metric(&metrics, "coworker_largest_run_bytes").unwrap() > 4000.0);
}

#[tokio::test(start_paused = true)]
async fn the_byte_rate_refuses_then_closes_a_flooding_connection() {
    let _hb = heartbeat();
    let limits = Limits { bytes_per_second: 1000, byte_burst: 20_000, message_burst: 20, ..Limits::default() };
    let server = server_with(limits).await;
    let mut control = Raw::connect(&server).await;
    let mut flood = Raw::connect(&server).await;
    let run = flood.start(json!({"operation": "interpret"})).await;
    let token = "b".repeat(6000);
    for n in 0..3 {
        assert_eq!(flood.request(append(&run, n, &token)).await["type"], "reply", "within the burst");
    }
    let r = flood.request(append(&run, 3, &token)).await;
    assert_eq!(r["code"], "rate_limited", "{r}");
    assert_eq!(r["id"], 3, "the refused request is still answered");
    // Keep flooding: after as many refusals in a row as the message burst, the connection is closed with 1008.
    let code = loop {
        flood.send(append(&run, 99, &token)).await;
        match tokio::time::timeout(WAIT, futures::StreamExt::next(&mut flood.ws)).await.unwrap() {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(c))) => break c.map(|c| u16::from(c.code)),
            Some(Ok(_)) => continue,
            _ => break None,
        }
    };
    assert_eq!(code, Some(1008));
    // The others are unaffected.
    assert_eq!(control.request(json!({"type": "subscribe", "id": 1})).await["type"], "snapshot");
}

#[tokio::test]
async fn the_hello_reply_tells_the_client_its_limits() {
    let limits = Limits { max_message_bytes: 32_768, max_run_bytes: 1 << 20, ..Limits::default() };
    let server = server_with(limits).await;
    let mut c = Raw::connect(&server).await;
    let r = c.request(json!({"type": "hello", "id": 1})).await;
    assert_eq!(r["owner"], Value::Null, "development mode: {r}");
    let l = &r["limits"];
    assert_eq!(l["maxMessageBytes"], 32_768);
    assert_eq!(l["maxOpsPerPatch"], 256);
    assert_eq!(l["maxRunBytes"], 1 << 20);
    assert_eq!(l["messagesPerSecond"], 10_000);
    assert_eq!(l["bytesPerSecond"], 64 << 20);
    assert_eq!(l["pingIntervalMs"], 20_000);
    assert_eq!(l["idleTimeoutMs"], 60_000);
    assert_eq!(l["tickMs"], 16);
}
