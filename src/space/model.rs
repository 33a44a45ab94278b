//! A space's state and its one way to change: [`SpaceModel::apply`]. The model holds the active runs (in creation
//! order), the views, the failed runs waiting out their linger, the run ids it has finished and `currentRun`. Apply
//! is pure: no clock, no I/O, no hook, no wire. Two models fed the same events end equal. What apply returns,
//! [`Applied`], is all the per-node feed and the side effects (audit record, hooks, quota release, reply) need.

use crate::error::{Error, ErrorCode, Result};
use crate::model::change::Change;
use crate::model::context::{Class, Kind, Run, RunHasher, RunId, Status};
use crate::model::patch::{self, Refused};
use crate::space::event::{End, SpaceEvent};
use crate::space::views::{ViewOp, Views};
use indexmap::IndexMap;
use serde_json::{Map, Value, json};
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

/// The rules every replica applies with: part of the space's definition, so equal on every node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rules {
    /// How long a failed run stays in `activeRuns`, in milliseconds.
    pub linger_ms: u64,
    /// A run's state bytes at most (`run_too_large` beyond).
    pub max_run_bytes: usize,
    /// Finished run ids the space remembers (oldest forgotten first), for `run_finished` and duplicate ids.
    pub finished_memory: usize,
}

/// A lifecycle notice for the subscribers that asked for events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    Started,
    Completed,
    Failed,
}

/// What one applied event changed.
#[derive(Debug, Default)]
pub struct Applied {
    /// The run it was about.
    pub run: RunId,
    /// The run's class before the event ([`Class::ABSENT`] for a run that was not in `activeRuns`).
    pub before: Class,
    /// Changes to the run's context (a patch's, a failure's), in order.
    pub changes: Vec<Change>,
    /// View ops, in order, indexes valid when each applies.
    pub views: Vec<ViewOp>,
    /// `isLoading` before the event, when the event may have changed it.
    pub loading_before: Option<bool>,
    /// Whether `currentRun` changed.
    pub current_changed: bool,
    /// How much the state bytes of `currentRun` moved.
    pub current_grown: isize,
    /// How much the run's state bytes moved while it stays in the space.
    pub grown: isize,
    /// The run left `activeRuns`, holding this many state bytes.
    pub left: Option<usize>,
    /// The lifecycle notice, if the event is one.
    pub notice: Option<Lifecycle>,
    /// The run's context as it finished (completed, failed, rejected).
    pub finished: Option<Arc<Map<String, Value>>>,
}

impl Applied {
    fn about(run: RunId) -> Applied {
        Applied { run, ..Applied::default() }
    }

    /// Whether the event changed nothing (a timer for a run that is gone, a producer that came back).
    pub fn is_noop(&self) -> bool {
        self.before == Class::ABSENT
            && self.left.is_none()
            && self.notice.is_none()
            && self.views.is_empty()
            && self.changes.is_empty()
            && self.grown == 0
    }
}

/// Finished run ids, bounded, oldest forgotten first.
#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FinishedIds {
    set: HashSet<RunId, RunHasher>,
    order: VecDeque<RunId>,
}

impl FinishedIds {
    /// Remembers `id`, forgetting the oldest past `cap`.
    pub fn insert(&mut self, id: RunId, cap: usize) {
        if self.set.insert(id) {
            self.order.push_back(id);
            while self.order.len() > cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, id: &RunId) -> bool {
        self.set.contains(id)
    }
}

/// One space's state.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct SpaceModel {
    /// Not in a snapshot: every replica has them from its config.
    #[serde(skip)]
    rules: Rules,
    /// `activeRuns`, in creation order (removals may reorder: the view arrays carry the order).
    runs: IndexMap<RunId, Run, RunHasher>,
    views: Views,
    /// Failed runs waiting out their linger: (when it ends, in milliseconds since the epoch; the run), oldest first.
    lingering: VecDeque<(u64, RunId)>,
    finished: FinishedIds,
    /// The last completed data run, and its state bytes.
    current: Option<(Arc<Map<String, Value>>, usize)>,
}

fn unknown() -> Error {
    Error::new(ErrorCode::UnknownRun, "no active run has this id")
}

fn finished() -> Error {
    Error::new(ErrorCode::RunFinished, "the run has finished")
}

impl SpaceModel {
    pub fn new(rules: Rules) -> SpaceModel {
        SpaceModel {
            rules,
            runs: IndexMap::default(),
            views: Views::default(),
            lingering: VecDeque::new(),
            finished: FinishedIds::default(),
            current: None,
        }
    }

    /// Applies one event, all or nothing: on `Err` the model is exactly as it was. The event is taken by value,
    /// not borrowed: its values (a token, a context) move into the state, so the token path copies nothing; a log
    /// keeps the event's encoded bytes, and a replica decodes its own copy.
    pub fn apply(&mut self, event: SpaceEvent) -> Result<Applied> {
        match event {
            SpaceEvent::RunStarted { id, timestamp, parent, status, ctx, producer } => {
                if self.runs.contains_key(&id) || self.finished.contains(&id) {
                    return Err(Error::new(ErrorCode::DuplicateRun, format!("a run with id {id} exists")));
                }
                let kind = Kind::of(ctx.get("operation").and_then(Value::as_str).unwrap_or_default());
                let parent = parent.filter(|p| self.runs.contains_key(p));
                let bytes = crate::model::size::run(&ctx);
                if bytes > self.rules.max_run_bytes {
                    return Err(crate::model::size::Budget::Run.refusal(bytes));
                }
                let run = Run { id, parent, kind, status, timestamp, ctx, producer, bytes };
                let class = run.class();
                let mut a = Applied::about(id);
                a.loading_before = Some(self.views.is_loading());
                self.views.add(id, parent, class, &mut a.views);
                self.runs.insert(id, run);
                a.grown = bytes as isize;
                a.notice = Some(Lifecycle::Started);
                Ok(a)
            }
            SpaceEvent::Patched { run: id, ops, producer, allowance } => {
                let max_run = self.rules.max_run_bytes;
                let run = self.live_mut(id)?;
                let run_bytes = run.bytes;
                let bound = patch::growth_bound(&ops);
                let fits = allowance.covers(bound) && run_bytes.saturating_add(bound) <= max_run;
                let admit = |grown: isize| {
                    let n = grown.max(0) as usize;
                    if run_bytes.saturating_add(n) > max_run {
                        Err(crate::model::size::Budget::Run.refusal(n))
                    } else if !allowance.covers(n) {
                        Err(allowance.budget.refusal(n))
                    } else {
                        Ok(())
                    }
                };
                let applied = patch::apply_admitted(&mut run.ctx, ops, !fits, admit).map_err(|r| match r {
                    Refused::Op(e) | Refused::Admission(e) => e,
                })?;
                run.bytes = run.bytes.saturating_add_signed(applied.grown);
                if producer.is_some() {
                    run.producer = producer;
                }
                let class = run.class();
                Ok(Applied { before: class, changes: applied.changes, grown: applied.grown, ..Applied::about(id) })
            }
            SpaceEvent::Finished { run: id, end: End::Completed { output }, at_ms } => {
                let run = self.live_mut(id)?;
                let (before, kind, bytes) = (run.class(), run.kind, run.bytes);
                run.finish(Status::Completed, output, None, at_ms);
                let ctx = Arc::new(std::mem::take(&mut run.ctx));
                let mut a =
                    Applied { before, left: Some(bytes), notice: Some(Lifecycle::Completed), ..Applied::about(id) };
                self.remove(id, before, &mut a);
                if kind == Kind::Data {
                    // `currentRun` holds the whole context, output included.
                    let size = crate::model::size::run(&ctx);
                    let old = self.current.replace((ctx.clone(), size)).map_or(0, |(_, s)| s);
                    a.current_grown = crate::model::size::delta(old, size);
                    a.current_changed = true;
                }
                a.finished = Some(ctx);
                Ok(a)
            }
            SpaceEvent::Finished { run: id, end: End::Failed { error }, at_ms } => {
                self.live_mut(id)?;
                Ok(self.fail(id, error, at_ms))
            }
            SpaceEvent::ProducerLost { run: id, producer, at_ms } => {
                let orphaned =
                    self.runs.get(&id).is_some_and(|r| r.status == Status::Running && r.producer == Some(producer));
                if !orphaned {
                    return Ok(Applied::about(id));
                }
                let error = json!({"code": "producer_lost", "message": "the producer's connection was lost"});
                Ok(self.fail(id, error, at_ms))
            }
            SpaceEvent::LingerExpired { run: id } => {
                let Some(run) = self.runs.get(&id).filter(|r| r.status == Status::Failed) else {
                    return Ok(Applied::about(id));
                };
                let (before, bytes) = (run.class(), run.bytes);
                match self.lingering.front() {
                    Some((_, first)) if *first == id => {
                        self.lingering.pop_front();
                    }
                    _ => self.lingering.retain(|(_, r)| *r != id),
                }
                let mut a = Applied { before, left: Some(bytes), ..Applied::about(id) };
                self.remove(id, before, &mut a);
                Ok(a)
            }
            SpaceEvent::Rejected { id, ctx } => {
                if self.runs.contains_key(&id) || self.finished.contains(&id) {
                    return Err(Error::new(ErrorCode::DuplicateRun, format!("a run with id {id} exists")));
                }
                self.finished.insert(id, self.rules.finished_memory);
                Ok(Applied { notice: Some(Lifecycle::Failed), finished: Some(Arc::new(ctx)), ..Applied::about(id) })
            }
        }
    }

    /// A run that may still change, or why not.
    fn live_mut(&mut self, id: RunId) -> Result<&mut Run> {
        match self.runs.get_mut(&id) {
            Some(run) if run.status.is_finished() => Err(finished()),
            Some(run) => Ok(run),
            None if self.finished.contains(&id) => Err(finished()),
            None => Err(unknown()),
        }
    }

    /// Fails a live run: it stays in `activeRuns`, visible as failed, until its linger ends.
    fn fail(&mut self, id: RunId, error: Value, at_ms: u64) -> Applied {
        let run = self.runs.get_mut(&id).expect("a live run");
        let (before, bytes) = (run.class(), run.bytes);
        let changes = run.finish(Status::Failed, None, Some(error), at_ms);
        let after = run.class();
        let grown = crate::model::size::delta(bytes, run.bytes);
        let ctx = Arc::new(run.ctx.clone());
        let mut a = Applied { before, changes, grown, notice: Some(Lifecycle::Failed), ..Applied::about(id) };
        a.loading_before = Some(self.views.is_loading());
        self.views.reclassify(id, before, after, &mut a.views);
        self.lingering.push_back((at_ms.saturating_add(self.rules.linger_ms), id));
        a.finished = Some(ctx);
        a
    }

    /// Takes a run out of `activeRuns` and remembers its id.
    fn remove(&mut self, id: RunId, before: Class, a: &mut Applied) {
        a.loading_before = Some(self.views.is_loading());
        self.views.remove(id, before, &mut a.views);
        self.runs.swap_remove(&id);
        self.finished.insert(id, self.rules.finished_memory);
    }

    /// Whether the space finished the run `id` (among the last `finished_memory` it finished).
    pub fn has_finished(&self, id: RunId) -> bool {
        self.finished.contains(&id)
    }

    /// The rules it applies with.
    pub fn rules(&self) -> Rules {
        self.rules
    }

    /// The runs of `activeRuns`.
    pub fn runs(&self) -> impl Iterator<Item = (&RunId, &Run)> {
        self.runs.iter()
    }

    pub fn run(&self, id: RunId) -> Option<&Run> {
        self.runs.get(&id)
    }

    pub fn views(&self) -> &Views {
        &self.views
    }

    /// `currentRun`'s context.
    pub fn current(&self) -> Option<&Arc<Map<String, Value>>> {
        self.current.as_ref().map(|(c, _)| c)
    }

    /// Whether the space holds no run.
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// When the oldest lingering run's linger ends (milliseconds since the epoch).
    pub fn next_linger_end(&self) -> Option<u64> {
        self.lingering.front().map(|(at, _)| *at)
    }

    /// Lingering runs whose linger has ended by `now_ms`, oldest first.
    pub fn linger_ended(&self, now_ms: u64) -> Vec<RunId> {
        self.lingering.iter().take_while(|(at, _)| *at <= now_ms).map(|(_, id)| *id).collect()
    }

    /// The state bytes of `currentRun`.
    pub fn current_bytes(&self) -> usize {
        self.current.as_ref().map_or(0, |(_, s)| *s)
    }

    /// The whole state, encoded (CBOR, behind [`crate::space::event::VERSION`]): what a replica that joins late
    /// starts from instead of the log's beginning.
    pub fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(&(crate::space::event::VERSION, self), &mut out).expect("a model encodes into memory");
        out
    }

    /// A model from [`SpaceModel::snapshot`]'s bytes, applying `rules` from here on.
    pub fn restore(rules: Rules, bytes: &[u8]) -> Result<SpaceModel> {
        let bad = |why: String| Error::new(ErrorCode::Internal, format!("an undecodable space snapshot: {why}"));
        let (version, mut model): (u8, SpaceModel) = ciborium::from_reader(bytes).map_err(|e| bad(e.to_string()))?;
        if version != crate::space::event::VERSION {
            return Err(bad(format!("version {version}")));
        }
        model.rules = rules;
        Ok(model)
    }

    /// The whole state as JSON, for tests and comparisons (not the wire's state document).
    pub fn to_json(&self) -> Value {
        let ids = |it: &mut dyn Iterator<Item = &RunId>| it.map(|id| Value::from(id.to_string())).collect::<Vec<_>>();
        json!({
            "runs": self.runs.values().map(|r| json!({
                "ctx": r.ctx, "parent": r.parent.map(|p| p.to_string()), "bytes": r.bytes,
                "producer": r.producer.map(|p| [p.node, p.connection]),
            })).collect::<Vec<_>>(),
            "activeDialogs": ids(&mut self.views.dialogs()),
            "activeAI": ids(&mut self.views.ai()),
            "activePipelines": self.views.pipelines().map(|(root, m)| {
                (root.to_string(), Value::from(ids(&mut m.iter())))
            }).collect::<Map<String, Value>>(),
            "isLoading": self.views.is_loading(),
            "currentRun": self.current.as_ref().map(|(c, _)| Value::Object((**c).clone())),
            "lingering": self.lingering.iter().map(|(at, id)| json!([at, id.to_string()])).collect::<Vec<_>>(),
            "finished": self.finished.order.iter().map(|id| id.to_string()).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::context::ProducerId;
    use crate::model::patch::PatchOp;
    use crate::model::path::{Path, PathLimits};
    use crate::model::size::Budget;
    use crate::space::event::Allowance;

    const RULES: Rules = Rules { linger_ms: 1000, max_run_bytes: 16384, finished_memory: 100 };
    const P1: ProducerId = ProducerId { node: 1, connection: 1 };
    const P2: ProducerId = ProducerId { node: 2, connection: 1 };

    fn id(n: u128) -> RunId {
        RunId::from_u128(n)
    }

    fn ctx(n: u128, operation: &str, status: Status, at: u64) -> Map<String, Value> {
        let v = json!({
            "id": id(n).to_string(), "timestamp": at, "operation": operation, "doctype": null, "flow": null,
            "input": null, "options": {}, "owner": "ann", "agent": null, "parentRun": null, "steps": [],
            "space": "s", "status": status.as_str(), "output": null, "error": null, "success": false, "duration": 0,
        });
        v.as_object().unwrap().clone()
    }

    fn start(n: u128, operation: &str, parent: Option<u128>) -> SpaceEvent {
        let status = if matches!(operation, "select" | "create") { Status::Pending } else { Status::Running };
        SpaceEvent::RunStarted {
            id: id(n),
            timestamp: 100,
            parent: parent.map(id),
            status,
            ctx: ctx(n, operation, status, 100),
            producer: Some(P1),
        }
    }

    fn path(p: &str) -> Path {
        Path::parse(p, PathLimits { max_bytes: 256, max_depth: 16 }).unwrap()
    }

    fn patch(n: u128, ops: Vec<PatchOp>) -> SpaceEvent {
        SpaceEvent::Patched { run: id(n), ops, producer: None, allowance: Allowance::UNLIMITED }
    }

    fn complete(n: u128, output: Value) -> SpaceEvent {
        SpaceEvent::Finished { run: id(n), end: End::Completed { output: Some(output) }, at_ms: 350 }
    }

    fn fail(n: u128) -> SpaceEvent {
        SpaceEvent::Finished { run: id(n), end: End::Failed { error: json!({"code": "x"}) }, at_ms: 200 }
    }

    /// The model in short: each run by its number with its status and what a test looks at.
    fn summary(m: &SpaceModel) -> Value {
        let n = |id: &RunId| id.as_u128().to_string();
        let ns = |it: &mut dyn Iterator<Item = &RunId>| it.map(|i| Value::from(n(i))).collect::<Vec<_>>();
        let mut out = json!({
            "runs": m.runs().map(|(id, r)| {
                let mut run = json!({"status": r.status.as_str()});
                for k in ["output", "error", "duration"] {
                    if !r.ctx[k].is_null() && r.ctx[k] != json!(0) {
                        run[k] = r.ctx[k].clone();
                    }
                }
                (n(id), run)
            }).collect::<Map<String, Value>>(),
            "dialogs": ns(&mut m.views().dialogs()),
            "ai": ns(&mut m.views().ai()),
            "pipelines": m.views().pipelines().map(|(r, g)| (n(r), Value::from(ns(&mut g.iter()))))
                .collect::<Map<String, Value>>(),
            "loading": m.views().is_loading(),
        });
        if let Some(c) = m.current() {
            out["current"] =
                json!([c["id"].as_str().map(|s| s.rsplit('-').next().unwrap().trim_start_matches('0')), c["output"]]);
        }
        if !m.lingering.is_empty() {
            out["lingering"] = m.lingering.iter().map(|(at, id)| json!([at, n(id)])).collect();
        }
        out
    }

    /// Applies `before`, then `event`, and compares the model with `expect`.
    fn check(before: &[SpaceEvent], event: SpaceEvent, expect: Value) -> Applied {
        let mut m = SpaceModel::new(RULES);
        for e in before {
            m.apply(e.clone()).unwrap();
        }
        let a = m.apply(event).unwrap();
        assert_eq!(summary(&m), expect);
        a
    }

    /// Applies `before`, then `event`, which must be refused with `code` and change nothing.
    fn check_err(before: &[SpaceEvent], event: SpaceEvent, code: ErrorCode) {
        let mut m = SpaceModel::new(RULES);
        for e in before {
            m.apply(e.clone()).unwrap();
        }
        let was = m.to_json();
        let e = m.apply(event).unwrap_err();
        assert_eq!(e.code, code, "{}", e.message);
        assert_eq!(m.to_json(), was, "a refused event changes nothing");
    }

    #[test]
    fn a_started_run_enters_its_views_and_a_child_its_parents_pipeline() {
        let a = check(
            &[start(1, "dialog", None)],
            start(2, "interpret", Some(1)),
            json!({"runs": {"1": {"status": "running"}, "2": {"status": "running"}}, "dialogs": ["1"],
                "ai": ["2"], "pipelines": {"1": ["1", "2"]}, "loading": true}),
        );
        assert_eq!(a.notice, Some(Lifecycle::Started));
        assert_eq!(a.before, Class::ABSENT);
        assert!(a.grown > 0);
        // A parent that is not active here: a pipeline of its own.
        check(
            &[],
            start(2, "task", Some(9)),
            json!({"runs": {"2": {"status": "running"}}, "dialogs": [], "ai": [], "pipelines": {"2": ["2"]},
                "loading": true}),
        );
    }

    #[test]
    fn a_run_id_is_used_once() {
        check_err(&[start(1, "task", None)], start(1, "task", None), ErrorCode::DuplicateRun);
        check_err(&[start(1, "task", None), complete(1, json!(1))], start(1, "task", None), ErrorCode::DuplicateRun);
        let rejected = SpaceEvent::Rejected { id: id(1), ctx: ctx(1, "task", Status::Failed, 100) };
        check_err(std::slice::from_ref(&rejected), start(1, "task", None), ErrorCode::DuplicateRun);
        check_err(&[start(1, "task", None)], rejected, ErrorCode::DuplicateRun);
        let mut big = ctx(1, "task", Status::Running, 100);
        big.insert("input".into(), json!("x".repeat(20000)));
        let big = SpaceEvent::RunStarted {
            id: id(1),
            timestamp: 100,
            parent: None,
            status: Status::Running,
            ctx: big,
            producer: None,
        };
        check_err(&[], big, ErrorCode::RunTooLarge);
    }

    #[test]
    fn a_patch_applies_whole_or_not_at_all() {
        let a = check(
            &[start(1, "interpret", None)],
            patch(1, vec![PatchOp::append(path("output.t"), json!("a")), PatchOp::set(path("output.n"), json!(2))]),
            json!({"runs": {"1": {"status": "running", "output": {"t": ["a"], "n": 2}}}, "dialogs": [], "ai": ["1"],
                "pipelines": {"1": ["1"]}, "loading": true}),
        );
        assert_eq!(a.changes.len(), 2);
        assert!(a.notice.is_none() && a.left.is_none());
        let ok_then_bad = vec![PatchOp::set(path("output.n"), json!(2)), PatchOp::remove(path("output.missing"))];
        check_err(&[start(1, "interpret", None)], patch(1, ok_then_bad), ErrorCode::PathNotFound);
        check_err(&[], patch(1, vec![]), ErrorCode::UnknownRun);
        check_err(&[start(1, "task", None), fail(1)], patch(1, vec![]), ErrorCode::RunFinished);
        check_err(&[start(1, "task", None), complete(1, json!(1))], patch(1, vec![]), ErrorCode::RunFinished);
    }

    #[test]
    fn a_patch_is_held_to_the_run_budget_and_to_its_allowance() {
        let big = || vec![PatchOp::set(path("output"), json!("x".repeat(20000)))];
        check_err(&[start(1, "task", None)], patch(1, big()), ErrorCode::RunTooLarge);
        let owner = Allowance { bytes: 100, budget: Budget::Owner };
        let grow = || vec![PatchOp::set(path("output"), json!("x".repeat(200)))];
        let limited = |ops, allowance| SpaceEvent::Patched { run: id(1), ops, producer: None, allowance };
        check_err(&[start(1, "task", None)], limited(grow(), owner), ErrorCode::QuotaStateBytes);
        let server = Allowance { bytes: 0, budget: Budget::Server };
        check_err(&[start(1, "task", None)], limited(grow(), server), ErrorCode::OverCapacity);
        // Shrinking always passes, with no allowance at all.
        let shrink = limited(vec![PatchOp::set(path("output"), json!(""))], server);
        let a = check(
            &[start(1, "task", None), patch(1, grow())],
            shrink,
            json!({"runs": {"1": {"status": "running", "output": ""}}, "dialogs": [], "ai": [],
                "pipelines": {"1": ["1"]}, "loading": true}),
        );
        assert!(a.grown < 0);
    }

    #[test]
    fn a_patch_names_its_producer() {
        let mut m = SpaceModel::new(RULES);
        m.apply(start(1, "task", None)).unwrap();
        let by = SpaceEvent::Patched { run: id(1), ops: vec![], producer: Some(P2), allowance: Allowance::UNLIMITED };
        m.apply(by).unwrap();
        assert_eq!(m.run(id(1)).unwrap().producer, Some(P2));
        m.apply(patch(1, vec![])).unwrap();
        assert_eq!(m.run(id(1)).unwrap().producer, Some(P2), "a producer-less patch keeps the producer");
    }

    #[test]
    fn a_completed_run_leaves_and_a_data_run_becomes_current() {
        let a = check(
            &[start(1, "dialog", None), start(2, "task", Some(1))],
            complete(1, json!("done")),
            json!({"runs": {"2": {"status": "running"}}, "dialogs": [], "ai": [], "pipelines": {"2": ["2"]},
                "loading": true}),
        );
        assert_eq!(a.notice, Some(Lifecycle::Completed));
        let ctx = a.finished.unwrap();
        assert_eq!(
            (ctx["status"].clone(), ctx["duration"].clone(), ctx["success"].clone()),
            (json!("completed"), json!(250), json!(true))
        );
        assert!(a.left.is_some());
        let a = check(
            &[start(1, "select", None)],
            complete(1, json!([1, 2])),
            json!({"runs": {}, "dialogs": [], "ai": [], "pipelines": {}, "loading": false, "current": ["1", [1, 2]]}),
        );
        assert!(a.current_changed && a.current_grown > 0);
    }

    #[test]
    fn a_failed_run_lingers_then_leaves() {
        let a = check(
            &[start(1, "dialog", None)],
            fail(1),
            json!({"runs": {"1": {"status": "failed", "error": {"code": "x"}, "duration": 100}}, "dialogs": [],
                "ai": [], "pipelines": {"1": ["1"]}, "loading": false, "lingering": [[1200, "1"]]}),
        );
        assert_eq!(a.notice, Some(Lifecycle::Failed));
        assert!(a.left.is_none() && !a.changes.is_empty());
        let a = check(
            &[start(1, "dialog", None), fail(1)],
            SpaceEvent::LingerExpired { run: id(1) },
            json!({"runs": {}, "dialogs": [], "ai": [], "pipelines": {}, "loading": false}),
        );
        assert!(a.left.is_some());
        check_err(&[start(1, "dialog", None), fail(1)], fail(1), ErrorCode::RunFinished);
    }

    #[test]
    fn timers_for_runs_that_moved_on_are_no_ops() {
        let running = json!({"runs": {"1": {"status": "running"}}, "dialogs": [], "ai": [], "pipelines": {"1": ["1"]},
            "loading": true});
        // Linger expiry of a running run, and of a run that is gone.
        assert!(check(&[start(1, "task", None)], SpaceEvent::LingerExpired { run: id(1) }, running.clone()).is_noop());
        let empty = json!({"runs": {}, "dialogs": [], "ai": [], "pipelines": {}, "loading": false});
        assert!(check(&[], SpaceEvent::LingerExpired { run: id(1) }, empty.clone()).is_noop());
        // A lost producer that is not the run's last one, a run that finished, a run that is gone.
        let lost = |p| SpaceEvent::ProducerLost { run: id(1), producer: p, at_ms: 300 };
        assert!(check(&[start(1, "task", None)], lost(P2), running).is_noop());
        let failed = json!({"runs": {"1": {"status": "failed", "error": {"code": "x"}, "duration": 100}},
            "dialogs": [], "ai": [], "pipelines": {"1": ["1"]}, "loading": false, "lingering": [[1200, "1"]]});
        assert!(check(&[start(1, "task", None), fail(1)], lost(P1), failed).is_noop());
        assert!(check(&[], lost(P1), empty).is_noop());
    }

    #[test]
    fn a_lost_producer_fails_its_running_run() {
        let a = check(
            &[start(1, "interpret", None)],
            SpaceEvent::ProducerLost { run: id(1), producer: P1, at_ms: 300 },
            json!({"runs": {"1": {"status": "failed", "duration": 200,
                "error": {"code": "producer_lost", "message": "the producer's connection was lost"}}},
                "dialogs": [], "ai": [], "pipelines": {"1": ["1"]}, "loading": false, "lingering": [[1300, "1"]]}),
        );
        assert_eq!(a.notice, Some(Lifecycle::Failed));
    }

    #[test]
    fn a_rejected_run_is_only_a_notice() {
        let a = check(
            &[],
            SpaceEvent::Rejected { id: id(1), ctx: ctx(1, "task", Status::Failed, 100) },
            json!({"runs": {}, "dialogs": [], "ai": [], "pipelines": {}, "loading": false}),
        );
        assert_eq!(a.notice, Some(Lifecycle::Failed));
        assert!(a.finished.is_some() && a.views.is_empty());
    }
}
