//! The run record and how it changes: statuses and kinds, patch paths, patch apply, state bytes. No clock, no I/O,
//! and nothing from the layers above.

pub mod change;
pub mod context;
pub mod patch;
pub mod path;
pub mod size;
