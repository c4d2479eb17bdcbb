//! What a fuzz target is: an entry point that takes untrusted bytes, plus
//! the valid encodings the mutators start from.

use rand_chacha::ChaCha8Rng;

/// What the code under test made of an input. Both are fine; the ratio
/// shows whether mutation still reaches past the first checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Decoded (and, where the target goes further, applied or opened).
    Accepted,
    /// Refused with an error.
    Rejected,
}

/// A decoder entry point under fuzzing.
///
/// To ensure correctness:
/// - `run` is deterministic in its input: no clock, no ambient randomness,
///   no state carried from one input to the next (targets that need state
///   copy it from a fixture built in their constructor).
/// - `run` returns `Err("name: details")` for a violated property other
///   than "does not panic" — the part before the first ':' names it, and
///   failures are grouped by that name.
pub trait Target: Send + Sync {
    fn name(&self) -> &'static str;
    /// One line: which function(s) the bytes reach.
    fn describe(&self) -> &'static str;
    /// Valid encodings to mutate (built deterministically).
    fn seeds(&self) -> Vec<Vec<u8>>;
    /// Inputs are protobuf: also mutate them structurally.
    fn is_protobuf(&self) -> bool {
        true
    }
    /// A structured random input (the target knows its format), if any.
    fn generate(&self, _rng: &mut ChaCha8Rng) -> Option<Vec<u8>> {
        None
    }
    /// Last touch on a mutated input before it runs (the saved input is
    /// the fixed-up one, so a replay needs no fix-up).
    fn fixup(&self, _input: &mut Vec<u8>) {}
    fn run(&self, input: &[u8]) -> Result<Verdict, String>;
}
