//! Lowe's just-in-time linearization search over one partition ("Testing
//! for linearizability", 2017), as in Porcupine.
//!
//! The call and return events of the partition's operations form a doubly
//! linked list sorted by time. Walking it from the head, a call is tried: if
//! the model accepts the operation from the current state and the pair
//! (linearized set, next state) has not been explored before, the operation
//! is linearized, its events are lifted out of the list and the walk restarts
//! at the head. Reaching the return of an operation not yet linearized is a
//! dead end: pop the last linearized operation, put its events back and try
//! the call after it. Reaching the end of the list means every completed
//! operation is linearized.
//!
//! Operations with an unknown outcome have no return event, so the walk never
//! has to linearize them: they take effect whenever it helps, or never.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::{Model, Operation};

/// How often, in steps, the search looks at the clock and the cancel flag.
const POLL_EVERY_STEPS: u64 = 1024;

/// Where a search must stop; shared by the partitions of one check.
pub(crate) struct Limits<'a> {
    pub max_steps: Option<u64>,
    pub started: Instant,
    pub deadline: Option<Instant>,
    /// Set when another partition found a violation: this one need not finish.
    pub cancel: &'a AtomicBool,
}

/// What one partition's search found. Operation indices are local to the
/// slice handed to [`search`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Linearizable,
    Violation { linearized: Vec<usize>, blocking: usize },
    OutOfSteps(u64),
    OutOfTime(Duration),
    Cancelled,
}

/// Which operations are linearized; with the state, the cache key.
#[derive(Clone, PartialEq, Eq, Hash)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(len: usize) -> Self {
        BitSet(vec![0; len.div_ceil(64)])
    }

    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
}

const HEAD: usize = 0;

/// The time-sorted events as a doubly linked list over indices: node 0 is
/// the head, `tail` the end, the nodes between are events. Lifting and
/// restoring in LIFO order keeps the links exact (dancing links).
struct Events {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per node: the operation and whether it is the call event.
    node_op: Vec<(usize, bool)>,
    call_node: Vec<usize>,
    ret_node: Vec<Option<usize>>,
    tail: usize,
}

impl Events {
    fn new<I, O>(ops: &[&Operation<I, O>]) -> Self {
        // (time, is_return, op): at equal times calls sort before returns, so
        // touching intervals count as concurrent.
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, i));
            if op.output.is_some() {
                events.push((op.ret.unwrap_or(u64::MAX), true, i));
            }
        }
        events.sort_unstable();
        let tail = events.len() + 1;
        let mut node_op = vec![(usize::MAX, false); tail + 1];
        let (mut call_node, mut ret_node) = (vec![0; ops.len()], vec![None; ops.len()]);
        for (pos, &(_, is_return, op)) in events.iter().enumerate() {
            node_op[pos + 1] = (op, !is_return);
            if is_return {
                ret_node[op] = Some(pos + 1);
            } else {
                call_node[op] = pos + 1;
            }
        }
        let next = (0..=tail).map(|n| (n + 1).min(tail)).collect();
        let prev = (0..=tail).map(|n: usize| n.saturating_sub(1)).collect();
        Events { next, prev, node_op, call_node, ret_node, tail }
    }

    fn unlink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = next;
        self.prev[next] = prev;
    }

    fn relink(&mut self, node: usize) {
        let (prev, next) = (self.prev[node], self.next[node]);
        self.next[prev] = node;
        self.prev[next] = node;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call_node[op]);
        if let Some(ret) = self.ret_node[op] {
            self.unlink(ret);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(ret) = self.ret_node[op] {
            self.relink(ret);
        }
        self.relink(self.call_node[op]);
    }
}

/// A linearized operation and the state before it, to backtrack to.
struct Frame<S> {
    op: usize,
    before: S,
}

/// Searches for a linearization of `ops` (one partition) under `limits`.
pub(crate) fn search<M: Model>(model: &M, ops: &[&Operation<M::Input, M::Output>], limits: &Limits<'_>) -> Outcome {
    let mut events = Events::new(ops);
    let mut linearized = BitSet::new(ops.len());
    let mut state = model.init();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    // Every step inserts at most one entry, so the step budget bounds it.
    let mut cache: HashSet<(BitSet, M::State)> = HashSet::new();
    let mut deepest: Option<(Vec<usize>, usize)> = None;
    let mut cursor = events.next[HEAD];
    let mut steps: u64 = 0;
    loop {
        if cursor == events.tail {
            return Outcome::Linearizable;
        }
        steps += 1;
        if limits.max_steps.is_some_and(|max| steps > max) {
            return Outcome::OutOfSteps(steps - 1);
        }
        if steps.is_multiple_of(POLL_EVERY_STEPS) {
            if limits.cancel.load(Ordering::Relaxed) {
                return Outcome::Cancelled;
            }
            let now = crate::check::now();
            if limits.deadline.is_some_and(|deadline| now >= deadline) {
                return Outcome::OutOfTime(now - limits.started);
            }
        }
        let (op, is_call) = events.node_op[cursor];
        if is_call {
            let operation = ops[op];
            if let Some(next) = model.step(&state, &operation.input, operation.output.as_ref()) {
                let mut with_op = linearized.clone();
                with_op.set(op);
                let key = (with_op, next);
                if !cache.contains(&key) {
                    cache.insert(key.clone());
                    let (with_op, next) = key;
                    stack.push(Frame { op, before: std::mem::replace(&mut state, next) });
                    linearized = with_op;
                    events.lift(op);
                    cursor = events.next[HEAD];
                    continue;
                }
            }
            cursor = events.next[cursor];
        } else {
            // The return of an operation that is not linearized: dead end.
            if deepest.as_ref().is_none_or(|(prefix, _)| stack.len() > prefix.len()) {
                deepest = Some((stack.iter().map(|f| f.op).collect(), op));
            }
            let Some(Frame { op: last, before }) = stack.pop() else {
                let (linearized, blocking) = deepest.unwrap_or_default();
                return Outcome::Violation { linearized, blocking };
            };
            state = before;
            linearized.clear(last);
            events.unlift(last);
            cursor = events.next[events.call_node[last]];
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::models::{Register, RegisterInput as In, RegisterOutput as Out};
    use crate::{check, Budget, CheckResult, History, Model, Operation, UnknownReason};

    fn write(value: u64, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(value, In::Write { key: "x".into(), value }, Out::Write, call, ret)
    }

    fn read(value: Option<u64>, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(0, In::Read { key: "x".into() }, Out::Read(value), call, ret)
    }

    fn verdict<M: Model>(model: &M, ops: Vec<Operation<M::Input, M::Output>>, budget: Budget) -> CheckResult {
        check(model, &History::from(ops), budget).unwrap()
    }

    #[test]
    fn empty_history_is_linearizable() {
        assert!(verdict(&Register, vec![], Budget::default()).is_ok());
    }

    #[test]
    fn concurrent_writes_need_backtracking() {
        // The search tries write 1 first (earlier call), then must undo that
        // order: the read in the middle saw 2, the final read saw 1.
        let ops = vec![write(1, 0, 10), write(2, 1, 10), read(Some(2), 2, 3), read(Some(1), 11, 12)];
        assert!(verdict(&Register, ops.clone(), Budget::default()).is_ok());
        let mut impossible = ops;
        impossible.push(read(Some(2), 13, 14));
        assert!(verdict(&Register, impossible, Budget::default()).is_violation());
    }

    #[test]
    fn touching_intervals_are_concurrent() {
        assert!(verdict(&Register, vec![write(1, 0, 5), read(None, 5, 6)], Budget::default()).is_ok());
        assert!(verdict(&Register, vec![write(1, 0, 5), read(None, 6, 7)], Budget::default()).is_violation());
    }

    #[test]
    fn unknown_write_is_linearizable_only_if_it_took_effect() {
        let unknown = Operation::unknown(2, In::Write { key: "x".into(), value: 2 }, 2);
        let ops = vec![write(1, 0, 1), unknown, read(Some(2), 5, 6), read(Some(1), 7, 8)];
        assert!(verdict(&Register, ops[..3].to_vec(), Budget::default()).is_ok());
        assert!(verdict(&Register, ops[..2].to_vec(), Budget::default()).is_ok(), "it may never take effect");
        assert!(verdict(&Register, ops, Budget::default()).is_violation(), "1 was overwritten");
    }

    /// A register that can be written once: a second write is illegal, so
    /// an unknown write that took effect can make a history unexplainable.
    struct WriteOnce;

    impl Model for WriteOnce {
        type State = Option<u64>;
        type Input = Option<u64>; // Some(v): write v; None: read
        type Output = Option<u64>; // the value read; None for writes

        fn init(&self) -> Option<u64> {
            None
        }

        fn step(&self, state: &Option<u64>, input: &Option<u64>, output: Option<&Option<u64>>) -> Option<Option<u64>> {
            match input {
                Some(v) => state.is_none().then_some(Some(*v)),
                None => output.is_none_or(|seen| seen == state).then_some(*state),
            }
        }
    }

    #[test]
    fn unknown_op_is_linearizable_only_if_it_never_took_effect() {
        let ops = vec![
            Operation::unknown(1, Some(1), 0),
            Operation::completed(2, Some(2), None, 1, 2),
            Operation::completed(3, None, Some(2), 3, 4),
        ];
        assert!(verdict(&WriteOnce, ops.clone(), Budget::default()).is_ok());
        // Reading 1 forces the unknown write to have happened: then the
        // completed write of 2 can never be legal.
        let mut forced = ops;
        forced.push(Operation::completed(4, None, Some(1), 0, 1));
        assert!(verdict(&WriteOnce, forced, Budget::default()).is_violation());
    }

    /// 40 concurrent writes and a read of a value nobody wrote: every order
    /// of every subset of writes is a dead end, 2^40 cache entries.
    fn exponential_history() -> Vec<Operation<In, Out>> {
        let mut ops: Vec<_> = (1..=40).map(|v| write(v, 0, 100)).collect();
        ops.push(read(Some(999), 0, 100));
        ops
    }

    #[test]
    fn step_budget_yields_unknown() {
        let result = verdict(&Register, exponential_history(), Budget { max_steps: Some(10_000), max_time: None });
        assert_eq!(result, CheckResult::Unknown { reason: UnknownReason::StepBudget { partition: "*".into(), steps: 10_000 } });
    }

    #[test]
    fn time_budget_yields_unknown() {
        let result = verdict(&Register, exponential_history(), Budget { max_steps: None, max_time: Some(Duration::from_millis(50)) });
        let CheckResult::Unknown { reason: UnknownReason::TimeBudget { elapsed, .. } } = result else { panic!("{result:?}") };
        assert!(elapsed < Duration::from_secs(5), "overshot the deadline: {elapsed:?}");
    }
}
