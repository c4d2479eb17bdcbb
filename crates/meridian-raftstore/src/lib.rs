//! Meridian's Multi-Raft store: one [`Store`] per node drives many ranges,
//! each a raft-rs `RawNode` over a [`meridian_storage::PeerStorage`].
//!
//! ```text
//!            step(envelope) / tick() / propose() / read_index()
//!                               │
//!                  ┌────────────▼─────────────┐
//!                  │ Store (IO-free core;     │  the driver (simulation
//!                  │ time = ticks it is given)│  harness or tokio task) calls
//!                  └────────────┬─────────────┘  poll() once per round
//!   poll():                     │
//!   1. every range with a Ready: send leader messages now, stage entries,
//!      hard state and snapshots into ONE WriteBatch
//!   2. engine.write(batch, sync = true)        ← one fsync per round
//!   3. send follower/candidate replies (persisted messages), advance,
//!      apply committed entries (commit index persisted with the apply
//!      batch), answer proposals and reads
//! ```
//!
//! The store never spawns, sleeps or reads a clock: ticks, inbound
//! messages and proposals are its inputs, so the simulation harness can
//! replay any run from its seed.

mod config;
mod error;
mod logger;
mod peer;
mod state_machine;
mod store;
pub mod test_machine;

pub use config::{SnapshotBuild, StoreConfig};
pub use error::RaftstoreError;
pub use state_machine::{data_bounds, ApplyContext, Savepoint, StateMachine, StateMachineFactory};
pub use store::{AppliedEntry, Completion, RangeStatus, RequestId, Store, StoreMetrics};

/// raft-rs types callers need (conf changes, roles).
pub mod raft_types {
    pub use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2};
    pub use raft::StateRole;
}
