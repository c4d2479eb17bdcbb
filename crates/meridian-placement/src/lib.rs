//! Meridian's placement scheduler (the core of the placement driver,
//! issue 18): a pure function from the cluster's view to operators, and
//! the step machine that runs one operator.
//!
//! ```text
//!  node heartbeats, gossip liveness ─┐
//!  range heartbeats (leaders) ───────┼─► ClusterView ─► schedule(view, settings, now) ─► Plan { operators, blocked }
//!  running operators ────────────────┘                                   │
//!                                      Running::advance(range report, now) ◄┘  Issue(step) · Done · RollBack
//! ```
//!
//! No IO, no clock, no randomness: time comes in as milliseconds, so the
//! scheduler is unit-tested and runs in the deterministic simulation. The
//! driver (the meta range's leader) feeds it and issues the steps as
//! configuration changes and leader transfers; that wiring is still to
//! come (docs/roadmap.md).

#![deny(missing_docs)]

pub mod groups;
pub mod operator;
pub mod scheduler;
pub mod view;

pub use groups::{GroupChange, GroupSettings, GroupTracker, Observation};
pub use operator::{Kind, Operator, Progress, Running, Step};
pub use scheduler::{schedule, Plan};
pub use view::{ClusterView, Load, NodeView, RangeView, Settings, MIN_DISK_AVAILABLE_PERCENT, SHED_DISK_AVAILABLE_PERCENT};

#[cfg(test)]
mod tests;
