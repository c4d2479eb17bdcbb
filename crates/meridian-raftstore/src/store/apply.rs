//! Applying committed entries: each goes to the range's state machine
//! (normal entries) or its configuration (conf changes, applied by
//! `Peer::apply_conf_change_entry`), staged into the round's write batch,
//! and answers the proposal it settles (or the ones it shows dropped).

use std::collections::BTreeMap;

use meridian_storage::{keys, Cf, PeerStorage, ReplicaRole, WriteBatch};
use raft::prelude::{Entry, EntryType};
use tracing::{debug, info};

/// Campaigns the parent's leader makes for a split-off range, and the ticks
/// between them.
const SPLIT_CAMPAIGN_ATTEMPTS: u32 = 3;
const SPLIT_CAMPAIGN_EVERY_TICKS: u64 = 2;

use super::{AppliedEntry, Completion, Store, INITIAL_LOG_INDEX};
use crate::error::RaftstoreError;
use crate::state_machine::{ApplyContext, SplitOff};

impl Store {
    /// Applies committed entries of one range. `overlay` holds what earlier
    /// entries staged in `batch` (not yet in the engine), and must be
    /// shared by every call for the range that stages into the same batch.
    pub(super) fn apply_entries(
        &mut self,
        range_id: u64,
        entries: Vec<Entry>,
        batch: &mut WriteBatch,
        overlay: &mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        done: &mut Vec<Completion>,
    ) -> Result<(), RaftstoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let node_id = self.cfg.node_id;
        let mut splits = Vec::new();
        let p = self.peers.get_mut(&range_id).expect("caller checked");
        let mut applied = p.raft.store().apply_state();
        for e in entries {
            if e.index <= applied.applied_index {
                continue;
            }
            let mut response = Vec::new();
            match e.get_entry_type() {
                EntryType::EntryNormal => {
                    if !e.data.is_empty() {
                        let namespace_id = p.desc.namespace_id;
                        let conf = p.raft.raft.prs().conf().to_conf_state();
                        let mut voters = conf.voters.clone();
                        voters.sort_unstable();
                        let joint = !conf.voters_outgoing.is_empty();
                        // Proposals are in index order: only those up to this
                        // entry can be waiting for it.
                        let answered = p
                            .proposals
                            .iter()
                            .take_while(|x| x.index <= e.index)
                            .any(|x| x.id.is_some() && x.index == e.index && x.term == e.term);
                        let mut ctx = ApplyContext::new(range_id, &*self.engine, batch, overlay, e.term)
                            .for_namespace(namespace_id)
                            .with_conf(voters, joint)
                            .with_answer(answered);
                        response = p.sm.apply(&mut ctx, e.index, &e.data);
                        // The parent's leader campaigns for the new range at
                        // once (its peers apply the same entry about now), so
                        // it serves without waiting out an election timeout.
                        let leading = p.is_leader();
                        splits.extend(ctx.split.drain(..).map(|s| (s, leading)));
                        self.metrics.entries_applied += 1;
                    }
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    response = p.apply_conf_change_entry(&e, node_id, batch, done);
                }
            }
            applied.applied_index = e.index;
            applied.applied_term = e.term;
            while let Some(front) = p.proposals.front() {
                if front.index > e.index {
                    break;
                }
                let x = p.proposals.pop_front().expect("front");
                let Some(id) = x.id else { continue };
                let result = if x.index == e.index && x.term == e.term {
                    Ok((e.index, std::mem::take(&mut response)))
                } else {
                    self.metrics.proposals_dropped += 1;
                    Err(RaftstoreError::ProposalDropped { range_id })
                };
                done.push(Completion { id, range_id, result });
            }
            if self.cfg.record_applied {
                self.applied_log.push(AppliedEntry { range_id, index: e.index, term: e.term, data: e.data.to_vec() });
            }
        }
        p.raft.mut_store().set_applied(applied.applied_index, applied.applied_term, batch);
        for (split, campaign) in splits {
            self.stage_split(range_id, split, campaign, batch, done);
        }
        Ok(())
    }

    /// Writes a range split off `parent` into `batch` (its raft state at
    /// [`INITIAL_LOG_INDEX`], its descriptor and its namespace's records)
    /// and queues its replica to be opened once the batch is written —
    /// unless this node is not among its replicas, or already has an
    /// initialized replica of it (filled by the new range's leader before
    /// this node applied the split: writing the split's state under it
    /// could move it back). An uninitialized one (created for a vote or a
    /// leader's first message, no log, no data) is initialized by the
    /// split, keeping the term and vote it recorded.
    fn stage_split(&mut self, parent: u64, split: SplitOff, campaign: bool, batch: &mut WriteBatch, done: &mut Vec<Completion>) {
        let desc = split.desc;
        let range_id = desc.range_id;
        if desc.replica(self.cfg.node_id).is_none() || self.split_pending.iter().any(|(d, _)| d.range_id == range_id) {
            return;
        }
        if self.tombstones.contains_key(&range_id) {
            // Its replica here was filled by its own leader, then moved away
            // and destroyed (or the range retired): this late split must not
            // bring back its first configuration.
            info!(node = self.cfg.node_id, range = range_id, parent, "split-off range was destroyed here; not recreated");
            return;
        }
        let voters: Vec<u64> = desc.replicas.iter().filter(|r| r.role == ReplicaRole::Voter).map(|r| r.node_id).collect();
        match self.peers.get(&range_id) {
            None => {
                PeerStorage::bootstrap_at(batch, &desc, voters, INITIAL_LOG_INDEX);
                self.metrics.splits_applied += 1;
            }
            Some(p) => {
                let cs = p.raft.raft.prs().conf().to_conf_state();
                let empty = cs.voters.is_empty() && cs.learners.is_empty() && p.raft.raft.raft_log.last_index() == 0;
                if !empty || p.installing.is_some() || p.raft.raft.raft_log.unstable.snapshot.is_some() {
                    info!(node = self.cfg.node_id, range = range_id, parent, "split-off range already has a replica here; left to raft");
                    return;
                }
                let (term, vote) = (p.raft.raft.term, p.raft.raft.vote);
                PeerStorage::bootstrap_over(batch, &desc, voters, INITIAL_LOG_INDEX, term, vote);
                // Gone now, so this round stages nothing more of it (its
                // state would overwrite the split's in the batch); whoever
                // waits on it is answered (and retries on its successor).
                if let Some(mut old) = self.peers.remove(&range_id) {
                    done.extend(old.hand_back_requests());
                }
                self.metrics.splits_applied += 1;
                self.metrics.splits_over_uninitialized += 1;
                info!(node = self.cfg.node_id, range = range_id, parent, term, vote, "split initializes the replica created for a message");
            }
        }
        for (k, v) in split.records {
            batch.put(Cf::Data, keys::data_key(desc.namespace_id, &k), v);
        }
        info!(node = self.cfg.node_id, range = range_id, parent, namespace = desc.namespace_id, "range split off");
        self.split_pending.push((desc, campaign));
    }

    /// Campaigns for split-off ranges whose time came and that still have
    /// no leader (called each tick); each is tried a few ticks apart, then
    /// left to the election timeouts.
    pub(super) fn run_split_campaigns(&mut self) {
        let now = self.now_tick;
        let mut again = Vec::new();
        for (range_id, due, left) in std::mem::take(&mut self.split_campaigns) {
            if due > now {
                again.push((range_id, due, left));
                continue;
            }
            let leaderless = self.peers.get(&range_id).is_some_and(|p| p.raft.raft.leader_id == 0);
            if !leaderless {
                continue;
            }
            if let Err(e) = self.campaign(range_id) {
                debug!(node = self.cfg.node_id, range = range_id, "campaign for a split-off range: {e}");
            }
            if left > 1 {
                again.push((range_id, now + SPLIT_CAMPAIGN_EVERY_TICKS, left - 1));
            }
        }
        self.split_campaigns = again;
    }

    /// Opens the replicas of ranges split off in the round whose batch was
    /// just written.
    pub(super) fn open_split_ranges(&mut self) -> Result<(), RaftstoreError> {
        for (desc, campaign) in std::mem::take(&mut self.split_pending) {
            for r in &desc.replicas {
                if r.node_id != self.cfg.node_id {
                    self.known_nodes.insert(r.node_id);
                }
            }
            let range_id = desc.range_id;
            let storage = PeerStorage::open(self.engine.clone(), range_id)?;
            self.add_peer(desc, storage)?;
            if campaign {
                // From the next tick, when its peers have likely applied the
                // split too (a vote for a range a node does not have yet is
                // refused, and the election would wait out its timeout).
                self.split_campaigns.push((range_id, self.now_tick + 1, SPLIT_CAMPAIGN_ATTEMPTS));
            }
        }
        Ok(())
    }
}
