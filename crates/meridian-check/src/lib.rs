//! A linearizability checker for histories recorded against Meridian, in the
//! style of Jepsen's Knossos and Porcupine: Wing & Gong's search with Lowe's
//! just-in-time linearization and state cache, made P-compositional.
//!
//! ```text
//!  History<I, O>  ──Model::partition──►  Partition "a" ─┐   std::thread::scope,
//!  (JSON save/load)                       Partition "b" ─┼─► ≤ available_parallelism
//!                                         Partition "c" ─┘   workers, one search each
//!                                                               │
//!  search, one partition:                                       ▼
//!   call/return events ──► doubly linked ──► try the earliest pending call whose
//!   sorted by time          event list        step is legal; lift it and restart;
//!                                             a return of an unlinearized op means
//!                                             backtrack (explicit stack); prune with
//!                                             a cache of (linearized bitset, state)
//!                                                               │
//!  combine: any Violation ► Violation; else any Unknown ► Unknown; else Ok
//! ```
//!
//! An [`Operation`] whose outcome is unknown (`output: None`, e.g. a timeout)
//! may take effect at any time after its invocation, or never: the history is
//! linearizable when every *completed* operation can be linearized. Every
//! search runs under a [`Budget`], so a check answers [`CheckResult::Unknown`]
//! rather than hang.
//!
//! ```
//! use meridian_check::models::{Register, RegisterInput as In, RegisterOutput as Out};
//! use meridian_check::{check_partitioned, Budget, History, Operation};
//!
//! let history = History::from(vec![
//!     Operation::completed(1, In::Write { key: "k".into(), value: 1 }, Out::Write, 0, 10),
//!     Operation::completed(2, In::Read { key: "k".into() }, Out::Read(Some(1)), 11, 12),
//! ]);
//! assert!(check_partitioned(&Register, &history, Budget::default()).unwrap().is_ok());
//! ```
#![warn(missing_docs)]

mod check;
mod error;
mod history;
mod model;
pub mod models;
mod result;
mod search;

pub use check::{check, check_partitioned, Budget};
pub use error::CheckError;
pub use history::{History, Operation};
pub use model::{Model, Partition};
pub use result::{CheckResult, UnknownReason, Violation};
