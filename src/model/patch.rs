//! Patch apply: the closed set of patch ops (`set`, `append`, `step`, `remove`) and how they change a run's context.
//! A patch is atomic: ops apply in order, and if one fails the ones before it are undone from an undo log (old values
//! are moved, never copied), so nothing is half-applied. Each applied op yields [`Change`]s, the run-relative
//! JSON-patch ops the journal turns into diffs. Cost is O(path depth): appends push in place, nothing is copied but the
//! new value itself (once for the run, once for the change).

use crate::error::{Error, ErrorCode, Result};
use crate::model::change::{Change, ChangeKind};
use crate::model::path::{Path, RawSeg, Seg};
use compact_str::CompactString;
use serde_json::{Map, Value};

/// One patch op, already validated for shape (see `protocol`). `cost` is its value's state bytes
/// ([`crate::model::size::value`]), measured once where the value was read: build ops with the constructors below.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum PatchOp {
    /// The seed's `updateRunField`: set the value at `path`, creating missing intermediate objects.
    Set { path: Path, value: Value, cost: usize },
    /// Push `value` onto the array at `path` (absent → one-item array), or concatenate it onto the string there.
    Append { path: Path, value: Value, cost: usize },
    /// The seed's `updateRunStep`: shallow-merge `value` into `steps[index]`; `index == steps.length` appends.
    Step { index: usize, value: Map<String, Value>, cost: usize },
    /// Remove the value at `path`; it must exist.
    Remove { path: Path },
}

impl PatchOp {
    pub fn set(path: Path, value: Value) -> PatchOp {
        PatchOp::Set { cost: crate::model::size::value(&value), path, value }
    }

    pub fn append(path: Path, value: Value) -> PatchOp {
        PatchOp::Append { cost: crate::model::size::value(&value), path, value }
    }

    pub fn step(index: usize, value: Map<String, Value>) -> PatchOp {
        PatchOp::Step { cost: crate::model::size::object(&value), index, value }
    }

    pub fn remove(path: Path) -> PatchOp {
        PatchOp::Remove { path }
    }
}

/// How to undo one applied op.
enum Undo {
    /// Put `old` back at `path` (`None`: the key was absent, or the array element was pushed).
    Put { path: Vec<Seg>, old: Option<Value> },
    /// Truncate the array or string at `path` back to `len`.
    Truncate { path: Vec<Seg>, len: usize },
    /// Re-insert a removed array element at `path`.
    Insert { path: Vec<Seg>, value: Value },
}

/// What an applied patch did: its changes, in order, and how much the run's state bytes ([`crate::model::size`]) moved.
#[derive(Debug)]
pub struct Applied {
    pub changes: Vec<Change>,
    pub grown: isize,
}

/// Why a patch was not applied. Either way the context is exactly as it was.
#[derive(Debug)]
pub enum Refused<E> {
    /// An op failed (its error says which and why).
    Op(Error),
    /// Every op applied, but the growth they made was not admitted.
    Admission(E),
}

/// Applies `ops` to `ctx` in order, all or none, with no limit on growth.
pub fn apply(ctx: &mut Map<String, Value>, ops: Vec<PatchOp>) -> Result<Applied> {
    apply_admitted(ctx, ops, false, |_| Ok::<(), std::convert::Infallible>(())).map_err(|r| match r {
        Refused::Op(e) => e,
        Refused::Admission(never) => match never {},
    })
}

/// An upper bound of what `ops` can add to a context's state bytes: their values, and for a set or an append whose
/// target is missing, the objects built along its path (and a comma). Costs O(ops).
pub fn growth_bound(ops: &[PatchOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            PatchOp::Set { path, cost, .. } => cost + path.growth,
            PatchOp::Append { path, cost, .. } => cost + crate::model::size::NODE + 3 + path.growth,
            PatchOp::Step { cost, .. } => cost + 2 * crate::model::size::NODE + 16,
            PatchOp::Remove { .. } => 0,
        })
        .sum()
}

/// Applies `ops` to `ctx` in order, all or none. Once every op applied, `admit` is told how many state bytes the
/// patch grew the context by (negative: shrank); if it refuses, the patch is rolled back. `may_refuse` says whether
/// it might: the undo log is kept for patches of more than one op, and for a single op only when `admit` may
/// refuse, so a patch whose growth was admitted in advance (the usual token) pays for no copy of its path.
pub fn apply_admitted<E>(
    ctx: &mut Map<String, Value>,
    ops: Vec<PatchOp>,
    may_refuse: bool,
    admit: impl FnOnce(isize) -> std::result::Result<(), E>,
) -> std::result::Result<Applied, Refused<E>> {
    let mut changes = Vec::with_capacity(ops.len());
    let mut undo = if ops.len() > 1 || may_refuse { Some(Vec::with_capacity(ops.len())) } else { None };
    let mut grown = 0isize;
    for op in ops {
        match apply_one(ctx, op, &mut changes, undo.as_mut()) {
            Ok(d) => grown += d,
            Err(e) => {
                if let Some(log) = undo {
                    rollback(ctx, log);
                }
                return Err(Refused::Op(e));
            }
        }
    }
    if let Err(e) = admit(grown) {
        match undo {
            Some(log) => rollback(ctx, log),
            None => panic!("a patch applied without an undo log was refused by its admission"),
        }
        return Err(Refused::Admission(e));
    }
    Ok(Applied { changes, grown })
}

/// The place a path's last segment names: an object member (with the position where it is likely to be, see
/// [`member_at`]) or an array slot.
enum Slot<'a> {
    Obj(&'a mut Map<String, Value>, CompactString, Option<usize>),
    Arr(&'a mut Vec<Value>, usize),
}

/// Where `key` is in `m`, when it is at position `hint`. Reaching a position costs no hashing and reads one entry,
/// where the map's own lookup hashes the key and reads its table first: the top-level fields of a context sit at
/// known positions ([`crate::model::context::field_position`]), and every patch passes through one of them.
fn member_at(m: &Map<String, Value>, key: &str, hint: Option<usize>) -> Option<usize> {
    hint.filter(|&i| m.iter().nth(i).is_some_and(|(k, _)| k == key))
}

fn member<'m>(m: &'m Map<String, Value>, key: &str, hint: Option<usize>) -> Option<&'m Value> {
    match member_at(m, key, hint) {
        Some(i) => m.values().nth(i),
        None => m.get(key),
    }
}

fn member_mut<'m>(m: &'m mut Map<String, Value>, key: &str, hint: Option<usize>) -> Option<&'m mut Value> {
    match member_at(m, key, hint) {
        Some(i) => m.values_mut().nth(i),
        None => m.get_mut(key),
    }
}

impl<'a> Slot<'a> {
    fn get(&self) -> Option<&Value> {
        match self {
            Slot::Obj(m, k, hint) => member(m, k, *hint),
            Slot::Arr(a, i) => a.get(*i),
        }
    }

    fn get_mut(&mut self) -> Option<&mut Value> {
        match self {
            Slot::Obj(m, k, hint) => member_mut(m, k, *hint),
            Slot::Arr(a, i) => a.get_mut(*i),
        }
    }

    fn into_value(self) -> Option<&'a mut Value> {
        match self {
            Slot::Obj(m, k, hint) => member_mut(m, &k, hint),
            Slot::Arr(a, i) => a.get_mut(i),
        }
    }

    /// Stores `value`, returning what was there (`None` when absent or pushed at the end of an array), and how
    /// many members or items its container held before.
    fn put(self, value: Value) -> (Option<Value>, usize) {
        match self {
            // Replacing looks the key up once and allocates nothing; only a new key is turned into a `String`.
            Slot::Obj(m, k, hint) => {
                let len = m.len();
                match member_mut(m, &k, hint) {
                    Some(v) => (Some(std::mem::replace(v, value)), len),
                    None => (m.insert(k.into_string(), value), len),
                }
            }
            Slot::Arr(a, i) if i == a.len() => {
                let len = a.len();
                a.push(value);
                (None, len)
            }
            Slot::Arr(a, i) => {
                let len = a.len();
                (Some(std::mem::replace(&mut a[i], value)), len)
            }
        }
    }

    /// The state bytes of a new entry at this slot whose value costs `value` (a member's key counts).
    fn entry_cost(&self, value: usize) -> usize {
        match self {
            Slot::Obj(_, k, _) => crate::model::size::member(k, value),
            Slot::Arr(..) => value,
        }
    }
}

/// Where navigation ended: the slot of the last segment that exists (or can be written), and when creating, the
/// segments below an absent or null slot that must be built as nested objects.
struct Target<'a> {
    slot: Slot<'a>,
    path: Vec<Seg>,
    rest: Vec<RawSeg>,
}

/// "a string", "an array", ... for error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn mismatch(msg: impl Into<String>) -> Error {
    Error::new(ErrorCode::TypeMismatch, msg)
}

fn out_of_range(i: usize, len: usize) -> Error {
    Error::new(ErrorCode::IndexOutOfRange, format!("index {i} is past the end (length {len})"))
}

fn navigate(root: &mut Map<String, Value>, path: Path, create: bool) -> Result<Target<'_>> {
    let mut resolved = Vec::with_capacity(path.segs.len());
    let mut iter = path.segs.into_iter();
    let first = iter.next().expect("a parsed path has a segment");
    resolved.push(Seg::Key(first.text.clone()));
    let hint = crate::model::context::field_position(&first.text);
    let mut slot = Slot::Obj(root, first.text, hint);
    while let Some(next) = iter.next() {
        let last = iter.len() == 0;
        match slot.get() {
            None | Some(Value::Null) => {
                if !create {
                    return Err(Error::new(ErrorCode::PathNotFound, "path does not exist"));
                }
                let mut rest = vec![next];
                rest.extend(iter);
                if rest.iter().any(|s| s.bracket) {
                    return Err(Error::new(ErrorCode::IndexOutOfRange, "array index into a missing value"));
                }
                return Ok(Target { slot, path: resolved, rest });
            }
            Some(Value::Object(_)) => {
                if next.bracket {
                    return Err(mismatch("array index into an object"));
                }
                let Some(Value::Object(m)) = slot.into_value() else { unreachable!() };
                resolved.push(Seg::Key(next.text.clone()));
                slot = Slot::Obj(m, next.text, None);
            }
            Some(Value::Array(a)) => {
                let len = a.len();
                let i = next.index.ok_or_else(|| mismatch(format!("`{}` is not an index into an array", next.text)))?;
                if i > len || (i == len && (!last || !create)) {
                    return Err(out_of_range(i, len));
                }
                let Some(Value::Array(a)) = slot.into_value() else { unreachable!() };
                resolved.push(Seg::Index(i));
                slot = Slot::Arr(a, i);
            }
            Some(other) => return Err(mismatch(format!("path runs through {}", type_name(other)))),
        }
    }
    Ok(Target { slot, path: resolved, rest: Vec::new() })
}

/// Wraps `leaf` in one object per remaining segment: `[a, b]`, v → `{"a": {"b": v}}`.
fn build(rest: Vec<RawSeg>, leaf: Value) -> Value {
    rest.into_iter().rev().fold(leaf, |inner, seg| {
        let mut m = Map::new();
        m.insert(seg.text.into_string(), inner);
        Value::Object(m)
    })
}

/// Stores `value` in the target slot (building intermediates), recording the change and its undo. Returns how
/// many state bytes the context grew by.
fn put_target(
    t: Target<'_>,
    value: Value,
    cost: usize,
    changes: &mut Vec<Change>,
    undo: Option<&mut Vec<Undo>>,
) -> isize {
    use crate::model::size;
    let new_cost = size::wrapped(cost, t.rest.iter().map(|s| s.text.as_str()));
    let value = if t.rest.is_empty() { value } else { build(t.rest, value) };
    let entry_cost = t.slot.entry_cost(new_cost);
    let (old, len) = t.slot.put(value.clone());
    let grown = match &old {
        Some(old) => size::delta(size::value(old), new_cost),
        None => size::added(len, entry_cost) as isize,
    };
    let kind = if old.is_some() { ChangeKind::Replace } else { ChangeKind::Add };
    if let Some(log) = undo {
        log.push(Undo::Put { path: t.path.clone(), old });
    }
    changes.push(Change { kind, path: t.path, value });
    grown
}

/// Applies one op; returns how many state bytes the context grew by (negative when it shrank).
fn apply_one(
    ctx: &mut Map<String, Value>,
    op: PatchOp,
    changes: &mut Vec<Change>,
    undo: Option<&mut Vec<Undo>>,
) -> Result<isize> {
    use crate::model::size;
    let grown = match op {
        PatchOp::Set { path, value, cost } => {
            debug_assert_eq!(cost, size::value(&value), "an op's cost is its value's");
            let t = navigate(ctx, path, true)?;
            put_target(t, value, cost, changes, undo)
        }
        PatchOp::Append { path, value, cost } => {
            debug_assert_eq!(cost, size::value(&value), "an op's cost is its value's");
            let mut t = navigate(ctx, path, true)?;
            // The target is looked up once; the usual case, an existing array or string, grows in place.
            let target = if t.rest.is_empty() { t.slot.get_mut() } else { None };
            let (len, appended, grown) = match (target, &value) {
                (None | Some(Value::Null), _) => {
                    let array = size::NODE + 2 + cost;
                    return Ok(put_target(t, Value::Array(vec![value]), array, changes, undo));
                }
                (Some(Value::Array(a)), _) => {
                    let grown = size::added(a.len(), cost);
                    a.push(value.clone());
                    (a.len() - 1, Value::Array(vec![value]), grown)
                }
                (Some(Value::String(s)), Value::String(tail)) => {
                    // The tail's cost is its escaped length plus the quotes and a node.
                    let (len, grown) = (s.len(), cost - size::NODE - 2);
                    s.push_str(tail);
                    (len, value, grown)
                }
                (Some(Value::String(_)), other) => {
                    return Err(mismatch(format!("cannot append {} to a string", type_name(other))));
                }
                (Some(other), _) => return Err(mismatch(format!("cannot append to {}", type_name(other)))),
            };
            // The path is copied only when the undo log needs it too.
            if let Some(log) = undo {
                log.push(Undo::Truncate { path: t.path.clone(), len });
            }
            changes.push(Change { kind: ChangeKind::Append, path: t.path, value: appended });
            grown as isize
        }
        PatchOp::Remove { path } => {
            if path.is_core_field() {
                return Err(Error::new(ErrorCode::ReadOnlyPath, "core context fields can be set but not removed"));
            }
            let t = navigate(ctx, path, false)?;
            let Target { slot, path, .. } = t;
            let removed = match slot {
                Slot::Obj(m, k, _) => {
                    let len = m.len();
                    m.remove(&*k).map(|old| (size::removed(len, size::member(&k, size::value(&old))), old))
                }
                Slot::Arr(a, i) if i < a.len() => {
                    let len = a.len();
                    let old = a.remove(i);
                    Some((size::removed(len, size::value(&old)), old))
                }
                Slot::Arr(..) => None,
            };
            let Some((shrunk, old)) = removed else {
                return Err(Error::new(ErrorCode::PathNotFound, "path does not exist"));
            };
            if let Some(log) = undo {
                log.push(match path.last() {
                    Some(Seg::Index(_)) => Undo::Insert { path: path.clone(), value: old },
                    _ => Undo::Put { path: path.clone(), old: Some(old) },
                });
            }
            changes.push(Change { kind: ChangeKind::Remove, path, value: Value::Null });
            -(shrunk as isize)
        }
        PatchOp::Step { index, value, cost } => step(ctx, index, value, cost, changes, undo)?,
    };
    Ok(grown)
}

/// The `step` op: pushes, replaces a `null` element, or shallow-merges into `steps[index]`.
fn step(
    ctx: &mut Map<String, Value>,
    index: usize,
    value: Map<String, Value>,
    cost: usize,
    changes: &mut Vec<Change>,
    undo: Option<&mut Vec<Undo>>,
) -> Result<isize> {
    use crate::model::size;
    let steps_path = || vec![Seg::Key("steps".into())];
    let present = ctx.contains_key("steps");
    if !present && index != 0 {
        return Err(out_of_range(index, 0));
    }
    let members = ctx.len();
    let steps = ctx.entry("steps").or_insert(Value::Null);
    let grown = match steps {
        Value::Null => {
            if index != 0 {
                return Err(out_of_range(index, 0));
            }
            let new = Value::Array(vec![Value::Object(value)]);
            let new_cost = size::NODE + 2 + cost;
            let old = std::mem::replace(steps, new.clone());
            let grown = if present {
                size::delta(size::value(&old), new_cost)
            } else {
                size::added(members, size::member("steps", new_cost)) as isize
            };
            if let Some(log) = undo {
                log.push(Undo::Put { path: steps_path(), old: present.then_some(old) });
            }
            changes.push(Change { kind: ChangeKind::Replace, path: steps_path(), value: new });
            grown
        }
        Value::Array(a) if index == a.len() => {
            let grown = size::added(a.len(), cost);
            a.push(Value::Object(value.clone()));
            let path = vec![Seg::Key("steps".into()), Seg::Index(index)];
            if let Some(log) = undo {
                log.push(Undo::Put { path: path.clone(), old: None });
            }
            changes.push(Change { kind: ChangeKind::Add, path, value: Value::Object(value) });
            grown as isize
        }
        Value::Array(a) if index < a.len() && a[index].is_null() => {
            // A null step becomes the merged object: one change for the whole element.
            let path = vec![Seg::Key("steps".into()), Seg::Index(index)];
            let grown = size::delta(size::value(&Value::Null), cost);
            let old = std::mem::replace(&mut a[index], Value::Object(value.clone()));
            if let Some(log) = undo {
                log.push(Undo::Put { path: path.clone(), old: Some(old) });
            }
            changes.push(Change { kind: ChangeKind::Replace, path, value: Value::Object(value) });
            grown
        }
        Value::Array(a) if index < a.len() => {
            let step = &mut a[index];
            let Value::Object(m) = step else {
                return Err(mismatch(format!("steps[{index}] is {}, not an object", type_name(step))));
            };
            let mut undo = undo;
            let mut grown = 0isize;
            for (k, v) in value {
                let path = vec![Seg::Key("steps".into()), Seg::Index(index), Seg::Key(k.as_str().into())];
                let (len, new_cost) = (m.len(), size::value(&v));
                let entry_cost = size::member(&k, new_cost);
                let old = m.insert(k, v.clone());
                grown += match &old {
                    Some(old) => size::delta(size::value(old), new_cost),
                    None => size::added(len, entry_cost) as isize,
                };
                let kind = if old.is_some() { ChangeKind::Replace } else { ChangeKind::Add };
                if let Some(log) = undo.as_deref_mut() {
                    log.push(Undo::Put { path: path.clone(), old });
                }
                changes.push(Change { kind, path, value: v });
            }
            grown
        }
        Value::Array(a) => return Err(out_of_range(index, a.len())),
        other => return Err(mismatch(format!("steps is {}, not an array", type_name(other)))),
    };
    Ok(grown)
}

/// The container holding the last segment of `path`.
fn parent_of<'a>(root: &'a mut Map<String, Value>, path: &[Seg]) -> Option<Slot<'a>> {
    let (last, parents) = path.split_last()?;
    let mut cur: Option<&'a mut Value> = None;
    let mut map = Some(root);
    for seg in parents {
        let next = match (cur.take(), map.take(), seg) {
            (None, Some(m), Seg::Key(k)) => m.get_mut(&**k)?,
            (Some(Value::Object(m)), None, Seg::Key(k)) => m.get_mut(&**k)?,
            (Some(Value::Array(a)), None, Seg::Index(i)) => a.get_mut(*i)?,
            _ => return None,
        };
        cur = Some(next);
    }
    match (cur, map, last) {
        (None, Some(m), Seg::Key(k)) => Some(Slot::Obj(m, k.clone(), None)),
        (Some(Value::Object(m)), None, Seg::Key(k)) => Some(Slot::Obj(m, k.clone(), None)),
        (Some(Value::Array(a)), None, Seg::Index(i)) => Some(Slot::Arr(a, *i)),
        _ => None,
    }
}

fn rollback(ctx: &mut Map<String, Value>, log: Vec<Undo>) {
    for entry in log.into_iter().rev() {
        let undone = undo_one(ctx, entry);
        debug_assert!(undone, "undo log entry did not apply");
    }
}

fn undo_one(ctx: &mut Map<String, Value>, entry: Undo) -> bool {
    match entry {
        Undo::Put { path, old } => match (parent_of(ctx, &path), old) {
            (Some(Slot::Obj(m, k, _)), Some(v)) => {
                m.insert(k.into_string(), v);
                true
            }
            (Some(Slot::Obj(m, k, _)), None) => m.remove(&*k).is_some(),
            (Some(Slot::Arr(a, i)), Some(v)) => match a.get_mut(i) {
                Some(slot) => {
                    *slot = v;
                    true
                }
                None => false,
            },
            (Some(Slot::Arr(a, i)), None) => a.len() == i + 1 && a.pop().is_some(),
            (None, _) => false,
        },
        Undo::Truncate { path, len } => match parent_of(ctx, &path).and_then(Slot::into_value) {
            Some(Value::Array(a)) => {
                a.truncate(len);
                true
            }
            Some(Value::String(s)) => {
                s.truncate(len);
                true
            }
            _ => false,
        },
        Undo::Insert { path, value } => match parent_of(ctx, &path) {
            Some(Slot::Arr(a, i)) if i <= a.len() => {
                a.insert(i, value);
                true
            }
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::path::PathLimits;
    use serde_json::json;

    const LIMITS: PathLimits = PathLimits { max_bytes: 1024, max_depth: 32 };

    fn ctx() -> Map<String, Value> {
        json!({"id": "r1", "status": "running", "output": null, "steps": [], "input": {"q": "hi"}})
            .as_object()
            .unwrap()
            .clone()
    }

    fn p(s: &str) -> Path {
        Path::parse(s, LIMITS).unwrap()
    }

    fn set(path: &str, v: Value) -> PatchOp {
        PatchOp::set(p(path), v)
    }

    fn append(path: &str, v: Value) -> PatchOp {
        PatchOp::append(p(path), v)
    }

    fn step(index: usize, v: Value) -> PatchOp {
        PatchOp::step(index, v.as_object().unwrap().clone())
    }

    fn remove(path: &str) -> PatchOp {
        PatchOp::remove(p(path))
    }

    /// Applies ops; checks the resulting context and the changes rendered as `[kind, pointer, value]`.
    fn check(ops: Vec<PatchOp>, expect_ctx: Value, expect_changes: Value) {
        let mut c = ctx();
        let changes = apply(&mut c, ops).unwrap().changes;
        assert_eq!(Value::Object(c), expect_ctx);
        let rendered: Vec<Value> = changes
            .iter()
            .map(|ch| {
                let mut s = String::new();
                crate::model::path::write_pointer(&mut s, &ch.path);
                json!([format!("{:?}", ch.kind), s, ch.value])
            })
            .collect();
        assert_eq!(Value::Array(rendered), expect_changes);
    }

    fn check_err(ops: Vec<PatchOp>, code: ErrorCode) {
        let mut c = ctx();
        let before = c.clone();
        assert_eq!(apply(&mut c, ops).unwrap_err().code, code);
        assert_eq!(c, before, "a failed patch must leave the run untouched");
    }

    #[test]
    fn set_creates_intermediates_under_null_output() {
        check(
            vec![set("output.value", json!("h"))],
            json!({"id": "r1", "status": "running", "output": {"value": "h"}, "steps": [], "input": {"q": "hi"}}),
            json!([["Replace", "/output", {"value": "h"}]]),
        );
    }

    #[test]
    fn append_builds_then_pushes_in_place() {
        check(
            vec![append("output.tokens", json!("a")), append("/output/tokens", json!("b"))],
            json!({"id": "r1", "status": "running", "output": {"tokens": ["a", "b"]}, "steps": [], "input": {"q": "hi"}}),
            json!([["Replace", "/output", {"tokens": ["a"]}], ["Append", "/output/tokens", ["b"]]]),
        );
    }

    #[test]
    fn append_concatenates_strings() {
        check(
            vec![set("output.text", json!("ab")), append("output.text", json!("cd"))],
            json!({"id": "r1", "status": "running", "output": {"text": "abcd"}, "steps": [], "input": {"q": "hi"}}),
            json!([["Replace", "/output", {"text": "ab"}], ["Append", "/output/text", "cd"]]),
        );
    }

    #[test]
    fn step_appends_then_merges() {
        check(
            vec![step(0, json!({"name": "a", "status": "running"})), step(0, json!({"status": "done"}))],
            json!({"id": "r1", "status": "running", "output": null, "steps": [{"name": "a", "status": "done"}], "input": {"q": "hi"}}),
            json!([["Add", "/steps/0", {"name": "a", "status": "running"}], ["Replace", "/steps/0/status", "done"]]),
        );
    }

    #[test]
    fn a_step_merged_into_null_replaces_it() {
        check(
            vec![set("steps[0]", Value::Null), step(0, json!({"status": "s"}))],
            json!({"id": "r1", "status": "running", "output": null, "steps": [{"status": "s"}], "input": {"q": "hi"}}),
            json!([["Add", "/steps/0", null], ["Replace", "/steps/0", {"status": "s"}]]),
        );
    }

    #[test]
    fn remove_and_set_into_arrays() {
        check(
            vec![
                step(0, json!({"n": 1})),
                step(1, json!({"n": 2})),
                set("steps[1].n", json!(3)),
                remove("/steps/0"),
                set("/input/q", json!("yo")),
            ],
            json!({"id": "r1", "status": "running", "output": null, "steps": [{"n": 3}], "input": {"q": "yo"}}),
            json!([
                ["Add", "/steps/0", {"n": 1}],
                ["Add", "/steps/1", {"n": 2}],
                ["Replace", "/steps/1/n", 3],
                ["Remove", "/steps/0", null],
                ["Replace", "/input/q", "yo"]
            ]),
        );
    }

    /// A context with every field in the engine's order, or with `output` and `error` swapped.
    fn full_ctx(swapped: bool) -> Map<String, Value> {
        let mut names = crate::model::context::FIELDS.to_vec();
        if swapped {
            let (o, e) = (names.iter().position(|n| *n == "output"), names.iter().position(|n| *n == "error"));
            names.swap(o.unwrap(), e.unwrap());
        }
        names.into_iter().map(|n| (n.to_string(), Value::Null)).collect()
    }

    #[test]
    fn top_level_fields_are_found_at_their_position_and_elsewhere() {
        for swapped in [false, true] {
            let mut ctx = full_ctx(swapped);
            apply(&mut ctx, vec![set("output.text", json!("a")), append("output.tokens", json!("t"))]).unwrap();
            apply(&mut ctx, vec![append("output.tokens", json!("u")), set("steps", json!([]))]).unwrap();
            assert_eq!(ctx["output"], json!({"text": "a", "tokens": ["t", "u"]}), "swapped: {swapped}");
            assert_eq!((&ctx["error"], &ctx["steps"]), (&Value::Null, &json!([])), "swapped: {swapped}");
            let err = apply(&mut ctx, vec![append("output.tokens", json!("v")), append("output.text", json!(1))]);
            assert_eq!(err.unwrap_err().code, ErrorCode::TypeMismatch);
            assert_eq!(ctx["output"]["tokens"], json!(["t", "u"]), "rolled back; swapped: {swapped}");
        }
    }

    #[test]
    fn errors_leave_the_run_untouched() {
        check_err(vec![append("input.q.x", json!(1))], ErrorCode::TypeMismatch);
        check_err(vec![set("output.a", json!(1)), append("output.a", json!(2))], ErrorCode::TypeMismatch);
        check_err(vec![set("output.s", json!("x")), append("output.s", json!(5))], ErrorCode::TypeMismatch);
        check_err(vec![step(0, json!({"a": 1})), step(5, json!({}))], ErrorCode::IndexOutOfRange);
        check_err(vec![set("steps[3]", json!(1))], ErrorCode::IndexOutOfRange);
        check_err(vec![append("output.t", json!("a")), set("output.t[1].x", json!(1))], ErrorCode::IndexOutOfRange);
        check_err(vec![set("output.a", json!(1)), remove("output.zz")], ErrorCode::PathNotFound);
        check_err(vec![remove("output")], ErrorCode::ReadOnlyPath);
        check_err(vec![set("input.q", json!(1)), remove("input.q"), remove("input.q")], ErrorCode::PathNotFound);
        check_err(
            vec![step(0, json!({"a": 1})), step(1, json!({"b": 1})), remove("steps[0]"), set("output.x[0]", json!(1))],
            ErrorCode::IndexOutOfRange,
        );
        check_err(vec![set("input", json!([1])), set("input.key", json!(1))], ErrorCode::TypeMismatch);
        // Appends in place (to the run's existing `steps` array and `input.q` string) are truncated back.
        check_err(
            vec![append("steps", json!({"n": 1})), append("input.q", json!("!")), remove("output.nope")],
            ErrorCode::PathNotFound,
        );
    }

    /// State bytes: the running count kept by `apply_within` equals a fresh measurement of the context after any
    /// sequence of patches (sets, appends, steps, removes; failures rolled back), and a patch refused for growing
    /// past its headroom changes nothing.
    mod size_accounting {
        use super::*;
        use crate::model::size;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
                r#"[a-z\\"\n\t\x01é😀]{0,6}"#.prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 16, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(r#"[a-c"]{1,2}"#, inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn path() -> impl Strategy<Value = &'static str> {
            prop::sample::select(vec![
                "output",
                "output.a",
                "output.a.b",
                "output.tokens",
                "/output/tokens/0",
                "output.text",
                "input",
                "input.q",
                "steps",
                "steps[0]",
                "steps[0].x",
                "x",
                "x.y",
                "/x/0",
            ])
        }

        fn op() -> impl Strategy<Value = PatchOp> {
            prop_oneof![
                (path(), value()).prop_map(|(p, v)| set(p, v)),
                (path(), value()).prop_map(|(p, v)| append(p, v)),
                (path(), r#"[a-z\\"]{0,4}"#).prop_map(|(p, s)| append(p, Value::String(s))),
                path().prop_map(remove),
                (0usize..3, prop::collection::btree_map("[a-c]", value(), 0..3))
                    .prop_map(|(i, m)| PatchOp::step(i, m.into_iter().collect())),
            ]
        }

        proptest! {
            #[test]
            fn the_running_count_equals_a_fresh_measurement(
                patches in prop::collection::vec((prop::collection::vec(op(), 1..4), 0usize..400), 1..40),
            ) {
                let mut c = ctx();
                let mut bytes = size::object(&c);
                for (ops, headroom) in patches {
                    let before = c.clone();
                    // Every other patch gets a small headroom, so refusals happen as well; a patch whose bound fits
                    // is applied without an undo log, as the engine does.
                    let headroom = if headroom % 2 == 0 { usize::MAX } else { headroom };
                    let may_refuse = growth_bound(&ops) > headroom;
                    let admit = |g: isize| if g > 0 && g as usize > headroom { Err(g as usize) } else { Ok(()) };
                    match apply_admitted(&mut c, ops, may_refuse, admit) {
                        Ok(a) => {
                            prop_assert!(a.grown <= 0 || (a.grown as usize) <= headroom);
                            bytes = bytes.checked_add_signed(a.grown).expect("never below zero");
                        }
                        Err(Refused::Admission(grown)) => {
                            prop_assert!(grown > headroom);
                            prop_assert_eq!(&c, &before, "a refused patch changes nothing");
                        }
                        Err(Refused::Op(_)) => prop_assert_eq!(&c, &before, "a failed patch changes nothing"),
                    }
                    prop_assert_eq!(bytes, size::object(&c), "after {}", Value::Object(c.clone()));
                }
            }
        }

        #[test]
        fn finishing_a_run_keeps_its_count() {
            let mut ctx = Map::new();
            for f in crate::model::context::FIELDS {
                ctx.insert(f.to_string(), Value::Null);
            }
            let mut run = crate::model::context::Run {
                id: crate::model::context::RunId::nil(),
                parent: None,
                kind: crate::model::context::Kind::Ai,
                status: crate::model::context::Status::Running,
                timestamp: 0,
                bytes: size::run(&ctx),
                ctx,
                producer: None,
            };
            run.finish(
                crate::model::context::Status::Failed,
                Some(json!({"big": "x".repeat(100)})),
                Some(json!({"m": 1})),
                7,
            );
            assert_eq!(run.bytes, size::run(&run.ctx));
        }
    }
}
