//! One range replica on this node: its `RawNode`, state machine and the
//! requests waiting on it.
//!
//! Work that touches one range alone is a method of [`Peer`] here (ticks,
//! the parts of a Ready that are the range's own, conf changes, dormancy,
//! compaction, answering reads, the invariant check); the `Store` (in
//! `store/`) drives it across ranges and owns what ranges share: the
//! outbox, completions, metrics, the engine and the sync sequence.

use std::collections::{BTreeMap, VecDeque};

use meridian_codes::seeded::splitmix64;
use meridian_storage::{keys, Cf, Engine, PeerStorage, RangeDescriptor, ReplicaDesc, ReplicaRole, WriteBatch};
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, ReadState, StateRole};
use tracing::{info, warn};

use crate::config::StoreConfig;
use crate::error::RaftstoreError;
use crate::state_machine::StateMachine;
use crate::store::{Completion, RequestId};

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

/// A read-index context: the store's incarnation and the request id.
pub(crate) fn read_ctx(incarnation: u64, id: RequestId) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&incarnation.to_be_bytes());
    ctx.extend_from_slice(&id.0.to_be_bytes());
    ctx
}

fn parse_read_ctx(ctx: &[u8]) -> Option<(u64, u64)> {
    let inc = u64::from_be_bytes(ctx.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(ctx.get(8..16)?.try_into().ok()?);
    (ctx.len() == 16).then_some((inc, id))
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
    /// The term in which reads became servable here (a leader known, and
    /// if it is this node, an entry of its term committed): reads raft-rs
    /// dropped before then are sent again at once, not at their retry.
    pub reads_open_term: u64,
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
    /// `Store::destroy_replica` deletes it once a committed configuration
    /// at this epoch or later is known to leave it out.
    pub dormant_at: Option<u64>,
    /// Seeded generator for this replica's election timeouts.
    pub rng_state: u64,
    /// Tick at which this replica was first seen holding proposals while
    /// not leading (see `Peer::settle_orphans`).
    pub orphaned_since: Option<u64>,
    /// The applied index when `orphaned_since` was set: progress restarts
    /// the clock.
    pub orphan_applied: u64,
    /// Ticks since a raft message for this range was last stepped.
    pub silent_ticks: u64,
    /// Moving a received snapshot's staged data into place, into this
    /// namespace: not polled for Readies and serving nothing until done
    /// (`Store::continue_installs`).
    pub installing: Option<u64>,
    /// The engine view the snapshot built last reads from (leader side).
    pub pinned: Option<crate::store::PinnedSnapshot>,
    /// A witness replica (its node is a witness: [`crate::StoreConfig::witness`]).
    pub witness: bool,
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

/// A witness's election timeout: the draw of [`election_timeout_draw`]
/// moved up by one base timeout, in `[2 * lo, 3 * lo)`. A full voter
/// (drawing from below `2 * lo`) nearly always campaigns first; the witness
/// still grants votes once `lo` ticks pass without a leader (raft-rs's
/// lease check uses the base timeout), so it delays no failover.
pub fn witness_timeout_draw(lo: usize, random: u64) -> usize {
    lo + election_timeout_draw(lo, random)
}

/// Legacy single conf changes (from etcd-era tooling) as a V2 change.
fn legacy_to_v2(c: ConfChange) -> ConfChangeV2 {
    let mut single = raft::prelude::ConfChangeSingle::default();
    single.set_change_type(c.get_change_type());
    single.node_id = c.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.set_changes(vec![single].into());
    v2.context = c.context;
    v2
}

impl Peer {
    /// raft-rs re-draws the election timeout from a thread-local RNG
    /// whenever it resets its election timer. Replace each draw with one
    /// from this replica's seeded generator, so a simulated run replays
    /// exactly from its seed while timeouts still vary between elections
    /// (fixed timeouts can livelock two candidates with equal values).
    pub fn redraw_election_timeout(&mut self) {
        self.rng_state = self.rng_state.wrapping_add(1);
        let (lo, r) = (self.raft.raft.election_timeout(), splitmix64(self.rng_state));
        let t = if self.witness { witness_timeout_draw(lo, r) } else { election_timeout_draw(lo, r) };
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

    /// Where a witness sends a request: the leader if it is a full voter,
    /// else the full voter it hands leadership to (or would).
    pub fn full_voter_hint(&self) -> Option<u64> {
        let me = self.raft.raft.id;
        let leader = self.raft.raft.leader_id;
        if leader != 0 && leader != me {
            return Some(leader);
        }
        self.raft.raft.lead_transferee.or_else(|| self.handoff_target())
    }

    /// The voter a witness leader hands leadership to: among the other
    /// voters it heard from lately, the one whose log matches furthest (the
    /// lowest id on a tie). The store does not know which other voters are
    /// witnesses: the placement driver keeps one witness per range, but
    /// with two (founding members, until the driver moves them off) this
    /// may pick the other, which then hands leadership on in turn.
    pub fn handoff_target(&self) -> Option<u64> {
        let me = self.raft.raft.id;
        let voters = self.raft.raft.prs().conf().voters().ids();
        self.raft
            .raft
            .prs()
            .iter()
            .filter(|(id, pr)| **id != me && pr.recent_active && voters.contains(**id))
            .max_by_key(|(id, pr)| (pr.matched, std::cmp::Reverse(**id)))
            .map(|(id, _)| *id)
    }

    /// On a witness leading the range: hands leadership to
    /// [`Peer::handoff_target`] unless a transfer is under way (raft-rs
    /// sends the target what it lacks first, then `TimeoutNow`; a transfer
    /// that does not finish within an election timeout is dropped and
    /// started again here). True when a transfer started.
    pub fn witness_handoff(&mut self) -> bool {
        if !self.witness || !self.is_leader() || self.raft.raft.lead_transferee.is_some() {
            return false;
        }
        let Some(to) = self.handoff_target() else { return false };
        self.raft.transfer_leader(to);
        true
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

    /// True if raft-rs holds an accepted snapshot at `index` that no Ready
    /// has handed out yet.
    pub fn holds_pending_snapshot(&self, index: u64) -> bool {
        self.raft.raft.raft_log.unstable.snapshot.as_ref().is_some_and(|s| s.get_metadata().index == index)
    }

    /// Refuses requests while dormant (a removed replica's data stopped
    /// following the range) or installing a snapshot (its data is not all
    /// in place).
    pub fn serving(&self) -> Result<(), RaftstoreError> {
        if self.witness {
            // Nothing here to read or answer from: a full voter serves.
            return Err(RaftstoreError::NotLeader { range_id: self.desc.range_id, leader_hint: self.full_voter_hint() });
        }
        if self.dormant_at.is_some() {
            return Err(RaftstoreError::RangeRemoved { range_id: self.desc.range_id });
        }
        if self.installing.is_some() {
            return Err(RaftstoreError::SnapshotInstalling { range_id: self.desc.range_id });
        }
        Ok(())
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

    /// Puts a replica that is no longer in its range's configuration (as of
    /// `conf_ver`) to sleep; answers what it still held. Safe between `ready()`
    /// and `advance_append`: stepping down creates no messages and changes
    /// neither term nor vote.
    pub fn go_dormant(&mut self, conf_ver: u64) -> Vec<Completion> {
        let range_id = self.desc.range_id;
        self.dormant_at = Some(conf_ver);
        if self.raft.raft.state == StateRole::Leader {
            // raft-rs keeps a removed leader leading without its own progress
            // entry (the next persist would panic), and a cut-off leader told
            // of its removal must stop serving leases and reads. Step down: the
            // voters left elect a leader among them.
            let term = self.raft.raft.term;
            self.raft.raft.become_follower(term, raft::INVALID_ID);
        }
        // Its in-flight proposals may still commit on the others; its reads
        // cannot be answered.
        let mut done = Vec::new();
        for s in self.staged.drain(..) {
            done.push(Completion { id: s.id, range_id, result: Err(RaftstoreError::RangeRemoved { range_id }) });
        }
        let forwarded = std::mem::take(&mut self.forwarded).into_keys();
        for x in self.proposals.drain(..).filter_map(|x| x.id).chain(forwarded) {
            done.push(Completion::unknown(x, range_id));
        }
        for r in self.reads.drain(..) {
            done.push(Completion { id: r.id, range_id, result: Err(RaftstoreError::RangeRemoved { range_id }) });
        }
        self.sm.removed(range_id);
        done
    }

    /// Before this leader appends at index `from`: the proposals it still
    /// holds at `from` or beyond were appended when it led before, and
    /// their entries are gone from its log (a leader that took over wrote
    /// its own there, and this one took them). They never committed — a
    /// leader's log holds every committed entry — so they are answered
    /// `ProposalDropped` now, which keeps the queue in index order (the
    /// answers of the entries applied later rely on it).
    pub fn drop_superseded(&mut self, from: u64, out: &mut Vec<Completion>) {
        let range_id = self.desc.range_id;
        let at = self.proposals.partition_point(|x| x.index < from);
        for x in self.proposals.drain(at..) {
            if let Some(id) = x.id {
                out.push(Completion { id, range_id, result: Err(RaftstoreError::ProposalDropped { range_id }) });
            }
        }
    }

    /// Answers every request this replica holds as it is replaced by
    /// another (a split initializing it): ones never proposed and reads
    /// with a retryable refusal, proposals in flight as unknown.
    pub fn hand_back_requests(&mut self) -> Vec<Completion> {
        let range_id = self.desc.range_id;
        let retry = || Err(RaftstoreError::NotLeader { range_id, leader_hint: None });
        let mut done: Vec<Completion> = self.staged.drain(..).map(|s| Completion { id: s.id, range_id, result: retry() }).collect();
        let forwarded = std::mem::take(&mut self.forwarded).into_keys();
        for x in self.proposals.drain(..).filter_map(|x| x.id).chain(forwarded) {
            done.push(Completion::unknown(x, range_id));
        }
        done.extend(self.reads.drain(..).map(|r| Completion { id: r.id, range_id, result: retry() }));
        done
    }

    // ---- ticks (driven by `Store::tick`) ---------------------------------

    /// Counts a tick without raft traffic for the range; returns the probes
    /// a replica that does not vote sends when the range stays silent.
    pub fn silence_probes(&mut self, node_id: u64, dead_after: u64) -> Option<Vec<Message>> {
        // A learner, or a replica outside its own configuration, never
        // campaigns. Removed (again, after being added back) before it
        // caught up, it would wait forever for a leader that no longer
        // writes to it, serving stale data. So when nothing has come for
        // the range in a while it asks the voters it knows: a member at
        // a later epoch answers with a removed hint (it goes dormant), a
        // live leader simply carries on. The probe is a term-0
        // heartbeat response, which raft-rs ignores everywhere but on
        // the leader, where it only marks the replica active.
        self.silent_ticks += 1;
        let cs = &self.raft.store().raft_state().conf_state;
        let initialized = !cs.voters.is_empty() || !cs.learners.is_empty();
        let votes = cs.voters.contains(&node_id) || cs.voters_outgoing.contains(&node_id);
        if initialized && !votes && self.silent_ticks > dead_after && self.silent_ticks % dead_after == 1 {
            let msgs: Vec<Message> = cs
                .voters
                .iter()
                .filter(|&&v| v != node_id)
                .map(|&to| {
                    let mut m = Message::default();
                    m.set_msg_type(MessageType::MsgHeartbeatResponse);
                    m.from = node_id;
                    m.to = to;
                    m
                })
                .collect();
            return Some(msgs);
        }
        None
    }

    /// Ticks raft; a leader with nothing to do for `quiesce_after_ticks`
    /// ticks goes quiet.
    pub fn tick_raft(&mut self, quiesce_after_ticks: u64) {
        self.raft.tick();
        self.after_raft_call();
        // A leader elected while the range was joint finishes the change.
        self.maybe_leave_joint();
        if self.leader_is_idle() {
            self.idle_ticks += 1;
            if self.idle_ticks >= quiesce_after_ticks {
                // One last heartbeat, flagged, tells followers to stop
                // ticking too.
                self.announce_quiesce = true;
                self.raft.ping();
                self.quiesced = true;
            }
        } else {
            self.idle_ticks = 0;
        }
    }

    /// Answers, into `out`, the proposals a lost leadership stranded for
    /// more than `orphan_ticks` ticks without progress.
    pub fn settle_orphans(&mut self, now: u64, orphan_ticks: u64, out: &mut Vec<Completion>) {
        // Proposals left behind by a lost leadership are normally settled
        // when their index is applied (same term: done; other term:
        // dropped). If the log was cut short of them they would wait
        // for an index that may never come, so after a while they are
        // answered "outcome unknown", as etcd answers "leader changed".
        let applied = self.raft.raft.raft_log.applied;
        if self.is_leader() || self.proposals.is_empty() {
            self.orphaned_since = None;
        } else if self.orphaned_since.is_none() || self.orphan_applied != applied {
            // Applying makes progress towards them: restart the clock.
            self.orphaned_since = Some(now);
            self.orphan_applied = applied;
        } else {
            let since = self.orphaned_since.unwrap_or(now);
            if now - since > orphan_ticks {
                let range_id = self.desc.range_id;
                for x in self.proposals.drain(..) {
                    if let Some(id) = x.id {
                        out.push(Completion::unknown(id, range_id));
                    }
                }
                self.orphaned_since = None;
            }
        }
    }

    /// Answers, into `out`, the forwarded proposals that will not come back;
    /// returns how many.
    pub fn expire_forwarded(&mut self, now: u64, forward_timeout: u64, out: &mut Vec<Completion>) -> u64 {
        // Forwarded proposals the leader dropped (it lost leadership or
        // was handing it over) never come back as entries. Those handed
        // to a leader this replica no longer follows are answered at
        // once, as etcd answers "leader changed" (their fate is
        // unknown: the old leader may have replicated them); the rest
        // after the forward timeout.
        let range_id = self.desc.range_id;
        let leader = self.raft.raft.leader_id;
        let before = self.forwarded.len();
        self.forwarded.retain(|&id, f| {
            let keep = f.leader == leader && now.saturating_sub(f.at_tick) < forward_timeout;
            if !keep {
                out.push(Completion::unknown(id, range_id));
            }
            keep
        });
        (before - self.forwarded.len()) as u64
    }

    /// Re-sends, every `retry` ticks, the read requests raft-rs may have
    /// dropped; after `max` retries a read times out (its range and id go
    /// to `timeouts`).
    pub fn retry_reads(&mut self, now: u64, retry: u64, max: u32, incarnation: u64, timeouts: &mut Vec<(u64, RequestId)>) {
        // Re-send read requests raft-rs may have dropped.
        let mut i = 0;
        while i < self.reads.len() {
            let r = &mut self.reads[i];
            if r.index.is_none() && now.saturating_sub(r.issued_tick) >= retry {
                if r.retries >= max {
                    let r = self.reads.remove(i).expect("index in bounds");
                    timeouts.push((self.desc.range_id, r.id));
                    continue;
                }
                r.retries += 1;
                r.issued_tick = now;
                self.raft.read_index(read_ctx(incarnation, r.id));
            }
            i += 1;
        }
    }

    /// Sends again at once the reads raft-rs may have dropped while no
    /// leader was known or the leader had not committed in its term (a new
    /// range, an election), the first time reads can be served in a term.
    pub fn reopen_reads(&mut self, now: u64, incarnation: u64) {
        let r = &self.raft.raft;
        let open = r.leader_id != 0 && (r.state != StateRole::Leader || r.commit_to_current_term());
        if !open || self.reads_open_term == r.term {
            return;
        }
        self.reads_open_term = r.term;
        let pending: Vec<RequestId> = self
            .reads
            .iter_mut()
            .filter(|x| x.index.is_none())
            .map(|x| {
                x.issued_tick = now;
                x.id
            })
            .collect();
        for id in pending {
            self.raft.read_index(read_ctx(incarnation, id));
        }
    }

    // ---- a Ready (driven by `Store::poll`) -------------------------------

    /// Stages the install of a snapshot a Ready carries into `batch`, and
    /// takes the span, epoch and replicas it describes.
    pub fn stage_snapshot(&mut self, snap: &Snapshot, batch: &mut WriteBatch) -> Result<(), RaftstoreError> {
        let desc = self.raft.mut_store().apply_snapshot(snap, batch)?;
        self.desc.namespace_id = desc.namespace_id;
        self.desc.start = desc.start;
        self.desc.end = desc.end;
        self.desc.epoch = desc.epoch.max(self.desc.epoch);
        self.desc.replicas = desc.replicas;
        Ok(())
    }

    /// Moves this store's forwarded proposals found among a Ready's new
    /// `entries` (tagged by node `node_id`, nonce `nonce`) to `proposals`.
    pub fn adopt_forwarded(&mut self, entries: &[Entry], node_id: u64, nonce: u64) {
        // This store's forwarded proposals, now in the log: from here on
        // they resolve by (index, term), definitely (an entry is
        // appended once, so another entry at its index means it is gone).
        if !self.forwarded.is_empty() {
            for e in entries {
                let Some(tag) = ProposalTag::decode(&e.context) else { continue };
                if tag.node_id != node_id || tag.nonce != nonce || self.forwarded.remove(&tag.id).is_none() {
                    continue;
                }
                let at = self.proposals.partition_point(|x| x.index <= e.index);
                self.proposals.insert(at, Proposal { index: e.index, term: e.term, id: Some(tag.id) });
            }
        }
    }

    /// Records the read indexes raft-rs confirmed for this store's reads
    /// (of this `incarnation`).
    pub fn record_read_states(&mut self, read_states: Vec<ReadState>, incarnation: u64) {
        for rs in read_states {
            let Some((inc, id)) = parse_read_ctx(&rs.request_ctx) else { continue };
            if inc != incarnation {
                continue;
            }
            if let Some(r) = self.reads.iter_mut().find(|r| r.id.0 == id) {
                r.index = Some(rs.index);
            }
        }
    }

    /// After an installed snapshot reached the engine: the state machine
    /// reloads from it, and the proposals it covers are answered.
    pub fn reload_after_snapshot(&mut self, engine: &dyn Engine, node_id: u64, done: &mut Vec<Completion>) -> Result<(), RaftstoreError> {
        let range_id = self.desc.range_id;
        let applied = self.raft.store().apply_state().applied_index;
        self.sm.reload(engine, self.desc.namespace_id)?;
        // Proposals the snapshot jumped over: their fate is unknown here.
        while self.proposals.front().is_some_and(|x| x.index <= applied) {
            let x = self.proposals.pop_front().expect("front");
            if let Some(id) = x.id {
                done.push(Completion::unknown(id, range_id));
            }
        }
        // Forwarded proposals: their entries may be among those the
        // snapshot covers, so they will never be applied here.
        for id in std::mem::take(&mut self.forwarded).into_keys() {
            done.push(Completion::unknown(id, range_id));
        }
        info!(node = node_id, range = range_id, index = applied, "installed snapshot");
        Ok(())
    }

    /// Tells raft-rs how far the state machine applied, as far as raft-rs
    /// allows: a snapshot installed but not yet synced is applied here before
    /// raft-rs counts it as persisted.
    pub fn advance_applied(&mut self) {
        let log = &self.raft.raft.raft_log;
        let to = self.raft.store().apply_state().applied_index.min(log.committed).min(log.persisted);
        if to > log.applied {
            self.raft.advance_apply_to(to);
        }
    }

    /// Applies a committed conf change entry (legacy or V2) on this node
    /// (`node_id`), staging the new configuration and descriptor into
    /// `batch`. Returns the entry's response: empty, or why the change was
    /// not applied.
    pub fn apply_conf_change_entry(&mut self, e: &Entry, node_id: u64, batch: &mut WriteBatch, done: &mut Vec<Completion>) -> Vec<u8> {
        let range_id = self.desc.range_id;
        let cc: Result<ConfChangeV2, String> = if e.get_entry_type() == EntryType::EntryConfChange {
            ConfChange::parse_from_bytes(&e.data).map(legacy_to_v2).map_err(|x| x.to_string())
        } else {
            ConfChangeV2::parse_from_bytes(&e.data).map_err(|x| x.to_string())
        };
        match cc.map_err(|x| x.to_string()).and_then(|cc| self.raft.apply_conf_change(&cc).map_err(|x| x.to_string())) {
            Ok(cs) => {
                self.set_conf(&cs);
                self.raft.mut_store().set_conf_state(cs.clone(), batch);
                batch.put(Cf::Meta, keys::state_key(range_id), self.desc.encode());
                info!(node = node_id, range = range_id, voters = ?cs.voters, outgoing = ?cs.voters_outgoing, learners = ?cs.learners, conf_ver = self.desc.epoch.conf_ver, "membership changed");
                if Peer::in_conf(&cs, node_id) {
                    if self.dormant_at.is_some() {
                        info!(node = node_id, range = range_id, "replica added back; active again");
                        self.rejoin();
                    }
                } else if self.dormant_at.is_none() {
                    let at = self.desc.epoch.conf_ver;
                    done.extend(self.go_dormant(at));
                    info!(node = node_id, range = range_id, "replica removed from the range; dormant (data kept)");
                }
                Vec::new()
            }
            Err(err) => {
                // A committed but invalid change is skipped alike on
                // every replica.
                warn!(range = range_id, index = e.index, "conf change not applied: {err}");
                err.into_bytes()
            }
        }
    }

    /// Compacts the log up to the applied index once `cfg.compact_log_entries`
    /// applied entries are kept, staging it into `batch`.
    pub fn maybe_compact(&mut self, cfg: &StoreConfig, batch: &mut WriteBatch) -> Result<(), RaftstoreError> {
        let applied = self.raft.store().apply_state().applied_index;
        let truncated = self.raft.store().truncated_index();
        if applied.saturating_sub(truncated) < cfg.compact_log_entries {
            return Ok(());
        }
        let mut to = applied;
        if self.witness {
            // A witness may hold the only copy of the last committed
            // entries (the voters that also had them lost with a region),
            // and it can bring a full voter up to date only from its log:
            // it keeps the last `max_log_lag_entries` (a full voter further
            // behind needs a snapshot, which a full voter sends once one
            // leads again).
            to = applied.saturating_sub(cfg.max_log_lag_entries);
        }
        if self.is_leader() {
            // Keep what lagging followers still need, unless they are so far
            // behind that a snapshot is cheaper.
            // Only replicas heard from recently hold the log back: a dead
            // node must not make the log grow without bound; it catches up
            // by snapshot when it returns.
            let min_matched =
                self.raft.raft.prs().iter().filter(|(_, pr)| pr.recent_active).map(|(_, pr)| pr.matched).min().unwrap_or(applied);
            if applied.saturating_sub(min_matched) <= cfg.max_log_lag_entries {
                to = to.min(min_matched);
            }
        }
        if to > truncated {
            self.raft.mut_store().compact(to, batch)?;
        }
        Ok(())
    }

    /// Answers, into `done`, the reads whose read index this replica has
    /// applied, reading the state machine from `engine`.
    pub fn answer_reads(&mut self, engine: &dyn Engine, done: &mut Vec<Completion>) {
        if self.reads.is_empty() || self.installing.is_some() {
            return;
        }
        let range_id = self.desc.range_id;
        let applied = self.raft.store().apply_state().applied_index;
        while self.reads.front().is_some_and(|r| r.index.is_some_and(|i| i <= applied)) {
            let r = self.reads.pop_front().expect("front");
            let value = self.sm.read(engine, self.desc.namespace_id, &r.query);
            done.push(Completion { id: r.id, range_id, result: Ok((applied, value)) });
        }
        // A read whose index is known but later than an unanswered one
        // must not wait behind it forever: answer any that are ready.
        let mut i = 0;
        while i < self.reads.len() {
            if self.reads[i].index.is_some_and(|x| x <= applied) {
                let r = self.reads.remove(i).expect("index in bounds");
                let value = self.sm.read(engine, self.desc.namespace_id, &r.query);
                done.push(Completion { id: r.id, range_id, result: Ok((applied, value)) });
            } else {
                i += 1;
            }
        }
    }

    // ---- checks ---------------------------------------------------------

    /// Checks the range's log and apply invariants, panicking with the
    /// range id and the numbers when one does not hold: raft-rs's applied
    /// ≤ committed ≤ last index, the stored applied index ≤ committed, and
    /// nothing truncated that is not applied. Debug and test builds only:
    /// `Store::poll` calls it for every range after each poll.
    ///
    /// An uninitialized replica (created for a leader's message, not yet
    /// filled) has every number 0, which satisfies all of them.
    #[cfg(debug_assertions)]
    pub(crate) fn validate(&self) {
        let range_id = self.desc.range_id;
        let log = &self.raft.raft.raft_log;
        let (applied, committed, last) = (log.applied, log.committed, log.last_index());
        assert!(
            applied <= committed && committed <= last,
            "range {range_id}: raft log out of order: applied {applied}, committed {committed}, last index {last}"
        );
        let stored_applied = self.raft.store().apply_state().applied_index;
        assert!(
            stored_applied <= committed,
            "range {range_id}: stored applied index {stored_applied} is past the committed index {committed}"
        );
        let truncated = self.raft.store().truncated_index();
        assert!(
            truncated <= stored_applied,
            "range {range_id}: log truncated to {truncated}, past the stored applied index {stored_applied} (compacted unapplied entries)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn election_timeouts_cover_half_the_base_above_it() {
        let mut seen = std::collections::BTreeSet::new();
        for i in 0..1_000 {
            seen.insert(election_timeout_draw(10, splitmix64(i)));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![10, 11, 12, 13, 14]);
        // Short bases keep raft-rs's range, so they still vary.
        let three: std::collections::BTreeSet<_> = (0..100).map(|i| election_timeout_draw(3, splitmix64(i))).collect();
        assert_eq!(three.into_iter().collect::<Vec<_>>(), vec![3, 4, 5]);
        let four: std::collections::BTreeSet<_> = (0..100).map(|i| election_timeout_draw(4, splitmix64(i))).collect();
        assert_eq!(four.into_iter().collect::<Vec<_>>(), vec![4, 5]);
    }
}
