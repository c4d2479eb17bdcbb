//! Meridian's node-to-node transport seam: the [`Transport`] trait, the
//! wire envelope and the in-memory network of the simulation. It depends
//! on no IO stack (no tokio, quinn or rustls), so the core crates that use
//! it stay IO-free by construction; the QUIC driver is the
//! `meridian-transport-quic` crate.
//!
//! ```text
//!  raftstore poll round ──send(to, [RaftEnvelope])──► dyn Transport
//!        ▲                                              ├── QuicTransport (quinn, mTLS, one
//!        │ inbound RaftEnvelope (bounded channel)       │   connection per peer, snapshots on
//!        └──────────────────────────────────────────────┤   their own stream)
//!                                                       └── MemNetwork (simulation: seeded
//!                                                           drop, delay, reorder, partitions)
//! ```
//!
//! A transport never blocks the poll loop: `send` queues, and delivery
//! failures come back as [`Feedback`] so the raftstore can call raft-rs's
//! `report_unreachable` / `report_snapshot`.

#![deny(missing_docs)]

mod envelope;
mod error;
pub mod mem;
mod transport;

pub use envelope::{PeerBatch, RaftEnvelope, SnapshotChunk, MAX_FRAME_BYTES};
pub use error::TransportError;
pub use transport::{Feedback, SnapshotStream, Transport};
