//! Snapshots, both ways. See [`meridian_storage::snapshot`] for the
//! picture.
//!
//! - **Building** (leader): when raft-rs asks for a snapshot, the store
//!   pins an engine view at the applied index and hands raft-rs a snapshot
//!   whose data is only the descriptor. Nothing is read yet, so building is
//!   cheap and happens in the poll round.
//! - **Sending**: a `MsgSnapshot` raft-rs emits goes to the transport as an
//!   [`OutgoingSnapshot`] stream over the pinned view: the transport reads
//!   a chunk at a time as the peer takes them, then sends the message.
//! - **Installing** (follower): the Ready carrying an accepted snapshot
//!   decides the install in the round's batch (`Peer::stage_snapshot`);
//!   [`Store::continue_installs`] then moves the staged data into place at
//!   most `install_step_bytes` per round, and only then does the range
//!   reload its state machine and serve again.

use std::sync::Arc;

use meridian_storage::snapshot::{encode_snapshot_header, move_staged, SnapshotReader};
use meridian_storage::{EngineSnapshot, PeerStorage, RangeDescriptor, WriteBatch};
use meridian_transport::{RaftEnvelope, SnapshotChunk, SnapshotStream, TransportError};
use raft::prelude::Snapshot;
use tracing::{debug, info};

use super::{Completion, Store, PINNED_SNAPSHOT_TICKS};
use crate::error::RaftstoreError;

/// The engine view a leader's built snapshot reads from.
pub(crate) struct PinnedSnapshot {
    /// The snapshot's raft index (the applied index it was built at).
    pub index: u64,
    pub view: Arc<dyn EngineSnapshot>,
    /// The descriptor the snapshot carries.
    pub desc: RangeDescriptor,
    /// When it was built (logical ticks).
    pub at_tick: u64,
}

impl Store {
    /// Builds the snapshots raft-rs asked for: an engine view pinned at the
    /// applied index, and a header for raft-rs to send.
    pub(super) fn handle_snapshot_requests(&mut self) {
        // raft-rs asks for a snapshot inside a call the store made on the
        // range (a step, a tick, a Ready): an active range.
        for range_id in self.peers.active_ids() {
            let Some(p) = self.peers.get_mut(&range_id) else { continue };
            let Some(req) = p.raft.store().take_snapshot_request() else { continue };
            if p.witness {
                // A witness has no data to send: raft-rs keeps hearing
                // "temporarily unavailable" until a full voter leads (the
                // witness hands leadership over at once) and sends one.
                if self.metrics.witness_snapshots_refused == 0 {
                    info!(node = self.cfg.node_id, range = req.range_id, to = req.to, "a witness sends no snapshot; a full voter will");
                }
                self.metrics.witness_snapshots_refused += 1;
                continue;
            }
            let st = p.raft.store();
            let applied = st.apply_state();
            let meta = raft::prelude::SnapshotMetadata {
                index: applied.applied_index,
                term: applied.applied_term,
                conf_state: Some(st.raft_state().conf_state.clone()).into(),
                ..Default::default()
            };
            // The engine holds exactly the applied state now: applies are
            // written in the round that applies them.
            let view: Arc<dyn EngineSnapshot> = Arc::from(self.engine.snapshot());
            let mut snap = Snapshot::default();
            snap.set_metadata(meta);
            snap.set_data(encode_snapshot_header(&p.desc).into());
            debug!(range = req.range_id, to = req.to, index = applied.applied_index, "snapshot built");
            p.pinned = Some(PinnedSnapshot { index: applied.applied_index, view, desc: p.desc.clone(), at_tick: self.now_tick });
            self.metrics.snapshots_built += 1;
            p.raft.mut_store().set_built_snapshot(snap);
        }
    }

    /// Lets go of pinned views older than [`PINNED_SNAPSHOT_TICKS`] (the
    /// streams still reading one keep it alive until they end).
    pub(super) fn unpin_old_snapshots(&mut self) {
        let now = self.now_tick;
        for p in self.peers.values_mut_unmarked() {
            if p.pinned.as_ref().is_some_and(|s| now.saturating_sub(s.at_tick) > PINNED_SNAPSHOT_TICKS) {
                p.pinned = None;
                p.raft.mut_store().clear_built_snapshot();
            }
        }
    }

    /// Hands a `MsgSnapshot` of `range_id` (already an envelope) to the
    /// transport as a stream over the pinned view it was built from.
    /// Without that view (let go since), raft-rs is told the snapshot
    /// failed, and builds a fresh one when it asks again.
    pub(super) fn send_snapshot(&mut self, range_id: u64, env: RaftEnvelope, index: u64, term: u64) {
        let p = self.peers.get_mut(&range_id).expect("caller checked");
        let to = env.to_node;
        let Some(pinned) = p.pinned.as_ref().filter(|s| s.index == index) else {
            debug!(range = range_id, to, index, "snapshot's engine view let go; raft will ask again");
            p.raft.report_snapshot(to, raft::SnapshotStatus::Failure);
            return;
        };
        let reader = SnapshotReader::new(pinned.view.clone(), &pinned.desc).with_chunk_bytes(self.cfg.snapshot_chunk_bytes);
        let template = RaftEnvelope { message: Vec::new(), quiesce: false, ..env.clone() };
        self.metrics.snapshots_sent += 1;
        info!(node = self.cfg.node_id, range = range_id, to, index, "sending snapshot");
        self.transport.send_snapshot(to, Box::new(OutgoingSnapshot { reader, template, index, term, message: Some(env) }));
    }

    /// Moves every installing range's staged data into place, a bounded
    /// step each; a range whose last step is done reloads its state
    /// machine and serves again.
    pub(super) fn continue_installs(&mut self, done: &mut Vec<Completion>) -> Result<(), RaftstoreError> {
        let installing: Vec<u64> = self.peers.active().filter(|p| p.installing.is_some()).map(|p| p.range_id()).collect();
        for range_id in installing {
            self.install_step(range_id, done)?;
        }
        Ok(())
    }

    /// One step of `range_id`'s install (see [`Store::continue_installs`]).
    pub(super) fn install_step(&mut self, range_id: u64, done: &mut Vec<Completion>) -> Result<(), RaftstoreError> {
        let p = self.peers.get_mut(&range_id).expect("listed");
        let Some(namespace_id) = p.installing else { return Ok(()) };
        if move_staged(&*self.engine, range_id, namespace_id, self.cfg.install_step_bytes)? {
            p.installing = None;
            self.metrics.snapshots_installed += 1;
            p.reload_after_snapshot(&*self.engine, self.cfg.node_id, done)?;
            self.create_missed_splits(range_id)?;
        }
        Ok(())
    }

    /// Creates, empty, the replicas of ranges split off `range_id` that
    /// list this node and that it does not have: it reached the parent's
    /// state without applying the split (a snapshot, or a crash between
    /// the install and this), so only the new range's leader can fill them,
    /// and they must exist to vote and to be filled.
    pub(super) fn create_missed_splits(&mut self, range_id: u64) -> Result<(), RaftstoreError> {
        let Some(p) = self.peers.get(&range_id) else { return Ok(()) };
        let missed: Vec<RangeDescriptor> =
            p.sm.split_offs()
                .into_iter()
                .filter(|d| d.replica(self.cfg.node_id).is_some() && !self.peers.contains_key(&d.range_id))
                // A replica destroyed here is not brought back by its parent.
                .filter(|d| !self.tombstones.contains_key(&d.range_id))
                .collect();
        for desc in missed {
            let mut batch = WriteBatch::new();
            PeerStorage::create_uninitialized(&mut batch, &desc);
            self.engine.write(&batch, true)?;
            let storage = PeerStorage::open(self.engine.clone(), desc.range_id)?;
            info!(
                node = self.cfg.node_id,
                range = desc.range_id,
                parent = range_id,
                "created the replica of a split this node did not apply"
            );
            self.metrics.splits_missed += 1;
            self.add_peer(desc, storage)?;
        }
        Ok(())
    }
}

/// A snapshot on its way to one follower: the chunks of the pinned view,
/// then the `MsgSnapshot` itself. Read by the transport, off the poll loop.
struct OutgoingSnapshot {
    reader: SnapshotReader,
    /// The envelope fields every chunk carries (range, nodes, epoch, span).
    template: RaftEnvelope,
    index: u64,
    term: u64,
    /// The `MsgSnapshot`, sent after the last chunk.
    message: Option<RaftEnvelope>,
}

impl SnapshotStream for OutgoingSnapshot {
    fn range_id(&self) -> u64 {
        self.template.range_id
    }

    fn next_envelope(&mut self) -> Result<Option<RaftEnvelope>, TransportError> {
        match self.reader.next_chunk() {
            Ok(Some(c)) => {
                let chunk =
                    SnapshotChunk { index: self.index, term: self.term, seq: c.seq, data: c.data, last: c.last, total_keys: c.total_keys };
                Ok(Some(RaftEnvelope { chunk: Some(chunk), ..self.template.clone() }))
            }
            Ok(None) => Ok(self.message.take()),
            Err(e) => Err(TransportError::Io(format!("reading the snapshot of range {}: {e}", self.template.range_id))),
        }
    }
}
