//! The one seeded hash every crate derives reproducible choices from:
//! SplitMix64 (Steele, Lea and Flood's finalizer) for numbers and FNV-1a
//! for names. The simulation, the fuzzer, the chaos runner, the
//! benchmarks and the raftstore's per-replica timeouts all replay from a
//! seed through these functions, so they are defined once: a second copy
//! that drifted by one constant would silently change what a seed replays.

/// SplitMix64's increment (the golden ratio in 64 bits).
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// A well-mixed 64-bit hash of `x`: SplitMix64's output for state `x`.
/// Neighbouring inputs give unrelated outputs, so `splitmix64(seed ^ i)`
/// derives independent-looking streams from one seed.
pub const fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(GOLDEN);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// FNV-1a (64-bit) of `bytes`: a stable hash of a name (a fuzz target, a
/// scenario), the same on every platform and release.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// A small seeded generator: the SplitMix64 sequence from `seed`. Not for
/// anything secret; for reproducible choices without a dependency.
#[derive(Clone, Debug)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    /// The generator whose first output is `splitmix64(seed)`.
    pub const fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// The next output.
    pub fn next_u64(&mut self) -> u64 {
        let out = splitmix64(self.state);
        self.state = self.state.wrapping_add(GOLDEN);
        out
    }

    /// The next output reduced to `0..n` (`n > 0`; the modulo bias is
    /// below 2^-40 for the small `n` tests and benchmarks use).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_matches_the_reference_sequence() {
        // Published SplitMix64 outputs for seed 0 (Vigna's splitmix64.c).
        let mut g = SplitMix64::new(0);
        assert_eq!(g.next_u64(), 0xe220_a839_7b1d_cdaf);
        assert_eq!(g.next_u64(), 0x6e78_9e6a_a1b9_65f4);
        assert_eq!(splitmix64(0), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn below_stays_in_range() {
        let mut g = SplitMix64::new(7);
        assert!((0..1000).all(|_| g.below(3) < 3));
    }
}
