//! The server-side plugin API (hooks, operations) and the built-in data operations.

pub mod data;
pub mod hooks;
