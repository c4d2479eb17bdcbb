//! raft-rs [`Storage`] for one range on top of an [`Engine`].
//!
//! Writes are *staged* into a caller-owned [`WriteBatch`] so the raftstore
//! can persist a whole poll round of ranges with one synced write; the
//! cached bounds here are updated at staging time, which is safe because
//! raft-rs does not read storage between `ready()` and `advance_append()`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage};

use crate::codec::{Dec, Enc};
use crate::engine::{Cf, Engine, WriteBatch};
use crate::error::{StorageError, StorageResult};
use crate::keys;
use crate::state::{ApplyState, RaftLocalState, RangeDescriptor};

/// A snapshot raft-rs asked for that is not built yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRequest {
    /// The range to snapshot.
    pub range_id: u64,
    /// The log index raft-rs asked for: the snapshot must cover at least
    /// this index (and the log's truncation point).
    pub request_index: u64,
    /// Node id of the follower the snapshot is for.
    pub to: u64,
}

#[derive(Default)]
struct SnapshotSlot {
    built: Option<Snapshot>,
    requested: Option<SnapshotRequest>,
}

/// One range's Raft storage: raft-rs's [`Storage`] over the range's records
/// in an [`Engine`], with the log's bounds, the raft and apply state, and
/// the most recently appended entries cached in memory. Changes are staged
/// into a caller-owned [`WriteBatch`] and the in-memory state moves on at
/// once, so the caller writes the batch before raft-rs reads storage again
/// (see the module docs).
pub struct PeerStorage {
    range_id: u64,
    engine: Arc<dyn Engine>,
    raft_state: RaftLocalState,
    apply_state: ApplyState,
    last_index: u64,
    last_term: u64,
    snapshot: Mutex<SnapshotSlot>,
    /// Whether `snapshot.requested` may hold a request: the store asks
    /// every range each poll round, and most never have one (a load, not
    /// a lock, then).
    snapshot_requested: AtomicBool,
    cache: EntryCache,
}

/// Bytes of entry payload that the entry caches of every range on one
/// node may hold together. Cloned into each [`PeerStorage`] of the node
/// ([`PeerStorage::set_cache_budget`]); a cache over the budget gives up
/// its oldest entries first (keeping one), so a node's total stays within
/// the budget plus one entry per range.
#[derive(Clone, Debug)]
pub struct EntryCacheBudget {
    used: Arc<AtomicUsize>,
    limit: usize,
}

impl EntryCacheBudget {
    /// A node's default: sixteen ranges' worth of the 4 MiB per-range bound.
    pub const DEFAULT_BYTES: usize = 64 << 20;

    /// A budget of `limit` bytes of entry payload, none used yet. Clones
    /// share it.
    pub fn new(limit: usize) -> Self {
        EntryCacheBudget { used: Arc::new(AtomicUsize::new(0)), limit }
    }

    /// Bytes held now over every cache sharing this budget.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn over(&self) -> bool {
        self.used() > self.limit
    }
}

/// Entries most recently appended and not yet applied, so the apply of the
/// next round (and raft-rs's term lookups) need not read back from the
/// engine what this replica has just written. Always a contiguous run
/// ending at the last index, identical to what the log holds there;
/// bounded by [`EntryCache::MAX_ENTRIES`] and [`EntryCache::MAX_BYTES`]
/// per range, and by the node's [`EntryCacheBudget`] if it has one. Entry
/// payloads are reference-counted, so a cached entry costs its metadata,
/// not a copy of its data.
#[derive(Default)]
struct EntryCache {
    entries: std::collections::VecDeque<Entry>,
    bytes: usize,
    budget: Option<EntryCacheBudget>,
}

impl EntryCache {
    const MAX_ENTRIES: usize = 4096;
    const MAX_BYTES: usize = 4 << 20;

    fn first(&self) -> Option<u64> {
        self.entries.front().map(|e| e.index)
    }

    fn get(&self, idx: u64) -> Option<&Entry> {
        let first = self.first()?;
        self.entries.get(idx.checked_sub(first)? as usize)
    }

    /// Counts `bytes` in (`grow`) or out of this cache and its budget.
    fn account(&mut self, bytes: usize, grow: bool) {
        if grow {
            self.bytes += bytes;
        } else {
            self.bytes -= bytes;
        }
        if let Some(b) = &self.budget {
            if grow {
                b.used.fetch_add(bytes, Ordering::Relaxed);
            } else {
                b.used.fetch_sub(bytes, Ordering::Relaxed);
            }
        }
    }

    fn set_budget(&mut self, budget: EntryCacheBudget) {
        let bytes = self.bytes;
        self.account(bytes, false);
        self.budget = Some(budget);
        self.account(bytes, true);
        self.shrink();
    }

    /// Mirrors an append to the log: a conflicting tail is replaced.
    fn append(&mut self, entries: &[Entry]) {
        let Some(first) = entries.first() else { return };
        match (self.first(), self.entries.back()) {
            (Some(lo), Some(hi)) if first.index > lo && first.index <= hi.index + 1 => {
                while self.entries.back().is_some_and(|e| e.index >= first.index) {
                    let e = self.entries.pop_back().expect("checked");
                    self.account(e.data.len(), false);
                }
            }
            _ => self.clear(),
        }
        for e in entries {
            self.account(e.data.len(), true);
            self.entries.push_back(e.clone());
        }
        self.shrink();
    }

    fn shrink(&mut self) {
        let over = |c: &Self| c.bytes > Self::MAX_BYTES || c.budget.as_ref().is_some_and(EntryCacheBudget::over);
        while self.entries.len() > Self::MAX_ENTRIES || (self.entries.len() > 1 && over(self)) {
            self.pop_front();
        }
    }

    /// Drops entries up to and including `idx` (applied or compacted).
    fn trim_to(&mut self, idx: u64) {
        while self.first().is_some_and(|f| f <= idx) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some(e) = self.entries.pop_front() {
            self.account(e.data.len(), false);
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        let bytes = self.bytes;
        self.account(bytes, false);
    }
}

impl Drop for EntryCache {
    fn drop(&mut self) {
        self.clear();
    }
}

fn encode_entry(e: &Entry) -> Vec<u8> {
    Enc::new().bytes(&e.write_to_bytes().expect("encode Entry")).finish()
}

fn decode_entry(raw: &[u8], range_id: u64) -> StorageResult<Entry> {
    let mut d = Dec::new(raw, range_id, "log entry")?;
    let body = d.bytes()?;
    d.finish()?;
    Entry::parse_from_bytes(body).map_err(|e| StorageError::Corrupt { range_id, what: format!("log entry: {e}") })
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(raft::StorageError::Other(Box::new(e)))
}

impl PeerStorage {
    /// Writes the initial state of a range created by static bootstrap,
    /// with an empty log starting at index 1.
    pub fn bootstrap(batch: &mut WriteBatch, desc: &RangeDescriptor, voters: Vec<u64>) {
        Self::bootstrap_at(batch, desc, voters, 0);
    }

    /// Writes the initial state of a range created by static bootstrap as
    /// if a snapshot at `index` (and term `index`) holding the configuration
    /// `voters` and no data had been installed: the log starts after it.
    ///
    /// With `index > 0` no replica added later can take the log from its
    /// start, where the initial configuration is not: the leader has no
    /// entry at or before `index` to send, so a new replica always gets a
    /// snapshot first, and with it the configuration (as TiKV's
    /// `RAFT_INIT_LOG_INDEX`).
    pub fn bootstrap_at(batch: &mut WriteBatch, desc: &RangeDescriptor, voters: Vec<u64>, index: u64) {
        let rs = RaftLocalState {
            hard_state: HardState { term: index, commit: index, ..Default::default() },
            conf_state: ConfState { voters, ..Default::default() },
            truncated_index: index,
            truncated_term: index,
        };
        batch.put(Cf::RaftState, keys::state_key(desc.range_id), rs.encode());
        batch.put(Cf::ApplyState, keys::state_key(desc.range_id), ApplyState { applied_index: index, applied_term: index }.encode());
        batch.put(Cf::Meta, keys::state_key(desc.range_id), desc.encode());
    }

    /// [`PeerStorage::bootstrap_at`] over an uninitialized replica (created
    /// for a message, with no log and no configuration) that recorded
    /// `term` and `vote`: they are kept (a vote given must never be given
    /// again in its term), the rest is the bootstrap's.
    pub fn bootstrap_over(batch: &mut WriteBatch, desc: &RangeDescriptor, voters: Vec<u64>, index: u64, term: u64, vote: u64) {
        Self::bootstrap_at(batch, desc, voters.clone(), index);
        let hard_state = if term >= index {
            HardState { term, vote, commit: index, ..Default::default() }
        } else {
            HardState { term: index, commit: index, ..Default::default() }
        };
        let rs = RaftLocalState {
            hard_state,
            conf_state: ConfState { voters, ..Default::default() },
            truncated_index: index,
            truncated_term: index,
        };
        batch.put(Cf::RaftState, keys::state_key(desc.range_id), rs.encode());
    }

    /// Writes the state of a replica created on demand (a new learner that
    /// will be filled by log replication or a snapshot).
    pub fn create_uninitialized(batch: &mut WriteBatch, desc: &RangeDescriptor) {
        Self::create_uninitialized_voted(batch, desc, 0, 0);
    }

    /// [`PeerStorage::create_uninitialized`] remembering the `term` and
    /// `vote` an earlier replica of the range on this node had reached
    /// (kept in its tombstone): a replica must never vote twice in a term.
    pub fn create_uninitialized_voted(batch: &mut WriteBatch, desc: &RangeDescriptor, term: u64, vote: u64) {
        let rs = RaftLocalState { hard_state: HardState { term, vote, ..Default::default() }, ..Default::default() };
        batch.put(Cf::RaftState, keys::state_key(desc.range_id), rs.encode());
        batch.put(Cf::ApplyState, keys::state_key(desc.range_id), ApplyState::default().encode());
        batch.put(Cf::Meta, keys::state_key(desc.range_id), desc.encode());
    }

    /// Every range id with a descriptor on this engine.
    pub fn list_ranges(engine: &dyn Engine) -> StorageResult<Vec<RangeDescriptor>> {
        let mut out = Vec::new();
        let mut err = None;
        engine.scan(Cf::Meta, &[], &[0xff; 9], &mut |k, v| {
            let id = keys::range_of(k).unwrap_or(0);
            match RangeDescriptor::decode(v, id) {
                Ok(d) => out.push(d),
                Err(e) => {
                    err = Some(e);
                    return false;
                }
            }
            true
        })?;
        match err {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }

    /// Loads a range and verifies its log: every entry's checksum, and that
    /// indexes are contiguous from the truncation point. Corruption is an
    /// error naming the range, never a panic.
    pub fn open(engine: Arc<dyn Engine>, range_id: u64) -> StorageResult<Self> {
        let key = keys::state_key(range_id);
        let raw = engine.get(Cf::RaftState, &key)?.ok_or(StorageError::RangeNotFound { range_id })?;
        let raft_state = RaftLocalState::decode(&raw, range_id)?;
        let apply_state = match engine.get(Cf::ApplyState, &key)? {
            Some(raw) => ApplyState::decode(&raw, range_id)?,
            // Never written: nothing is applied past the log's start.
            None => ApplyState { applied_index: raft_state.truncated_index, applied_term: raft_state.truncated_term },
        };
        check_bounds(range_id, &raft_state)?;
        let (mut last_index, mut last_term) = (raft_state.truncated_index, raft_state.truncated_term);
        let mut err = None;
        let start = keys::log_key(range_id, raft_state.truncated_index + 1);
        let (_, end) = keys::range_span(range_id);
        engine.scan(Cf::RaftLog, &start, &end, &mut |k, v| {
            let idx = keys::log_index(k);
            if idx != Some(last_index + 1) {
                err = Some(StorageError::LogGap { range_id, expected: last_index + 1, found: idx.unwrap_or(0) });
                return false;
            }
            if last_index >= MAX_SANE_INDEX {
                err = Some(StorageError::Corrupt { range_id, what: format!("log reaches index {last_index}") });
                return false;
            }
            match decode_entry(v, range_id) {
                Ok(e) if e.index == last_index + 1 && e.term >= last_term && e.term <= MAX_SANE_INDEX => {
                    last_index = e.index;
                    last_term = e.term;
                    true
                }
                Ok(e) => {
                    err = Some(StorageError::Corrupt {
                        range_id,
                        what: format!("entry {} stored under index {} with term {}", e.index, last_index + 1, e.term),
                    });
                    false
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        check_states(range_id, &raft_state, &apply_state, last_index)?;
        Ok(Self {
            range_id,
            engine,
            raft_state,
            apply_state,
            last_index,
            last_term,
            snapshot: Mutex::default(),
            snapshot_requested: AtomicBool::new(false),
            cache: EntryCache::default(),
        })
    }

    /// The range this storage serves.
    pub fn range_id(&self) -> u64 {
        self.range_id
    }

    /// Counts this range's entry cache against the node's `budget`.
    pub fn set_cache_budget(&mut self, budget: EntryCacheBudget) {
        self.cache.set_budget(budget);
    }

    /// The engine the range's records live in.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// The raft local state as staged (it may not be written yet).
    pub fn raft_state(&self) -> &RaftLocalState {
        &self.raft_state
    }

    /// The apply state as staged (it may not be written yet).
    pub fn apply_state(&self) -> ApplyState {
        self.apply_state
    }

    /// The log's truncation point (see
    /// [`RaftLocalState::truncated_index`]): the first stored entry is the
    /// one after it.
    pub fn truncated_index(&self) -> u64 {
        self.raft_state.truncated_index
    }

    /// Index of the last log entry, staged or written (the truncation
    /// point if the log is empty). Unlike [`Storage::last_index`] it
    /// cannot fail.
    pub fn last_index_cached(&self) -> u64 {
        self.last_index
    }

    fn stage_raft_state(&self, batch: &mut WriteBatch) {
        batch.put(Cf::RaftState, keys::state_key(self.range_id), self.raft_state.encode());
    }

    /// Stages appending `entries`, truncating any conflicting tail of the
    /// stored log (raft-rs hands us entries that overwrite from their first
    /// index on). Panics if the entries would leave a gap: the first must
    /// follow the truncation point and be at most one past the last index.
    pub fn append(&mut self, entries: &[Entry], batch: &mut WriteBatch) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        assert!(
            first.index > self.raft_state.truncated_index && first.index <= self.last_index + 1,
            "range {}: append at {} leaves a gap (truncated {}, last {})",
            self.range_id,
            first.index,
            self.raft_state.truncated_index,
            self.last_index
        );
        for e in entries {
            batch.put(Cf::RaftLog, keys::log_key(self.range_id, e.index), encode_entry(e));
        }
        if last.index < self.last_index {
            batch.delete_range(
                Cf::RaftLog,
                keys::log_key(self.range_id, last.index + 1),
                keys::log_key(self.range_id, self.last_index + 1),
            );
        }
        self.last_index = last.index;
        self.last_term = last.term;
        self.cache.append(entries);
    }

    /// Stages `hs` as the range's hard state.
    pub fn set_hard_state(&mut self, hs: &HardState, batch: &mut WriteBatch) {
        self.raft_state.hard_state = hs.clone();
        self.stage_raft_state(batch);
    }

    /// Stages a new commit index, keeping the rest of the hard state.
    pub fn set_commit(&mut self, commit: u64, batch: &mut WriteBatch) {
        self.raft_state.hard_state.commit = commit;
        self.stage_raft_state(batch);
    }

    /// Stages `cs` as the range's membership configuration.
    pub fn set_conf_state(&mut self, cs: ConfState, batch: &mut WriteBatch) {
        self.raft_state.conf_state = cs;
        self.stage_raft_state(batch);
    }

    /// Stages the apply state: entries up to `applied_index` (of term
    /// `applied_term`) are applied, so the entry cache drops them.
    pub fn set_applied(&mut self, applied_index: u64, applied_term: u64, batch: &mut WriteBatch) {
        self.apply_state = ApplyState { applied_index, applied_term };
        self.cache.trim_to(applied_index);
        batch.put(Cf::ApplyState, keys::state_key(self.range_id), self.apply_state.encode());
    }

    /// Stages removal of log entries up to and including `compact_index`,
    /// which must already be applied.
    pub fn compact(&mut self, compact_index: u64, batch: &mut WriteBatch) -> StorageResult<()> {
        if compact_index <= self.raft_state.truncated_index {
            return Ok(());
        }
        assert!(compact_index <= self.apply_state.applied_index, "range {}: compacting unapplied entries", self.range_id);
        let term = self.term(compact_index).map_err(|e| StorageError::Io(format!("term of {compact_index}: {e}")))?;
        batch.delete_range(
            Cf::RaftLog,
            keys::log_key(self.range_id, self.raft_state.truncated_index + 1),
            keys::log_key(self.range_id, compact_index + 1),
        );
        self.raft_state.truncated_index = compact_index;
        self.raft_state.truncated_term = term;
        self.cache.trim_to(compact_index);
        self.stage_raft_state(batch);
        Ok(())
    }

    /// Stages installing `snap`, whose data was received and staged
    /// whole beforehand ([`crate::snapshot`]): the log is cleared and
    /// restarts after the snapshot, the conf state and apply state come
    /// from it, the namespace's data is deleted and the install marker
    /// written — all in `batch`, so the decision is atomic. The staged data
    /// is then moved into place ([`crate::snapshot::move_staged`]) before
    /// the range serves again. Returns the descriptor carried by it.
    pub fn apply_snapshot(&mut self, snap: &Snapshot, batch: &mut WriteBatch) -> StorageResult<RangeDescriptor> {
        let meta = snap.get_metadata();
        let desc = crate::snapshot::decode_snapshot_header(self.range_id, snap.get_data())?;
        let (start, end) = keys::range_span(desc.namespace_id);
        batch.delete_range(Cf::Data, start, end);
        crate::snapshot::put_install_marker(self.range_id, desc.namespace_id, batch);
        let (start, end) = keys::range_span(self.range_id);
        batch.delete_range(Cf::RaftLog, start, end);
        self.cache.clear();
        self.raft_state.truncated_index = meta.index;
        self.raft_state.truncated_term = meta.term;
        self.raft_state.conf_state = meta.get_conf_state().clone();
        if self.raft_state.hard_state.commit < meta.index {
            self.raft_state.hard_state.commit = meta.index;
        }
        if self.raft_state.hard_state.term < meta.term {
            self.raft_state.hard_state.term = meta.term;
        }
        self.last_index = meta.index;
        self.last_term = meta.term;
        self.stage_raft_state(batch);
        self.set_applied(meta.index, meta.term, batch);
        batch.put(Cf::Meta, keys::state_key(self.range_id), desc.encode());
        Ok(desc)
    }

    /// Whether raft-rs asked for a snapshot that was not taken yet
    /// ([`PeerStorage::take_snapshot_request`]).
    pub fn snapshot_requested(&self) -> bool {
        self.snapshot_requested.load(Ordering::Acquire)
    }

    /// The snapshot raft-rs is waiting for, if any. The raftstore builds it
    /// (a header; the data streams, see [`crate::snapshot`]) and hands it back with
    /// [`PeerStorage::set_built_snapshot`].
    pub fn take_snapshot_request(&self) -> Option<SnapshotRequest> {
        if !self.snapshot_requested.swap(false, Ordering::AcqRel) {
            return None;
        }
        self.snapshot.lock().expect("snapshot slot").requested.take()
    }

    /// Hands over the snapshot built for a [`SnapshotRequest`], replacing
    /// any earlier one: raft-rs's [`Storage::snapshot`] calls get it for as
    /// long as it covers both the index they ask for and the log's
    /// truncation point.
    pub fn set_built_snapshot(&self, snap: Snapshot) {
        self.snapshot.lock().expect("snapshot slot").built = Some(snap);
    }

    /// Forgets the built snapshot (its pinned engine view is being let
    /// go): raft-rs's next request builds a new one.
    pub fn clear_built_snapshot(&self) {
        self.snapshot.lock().expect("snapshot slot").built = None;
    }

    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> StorageResult<Vec<Entry>> {
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let mut err = None;
        let mut expect = low;
        self.engine.scan(Cf::RaftLog, &keys::log_key(self.range_id, low), &keys::log_key(self.range_id, high), &mut |_, v| {
            match decode_entry(v, self.range_id) {
                Ok(e) => {
                    if e.index != expect {
                        err = Some(StorageError::LogGap { range_id: self.range_id, expected: expect, found: e.index });
                        return false;
                    }
                    expect += 1;
                    size += e.compute_size() as u64;
                    // Always return at least one entry, as raft-rs requires.
                    if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                        return false;
                    }
                    out.push(e);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        if out.is_empty() || (max_size.is_none() && expect != high) {
            return Err(StorageError::LogGap { range_id: self.range_id, expected: expect, found: high });
        }
        Ok(out)
    }
}

impl Storage for PeerStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.raft_state.hard_state.clone(), self.raft_state.conf_state.clone()))
    }

    fn entries(&self, low: u64, high: u64, max_size: impl Into<Option<u64>>, _ctx: GetEntriesContext) -> raft::Result<Vec<Entry>> {
        if low <= self.raft_state.truncated_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            panic!("range {}: entries high {high} beyond last index {}", self.range_id, self.last_index);
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max_size = max_size.into();
        if self.cache.first().is_some_and(|f| f <= low) {
            // The cache ends at the last index, so it holds [low, high).
            let mut out = Vec::with_capacity((high - low) as usize);
            let mut size = 0u64;
            for idx in low..high {
                let e = self.cache.get(idx).expect("the cache is contiguous up to the last index");
                size += e.compute_size() as u64;
                if !out.is_empty() && max_size.is_some_and(|m| size > m) {
                    break;
                }
                out.push(e.clone());
            }
            return Ok(out);
        }
        self.read_entries(low, high, max_size).map_err(store_err)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.raft_state.truncated_index {
            return Ok(self.raft_state.truncated_term);
        }
        if idx < self.raft_state.truncated_index {
            return Err(raft::Error::Store(raft::StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(raft::StorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(e) = self.cache.get(idx) {
            return Ok(e.term);
        }
        match self.engine.get(Cf::RaftLog, &keys::log_key(self.range_id, idx)).map_err(store_err)? {
            Some(raw) => Ok(decode_entry(&raw, self.range_id).map_err(store_err)?.term),
            None => Err(raft::Error::Store(raft::StorageError::Unavailable)),
        }
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.raft_state.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut slot = self.snapshot.lock().expect("snapshot slot");
        // A cached snapshot older than the log's truncation point would leave
        // a gap between it and the first entry we can still send: the
        // follower could never catch up. Build a fresh one then.
        let needed = request_index.max(self.raft_state.truncated_index);
        if let Some(s) = &slot.built {
            // Built for another follower before `to` was added: raft-rs on
            // `to` refuses a snapshot whose configuration leaves it out (the
            // chaos suite found a new replica refusing one for a minute, a
            // learner added right after another's snapshot was built).
            let cs = s.get_metadata().get_conf_state();
            let names_to = [&cs.voters, &cs.learners, &cs.voters_outgoing, &cs.learners_next].iter().any(|ids| ids.contains(&to));
            if s.get_metadata().index >= needed && names_to {
                return Ok(s.clone());
            }
        }
        slot.requested = Some(SnapshotRequest { range_id: self.range_id, request_index, to });
        self.snapshot_requested.store(true, Ordering::Release);
        Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))
    }
}

/// Indexes and terms at or past this are refused as corrupt at open:
/// raft-rs adds to them, and no real log gets anywhere near.
const MAX_SANE_INDEX: u64 = u64::MAX / 2;

fn check_bounds(range_id: u64, rs: &RaftLocalState) -> StorageResult<()> {
    let hs = &rs.hard_state;
    for (what, v) in
        [("truncated index", rs.truncated_index), ("truncated term", rs.truncated_term), ("term", hs.term), ("commit", hs.commit)]
    {
        if v >= MAX_SANE_INDEX {
            return Err(StorageError::Corrupt { range_id, what: format!("{what} {v} out of range") });
        }
    }
    Ok(())
}

/// What raft-rs needs of the stored state to start without panicking,
/// checked after the log was read: a bad record is an error naming the
/// range, never a panic inside raft-rs.
fn check_states(range_id: u64, rs: &RaftLocalState, apply: &ApplyState, last_index: u64) -> StorageResult<()> {
    let corrupt = |what: String| Err(StorageError::Corrupt { range_id, what });
    let (commit, truncated, applied) = (rs.hard_state.commit, rs.truncated_index, apply.applied_index);
    if commit < truncated || commit > last_index {
        return corrupt(format!("commit index {commit} outside the log [{truncated}, {last_index}]"));
    }
    // Nothing is truncated that was not applied (an install sets both to
    // the snapshot's index), so applied 0 with a truncated log is corrupt.
    if applied < truncated || applied > commit {
        return corrupt(format!("applied index {applied} outside [{truncated}, commit {commit}]"));
    }
    check_conf_state(&rs.conf_state).or_else(|what| corrupt(format!("conf state: {what}")))
}

/// The shape raft-rs's restore accepts: ids non-zero and listed once per
/// role, no node both voter and learner, a demoted voter in
/// `learners_next` (not `learners`), `auto_leave` only in a joint config.
fn check_conf_state(cs: &raft::prelude::ConfState) -> Result<(), String> {
    use std::collections::HashSet;
    let set = |name: &str, ids: &[u64]| -> Result<HashSet<u64>, String> {
        let mut seen = HashSet::with_capacity(ids.len());
        for &id in ids {
            if id == 0 {
                return Err(format!("node id 0 in {name}"));
            }
            if !seen.insert(id) {
                return Err(format!("node {id} twice in {name}"));
            }
        }
        Ok(seen)
    };
    let voters = set("voters", &cs.voters)?;
    let learners = set("learners", &cs.learners)?;
    let outgoing = set("voters_outgoing", &cs.voters_outgoing)?;
    let next = set("learners_next", &cs.learners_next)?;
    if let Some(id) = voters.intersection(&learners).next() {
        return Err(format!("node {id} is both voter and learner"));
    }
    if let Some(id) = outgoing.intersection(&learners).next() {
        return Err(format!("outgoing voter {id} is a learner (it belongs in learners_next)"));
    }
    if let Some(id) = next.iter().find(|id| !outgoing.contains(id) || voters.contains(id)) {
        return Err(format!("learners_next holds {id}, which is not a demoted outgoing voter"));
    }
    if cs.auto_leave && outgoing.is_empty() {
        return Err("auto_leave outside a joint configuration".into());
    }
    Ok(())
}

#[cfg(test)]
mod cache_budget_tests {
    use super::*;

    fn entries(from: u64, n: u64, size: usize) -> Vec<Entry> {
        (from..from + n).map(|index| Entry { index, term: 1, data: vec![0; size].into(), ..Default::default() }).collect()
    }

    #[test]
    fn caches_sharing_a_budget_stay_within_it_and_give_it_back() {
        let budget = EntryCacheBudget::new(1_000);
        let (mut a, mut b) = (EntryCache::default(), EntryCache::default());
        a.set_budget(budget.clone());
        b.set_budget(budget.clone());
        a.append(&entries(1, 10, 200));
        assert_eq!((a.entries.len(), budget.used()), (5, 1_000), "a keeps its newest entries within the budget");
        assert_eq!(a.first(), Some(6));
        b.append(&entries(1, 3, 200));
        assert_eq!(b.entries.len(), 1, "b keeps one entry over a full budget");
        assert_eq!(budget.used(), 1_200);
        a.trim_to(8);
        assert_eq!(budget.used(), 400 + 200);
        b.append(&entries(4, 2, 200));
        assert_eq!((b.entries.len(), budget.used()), (3, 1_000));
        b.append(&entries(6, 1, 200));
        assert_eq!((b.entries.len(), budget.used()), (3, 1_000), "b gives up its oldest");
        drop(a);
        assert_eq!(budget.used(), 600, "a dropped cache gives its bytes back");
        b.clear();
        assert_eq!(budget.used(), 0);
        // A cache that joins a budget brings its bytes along.
        let mut c = EntryCache::default();
        c.append(&entries(1, 3, 100));
        c.set_budget(budget.clone());
        assert_eq!(budget.used(), 300);
    }
}
