//! Carving a namespace out of the range that holds it (a runtime
//! `namespace create` or `split`), giving a dropped one back, and merging
//! one back with its keys ([`seal_for_merge`], then [`absorb`] on the
//! parent: keys keep their revisions, the parent's revision is raised to
//! the namespace's last, and its history of the prefix below that reads
//! as compacted — the merge floor, [`check_floors`]).
//!
//! A carve is one command in the parent range's log (the root range's, for
//! a prefix nobody declared). Applied, on every replica alike and in the
//! entry's one write:
//!
//! ```text
//!  parent namespace (e.g. root, id 2)          new namespace (id N, range R)
//!    k<key> for keys under the prefix  ──move──►  k<key>, h<key><mod_rev>
//!    x<prefix> = N  (the fence)                   m: revision = compact = parent's revision
//!                                                 + range R's raft state (voters: the parent's)
//! ```
//!
//! Keys keep their create/mod revisions and versions; the new namespace's
//! revision starts at the parent's current revision, above every revision
//! its keys carried, so fencing tokens (grant revisions) under the prefix
//! keep growing. Its history starts there (older revisions read as
//! compacted). The parent keeps its own history records of the moved keys
//! (its event log refers to them) until its compaction.
//!
//! From then on the parent refuses every command and query that touches
//! the prefix with [`KvError::NamespaceMoved`] — also ones proposed before
//! the carve and applied after it — so no write lands on the wrong side.
//!
//! Refused, changing nothing: keys under the prefix attached to a lease
//! (leases belong to their namespace and cannot follow), locks held or
//! waited for under it, more than [`MAX_CARVE_KEYS`] keys, a prefix that
//! overlaps an earlier carve, and a parent in joint consensus.

use meridian_raftstore::SplitOff;
use meridian_storage::{RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};
use prost::Message as _;

use crate::command::{AbsorbOp, CarveOp, CarveOutcome, MergeFloor, SealOp, SealOutcome, UncarveOp};
use crate::error::KvError;
use crate::keys;
use crate::mvcc::{tombstone_record, version_record, KeyValue, Meta, Mvcc, WriteTxn};
use crate::read::DataRead;

/// Most keys one carve moves (they travel in one write, on the store's
/// thread, on every replica; a larger prefix needs a namespace created
/// before its keys are written).
pub const MAX_CARVE_KEYS: usize = 100_000;
/// Most bytes (keys and values) one carve moves, for the same reason.
pub const MAX_CARVE_BYTES: usize = 64 << 20;
/// Most keys a merge moves. They travel in two commands (the seal's
/// outcome, then the parent's absorb), so a merge is for small namespaces
/// only; the placement driver merges far smaller ones.
pub const MAX_MERGE_KEYS: usize = 10_000;
/// Most bytes (keys and values) a merge moves, for the same reason (below
/// the transport's largest message).
pub const MAX_MERGE_BYTES: usize = 4 << 20;

/// A carve record: where a prefix went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carved {
    /// The carved prefix.
    pub prefix: Vec<u8>,
    /// The namespace it became ([`SEALED`]: a seal, not a carve).
    pub namespace_id: u64,
    /// The range serving it.
    pub range_id: u64,
    /// The voters its range started with.
    pub voters: Vec<u64>,
}

impl Carved {
    /// The new range's descriptor as of the carve (none for a seal).
    pub fn descriptor(&self) -> Option<RangeDescriptor> {
        (self.namespace_id != SEALED).then(|| RangeDescriptor {
            range_id: self.range_id,
            namespace_id: self.namespace_id,
            start: self.prefix.clone(),
            end: keys::prefix_end(&self.prefix),
            epoch: RangeEpoch { conf_ver: 1, version: 1 },
            replicas: self.voters.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect(),
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + 8 * self.voters.len());
        for id in [self.namespace_id, self.range_id].iter().chain(&self.voters) {
            v.extend_from_slice(&id.to_be_bytes());
        }
        v
    }
}

/// The carve records of a range, by prefix. Each value: the namespace id,
/// the range id, then the voters, u64 big-endian each.
pub fn carved(r: &dyn DataRead) -> Result<Vec<Carved>, KvError> {
    let mut out = Vec::new();
    let mut bad = None;
    r.scan(&[keys::CARVED], &[keys::CARVED + 1], &mut |k, v| {
        if v.len() < 16 || v.len() % 8 != 0 {
            bad = Some(KvError::Storage(format!("corrupt carve record {k:?}")));
            return false;
        }
        let mut ids = v.chunks_exact(8).map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")));
        let namespace_id = ids.next().expect("checked length");
        let range_id = ids.next().expect("checked length");
        out.push(Carved { prefix: k[1..].to_vec(), namespace_id, range_id, voters: ids.collect() });
        true
    })?;
    bad.map_or(Ok(out), Err)
}

/// Whether the etcd-style interval `[key, end)` (empty `end`: the key
/// alone; `"\0"`: unbounded) touches a key under `prefix`.
pub fn touches(key: &[u8], end: &[u8], prefix: &[u8]) -> bool {
    if end.is_empty() {
        return key.starts_with(prefix);
    }
    let p_end = keys::prefix_end(prefix);
    let unbounded = end == [0];
    if !unbounded && end <= key {
        return false; // an empty interval
    }
    let starts_before_prefix_ends = p_end.is_empty() || key < p_end.as_slice();
    let ends_after_prefix_starts = unbounded || end > prefix;
    starts_before_prefix_ends && ends_after_prefix_starts
}

fn name(prefix: &[u8]) -> String {
    String::from_utf8_lossy(prefix).into_owned()
}

/// Applies [`CarveOp`] (see the module docs).
pub fn carve(w: &mut WriteTxn<'_, '_>, op: &CarveOp) -> Result<CarveOutcome, KvError> {
    let p = &op.prefix;
    if p.is_empty() {
        return Err(KvError::Invalid("a namespace prefix must not be empty".into()));
    }
    let parent_ns = w.ctx().namespace_id();
    if op.namespace_id == 0 || op.range_id == 0 || op.namespace_id == parent_ns || op.range_id == w.ctx().range_id() {
        return Err(KvError::Invalid(format!("carve of {:?}: invalid range {} / namespace {}", name(p), op.range_id, op.namespace_id)));
    }
    for c in carved(w.reader())? {
        let q = &c.prefix;
        if q == p {
            if c.namespace_id == op.namespace_id {
                return Ok(CarveOutcome { moved_keys: 0, start_revision: 0, already: true, voters: c.voters });
            }
            return Err(KvError::Invalid(format!("{:?} was already carved out (namespace {})", name(p), c.namespace_id)));
        }
        if q.starts_with(p) || p.starts_with(q) {
            return Err(KvError::Invalid(format!("{:?} overlaps namespace {:?}", name(p), name(q))));
        }
    }
    if w.ctx().joint() {
        return Err(KvError::ConfChanging);
    }
    let end = keys::prefix_end(p);
    let Some(moved) = current_versions(w.reader(), p, MAX_CARVE_KEYS, MAX_CARVE_BYTES)? else {
        return Err(KvError::Invalid(format!(
            "more than {MAX_CARVE_KEYS} keys or {} MiB under {:?}: too many to move in one step; delete some, or create the namespace before writing its keys",
            MAX_CARVE_BYTES >> 20,
            name(p)
        )));
    };
    let leased = moved.iter().filter(|kv| kv.lease != 0).count();
    if let Some(kv) = moved.iter().find(|kv| kv.lease != 0) {
        return Err(KvError::Invalid(format!(
            "{leased} key(s) under {:?} are attached to leases (e.g. {:?}, lease {:#x}); a lease cannot move to another namespace: revoke the leases or let them expire first",
            name(p),
            name(&kv.key),
            kv.lease
        )));
    }
    if let Some(lock) = first_lock_under(w.reader(), p)? {
        return Err(KvError::Invalid(format!(
            "lock {:?} under {:?} is held, waited for or under lock-delay; locks cannot move to another namespace: release them first",
            name(&lock),
            name(p)
        )));
    }
    let meta = w.meta();
    let mut records = Vec::with_capacity(2 * moved.len() + 1);
    for kv in &moved {
        records.push((keys::index_key(&kv.key), kv.encode_to_vec()));
        records.push((keys::history_key(&kv.key, kv.mod_revision), version_record(kv)));
    }
    let start = Meta { revision: meta.revision, compact_revision: meta.revision, last_lease_id: 0 };
    records.push((keys::META.to_vec(), start.encode_to_vec()));
    // The parent's history ends each moved key with a tombstone at a
    // revision of its own (no event: the keys did not change, they moved),
    // so its reads at later revisions — after a drop returns the prefix —
    // never see them, and its compaction removes their history.
    if !moved.is_empty() {
        let gone = w.bump();
        for kv in &moved {
            w.ctx().delete(&keys::index_key(&kv.key));
            w.ctx().put(&keys::history_key(&kv.key, gone), &tombstone_record());
        }
    }
    let voters = w.ctx().voters().to_vec();
    let record = Carved { prefix: p.clone(), namespace_id: op.namespace_id, range_id: op.range_id, voters: voters.clone() };
    w.ctx().put(&keys::carved_key(p), &record.encode());
    let desc = record.descriptor().expect("a carve, not a seal");
    debug_assert_eq!(desc.end, end);
    w.ctx().split_off(SplitOff { desc, records });
    Ok(CarveOutcome { moved_keys: moved.len() as u64, start_revision: meta.revision, already: false, voters })
}

/// A lock record (queue or lock-delay) named under `prefix`, if any.
fn first_lock_under(r: &dyn DataRead, prefix: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
    let mut found = None;
    // Escaping keeps a name's bytes in order, so every queue of a name under
    // the prefix sorts between these bounds.
    let mut s = vec![keys::LOCK];
    keys::escape(prefix, &mut s);
    s.truncate(s.len() - 2); // the terminator
    let e = keys::prefix_end(&s);
    r.scan(&s, &e, &mut |k, _| {
        found = keys::parse_lock_key(k);
        found.is_none()
    })?;
    if found.is_some() {
        return Ok(found);
    }
    let s = keys::delayed_lock_key(prefix);
    let e = keys::prefix_end(&s);
    r.scan(&s, &e, &mut |k, _| {
        found = Some(k[1..].to_vec());
        false
    })?;
    Ok(found)
}

/// Applies [`UncarveOp`]: the prefix is this range's again, and its
/// revision continues from at least `revision_floor`. Returns whether it
/// changed anything.
pub fn uncarve(w: &mut WriteTxn<'_, '_>, op: &UncarveOp) -> Result<bool, KvError> {
    // Only the carve to the namespace being dropped: a retry of an uncarve
    // that applied finds none (or the carve of a namespace created anew
    // under the same prefix since, which it must not touch).
    if !carved(w.reader())?.iter().any(|c| c.prefix == op.prefix && c.namespace_id == op.namespace_id) {
        return Ok(false);
    }
    w.ctx().delete(&keys::carved_key(&op.prefix));
    w.raise_revision(op.revision_floor);
    Ok(true)
}

/// Applies [`crate::command::Op::Seal`]: the range stops serving anything
/// (its keys stay, unread, until the range is retired); refused, changing
/// nothing, while the prefix holds keys or locks unless `force`.
pub fn seal(w: &mut WriteTxn<'_, '_>, op: &SealOp) -> Result<(), KvError> {
    let p = &op.prefix;
    if p.is_empty() {
        return Err(KvError::Invalid("a namespace prefix must not be empty".into()));
    }
    if carved(w.reader())?.iter().any(|c| c.prefix == *p && c.namespace_id == SEALED) {
        return Ok(());
    }
    if !op.force {
        let (s, e) = keys::index_bounds(p, &keys::prefix_end(p));
        let mut keys_held = 0u64;
        w.reader().scan(&s, &e, &mut |_, _| {
            keys_held += 1;
            true
        })?;
        if keys_held > 0 {
            return Err(KvError::Invalid(format!("namespace {:?} holds {keys_held} key(s); delete them first, or drop --force", name(p))));
        }
        if let Some(lock) = first_lock_under(w.reader(), p)? {
            return Err(KvError::Invalid(format!(
                "lock {:?} in namespace {:?} is held, waited for or under lock-delay; release it first, or drop --force",
                name(&lock),
                name(p)
            )));
        }
    }
    let record = Carved { prefix: p.clone(), namespace_id: SEALED, range_id: 0, voters: Vec::new() };
    w.ctx().put(&keys::carved_key(p), &record.encode());
    Ok(())
}

/// Applies a [`SealOp`] with `merge` set (see the module docs): seals the
/// range, keeping its keys, and exports them. Again on a range sealed for a
/// merge already (a retry): exports them again, changing nothing.
pub fn seal_for_merge(w: &mut WriteTxn<'_, '_>, op: &SealOp, sealed_already: bool) -> Result<SealOutcome, KvError> {
    let p = &op.prefix;
    if p.is_empty() {
        return Err(KvError::Invalid("a namespace prefix must not be empty".into()));
    }
    if !sealed_already {
        let leases = Mvcc::leases(w.reader())?;
        if let Some(l) = leases.first() {
            return Err(KvError::Invalid(format!(
                "namespace {:?} holds {} lease(s) (e.g. {:#x}); a lease cannot move to another namespace: revoke them or let them expire first",
                name(p),
                leases.len(),
                l.id
            )));
        }
        if let Some(lock) = first_lock_under(w.reader(), p)? {
            return Err(KvError::Invalid(format!(
                "lock {:?} in namespace {:?} is held, waited for or under lock-delay; locks cannot move to another namespace: release them first",
                name(&lock),
                name(p)
            )));
        }
    }
    let kvs = export(w.reader(), p)?;
    if !sealed_already {
        let record = Carved { prefix: p.clone(), namespace_id: SEALED, range_id: 0, voters: Vec::new() };
        w.ctx().put(&keys::carved_key(p), &record.encode());
    }
    Ok(SealOutcome { kvs })
}

/// The current version of every key under `prefix`, refused past the
/// merge's limits.
fn export(r: &dyn DataRead, p: &[u8]) -> Result<Vec<KeyValue>, KvError> {
    current_versions(r, p, MAX_MERGE_KEYS, MAX_MERGE_BYTES)?.ok_or_else(|| {
        KvError::Invalid(format!(
            "namespace {:?} holds more than {MAX_MERGE_KEYS} keys or {} MiB: too large to merge",
            name(p),
            MAX_MERGE_BYTES >> 20
        ))
    })
}

/// The current version of every key under `p`, in key order; `None` past
/// `max_keys` keys or `max_bytes` bytes (keys and records).
fn current_versions(r: &dyn DataRead, p: &[u8], max_keys: usize, max_bytes: usize) -> Result<Option<Vec<KeyValue>>, KvError> {
    let (s, e) = keys::index_bounds(p, &keys::prefix_end(p));
    let mut kvs = Vec::new();
    let mut bytes = 0usize;
    let mut too_many = false;
    let mut bad = None;
    r.scan(&s, &e, &mut |k, v| {
        bytes += k.len() + v.len();
        if kvs.len() == max_keys || bytes > max_bytes {
            too_many = true;
            return false;
        }
        match KeyValue::decode(v) {
            Ok(kv) => kvs.push(kv),
            Err(x) => {
                bad = Some(KvError::Storage(format!("corrupt index entry: {x}")));
                return false;
            }
        }
        true
    })?;
    match bad {
        Some(x) => Err(x),
        None => Ok((!too_many).then_some(kvs)),
    }
}

/// Applies [`AbsorbOp`]: the carve of the merged namespace is undone, this
/// range's revision continues from at least the namespace's last, and its
/// keys are written here as they were (create and mod revisions, versions;
/// no event: they did not change, they moved). Returns whether it changed
/// anything (a retry of an absorb that applied finds no carve).
pub fn absorb(w: &mut WriteTxn<'_, '_>, op: &AbsorbOp) -> Result<bool, KvError> {
    if !carved(w.reader())?.iter().any(|c| c.prefix == op.prefix && c.namespace_id == op.namespace_id) {
        return Ok(false);
    }
    if op.kvs.len() > MAX_MERGE_KEYS {
        return Err(KvError::Invalid(format!("a merge moves at most {MAX_MERGE_KEYS} keys, not {}", op.kvs.len())));
    }
    for kv in &op.kvs {
        let fits = kv.key.starts_with(&op.prefix)
            && kv.lease == 0
            && kv.version > 0
            && 0 < kv.create_revision
            && kv.create_revision <= kv.mod_revision
            && kv.mod_revision <= op.revision_floor;
        if !fits {
            return Err(KvError::Invalid(format!(
                "merge of {:?}: key {:?} (revisions {}..{}, version {}, lease {}) does not belong to it at revision {}",
                name(&op.prefix),
                name(&kv.key),
                kv.create_revision,
                kv.mod_revision,
                kv.version,
                kv.lease,
                op.revision_floor
            )));
        }
    }
    w.ctx().delete(&keys::carved_key(&op.prefix));
    w.raise_revision(op.revision_floor);
    // This range holds none of the namespace's history below its last
    // revision: reads there are compacted, watches from there refused.
    let floor = merge_floors(w.reader())?.into_iter().find(|f| f.prefix == op.prefix).map_or(0, |f| f.revision).max(op.revision_floor);
    w.ctx().put(&keys::merged_key(&op.prefix), &floor.to_be_bytes());
    for kv in &op.kvs {
        // This range ended the key's history with a tombstone when the
        // prefix was carved out; the key's version is its latest again.
        let mut later = Vec::new();
        let (s, e) = (keys::history_key(&kv.key, kv.mod_revision + 1), keys::history_key(&kv.key, i64::MAX));
        w.reader().scan(&s, &e, &mut |k, _| {
            later.push(k.to_vec());
            true
        })?;
        for k in later {
            w.ctx().delete(&k);
        }
        w.ctx().put(&keys::index_key(&kv.key), &kv.encode_to_vec());
        w.ctx().put(&keys::history_key(&kv.key, kv.mod_revision), &version_record(kv));
    }
    Ok(true)
}

/// The merge floors of a range ([`MergeFloor`]), by prefix.
pub fn merge_floors(r: &dyn DataRead) -> Result<Vec<MergeFloor>, KvError> {
    let mut out = Vec::new();
    let mut bad = None;
    r.scan(&[keys::MERGED], &[keys::MERGED + 1], &mut |k, v| match <[u8; 8]>::try_from(v) {
        Ok(b) => {
            out.push(MergeFloor { prefix: k[1..].to_vec(), revision: i64::from_be_bytes(b) });
            true
        }
        Err(_) => {
            bad = Some(KvError::Storage(format!("corrupt merge floor record {k:?}")));
            false
        }
    })?;
    bad.map_or(Ok(out), Err)
}

/// Whether a read at `revision` (0: the current one) of `[key, end)`
/// reaches below a merge floor: the first one it does, as the error.
pub fn check_floors(floors: &[MergeFloor], key: &[u8], end: &[u8], revision: i64) -> Result<(), KvError> {
    if revision <= 0 {
        return Ok(());
    }
    match floors.iter().find(|f| revision < f.revision && touches(key, end, &f.prefix)) {
        Some(f) => Err(KvError::Compacted { compact_revision: f.revision }),
        None => Ok(()),
    }
}

/// The namespace id a seal record names: none.
pub const SEALED: u64 = 0;

/// Whether `op`'s keys stay clear of every prefix in `carved`; the first
/// one they touch is the error.
pub fn check_clear(carved: &[Vec<u8>], intervals: &[meridian_storage::KeyInterval]) -> Result<(), KvError> {
    for k in intervals {
        if let Some(p) = carved.iter().find(|p| touches(&k.key, &k.range_end, p)) {
            return Err(KvError::NamespaceMoved { prefix: name(p) });
        }
    }
    Ok(())
}
