//! What the clients do during a run; each records what it observed.

pub mod locks;
pub mod register;
pub mod watch;
