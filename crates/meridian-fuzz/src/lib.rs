//! Deterministic, coverage-less fuzzing of the decoders that take
//! untrusted bytes, on stable Rust (no cargo-fuzz, no sanitizers).
//!
//! ```text
//!  (seed, target, iteration) ──► ChaCha8 ──► input: random bytes
//!                                              │    | target's structured generator
//!                                              │    | valid seed + stacked mutations
//!                                              │      (bit flips, insert/delete, truncate,
//!                                              │       splice, huge varints, lying length
//!                                              │       prefixes re-wrapped in true outer ones)
//!                                              ▼
//!            catch_unwind(target.run(input))  +  CountingAlloc peak ≤ bound
//!                                              │
//!               panic / invariant / peak ──────┴──► minimize → target/fuzz-failures/*.bin
//! ```
//!
//! Targets (see [`targets`]): peer frames and raft messages, on-disk
//! records and the store's start-up path, snapshot payloads, KV commands
//! and queries, etcd request protos.
//!
//! Running it:
//!
//! ```text
//! cargo test -p meridian-fuzz                     # CI: 5,000 inputs per target, fixed seed
//! cargo run -p meridian-fuzz -- --list            # targets
//! cargo run -p meridian-fuzz -- --target all --iterations 1000000 --seed 7
//! cargo run -p meridian-fuzz -- --target store-open --replay <file from fuzz-failures/>
//! ```
//!
//! The dev profile keeps overflow checks (an overflow is a panic the
//! fuzzer reports); `--release` runs faster but wraps silently.
//!
//! Inputs depend only on (seed, target name, iteration), so every failure
//! replays from its seed and iteration, or from the saved file. The
//! allocation bound only holds where [`CountingAlloc`] is the global
//! allocator: the `meridian-fuzz` binary and `tests/fuzz_short.rs`.

// A driver, not a core crate: clocks only time progress output and the
// slowest input, never decide an input.
#![allow(clippy::disallowed_methods)]

pub mod alloc_counter;
pub mod harness;
pub mod known;
pub mod mutate;
pub mod proto_tree;
pub mod target;
pub mod targets;

pub use alloc_counter::CountingAlloc;
pub use harness::{run_one, run_target, Failure, FailureKind, RunConfig, TargetReport};
pub use target::{Target, Verdict};
