//! The events of a space's log: every state change, decided before it is applied. Each carries what is not a
//! function of the state (ids, wall-clock times, the producer, the budget headroom granted), so applying a log is
//! deterministic on any node. Encoded with a version of its own, in CBOR (RFC 8949), not in the client wire format.

use crate::error::{Error, ErrorCode, Result};
use crate::model::context::{ProducerId, RunId, Status};
use crate::model::patch::PatchOp;
use crate::model::size::Budget;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The encoding's version: the first item of every encoded event. A reader refuses a version it does not know.
pub const VERSION: u8 = 1;

/// One state change of one space.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SpaceEvent {
    /// A run enters the space. `ctx` is its whole context, `id`, `timestamp` and `status` included.
    RunStarted {
        id: RunId,
        /// Milliseconds since the epoch, as in `ctx.timestamp`.
        timestamp: u64,
        /// The `parentRun` asked for: the run joins its pipeline if that run is active in the space.
        parent: Option<RunId>,
        status: Status,
        ctx: Map<String, Value>,
        producer: Option<ProducerId>,
    },
    /// A patch to a live run: all ops or none.
    Patched { run: RunId, ops: Vec<PatchOp>, producer: Option<ProducerId>, allowance: Allowance },
    /// A run completes or fails at `at_ms` (milliseconds since the epoch).
    Finished { run: RunId, end: End, at_ms: u64 },
    /// A failed run's linger is over: it leaves the space (a no-op if it already left).
    LingerExpired { run: RunId },
    /// The connection that produced a live run is gone: the run fails with `producer_lost`, unless another
    /// producer took it over or it is no longer running (then a no-op).
    ProducerLost { run: RunId, producer: ProducerId, at_ms: u64 },
    /// A run refused by a `before_run` hook: it never enters the space, but its id is used up and its
    /// subscribers see its `errorRun` event.
    Rejected { id: RunId, ctx: Map<String, Value> },
}

/// How a run ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum End {
    /// `output: None` keeps the output the run was patched to.
    Completed {
        output: Option<Value>,
    },
    Failed {
        error: Value,
    },
}

/// How many state bytes a patch may add, as the command side admitted them against the budgets that are not
/// the run's own (owner and server): beyond `bytes`, the patch is refused with `budget`'s error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    pub bytes: u64,
    pub budget: Budget,
}

impl Allowance {
    /// No limit but the run's own budget.
    pub const UNLIMITED: Allowance = Allowance { bytes: u64::MAX, budget: Budget::Server };

    pub fn covers(&self, grown: usize) -> bool {
        grown as u64 <= self.bytes
    }
}

impl SpaceEvent {
    /// The run the event is about.
    pub fn run(&self) -> RunId {
        match self {
            SpaceEvent::RunStarted { id, .. } | SpaceEvent::Rejected { id, .. } => *id,
            SpaceEvent::Patched { run, .. }
            | SpaceEvent::Finished { run, .. }
            | SpaceEvent::LingerExpired { run }
            | SpaceEvent::ProducerLost { run, .. } => *run,
        }
    }

    /// The event's bytes: its version, then the event.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// [`SpaceEvent::encode`], appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        ciborium::into_writer(&(VERSION, self), out).expect("an event encodes into memory");
    }

    /// Reads an event encoded by [`SpaceEvent::encode`] of this version.
    pub fn decode(bytes: &[u8]) -> Result<SpaceEvent> {
        let bad = |why: String| Error::new(ErrorCode::Internal, format!("an undecodable space event: {why}"));
        let (version, event): (u8, SpaceEvent) = ciborium::from_reader(bytes).map_err(|e| bad(e.to_string()))?;
        if version != VERSION {
            return Err(bad(format!("version {version}, this node reads {VERSION}")));
        }
        Ok(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::path::{Path, PathLimits};
    use serde_json::json;

    #[test]
    fn events_round_trip_and_other_versions_are_refused() {
        let path = |p: &str| Path::parse(p, PathLimits { max_bytes: 256, max_depth: 8 }).unwrap();
        let id = RunId::from_u128(7);
        let p = ProducerId { node: 3, connection: 9 };
        let producer = Some(p);
        let mut ctx = Map::new();
        ctx.insert("id".into(), json!(id.to_string()));
        ctx.insert("input".into(), json!({"n": 1.5, "big": u64::MAX, "neg": -3, "s": "é\"\n"}));
        let events = [
            SpaceEvent::RunStarted {
                id,
                timestamp: 1,
                parent: None,
                status: Status::Running,
                ctx: ctx.clone(),
                producer,
            },
            SpaceEvent::Patched {
                run: id,
                ops: vec![
                    PatchOp::append(path("output.tokens"), json!("tok")),
                    PatchOp::set(path("/steps/0"), json!({"a": [1, null]})),
                    PatchOp::step(2, Map::new()),
                    PatchOp::remove(path("output.x")),
                ],
                producer,
                allowance: Allowance { bytes: 10, budget: Budget::Owner },
            },
            SpaceEvent::Finished { run: id, end: End::Completed { output: Some(json!(1)) }, at_ms: 5 },
            SpaceEvent::Finished { run: id, end: End::Failed { error: json!({"code": "x"}) }, at_ms: 5 },
            SpaceEvent::LingerExpired { run: id },
            SpaceEvent::ProducerLost { run: id, producer: p, at_ms: 9 },
            SpaceEvent::Rejected { id, ctx },
        ];
        for e in events {
            let bytes = e.encode();
            assert_eq!(SpaceEvent::decode(&bytes).unwrap(), e);
            assert_eq!(bytes[0], 0x82, "a pair: version, event");
            let mut other = bytes.clone();
            other[1] = 2;
            assert!(SpaceEvent::decode(&other).unwrap_err().message.contains("version 2"));
        }
        assert!(SpaceEvent::decode(b"\xff").is_err());
    }
}
