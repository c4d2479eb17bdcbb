//! Carving a namespace out of a range: keys move with their revisions, the
//! new namespace's revisions start above theirs, the parent refuses the
//! prefix from then on, and a refused carve changes nothing.

use meridian_codes::ErrorCode;
use meridian_kv::command::*;

mod common;
use common::{Fixture, RANGE};

const VOTERS: &[u64] = &[1, 2, 3];
const NEW_RANGE: u64 = 9;
const NEW_NS: u64 = 9;

fn put(key: &str, value: &str) -> Op {
    Op::Put(PutOp { key: key.into(), value: value.into(), ..Default::default() })
}

fn carve(prefix: &str) -> Op {
    Op::Carve(CarveOp { prefix: prefix.into(), range_id: NEW_RANGE, namespace_id: NEW_NS })
}

fn range_all(prefix: &str) -> QueryKind {
    let end = meridian_kv::keys::prefix_end(prefix.as_bytes());
    QueryKind::Range(RangeOp { key: prefix.into(), range_end: end, ..Default::default() })
}

fn error_code(o: &Outcome) -> Option<ErrorCode> {
    match &o.kind {
        Some(OutcomeKind::Error(e)) => Some(e.code()),
        _ => None,
    }
}

fn error_text(o: &Outcome) -> String {
    match &o.kind {
        Some(OutcomeKind::Error(e)) => e.message.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn keys_move_with_their_revisions_and_the_new_sequence_starts_above_them() {
    let mut f = Fixture::new();
    f.apply(put("/a/x", "1"));
    f.apply(put("/a/x", "2"));
    f.apply(put("/a/y", "3"));
    f.apply(put("/b/z", "4"));
    let before = f.query(range_all("/a/")).range.unwrap().kvs;
    assert_eq!(before.len(), 2);
    let (out, splits) = f.apply_conf(carve("/a/"), VOTERS, false);
    let c = match out.kind {
        Some(OutcomeKind::Carve(c)) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!((c.moved_keys, c.start_revision, c.already, c.voters.as_slice()), (2, 5, false, VOTERS));
    assert_eq!(splits.len(), 1);
    let d = &splits[0].desc;
    assert_eq!((d.range_id, d.namespace_id, d.start.as_slice(), d.end.as_slice()), (NEW_RANGE, NEW_NS, &b"/a/"[..], &b"/a0"[..]));
    assert_eq!(d.replicas.iter().map(|r| r.node_id).collect::<Vec<_>>(), VOTERS);

    // In the new namespace: the same key-values, revisions and versions.
    let moved = f.query_in(NEW_NS, range_all("/a/"));
    assert_eq!(moved.range.unwrap().kvs, before);
    assert_eq!(moved.revision, 5, "the new namespace continues at the parent's revision");
    // Older revisions are compacted there; the start revision itself reads.
    let old = f.query_in(NEW_NS, QueryKind::Range(RangeOp { key: "/a/x".into(), revision: 3, ..Default::default() }));
    assert_eq!(old.error.map(|e| e.code()), Some(ErrorCode::Compacted));
    let at = f.query_in(NEW_NS, QueryKind::Range(RangeOp { key: "/a/x".into(), revision: 5, ..Default::default() }));
    assert_eq!(at.range.unwrap().kvs[0].value, b"2");

    // The parent refuses the prefix now, for writes and reads, and keeps
    // serving the rest.
    assert_eq!(error_code(&f.apply(put("/a/new", "x"))), Some(ErrorCode::NamespaceMoved));
    let unbounded = QueryKind::Range(RangeOp { key: "/".into(), range_end: vec![0], ..Default::default() });
    assert_eq!(f.query(unbounded).error.map(|e| e.code()), Some(ErrorCode::NamespaceMoved));
    assert_eq!(f.query(range_all("/a/")).error.map(|e| e.code()), Some(ErrorCode::NamespaceMoved));
    assert_eq!(f.query(range_all("/b/")).range.unwrap().kvs.len(), 1);
    // The carve took revision 6 in the parent (its moved keys' tombstones).
    assert_eq!(f.apply(put("/b/w", "5")).revision, 7, "the parent's own sequence goes on");
    assert_eq!(f.apply(put("/a0", "edge")).revision, 8, "a key just past the prefix is not fenced");

    // A retry of the same carve changes nothing; another target is refused.
    let (again, splits) = f.apply_conf(carve("/a/"), VOTERS, false);
    match again.kind {
        Some(OutcomeKind::Carve(c)) => assert_eq!((c.already, c.voters.as_slice()), (true, VOTERS), "a retry learns the voters too"),
        other => panic!("{other:?}"),
    }
    assert!(splits.is_empty());
    let other = Op::Carve(CarveOp { prefix: "/a/".into(), range_id: 10, namespace_id: 10 });
    assert_eq!(error_code(&f.apply_conf(other, VOTERS, false).0), Some(ErrorCode::Invalid));
    let nested = Op::Carve(CarveOp { prefix: "/a/b/".into(), range_id: 10, namespace_id: 10 });
    assert!(error_text(&f.apply_conf(nested, VOTERS, false).0).contains("overlaps"));
}

#[test]
fn the_fence_survives_a_reload() {
    let mut f = Fixture::new();
    f.apply(put("/a/x", "1"));
    f.apply_conf(carve("/a/"), VOTERS, false);
    let mut fresh = meridian_kv::KvMachine::new(None);
    meridian_raftstore::StateMachine::reload(&mut fresh, &f.engine, RANGE).unwrap();
    f.sm = fresh;
    assert_eq!(error_code(&f.apply(put("/a/y", "2"))), Some(ErrorCode::NamespaceMoved));
}

#[test]
fn refused_carves_change_nothing() {
    let mut f = Fixture::new();
    f.apply(Op::LeaseGrant(LeaseGrantOp { id: 77, ttl_s: 60 }));
    f.apply(Op::Put(PutOp { key: "/l/k".into(), value: "v".into(), lease: 77, ..Default::default() }));
    f.apply(put("/l/plain", "v"));
    f.apply(Op::LeaseGrant(LeaseGrantOp { id: 78, ttl_s: 60 }));
    let acquire = LockAcquireOp { name: "/q/lock".into(), session: 78, waiter_id: 1, value: b"v".to_vec(), ..Default::default() };
    f.apply(Op::LockAcquire(acquire));
    let rev = f.query(range_all("/l/")).revision;

    let cases: Vec<(Op, bool, &str)> = vec![
        (carve("/l/"), false, "attached to leases"),
        (carve("/q/"), false, "lock \"/q/lock\""),
        (carve("/z/"), true, "changing its membership; retry"),
        (carve(""), false, "must not be empty"),
        (Op::Carve(CarveOp { prefix: "/z/".into(), range_id: RANGE, namespace_id: 12 }), false, "invalid range"),
    ];
    for (op, joint, why) in cases {
        let (out, splits) = f.apply_conf(op, VOTERS, joint);
        assert!(error_text(&out).contains(why), "{why}: {out:?}");
        assert!(splits.is_empty());
    }
    assert_eq!(f.query(range_all("/l/")).range.unwrap().kvs.len(), 2, "nothing moved");
    assert_eq!(f.query(range_all("/l/")).revision, rev);
    assert_eq!(f.apply(put("/l/more", "v")).kind.as_ref().map(|k| matches!(k, OutcomeKind::Put(_))), Some(true), "not fenced");
}

#[test]
fn a_seal_refuses_while_keys_remain_unless_forced_then_refuses_everything() {
    let mut f = Fixture::new();
    f.apply(put("/a/x", "1"));
    let seal = |force| Op::Seal(SealOp { prefix: b"/a/".to_vec(), force, merge: false });
    assert!(error_text(&f.apply(seal(false))).contains("holds 1 key(s)"));
    assert_eq!(f.apply(put("/a/y", "2")).revision, 3, "a refused seal changes nothing");
    let sealed = f.apply(seal(true));
    assert_eq!(sealed.revision, 3, "a seal reports the last revision and takes none");
    assert_eq!(error_code(&f.apply(put("/a/z", "3"))), Some(ErrorCode::NamespaceMoved));
    assert_eq!(error_code(&f.apply(Op::LeaseGrant(LeaseGrantOp { id: 5, ttl_s: 10 }))), Some(ErrorCode::NamespaceMoved), "nothing at all");
    let undo = Op::Uncarve(UncarveOp { prefix: "/a/".into(), revision_floor: 0, namespace_id: 0 });
    assert_eq!(error_code(&f.apply(undo)), Some(ErrorCode::NamespaceMoved), "a seal is for good");
    assert_eq!(f.query(range_all("/a/")).error.map(|e| e.code()), Some(ErrorCode::NamespaceMoved));
    let mut fresh = meridian_kv::KvMachine::new(None);
    meridian_raftstore::StateMachine::reload(&mut fresh, &f.engine, RANGE).unwrap();
    f.sm = fresh;
    assert_eq!(error_code(&f.apply(put("/b", "4"))), Some(ErrorCode::NamespaceMoved), "sealed after a reload too");
    assert!(matches!(f.apply(seal(false)).kind, Some(OutcomeKind::Done(true))), "a repeated seal succeeds");
}

#[test]
fn an_uncarve_returns_the_prefix_with_revisions_above_the_dropped_namespace() {
    let mut f = Fixture::new();
    f.apply(put("/a/x", "1"));
    f.apply_conf(carve("/a/"), VOTERS, false);
    let other = f.apply(Op::Uncarve(UncarveOp { prefix: "/a/".into(), revision_floor: 500, namespace_id: NEW_NS + 1 }));
    assert_eq!(other.revision, 3, "an uncarve for another namespace under the prefix changes nothing");
    assert_eq!(error_code(&f.apply(put("/a/y", "x"))), Some(ErrorCode::NamespaceMoved));
    let out = f.apply(Op::Uncarve(UncarveOp { prefix: "/a/".into(), revision_floor: 1000, namespace_id: NEW_NS }));
    assert_eq!(out.revision, 1000);
    let current = f.query(range_all("/a/")).range.unwrap();
    assert_eq!(current.kvs.len(), 0, "keys that moved out do not come back with the prefix");
    let at_carve = f.query(QueryKind::Range(RangeOp { key: "/a/x".into(), revision: 3, ..Default::default() })).range.unwrap();
    assert_eq!(at_carve.kvs.len(), 0, "nor at the revision the carve took");
    let before = f.query(QueryKind::Range(RangeOp { key: "/a/x".into(), revision: 2, ..Default::default() })).range.unwrap();
    assert_eq!(before.kvs.len(), 1, "history before the carve stays");
    let put_again = f.apply(put("/a/x", "back"));
    assert_eq!(put_again.revision, 1001, "a token under the prefix exceeds every one the dropped namespace gave");
    let again = f.apply(Op::Uncarve(UncarveOp { prefix: "/a/".into(), revision_floor: 2000, namespace_id: NEW_NS }));
    assert_eq!(again.revision, 1001, "a retried uncarve changes nothing");
}

/// Applies `op` to the carved-out namespace's range ([`NEW_RANGE`]) with
/// its own machine.
fn apply_child(f: &Fixture, child: &mut meridian_kv::KvMachine, index: u64, op: Op) -> Outcome {
    use prost::Message as _;
    let mut batch = meridian_storage::WriteBatch::new();
    let mut overlay = std::collections::BTreeMap::new();
    let out = {
        let mut ctx = meridian_raftstore::ApplyContext::new(NEW_RANGE, &f.engine, &mut batch, &mut overlay, 1);
        meridian_raftstore::StateMachine::apply(child, &mut ctx, index, &Command { op: Some(op), wall_ms: 1000 }.encode_to_vec())
    };
    meridian_storage::Engine::write(&f.engine, &batch, false).unwrap();
    Outcome::decode(out.as_slice()).unwrap()
}

fn seal_merge(prefix: &str) -> Op {
    Op::Seal(SealOp { prefix: prefix.into(), force: false, merge: true })
}

fn sealed_kvs(o: &Outcome) -> Vec<meridian_kv::mvcc::KeyValue> {
    match &o.kind {
        Some(OutcomeKind::Sealed(s)) => s.kvs.clone(),
        other => panic!("expected a seal's export, got {other:?}"),
    }
}

#[test]
fn a_merge_brings_the_keys_back_with_their_revisions_and_tokens_keep_growing() {
    let mut f = Fixture::new();
    f.apply(put("/a/x", "1"));
    f.apply(put("/a/z", "still"));
    f.apply(put("/b/k", "b"));
    f.apply_conf(carve("/a/"), VOTERS, false);
    assert_eq!(f.query(range_all("/b/")).revision, 5);
    let mut child = meridian_kv::KvMachine::new(None).for_range(NEW_RANGE);
    let mut i = 0;
    let mut child_apply = |f: &Fixture, op| {
        i += 1;
        apply_child(f, &mut child, i, op)
    };
    assert_eq!(child_apply(&f, put("/a/x", "2")).revision, 5);
    assert_eq!(child_apply(&f, put("/a/y", "3")).revision, 6);
    assert_eq!(child_apply(&f, Op::LeaseGrant(LeaseGrantOp { id: 40, ttl_s: 60 })).revision, 6, "a lease takes no revision");
    let refused = child_apply(&f, seal_merge("/a/"));
    assert!(error_text(&refused).contains("holds 1 lease(s)"), "{refused:?}");
    assert_eq!(child_apply(&f, put("/a/y", "4")).revision, 7, "a refused seal changes nothing");
    child_apply(&f, Op::LeaseRevoke(40));
    let sealed = child_apply(&f, seal_merge("/a/"));
    assert_eq!(sealed.revision, 7, "the seal reports the last revision and takes none");
    let kvs = sealed_kvs(&sealed);
    let want = f.query_in(NEW_NS, range_all("/a/")).range.unwrap().kvs;
    assert_eq!(kvs, want, "the export is the namespace's current state");
    assert_eq!(
        kvs.iter().map(|kv| (kv.key.as_slice(), kv.mod_revision, kv.version)).collect::<Vec<_>>(),
        [(&b"/a/x"[..], 5, 2), (&b"/a/y"[..], 7, 2), (&b"/a/z"[..], 3, 1)]
    );
    assert_eq!(error_code(&child_apply(&f, put("/a/q", "x"))), Some(ErrorCode::NamespaceMoved), "sealed");
    assert_eq!(sealed_kvs(&child_apply(&f, seal_merge("/a/"))), kvs, "a retried seal exports again");

    // Refused absorbs change nothing: the parent still fences the prefix.
    let absorb = |kvs: Vec<meridian_kv::mvcc::KeyValue>, floor| {
        Op::Absorb(AbsorbOp { prefix: "/a/".into(), namespace_id: NEW_NS, revision_floor: floor, kvs })
    };
    let mut leased = kvs.clone();
    leased[0].lease = 3;
    let mut outside = kvs.clone();
    outside[0].key = b"/b/x".to_vec();
    for (op, why) in
        [(absorb(leased, 7), "does not belong"), (absorb(outside, 7), "does not belong"), (absorb(kvs.clone(), 6), "at revision 6")]
    {
        assert!(error_text(&f.apply(op)).contains(why), "{why}");
        assert_eq!(error_code(&f.apply(put("/a/x", "no"))), Some(ErrorCode::NamespaceMoved));
    }

    let out = f.apply(absorb(kvs.clone(), 7));
    assert_eq!(out.revision, 7, "the parent continues from the merged namespace's last revision");
    assert_eq!(f.query(range_all("/a/")).range.unwrap().kvs, kvs, "the keys, their revisions and versions");
    let at = f.query(QueryKind::Range(RangeOp { key: "/a/z".into(), revision: 7, ..Default::default() })).range.unwrap();
    assert_eq!(at.kvs.len(), 1, "a moved key unchanged since is read at the current revision too (its carve tombstone is gone)");
    // Below the merged namespace's last revision the parent holds none of
    // its history: compacted, under the prefix only.
    let below = f.query(QueryKind::Range(RangeOp { key: "/a/".into(), range_end: b"/a0".to_vec(), revision: 6, ..Default::default() }));
    assert_eq!(below.error.as_ref().map(|e| (e.code(), e.compact_revision)), Some((ErrorCode::Compacted, 7)), "{below:?}");
    let root = f.query(QueryKind::Range(RangeOp { key: "/b/k".into(), revision: 4, ..Default::default() })).range.unwrap();
    assert_eq!(root.kvs.len(), 1, "the parent's own history stays readable");
    let floors = f.query(QueryKind::MergeFloors(true)).merge_floors;
    assert_eq!(floors, [MergeFloor { prefix: b"/a/".to_vec(), revision: 7 }]);
    assert_eq!(f.query(range_all("/b/")).range.unwrap().kvs.len(), 1, "the parent's own keys stay");
    let next = f.apply(put("/a/x", "5"));
    assert_eq!(next.revision, 8, "a token under the prefix exceeds every one the merged namespace gave");
    let x = f.query(QueryKind::Range(RangeOp { key: "/a/x".into(), ..Default::default() })).range.unwrap().kvs;
    assert_eq!((x[0].create_revision, x[0].version), (2, 3), "the key's life goes on");
    assert_eq!(f.apply(absorb(kvs.clone(), 50)).revision, 8, "a retried absorb changes nothing");

    let mut fresh = meridian_kv::KvMachine::new(None);
    meridian_raftstore::StateMachine::reload(&mut fresh, &f.engine, RANGE).unwrap();
    f.sm = fresh;
    assert_eq!(f.apply(put("/a/w", "6")).revision, 9, "served here after a reload");
    let below = f.query(QueryKind::Range(RangeOp { key: "/a/x".into(), revision: 6, ..Default::default() }));
    assert_eq!(below.error.map(|e| e.code()), Some(ErrorCode::Compacted), "the floor survives a reload");
}

#[test]
fn a_seal_for_a_merge_refuses_sessions_and_locks() {
    let mut f = Fixture::new();
    f.apply(put("/a/x", "1"));
    f.apply_conf(carve("/a/"), VOTERS, false);
    let mut child = meridian_kv::KvMachine::new(None).for_range(NEW_RANGE);
    apply_child(&f, &mut child, 1, Op::LeaseGrant(LeaseGrantOp { id: 41, ttl_s: 60 }));
    let acquire = LockAcquireOp { name: "/a/lock".into(), session: 41, waiter_id: 1, value: b"v".to_vec(), ..Default::default() };
    apply_child(&f, &mut child, 2, Op::LockAcquire(acquire));
    apply_child(&f, &mut child, 3, Op::LeaseRevoke(41));
    // A clean revoke releases the lock without lock-delay: now it merges.
    let kvs = sealed_kvs(&apply_child(&f, &mut child, 4, seal_merge("/a/")));
    assert_eq!(kvs.len(), 1);
    let mut other = meridian_kv::KvMachine::new(None).for_range(NEW_RANGE);
    let empty = Fixture::new();
    apply_child(&empty, &mut other, 1, Op::LeaseGrant(LeaseGrantOp { id: 42, ttl_s: 60 }));
    let acquire = LockAcquireOp {
        name: "/a/lock".into(),
        session: 42,
        waiter_id: 1,
        value: b"v".to_vec(),
        lock_delay_ms: 5000,
        ..Default::default()
    };
    apply_child(&empty, &mut other, 2, Op::LockAcquire(acquire));
    let refused = apply_child(&empty, &mut other, 3, seal_merge("/a/"));
    assert!(error_text(&refused).contains("lease(s)"), "{refused:?}");
    // The session expires: its lock stays under lock-delay, and that too
    // keeps the namespace where it is.
    apply_child(&empty, &mut other, 4, Op::LeaseExpire(42));
    let refused = apply_child(&empty, &mut other, 5, seal_merge("/a/"));
    assert!(error_text(&refused).contains("under lock-delay"), "{refused:?}");
}
