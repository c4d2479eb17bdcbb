//! The checks run on a finished run's records. Each returns findings
//! (violations of a guarantee) and notes (what could not be decided, and
//! diagnostics that explain a finding).
//!
//! ```text
//!  register history ──► per-key linearizability (meridian-check, Register)
//!                       + stale-read diagnostic (a read older than an acknowledged overwrite)
//!  lock records     ──► fenced-mutex model (grants, in-process Fence)
//!                       + guarded-txn rules (real-time token order, resource key history)
//!  watch logs       ──► per-key order, completeness, agreement, final value
//! ```

pub mod locks;
pub mod registers;
pub mod watch;

use serde::Serialize;

/// A guarantee found broken.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// Which check: `linearizability`, `locks`, `watch`, `recovery`, ...
    pub check: &'static str,
    pub message: String,
}

impl Finding {
    pub fn new(check: &'static str, message: impl Into<String>) -> Finding {
        Finding { check, message: message.into() }
    }
}

/// What the checks concluded.
#[derive(Debug, Default)]
pub struct Verdict {
    pub findings: Vec<Finding>,
    /// Undecided checks (budget ran out) and diagnostics.
    pub notes: Vec<String>,
    /// Long explanations for the report file.
    pub details: Vec<String>,
}

impl Verdict {
    pub fn absorb(&mut self, other: Verdict) {
        self.findings.extend(other.findings);
        self.notes.extend(other.notes);
        self.details.extend(other.details);
    }
}

/// At most this many examples of one kind of finding in a message.
pub const MAX_EXAMPLES: usize = 5;
