//! A lease-based mutex that hands out fencing tokens, together with the
//! downstream resource that checks them (one lock per history).
//!
//! # Semantics
//!
//! The state is the [`Holder`] of the latest grant, the set of tokens granted
//! so far and the highest token the resource has accepted.
//!
//! - **`Acquire` → `Granted { token }`** is legal iff `token` is greater than
//!   every token granted before: grants strictly increase. It is legal even
//!   while the lock is held, because a holder's lease can expire unobserved
//!   (a paused or partitioned client); the new grant preempts it. Overlapping
//!   critical sections are therefore allowed *in time*; fencing is what must
//!   keep their *effects* apart. An `Acquire` with unknown outcome, if it took
//!   effect, granted a token nobody saw: the holder becomes
//!   [`Holder::Unknown`].
//! - **`Release { token }` → `Released`** is legal iff `token` was granted. It
//!   frees the lock if `token` is the latest grant and is a no-op otherwise (a
//!   preempted holder releasing late).
//! - **`FencedWrite { token, value }` → `Write { accepted }`** is legal iff
//!   `token` was granted (a write cannot carry a token before its grant) and
//!   `accepted` is what the resource must answer, depending on [`FenceMode`]:
//!   - [`FenceMode::Resource`]: accepted iff `token` ≥ the highest accepted
//!     token. The resource only knows the tokens it has seen, so a preempted
//!     holder's write is accepted until the new holder's first accepted write,
//!     and rejected from then on.
//!   - [`FenceMode::Strict`]: accepted iff `token` is the latest grant and the
//!     lock is not released. Once a newer grant (or the release) exists, older
//!     holders' writes must be rejected: critical sections never overlap in
//!     effect. This needs a resource that learns of grants (e.g. a compare on
//!     the lock key's revision in the same transaction).
//!
//!   An accepted write raises the highest accepted token, so in both modes
//!   the resource never accepts a token lower than one it already accepted.
//!   Responses must match exactly: a write rejected that should have been
//!   accepted is a violation too.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::Model;

/// A request to the lock service or the fenced resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MutexInput {
    /// Take the lock.
    Acquire,
    /// Give back the lock taken with `token`.
    Release {
        /// The token of the grant being released.
        token: u64,
    },
    /// Write `value` to the resource, fenced by `token`.
    FencedWrite {
        /// The writer's fencing token.
        token: u64,
        /// The value written; informational, for reports.
        value: u64,
    },
}

/// A response from the lock service or the fenced resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum MutexOutput {
    /// The lock was granted with this fencing token.
    Granted {
        /// The fencing token.
        token: u64,
    },
    /// The release was acknowledged.
    Released,
    /// Whether the resource accepted the fenced write.
    Write {
        /// True if the write was applied.
        accepted: bool,
    },
}

/// What the resource knows when deciding on a fenced write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FenceMode {
    /// Only the tokens it has accepted: accept iff token ≥ highest accepted.
    #[default]
    Resource,
    /// Every grant and release: accept only the latest grant while it is held.
    Strict,
}

/// Who holds the lock according to the latest grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    /// Nobody: never granted, or the latest grant was released.
    Free,
    /// The grant with this token.
    Token(u64),
    /// A grant whose token the history never saw (an unknown `Acquire`).
    Unknown,
}

/// The fenced mutex's state; see the [module docs](crate::models::fenced_mutex) for the rules.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MutexState {
    /// The latest grant.
    pub holder: Holder,
    /// Every token granted so far: the valid tokens.
    pub granted: BTreeSet<u64>,
    /// The highest token the resource accepted a write for.
    pub max_accepted: Option<u64>,
}

/// One fenced lock and its resource, checked in the given [`FenceMode`]; the
/// rules are in the [module docs](crate::models::fenced_mutex).
#[derive(Clone, Copy, Debug, Default)]
pub struct FencedMutex {
    /// What the resource is expected to know.
    pub mode: FenceMode,
}

impl Model for FencedMutex {
    type State = MutexState;
    type Input = MutexInput;
    type Output = MutexOutput;

    fn init(&self) -> MutexState {
        MutexState { holder: Holder::Free, granted: BTreeSet::new(), max_accepted: None }
    }

    fn step(&self, state: &MutexState, input: &MutexInput, output: Option<&MutexOutput>) -> Option<MutexState> {
        let mut next = state.clone();
        match (input, output) {
            (MutexInput::Acquire, None) => next.holder = Holder::Unknown,
            (MutexInput::Acquire, Some(&MutexOutput::Granted { token })) => {
                if state.granted.last().is_some_and(|&last| token <= last) {
                    return None;
                }
                next.holder = Holder::Token(token);
                next.granted.insert(token);
            }
            (&MutexInput::Release { token }, None | Some(MutexOutput::Released)) => {
                if !state.granted.contains(&token) {
                    return None;
                }
                if state.holder == Holder::Token(token) {
                    next.holder = Holder::Free;
                }
            }
            (&MutexInput::FencedWrite { token, .. }, None | Some(MutexOutput::Write { .. })) => {
                if !state.granted.contains(&token) {
                    return None;
                }
                let fresh = state.max_accepted.is_none_or(|max| token >= max);
                let accept = match self.mode {
                    FenceMode::Resource => fresh,
                    FenceMode::Strict => fresh && state.holder == Holder::Token(token),
                };
                if output.is_some_and(|out| *out != MutexOutput::Write { accepted: accept }) {
                    return None;
                }
                if accept {
                    next.max_accepted = Some(token);
                }
            }
            _ => return None,
        }
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::{MutexInput as In, MutexOutput as Out, *};
    use crate::{check, Budget, CheckResult, History, Operation};

    fn acquire(client: u64, token: u64, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(client, In::Acquire, Out::Granted { token }, call, ret)
    }

    fn release(client: u64, token: u64, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(client, In::Release { token }, Out::Released, call, ret)
    }

    fn write(client: u64, token: u64, accepted: bool, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(client, In::FencedWrite { token, value: client }, Out::Write { accepted }, call, ret)
    }

    fn verdict(mode: FenceMode, ops: Vec<Operation<In, Out>>) -> CheckResult {
        check(&FencedMutex { mode }, &History::from(ops), Budget::default()).unwrap()
    }

    const MODES: [FenceMode; 2] = [FenceMode::Resource, FenceMode::Strict];

    #[test]
    fn handover_with_release_is_linearizable() {
        let ops = vec![acquire(1, 1, 0, 1), write(1, 1, true, 2, 3), release(1, 1, 4, 5), acquire(2, 2, 6, 7), write(2, 2, true, 8, 9)];
        for mode in MODES {
            assert!(verdict(mode, ops.clone()).is_ok(), "{mode:?}");
        }
    }

    #[test]
    fn concurrent_acquires_may_complete_out_of_token_order() {
        let ops = vec![acquire(1, 2, 0, 10), acquire(2, 1, 1, 5)];
        assert!(verdict(FenceMode::Resource, ops).is_ok());
    }

    #[test]
    fn decreasing_tokens_are_violation() {
        let ops = vec![acquire(1, 5, 0, 1), release(1, 5, 2, 3), acquire(2, 3, 4, 5)];
        for mode in MODES {
            assert!(verdict(mode, ops.clone()).is_violation(), "{mode:?}");
        }
    }

    #[test]
    fn overlapping_holders_both_accepted_by_fence_is_violation() {
        // Client 1's lease expires while it is paused; client 2 takes over and
        // writes; then client 1 wakes up and its stale write gets through.
        let ops = vec![acquire(1, 1, 0, 1), acquire(2, 2, 2, 3), write(2, 2, true, 4, 5), write(1, 1, true, 6, 7)];
        for mode in MODES {
            assert!(verdict(mode, ops.clone()).is_violation(), "{mode:?}");
        }
        let mut fenced = ops;
        fenced[3] = write(1, 1, false, 6, 7);
        for mode in MODES {
            assert!(verdict(mode, fenced.clone()).is_ok(), "{mode:?}");
        }
    }

    #[test]
    fn preempted_write_before_new_holder_writes_depends_on_mode() {
        let ops = vec![acquire(1, 1, 0, 1), acquire(2, 2, 2, 3), write(1, 1, true, 4, 5), write(2, 2, true, 6, 7)];
        assert!(verdict(FenceMode::Resource, ops.clone()).is_ok());
        assert!(verdict(FenceMode::Strict, ops).is_violation());
    }

    #[test]
    fn wrongly_rejected_or_ungranted_writes_are_violation() {
        assert!(verdict(FenceMode::Resource, vec![acquire(1, 1, 0, 1), write(1, 1, false, 2, 3)]).is_violation());
        assert!(verdict(FenceMode::Resource, vec![acquire(1, 1, 0, 1), write(2, 9, true, 2, 3)]).is_violation());
    }

    #[test]
    fn strict_rejection_needs_the_unknown_acquire_to_have_taken_effect() {
        // Client 1's write is rejected although it holds the latest known
        // grant: only explainable if client 2's timed-out acquire succeeded.
        let mut ops = vec![acquire(1, 1, 0, 1), write(1, 1, false, 4, 5)];
        assert!(verdict(FenceMode::Strict, ops.clone()).is_violation());
        ops.push(Operation::unknown(2, In::Acquire, 2));
        assert!(verdict(FenceMode::Strict, ops).is_ok());
    }
}
