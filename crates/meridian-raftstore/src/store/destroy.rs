//! Destroying a replica this node no longer needs: its log, raft state,
//! descriptor and data deleted in one synced write, a tombstone left in
//! their place.
//!
//! A removed replica goes dormant and keeps everything (see `Peer::dormant_at`):
//! replica ids are node ids, so only someone who knows a *committed*
//! configuration may say the replica is surely out. The caller brings that
//! knowledge ([`Retirement`]):
//!
//! ```text
//!  Removed { conf_ver: X }  a configuration at conf_ver X, committed, leaves
//!                           this node out, and the replica went dormant at
//!                           a conf_ver <= X. No quorum of any configuration
//!                           from X on counts this replica's log; a later
//!                           re-add starts it afresh (raft-rs gives an added
//!                           node a new progress, matched 0): a snapshot.
//!  Retired                  the range itself is gone for good (a dropped
//!                           namespace's sealed range): nothing it holds is
//!                           ever read again.
//! ```
//!
//! The tombstone (`keys::tombstone_key`, the conf_ver; `u64::MAX` for a
//! retired range) is what keeps a destroyed replica destroyed: a message
//! from a member that still runs a configuration at or below it (a stale
//! leader that would count the empty replica's acknowledgements towards
//! its old quorum) is refused instead of creating an empty replica. A
//! message from a later configuration (this node added back) creates the
//! replica afresh.

use meridian_storage::snapshot::clear_staged;
use meridian_storage::{keys, Cf, Engine, WriteBatch};
use tracing::info;

use super::Store;
use crate::error::RaftstoreError;

/// Why a replica may be destroyed: what the caller knows that the replica
/// cannot know by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retirement {
    /// The range's configuration at `conf_ver`, committed, does not hold
    /// this node (the placement catalog's descriptor says so).
    Removed {
        /// The epoch (`conf_ver`) of that configuration.
        conf_ver: u64,
    },
    /// The range was retired (its namespace dropped): it serves nothing,
    /// ever again.
    Retired,
}

impl Retirement {
    /// The tombstone's conf_ver: messages at or below it are refused.
    fn tombstone(self) -> u64 {
        match self {
            Retirement::Removed { conf_ver } => conf_ver,
            Retirement::Retired => u64::MAX,
        }
    }
}

/// What [`Store::destroy_replica`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destroyed {
    /// The replica and its data are gone; a tombstone stays.
    Done,
    /// A retired range's replica was put to sleep (it answered what it
    /// held) and still has writes on their way to disk: ask again after
    /// the next round.
    Later,
}

/// Tombstones: the conf_ver each destroyed replica's range was at.
pub(super) type Tombstones = std::collections::BTreeMap<u64, u64>;

/// Reads every tombstone on `engine` (at a store's open).
pub(super) fn load_tombstones(engine: &dyn Engine) -> Result<Tombstones, RaftstoreError> {
    let mut out = Tombstones::new();
    let mut bad = None;
    engine.scan(Cf::RaftState, &[], &[0xff; 9], &mut |k, v| {
        if k.len() == 12 && k.ends_with(b"tomb") {
            let range = keys::range_of(k).unwrap_or(0);
            match <[u8; 8]>::try_from(v) {
                Ok(b) => {
                    out.insert(range, u64::from_be_bytes(b));
                }
                Err(_) => {
                    bad = Some(range);
                    return false;
                }
            }
        }
        true
    })?;
    match bad {
        Some(range) => Err(RaftstoreError::Storage(format!("corrupt tombstone of range {range}"))),
        None => Ok(out),
    }
}

impl Store {
    /// Deletes this node's replica of `range_id` (see the module docs).
    /// Refused, changing nothing, for a replica that is not dormant (unless
    /// the range is retired), went dormant at a later epoch than the
    /// caller's, or is moving a snapshot into place.
    pub fn destroy_replica(&mut self, range_id: u64, why: Retirement) -> Result<Destroyed, RaftstoreError> {
        let node = self.cfg.node_id;
        let p = self.peers.get_mut(&range_id).ok_or(RaftstoreError::RangeNotFound { range_id })?;
        let refuse = |reason: String| Err(RaftstoreError::InvalidRequest { range_id, reason });
        match (why, p.dormant_at) {
            (Retirement::Removed { .. }, None) => {
                return refuse("the replica is in the range's configuration here; remove it from the range first".into())
            }
            (Retirement::Removed { conf_ver }, Some(d)) if d > conf_ver => {
                return refuse(format!(
                    "the replica was removed at epoch {d}, after the configuration named (epoch {conf_ver}): that one may not be the newest"
                ))
            }
            (Retirement::Retired, None) => {
                let done = p.go_dormant(u64::MAX);
                self.completions.extend(done);
            }
            _ => {}
        }
        let p = self.peers.get(&range_id).expect("looked up above");
        if p.installing.is_some() {
            return Err(RaftstoreError::SnapshotInstalling { range_id });
        }
        if !p.unsynced.is_empty() {
            return Ok(Destroyed::Later);
        }
        let namespace_id = p.desc.namespace_id;
        // Data belongs to the namespace: kept if another replica here holds
        // the same namespace.
        let shared = self.peers.iter().any(|(id, q)| *id != range_id && q.desc.namespace_id == namespace_id);
        let mut batch = WriteBatch::new();
        let (start, end) = keys::range_span(range_id);
        for cf in [Cf::RaftLog, Cf::RaftState, Cf::ApplyState, Cf::Meta] {
            batch.delete_range(cf, start.clone(), end.clone());
        }
        if !shared {
            let (start, end) = keys::range_span(namespace_id);
            batch.delete_range(Cf::Data, start, end);
        }
        clear_staged(range_id, &mut batch);
        let tombstone = why.tombstone().max(self.tombstones.get(&range_id).copied().unwrap_or(0));
        batch.put(Cf::RaftState, keys::tombstone_key(range_id), tombstone.to_be_bytes().to_vec());
        self.engine.write(&batch, true)?;
        self.incoming.forget(range_id);
        self.split_campaigns.retain(|(id, ..)| *id != range_id);
        self.peers.remove(&range_id);
        self.tombstones.insert(range_id, tombstone);
        self.metrics.replicas_destroyed += 1;
        info!(
            node,
            range = range_id,
            namespace = namespace_id,
            data_kept = shared,
            ?why,
            "replica destroyed; tombstone at epoch {tombstone}"
        );
        Ok(Destroyed::Done)
    }

    /// The tombstone of `range_id` if its replica here was destroyed: the
    /// epoch at or below which messages for it are refused.
    pub fn tombstone(&self, range_id: u64) -> Option<u64> {
        self.tombstones.get(&range_id).copied()
    }
}
