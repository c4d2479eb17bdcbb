//! Deterministic simulation of whole Meridian nodes in one process.
//!
//! ```text
//!   seed ─► ChaCha8 RNG ─► workload + nemesis schedule
//!                 │
//!   Cluster: step() = deliver due messages ─► tick every store ─► poll
//!     ├── Store (node 1) ─┐
//!     ├── Store (node 2) ─┼─ MemNetwork (seeded drop/delay/partition)
//!     └── Store (node 3) ─┘
//!   Checker: election safety, same entries in the same order, no lost
//!            acknowledged write — checked after every step
//! ```
//!
//! Everything a run does follows from its seed and logical time, so a
//! failure prints the seed and rerunning with it replays the same run.

pub mod bench;
mod checker;
mod cluster;
mod random_run;

pub use checker::Checker;
pub use cluster::{Answer, Cluster, EngineKind, SimConfig};
pub use random_run::{random_run, RunReport};
