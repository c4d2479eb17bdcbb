//! The seam between the search and what is being checked.

use std::hash::Hash;

use crate::Operation;

/// A sequential specification: the single-copy object a history must look
/// like.
///
/// To ensure correctness:
/// - `step` is a pure function of its arguments (the search calls it in any
///   order, many times, and caches its results by `State`);
/// - two states that compare equal behave the same for every later input,
///   or the cache prunes a branch that could have succeeded;
/// - `partition` only splits operations that never affect each other (e.g.
///   different keys), which is what makes checking parts separately sound.
pub trait Model {
    /// The object's state. Keep it small: every cache entry holds one.
    type State: Clone + Eq + Hash;
    /// A request.
    type Input;
    /// A response.
    type Output;

    /// The state before any operation.
    fn init(&self) -> Self::State;

    /// Applies `input` to `state`. Returns the next state, or `None` when
    /// the operation cannot happen from `state` with that `output`. An
    /// `output` of `None` means the response is unknown: any response the
    /// model could give is acceptable.
    fn step(&self, state: &Self::State, input: &Self::Input, output: Option<&Self::Output>) -> Option<Self::State>;

    /// Splits a history into independently checkable parts (P-compositionality,
    /// Horn & Kroening), usually by key. Every operation should be in exactly
    /// one part. The default keeps the whole history together.
    fn partition(&self, ops: &[Operation<Self::Input, Self::Output>]) -> Vec<Partition> {
        vec![Partition::whole(ops.len())]
    }
}

/// Operations that are checked together, by index into
/// [`History::ops`](crate::History::ops).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Partition {
    /// Names the part in reports, e.g. the key.
    pub label: String,
    /// Indices of the part's operations in the history.
    pub ops: Vec<usize>,
}

impl Partition {
    /// All `len` operations of a history, labelled `"*"`.
    pub fn whole(len: usize) -> Self {
        Partition { label: "*".into(), ops: (0..len).collect() }
    }
}
