//! One range replica on this node: its `RawNode`, state machine and the
//! requests waiting on it.

use std::collections::{BTreeMap, VecDeque};

use meridian_storage::{PeerStorage, RangeDescriptor, ReplicaDesc, ReplicaRole};
use raft::prelude::ConfState;
use raft::{RawNode, StateRole};

use crate::error::RaftstoreError;
use crate::state_machine::StateMachine;
use crate::store::RequestId;

/// A proposal waiting for its entry to be applied.
pub(crate) struct Proposal {
    pub index: u64,
    pub term: u64,
    /// `None` for the store's own proposals (leaving a joint config).
    pub id: Option<RequestId>,
}

/// A proposal accepted by `Store::propose`, handed to raft at the start
/// of the next poll together with the rest of the round's: one `MsgPropose`
/// per range and round (bounded in bytes), so the leader appends them at
/// once and replicates them in one `MsgAppend` per follower instead of one
/// per proposal.
pub(crate) struct Staged {
    pub id: RequestId,
    pub command: Vec<u8>,
    /// May go to the leader from a follower.
    pub forward: bool,
}

/// When and to whom a proposal was handed over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Forwarded {
    pub at_tick: u64,
    pub leader: u64,
}

/// Names the store (node and a nonce drawn at every start) and request
/// that proposed an entry from a follower; it travels in the entry's
/// `context`. The nonce mixes the durable incarnation with the store's
/// seed (OS entropy in production), so a tag never matches a request of an
/// earlier life of the store, even one whose data directory was wiped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProposalTag {
    pub node_id: u64,
    pub nonce: u64,
    pub id: RequestId,
}

impl ProposalTag {
    const LEN: usize = 24;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&self.node_id.to_be_bytes());
        out.extend_from_slice(&self.nonce.to_be_bytes());
        out.extend_from_slice(&self.id.0.to_be_bytes());
        out
    }

    /// `None` for an entry without a tag (proposed on the leader, or by an
    /// older version) or with a context of another shape.
    pub fn decode(ctx: &[u8]) -> Option<ProposalTag> {
        if ctx.len() != Self::LEN {
            return None;
        }
        let word = |i: usize| u64::from_be_bytes(ctx[i * 8..(i + 1) * 8].try_into().expect("8 bytes"));
        Some(ProposalTag { node_id: word(0), nonce: word(1), id: RequestId(word(2)) })
    }
}

/// A linearizable read waiting for its read index to be applied.
pub(crate) struct PendingRead {
    pub id: RequestId,
    pub query: Vec<u8>,
    pub issued_tick: u64,
    pub retries: u32,
    pub index: Option<u64>,
}

/// A Ready handed back to raft-rs with `advance_append_async`: written to
/// the engine, durable once a sync covers `seq`. Until then raft-rs does
/// not count its entries as persisted and its messages stay here (a
/// follower's acknowledgements and votes must follow the fsync).
pub(crate) struct UnsyncedReady {
    pub number: u64,
    pub seq: u64,
    pub messages: Vec<raft::prelude::Message>,
}

pub(crate) struct Peer {
    pub raft: RawNode<PeerStorage>,
    /// Readies written but not known durable yet, in ready order.
    pub unsynced: VecDeque<UnsyncedReady>,
    pub sm: Box<dyn StateMachine>,
    pub desc: RangeDescriptor,
    /// Accepted this round, not yet handed to raft.
    pub staged: Vec<Staged>,
    /// Matched by (index, term) when applied; ordered by index. Proposed
    /// while leading, or forwarded and since seen in this replica's log.
    pub proposals: VecDeque<Proposal>,
    /// Proposed while following: raft-rs forwarded them to the leader, so
    /// their index is unknown here. Each entry carries a [`ProposalTag`]
    /// naming this store; when the entry reaches this replica's log it
    /// moves to `proposals` with its (index, term), and resolves like a
    /// leader's proposal. Keyed by request id (issue order).
    pub forwarded: BTreeMap<RequestId, Forwarded>,
    pub reads: VecDeque<PendingRead>,
    /// Consecutive ticks with nothing to do (leader side of quiescence).
    pub idle_ticks: u64,
    /// Not ticking until woken by a message, a request or a dead leader.
    pub quiesced: bool,
    /// The next heartbeats this leader sends announce quiescence.
    pub announce_quiesce: bool,
    /// Not in the range's configuration as of this epoch: it applied its
    /// own removal, or a member told it so. A dormant replica does not
    /// tick (no campaigns) and serves nothing, but keeps its log and data:
    /// replica ids are node ids, so a leader that added this node back may
    /// already count on entries it acknowledged, and deleting them could
    /// lose committed writes. A message from a later epoch wakes it.
    pub dormant_at: Option<u64>,
    /// Seeded generator for this replica's election timeouts.
    pub rng_state: u64,
    /// Tick at which this replica was first seen holding proposals while
    /// not leading (see `Store::tick`).
    pub orphaned_since: Option<u64>,
    /// The applied index when `orphaned_since` was set: progress restarts
    /// the clock.
    pub orphan_applied: u64,
    /// Ticks since a raft message for this range was last stepped.
    pub silent_ticks: u64,
}

/// SplitMix64: a tiny, well-mixed hash for deriving per-replica choices
/// from the store's seed.
pub(crate) fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// An election timeout in `[lo, lo + lo / 2)` ticks from `random`; below 4
/// ticks, raft-rs's own `[lo, 2 * lo)`, so that short timeouts still vary.
///
/// raft-rs draws from `[lo, 2 * lo)`. Half that spread keeps candidates
/// apart just as well here — with pre-vote, the first follower to time out
/// wins unless another fires within one message delay of it — and takes
/// the slowest quarter off the time a range goes without a leader after its
/// leader dies: at 10 ticks of the default 50 ms, the first of two
/// followers times out after at most 0.75 s instead of 1 s.
pub fn election_timeout_draw(lo: usize, random: u64) -> usize {
    let spread = if lo < 4 { lo.max(1) } else { lo / 2 };
    lo + (random % spread as u64) as usize
}

impl Peer {
    /// raft-rs re-draws the election timeout from a thread-local RNG
    /// whenever it resets its election timer. Replace each draw with one
    /// from this replica's seeded generator, so a simulated run replays
    /// exactly from its seed while timeouts still vary between elections
    /// (fixed timeouts can livelock two candidates with equal values).
    pub fn redraw_election_timeout(&mut self) {
        self.rng_state = self.rng_state.wrapping_add(1);
        let t = election_timeout_draw(self.raft.raft.election_timeout(), splitmix(self.rng_state));
        self.raft.raft.set_randomized_election_timeout(t);
    }

    /// Call after every `step`, `tick` or `campaign`: a zero election
    /// counter means raft-rs may just have reset (and re-drawn) the timer.
    pub fn after_raft_call(&mut self) {
        if self.raft.raft.election_elapsed == 0 {
            self.redraw_election_timeout();
        }
    }

    pub fn range_id(&self) -> u64 {
        self.desc.range_id
    }

    pub fn is_leader(&self) -> bool {
        self.raft.raft.state == StateRole::Leader
    }

    /// Where a request refused here should go: the leader, or — on a
    /// leader handing over, which refuses proposals meanwhile — the node it
    /// hands over to (naming itself would only bring the request back).
    pub fn leader_hint(&self) -> Option<u64> {
        let l = self.raft.raft.lead_transferee.unwrap_or(self.raft.raft.leader_id);
        (l != 0).then_some(l)
    }

    pub fn pending(&self) -> usize {
        self.staged.len() + self.proposals.len() + self.forwarded.len() + self.reads.len()
    }

    pub fn wake(&mut self) {
        self.quiesced = false;
        self.announce_quiesce = false;
        self.idle_ticks = 0;
    }

    /// Leaves a joint configuration explicitly, once the entering entry is
    /// applied (raft-rs ignores a conf change proposed while another is
    /// pending, so this must run after `advance_apply`).
    pub fn maybe_leave_joint(&mut self) {
        if self.dormant_at.is_some()
            || !self.is_leader()
            || self.raft.store().raft_state().conf_state.voters_outgoing.is_empty()
            || self.raft.raft.has_pending_conf()
        {
            return;
        }
        let before = self.raft.raft.raft_log.last_index();
        if self.raft.propose_conf_change(vec![], raft::prelude::ConfChangeV2::default()).is_ok() {
            let index = self.raft.raft.raft_log.last_index();
            if index > before {
                self.proposals.push_back(Proposal { index, term: self.raft.raft.term, id: None });
            }
        }
    }

    /// A leader is idle when nothing is pending and every replica has the
    /// whole log, so going quiet loses nothing.
    pub fn leader_is_idle(&self) -> bool {
        if !self.is_leader() || self.pending() > 0 {
            return false;
        }
        let log = &self.raft.raft.raft_log;
        let last = log.last_index();
        log.committed == last && self.raft.raft.prs().iter().all(|(_, pr)| pr.matched == last)
    }

    /// Updates the descriptor after a membership change took effect.
    pub fn set_conf(&mut self, cs: &ConfState) {
        let mut replicas: Vec<ReplicaDesc> = Vec::new();
        let mut add = |node_id: u64, role: ReplicaRole| {
            if !replicas.iter().any(|r| r.node_id == node_id) {
                replicas.push(ReplicaDesc { node_id, role });
            }
        };
        for &v in cs.voters.iter().chain(&cs.voters_outgoing) {
            add(v, ReplicaRole::Voter);
        }
        for &l in cs.learners.iter().chain(&cs.learners_next) {
            add(l, ReplicaRole::Learner);
        }
        replicas.sort_by_key(|r| r.node_id);
        self.desc.replicas = replicas;
        self.desc.epoch.conf_ver += 1;
    }

    /// Refuses requests while dormant: a removed replica's data stopped
    /// following the range.
    pub fn serving(&self) -> Result<(), RaftstoreError> {
        match self.dormant_at {
            Some(_) => Err(RaftstoreError::RangeRemoved { range_id: self.desc.range_id }),
            None => Ok(()),
        }
    }

    /// Back in the configuration (added again): ticks and serves again.
    pub fn rejoin(&mut self) {
        self.dormant_at = None;
        self.wake();
    }

    pub fn in_conf(cs: &ConfState, node_id: u64) -> bool {
        cs.voters.contains(&node_id)
            || cs.voters_outgoing.contains(&node_id)
            || cs.learners.contains(&node_id)
            || cs.learners_next.contains(&node_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_timeouts_cover_half_the_base_above_it() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1_000 {
            seen.insert(election_timeout_draw(10, splitmix(i)));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![10, 11, 12, 13, 14]);
        // Short bases keep raft-rs's range, so they still vary.
        let three: std::collections::BTreeSet<_> = (0..100).map(|i| election_timeout_draw(3, splitmix(i))).collect();
        assert_eq!(three.into_iter().collect::<Vec<_>>(), vec![3, 4, 5]);
        let four: std::collections::BTreeSet<_> = (0..100).map(|i| election_timeout_draw(4, splitmix(i))).collect();
        assert_eq!(four.into_iter().collect::<Vec<_>>(), vec![4, 5]);
    }
}
