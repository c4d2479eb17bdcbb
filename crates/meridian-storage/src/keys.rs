//! Key layout. Raft's records (log, hard state, apply state, descriptor)
//! start with the **range** id; the state machine's data records start with
//! the **namespace** id ([`crate::RangeDescriptor::namespace_id`]). Both in
//! big-endian, so one range's (one namespace's) records are contiguous and
//! ordered.
//!
//! ```text
//!  cf raft_log / raft_state / apply_state / meta:  range_id(8) ++ …
//!  cf data:                                        namespace_id(8) ++ record key
//!      record keys (meridian-kv): m                 the revision counter, compaction, lease ids
//!                                 k<key>            current version of a key
//!                                 h<key><rev>       MVCC history
//!                                 r<rev>            the event log (watches)
//!                                 l<lease> a<…>     leases and their keys
//!                                 q<name> s<…> d<…> lock queues, sessions' locks, lock-delay
//! ```
//!
//! Because data, revisions, leases and locks belong to the namespace, a
//! namespace moves to another Raft group by a descriptor change and a
//! snapshot of its `namespace_id` span: no key is rewritten, its revision
//! sequence (and so every fencing token) continues, its lease ids stay
//! valid. At bootstrap a namespace's id is the id of its first range.

/// The 8-byte big-endian prefix every Raft record of `range_id` starts with.
pub fn range_prefix(range_id: u64) -> [u8; 8] {
    range_id.to_be_bytes()
}

/// `[start, end)` covering every key of `range_id` in any column family.
pub fn range_span(range_id: u64) -> (Vec<u8>, Vec<u8>) {
    let start = range_id.to_be_bytes().to_vec();
    let end = match range_id.checked_add(1) {
        Some(next) => next.to_be_bytes().to_vec(),
        None => vec![0xff; 9],
    };
    (start, end)
}

/// Key of the log entry at `index` of `range_id` in [`crate::Cf::RaftLog`]:
/// `range_id ++ index`, both big-endian, so entries sort by index.
pub fn log_key(range_id: u64, index: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(16);
    k.extend_from_slice(&range_id.to_be_bytes());
    k.extend_from_slice(&index.to_be_bytes());
    k
}

/// Decodes the index from a [`log_key`]; `None` if the key is malformed.
pub fn log_index(key: &[u8]) -> Option<u64> {
    let tail: [u8; 8] = key.get(8..16)?.try_into().ok()?;
    (key.len() == 16).then(|| u64::from_be_bytes(tail))
}

/// Key of `range_id`'s single record in [`crate::Cf::RaftState`],
/// [`crate::Cf::ApplyState`] and [`crate::Cf::Meta`]: the bare range prefix.
pub fn state_key(range_id: u64) -> Vec<u8> {
    range_id.to_be_bytes().to_vec()
}

/// The tombstone of a replica destroyed on this node (in
/// [`crate::Cf::RaftState`]): the range's epoch (`conf_ver`, big-endian;
/// `u64::MAX` for a retired range) at or below which messages for the
/// range are refused rather than creating an empty replica. Written by
/// `meridian_raftstore::Store::destroy_replica`, read at every start.
pub fn tombstone_key(range_id: u64) -> Vec<u8> {
    let mut k = range_id.to_be_bytes().to_vec();
    k.extend_from_slice(b"tomb");
    k
}

/// A state-machine record of namespace `namespace_id` (for the store's own
/// records under id 0, a key no namespace uses).
pub fn data_key(namespace_id: u64, user_key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + user_key.len());
    k.extend_from_slice(&namespace_id.to_be_bytes());
    k.extend_from_slice(user_key);
    k
}

/// The state machine's own key inside a [`data_key`].
pub fn user_key(data_key: &[u8]) -> Option<&[u8]> {
    data_key.get(8..)
}

/// Range id of any key laid out by this module.
pub fn range_of(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(..8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_keys_sort_by_range_then_index() {
        assert!(log_key(1, u64::MAX) < log_key(2, 0));
        assert!(log_key(1, 9) < log_key(1, 10));
        assert_eq!(log_index(&log_key(7, 42)), Some(42));
        assert_eq!(log_index(b"short"), None);
    }

    #[test]
    fn range_span_covers_only_its_range() {
        let (s, e) = range_span(5);
        assert!(data_key(5, b"") >= s && data_key(5, &[0xff; 32]) < e);
        assert!(data_key(6, b"") >= e);
        assert_eq!(range_of(&data_key(9, b"x")), Some(9));
    }
}
