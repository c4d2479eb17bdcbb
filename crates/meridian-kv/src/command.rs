//! Commands the KV state machine applies (one per Raft entry) and their
//! results. They mirror etcd's request messages field by field, so the
//! server's mapping from the etcd API is a plain copy, while this crate
//! stays independent of the wire API (it shares only the error codes of
//! `meridian-codes`).

use meridian_storage::KeyInterval;

use crate::mvcc::KeyValue;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    #[prost(oneof = "Op", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14")]
    pub op: Option<Op>,
    /// The proposer's wall clock (Unix ms), recorded as information only
    /// ("held since"); nothing decides on it.
    #[prost(int64, tag = "20")]
    pub wall_ms: i64,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    #[prost(message, tag = "1")]
    Put(PutOp),
    #[prost(message, tag = "2")]
    DeleteRange(DeleteOp),
    #[prost(message, tag = "3")]
    Txn(TxnOp),
    #[prost(int64, tag = "4")]
    Compact(i64),
    #[prost(message, tag = "5")]
    LeaseGrant(LeaseGrantOp),
    #[prost(int64, tag = "6")]
    LeaseRevoke(i64),
    #[prost(message, tag = "7")]
    LeaseCheckpoint(LeaseCheckpointOp),
    /// A read proposed through the log (not used for ordinary reads, which
    /// go through ReadIndex).
    #[prost(message, tag = "8")]
    Range(RangeOp),
    /// Join a lock's queue (or take it at once if free).
    #[prost(message, tag = "9")]
    LockAcquire(LockAcquireOp),
    #[prost(message, tag = "10")]
    LockRelease(LockReleaseOp),
    /// Leave a lock's queue (the waiter's deadline passed).
    #[prost(message, tag = "11")]
    LockCancel(LockCancelOp),
    /// The leader's clock says this lease expired: revoke it, and put the
    /// locks it held under lock-delay (a clean revoke does not).
    #[prost(int64, tag = "12")]
    LeaseExpire(i64),
    /// A lock's lock-delay has passed on the leader's clock (the name).
    #[prost(bytes = "vec", tag = "13")]
    LockDelayEnd(Vec<u8>),
    /// An election leader publishes a new value, guarded by its token.
    #[prost(message, tag = "14")]
    Proclaim(ProclaimOp),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LockAcquireOp {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The session (a lease of this range).
    #[prost(int64, tag = "2")]
    pub session: i64,
    /// Names this wait, so the server wakes exactly the right request.
    #[prost(uint64, tag = "3")]
    pub waiter_id: u64,
    /// Take the lock only if free; never queue.
    #[prost(bool, tag = "4")]
    pub try_only: bool,
    /// Lock-delay applied if this holder's session expires while holding.
    #[prost(int64, tag = "5")]
    pub lock_delay_ms: i64,
    /// Published with the lock (an election candidate's value).
    #[prost(bytes = "vec", tag = "6")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LockReleaseOp {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub session: i64,
    /// The holder's token; 0 = whatever this session holds.
    #[prost(int64, tag = "3")]
    pub token: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LockCancelOp {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub session: i64,
    #[prost(uint64, tag = "3")]
    pub waiter_id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ProclaimOp {
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    #[prost(int64, tag = "2")]
    pub session: i64,
    #[prost(int64, tag = "3")]
    pub token: i64,
    #[prost(bytes = "vec", tag = "4")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeOp {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub limit: i64,
    #[prost(int64, tag = "4")]
    pub revision: i64,
    #[prost(bool, tag = "5")]
    pub keys_only: bool,
    #[prost(bool, tag = "6")]
    pub count_only: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutOp {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    #[prost(int64, tag = "3")]
    pub lease: i64,
    #[prost(bool, tag = "4")]
    pub prev_kv: bool,
    #[prost(bool, tag = "5")]
    pub ignore_value: bool,
    #[prost(bool, tag = "6")]
    pub ignore_lease: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteOp {
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub prev_kv: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Compare {
    /// 0 EQUAL, 1 GREATER, 2 LESS, 3 NOT_EQUAL (etcd's CompareResult).
    #[prost(int32, tag = "1")]
    pub result: i32,
    /// 0 VERSION, 1 CREATE, 2 MOD, 3 VALUE, 4 LEASE (etcd's CompareTarget);
    /// 5 LOCK_TOKEN (Meridian's): the token of the current holder of the
    /// lock named `key` (0 when free), compared with `number`.
    #[prost(int32, tag = "2")]
    pub target: i32,
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    #[prost(bytes = "vec", tag = "4")]
    pub range_end: Vec<u8>,
    /// The operand for VERSION, CREATE, MOD and LEASE targets.
    #[prost(int64, tag = "5")]
    pub number: i64,
    /// The operand for the VALUE target.
    #[prost(bytes = "vec", tag = "6")]
    pub value: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    #[prost(oneof = "RequestKind", tags = "1, 2, 3, 4")]
    pub kind: Option<RequestKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestKind {
    #[prost(message, tag = "1")]
    Range(RangeOp),
    #[prost(message, tag = "2")]
    Put(PutOp),
    #[prost(message, tag = "3")]
    DeleteRange(DeleteOp),
    #[prost(message, tag = "4")]
    Txn(TxnOp),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnOp {
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantOp {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl_s: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpointOp {
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The remaining TTL on the leader's clock; 0 resets the checkpoint (a
    /// keepalive renewed the lease in full).
    #[prost(int64, tag = "2")]
    pub remaining_ttl_s: i64,
    /// The lease's reset count the leader knew when it computed this
    /// checkpoint; one below the record's is stale and ignored.
    #[prost(uint64, tag = "3")]
    pub resets: u64,
}

impl LeaseCheckpointOp {
    /// The reset a keepalive of a checkpointed lease proposes before it is
    /// answered: the full TTL applies again.
    pub fn reset(id: i64) -> Self {
        LeaseCheckpointOp { id, remaining_ttl_s: 0, resets: 0 }
    }
}

// ---- results ---------------------------------------------------------------

#[derive(Clone, PartialEq, prost::Message)]
pub struct Outcome {
    /// Revision of the range after the command.
    #[prost(int64, tag = "1")]
    pub revision: i64,
    #[prost(oneof = "OutcomeKind", tags = "2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<OutcomeKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OutcomeKind {
    #[prost(message, tag = "2")]
    Range(RangeOutcome),
    #[prost(message, tag = "3")]
    Put(PutOutcome),
    #[prost(message, tag = "4")]
    Delete(DeleteOutcome),
    #[prost(message, tag = "5")]
    Txn(TxnOutcome),
    #[prost(message, tag = "6")]
    Lease(LeaseOutcome),
    /// A command that failed: nothing changed. Text as etcd words it.
    #[prost(message, tag = "7")]
    Error(ErrorOutcome),
    #[prost(bool, tag = "8")]
    Done(bool),
    #[prost(message, tag = "9")]
    Lock(LockOutcome),
}

/// What an acquire (or proclaim) did.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockOutcome {
    /// The caller holds the lock now.
    #[prost(bool, tag = "1")]
    pub granted: bool,
    /// The fencing token when granted.
    #[prost(int64, tag = "2")]
    pub token: i64,
    /// Waiters ahead of the caller (0 when granted or not queued).
    #[prost(uint64, tag = "3")]
    pub ahead: u64,
    /// The lock after the command.
    #[prost(message, optional, tag = "4")]
    pub lock: Option<crate::locks::LockRecord>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorOutcome {
    /// A [`meridian_codes::ErrorCode`] of the state machine (1-12); read it
    /// typed with `code()`.
    #[prost(enumeration = "meridian_codes::ErrorCode", tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(int64, tag = "3")]
    pub compact_revision: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeOutcome {
    #[prost(message, repeated, tag = "1")]
    pub kvs: Vec<KeyValue>,
    #[prost(bool, tag = "2")]
    pub more: bool,
    #[prost(int64, tag = "3")]
    pub count: i64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct PutOutcome {
    #[prost(message, optional, tag = "1")]
    pub prev_kv: Option<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteOutcome {
    #[prost(int64, tag = "1")]
    pub deleted: i64,
    #[prost(message, repeated, tag = "2")]
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseOp {
    #[prost(oneof = "ResponseKind", tags = "1, 2, 3, 4")]
    pub kind: Option<ResponseKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ResponseKind {
    #[prost(message, tag = "1")]
    Range(RangeOutcome),
    #[prost(message, tag = "2")]
    Put(PutOutcome),
    #[prost(message, tag = "3")]
    Delete(DeleteOutcome),
    #[prost(message, tag = "4")]
    Txn(TxnOutcome),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnOutcome {
    #[prost(bool, tag = "1")]
    pub succeeded: bool,
    #[prost(message, repeated, tag = "2")]
    pub responses: Vec<ResponseOp>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseOutcome {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl_s: i64,
    /// The record's checkpoint reset count after the command.
    #[prost(uint64, tag = "3")]
    pub resets: u64,
}

/// Read-only queries answered from applied state (after ReadIndex, or
/// locally for serializable reads).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Query {
    #[prost(oneof = "QueryKind", tags = "1, 2, 3, 4, 5, 6, 7")]
    pub kind: Option<QueryKind>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum QueryKind {
    #[prost(message, tag = "1")]
    Range(RangeOp),
    /// Lease time-to-live (with its keys): the lease id.
    #[prost(int64, tag = "2")]
    LeaseInfo(i64),
    #[prost(bool, tag = "3")]
    Leases(bool),
    /// Events from a revision on (watch catch-up).
    #[prost(message, tag = "4")]
    Events(EventsOp),
    /// One lock: its holder and queue (the name).
    #[prost(bytes = "vec", tag = "5")]
    LockDescribe(Vec<u8>),
    /// Locks from a name on, in name order (deadlock report, listing).
    #[prost(message, tag = "6")]
    Locks(LocksOp),
    /// Locks under lock-delay (the leader times them).
    #[prost(bool, tag = "7")]
    DelayedLocks(bool),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LocksOp {
    #[prost(bytes = "vec", tag = "1")]
    pub from_name: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EventsOp {
    #[prost(int64, tag = "1")]
    pub from_revision: i64,
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct RevEvent {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    #[prost(message, optional, tag = "2")]
    pub event: Option<crate::mvcc::Event>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseInfo {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl_s: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl_s: i64,
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub keys: Vec<Vec<u8>>,
    #[prost(bool, tag = "5")]
    pub found: bool,
    /// The remaining TTL above comes from a checkpoint (not reset since).
    #[prost(bool, tag = "6")]
    pub checkpointed: bool,
    /// The record's checkpoint reset count.
    #[prost(uint64, tag = "7")]
    pub resets: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryAnswer {
    #[prost(int64, tag = "1")]
    pub revision: i64,
    #[prost(message, optional, tag = "2")]
    pub range: Option<RangeOutcome>,
    #[prost(message, optional, tag = "3")]
    pub lease: Option<LeaseInfo>,
    #[prost(int64, repeated, tag = "4")]
    pub lease_ids: Vec<i64>,
    #[prost(message, optional, tag = "5")]
    pub error: Option<ErrorOutcome>,
    #[prost(message, repeated, tag = "6")]
    pub events: Vec<RevEvent>,
    #[prost(message, optional, tag = "7")]
    pub lock: Option<crate::locks::LockRecord>,
    #[prost(message, repeated, tag = "8")]
    pub locks: Vec<crate::locks::NamedLock>,
}

/// The keys `op` touches (every compare and every branch of a Txn, nested
/// ones included; lock and election names), so the store can refuse a
/// command routed to a range that does not hold them. Lease and compaction
/// commands touch no key.
pub fn op_keys(op: &Op) -> Vec<KeyInterval> {
    let mut out = Vec::new();
    match op {
        Op::Put(p) => out.push(KeyInterval::key(&p.key)),
        Op::DeleteRange(d) => out.push(KeyInterval::range(&d.key, &d.range_end)),
        Op::Range(r) => out.push(KeyInterval::range(&r.key, &r.range_end)),
        Op::Txn(t) => txn_keys(t, &mut out),
        Op::LockAcquire(l) => out.push(KeyInterval::key(&l.name)),
        Op::LockRelease(l) => out.push(KeyInterval::key(&l.name)),
        Op::LockCancel(l) => out.push(KeyInterval::key(&l.name)),
        Op::Proclaim(p) => out.push(KeyInterval::key(&p.name)),
        Op::LockDelayEnd(name) => out.push(KeyInterval::key(name)),
        Op::Compact(_) | Op::LeaseGrant(_) | Op::LeaseRevoke(_) | Op::LeaseCheckpoint(_) | Op::LeaseExpire(_) => {}
    }
    out
}

fn txn_keys(t: &TxnOp, out: &mut Vec<KeyInterval>) {
    out.extend(t.compare.iter().map(|c| KeyInterval::range(&c.key, &c.range_end)));
    for r in t.success.iter().chain(&t.failure) {
        match &r.kind {
            Some(RequestKind::Range(x)) => out.push(KeyInterval::range(&x.key, &x.range_end)),
            Some(RequestKind::Put(x)) => out.push(KeyInterval::key(&x.key)),
            Some(RequestKind::DeleteRange(x)) => out.push(KeyInterval::range(&x.key, &x.range_end)),
            Some(RequestKind::Txn(x)) => txn_keys(x, out),
            None => {}
        }
    }
}

/// The keys a query reads (see [`op_keys`]); lease, event and listing
/// queries name none.
pub fn query_keys(q: &QueryKind) -> Vec<KeyInterval> {
    match q {
        QueryKind::Range(r) => vec![KeyInterval::range(&r.key, &r.range_end)],
        QueryKind::LockDescribe(name) => vec![KeyInterval::key(name)],
        QueryKind::LeaseInfo(_) | QueryKind::Leases(_) | QueryKind::Events(_) | QueryKind::Locks(_) | QueryKind::DelayedLocks(_) => {
            Vec::new()
        }
    }
}
