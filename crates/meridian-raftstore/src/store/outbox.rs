//! Outgoing messages and what the transport reports back: raft messages
//! are queued per destination node as envelopes (`queue_messages`, which
//! also flags a quiescing leader's last heartbeat), sent in one batch per
//! node (`flush_outbox`) — snapshots each as a stream of their own
//! (`snapshot.rs`) — and the transport's feedback (unreachable
//! nodes, snapshot deliveries) goes back to raft-rs (`handle_feedback`).

use meridian_transport::{Feedback, RaftEnvelope};
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use raft::SnapshotStatus;

use super::Store;

impl Store {
    pub(super) fn queue_messages(&mut self, range_id: u64, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let p = self.peers.get_mut(&range_id).expect("caller checked");
        let announce = p.announce_quiesce;
        let mut snapshots = Vec::new();
        for m in msgs {
            let quiesce = announce && m.get_msg_type() == MessageType::MsgHeartbeat;
            let env = RaftEnvelope {
                range_id,
                from_node: self.cfg.node_id,
                to_node: m.to,
                conf_ver: p.desc.epoch.conf_ver,
                version: p.desc.epoch.version,
                message: m.write_to_bytes().expect("encode raft message"),
                range_start: p.desc.start.clone(),
                range_end: p.desc.end.clone(),
                quiesce,
                removed: false,
                chunk: None,
            };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                // Streams on its own (see `snapshot.rs`).
                let meta = m.get_snapshot().get_metadata();
                snapshots.push((env, meta.index, meta.term));
                continue;
            }
            self.outbox.entry(m.to).or_default().push(env);
        }
        if announce {
            p.announce_quiesce = false;
        }
        for (env, index, term) in snapshots {
            self.send_snapshot(range_id, env, index, term);
        }
    }

    pub(super) fn flush_outbox(&mut self) {
        for (to, envs) in std::mem::take(&mut self.outbox) {
            self.metrics.messages_sent += envs.len() as u64;
            self.transport.send(to, envs);
        }
    }
    pub(super) fn handle_feedback(&mut self) {
        let mut fb = Vec::new();
        self.transport.drain_feedback(&mut fb);
        for f in fb {
            match f {
                Feedback::Unreachable { range_id, to_node } => {
                    if let Some(p) = self.peers.get_mut(&range_id) {
                        p.raft.report_unreachable(to_node);
                    }
                }
                Feedback::Snapshot { range_id, to_node, ok } => {
                    if let Some(p) = self.peers.get_mut(&range_id) {
                        let status = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                        p.raft.report_snapshot(to_node, status);
                    }
                }
            }
        }
    }
}
