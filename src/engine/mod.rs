//! The engine and its one entry point, [`Engine::run`]: it builds a run's context, asks the before-hooks, puts the
//! run into its space (or executes its server-side operation), and fires the after- or error-hooks when it ends.
//! It also owns the rest of the lifecycle (`patch`, `complete`, `fail`, linger expiry) and the registry: a
//! `DashMap` from run id to [`RunCell`]. No registry guard is held across an `.await`, a hook call, or a second key.

pub mod budget;
pub mod ratelimit;
pub mod space;
pub mod ticker;

use crate::config::EngineConfig;
use crate::engine::budget::{Account, Budgets, ConnectionQuota};
use crate::engine::space::{Joining, RunCell, Space};
use crate::error::{Error, ErrorCode, Result};
use crate::feed::subscriber::{Outbox, SubSlot};
use crate::model::context::{Class, Kind, Run, RunHasher, RunId, Status};
use crate::model::patch::{self, PatchOp};
use crate::net::auth::Caller;
use crate::plugin::hooks::Hooks;
use crate::protocol::{EventName, ReqId, RunSpec};
use crate::space::views::ViewSet;
use crate::store::Store;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures::FutureExt;
use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use std::collections::{HashSet, VecDeque};
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

/// Finished run ids remembered for `run_finished` errors and duplicate-id checks (bounded, oldest forgotten first).
#[derive(Debug, Default)]
struct FinishedIds {
    set: HashSet<RunId>,
    order: VecDeque<RunId>,
}

impl FinishedIds {
    fn insert(&mut self, id: RunId, cap: usize) {
        if self.set.insert(id) {
            self.order.push_back(id);
            while self.order.len() > cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// State shared by the engine handles and the notifier tasks.
#[derive(Debug)]
pub struct Shared {
    /// Every run in any space's `activeRuns`, by id: O(1) lookup for patches from any connection.
    registry: DashMap<RunId, Arc<RunCell>, RunHasher>,
    finished: Mutex<FinishedIds>,
    spaces: DashMap<Arc<str>, Arc<Space>>,
    hooks: Hooks,
    /// Where finished runs are recorded.
    store: Arc<dyn Store>,
    pub config: EngineConfig,
    next_sub: AtomicU64,
    /// Memory budgets, and each owner's usage and quotas.
    budgets: Budgets,
    /// What every space's resume history holds.
    history: Arc<crate::feed::history::HistoryBudget>,
    /// Cancelled on shutdown: stops the notifiers.
    pub shutdown: CancellationToken,
}

/// A handle to the engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    shared: Arc<Shared>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Engine {
    pub fn new(config: EngineConfig, hooks: Hooks, store: Arc<dyn Store>) -> Engine {
        crate::telemetry::install();
        let budgets = Budgets::new(config.limits.clone());
        let history = crate::feed::history::HistoryBudget::new(config.limits.max_history_bytes);
        Engine {
            shared: Arc::new(Shared {
                registry: DashMap::with_hasher(RunHasher::default()),
                finished: Mutex::new(FinishedIds::default()),
                spaces: DashMap::new(),
                hooks,
                store,
                config,
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

    /// Stops every notifier. Pending diffs are not flushed after this.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether runs of this operation execute on the server (rather than being live).
    pub fn has_operation(&self, operation: &str) -> bool {
        self.shared.hooks.handler(operation).is_some()
    }

    /// Whether a run is active and not finished (a live or pending run).
    pub fn is_live(&self, id: RunId) -> bool {
        let Some(cell) = self.shared.registry.get(&id).map(|c| c.clone()) else { return false };
        !cell.run.lock().status.is_finished()
    }

    /// Runs in any space's `activeRuns`.
    pub fn active_runs(&self) -> usize {
        self.shared.registry.len()
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
        let owner = spec.owner.clone().unwrap_or_else(|| "system".into());
        // Given back on every early return below (a guard).
        let quota = self.shared.budgets.start_run(&owner)?;
        let handler = self.shared.hooks.handler(&spec.operation);
        let (space, parent) = self.resolve_space(&spec, caller)?;
        if !caller.can_write(&space.name) {
            return Err(Error::new(ErrorCode::Forbidden, "the token may not write to this space").into());
        }
        let id = spec.id.unwrap_or_else(RunId::now_v7);
        let status = if handler.is_some() { Status::Pending } else { Status::Running };
        let kind = Kind::of(&spec.operation);
        let mut ctx = Map::new();
        ctx.insert("id".into(), Value::String(id.to_string()));
        ctx.insert("timestamp".into(), Value::from(now_ms()));
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
        let bytes = crate::model::size::run(&ctx);
        let mut quota = quota;
        quota.admit(bytes)?;

        if let Err(e) = self.shared.hooks.before(&ctx) {
            drop(quota);
            ctx.insert("status".into(), Value::from(Status::Failed.as_str()));
            ctx.insert("error".into(), json!({"code": e.code.as_str(), "message": e.message}));
            self.shared.hooks.error(&ctx, &e);
            let ctx = Arc::new(ctx);
            // Its id is used up: it is in the trail.
            self.shared.finished.lock().insert(id, self.shared.config.limits.finished_memory);
            let durable = {
                let mut st = space.lock();
                if st.events_wanted > 0 {
                    st.journal.event(EventName::ErrorRun, ctx.clone());
                    space.changed(&mut st);
                }
                self.record(&ctx)
            };
            durable.await?;
            return Err(RunFailure { error: e, run: Some(ctx) });
        }

        let reply = ctx.clone();
        let mut space = space;
        loop {
            let mut guard = space.lock();
            let st = &mut *guard;
            if st.retired {
                // Reclaimed since it was looked up (it held nothing then): look it up, or create it, again.
                drop(guard);
                let name = space.name.clone();
                space = self.space(&name, caller)?;
                continue;
            }
            if self.shared.finished.lock().set.contains(&id) {
                drop(guard);
                return Err(self.lost_race(id, reply));
            }
            let parent = parent.filter(|p| st.runs.contains_key(p));
            let run =
                Run { id, parent, kind, status, started: Instant::now(), ctx, producer: caller.connection, bytes };
            let class = run.class();
            let cell = match self.shared.registry.entry(id) {
                Entry::Occupied(_) => {
                    drop(guard);
                    return Err(self.lost_race(id, reply));
                }
                Entry::Vacant(v) => {
                    let account = quota.keep();
                    let cell = Arc::new(RunCell { space: space.clone(), run: Mutex::new(run), account });
                    v.insert(cell.clone());
                    cell
                }
            };
            st.journal.touch(id, Class::ABSENT);
            st.journal.loading(st.views.is_loading());
            st.views.add(id, parent, class, st.journal.view_ops());
            st.runs.insert(id, cell);
            if st.events_wanted > 0 {
                st.journal.event(EventName::BeforeRun, Arc::new(reply.clone()));
            }
            space.changed(st);
            break;
        }

        let Some(handler) = handler else { return Ok(Arc::new(reply)) };
        match handler.execute(reply, self.clone()).await {
            Ok(output) => Ok(self.complete(id, Some(output), &Caller::trusted())?.durable().await?),
            Err(e) => {
                let error = json!({"code": e.code.as_str(), "message": e.message});
                let run = self.fail(id, error, &Caller::trusted())?.durable().await?;
                Err(RunFailure { error: Error::new(ErrorCode::OperationFailed, e.message), run: Some(run) })
            }
        }
    }

    fn resolve_space(&self, spec: &RunSpec, caller: &Caller) -> Result<(Arc<Space>, Option<RunId>)> {
        match spec.parent_run {
            Some(p) => {
                let space = self
                    .shared
                    .registry
                    .get(&p)
                    .map(|cell| cell.space.clone())
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

    /// The space with this name, created (with its notifier) on first use. A new space counts against the
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
                let space = Space::new(Arc::from(name), self.shared.history.clone(), quota);
                crate::telemetry::SPACES.increment(1.0);
                tokio::spawn(ticker::run(space.clone(), self.shared.clone()));
                v.insert(space).clone()
            }
        };
        Ok(space)
    }

    /// Refuses an id that an active run, a remembered finished run or the audit trail already has.
    async fn check_new_id(&self, id: RunId) -> Result<()> {
        let taken = Error::new(ErrorCode::DuplicateRun, "a run with this id exists");
        if self.shared.registry.contains_key(&id) || self.shared.finished.lock().set.contains(&id) {
            return Err(taken);
        }
        if self.shared.store.contains(id).await? { Err(taken) } else { Ok(()) }
    }

    /// Another request took this run's id between the check and the insert (after `before_run` passed): the run
    /// fails, and `on_error` is called as the hook contract says.
    fn lost_race(&self, id: RunId, mut ctx: Map<String, Value>) -> RunFailure {
        let e = Error::new(ErrorCode::DuplicateRun, format!("a run with id {id} exists"));
        ctx.insert("status".into(), Value::from(Status::Failed.as_str()));
        ctx.insert("error".into(), json!({"code": e.code.as_str(), "message": e.message}));
        self.shared.hooks.error(&ctx, &e);
        RunFailure { error: e, run: None }
    }

    /// Whether `caller` may change `run` now: a caller without the right gets exactly the error of a run that does
    /// not exist; a finished run gets `run_finished`.
    fn check_change(caller: &Caller, run: &Run, space: &Space) -> Result<()> {
        // A trusted caller may change any run: skip the owner lookup (a cold hash probe per patch).
        let owner = || run.ctx.get("owner").and_then(Value::as_str).unwrap_or_default();
        if caller.owner.is_some() && !caller.can_change(owner(), &space.name) {
            return Err(Error::new(ErrorCode::UnknownRun, "no active run has this id"));
        }
        if run.status.is_finished() {
            return Err(Error::new(ErrorCode::RunFinished, "the run has finished"));
        }
        Ok(())
    }

    fn lookup(&self, id: RunId) -> Result<Arc<RunCell>> {
        if let Some(cell) = self.shared.registry.get(&id) {
            return Ok(cell.clone());
        }
        Err(if self.shared.finished.lock().set.contains(&id) {
            Error::new(ErrorCode::RunFinished, "the run has finished")
        } else {
            Error::new(ErrorCode::UnknownRun, "no active run has this id")
        })
    }

    /// Applies a patch atomically and journals its changes.
    pub fn patch(&self, id: RunId, ops: Vec<PatchOp>, caller: &Caller) -> Result<()> {
        if !crate::telemetry::sample_patch() {
            return self.patch_timed(id, ops, caller);
        }
        let started = std::time::Instant::now();
        let result = self.patch_timed(id, ops, caller);
        crate::telemetry::PATCH_SECONDS.record(started.elapsed().as_secs_f64());
        result
    }

    fn patch_timed(&self, id: RunId, ops: Vec<PatchOp>, caller: &Caller) -> Result<()> {
        let cell = self.lookup(id)?;
        let space = &cell.space;
        let mut st = space.lock();
        let mut run = cell.run.lock();
        Self::check_change(caller, &run, space)?;
        let before = run.class();
        let (budgets, account, run_bytes) = (&self.shared.budgets, &*cell.account, run.bytes);
        // The usual patch fits: its growth is admitted in advance, by an upper bound settled after apply, and it
        // needs no undo log. One that may not fit is applied with its undo log and admitted by what it grew.
        let bound = patch::growth_bound(&ops);
        let reserved = budgets.admit(account, run_bytes, bound as isize).is_ok();
        let admit = |grown: isize| {
            if reserved {
                budgets.grow(account, grown - bound as isize);
                Ok(())
            } else {
                budgets.admit(account, run_bytes, grown).map_err(|b| b.refusal(grown.max(0) as usize))
            }
        };
        let applied = patch::apply_admitted(&mut run.ctx, ops, !reserved, admit).map_err(|r| match r {
            patch::Refused::Op(e) => {
                if reserved {
                    budgets.grow(account, -(bound as isize));
                }
                e
            }
            patch::Refused::Admission(e) => e,
        })?;
        run.bytes = run.bytes.saturating_add_signed(applied.grown);
        if caller.connection != 0 {
            run.producer = caller.connection;
        }
        drop(run);
        st.journal.changes(id, before, applied.changes);
        space.changed(&mut st);
        Ok(())
    }

    /// Completes a run: it leaves `activeRuns`; a data run becomes `currentRun`. Returns the final context and
    /// its audit record, queued in the order of the state change.
    pub fn complete(&self, id: RunId, output: Option<Value>, caller: &Caller) -> Result<Finished> {
        let cell = self.lookup(id)?;
        let space = &cell.space;
        let ctx = {
            let mut st = space.lock();
            let mut run = cell.run.lock();
            Self::check_change(caller, &run, space)?;
            // What the budgets count for it (its final output is not counted: it leaves now).
            let (before, kind, bytes) = (run.class(), run.kind, run.bytes);
            run.finish(Status::Completed, output, None);
            let ctx = Arc::new(std::mem::take(&mut run.ctx));
            drop(run);
            st.remove_run(id, before);
            self.shared.forget(id, &cell.account, bytes);
            if kind == Kind::Data {
                let json: Arc<str> = serde_json::to_string(&*ctx).expect("a context serializes").into();
                let old = st.views.set_current(json.clone()).map_or(0, |old| old.len());
                self.shared.budgets.grow_shared(crate::model::size::delta(old, json.len()));
                st.journal.current_changed();
            }
            if st.events_wanted > 0 {
                st.journal.event(EventName::AfterRun, ctx.clone());
            }
            space.changed(&mut st);
            Finished { durable: self.record(&self.completed_record(&ctx)), run: ctx }
        };
        self.shared.hooks.after(&ctx.run);
        Ok(ctx)
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

    /// Fails a run: it stays in `activeRuns`, visible as failed, for the linger period. Returns its context and
    /// its audit record, queued in the order of the state change.
    pub fn fail(&self, id: RunId, error: Value, caller: &Caller) -> Result<Finished> {
        self.fail_if(id, error, caller, |_| true)
    }

    /// After a connection dropped: once the producer grace has passed, fails every run in `runs` that is still
    /// live and was last changed by that connection (`producer_lost`). Returns at once.
    pub fn connection_lost(&self, connection: u64, runs: Vec<RunId>) {
        if runs.is_empty() {
            return;
        }
        let engine = self.clone();
        let grace = self.shared.config.limits.producer_grace;
        tokio::spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(grace) => {}
                _ = engine.shared.shutdown.cancelled() => return,
            }
            let error = json!({"code": "producer_lost", "message": "the producer's connection was lost"});
            for id in runs {
                // Only live runs wait for their producer; a pending run's operation runs on the server.
                let orphaned = |run: &Run| run.producer == connection && run.status == Status::Running;
                if let Ok(f) = engine.fail_if(id, error.clone(), &Caller::trusted(), orphaned)
                    && let Err(e) = f.durable().await
                {
                    tracing::error!(error = %e, "could not record a run lost with its producer");
                }
            }
        });
    }

    fn fail_if(&self, id: RunId, error: Value, caller: &Caller, only_if: impl Fn(&Run) -> bool) -> Result<Finished> {
        let cell = self.lookup(id)?;
        let space = &cell.space;
        let ctx = {
            let mut guard = space.lock();
            let st = &mut *guard;
            let mut run = cell.run.lock();
            Self::check_change(caller, &run, space)?;
            if !only_if(&run) {
                return Err(Error::new(ErrorCode::Conflict, "the run's producer came back"));
            }
            let (before, bytes) = (run.class(), run.bytes);
            let changes = run.finish(Status::Failed, None, Some(error));
            // A failure may grow the run (its `error`): never refused, and given back when its linger ends.
            self.shared.budgets.grow(&cell.account, crate::model::size::delta(bytes, run.bytes));
            let after = run.class();
            let ctx = Arc::new(run.ctx.clone());
            drop(run);
            st.journal.loading(st.views.is_loading());
            st.journal.changes(id, before, changes);
            st.views.reclassify(id, before, after, st.journal.view_ops());
            st.lingering.push_back((Instant::now() + self.shared.config.linger, id));
            if st.events_wanted > 0 {
                st.journal.event(EventName::ErrorRun, ctx.clone());
            }
            space.changed(st);
            Finished { durable: self.record(&ctx), run: ctx }
        };
        let message = ctx.run.get("error").and_then(|e| e.get("message")).and_then(Value::as_str).unwrap_or_default();
        self.shared.hooks.error(&ctx.run, &Error::new(ErrorCode::OperationFailed, message));
        Ok(ctx)
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
        let id = self.shared.next_sub.fetch_add(1, Ordering::Relaxed);
        loop {
            let space = self.space(space, caller)?;
            let mut st = space.lock();
            if st.retired {
                // Reclaimed since it was looked up: look it up (or create it) again.
                continue;
            }
            if !st.renders(views) && st.view_sets() >= self.shared.config.limits.max_view_sets_per_space {
                return Err(Error::new(ErrorCode::LimitExceeded, "too many distinct view sets in this space"));
            }
            let slot = SubSlot::new(id, space.name.clone(), views, events, outbox.clone());
            st.joining.push(Joining { slot: slot.clone(), req_id, since });
            crate::telemetry::SUBSCRIPTIONS.increment(1.0);
            if events {
                st.events_wanted += 1;
            }
            space.changed(&mut st);
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
            if st.unregister(slot) {
                // Wake the space's task: with its last subscriber gone it may now be reclaimed, and it must
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

    /// The largest run's state bytes (a scan of the registry: for metrics, not for a hot path).
    pub fn largest_run_bytes(&self) -> usize {
        let cells: Vec<Arc<RunCell>> = self.shared.registry.iter().map(|c| c.value().clone()).collect();
        cells.iter().map(|c| c.run.lock().bytes).max().unwrap_or(0)
    }
}

impl Shared {
    /// Reclaims `space` if it still holds nothing: it leaves the map (its notifier then ends) and is marked retired
    /// under its lock, so whoever holds it finds that out and looks the name up again. Returns whether it was.
    pub fn reclaim(&self, space: &Arc<Space>) -> bool {
        // Lock order: the map's shard, then the space (nothing takes them the other way round).
        let removed = self.spaces.remove_if(&space.name, |_, s| {
            if !Arc::ptr_eq(s, space) {
                return false;
            }
            let mut st = s.lock();
            st.history.expire(Instant::now());
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

    /// Drops a finished run from the registry, remembers its id, and gives back its owner's active-run slot and
    /// its state bytes.
    fn forget(&self, id: RunId, account: &Account, bytes: usize) {
        self.registry.remove(&id);
        self.finished.lock().insert(id, self.config.limits.finished_memory);
        self.budgets.end_run(account, bytes);
    }

    /// Removes failed runs whose linger has passed.
    pub fn expire_lingering(&self, space: &Space) {
        let now = Instant::now();
        let mut st = space.lock();
        let mut any = false;
        while let Some(&(due, id)) = st.lingering.front() {
            if due > now {
                break;
            }
            st.lingering.pop_front();
            if let Some(cell) = st.runs.get(&id).cloned() {
                let (before, bytes) = {
                    let run = cell.run.lock();
                    (run.class(), run.bytes)
                };
                st.remove_run(id, before);
                self.forget(id, &cell.account, bytes);
                any = true;
            }
        }
        if any {
            space.changed(&mut st);
        }
    }
}
