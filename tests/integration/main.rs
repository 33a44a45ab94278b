//! Integration tests: a real server on 127.0.0.1:0, real sockets.

mod attacks;
mod auth;
mod bad_input;
mod binary;
mod budgets;
mod cluster;
mod crash;
mod data;
mod diff_invariant;
mod hooks;
mod layers;
mod limits;
mod load;
mod memory;
mod messages;
mod patches;
mod postgres;
mod producer;
mod protocol_doc;
mod replay;
mod resume;
mod slow;
mod support;
mod timing;
mod transport;
mod views;
