//! Commands the KV state machine applies (one per Raft entry) and their
//! results. They mirror etcd's request messages field by field, so the
//! server's mapping from the etcd API is a plain copy, while this crate
//! stays independent of the wire API (it shares only the error codes of
//! `meridian-codes`).

use meridian_storage::KeyInterval;

use crate::mvcc::KeyValue;

/// One command of the log (one Raft entry): an [`Op`] and when it was
/// proposed. The machine answers it with an encoded [`Outcome`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Command {
    /// What to do; `None` is invalid.
    #[prost(oneof = "Op", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19")]
    pub op: Option<Op>,
    /// The proposer's wall clock (Unix ms), recorded as information only
    /// ("held since"); nothing decides on it.
    #[prost(int64, tag = "20")]
    pub wall_ms: i64,
}

/// The commands the machine applies. Each changes the range in one
/// revision, or, if it fails, changes nothing.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Op {
    /// Put one key (etcd's Put).
    #[prost(message, tag = "1")]
    Put(PutOp),
    /// Delete a key or an interval of keys (etcd's DeleteRange).
    #[prost(message, tag = "2")]
    DeleteRange(DeleteOp),
    /// Compares, then one branch of requests, all at one revision (etcd's Txn).
    #[prost(message, tag = "3")]
    Txn(TxnOp),
    /// Compact the history below this revision (etcd's Compact): it must be
    /// above the last compaction and at most the current revision.
    #[prost(int64, tag = "4")]
    Compact(i64),
    /// Create a lease (etcd's LeaseGrant).
    #[prost(message, tag = "5")]
    LeaseGrant(LeaseGrantOp),
    /// Revoke a lease (the id): delete it and its keys in one revision, and
    /// end its session's locks without lock-delay (etcd's LeaseRevoke).
    #[prost(int64, tag = "6")]
    LeaseRevoke(i64),
    /// Record a lease's remaining TTL, or reset it (see
    /// [`LeaseCheckpointOp`]).
    #[prost(message, tag = "7")]
    LeaseCheckpoint(LeaseCheckpointOp),
    /// A read proposed through the log (not used for ordinary reads, which
    /// go through ReadIndex).
    #[prost(message, tag = "8")]
    Range(RangeOp),
    /// Join a lock's queue (or take it at once if free).
    #[prost(message, tag = "9")]
    LockAcquire(LockAcquireOp),
    /// Release a held lock; the head waiter is granted at once.
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
    /// Carve a namespace out of this range into a new one (placement
    /// driver only; see [`crate::carve`]).
    #[prost(message, tag = "15")]
    Carve(CarveOp),
    /// Give a dropped namespace's prefix back to this range (placement
    /// driver only; see [`crate::carve`]).
    #[prost(message, tag = "16")]
    Uncarve(UncarveOp),
    /// Stop serving (a namespace being dropped): from then on every command
    /// and key query is refused as moved. The outcome's revision is the
    /// range's last.
    #[prost(message, tag = "17")]
    Seal(SealOp),
    /// Take a merged namespace's keys back into this range: the prefix is
    /// served here again, with the keys its range held when sealed for
    /// the merge (placement driver only; see [`crate::carve`]).
    #[prost(message, tag = "18")]
    Absorb(AbsorbOp),
    /// Raise the range's revision to at least this, touching no key: after
    /// a forced promotion (`meridian namespace promote
    /// --accept-data-loss`), so that every fencing token and revision
    /// granted from then on exceeds every one the lost voters could have
    /// granted past what the promoted replica had received.
    #[prost(int64, tag = "19")]
    RaiseRevision(i64),
}

/// [`Op::Carve`]: move the keys under `prefix` to namespace
/// `namespace_id`, served by the new range `range_id`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CarveOp {
    /// The namespace's prefix.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    /// The new range's id.
    #[prost(uint64, tag = "2")]
    pub range_id: u64,
    /// The new namespace's id.
    #[prost(uint64, tag = "3")]
    pub namespace_id: u64,
}

/// [`Op::Uncarve`]: `prefix` is served by this range again; its revision
/// is raised to at least `revision_floor` (the dropped namespace's last
/// revision), so fencing tokens under the prefix never go back.
#[derive(Clone, PartialEq, prost::Message)]
pub struct UncarveOp {
    /// The dropped namespace's prefix.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    /// The revision this range continues from, at least.
    #[prost(int64, tag = "2")]
    pub revision_floor: i64,
    /// The dropped namespace: only its carve is undone.
    #[prost(uint64, tag = "3")]
    pub namespace_id: u64,
}

/// [`Op::Seal`]: the namespace `prefix` stops being served by its range.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealOp {
    /// The namespace's prefix.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    /// Seal even while it holds keys or locks (they are discarded).
    #[prost(bool, tag = "2")]
    pub force: bool,
    /// Seal for a merge into the parent range: the keys stay and the
    /// outcome carries them ([`OutcomeKind::Sealed`], also when the range
    /// was sealed already); refused while the namespace holds leases or
    /// locks, or more keys than a merge moves.
    #[prost(bool, tag = "3")]
    pub merge: bool,
}

/// [`Op::Absorb`]: the namespace `prefix` (id `namespace_id`, whose range
/// was sealed for a merge) is served by this range again, with `kvs`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AbsorbOp {
    /// The merged namespace's prefix.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    /// The merged namespace: only its carve is undone.
    #[prost(uint64, tag = "2")]
    pub namespace_id: u64,
    /// Its last revision: this range continues from at least there.
    #[prost(int64, tag = "3")]
    pub revision_floor: i64,
    /// Its keys, as the seal exported them (revisions and versions kept).
    #[prost(message, repeated, tag = "4")]
    pub kvs: Vec<KeyValue>,
}

/// What a seal for a merge exported ([`SealOp::merge`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SealOutcome {
    /// The current version of every key of the namespace, in key order.
    #[prost(message, repeated, tag = "1")]
    pub kvs: Vec<KeyValue>,
}

/// What a carve did.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CarveOutcome {
    /// Keys moved to the new namespace.
    #[prost(uint64, tag = "1")]
    pub moved_keys: u64,
    /// The revision the new namespace starts at (above every revision its
    /// keys carried).
    #[prost(int64, tag = "2")]
    pub start_revision: i64,
    /// The prefix was already carved to this namespace (a retry): nothing
    /// changed.
    #[prost(bool, tag = "3")]
    pub already: bool,
    /// The new range's voters (the parent's when it was carved), sorted.
    #[prost(uint64, repeated, tag = "4")]
    pub voters: Vec<u64>,
}

/// Take a lock for a session, or queue the session for it
/// ([`Op::LockAcquire`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockAcquireOp {
    /// The lock's name: a key of the range, 1 to
    /// [`MAX_LOCK_NAME`](crate::locks::MAX_LOCK_NAME) bytes.
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

/// Release a lock ([`Op::LockRelease`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockReleaseOp {
    /// The lock's name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The holder's session (a lease of this range).
    #[prost(int64, tag = "2")]
    pub session: i64,
    /// The holder's token; 0 = whatever this session holds.
    #[prost(int64, tag = "3")]
    pub token: i64,
}

/// Withdraw a queued acquire ([`Op::LockCancel`]); a waiter granted in the
/// meantime is left holding.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LockCancelOp {
    /// The lock's name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The waiter's session.
    #[prost(int64, tag = "2")]
    pub session: i64,
    /// The waiter, as its [`LockAcquireOp::waiter_id`] named it.
    #[prost(uint64, tag = "3")]
    pub waiter_id: u64,
}

/// Replace the value the holder of a lock publishes ([`Op::Proclaim`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProclaimOp {
    /// The lock's name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The holder's session.
    #[prost(int64, tag = "2")]
    pub session: i64,
    /// The holder's fencing token; it must be the current holder's.
    #[prost(int64, tag = "3")]
    pub token: i64,
    /// The new value, at most
    /// [`MAX_LOCK_VALUE`](crate::locks::MAX_LOCK_VALUE) bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub value: Vec<u8>,
}

/// A read of a key or an interval of keys (etcd's RangeRequest, without
/// sorting or filters).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeOp {
    /// The key, or the first key of the interval.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The end of the interval, exclusive: empty reads `key` alone; `"\0"`
    /// (a single zero byte) reads every key ≥ `key`.
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// Most key-values returned; 0 (or negative): no limit.
    #[prost(int64, tag = "3")]
    pub limit: i64,
    /// The revision to read at; 0 (or negative): the current one. A revision
    /// below the last compaction or above the current one is an error.
    #[prost(int64, tag = "4")]
    pub revision: i64,
    /// Return keys without their values.
    #[prost(bool, tag = "5")]
    pub keys_only: bool,
    /// Return only the count, no key-values.
    #[prost(bool, tag = "6")]
    pub count_only: bool,
}

/// A write of one key (etcd's PutRequest).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutOp {
    /// The key; must not be empty.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The new value (ignored with `ignore_value`).
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
    /// The lease to attach the key to; 0: none. The lease must exist.
    #[prost(int64, tag = "3")]
    pub lease: i64,
    /// Return the key-value the put replaced.
    #[prost(bool, tag = "4")]
    pub prev_kv: bool,
    /// Keep the key's current value (`value` is ignored); the key must exist.
    #[prost(bool, tag = "5")]
    pub ignore_value: bool,
    /// Keep the key's current lease (`lease` is ignored); the key must exist.
    #[prost(bool, tag = "6")]
    pub ignore_lease: bool,
}

/// A delete of a key or an interval of keys (etcd's DeleteRangeRequest).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteOp {
    /// The key, or the first key of the interval; must not be empty.
    #[prost(bytes = "vec", tag = "1")]
    pub key: Vec<u8>,
    /// The end of the interval, exclusive, as in [`RangeOp::range_end`].
    #[prost(bytes = "vec", tag = "2")]
    pub range_end: Vec<u8>,
    /// Return the deleted key-values.
    #[prost(bool, tag = "3")]
    pub prev_kv: bool,
}

/// One condition of a [`TxnOp`] (etcd's Compare): `target` of every key in
/// the interval, compared with the operand by `result`. With no key there,
/// numeric targets compare 0 and VALUE fails.
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
    /// The key, or the first key of the interval; for LOCK_TOKEN the lock's
    /// name.
    #[prost(bytes = "vec", tag = "3")]
    pub key: Vec<u8>,
    /// The end of the interval, exclusive, as in [`RangeOp::range_end`];
    /// ignored by LOCK_TOKEN.
    #[prost(bytes = "vec", tag = "4")]
    pub range_end: Vec<u8>,
    /// The operand for VERSION, CREATE, MOD and LEASE targets.
    #[prost(int64, tag = "5")]
    pub number: i64,
    /// The operand for the VALUE target.
    #[prost(bytes = "vec", tag = "6")]
    pub value: Vec<u8>,
}

/// One request of a transaction branch (etcd's RequestOp).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestOp {
    /// The request; `None` fails the transaction if its branch runs.
    #[prost(oneof = "RequestKind", tags = "1, 2, 3, 4")]
    pub kind: Option<RequestKind>,
}

/// The requests a transaction branch holds.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RequestKind {
    /// A read; it sees the branch's earlier writes.
    #[prost(message, tag = "1")]
    Range(RangeOp),
    /// A put.
    #[prost(message, tag = "2")]
    Put(PutOp),
    /// A delete.
    #[prost(message, tag = "3")]
    DeleteRange(DeleteOp),
    /// A nested transaction.
    #[prost(message, tag = "4")]
    Txn(TxnOp),
}

/// A transaction (etcd's TxnRequest): if every compare holds, `success`
/// runs, else `failure`, in order, at one revision. A failing request fails
/// the whole transaction; no key may be written twice in it
/// ([`KvError::DuplicateKey`](crate::KvError::DuplicateKey)).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnOp {
    /// The conditions, all of which must hold (none: `success` runs).
    #[prost(message, repeated, tag = "1")]
    pub compare: Vec<Compare>,
    /// The requests run when every compare holds.
    #[prost(message, repeated, tag = "2")]
    pub success: Vec<RequestOp>,
    /// The requests run otherwise.
    #[prost(message, repeated, tag = "3")]
    pub failure: Vec<RequestOp>,
}

/// A lease grant (etcd's LeaseGrantRequest).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseGrantOp {
    /// The id to create; 0: the next free id, carrying the namespace id (see
    /// [`lease_namespace`](crate::mvcc::lease_namespace)). Must not be negative
    /// nor in use.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// Time to live, in seconds; must be positive.
    #[prost(int64, tag = "2")]
    pub ttl_s: i64,
}

/// A lease checkpoint or reset ([`Op::LeaseCheckpoint`]; see
/// [`crate::lease_clock`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseCheckpointOp {
    /// The lease.
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

/// What a command did: the result of its Raft entry, encoded.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Outcome {
    /// Revision of the range after the command.
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// The command's result; [`OutcomeKind::Error`] if it failed.
    #[prost(oneof = "OutcomeKind", tags = "2, 3, 4, 5, 6, 7, 8, 9, 10, 11")]
    pub kind: Option<OutcomeKind>,
}

/// The result of each kind of command.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum OutcomeKind {
    /// Of [`Op::Range`].
    #[prost(message, tag = "2")]
    Range(RangeOutcome),
    /// Of [`Op::Put`].
    #[prost(message, tag = "3")]
    Put(PutOutcome),
    /// Of [`Op::DeleteRange`].
    #[prost(message, tag = "4")]
    Delete(DeleteOutcome),
    /// Of [`Op::Txn`].
    #[prost(message, tag = "5")]
    Txn(TxnOutcome),
    /// Of a lease grant or checkpoint: the record after it.
    #[prost(message, tag = "6")]
    Lease(LeaseOutcome),
    /// A command that failed: nothing changed. Text as etcd words it.
    #[prost(message, tag = "7")]
    Error(ErrorOutcome),
    /// Of a compaction, lease revoke or expiry, lock release or lock-delay end
    /// (always `true`); of a lock cancel, whether the waiter was removed; of
    /// an absorb, whether it applied (`false`: no carve of that namespace
    /// was left to undo, as after an absorb that applied before).
    #[prost(bool, tag = "8")]
    Done(bool),
    /// Of a lock acquire or proclaim.
    #[prost(message, tag = "9")]
    Lock(LockOutcome),
    /// Of a carve.
    #[prost(message, tag = "10")]
    Carve(CarveOutcome),
    /// Of a seal for a merge: the keys it exported.
    #[prost(message, tag = "11")]
    Sealed(SealOutcome),
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

/// A failed command or query: its error, as the client gets it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ErrorOutcome {
    /// A [`meridian_codes::ErrorCode`] of the state machine (1-12); read it
    /// typed with `code()`.
    #[prost(enumeration = "meridian_codes::ErrorCode", tag = "1")]
    pub code: i32,
    /// The error's text (etcd's wording where etcd has the error).
    #[prost(string, tag = "2")]
    pub message: String,
    /// The compaction revision, for a `Compacted` error; 0 otherwise.
    #[prost(int64, tag = "3")]
    pub compact_revision: i64,
}

/// The result of a read (etcd's RangeResponse, without header).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RangeOutcome {
    /// The key-values read, in key order, at most `limit`: none with
    /// `count_only`, values empty with `keys_only`.
    #[prost(message, repeated, tag = "1")]
    pub kvs: Vec<KeyValue>,
    /// The interval holds more keys than `limit` returned.
    #[prost(bool, tag = "2")]
    pub more: bool,
    /// The keys in the interval at the revision read, regardless of `limit`.
    #[prost(int64, tag = "3")]
    pub count: i64,
    /// With `count_only` and no `limit`: the bytes of the counted keys and
    /// their values (the namespace's size, for the placement driver).
    #[prost(uint64, tag = "4")]
    pub bytes: u64,
}

/// The result of a put (etcd's PutResponse, without header).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PutOutcome {
    /// The key-value before the put, if `prev_kv` was asked and the key
    /// existed.
    #[prost(message, optional, tag = "1")]
    pub prev_kv: Option<KeyValue>,
}

/// The result of a delete (etcd's DeleteRangeResponse, without header).
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeleteOutcome {
    /// The number of keys deleted.
    #[prost(int64, tag = "1")]
    pub deleted: i64,
    /// The deleted key-values, if `prev_kv` was asked.
    #[prost(message, repeated, tag = "2")]
    pub prev_kvs: Vec<KeyValue>,
}

/// The result of one request of a transaction branch (etcd's ResponseOp).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ResponseOp {
    /// The result, of the request's kind.
    #[prost(oneof = "ResponseKind", tags = "1, 2, 3, 4")]
    pub kind: Option<ResponseKind>,
}

/// The results a transaction branch returns.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum ResponseKind {
    /// Of a read.
    #[prost(message, tag = "1")]
    Range(RangeOutcome),
    /// Of a put.
    #[prost(message, tag = "2")]
    Put(PutOutcome),
    /// Of a delete.
    #[prost(message, tag = "3")]
    Delete(DeleteOutcome),
    /// Of a nested transaction.
    #[prost(message, tag = "4")]
    Txn(TxnOutcome),
}

/// The result of a transaction (etcd's TxnResponse, without header).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TxnOutcome {
    /// Every compare held: `success` ran (else `failure` did).
    #[prost(bool, tag = "1")]
    pub succeeded: bool,
    /// One result per request of the branch that ran, in order.
    #[prost(message, repeated, tag = "2")]
    pub responses: Vec<ResponseOp>,
}

/// The lease after a grant or checkpoint.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseOutcome {
    /// The lease's id (the one picked, if the grant asked for 0).
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The lease's granted TTL, in seconds.
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
    /// The query; `None` is invalid.
    #[prost(oneof = "QueryKind", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9")]
    pub kind: Option<QueryKind>,
}

/// The queries the machine answers.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum QueryKind {
    /// A read (etcd's Range, at a revision or the current one).
    #[prost(message, tag = "1")]
    Range(RangeOp),
    /// Lease time-to-live (with its keys): the lease id.
    #[prost(int64, tag = "2")]
    LeaseInfo(i64),
    /// The ids of every lease of the range (the flag is ignored).
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
    /// A hash of the key-value history (etcd's HashKV).
    #[prost(message, tag = "8")]
    HashKv(HashKvOp),
    /// The merge floors of namespaces merged into this range (the flag is
    /// ignored): a watch of a merged prefix from at or below its floor
    /// would miss the merged namespace's events.
    #[prost(bool, tag = "9")]
    MergeFloors(bool),
}

/// A namespace merged into a range, and the revision the range's history
/// of its prefix starts at ([`QueryKind::MergeFloors`]).
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MergeFloor {
    /// The merged namespace's prefix.
    #[prost(bytes = "vec", tag = "1")]
    pub prefix: Vec<u8>,
    /// Its last revision in its own group: reads under the prefix below it
    /// are compacted here, and its events up to it are not here.
    #[prost(int64, tag = "2")]
    pub revision: i64,
}

/// A hash of the key-value history up to a revision ([`QueryKind::HashKv`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct HashKvOp {
    /// The last revision hashed; 0: the current one.
    #[prost(int64, tag = "1")]
    pub revision: i64,
}

/// The answer to a [`QueryKind::HashKv`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct HashKvOutcome {
    /// CRC-32 (IEEE) over every stored version (key and record) at or
    /// below `hash_revision`, in key order.
    #[prost(uint32, tag = "1")]
    pub hash: u32,
    /// The range's compaction revision.
    #[prost(int64, tag = "2")]
    pub compact_revision: i64,
    /// The last revision hashed.
    #[prost(int64, tag = "3")]
    pub hash_revision: i64,
}

/// A listing of locks ([`QueryKind::Locks`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct LocksOp {
    /// The first name listed (inclusive).
    #[prost(bytes = "vec", tag = "1")]
    pub from_name: Vec<u8>,
    /// Most locks listed; clamped to 1 to
    /// [`MAX_LOCKS_PER_QUERY`](crate::machine::MAX_LOCKS_PER_QUERY).
    #[prost(uint64, tag = "2")]
    pub limit: u64,
}

/// A read of the event log ([`QueryKind::Events`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct EventsOp {
    /// The first revision (inclusive); 0: from the oldest event kept. One
    /// below the last compaction is an error; the compaction revision itself
    /// is readable (as etcd lets a watch start there).
    #[prost(int64, tag = "1")]
    pub from_revision: i64,
    /// Most events returned (not revisions: a revision's events may be cut,
    /// and the next page goes on from [`RevEvent::sub`] + 1); clamped to 1
    /// to [`MAX_EVENTS_PER_QUERY`](crate::machine::MAX_EVENTS_PER_QUERY).
    #[prost(uint64, tag = "2")]
    pub limit: u64,
    /// Within `from_revision`, the first event's position (its sub-revision);
    /// 0: the whole revision.
    #[prost(int64, tag = "3")]
    pub from_sub: i64,
}

/// One event of the log, with the revision that wrote it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RevEvent {
    /// The revision of the write.
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// The event (always set).
    #[prost(message, optional, tag = "2")]
    pub event: Option<crate::mvcc::Event>,
    /// The event's position within its revision (0, 1, …).
    #[prost(int64, tag = "3")]
    pub sub: i64,
}

/// A lease as replicated state knows it (etcd's LeaseTimeToLive); the
/// leader's [`LeaseClock`](crate::lease_clock::LeaseClock) knows its actual
/// remaining TTL.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeaseInfo {
    /// The lease asked for.
    #[prost(int64, tag = "1")]
    pub id: i64,
    /// The granted TTL, in seconds; -1 if not found.
    #[prost(int64, tag = "2")]
    pub ttl_s: i64,
    /// The remaining TTL of the last checkpoint, else the granted TTL, in
    /// seconds; -1 if not found.
    #[prost(int64, tag = "3")]
    pub remaining_ttl_s: i64,
    /// The keys attached to the lease.
    #[prost(bytes = "vec", repeated, tag = "4")]
    pub keys: Vec<Vec<u8>>,
    /// The lease exists.
    #[prost(bool, tag = "5")]
    pub found: bool,
    /// The remaining TTL above comes from a checkpoint (not reset since).
    #[prost(bool, tag = "6")]
    pub checkpointed: bool,
    /// The record's checkpoint reset count.
    #[prost(uint64, tag = "7")]
    pub resets: u64,
}

/// The answer to a [`Query`]: the field of the query's kind is set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryAnswer {
    /// The range's current revision when answered (0 with an error).
    #[prost(int64, tag = "1")]
    pub revision: i64,
    /// Of [`QueryKind::Range`].
    #[prost(message, optional, tag = "2")]
    pub range: Option<RangeOutcome>,
    /// Of [`QueryKind::LeaseInfo`].
    #[prost(message, optional, tag = "3")]
    pub lease: Option<LeaseInfo>,
    /// Of [`QueryKind::Leases`].
    #[prost(int64, repeated, tag = "4")]
    pub lease_ids: Vec<i64>,
    /// The query failed; the other fields are empty.
    #[prost(message, optional, tag = "5")]
    pub error: Option<ErrorOutcome>,
    /// Of [`QueryKind::Events`], in revision order.
    #[prost(message, repeated, tag = "6")]
    pub events: Vec<RevEvent>,
    /// Of [`QueryKind::LockDescribe`] (an empty record if the lock is idle).
    #[prost(message, optional, tag = "7")]
    pub lock: Option<crate::locks::LockRecord>,
    /// Of [`QueryKind::Locks`] and [`QueryKind::DelayedLocks`], in name
    /// order.
    #[prost(message, repeated, tag = "8")]
    pub locks: Vec<crate::locks::NamedLock>,
    /// Of [`QueryKind::HashKv`].
    #[prost(message, optional, tag = "9")]
    pub hash: Option<HashKvOutcome>,
    /// Of [`QueryKind::MergeFloors`].
    #[prost(message, repeated, tag = "10")]
    pub merge_floors: Vec<MergeFloor>,
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
        // The prefix is this range's until the carve applies; naming it
        // would make the carve refuse itself.
        Op::Carve(_) | Op::Uncarve(_) | Op::Seal(_) | Op::Absorb(_) | Op::RaiseRevision(_) => {}
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
        QueryKind::LeaseInfo(_)
        | QueryKind::Leases(_)
        | QueryKind::Events(_)
        | QueryKind::Locks(_)
        | QueryKind::DelayedLocks(_)
        | QueryKind::HashKv(_)
        | QueryKind::MergeFloors(_) => Vec::new(),
    }
}
