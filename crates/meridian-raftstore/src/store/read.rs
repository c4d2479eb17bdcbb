//! Reads: linearizable reads (ReadIndex: the leader confirms an index,
//! this replica answers once it applied that far), serializable reads of
//! the local applied state, and answering the reads that became ready in
//! a poll round. The per-range work is `Peer::answer_reads` and, on
//! every tick, `Peer::retry_reads`.

use super::{not_found, Completion, RangeRequest, RequestId, Store};
use crate::error::RaftstoreError;
use crate::peer::{read_ctx, PendingRead};

impl Store {
    /// Starts a linearizable read (ReadIndex). Works on followers too: the
    /// leader confirms the index, then this replica answers once it has
    /// applied that far.
    pub fn read_index(&mut self, req: RangeRequest, query: Vec<u8>) -> Result<RequestId, RaftstoreError> {
        let range_id = req.range_id;
        let id = self.next_id();
        let now = self.now_tick;
        let max = self.cfg.max_pending_per_range;
        let ctx = read_ctx(self.incarnation, id);
        let p = self.peers.get_mut(&range_id).ok_or_else(|| not_found(range_id))?;
        p.serving()?;
        req.check(&p.desc)?;
        if p.pending() >= max {
            return Err(RaftstoreError::TooBusy { range_id, pending: p.pending() });
        }
        p.wake();
        p.raft.read_index(ctx);
        p.reads.push_back(PendingRead { id, query, issued_tick: now, retries: 0, index: None });
        Ok(id)
    }

    /// Serializable read from this replica's applied state (may be stale).
    pub fn read_local(&self, req: RangeRequest, query: &[u8]) -> Result<Vec<u8>, RaftstoreError> {
        let range_id = req.range_id;
        let p = self.peers.get(&range_id).ok_or_else(|| not_found(range_id))?;
        p.serving()?;
        req.check(&p.desc)?;
        Ok(p.sm.read(&*self.engine, p.desc.namespace_id, query))
    }

    /// Answers, into `done`, every range's reads whose read index is
    /// applied (`Peer::answer_reads`).
    pub(super) fn answer_reads(&mut self, done: &mut Vec<Completion>) {
        // Reads came through `get_mut`: their ranges are active.
        for range_id in self.peers.active_ids() {
            if let Some(p) = self.peers.get_mut(&range_id) {
                p.answer_reads(&*self.engine, done);
            }
        }
    }
}
