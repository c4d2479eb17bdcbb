//! Client requests as the state machine sees them: `Command` bytes
//! applied by `KvMachine` (what a committed raft entry carries) and
//! `Query` bytes answered by `KvMachine::read`.
//!
//! Both run against a fixture range that already has what commands refer
//! to: leases, keys with history and a lease, a compaction, a held lock
//! with a waiter, a lock under lock-delay. Each input starts from a private
//! copy of it (`MemEngine::crash` of a fully synced engine is a deep copy).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use meridian_kv::command::*;
use meridian_kv::{Event, EventSink, KvMachine, LockEvent};
use meridian_raftstore::{ApplyContext, StateMachine};
use meridian_storage::{Engine, MemEngine, WriteBatch};
use prost::Message as _;

use crate::target::{Target, Verdict};

/// The fixture's range id (lease ids it picks carry it in their top bits).
pub const RANGE: u64 = 3;

#[derive(Default)]
struct CountingSink(AtomicU64);

impl EventSink for CountingSink {
    fn publish(&self, _range: u64, _revision: i64, events: &[Event]) {
        self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
    }
    fn publish_locks(&self, _range: u64, _revision: i64, events: &[LockEvent]) {
        self.0.fetch_add(events.len() as u64, Ordering::Relaxed);
    }
}

/// The id the fixture's `LeaseGrant { id: 0 }` is given: the range id in
/// the top bits, one past the largest id granted before (9).
fn auto_lease() -> i64 {
    ((RANGE as i64) << meridian_kv::mvcc::LEASE_NAMESPACE_SHIFT) | 10
}

fn cmd(op: Op) -> Command {
    Command { op: Some(op), wall_ms: 1_700_000_000_000 }
}

fn put(key: &[u8], value: &[u8], lease: i64) -> Op {
    Op::Put(PutOp { key: key.to_vec(), value: value.to_vec(), lease, prev_kv: true, ..Default::default() })
}

fn acquire(name: &[u8], session: i64, waiter_id: u64, lock_delay_ms: i64) -> Op {
    Op::LockAcquire(LockAcquireOp { name: name.to_vec(), session, waiter_id, try_only: false, lock_delay_ms, value: b"me".to_vec() })
}

fn req(kind: RequestKind) -> RequestOp {
    RequestOp { kind: Some(kind) }
}

fn range_op(key: &[u8], end: &[u8], revision: i64) -> RangeOp {
    RangeOp { key: key.to_vec(), range_end: end.to_vec(), limit: 0, revision, keys_only: false, count_only: false }
}

/// Applies one command to `engine` as entry `index`: the outcome (`None`
/// if its bytes do not decode) and the staged writes.
fn apply(sm: &mut KvMachine, engine: &MemEngine, index: u64, bytes: &[u8]) -> (Option<Outcome>, WriteBatch) {
    let mut batch = WriteBatch::new();
    let mut overlay = BTreeMap::new();
    let out = {
        let mut ctx = ApplyContext::new(RANGE, engine, &mut batch, &mut overlay, 1);
        sm.apply(&mut ctx, index, bytes)
    };
    (Outcome::decode(out.as_slice()).ok(), batch)
}

/// The fixture: an engine with every prelude command applied and synced,
/// the token lock "L1" was granted with, and the prelude.
fn fixture() -> (MemEngine, i64, Vec<Command>) {
    let engine = MemEngine::new();
    let mut sm = KvMachine::new(None);
    let prelude = vec![
        cmd(Op::LeaseGrant(LeaseGrantOp { id: 7, ttl_s: 60 })),
        cmd(Op::LeaseGrant(LeaseGrantOp { id: 8, ttl_s: 5 })),
        cmd(Op::LeaseGrant(LeaseGrantOp { id: 9, ttl_s: 30 })),
        cmd(Op::LeaseGrant(LeaseGrantOp { id: 0, ttl_s: 10 })),
        cmd(put(b"a", b"1", 0)),
        cmd(put(b"b", b"2", 7)),
        cmd(put(b"c", b"3", 8)),
        cmd(put(b"a\x00b", b"nul", auto_lease())),
        cmd(put(b"a", b"5", 0)),
        cmd(Op::DeleteRange(DeleteOp { key: b"c".to_vec(), range_end: Vec::new(), prev_kv: true })),
        cmd(put(b"d", b"1", 0)),
        cmd(put(b"d", b"2", 0)),
        cmd(Op::Compact(3)),
        cmd(acquire(b"L1", 7, 1, 1000)),
        cmd(acquire(b"L1", 8, 2, 0)),
        cmd(acquire(b"L2", 9, 3, 5000)),
        cmd(Op::LeaseExpire(9)),
        cmd(acquire(b"L2", 8, 4, 0)),
        cmd(Op::LeaseCheckpoint(LeaseCheckpointOp { id: 8, remaining_ttl_s: 2, resets: 0 })),
    ];
    let mut token = 0;
    for (i, c) in prelude.iter().enumerate() {
        let (outcome, batch) = apply(&mut sm, &engine, i as u64 + 1, &c.encode_to_vec());
        match outcome.and_then(|o| o.kind) {
            Some(OutcomeKind::Error(e)) => panic!("fuzz fixture: prelude command {i} failed: {}", e.message),
            Some(OutcomeKind::Lock(l)) if l.granted && token == 0 => token = l.token,
            Some(OutcomeKind::Lease(l)) if l.id != 7 && l.id != 8 && l.id != 9 => {
                assert_eq!(l.id, auto_lease(), "fuzz fixture: the picked lease id");
            }
            Some(_) => {}
            None => panic!("fuzz fixture: prelude command {i} gave no outcome"),
        }
        engine.write(&batch, true).expect("mem engine write");
    }
    (engine, token, prelude)
}

/// Commands touching everything the fixture holds, valid and not.
fn command_seeds(token: i64, prelude: &[Command]) -> Vec<Vec<u8>> {
    let txn = TxnOp {
        compare: (0..6)
            .map(|target| Compare {
                result: target % 4,
                target,
                key: b"a".to_vec(),
                range_end: if target == 2 { vec![0] } else { Vec::new() },
                number: 5,
                value: b"5".to_vec(),
            })
            .collect(),
        success: vec![
            req(RequestKind::Put(PutOp { key: b"t".to_vec(), value: b"x".to_vec(), lease: 7, ..Default::default() })),
            req(RequestKind::Range(range_op(b"a", b"z", 0))),
            req(RequestKind::DeleteRange(DeleteOp { key: b"d".to_vec(), range_end: Vec::new(), prev_kv: true })),
            req(RequestKind::Txn(TxnOp {
                compare: vec![Compare { result: 3, target: 5, key: b"L1".to_vec(), number: token, ..Default::default() }],
                success: vec![req(RequestKind::Put(PutOp { key: b"n".to_vec(), ..Default::default() }))],
                failure: vec![req(RequestKind::Range(range_op(b"\x00", b"\x00", 5)))],
            })),
        ],
        failure: vec![req(RequestKind::Range(range_op(b"a", b"", 4)))],
    };
    let ops = vec![
        put(b"a", b"6", 0),
        put(b"new", b"v", 7),
        put(b"b", b"", auto_lease()),
        Op::Put(PutOp { key: b"b".to_vec(), ignore_value: true, ignore_lease: true, ..Default::default() }),
        Op::Put(PutOp { key: b"gone".to_vec(), ignore_value: true, ..Default::default() }),
        Op::DeleteRange(DeleteOp { key: b"a".to_vec(), range_end: vec![0], prev_kv: true }),
        Op::DeleteRange(DeleteOp { key: b"a".to_vec(), range_end: b"b".to_vec(), prev_kv: false }),
        Op::Txn(txn),
        Op::Compact(5),
        Op::Compact(i64::MAX),
        Op::LeaseGrant(LeaseGrantOp { id: 0, ttl_s: 1 }),
        Op::LeaseGrant(LeaseGrantOp { id: 100, ttl_s: i64::MAX }),
        Op::LeaseRevoke(7),
        Op::LeaseRevoke(auto_lease()),
        Op::LeaseExpire(8),
        Op::LeaseCheckpoint(LeaseCheckpointOp { id: 7, remaining_ttl_s: 30, resets: 0 }),
        // A keepalive's reset, then a checkpoint it made stale.
        Op::LeaseCheckpoint(LeaseCheckpointOp { id: 7, remaining_ttl_s: 0, resets: 0 }),
        Op::LeaseCheckpoint(LeaseCheckpointOp { id: 7, remaining_ttl_s: 12, resets: 0 }),
        Op::Range(range_op(b"a", b"\x00", 0)),
        Op::Range(RangeOp { key: b"\x00".to_vec(), range_end: vec![0], limit: 2, revision: 6, keys_only: true, count_only: false }),
        acquire(b"L1", 9, 5, 0),
        acquire(b"L3", 7, 6, 60_000),
        Op::LockAcquire(LockAcquireOp { name: b"L1".to_vec(), session: 8, waiter_id: 7, try_only: true, ..Default::default() }),
        Op::LockRelease(LockReleaseOp { name: b"L1".to_vec(), session: 7, token }),
        Op::LockRelease(LockReleaseOp { name: b"L1".to_vec(), session: 7, token: 0 }),
        Op::LockCancel(LockCancelOp { name: b"L1".to_vec(), session: 8, waiter_id: 2 }),
        Op::LockDelayEnd(b"L2".to_vec()),
        Op::Proclaim(ProclaimOp { name: b"L1".to_vec(), session: 7, token, value: b"leader".to_vec() }),
    ];
    let mut seeds: Vec<Vec<u8>> = ops.into_iter().map(|op| cmd(op).encode_to_vec()).collect();
    seeds.extend(prelude.iter().map(|c| c.encode_to_vec()));
    seeds.push(Command { op: None, wall_ms: -1 }.encode_to_vec());
    seeds
}

fn query_seeds() -> Vec<Vec<u8>> {
    let kinds = vec![
        QueryKind::Range(range_op(b"a", b"", 0)),
        QueryKind::Range(range_op(b"a", b"\x00", 2)),
        QueryKind::Range(range_op(b"a", b"z", 6)),
        QueryKind::Range(RangeOp { key: b"\x00".to_vec(), range_end: vec![0], limit: 1, revision: 0, keys_only: true, count_only: true }),
        QueryKind::LeaseInfo(7),
        QueryKind::LeaseInfo(auto_lease()),
        QueryKind::LeaseInfo(12345),
        QueryKind::Leases(true),
        QueryKind::Events(EventsOp { from_revision: 0, limit: 0, from_sub: 0 }),
        QueryKind::Events(EventsOp { from_revision: 5, limit: 3, from_sub: 2 }),
        QueryKind::LockDescribe(b"L1".to_vec()),
        QueryKind::Locks(LocksOp { from_name: Vec::new(), limit: 0 }),
        QueryKind::DelayedLocks(true),
        QueryKind::HashKv(HashKvOp { revision: 0 }),
        QueryKind::HashKv(HashKvOp { revision: 3 }),
    ];
    kinds.into_iter().map(|k| Query { kind: Some(k) }.encode_to_vec()).collect()
}

/// Queries over every read path, asked after each command: a storage
/// error in any of them means the machine wrote a record it cannot read.
fn probe_queries() -> Vec<Vec<u8>> {
    [
        QueryKind::Range(RangeOp { key: vec![0], range_end: vec![0], ..Default::default() }),
        QueryKind::Leases(true),
        QueryKind::Events(EventsOp { from_revision: 0, limit: 1000, from_sub: 0 }),
        QueryKind::Locks(LocksOp { from_name: Vec::new(), limit: 0 }),
        QueryKind::DelayedLocks(true),
    ]
    .into_iter()
    .map(|k| Query { kind: Some(k) }.encode_to_vec())
    .collect()
}

fn check_answer(raw: &[u8], what: &str) -> Result<QueryAnswer, String> {
    let a = QueryAnswer::decode(raw).map_err(|e| format!("answer undecodable: {what}: {e}"))?;
    match &a.error {
        Some(e) if e.code() == meridian_codes::ErrorCode::Storage => Err(format!("storage error on read: {what}: {}", e.message)),
        _ => Ok(a),
    }
}

/// `KvMachine::apply` (through `StateMachine`) of the input as a committed
/// entry's command, then the read paths over the result.
pub struct KvCommand {
    engine: MemEngine,
    seeds: Vec<Vec<u8>>,
    probes: Vec<Vec<u8>>,
    base_revision: i64,
}

impl KvCommand {
    pub fn new() -> Self {
        let (engine, token, prelude) = fixture();
        let probes = probe_queries();
        let sm = KvMachine::new(None);
        let base_revision = QueryAnswer::decode(sm.read(&engine, RANGE, &probes[1]).as_slice()).map(|a| a.revision).unwrap_or(0);
        KvCommand { engine, seeds: command_seeds(token, &prelude), probes, base_revision }
    }
}

impl Default for KvCommand {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for KvCommand {
    fn name(&self) -> &'static str {
        "kv-command"
    }

    fn describe(&self) -> &'static str {
        "meridian_kv::KvMachine as StateMachine::apply (Command decode + execute), then StateMachine::read over the result"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        self.seeds.clone()
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let engine = self.engine.crash();
        let sink = Arc::new(CountingSink::default());
        let mut sm = KvMachine::new(Some(sink));
        let (outcome, batch) = apply(&mut sm, &engine, 1000, input);
        let Some(outcome) = outcome else { return Err("outcome: apply returned bytes that do not decode as Outcome".into()) };
        let failed = match &outcome.kind {
            Some(OutcomeKind::Error(_)) => true,
            Some(_) => false,
            None => return Err("outcome: apply returned an Outcome without a kind".into()),
        };
        if failed {
            if !batch.is_empty() {
                return Err(format!("failed command changed state: {} writes staged after an error outcome", batch.len()));
            }
            if outcome.revision != self.base_revision {
                return Err(format!("failed command changed state: revision {} != {}", outcome.revision, self.base_revision));
            }
        } else if outcome.revision < self.base_revision {
            return Err(format!("revision went backwards: {} < {}", outcome.revision, self.base_revision));
        }
        engine.write(&batch, true).map_err(|e| format!("fixture: {e}"))?;
        for (i, q) in self.probes.iter().enumerate() {
            let a = check_answer(&sm.read(&engine, RANGE, q), &format!("probe query {i}"))?;
            if a.error.is_none() && a.revision != outcome.revision {
                return Err(format!("read revision differs from the outcome's: {} != {}", a.revision, outcome.revision));
            }
        }
        Ok(if failed { Verdict::Rejected } else { Verdict::Accepted })
    }
}

/// `KvMachine::read` (through `StateMachine`) of the input as a query.
pub struct KvQuery {
    engine: MemEngine,
}

impl KvQuery {
    pub fn new() -> Self {
        KvQuery { engine: fixture().0 }
    }
}

impl Default for KvQuery {
    fn default() -> Self {
        Self::new()
    }
}

impl Target for KvQuery {
    fn name(&self) -> &'static str {
        "kv-query"
    }

    fn describe(&self) -> &'static str {
        "meridian_kv::KvMachine as StateMachine::read (Query decode + answer)"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        query_seeds()
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let sm = KvMachine::new(None);
        let a = check_answer(&sm.read(&self.engine, RANGE, input), "query")?;
        Ok(if a.error.is_some() { Verdict::Rejected } else { Verdict::Accepted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_has_what_seeds_refer_to() {
        let (engine, token, _) = fixture();
        assert!(token > 0, "L1 was granted");
        let sm = KvMachine::new(None);
        let q = Query { kind: Some(QueryKind::DelayedLocks(true)) }.encode_to_vec();
        let a = QueryAnswer::decode(sm.read(&engine, RANGE, &q).as_slice()).unwrap();
        assert_eq!(a.locks.len(), 1, "L2 is under lock-delay");
        let t = KvCommand::new();
        let seeds = t.seeds();
        let accepted = seeds.iter().filter(|s| t.run(s) == Ok(Verdict::Accepted)).count();
        assert!(accepted * 2 > seeds.len(), "most command seeds apply: {accepted}/{}", seeds.len());
        let q = KvQuery::new();
        for s in query_seeds() {
            assert!(q.run(&s).is_ok());
        }
    }
}
