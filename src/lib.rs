//! Coworker: a WebSocket server for live run state.
//!
//! # Layout (in reading order)
//! - [`config`]: every limit and interval, with defaults.
//! - [`error`]: the stable error codes a client can see.
//! - [`protocol`]: the wire format, and the only module that knows it.
//! - [`path`]: patch paths (seed syntax and JSON Pointer).
//! - [`patch`]: atomic patch apply on a run's context.
//! - [`context`]: the run context and its lifecycle fields.
//! - [`hooks`]: the plugin API (before/after/error hooks, server-side operations).
//! - [`views`]: `activeDialogs`, `activeAI`, `activePipelines`, `isLoading`, `currentRun`, kept incrementally.
//! - [`journal`]: the tick's compacted changes, rendered once per view set.
//! - [`space`]: a space's state behind its one lock.
//! - [`subscriber`]: subscription slots (one pending diff each) and the per-connection outbox.
//! - [`notifier`]: the per-space tick.
//! - [`engine`]: the `run` entry point, the lifecycle and the run registry.
//! - [`session`]: one WebSocket connection.
//! - [`server`]: routes, limits and shutdown.
//! - [`client`]: a Rust client that keeps a local copy of a space's state.

pub mod auth;
pub mod budget;
pub mod client;
pub mod config;
pub mod context;
pub mod data;
pub mod engine;
pub mod error;
pub mod history;
pub mod hooks;
pub mod journal;
pub mod notifier;
pub mod patch;
pub mod path;
pub mod protocol;
pub mod ratelimit;
pub mod server;
pub mod session;
pub mod size;
pub mod space;
pub mod store;
pub mod subscriber;
pub mod telemetry;
pub mod views;

pub use config::{Config, EngineConfig, Limits};
pub use engine::Engine;
pub use error::{Error, ErrorCode};
pub use hooks::{Hooks, Operation, Plugin, RunContext};
pub use server::serve;
