//! Forced promotion: a read replica (learner) becomes the only voter of a
//! range whose voters are all lost, without their consent — the operator's
//! last resort for a zone-survival namespace whose home region is gone
//! (`meridian namespace promote --accept-data-loss`).
//!
//! Raft cannot change a configuration without a quorum of it, so the
//! learner rewrites its own: it leaves every other replica out, stores the
//! configuration and its descriptor in one synced write, and campaigns
//! (alone, it wins at once). Every entry in its log is kept (the new leader
//! commits them); what the lost voters committed past it is lost.
//!
//! The configuration epoch (`conf_ver`) moves to the next *generation*: its
//! high 32 bits count forced promotions. Membership changes only ever add
//! to the low bits, so a generation tells the two lineages apart for good:
//!
//! ```text
//!  old lineage  conf_ver g<<32 + k     (voters in the lost region, and the
//!                                        learners the promotion left out)
//!  new lineage  conf_ver (g+1)<<32 + j  (the promoted replica, then every
//!                                        replica the placement driver adds)
//! ```
//!
//! - A replica of the old lineage that hears from the new one (the new
//!   leader adding its node back) is destroyed and created afresh, filled
//!   by snapshot (`Store::supersede_for`): its log and configuration belong
//!   to the lost lineage and must not be carried on. Its tombstone refuses
//!   every message of the old generation.
//! - The promoted replica refuses the old lineage's messages as it refuses
//!   a removed replica's, and tells the sender it was removed (it goes
//!   dormant; the catalog's descriptor then lets it be collected).
//!
//! Deterministic like the rest of the store: it reads no clock and draws
//! nothing, so the simulation replays it from its seed.

use meridian_storage::{keys, Cf, ReplicaDesc, ReplicaRole, WriteBatch};
use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, EntryType};
use tracing::{info, warn};

use super::{not_found, Destroyed, Retirement, Store, INITIAL_LOG_INDEX};
use crate::error::RaftstoreError;

/// Bits of `conf_ver` below the generation.
const GENERATION_SHIFT: u32 = 32;
/// A promoted replica campaigns at a term of at least its generation
/// shifted by this: past any term the lineage it supersedes reached.
const TERM_GENERATION_SHIFT: u32 = 40;

/// The forced-promotion generation of a configuration epoch.
pub fn generation(conf_ver: u64) -> u64 {
    conf_ver >> GENERATION_SHIFT
}

/// The first epoch of the generation after `conf_ver`'s.
pub fn next_generation(conf_ver: u64) -> u64 {
    (generation(conf_ver) + 1) << GENERATION_SHIFT
}

/// The last epoch of the generation before `conf_ver`'s (what a replica
/// superseded by `conf_ver`'s lineage leaves as its tombstone).
pub(super) fn before_generation(conf_ver: u64) -> u64 {
    (generation(conf_ver) << GENERATION_SHIFT).saturating_sub(1)
}

/// What a forced promotion found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Promotion {
    /// The range promoted.
    pub range_id: u64,
    /// The index the replica had applied when promoted.
    pub applied_index: u64,
    /// The last index of its log: every entry up to it is kept. Whatever
    /// the lost voters appended past it is lost.
    pub last_index: u64,
    /// The highest index it knew committed (a learner hears of commits
    /// only as far as its own log reaches).
    pub commit_index: u64,
    /// The term of its log's last entry: the last leader it heard from.
    pub last_term: u64,
    /// The range's epoch before the promotion.
    pub conf_ver_before: u64,
    /// Its epoch after: the first of the next generation.
    pub conf_ver: u64,
    /// Whether the command given was proposed right after the election
    /// (the replica led at once, as it does alone).
    pub first_proposed: bool,
}

impl Store {
    /// Makes this node's replica of `range_id`, a learner, the range's
    /// only voter and starts an election it wins alone (see the module
    /// docs), whatever configuration the lost voters were in (a joint one
    /// too: a membership change cut short by the loss); `first` (a state-machine command) is then proposed at once,
    /// so it is the first entry of the new lineage after the leader's own
    /// (the server raises the revision with it, before any lease expiry or
    /// lock grant of the new leader). Refused, changing nothing, for a
    /// replica that is a voter (the range has a quorum to change its
    /// membership with), a witness, dormant, not filled yet, and for one
    /// whose log holds a membership change past its applied index (the
    /// lost voters' change, which it could not apply alone); `TooBusy`
    /// while it has committed entries to apply or writes on their way to
    /// disk, `SnapshotInstalling` while a snapshot is on its way in (ask
    /// again).
    pub fn force_promote(&mut self, range_id: u64, first: Option<Vec<u8>>) -> Result<Promotion, RaftstoreError> {
        let node = self.cfg.node_id;
        let accepted_snapshot = self.incoming_accepted(range_id);
        let p = self.peers.get_mut(&range_id).ok_or_else(|| not_found(range_id))?;
        p.serving()?;
        let invalid = |reason: String| RaftstoreError::InvalidRequest { range_id, reason };
        // Raft-rs's own view (a snapshot accepted but not handed out yet
        // is refused below).
        let cs = p.raft.raft.prs().conf().to_conf_state();
        if cs.voters.contains(&node) || cs.voters_outgoing.contains(&node) {
            return Err(invalid(format!(
                "node {node} is a voter of range {range_id}: only a read replica (learner) is promoted by force, and a range with a voter here changes its membership by consensus"
            )));
        }
        if !cs.learners.contains(&node) {
            return Err(invalid(format!("node {node}'s replica of range {range_id} is not in its configuration yet (still being filled)")));
        }
        let applied_index = p.raft.store().apply_state().applied_index;
        if applied_index < INITIAL_LOG_INDEX || accepted_snapshot || p.raft.raft.raft_log.unstable.snapshot.is_some() {
            return Err(RaftstoreError::SnapshotInstalling { range_id });
        }
        let log = &p.raft.raft.raft_log;
        if !p.unsynced.is_empty() || applied_index < log.committed {
            return Err(RaftstoreError::TooBusy { range_id, pending: p.pending() });
        }
        // The tail past what it applied is kept and committed by the new
        // leader: a membership change there is the lost voters', which
        // would undo the forced configuration once applied.
        let tail = log
            .entries(applied_index + 1, u64::MAX, raft::GetEntriesContext::empty(false))
            .map_err(|e| RaftstoreError::Storage(e.to_string()))?;
        if let Some(e) = tail.iter().find(|e| e.get_entry_type() != EntryType::EntryNormal) {
            return Err(invalid(format!(
                "the read replica's log holds a membership change of the lost voters at index {} (past what it applied): it cannot be promoted alone",
                e.index
            )));
        }
        let (last_index, commit_index, last_term) = (log.last_index(), log.committed, log.last_term());
        // Stored first: a failed write changes nothing.
        let forced = ConfState { voters: vec![node], ..Default::default() };
        let conf_ver_before = p.desc.epoch.conf_ver;
        let conf_ver = next_generation(conf_ver_before);
        let mut desc = p.desc.clone();
        desc.replicas = vec![ReplicaDesc { node_id: node, role: ReplicaRole::Voter }];
        desc.epoch.conf_ver = conf_ver;
        let mut batch = WriteBatch::new();
        p.raft.mut_store().set_conf_state(forced.clone(), &mut batch);
        batch.put(Cf::Meta, keys::state_key(range_id), desc.encode());
        if let Err(e) = self.engine.write(&batch, true) {
            let p = self.peers.get_mut(&range_id).expect("looked up above");
            p.raft.mut_store().set_conf_state(cs, &mut WriteBatch::new());
            return Err(e.into());
        }
        let p = self.peers.get_mut(&range_id).expect("looked up above");
        // Raft-rs's tracker follows: out of the joint configuration the
        // lost voters were in, if any (a membership change cut short by
        // the loss), then into and out of one that keeps only this replica.
        let left = if cs.voters_outgoing.is_empty() { Ok(cs.clone()) } else { p.raft.raft.apply_conf_change(&ConfChangeV2::default()) };
        let applied = left.and_then(|cs| {
            let mut changes = vec![single(ConfChangeType::AddNode, node)];
            changes.extend(cs.voters.iter().chain(&cs.learners).filter(|n| **n != node).map(|n| single(ConfChangeType::RemoveNode, *n)));
            let mut enter = ConfChangeV2::default();
            enter.set_transition(ConfChangeTransition::Explicit);
            enter.set_changes(changes.into());
            p.raft.raft.apply_conf_change(&enter).and_then(|_| p.raft.raft.apply_conf_change(&ConfChangeV2::default()))
        });
        match applied {
            Ok(cs) if cs.voters == forced.voters && cs.learners.is_empty() && cs.voters_outgoing.is_empty() => {}
            // The checks above rule this out; the stored configuration is
            // the forced one, which the replica takes at its next start.
            other => panic!("range {range_id}: raft-rs did not take the forced configuration it was checked for: {other:?}"),
        }
        p.desc = desc;
        // A term past any the lost lineage could have reached: a replica
        // of it (recreated from a tombstone with its old term) never
        // deposes the new leader.
        let term_floor = generation(conf_ver) << TERM_GENERATION_SHIFT;
        if p.raft.raft.term < term_floor {
            p.raft.raft.become_follower(term_floor, raft::INVALID_ID);
        }
        p.wake();
        let campaign = p.raft.campaign();
        let mut first_proposed = false;
        if let (Some(cmd), true) = (first, p.is_leader()) {
            first_proposed = p.raft.propose(vec![], cmd).is_ok();
        }
        p.after_raft_call();
        let promotion =
            Promotion { range_id, applied_index, last_index, commit_index, last_term, conf_ver_before, conf_ver, first_proposed };
        info!(
            node,
            range = range_id,
            conf_ver,
            last_index,
            applied = applied_index,
            term = p.raft.raft.term,
            first_proposed,
            "read replica promoted by force: the only voter of the range (--accept-data-loss)"
        );
        if let Err(e) = campaign {
            // The configuration is stored; the replica campaigns when its
            // election timeout runs out.
            warn!(range = range_id, "campaigning after the forced promotion: {e}");
        }
        Ok(promotion)
    }

    /// A message of `conf_ver`'s generation came for `range_id`, whose
    /// replica here belongs to an older lineage (a forced promotion
    /// superseded it): that replica is destroyed, so that a fresh one is
    /// created and filled by snapshot.
    pub(super) fn supersede_for(&mut self, range_id: u64, conf_ver: u64) -> Superseding {
        let Some(p) = self.peers.get(&range_id) else { return Superseding::None };
        // (Epoch 0: a replica created empty, of no lineage yet.)
        let local = p.desc.epoch.conf_ver;
        if local == 0 || generation(local) >= generation(conf_ver) {
            return Superseding::None;
        }
        info!(
            node = self.cfg.node_id,
            range = range_id,
            local_conf_ver = local,
            conf_ver,
            "a forced promotion superseded this replica's lineage: destroying it to be filled afresh"
        );
        match self.destroy_replica(range_id, Retirement::Superseded { conf_ver }) {
            Ok(Destroyed::Done) => Superseding::Destroyed,
            Ok(Destroyed::Later) => Superseding::Later,
            Err(e) => {
                warn!(range = range_id, "destroying a superseded replica: {e}");
                Superseding::Later
            }
        }
    }

    /// Whether a snapshot of `range_id` was accepted here and not moved
    /// into place yet.
    fn incoming_accepted(&self, range_id: u64) -> bool {
        self.incoming.is_accepted(range_id)
    }
}

/// What [`Store::supersede_for`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Superseding {
    /// No replica of an older lineage here.
    None,
    /// It was destroyed (a message's staged snapshot data with it).
    Destroyed,
    /// It is being destroyed: drop the message (its sender sends again).
    Later,
}

fn single(change_type: ConfChangeType, node_id: u64) -> ConfChangeSingle {
    let mut c = ConfChangeSingle::default();
    c.set_change_type(change_type);
    c.node_id = node_id;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_tell_lineages_apart() {
        assert_eq!(generation(7), 0);
        assert_eq!(next_generation(7), 1 << 32);
        assert_eq!(generation(next_generation(7)), 1);
        assert_eq!(next_generation((1 << 32) + 5), 2 << 32);
        assert_eq!(before_generation((1 << 32) + 5), (1 << 32) - 1);
        assert_eq!(before_generation(3), 0);
    }
}
