//! The poll round (group commit): the one place raft-rs's Ready contract
//! is carried out. Every ready range is staged into one engine write; what
//! raft needs durable takes a sync number, synced by the driver
//! (`take_sync_request` / `on_synced`) or by `poll` itself, and Readies
//! wait for their sync (`release_synced`) before raft-rs counts them as
//! persisted and their held-back replies go out. See the crate docs for
//! the phases.

use std::collections::BTreeMap;

use meridian_storage::WriteBatch;
use raft::Ready;

use super::{Completion, Store};
use crate::error::RaftstoreError;
use crate::peer::UnsyncedReady;

impl Store {
    /// Runs one round: persist, send, apply (two when syncing inline and
    /// the round's sync released more work). Returns the answers to
    /// proposals and reads that completed.
    pub fn poll(&mut self) -> Result<Vec<Completion>, RaftstoreError> {
        let mut out = self.poll_round()?;
        // Syncing inline, the round's own sync may have released work (a
        // leader counting its entries, a single voter committing): handle
        // it now rather than at the next wake-up.
        if !self.cfg.defer_sync && self.has_ready() {
            out.extend(self.poll_round()?);
        }
        // Debug and test builds check the invariants of every range a
        // round visited (the others did not change since they were).
        #[cfg(debug_assertions)]
        for p in self.peers.active() {
            p.validate();
        }
        self.peers.settle();
        // Debug and test builds: now and then, that no replica left out of
        // the active set has work (see `peers`).
        #[cfg(debug_assertions)]
        if self.metrics.poll_rounds.is_multiple_of(16) {
            let forgotten = self.peers.forgotten();
            assert!(forgotten.is_empty(), "node {}: ranges {forgotten:?} have work but are not active", self.cfg.node_id);
        }
        Ok(out)
    }

    /// True when a poll would find work without anything new arriving: a
    /// Ready raft-rs holds, Readies a finished sync made durable, or a
    /// snapshot install with steps left. A driver polls again at once then.
    pub fn has_ready(&self) -> bool {
        let synced = self.synced_seq;
        self.peers.active().any(|p| p.installing.is_some() || p.raft.has_ready() || p.unsynced.front().is_some_and(|u| u.seq <= synced))
    }

    /// With `defer_sync`: the sequence number a sync should cover now, if
    /// one is wanted and was not handed out yet. The driver calls
    /// [`Engine::sync`] (every write so far returned before this call),
    /// then [`Store::on_synced`] with the number.
    ///
    /// [`Engine::sync`]: meridian_storage::Engine::sync
    pub fn take_sync_request(&mut self) -> Option<u64> {
        std::mem::take(&mut self.sync_wanted).then_some(self.write_seq)
    }

    /// A sync asked for by [`Store::take_sync_request`] returned after
    /// `micros` (the driver's measurement: the store reads no clock):
    /// every write up to `seq` is durable. The next poll tells raft-rs and
    /// sends the messages that waited for it.
    pub fn on_synced(&mut self, seq: u64, micros: u64) {
        debug_assert!(seq <= self.write_seq, "a sync of a write never made");
        self.metrics.sync_micros += micros;
        if seq > self.synced_seq {
            self.synced_seq = seq;
            self.metrics.synced_writes += 1;
        }
    }

    fn poll_round(&mut self) -> Result<Vec<Completion>, RaftstoreError> {
        self.metrics.poll_rounds += 1;
        self.release_synced();
        let mut installed = Vec::new();
        self.continue_installs(&mut installed)?;
        self.completions.extend(installed);
        self.flush_staged();
        self.handle_feedback();
        self.handle_snapshot_requests();

        // Phase 1: collect every ready range into one batch. Committed
        // entries (raft-rs hands out only entries already durable here)
        // are applied into the same batch, so a round costs one engine
        // write. The write is not synced: a crash loses a suffix of the
        // writes, and commit index, applies and new entries go together.
        // What raft needs durable (new entries, a snapshot, a term or vote
        // change: raft-rs's must_sync, as etcd's MustSync) is synced after
        // the write, by `poll` or by the driver; until then raft-rs does
        // not count those entries and a follower's replies wait.
        let mut batch = WriteBatch::new();
        let mut must_sync = false;
        let mut readies = Vec::new();
        let mut done = Vec::new();
        // Only the active ranges that are ready now (see `peers`). One
        // that a range staged below makes ready waits for the next round,
        // which `has_ready` asks for at once.
        let ids: Vec<u64> = self.peers.active().filter(|p| p.installing.is_none() && p.raft.has_ready()).map(|p| p.range_id()).collect();
        for range_id in ids {
            let Some((rd, installed)) = self.stage_ready(range_id, &mut batch, &mut done)? else { continue };
            must_sync |= rd.must_sync();
            readies.push((range_id, rd, installed));
        }
        // Leader messages go out before the write; replies after the sync.
        self.flush_outbox();
        if !batch.is_empty() {
            self.engine.write(&batch, false)?;
        }
        self.open_split_ranges()?;
        if must_sync {
            self.write_seq += 1;
            if self.cfg.defer_sync {
                self.sync_wanted = true;
            } else {
                self.engine.sync()?;
                self.on_synced(self.write_seq, 0);
            }
        }

        // Phase 2: hand the readies back to raft-rs, to be counted as
        // persisted once their sync is done.
        let mut apply_batch = WriteBatch::new();
        let mut installs = Vec::new();
        for (range_id, mut rd, installed) in readies {
            // A replica a split replaced after its Ready was taken: dropped
            // with it (the split's state replaced what it would persist).
            let Some(p) = self.peers.get_mut(&range_id) else { continue };
            if installed {
                // Decided and written: the staged data moves into place
                // from here, a step per round (the first one below).
                p.installing = Some(p.desc.namespace_id);
                installs.push(range_id);
            }
            let messages = rd.take_persisted_messages();
            let number = rd.number();
            p.raft.advance_append_async(rd);
            // A Ready with nothing to make durable still waits behind
            // earlier ones: raft-rs counts Readies as persisted in order.
            p.unsynced.push_back(UnsyncedReady { number, seq: self.write_seq, messages });
            p.advance_applied();
            if !p.reads.is_empty() {
                p.reopen_reads(self.now_tick, self.incarnation);
            }
            p.maybe_leave_joint();
            p.maybe_compact(&self.cfg, &mut apply_batch)?;
        }
        self.release_synced();
        for range_id in installs {
            self.install_step(range_id, &mut done)?;
        }
        // Log compaction: it needs no sync (compacted entries are applied
        // and their effects are in the engine).
        if !apply_batch.is_empty() {
            self.engine.write(&apply_batch, false)?;
        }
        self.answer_reads(&mut done);
        self.flush_outbox();
        let mut out = std::mem::take(&mut self.completions);
        out.extend(done);
        Ok(out)
    }

    /// Phase 1 for one range: takes its Ready, if it has one, and stages
    /// what it carries into `batch` (a snapshot install, new entries, the
    /// hard state, the applies of committed entries), records its read
    /// states and queues the leader's messages. Returns the Ready, to be
    /// handed back in phase 2, and whether it installed a snapshot.
    fn stage_ready(
        &mut self,
        range_id: u64,
        batch: &mut WriteBatch,
        done: &mut Vec<Completion>,
    ) -> Result<Option<(Ready, bool)>, RaftstoreError> {
        // A replica a split replaced earlier in this round is gone.
        let Some(p) = self.peers.get_mut(&range_id) else { return Ok(None) };
        // An install in progress holds the range's Readies back: nothing
        // is applied or answered before its data is all in place.
        if p.installing.is_some() || !p.raft.has_ready() {
            return Ok(None);
        }
        let mut rd = p.raft.ready();
        let msgs = rd.take_messages();
        let mut installed = false;
        if !rd.snapshot().is_empty() {
            let snap = rd.snapshot().clone();
            let index = snap.get_metadata().index;
            if !self.incoming.take_accepted(range_id, index) {
                return Err(RaftstoreError::Storage(format!(
                    "range {range_id}: the snapshot at index {index} reached a Ready without its data staged"
                )));
            }
            p.stage_snapshot(&snap, batch)?;
            installed = true;
        }
        self.metrics.entries_persisted += rd.entries().len() as u64;
        p.adopt_forwarded(rd.entries(), self.cfg.node_id, self.tag_nonce);
        p.raft.mut_store().append(rd.entries(), batch);
        if let Some(hs) = rd.hs() {
            p.raft.mut_store().set_hard_state(hs, batch);
        }
        p.record_read_states(rd.take_read_states(), self.incarnation);
        self.queue_messages(range_id, msgs);
        // After a snapshot install the state machine reloads from the
        // engine first (phase 2).
        let committed = if installed { Vec::new() } else { rd.take_committed_entries() };
        let mut overlay = BTreeMap::new();
        self.apply_entries(range_id, committed, batch, &mut overlay, done)?;
        Ok(Some((rd, installed)))
    }

    /// Tells raft-rs which Readies a finished sync made durable (in order)
    /// and queues the messages they held back.
    fn release_synced(&mut self) {
        let synced = self.synced_seq;
        let ids: Vec<u64> =
            self.peers.active().filter(|p| p.unsynced.front().is_some_and(|u| u.seq <= synced)).map(|p| p.range_id()).collect();
        for range_id in ids {
            let p = self.peers.get_mut(&range_id).expect("listed");
            let mut last = 0;
            let mut msgs = Vec::new();
            while p.unsynced.front().is_some_and(|u| u.seq <= synced) {
                let u = p.unsynced.pop_front().expect("front");
                last = u.number;
                msgs.extend(u.messages);
            }
            p.raft.on_persist_ready(last);
            p.advance_applied();
            self.queue_messages(range_id, msgs);
        }
    }
}
