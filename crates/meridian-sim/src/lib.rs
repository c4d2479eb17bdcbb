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
//!
//! Two randomized runs share the cluster and its nemesis: [`random_run`]
//! over a register machine (raft safety, durability, linearizable reads)
//! and [`kv_random_run`] over `meridian_kv::KvMachine` with the server's
//! lease keeper on simulated time (locks, fencing tokens, lease expiry,
//! lock-delay, event streams; see [`kv`]).
//!
//! The crate also holds two benchmarks: [`bench`](mod@bench) (group
//! commit on the cluster over RocksDB) and [`bench_gossip`] (the
//! membership agents' gossip cost and crash-detection times, on a virtual
//! network of their own).

pub mod bench;
pub mod bench_gossip;
pub mod carve_run;
mod checker;
mod cluster;
pub mod kv;
pub mod merge_run;
pub mod promote_run;
mod random_run;
pub mod region_run;
mod seeds;

pub use checker::Checker;
pub use cluster::{Answer, Cluster, EngineKind, Machines, SimConfig};
pub use kv::{kv_random_run, KvRunReport};
pub use promote_run::{promote_run, PromoteReport};
pub use random_run::{random_run, RunReport};
pub use region_run::{region_run, witness_region_run};
pub use seeds::seeds_from_env;
