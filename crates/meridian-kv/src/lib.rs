#![deny(missing_docs)]
//! The replicated KV state machine of one range: etcd v3 semantics (MVCC
//! revisions, transactions, leases) over the range's data, with no IO or
//! clock of its own.
//!
//! ```text
//!  range data (user-key space of ApplyContext)
//!   m                    meta: current revision, compacted revision
//!   k ‖ key              latest KeyValue of every live key     (current reads)
//!   h ‖ esc(key) ‖ rev   every version and tombstone of a key  (historical reads)
//!   r ‖ rev ‖ sub        every event in revision order         (watch replay)
//!   l ‖ lease id         lease: TTL, last checkpointed remaining TTL
//!   a ‖ lease id ‖ key   keys attached to a lease
//!   q ‖ esc(name)        lock: holder and FIFO waiters   (see `locks`)
//!   s ‖ lease ‖ name     locks a session holds or waits for
//!   d ‖ name             locks under lock-delay
//! ```

pub mod carve;
pub mod command;
mod error;
pub mod keys;
pub mod lease_clock;
pub mod locks;
pub mod machine;
pub mod mvcc;
mod read;

pub use error::KvError;
pub use locks::LockEvent;
pub use machine::{EventSink, KvMachine};
pub use mvcc::{Event, EventKind, KeyValue, Meta, Mvcc};
pub use read::{DataRead, EngineRead};
