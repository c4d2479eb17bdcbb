//! One conformance suite for every [`Engine`] (TiKV's `engine_traits_tests`
//! idea). Each check panics with a message naming the property it broke;
//! `tests/conformance.rs` runs all of them against both engines.

use std::sync::Arc;

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, Storage};

use crate::engine::{Cf, Engine, WriteBatch};
use crate::keys;
use crate::peer_storage::PeerStorage;
use crate::snapshot::{clear_staged, encode_snapshot_header, finish_install, pending_install, stage_chunk, SnapshotReader};
use crate::state::{RangeDescriptor, RangeEpoch};

/// Makes engines for the suite and simulates a restart (kill -9 for the
/// memory engine, close and reopen for RocksDB).
pub trait EngineFactory {
    /// A new, empty engine, independent of every other it made.
    fn create(&mut self) -> Arc<dyn Engine>;
    /// Returns what a restarted process would open. `engine` must not be
    /// used afterwards.
    fn restart(&mut self, engine: Arc<dyn Engine>) -> Arc<dyn Engine>;
}

/// Runs every check.
pub fn run_all(f: &mut dyn EngineFactory) {
    basic_put_get_delete_scan(f);
    delete_range_removes_only_its_span(f);
    batch_across_ranges_is_atomic_and_ordered(f);
    snapshot_is_isolated_from_later_writes(f);
    synced_writes_survive_restart(f);
    sync_makes_earlier_writes_durable(f);
    peer_storage_append_truncate_compact(f);
    peer_storage_entry_cache_matches_the_log(f);
    peer_storage_recovers_after_restart(f);
    peer_storage_snapshot_install_replaces_data(f);
    a_namespace_moves_to_another_range_with_its_keys_unchanged(f);
    a_transfer_cut_half_way_leaves_the_data_as_it_was(f);
    an_install_cut_by_a_crash_is_finished_at_restart(f);
    corrupt_log_record_is_reported_at_open(f);
}

/// Streams the data of `desc`'s namespace from `source` into `target`'s
/// staging, in chunks of `chunk_bytes`, and returns the snapshot header
/// raft would carry (metadata left for the caller).
fn stream(source: &dyn Engine, desc: &RangeDescriptor, target: &dyn Engine, chunk_bytes: usize) -> Snapshot {
    let mut r = SnapshotReader::new(Arc::from(source.snapshot()), desc).with_chunk_bytes(chunk_bytes);
    while let Some(c) = r.next_chunk().expect("read chunk") {
        let mut b = WriteBatch::new();
        stage_chunk(desc.range_id, &c.data, &mut b).expect("stage chunk");
        target.write(&b, false).expect("write chunk");
    }
    let mut snap = Snapshot::default();
    snap.set_data(encode_snapshot_header(desc).into());
    snap
}

fn collect(e: &dyn Engine, cf: Cf, start: &[u8], end: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    e.scan(cf, start, end, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        true
    })
    .expect("scan");
    out
}

/// Put, get, delete and scan: scans are ordered, end-exclusive and stop
/// when the callback says so; column families are separate.
pub fn basic_put_get_delete_scan(f: &mut dyn EngineFactory) {
    let e = f.create();
    let mut b = WriteBatch::new();
    b.put(Cf::Data, b"b".to_vec(), b"2".to_vec());
    b.put(Cf::Data, b"a".to_vec(), b"1".to_vec());
    b.put(Cf::Data, b"c".to_vec(), b"3".to_vec());
    b.put(Cf::Meta, b"a".to_vec(), b"meta".to_vec());
    e.write(&b, false).unwrap();
    assert_eq!(e.get(Cf::Data, b"a").unwrap(), Some(b"1".to_vec()), "get sees a written key");
    assert_eq!(e.get(Cf::Meta, b"a").unwrap(), Some(b"meta".to_vec()), "column families are separate");
    assert_eq!(e.get(Cf::RaftLog, b"a").unwrap(), None, "column families are separate");
    let all = collect(&*e, Cf::Data, b"a", b"c");
    assert_eq!(all, vec![(b"a".to_vec(), b"1".to_vec()), (b"b".to_vec(), b"2".to_vec())], "scan is ordered and end-exclusive");
    let mut first = Vec::new();
    e.scan(Cf::Data, b"", b"z", &mut |k, _| {
        first.push(k.to_vec());
        false
    })
    .unwrap();
    assert_eq!(first, vec![b"a".to_vec()], "scan stops when the callback says so");
    assert!(collect(&*e, Cf::Data, b"c", b"a").is_empty(), "an inverted scan is empty");
    let mut d = WriteBatch::new();
    d.delete(Cf::Data, b"b".to_vec());
    e.write(&d, true).unwrap();
    assert_eq!(e.get(Cf::Data, b"b").unwrap(), None, "delete removes the key");
}

/// `delete_range` removes exactly `[start, end)` and nothing of other ranges.
pub fn delete_range_removes_only_its_span(f: &mut dyn EngineFactory) {
    let e = f.create();
    let mut b = WriteBatch::new();
    for i in 0u64..10 {
        b.put(Cf::RaftLog, keys::log_key(1, i), vec![i as u8]);
        b.put(Cf::RaftLog, keys::log_key(2, i), vec![i as u8]);
    }
    e.write(&b, true).unwrap();
    let mut d = WriteBatch::new();
    d.delete_range(Cf::RaftLog, keys::log_key(1, 3), keys::log_key(1, 7));
    e.write(&d, true).unwrap();
    let (s1, e1) = keys::range_span(1);
    let left: Vec<u64> = collect(&*e, Cf::RaftLog, &s1, &e1).iter().map(|(k, _)| keys::log_index(k).unwrap()).collect();
    assert_eq!(left, vec![0, 1, 2, 7, 8, 9], "delete_range is [start, end)");
    let (s2, e2) = keys::range_span(2);
    assert_eq!(collect(&*e, Cf::RaftLog, &s2, &e2).len(), 10, "delete_range does not touch other ranges");
}

/// A batch spanning ranges survives a restart whole, its ops applied in
/// order (a later op on a key wins).
pub fn batch_across_ranges_is_atomic_and_ordered(f: &mut dyn EngineFactory) {
    let e = f.create();
    let mut b = WriteBatch::new();
    for r in 1..=3u64 {
        b.put(Cf::Data, keys::data_key(r, b"k"), b"old".to_vec());
    }
    // Later ops in a batch win over earlier ones on the same key.
    b.put(Cf::Data, keys::data_key(2, b"k"), b"new".to_vec());
    b.delete(Cf::Data, keys::data_key(3, b"k"));
    e.write(&b, true).unwrap();
    let e = f.restart(e);
    assert_eq!(e.get(Cf::Data, &keys::data_key(1, b"k")).unwrap(), Some(b"old".to_vec()));
    assert_eq!(e.get(Cf::Data, &keys::data_key(2, b"k")).unwrap(), Some(b"new".to_vec()), "ops apply in batch order");
    assert_eq!(e.get(Cf::Data, &keys::data_key(3, b"k")).unwrap(), None, "ops apply in batch order");
}

/// An engine snapshot sees neither later writes nor later keys.
pub fn snapshot_is_isolated_from_later_writes(f: &mut dyn EngineFactory) {
    let e = f.create();
    write_one(&*e, Cf::Data, b"x", b"1", false);
    let snap = e.snapshot();
    let mut b = WriteBatch::new();
    b.put(Cf::Data, b"x".to_vec(), b"2".to_vec());
    b.put(Cf::Data, b"y".to_vec(), b"2".to_vec());
    e.write(&b, false).unwrap();
    assert_eq!(snap.get(Cf::Data, b"x").unwrap(), Some(b"1".to_vec()), "snapshot does not see later writes");
    let mut n = 0;
    snap.scan(Cf::Data, b"", b"z", &mut |_, _| {
        n += 1;
        true
    })
    .unwrap();
    assert_eq!(n, 1, "snapshot scan does not see later keys");
    assert_eq!(e.get(Cf::Data, b"x").unwrap(), Some(b"2".to_vec()));
}

/// A synced write survives a restart, and so does an unsynced one written
/// before it (log order); `sync_count` counts synced writes.
pub fn synced_writes_survive_restart(f: &mut dyn EngineFactory) {
    let e = f.create();
    write_one(&*e, Cf::RaftState, b"unsynced-then-synced", b"1", false);
    write_one(&*e, Cf::RaftState, b"synced", b"2", true);
    let before = e.sync_count();
    assert!(before >= 1, "sync_count counts synced writes");
    let e = f.restart(e);
    assert_eq!(e.get(Cf::RaftState, b"synced").unwrap(), Some(b"2".to_vec()), "a synced write is durable");
    assert_eq!(
        e.get(Cf::RaftState, b"unsynced-then-synced").unwrap(),
        Some(b"1".to_vec()),
        "a write before a synced write is durable (log order)"
    );
}

/// Writes one key in a batch of its own.
fn write_one(e: &dyn Engine, cf: Cf, key: &[u8], value: &[u8], sync: bool) {
    let mut b = WriteBatch::new();
    b.put(cf, key.to_vec(), value.to_vec());
    e.write(&b, sync).unwrap();
}

/// [`Engine::sync`] makes earlier unsynced writes durable and counts in
/// `sync_count`.
pub fn sync_makes_earlier_writes_durable(f: &mut dyn EngineFactory) {
    let e = f.create();
    write_one(&*e, Cf::RaftState, b"written-then-synced", b"1", false);
    let before = e.sync_count();
    e.sync().unwrap();
    assert_eq!(e.sync_count(), before + 1, "sync_count counts syncs");
    let e = f.restart(e);
    assert_eq!(e.get(Cf::RaftState, b"written-then-synced").unwrap(), Some(b"1".to_vec()), "sync made the earlier write durable");
}

fn entry(index: u64, term: u64) -> Entry {
    Entry { index, term, data: format!("e{index}t{term}").into_bytes().into(), ..Default::default() }
}

fn desc(range_id: u64) -> RangeDescriptor {
    RangeDescriptor { range_id, namespace_id: range_id, start: vec![], end: vec![], epoch: RangeEpoch::default(), replicas: vec![] }
}

fn bootstrap(e: &Arc<dyn Engine>, range_id: u64) -> PeerStorage {
    let mut b = WriteBatch::new();
    PeerStorage::bootstrap(&mut b, &desc(range_id), vec![1, 2, 3]);
    e.write(&b, true).unwrap();
    PeerStorage::open(e.clone(), range_id).expect("open bootstrapped range")
}

fn hs(term: u64, vote: u64, commit: u64) -> HardState {
    HardState { term, vote, commit, ..Default::default() }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

/// [`PeerStorage`] appends, truncates a conflicting tail, compacts, and
/// answers snapshot requests only with a built snapshot that covers them.
pub fn peer_storage_append_truncate_compact(f: &mut dyn EngineFactory) {
    let e = f.create();
    let mut ps = bootstrap(&e, 7);
    assert_eq!(ps.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);
    assert_eq!((ps.first_index().unwrap(), ps.last_index().unwrap()), (1, 0), "empty log");
    let mut b = WriteBatch::new();
    ps.append(&(1..=10).map(|i| entry(i, 1)).collect::<Vec<_>>(), &mut b);
    e.write(&b, true).unwrap();
    assert_eq!(ps.last_index().unwrap(), 10);
    assert_eq!(ps.entries(3, 6, None, ctx()).unwrap().iter().map(|e| e.index).collect::<Vec<_>>(), vec![3, 4, 5]);
    let one = ps.entries(3, 6, 1, ctx()).unwrap();
    assert_eq!(one.len(), 1, "max_size still returns at least one entry");

    // A new leader overwrites from index 6 with term 2: 7..=10 must go.
    let mut b = WriteBatch::new();
    ps.append(&[entry(6, 2)], &mut b);
    e.write(&b, true).unwrap();
    assert_eq!(ps.last_index().unwrap(), 6, "conflicting tail truncated");
    assert_eq!(ps.term(6).unwrap(), 2);
    assert_eq!(ps.term(5).unwrap(), 1);
    assert!(e.get(Cf::RaftLog, &keys::log_key(7, 7)).unwrap().is_none(), "truncated entries are deleted on disk");

    let mut b = WriteBatch::new();
    ps.set_applied(5, 1, &mut b);
    ps.compact(4, &mut b).unwrap();
    e.write(&b, true).unwrap();
    assert_eq!(ps.first_index().unwrap(), 5);
    assert_eq!(ps.term(4).unwrap(), 1, "term of the truncation point is kept");
    assert!(matches!(ps.term(3), Err(raft::Error::Store(raft::StorageError::Compacted))));
    assert!(matches!(ps.entries(4, 6, None, ctx()), Err(raft::Error::Store(raft::StorageError::Compacted))));
    assert!(matches!(ps.term(7), Err(raft::Error::Store(raft::StorageError::Unavailable))));

    // Snapshot requests are answered "temporarily unavailable" until built.
    assert!(matches!(ps.snapshot(5, 2), Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))));
    let req = ps.take_snapshot_request().expect("request recorded");
    assert_eq!((req.request_index, req.to), (5, 2));
    let mut snap = Snapshot::default();
    snap.mut_metadata().index = 5;
    snap.mut_metadata().term = 1;
    snap.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
    ps.set_built_snapshot(snap);
    assert_eq!(ps.snapshot(5, 2).unwrap().get_metadata().index, 5);
    assert_eq!(ps.snapshot(0, 3).unwrap().get_metadata().index, 5, "a cached snapshot serves any older request");
    // ... of a follower its configuration names: one added since (4) would
    // refuse it, so a fresh one is built for it.
    assert!(
        matches!(ps.snapshot(0, 4), Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))),
        "a cached snapshot is not served to a replica its configuration leaves out"
    );
    assert_eq!(ps.take_snapshot_request().map(|r| r.to), Some(4));

    // Once the log is compacted past the cached snapshot, it is useless: a
    // follower restored from it could not get the entries after it.
    let mut b = WriteBatch::new();
    ps.append(&[entry(7, 2), entry(8, 2)], &mut b);
    ps.set_applied(8, 2, &mut b);
    e.write(&b, true).unwrap();
    let mut b = WriteBatch::new();
    ps.compact(7, &mut b).unwrap();
    e.write(&b, true).unwrap();
    assert!(
        matches!(ps.snapshot(0, 2), Err(raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable))),
        "a snapshot older than the truncation point is not served"
    );
}

/// The entry cache answers exactly what the stored log answers: after
/// every step of a seeded sequence of appends (some overwriting a tail),
/// applies and compactions, `entries` and `term` of the live storage (served
/// from its cache where it can) equal those of a storage freshly opened on
/// the same engine (no cache).
pub fn peer_storage_entry_cache_matches_the_log(f: &mut dyn EngineFactory) {
    let e = f.create();
    let mut ps = bootstrap(&e, 9);
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n.max(1)
    };
    let mut term = 1;
    for step in 0..300 {
        let mut b = WriteBatch::new();
        let (first, last) = (ps.first_index().unwrap(), ps.last_index().unwrap());
        match next(4) {
            0 if last > ps.raft_state().hard_state.commit => {
                // A new leader overwrites an uncommitted tail.
                term += 1;
                let lo = first.max(ps.raft_state().hard_state.commit + 1);
                let from = lo + next(last - lo + 1);
                let n = 1 + next(5);
                ps.append(&(from..from + n).map(|i| entry(i, term)).collect::<Vec<_>>(), &mut b);
            }
            1 if last >= first => {
                let applied = (ps.apply_state().applied_index.max(first - 1) + 1 + next(4)).min(last);
                ps.set_commit(applied.max(ps.raft_state().hard_state.commit), &mut b);
                ps.set_applied(applied, ps.term(applied).unwrap(), &mut b);
                if next(2) == 0 && applied > first {
                    ps.compact(applied - 1, &mut b).unwrap();
                }
            }
            _ => {
                let n = 1 + next(8);
                ps.append(&(last + 1..=last + n).map(|i| entry(i, term)).collect::<Vec<_>>(), &mut b);
            }
        }
        e.write(&b, true).unwrap();
        let fresh = PeerStorage::open(e.clone(), 9).unwrap();
        let (first, last) = (ps.first_index().unwrap(), ps.last_index().unwrap());
        assert_eq!((first, last), (fresh.first_index().unwrap(), fresh.last_index().unwrap()), "step {step}");
        for idx in first.saturating_sub(1)..=last {
            assert_eq!(ps.term(idx).ok(), fresh.term(idx).ok(), "step {step}: term of {idx}");
        }
        if last >= first {
            let low = first + next(last - first + 1);
            let high = low + 1 + next(last - low + 1);
            let max = [None, Some(1), Some(40)][next(3) as usize];
            assert_eq!(ps.entries(low, high, max, ctx()).unwrap(), fresh.entries(low, high, max, ctx()).unwrap(), "step {step}");
        }
    }
}

/// [`PeerStorage`] reopens after a restart with its hard state, log bounds,
/// terms and apply state; a range never stored is `RangeNotFound`.
pub fn peer_storage_recovers_after_restart(f: &mut dyn EngineFactory) {
    let e = f.create();
    let mut ps = bootstrap(&e, 3);
    let mut b = WriteBatch::new();
    ps.append(&(1..=6).map(|i| entry(i, 2)).collect::<Vec<_>>(), &mut b);
    ps.set_hard_state(&hs(2, 1, 6), &mut b);
    ps.set_applied(4, 2, &mut b);
    e.write(&b, true).unwrap();
    let mut b = WriteBatch::new();
    ps.compact(2, &mut b).unwrap();
    e.write(&b, true).unwrap();
    drop(ps);
    let e = f.restart(e);
    let ps = PeerStorage::open(e, 3).expect("reopen");
    let st = ps.initial_state().unwrap();
    assert_eq!(st.hard_state, hs(2, 1, 6), "hard state recovered");
    assert_eq!((ps.first_index().unwrap(), ps.last_index().unwrap()), (3, 6), "log bounds recovered");
    assert_eq!(ps.term(6).unwrap(), 2);
    assert_eq!(ps.apply_state().applied_index, 4, "apply state recovered");
    assert!(matches!(PeerStorage::open(ps.engine().clone(), 99), Err(crate::StorageError::RangeNotFound { range_id: 99 })));
}

/// A namespace's data lives under its namespace id, not its range's: a
/// snapshot of range 5 serving namespace 9, installed into range 12 (the
/// namespace's new group, same descriptor but for the range id), leaves
/// every data key byte for byte as it was and touches no other namespace.
pub fn a_namespace_moves_to_another_range_with_its_keys_unchanged(f: &mut dyn EngineFactory) {
    let source = f.create();
    let mut old = bootstrap(&source, 5);
    let mut b = WriteBatch::new();
    b.put(Cf::Data, keys::data_key(9, b"m"), b"revision 41".to_vec());
    b.put(Cf::Data, keys::data_key(9, b"k/a"), b"1".to_vec());
    b.put(Cf::Data, keys::data_key(5, b"k/a"), b"not the namespace's".to_vec());
    old.append(&(1..=2).map(|i| entry(i, 1)).collect::<Vec<_>>(), &mut b);
    old.set_applied(2, 1, &mut b);
    source.write(&b, true).unwrap();
    let mut d = desc(12);
    d.namespace_id = 9;

    let target = f.create();
    let mut b = WriteBatch::new();
    b.put(Cf::Data, keys::data_key(10, b"k/a"), b"a neighbour".to_vec());
    target.write(&b, true).unwrap();
    let mut new = bootstrap(&target, 12);
    let mut snap = stream(&*source, &d, &*target, 1 << 20);
    snap.mut_metadata().index = 2;
    snap.mut_metadata().term = 1;
    let mut b = WriteBatch::new();
    let got = new.apply_snapshot(&snap, &mut b).expect("install");
    target.write(&b, true).unwrap();
    assert!(finish_install(&*target, 12).unwrap(), "the install was pending until its data moved");
    assert_eq!(got.namespace_id, 9, "the descriptor names the namespace it moved");
    let (s, e) = keys::range_span(9);
    assert_eq!(
        collect(&*target, Cf::Data, &s, &e),
        collect(&*source, Cf::Data, &s, &e),
        "the namespace's keys, its revision counter among them, arrive unchanged"
    );
    assert_eq!(target.get(Cf::Data, &keys::data_key(10, b"k/a")).unwrap(), Some(b"a neighbour".to_vec()), "other namespaces untouched");
    assert!(target.get(Cf::Data, &keys::data_key(12, b"k/a")).unwrap().is_none(), "nothing is keyed by the new range id");
}

/// Installing a streamed snapshot replaces the range's data and log, takes
/// the descriptor it carries, and a corrupt snapshot is rejected.
pub fn peer_storage_snapshot_install_replaces_data(f: &mut dyn EngineFactory) {
    let leader_engine = f.create();
    let mut leader = bootstrap(&leader_engine, 5);
    let mut b = WriteBatch::new();
    b.put(Cf::Data, keys::data_key(5, b"a"), b"1".to_vec());
    b.put(Cf::Data, keys::data_key(5, b"b"), b"2".to_vec());
    b.put(Cf::Data, keys::data_key(6, b"other"), b"x".to_vec());
    leader.append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>(), &mut b);
    leader.set_applied(3, 1, &mut b);
    leader_engine.write(&b, true).unwrap();
    let mut d = desc(5);
    d.start = b"a".to_vec();

    let follower_engine = f.create();
    let mut follower = bootstrap(&follower_engine, 5);
    let mut b = WriteBatch::new();
    b.put(Cf::Data, keys::data_key(5, b"stale"), b"gone".to_vec());
    follower.append(&[entry(1, 1)], &mut b);
    follower_engine.write(&b, true).unwrap();
    // One key per chunk: the install moves several chunks' worth.
    let mut snap = stream(&*leader_engine, &d, &*follower_engine, 1);
    snap.mut_metadata().index = 3;
    snap.mut_metadata().term = 1;
    snap.mut_metadata().set_conf_state(ConfState { voters: vec![1, 2, 3], ..Default::default() });
    let mut b = WriteBatch::new();
    let got = follower.apply_snapshot(&snap, &mut b).expect("install");
    follower_engine.write(&b, true).unwrap();
    finish_install(&*follower_engine, 5).unwrap();
    assert_eq!(got, d, "descriptor travels with the snapshot");
    assert_eq!(follower.apply_state().applied_index, 3);
    assert_eq!((follower.first_index().unwrap(), follower.last_index().unwrap()), (4, 3));
    let (s, e) = keys::range_span(5);
    let data = collect(&*follower_engine, Cf::Data, &s, &e);
    assert_eq!(data, vec![(keys::data_key(5, b"a"), b"1".to_vec()), (keys::data_key(5, b"b"), b"2".to_vec())], "data replaced");
    assert!(follower_engine.get(Cf::Data, &keys::data_key(6, b"other")).unwrap().is_none(), "other ranges not copied");

    let mut bad = snap.clone();
    bad.set_data(b"garbage".to_vec().into());
    let mut b = WriteBatch::new();
    assert!(follower.apply_snapshot(&bad, &mut b).is_err(), "a corrupt snapshot is rejected");
}

/// A transfer cut half-way (the sender died, a chunk was lost) leaves the
/// range's data, log and state as they were: received chunks are only
/// staged, and clearing them leaves nothing behind.
pub fn a_transfer_cut_half_way_leaves_the_data_as_it_was(f: &mut dyn EngineFactory) {
    let leader = f.create();
    let mut b = WriteBatch::new();
    for i in 0..50u32 {
        b.put(Cf::Data, keys::data_key(5, format!("new/{i:03}").as_bytes()), vec![1; 100]);
    }
    leader.write(&b, true).unwrap();
    let follower = f.create();
    let mut ps = bootstrap(&follower, 5);
    let mut b = WriteBatch::new();
    b.put(Cf::Data, keys::data_key(5, b"old"), b"kept".to_vec());
    ps.append(&[entry(1, 1)], &mut b);
    follower.write(&b, true).unwrap();
    let all = |e: &dyn Engine| (collect(e, Cf::Data, &[], &[0xff; 9]), collect(e, Cf::RaftState, &[], &[0xff; 9]));
    let before = all(&*follower);
    let mut r = SnapshotReader::new(Arc::from(leader.snapshot()), &desc(5)).with_chunk_bytes(500);
    for _ in 0..3 {
        let c = r.next_chunk().unwrap().expect("a chunk");
        assert!(!c.last, "the transfer is cut before its end");
        let mut b = WriteBatch::new();
        stage_chunk(5, &c.data, &mut b).unwrap();
        follower.write(&b, false).unwrap();
    }
    assert_eq!(all(&*follower), before, "staged chunks change nothing a read sees");
    drop(ps);
    let follower = f.restart(follower);
    assert_eq!(pending_install(&*follower, 5).unwrap(), None, "no install was decided");
    let mut b = WriteBatch::new();
    clear_staged(5, &mut b);
    follower.write(&b, true).unwrap();
    assert!(collect(&*follower, Cf::SnapStage, &[], &[0xff; 9]).is_empty(), "nothing left behind");
    assert_eq!(all(&*follower), before, "data and raft state as they were");
    let ps = PeerStorage::open(follower.clone(), 5).expect("reopen");
    assert_eq!(ps.last_index().unwrap(), 1);
}

/// Once the install is decided (its synced write holds the marker), a
/// crash while the staged data moves into place loses nothing: the next
/// start finishes the move, and the range holds exactly the snapshot.
pub fn an_install_cut_by_a_crash_is_finished_at_restart(f: &mut dyn EngineFactory) {
    let leader = f.create();
    let mut b = WriteBatch::new();
    for i in 0..200u32 {
        b.put(Cf::Data, keys::data_key(5, format!("k/{i:03}").as_bytes()), vec![i as u8; 64]);
    }
    leader.write(&b, true).unwrap();
    let follower = f.create();
    let mut ps = bootstrap(&follower, 5);
    let mut b = WriteBatch::new();
    b.put(Cf::Data, keys::data_key(5, b"stale"), b"gone".to_vec());
    follower.write(&b, true).unwrap();
    let mut snap = stream(&*leader, &desc(5), &*follower, 1_000);
    snap.mut_metadata().index = 9;
    snap.mut_metadata().term = 2;
    snap.mut_metadata().set_conf_state(ConfState { voters: vec![1, 2, 3], ..Default::default() });
    let mut b = WriteBatch::new();
    ps.apply_snapshot(&snap, &mut b).expect("install");
    follower.write(&b, true).unwrap();
    // Part of the move, then the crash.
    assert!(!crate::snapshot::move_staged(&*follower, 5, 5, 2_000).unwrap(), "more than one step");
    drop(ps);
    let follower = f.restart(follower);
    assert_eq!(pending_install(&*follower, 5).unwrap(), Some(5), "the decided install survives the crash");
    assert!(finish_install(&*follower, 5).unwrap());
    let (s, e) = keys::range_span(5);
    assert_eq!(collect(&*follower, Cf::Data, &s, &e), collect(&*leader, Cf::Data, &s, &e), "exactly the snapshot's data");
    assert!(collect(&*follower, Cf::SnapStage, &[], &[0xff; 9]).is_empty(), "staging empty, marker gone");
    let ps = PeerStorage::open(follower, 5).expect("reopen");
    assert_eq!(ps.apply_state().applied_index, 9);
}

/// A corrupt log record is `Corrupt` at open, and a missing one is `LogGap`,
/// both naming the range.
pub fn corrupt_log_record_is_reported_at_open(f: &mut dyn EngineFactory) {
    let e = f.create();
    let mut ps = bootstrap(&e, 11);
    let mut b = WriteBatch::new();
    ps.append(&(1..=3).map(|i| entry(i, 1)).collect::<Vec<_>>(), &mut b);
    e.write(&b, true).unwrap();
    let mut b = WriteBatch::new();
    b.put(Cf::RaftLog, keys::log_key(11, 2), b"not a record".to_vec());
    e.write(&b, true).unwrap();
    match PeerStorage::open(e.clone(), 11) {
        Err(crate::StorageError::Corrupt { range_id: 11, .. }) => {}
        Err(other) => panic!("expected Corrupt for range 11, got {other}"),
        Ok(_) => panic!("a corrupt log record must be reported at open"),
    }
    let mut b = WriteBatch::new();
    b.delete(Cf::RaftLog, keys::log_key(11, 2));
    e.write(&b, true).unwrap();
    assert!(
        matches!(PeerStorage::open(e, 11), Err(crate::StorageError::LogGap { range_id: 11, expected: 2, found: 3 })),
        "a hole in the log is reported"
    );
}
