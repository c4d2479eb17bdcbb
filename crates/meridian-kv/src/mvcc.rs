//! MVCC over a range's data: revisions, current and historical reads,
//! write transactions, compaction and leases.

use meridian_raftstore::ApplyContext;
use prost::Message as _;

use crate::error::KvError;
use crate::keys;
use crate::read::DataRead;

/// Wire-compatible with `mvccpb.KeyValue` (same tags), so it converts to
/// the etcd type by re-encoding or field copy.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct KeyValue {
    /// The key.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The revision of the key's latest creation.
    #[prost(int64, tag = "2")]
    pub create_revision: i64,
    /// The revision of the key's latest write.
    #[prost(int64, tag = "3")]
    pub mod_revision: i64,
    /// Writes since the key's latest creation (1 at creation).
    #[prost(int64, tag = "4")]
    pub version: i64,
    /// The value.
    #[prost(bytes = "vec", tag = "5")]
    pub value: Vec<u8>,
    /// The lease the key is attached to; 0: none.
    #[prost(int64, tag = "6")]
    pub lease: i64,
}

/// The kind of an [`Event`] (`mvccpb.Event.EventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A key was written.
    Put = 0,
    /// A key was deleted.
    Delete = 1,
}

/// Wire-compatible with `mvccpb.Event`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Event {
    /// An [`EventKind`], as `i32`.
    #[prost(int32, tag = "1")]
    pub kind: i32,
    /// The key-value after the event; for a delete, only the key and
    /// `mod_revision` (the revision of the delete).
    #[prost(message, optional, tag = "2")]
    pub kv: Option<KeyValue>,
    /// The key-value before the event; `None` if the key did not exist.
    #[prost(message, optional, tag = "3")]
    pub prev_kv: Option<KeyValue>,
}

impl Event {
    /// The event is a delete.
    pub fn is_delete(&self) -> bool {
        self.kind == EventKind::Delete as i32
    }
}

/// The range's MVCC bookkeeping.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Meta {
    /// The range's current revision (1 while the range is empty).
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// The revision of the last compaction; 0: none.
    #[prost(int64, tag = "2")]
    pub compact_revision: i64,
    /// The highest lease sequence number granted (the bits below
    /// [`LEASE_NAMESPACE_SHIFT`]), from which grants of id 0 pick the next.
    #[prost(int64, tag = "3")]
    pub last_lease_id: i64,
}

impl Meta {
    /// The revision a read of `revision` (0 or less: the current one) sees:
    /// refused when it is in the future or below the compaction.
    pub(crate) fn readable(&self, revision: i64) -> Result<i64, KvError> {
        let rev = if revision <= 0 { self.revision } else { revision };
        if rev > self.revision {
            return Err(KvError::FutureRevision { revision: rev, current: self.revision });
        }
        if rev < self.compact_revision {
            return Err(KvError::Compacted { compact_revision: self.compact_revision });
        }
        Ok(rev)
    }
}

/// A lease record.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct LeaseRecord {
    /// The lease's id.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL, in seconds.
    #[prost(int64, tag = "2")]
    pub ttl_s: i64,
    /// Remaining TTL at the last checkpoint; 0 = never checkpointed, or
    /// reset by a keepalive since.
    #[prost(int64, tag = "3")]
    pub remaining_ttl_s: i64,
    /// Checkpoint resets applied so far (a keepalive after a checkpoint
    /// resets it through the log before it is answered). A checkpoint
    /// computed at a lower count is older than a keepalive that was
    /// answered, and is ignored.
    #[prost(uint64, tag = "4")]
    pub resets: u64,
}

/// History record: a version of a key, or a tombstone.
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct Version {
    #[prost(message, optional, tag = "1")]
    kv: Option<KeyValue>,
    #[prost(bool, tag = "2")]
    tombstone: bool,
}

/// The history record of `kv` as its live version (what a put writes).
pub(crate) fn version_record(kv: &KeyValue) -> Vec<u8> {
    Version { kv: Some(kv.clone()), tombstone: false }.encode_to_vec()
}

/// A tombstone history record (what a delete writes).
pub(crate) fn tombstone_record() -> Vec<u8> {
    Version { kv: None, tombstone: true }.encode_to_vec()
}

/// Event-log record: which key changed at the revision in its log key, and
/// the revision of the version it replaced. The values live once, in the
/// history; a watcher replaying the log reads them from there (storing
/// them here too made every put write its value four times).
#[derive(Clone, PartialEq, Eq, prost::Message)]
struct EventRef {
    #[prost(int32, tag = "1")]
    kind: i32,
    /// Tags 2 and 3 held whole key-values in an earlier layout; a record of
    /// that layout decodes here with an empty `key` and is read as such.
    #[prost(bytes = "vec", tag = "4")]
    key: Vec<u8>,
    /// 0: the key did not exist before.
    #[prost(int64, tag = "5")]
    prev_rev: i64,
}

fn decode<T: prost::Message + Default>(raw: &[u8], what: &str) -> Result<T, KvError> {
    T::decode(raw).map_err(|e| KvError::Storage(format!("corrupt {what}: {e}")))
}

/// Lease ids carry their namespace id above this bit (the namespace, not
/// the range: a lease stays valid when its namespace moves).
pub const LEASE_NAMESPACE_SHIFT: u32 = 40;

/// The namespace a lease id belongs to (0: not encoded, e.g. a
/// client-chosen id).
pub fn lease_namespace(id: i64) -> u64 {
    (id >> LEASE_NAMESPACE_SHIFT) as u64
}

/// Scans `[start, end)` decoding every value as a `T`; the first corrupt
/// record stops the scan and is the error.
fn scan_decoded<T: prost::Message + Default>(
    r: &dyn DataRead,
    start: &[u8],
    end: &[u8],
    what: &str,
    mut f: impl FnMut(&[u8], T) -> bool,
) -> Result<(), KvError> {
    let mut err = None;
    r.scan(start, end, &mut |k, v| match decode::<T>(v, what) {
        Ok(x) => f(k, x),
        Err(e) => {
            err = Some(e);
            false
        }
    })?;
    err.map_or(Ok(()), Err)
}

/// Entry points of the MVCC layer. Stateless: all state is in the data.
pub struct Mvcc;

/// Result of a range read before filters, sorting and limits.
#[derive(Debug, Default, Clone)]
pub struct RangeResult {
    /// The key-values, in key order, at most the limit.
    pub kvs: Vec<KeyValue>,
    /// Keys in the range at the revision (not limited).
    pub count: i64,
    /// The revision the read was served at.
    pub revision: i64,
}

impl Mvcc {
    /// The range's meta record (revision 1 for an empty range).
    pub fn meta(r: &dyn DataRead) -> Result<Meta, KvError> {
        match r.get(keys::META)? {
            Some(raw) => decode(&raw, "meta"),
            // Like etcd, an empty range is at revision 1 and its first
            // write is revision 2: clients rely on it (clientv3's election
            // recipe waits on keys created before `revision - 1`, where 0
            // would mean "no bound").
            None => Ok(Meta { revision: 1, ..Meta::default() }),
        }
    }

    /// Current value of one key.
    pub fn get(r: &dyn DataRead, key: &[u8]) -> Result<Option<KeyValue>, KvError> {
        match r.get(&keys::index_key(key))? {
            Some(raw) => Ok(Some(decode(&raw, "index entry")?)),
            None => Ok(None),
        }
    }

    /// Keys in `[key, end)` (`end` empty: just `key`; `end == [0]`: every
    /// key ≥ `key`) at `revision` (0: current). `limit` 0 = all; with a
    /// limit, `count` still counts every key in the range.
    pub fn range(r: &dyn DataRead, key: &[u8], end: &[u8], revision: i64, limit: usize) -> Result<RangeResult, KvError> {
        let meta = Self::meta(r)?;
        let rev = meta.readable(revision)?;
        let mut out = RangeResult { revision: meta.revision, ..Default::default() };
        let keep = |out: &mut RangeResult, kv: KeyValue| {
            out.count += 1;
            if limit == 0 || out.kvs.len() < limit {
                out.kvs.push(kv);
            }
        };
        if end.is_empty() {
            let kv = if rev == meta.revision { Self::get(r, key)? } else { Self::get_at(r, key, rev)? };
            if let Some(kv) = kv {
                keep(&mut out, kv);
            }
            return Ok(out);
        }
        let end = if end == [0] { &[][..] } else { end };
        if !end.is_empty() && key >= end {
            return Ok(out);
        }
        if rev == meta.revision {
            let (s, e) = keys::index_bounds(key, end);
            scan_decoded::<KeyValue>(r, &s, &e, "index entry", |_, kv| {
                keep(&mut out, kv);
                true
            })?;
            return Ok(out);
        }
        // Historical: the last version ≤ rev of every key, unless it is a
        // tombstone.
        let (s, e) = keys::history_bounds(key, end);
        let mut current: Option<(Vec<u8>, Option<KeyValue>)> = None;
        let mut found: Vec<KeyValue> = Vec::new();
        let mut err = None;
        r.scan(&s, &e, &mut |k, v| {
            let Some((ukey, vrev)) = keys::parse_history_key(k) else {
                err = Some(KvError::Storage("corrupt history key".into()));
                return false;
            };
            if current.as_ref().is_some_and(|(ck, _)| *ck != ukey) {
                if let Some((_, Some(kv))) = current.take() {
                    found.push(kv);
                }
            }
            if vrev > rev {
                if current.is_none() {
                    current = Some((ukey, None));
                }
                return true;
            }
            match decode::<Version>(v, "history entry") {
                Ok(ver) => current = Some((ukey, if ver.tombstone { None } else { ver.kv })),
                Err(x) => {
                    err = Some(x);
                    return false;
                }
            }
            true
        })?;
        if let Some(x) = err {
            return Err(x);
        }
        if let Some((_, Some(kv))) = current {
            found.push(kv);
        }
        for kv in found {
            keep(&mut out, kv);
        }
        Ok(out)
    }

    fn get_at(r: &dyn DataRead, key: &[u8], rev: i64) -> Result<Option<KeyValue>, KvError> {
        let s = keys::history_key(key, 0);
        let e = keys::history_key(key, rev.saturating_add(1));
        let mut last = None;
        scan_decoded::<Version>(r, &s, &e, "history entry", |_, ver| {
            last = if ver.tombstone { None } else { ver.kv };
            true
        })?;
        Ok(last)
    }

    /// A hash of every stored version (its history key and record) at or
    /// below `revision` (0: the current revision), in key order: equal on
    /// every replica that applied the same log, different when a replica's
    /// data differs. What compaction removed is not hashed, so replicas
    /// compare equal at any revision at or above their compaction.
    pub fn hash_kv(r: &dyn DataRead, revision: i64) -> Result<crate::command::HashKvOutcome, KvError> {
        let meta = Self::meta(r)?;
        let rev = meta.readable(revision)?;
        let mut hasher = crc32fast::Hasher::new();
        r.scan(&[keys::HISTORY], &[keys::HISTORY + 1], &mut |k, v| {
            if keys::parse_history_key(k).is_none_or(|(_, vrev)| vrev <= rev) {
                hasher.update(k);
                hasher.update(v);
            }
            true
        })?;
        Ok(crate::command::HashKvOutcome { hash: hasher.finalize(), compact_revision: meta.compact_revision, hash_revision: rev })
    }

    /// Events with revision ≥ `from`, in order, at most `limit`. Errors if
    /// `from` was compacted away (is below the compaction revision).
    pub fn events_since(r: &dyn DataRead, from: i64, limit: usize) -> Result<Vec<(i64, Event)>, KvError> {
        Ok(Self::events_from(r, from, 0, limit)?.into_iter().map(|(rev, _, e)| (rev, e)).collect())
    }

    /// Events from position `(from, from_sub)` on (revision, then the
    /// event's sub-revision), in order, at most `limit`, each with its
    /// revision and sub-revision. Errors if `from` is below the compaction
    /// revision; events of the compaction revision itself are kept (a put
    /// there is its key's kept version), without the `prev_kv` compaction
    /// removed, as etcd serves them.
    pub fn events_from(r: &dyn DataRead, from: i64, from_sub: i64, limit: usize) -> Result<Vec<(i64, i64, Event)>, KvError> {
        let meta = Self::meta(r)?;
        if from > 0 && from < meta.compact_revision {
            return Err(KvError::Compacted { compact_revision: meta.compact_revision });
        }
        let mut logged: Vec<(i64, i64, Vec<u8>)> = Vec::new();
        let start = if from > 0 { keys::event_key(from, from_sub.max(0)) } else { keys::event_key(1, 0) };
        r.scan(&start, &[keys::EVENTS + 1], &mut |k, v| {
            let word = |at: usize| k.get(at..at + 8).map_or(0, |b| u64::from_be_bytes(b.try_into().expect("8 bytes")) as i64);
            logged.push((word(1), word(9), v.to_vec()));
            logged.len() < limit
        })?;
        let mut out = Vec::with_capacity(logged.len());
        for (rev, sub, raw) in logged {
            let ev: EventRef = decode(&raw, "event")?;
            let event = if ev.key.is_empty() {
                // Written by the earlier layout (whole key-values, tags 2
                // and 3): still readable, e.g. from an older node's snapshot.
                decode::<Event>(&raw, "event")?
            } else {
                Self::resolve(r, rev, ev, meta.compact_revision)?
            };
            out.push((rev, sub, event));
        }
        Ok(out)
    }

    /// Rebuilds a logged event from the history: the version written at
    /// `rev` and the one it replaced (compaction keeps both while the event
    /// is kept: it keeps every key's last version at or before the
    /// compaction revision).
    fn resolve(r: &dyn DataRead, rev: i64, ev: EventRef, compact_revision: i64) -> Result<Event, KvError> {
        let version = |at: i64| -> Result<Option<KeyValue>, KvError> {
            let raw = r.get(&keys::history_key(&ev.key, at))?.ok_or_else(|| {
                KvError::Storage(format!(
                    "history of {:?} at revision {at} missing for the event at {rev}",
                    String::from_utf8_lossy(&ev.key)
                ))
            })?;
            let v: Version = decode(&raw, "history entry")?;
            Ok(if v.tombstone { None } else { v.kv })
        };
        let kv = if ev.kind == EventKind::Delete as i32 {
            Some(KeyValue { key: ev.key.clone(), mod_revision: rev, ..Default::default() })
        } else {
            version(rev)?
        };
        // An event at the compaction revision lost its previous version to
        // the compaction (it was below it).
        let prev_kv = if ev.prev_rev > 0 && rev > compact_revision { version(ev.prev_rev)? } else { None };
        Ok(Event { kind: ev.kind, kv, prev_kv })
    }

    /// The record of lease `id`; `None` if it does not exist.
    pub fn lease(r: &dyn DataRead, id: i64) -> Result<Option<LeaseRecord>, KvError> {
        match r.get(&keys::lease_key(id))? {
            Some(raw) => Ok(Some(decode(&raw, "lease")?)),
            None => Ok(None),
        }
    }

    /// Every lease record, in id order.
    pub fn leases(r: &dyn DataRead) -> Result<Vec<LeaseRecord>, KvError> {
        let mut out = Vec::new();
        scan_decoded::<LeaseRecord>(r, &[keys::LEASE], &[keys::LEASE + 1], "lease", |_, l| {
            out.push(l);
            true
        })?;
        Ok(out)
    }

    /// The keys attached to lease `id`, in key order.
    pub fn lease_keys(r: &dyn DataRead, id: i64) -> Result<Vec<Vec<u8>>, KvError> {
        let (s, e) = keys::attach_prefix(id);
        let mut out = Vec::new();
        r.scan(&s, &e, &mut |k, _| {
            out.push(k[9..].to_vec());
            true
        })?;
        Ok(out)
    }
}

/// One write transaction: every change gets the same main revision
/// (current + 1) and increasing sub-revisions. Nothing is visible to other
/// readers until the entry's apply batch is written; if it changes nothing,
/// the revision does not move.
pub struct WriteTxn<'c, 'a> {
    ctx: &'c mut ApplyContext<'a>,
    meta: Meta,
    sub: i64,
    events: Vec<Event>,
    /// Something other than a key changed (a lock grant) and must have a
    /// revision of its own.
    bump: bool,
}

impl<'c, 'a> WriteTxn<'c, 'a> {
    /// Starts a transaction on the apply context of the entry.
    pub fn begin(ctx: &'c mut ApplyContext<'a>) -> Result<Self, KvError> {
        let meta = Mvcc::meta(ctx)?;
        Ok(WriteTxn { ctx, meta, sub: 0, events: Vec::new(), bump: false })
    }

    /// Reads see this transaction's own earlier writes.
    pub fn reader(&self) -> &dyn DataRead {
        &*self.ctx
    }

    /// The meta record as this transaction left it (`revision` is the one
    /// before the commit).
    pub fn meta(&self) -> Meta {
        self.meta
    }

    /// The revision this transaction commits at, if it changes anything.
    pub fn next_rev(&self) -> i64 {
        self.meta.revision + 1
    }

    /// Makes the transaction take a revision even with no key changed: a
    /// lock grant's fencing token is that revision.
    pub fn bump(&mut self) -> i64 {
        self.bump = true;
        self.next_rev()
    }

    /// Whether anyone on this node waits for the command's answer
    /// ([`ApplyContext::answered`]).
    pub fn answered(&self) -> bool {
        self.ctx.answered()
    }

    /// Raw access to the range's records (lock queues live beside keys).
    pub(crate) fn ctx(&mut self) -> &mut ApplyContext<'a> {
        self.ctx
    }

    fn record(&mut self, key: &[u8], version: Version, event: Event) {
        let rev = self.next_rev();
        self.ctx.put(&keys::history_key(key, rev), &version.encode_to_vec());
        let prev_rev = event.prev_kv.as_ref().map_or(0, |p| p.mod_revision);
        let logged = EventRef { kind: event.kind, key: key.to_vec(), prev_rev };
        self.ctx.put(&keys::event_key(rev, self.sub), &logged.encode_to_vec());
        self.sub += 1;
        self.events.push(event);
    }

    /// Puts `key`. `lease` 0 = none; a lease that does not exist is an
    /// error and changes nothing. Returns the previous value.
    pub fn put(&mut self, key: &[u8], value: &[u8], lease: i64) -> Result<Option<KeyValue>, KvError> {
        if key.is_empty() {
            return Err(KvError::EmptyKey);
        }
        if lease != 0 && Mvcc::lease(&*self.ctx, lease)?.is_none() {
            return Err(KvError::LeaseNotFound { lease_id: lease });
        }
        let prev = Mvcc::get(&*self.ctx, key)?;
        let rev = self.next_rev();
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
            mod_revision: rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value: value.to_vec(),
            lease,
        };
        if let Some(p) = &prev {
            if p.lease != 0 && p.lease != lease {
                self.ctx.delete(&keys::attach_key(p.lease, key));
            }
        }
        if lease != 0 {
            self.ctx.put(&keys::attach_key(lease, key), b"");
        }
        self.ctx.put(&keys::index_key(key), &kv.encode_to_vec());
        let event = Event { kind: EventKind::Put as i32, kv: Some(kv.clone()), prev_kv: prev.clone() };
        self.record(key, Version { kv: Some(kv), tombstone: false }, event);
        Ok(prev)
    }

    /// Deletes the keys of `[key, end)` (same conventions as
    /// [`Mvcc::range`]). Returns the deleted key-values.
    pub fn delete_range(&mut self, key: &[u8], end: &[u8]) -> Result<Vec<KeyValue>, KvError> {
        let doomed = Mvcc::range(&*self.ctx, key, end, 0, 0)?.kvs;
        let rev = self.next_rev();
        for kv in &doomed {
            self.ctx.delete(&keys::index_key(&kv.key));
            if kv.lease != 0 {
                self.ctx.delete(&keys::attach_key(kv.lease, &kv.key));
            }
            let tomb = KeyValue { key: kv.key.clone(), mod_revision: rev, ..Default::default() };
            let event = Event { kind: EventKind::Delete as i32, kv: Some(tomb), prev_kv: Some(kv.clone()) };
            self.record(&kv.key, Version { kv: None, tombstone: true }, event);
        }
        Ok(doomed)
    }

    /// Creates a lease. `id` 0 picks the next free id, which carries the
    /// namespace id in its top bits (see [`lease_namespace`]) so any node
    /// can route a lease to the range that serves its namespace.
    pub fn grant_lease(&mut self, id: i64, ttl_s: i64) -> Result<LeaseRecord, KvError> {
        if id < 0 {
            return Err(KvError::Invalid("lease id must not be negative".into()));
        }
        let namespace_id = self.ctx.namespace_id() as i64;
        let id = if id == 0 { (namespace_id << LEASE_NAMESPACE_SHIFT) | (self.meta.last_lease_id.max(0) + 1) } else { id };
        if Mvcc::lease(&*self.ctx, id)?.is_some() {
            return Err(KvError::LeaseExists { lease_id: id });
        }
        let rec = LeaseRecord { id, ttl_s, remaining_ttl_s: 0, resets: 0 };
        self.ctx.put(&keys::lease_key(id), &rec.encode_to_vec());
        self.meta.last_lease_id = self.meta.last_lease_id.max(id & ((1 << LEASE_NAMESPACE_SHIFT) - 1));
        self.ctx.put(keys::META, &self.meta.encode_to_vec());
        Ok(rec)
    }

    /// Deletes a lease and, in the same revision, every key attached to it.
    pub fn revoke_lease(&mut self, id: i64) -> Result<Vec<KeyValue>, KvError> {
        if Mvcc::lease(&*self.ctx, id)?.is_none() {
            return Err(KvError::LeaseNotFound { lease_id: id });
        }
        let mut deleted = Vec::new();
        for key in Mvcc::lease_keys(&*self.ctx, id)? {
            deleted.extend(self.delete_range(&key, b"")?);
        }
        self.ctx.delete(&keys::lease_key(id));
        Ok(deleted)
    }

    /// Applies a lease checkpoint (see [`crate::command::LeaseCheckpointOp`]):
    /// records the remaining TTL so a new leader continues the lease
    /// instead of restarting it, or — `remaining_ttl_s` 0 — resets it after
    /// a keepalive, so the full TTL applies again. A checkpoint computed at
    /// a reset count below the record's is stale (a keepalive was answered
    /// since) and changes nothing. Answers the record as it stands.
    pub fn checkpoint_lease(&mut self, id: i64, remaining_ttl_s: i64, resets: u64) -> Result<LeaseRecord, KvError> {
        let Some(mut rec) = Mvcc::lease(&*self.ctx, id)? else { return Err(KvError::LeaseNotFound { lease_id: id }) };
        if remaining_ttl_s == 0 {
            rec.remaining_ttl_s = 0;
            rec.resets += 1;
        } else if resets >= rec.resets {
            rec.remaining_ttl_s = remaining_ttl_s.clamp(1, rec.ttl_s.max(1));
        } else {
            return Ok(rec);
        }
        self.ctx.put(&keys::lease_key(id), &rec.encode_to_vec());
        Ok(rec)
    }

    /// Raises the revision to `floor` if it is below (a dropped
    /// namespace's prefix returning: its tokens must keep growing here).
    pub fn raise_revision(&mut self, floor: i64) {
        if floor > self.meta.revision {
            self.meta.revision = floor;
            self.ctx.put(keys::META, &self.meta.encode_to_vec());
        }
    }

    /// Finishes: bumps the revision if anything changed. Returns the
    /// revision after the transaction and its events.
    /// Ends the write: the range's revision after it, its events, and
    /// whether it took a revision.
    pub fn commit(mut self) -> (i64, Vec<Event>, bool) {
        let moved = self.sub > 0 || self.bump;
        if moved {
            self.meta.revision += 1;
            self.ctx.put(keys::META, &self.meta.encode_to_vec());
        }
        (self.meta.revision, self.events, moved)
    }

    /// Compacts history below `rev`: keeps, for every key, its latest
    /// version at or before `rev` (unless that is a tombstone) and all
    /// later ones; removes the events below `rev` (those of `rev` itself
    /// stay, so a watch may start at the compaction revision, as in etcd).
    pub fn compact(&mut self, rev: i64) -> Result<(), KvError> {
        if rev <= self.meta.compact_revision {
            return Err(KvError::Compacted { compact_revision: self.meta.compact_revision });
        }
        if rev > self.meta.revision {
            return Err(KvError::FutureRevision { revision: rev, current: self.meta.revision });
        }
        let mut doomed: Vec<Vec<u8>> = Vec::new();
        let mut last_le: Option<(Vec<u8>, Vec<u8>, bool)> = None; // (user key, history key, tombstone)
        let mut err = None;
        self.ctx.scan(&[keys::HISTORY], &[keys::HISTORY + 1], &mut |k, v| {
            let Some((ukey, vrev)) = keys::parse_history_key(k) else {
                err = Some(KvError::Storage("corrupt history key".into()));
                return false;
            };
            if vrev > rev {
                return true;
            }
            let tomb = match decode::<Version>(v, "history entry") {
                Ok(ver) => ver.tombstone,
                Err(x) => {
                    err = Some(x);
                    return false;
                }
            };
            // Of a key's versions at or before `rev`, all but the last go;
            // the last goes too if it is a tombstone.
            if let Some((pk, phk, ptomb)) = last_le.take() {
                if pk == ukey || ptomb {
                    doomed.push(phk);
                }
            }
            last_le = Some((ukey, k.to_vec(), tomb));
            true
        })?;
        if let Some(x) = err {
            return Err(x);
        }
        if let Some((_, hk, true)) = last_le {
            doomed.push(hk);
        }
        for k in doomed {
            self.ctx.delete(&k);
        }
        let mut events = Vec::new();
        self.ctx.scan(&keys::event_key(1, 0), &keys::event_key(rev, 0), &mut |k, _| {
            events.push(k.to_vec());
            true
        })?;
        for k in events {
            self.ctx.delete(&k);
        }
        self.meta.compact_revision = rev;
        self.ctx.put(keys::META, &self.meta.encode_to_vec());
        Ok(())
    }
}
