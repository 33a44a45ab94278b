//! The views: dialogs, AI, pipelines, isLoading, currentRun, and view-set filtering.

use crate::support::*;
use coworker::client::Client;
use serde_json::{Value, json};

/// Waits until `check` holds on the subscription's state (each received diff is applied first).
async fn until(sub: &mut coworker::client::Subscription, what: &str, check: impl Fn(&Value) -> bool) {
    let waited = tokio::time::timeout(WAIT, async {
        while !check(sub.state()) {
            sub.next().await.expect("connection open").expect("diff applies");
        }
    })
    .await;
    assert!(waited.is_ok(), "timed out waiting for {what}; state: {}", sub.state());
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn dialogs_and_ai_list_running_runs_in_creation_order() {
    let server = start_server().await;
    let p = Client::connect(&server.url()).await.unwrap();
    let w = Client::connect(&server.url()).await.unwrap();
    let mut all = w.subscribe("default", None, false).await.unwrap();
    let mut ai_only = w.subscribe("default", Some(&["activeAI"]), false).await.unwrap();
    assert_eq!(ai_only.state(), &json!({"activeRuns": {}, "activeAI": []}));

    let d1 = id(&p.run(json!({"operation": "dialog"})).await.unwrap());
    let a1 = id(&p.run(json!({"operation": "interpret"})).await.unwrap());
    let d2 = id(&p.run(json!({"operation": "dialog"})).await.unwrap());
    let a2 = id(&p.run(json!({"operation": "interpret"})).await.unwrap());
    let other = id(&p.run(json!({"operation": "summarize"})).await.unwrap());
    p.patch(&a1, json!([{"op": "append", "path": "output.tokens", "value": "x"}])).await.unwrap();
    p.patch(&d1, json!([{"op": "set", "path": "output.value", "value": "typed"}])).await.unwrap();

    until(&mut all, "five runs", |s| s["activeRuns"].as_object().unwrap().len() == 5).await;
    until(&mut all, "d1 typed", |s| s["activeRuns"][&d1]["output"]["value"] == "typed").await;
    assert_eq!(all.state()["activeDialogs"], json!([d1, d2]));
    assert_eq!(all.state()["activeAI"], json!([a1, a2]));
    assert_eq!(all.state()["isLoading"], true);
    until(&mut ai_only, "two AI runs", |s| s["activeAI"].as_array().unwrap().len() == 2).await;
    until(&mut ai_only, "a1 token", |s| s["activeRuns"][&a1]["output"]["tokens"] == json!(["x"])).await;
    let keys: Vec<&String> = ai_only.state()["activeRuns"].as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 2, "the AI view set holds only the runs activeAI names: {keys:?}");
    assert_eq!(ai_only.state().as_object().unwrap().len(), 2, "only activeAI and activeRuns");

    // A failed AI run leaves activeAI (and the AI view set) at once, but stays in activeRuns while it lingers.
    p.fail(&a1, json!({"message": "x"})).await.unwrap();
    until(&mut ai_only, "a1 gone", |s| s["activeAI"] == json!([a2]) && s["activeRuns"].get(&a1).is_none()).await;
    until(&mut all, "a1 failed", |s| s["activeRuns"][&a1]["status"] == "failed").await;
    assert_eq!(all.state()["activeAI"], json!([a2]));

    for r in [&d1, &d2, &a2, &other] {
        p.complete(r, None).await.unwrap();
    }
    until(&mut all, "not loading", |s| s["isLoading"] == false).await;
    assert_eq!(all.state()["activeDialogs"], json!([]));
    assert_eq!(all.state()["activeRuns"].as_object().unwrap().keys().collect::<Vec<_>>(), vec![&a1]);
}

#[tokio::test]
async fn completed_data_runs_become_current_run() {
    let server = start_server().await;
    let p = Client::connect(&server.url()).await.unwrap();
    let w = Client::connect(&server.url()).await.unwrap();
    let mut cur = w.subscribe("default", Some(&["currentRun", "isLoading"]), false).await.unwrap();
    assert_eq!(cur.state(), &json!({"currentRun": null, "isLoading": false}));
    // Data operations execute on the server; the completed run becomes currentRun.
    let c = p
        .run(json!({"operation": "create", "doctype": "Task", "input": {"data": {"name": "t1", "title": "a"}}}))
        .await
        .unwrap();
    assert_eq!((c["status"].as_str(), c["output"]["data"][0]["title"].as_str()), (Some("completed"), Some("a")));
    until(&mut cur, "create is current", |st| st["currentRun"]["id"] == c["id"]).await;
    let s = p.run(json!({"operation": "select", "doctype": "Task"})).await.unwrap();
    until(&mut cur, "select is current", |st| st["currentRun"]["id"] == s["id"]).await;
    assert_eq!(cur.state()["currentRun"]["output"]["data"], json!([{"name": "t1", "title": "a"}]));
    assert_eq!(cur.state()["isLoading"], false);
    // A completed live run of another operation does not replace it, and neither does a live data run's
    // completion in another space.
    let d = id(&p.run(json!({"operation": "dialog"})).await.unwrap());
    p.complete(&d, None).await.unwrap();
    let mut other = w.subscribe("elsewhere", None, false).await.unwrap();
    assert_eq!(other.state()["currentRun"], Value::Null);
    let o = id(&p.run(json!({"operation": "interpret", "space": "elsewhere"})).await.unwrap());
    until(&mut other, "run in elsewhere", |st| st["activeAI"] == json!([o])).await;
    assert_eq!(other.state()["activeRuns"][&o]["space"], "elsewhere");
    let s2 = p.run(json!({"operation": "select", "doctype": "Task", "space": "elsewhere"})).await.unwrap();
    until(&mut other, "select in elsewhere", |st| st["currentRun"]["id"] == s2["id"]).await;
    let fresh = w.subscribe("default", Some(&["currentRun"]), false).await.unwrap();
    assert_eq!(fresh.state()["currentRun"]["id"], s["id"], "the default space's currentRun is unchanged");
}

#[tokio::test]
async fn pipelines_group_children_under_their_root_and_regroup_when_a_parent_leaves() {
    let server = start_server().await;
    let p = Client::connect(&server.url()).await.unwrap();
    let w = Client::connect(&server.url()).await.unwrap();
    let mut sub = w.subscribe("work", Some(&["activePipelines"]), false).await.unwrap();
    let root = id(&p.run(json!({"operation": "pipeline", "space": "work"})).await.unwrap());
    // Children inherit the parent's space without naming it.
    let c1 = p.run(json!({"operation": "step", "parentRun": root})).await.unwrap();
    assert_eq!(c1["space"], "work");
    let c1 = id(&c1);
    let g1 = id(&p.run(json!({"operation": "interpret", "parentRun": c1})).await.unwrap());
    let c2 = id(&p.run(json!({"operation": "step", "parentRun": root})).await.unwrap());
    let g2 = id(&p.run(json!({"operation": "interpret", "parentRun": g1})).await.unwrap());
    let solo = id(&p.run(json!({"operation": "dialog", "space": "work"})).await.unwrap());
    until(&mut sub, "six runs", |s| s["activeRuns"].as_object().unwrap().len() == 6).await;
    let expect = json!({root.clone(): [root, c1, g1, c2, g2], solo.clone(): [solo]});
    assert_eq!(sub.state()["activePipelines"], expect);

    p.patch(&c1, json!([{"op": "step", "index": 0, "value": {"name": "fetch", "status": "done"}}])).await.unwrap();
    // c1 completes: its subtree (g1, g2) becomes a group rooted at g1.
    p.complete(&c1, None).await.unwrap();
    until(&mut sub, "c1 gone", |s| s["activeRuns"].get(&c1).is_none()).await;
    let expect = json!({root.clone(): [root, c2], g1.clone(): [g1, g2], solo.clone(): [solo]});
    assert_eq!(sub.state()["activePipelines"], expect);
    // The root completes: c2 is alone.
    p.complete(&root, None).await.unwrap();
    until(&mut sub, "root gone", |s| s["activeRuns"].get(&root).is_none()).await;
    let expect = json!({c2.clone(): [c2], g1.clone(): [g1, g2], solo.clone(): [solo]});
    assert_eq!(sub.state()["activePipelines"], expect);
    // A child of a finished run is refused, and so is a child that names another space.
    let e = p.run(json!({"operation": "step", "parentRun": root})).await.unwrap_err();
    assert!(matches!(e, coworker::client::ClientError::Server { ref code, .. } if code == "unknown_parent"), "{e:?}");
    let e = p.run(json!({"operation": "step", "parentRun": c2, "space": "default"})).await.unwrap_err();
    assert!(matches!(e, coworker::client::ClientError::Server { ref code, .. } if code == "space_mismatch"), "{e:?}");
    // Fresh snapshot agrees.
    let fresh = w.subscribe("work", Some(&["activePipelines"]), false).await.unwrap();
    assert_eq!(fresh.state(), sub.state());
}
