//! Byte-level mutations of a valid encoding. Each one is small; the
//! generator stacks a few. Integer overwrites favour the values that break
//! length checks: all-ones, sign bits, just past a power of two.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Inputs never grow past this (duplication could otherwise snowball).
pub const MAX_INPUT_BYTES: usize = 64 * 1024;
/// Pure random inputs are `0..RANDOM_MAX_BYTES` long.
pub const RANDOM_MAX_BYTES: usize = 4096;

/// Integers that sit on the edges of length and overflow checks.
pub const INTERESTING_U64: [u64; 16] = [
    0,
    1,
    2,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x1_0000_0000,
    0x0400_0001, // just past MAX_FRAME_BYTES (64 MiB)
    i64::MAX as u64,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

pub fn interesting_u64(rng: &mut ChaCha8Rng) -> u64 {
    if rng.gen_bool(0.8) {
        *INTERESTING_U64.choose(rng).expect("non-empty")
    } else {
        rng.gen()
    }
}

/// Uniform random bytes; the length is skewed towards short inputs, where
/// most header parsing happens.
pub fn random_bytes(rng: &mut ChaCha8Rng) -> Vec<u8> {
    let len = if rng.gen_bool(0.5) { rng.gen_range(0..64) } else { rng.gen_range(0..RANDOM_MAX_BYTES) };
    let mut v = vec![0u8; len];
    rng.fill(&mut v[..]);
    v
}

/// Protobuf varint encoding of `v`.
pub fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(10);
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return out;
        }
        out.push(b | 0x80);
    }
}

/// A varint claiming an absurd length: all-ones in 5 or 10 bytes, or an
/// interesting value.
pub fn huge_varint(rng: &mut ChaCha8Rng) -> Vec<u8> {
    match rng.gen_range(0..4) {
        0 => vec![0xff, 0xff, 0xff, 0xff, 0x0f],                               // u32::MAX
        1 => vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], // u64::MAX
        2 => vec![0xff; rng.gen_range(1..=11)],                                // unterminated
        _ => varint(interesting_u64(rng)),
    }
}

/// Length of the varint starting at `buf[at]` (stops at the end of `buf`).
fn varint_len_at(buf: &[u8], at: usize) -> usize {
    buf[at..].iter().position(|b| b & 0x80 == 0).map_or(buf.len() - at, |p| p + 1).min(10)
}

/// Applies one random byte-level mutation. `others` are further valid
/// inputs to splice from.
pub fn mutate_bytes(rng: &mut ChaCha8Rng, input: &mut Vec<u8>, others: &[Vec<u8>]) {
    let len = input.len();
    match rng.gen_range(0..12) {
        0 if len > 0 => {
            let i = rng.gen_range(0..len);
            input[i] ^= 1 << rng.gen_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.gen_range(0..len);
            input[i] = *[0x00, 0x01, 0x7f, 0x80, 0xff].choose(rng).expect("non-empty");
        }
        2 => {
            let at = rng.gen_range(0..=len);
            let n = rng.gen_range(1..=32);
            let bytes: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            input.splice(at..at, bytes);
        }
        3 if len > 0 => {
            let at = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - at).min(64));
            input.drain(at..at + n);
        }
        4 if len > 0 => input.truncate(rng.gen_range(0..len)),
        5 if len > 0 => {
            // Repeat a chunk: repeated fields, duplicated records.
            let at = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - at).min(256));
            let chunk = input[at..at + n].to_vec();
            let times = if rng.gen_bool(0.8) { 1 } else { rng.gen_range(2..=64) };
            let to = rng.gen_range(0..=len);
            let rep: Vec<u8> = chunk.iter().copied().cycle().take(n * times).collect();
            input.splice(to..to, rep);
        }
        6 if !others.is_empty() => {
            // Splice: a prefix of this input, a suffix of another.
            let other = others.choose(rng).expect("non-empty");
            let cut = rng.gen_range(0..=len);
            let from = rng.gen_range(0..=other.len());
            input.truncate(cut);
            input.extend_from_slice(&other[from..]);
        }
        7 if len > 0 => {
            // Overwrite the varint at a random position with a huge one.
            let at = rng.gen_range(0..len);
            let old = varint_len_at(input, at);
            input.splice(at..at + old, huge_varint(rng));
        }
        8 if len > 0 => {
            // Overwrite a fixed-width integer, either byte order.
            let width = *[2usize, 4, 8].choose(rng).expect("non-empty");
            let at = rng.gen_range(0..len);
            let v = interesting_u64(rng);
            let bytes = if rng.gen_bool(0.5) { v.to_le_bytes() } else { v.to_be_bytes() };
            let bytes = if rng.gen_bool(0.5) { &bytes[..width] } else { &bytes[8 - width..] };
            let end = (at + width).min(len);
            input.splice(at..end, bytes.iter().copied());
        }
        9 => {
            let n = rng.gen_range(1..=64);
            input.extend((0..n).map(|_| rng.gen::<u8>()));
        }
        10 if len > 1 => {
            // Swap two chunks.
            let a = rng.gen_range(0..len);
            let b = rng.gen_range(0..len);
            let n = rng.gen_range(1..=(len - a.max(b)).min(32));
            for i in 0..n {
                input.swap(a + i, b + i);
            }
        }
        _ => {
            // Random byte anywhere (also the fallback for empty inputs).
            let at = rng.gen_range(0..=len);
            input.insert(at, rng.gen());
        }
    }
    input.truncate(MAX_INPUT_BYTES);
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn varint_encoding_matches_prost() {
        for v in [0u64, 1, 127, 128, 300, u32::MAX as u64, u64::MAX] {
            let mut want = Vec::new();
            prost::encoding::encode_varint(v, &mut want);
            assert_eq!(varint(v), want);
        }
    }

    #[test]
    fn mutations_stay_bounded() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut input = vec![1u8; 1000];
        for _ in 0..10_000 {
            mutate_bytes(&mut rng, &mut input, &[vec![2u8; 60_000]]);
            assert!(input.len() <= MAX_INPUT_BYTES);
        }
    }
}
