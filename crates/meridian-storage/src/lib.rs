#![deny(missing_docs)]
//! Meridian's storage seam.
//!
//! ```text
//!   raftstore ──► PeerStorage (raft::Storage for one range, cached bounds)
//!                     │ reads                     ▲ staged writes
//!                     ▼                           │
//!                 dyn Engine ◄──── WriteBatch (one synced batch per poll round)
//!                  ├── CachedEngine (a bounded cache of data point reads,
//!                  │                 in front of either engine below)
//!                  ├── RocksEngine  (production, crate meridian-storage-rocks)
//!                  └── MemEngine    (simulation: models fsync and crashes)
//! ```
//!
//! Every key carries the range id (see [`keys`]), so one engine holds
//! thousands of ranges and one [`WriteBatch`] can persist a whole poll round
//! of them atomically. Both engines pass the same conformance suite
//! ([`conformance`]). This crate depends on no IO stack: the RocksDB engine
//! is the `meridian-storage-rocks` crate, so the core crates above it cannot
//! reach RocksDB even by accident.

mod cache;
mod codec;
pub mod conformance;
mod engine;
mod error;
pub mod failing;
pub mod keys;
mod mem;
mod peer_storage;
pub mod snapshot;
mod state;

pub use cache::{CacheStats, CachedEngine, DEFAULT_READ_CACHE_BYTES};
pub use engine::{Cf, Engine, EngineSnapshot, WriteBatch, WriteOp};
pub use error::{StorageError, StorageResult};
pub use mem::MemEngine;
pub use peer_storage::{EntryCacheBudget, PeerStorage, SnapshotRequest};
pub use state::{ApplyState, KeyInterval, RaftLocalState, RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};
