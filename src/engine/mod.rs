//! The engine and its one entry point, [`Engine::run`]: it builds a run's context, asks the before-hooks, puts the
//! run into its space (or executes its server-side operation), and fires the after- or error-hooks when it ends.
//! It also owns the rest of the lifecycle (`patch`, `complete`, `fail`, linger expiry, lost producers).
//!
//! Every state change is a command in three steps: decide (check the caller, admit the budgets, read the clock,
//! mint ids: everything that is not a function of the state goes into the [`SpaceEvent`]); submit the event to
//! the [`Sequencer`], which applies it to the space's pure state machine at a position in its log; then run the
//! side effects of what it applied, once, here: registry, quota release, the audit record, hooks, the reply.
//! The registry is this node's index from run id to the space that holds the run: a `DashMap` whose guards are
//! never held across an `.await`, a hook call, a space lock or a second key.

pub mod budget;
pub mod caller;
pub mod ratelimit;
pub mod sequencer;
pub mod space;
pub mod ticker;

use crate::config::EngineConfig;
use crate::engine::budget::{Account, Budgets, ConnectionQuota};
use crate::engine::caller::Caller;
use crate::engine::sequencer::{Health, Host, Located, Origin, Refusal, Sequenced, Sequencer, Submission};
use crate::engine::space::Space;
use crate::error::{Error, ErrorCode, Result};
use crate::feed::Joining;
use crate::feed::subscriber::{Outbox, SubSlot};
use crate::model::context::{ProducerId, RunHasher, RunId, Status};
use crate::model::patch::{self, PatchOp};
use crate::plugin::hooks::{Hooks, RunStarter};
use crate::protocol::{ReqId, RunSpec};
use crate::space::event::{Allowance, End, SpaceEvent};
use crate::space::model::{Applied, FinishedIds, Lifecycle, Rules};
use crate::space::views::ViewSet;
use crate::store::Store;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A run that did not complete: why, and its final context when it got one.
#[derive(Debug, Clone)]
pub struct RunFailure {
    pub error: Error,
    pub run: Option<Arc<Map<String, Value>>>,
}

impl From<Error> for RunFailure {
    fn from(error: Error) -> Self {
        RunFailure { error, run: None }
    }
}

/// What a subscriber asks for.
#[derive(Debug, Clone)]
pub struct SubscribeRequest<'a> {
    pub space: &'a str,
    pub views: ViewSet,
    /// Also deliver lifecycle events.
    pub events: bool,
    /// Resume after `(epoch, seq)`.
    pub since: Option<(u64, u64)>,
    /// The request id the snapshot (or resume reply) echoes.
    pub req_id: ReqId,
}

/// A run that just completed or failed: its final context, and its audit record on the way to disk.
pub struct Finished {
    pub run: Arc<Map<String, Value>>,
    durable: BoxFuture<'static, Result<()>>,
}

impl Finished {
    /// Waits until the run's audit record is durable. Only then may the run be acknowledged.
    pub async fn durable(self) -> Result<Arc<Map<String, Value>>> {
        self.durable.await?;
        Ok(self.run)
    }
}

/// A command's answer: at once on a single node; once the shared log has ordered and applied it in a cluster.
/// The side effects of an answer given at once have already run when the command returns.
pub enum Outcome<T> {
    Ready(T),
    Later(BoxFuture<'static, T>),
}

impl<T> Outcome<T> {
    pub async fn wait(self) -> T {
        match self {
            Outcome::Ready(t) => t,
            Outcome::Later(f) => f.await,
        }
    }

    /// The answer if it is ready (a single node's always is).
    pub fn now(self) -> Option<T> {
        match self {
            Outcome::Ready(t) => Some(t),
            Outcome::Later(_) => None,
        }
    }
}

impl<T> std::fmt::Debug for Outcome<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Ready(_) => "Outcome::Ready",
            Outcome::Later(_) => "Outcome::Later",
        })
    }
}

fn refusal_error(r: Refusal) -> Error {
    match r {
        Refusal::Refused(e) => e,
        Refusal::Retired => Error::new(ErrorCode::UnknownRun, "no active run has this id"),
    }
}

/// Where the registry routes a run id: its space, and the owner's account its state bytes count against.
#[derive(Debug)]
pub struct Route {
    pub space: Arc<Space>,
    pub owner: Arc<str>,
    account: Arc<Account>,
}

/// Wall-clock milliseconds read from tokio's clock: monotonic, and exact under paused time in tests. Run
/// timestamps, end times (and so durations) and linger deadlines are all on it.
#[derive(Debug)]
pub struct Clock {
    wall: u64,
    at: Instant,
}

impl Clock {
    fn new() -> Clock {
        let wall = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        Clock { wall, at: Instant::now() }
    }

    pub fn now_ms(&self) -> u64 {
        self.wall + self.at.elapsed().as_millis() as u64
    }

    /// The instant at which [`Clock::now_ms`] reaches `ms`.
    pub fn instant_at(&self, ms: u64) -> Instant {
        self.at + std::time::Duration::from_millis(ms.saturating_sub(self.wall))
    }
}

/// State shared by the engine handles and the tickers.
#[derive(Debug)]
pub struct Shared {
    /// Every run in some space's `activeRuns`, by id: O(1) routing for patches from any connection.
    registry: DashMap<RunId, Arc<Route>, RunHasher>,
    /// Finished run ids this node remembers: it tells `run_finished` from `unknown_run` for a run id it no longer
    /// routes, and refuses reused ids early. Each space's model keeps its own, which decides.
    finished: Mutex<FinishedIds>,
    spaces: DashMap<Arc<str>, Arc<Space>>,
    hooks: Hooks,
    /// Where finished runs are recorded.
    store: Arc<dyn Store>,
    sequencer: Arc<dyn Sequencer>,
    pub config: EngineConfig,
    /// This node's id, random per process: with a connection number it names a producer on any node.
    node: u64,
    pub clock: Clock,
    next_sub: AtomicU64,
    /// Memory budgets, and each owner's usage and quotas.
    budgets: Budgets,
    /// What every space's resume history holds.
    history: Arc<crate::feed::history::HistoryBudget>,
    /// Cancelled on shutdown: stops the tickers.
    pub shutdown: CancellationToken,
}

/// A handle to the engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

impl Engine {
    /// An engine with the single-node sequencer.
    pub fn new(config: EngineConfig, hooks: Hooks, store: Arc<dyn Store>) -> Engine {
        Engine::with_sequencer(config, hooks, store, Arc::new(sequencer::Local))
    }

    pub fn with_sequencer(
        config: EngineConfig,
        hooks: Hooks,
        store: Arc<dyn Store>,
        sequencer: Arc<dyn Sequencer>,
    ) -> Engine {
        crate::telemetry::install();
        let budgets = Budgets::new(config.limits.clone());
        let history = crate::feed::history::HistoryBudget::new(config.limits.max_history_bytes);
        let node = sequencer.node().unwrap_or_else(|| uuid::Uuid::now_v7().as_u64_pair().1);
        Engine {
            shared: Arc::new(Shared {
                registry: DashMap::with_hasher(RunHasher::default()),
                finished: Mutex::new(FinishedIds::default()),
                spaces: DashMap::new(),
                hooks,
                store,
                sequencer,
                config,
                node,
                clock: Clock::new(),
                next_sub: AtomicU64::new(1),
                budgets,
                history,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The rules every space's state machine applies with.
    pub fn rules(&self) -> Rules {
        let c = &self.shared.config;
        Rules {
            linger_ms: c.linger.as_millis() as u64,
            max_run_bytes: c.limits.max_run_bytes,
            finished_memory: c.limits.finished_memory,
        }
    }

    /// Stops every ticker. Pending diffs are not flushed after this.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether runs of this operation execute on the server (rather than being live).
    pub fn has_operation(&self, operation: &str) -> bool {
        self.shared.hooks.handler(operation).is_some()
    }

    /// Whether a run is active and not finished (a live or pending run).
    pub fn is_live(&self, id: RunId) -> bool {
        let Some(route) = self.shared.registry.get(&id).map(|r| r.clone()) else { return false };
        route.space.lock().model.run(id).is_some_and(|r| !r.status.is_finished())
    }

    /// Runs in any space's `activeRuns`.
    pub fn active_runs(&self) -> usize {
        self.shared.registry.len()
    }

    fn producer(&self, caller: &Caller) -> Option<ProducerId> {
        (caller.connection != 0).then_some(ProducerId { node: self.shared.node, connection: caller.connection })
    }

    /// The one entry point: starts a run. A live run (no server-side operation) is returned `running` at once; a run
    /// with an operation is returned when the operation has finished, completed or failed.
    pub async fn run(
        &self,
        mut spec: RunSpec,
        caller: &Caller,
    ) -> std::result::Result<Arc<Map<String, Value>>, RunFailure> {
        if let Some(me) = &caller.owner {
            if spec.owner.as_ref().is_some_and(|o| o != me) {
                return Err(Error::new(ErrorCode::Forbidden, "`owner` must be the token's subject").into());
            }
            spec.owner = Some(me.clone());
        }
        if let Some(id) = spec.id {
            self.check_new_id(id).await?;
        }
        if let Some(parent) = spec.parent_run {
            self.locate(parent).await?;
        }
        let owner = spec.owner.clone().unwrap_or_else(|| "system".into());
        // Given back on every early return below (a guard).
        let mut quota = self.shared.budgets.start_run(&owner)?;
        let handler = self.shared.hooks.handler(&spec.operation);
        let (mut space, parent) = self.resolve_space(&spec, caller)?;
        if !caller.can_write(&space.name) {
            return Err(Error::new(ErrorCode::Forbidden, "the token may not write to this space").into());
        }
        let id = spec.id.unwrap_or_else(RunId::now_v7);
        let timestamp = self.shared.clock.now_ms();
        let status = if handler.is_some() { Status::Pending } else { Status::Running };
        let mut ctx = Map::new();
        ctx.insert("id".into(), Value::String(id.to_string()));
        ctx.insert("timestamp".into(), Value::from(timestamp));
        ctx.insert("operation".into(), Value::String(spec.operation));
        ctx.insert("doctype".into(), spec.doctype);
        ctx.insert("flow".into(), spec.flow);
        ctx.insert("input".into(), spec.input);
        ctx.insert("options".into(), Value::Object(spec.options));
        ctx.insert("owner".into(), Value::String(owner.clone()));
        ctx.insert("agent".into(), spec.agent);
        ctx.insert("parentRun".into(), spec.parent_run.map_or(Value::Null, |p| Value::String(p.to_string())));
        ctx.insert("steps".into(), Value::Array(spec.steps));
        ctx.insert("space".into(), Value::String(space.name.to_string()));
        ctx.insert("status".into(), Value::from(status.as_str()));
        ctx.insert("output".into(), Value::Null);
        ctx.insert("error".into(), Value::Null);
        ctx.insert("success".into(), Value::Bool(false));
        ctx.insert("duration".into(), Value::from(0));
        quota.admit(crate::model::size::run(&ctx))?;
        if self.shared.sequencer.replicated() {
            self.health()?;
            // The id is the cluster's from here: no other node starts a run with it.
            let at = Located { space: space.name.clone(), owner: owner.as_str().into() };
            if !self.shared.sequencer.claim(id, at).await? {
                return Err(Error::new(ErrorCode::DuplicateRun, "a run with this id exists").into());
            }
        }

        if let Err(e) = self.shared.hooks.before(&ctx) {
            drop(quota);
            ctx.insert("status".into(), Value::from(Status::Failed.as_str()));
            ctx.insert("error".into(), json!({"code": e.code.as_str(), "message": e.message}));
            self.shared.hooks.error(&ctx, &e);
            // Its id is used up: it is in the trail.
            self.shared.finished.lock().insert(id, self.shared.config.limits.finished_memory);
            let ctx = Arc::new(ctx);
            // Its notice for the space's subscribers. Refused only for an id the space has seen, which
            // `check_new_id` ruled out, or skipped when the space was reclaimed meanwhile: nothing to undo either way.
            let _ = self.submit(&space, SpaceEvent::Rejected { id, ctx: (*ctx).clone() }, |_, _| ());
            self.record(&ctx).await?;
            return Err(RunFailure { error: e, run: Some(ctx) });
        }

        let reply = ctx.clone();
        let owner: Arc<str> = owner.into();
        let producer = self.producer(caller);
        let mut ctx = Some(ctx);
        loop {
            let route = Arc::new(Route { space: space.clone(), owner: owner.clone(), account: quota.account() });
            if self.shared.finished.lock().contains(&id) {
                return Err(self.lost_race(id, reply));
            }
            match self.shared.registry.entry(id) {
                Entry::Occupied(_) => return Err(self.lost_race(id, reply)),
                Entry::Vacant(v) => {
                    v.insert(route);
                }
            }
            let event = SpaceEvent::RunStarted {
                id,
                timestamp,
                parent,
                status,
                ctx: ctx.take().expect("submitted once"),
                producer,
            };
            match self.shared.sequencer.submit(&space, event).outcome().await {
                Ok(_) => break,
                Err(refusal) => {
                    self.shared.registry.remove(&id);
                    match refusal {
                        // The state machine refuses a start only for an id it has (the run budget was admitted
                        // above, by the same rule).
                        Refusal::Refused(e) => return Err(self.not_started(reply, e)),
                        Refusal::Retired => {
                            // Reclaimed since it was looked up (it held nothing then): look it up, or create it,
                            // again.
                            ctx = Some(reply.clone());
                            space = self.space(&space.name.clone(), caller)?;
                        }
                    }
                }
            }
        }
        quota.keep();

        let Some(handler) = handler else { return Ok(Arc::new(reply)) };
        match handler.execute(reply, Arc::new(self.clone())).await {
            Ok(output) => Ok(self.complete(id, Some(output), &Caller::trusted()).wait().await?.durable().await?),
            Err(e) => {
                let error = json!({"code": e.code.as_str(), "message": e.message});
                let run = self.fail(id, error, &Caller::trusted()).wait().await?.durable().await?;
                Err(RunFailure { error: Error::new(ErrorCode::OperationFailed, e.message), run: Some(run) })
            }
        }
    }

    /// Submits an event to a space that cannot be retired (it holds the run the event is about), and runs `then`
    /// on its answer: at once when the sequencer answers at once, else when the log has applied it.
    fn submit<T: Send + 'static>(
        &self,
        space: &Arc<Space>,
        event: SpaceEvent,
        then: impl FnOnce(&Engine, Result<Sequenced>) -> T + Send + 'static,
    ) -> Outcome<T> {
        match self.shared.sequencer.submit(space, event) {
            Submission::Done(r) => Outcome::Ready(then(self, r.map_err(refusal_error))),
            Submission::Pending(rx) => {
                let engine = self.clone();
                let answer = Submission::Pending(rx);
                Outcome::Later(Box::pin(async move { then(&engine, answer.outcome().await.map_err(refusal_error)) }))
            }
        }
    }

    /// Whether this node can serve fresh state: `unavailable` when it is cut off from the cluster's log.
    pub fn health(&self) -> Result<()> {
        match self.shared.sequencer.health() {
            Health::Ok => Ok(()),
            Health::Degraded => Err(crate::engine::sequencer::unavailable()),
        }
    }

    /// Whether the node shares its spaces with other nodes.
    pub fn replicated(&self) -> bool {
        self.shared.sequencer.replicated()
    }

    /// Makes sure this node holds the space of run `id` if the run lives anywhere in the cluster: looks it up in
    /// the cluster's run index, takes the space, and waits until it has caught up with the log. A no-op on a
    /// single node, or for a run this node already routes.
    pub async fn locate(&self, id: RunId) -> Result<()> {
        if !self.replicated() || self.shared.registry.contains_key(&id) {
            return Ok(());
        }
        let Some(at) = self.shared.sequencer.locate(id).await? else { return Ok(()) };
        let space = self.space(&at.space, &Caller::trusted())?;
        space.until_ready().await;
        // A run that finished before this node took the space: known as finished, not as unknown.
        if !self.shared.registry.contains_key(&id) && space.lock().model.has_finished(id) {
            self.shared.finished.lock().insert(id, self.shared.config.limits.finished_memory);
        }
        Ok(())
    }

    fn resolve_space(&self, spec: &RunSpec, caller: &Caller) -> Result<(Arc<Space>, Option<RunId>)> {
        match spec.parent_run {
            Some(p) => {
                let space = self
                    .shared
                    .registry
                    .get(&p)
                    .map(|route| route.space.clone())
                    .ok_or_else(|| Error::new(ErrorCode::UnknownParent, "`parentRun` names no active run"))?;
                if spec.space.as_deref().is_some_and(|s| s != &*space.name) {
                    return Err(Error::new(ErrorCode::SpaceMismatch, "a child run lives in its parent's space"));
                }
                Ok((space, Some(p)))
            }
            None => {
                let name = spec.space.as_deref().unwrap_or("default");
                if !caller.can_write(name) {
                    return Err(Error::new(ErrorCode::Forbidden, "the token may not write to this space"));
                }
                Ok((self.space(name, caller)?, None))
            }
        }
    }

    /// The space with this name, created (with its ticker) on first use. A new space counts against the
    /// creating caller's space quota (trusted callers have none) and the global `max_spaces`.
    fn space(&self, name: &str, caller: &Caller) -> Result<Arc<Space>> {
        if let Some(s) = self.shared.spaces.get(name) {
            return Ok(s.clone());
        }
        if self.shared.spaces.len() >= self.shared.config.limits.max_spaces {
            return Err(Error::new(ErrorCode::LimitExceeded, "too many spaces"));
        }
        let quota = caller.owner.as_deref().map(|o| self.shared.budgets.create_space(o)).transpose()?;
        let space = match self.shared.spaces.entry(Arc::from(name)) {
            // Someone else created it meanwhile: the quota taken is dropped, given back.
            Entry::Occupied(e) => e.get().clone(),
            Entry::Vacant(v) => {
                let epoch = self.shared.sequencer.epoch();
                let space = Space::new(Arc::from(name), self.rules(), self.shared.history.clone(), quota, epoch);
                crate::telemetry::SPACES.increment(1.0);
                let settings = ticker::Settings {
                    tick: self.shared.config.tick,
                    cap: self.shared.config.limits.max_pending_bytes,
                    shutdown: self.shared.shutdown.clone(),
                };
                self.shared.sequencer.open(space.clone(), Arc::new(self.clone()), settings);
                v.insert(space).clone()
            }
        };
        Ok(space)
    }

    /// Refuses an id that an active run, a remembered finished run or the audit trail already has.
    async fn check_new_id(&self, id: RunId) -> Result<()> {
        let taken = Error::new(ErrorCode::DuplicateRun, "a run with this id exists");
        if self.shared.registry.contains_key(&id) || self.shared.finished.lock().contains(&id) {
            return Err(taken);
        }
        if self.shared.store.contains(id).await? { Err(taken) } else { Ok(()) }
    }

    /// Another request took this run's id between the check and the insert (after `before_run` passed): the run
    /// fails, and `on_error` is called as the hook contract says.
    fn lost_race(&self, id: RunId, ctx: Map<String, Value>) -> RunFailure {
        self.not_started(ctx, Error::new(ErrorCode::DuplicateRun, format!("a run with id {id} exists")))
    }

    /// A run that passed `before_run` but did not enter its space: it fails with `e`, and `on_error` is called.
    fn not_started(&self, mut ctx: Map<String, Value>, e: Error) -> RunFailure {
        ctx.insert("status".into(), Value::from(Status::Failed.as_str()));
        ctx.insert("error".into(), json!({"code": e.code.as_str(), "message": e.message}));
        self.shared.hooks.error(&ctx, &e);
        RunFailure { error: e, run: None }
    }

    /// The route of a run `caller` may change: a caller without the right gets exactly the error of a run that
    /// does not exist. (Whether the run has finished is the state machine's to say.)
    fn route(&self, id: RunId, caller: &Caller) -> Result<Arc<Route>> {
        let Some(route) = self.shared.registry.get(&id).map(|r| r.clone()) else {
            return Err(if self.shared.finished.lock().contains(&id) {
                Error::new(ErrorCode::RunFinished, "the run has finished")
            } else {
                Error::new(ErrorCode::UnknownRun, "no active run has this id")
            });
        };
        // A trusted caller may change any run: no permission check.
        if caller.owner.is_some() && !caller.can_change(&route.owner, &route.space.name) {
            return Err(Error::new(ErrorCode::UnknownRun, "no active run has this id"));
        }
        Ok(route)
    }

    /// Applies a patch atomically and journals its changes.
    pub fn patch(&self, id: RunId, ops: Vec<PatchOp>, caller: &Caller) -> Outcome<Result<()>> {
        if !crate::telemetry::sample_patch() {
            return self.patch_timed(id, ops, caller);
        }
        let started = std::time::Instant::now();
        let result = self.patch_timed(id, ops, caller);
        crate::telemetry::PATCH_SECONDS.record(started.elapsed().as_secs_f64());
        result
    }

    fn patch_timed(&self, id: RunId, ops: Vec<PatchOp>, caller: &Caller) -> Outcome<Result<()>> {
        let route = match self.route(id, caller) {
            Ok(r) => r,
            Err(e) => return Outcome::Ready(Err(e)),
        };
        let budgets = &self.shared.budgets;
        // The owner's and the server's budgets are admitted here, before the event exists: the usual patch's
        // growth bound fits and is reserved; otherwise whatever headroom is left is, and the state machine
        // refuses the patch if it grows more. Either way the reservation is settled by what it grew.
        let bound = patch::growth_bound(&ops);
        let allowance = match budgets.admit(&route.account, 0, bound as isize) {
            Ok(()) => Allowance { bytes: bound as u64, budget: crate::model::size::Budget::Server },
            Err(_) => budgets.reserve_headroom(&route.account),
        };
        let event = SpaceEvent::Patched { run: id, ops, producer: self.producer(caller), allowance };
        let reserved = allowance.bytes as isize;
        let space = route.space.clone();
        self.submit(&space, event, move |engine, r| {
            let budgets = &engine.shared.budgets;
            match r {
                Ok(s) => {
                    budgets.grow(&route.account, s.applied.grown - reserved);
                    Ok(())
                }
                Err(e) => {
                    budgets.grow(&route.account, -reserved);
                    if matches!(e.code, ErrorCode::RunTooLarge | ErrorCode::QuotaStateBytes | ErrorCode::OverCapacity) {
                        crate::telemetry::refusal(e.code);
                    }
                    Err(e)
                }
            }
        })
    }

    /// Completes a run: it leaves `activeRuns`; a data run becomes `currentRun`. Returns the final context and
    /// its audit record, queued as soon as the state changed.
    pub fn complete(&self, id: RunId, output: Option<Value>, caller: &Caller) -> Outcome<Result<Finished>> {
        self.finish(id, End::Completed { output }, caller)
    }

    /// Fails a run: it stays in `activeRuns`, visible as failed, for the linger period. Returns its context and
    /// its audit record, queued as soon as the state changed.
    pub fn fail(&self, id: RunId, error: Value, caller: &Caller) -> Outcome<Result<Finished>> {
        self.finish(id, End::Failed { error }, caller)
    }

    fn finish(&self, id: RunId, end: End, caller: &Caller) -> Outcome<Result<Finished>> {
        let route = match self.route(id, caller) {
            Ok(r) => r,
            Err(e) => return Outcome::Ready(Err(e)),
        };
        let at_ms = self.shared.clock.now_ms();
        let space = route.space.clone();
        self.submit(&space, SpaceEvent::Finished { run: id, end, at_ms }, move |engine, r| {
            Ok(engine.finished(&route, r?.applied).expect("a finishing event finishes its run"))
        })
    }

    /// The side effects of an applied event that finished the run `route` routes to (`None` for one that did
    /// not): the budgets, the registry, the audit record and the hooks.
    fn finished(&self, route: &Route, a: Applied) -> Option<Finished> {
        let ctx = a.finished.clone()?;
        self.account(route, &a);
        Some(self.announce(ctx, a.notice))
    }

    /// This node's bookkeeping of an applied event about a run it routes: the budgets (`currentRun`'s, and the
    /// run's or what it gave back), and the registry when the run left.
    fn account(&self, route: &Route, a: &Applied) {
        let budgets = &self.shared.budgets;
        budgets.grow_shared(a.current_grown);
        match a.left {
            Some(bytes) => self.shared.forget(a.run, bytes),
            // A failure may grow the run (its `error`): never refused, and given back when its linger ends.
            None => budgets.grow(&route.account, a.grown),
        }
    }

    /// What only the node that received a finishing request does: the audit record and the hooks.
    fn announce(&self, ctx: Arc<Map<String, Value>>, notice: Option<Lifecycle>) -> Finished {
        let durable = if notice == Some(Lifecycle::Completed) {
            let durable = self.record(&self.completed_record(&ctx));
            self.shared.hooks.after(&ctx);
            durable
        } else {
            let durable = self.record(&ctx);
            let message = ctx.get("error").and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or_default();
            self.shared.hooks.error(&ctx, &Error::new(ErrorCode::OperationFailed, message));
            durable
        };
        Finished { run: ctx, durable }
    }

    fn record(&self, ctx: &Arc<Map<String, Value>>) -> BoxFuture<'static, Result<()>> {
        self.shared.store.append(ctx.clone()).map(|r| r.map_err(Error::from)).boxed()
    }

    /// The record of a completed run: its context, with the output its operation chooses to keep.
    fn completed_record(&self, ctx: &Arc<Map<String, Value>>) -> Arc<Map<String, Value>> {
        let operation = ctx.get("operation").and_then(Value::as_str).unwrap_or_default();
        let summary = self.shared.hooks.handler(operation).and_then(|h| h.audit_output(&ctx["output"]));
        match summary {
            None => ctx.clone(),
            Some(output) => Arc::new(
                ctx.iter().map(|(k, v)| (k.clone(), if k == "output" { output.clone() } else { v.clone() })).collect(),
            ),
        }
    }

    /// After a connection dropped: once the producer grace has passed, fails every run in `runs` that is still
    /// live and was last changed by that connection (`producer_lost`). Returns at once.
    pub fn connection_lost(&self, connection: u64, runs: Vec<RunId>) {
        if runs.is_empty() {
            return;
        }
        let engine = self.clone();
        let grace = self.shared.config.limits.producer_grace;
        let producer = ProducerId { node: self.shared.node, connection };
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = engine.shared.shutdown.cancelled() => return,
            }
            for id in runs {
                engine.lose(id, producer).await;
            }
        });
    }

    /// Fails run `id` with `producer_lost` if it is still running and `producer`'s, and records it.
    async fn lose(&self, id: RunId, producer: ProducerId) {
        let Some(route) = self.shared.registry.get(&id).map(|r| r.clone()) else { return };
        let at_ms = self.shared.clock.now_ms();
        // The state machine fails it only if it is still running and that producer's.
        let space = route.space.clone();
        let event = SpaceEvent::ProducerLost { run: id, producer, at_ms };
        let finished = self.submit(&space, event, move |engine, r| engine.finished(&route, r.ok()?.applied));
        if let Some(f) = finished.wait().await
            && let Err(e) = f.durable().await
        {
            tracing::error!(error = %e, "could not record a run lost with its producer");
        }
    }

    /// Subscribes an outbox to a space. The snapshot arrives through the slot at the space's next flush, which the
    /// call triggers.
    /// With `since`, the subscription resumes after that `(epoch, seq)` when the space's history still holds every
    /// diff since, and otherwise starts with a snapshot flagged `resync`.
    pub fn subscribe(&self, req: SubscribeRequest<'_>, outbox: &Arc<Outbox>, caller: &Caller) -> Result<Arc<SubSlot>> {
        let SubscribeRequest { space, views, events, since, req_id } = req;
        // Checked before the space is looked up: a caller may not create spaces it cannot read.
        if !caller.can_read(space) {
            return Err(Error::new(ErrorCode::Forbidden, "the token may not read this space"));
        }
        // A node cut off from the cluster's log would serve a state it cannot vouch for.
        self.health()?;
        let id = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        loop {
            let space = self.space(space, caller)?;
            let mut guard = space.lock();
            let st = &mut *guard;
            if st.retired {
                // Reclaimed since it was looked up: look it up (or create it) again.
                continue;
            }
            let feed = &mut st.feed;
            if !feed.renders(views) && feed.view_sets() >= self.shared.config.limits.max_view_sets_per_space {
                return Err(Error::new(ErrorCode::LimitExceeded, "too many distinct view sets in this space"));
            }
            let slot = SubSlot::new(id, space.name.clone(), views, events, outbox.clone());
            feed.joining.push(Joining { slot: slot.clone(), req_id, since });
            crate::telemetry::SUBSCRIPTIONS.increment(1.0);
            if events {
                feed.events_wanted += 1;
            }
            space.changed(st);
            return Ok(slot);
        }
    }

    /// Spaces that exist now.
    pub fn spaces(&self) -> usize {
        self.shared.spaces.len()
    }

    /// Ends a subscription; nothing more is delivered to it.
    pub fn unsubscribe(&self, slot: &Arc<SubSlot>) {
        slot.close();
        crate::telemetry::SUBSCRIPTIONS.decrement(1.0);
        if let Some(space) = self.shared.spaces.get(&slot.space).map(|s| s.clone()) {
            let mut st = space.lock();
            if st.feed.unregister(slot) {
                // Wake the space's ticker: with its last subscriber gone it may now be reclaimed, and it must
                // compute that deadline again (it sleeps on the one it computed while the subscriber was there).
                space.changed(&mut st);
            }
        }
    }

    /// Counts an authenticated connection of `owner`, or refuses it past the quota. The connection holds the
    /// returned guard; dropping it gives the slot back.
    pub fn connection_opened(&self, owner: &str) -> Result<ConnectionQuota> {
        self.shared.budgets.open_connection(owner)
    }

    /// The budgets and the state they count.
    pub fn budgets(&self) -> &Budgets {
        &self.shared.budgets
    }

    /// The largest run's state bytes (a scan of every space: for metrics, not for a hot path).
    pub fn largest_run_bytes(&self) -> usize {
        let spaces: Vec<Arc<Space>> = self.shared.spaces.iter().map(|s| s.value().clone()).collect();
        spaces.iter().filter_map(|s| s.lock().model.runs().map(|(_, r)| r.bytes).max()).max().unwrap_or(0)
    }
}

impl ticker::Timers for Engine {
    fn instant_at(&self, ms: u64) -> Instant {
        self.shared.clock.instant_at(ms)
    }

    /// Submits the end of every lingering run of `space` whose linger is over.
    fn expire_lingering(&self, space: &Arc<Space>) {
        let due = space.lock().model.linger_ended(self.shared.clock.now_ms());
        for id in due {
            let done = self.submit(space, SpaceEvent::LingerExpired { run: id }, move |engine, r| {
                if let Ok(s) = r
                    && let Some(bytes) = s.applied.left
                {
                    engine.shared.forget(id, bytes);
                }
            });
            if let Outcome::Later(f) = done {
                tokio::spawn(f);
            }
        }
    }

    fn reclaim(&self, space: &Arc<Space>) -> bool {
        self.shared.reclaim(space)
    }
}

impl Host for Engine {
    fn settle(&self, space: &Arc<Space>, origin: Origin, a: Applied, owner: Option<Arc<str>>) {
        let shared = &self.shared;
        if a.notice == Some(Lifecycle::Started) {
            let owner = owner.unwrap_or_else(|| "system".into());
            let account = shared.budgets.adopt_run(&owner, a.grown.max(0) as usize);
            shared.registry.insert(a.run, Arc::new(Route { space: space.clone(), owner, account }));
            if origin == Origin::Orphan {
                // Its requester was told `unavailable` and will not produce into it: it fails at once, and is
                // recorded like any failed run.
                let (engine, id) = (self.clone(), a.run);
                let error =
                    json!({"code": "unavailable", "message": "started after its request was answered unavailable"});
                tokio::spawn(async move {
                    if let Ok(f) = engine.fail(id, error, &Caller::trusted()).wait().await
                        && let Err(e) = f.durable().await
                    {
                        tracing::error!(error = %e, "could not record a run failed after an unavailable start");
                    }
                });
            }
            return;
        }
        let Some(route) = shared.registry.get(&a.run).map(|r| r.clone()) else { return };
        self.account(&route, &a);
        if origin == Origin::Orphan
            && let Some(ctx) = a.finished.clone()
        {
            // This node received it, and its requester stopped waiting: the audit record and the hooks are still
            // this node's to run.
            let durable = self.announce(ctx, a.notice).durable;
            tokio::spawn(async move {
                if let Err(e) = durable.await {
                    tracing::error!(error = %e, "could not record a finished run");
                }
            });
        }
    }

    fn adopt(&self, space: &Arc<Space>) {
        let (runs, current): (Vec<(RunId, Arc<str>, usize)>, usize) = {
            let st = space.lock();
            let owner = |r: &crate::model::context::Run| -> Arc<str> {
                r.ctx.get("owner").and_then(Value::as_str).unwrap_or("system").into()
            };
            (st.model.runs().map(|(id, r)| (*id, owner(r), r.bytes)).collect(), st.model.current_bytes())
        };
        let shared = &self.shared;
        for (id, owner, bytes) in runs {
            let account = shared.budgets.adopt_run(&owner, bytes);
            shared.registry.insert(id, Arc::new(Route { space: space.clone(), owner, account }));
        }
        shared.budgets.grow_shared(current as isize);
    }

    fn producers_lost(&self, runs: Vec<(RunId, ProducerId)>) {
        let engine = self.clone();
        tokio::spawn(async move {
            for (id, producer) in runs {
                engine.lose(id, producer).await;
            }
        });
    }

    fn release(&self, space: &Arc<Space>) -> bool {
        // Lock order: the map's shard, then the space.
        let removed = self.shared.spaces.remove_if(&space.name, |_, s| {
            if !Arc::ptr_eq(s, space) {
                return false;
            }
            let mut st = s.lock();
            st.retired = st.feed.idle_at().is_some();
            st.retired
        });
        if removed.is_none() {
            return false;
        }
        crate::telemetry::SPACES.decrement(1.0);
        let (runs, current): (Vec<(RunId, usize)>, usize) = {
            let st = space.lock();
            (st.model.runs().map(|(id, r)| (*id, r.bytes)).collect(), st.model.current_bytes())
        };
        for (id, bytes) in runs {
            // Only this space's route: a space of the same name opened since has its own.
            if let Some((_, route)) = self.shared.registry.remove_if(&id, |_, r| Arc::ptr_eq(&r.space, space)) {
                self.shared.budgets.end_run(&route.account, bytes);
            }
        }
        self.shared.budgets.grow_shared(-(current as isize));
        true
    }
}

impl RunStarter for Engine {
    fn start(&self, spec: RunSpec) -> BoxFuture<'static, Result<Arc<Map<String, Value>>>> {
        let engine = self.clone();
        async move { engine.run(spec, &Caller::trusted()).await.map_err(|f| f.error) }.boxed()
    }
}

impl Shared {
    /// Reclaims `space` if it still holds nothing: it leaves the map (its ticker then ends) and is marked retired
    /// under its lock, so whoever holds it finds that out and looks the name up again. Returns whether it was.
    fn reclaim(&self, space: &Arc<Space>) -> bool {
        // Lock order: the map's shard, then the space (nothing takes them the other way round).
        let removed = self.spaces.remove_if(&space.name, |_, s| {
            if !Arc::ptr_eq(s, space) {
                return false;
            }
            let mut st = s.lock();
            st.feed.history.expire(Instant::now());
            if st.is_idle() {
                st.retired = true;
            }
            st.retired
        });
        if removed.is_some() {
            crate::telemetry::SPACES.decrement(1.0);
        }
        removed.is_some()
    }

    /// After a run left its space: drops it from the registry, remembers its id, and gives back its owner's
    /// active-run slot and its state bytes.
    fn forget(&self, id: RunId, bytes: usize) {
        if let Some((_, route)) = self.registry.remove(&id) {
            self.budgets.end_run(&route.account, bytes);
        }
        self.finished.lock().insert(id, self.config.limits.finished_memory);
    }
}
