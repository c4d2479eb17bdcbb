//! Operators: what the scheduler decided for one range, as a list of
//! steps, and the machine that runs one step after the other against what
//! the range's leader reports, with a timeout per step and a roll-back
//! when a step stalls.
//!
//! ```text
//!  add      AddLearner(n) → CatchUp(n) → Promote(n)
//!  replace  AddLearner(to) → CatchUp(to) → Promote(to) → [TransferLeader(x) if `from` leads] → Remove(from)
//!  remove   [TransferLeader(x) if `from` leads] → Remove(from)
//!  move     TransferLeader(to)
//!  learner  AddLearner(n) → CatchUp(n)      (a read replica; stays a learner)
//! ```
//!
//! A step is done when the range's report shows its effect, so issuing a
//! step again (after a lost answer, a new placement-driver leader) is
//! harmless. Promote and Remove each change one voter; a promotion or
//! removal counts as done only once the range has left any joint
//! configuration it entered for it (`RangeView::joint`). `CatchUp` is a
//! wait: "issuing" it means checking the learner's progress.

use std::fmt;

use crate::view::{ClusterView, RangeView};

/// One step of an operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Step {
    /// Add `node` as a learner.
    AddLearner(u64),
    /// Wait until the learner on `node` has caught up with the log.
    CatchUp(u64),
    /// Make the learner on `node` a voter.
    Promote(u64),
    /// Hand the range's leadership to `node`.
    TransferLeader(u64),
    /// Remove `node`'s replica (voter or learner).
    Remove(u64),
}

impl Step {
    /// Whether `range`'s report shows this step done.
    pub fn done(&self, range: &RangeView) -> bool {
        match *self {
            Step::AddLearner(n) => range.holds(n),
            Step::CatchUp(n) => range.caught_up.contains(&n) || range.voters.contains(&n),
            Step::Promote(n) => range.voters.contains(&n) && !range.joint,
            Step::TransferLeader(n) => range.leader == n,
            Step::Remove(n) => !range.holds(n) && !range.joint,
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::AddLearner(n) => write!(f, "add learner on node {n}"),
            Step::CatchUp(n) => write!(f, "wait for node {n} to catch up"),
            Step::Promote(n) => write!(f, "promote node {n} to voter"),
            Step::TransferLeader(n) => write!(f, "transfer leadership to node {n}"),
            Step::Remove(n) => write!(f, "remove node {n}"),
        }
    }
}

/// What an operator does, in one word (for listings and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Kind {
    /// A missing replica added.
    Add {
        /// The node that gets it.
        to: u64,
    },
    /// A replica moved from one node to another.
    Replace {
        /// The node it leaves.
        from: u64,
        /// The node it goes to.
        to: u64,
    },
    /// An excess replica removed.
    Remove {
        /// The node it leaves.
        from: u64,
    },
    /// A leadership moved.
    TransferLeader {
        /// The new leader.
        to: u64,
    },
    /// A non-voting replica (a read replica) added.
    AddLearner {
        /// The node that gets it.
        to: u64,
    },
}

/// The scheduler's decision for one range.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Operator {
    /// The range.
    pub range_id: u64,
    /// What it does.
    pub kind: Kind,
    /// Its steps, in order.
    pub steps: Vec<Step>,
    /// Why it was made (shown to operators).
    pub reason: String,
}

impl Operator {
    /// Adds a replica on `to`.
    pub fn add(range: &RangeView, to: u64, reason: impl Into<String>) -> Operator {
        Operator {
            range_id: range.id,
            kind: Kind::Add { to },
            steps: vec![Step::AddLearner(to), Step::CatchUp(to), Step::Promote(to)],
            reason: reason.into(),
        }
    }

    /// Moves the replica on `from` to `to` (added first, removed last);
    /// the leadership leaves `from` first if it holds it, for `to`.
    pub fn replace(range: &RangeView, from: u64, to: u64, reason: impl Into<String>) -> Operator {
        let mut steps = vec![Step::AddLearner(to), Step::CatchUp(to), Step::Promote(to)];
        if range.leader == from {
            steps.push(Step::TransferLeader(to));
        }
        steps.push(Step::Remove(from));
        Operator { range_id: range.id, kind: Kind::Replace { from, to }, steps, reason: reason.into() }
    }

    /// Removes the replica on `from`; the leadership leaves it first for
    /// `successor` if it holds it.
    pub fn remove(range: &RangeView, from: u64, successor: u64, reason: impl Into<String>) -> Operator {
        let mut steps = Vec::new();
        if range.leader == from {
            steps.push(Step::TransferLeader(successor));
        }
        steps.push(Step::Remove(from));
        Operator { range_id: range.id, kind: Kind::Remove { from }, steps, reason: reason.into() }
    }

    /// Adds a replica on `to` that stays a learner (a read replica).
    pub fn add_learner(range: &RangeView, to: u64, reason: impl Into<String>) -> Operator {
        Operator {
            range_id: range.id,
            kind: Kind::AddLearner { to },
            steps: vec![Step::AddLearner(to), Step::CatchUp(to)],
            reason: reason.into(),
        }
    }

    /// Moves the leadership to `to`.
    pub fn transfer(range: &RangeView, to: u64, reason: impl Into<String>) -> Operator {
        Operator { range_id: range.id, kind: Kind::TransferLeader { to }, steps: vec![Step::TransferLeader(to)], reason: reason.into() }
    }

    /// Every node the operator involves (for per-node concurrency).
    pub fn nodes(&self) -> Vec<u64> {
        self.kind.nodes()
    }
}

impl Kind {
    /// Every node an operator of this kind involves.
    pub fn nodes(&self) -> Vec<u64> {
        match *self {
            Kind::Add { to } | Kind::TransferLeader { to } | Kind::AddLearner { to } => vec![to],
            Kind::Replace { from, to } => vec![from, to],
            Kind::Remove { from } => vec![from],
        }
    }
}

/// Where a running operator is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Issue this step (again: issuing is idempotent).
    Issue(Step),
    /// Do not issue this step now: removing the replica would leave the
    /// range without a quorum of live voters (a node died since the
    /// decision). Asked again next round; rolled back at the timeout.
    Hold(Step),
    /// Every step is done.
    Done,
    /// A step stalled past its timeout: issue these steps to undo what
    /// was done (possibly none), then forget the operator.
    RollBack {
        /// The step that stalled.
        stalled: Step,
        /// Steps that undo what was done.
        undo: Vec<Step>,
    },
}

/// An operator being run (recorded as it runs, so the next leader of the
/// meta range takes it over).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Running {
    /// The operator.
    pub op: Operator,
    /// The step it is at.
    pub at: usize,
    /// When that step began (ms).
    pub since_ms: u64,
}

impl Running {
    /// Starts `op` at `now_ms`.
    pub fn start(op: Operator, now_ms: u64) -> Running {
        Running { op, at: 0, since_ms: now_ms }
    }

    /// Moves past every step `range` shows done and says what to do now,
    /// checking a removal against `view` as it is now.
    pub fn advance(&mut self, range: &RangeView, view: &ClusterView, now_ms: u64, step_timeout_ms: u64) -> Progress {
        while let Some(step) = self.op.steps.get(self.at) {
            if !step.done(range) {
                break;
            }
            self.at += 1;
            self.since_ms = now_ms;
        }
        let Some(&step) = self.op.steps.get(self.at) else { return Progress::Done };
        let added = match self.op.kind {
            Kind::Add { to } | Kind::Replace { to, .. } | Kind::AddLearner { to } => Some(to),
            _ => None,
        };
        let adding = matches!(step, Step::AddLearner(_) | Step::CatchUp(_) | Step::Promote(_));
        // The node being added turned dead, suspect or draining since the
        // decision — or, while its copy is still streaming, its disk
        // filled up: give up now rather than at the timeout.
        let streaming = matches!(step, Step::AddLearner(_) | Step::CatchUp(_));
        let fit = |n: &crate::view::NodeView| {
            if streaming {
                crate::scheduler::may_hold(view, range, n)
            } else {
                crate::scheduler::fit_for(view, range, n)
            }
        };
        let target_gone = adding && added.is_some_and(|n| !view.nodes.get(&n).is_some_and(fit));
        if !target_gone && now_ms.saturating_sub(self.since_ms) <= step_timeout_ms {
            return self.check(step, range, view);
        }
        // A learner added for this operator and not promoted yet is taken
        // away again; once promoted, the range has one voter more than
        // before, which the next round of the scheduler corrects.
        let undo = match (added, adding) {
            (Some(n), true) if range.learners.contains(&n) => vec![Step::Remove(n)],
            _ => Vec::new(),
        };
        Progress::RollBack { stalled: step, undo }
    }

    /// `step` as it may be issued now, against the view as it is now: a
    /// promotion or a removal that would leave no majority surely alive is
    /// held; a removal of the range's leader first hands the leadership to
    /// a live voter (the leader may have moved since the decision).
    fn check(&self, step: Step, range: &RangeView, view: &ClusterView) -> Progress {
        match step {
            Step::Promote(n) => {
                let mut after = range.voters.clone();
                after.insert(n);
                let alive = view.nodes.get(&n).is_some_and(|v| v.liveness == meridian_membership::Liveness::Alive);
                if !alive || !view.has_live_quorum(&after) {
                    return Progress::Hold(step);
                }
            }
            Step::Remove(n) if range.voters.contains(&n) => {
                let mut after = range.voters.clone();
                after.remove(&n);
                if !view.has_live_quorum(&after) {
                    return Progress::Hold(step);
                }
                if range.leader == n {
                    let heir = after
                        .iter()
                        .copied()
                        .find(|v| view.nodes.get(v).is_some_and(crate::view::NodeView::eligible) && range.caught_up.contains(v));
                    return match heir {
                        Some(h) => Progress::Issue(Step::TransferLeader(h)),
                        None => Progress::Hold(step),
                    };
                }
            }
            // Only to a node its leader hears from and that has the log:
            // while raft transfers leadership it drops every proposal, and
            // a transfer to a node that died a moment ago (the gossip not
            // knowing yet) would do so until it failed, again each round.
            Step::TransferLeader(n) if range.leader != n && !range.caught_up.contains(&n) => return Progress::Hold(step),
            _ => {}
        }
        Progress::Issue(step)
    }
}
