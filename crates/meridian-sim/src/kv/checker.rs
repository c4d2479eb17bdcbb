//! Invariants of the KV simulation, checked on every entry every replica
//! applies and on every replica's lock table:
//!
//! - **one holder**: a lock has at most one holder in any replica's state;
//!   the holder's session is alive; a holder is replaced only by a command
//!   that ends its hold (its release, or the end of its session); a lock
//!   under lock-delay is granted only by the delay's end;
//! - **fencing tokens**: every grant's token is its revision, and tokens
//!   strictly increase per lock name in log order, the same grant having
//!   the same token on every replica, through leader changes and restarts;
//! - **lease expiry**: a lease is never expired before its TTL has passed
//!   since the send time of any keepalive (or grant) a client had
//!   acknowledged — whether the answer came before the expiry or after;
//! - **lock-delay**: a lock whose holder's session expired is granted again
//!   only once its lock-delay has passed;
//! - **event streams**: every replica publishes, for each entry, the same
//!   (revision, events) and lock events, and in order (revisions never go
//!   back within one start of a store), so every replica's stream is a
//!   prefix of the range's.
//!
//! Pure: fed by the run (or by a test's hand-made history), time in ms.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use meridian_kv::command::{Op, Outcome};
use meridian_kv::locks::{Holder, LockRecord, NamedLock};

use super::recorder::{AppliedKv, LockDelta, Published};

/// Violations kept per run; past this the run is broken enough.
const MAX_VIOLATIONS: usize = 100;

/// What the checks saw, for the run's report.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KvStats {
    /// Entries applied, counting every replica's apply.
    pub applies: u64,
    /// Publications (event batches and lock-event batches) of an entry
    /// compared with the same entry's on another replica.
    pub publications_compared: u64,
    /// Key events among them.
    pub events_compared: u64,
    /// Lock grants (distinct; each has a fencing token).
    pub grants: u64,
    /// Acknowledged lease grants and keepalives (promises checked).
    pub promises: u64,
    pub lease_expiries: u64,
    pub lock_delays: u64,
    pub lock_delay_ends: u64,
    /// Lock tables read from replicas (through the query API).
    pub tables_checked: u64,
}

/// The first replica's apply of an entry: what every other must match.
struct Canon {
    node: u64,
    outcome: Option<Outcome>,
    published: Vec<Published>,
}

/// A lock name's grants by log index: (fencing token, session).
type Grants = BTreeMap<u64, (i64, i64)>;

/// What clients were told about a lease.
#[derive(Debug, Clone, Copy)]
struct Promise {
    ttl_s: i64,
    /// Send time of the latest acknowledged grant or keepalive.
    sent_ms: u64,
}

#[derive(Default)]
pub struct KvChecker {
    violations: Vec<String>,
    pub stats: KvStats,
    /// (range, index) → the entry as first applied.
    entries: HashMap<(u64, u64), Canon>,
    /// (node, incarnation, range) → last applied index and the highest
    /// revision it published.
    order: HashMap<(u64, u64, u64), (u64, i64)>,
    /// (range, lock name) → grants by log index: (token, session).
    grants: HashMap<(u64, Vec<u8>), Grants>,
    /// lease id → what clients were told.
    promises: HashMap<i64, Promise>,
    /// lease id → when its expiry was first applied.
    expired_at: HashMap<i64, u64>,
    /// (range, lock name) → lock-delay in force: (first apply ms, delay ms).
    delays: HashMap<(u64, Vec<u8>), (u64, i64)>,
}

fn same_holder(a: &Option<Holder>, b: &Option<Holder>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.session == b.session && a.token == b.token,
        (None, None) => true,
        _ => false,
    }
}

fn record_of<'a>(table: &'a [NamedLock], name: &[u8]) -> Option<&'a LockRecord> {
    table.iter().find(|l| l.name == name).and_then(|l| l.lock.as_ref())
}

fn show(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

impl KvChecker {
    fn fail(&mut self, v: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(v);
        }
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }

    /// A violation the run found itself (liveness, convergence).
    pub fn fail_external(&mut self, v: String) {
        self.fail(v);
    }

    /// One entry as one replica applied it, at `now_ms` on the simulated
    /// clock. True if this is the entry's first apply on any replica.
    pub fn observe_applied(&mut self, now_ms: u64, a: &AppliedKv) -> bool {
        self.stats.applies += 1;
        self.check_order(now_ms, a);
        let first = self.check_same_stream(now_ms, a);
        if let Some(delta) = &a.locks {
            match delta {
                Ok(d) => self.check_lock_delta(now_ms, a, d, first),
                Err(e) => {
                    self.fail(format!("{now_ms} ms: node {} range {} index {}: lock table unreadable: {e}", a.node, a.range_id, a.index))
                }
            }
        }
        self.check_grants(now_ms, a, first);
        if first && a.succeeded() {
            match a.op() {
                Some(Op::LeaseExpire(id)) => self.lease_expired(now_ms, *id),
                // A client revoked it: nothing more was promised.
                Some(Op::LeaseRevoke(id)) => {
                    self.promises.remove(id);
                }
                _ => {}
            }
        }
        first
    }

    /// Within one start of a store, a range's entries are applied in log
    /// order and their publications never go back in revision; key events
    /// always move it forward.
    fn check_order(&mut self, now_ms: u64, a: &AppliedKv) {
        let key = (a.node, a.incarnation, a.range_id);
        let (last_index, mut last_rev) = self.order.get(&key).copied().unwrap_or((0, 0));
        if a.index <= last_index {
            self.fail(format!("{now_ms} ms: node {} range {}: applied index {} after {last_index}", a.node, a.range_id, a.index));
        }
        let entry_start = last_rev;
        for p in &a.published {
            let (rev, events) = match p {
                Published::Events { revision, .. } => (*revision, true),
                Published::Locks { revision, .. } => (*revision, false),
            };
            if rev < last_rev || (events && rev <= entry_start) {
                self.fail(format!(
                    "{now_ms} ms: event stream of node {} range {} went back: revision {rev} at index {} after revision {last_rev}",
                    a.node, a.range_id, a.index
                ));
            }
            last_rev = last_rev.max(rev);
        }
        self.order.insert(key, (a.index, last_rev));
    }

    /// Every replica publishes the same for the same entry, and answers the
    /// same but for the reads inside a transaction (a replica nobody waits
    /// on skips them). True if this is
    /// the entry's first apply anywhere.
    fn check_same_stream(&mut self, now_ms: u64, a: &AppliedKv) -> bool {
        let Some(c) = self.entries.get(&(a.range_id, a.index)) else {
            self.entries.insert((a.range_id, a.index), Canon { node: a.node, outcome: a.outcome.clone(), published: a.published.clone() });
            return true;
        };
        if c.published != a.published {
            let v = format!(
                "{now_ms} ms: event streams differ: range {} index {}: node {} published {:?}, node {} published {:?}",
                a.range_id, a.index, c.node, c.published, a.node, a.published
            );
            self.fail(v);
        } else if without_reads(&c.outcome) != without_reads(&a.outcome) {
            let v = format!(
                "{now_ms} ms: range {} index {}: node {} answered {:?}, node {} answered {:?}",
                a.range_id, a.index, c.node, c.outcome, a.node, a.outcome
            );
            self.fail(v);
        } else {
            self.stats.publications_compared += a.published.len() as u64;
            self.stats.events_compared += a
                .published
                .iter()
                .map(|p| match p {
                    Published::Events { events, .. } => events.len() as u64,
                    Published::Locks { .. } => 0,
                })
                .sum::<u64>();
        }
        false
    }

    /// At most one holder, alive; holders change only when the holder
    /// leaves; lock-delay is begun only by an expiry and ended only by
    /// `LockDelayEnd`, and lasts at least as asked.
    fn check_lock_delta(&mut self, now_ms: u64, a: &AppliedKv, d: &LockDelta, first: bool) {
        let at = format!("{now_ms} ms: node {} range {} index {}", a.node, a.range_id, a.index);
        self.check_table(&at, &d.after, &d.live_sessions);
        let op = a.op();
        let ends_session = |s: i64| matches!(op, Some(Op::LeaseRevoke(id) | Op::LeaseExpire(id)) if *id == s);
        let mut names: BTreeSet<&[u8]> = d.before.iter().map(|l| l.name.as_slice()).collect();
        names.extend(d.after.iter().map(|l| l.name.as_slice()));
        let empty = LockRecord::default();
        for name in names {
            let before = record_of(&d.before, name).unwrap_or(&empty);
            let after = record_of(&d.after, name).unwrap_or(&empty);
            if !same_holder(&before.holder, &after.holder) {
                if let Some(h) = &before.holder {
                    let released = matches!(op, Some(Op::LockRelease(r)) if r.name == name && r.session == h.session);
                    if !released && !ends_session(h.session) {
                        self.fail(format!(
                            "{at}: lock {} taken from its holder (session {}, token {}) by {op:?}: two holders",
                            show(name),
                            h.session,
                            h.token
                        ));
                    }
                }
                if let Some(h) = &after.holder {
                    if before.delay_ms > 0 && !matches!(op, Some(Op::LockDelayEnd(n)) if n == name) {
                        self.fail(format!("{at}: lock {} granted under lock-delay by {op:?}", show(name)));
                    }
                    if h.token != a.revision() {
                        self.fail(format!("{at}: lock {} granted with token {} at revision {}", show(name), h.token, a.revision()));
                    }
                    if first {
                        if let Some((since_ms, delay_ms)) = self.delays.get(&(a.range_id, name.to_vec())).copied() {
                            if now_ms < since_ms + delay_ms as u64 {
                                self.fail(format!(
                                    "{at}: lock {} granted {} ms after its holder's session expired, lock-delay is {delay_ms} ms",
                                    show(name),
                                    now_ms - since_ms
                                ));
                            }
                        }
                    }
                }
            }
            if before.delay_ms == 0 && after.delay_ms > 0 {
                let expired = matches!((op, &before.holder), (Some(Op::LeaseExpire(id)), Some(h)) if *id == h.session && h.lock_delay_ms == after.delay_ms);
                if !expired {
                    self.fail(format!("{at}: lock {} put under lock-delay {} ms by {op:?}", show(name), after.delay_ms));
                }
                if first {
                    self.stats.lock_delays += 1;
                    self.delays.insert((a.range_id, name.to_vec()), (now_ms, after.delay_ms));
                }
            }
            if before.delay_ms > 0 && after.delay_ms == 0 {
                if !matches!(op, Some(Op::LockDelayEnd(n)) if n == name) {
                    self.fail(format!("{at}: lock-delay of {} ended by {op:?}", show(name)));
                }
                if first {
                    self.stats.lock_delay_ends += 1;
                    self.delays.remove(&(a.range_id, name.to_vec()));
                }
            }
        }
    }

    /// A replica's lock table: one record per name, at most one holder
    /// each, never also waiting, every holder's and waiter's session alive.
    fn check_table(&mut self, at: &str, table: &[NamedLock], live: &BTreeSet<i64>) {
        let mut seen: BTreeMap<&[u8], i64> = BTreeMap::new();
        for l in table {
            let Some(rec) = &l.lock else { continue };
            if let Some(h) = &rec.holder {
                if let Some(other) = seen.insert(&l.name, h.session) {
                    self.fail(format!("{at}: lock {} has two holders: sessions {other} and {}", show(&l.name), h.session));
                }
                if rec.waiters.iter().any(|w| w.session == h.session) {
                    self.fail(format!("{at}: lock {} holder session {} also waits for it", show(&l.name), h.session));
                }
                if !live.contains(&h.session) {
                    self.fail(format!("{at}: lock {} held by session {} whose lease is gone", show(&l.name), h.session));
                }
            }
            if let Some(w) = rec.waiters.iter().find(|w| !live.contains(&w.session)) {
                self.fail(format!("{at}: lock {} has a waiter of session {} whose lease is gone", show(&l.name), w.session));
            }
        }
    }

    /// A replica's lock table as its `KvMachine` answers `Locks`, with the
    /// range's live leases and its session index (session, lock name): the
    /// table check, and every hold or wait indexed under its session.
    pub fn observe_lock_table(
        &mut self,
        now_ms: u64,
        node: u64,
        range_id: u64,
        table: &[NamedLock],
        leases: &BTreeSet<i64>,
        session_index: &BTreeSet<(i64, Vec<u8>)>,
    ) {
        self.stats.tables_checked += 1;
        let at = format!("{now_ms} ms: node {node} range {range_id}");
        self.check_table(&at, table, leases);
        let mut named = BTreeSet::new();
        for l in table {
            let Some(rec) = &l.lock else { continue };
            named.extend(rec.holder.iter().map(|h| (h.session, l.name.clone())));
            named.extend(rec.waiters.iter().map(|w| (w.session, l.name.clone())));
        }
        if let Some((s, name)) = named.symmetric_difference(session_index).next() {
            let v = format!("{at}: session index and lock table disagree on session {s} and lock {}", show(name));
            self.fail(v);
        }
    }

    /// Fencing tokens: strictly increasing per name in log order, the same
    /// on every replica for the same grant.
    fn check_grants(&mut self, now_ms: u64, a: &AppliedKv, first: bool) {
        for p in &a.published {
            let Published::Locks { events, .. } = p else { continue };
            for e in events.iter().filter(|e| e.granted_waiter != 0) {
                let Some(h) = &e.holder else {
                    self.fail(format!("{now_ms} ms: range {} index {}: grant without a holder", a.range_id, a.index));
                    continue;
                };
                let grants = self.grants.entry((a.range_id, e.name.clone())).or_default();
                if let Some(&(token, session)) = grants.get(&a.index) {
                    if (token, session) != (h.token, h.session) {
                        let v = format!(
                            "{now_ms} ms: node {} range {} index {}: grant of {} has token {} (session {}), another replica's has {token} (session {session})",
                            a.node, a.range_id, a.index, show(&e.name), h.token, h.session
                        );
                        self.fail(v);
                    }
                    continue;
                }
                let before = grants.range(..a.index).next_back().map(|(i, (t, _))| (*i, *t));
                let after = grants.range(a.index + 1..).next().map(|(i, (t, _))| (*i, *t));
                grants.insert(a.index, (h.token, h.session));
                self.stats.grants += u64::from(first);
                if let Some((i, t)) = before.filter(|(_, t)| *t >= h.token) {
                    self.fail(format!(
                        "{now_ms} ms: fencing token of {} went back: {} at index {} after {t} at index {i} (range {})",
                        show(&e.name),
                        h.token,
                        a.index,
                        a.range_id
                    ));
                }
                if let Some((i, t)) = after.filter(|(_, t)| *t <= h.token) {
                    self.fail(format!(
                        "{now_ms} ms: fencing token of {} went back: {t} at index {i} after {} at index {} (range {})",
                        show(&e.name),
                        h.token,
                        a.index,
                        a.range_id
                    ));
                }
            }
        }
    }

    /// A client was told the lease lives `ttl_s` from `sent_ms`: it sent a
    /// grant or keepalive then and had it acknowledged (`now_ms`; a grant's
    /// answer may come late, even after the expiry — what counts is the
    /// send time, from which clients time their sessions).
    pub fn observe_lease_promise(&mut self, now_ms: u64, id: i64, ttl_s: i64, sent_ms: u64) {
        self.stats.promises += 1;
        let promise = Promise { ttl_s, sent_ms };
        if let Some(&at) = self.expired_at.get(&id) {
            self.check_promise(now_ms, id, promise, at);
            return;
        }
        let p = self.promises.entry(id).or_insert(promise);
        if sent_ms >= p.sent_ms {
            *p = promise;
        }
    }

    fn lease_expired(&mut self, now_ms: u64, id: i64) {
        self.stats.lease_expiries += 1;
        self.expired_at.insert(id, now_ms);
        if let Some(p) = self.promises.remove(&id) {
            self.check_promise(now_ms, id, p, now_ms);
        }
    }

    /// The lease expired at `expired_ms`: not before the promise's end.
    fn check_promise(&mut self, now_ms: u64, id: i64, p: Promise, expired_ms: u64) {
        let until = p.sent_ms + p.ttl_s as u64 * 1000;
        if expired_ms >= until {
            return;
        }
        let v = format!(
            "{now_ms} ms: lease {id} (TTL {} s) expired at {expired_ms} ms, {} ms early: a keepalive or grant sent at {} ms was acknowledged, so it lives until {until} ms",
            p.ttl_s,
            until - expired_ms,
            p.sent_ms
        );
        self.fail(v);
    }

    /// The keeper of `node` proposes to expire lease `id` at `now_ms`; its
    /// own clock saw the last keepalive or grant of it at `last_seen_ms`
    /// (or, building its clock at leadership start, continued it as if
    /// renewed then). Its clock must agree that a TTL passed.
    pub fn observe_expiry_proposal(&mut self, now_ms: u64, node: u64, id: i64, ttl_s: i64, last_seen_ms: Option<u64>) {
        if let Some(seen) = last_seen_ms {
            if now_ms < seen + ttl_s as u64 * 1000 {
                self.fail(format!(
                    "{now_ms} ms: node {node} proposed to expire lease {id} (TTL {ttl_s} s) though it saw it kept alive at {seen} ms"
                ));
            }
        }
    }
}

/// `o` with the results of the reads inside transactions (nested ones
/// too) left out: only the replica a proposer waits on makes them.
fn without_reads(o: &Option<Outcome>) -> Option<Outcome> {
    use meridian_kv::command::{OutcomeKind, ResponseKind, TxnOutcome};
    fn clear(t: &mut TxnOutcome) {
        for r in &mut t.responses {
            match &mut r.kind {
                Some(ResponseKind::Range(x)) => *x = Default::default(),
                Some(ResponseKind::Txn(inner)) => clear(inner),
                _ => {}
            }
        }
    }
    let mut o = o.clone();
    if let Some(Outcome { kind: Some(OutcomeKind::Txn(t)), .. }) = &mut o {
        clear(t);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_kv::command::{Command, LeaseCheckpointOp, LockAcquireOp, LockReleaseOp, OutcomeKind};
    use meridian_kv::locks::Waiter;
    use meridian_kv::{Event, KeyValue, LockEvent};

    fn entry(node: u64, index: u64, op: Op, revision: i64, published: Vec<Published>) -> AppliedKv {
        AppliedKv {
            node,
            incarnation: 1,
            range_id: 1,
            index,
            command: Some(Command { op: Some(op), wall_ms: 0 }),
            outcome: Some(Outcome { revision, kind: Some(OutcomeKind::Done(true)) }),
            published,
            locks: None,
        }
    }

    fn holder(session: i64, token: i64) -> Holder {
        Holder { session, token, ..Default::default() }
    }

    fn lock(name: &str, holder: Option<Holder>, waiters: &[i64], delay_ms: i64) -> NamedLock {
        let waiters = waiters.iter().map(|&session| Waiter { session, ..Default::default() }).collect();
        NamedLock { name: name.into(), lock: Some(LockRecord { holder, waiters, delay_ms }) }
    }

    fn grant(name: &str, session: i64, token: i64) -> Published {
        let e = LockEvent { name: name.into(), holder: Some(holder(session, token)), granted_waiter: 7, dropped_waiters: vec![] };
        Published::Locks { revision: token, events: vec![e] }
    }

    fn put(key: &str, revision: i64) -> Published {
        let kv = KeyValue { key: key.into(), mod_revision: revision, ..Default::default() };
        Published::Events { revision, events: vec![Event { kind: 0, kv: Some(kv), prev_kv: None }] }
    }

    fn acquire(name: &str, session: i64) -> Op {
        Op::LockAcquire(LockAcquireOp { name: name.into(), session, waiter_id: 7, ..Default::default() })
    }

    fn with_delta(mut e: AppliedKv, before: Vec<NamedLock>, after: Vec<NamedLock>, live: &[i64]) -> AppliedKv {
        e.locks = Some(Ok(LockDelta { before, after, live_sessions: live.iter().copied().collect() }));
        e
    }

    fn violations_of(entries: &[(u64, AppliedKv)]) -> Vec<String> {
        let mut c = KvChecker::default();
        for (ms, e) in entries {
            c.observe_applied(*ms, e);
        }
        c.violations().to_vec()
    }

    #[test]
    fn a_clean_history_passes() {
        let a = with_delta(
            entry(1, 5, acquire("l", 10), 8, vec![grant("l", 10, 8)]),
            vec![],
            vec![lock("l", Some(holder(10, 8)), &[], 0)],
            &[10],
        );
        let b = AppliedKv { node: 2, ..a.clone() };
        assert!(violations_of(&[(100, a), (200, b)]).is_empty());
    }

    #[test]
    fn two_holders_in_one_replica_state_fail() {
        let table = vec![lock("l", Some(holder(10, 8)), &[], 0), lock("l", Some(holder(11, 9)), &[], 0)];
        let mut c = KvChecker::default();
        let index = [(10, b"l".to_vec()), (11, b"l".to_vec())].into_iter().collect();
        c.observe_lock_table(0, 1, 1, &table, &[10, 11].into_iter().collect(), &index);
        assert!(c.violations().iter().any(|v| v.contains("two holders")), "{:?}", c.violations());
    }

    #[test]
    fn a_lock_taken_from_a_live_holder_fails() {
        // Session 11 is granted "l" while session 10 still holds it and
        // neither released it nor ended: two holders one after the other.
        let before = vec![lock("l", Some(holder(10, 8)), &[11], 0)];
        let after = vec![lock("l", Some(holder(11, 9)), &[], 0)];
        let e = with_delta(entry(1, 6, acquire("l", 11), 9, vec![grant("l", 11, 9)]), before.clone(), after.clone(), &[10, 11]);
        let v = violations_of(&[(0, e)]);
        assert!(v.iter().any(|v| v.contains("taken from its holder")), "{v:?}");
        // The same change made by the holder's release is a handover.
        let release = Op::LockRelease(LockReleaseOp { name: "l".into(), session: 10, token: 8 });
        let ok = with_delta(entry(1, 6, release, 9, vec![grant("l", 11, 9)]), before, after, &[10, 11]);
        assert!(violations_of(&[(0, ok)]).is_empty());
    }

    #[test]
    fn a_holder_whose_lease_is_gone_fails() {
        let e = with_delta(
            entry(1, 5, acquire("l", 10), 8, vec![grant("l", 10, 8)]),
            vec![],
            vec![lock("l", Some(holder(10, 8)), &[], 0)],
            &[],
        );
        assert!(violations_of(&[(0, e)]).iter().any(|v| v.contains("lease is gone")));
    }

    #[test]
    fn fencing_token_going_back_fails() {
        let first = entry(1, 5, acquire("l", 10), 9, vec![grant("l", 10, 9)]);
        let later = entry(1, 7, acquire("l", 11), 8, vec![grant("l", 11, 8)]);
        let v = violations_of(&[(0, first.clone()), (10, later)]);
        assert!(v.iter().any(|v| v.contains("fencing token of l went back")), "{v:?}");
        // Seen out of log order (a lagging replica): still caught.
        let earlier = entry(2, 3, acquire("l", 11), 12, vec![grant("l", 11, 12)]);
        let v = violations_of(&[(0, first), (10, earlier)]);
        assert!(v.iter().any(|v| v.contains("went back")), "{v:?}");
    }

    #[test]
    fn same_grant_with_different_tokens_on_two_replicas_fails() {
        let mut c = KvChecker::default();
        let a = entry(1, 5, acquire("l", 10), 9, vec![grant("l", 10, 9)]);
        c.check_grants(0, &a, true);
        let b = entry(2, 5, acquire("l", 10), 9, vec![grant("l", 10, 10)]);
        c.check_grants(0, &b, false);
        assert!(c.violations().iter().any(|v| v.contains("another replica's has 9")), "{:?}", c.violations());
    }

    #[test]
    fn lease_expired_before_its_ttl_since_a_keepalive_fails() {
        let mut c = KvChecker::default();
        c.observe_lease_promise(0, 42, 5, 0);
        // Kept alive at 3 s: lives until 8 s at least.
        c.observe_lease_promise(3_000, 42, 5, 3_000);
        c.observe_applied(6_000, &entry(1, 9, Op::LeaseExpire(42), 4, vec![]));
        assert!(c.violations().iter().any(|v| v.contains("2000 ms early")), "{:?}", c.violations());
        // At 8 s it is on time.
        let mut c = KvChecker::default();
        c.observe_lease_promise(3_000, 42, 5, 3_000);
        c.observe_applied(8_000, &entry(1, 9, Op::LeaseExpire(42), 4, vec![]));
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    /// Seed 7017's history: the expiring leader continued the lease from a
    /// checkpoint older than an acknowledged keepalive. Once a known gap,
    /// now a violation like any early expiry.
    #[test]
    fn early_expiry_from_a_checkpoint_fails() {
        let mut c = KvChecker::default();
        c.observe_lease_promise(5_000, 42, 30, 5_000);
        c.observe_expiry_proposal(33_000, 2, 42, 30, Some(0));
        c.observe_applied(33_000, &entry(2, 9, Op::LeaseExpire(42), 4, vec![]));
        assert!(c.violations().iter().any(|v| v.contains("2000 ms early")), "{:?}", c.violations());
    }

    #[test]
    fn keepalive_acknowledged_after_expiry_fails() {
        let mut c = KvChecker::default();
        c.observe_lease_promise(0, 42, 2, 0);
        c.observe_applied(2_000, &entry(1, 9, Op::LeaseExpire(42), 4, vec![]));
        // A keepalive answered after the expiry (sent then, as keepalives
        // are answered from the leader's clock at once).
        c.observe_lease_promise(2_100, 42, 2, 2_100);
        assert!(c.violations().iter().any(|v| v.contains("expired at 2000 ms, 2100 ms early")), "{:?}", c.violations());
        // A grant sent at 0 and answered only after its expiry at 2 s
        // promised nothing beyond 2 s.
        let mut c = KvChecker::default();
        c.observe_applied(2_000, &entry(1, 9, Op::LeaseExpire(42), 4, vec![]));
        c.observe_lease_promise(2_500, 42, 2, 0);
        assert!(c.violations().is_empty(), "{:?}", c.violations());
    }

    #[test]
    fn expiry_proposed_early_by_the_leaders_own_clock_fails() {
        let mut c = KvChecker::default();
        c.observe_expiry_proposal(5_000, 1, 42, 5, Some(0));
        assert!(c.violations().is_empty());
        c.observe_expiry_proposal(4_000, 1, 42, 5, Some(1_000));
        assert!(c.violations().iter().any(|v| v.contains("proposed to expire lease 42")), "{:?}", c.violations());
    }

    #[test]
    fn lock_granted_before_its_lock_delay_fails() {
        let expire = with_delta(
            entry(1, 5, Op::LeaseExpire(10), 9, vec![]),
            vec![lock("l", Some(Holder { lock_delay_ms: 2_000, ..holder(10, 8) }), &[11], 0)],
            vec![lock("l", None, &[11], 2_000)],
            &[11],
        );
        let end = |index| {
            with_delta(
                entry(1, index, Op::LockDelayEnd(b"l".to_vec()), 10, vec![grant("l", 11, 10)]),
                vec![lock("l", None, &[11], 2_000)],
                vec![lock("l", Some(holder(11, 10)), &[], 0)],
                &[11],
            )
        };
        let v = violations_of(&[(1_000, expire.clone()), (2_500, end(6))]);
        assert!(v.iter().any(|v| v.contains("lock-delay is 2000 ms")), "{v:?}");
        assert!(violations_of(&[(1_000, expire), (3_000, end(6))]).is_empty());
    }

    #[test]
    fn lock_delay_begun_without_an_expiry_fails() {
        // A clean revoke must grant at once, not delay.
        let revoke = with_delta(
            entry(1, 5, Op::LeaseRevoke(10), 9, vec![]),
            vec![lock("l", Some(Holder { lock_delay_ms: 2_000, ..holder(10, 8) }), &[11], 0)],
            vec![lock("l", None, &[11], 2_000)],
            &[11],
        );
        assert!(violations_of(&[(0, revoke)]).iter().any(|v| v.contains("put under lock-delay")));
    }

    #[test]
    fn diverging_event_streams_fail() {
        let a = entry(1, 5, Op::LeaseCheckpoint(LeaseCheckpointOp::default()), 8, vec![put("/r0001/a", 8)]);
        let b = AppliedKv { node: 2, published: vec![put("/r0001/b", 8)], ..a.clone() };
        let v = violations_of(&[(0, a.clone()), (0, b)]);
        assert!(v.iter().any(|v| v.contains("event streams differ")), "{v:?}");
        // A replica that published nothing for an entry that published.
        let silent = AppliedKv { node: 3, published: vec![], ..a.clone() };
        assert!(violations_of(&[(0, a.clone()), (0, silent)]).iter().any(|v| v.contains("event streams differ")));
        // A lagging replica publishing the same is fine.
        let lagging = AppliedKv { node: 3, ..a.clone() };
        assert!(violations_of(&[(0, a), (500, lagging)]).is_empty());
    }

    #[test]
    fn event_stream_going_back_in_revision_fails() {
        let a = entry(1, 5, Op::LeaseRevoke(1), 8, vec![put("/r0001/a", 8)]);
        let b = entry(1, 6, Op::LeaseRevoke(2), 8, vec![put("/r0001/b", 8)]);
        assert!(violations_of(&[(0, a), (0, b)]).iter().any(|v| v.contains("went back")));
    }
}
