//! Snapshots on their way in. Chunks are staged as they arrive (records
//! nothing reads, see [`meridian_storage::snapshot`]); the `MsgSnapshot`
//! that ends a stream is stepped into raft only once every chunk of its
//! transfer arrived, in order, with the key count the last chunk states.
//! So raft-rs never accepts a snapshot whose data this node does not hold,
//! and a transfer cut half-way changes nothing but staged records, which
//! are deleted when it is given up.
//!
//! ```text
//!  chunk seq 0 ──► new transfer (replaces an unfinished one of the range)
//!  chunk seq n ──► staged if it is the next one; a gap, a corrupt chunk or
//!                  a wrong total gives the transfer up
//!  MsgSnapshot ──► stepped only if its transfer is complete; then raft
//!                  either accepted it (the Ready that carries it takes the
//!                  transfer) or refused it (stale: the transfer is given up)
//!  tick        ──► a transfer silent for INCOMING_SNAPSHOT_IDLE_TICKS is given up
//! ```
//!
//! At most [`MAX_INCOMING_SNAPSHOTS`] transfers at once; a range busy with
//! an accepted snapshot (not yet in a Ready, or being moved into place)
//! takes no new chunks.

use std::collections::BTreeMap;

use meridian_storage::snapshot::{clear_staged, stage_chunk};
use meridian_storage::WriteBatch;
use meridian_transport::SnapshotChunk;
use tracing::{debug, info, warn};

use super::{Store, INCOMING_SNAPSHOT_IDLE_TICKS, MAX_INCOMING_SNAPSHOTS};

/// One snapshot being received.
#[derive(Debug)]
struct Transfer {
    from: u64,
    index: u64,
    term: u64,
    next_seq: u64,
    keys: u64,
    /// Every chunk arrived and the total matched.
    complete: bool,
    /// raft-rs accepted its `MsgSnapshot`; the next Ready of the range
    /// carries it.
    accepted: bool,
    last_tick: u64,
}

/// The transfers in progress, by range.
#[derive(Debug, Default)]
pub(super) struct IncomingSnapshots {
    transfers: BTreeMap<u64, Transfer>,
}

impl IncomingSnapshots {
    /// Forgets `range_id`'s transfer (its replica is being destroyed; the
    /// caller deletes what was staged).
    pub(super) fn forget(&mut self, range_id: u64) {
        self.transfers.remove(&range_id);
    }

    /// True if a complete transfer matches this `MsgSnapshot` (from
    /// `from`, at `index`/`term`) and raft-rs has not taken it yet.
    /// Whether a snapshot of `range_id` was accepted and not handed to a
    /// Ready yet.
    pub(super) fn is_accepted(&self, range_id: u64) -> bool {
        self.transfers.get(&range_id).is_some_and(|t| t.accepted)
    }

    fn ready_to_step(&self, range_id: u64, from: u64, index: u64, term: u64) -> bool {
        self.transfers.get(&range_id).is_some_and(|t| t.complete && !t.accepted && (t.from, t.index, t.term) == (from, index, term))
    }

    /// The Ready carrying the snapshot at `index` of `range_id` takes its
    /// accepted transfer. False if there is none (a bug: raft-rs only
    /// accepts snapshots that `Store::snapshot_data_ready` let through).
    pub(super) fn take_accepted(&mut self, range_id: u64, index: u64) -> bool {
        match self.transfers.get(&range_id) {
            Some(t) if t.accepted && t.index == index => {
                self.transfers.remove(&range_id);
                true
            }
            _ => false,
        }
    }
}

impl Store {
    /// Stages one chunk of a snapshot being received, or refuses it.
    pub(super) fn on_snapshot_chunk(&mut self, range_id: u64, from: u64, chunk: SnapshotChunk) {
        let now = self.now_tick;
        let Some(p) = self.peers.get(&range_id) else {
            // A leader's heartbeat creates the replica; raft sends the
            // snapshot again after that.
            self.refuse_chunk(range_id, from, "no replica of the range here yet");
            return;
        };
        if p.installing.is_some() || self.incoming.transfers.get(&range_id).is_some_and(|t| t.accepted) {
            self.refuse_chunk(range_id, from, "the range is installing a snapshot");
            return;
        }
        if chunk.seq == 0 {
            let known = self.incoming.transfers.contains_key(&range_id);
            if !known && self.incoming.transfers.len() >= MAX_INCOMING_SNAPSHOTS {
                self.refuse_chunk(range_id, from, "too many snapshots being received");
                return;
            }
            if known {
                self.abandon_transfer(range_id, "a new transfer of the range started");
            }
            let t = Transfer {
                from,
                index: chunk.index,
                term: chunk.term,
                next_seq: 0,
                keys: 0,
                complete: false,
                accepted: false,
                last_tick: now,
            };
            self.incoming.transfers.insert(range_id, t);
        }
        let Some(t) = self.incoming.transfers.get(&range_id) else {
            self.refuse_chunk(range_id, from, "no transfer started (its first chunk was lost)");
            return;
        };
        if (t.from, t.index, t.term) != (from, chunk.index, chunk.term) {
            // The tail of a stream that was replaced; the current one goes on.
            self.refuse_chunk(range_id, from, "chunk of an older transfer");
            return;
        }
        if t.complete || chunk.seq != t.next_seq {
            let why = format!("chunk {} where {} was expected", chunk.seq, t.next_seq);
            self.abandon_transfer(range_id, &why);
            return;
        }
        let mut batch = WriteBatch::new();
        // A witness keeps no data: the chunk is checked and counted, not
        // written (the install then moves nothing into place).
        let witness = self.cfg.witness;
        let staged = stage_chunk(range_id, &chunk.data, &mut batch).and_then(|n| {
            if witness {
                Ok(n)
            } else {
                self.engine.write(&batch, false).map(|()| n)
            }
        });
        let n = match staged {
            Ok(n) => n,
            Err(e) => {
                self.abandon_transfer(range_id, &format!("chunk {}: {e}", chunk.seq));
                return;
            }
        };
        self.metrics.snapshot_chunks_received += 1;
        self.metrics.snapshot_bytes_received += chunk.data.len() as u64;
        let t = self.incoming.transfers.get_mut(&range_id).expect("checked above");
        t.next_seq += 1;
        t.keys += n;
        t.last_tick = now;
        if chunk.last {
            if chunk.total_keys == t.keys {
                t.complete = true;
                debug!(range = range_id, from, index = t.index, keys = t.keys, chunks = t.next_seq, "snapshot received whole");
            } else {
                let why = format!("the sender counted {} keys, {} arrived", chunk.total_keys, t.keys);
                self.abandon_transfer(range_id, &why);
            }
        }
    }

    /// Whether a `MsgSnapshot` may be stepped into raft: its data arrived
    /// whole. If not, it is dropped (raft-rs hears nothing and sends the
    /// snapshot again once the transport reports the stream failed, or
    /// after its own timeout).
    pub(super) fn snapshot_data_ready(&mut self, range_id: u64, from: u64, index: u64, term: u64) -> bool {
        if self.incoming.ready_to_step(range_id, from, index, term) {
            return true;
        }
        self.metrics.messages_rejected += 1;
        debug!(range = range_id, from, index, "MsgSnapshot without its data; dropped");
        false
    }

    /// After stepping a `MsgSnapshot` at `index`: if raft-rs accepted it, the
    /// range's next Ready installs it; if raft-rs refused it (this replica
    /// is already past it), its staged data is deleted.
    pub(super) fn after_snapshot_step(&mut self, range_id: u64, index: u64) {
        let accepted = self.peers.get(&range_id).is_some_and(|p| p.holds_pending_snapshot(index));
        if accepted {
            if let Some(t) = self.incoming.transfers.get_mut(&range_id) {
                t.accepted = true;
            }
        } else {
            self.abandon_transfer(range_id, "raft did not take the snapshot (this replica is past it)");
        }
    }

    /// Gives up transfers that have been silent too long (the sender died
    /// or gave up), and accepted ones raft-rs no longer holds (so a range
    /// can never be stuck refusing snapshots).
    pub(super) fn expire_incoming(&mut self) {
        let now = self.now_tick;
        let mut dead = Vec::new();
        for (range_id, t) in &self.incoming.transfers {
            if t.accepted {
                let held = self.peers.get(range_id).is_some_and(|p| p.holds_pending_snapshot(t.index));
                if !held {
                    dead.push((*range_id, "raft no longer holds the accepted snapshot"));
                }
            } else if now.saturating_sub(t.last_tick) > INCOMING_SNAPSHOT_IDLE_TICKS {
                dead.push((*range_id, "no chunk for too long"));
            }
        }
        for (range_id, why) in dead {
            self.abandon_transfer(range_id, why);
        }
    }

    /// Forgets `range_id`'s transfer and deletes what it staged.
    fn abandon_transfer(&mut self, range_id: u64, why: &str) {
        let Some(t) = self.incoming.transfers.remove(&range_id) else { return };
        self.metrics.snapshots_abandoned += 1;
        info!(
            node = self.cfg.node_id,
            range = range_id,
            from = t.from,
            index = t.index,
            chunks = t.next_seq,
            "snapshot transfer given up: {why}"
        );
        let mut batch = WriteBatch::new();
        clear_staged(range_id, &mut batch);
        if let Err(e) = self.engine.write(&batch, false) {
            // Harmless to leave: the next transfer or start clears it.
            warn!(range = range_id, "deleting staged snapshot data: {e}");
        }
    }

    fn refuse_chunk(&mut self, range_id: u64, from: u64, why: &str) {
        self.metrics.snapshot_chunks_refused += 1;
        debug!(range = range_id, from, "snapshot chunk refused: {why}");
    }
}
