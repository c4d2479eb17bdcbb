//! Applying committed entries: each goes to the range's state machine
//! (normal entries) or its configuration (conf changes, applied by
//! `Peer::apply_conf_change_entry`), staged into the round's write batch,
//! and answers the proposal it settles (or the ones it shows dropped).

use std::collections::BTreeMap;

use meridian_storage::WriteBatch;
use raft::prelude::{Entry, EntryType};

use super::{AppliedEntry, Completion, Store};
use crate::error::RaftstoreError;
use crate::state_machine::ApplyContext;

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
                        let mut ctx = ApplyContext::new(range_id, &*self.engine, batch, overlay, e.term).for_namespace(namespace_id);
                        response = p.sm.apply(&mut ctx, e.index, &e.data);
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
        Ok(())
    }
}
