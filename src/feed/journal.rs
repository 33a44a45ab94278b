//! One space's journal for the tick in progress: what apply changed, compacted as it is pushed under the space lock
//! (consecutive appends merge, a set supersedes earlier ops below it, ops on the last written subtree fold into
//! it). At the tick the feed cuts it into a [`Cut`](crate::feed::render::Cut), which `render` serializes.

use crate::model::change::{Change, ChangeKind};
use crate::model::context::{Class, RunHasher, RunId};
use crate::model::path::Seg;
use crate::protocol::EventName;
use crate::space::views::ViewOp;
use indexmap::IndexMap;
use serde_json::{Map, Value};
use std::sync::Arc;

/// How far back a new op looks for ops it supersedes. Bounds the producer's cost; a miss only means less compaction.
const SCAN_LIMIT: usize = 64;

/// What happened to one run during the tick.
#[derive(Debug)]
pub struct Touched {
    /// The run's class when the tick began (absent for runs started this tick).
    pub before: Class,
    /// Compacted changes; empty for a run that was absent when the tick began (its whole context is sent instead).
    pub changes: Vec<Change>,
}

/// A lifecycle event, kept until the tick renders it.
#[derive(Debug, Clone)]
pub struct Event {
    pub name: EventName,
    pub run: Arc<Map<String, Value>>,
}

/// The journal of one space for the tick in progress.
#[derive(Debug, Default)]
pub struct Journal {
    /// Runs touched this tick, in first-touch order.
    pub runs: IndexMap<RunId, Touched, RunHasher>,
    /// View ops, in the order they happened (their indexes are valid in that order).
    pub views: Vec<ViewOp>,
    /// `isLoading` when the tick began, if it may have changed.
    pub loading_before: Option<bool>,
    /// Whether `currentRun` was set this tick.
    pub current_changed: bool,
    /// Lifecycle events (journaled only while some subscriber wants them).
    pub events: Vec<Event>,
}

impl Journal {
    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
            && self.views.is_empty()
            && self.loading_before.is_none()
            && !self.current_changed
            && self.events.is_empty()
    }

    /// Notes that a run is about to change; `before` is its class now. Only the first call in a tick counts.
    pub fn touch(&mut self, id: RunId, before: Class) -> &mut Touched {
        self.runs.entry(id).or_insert(Touched { before, changes: Vec::new() })
    }

    /// Records applied changes of a run whose class is `before` right now.
    pub fn changes(&mut self, id: RunId, before: Class, changes: Vec<Change>) {
        let t = self.touch(id, before);
        if t.before.has(Class::PRESENT) {
            if t.changes.is_empty() && changes.len() == 1 {
                // The run's first change this tick, alone: compaction would push it as it is, so the list is
                // taken whole (no copy, no allocation). The usual token, in a space of many runs.
                t.changes = changes;
                return;
            }
            for c in changes {
                push_compacted(&mut t.changes, c);
            }
        }
    }

    /// The view ops of this tick, to push onto.
    pub fn view_ops(&mut self) -> &mut Vec<ViewOp> {
        &mut self.views
    }

    /// Notes `isLoading` as it was before a change (only the first call in a tick counts).
    pub fn loading(&mut self, before: bool) {
        self.loading_before.get_or_insert(before);
    }

    pub fn current_changed(&mut self) {
        self.current_changed = true;
    }

    pub fn event(&mut self, name: EventName, run: Arc<Map<String, Value>>) {
        self.events.push(Event { name, run });
    }

    pub fn take(&mut self) -> Journal {
        std::mem::take(self)
    }
}

fn is_prefix(prefix: &[Seg], path: &[Seg]) -> bool {
    path.len() >= prefix.len() && path[..prefix.len()] == *prefix
}

/// Applies `c` inside `target`, the value an earlier op wrote at `c.path[..offset]`. Returns false when it cannot.
fn fold_into(target: &mut Value, rel: &[Seg], kind: ChangeKind, value: &mut Value) -> bool {
    let Some((last, parents)) = rel.split_last() else {
        return match kind {
            ChangeKind::Add | ChangeKind::Replace => {
                *target = std::mem::take(value);
                true
            }
            ChangeKind::Append => append_value(target, value),
            ChangeKind::Remove => false,
        };
    };
    let mut cur = target;
    for seg in parents {
        cur = match (cur, seg) {
            (Value::Object(m), Seg::Key(k)) => match m.get_mut(&**k) {
                Some(v) => v,
                None => return false,
            },
            (Value::Array(a), Seg::Index(i)) => match a.get_mut(*i) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (cur, last, kind) {
        (Value::Object(m), Seg::Key(k), ChangeKind::Add | ChangeKind::Replace) => {
            m.insert(k.to_string(), std::mem::take(value));
            true
        }
        (Value::Object(m), Seg::Key(k), ChangeKind::Remove) => m.remove(&**k).is_some(),
        (Value::Object(m), Seg::Key(k), ChangeKind::Append) => m.get_mut(&**k).is_some_and(|t| append_value(t, value)),
        (Value::Array(a), Seg::Index(i), ChangeKind::Replace) if *i < a.len() => {
            a[*i] = std::mem::take(value);
            true
        }
        (Value::Array(a), Seg::Index(i), ChangeKind::Add) if *i == a.len() => {
            a.push(std::mem::take(value));
            true
        }
        (Value::Array(a), Seg::Index(i), ChangeKind::Remove) if *i < a.len() => {
            a.remove(*i);
            true
        }
        (Value::Array(a), Seg::Index(i), ChangeKind::Append) => a.get_mut(*i).is_some_and(|t| append_value(t, value)),
        _ => false,
    }
}

/// Applies an `append` value (items array, or string) to `target`.
fn append_value(target: &mut Value, value: &mut Value) -> bool {
    match (target, value) {
        (Value::Array(a), Value::Array(items)) => {
            a.append(items);
            true
        }
        (Value::String(s), Value::String(tail)) => {
            s.push_str(tail);
            true
        }
        _ => false,
    }
}

/// Pushes `c` onto a run's change list, compacting. The list applied in order must equal the uncompacted list
/// applied in order; the property test in `tests/diff_invariant.rs` checks it end to end.
pub fn push_compacted(list: &mut Vec<Change>, mut c: Change) {
    if let Some(last) = list.last_mut() {
        // An op inside the subtree the last op wrote: apply it to that op's value.
        if matches!(last.kind, ChangeKind::Add | ChangeKind::Replace)
            && is_prefix(&last.path, &c.path)
            && fold_into(&mut last.value, &c.path[last.path.len()..], c.kind, &mut c.value)
        {
            return;
        }
        // Consecutive appends to one path merge.
        if c.kind == ChangeKind::Append
            && last.kind == ChangeKind::Append
            && last.path == c.path
            && append_value(&mut last.value, &mut c.value)
        {
            return;
        }
    }
    if c.kind != ChangeKind::Append {
        // A write at P supersedes earlier ops strictly below P; a write to an object member also supersedes
        // earlier writes to that member. Array-index removals shift paths: never look past one.
        let key_target = matches!(c.path.last(), Some(Seg::Key(_)));
        let mut i = list.len();
        let mut scanned = 0;
        while i > 0 && scanned < SCAN_LIMIT {
            i -= 1;
            scanned += 1;
            let e = &list[i];
            if e.is_barrier() {
                break;
            }
            let below = e.path.len() > c.path.len() && is_prefix(&c.path, &e.path);
            let same_member = key_target && c.kind != ChangeKind::Remove && e.path == c.path;
            if below || same_member {
                if same_member {
                    // `add` on an object member is valid whether or not the member exists at the base.
                    if e.kind != ChangeKind::Replace {
                        c.kind = ChangeKind::Add;
                    }
                }
                list.remove(i);
            }
        }
    }
    list.push(c);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    fn ch(kind: ChangeKind, path: Vec<Seg>, value: Value) -> Change {
        Change { kind, path, value }
    }

    /// Applies changes to a value with the reference semantics (RFC 6902 + append).
    fn apply_all(mut doc: Value, list: &[Change]) -> Value {
        for c in list {
            let mut ptr = String::new();
            crate::model::path::write_pointer(&mut ptr, &c.path);
            let (parent, last) = ptr.rsplit_once('/').unwrap();
            let target = doc.pointer_mut(parent).unwrap();
            let last = last.replace("~1", "/").replace("~0", "~");
            match (c.kind, target) {
                (ChangeKind::Add | ChangeKind::Replace, Value::Object(m)) => {
                    m.insert(last, c.value.clone());
                }
                (ChangeKind::Add, Value::Array(a)) => a.insert(last.parse().unwrap(), c.value.clone()),
                (ChangeKind::Replace, Value::Array(a)) => a[last.parse::<usize>().unwrap()] = c.value.clone(),
                (ChangeKind::Remove, Value::Object(m)) => {
                    m.remove(&last).unwrap();
                }
                (ChangeKind::Remove, Value::Array(a)) => {
                    a.remove(last.parse().unwrap());
                }
                (ChangeKind::Append, t) => {
                    let t = if let Value::Object(m) = t { m.get_mut(&last).unwrap() } else { panic!() };
                    assert!(append_value(t, &mut c.value.clone()));
                }
                other => panic!("{other:?}"),
            }
        }
        doc
    }

    fn check(list: Vec<Change>, expect_len: usize) {
        let base = json!({"output": {"a": 1, "tokens": ["x"]}, "steps": [{"s": 1}, {"s": 2}]});
        let plain = apply_all(base.clone(), &list);
        let mut compacted = Vec::new();
        for c in list {
            push_compacted(&mut compacted, c);
        }
        assert_eq!(apply_all(base, &compacted), plain, "compaction changed the result: {compacted:?}");
        assert_eq!(compacted.len(), expect_len, "{compacted:?}");
    }

    #[test]
    fn appends_merge() {
        let tokens = vec![key("output"), key("tokens")];
        let list = (0..100).map(|i| ch(ChangeKind::Append, tokens.clone(), json!([i]))).collect();
        check(list, 1);
    }

    #[test]
    fn keystrokes_keep_the_last_value() {
        let v = vec![key("output"), key("value")];
        let list = (0..50).map(|i| ch(ChangeKind::Add, v.clone(), json!("x".repeat(i)))).collect();
        check(list, 1);
    }

    #[test]
    fn a_set_supersedes_ops_below_it_but_not_across_an_index_removal() {
        let list = vec![
            ch(ChangeKind::Replace, vec![key("steps"), Seg::Index(1), key("s")], json!(5)),
            ch(ChangeKind::Append, vec![key("output"), key("tokens")], json!(["y"])),
            ch(ChangeKind::Replace, vec![key("steps"), Seg::Index(1)], json!({"s": 9})),
        ];
        check(list, 2);
        // Removing an element drops the ops below it.
        let list = vec![
            ch(ChangeKind::Replace, vec![key("steps"), Seg::Index(0), key("s")], json!(5)),
            ch(ChangeKind::Remove, vec![key("steps"), Seg::Index(0)], Value::Null),
            ch(ChangeKind::Add, vec![key("steps"), Seg::Index(1)], json!({"s": 9})),
        ];
        check(list, 2);
        // After an index removal, /steps/1 names another element: the earlier op below it must stay.
        let list = vec![
            ch(ChangeKind::Replace, vec![key("steps"), Seg::Index(1), key("s")], json!(5)),
            ch(ChangeKind::Add, vec![key("steps"), Seg::Index(2)], json!({"s": 3})),
            ch(ChangeKind::Remove, vec![key("steps"), Seg::Index(0)], Value::Null),
            ch(ChangeKind::Replace, vec![key("steps"), Seg::Index(1)], json!({"s": 9})),
        ];
        check(list, 4);
    }

    #[test]
    fn ops_fold_into_the_subtree_just_written() {
        let list = vec![
            ch(ChangeKind::Replace, vec![key("output")], json!({"tokens": ["a"]})),
            ch(ChangeKind::Append, vec![key("output"), key("tokens")], json!(["b"])),
            ch(ChangeKind::Add, vec![key("output"), key("done")], json!(true)),
        ];
        check(list, 1);
    }

    #[test]
    fn add_then_remove_of_a_new_member_keeps_both() {
        let n = vec![key("output"), key("new")];
        let list = vec![
            ch(ChangeKind::Append, vec![key("output"), key("tokens")], json!(["y"])),
            ch(ChangeKind::Add, n.clone(), json!(1)),
            ch(ChangeKind::Remove, n, Value::Null),
        ];
        check(list, 3);
    }

    #[test]
    fn remove_then_add_of_a_member_becomes_one_add() {
        let a = vec![key("output"), key("a")];
        let list = vec![ch(ChangeKind::Remove, a.clone(), Value::Null), ch(ChangeKind::Add, a, json!(2))];
        check(list, 1);
    }
}
