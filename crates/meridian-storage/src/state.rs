//! Persistent per-range records: raft local state, apply state, descriptor.

use protobuf::Message as _;
use raft::prelude::{ConfState, HardState};

use crate::codec::{Dec, Enc};
use crate::error::{StorageError, StorageResult};

/// Raft's durable state for one range (raft-rs `HardState` and `ConfState`)
/// plus where the log was truncated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RaftLocalState {
    /// Current term, vote and commit index.
    pub hard_state: HardState,
    /// The membership configuration in effect.
    pub conf_state: ConfState,
    /// Index and term of the last entry removed by compaction or covered by
    /// an installed snapshot. The first stored entry is `truncated_index + 1`.
    pub truncated_index: u64,
    /// Term of the entry at `truncated_index`.
    pub truncated_term: u64,
}

impl RaftLocalState {
    /// The checksummed record stored in [`crate::Cf::RaftState`].
    pub fn encode(&self) -> Vec<u8> {
        let hs = self.hard_state.write_to_bytes().expect("encode HardState");
        let cs = self.conf_state.write_to_bytes().expect("encode ConfState");
        Enc::new().bytes(&hs).bytes(&cs).u64(self.truncated_index).u64(self.truncated_term).finish()
    }

    /// Decodes what [`RaftLocalState::encode`] wrote; a bad record is
    /// [`StorageError::Corrupt`] naming `range_id`.
    pub fn decode(raw: &[u8], range_id: u64) -> StorageResult<Self> {
        let mut d = Dec::new(raw, range_id, "raft local state")?;
        let bad = |e: protobuf::ProtobufError| StorageError::Corrupt { range_id, what: format!("raft local state: {e}") };
        let hard_state = HardState::parse_from_bytes(d.bytes()?).map_err(bad)?;
        let conf_state = ConfState::parse_from_bytes(d.bytes()?).map_err(bad)?;
        let truncated_index = d.u64()?;
        let truncated_term = d.u64()?;
        d.finish()?;
        Ok(Self { hard_state, conf_state, truncated_index, truncated_term })
    }
}

/// How far a range's state machine has applied its log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyState {
    /// Index of the last log entry applied to the state machine.
    pub applied_index: u64,
    /// Term of that entry.
    pub applied_term: u64,
}

impl ApplyState {
    /// The checksummed record stored in [`crate::Cf::ApplyState`].
    pub fn encode(&self) -> Vec<u8> {
        Enc::new().u64(self.applied_index).u64(self.applied_term).finish()
    }

    /// Decodes what [`ApplyState::encode`] wrote; a bad record is
    /// [`StorageError::Corrupt`] naming `range_id`.
    pub fn decode(raw: &[u8], range_id: u64) -> StorageResult<Self> {
        let mut d = Dec::new(raw, range_id, "apply state")?;
        let s = Self { applied_index: d.u64()?, applied_term: d.u64()? };
        d.finish()?;
        Ok(s)
    }
}

/// A range's version: `conf_ver` grows with every membership change,
/// `version` with every split or merge. Messages and requests carry it so
/// stale ones can be rejected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RangeEpoch {
    /// Membership version: incremented by every configuration change.
    pub conf_ver: u64,
    /// Key-span version: incremented by every split or merge.
    pub version: u64,
}

/// What a replica is in its range's Raft group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReplicaRole {
    /// Votes and counts toward the quorum.
    Voter,
    /// Receives the log but does not vote (e.g. a new replica catching up).
    Learner,
    /// Votes and keeps the log but holds no data. Nothing assigns this role
    /// yet: the stored format has room for witness replicas.
    Witness,
}

impl ReplicaRole {
    fn code(self) -> u64 {
        match self {
            ReplicaRole::Voter => 0,
            ReplicaRole::Learner => 1,
            ReplicaRole::Witness => 2,
        }
    }

    fn from_code(c: u64) -> Option<Self> {
        match c {
            0 => Some(ReplicaRole::Voter),
            1 => Some(ReplicaRole::Learner),
            2 => Some(ReplicaRole::Witness),
            _ => None,
        }
    }
}

/// One replica of a range: the node holding it and its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplicaDesc {
    /// The node the replica lives on (also its Raft peer id).
    pub node_id: u64,
    /// Its role in the Raft group.
    pub role: ReplicaRole,
}

/// Which keys a range serves, at which epoch, on which nodes, and under
/// which namespace its data lives.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeDescriptor {
    /// The range (Raft group) this describes; its Raft records are keyed
    /// by it.
    pub range_id: u64,
    /// The namespace whose data the range serves: every data record (keys,
    /// MVCC history, the revision counter, leases, lock queues) is stored
    /// under this id, not under the range id (see [`crate::keys`]), so the
    /// namespace can move to another Raft group by a descriptor change and
    /// a snapshot, with no key rewritten and no revision reset. Assigned
    /// once, when the namespace is created (at bootstrap: the id of the
    /// range that first serves it).
    pub namespace_id: u64,
    /// Inclusive start of the user-key span.
    pub start: Vec<u8>,
    /// Exclusive end; empty means "to the end of the keyspace".
    pub end: Vec<u8>,
    /// The range's version, for rejecting stale messages and requests.
    pub epoch: RangeEpoch,
    /// The range's replicas and their roles.
    pub replicas: Vec<ReplicaDesc>,
}

/// Upper bound on replicas in a decoded descriptor: anything larger is
/// corruption, not a configuration.
const MAX_REPLICAS: u64 = 64;

/// Keys a request touches, with etcd's conventions: an empty `range_end`
/// is the single key `key`; `[0]` is every key from `key` on; a `range_end`
/// at or below `key` is an empty interval (only `key` is checked).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyInterval {
    /// The first (or only) key.
    pub key: Vec<u8>,
    /// Exclusive end, with the conventions above.
    pub range_end: Vec<u8>,
}

impl KeyInterval {
    /// The single key `key`.
    pub fn key(key: &[u8]) -> Self {
        KeyInterval { key: key.to_vec(), range_end: Vec::new() }
    }

    /// `[key, range_end)` with etcd's conventions.
    pub fn range(key: &[u8], range_end: &[u8]) -> Self {
        KeyInterval { key: key.to_vec(), range_end: range_end.to_vec() }
    }
}

impl RangeDescriptor {
    /// Whether `key` lies in `[start, end)` (an empty `end`: unbounded).
    pub fn contains_key(&self, key: &[u8]) -> bool {
        key >= self.start.as_slice() && (self.end.is_empty() || key < self.end.as_slice())
    }

    /// Whether every key of `k` lies in this range's span.
    pub fn contains_interval(&self, k: &KeyInterval) -> bool {
        if !self.contains_key(&k.key) {
            return false;
        }
        match k.range_end.as_slice() {
            [] => true,
            [0] => self.end.is_empty(),
            end if end <= k.key.as_slice() => true, // an empty interval
            end => self.end.is_empty() || end <= self.end.as_slice(),
        }
    }

    /// The replica on node `node_id`, if the range has one there.
    pub fn replica(&self, node_id: u64) -> Option<&ReplicaDesc> {
        self.replicas.iter().find(|r| r.node_id == node_id)
    }

    /// The checksummed record stored in [`crate::Cf::Meta`] (and carried in
    /// a snapshot's header).
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::new();
        e.u64(self.range_id).bytes(&self.start).bytes(&self.end);
        e.u64(self.epoch.conf_ver).u64(self.epoch.version);
        e.u64(self.replicas.len() as u64);
        for r in &self.replicas {
            e.u64(r.node_id).u64(r.role.code());
        }
        e.u64(self.namespace_id);
        e.finish()
    }

    /// Decodes what [`RangeDescriptor::encode`] wrote. A bad record
    /// (including an unknown role or implausibly many replicas) is
    /// [`StorageError::Corrupt`] naming `range_id`; the decoded
    /// `range_id` field is whatever the record holds.
    pub fn decode(raw: &[u8], range_id: u64) -> StorageResult<Self> {
        let mut d = Dec::new(raw, range_id, "range descriptor")?;
        let corrupt = |what: &str| StorageError::Corrupt { range_id, what: format!("range descriptor: {what}") };
        let id = d.u64()?;
        let start = d.bytes()?.to_vec();
        let end = d.bytes()?.to_vec();
        let epoch = RangeEpoch { conf_ver: d.u64()?, version: d.u64()? };
        let n = d.u64()?;
        if n > MAX_REPLICAS {
            return Err(corrupt("too many replicas"));
        }
        let mut replicas = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let node_id = d.u64()?;
            let role = ReplicaRole::from_code(d.u64()?).ok_or_else(|| corrupt("unknown role"))?;
            replicas.push(ReplicaDesc { node_id, role });
        }
        let namespace_id = d.u64()?;
        d.finish()?;
        Ok(Self { range_id: id, namespace_id, start, end, epoch, replicas })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_interval_follows_etcds_conventions() {
        let d = RangeDescriptor { range_id: 3, start: b"/a/".to_vec(), end: b"/a0".to_vec(), ..Default::default() };
        assert!(d.contains_interval(&KeyInterval::key(b"/a/x")));
        assert!(!d.contains_interval(&KeyInterval::key(b"/b/x")));
        assert!(d.contains_interval(&KeyInterval::range(b"/a/", b"/a0")), "the whole prefix");
        assert!(!d.contains_interval(&KeyInterval::range(b"/a/", b"/b")), "past the end");
        assert!(!d.contains_interval(&KeyInterval::range(b"/a/", &[0])), "from a key on, unbounded");
        assert!(d.contains_interval(&KeyInterval::range(b"/a/x", b"/a/")), "empty: only the key counts");
        assert!(!d.contains_interval(&KeyInterval::range(b"/", b"/a/x")), "starts before the span");
        let everything = RangeDescriptor { range_id: 2, ..Default::default() };
        assert!(everything.contains_interval(&KeyInterval::range(b"", &[0])));
    }

    #[test]
    fn records_roundtrip() {
        let mut rs = RaftLocalState::default();
        rs.hard_state.term = 3;
        rs.hard_state.commit = 9;
        rs.conf_state.voters = vec![1, 2, 3];
        rs.truncated_index = 5;
        rs.truncated_term = 2;
        assert_eq!(RaftLocalState::decode(&rs.encode(), 1).unwrap(), rs);

        let a = ApplyState { applied_index: 8, applied_term: 3 };
        assert_eq!(ApplyState::decode(&a.encode(), 1).unwrap(), a);

        let d = RangeDescriptor {
            range_id: 4,
            namespace_id: 4,
            start: b"/a/".to_vec(),
            end: b"/b/".to_vec(),
            epoch: RangeEpoch { conf_ver: 2, version: 1 },
            replicas: vec![ReplicaDesc { node_id: 1, role: ReplicaRole::Voter }, ReplicaDesc { node_id: 9, role: ReplicaRole::Learner }],
        };
        assert_eq!(RangeDescriptor::decode(&d.encode(), 4).unwrap(), d);
        assert!(d.contains_key(b"/a/x") && !d.contains_key(b"/b/"));
    }
}
