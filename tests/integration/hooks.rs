//! The plugin API: hook order, rejection, and server-side operations.

use crate::support::*;
use coworker::config::EngineConfig;
use coworker::error::{Error, ErrorCode};
use coworker::plugin::hooks::{Hooks, Operation, RunStarter};
use coworker::protocol::RunSpec;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Map, Value, json};
use std::sync::Arc;

fn calls(v: &[(&str, &str, &str)]) -> Vec<(String, String, String)> {
    v.iter().map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string())).collect()
}

/// Completes with the run's input.
struct Echo;
impl Operation for Echo {
    fn execute(&self, run: Map<String, Value>, _: Arc<dyn RunStarter>) -> BoxFuture<'static, Result<Value, Error>> {
        async move { Ok(run["input"].clone()) }.boxed()
    }
}

/// Fails with a typed error.
struct Broken;
impl Operation for Broken {
    fn execute(&self, _: Map<String, Value>, _: Arc<dyn RunStarter>) -> BoxFuture<'static, Result<Value, Error>> {
        async move { Err(Error::new(ErrorCode::OperationFailed, "disk on fire")) }.boxed()
    }
}

/// Starts an `echo` run through the engine's own entry point and returns its output (as `select` fetches a schema).
struct Nested;
impl Operation for Nested {
    fn execute(&self, run: Map<String, Value>, runs: Arc<dyn RunStarter>) -> BoxFuture<'static, Result<Value, Error>> {
        async move {
            let spec = RunSpec {
                operation: "echo".into(),
                input: json!({"inner": run["input"].clone()}),
                ..RunSpec::default()
            };
            let inner = runs.start(spec).await?;
            Ok(inner["output"].clone())
        }
        .boxed()
    }
}

async fn server_with(plugin: Arc<RecordingPlugin>) -> TestServer {
    let mut hooks: Hooks = hooks_with(plugin);
    hooks.operation("echo", Arc::new(Echo));
    hooks.operation("broken", Arc::new(Broken));
    hooks.operation("nested", Arc::new(Nested));
    start_with(EngineConfig::default(), hooks).await
}

#[tokio::test]
async fn hooks_fire_in_order_for_live_runs() {
    let plugin = Arc::new(RecordingPlugin::default());
    let server = server_with(plugin.clone()).await;
    let mut c = Raw::connect(&server).await;
    let a = c.start(json!({"operation": "interpret"})).await;
    assert_eq!(plugin.take(), calls(&[("before", "interpret", "running")]));
    c.request(json!({"type": "complete", "id": 1, "run": a})).await;
    assert_eq!(plugin.take(), calls(&[("after", "interpret", "completed")]));
    let b = c.start(json!({"operation": "dialog"})).await;
    c.request(json!({"type": "fail", "id": 2, "run": b, "error": {"message": "no"}})).await;
    assert_eq!(plugin.take(), calls(&[("before", "dialog", "running"), ("error", "dialog", "failed")]));
    // Errors that are not run outcomes call no hook.
    c.request(json!({"type": "complete", "id": 3, "run": a})).await;
    assert_eq!(plugin.take(), calls(&[]));
}

#[tokio::test]
async fn a_before_hook_rejects_a_run_with_an_error_that_reaches_the_client() {
    let plugin = Arc::new(RecordingPlugin { reject_operation: Some("forbidden".into()), ..Default::default() });
    let server = server_with(plugin.clone()).await;
    let mut c = Raw::connect(&server).await;
    let r = c.request(json!({"type": "run", "id": 9, "run": {"operation": "forbidden"}})).await;
    assert_eq!(r["type"], "error");
    assert_eq!(r["id"], 9);
    assert_eq!(r["code"], "rejected");
    assert_eq!(r["message"], "operation forbidden is not allowed");
    assert_eq!(r["run"]["status"], "failed");
    assert_eq!(r["run"]["error"]["code"], "rejected");
    assert_eq!(plugin.take(), calls(&[("before", "forbidden", "running"), ("error", "forbidden", "failed")]));
    let snap = c.request(json!({"type": "subscribe", "id": 1})).await;
    assert_eq!(snap["state"]["activeRuns"], json!({}), "a rejected run never becomes active");
}

#[tokio::test]
async fn server_side_operations_complete_or_fail_their_runs() {
    let plugin = Arc::new(RecordingPlugin::default());
    let server = server_with(plugin.clone()).await;
    let mut c = Raw::connect(&server).await;
    let r = c.request(json!({"type": "run", "id": 1, "run": {"operation": "echo", "input": {"x": 1}}})).await;
    assert_eq!(r["type"], "reply", "{r}");
    assert_eq!((r["run"]["status"].as_str(), r["run"]["success"].as_bool()), (Some("completed"), Some(true)));
    assert_eq!(r["run"]["output"], json!({"x": 1}));
    assert_eq!(plugin.take(), calls(&[("before", "echo", "pending"), ("after", "echo", "completed")]));

    let r = c.request(json!({"type": "run", "id": 2, "run": {"operation": "broken"}})).await;
    assert_eq!((r["type"].as_str(), r["code"].as_str()), (Some("error"), Some("operation_failed")));
    assert_eq!(r["message"], "disk on fire");
    assert_eq!(r["run"]["status"], "failed");
    assert_eq!(r["run"]["error"], json!({"code": "operation_failed", "message": "disk on fire"}));
    assert_eq!(plugin.take(), calls(&[("before", "broken", "pending"), ("error", "broken", "failed")]));

    let r = c.request(json!({"type": "run", "id": 3, "run": {"operation": "nested", "input": 5}})).await;
    assert_eq!(r["run"]["output"], json!({"inner": 5}));
    assert_eq!(
        plugin.take(),
        calls(&[
            ("before", "nested", "pending"),
            ("before", "echo", "pending"),
            ("after", "echo", "completed"),
            ("after", "nested", "completed")
        ])
    );
}
