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
    let seal = |force| Op::Seal(SealOp { prefix: b"/a/".to_vec(), force });
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
