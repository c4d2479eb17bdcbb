//! A register per key with read, write and compare-and-set: the KV API's
//! single-key operations.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Model, Operation, Partition};

/// A request to one key's register.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RegisterInput {
    /// Read the current value.
    Read {
        /// The register.
        key: String,
    },
    /// Overwrite the value.
    Write {
        /// The register.
        key: String,
        /// The new value.
        value: u64,
    },
    /// Set `new` if the value is `expected` (`None`: the key is absent).
    Cas {
        /// The register.
        key: String,
        /// The value required for the swap.
        expected: Option<u64>,
        /// The value set on success.
        new: u64,
    },
}

impl RegisterInput {
    /// The key the request addresses.
    pub fn key(&self) -> &str {
        match self {
            RegisterInput::Read { key } | RegisterInput::Write { key, .. } | RegisterInput::Cas { key, .. } => key,
        }
    }
}

/// A response from one key's register.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RegisterOutput {
    /// The value read; `None` when the key is absent.
    Read(Option<u64>),
    /// The write was applied.
    Write,
    /// Whether the compare-and-set swapped.
    Cas(bool),
}

/// Registers, initially absent, one per key; partitioned by key. A response
/// of the wrong kind for its request (a `Cas` answer to a `Read`) is never
/// legal, so it shows up as a violation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Register;

impl Model for Register {
    /// Present keys and their values. A map rather than one value so an
    /// unpartitioned [`check`](crate::check) of a multi-key history is sound.
    type State = BTreeMap<String, u64>;
    type Input = RegisterInput;
    type Output = RegisterOutput;

    fn init(&self) -> Self::State {
        BTreeMap::new()
    }

    fn step(&self, state: &Self::State, input: &RegisterInput, output: Option<&RegisterOutput>) -> Option<Self::State> {
        let current = state.get(input.key()).copied();
        let set = |value: u64| {
            let mut next = state.clone();
            next.insert(input.key().to_owned(), value);
            next
        };
        match (input, output) {
            (RegisterInput::Read { .. }, None) => Some(state.clone()),
            (RegisterInput::Read { .. }, Some(RegisterOutput::Read(seen))) => (*seen == current).then(|| state.clone()),
            (RegisterInput::Write { value, .. }, None | Some(RegisterOutput::Write)) => Some(set(*value)),
            (RegisterInput::Cas { expected, new, .. }, None | Some(RegisterOutput::Cas(_))) => {
                let swaps = current == *expected;
                if output.is_some_and(|out| *out != RegisterOutput::Cas(swaps)) {
                    return None;
                }
                Some(if swaps { set(*new) } else { state.clone() })
            }
            _ => None,
        }
    }

    fn partition(&self, ops: &[Operation<RegisterInput, RegisterOutput>]) -> Vec<Partition> {
        let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, op) in ops.iter().enumerate() {
            by_key.entry(op.input.key()).or_default().push(i);
        }
        by_key.into_iter().map(|(key, ops)| Partition { label: key.to_owned(), ops }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{RegisterInput as In, RegisterOutput as Out, *};
    use crate::{check, Budget, CheckResult, History};

    fn write(client: u64, value: u64, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(client, In::Write { key: "x".into(), value }, Out::Write, call, ret)
    }

    fn read(client: u64, value: Option<u64>, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(client, In::Read { key: "x".into() }, Out::Read(value), call, ret)
    }

    fn cas(client: u64, expected: Option<u64>, new: u64, swapped: bool, call: u64, ret: u64) -> Operation<In, Out> {
        Operation::completed(client, In::Cas { key: "x".into(), expected, new }, Out::Cas(swapped), call, ret)
    }

    fn verdict(ops: Vec<Operation<In, Out>>) -> CheckResult {
        check(&Register, &History::from(ops), Budget::default()).unwrap()
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let ops = vec![
            read(1, None, 0, 1),
            write(1, 1, 2, 3),
            cas(2, Some(1), 2, true, 4, 5),
            cas(1, Some(1), 3, false, 6, 7),
            read(2, Some(2), 8, 9),
        ];
        assert!(verdict(ops).is_ok());
    }

    #[test]
    fn stale_read_after_completed_write_is_violation() {
        let ops = vec![write(1, 1, 0, 1), write(1, 2, 2, 3), read(2, Some(1), 4, 5)];
        let CheckResult::Violation(v) = verdict(ops) else { panic!("stale read not caught") };
        assert_eq!((v.linearized, v.blocking), (vec![0, 1], 2));
    }

    #[test]
    fn read_concurrent_with_write_may_see_either_value() {
        for seen in [Some(1), Some(2)] {
            assert!(verdict(vec![write(1, 1, 0, 1), write(1, 2, 2, 10), read(2, seen, 3, 4)]).is_ok());
        }
    }

    #[test]
    fn lost_update_with_cas_is_violation() {
        // Both clients swap 0 away concurrently: only one can have seen 0.
        let ops = vec![write(1, 0, 0, 1), cas(1, Some(0), 1, true, 2, 10), cas(2, Some(0), 2, true, 3, 9), read(3, Some(2), 11, 12)];
        assert!(verdict(ops).is_violation());
    }

    #[test]
    fn mismatched_response_kind_is_violation() {
        let ops = vec![Operation::completed(1, In::Read { key: "x".into() }, Out::Write, 0, 1)];
        assert!(verdict(ops).is_violation());
    }

    #[test]
    fn partition_groups_operations_by_key() {
        let ops =
            vec![write(1, 1, 0, 1), Operation::completed(1, In::Read { key: "a".into() }, Out::Read(None), 0, 1), read(2, Some(1), 2, 3)];
        let parts = Register.partition(&ops);
        assert_eq!(parts, vec![Partition { label: "a".into(), ops: vec![1] }, Partition { label: "x".into(), ops: vec![0, 2] }]);
    }
}
