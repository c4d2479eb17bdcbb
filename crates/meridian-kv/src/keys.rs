//! Record keys inside a range's data. User keys inside history keys are
//! escaped so that any byte string sorts correctly before its revision.

/// `m`: the meta record ([`crate::mvcc::Meta`]).
pub const META: &[u8] = b"m";
/// Prefix of the index: the latest [`KeyValue`](crate::mvcc::KeyValue) of
/// every live key.
pub const INDEX: u8 = b'k';
/// Prefix of the history: every version and tombstone of every key.
pub const HISTORY: u8 = b'h';
/// Prefix of the event log, in revision order.
pub const EVENTS: u8 = b'r';
/// Prefix of the lease records.
pub const LEASE: u8 = b'l';
/// Prefix of the keys attached to leases.
pub const ATTACH: u8 = b'a';
/// Prefix of the lock records.
pub const LOCK: u8 = b'q';
/// Prefix of the locks each session holds or waits for.
pub const SESSION_LOCK: u8 = b's';
/// Prefix of the locks under lock-delay.
pub const DELAYED_LOCK: u8 = b'd';

/// Prefix of the carve records: a namespace's prefix carved out of this
/// range (its value: the new namespace id, u64 big-endian).
pub const CARVED: u8 = b'x';

/// Prefix of the merge floors: a namespace merged into this range, and the
/// revision its history here starts at (value: i64 big-endian).
pub const MERGED: u8 = b'y';

/// `y ‖ prefix`: the merge floor of `prefix`.
pub fn merged_key(prefix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + prefix.len());
    k.push(MERGED);
    k.extend_from_slice(prefix);
    k
}

/// Records that commands read on every use: the meta record (each
/// command), leases (each lock command checks its session) and lock queues.
/// A user's key is read once per write and is not among them.
pub fn is_hot(key: &[u8]) -> bool {
    key == META || matches!(key.first(), Some(&LEASE | &LOCK))
}

/// `x ‖ prefix`: `prefix` was carved out of this range.
pub fn carved_key(prefix: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + prefix.len());
    k.push(CARVED);
    k.extend_from_slice(prefix);
    k
}

/// The first key after every key that starts with `prefix` (empty: no such
/// key, i.e. unbounded).
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    Vec::new()
}

/// `k ‖ key`: the index record of a user key.
pub fn index_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(INDEX);
    k.extend_from_slice(key);
    k
}

/// Bounds of the index for user keys `[start, end)`; an empty `end` means
/// no upper bound (etcd's range_end "\0").
pub fn index_bounds(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let s = index_key(start);
    let e = if end.is_empty() { vec![INDEX + 1] } else { index_key(end) };
    (s, e)
}

/// Order-preserving, prefix-free escaping: 0x00 → 0x00 0xff, end → 0x00 0x01.
pub fn escape(key: &[u8], out: &mut Vec<u8>) {
    for &b in key {
        out.push(b);
        if b == 0 {
            out.push(0xff);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Inverse of [`escape`]: the key and the rest after it.
pub fn unescape(buf: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let mut key = Vec::new();
    let mut i = 0;
    while i + 1 < buf.len() + 1 {
        let b = *buf.get(i)?;
        if b == 0 {
            match *buf.get(i + 1)? {
                0xff => key.push(0),
                0x01 => return Some((key, &buf[i + 2..])),
                _ => return None,
            }
            i += 2;
        } else {
            key.push(b);
            i += 1;
        }
    }
    None
}

/// `h ‖ esc(key) ‖ rev`: the version (or tombstone) of `key` written at
/// revision `rev`.
pub fn history_key(key: &[u8], rev: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 12);
    k.push(HISTORY);
    escape(key, &mut k);
    k.extend_from_slice(&(rev as u64).to_be_bytes());
    k
}

/// Bounds of the history for user keys `[start, end)`; an empty `end`
/// means no upper bound.
pub fn history_bounds(start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut s = vec![HISTORY];
    escape(start, &mut s);
    let e = if end.is_empty() {
        vec![HISTORY + 1]
    } else {
        let mut e = vec![HISTORY];
        escape(end, &mut e);
        e
    };
    (s, e)
}

/// Splits a history key into user key and revision.
pub fn parse_history_key(k: &[u8]) -> Option<(Vec<u8>, i64)> {
    let (key, rest) = unescape(k.strip_prefix(&[HISTORY])?)?;
    let rev: [u8; 8] = rest.try_into().ok()?;
    Some((key, u64::from_be_bytes(rev) as i64))
}

/// `r ‖ rev ‖ sub`: the event of sub-revision `sub` of revision `rev`.
pub fn event_key(rev: i64, sub: i64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(EVENTS);
    k.extend_from_slice(&(rev as u64).to_be_bytes());
    k.extend_from_slice(&(sub as u64).to_be_bytes());
    k
}

/// `l ‖ id`: the record of lease `id`.
pub fn lease_key(id: i64) -> Vec<u8> {
    let mut k = vec![LEASE];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k
}

/// `a ‖ id ‖ key`: `key` is attached to lease `id`.
pub fn attach_key(id: i64, key: &[u8]) -> Vec<u8> {
    let mut k = vec![ATTACH];
    k.extend_from_slice(&(id as u64).to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// Bounds `[start, end)` of the keys attached to lease `id`.
pub fn attach_prefix(id: i64) -> (Vec<u8>, Vec<u8>) {
    let s = attach_key(id, b"");
    let mut e = vec![ATTACH];
    match (id as u64).checked_add(1) {
        Some(n) => e.extend_from_slice(&n.to_be_bytes()),
        None => e = vec![ATTACH + 1],
    }
    (s, e)
}

/// `q ‖ esc(name)`: a lock's holder and FIFO queue.
pub fn lock_key(name: &[u8]) -> Vec<u8> {
    let mut k = vec![LOCK];
    escape(name, &mut k);
    k
}

/// The lock name in a [`lock_key`]; `None` if `k` is not one.
pub fn parse_lock_key(k: &[u8]) -> Option<Vec<u8>> {
    let (name, rest) = unescape(k.strip_prefix(&[LOCK])?)?;
    rest.is_empty().then_some(name)
}

/// `s ‖ session ‖ name`: the session holds or waits for the lock.
pub fn session_lock_key(session: i64, name: &[u8]) -> Vec<u8> {
    let mut k = vec![SESSION_LOCK];
    k.extend_from_slice(&(session as u64).to_be_bytes());
    k.extend_from_slice(name);
    k
}

/// Bounds `[start, end)` of the locks `session` holds or waits for.
pub fn session_lock_prefix(session: i64) -> (Vec<u8>, Vec<u8>) {
    let s = session_lock_key(session, b"");
    let mut e = vec![SESSION_LOCK];
    match (session as u64).checked_add(1) {
        Some(n) => e.extend_from_slice(&n.to_be_bytes()),
        None => e = vec![SESSION_LOCK + 1],
    }
    (s, e)
}

/// `d ‖ name`: a lock under lock-delay (its value: the delay in ms).
pub fn delayed_lock_key(name: &[u8]) -> Vec<u8> {
    let mut k = vec![DELAYED_LOCK];
    k.extend_from_slice(name);
    k
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_preserves_order_and_roundtrips() {
        let keys: Vec<&[u8]> = vec![b"", b"\x00", b"\x00\x00", b"\x00\x01", b"a", b"a\x00", b"a\x00b", b"ab", b"b"];
        let hist: Vec<Vec<u8>> = keys.iter().map(|k| history_key(k, 5)).collect();
        for w in hist.windows(2) {
            assert!(w[0] < w[1], "order broken: {:?} !< {:?}", w[0], w[1]);
        }
        for k in &keys {
            assert_eq!(parse_history_key(&history_key(k, 77)), Some((k.to_vec(), 77)));
        }
        // Every version of "a" sorts before any version of "a\0".
        assert!(history_key(b"a", i64::MAX) < history_key(b"a\x00", 0));
        let (s, e) = history_bounds(b"a", b"b");
        assert!(history_key(b"a", 1) >= s && history_key(b"ab", 9) < e && history_key(b"b", 0) >= e);
    }
}
