//! KvMachine: etcd semantics of commands, failed commands change nothing.

use meridian_kv::command::*;
use meridian_raftstore::StateMachine;
use prost::Message;

mod common;
use common::{Fixture, RANGE};

impl Fixture {
    fn get(&self, key: &[u8]) -> RangeOutcome {
        self.query(QueryKind::Range(RangeOp { key: key.to_vec(), ..Default::default() })).range.unwrap()
    }
}

fn put(key: &str, value: &str) -> Op {
    Op::Put(PutOp { key: key.into(), value: value.into(), prev_kv: true, ..Default::default() })
}

fn req_put(key: &str, value: &str) -> RequestOp {
    RequestOp { kind: Some(RequestKind::Put(PutOp { key: key.into(), value: value.into(), ..Default::default() })) }
}

fn error_of(o: &Outcome) -> Option<&ErrorOutcome> {
    match &o.kind {
        Some(OutcomeKind::Error(e)) => Some(e),
        _ => None,
    }
}

#[test]
fn put_get_versions_and_prev_kv() {
    let mut f = Fixture::new();
    let o = f.apply(put("a", "1"));
    assert_eq!(o.revision, 2, "an empty range is at revision 1: the first write is 2");
    let o = f.apply(put("a", "2"));
    assert_eq!(o.revision, 3);
    match o.kind {
        Some(OutcomeKind::Put(p)) => assert_eq!(p.prev_kv.unwrap().value, b"1"),
        other => panic!("{other:?}"),
    }
    let kv = &f.get(b"a").kvs[0];
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
    assert_eq!(f.sink.events.lock().unwrap().len(), 2, "one event per write");
}

/// A count-only read also says how many bytes the current keys and values
/// hold (what the placement driver splits and merges by); deleted keys
/// and older versions do not count.
#[test]
fn a_count_only_read_sums_the_current_bytes() {
    let mut f = Fixture::new();
    f.apply(put("/p/a", "12345"));
    f.apply(put("/p/b", "1"));
    f.apply(put("/p/b", "123"));
    f.apply(put("/p/c", "x"));
    f.apply(Op::DeleteRange(DeleteOp { key: b"/p/c".to_vec(), ..Default::default() }));
    f.apply(put("/q/z", "not counted"));
    let op = RangeOp { key: b"/p/".to_vec(), range_end: b"/p0".to_vec(), count_only: true, ..Default::default() };
    let r = f.query(QueryKind::Range(op)).range.unwrap();
    assert_eq!((r.count, r.bytes, r.kvs.len()), (2, (4 + 5) + (4 + 3), 0));
    // Other reads leave it 0.
    assert_eq!(f.get(b"/p/a").bytes, 0);
}

#[test]
fn txn_compares_and_branches() {
    let mut f = Fixture::new();
    f.apply(put("k", "v1"));
    let cas = |expect: &str, new: &str| {
        Op::Txn(TxnOp {
            compare: vec![Compare { result: 0, target: 3, key: b"k".to_vec(), value: expect.into(), ..Default::default() }],
            success: vec![req_put("k", new)],
            failure: vec![RequestOp { kind: Some(RequestKind::Range(RangeOp { key: b"k".to_vec(), ..Default::default() })) }],
        })
    };
    let o = f.apply(cas("v1", "v2"));
    assert!(matches!(o.kind, Some(OutcomeKind::Txn(TxnOutcome { succeeded: true, .. }))));
    let rev = o.revision;
    let o = f.apply(cas("v1", "v3"));
    match &o.kind {
        Some(OutcomeKind::Txn(t)) => {
            assert!(!t.succeeded);
            assert!(matches!(&t.responses[0].kind, Some(ResponseKind::Range(r)) if r.kvs[0].value == b"v2"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(o.revision, rev, "a read-only branch does not bump the revision");
    // version compare on a missing key compares against 0
    let o = f.apply(Op::Txn(TxnOp {
        compare: vec![Compare { result: 0, target: 0, key: b"missing".to_vec(), number: 0, ..Default::default() }],
        success: vec![req_put("created", "x")],
        failure: vec![],
    }));
    assert!(matches!(o.kind, Some(OutcomeKind::Txn(TxnOutcome { succeeded: true, .. }))), "create-if-absent idiom");
}

#[test]
fn failed_commands_change_nothing() {
    let mut f = Fixture::new();
    f.apply(put("a", "1"));
    // Second op fails (unknown lease): the first op must not stay applied.
    let o = f.apply(Op::Txn(TxnOp {
        compare: vec![],
        success: vec![
            req_put("b", "2"),
            RequestOp { kind: Some(RequestKind::Put(PutOp { key: b"c".to_vec(), lease: 42, ..Default::default() })) },
        ],
        failure: vec![],
    }));
    let e = error_of(&o).expect("error outcome");
    assert_eq!(e.message, "etcdserver: requested lease not found");
    assert!(f.get(b"b").kvs.is_empty(), "rolled back");
    assert_eq!(o.revision, 2, "revision unchanged");
    // Duplicate keys in one txn are rejected, as etcd does.
    let o = f.apply(Op::Txn(TxnOp { compare: vec![], success: vec![req_put("x", "1"), req_put("x", "2")], failure: vec![] }));
    assert_eq!(error_of(&o).unwrap().message, "etcdserver: duplicate key given in txn request");
    assert!(error_of(&f.apply(Op::Put(PutOp::default()))).is_some(), "empty key");
    assert!(error_of(&f.apply(Op::LeaseGrant(LeaseGrantOp { id: 0, ttl_s: 0 }))).is_some(), "zero TTL");
    let o = f.apply(Op::Compact(5));
    assert_eq!(error_of(&o).unwrap().message, "mvcc: required revision is a future revision");
    assert_eq!(f.sink.events.lock().unwrap().len(), 1, "no events from failed commands");
}

#[test]
fn compacted_reads_report_the_compact_revision() {
    let mut f = Fixture::new();
    for i in 0..5 {
        f.apply(put("a", &i.to_string()));
    }
    assert!(error_of(&f.apply(Op::Compact(3))).is_none());
    let q = Query { kind: Some(QueryKind::Range(RangeOp { key: b"a".to_vec(), revision: 2, ..Default::default() })) };
    let a = QueryAnswer::decode(f.sm.read(&f.engine, RANGE, &q.encode_to_vec()).as_slice()).unwrap();
    let e = a.error.expect("compacted");
    assert_eq!((e.code, e.compact_revision), (1, 3));
    assert_eq!(e.message, "mvcc: required revision has been compacted");
}

/// etcd's duplicate-key rule through nested transactions: a key may be
/// written once along any path that can run; a nested txn's two branches
/// are exclusive, so they may write the same key.
#[test]
fn nested_txns_follow_the_duplicate_key_rule() {
    let mut f = Fixture::new();
    let del = |k: &str| RequestOp { kind: Some(RequestKind::DeleteRange(DeleteOp { key: k.into(), ..Default::default() })) };
    let nested = |success: Vec<RequestOp>, failure: Vec<RequestOp>| RequestOp {
        kind: Some(RequestKind::Txn(TxnOp { compare: vec![], success, failure })),
    };
    let txn = |ops: Vec<RequestOp>| Op::Txn(TxnOp { compare: vec![], success: ops, failure: vec![] });
    let dup = "etcdserver: duplicate key given in txn request";
    for (what, ops) in [
        ("nested put, then delete", vec![nested(vec![req_put("k", "1")], vec![]), del("k")]),
        ("nested put, then put", vec![nested(vec![req_put("k", "1")], vec![]), req_put("k", "2")]),
        ("put, then nested failure-branch put", vec![req_put("k", "1"), nested(vec![], vec![req_put("k", "2")])]),
        ("put, then nested delete", vec![req_put("k", "1"), nested(vec![del("k")], vec![])]),
        ("delete, then nested put", vec![del("k"), nested(vec![req_put("k", "1")], vec![])]),
    ] {
        let o = f.apply(txn(ops));
        assert_eq!(error_of(&o).map(|e| e.message.as_str()), Some(dup), "{what}");
    }
    assert!(f.get(b"k").kvs.is_empty(), "refused transactions wrote nothing");
    let ok = f.apply(txn(vec![nested(vec![req_put("k", "1")], vec![del("k")]), req_put("j", "1")]));
    assert!(error_of(&ok).is_none(), "exclusive branches may write the same key: {ok:?}");
    assert_eq!(f.get(b"k").kvs[0].value, b"1");
}

fn lease_info(f: &Fixture, id: i64) -> LeaseInfo {
    f.query(QueryKind::LeaseInfo(id)).lease.expect("lease info")
}

fn checkpoint(f: &mut Fixture, id: i64, remaining_ttl_s: i64, resets: u64) -> LeaseOutcome {
    match f.apply(Op::LeaseCheckpoint(LeaseCheckpointOp { id, remaining_ttl_s, resets })).kind {
        Some(OutcomeKind::Lease(l)) => l,
        other => panic!("checkpoint answered {other:?}"),
    }
}

/// A keepalive after a checkpoint resets it through the log; a checkpoint
/// the leader computed before that reset applied (it raced the keepalive
/// in the log) must not bring the older remaining TTL back.
#[test]
fn checkpoint_older_than_a_reset_changes_nothing() {
    let mut f = Fixture::new();
    let id = match f.apply(Op::LeaseGrant(LeaseGrantOp { id: 0, ttl_s: 60 })).kind {
        Some(OutcomeKind::Lease(l)) => l.id,
        other => panic!("grant answered {other:?}"),
    };
    assert!(!lease_info(&f, id).checkpointed);
    assert_eq!(checkpoint(&mut f, id, 40, 0).resets, 0);
    let info = lease_info(&f, id);
    assert!(info.checkpointed && info.remaining_ttl_s == 40, "{info:?}");
    // The reset: the full TTL applies again, and the count goes up.
    assert_eq!(checkpoint(&mut f, id, 0, 0).resets, 1);
    let info = lease_info(&f, id);
    assert!(!info.checkpointed && info.remaining_ttl_s == 60 && info.resets == 1, "{info:?}");
    // A stale checkpoint (computed at count 0) arrives late: ignored.
    assert_eq!(checkpoint(&mut f, id, 38, 0).resets, 1);
    assert!(!lease_info(&f, id).checkpointed, "a stale checkpoint was applied");
    // One computed after the reset applies.
    checkpoint(&mut f, id, 30, 1);
    let info = lease_info(&f, id);
    assert!(info.checkpointed && info.remaining_ttl_s == 30, "{info:?}");
}

/// A replica nobody waits on skips the reads inside a transaction, and
/// only those: its writes, and whether each command fails, are the same as
/// on the replica that answers.
#[test]
fn a_replica_nobody_waits_on_writes_the_same_and_fails_the_same() {
    use meridian_storage::{Cf, Engine as _};
    let (mut answering, mut silent) = (Fixture::new(), Fixture::new());
    let range = |key: &str, revision: i64| RequestOp {
        kind: Some(RequestKind::Range(RangeOp { key: key.into(), range_end: b"~".to_vec(), revision, ..Default::default() })),
    };
    let txn = |success: Vec<RequestOp>, failure: Vec<RequestOp>, expect: &str| {
        Op::Txn(TxnOp {
            compare: vec![Compare { result: 0, target: 3, key: b"a".to_vec(), value: expect.into(), ..Default::default() }],
            success,
            failure,
        })
    };
    let ops = vec![
        put("a", "1"),
        put("b", "2"),
        txn(vec![req_put("c", "3"), range("a", 0)], vec![range("a", 0)], "1"),
        txn(vec![req_put("d", "4")], vec![range("a", 0), req_put("e", "5")], "nope"),
        Op::Compact(3),
        // Below the compaction, and in the future: refused on both, with
        // the put before the read rolled back on both.
        txn(vec![req_put("f", "6"), range("a", 2)], vec![], "1"),
        txn(vec![req_put("g", "7"), range("a", 99)], vec![], "1"),
        txn(vec![range("a", 3), req_put("h", "8")], vec![], "1"),
    ];
    let mut refused = 0;
    for op in ops {
        let (a, s) = (answering.apply_answered(op.clone(), true), silent.apply_answered(op, false));
        assert_eq!(a.revision, s.revision);
        refused += usize::from(error_of(&a).is_some());
        assert_eq!(error_of(&a).map(|e| e.code), error_of(&s).map(|e| e.code), "{a:?} / {s:?}");
        if let (Some(OutcomeKind::Txn(ta)), Some(OutcomeKind::Txn(ts))) = (&a.kind, &s.kind) {
            assert_eq!(ta.succeeded, ts.succeeded);
            for (ra, rs) in ta.responses.iter().zip(&ts.responses) {
                if let (Some(ResponseKind::Range(ra)), Some(ResponseKind::Range(rs))) = (&ra.kind, &rs.kind) {
                    assert!(!ra.kvs.is_empty(), "the answering replica read");
                    assert!(rs.kvs.is_empty(), "the silent one did not");
                }
            }
        }
    }
    assert_eq!(refused, 2, "the compacted and the future read");
    let dump = |f: &Fixture| {
        let mut all = Vec::new();
        f.engine
            .scan(Cf::Data, &[], &[], &mut |k, v| {
                all.push((k.to_vec(), v.to_vec()));
                true
            })
            .unwrap();
        all
    };
    assert_eq!(dump(&answering), dump(&silent), "the same data on both replicas");
    assert_eq!(answering.sink.events.lock().unwrap().len(), silent.sink.events.lock().unwrap().len());
}
