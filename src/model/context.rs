//! The run context: one object that is both the live run and its own audit record. Owns the run's typed lifecycle
//! fields (status, parent, kind) and keeps them equal to the JSON context the wire sees; every other change to a
//! run goes through `patch`.

use crate::model::change::{Change, ChangeKind};
use crate::model::path::Seg;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

/// A run's id: a UUID (v7 when the server assigns it).
pub type RunId = Uuid;

/// The hasher of the maps keyed by run id on the patch path (registry, journal, a connection's produced runs):
/// foldhash, seeded per process, hashes a UUID in a few instructions where std's SipHash took ~100 per lookup, and
/// a patch does several lookups. Clients may choose run ids, so the seed matters; per-owner run quotas bound how
/// many ids one client can insert.
pub type RunHasher = foldhash::fast::RandomState;

/// The top-level fields of a run's context, in the order the engine builds it (the wire shows them in this order).
pub const FIELDS: [&str; 17] = [
    "id",
    "timestamp",
    "operation",
    "doctype",
    "flow",
    "input",
    "options",
    "owner",
    "agent",
    "parentRun",
    "steps",
    "space",
    "status",
    "output",
    "error",
    "success",
    "duration",
];

/// The position of a patchable top-level field in [`FIELDS`]. Fields are never removed from a context and new
/// top-level members go after them, so the field stays there for the run's life; `patch` still checks the key it
/// finds there before it trusts the position.
pub fn field_position(name: &str) -> Option<usize> {
    match name {
        "doctype" => Some(3),
        "flow" => Some(4),
        "input" => Some(5),
        "options" => Some(6),
        "agent" => Some(8),
        "steps" => Some(10),
        "output" => Some(13),
        _ => None,
    }
}

/// Who last started or changed a run: a connection on a node. Stable across nodes (a node's id is random per
/// process), so a timer on any node can name the producer it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProducerId {
    pub node: u64,
    pub connection: u64,
}

/// A run's lifecycle status. `Pending` while a server-side operation executes, `Running` for live runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
}

impl Status {
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub const fn is_finished(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

/// What a run's operation means to the views.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    /// `dialog`: listed in `activeDialogs` while running.
    Dialog,
    /// `interpret`: listed in `activeAI` while running.
    Ai,
    /// `select`, `create`, `update`, `delete`: becomes `currentRun` when completed.
    Data,
    /// Anything else.
    Other,
}

impl Kind {
    pub fn of(operation: &str) -> Kind {
        match operation {
            "dialog" => Kind::Dialog,
            "interpret" => Kind::Ai,
            "select" | "create" | "update" | "delete" => Kind::Data,
            _ => Kind::Other,
        }
    }
}

/// Which views a run belongs to at one moment, as bits. Two classes are compared to find runs that entered or
/// left a view between two ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Class(pub u8);

impl Class {
    /// In `activeRuns` (pending, running, or failed and lingering).
    pub const PRESENT: u8 = 1;
    /// Pending or running: counts for `isLoading`.
    pub const LOADING: u8 = 2;
    /// A running dialog: in `activeDialogs`.
    pub const DIALOG: u8 = 4;
    /// A running interpret run: in `activeAI`.
    pub const AI: u8 = 8;

    pub const ABSENT: Class = Class(0);

    pub fn has(self, bit: u8) -> bool {
        self.0 & bit != 0
    }
}

/// A run held by the engine.
#[derive(Debug, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    /// The run's parent when the parent was active at creation (pipeline grouping).
    pub parent: Option<RunId>,
    pub kind: Kind,
    pub status: Status,
    /// Its `timestamp` (milliseconds since the epoch, decided before the run started): `duration` is measured
    /// from it to the end timestamp its finishing event carries.
    pub timestamp: u64,
    /// The context as the wire sees it.
    pub ctx: Map<String, Value>,
    /// The connection that last started or changed the run; when it drops, the run may be orphaned.
    pub producer: Option<ProducerId>,
    /// Its state bytes ([`crate::model::size::run`]), kept up to date by every change.
    pub bytes: usize,
}

impl Run {
    /// The run's class while it is in the registry.
    pub fn class(&self) -> Class {
        let mut bits = Class::PRESENT;
        if matches!(self.status, Status::Pending | Status::Running) {
            bits |= Class::LOADING;
            if self.status == Status::Running {
                bits |= match self.kind {
                    Kind::Dialog => Class::DIALOG,
                    Kind::Ai => Class::AI,
                    _ => 0,
                };
            }
        }
        Class(bits)
    }

    /// Moves the run to a final status at `at_ms`, setting `status`, `success`, `duration` and `output` or `error`.
    /// Returns the changes (for a failed run, which stays visible while it lingers); `bytes` follows.
    pub fn finish(&mut self, status: Status, output: Option<Value>, error: Option<Value>, at_ms: u64) -> Vec<Change> {
        debug_assert!(status.is_finished() && !self.status.is_finished());
        self.status = status;
        let duration = at_ms.saturating_sub(self.timestamp);
        let mut fields = vec![
            ("status", Value::from(status.as_str())),
            ("success", Value::Bool(status == Status::Completed)),
            ("duration", Value::from(duration)),
        ];
        if let Some(output) = output {
            fields.push(("output", output));
        }
        if let Some(error) = error {
            fields.push(("error", error));
        }
        fields
            .into_iter()
            .map(|(k, v)| {
                let (len, new_cost) = (self.ctx.len(), crate::model::size::value(&v));
                let grown = match self.ctx.insert(k.to_string(), v.clone()) {
                    Some(old) => crate::model::size::delta(crate::model::size::value(&old), new_cost),
                    None => crate::model::size::added(len, crate::model::size::member(k, new_cost)) as isize,
                };
                self.bytes = self.bytes.saturating_add_signed(grown);
                Change { kind: ChangeKind::Replace, path: vec![Seg::Key(k.into())], value: v }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::path::CORE_FIELDS;

    #[test]
    fn field_positions_are_the_positions_in_fields() {
        for (i, name) in FIELDS.iter().enumerate() {
            let patchable = CORE_FIELDS.contains(name);
            assert_eq!(field_position(name), patchable.then_some(i), "{name}");
        }
        assert_eq!(field_position("tokens"), None);
    }
}
