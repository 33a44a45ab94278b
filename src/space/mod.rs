//! One space's state as a pure function of its event log: the events ([`event`]), their apply ([`model`]) and the
//! views kept by it ([`views`]). Nothing here reads a clock, mints an id, calls a hook, or knows the wire.

pub mod event;
pub mod model;
pub mod views;
