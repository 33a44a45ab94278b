//! Coworker: a WebSocket server for live run state.
//!
//! # Layers (dependencies point down only)
//! - [`net`]: routes, sessions, tokens.
//! - [`cluster`]: the replicated sequencer over NATS JetStream: log entries, per-space replicas, snapshots.
//! - [`plugin`]: hooks, server-side operations, the data operations.
//! - [`engine`]: commands, quotas, the sequencer and the space handle, the per-space ticker.
//! - [`feed`]: per-node delivery: journal, rendering, history, subscriber slots.
//! - [`space`]: a space's events, their pure apply, and its views.
//! - [`model`]: the run record, paths, patch apply, state bytes.
//! - [`protocol`]: the wire format, and the only module that knows it.
//! - [`store`]: the audit trail and documents behind typed traits.
//! - [`client`]: a Rust client that keeps a local copy of a space's state.
//! - [`config`], [`error`], [`telemetry`]: used by every layer.

pub mod client;
pub mod cluster;
pub mod config;
pub mod engine;
pub mod error;
pub mod feed;
pub mod model;
pub mod net;
pub mod plugin;
pub mod protocol;
pub mod space;
pub mod store;
pub mod telemetry;

pub use config::{EngineConfig, Limits};
pub use engine::Engine;
pub use error::{Error, ErrorCode};
pub use net::server::Config;
pub use net::server::serve;
pub use plugin::hooks::{Hooks, Operation, Plugin, RunContext};
