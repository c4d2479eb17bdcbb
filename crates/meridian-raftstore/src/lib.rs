#![deny(missing_docs)]
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
//!   0. Readies a finished sync made durable: on_persist_ready, send the
//!      follower/candidate replies they held back
//!   1. every range with a Ready: send leader messages now, stage entries,
//!      hard state, snapshots and the applies of committed entries into
//!      ONE WriteBatch
//!   2. engine.write(batch, sync = false); if raft must_sync, the round
//!      takes a sync number: synced by the driver's sync thread
//!      (defer_sync) or by poll itself before it returns
//!   3. advance_append_async; answer proposals and reads
//! ```
//!
//! A round visits only the *active* ranges: those reached since their last
//! round (a message, a request, transport feedback) or ticked, and those
//! with work left (a Ready, one waiting for its sync, an install, waiting
//! requests). Thousands of quiet ranges cost a round nothing; see
//! `store/peers.rs`.
//!
//! Snapshots stream (see `store/snapshot.rs` and
//! [`meridian_storage::snapshot`]): the leader pins an engine view and the
//! transport reads it chunk by chunk as the network takes it; the follower
//! stages chunks as they arrive, accepts the `MsgSnapshot` only once all
//! did, and moves the staged data into place a bounded step per round.
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

pub use config::{StoreConfig, DEFAULT_MAX_LOG_LAG_ENTRIES};
pub use error::RaftstoreError;
pub use meridian_codes::ReplicaState;
pub use state_machine::{data_bounds, ApplyContext, Savepoint, SplitOff, StateMachine, StateMachineFactory};
pub use store::{
    generation, next_generation, AppliedEntry, Bootstrap, Completion, Destroyed, Promotion, RangeRequest, RangeStatus, RangeView,
    RequestId, Retirement, Store, StoreMetrics, INITIAL_LOG_INDEX, MAX_INCOMING_SNAPSHOTS, PINNED_SNAPSHOT_TICKS, STORE_FORMAT,
};

/// raft-rs types callers need (conf changes, roles).
pub mod raft_types {
    pub use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Snapshot};
    pub use raft::StateRole;
}
