//! Lease expiry on the range leader, on a monotonic clock it is handed.
//!
//! Only the leader runs a `LeaseClock`. When a replica becomes leader it
//! rebuilds deadlines from the replicated records: a lease that was
//! checkpointed continues from its remaining TTL, one that was not gets its
//! full TTL — so a leader change neither expires a lease early nor lets a
//! long lease live forever through repeated elections. Expiry is proposed
//! as a revoke through Raft; nothing here touches the data.

use std::collections::{BTreeMap, BTreeSet};

use crate::mvcc::LeaseRecord;

/// Leases expiring per call, so one poll never proposes without bound.
pub const MAX_EXPIRED_PER_CALL: usize = 1000;

#[derive(Debug, Default)]
pub struct LeaseClock {
    /// lease id → (deadline ms, ttl s)
    leases: BTreeMap<i64, (u64, i64)>,
    /// (deadline, id), for finding the next expiries in order.
    by_deadline: BTreeSet<(u64, i64)>,
}

impl LeaseClock {
    /// Starts tracking every lease as a new leader at `now_ms`.
    pub fn on_become_leader(now_ms: u64, leases: &[LeaseRecord]) -> Self {
        let mut c = LeaseClock::default();
        for l in leases {
            let secs = if l.remaining_ttl_s > 0 { l.remaining_ttl_s } else { l.ttl_s };
            c.set(l.id, now_ms + secs.max(1) as u64 * 1000, l.ttl_s);
        }
        c
    }

    fn set(&mut self, id: i64, deadline_ms: u64, ttl_s: i64) {
        if let Some((old, _)) = self.leases.insert(id, (deadline_ms, ttl_s)) {
            self.by_deadline.remove(&(old, id));
        }
        self.by_deadline.insert((deadline_ms, id));
    }

    pub fn granted(&mut self, now_ms: u64, id: i64, ttl_s: i64) {
        self.set(id, now_ms + ttl_s.max(1) as u64 * 1000, ttl_s);
    }

    /// A keepalive: the lease lives a full TTL from now. Returns the TTL,
    /// or `None` if the lease is unknown (expired or revoked).
    pub fn keepalive(&mut self, now_ms: u64, id: i64) -> Option<i64> {
        let (_, ttl) = *self.leases.get(&id)?;
        self.set(id, now_ms + ttl.max(1) as u64 * 1000, ttl);
        Some(ttl)
    }

    pub fn revoked(&mut self, id: i64) {
        if let Some((d, _)) = self.leases.remove(&id) {
            self.by_deadline.remove(&(d, id));
        }
    }

    /// Remaining whole seconds (rounded up) of a tracked lease.
    pub fn remaining_s(&self, now_ms: u64, id: i64) -> Option<i64> {
        let (d, _) = self.leases.get(&id)?;
        Some((d.saturating_sub(now_ms)).div_ceil(1000) as i64)
    }

    /// Leases whose deadline has passed, oldest first, at most
    /// [`MAX_EXPIRED_PER_CALL`]. They stay tracked until `revoked`, so a
    /// lost revoke proposal is retried by the next call.
    pub fn expired(&self, now_ms: u64) -> Vec<i64> {
        self.by_deadline.iter().take_while(|(d, _)| *d <= now_ms).take(MAX_EXPIRED_PER_CALL).map(|(_, id)| *id).collect()
    }

    /// Remaining TTLs worth checkpointing: leases longer than `min_ttl_s`,
    /// so a new leader continues them instead of starting over.
    pub fn checkpoints(&self, now_ms: u64, min_ttl_s: i64, max: usize) -> Vec<(i64, i64)> {
        self.leases
            .iter()
            .filter(|(_, (_, ttl))| *ttl > min_ttl_s)
            .map(|(id, (d, _))| (*id, (d.saturating_sub(now_ms)).div_ceil(1000).max(1) as i64))
            .take(max)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.leases.len()
    }

    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: i64, ttl_s: i64, remaining_ttl_s: i64) -> LeaseRecord {
        LeaseRecord { id, ttl_s, remaining_ttl_s }
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

    #[test]
    fn new_leader_continues_checkpointed_leases() {
        // Checkpointed with 20 s left of 600: a new leader must not restart
        // it at 600 (which repeated elections would do forever) ...
        let c = LeaseClock::on_become_leader(1_000, &[rec(7, 600, 20), rec(8, 30, 0)]);
        assert_eq!(c.remaining_s(1_000, 7), Some(20));
        // ... and a lease never checkpointed gets its full TTL, never less.
        assert_eq!(c.remaining_s(1_000, 8), Some(30));
        assert_eq!(c.expired(21_000), vec![7]);
        assert_eq!(c.checkpoints(1_000, 60, 10), vec![(7, 20)]);
    }
}
