//! The network edge: routes and shutdown, one session per WebSocket, token checks.

pub mod auth;
pub mod pace;
pub mod server;
pub mod session;
