//! Failures already reported and not fixed yet. The library crates are
//! not this crate's to change, so the fuzz targets that hit these keep
//! running in CI with them recognised here: a target still fails on
//! anything else. Each finding has a hand-written reproduction in
//! `tests/known_findings.rs` (`cargo test -p meridian-fuzz --test
//! known_findings -- --ignored`). Remove its entries when it is fixed.
//!
//! Add an entry as `Known { id: "F8", target, site, message }`. Entries
//! match a failure's [`FailureKind::signature`](crate::FailureKind::signature)
//! by substrings, without line numbers (a fix moves lines). Debug builds
//! (overflow checks on) panic at the overflow itself; release builds wrap
//! and panic further on, hence the "release:" entries.

use crate::harness::Failure;

#[derive(Debug)]
pub struct Known {
    /// F1, F2, …: the finding, as numbered in `tests/known_findings.rs`.
    pub id: &'static str,
    pub target: &'static str,
    /// Substring of the signature naming the panic site ("" for invariants).
    pub site: &'static str,
    /// Substring of the signature's message.
    pub message: &'static str,
}

/// Empty: F1–F7 (start-up panics on corrupt-but-checksummed records) are
/// fixed and kept as regression tests in `tests/known_findings.rs`.
pub const KNOWN: &[Known] = &[];

/// The known finding `f` (a failure of `target`) is an instance of.
pub fn classify(target: &str, f: &Failure) -> Option<&'static Known> {
    let sig = f.kind.signature();
    KNOWN.iter().find(|k| k.target == target && sig.contains(k.site) && sig.contains(k.message))
}
