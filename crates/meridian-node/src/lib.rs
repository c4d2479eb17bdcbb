//! Meridian's production node driver: runs one [`meridian_raftstore::Store`]
//! on a real node — RocksDB for storage, QUIC for peers, wall-clock ticks.
//!
//! ```text
//!   NodeHandle (Clone; any task)          peers (QUIC, mTLS)
//!     │ propose / read / conf_change          │
//!     │ bounded command channel               │ QuicTransport tasks on the
//!     ▼                                       ▼ caller's (shared) runtime
//!   ┌──────────────────────────────────────────────────────────────┐
//!   │ store loop: dedicated OS thread with its own current-thread  │
//!   │   runtime, or a task on the caller's (store_on_runtime)      │
//!   │   select! { tick │ inbound envelopes │ commands │ synced }   │
//!   │   drain what else is queued (bounded), then store.poll()     │
//!   │     └─ one write per round for every range (group commit)    │
//!   │   completions ──► waiting oneshot senders                    │
//!   │   sync request ──► sync thread: one fsync at a time, each    │
//!   │     covering every round written before it began             │
//!   └──────────────────────────────────────────────────────────────┘
//!            │ RocksEngine (data_dir)        │ Transport::send (never blocks)
//! ```
//!
//! By default the store runs on a thread of its own; with
//! [`NodeConfig::store_on_runtime`] it is a task on the caller's runtime
//! (on a current-thread runtime the whole node shares one thread). Its
//! fsyncs run on a sync thread in both modes: a slow disk delays this
//! node's acknowledgements, never a runtime that serves clients and the
//! transport, and the store prepares the next round while the disk syncs.

// This crate is a driver: it owns the clock (tick interval, request
// deadlines), the thread and runtime the store runs on, and OS entropy for
// the store's seed. The core crates stay under the determinism lints.
#![allow(clippy::disallowed_methods)]

mod config;
mod error;
mod faults;
mod handle;
mod node;
mod store_loop;

pub use config::NodeConfig;
pub use error::NodeError;
pub use faults::NetFaults;
pub use handle::NodeHandle;
pub use meridian_transport_quic::LinkShape;
pub use node::{create_store, Node};
pub use store_loop::{COMMAND_QUEUE, INBOUND_QUEUE_ENVELOPES, MAX_COMMANDS_PER_ROUND, MAX_INBOUND_PER_ROUND};
