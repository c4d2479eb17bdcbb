//! MVCC against a model: a BTreeMap snapshot per revision. Random puts,
//! deletes, leases and compactions; every read at every retained revision
//! must match the model.

use std::collections::BTreeMap;

use meridian_kv::mvcc::WriteTxn;
use meridian_kv::{EngineRead, KvError, Mvcc};
use meridian_raftstore::ApplyContext;
use meridian_storage::{Engine, MemEngine, WriteBatch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RANGE: u64 = 9;

/// Runs `f` as one applied entry and writes its batch.
fn apply<T>(engine: &MemEngine, f: impl FnOnce(&mut WriteTxn<'_, '_>) -> Result<T, KvError>) -> Result<(T, i64), KvError> {
    let mut batch = WriteBatch::new();
    let mut overlay = BTreeMap::new();
    let mut ctx = ApplyContext::new(RANGE, engine, &mut batch, &mut overlay, 1);
    let mut txn = WriteTxn::begin(&mut ctx)?;
    let out = f(&mut txn)?;
    let (rev, _, _) = txn.commit();
    engine.write(&batch, true).unwrap();
    Ok((out, rev))
}

fn reader(engine: &MemEngine) -> EngineRead<'_> {
    EngineRead { engine, namespace_id: RANGE }
}

type Model = BTreeMap<Vec<u8>, (Vec<u8>, i64, i64, i64)>; // value, create, mod, version

fn check_range(engine: &MemEngine, model_at: &BTreeMap<i64, Model>, rev: i64, start: &[u8], end: &[u8]) {
    let got = Mvcc::range(&reader(engine), start, end, rev, 0).unwrap();
    let model = &model_at[&rev];
    let want: Vec<_> = model
        .range(start.to_vec()..)
        .take_while(|(k, _)| end == [0] || k.as_slice() < end)
        .map(|(k, (v, c, m, ver))| (k.clone(), v.clone(), *c, *m, *ver))
        .collect();
    let have: Vec<_> =
        got.kvs.iter().map(|kv| (kv.key.clone(), kv.value.clone(), kv.create_revision, kv.mod_revision, kv.version)).collect();
    assert_eq!(have, want, "range [{start:?}, {end:?}) at revision {rev}");
    assert_eq!(got.count as usize, want.len());
}

#[test]
fn mvcc_matches_model_under_random_ops() {
    for seed in 0..20u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let engine = MemEngine::new();
        let mut model: Model = BTreeMap::new();
        let mut model_at: BTreeMap<i64, Model> = BTreeMap::new();
        model_at.insert(0, model.clone());
        model_at.insert(1, model.clone());
        let mut rev = 1i64; // an empty range is at revision 1, as in etcd
        let mut compacted = 0i64;
        let key = |rng: &mut ChaCha8Rng| -> Vec<u8> { vec![b'k', rng.gen_range(0..6u8), if rng.gen_bool(0.3) { 0 } else { b'x' }] };
        for step in 0..300 {
            match rng.gen_range(0..10) {
                0..=5 => {
                    let k = key(&mut rng);
                    let v = format!("v{step}").into_bytes();
                    let ((), r) = apply(&engine, |t| t.put(&k, &v, 0).map(|_| ())).unwrap();
                    rev += 1;
                    assert_eq!(r, rev, "every put bumps the revision");
                    let e = model.entry(k).or_insert((vec![], rev, rev, 0));
                    *e = (v, e.1, rev, e.3 + 1);
                }
                6 | 7 => {
                    let a = key(&mut rng);
                    let b = key(&mut rng);
                    let (s, e) = if a <= b { (a, b) } else { (b, a) };
                    let doomed: Vec<Vec<u8>> = model.range(s.clone()..e.clone()).map(|(k, _)| k.clone()).collect();
                    let (deleted, r) = apply(&engine, |t| t.delete_range(&s, &e)).unwrap();
                    assert_eq!(deleted.len(), doomed.len());
                    if !doomed.is_empty() {
                        rev += 1;
                    }
                    assert_eq!(r, rev, "a delete that removes nothing keeps the revision");
                    for k in doomed {
                        model.remove(&k);
                    }
                }
                8 if rev > compacted + 5 => {
                    let c = rng.gen_range(compacted + 1..=rev);
                    apply(&engine, |t| t.compact(c)).unwrap();
                    compacted = c;
                    let stale = apply(&engine, |t| t.compact(c));
                    assert!(matches!(stale, Err(KvError::Compacted { .. })), "compacting twice is an error");
                }
                _ => {}
            }
            model_at.insert(rev, model.clone());
            // Check a few revisions, old and new.
            for _ in 0..3 {
                let at = rng.gen_range(compacted.max(0)..=rev);
                if at == 0 {
                    continue;
                }
                check_range(&engine, &model_at, at, b"k", &[0]);
                let k = key(&mut rng);
                check_range(&engine, &model_at, at, &k, b"k\x04");
            }
            if compacted > 1 {
                let r = Mvcc::range(&reader(&engine), b"k", &[0], compacted - 1, 0);
                assert!(matches!(r, Err(KvError::Compacted { .. })), "reads below the compaction point fail");
            }
            let r = Mvcc::range(&reader(&engine), b"k", &[0], rev + 1, 0);
            assert!(matches!(r, Err(KvError::FutureRevision { .. })));
        }
    }
}

#[test]
fn leases_attach_and_revoke_atomically() {
    let engine = MemEngine::new();
    let (lease, _) = apply(&engine, |t| t.grant_lease(0, 30)).unwrap();
    assert_eq!(lease.id, (RANGE as i64) << 40 | 1, "ids are assigned deterministically and carry the range");
    assert_eq!(meridian_kv::mvcc::lease_namespace(lease.id), RANGE);
    apply(&engine, |t| t.put(b"a", b"1", lease.id).map(|_| ())).unwrap();
    apply(&engine, |t| t.put(b"b", b"2", lease.id).map(|_| ())).unwrap();
    apply(&engine, |t| t.put(b"c", b"3", 0).map(|_| ())).unwrap();
    // Moving a key off the lease detaches it.
    apply(&engine, |t| t.put(b"b", b"2'", 0).map(|_| ())).unwrap();
    assert_eq!(Mvcc::lease_keys(&reader(&engine), lease.id).unwrap(), vec![b"a".to_vec()]);
    let bad = apply(&engine, |t| t.put(b"d", b"4", 99));
    assert!(matches!(bad, Err(KvError::LeaseNotFound { lease_id: 99 })), "unknown lease on put");
    let (second, _) = apply(&engine, |t| t.grant_lease(0, 30)).unwrap();
    assert_eq!(second.id, lease.id + 1);
    assert!(Mvcc::get(&reader(&engine), b"d").unwrap().is_none(), "the failed put changed nothing");
    let before = Mvcc::meta(&reader(&engine)).unwrap().revision;
    let (deleted, rev) = apply(&engine, |t| t.revoke_lease(lease.id)).unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!(rev, before + 1, "revoking deletes attached keys in one revision");
    assert!(Mvcc::get(&reader(&engine), b"a").unwrap().is_none());
    assert!(Mvcc::get(&reader(&engine), b"c").unwrap().is_some());
    assert!(matches!(apply(&engine, |t| t.revoke_lease(lease.id)), Err(KvError::LeaseNotFound { .. })));
    let events = Mvcc::events_since(&reader(&engine), 1, 100).unwrap();
    assert_eq!(events.len(), 5, "four puts and one delete");
    assert!(events.last().unwrap().1.is_delete());
    assert!(events.windows(2).all(|w| w[0].0 <= w[1].0), "events in revision order");
}

/// The event log keeps references; replaying it must give exactly the
/// events published live (values and previous values included), before and
/// after a compaction, for puts, overwrites, deletes and lease revocations.
#[test]
fn replayed_events_equal_the_live_ones() {
    for seed in 0..10u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let engine = MemEngine::new();
        let mut live: Vec<(i64, meridian_kv::mvcc::Event)> = Vec::new();
        let mut compacted = 0i64;
        for _ in 0..200 {
            let mut batch = WriteBatch::new();
            let mut overlay = BTreeMap::new();
            let mut ctx = ApplyContext::new(RANGE, &engine, &mut batch, &mut overlay, 1);
            let mut txn = WriteTxn::begin(&mut ctx).unwrap();
            let k = vec![b'k', rng.gen_range(0..5u8)];
            let done = match rng.gen_range(0..10) {
                0..=5 => txn.put(&k, format!("v{}", rng.gen::<u16>()).as_bytes(), 0).map(|_| ()),
                6 => txn.put(&k, b"a", 0).and_then(|_| txn.put(&[b'k', 9], b"b", 0)).map(|_| ()),
                7 | 8 => txn.delete_range(b"k", &[b'k', 3]).map(|_| ()),
                _ => {
                    let target = Mvcc::meta(&reader(&engine)).unwrap().revision - rng.gen_range(0..5);
                    txn.compact(target)
                }
            };
            let (rev, events, _) = txn.commit();
            if done.is_err() {
                continue;
            }
            engine.write(&batch, true).unwrap();
            live.extend(events.into_iter().map(|e| (rev, e)));
            compacted = Mvcc::meta(&reader(&engine)).unwrap().compact_revision;
        }
        let from = compacted + 1;
        let replayed = Mvcc::events_since(&reader(&engine), from, 10_000).unwrap();
        let want: Vec<_> = live.into_iter().filter(|(r, _)| *r >= from).collect();
        assert!(!want.is_empty(), "seed {seed}: nothing to compare");
        assert_eq!(replayed, want, "seed {seed}: replay from {from} differs from the live events");
    }
}

/// Event records of the earlier layout (whole key-values) still replay.
#[test]
fn events_of_the_earlier_layout_still_replay() {
    use meridian_kv::mvcc::{Event, KeyValue};
    use prost::Message as _;
    let engine = MemEngine::new();
    apply(&engine, |t| t.put(b"a", b"1", 0).map(|_| ())).unwrap();
    let old = Event {
        kind: 0,
        kv: Some(KeyValue { key: b"z".to_vec(), value: b"old".to_vec(), mod_revision: 9, ..Default::default() }),
        prev_kv: None,
    };
    let mut b = WriteBatch::new();
    let key = meridian_storage::keys::data_key(RANGE, &meridian_kv::keys::event_key(9, 0));
    b.put(meridian_storage::Cf::Data, key, old.encode_to_vec());
    engine.write(&b, true).unwrap();
    let events = Mvcc::events_since(&reader(&engine), 1, 10).unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].1.kv.as_ref().unwrap().value, b"1", "new layout resolved from the history");
    assert_eq!(events[1], (9, old), "old layout read as it was written");
}

/// A watch may start at the compaction revision itself (etcd serves it):
/// its events replay, without the previous versions the compaction
/// removed; one revision lower is compacted. Paging by (revision,
/// sub-revision) returns every event once, also when a page ends inside a
/// revision.
#[test]
fn the_compaction_revision_replays_and_pages_never_lose_an_event() {
    let engine = MemEngine::new();
    apply(&engine, |t| t.put(b"a", b"1", 0).map(|_| ())).unwrap(); // 2
    apply(&engine, |t| t.put(b"b", b"1", 0).map(|_| ())).unwrap(); // 3
                                                                   // Revision 4: three events (two puts and a delete) in one transaction.
    let (_, four) = apply(&engine, |t| {
        t.put(b"a", b"2", 0)?;
        t.put(b"c", b"1", 0)?;
        t.delete_range(b"b", b"").map(|_| ())
    })
    .unwrap();
    apply(&engine, |t| t.put(b"a", b"3", 0).map(|_| ())).unwrap(); // 5
    let before = Mvcc::events_since(&reader(&engine), four, 100).unwrap();
    apply(&engine, |t| t.compact(four)).unwrap();
    let after = Mvcc::events_since(&reader(&engine), four, 100).unwrap();
    assert_eq!(after.len(), before.len(), "every event of revision {four} and later replays");
    for ((r1, e1), (r2, e2)) in before.iter().zip(&after) {
        assert_eq!((r1, e1.kind, &e1.kv), (r2, e2.kind, &e2.kv));
        if *r2 == four {
            assert_eq!(e2.prev_kv, None, "the previous version was compacted");
        } else {
            assert_eq!(e1.prev_kv, e2.prev_kv, "later events keep their previous versions");
        }
    }
    assert_eq!(after.iter().filter(|(r, _)| *r == four).count(), 3);
    assert!(
        matches!(Mvcc::events_since(&reader(&engine), four - 1, 100), Err(KvError::Compacted { compact_revision }) if compact_revision == four)
    );
    // Pages of two, resumed from (revision, sub + 1): the same events.
    let (mut rev, mut sub, mut paged) = (four, 0, Vec::new());
    loop {
        let page = Mvcc::events_from(&reader(&engine), rev, sub, 2).unwrap();
        let Some(&(r, s, _)) = page.last() else { break };
        paged.extend(page.into_iter().map(|(r, _, e)| (r, e)));
        (rev, sub) = (r, s + 1);
    }
    assert_eq!(paged, after);
}

/// HashKV: replicas that applied the same writes hash equal, at the
/// current revision and at an earlier one; a replica whose stored data
/// differs in one byte hashes differently; a compaction changes what is
/// hashed, the same way on every replica; revisions out of reach are
/// refused.
#[test]
fn hash_kv_is_equal_on_equal_replicas_and_differs_on_a_corrupt_one() {
    let replicas = [MemEngine::new(), MemEngine::new()];
    for e in &replicas {
        for i in 0..20u8 {
            apply(e, |t| t.put(&[b'k', i % 7], &[i], 0).map(|_| ())).unwrap();
        }
        apply(e, |t| t.delete_range(b"k", &[b'k', 3]).map(|_| ())).unwrap();
    }
    let hash = |e: &MemEngine, rev: i64| Mvcc::hash_kv(&reader(e), rev).unwrap();
    let now = hash(&replicas[0], 0);
    assert_eq!(now, hash(&replicas[1], 0));
    assert_eq!(now.hash_revision, Mvcc::meta(&reader(&replicas[0])).unwrap().revision);
    assert_eq!(hash(&replicas[0], 10), hash(&replicas[1], 10));
    assert_ne!(hash(&replicas[0], 10).hash, now.hash, "an earlier revision hashes less history");
    // Corrupt one stored version on replica 1 (same length, one byte).
    let key = meridian_storage::keys::data_key(RANGE, &meridian_kv::keys::history_key(&[b'k', 5], 7));
    let mut raw = replicas[1].get(meridian_storage::Cf::Data, &key).unwrap().expect("version at 7");
    *raw.last_mut().unwrap() ^= 1;
    let mut b = WriteBatch::new();
    b.put(meridian_storage::Cf::Data, key, raw);
    replicas[1].write(&b, true).unwrap();
    assert_ne!(hash(&replicas[0], 0).hash, hash(&replicas[1], 0).hash, "corruption shows");
    // Compaction on a healthy pair: equal again, and below it refused.
    let fresh = [MemEngine::new(), MemEngine::new()];
    for e in &fresh {
        for i in 0..10u8 {
            apply(e, |t| t.put(b"a", &[i], 0).map(|_| ())).unwrap();
        }
        apply(e, |t| t.compact(6)).unwrap();
    }
    assert_eq!(hash(&fresh[0], 0), hash(&fresh[1], 0));
    assert_eq!(hash(&fresh[0], 0).compact_revision, 6);
    assert!(matches!(Mvcc::hash_kv(&reader(&fresh[0]), 5), Err(KvError::Compacted { .. })));
    assert!(matches!(Mvcc::hash_kv(&reader(&fresh[0]), 99), Err(KvError::FutureRevision { .. })));
}
