//! Entry points: check a whole history, or its partitions in parallel.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::search::{search, Limits, Outcome};
use crate::{CheckError, CheckResult, History, Model, Operation, Partition, UnknownReason, Violation};

/// How much work a check may do before it answers
/// [`CheckResult::Unknown`]. Linearizability checking is NP-complete; the
/// budget is what guarantees an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Budget {
    /// Search steps allowed per partition (each step tries or backtracks one
    /// operation and adds at most one cache entry, so this also bounds
    /// memory). Deterministic: the same history always gets the same answer.
    pub max_steps: Option<u64>,
    /// Wall-clock time allowed for the whole check, all partitions together.
    pub max_time: Option<Duration>,
}

impl Default for Budget {
    /// Two million steps per partition and one minute overall.
    fn default() -> Self {
        Budget { max_steps: Some(2_000_000), max_time: Some(Duration::from_secs(60)) }
    }
}

impl Budget {
    /// This budget with at most `steps` search steps per partition.
    pub fn with_max_steps(self, steps: u64) -> Self {
        Budget { max_steps: Some(steps), ..self }
    }

    /// This budget with at most `time` for the whole check.
    pub fn with_max_time(self, time: Duration) -> Self {
        Budget { max_time: Some(time), ..self }
    }
}

/// The crate's one wall-clock read. The checker runs in tests and the chaos
/// runner, never in the replicated core, and the clock only decides when to
/// give up, never what a definite verdict is.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Checks the whole history as one partition, ignoring
/// [`Model::partition`].
pub fn check<M: Model>(model: &M, history: &History<M::Input, M::Output>, budget: Budget) -> Result<CheckResult, CheckError> {
    history.validate()?;
    let cancel = AtomicBool::new(false);
    let limits = limits(budget, &cancel);
    let verdict = check_one(model, &history.ops, &Partition::whole(history.ops.len()), &limits);
    Ok(verdict.expect("nothing cancels a single-partition check"))
}

/// Checks each part of [`Model::partition`] separately, on at most
/// `available_parallelism` threads, and combines the verdicts: any violation
/// makes a violation, otherwise any unknown makes an unknown.
///
/// Once a partition is found in violation the others stop early, so when
/// several partitions are broken which one is reported may vary between
/// runs; it is the first in partition order among those that finished.
pub fn check_partitioned<M>(model: &M, history: &History<M::Input, M::Output>, budget: Budget) -> Result<CheckResult, CheckError>
where
    M: Model + Sync,
    M::Input: Sync,
    M::Output: Sync,
{
    history.validate()?;
    let partitions = model.partition(&history.ops);
    for partition in &partitions {
        if let Some(&index) = partition.ops.iter().find(|&&i| i >= history.ops.len()) {
            return Err(CheckError::PartitionOutOfRange { partition: partition.label.clone(), index, len: history.ops.len() });
        }
    }
    let cancel = AtomicBool::new(false);
    let limits = limits(budget, &cancel);
    let workers = std::thread::available_parallelism().map_or(1, NonZeroUsize::get).min(partitions.len());
    let claimed = AtomicUsize::new(0);
    let mut verdicts: Vec<(usize, Option<CheckResult>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = claimed.fetch_add(1, Ordering::Relaxed);
                        let Some(partition) = partitions.get(i) else { return mine };
                        let verdict = check_one(model, &history.ops, partition, &limits);
                        if verdict.as_ref().is_some_and(CheckResult::is_violation) {
                            cancel.store(true, Ordering::Relaxed);
                        }
                        mine.push((i, verdict));
                    }
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))).collect()
    });
    verdicts.sort_by_key(|&(i, _)| i);
    Ok(combine(verdicts.into_iter().filter_map(|(_, verdict)| verdict)))
}

fn limits(budget: Budget, cancel: &AtomicBool) -> Limits<'_> {
    let started = now();
    Limits { max_steps: budget.max_steps, started, deadline: budget.max_time.map(|t| started + t), cancel }
}

/// Checks one partition; `None` when cancelled because another failed.
fn check_one<M: Model>(
    model: &M,
    ops: &[Operation<M::Input, M::Output>],
    partition: &Partition,
    limits: &Limits<'_>,
) -> Option<CheckResult> {
    let local: Vec<_> = partition.ops.iter().map(|&i| &ops[i]).collect();
    let label = || partition.label.clone();
    Some(match search(model, &local, limits) {
        Outcome::Linearizable => CheckResult::Ok,
        Outcome::Violation { linearized, blocking } => CheckResult::Violation(Violation {
            partition: label(),
            linearized: linearized.into_iter().map(|i| partition.ops[i]).collect(),
            blocking: partition.ops[blocking],
        }),
        Outcome::OutOfSteps(steps) => CheckResult::Unknown { reason: UnknownReason::StepBudget { partition: label(), steps } },
        Outcome::OutOfTime(elapsed) => CheckResult::Unknown { reason: UnknownReason::TimeBudget { partition: label(), elapsed } },
        Outcome::Cancelled => return None,
    })
}

fn combine(verdicts: impl IntoIterator<Item = CheckResult>) -> CheckResult {
    let mut unknown = None;
    for verdict in verdicts {
        match verdict {
            CheckResult::Violation(_) => return verdict,
            CheckResult::Unknown { .. } => {
                unknown.get_or_insert(verdict);
            }
            CheckResult::Ok => {}
        }
    }
    unknown.unwrap_or(CheckResult::Ok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::{Register, RegisterInput as In, RegisterOutput as Out};

    fn write(key: &str, value: u64, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(1, In::Write { key: key.into(), value }, Out::Write, call, ret)
    }

    fn read(key: &str, value: Option<u64>, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(2, In::Read { key: key.into() }, Out::Read(value), call, ret)
    }

    /// Five keys with interleaved, overlapping operations; `stale` makes key
    /// "k3" read an overwritten value.
    fn five_keys(stale: bool) -> History<In, Out> {
        let mut ops = Vec::new();
        for k in 0..5u64 {
            let key = format!("k{k}");
            let t = k * 3;
            ops.push(write(&key, 10 * k + 1, t, t + 10));
            ops.push(write(&key, 10 * k + 2, t + 11, t + 20));
            let seen = if stale && k == 3 { 10 * k + 1 } else { 10 * k + 2 };
            ops.push(read(&key, Some(seen), t + 30, t + 31));
        }
        History::from(ops)
    }

    #[test]
    fn partitions_are_checked_independently_and_combined() {
        assert_eq!(check_partitioned(&Register, &five_keys(false), Budget::default()).unwrap(), CheckResult::Ok);
        let CheckResult::Violation(v) = check_partitioned(&Register, &five_keys(true), Budget::default()).unwrap() else {
            panic!("stale read on k3 not caught");
        };
        assert_eq!(v.partition, "k3");
        assert_eq!(v.blocking, 11, "{}", v.describe(&five_keys(true)));
    }

    #[test]
    fn partitioned_and_whole_checks_agree() {
        for stale in [false, true] {
            let history = five_keys(stale);
            let whole = check(&Register, &history, Budget::default()).unwrap();
            let parts = check_partitioned(&Register, &history, Budget::default()).unwrap();
            assert_eq!(whole.is_ok(), parts.is_ok(), "stale={stale}");
            assert_eq!(whole.is_violation(), stale);
        }
    }

    #[test]
    fn combine_prefers_violation_then_unknown() {
        let unknown = CheckResult::Unknown { reason: UnknownReason::StepBudget { partition: "a".into(), steps: 1 } };
        let violation = CheckResult::Violation(Violation { partition: "b".into(), linearized: vec![], blocking: 0 });
        assert_eq!(combine([CheckResult::Ok, unknown.clone(), violation.clone()]), violation);
        assert_eq!(combine([CheckResult::Ok, unknown.clone()]), unknown);
        assert_eq!(combine([]), CheckResult::Ok);
    }

    struct BadPartition;

    impl Model for BadPartition {
        type State = ();
        type Input = ();
        type Output = ();
        fn init(&self) {}
        fn step(&self, _: &(), _: &(), _: Option<&()>) -> Option<()> {
            Some(())
        }
        fn partition(&self, _: &[Operation<(), ()>]) -> Vec<Partition> {
            vec![Partition { label: "x".into(), ops: vec![7] }]
        }
    }

    #[test]
    fn partition_naming_missing_operation_is_an_error() {
        let history = History::from(vec![Operation::completed(1, (), (), 0, 1)]);
        let err = check_partitioned(&BadPartition, &history, Budget::default()).unwrap_err();
        assert!(matches!(err, CheckError::PartitionOutOfRange { index: 7, len: 1, .. }), "{err}");
    }
}
