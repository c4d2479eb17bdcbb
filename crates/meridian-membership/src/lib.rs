//! Meridian's node directory: every node the cluster knows, by id, with
//! its advertised addresses, its labels (`region`, `zone`, `host`), its role
//! and how alive it seems.
//!
//! ```text
//!   initial cluster (config) ─┐
//!   meta range node records ──┼──► NodeDirectory ──► request routing (client addresses)
//!   gossip ([`agent`]) ───────┘        │            ├─► peer transport (peer addresses)
//!   phi-accrual detector ([`phi`]) ─► liveness
//!                                      │            ├─► membership planning (who may be added)
//!                                      └─ liveness ─┴─► MemberList, status, placement
//! ```
//!
//! The directory is advice, never authority: Raft membership lives in the
//! range descriptors, and no safety property depends on what the directory
//! says. It does no IO: addresses are kept as `host:port` text (DNS names
//! allowed) and resolved by whoever dials, at every dial.

#![deny(missing_docs)]

pub mod agent;
mod directory;
pub mod gossip;
mod identity;
pub mod phi;
pub mod wire;

pub use directory::{DirectoryError, Labels, Liveness, NodeDirectory, NodeRecord, NodeRole, MAX_NODES};
pub use identity::{check_host_port, IdentityError, NodeIdentity};
