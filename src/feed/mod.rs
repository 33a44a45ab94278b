//! Per-node delivery of what the space's state machine applied: the tick's journal and its compaction, rendering
//! once per view set, resume history, and the subscriber slots and outboxes.

pub mod history;
pub mod journal;
pub mod subscriber;
