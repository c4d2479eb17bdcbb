//! [`KvMachine`]: the [`StateMachine`] that applies [`Command`]s with etcd
//! semantics and answers [`Query`]s.

use std::sync::Arc;

use meridian_raftstore::{ApplyContext, StateMachine};
use meridian_storage::{Engine, StorageResult};
use prost::Message as _;

use crate::carve;
use crate::command::*;
use crate::error::KvError;
use crate::locks::{self, LockEvent, Locks};
use crate::mvcc::{Event, KeyValue, Mvcc, WriteTxn};
use crate::read::{DataRead, EngineRead};

/// Events returned by one catch-up query (bounded memory per watcher).
pub const MAX_EVENTS_PER_QUERY: usize = 1000;
/// Locks listed by one query.
pub const MAX_LOCKS_PER_QUERY: usize = 10_000;

/// Receives the events of every applied write, in revision order, on every
/// replica (watches are served by any node).
pub trait EventSink: Send + Sync {
    /// The events of one applied write, in order; `revision` is the range's
    /// revision after it. Not called for a command that wrote no key.
    fn publish(&self, range_id: u64, revision: i64, events: &[Event]);

    /// An applied command took revision `revision` and wrote no event (a
    /// lock change, a carve): a watcher that follows the range's revisions
    /// one by one skips it.
    fn revision_moved(&self, _range_id: u64, _revision: i64) {}

    /// Lock holder changes of an applied command (waking blocked acquires,
    /// election observers).
    fn publish_locks(&self, _range_id: u64, _revision: i64, _events: &[LockEvent]) {}

    /// The range's replica left this node: no more events will come from
    /// it here.
    fn range_removed(&self, _range_id: u64) {}

    /// `prefix` was carved out of the range: its events come from another
    /// range from now on (watches here that cover it must end).
    fn namespace_carved(&self, _range_id: u64, _prefix: &[u8]) {}

    /// `prefix` is served by the range again (a dropped namespace's).
    fn namespace_returned(&self, _range_id: u64, _prefix: &[u8]) {}
}

/// The etcd-compatible state machine of one range.
#[derive(Default)]
pub struct KvMachine {
    sink: Option<Arc<dyn EventSink>>,
    /// Prefixes carved out of this range (its carve records, kept here so
    /// a command's check reads no record): commands and queries touching
    /// them are refused.
    carved: Vec<Vec<u8>>,
    /// The range was sealed (its namespace is being dropped or merged):
    /// every command but another seal is refused. The sealed prefix.
    sealed: Option<Vec<u8>>,
    /// The range this machine serves (0: not said), named to the sink when
    /// a reload finds carves it did not apply itself (a snapshot, a start).
    range_id: u64,
    /// The ranges carved out of this one, as of their carves.
    split_offs: Vec<meridian_storage::RangeDescriptor>,
    /// Namespaces merged into this range, with their floors (reads below
    /// are compacted).
    floors: Vec<MergeFloor>,
}

impl KvMachine {
    /// A machine that publishes its events to `sink`, if any.
    pub fn new(sink: Option<Arc<dyn EventSink>>) -> Self {
        KvMachine { sink, carved: Vec::new(), sealed: None, range_id: 0, split_offs: Vec::new(), floors: Vec::new() }
    }

    /// The same machine, serving `range_id`.
    pub fn for_range(mut self, range_id: u64) -> Self {
        self.range_id = range_id;
        self
    }
}

/// The [`ErrorOutcome`] that reports `e`.
pub fn error_outcome(e: &KvError) -> ErrorOutcome {
    let compact_revision = match e {
        KvError::Compacted { compact_revision } => *compact_revision,
        _ => 0,
    };
    ErrorOutcome { code: e.code() as i32, message: e.to_string(), compact_revision }
}

fn cmp_holds(result: i32, ord: std::cmp::Ordering) -> bool {
    use std::cmp::Ordering::*;
    match result {
        0 => ord == Equal,
        1 => ord == Greater,
        2 => ord == Less,
        3 => ord != Equal,
        _ => false,
    }
}

/// etcd's compare: over every key of the interval; a missing single key
/// compares as zero for numeric targets and fails for VALUE.
fn compare(r: &dyn DataRead, c: &Compare) -> Result<bool, KvError> {
    if c.target == 5 {
        return Ok(cmp_holds(c.result, locks::holder_token(r, &c.key)?.cmp(&c.number)));
    }
    let kvs = Mvcc::range(r, &c.key, &c.range_end, 0, 0)?.kvs;
    let check = |kv: &KeyValue| -> bool {
        match c.target {
            0 => cmp_holds(c.result, kv.version.cmp(&c.number)),
            1 => cmp_holds(c.result, kv.create_revision.cmp(&c.number)),
            2 => cmp_holds(c.result, kv.mod_revision.cmp(&c.number)),
            3 => cmp_holds(c.result, kv.value.as_slice().cmp(c.value.as_slice())),
            4 => cmp_holds(c.result, kv.lease.cmp(&c.number)),
            _ => false,
        }
    };
    if kvs.is_empty() {
        return Ok(c.target != 3 && check(&KeyValue::default()));
    }
    Ok(kvs.iter().all(check))
}

fn in_interval(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else {
        key >= start && (end == [0] || key < end)
    }
}

/// etcd rejects a transaction that writes one key twice in a branch, or
/// deletes a key it also puts.
fn check_duplicates(ops: &[RequestOp]) -> Result<(), KvError> {
    writes_of(ops).map(|_| ())
}

/// Keys put and `[start, end)` intervals deleted by a list of txn ops.
type TxnWrites<'a> = (Vec<&'a [u8]>, Vec<(&'a [u8], &'a [u8])>);

/// The keys a list of txn ops may put and the intervals it may delete, with
/// etcd's rule enforced along every path that can run: no key is written
/// twice (put twice, or put and deleted) in one transaction. A nested txn
/// contributes the writes of both its branches (either may run) to the
/// level around it, but its two branches are never checked against each
/// other (only one runs). One write per key per revision is also what lets
/// the event log refer to the history by (key, revision).
fn writes_of(ops: &[RequestOp]) -> Result<TxnWrites<'_>, KvError> {
    let mut puts: Vec<&[u8]> = Vec::new();
    let mut dels: Vec<(&[u8], &[u8])> = Vec::new();
    let clash =
        |puts: &[&[u8]], dels: &[(&[u8], &[u8])], key: &[u8]| puts.contains(&key) || dels.iter().any(|(s, e)| in_interval(key, s, e));
    for op in ops {
        match &op.kind {
            Some(RequestKind::Put(p)) => {
                if clash(&puts, &dels, &p.key) {
                    return Err(KvError::DuplicateKey { key: p.key.clone() });
                }
                puts.push(&p.key);
            }
            Some(RequestKind::DeleteRange(d)) => {
                if let Some(k) = puts.iter().find(|k| in_interval(k, &d.key, &d.range_end)) {
                    return Err(KvError::DuplicateKey { key: k.to_vec() });
                }
                dels.push((&d.key, &d.range_end));
            }
            Some(RequestKind::Txn(t)) => {
                let branches = [writes_of(&t.success)?, writes_of(&t.failure)?];
                for (bp, bd) in &branches {
                    if let Some(k) = bp.iter().find(|k| clash(&puts, &dels, k)) {
                        return Err(KvError::DuplicateKey { key: k.to_vec() });
                    }
                    if let Some(k) = puts.iter().find(|k| bd.iter().any(|(s, e)| in_interval(k, s, e))) {
                        return Err(KvError::DuplicateKey { key: k.to_vec() });
                    }
                }
                for (bp, bd) in branches {
                    for k in bp {
                        if !puts.contains(&k) {
                            puts.push(k);
                        }
                    }
                    dels.extend(bd);
                }
            }
            Some(RequestKind::Range(_)) | None => {}
        }
    }
    Ok((puts, dels))
}

pub(crate) fn range(r: &dyn DataRead, op: &RangeOp) -> Result<RangeOutcome, KvError> {
    let limit = usize::try_from(op.limit.max(0)).unwrap_or(usize::MAX);
    let res = Mvcc::range(r, &op.key, &op.range_end, op.revision, limit)?;
    let more = limit > 0 && res.count as usize > res.kvs.len();
    // The count read every key-value anyway: their size comes free.
    let bytes = if op.count_only { res.kvs.iter().map(|kv| (kv.key.len() + kv.value.len()) as u64).sum() } else { 0 };
    let mut kvs = if op.count_only { Vec::new() } else { res.kvs };
    if op.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeOutcome { kvs, more, count: res.count, bytes })
}

fn put(txn: &mut WriteTxn<'_, '_>, op: &PutOp) -> Result<PutOutcome, KvError> {
    let prev = if op.ignore_value || op.ignore_lease { Mvcc::get(txn.reader(), &op.key)? } else { None };
    if (op.ignore_value || op.ignore_lease) && prev.is_none() {
        return Err(KvError::KeyNotFound);
    }
    let value = if op.ignore_value { prev.as_ref().map(|p| p.value.clone()).unwrap_or_default() } else { op.value.clone() };
    let lease = if op.ignore_lease { prev.as_ref().map_or(0, |p| p.lease) } else { op.lease };
    let old = txn.put(&op.key, &value, lease)?;
    Ok(PutOutcome { prev_kv: if op.prev_kv { old } else { None } })
}

fn delete(txn: &mut WriteTxn<'_, '_>, op: &DeleteOp) -> Result<DeleteOutcome, KvError> {
    if op.key.is_empty() {
        return Err(KvError::EmptyKey);
    }
    let gone = txn.delete_range(&op.key, &op.range_end)?;
    Ok(DeleteOutcome { deleted: gone.len() as i64, prev_kvs: if op.prev_kv { gone } else { Vec::new() } })
}

fn txn(t: &mut WriteTxn<'_, '_>, op: &TxnOp) -> Result<TxnOutcome, KvError> {
    let mut succeeded = true;
    for c in &op.compare {
        if !compare(t.reader(), c)? {
            succeeded = false;
            break;
        }
    }
    let branch = if succeeded { &op.success } else { &op.failure };
    let mut responses = Vec::with_capacity(branch.len());
    for r in branch {
        let kind = match &r.kind {
            // A read shapes only the answer: a replica nobody waits on
            // checks what could make it fail (the same on every replica)
            // and skips the reading. (A record that does not decode fails
            // the read only where it is read: corruption is one replica's,
            // and the CORRUPT alarm's business, not the command's.)
            Some(RequestKind::Range(x)) if !t.answered() => {
                Mvcc::meta(t.reader())?.readable(x.revision)?;
                ResponseKind::Range(RangeOutcome::default())
            }
            Some(RequestKind::Range(x)) => ResponseKind::Range(range(t.reader(), x)?),
            Some(RequestKind::Put(x)) => ResponseKind::Put(put(t, x)?),
            Some(RequestKind::DeleteRange(x)) => ResponseKind::Delete(delete(t, x)?),
            Some(RequestKind::Txn(x)) => ResponseKind::Txn(txn(t, x)?),
            None => return Err(KvError::Invalid("empty request op".into())),
        };
        responses.push(ResponseOp { kind: Some(kind) });
    }
    Ok(TxnOutcome { succeeded, responses })
}

impl KvMachine {
    fn execute(&mut self, ctx: &mut ApplyContext<'_>, cmd: &Command) -> Result<Applied, KvError> {
        let op = cmd.op.as_ref().ok_or_else(|| KvError::Invalid("empty command".into()))?;
        if let Some(prefix) = &self.sealed {
            if !matches!(op, Op::Seal(_)) {
                return Err(KvError::NamespaceMoved { prefix: String::from_utf8_lossy(prefix).into_owned() });
            }
        }
        if !self.carved.is_empty() {
            carve::check_clear(&self.carved, &op_keys(op))?;
        }
        if let Op::Txn(t) = op {
            check_duplicates(&t.success)?;
            check_duplicates(&t.failure)?;
        }
        let mut w = WriteTxn::begin(ctx)?;
        let mut lock_events = Vec::new();
        // A carve (true) or uncarve (false) of a prefix that applied, and
        // the range a carve split off.
        let mut carved = None;
        let mut split_off = None;
        // The merge floors after an absorb.
        let mut floors = None;
        let kind = match op {
            Op::Put(p) => {
                if p.key.is_empty() {
                    return Err(KvError::EmptyKey);
                }
                OutcomeKind::Put(put(&mut w, p)?)
            }
            Op::DeleteRange(d) => OutcomeKind::Delete(delete(&mut w, d)?),
            Op::Txn(t) => OutcomeKind::Txn(txn(&mut w, t)?),
            Op::Range(r) => OutcomeKind::Range(range(w.reader(), r)?),
            Op::Compact(rev) => {
                w.compact(*rev)?;
                OutcomeKind::Done(true)
            }
            Op::LeaseGrant(g) => {
                if g.ttl_s <= 0 {
                    return Err(KvError::Invalid("lease TTL must be positive".into()));
                }
                let rec = w.grant_lease(g.id, g.ttl_s)?;
                OutcomeKind::Lease(LeaseOutcome { id: rec.id, ttl_s: rec.ttl_s, resets: rec.resets })
            }
            Op::LeaseRevoke(id) | Op::LeaseExpire(id) => {
                if Mvcc::lease(w.reader(), *id)?.is_none() {
                    return Err(KvError::LeaseNotFound { lease_id: *id });
                }
                let mut l = Locks::new(&mut w, cmd.wall_ms);
                l.end_session(*id, matches!(op, Op::LeaseExpire(_)))?;
                lock_events = l.events;
                w.revoke_lease(*id)?;
                OutcomeKind::Done(true)
            }
            Op::LockAcquire(a) => {
                let mut l = Locks::new(&mut w, cmd.wall_ms);
                let out = l.acquire(&a.name, a.session, a.waiter_id, a.try_only, a.lock_delay_ms, &a.value)?;
                lock_events = l.events;
                OutcomeKind::Lock(out)
            }
            Op::LockRelease(r) => {
                let mut l = Locks::new(&mut w, cmd.wall_ms);
                l.release(&r.name, r.session, r.token)?;
                lock_events = l.events;
                OutcomeKind::Done(true)
            }
            Op::LockCancel(c) => {
                let mut l = Locks::new(&mut w, cmd.wall_ms);
                OutcomeKind::Done(l.cancel(&c.name, c.session, c.waiter_id)?)
            }
            Op::LockDelayEnd(name) => {
                let mut l = Locks::new(&mut w, cmd.wall_ms);
                l.delay_end(name)?;
                lock_events = l.events;
                OutcomeKind::Done(true)
            }
            Op::Proclaim(p) => {
                let mut l = Locks::new(&mut w, cmd.wall_ms);
                let rec = l.proclaim(&p.name, p.session, p.token, &p.value)?;
                lock_events = l.events;
                OutcomeKind::Lock(LockOutcome { granted: true, token: p.token, ahead: 0, lock: Some(rec) })
            }
            Op::Carve(c) => {
                let out = carve::carve(&mut w, c)?;
                if !out.already {
                    carved = Some((c.prefix.clone(), true));
                    let record = carve::Carved {
                        prefix: c.prefix.clone(),
                        namespace_id: c.namespace_id,
                        range_id: c.range_id,
                        voters: out.voters.clone(),
                    };
                    split_off = record.descriptor();
                }
                OutcomeKind::Carve(out)
            }
            Op::Uncarve(u) => {
                if carve::uncarve(&mut w, u)? {
                    carved = Some((u.prefix.clone(), false));
                }
                OutcomeKind::Done(true)
            }
            Op::Seal(s) if s.merge => {
                let out = carve::seal_for_merge(&mut w, s, self.sealed.is_some())?;
                if self.sealed.is_none() {
                    self.sealed = Some(s.prefix.clone());
                    carved = Some((s.prefix.clone(), true));
                }
                OutcomeKind::Sealed(out)
            }
            Op::Seal(s) => {
                if self.sealed.is_none() {
                    carve::seal(&mut w, s)?;
                    self.sealed = Some(s.prefix.clone());
                    carved = Some((s.prefix.clone(), true));
                }
                OutcomeKind::Done(true)
            }
            Op::Absorb(a) => {
                let applied = carve::absorb(&mut w, a)?;
                if applied {
                    carved = Some((a.prefix.clone(), false));
                    floors = Some(carve::merge_floors(w.reader())?);
                }
                OutcomeKind::Done(applied)
            }
            Op::RaiseRevision(floor) => {
                w.raise_revision(*floor);
                OutcomeKind::Done(true)
            }
            Op::LeaseCheckpoint(c) => {
                let rec = w.checkpoint_lease(c.id, c.remaining_ttl_s, c.resets)?;
                OutcomeKind::Lease(LeaseOutcome { id: rec.id, ttl_s: rec.ttl_s, resets: rec.resets })
            }
        };
        let (revision, events, moved) = w.commit();
        Ok(Applied { revision, moved, kind, events, lock_events, carved, split_off, floors })
    }
}

struct Applied {
    revision: i64,
    /// The command took a revision (with or without events).
    moved: bool,
    kind: OutcomeKind,
    events: Vec<Event>,
    lock_events: Vec<LockEvent>,
    /// A carve (true) or uncarve (false) of this prefix.
    carved: Option<(Vec<u8>, bool)>,
    /// The range a carve split off.
    split_off: Option<meridian_storage::RangeDescriptor>,
    /// The merge floors, after an absorb.
    floors: Option<Vec<MergeFloor>>,
}

impl StateMachine for KvMachine {
    fn apply(&mut self, ctx: &mut ApplyContext<'_>, _index: u64, command: &[u8]) -> Vec<u8> {
        let range_id = ctx.range_id();
        let sp = ctx.savepoint();
        let result = Command::decode(command)
            .map_err(|e| KvError::Invalid(format!("undecodable command: {e}")))
            .and_then(|cmd| self.execute(ctx, &cmd));
        let outcome = match result {
            Ok(Applied { revision, moved, kind, events, lock_events, carved, split_off, floors }) => {
                if let Some(f) = floors {
                    self.floors = f;
                }
                if let Some((prefix, now_carved)) = carved {
                    self.carved.retain(|p| *p != prefix);
                    self.split_offs.retain(|d| d.start != prefix);
                    self.split_offs.extend(split_off);
                    if let Some(sink) = &self.sink {
                        if now_carved {
                            sink.namespace_carved(range_id, &prefix);
                        } else {
                            sink.namespace_returned(range_id, &prefix);
                        }
                    }
                    if now_carved {
                        self.carved.push(prefix);
                    }
                }
                if let Some(sink) = &self.sink {
                    if !events.is_empty() {
                        sink.publish(range_id, revision, &events);
                    } else if moved {
                        sink.revision_moved(range_id, revision);
                    }
                    if !lock_events.is_empty() {
                        sink.publish_locks(range_id, revision, &lock_events);
                    }
                }
                Outcome { revision, kind: Some(kind) }
            }
            Err(e) => {
                // A failed command changes nothing, on every replica alike.
                ctx.rollback(sp);
                let revision = Mvcc::meta(&*ctx).map(|m| m.revision).unwrap_or(0);
                Outcome { revision, kind: Some(OutcomeKind::Error(error_outcome(&e))) }
            }
        };
        outcome.encode_to_vec()
    }

    fn reload(&mut self, engine: &dyn Engine, namespace_id: u64) -> StorageResult<()> {
        let r = EngineRead { engine, namespace_id };
        let records =
            carve::carved(&r).map_err(|e| meridian_storage::StorageError::Corrupt { range_id: namespace_id, what: e.to_string() })?;
        let now: Vec<Vec<u8>> = records.iter().map(|c| c.prefix.clone()).collect();
        // Carves this machine did not apply itself (a snapshot brought
        // them, or the node started): the sink learns them as if applied.
        if let (Some(sink), true) = (&self.sink, self.range_id != 0) {
            for p in now.iter().filter(|p| !self.carved.contains(p)) {
                sink.namespace_carved(self.range_id, p);
            }
            for p in self.carved.iter().filter(|p| !now.contains(p)) {
                sink.namespace_returned(self.range_id, p);
            }
        }
        self.sealed = records.iter().find(|c| c.namespace_id == carve::SEALED).map(|c| c.prefix.clone());
        self.split_offs = records.iter().filter_map(carve::Carved::descriptor).collect();
        self.carved = now;
        self.floors =
            carve::merge_floors(&r).map_err(|e| meridian_storage::StorageError::Corrupt { range_id: namespace_id, what: e.to_string() })?;
        Ok(())
    }

    fn split_offs(&self) -> Vec<meridian_storage::RangeDescriptor> {
        self.split_offs.clone()
    }

    fn read(&self, engine: &dyn Engine, namespace_id: u64, query: &[u8]) -> Vec<u8> {
        if !self.carved.is_empty() || !self.floors.is_empty() {
            if let Ok(Query { kind: Some(q) }) = Query::decode(query) {
                let refused = carve::check_clear(&self.carved, &query_keys(&q)).and_then(|()| match &q {
                    QueryKind::Range(op) => carve::check_floors(&self.floors, &op.key, &op.range_end, op.revision),
                    _ => Ok(()),
                });
                if let Err(e) = refused {
                    return QueryAnswer { error: Some(error_outcome(&e)), ..Default::default() }.encode_to_vec();
                }
            }
        }
        let r = EngineRead { engine, namespace_id };
        answer(&r, query).encode_to_vec()
    }

    fn removed(&mut self, range_id: u64) {
        if let Some(sink) = &self.sink {
            sink.range_removed(range_id);
        }
    }
}

/// Answers a [`Query`] from applied data.
pub fn answer(r: &dyn DataRead, query: &[u8]) -> QueryAnswer {
    let run = || -> Result<QueryAnswer, KvError> {
        let q = Query::decode(query).map_err(|e| KvError::Invalid(format!("undecodable query: {e}")))?;
        let revision = Mvcc::meta(r)?.revision;
        let mut a = QueryAnswer { revision, ..Default::default() };
        match q.kind {
            Some(QueryKind::Range(op)) => a.range = Some(range(r, &op)?),
            Some(QueryKind::LeaseInfo(id)) => {
                a.lease = Some(match Mvcc::lease(r, id)? {
                    Some(l) => LeaseInfo {
                        id,
                        ttl_s: l.ttl_s,
                        remaining_ttl_s: if l.remaining_ttl_s > 0 { l.remaining_ttl_s } else { l.ttl_s },
                        keys: Mvcc::lease_keys(r, id)?,
                        found: true,
                        checkpointed: l.remaining_ttl_s > 0,
                        resets: l.resets,
                    },
                    None => LeaseInfo { id, ttl_s: -1, remaining_ttl_s: -1, found: false, ..Default::default() },
                })
            }
            Some(QueryKind::Leases(_)) => a.lease_ids = Mvcc::leases(r)?.iter().map(|l| l.id).collect(),
            Some(QueryKind::Events(e)) => {
                let limit = (e.limit as usize).clamp(1, MAX_EVENTS_PER_QUERY);
                a.events = Mvcc::events_from(r, e.from_revision, e.from_sub, limit)?
                    .into_iter()
                    .map(|(revision, sub, event)| RevEvent { revision, event: Some(event), sub })
                    .collect();
            }
            Some(QueryKind::HashKv(op)) => a.hash = Some(Mvcc::hash_kv(r, op.revision)?),
            Some(QueryKind::LockDescribe(name)) => {
                locks::validate_name(&name)?;
                a.lock = Some(locks::describe(r, &name)?.unwrap_or_default());
            }
            Some(QueryKind::Locks(op)) => a.locks = locks::list(r, &op.from_name, (op.limit as usize).clamp(1, MAX_LOCKS_PER_QUERY))?,
            Some(QueryKind::DelayedLocks(_)) => a.locks = locks::delayed(r, MAX_LOCKS_PER_QUERY)?,
            Some(QueryKind::MergeFloors(_)) => a.merge_floors = carve::merge_floors(r)?,
            None => return Err(KvError::Invalid("empty query".into())),
        }
        Ok(a)
    };
    run().unwrap_or_else(|e| QueryAnswer { error: Some(error_outcome(&e)), ..Default::default() })
}
