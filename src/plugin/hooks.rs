//! The server-side plugin API: hooks around every run, and handlers for operations that execute on the server.
//! Hooks are plain synchronous calls on `&self` with no-op defaults; the engine never calls one while it holds a
//! lock, and a panicking hook is caught and treated as documented on each method.

use crate::error::{Error, ErrorCode};
use crate::protocol::RunSpec;
use futures::future::BoxFuture;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

/// A read-only view of a run's context, as hooks and operations see it.
#[derive(Debug, Clone, Copy)]
pub struct RunContext<'a> {
    ctx: &'a Map<String, Value>,
}

impl<'a> RunContext<'a> {
    pub fn new(ctx: &'a Map<String, Value>) -> Self {
        RunContext { ctx }
    }

    fn str_field(&self, key: &str) -> Option<&'a str> {
        self.ctx.get(key).and_then(Value::as_str)
    }

    pub fn id(&self) -> &'a str {
        self.str_field("id").unwrap_or_default()
    }

    pub fn operation(&self) -> &'a str {
        self.str_field("operation").unwrap_or_default()
    }

    pub fn owner(&self) -> &'a str {
        self.str_field("owner").unwrap_or_default()
    }

    pub fn space(&self) -> &'a str {
        self.str_field("space").unwrap_or_default()
    }

    pub fn status(&self) -> &'a str {
        self.str_field("status").unwrap_or_default()
    }

    /// Any field of the context (`input`, `options`, `output`, `steps`, ...).
    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.ctx.get(field)
    }

    /// The whole context.
    pub fn json(&self) -> &'a Map<String, Value> {
        self.ctx
    }
}

/// Hooks around every run. All methods have no-op defaults.
///
/// Contract, for every run that reaches the engine's `run` entry point:
/// - `before_run` is called once, before the run enters its space (it is not yet visible to subscribers). If any
///   plugin returns `Err`, the run is not executed and never becomes active: its context is marked `failed` with
///   `error.code = "rejected"`, `on_error` is called on every plugin, `after_run` is not, and the client receives
///   an `error` frame with code `rejected`, the hook's message and the failed context. Plugins after the rejecting
///   one are not asked.
/// - `after_run` is called once when the run completes (a live run's `complete`, or its operation succeeding).
/// - `on_error` is called once when the run fails (a live run's `fail`, its operation failing, a rejection).
/// - Exactly one of `after_run` and `on_error` is called for each run that passed `before_run`, unless the server
///   stops first.
/// - Hooks run on the async worker that handles the request, with no engine lock held: they must be quick and
///   must not block. A hook that panics is caught: in `before_run` it rejects the run (message "internal error"),
///   elsewhere it is logged and ignored.
/// - Hooks see the context read-only. They must not try to change the run except through the protocol.
pub trait Plugin: Send + Sync + 'static {
    fn before_run(&self, _run: RunContext<'_>) -> Result<(), String> {
        Ok(())
    }

    fn after_run(&self, _run: RunContext<'_>) {}

    fn on_error(&self, _run: RunContext<'_>, _error: &Error) {}
}

/// What an operation may ask of the engine: to start a run, as a trusted caller (typically a child of its own run,
/// through the same entry point as a client's). Resolves to the run's final context, or its error.
pub trait RunStarter: Send + Sync + 'static {
    fn start(&self, spec: RunSpec) -> BoxFuture<'static, Result<Arc<Map<String, Value>>, Error>>;
}

/// A server-side handler for one operation name. A run of that operation starts `pending`, `execute` runs, and the
/// run completes with the returned output or fails with the returned error (its `code` and `message` go into the
/// run's `error`). The future runs on its own task; it may start further runs through `runs`.
pub trait Operation: Send + Sync + 'static {
    fn execute(&self, run: Map<String, Value>, runs: Arc<dyn RunStarter>) -> BoxFuture<'static, Result<Value, Error>>;

    /// What the audit trail records of a completed run's output: `None` (the default) keeps all of it. The reply
    /// and `currentRun` always get the whole output; a read returns a summary here, so that the trail does not
    /// record what it read.
    fn audit_output(&self, _output: &Value) -> Option<Value> {
        None
    }
}

/// The plugins and operations an engine was built with.
#[derive(Default, Clone)]
pub struct Hooks {
    plugins: Vec<Arc<dyn Plugin>>,
    operations: HashMap<String, Arc<dyn Operation>>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks")
            .field("plugins", &self.plugins.len())
            .field("operations", &self.operations.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Hooks {
    pub fn plugin(&mut self, p: Arc<dyn Plugin>) {
        self.plugins.push(p);
    }

    pub fn operation(&mut self, name: impl Into<String>, op: Arc<dyn Operation>) {
        self.operations.insert(name.into(), op);
    }

    pub fn handler(&self, operation: &str) -> Option<Arc<dyn Operation>> {
        self.operations.get(operation).cloned()
    }

    /// Runs every `before_run`; the first rejection wins.
    pub fn before(&self, ctx: &Map<String, Value>) -> Result<(), Error> {
        for p in &self.plugins {
            match catch_unwind(AssertUnwindSafe(|| p.before_run(RunContext::new(ctx)))) {
                Ok(Ok(())) => {}
                Ok(Err(message)) => return Err(Error::new(ErrorCode::Rejected, message)),
                Err(_) => {
                    tracing::error!("a plugin's before_run panicked");
                    return Err(Error::new(ErrorCode::Rejected, "internal error"));
                }
            }
        }
        Ok(())
    }

    pub fn after(&self, ctx: &Map<String, Value>) {
        for p in &self.plugins {
            if catch_unwind(AssertUnwindSafe(|| p.after_run(RunContext::new(ctx)))).is_err() {
                tracing::error!("a plugin's after_run panicked");
            }
        }
    }

    pub fn error(&self, ctx: &Map<String, Value>, err: &Error) {
        for p in &self.plugins {
            if catch_unwind(AssertUnwindSafe(|| p.on_error(RunContext::new(ctx), err))).is_err() {
                tracing::error!("a plugin's on_error panicked");
            }
        }
    }
}
