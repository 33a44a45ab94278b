//! Per-node delivery of what a space's state machine applied: the tick's journal and its compaction
//! ([`journal`]), rendering once per view set ([`render`]), resume history ([`history`]), and the subscriber slots and outboxes
//! ([`subscriber`]). [`Feed`] is the part of a space behind its lock that only this node has: it reads the model and
//! what each event's apply returned, and never changes the model.

pub mod history;
pub mod journal;
pub mod render;
pub mod subscriber;

use crate::model::context::Class;
use crate::protocol::{self, EventName, ReqId, StateParts};
use crate::space::model::{Applied, Lifecycle, SpaceModel};
use crate::space::views::ViewSet;
use history::History;
use journal::Journal;
use render::{Cut, Rendered, RunDelta};
use std::sync::Arc;
use subscriber::{Delivery, SubSlot};
use tokio::time::Instant;

/// Subscribers that share a view set, and so share rendered frames.
#[derive(Debug, Clone)]
pub struct Group {
    pub views: ViewSet,
    pub slots: Vec<Arc<SubSlot>>,
}

/// A subscribe request waiting for the next flush.
#[derive(Debug)]
pub struct Joining {
    pub slot: Arc<SubSlot>,
    pub req_id: ReqId,
    /// Resume after this `(epoch, seq)` instead of a snapshot, if the history allows.
    pub since: Option<(u64, u64)>,
}

/// A closed tick on its way out: rendered and fanned out without the space lock.
#[derive(Debug)]
pub struct Tick {
    cut: Cut,
    sets: Vec<ViewSet>,
    groups: Arc<Vec<Group>>,
    events_wanted: bool,
}

/// What a fanned-out tick leaves for the history, and the subscribers that overflowed.
pub struct Sent {
    seq: u64,
    diffs: Vec<(ViewSet, Option<Arc<str>>)>,
    overflowed: Vec<Arc<SubSlot>>,
}

/// One space's delivery state.
#[derive(Debug)]
pub struct Feed {
    pub journal: Journal,
    /// Registered subscribers, copied on write so a tick can fan out without the lock.
    pub groups: Arc<Vec<Group>>,
    /// Subscribers waiting for their first snapshot (or resume).
    pub joining: Vec<Joining>,
    /// Rendered diffs of recent ticks, for resumes.
    pub history: History,
    /// Subscribers that overflowed and wait for a fresh snapshot.
    pub resync: Vec<Arc<SubSlot>>,
    /// When the first deferred resync in `resync` may be served.
    pub resync_wake: Option<Instant>,
    /// States rendered at a seq, by view set: a snapshot is rendered once per view set and seq.
    snapshots: Vec<(ViewSet, u64, Arc<str>)>,
    /// How many registered or joining subscribers asked for events (events are only journaled when some did).
    pub events_wanted: usize,
}

impl Feed {
    pub fn new(history: History) -> Feed {
        Feed {
            journal: Journal::default(),
            groups: Arc::new(Vec::new()),
            joining: Vec::new(),
            history,
            resync: Vec::new(),
            resync_wake: None,
            snapshots: Vec::new(),
            events_wanted: 0,
        }
    }

    /// Journals what one event changed. `model` is the state after it. Takes the changes and view ops out of `a`.
    pub fn record(&mut self, model: &SpaceModel, a: &mut Applied) {
        let j = &mut self.journal;
        if a.notice.is_none() && a.loading_before.is_none() && a.views.is_empty() && !a.current_changed {
            // A patch (the token path): its changes only.
            if a.before != Class::ABSENT {
                j.changes(a.run, a.before, std::mem::take(&mut a.changes));
            }
            return;
        }
        if let Some(before) = a.loading_before {
            j.loading(before);
        }
        if a.notice == Some(Lifecycle::Started) {
            j.touch(a.run, Class::ABSENT);
        } else if a.before != Class::ABSENT {
            j.changes(a.run, a.before, std::mem::take(&mut a.changes));
        }
        j.views.append(&mut a.views);
        if a.current_changed {
            j.current_changed();
        }
        if self.events_wanted > 0 {
            let event = match a.notice {
                None => None,
                Some(Lifecycle::Started) => model.run(a.run).map(|r| (EventName::BeforeRun, Arc::new(r.ctx.clone()))),
                Some(Lifecycle::Completed) => a.finished.clone().map(|c| (EventName::AfterRun, c)),
                Some(Lifecycle::Failed) => a.finished.clone().map(|c| (EventName::ErrorRun, c)),
            };
            if let Some((name, run)) = event {
                j.event(name, run);
            }
        }
    }

    /// Whether the feed holds nothing anyone could miss: no subscriber (registered, joining or waiting for a
    /// resync), nothing journaled, and a history that has aged out.
    pub fn is_idle(&self) -> bool {
        self.has_no_subscriber() && self.journal.is_empty() && self.history.is_empty()
    }

    fn has_no_subscriber(&self) -> bool {
        self.groups.is_empty() && self.joining.is_empty() && self.resync.is_empty()
    }

    /// When the feed holds nothing if nothing more happens: `None` while it has subscribers.
    pub fn idle_at(&self) -> Option<Instant> {
        if !self.has_no_subscriber() {
            return None;
        }
        self.history.empty_at()
    }

    /// Whether the space renders diffs for this view set now (a subscriber has it, or had it within the window).
    pub fn renders(&self, views: ViewSet) -> bool {
        self.history.sets().contains(&views) || self.joining.iter().any(|j| j.slot.views == views)
    }

    /// Distinct view sets the space renders now, or will from its next flush.
    pub fn view_sets(&self) -> usize {
        let mut sets = self.history.sets();
        sets.extend(self.joining.iter().map(|j| j.slot.views));
        sets.sort_unstable();
        sets.dedup();
        sets.len()
    }

    /// The state document for one view set at `seq` (the model's position): rendered once, then shared.
    pub fn snapshot(&mut self, model: &SpaceModel, views: ViewSet, seq: u64) -> Arc<str> {
        self.snapshots.retain(|(_, at, _)| *at == seq);
        if let Some((_, _, s)) = self.snapshots.iter().find(|(v, _, _)| *v == views) {
            return s.clone();
        }
        let state: Arc<str> = render_state(model, views).into();
        crate::telemetry::SNAPSHOTS_RENDERED.increment(1);
        self.snapshots.push((views, seq, state.clone()));
        state
    }

    /// Registers subscribers that got their snapshot at `seq` (one copy of the group list for the whole batch).
    fn register(&mut self, slots: Vec<Arc<SubSlot>>, seq: u64) {
        if slots.is_empty() {
            return;
        }
        let mut groups = (*self.groups).clone();
        for slot in slots {
            self.history.subscribed(slot.views, seq);
            match groups.iter_mut().find(|g| g.views == slot.views) {
                Some(g) => g.slots.push(slot),
                None => groups.push(Group { views: slot.views, slots: vec![slot] }),
            }
        }
        self.groups = Arc::new(groups);
    }

    /// Removes a subscriber wherever it is. Returns whether it was here.
    pub fn unregister(&mut self, slot: &Arc<SubSlot>) -> bool {
        let before = self.joining.len();
        self.joining.retain(|j| !Arc::ptr_eq(&j.slot, slot));
        let mut found = self.joining.len() != before;
        if !found && self.groups.iter().any(|g| g.slots.iter().any(|s| Arc::ptr_eq(s, slot))) {
            let mut groups = (*self.groups).clone();
            for g in &mut groups {
                g.slots.retain(|s| !Arc::ptr_eq(s, slot));
            }
            if let Some(g) = groups.iter().find(|g| g.views == slot.views && g.slots.is_empty()) {
                self.history.idle(g.views);
            }
            groups.retain(|g| !g.slots.is_empty());
            self.groups = Arc::new(groups);
            found = true;
        }
        self.resync.retain(|s| !Arc::ptr_eq(s, slot));
        if found && slot.events {
            self.events_wanted -= 1;
        }
        found
    }

    /// The flush's part under the space lock, at `seq` (the model's position): closes the tick when anything was
    /// journaled, then serves snapshots and resumes at that same seq. The tick goes to every subscriber registered
    /// by then: a resumed one needs it (its history ends before it), one served a snapshot skips it (its state
    /// already has it).
    pub fn flush(&mut self, model: &SpaceModel, epoch: u64, seq: u64) -> Option<Tick> {
        let cut = self.close(model, seq);
        self.serve_snapshots(model, epoch, seq);
        cut.map(|(cut, sets)| Tick { cut, sets, groups: self.groups.clone(), events_wanted: self.events_wanted > 0 })
    }

    /// Cuts the journal into the tick at `seq`. The view sets it is rendered for are fixed here, so that every set
    /// that sees a run appear has its whole context serialized. Sets registered after this start after this tick.
    fn close(&mut self, model: &SpaceModel, seq: u64) -> Option<(Cut, Vec<ViewSet>)> {
        if self.journal.is_empty() {
            return None;
        }
        let sets = self.history.sets();
        let Journal { runs, views, loading_before, current_changed, events } = self.journal.take();
        let runs = runs
            .into_iter()
            .map(|(id, t)| {
                let (after, full) = match model.run(id) {
                    Some(run) => {
                        let after = run.class();
                        let entering = sets.iter().any(|s| !s.shows(t.before) && s.shows(after));
                        (after, entering.then(|| serde_json::to_string(&run.ctx).expect("a context serializes")))
                    }
                    None => (Class::ABSENT, None),
                };
                RunDelta { id, before: t.before, after, full, changes: t.changes }
            })
            .collect();
        let now_loading = model.views().is_loading();
        let current = current_changed.then(|| model.current().map(|c| json(c).into())).flatten();
        let cut = Cut {
            seq,
            runs,
            views,
            loading: loading_before.filter(|b| *b != now_loading).map(|_| now_loading),
            current,
            events,
        };
        Some((cut, sets))
    }

    /// Gives joining and overflowed subscribers a snapshot at `seq` (the model's position), or resumes a joining
    /// subscriber from the history. A state is rendered at most once per view set and seq, however many
    /// subscribers (and flushes) need it. An overflowed subscriber gets its snapshot only when its backoff has
    /// passed and its writer has written what it took; until then it waits in `resync`, and `resync_wake` says
    /// when to come back for it.
    fn serve_snapshots(&mut self, model: &SpaceModel, epoch: u64, seq: u64) {
        if self.joining.is_empty() && self.resync.is_empty() {
            return;
        }
        let joining = std::mem::take(&mut self.joining);
        let resync = std::mem::take(&mut self.resync);
        let mut joined = Vec::with_capacity(joining.len());
        for Joining { slot, req_id, since } in joining {
            // The history holds ticks up to `last`; a tick closed in this flush is fanned out after this, and
            // reaches the resumed slot like any other.
            let resumed = since
                .filter(|(e, _)| *e == epoch)
                .and_then(|(_, base)| self.history.after(slot.views, base, seq).map(|chunks| (base, chunks)));
            match resumed {
                Some((base, chunks)) => slot.resume(req_id, epoch, base, self.history.last().max(base), chunks),
                None => {
                    let state = self.snapshot(model, slot.views, seq);
                    slot.snapshot(req_id, epoch, seq, state, since.is_some());
                }
            }
            joined.push(slot);
        }
        self.register(joined, seq);
        let now = Instant::now();
        let mut wake: Option<Instant> = None;
        for slot in resync {
            match slot.resync_due() {
                None => {}
                Some(due) if due <= now => {
                    let state = self.snapshot(model, slot.views, seq);
                    slot.snapshot(None, epoch, seq, state, true);
                }
                Some(due) => {
                    wake = Some(wake.map_or(due, |w| w.min(due)));
                    self.resync.push(slot);
                }
            }
        }
        self.resync_wake = wake;
        if self.resync.is_empty() {
            // Nobody waits for a rendered state: do not keep it until the next seq.
            self.snapshots.clear();
        }
    }

    /// Records a fanned-out tick in the history, and queues the subscribers that overflowed for a resync.
    /// Returns whether any did.
    pub fn sent(&mut self, sent: Sent) -> bool {
        self.history.push(sent.seq, sent.diffs);
        let any = !sent.overflowed.is_empty();
        self.resync.extend(sent.overflowed);
        any
    }
}

impl Tick {
    /// Renders the tick once per view set and hands the same bytes to every subscriber of that set (no lock held).
    pub fn send(self, cap: usize) -> Sent {
        let seq = self.cut.seq;
        let rendered = self.cut.render(&self.sets, self.events_wanted);
        crate::telemetry::DIFFS_RENDERED.increment(rendered.diffs.iter().filter(|(_, d)| d.is_some()).count() as u64);
        let overflowed = fan_out(&rendered, &self.groups, seq, cap);
        Sent { seq, diffs: rendered.diffs, overflowed }
    }
}

fn fan_out(rendered: &Rendered, groups: &[Group], seq: u64, cap: usize) -> Vec<Arc<SubSlot>> {
    let mut overflowed = Vec::new();
    for group in groups {
        let chunk = rendered.diffs.iter().find(|(v, _)| *v == group.views).and_then(|(_, c)| c.as_ref());
        for slot in &group.slots {
            let mut delivery = match chunk {
                Some(chunk) => slot.diff(seq, chunk, cap),
                None => Delivery::Done,
            };
            if slot.events && delivery == Delivery::Done {
                for body in &rendered.events {
                    delivery = slot.event(seq, body, cap);
                    if delivery == Delivery::Overflow {
                        break;
                    }
                }
            }
            if delivery == Delivery::Overflow {
                overflowed.push(slot.clone());
            }
        }
    }
    overflowed
}

fn json(ctx: &serde_json::Map<String, serde_json::Value>) -> String {
    serde_json::to_string(ctx).expect("a context serializes")
}

/// Renders the state document of `model` for one view set.
pub fn render_state(model: &SpaceModel, views: ViewSet) -> String {
    let runs = model.runs().filter(|(_, run)| views.shows(run.class())).map(|(id, run)| (*id, json(&run.ctx)));
    let current = model.current().map(|c| json(c));
    let v = model.views();
    protocol::state(StateParts {
        views,
        current: current.as_deref(),
        runs,
        loading: v.is_loading(),
        dialogs: v.dialogs().copied(),
        ai: v.ai().copied(),
        pipelines: v.pipelines().map(|(root, members)| (*root, members.iter().copied())),
    })
}
