//! What a check answers.

use std::fmt::{Debug, Write};
use std::time::Duration;

use crate::History;

/// The verdict on a history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckResult {
    /// Every completed operation can be linearized.
    Ok,
    /// No linearization exists.
    Violation(Violation),
    /// The budget ran out before the search could decide.
    Unknown {
        /// Which budget, and in which partition.
        reason: UnknownReason,
    },
}

impl CheckResult {
    /// Whether the history is linearizable.
    pub fn is_ok(&self) -> bool {
        matches!(self, CheckResult::Ok)
    }

    /// Whether the history was proven not linearizable.
    pub fn is_violation(&self) -> bool {
        matches!(self, CheckResult::Violation(_))
    }

    /// Whether the search ran out of budget.
    pub fn is_unknown(&self) -> bool {
        matches!(self, CheckResult::Unknown { .. })
    }
}

/// Why a check gave up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UnknownReason {
    /// The partition used up [`Budget::max_steps`](crate::Budget::max_steps).
    StepBudget {
        /// The partition that gave up.
        partition: String,
        /// Steps taken.
        steps: u64,
    },
    /// The check used up [`Budget::max_time`](crate::Budget::max_time).
    TimeBudget {
        /// The partition that gave up.
        partition: String,
        /// Time spent since the check started.
        elapsed: Duration,
    },
}

/// Evidence that a partition is not linearizable. Operation indices refer to
/// [`History::ops`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The partition (e.g. key) that is not linearizable.
    pub partition: String,
    /// The longest linearization the search found, in linearization order.
    pub linearized: Vec<usize>,
    /// A completed operation that returned before it could be linearized
    /// after `linearized`: the search's dead end at that depth.
    pub blocking: usize,
}

impl Violation {
    /// A human-readable report: the linearizable prefix, then the operation
    /// that could not follow it.
    pub fn describe<I: Debug, O: Debug>(&self, history: &History<I, O>) -> String {
        let mut out = format!("partition {:?} is not linearizable; longest linearization:\n", self.partition);
        for &i in &self.linearized {
            let _ = writeln!(out, "  #{i}: {:?}", history.ops[i]);
        }
        let _ = writeln!(out, "then #{} cannot be linearized: {:?}", self.blocking, history.ops[self.blocking]);
        out
    }
}
