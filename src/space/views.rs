//! The pre-computed views of one space, kept incrementally: `activeDialogs` and `activeAI` as insertion-ordered
//! sets, `activePipelines` as root → ordered members, `isLoading` as a counter. Each change updates them in O(1) (O(group) when a pipeline root leaves) and records the state-document
//! ops that describe it, with array indexes valid at that moment, so the ops replay exactly.

use crate::model::context::{Class, RunId};
use indexmap::{IndexMap, IndexSet};
use std::collections::HashMap;

/// The six views a subscriber can select.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    CurrentRun,
    ActiveRuns,
    IsLoading,
    ActiveDialogs,
    ActiveAi,
    ActivePipelines,
}

impl View {
    pub const ALL: [View; 6] = [
        View::CurrentRun,
        View::ActiveRuns,
        View::IsLoading,
        View::ActiveDialogs,
        View::ActiveAi,
        View::ActivePipelines,
    ];

    /// The view's key in the state document.
    pub const fn key(self) -> &'static str {
        match self {
            View::CurrentRun => "currentRun",
            View::ActiveRuns => "activeRuns",
            View::IsLoading => "isLoading",
            View::ActiveDialogs => "activeDialogs",
            View::ActiveAi => "activeAI",
            View::ActivePipelines => "activePipelines",
        }
    }

    pub fn from_key(key: &str) -> Option<View> {
        View::ALL.into_iter().find(|v| v.key() == key)
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of views, as a subscriber selected them. Subscribers with equal sets share serialized frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ViewSet(u8);

impl ViewSet {
    pub const ALL: ViewSet = ViewSet(0b11_1111);

    pub fn from_views(views: impl IntoIterator<Item = View>) -> ViewSet {
        ViewSet(views.into_iter().fold(0, |acc, v| acc | v.bit()))
    }

    pub fn has(self, view: View) -> bool {
        self.0 & view.bit() != 0
    }

    /// Whether the state document for this set has an `activeRuns` object.
    pub fn has_runs(self) -> bool {
        [View::ActiveRuns, View::ActiveDialogs, View::ActiveAi, View::ActivePipelines].iter().any(|v| self.has(*v))
    }

    /// Whether a run of this class is in this set's `activeRuns`: all present runs when `activeRuns` or
    /// `activePipelines` is selected, otherwise only those named by a selected view.
    pub fn shows(self, class: Class) -> bool {
        class.has(Class::PRESENT)
            && (self.has(View::ActiveRuns)
                || self.has(View::ActivePipelines)
                || (self.has(View::ActiveDialogs) && class.has(Class::DIALOG))
                || (self.has(View::ActiveAi) && class.has(Class::AI)))
    }
}

/// A state-document op on a view (never on `activeRuns`, which the journal handles).
#[derive(Debug, Clone, PartialEq)]
pub enum ViewOp {
    /// `add /<view>/<index>` of a run id (for pipelines: `/activePipelines/<root>/<index>`).
    Insert { view: View, group: Option<RunId>, index: usize, id: RunId },
    /// `remove /<view>/<index>` (for pipelines within a group).
    Delete { view: View, group: Option<RunId>, index: usize },
    /// `add /activePipelines/<root>` with its member list.
    AddGroup { root: RunId, members: Vec<RunId> },
    /// `remove /activePipelines/<root>`.
    RemoveGroup { root: RunId },
}

impl ViewOp {
    pub fn view(&self) -> View {
        match self {
            ViewOp::Insert { view, .. } | ViewOp::Delete { view, .. } => *view,
            ViewOp::AddGroup { .. } | ViewOp::RemoveGroup { .. } => View::ActivePipelines,
        }
    }
}

/// `activePipelines`: every active run grouped under its root (follow `parentRun` while the parent is active).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Pipelines {
    groups: IndexMap<RunId, IndexSet<RunId>>,
    root_of: HashMap<RunId, RunId>,
    parent_of: HashMap<RunId, RunId>,
    children: HashMap<RunId, Vec<RunId>>,
}

impl Pipelines {
    fn add(&mut self, id: RunId, parent: Option<RunId>, ops: &mut Vec<ViewOp>) {
        match parent.and_then(|p| self.root_of.get(&p).copied().map(|root| (p, root))) {
            Some((p, root)) => {
                self.parent_of.insert(id, p);
                self.children.entry(p).or_default().push(id);
                self.root_of.insert(id, root);
                let group = self.groups.get_mut(&root).expect("root has a group");
                ops.push(ViewOp::Insert { view: View::ActivePipelines, group: Some(root), index: group.len(), id });
                group.insert(id);
            }
            None => {
                self.root_of.insert(id, id);
                self.groups.insert(id, IndexSet::from([id]));
                ops.push(ViewOp::AddGroup { root: id, members: vec![id] });
            }
        }
    }

    fn remove(&mut self, id: RunId, ops: &mut Vec<ViewOp>) {
        let Some(root) = self.root_of.remove(&id) else { return };
        if let Some(p) = self.parent_of.remove(&id)
            && let Some(siblings) = self.children.get_mut(&p)
        {
            siblings.retain(|c| *c != id);
        }
        let kids = self.children.remove(&id).unwrap_or_default();
        let mut group = self.groups.swap_remove(&root).expect("root has a group");
        if root == id {
            ops.push(ViewOp::RemoveGroup { root });
            group.shift_remove(&id);
        } else {
            let index = group.get_index_of(&id).expect("member of its root's group");
            group.shift_remove_index(index);
            ops.push(ViewOp::Delete { view: View::ActivePipelines, group: Some(root), index });
        }
        for kid in kids {
            self.parent_of.remove(&kid);
            let subtree = self.subtree(kid);
            let members: Vec<RunId> = group.iter().copied().filter(|m| subtree.contains(m)).collect();
            for m in &members {
                self.root_of.insert(*m, kid);
                let index = group.get_index_of(m).expect("subtree member is in the group");
                group.shift_remove_index(index);
                if root != id {
                    ops.push(ViewOp::Delete { view: View::ActivePipelines, group: Some(root), index });
                }
            }
            ops.push(ViewOp::AddGroup { root: kid, members: members.clone() });
            self.groups.insert(kid, members.into_iter().collect());
        }
        if root != id {
            self.groups.insert(root, group);
        }
    }

    fn subtree(&self, top: RunId) -> IndexSet<RunId> {
        let mut out = IndexSet::from([top]);
        let mut i = 0;
        while let Some(&r) = out.get_index(i) {
            if let Some(kids) = self.children.get(&r) {
                out.extend(kids.iter().copied());
            }
            i += 1;
        }
        out
    }
}

/// The views of one space.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Views {
    dialogs: IndexSet<RunId>,
    ai: IndexSet<RunId>,
    pipelines: Pipelines,
    /// Runs that are pending or running.
    loading: usize,
}

impl Views {
    /// A run entered `activeRuns` with class `class`; `parent` is its parent if that is active.
    pub fn add(&mut self, id: RunId, parent: Option<RunId>, class: Class, ops: &mut Vec<ViewOp>) {
        self.pipelines.add(id, parent, ops);
        self.enter(id, class, ops);
    }

    /// A run's class changed while it stays in `activeRuns` (started, completed or failed).
    pub fn reclassify(&mut self, id: RunId, before: Class, after: Class, ops: &mut Vec<ViewOp>) {
        self.leave(id, before, after, ops);
        let new = Class(after.0 & !before.0);
        self.enter(id, new, ops);
    }

    /// A run left `activeRuns` (its class before leaving is `before`).
    pub fn remove(&mut self, id: RunId, before: Class, ops: &mut Vec<ViewOp>) {
        self.leave(id, before, Class::ABSENT, ops);
        self.pipelines.remove(id, ops);
    }

    pub fn is_loading(&self) -> bool {
        self.loading > 0
    }

    pub fn dialogs(&self) -> impl Iterator<Item = &RunId> {
        self.dialogs.iter()
    }

    pub fn ai(&self) -> impl Iterator<Item = &RunId> {
        self.ai.iter()
    }

    pub fn pipelines(&self) -> impl Iterator<Item = (&RunId, &IndexSet<RunId>)> {
        self.pipelines.groups.iter()
    }

    fn enter(&mut self, id: RunId, bits: Class, ops: &mut Vec<ViewOp>) {
        if bits.has(Class::LOADING) {
            self.loading += 1;
        }
        for (bit, view) in [(Class::DIALOG, View::ActiveDialogs), (Class::AI, View::ActiveAi)] {
            if bits.has(bit) {
                let set = if view == View::ActiveDialogs { &mut self.dialogs } else { &mut self.ai };
                ops.push(ViewOp::Insert { view, group: None, index: set.len(), id });
                set.insert(id);
            }
        }
    }

    fn leave(&mut self, id: RunId, before: Class, after: Class, ops: &mut Vec<ViewOp>) {
        if before.has(Class::LOADING) && !after.has(Class::LOADING) {
            self.loading -= 1;
        }
        for (bit, view) in [(Class::DIALOG, View::ActiveDialogs), (Class::AI, View::ActiveAi)] {
            if before.has(bit) && !after.has(bit) {
                let set = if view == View::ActiveDialogs { &mut self.dialogs } else { &mut self.ai };
                if let Some(index) = set.get_index_of(&id) {
                    set.shift_remove_index(index);
                    ops.push(ViewOp::Delete { view, group: None, index });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> RunId {
        RunId::from_u128(n)
    }

    fn groups(v: &Views) -> Vec<(u128, Vec<u128>)> {
        let mut g: Vec<_> =
            v.pipelines().map(|(r, m)| (r.as_u128(), m.iter().map(|x| x.as_u128()).collect())).collect();
        g.sort();
        g
    }

    #[test]
    fn children_join_their_roots_group_in_creation_order() {
        let mut v = Views::default();
        let mut ops = vec![];
        let live = Class(Class::PRESENT | Class::LOADING);
        v.add(id(1), None, live, &mut ops);
        v.add(id(2), Some(id(1)), live, &mut ops);
        v.add(id(3), Some(id(2)), live, &mut ops);
        v.add(id(4), Some(id(1)), live, &mut ops);
        v.add(id(5), Some(id(99)), live, &mut ops);
        assert_eq!(groups(&v), vec![(1, vec![1, 2, 3, 4]), (5, vec![5])]);
        assert!(v.is_loading());
    }

    #[test]
    fn removing_a_middle_run_splits_its_subtree_into_a_new_group() {
        let mut v = Views::default();
        let mut ops = vec![];
        let live = Class(Class::PRESENT | Class::LOADING);
        for (n, p) in [(1, None), (2, Some(1)), (3, Some(2)), (4, Some(1)), (5, Some(3))] {
            v.add(id(n), p.map(id), live, &mut ops);
        }
        ops.clear();
        v.remove(id(2), live, &mut ops);
        assert_eq!(groups(&v), vec![(1, vec![1, 4]), (3, vec![3, 5])]);
        assert_eq!(
            ops,
            vec![
                ViewOp::Delete { view: View::ActivePipelines, group: Some(id(1)), index: 1 },
                ViewOp::Delete { view: View::ActivePipelines, group: Some(id(1)), index: 1 },
                ViewOp::Delete { view: View::ActivePipelines, group: Some(id(1)), index: 2 },
                ViewOp::AddGroup { root: id(3), members: vec![id(3), id(5)] },
            ]
        );
        ops.clear();
        v.remove(id(1), live, &mut ops);
        assert_eq!(groups(&v), vec![(3, vec![3, 5]), (4, vec![4])]);
        assert_eq!(
            ops,
            vec![ViewOp::RemoveGroup { root: id(1) }, ViewOp::AddGroup { root: id(4), members: vec![id(4)] }]
        );
    }

    #[test]
    fn dialogs_and_ai_follow_the_running_status() {
        let mut v = Views::default();
        let mut ops = vec![];
        let dialog = Class(Class::PRESENT | Class::LOADING | Class::DIALOG);
        let ai = Class(Class::PRESENT | Class::LOADING | Class::AI);
        v.add(id(1), None, dialog, &mut ops);
        v.add(id(2), None, ai, &mut ops);
        v.add(id(3), None, dialog, &mut ops);
        ops.clear();
        v.reclassify(id(1), dialog, Class(Class::PRESENT), &mut ops);
        assert_eq!(v.dialogs().map(|r| r.as_u128()).collect::<Vec<_>>(), vec![3]);
        assert_eq!(ops, vec![ViewOp::Delete { view: View::ActiveDialogs, group: None, index: 0 }]);
        v.remove(id(2), ai, &mut ops);
        v.remove(id(3), dialog, &mut ops);
        assert!(!v.is_loading());
        assert_eq!(v.ai().count(), 0);
    }
}
