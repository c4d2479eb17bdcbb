//! Inbound peer messages: checking and stepping one envelope into its
//! range's raft, creating the replica a leader's message is for when this
//! node was just added, and the removed hints that put a replica cut off
//! from its removal to sleep. Bad input is counted and logged here, never
//! a panic.

use meridian_storage::{PeerStorage, RangeDescriptor, RangeEpoch, WriteBatch};
use meridian_transport::RaftEnvelope;
use raft::prelude::{Message, MessageType};
use raft::StateRole;
use tracing::{debug, info, warn};

use super::Store;
use crate::error::RaftstoreError;
use crate::peer::Peer;

impl Store {
    /// Handles one inbound envelope. Bad input is counted and logged, never
    /// a panic.
    pub fn step(&mut self, mut env: RaftEnvelope) {
        let from = env.from_node;
        if from == 0 || from == self.cfg.node_id || env.to_node != self.cfg.node_id {
            self.reject(&env, "bad node ids");
            return;
        }
        self.last_heard.insert(from, self.now_tick);
        self.known_nodes.insert(from);
        if env.is_node_ping() {
            return;
        }
        if env.removed {
            self.on_removed_hint(&env);
            return;
        }
        if let Some(chunk) = env.chunk.take() {
            self.on_snapshot_chunk(env.range_id, from, chunk);
            return;
        }
        let msg = match env.raft_message() {
            Ok(m) => m,
            Err(e) => {
                self.reject(&env, &e.to_string());
                return;
            }
        };
        if msg.from != from || msg.to != self.cfg.node_id {
            self.reject(&env, "raft message ids do not match the envelope");
            return;
        }
        let mtype = msg.get_msg_type();
        let snapshot_index = (mtype == MessageType::MsgSnapshot).then(|| msg.get_snapshot().get_metadata().index);
        if let Some(index) = snapshot_index {
            let term = msg.get_snapshot().get_metadata().term;
            if !self.snapshot_data_ready(env.range_id, from, index, term) {
                return;
            }
        }
        if self.tombstoned(env.range_id, env.conf_ver) {
            // A member at a configuration this node's replica was
            // destroyed under (or after the range retired): an empty
            // replica must not answer it.
            self.metrics.messages_rejected += 1;
            debug!(range = env.range_id, from, conf_ver = env.conf_ver, "message for a destroyed replica");
            return;
        }
        match self.supersede_for(env.range_id, env.conf_ver) {
            super::promote::Superseding::None => {}
            // The destroy deleted a snapshot's staged chunks: its
            // `MsgSnapshot` is dropped (the leader sends another).
            super::promote::Superseding::Destroyed if snapshot_index.is_none() => {}
            _ => return,
        }
        if !self.peers.contains_key(&env.range_id) && !self.maybe_create_peer(&env, &msg) {
            return;
        }
        let p = self.peers.get_mut(&env.range_id).expect("present or created");
        if p.dormant_at.is_some_and(|d| env.conf_ver > d) {
            info!(node = self.cfg.node_id, range = env.range_id, from, conf_ver = env.conf_ver, "replica added back; active again");
            p.rejoin();
        }
        let cs = &p.raft.store().raft_state().conf_state;
        // A replica of a lineage a forced promotion superseded (epoch 0:
        // one created empty, which has none yet) is refused even from a
        // node the new lineage holds: its log and terms are another
        // history's (see `promote.rs`).
        let superseded = env.conf_ver != 0 && super::promote::generation(env.conf_ver) < super::promote::generation(p.desc.epoch.conf_ver);
        if superseded || (env.conf_ver < p.desc.epoch.conf_ver && !Peer::in_conf(cs, from)) {
            debug!(
                range = env.range_id,
                from,
                conf_ver = env.conf_ver,
                local = p.desc.epoch.conf_ver,
                "stale message from removed replica"
            );
            self.metrics.messages_rejected += 1;
            // It may never have heard of its removal (down or cut off when
            // it was committed): tell it, so it cleans itself up instead of
            // campaigning forever.
            let hint = RaftEnvelope::removed_hint(env.range_id, self.cfg.node_id, from, p.desc.epoch.conf_ver);
            self.outbox.entry(from).or_default().push(hint);
            return;
        }
        p.silent_ticks = 0;
        let quiet_ok = matches!(mtype, MessageType::MsgHeartbeatResponse) || (env.quiesce && mtype == MessageType::MsgHeartbeat);
        if !quiet_ok {
            p.wake();
        }
        if let Err(e) = p.raft.step(msg) {
            debug!(range = env.range_id, from, "step: {e}");
        }
        p.after_raft_call();
        if let Some(index) = snapshot_index {
            self.after_snapshot_step(env.range_id, index);
        }
        let Some(p) = self.peers.get_mut(&env.range_id) else { return };
        if env.quiesce && mtype == MessageType::MsgHeartbeat {
            let r = &p.raft.raft;
            if r.state == StateRole::Follower && r.leader_id == from && r.raft_log.committed == r.raft_log.last_index() {
                p.quiesced = true;
            }
        }
    }

    /// A member of the range says this node's replica is not in the
    /// configuration it applied at a later epoch than this replica knows.
    /// The replica goes dormant rather than deleting its data: the sender
    /// may be behind a later change that added this node back (replica ids
    /// are node ids, so a hint cannot tell the two apart), and deleting a
    /// voter's log could lose committed entries. A message from an epoch
    /// past the hint's wakes it (see `step`).
    fn on_removed_hint(&mut self, env: &RaftEnvelope) {
        let Some(p) = self.peers.get_mut(&env.range_id) else { return };
        if env.conf_ver <= p.desc.epoch.conf_ver || p.dormant_at.is_some_and(|d| d >= env.conf_ver) {
            return;
        }
        info!(
            node = self.cfg.node_id,
            range = env.range_id,
            from = env.from_node,
            local_conf_ver = p.desc.epoch.conf_ver,
            conf_ver = env.conf_ver,
            "this replica was removed while it could not hear of it; going dormant"
        );
        let done = p.go_dormant(env.conf_ver);
        self.completions.extend(done);
    }

    fn reject(&mut self, env: &RaftEnvelope, why: &str) {
        self.metrics.messages_rejected += 1;
        warn!(node = self.cfg.node_id, from = env.from_node, range = env.range_id, "rejected peer message: {why}");
    }

    /// A leader's message for a range this node does not have: this node
    /// was just added to it. Create an empty replica that log replication
    /// or a snapshot will fill. (A replica removed from here stays, dormant,
    /// until it is destroyed; then its tombstone decides, see `step`.)
    fn maybe_create_peer(&mut self, env: &RaftEnvelope, msg: &Message) -> bool {
        let range_id = env.range_id;
        let leaderish = matches!(msg.get_msg_type(), MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot);
        if !leaderish || range_id == 0 {
            self.reject(env, "message for an unknown range");
            return false;
        }
        let desc = RangeDescriptor {
            range_id,
            // A guess until the first snapshot names the namespace (an
            // uninitialized replica holds no data).
            namespace_id: range_id,
            start: env.range_start.clone(),
            end: env.range_end.clone(),
            epoch: RangeEpoch::default(),
            replicas: vec![],
        };
        let mut batch = WriteBatch::new();
        let (term, vote) = self.tombstone_vote(range_id);
        PeerStorage::create_uninitialized_voted(&mut batch, &desc, term, vote);
        let created = self
            .engine
            .write(&batch, true)
            .map_err(RaftstoreError::from)
            .and_then(|_| PeerStorage::open(self.engine.clone(), range_id).map_err(RaftstoreError::from))
            .and_then(|storage| self.add_peer(desc, storage));
        match created {
            Ok(()) => {
                info!(node = self.cfg.node_id, range = range_id, from = env.from_node, "created replica on leader's request");
                true
            }
            Err(e) => {
                warn!(range = range_id, "creating replica: {e}");
                false
            }
        }
    }
}
