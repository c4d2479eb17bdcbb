//! Native locks: one FIFO queue per lock name, kept beside the keys of the
//! range and changed only by replicated commands, so every replica agrees
//! on who holds what.
//!
//! - **Acquire is one command.** A free lock is granted at once; otherwise
//!   the session joins the tail of the queue. When the holder leaves, the
//!   head waiter is granted in the same command, and exactly that waiter is
//!   named in the [`LockEvent`] (no thundering herd).
//! - **Fencing token** = the revision at which the lock was granted. The
//!   namespace's revision only grows (through restarts, leader changes and
//!   snapshots, since it is replicated state), so tokens strictly increase
//!   per name — and across names.
//! - **Sessions are leases.** A grant re-checks that the waiter's lease
//!   still exists; revoking or expiring a lease removes its holds and waits
//!   in the same command that deletes the lease.
//! - **Lock-delay** (Chubby): when a holder's lease *expires*, the lock is
//!   not granted again until the leader, timing on its own monotonic clock,
//!   proposes [`Op::LockDelayEnd`](crate::command::Op::LockDelayEnd). A
//!   clean release or revoke grants the next waiter at once.
//!
//! ```text
//!   q ‖ esc(name)        LockRecord: holder, FIFO waiters, delay
//!   s ‖ session ‖ name   the session holds or waits for `name`
//!   d ‖ name             `name` is under lock-delay
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::error::KvError;
use crate::keys;
use crate::mvcc::{Mvcc, WriteTxn};
use crate::read::DataRead;

/// Longest lock name, in bytes.
pub const MAX_LOCK_NAME: usize = 4096;
/// Largest value published with a lock (an election's value).
pub const MAX_LOCK_VALUE: usize = 1 << 20;
/// Most waiters queued on one lock; more are refused, not queued.
pub const MAX_WAITERS: usize = 10_000;
/// Longest lock-delay a holder may ask for (Chubby's bound).
pub const MAX_LOCK_DELAY_MS: i64 = 60_000;

/// The current holder of a lock.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Holder {
    /// The holding session (a lease of the range).
    #[prost(int64, tag = "1")]
    pub session: i64,
    /// Fencing token: the revision of the grant.
    #[prost(int64, tag = "2")]
    pub token: i64,
    /// Proposer's wall clock at the grant (information only).
    #[prost(int64, tag = "3")]
    pub since_wall_ms: i64,
    /// The value the holder publishes (an election leader's).
    #[prost(bytes = "vec", tag = "4")]
    pub value: Vec<u8>,
    /// The acquire that was granted (a retried acquire renames it).
    #[prost(uint64, tag = "5")]
    pub waiter_id: u64,
    /// Lock-delay, in ms, put on the lock if the holder's session expires
    /// while it holds.
    #[prost(int64, tag = "6")]
    pub lock_delay_ms: i64,
}

/// A queued acquire.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct Waiter {
    /// The waiting session (a lease of the range).
    #[prost(int64, tag = "1")]
    pub session: i64,
    /// Names the acquire, so the server wakes exactly that request.
    #[prost(uint64, tag = "2")]
    pub waiter_id: u64,
    /// The value published if granted.
    #[prost(bytes = "vec", tag = "3")]
    pub value: Vec<u8>,
    /// Lock-delay, in ms, applied once granted (see [`Holder::lock_delay_ms`]).
    #[prost(int64, tag = "4")]
    pub lock_delay_ms: i64,
    /// Proposer's wall clock when queued, Unix ms (information only).
    #[prost(int64, tag = "5")]
    pub since_wall_ms: i64,
}

/// A lock's replicated state.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct LockRecord {
    /// The holder; `None` while the lock is free or under lock-delay.
    #[prost(message, optional, tag = "1")]
    pub holder: Option<Holder>,
    /// Queued acquires, in FIFO order (head first); at most [`MAX_WAITERS`].
    #[prost(message, repeated, tag = "2")]
    pub waiters: Vec<Waiter>,
    /// Lock-delay in force (the last holder's session expired); the value
    /// is the delay the leader waits before granting again.
    #[prost(int64, tag = "3")]
    pub delay_ms: i64,
}

impl LockRecord {
    fn is_idle(&self) -> bool {
        self.holder.is_none() && self.waiters.is_empty() && self.delay_ms == 0
    }
}

/// A lock and its name, as listings return it.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct NamedLock {
    /// The lock's name.
    #[prost(bytes = "vec", tag = "1")]
    pub name: Vec<u8>,
    /// The lock's state.
    #[prost(message, optional, tag = "2")]
    pub lock: Option<LockRecord>,
}

/// What changed on one lock in one command, published on every replica so
/// the node serving a blocked acquire (or an election observer) hears it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockEvent {
    /// The lock's name.
    pub name: Vec<u8>,
    /// The holder after the command.
    pub holder: Option<Holder>,
    /// The waiter this command granted (0: none) — exactly one is woken.
    pub granted_waiter: u64,
    /// Waiters removed without a grant (their session ended).
    pub dropped_waiters: Vec<u64>,
}

/// Checks a lock name: not empty, at most [`MAX_LOCK_NAME`] bytes.
pub fn validate_name(name: &[u8]) -> Result<(), KvError> {
    if name.is_empty() {
        return Err(KvError::Invalid("lock name is empty".into()));
    }
    if name.len() > MAX_LOCK_NAME {
        return Err(KvError::Invalid(format!("lock name is longer than {MAX_LOCK_NAME} bytes")));
    }
    Ok(())
}

fn decode_record(raw: &[u8]) -> Result<LockRecord, KvError> {
    prost::Message::decode(raw).map_err(|e| KvError::Storage(format!("corrupt lock record: {e}")))
}

/// The record of lock `name`; `None` if it is idle (idle locks are not
/// stored).
pub fn describe(r: &dyn DataRead, name: &[u8]) -> Result<Option<LockRecord>, KvError> {
    r.get(&keys::lock_key(name))?.map(|raw| decode_record(&raw)).transpose()
}

/// Locks with names ≥ `from`, in order, at most `limit`.
pub fn list(r: &dyn DataRead, from: &[u8], limit: usize) -> Result<Vec<NamedLock>, KvError> {
    let mut out = Vec::new();
    let mut err = None;
    r.scan(&keys::lock_key(from), &[keys::LOCK + 1], &mut |k, v| {
        match (keys::parse_lock_key(k), decode_record(v)) {
            (Some(name), Ok(lock)) => out.push(NamedLock { name, lock: Some(lock) }),
            (None, _) => err = Some(KvError::Storage("corrupt lock key".into())),
            (_, Err(e)) => err = Some(e),
        }
        err.is_none() && out.len() < limit
    })?;
    err.map_or(Ok(out), Err)
}

/// Locks under lock-delay, with their delay.
pub fn delayed(r: &dyn DataRead, limit: usize) -> Result<Vec<NamedLock>, KvError> {
    let mut names = Vec::new();
    r.scan(&[keys::DELAYED_LOCK], &[keys::DELAYED_LOCK + 1], &mut |k, _| {
        names.push(k[1..].to_vec());
        names.len() < limit
    })?;
    names.into_iter().map(|name| Ok(NamedLock { lock: describe(r, &name)?, name })).collect()
}

/// Applies lock commands inside one [`WriteTxn`]; collects the events.
pub struct Locks<'t, 'c, 'a> {
    txn: &'t mut WriteTxn<'c, 'a>,
    wall_ms: i64,
    /// The lock changes of the commands applied so far, in order.
    pub events: Vec<LockEvent>,
}

impl<'t, 'c, 'a> Locks<'t, 'c, 'a> {
    /// Lock commands in `txn`; `wall_ms` is the proposer's wall clock (Unix
    /// ms), recorded as information only.
    pub fn new(txn: &'t mut WriteTxn<'c, 'a>, wall_ms: i64) -> Self {
        Locks { txn, wall_ms, events: Vec::new() }
    }

    fn load(&self, name: &[u8]) -> Result<LockRecord, KvError> {
        Ok(describe(self.txn.reader(), name)?.unwrap_or_default())
    }

    /// Stores the record. The index of delayed locks is kept by the only
    /// two changes of `delay_ms` ([`Self::set_delay`]), so a grant or a
    /// release writes no needless tombstone there.
    fn store(&mut self, name: &[u8], rec: &LockRecord) {
        let key = keys::lock_key(name);
        if rec.is_idle() {
            // Idle locks leave nothing behind: names are not a leak.
            self.txn.ctx().delete(&key);
        } else {
            self.txn.ctx().put(&key, &prost::Message::encode_to_vec(rec));
        }
    }

    /// Puts the lock under its lock-delay (`delay_ms` > 0) or ends it (0),
    /// with the index the keeper scans for delays to end.
    fn set_delay(&mut self, name: &[u8], rec: &mut LockRecord, delay_ms: i64) {
        rec.delay_ms = delay_ms;
        if delay_ms > 0 {
            self.txn.ctx().put(&keys::delayed_lock_key(name), &delay_ms.to_be_bytes());
        } else {
            self.txn.ctx().delete(&keys::delayed_lock_key(name));
        }
    }

    fn session_alive(&self, session: i64) -> Result<bool, KvError> {
        Ok(Mvcc::lease(self.txn.reader(), session)?.is_some())
    }

    /// Grants the lock to the first waiter whose session is alive, unless
    /// it is held or under lock-delay. Returns the granted waiter id.
    fn grant_next(&mut self, name: &[u8], rec: &mut LockRecord, dropped: &mut Vec<u64>) -> Result<u64, KvError> {
        if rec.holder.is_some() || rec.delay_ms > 0 {
            return Ok(0);
        }
        while !rec.waiters.is_empty() {
            let w = rec.waiters.remove(0);
            if !self.session_alive(w.session)? {
                // Cannot happen while revoke removes a session's waits in
                // the same command; checked anyway, as the contract says.
                self.txn.ctx().delete(&keys::session_lock_key(w.session, name));
                dropped.push(w.waiter_id);
                continue;
            }
            let token = self.txn.bump();
            rec.holder = Some(Holder {
                session: w.session,
                token,
                since_wall_ms: self.wall_ms,
                value: w.value,
                waiter_id: w.waiter_id,
                lock_delay_ms: w.lock_delay_ms,
            });
            return Ok(w.waiter_id);
        }
        Ok(0)
    }

    fn emit(&mut self, name: &[u8], rec: &LockRecord, granted_waiter: u64, dropped_waiters: Vec<u64>) {
        self.events.push(LockEvent { name: name.to_vec(), holder: rec.holder.clone(), granted_waiter, dropped_waiters });
    }

    /// Acquires lock `name` for `session`: granted at once if free (no holder,
    /// no lock-delay, no waiters), else queued at the tail, unless `try_only`
    /// (then only the outcome). An acquire by a session that already holds or
    /// waits is idempotent: it renames the request `waiter_id`. Errors: bad
    /// name, value or lock-delay, unknown session, [`MAX_WAITERS`] reached.
    pub fn acquire(
        &mut self,
        name: &[u8],
        session: i64,
        waiter_id: u64,
        try_only: bool,
        lock_delay_ms: i64,
        value: &[u8],
    ) -> Result<crate::command::LockOutcome, KvError> {
        validate_name(name)?;
        if value.len() > MAX_LOCK_VALUE {
            return Err(KvError::Invalid(format!("lock value is larger than {MAX_LOCK_VALUE} bytes")));
        }
        if !(0..=MAX_LOCK_DELAY_MS).contains(&lock_delay_ms) {
            return Err(KvError::Invalid(format!("lock-delay must be between 0 and {MAX_LOCK_DELAY_MS} ms")));
        }
        if !self.session_alive(session)? {
            return Err(KvError::SessionNotFound { session });
        }
        let mut rec = self.load(name)?;
        let outcome = |rec: &LockRecord, granted: bool, ahead: u64| crate::command::LockOutcome {
            granted,
            token: if granted { rec.holder.as_ref().map_or(0, |h| h.token) } else { 0 },
            ahead,
            lock: Some(rec.clone()),
        };
        // A retried acquire of the same session is idempotent.
        if let Some(h) = rec.holder.as_mut().filter(|h| h.session == session) {
            h.waiter_id = waiter_id;
            self.store(name, &rec);
            return Ok(outcome(&rec, true, 0));
        }
        if let Some(pos) = rec.waiters.iter().position(|w| w.session == session) {
            if try_only {
                return Ok(outcome(&rec, false, pos as u64));
            }
            rec.waiters[pos].waiter_id = waiter_id;
            self.store(name, &rec);
            return Ok(outcome(&rec, false, pos as u64));
        }
        let free = rec.holder.is_none() && rec.delay_ms == 0 && rec.waiters.is_empty();
        if try_only && !free {
            return Ok(outcome(&rec, false, 0));
        }
        if rec.waiters.len() >= MAX_WAITERS {
            return Err(KvError::TooManyWaiters { name: String::from_utf8_lossy(name).into_owned(), limit: MAX_WAITERS });
        }
        rec.waiters.push(Waiter { session, waiter_id, value: value.to_vec(), lock_delay_ms, since_wall_ms: self.wall_ms });
        self.txn.ctx().put(&keys::session_lock_key(session, name), b"");
        let mut dropped = Vec::new();
        let granted = self.grant_next(name, &mut rec, &mut dropped)?;
        self.store(name, &rec);
        if granted != 0 || !dropped.is_empty() {
            self.emit(name, &rec, granted, dropped);
        }
        let ahead = rec.waiters.len().saturating_sub(1) as u64;
        Ok(if granted == waiter_id { outcome(&rec, true, 0) } else { outcome(&rec, false, ahead) })
    }

    /// Releases a lock held by `session` (with `token`, unless 0) and
    /// grants the next waiter. Not holding it is an error that changes
    /// nothing — also a second release.
    pub fn release(&mut self, name: &[u8], session: i64, token: i64) -> Result<(), KvError> {
        validate_name(name)?;
        let mut rec = self.load(name)?;
        match &rec.holder {
            Some(h) if h.session == session && (token == 0 || token == h.token) => {}
            _ => return Err(KvError::LockNotHeld { name: String::from_utf8_lossy(name).into_owned() }),
        }
        rec.holder = None;
        self.txn.ctx().delete(&keys::session_lock_key(session, name));
        self.holder_left(name, rec, Vec::new())
    }

    /// The holder is gone (released, revoked or expired): grant the next
    /// waiter unless under lock-delay, store and announce the change.
    /// `dropped` lists waiters already removed without a grant.
    fn holder_left(&mut self, name: &[u8], mut rec: LockRecord, mut dropped: Vec<u64>) -> Result<(), KvError> {
        let granted = self.grant_next(name, &mut rec, &mut dropped)?;
        if granted == 0 {
            // The holder changed (to nobody): its own revision, so watchers
            // of elections see an ordered change.
            self.txn.bump();
        }
        self.store(name, &rec);
        self.emit(name, &rec, granted, dropped);
        Ok(())
    }

    /// Removes a waiter whose deadline passed. A waiter that was granted
    /// in the meantime is not touched (the caller must release it).
    pub fn cancel(&mut self, name: &[u8], session: i64, waiter_id: u64) -> Result<bool, KvError> {
        validate_name(name)?;
        let mut rec = self.load(name)?;
        let Some(pos) = rec.waiters.iter().position(|w| w.session == session && w.waiter_id == waiter_id) else {
            return Ok(false);
        };
        rec.waiters.remove(pos);
        self.txn.ctx().delete(&keys::session_lock_key(session, name));
        self.store(name, &rec);
        Ok(true)
    }

    /// A session ended: drop its holds and waits. `expired` puts the locks
    /// it held under their lock-delay.
    pub fn end_session(&mut self, session: i64, expired: bool) -> Result<(), KvError> {
        let (s, e) = keys::session_lock_prefix(session);
        let mut names = Vec::new();
        self.txn.reader().scan(&s, &e, &mut |k, _| {
            names.push(k[s.len()..].to_vec());
            true
        })?;
        for name in names {
            self.txn.ctx().delete(&keys::session_lock_key(session, &name));
            let mut rec = self.load(&name)?;
            let dropped: Vec<u64> = rec.waiters.iter().filter(|w| w.session == session).map(|w| w.waiter_id).collect();
            rec.waiters.retain(|w| w.session != session);
            let was_holder = rec.holder.as_ref().is_some_and(|h| h.session == session);
            if was_holder {
                let h = rec.holder.take().expect("checked");
                if expired && h.lock_delay_ms > 0 {
                    self.set_delay(&name, &mut rec, h.lock_delay_ms);
                }
                self.holder_left(&name, rec, dropped)?;
            } else {
                self.store(&name, &rec);
                if !dropped.is_empty() {
                    self.emit(&name, &rec, 0, dropped);
                }
            }
        }
        Ok(())
    }

    /// Lock-delay over: grant the head waiter. A lock not under delay is
    /// left alone (the command may be proposed twice).
    pub fn delay_end(&mut self, name: &[u8]) -> Result<(), KvError> {
        validate_name(name)?;
        let mut rec = self.load(name)?;
        if rec.delay_ms == 0 {
            return Ok(());
        }
        self.set_delay(name, &mut rec, 0);
        let mut dropped = Vec::new();
        let granted = self.grant_next(name, &mut rec, &mut dropped)?;
        self.store(name, &rec);
        if granted != 0 || !dropped.is_empty() {
            self.emit(name, &rec, granted, dropped);
        }
        Ok(())
    }

    /// An election leader publishes a new value; only the current holder
    /// with its current token may.
    pub fn proclaim(&mut self, name: &[u8], session: i64, token: i64, value: &[u8]) -> Result<LockRecord, KvError> {
        validate_name(name)?;
        if value.len() > MAX_LOCK_VALUE {
            return Err(KvError::Invalid(format!("lock value is larger than {MAX_LOCK_VALUE} bytes")));
        }
        let mut rec = self.load(name)?;
        match rec.holder.as_mut() {
            Some(h) if h.session == session && h.token == token => h.value = value.to_vec(),
            _ => return Err(KvError::LockNotHeld { name: String::from_utf8_lossy(name).into_owned() }),
        }
        self.txn.bump();
        self.store(name, &rec);
        self.emit(name, &rec, 0, Vec::new());
        Ok(rec)
    }
}

/// The token of the lock's current holder, 0 when free (guarded compares).
pub fn holder_token(r: &dyn DataRead, name: &[u8]) -> Result<i64, KvError> {
    Ok(describe(r, name)?.and_then(|l| l.holder).map_or(0, |h| h.token))
}

/// Cycles in the wait-for graph between sessions: a waiter on a lock waits
/// for that lock's holder. Each cycle is listed once, from its smallest
/// session id.
pub fn wait_for_cycles(locks: &[NamedLock]) -> Vec<Vec<i64>> {
    let mut edges: BTreeMap<i64, BTreeSet<i64>> = BTreeMap::new();
    for l in locks {
        let Some(rec) = &l.lock else { continue };
        let Some(h) = &rec.holder else { continue };
        for w in &rec.waiters {
            if w.session != h.session {
                edges.entry(w.session).or_default().insert(h.session);
            }
        }
    }
    let mut cycles = BTreeSet::new();
    // Iterative DFS from every node; a back edge to a node on the path
    // closes a cycle. The step budget bounds the work on dense graphs.
    let mut budget: u32 = 1_000_000;
    for &start in edges.keys() {
        let mut path = vec![start];
        let mut iters = vec![edges.get(&start).into_iter().flatten().copied().collect::<Vec<_>>()];
        while let Some(next) = iters.last_mut().and_then(|it| it.pop()) {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return cycles.into_iter().collect();
            }
            if let Some(pos) = path.iter().position(|&n| n == next) {
                let mut cycle = path[pos..].to_vec();
                let min = cycle.iter().enumerate().min_by_key(|(_, s)| **s).map(|(i, _)| i).unwrap_or(0);
                cycle.rotate_left(min);
                cycles.insert(cycle);
            } else if next > start {
                // Only walk nodes above the start, so each cycle is found
                // from its smallest member and the search stays bounded.
                path.push(next);
                iters.push(edges.get(&next).into_iter().flatten().copied().collect());
            }
            while iters.last().is_some_and(|it| it.is_empty()) {
                iters.pop();
                path.pop();
            }
        }
    }
    cycles.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(name: &str, holder: i64, waiters: &[i64]) -> NamedLock {
        NamedLock {
            name: name.into(),
            lock: Some(LockRecord {
                holder: Some(Holder { session: holder, token: 1, ..Default::default() }),
                waiters: waiters.iter().map(|&s| Waiter { session: s, ..Default::default() }).collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn wait_for_cycles_found_once() {
        assert!(wait_for_cycles(&[lock("a", 1, &[2]), lock("b", 2, &[3])]).is_empty());
        assert_eq!(wait_for_cycles(&[lock("a", 1, &[2]), lock("b", 2, &[1])]), vec![vec![1, 2]]);
        let three = [lock("a", 3, &[1]), lock("b", 1, &[2]), lock("c", 2, &[3]), lock("d", 9, &[8])];
        assert_eq!(wait_for_cycles(&three), vec![vec![1, 3, 2]]);
    }
}
