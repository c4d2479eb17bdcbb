//! Structure-aware mutation of protobuf encodings without their schema.
//!
//! An encoding is parsed into a tree of wire-format fields; a
//! length-delimited field whose bytes parse as a message is kept as a
//! nested tree (a heuristic: a string may parse too, which is harmless).
//! Mutations then change one node anywhere in the tree — a varint to an
//! edge value, a length prefix to a lie, a field repeated a hundred times —
//! and re-encoding fixes every *enclosing* length, so the lie reaches the
//! innermost decoder instead of failing at the outermost one. Byte-level
//! mutation cannot do that: a raft `Entry` inside a raft `Message` inside a
//! `RaftEnvelope` inside a `PeerBatch` has three length prefixes around it.

use rand::seq::SliceRandom;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::mutate::{interesting_u64, varint, MAX_INPUT_BYTES};

/// Nesting below this is kept as bytes.
const MAX_DEPTH: usize = 12;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Varint(u64),
    Fixed64([u8; 8]),
    Fixed32([u8; 4]),
    Bytes(Vec<u8>),
    Message(Vec<Field>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Field {
    pub number: u32,
    /// The wire type written; normally the one matching `value`, but a
    /// mutation may set any of 0..=7.
    pub wire_type: u8,
    pub value: Value,
    /// A length prefix to write instead of the true one (a lie).
    pub claimed_len: Option<u64>,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..70).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift).unwrap_or(0);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Parses a whole buffer as a message; `None` unless every byte is used.
pub fn parse(buf: &[u8]) -> Option<Vec<Field>> {
    parse_at(buf, 0)
}

fn parse_at(buf: &[u8], depth: usize) -> Option<Vec<Field>> {
    let mut pos = 0;
    let mut fields = Vec::new();
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let number = u32::try_from(key >> 3).ok().filter(|&n| n != 0)?;
        let wire_type = (key & 7) as u8;
        let value = match wire_type {
            0 => Value::Varint(read_varint(buf, &mut pos)?),
            1 => Value::Fixed64(buf.get(pos..pos + 8)?.try_into().ok().inspect(|_| pos += 8)?),
            5 => Value::Fixed32(buf.get(pos..pos + 4)?.try_into().ok().inspect(|_| pos += 4)?),
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?).ok()?;
                let body = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                match (depth < MAX_DEPTH && !body.is_empty()).then(|| parse_at(body, depth + 1)).flatten() {
                    Some(nested) => Value::Message(nested),
                    None => Value::Bytes(body.to_vec()),
                }
            }
            _ => return None,
        };
        fields.push(Field { number, wire_type, value, claimed_len: None });
    }
    Some(fields)
}

pub fn encode(fields: &[Field]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(fields, &mut out);
    out
}

fn encode_into(fields: &[Field], out: &mut Vec<u8>) {
    for f in fields {
        out.extend(varint((u64::from(f.number) << 3) | u64::from(f.wire_type & 7)));
        match &f.value {
            Value::Varint(v) => out.extend(varint(*v)),
            Value::Fixed64(b) => out.extend_from_slice(b),
            Value::Fixed32(b) => out.extend_from_slice(b),
            Value::Bytes(b) => {
                out.extend(varint(f.claimed_len.unwrap_or(b.len() as u64)));
                out.extend_from_slice(b);
            }
            Value::Message(m) => {
                let body = encode(m);
                out.extend(varint(f.claimed_len.unwrap_or(body.len() as u64)));
                out.extend_from_slice(&body);
            }
        }
        if out.len() > MAX_INPUT_BYTES {
            return;
        }
    }
}

/// Paths (indexes from the root) of every field in the tree.
fn paths(fields: &[Field], prefix: &mut Vec<usize>, out: &mut Vec<Vec<usize>>) {
    for (i, f) in fields.iter().enumerate() {
        prefix.push(i);
        out.push(prefix.clone());
        if let Value::Message(m) = &f.value {
            paths(m, prefix, out);
        }
        prefix.pop();
    }
}

/// The list holding the field at `path`, and the field's index in it.
fn parent_mut<'a>(fields: &'a mut Vec<Field>, path: &[usize]) -> (&'a mut Vec<Field>, usize) {
    let (last, up) = path.split_last().expect("non-empty path");
    let mut list = fields;
    for &i in up {
        list = match &mut list[i].value {
            Value::Message(m) => m,
            _ => unreachable!("paths only descend into messages"),
        };
    }
    (list, *last)
}

/// Applies one structural mutation to a random node (an empty tree gets a
/// random field).
pub fn mutate_tree(rng: &mut ChaCha8Rng, fields: &mut Vec<Field>) {
    let mut all = Vec::new();
    paths(fields, &mut Vec::new(), &mut all);
    let Some(path) = all.choose(rng).cloned() else {
        fields.push(random_field(rng));
        return;
    };
    let (list, i) = parent_mut(fields, &path);
    match rng.gen_range(0..10) {
        0 | 1 => match &mut list[i].value {
            Value::Varint(v) => *v = interesting_u64(rng),
            Value::Fixed64(b) => *b = interesting_u64(rng).to_le_bytes(),
            Value::Fixed32(b) => *b = (interesting_u64(rng) as u32).to_le_bytes(),
            Value::Bytes(_) | Value::Message(_) => list[i].claimed_len = Some(lying_len(rng, &list[i])),
        },
        2 => {
            // Lie about a length (or, for a scalar, turn it into bytes).
            if matches!(list[i].value, Value::Bytes(_) | Value::Message(_)) {
                list[i].claimed_len = Some(lying_len(rng, &list[i]));
            } else {
                list[i].value = Value::Bytes(vec![0; rng.gen_range(0..8)]);
                list[i].wire_type = 2;
            }
        }
        3 => {
            // Repeat a field: repeated-field explosions, last-one-wins merges.
            let times = if rng.gen_bool(0.7) { 1 } else { rng.gen_range(2..=200) };
            let f = list[i].clone();
            for _ in 0..times {
                list.insert(i, f.clone());
            }
        }
        4 => {
            list.remove(i);
        }
        5 => list[i].number = *[1u32, 2, 3, 4, 5, 6, 7, 8, 9, 15, 16, 19, 20, 100, 536_870_911].choose(rng).expect("non-empty"),
        6 => list[i].wire_type = rng.gen_range(0..8),
        7 => {
            let j = rng.gen_range(0..list.len());
            list.swap(i, j);
        }
        8 => match &mut list[i].value {
            Value::Bytes(b) => crate::mutate::mutate_bytes(rng, b, &[]),
            Value::Message(m) => m.push(random_field(rng)),
            _ => list.insert(i, random_field(rng)),
        },
        _ => list.insert(i, random_field(rng)),
    }
}

fn lying_len(rng: &mut ChaCha8Rng, f: &Field) -> u64 {
    let true_len = match &f.value {
        Value::Bytes(b) => b.len() as u64,
        Value::Message(m) => encode(m).len() as u64,
        _ => 0,
    };
    match rng.gen_range(0..4) {
        0 => true_len + 1,
        1 => true_len.saturating_sub(1),
        _ => interesting_u64(rng),
    }
}

fn random_field(rng: &mut ChaCha8Rng) -> Field {
    let number = rng.gen_range(1..=20);
    let (wire_type, value) = match rng.gen_range(0..4) {
        0 => (0, Value::Varint(interesting_u64(rng))),
        1 => (1, Value::Fixed64(rng.gen())),
        2 => (5, Value::Fixed32(rng.gen())),
        _ => (2, Value::Bytes((0..rng.gen_range(0..16)).map(|_| rng.gen()).collect())),
    };
    Field { number, wire_type, value, claimed_len: None }
}

/// Parses `input` and applies one structural mutation, or returns `false`
/// if it does not parse as protobuf (the caller falls back to bytes).
pub fn mutate_encoding(rng: &mut ChaCha8Rng, input: &mut Vec<u8>) -> bool {
    let Some(mut tree) = parse(input) else { return false };
    mutate_tree(rng, &mut tree);
    *input = encode(&tree);
    input.truncate(MAX_INPUT_BYTES);
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message as _;
    use rand::SeedableRng;

    #[test]
    fn parse_encode_roundtrips_canonical_encodings() {
        let env = meridian_transport::RaftEnvelope {
            range_id: 7,
            from_node: 2,
            message: vec![0x08, 0x03, 0x10, 0x05],
            range_start: b"/a".to_vec(),
            ..Default::default()
        };
        let batch = meridian_transport::PeerBatch { envelopes: vec![env.clone(), env] };
        let bytes = batch.encode_to_vec();
        let tree = parse(&bytes).expect("parses");
        assert_eq!(encode(&tree), bytes);
        // The raft message inside the envelope is reached as a nested tree.
        let mut all = Vec::new();
        paths(&tree, &mut Vec::new(), &mut all);
        assert!(all.iter().any(|p| p.len() == 3), "three levels deep: {all:?}");
    }

    #[test]
    fn lies_are_written_and_outer_lengths_stay_true() {
        let mut tree = parse(&[0x0a, 0x02, 0x08, 0x01]).expect("parses"); // field 1 { field 1: 1 }
        if let Value::Message(inner) = &mut tree[0].value {
            inner.push(Field { number: 2, wire_type: 2, value: Value::Bytes(vec![9]), claimed_len: Some(u32::MAX as u64) });
        }
        let bytes = encode(&tree);
        assert_eq!(bytes[1] as usize, bytes.len() - 2, "outer length is the true one");
        assert!(bytes.ends_with(&[0xff, 0xff, 0xff, 0xff, 0x0f, 9]));
    }

    #[test]
    fn mutation_never_panics() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut input = vec![0x0a, 0x04, 0x08, 0x01, 0x10, 0x02];
        for _ in 0..5_000 {
            if !mutate_encoding(&mut rng, &mut input) {
                input = vec![0x0a, 0x04, 0x08, 0x01, 0x10, 0x02];
            }
        }
    }
}
