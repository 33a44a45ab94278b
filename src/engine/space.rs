//! A space: the unit of ordering. Owns, behind one lock, the space's active runs (in creation order), its views,
//! the journal of the tick in progress, its sequence number, the failed runs waiting out their linger, and its
//! subscribers grouped by view set. Lock order everywhere: space, then a run, then a registry shard.

use crate::feed::history::History;
use crate::feed::journal::Journal;
use crate::feed::subscriber::SubSlot;
use crate::model::context::{Class, Run, RunHasher, RunId};
use crate::protocol::{self, ReqId, StateParts};
use crate::space::views::{ViewSet, Views};
use indexmap::IndexMap;
use parking_lot::{Mutex, MutexGuard};
use std::collections::VecDeque;
use std::sync::Arc;
use tokio::sync::Notify;
use tokio::time::Instant;

/// A run as the registry holds it: the run behind its own lock, and the space it belongs to. The run is only
/// ever locked while its space is locked, so the space lock orders every change to it.
#[derive(Debug)]
pub struct RunCell {
    pub space: Arc<Space>,
    pub run: Mutex<Run>,
    /// The owner's account, which the run's state bytes and its active-run slot count against.
    pub account: Arc<crate::engine::budget::Account>,
}

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

/// Everything behind a space's lock.
#[derive(Debug)]
pub struct SpaceState {
    /// The seq of the last closed tick; a snapshot taken now is at this seq.
    pub seq: u64,
    /// `activeRuns` (a snapshot lists them in this map's order, which removals may change: JSON objects are
    /// unordered, and the view arrays carry creation order).
    pub runs: IndexMap<RunId, Arc<RunCell>, RunHasher>,
    pub views: Views,
    pub journal: Journal,
    /// Failed runs waiting out their linger, oldest first (the linger is one constant, so this is sorted).
    pub lingering: VecDeque<(Instant, RunId)>,
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
    /// States rendered at `seq`, by view set: a snapshot is rendered once per view set and seq.
    snapshots: Vec<(ViewSet, u64, Arc<str>)>,
    /// How many registered or joining subscribers asked for events (events are only journaled when some did).
    pub events_wanted: usize,
    /// Whether the notifier has been woken since its last flush.
    pub dirty: bool,
    /// The space was reclaimed (it held nothing): whoever finds this under the lock looks the space up again.
    pub retired: bool,
}

impl SpaceState {
    pub fn new(history: crate::feed::history::History) -> SpaceState {
        SpaceState {
            seq: 0,
            runs: IndexMap::default(),
            views: Views::default(),
            journal: Journal::default(),
            lingering: VecDeque::new(),
            groups: Arc::new(Vec::new()),
            joining: Vec::new(),
            history,
            resync: Vec::new(),
            resync_wake: None,
            snapshots: Vec::new(),
            events_wanted: 0,
            dirty: false,
            retired: false,
        }
    }

    /// Whether the space holds nothing anyone could miss: no run, no subscriber (registered, joining or waiting
    /// for a resync), nothing journaled, and a history that has aged out.
    pub fn is_idle(&self) -> bool {
        self.runs.is_empty()
            && self.groups.is_empty()
            && self.joining.is_empty()
            && self.resync.is_empty()
            && self.journal.is_empty()
            && self.history.is_empty()
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

    /// When the space may be reclaimed if nothing more happens: `None` while it holds runs or subscribers.
    pub fn idle_at(&self) -> Option<Instant> {
        if !self.runs.is_empty() || !self.groups.is_empty() || !self.joining.is_empty() || !self.resync.is_empty() {
            return None;
        }
        self.history.empty_at()
    }

    /// Takes a run out of `activeRuns`: journals its removal and updates the views.
    pub fn remove_run(&mut self, id: RunId, before: Class) {
        self.journal.touch(id, before);
        self.journal.loading(self.views.is_loading());
        self.views.remove(id, before, self.journal.view_ops());
        self.runs.swap_remove(&id);
    }

    /// The state document for one view set at the current seq: rendered once, then shared.
    pub fn snapshot(&mut self, views: ViewSet) -> Arc<str> {
        let seq = self.seq;
        self.snapshots.retain(|(_, at, _)| *at == seq);
        if let Some((_, _, s)) = self.snapshots.iter().find(|(v, _, _)| *v == views) {
            return s.clone();
        }
        let state: Arc<str> = self.render_state(views).into();
        crate::telemetry::SNAPSHOTS_RENDERED.increment(1);
        self.snapshots.push((views, seq, state.clone()));
        state
    }

    pub fn forget_snapshots(&mut self) {
        self.snapshots.clear();
    }

    /// Renders the state document for one view set at the current seq.
    pub fn render_state(&self, views: ViewSet) -> String {
        let runs = self.runs.iter().filter_map(|(id, cell)| {
            let run = cell.run.lock();
            views.shows(run.class()).then(|| (*id, serde_json::to_string(&run.ctx).expect("a context serializes")))
        });
        protocol::state(StateParts {
            views,
            current: self.views.current().map(|s| &**s),
            runs,
            loading: self.views.is_loading(),
            dialogs: self.views.dialogs().copied(),
            ai: self.views.ai().copied(),
            pipelines: self.views.pipelines().map(|(root, members)| (*root, members.iter().copied())),
        })
    }

    /// Registers subscribers that got their snapshot (one copy of the group list for the whole batch).
    pub fn register(&mut self, slots: Vec<Arc<SubSlot>>) {
        if slots.is_empty() {
            return;
        }
        let mut groups = (*self.groups).clone();
        for slot in slots {
            self.history.subscribed(slot.views, self.seq);
            match groups.iter_mut().find(|g| g.views == slot.views) {
                Some(g) => g.slots.push(slot),
                None => groups.push(Group { views: slot.views, slots: vec![slot] }),
            }
        }
        self.groups = Arc::new(groups);
    }

    /// Removes a subscriber wherever it is.
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
}

/// One space.
#[derive(Debug)]
pub struct Space {
    pub name: Arc<str>,
    /// Random for each space created (every server start, and again after the space was reclaimed), below 2^53
    /// so JavaScript holds it exactly: a resume from another epoch gets a snapshot.
    pub epoch: u64,
    state: Mutex<SpaceState>,
    /// Wakes the notifier: a change after an idle period is flushed at once.
    wake: Notify,
    /// The creator's space quota, given back when the space is dropped.
    _quota: Option<crate::engine::budget::SpaceQuota>,
}

impl Space {
    pub fn new(
        name: Arc<str>,
        history: Arc<crate::feed::history::HistoryBudget>,
        quota: Option<crate::engine::budget::SpaceQuota>,
    ) -> Arc<Space> {
        let state = SpaceState::new(History::new(history));
        let epoch = uuid::Uuid::now_v7().as_u64_pair().1 & ((1 << 53) - 1);
        Arc::new(Space { name, epoch, state: Mutex::new(state), wake: Notify::new(), _quota: quota })
    }

    pub fn lock(&self) -> MutexGuard<'_, SpaceState> {
        self.state.lock()
    }

    /// Marks the space dirty and wakes its notifier (once per flush).
    pub fn changed(&self, st: &mut SpaceState) {
        if !st.dirty {
            st.dirty = true;
            self.wake.notify_one();
        }
    }

    pub async fn woken(&self) {
        self.wake.notified().await
    }
}
