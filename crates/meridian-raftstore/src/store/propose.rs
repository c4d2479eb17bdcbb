//! Proposals: accepting commands on the leader or for forwarding
//! (`propose`, `propose_on_leader`), staging them per range and handing
//! each round's to raft in one batch (`flush_staged`, at the start of a
//! poll round), membership changes, and leadership moves (transfer,
//! campaign). Everything here decides what raft is asked to replicate and
//! who leads; what happens once an entry commits is in `apply.rs`.

use raft::prelude::{ConfChangeType, ConfChangeV2, Entry, Message, MessageType};

use super::{not_found, Completion, RangeRequest, RequestId, Store};
use crate::error::RaftstoreError;
use crate::peer::{Forwarded, Peer, Proposal, ProposalTag, Staged};

impl Store {
    fn leader_peer(&mut self, range_id: u64) -> Result<&mut Peer, RaftstoreError> {
        self.accepting_peer(range_id, false)
    }

    /// The replica that takes a request: serving, not over its pending
    /// bound, and the leader — or, with `forward`, any replica that knows
    /// its leader. Woken, as a request is coming.
    fn accepting_peer(&mut self, range_id: u64, forward: bool) -> Result<&mut Peer, RaftstoreError> {
        let max = self.cfg.max_pending_per_range;
        let p = self.peers.get_mut(&range_id).ok_or_else(|| not_found(range_id))?;
        p.serving()?;
        if !p.is_leader() && (!forward || p.raft.raft.leader_id == raft::INVALID_ID) {
            return Err(RaftstoreError::NotLeader { range_id, leader_hint: p.leader_hint() });
        }
        if p.pending() >= max {
            return Err(RaftstoreError::TooBusy { range_id, pending: p.pending() });
        }
        p.wake();
        Ok(p)
    }

    /// Proposes a state-machine command. The answer arrives as a
    /// [`Completion`] once the entry is applied here.
    ///
    /// On a follower the proposal goes to the leader inside raft (a
    /// `MsgPropose` over the peer transport, batched with the rest of the
    /// round's traffic), tagged with this store's `ProposalTag`; once the
    /// tagged entry reaches this replica's log it resolves by (index, term)
    /// like a leader's proposal, with the same deterministic response the
    /// leader computes. One that never arrives (the leader dropped it) is
    /// answered `OutcomeUnknown` when this replica stops following that
    /// leader, or after [`Store::forward_timeout_ticks`].
    pub fn propose(&mut self, req: RangeRequest, command: Vec<u8>) -> Result<RequestId, RaftstoreError> {
        self.propose_inner(req, command, true)
    }

    /// Like [`Store::propose`], but only on the leader: a follower answers
    /// `NotLeader`. For commands whose caller keeps leader-only state
    /// alongside the command's effect (the lease keeper's clocks).
    pub fn propose_on_leader(&mut self, req: RangeRequest, command: Vec<u8>) -> Result<RequestId, RaftstoreError> {
        self.propose_inner(req, command, false)
    }

    fn propose_inner(&mut self, req: RangeRequest, command: Vec<u8>, forward: bool) -> Result<RequestId, RaftstoreError> {
        let range_id = req.range_id;
        if command.is_empty() {
            return Err(RaftstoreError::InvalidRequest { range_id, reason: "empty command".into() });
        }
        let id = self.next_id();
        let p = self.accepting_peer(range_id, forward)?;
        req.check(&p.desc)?;
        p.staged.push(Staged { id, command, forward });
        Ok(id)
    }

    /// Hands every range's staged proposals to raft, batched: on a leader
    /// they are appended at once; on a follower they go to the leader in
    /// one `MsgPropose`, each entry tagged with this store's
    /// [`ProposalTag`]. The role may have changed since `propose` accepted
    /// them (a message stepped in between); what can no longer go anywhere
    /// is answered `NotLeader`, which is definite: it never reached raft.
    pub(super) fn flush_staged(&mut self) {
        let (node_id, nonce, now) = (self.cfg.node_id, self.tag_nonce, self.now_tick);
        let max_bytes = self.cfg.max_size_per_msg_bytes.max(1) as usize;
        // Staged proposals came through `get_mut`: their ranges are active.
        for range_id in self.peers.active_ids() {
            let Some(p) = self.peers.get_mut(&range_id) else { continue };
            if p.staged.is_empty() {
                continue;
            }
            let staged = std::mem::take(&mut p.staged);
            if let Err(e) = p.serving() {
                self.completions.extend(staged.into_iter().map(|s| Completion { id: s.id, range_id, result: Err(e.clone()) }));
                continue;
            }
            let leading = p.is_leader();
            let forwarding = !leading && p.raft.raft.leader_id != raft::INVALID_ID;
            let mut batch: Vec<Staged> = Vec::new();
            let mut bytes = 0;
            let mut it = staged.into_iter().peekable();
            while let Some(s) = it.next() {
                if !(leading || (forwarding && s.forward)) {
                    let result = Err(RaftstoreError::NotLeader { range_id, leader_hint: p.leader_hint() });
                    self.completions.push(Completion { id: s.id, range_id, result });
                } else {
                    bytes += s.command.len();
                    batch.push(s);
                }
                let full = bytes >= max_bytes || it.peek().is_none();
                if !full || batch.is_empty() {
                    continue;
                }
                let chunk = std::mem::take(&mut batch);
                bytes = 0;
                let n = chunk.len() as u64;
                let mut m = Message::default();
                m.set_msg_type(MessageType::MsgPropose);
                m.from = node_id;
                let mut ids = Vec::with_capacity(chunk.len());
                let entries: Vec<Entry> = chunk
                    .into_iter()
                    .map(|s| {
                        ids.push(s.id);
                        let mut e = Entry::default();
                        if !leading {
                            e.context = ProposalTag { node_id, nonce, id: s.id }.encode().into();
                        }
                        e.data = s.command.into();
                        e
                    })
                    .collect();
                m.set_entries(entries.into());
                let before = p.raft.raft.raft_log.last_index();
                let stepped = p.raft.raft.step(m).is_ok();
                if leading && stepped && p.raft.raft.raft_log.last_index() == before + n {
                    p.drop_superseded(before + 1, &mut self.completions);
                    let term = p.raft.raft.term;
                    for (i, id) in ids.into_iter().enumerate() {
                        p.proposals.push_back(Proposal { index: before + 1 + i as u64, term, id: Some(id) });
                    }
                } else if !leading && stepped {
                    self.metrics.proposals_forwarded += n;
                    let leader = p.raft.raft.leader_id;
                    p.forwarded.extend(ids.into_iter().map(|id| (id, Forwarded { at_tick: now, leader })));
                } else {
                    // raft-rs drops proposals during a leadership transfer,
                    // on a follower that lost its leader, and on a leader
                    // holding MAX_UNCOMMITTED_BYTES uncommitted.
                    let overloaded = leading && p.raft.raft.lead_transferee.is_none();
                    for id in ids {
                        let result = if overloaded {
                            Err(RaftstoreError::TooBusy { range_id, pending: p.pending() })
                        } else {
                            Err(RaftstoreError::NotLeader { range_id, leader_hint: p.leader_hint() })
                        };
                        self.completions.push(Completion { id, range_id, result });
                    }
                }
            }
        }
    }

    /// Ticks after which a proposal forwarded to the leader and not yet seen
    /// in this replica's log is answered `OutcomeUnknown`: two election
    /// timeouts. Under load its entry arrives within a round trip; one that
    /// has not arrived by then was most likely dropped by a leader that was
    /// deposed or transferring leadership (raft-rs says nothing of it).
    pub fn forward_timeout_ticks(&self) -> u64 {
        2 * self.cfg.election_ticks as u64
    }

    /// Proposes a membership change. Voter changes always go through joint
    /// consensus, which the leader leaves explicitly once it applies the
    /// entering entry. Removing the current leader is refused: transfer
    /// leadership first.
    pub fn propose_conf_change(&mut self, req: RangeRequest, mut cc: ConfChangeV2) -> Result<RequestId, RaftstoreError> {
        let range_id = req.range_id;
        let node_id = self.cfg.node_id;
        let id = self.next_id();
        let p = self.leader_peer(range_id)?;
        req.check(&p.desc)?;
        let invalid = |reason: &str| RaftstoreError::InvalidRequest { range_id, reason: reason.into() };
        if cc.changes.is_empty() {
            return Err(invalid("a conf change needs at least one change"));
        }
        if cc.changes.iter().any(|c| c.node_id == 0) {
            return Err(invalid("node id 0 is not a valid replica"));
        }
        if cc.changes.iter().any(|c| c.node_id == node_id && c.get_change_type() != ConfChangeType::AddNode) {
            return Err(invalid("cannot remove or demote the leader; transfer leadership first"));
        }
        if !p.raft.store().raft_state().conf_state.voters_outgoing.is_empty() || p.raft.raft.has_pending_conf() {
            return Err(invalid("another membership change is in progress"));
        }
        cc.set_transition(raft::prelude::ConfChangeTransition::Explicit);
        let before = p.raft.raft.raft_log.last_index();
        if p.raft.propose_conf_change(vec![], cc).is_err() || p.raft.raft.raft_log.last_index() == before {
            return Err(RaftstoreError::NotLeader { range_id, leader_hint: p.leader_hint() });
        }
        let index = p.raft.raft.raft_log.last_index();
        let mut dropped = Vec::new();
        p.drop_superseded(index, &mut dropped);
        p.proposals.push_back(Proposal { index, term: p.raft.raft.term, id: Some(id) });
        self.completions.extend(dropped);
        Ok(id)
    }

    /// Asks the range's leader (this replica) to hand leadership to the
    /// voter `to`; done once `to` wins an election, which
    /// [`Store::range_status`] shows (raft-rs gives up after an election
    /// timeout). Errs as [`Store::propose_on_leader`] does if this replica
    /// cannot take a request, and with `InvalidRequest` if `to` is not a
    /// voter.
    pub fn transfer_leader(&mut self, range_id: u64, to: u64) -> Result<(), RaftstoreError> {
        let p = self.leader_peer(range_id)?;
        if !p.raft.raft.prs().conf().voters().contains(to) {
            return Err(RaftstoreError::InvalidRequest { range_id, reason: format!("node {to} is not a voter") });
        }
        p.raft.transfer_leader(to);
        Ok(())
    }

    /// Starts an election for the range now (tests and planned failover).
    pub fn campaign(&mut self, range_id: u64) -> Result<(), RaftstoreError> {
        let p = self.peers.get_mut(&range_id).ok_or_else(|| not_found(range_id))?;
        p.serving()?;
        p.wake();
        let r = p.raft.campaign().map_err(|e| RaftstoreError::InvalidRequest { range_id, reason: e.to_string() });
        p.after_raft_call();
        r
    }
}
