//! The store's replicas, and which of them a poll round must visit.
//!
//! A node may hold thousands of ranges, most of them quiet. A poll round
//! visits only the *active* ones: a replica becomes active whenever it is
//! reached mutably ([`Peers::get_mut`], [`Peers::insert`]: a message
//! stepped, a proposal, a read, a membership change, feedback from the
//! transport) or marked by the few passes that go over every replica
//! without marking ([`Peers::values_mut_unmarked`]: the tick marks each
//! replica it ticks or wakes). It stays active until a round ends with
//! nothing left for it: no Ready, no Ready waiting for a sync, no install
//! in progress, no snapshot to build, no read or proposal waiting
//! ([`Peers::settle`]). Marking is conservative — a replica reached for
//! any reason is visited once more. A forgotten mark would leave a
//! replica's work waiting for its next tick, or, quiesced or dormant (not
//! ticked), for the next message: debug builds check every few rounds
//! that no replica outside the set has work.

use std::collections::{BTreeMap, BTreeSet};

use crate::peer::Peer;

#[derive(Default)]
pub(super) struct Peers {
    map: BTreeMap<u64, Peer>,
    /// The replicas the next round visits, in range order (as the whole
    /// map was: rounds stay deterministic).
    active: BTreeSet<u64>,
}

impl Peers {
    pub fn get(&self, range_id: &u64) -> Option<&Peer> {
        self.map.get(range_id)
    }

    /// The replica, marked active: whatever the caller does to it, the
    /// next round looks at it.
    pub fn get_mut(&mut self, range_id: &u64) -> Option<&mut Peer> {
        let p = self.map.get_mut(range_id)?;
        self.active.insert(*range_id);
        Some(p)
    }

    pub fn contains_key(&self, range_id: &u64) -> bool {
        self.map.contains_key(range_id)
    }

    pub fn insert(&mut self, range_id: u64, peer: Peer) {
        self.map.insert(range_id, peer);
        self.active.insert(range_id);
    }

    pub fn remove(&mut self, range_id: &u64) -> Option<Peer> {
        self.active.remove(range_id);
        self.map.remove(range_id)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn keys(&self) -> impl Iterator<Item = &u64> {
        self.map.keys()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&u64, &Peer)> {
        self.map.iter()
    }

    /// Every replica, mutably, marking none: the caller marks what it
    /// gave work to ([`Peers::mark`]).
    pub fn values_mut_unmarked(&mut self) -> impl Iterator<Item = &mut Peer> {
        self.map.values_mut()
    }

    /// Marks `range_id` active (if the store holds it).
    pub fn mark(&mut self, range_id: u64) {
        if self.map.contains_key(&range_id) {
            self.active.insert(range_id);
        }
    }

    /// The active replicas' ids, in range order.
    pub fn active_ids(&self) -> Vec<u64> {
        self.active.iter().copied().collect()
    }

    /// The active replicas.
    pub fn active(&self) -> impl Iterator<Item = &Peer> {
        self.active.iter().filter_map(|id| self.map.get(id))
    }

    /// Ends a round: a replica with nothing left for a poll round leaves
    /// the active set until something reaches it again.
    pub fn settle(&mut self) {
        let map = &self.map;
        self.active.retain(|id| map.get(id).is_some_and(has_work));
    }

    /// Debug builds: the replicas outside the active set that have work
    /// (a forgotten mark); none is the invariant.
    #[cfg(debug_assertions)]
    pub fn forgotten(&self) -> Vec<u64> {
        self.map.iter().filter(|(id, p)| !self.active.contains(id) && has_work(p)).map(|(id, _)| *id).collect()
    }
}

/// Whether a poll round may still have something to do for `p`.
fn has_work(p: &Peer) -> bool {
    p.installing.is_some()
        || p.raft.has_ready()
        || !p.unsynced.is_empty()
        || !p.reads.is_empty()
        || !p.staged.is_empty()
        || p.pending() > 0
        || p.raft.store().snapshot_requested()
}
