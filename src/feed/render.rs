//! How a closed tick becomes diffs: a [`Cut`] is rendered once, each run's ops, each view op and each scalar op
//! serialized one time, then assembled into one op list per view set. Nothing here runs under the space lock.

use crate::feed::journal::Event;
use crate::model::change::Change;
use crate::model::context::{Class, RunId};
use crate::protocol;
use crate::space::views::{View, ViewOp, ViewSet};
use std::sync::Arc;

/// One run's part of a closed tick.
#[derive(Debug)]
pub struct RunDelta {
    pub id: RunId,
    pub before: Class,
    pub after: Class,
    /// The whole context, serialized at the cut, when some view set sees the run appear.
    pub full: Option<String>,
    pub changes: Vec<Change>,
}

/// A closed tick: everything needed to render the diff from `seq - 1` to `seq` for any view set.
#[derive(Debug)]
pub struct Cut {
    pub seq: u64,
    pub runs: Vec<RunDelta>,
    pub views: Vec<ViewOp>,
    /// The new `isLoading`, when it differs from the last tick's.
    pub loading: Option<bool>,
    /// The new `currentRun` (serialized), when it changed.
    pub current: Option<Arc<str>>,
    pub events: Vec<Event>,
}

/// A rendered tick: op chunks per view set, and event bodies.
pub struct Rendered {
    pub diffs: Vec<(ViewSet, Option<Arc<str>>)>,
    pub events: Vec<Arc<str>>,
}

impl Cut {
    /// Serializes every piece once and assembles one op list per view set (`None`: nothing changed for that set).
    pub fn render(self, sets: &[ViewSet], events_wanted: bool) -> Rendered {
        if sets.is_empty() && !events_wanted {
            // Nobody subscribes and nobody may resume: nothing to serialize.
            return Rendered { diffs: Vec::new(), events: Vec::new() };
        }
        struct Pieces {
            add: Option<String>,
            /// This run's ops, in `all_ops`.
            ops: std::ops::Range<usize>,
        }
        // Every run's ops go into one buffer (one growing allocation per tick, not one per run).
        let mut all_ops = String::new();
        let pieces: Vec<Pieces> = self
            .runs
            .iter()
            .map(|d| {
                let start = all_ops.len();
                if d.before.has(Class::PRESENT) && d.after.has(Class::PRESENT) {
                    for (i, c) in d.changes.iter().enumerate() {
                        if i > 0 {
                            all_ops.push(',');
                        }
                        protocol::push_run_op(&mut all_ops, d.id, c.kind, &c.path, &c.value);
                    }
                }
                let add = d.full.as_ref().map(|full| {
                    let mut s = String::new();
                    protocol::push_run_add(&mut s, d.id, full);
                    s
                });
                Pieces { add, ops: start..all_ops.len() }
            })
            .collect();
        let views: Vec<(View, String)> = self.views.iter().map(|op| (op.view(), protocol::view_op(op))).collect();
        let loading = self.loading.map(protocol::loading_op);
        let current = self.current.as_deref().map(protocol::current_op);

        let diffs = sets
            .iter()
            .map(|&set| {
                let mut out = String::with_capacity(all_ops.len() + self.runs.len());
                let mut push = |s: &str| {
                    if !s.is_empty() {
                        if !out.is_empty() {
                            out.push(',');
                        }
                        out.push_str(s);
                    }
                };
                for (d, p) in self.runs.iter().zip(&pieces) {
                    match (set.shows(d.before), set.shows(d.after)) {
                        (false, true) => push(p.add.as_deref().expect("full context serialized for an entering run")),
                        (true, false) => {
                            // Rare (a run leaving the set): rendered when needed, not for every run every tick.
                            let mut remove = String::new();
                            protocol::push_run_remove(&mut remove, d.id);
                            push(&remove);
                        }
                        (true, true) => push(&all_ops[p.ops.clone()]),
                        (false, false) => {}
                    }
                }
                for (view, op) in &views {
                    if set.has(*view) {
                        push(op);
                    }
                }
                if set.has(View::IsLoading)
                    && let Some(op) = &loading
                {
                    push(op);
                }
                if set.has(View::CurrentRun)
                    && let Some(op) = &current
                {
                    push(op);
                }
                (set, (!out.is_empty()).then(|| Arc::from(out)))
            })
            .collect();
        let events = if events_wanted {
            self.events.iter().map(|e| Arc::from(protocol::event_body(e.name, &e.run))).collect()
        } else {
            Vec::new()
        };
        Rendered { diffs, events }
    }
}
