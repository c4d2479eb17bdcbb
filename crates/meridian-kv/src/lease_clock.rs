//! Lease expiry on the range leader, on a monotonic clock it is handed.
//!
//! Only the leader runs a `LeaseClock`. When a replica becomes leader it
//! rebuilds deadlines from the replicated records: a lease that was
//! checkpointed continues from its remaining TTL, one that was not gets its
//! full TTL — so a leader change neither expires a lease early nor lets a
//! long lease live forever through repeated elections. Expiry is proposed
//! as a revoke through Raft; nothing here touches the data. The leader
//! times lock-delays the same way ([`LockDelayTimer`]).
//!
//! A keepalive renews a lease in the leader's memory. Once the leader has
//! checkpointed a lease, that is not enough: the next leader would continue
//! the older checkpoint and expire the lease before the TTL the keepalive
//! promised. So a keepalive of a checkpointed lease ([`LeaseClock::needs_reset`])
//! is answered only after a reset (a `LeaseCheckpoint` of 0 s) has applied.
//! Checkpoints and resets race in the log, so each checkpoint carries the
//! record's reset count the leader knew when it computed it, and one
//! computed before a reset applied is ignored:
//!
//! ```text
//!  leader clock        log                        record (remaining, resets)
//!  checkpoint 20 s  →  Checkpoint{20, resets 0}   (20, 0)
//!  keepalive (30 s) →  Checkpoint{0}  (reset)     (0, 1)   → answer TTL 30
//!  late checkpoint  →  Checkpoint{17, resets 0}   (0, 1)   stale: ignored
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::command::LeaseCheckpointOp;
use crate::mvcc::LeaseRecord;

/// Leases expiring per call, so one poll never proposes without bound.
pub const MAX_EXPIRED_PER_CALL: usize = 1000;

/// The range leader's lease deadlines, in milliseconds of the monotonic
/// clock it is handed (see the module docs).
#[derive(Debug, Default)]
pub struct LeaseClock {
    leases: BTreeMap<i64, Tracked>,
    /// (deadline, id), for finding the next expiries in order.
    by_deadline: BTreeSet<(u64, i64)>,
}

#[derive(Debug, Clone, Copy)]
struct Tracked {
    deadline_ms: u64,
    ttl_s: i64,
    /// The record's checkpoint reset count as this leader knows it.
    resets: u64,
    /// The reset count of the latest checkpoint this leader computed (or
    /// found in the record): the record may hold a remaining TTL from it.
    checkpoint_at: Option<u64>,
}

impl LeaseClock {
    /// Starts tracking every lease as a new leader at `now_ms`.
    pub fn on_become_leader(now_ms: u64, leases: &[LeaseRecord]) -> Self {
        let mut c = LeaseClock::default();
        for l in leases {
            let checkpointed = l.remaining_ttl_s > 0;
            let secs = if checkpointed { l.remaining_ttl_s } else { l.ttl_s };
            let t = Tracked {
                deadline_ms: now_ms + secs.max(1) as u64 * 1000,
                ttl_s: l.ttl_s,
                resets: l.resets,
                checkpoint_at: checkpointed.then_some(l.resets),
            };
            c.set(l.id, t);
        }
        c
    }

    fn set(&mut self, id: i64, t: Tracked) {
        if let Some(old) = self.leases.insert(id, t) {
            self.by_deadline.remove(&(old.deadline_ms, id));
        }
        self.by_deadline.insert((t.deadline_ms, id));
    }

    fn renew(&mut self, now_ms: u64, id: i64, ttl_s: i64) {
        let t = self.leases.get(&id).copied().unwrap_or(Tracked { deadline_ms: 0, ttl_s, resets: 0, checkpoint_at: None });
        self.set(id, Tracked { deadline_ms: now_ms + ttl_s.max(1) as u64 * 1000, ttl_s, ..t });
    }

    /// A lease was granted (its grant applied): it lives `ttl_s` seconds from
    /// `now_ms`.
    pub fn granted(&mut self, now_ms: u64, id: i64, ttl_s: i64) {
        self.renew(now_ms, id, ttl_s);
    }

    /// A keepalive: the lease lives a full TTL from now. Returns the TTL,
    /// or `None` if the lease is unknown (revoked) or expired: past its
    /// deadline, where [`Self::expired`] lists it and its expiry may be in
    /// flight already — renewing it would promise a TTL the expiry is about
    /// to break.
    ///
    /// To ensure correctness: if [`Self::needs_reset`] then says so, answer
    /// the keepalive only once a reset of the lease's checkpoint has applied.
    pub fn keepalive(&mut self, now_ms: u64, id: i64) -> Option<i64> {
        let t = *self.leases.get(&id)?;
        if t.deadline_ms <= now_ms {
            return None;
        }
        self.renew(now_ms, id, t.ttl_s);
        Some(t.ttl_s)
    }

    /// The lease's record may hold a remaining TTL from a checkpoint that a
    /// keepalive answered now would outlive: reset it through the log
    /// (`LeaseCheckpoint` with 0 s) before answering.
    pub fn needs_reset(&self, id: i64) -> bool {
        self.leases.get(&id).is_some_and(|t| t.checkpoint_at.is_some_and(|at| at >= t.resets))
    }

    /// A reset of lease `id`'s checkpoint applied; the record's reset count
    /// is now `resets`. Checkpoints computed before are stale in the log.
    pub fn reset_applied(&mut self, id: i64, resets: u64) {
        if let Some(t) = self.leases.get_mut(&id) {
            t.resets = t.resets.max(resets);
        }
    }

    /// The record's reset count this leader knows, for a checkpoint of
    /// lease `id` computed now (0 for an unknown lease).
    pub fn resets(&self, id: i64) -> u64 {
        self.leases.get(&id).map_or(0, |t| t.resets)
    }

    /// Stops tracking lease `id` (its revoke or expiry applied).
    pub fn revoked(&mut self, id: i64) {
        if let Some(t) = self.leases.remove(&id) {
            self.by_deadline.remove(&(t.deadline_ms, id));
        }
    }

    /// Remaining whole seconds (rounded up) of a tracked lease.
    pub fn remaining_s(&self, now_ms: u64, id: i64) -> Option<i64> {
        let t = self.leases.get(&id)?;
        Some((t.deadline_ms.saturating_sub(now_ms)).div_ceil(1000) as i64)
    }

    /// Leases whose deadline has passed, oldest first, at most
    /// [`MAX_EXPIRED_PER_CALL`]. They stay tracked until `revoked`, so a
    /// lost revoke proposal is retried by the next call.
    pub fn expired(&self, now_ms: u64) -> Vec<i64> {
        self.by_deadline.iter().take_while(|(d, _)| *d <= now_ms).take(MAX_EXPIRED_PER_CALL).map(|(_, id)| *id).collect()
    }

    /// Remaining TTLs worth checkpointing, `(id, remaining s)`: leases
    /// longer than `min_ttl_s`, so a new leader continues them instead of
    /// starting over. Propose each with the reset count [`Self::resets`]
    /// gives; from now on a keepalive of these leases needs a reset.
    pub fn checkpoints(&mut self, now_ms: u64, min_ttl_s: i64, max: usize) -> Vec<(i64, i64)> {
        let mut out = Vec::new();
        for (id, t) in self.leases.iter_mut().filter(|(_, t)| t.ttl_s > min_ttl_s).take(max) {
            t.checkpoint_at = Some(t.resets);
            out.push((*id, (t.deadline_ms.saturating_sub(now_ms)).div_ceil(1000).max(1) as i64));
        }
        out
    }

    /// [`Self::checkpoints`] as the commands to propose, each with the
    /// reset count it was computed at.
    pub fn checkpoint_ops(&mut self, now_ms: u64, min_ttl_s: i64, max: usize) -> Vec<LeaseCheckpointOp> {
        let cps = self.checkpoints(now_ms, min_ttl_s, max);
        cps.into_iter().map(|(id, remaining_ttl_s)| LeaseCheckpointOp { id, remaining_ttl_s, resets: self.resets(id) }).collect()
    }

    /// The number of leases tracked.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// No lease is tracked.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

/// The lock-delays a range leader times on its own clock (the keeper's
/// half of Chubby's lock-delay): a delay runs from when this leader first
/// saw it, never from anything replicated, so a new leader starts it over
/// (never shorter).
///
/// To ensure correctness: call [`Self::ended`] once the end of a delay
/// was proposed and answered. A delay seen under the same name afterwards
/// is then a new one (the next holder's session expired too), timed from
/// scratch — not from when the previous delay began.
#[derive(Debug, Default)]
pub struct LockDelayTimer {
    /// Lock name → when this leader first saw its current delay.
    since_ms: BTreeMap<Vec<u8>, u64>,
}

impl LockDelayTimer {
    /// The locks under delay now, `(name, delay_ms)`, as the leader reads
    /// them: starts timing the new ones, forgets the ones no longer
    /// delayed, and returns the names whose delay has passed in full.
    pub fn due(&mut self, now_ms: u64, delayed: &[(Vec<u8>, i64)]) -> Vec<Vec<u8>> {
        let live: BTreeSet<&[u8]> = delayed.iter().map(|(n, _)| n.as_slice()).collect();
        self.since_ms.retain(|n, _| live.contains(n.as_slice()));
        let mut due = Vec::new();
        for (name, delay_ms) in delayed {
            let since = *self.since_ms.entry(name.clone()).or_insert(now_ms);
            if now_ms.saturating_sub(since) >= (*delay_ms).max(0) as u64 {
                due.push(name.clone());
            }
        }
        due
    }

    /// No delay is being timed (the last read found none, or all ended).
    pub fn is_idle(&self) -> bool {
        self.since_ms.is_empty()
    }

    /// The end of `name`'s delay was proposed and answered (whether it
    /// applied or not: timing a delay again from scratch is only longer).
    pub fn ended(&mut self, name: &[u8]) {
        self.since_ms.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, ttl_s: i64, remaining_ttl_s: i64) -> LeaseRecord {
        LeaseRecord { id, ttl_s, remaining_ttl_s, resets: 0 }
    }

    #[test]
    fn expiry_follows_keepalives() {
        let mut c = LeaseClock::default();
        c.granted(0, 1, 5);
        c.granted(0, 2, 10);
        assert!(c.expired(4_999).is_empty());
        assert_eq!(c.expired(5_000), vec![1]);
        assert_eq!(c.keepalive(4_000, 1), Some(5));
        assert!(c.expired(8_999).is_empty(), "keepalive pushed the deadline");
        assert_eq!(c.expired(10_000), vec![1, 2]);
        c.revoked(1);
        assert_eq!(c.expired(10_000), vec![2]);
        assert_eq!(c.keepalive(0, 1), None, "a revoked lease cannot be kept alive");
    }

    /// Found by the KV simulation (seed 7000): the keeper proposed the
    /// expiry of a lease past its deadline, a late keepalive then renewed
    /// it and was answered a full TTL, and the expiry applied 200 ms later.
    #[test]
    fn keepalive_after_the_deadline_is_refused() {
        let mut c = LeaseClock::default();
        c.granted(0, 1, 5);
        assert_eq!(c.expired(5_000), vec![1], "the keeper expires it at its deadline ...");
        assert_eq!(c.keepalive(5_100, 1), None, "... so a keepalive after it must not promise another TTL");
        assert_eq!(c.expired(5_100), vec![1], "and the expiry stands");
        assert_eq!(c.keepalive(4_999, 1), Some(5), "before the deadline it renews");
    }

    /// Found by the KV simulation (seed 20114): a delay ended, the lock
    /// went to a waiter whose session expired in the same keeper round, and
    /// its new 1 s delay was timed from when the previous one began: the
    /// lock was granted again 400 ms after that expiry.
    #[test]
    fn a_new_delay_under_the_same_name_is_timed_afresh() {
        let mut t = LockDelayTimer::default();
        let l = b"l".to_vec();
        assert!(t.due(0, &[(l.clone(), 300)]).is_empty());
        assert_eq!(t.due(300, &[(l.clone(), 300)]), vec![l.clone()]);
        t.ended(&l);
        // The next holder's session expired before the keeper looked again.
        assert!(t.due(1_100, &[(l.clone(), 1_000)]).is_empty(), "a new delay starts when first seen");
        assert!(t.due(2_099, &[(l.clone(), 1_000)]).is_empty());
        assert_eq!(t.due(2_100, &[(l.clone(), 1_000)]), vec![l.clone()]);
        // A lock no longer delayed is forgotten.
        assert!(t.due(2_200, &[]).is_empty());
        assert!(t.due(2_300, &[(l.clone(), 1_000)]).is_empty());
    }

    /// Found by the KV simulation (seed 7017): a keepalive after a
    /// checkpoint renewed the lease in the leader's memory only, and the
    /// next leader continued the older checkpointed TTL — expiring the
    /// lease 4.7 s before the TTL the keepalive promised. Now the keepalive
    /// asks for a reset first, and the next leader starts from the reset
    /// record.
    #[test]
    fn keepalive_after_a_checkpoint_outlives_a_leader_change() {
        let mut old = LeaseClock::default();
        old.granted(0, 1, 30);
        assert!(!old.needs_reset(1), "never checkpointed: answered from memory");
        let cp = old.checkpoints(5_000, 10, 10);
        assert_eq!(cp, vec![(1, 25)]);
        // The checkpoint applies; then the client's keepalive promises
        // the lease until 36 s.
        assert_eq!(old.keepalive(6_000, 1), Some(30));
        assert!(old.needs_reset(1), "the record holds 25 s: the keepalive must reset it first");
        // The reset applied (the record: no checkpoint, one reset).
        old.reset_applied(1, 1);
        assert!(!old.needs_reset(1));
        let new = LeaseClock::on_become_leader(7_000, &[LeaseRecord { id: 1, ttl_s: 30, remaining_ttl_s: 0, resets: 1 }]);
        assert!(new.expired(35_999).is_empty(), "the next leader must not expire it before the promised 36 s");
    }

    /// A checkpoint computed before a reset applied carries the older count
    /// (the log ignores it); one computed after carries the new count, and
    /// the next keepalive needs a reset again.
    #[test]
    fn checkpoints_carry_the_reset_count_they_were_computed_at() {
        let mut c = LeaseClock::on_become_leader(0, &[LeaseRecord { id: 1, ttl_s: 60, remaining_ttl_s: 40, resets: 2 }]);
        assert!(c.needs_reset(1), "a checkpoint found in the record");
        assert_eq!(c.resets(1), 2);
        c.reset_applied(1, 3);
        assert!(!c.needs_reset(1));
        c.reset_applied(1, 1);
        assert_eq!(c.resets(1), 3, "a late answer never lowers the count");
        c.checkpoints(1_000, 10, 10);
        assert!(c.needs_reset(1));
        assert_eq!(c.resets(1), 3);
        assert_eq!(c.resets(99), 0, "unknown lease");
        assert!(!c.needs_reset(99));
    }

    #[test]
    fn new_leader_continues_checkpointed_leases() {
        // Checkpointed with 20 s left of 600: a new leader must not restart
        // it at 600 (which repeated elections would do forever) ...
        let mut c = LeaseClock::on_become_leader(1_000, &[rec(7, 600, 20), rec(8, 30, 0)]);
        assert_eq!(c.remaining_s(1_000, 7), Some(20));
        // ... and a lease never checkpointed gets its full TTL, never less.
        assert_eq!(c.remaining_s(1_000, 8), Some(30));
        assert_eq!(c.expired(21_000), vec![7]);
        assert_eq!(c.checkpoints(1_000, 60, 10), vec![(7, 20)]);
    }
}
