//! One applied change to a run's context, relative to the context: what the journal compacts and the wire
//! renders as a state-document op.

use crate::model::path::Seg;
use serde_json::Value;

/// What kind of state-document op a change is (RFC 6902 plus our `append`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Add,
    Replace,
    Remove,
    /// `value` is an array of items to push, or a string to concatenate.
    Append,
}

/// One applied change, relative to the run's context.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    pub kind: ChangeKind,
    pub path: Vec<Seg>,
    /// The new value (`Null` for `Remove`).
    pub value: Value,
}

impl Change {
    /// True when this change shifts the indexes of later array elements (an array element removed): journal
    /// compaction must not move other ops across it.
    pub fn is_barrier(&self) -> bool {
        self.kind == ChangeKind::Remove && matches!(self.path.last(), Some(Seg::Index(_)))
    }
}
