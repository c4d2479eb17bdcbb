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
//! The tombstone (`keys::tombstone_key`: the conf_ver, `u64::MAX` for a
//! retired range, and the term and vote the replica had reached) is what
//! keeps a destroyed replica destroyed: a message from a member that still
//! runs a configuration at or below it (a stale leader that would count
//! the empty replica's acknowledgements towards its old quorum, a late
//! candidate) is refused, whether or not the replica was created again,
//! until a snapshot brings it past that configuration. A message from a
//! later configuration (this node added back) creates the replica afresh,
//! with the tombstone's term and vote (it never votes twice in a term),
//! and a parent range applying a split late does not recreate it.

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
    /// A forced promotion started the range's next lineage (the
    /// generation of `conf_ver`, see `promote.rs`) without this replica,
    /// which belongs to an older one: its log and configuration are never
    /// carried on. Its tombstone refuses the whole old generation.
    Superseded {
        /// An epoch of the new lineage.
        conf_ver: u64,
    },
}

impl Retirement {
    /// The tombstone's conf_ver: messages at or below it are refused.
    fn tombstone(self) -> u64 {
        match self {
            Retirement::Removed { conf_ver } => conf_ver,
            Retirement::Retired => u64::MAX,
            Retirement::Superseded { conf_ver } => super::promote::before_generation(conf_ver),
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

/// What a destroyed replica leaves behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tombstone {
    /// Messages from configurations at or below this epoch are refused
    /// (`u64::MAX`: the range was retired).
    pub conf_ver: u64,
    /// The replica's raft term and vote when it was destroyed.
    pub term: u64,
    /// See `term`.
    pub vote: u64,
}

impl Tombstone {
    fn encode(self) -> Vec<u8> {
        [self.conf_ver, self.term, self.vote].iter().flat_map(|v| v.to_be_bytes()).collect()
    }

    fn decode(v: &[u8]) -> Option<Tombstone> {
        let word = |i: usize| Some(u64::from_be_bytes(v.get(i * 8..i * 8 + 8)?.try_into().ok()?));
        (v.len() == 24).then_some(())?;
        Some(Tombstone { conf_ver: word(0)?, term: word(1)?, vote: word(2)? })
    }
}

/// Tombstones by range.
pub(super) type Tombstones = std::collections::BTreeMap<u64, Tombstone>;

/// Reads every tombstone on `engine` (at a store's open).
pub(super) fn load_tombstones(engine: &dyn Engine) -> Result<Tombstones, RaftstoreError> {
    let mut out = Tombstones::new();
    let mut bad = None;
    engine.scan(Cf::RaftState, &[], &[0xff; 9], &mut |k, v| {
        if k.len() == 12 && k.ends_with(b"tomb") {
            let range = keys::range_of(k).unwrap_or(0);
            match Tombstone::decode(v) {
                Some(t) => {
                    out.insert(range, t);
                }
                None => {
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
    /// caller's, or is moving a snapshot into place (a retired range's
    /// replica is put to sleep first either way).
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
            (Retirement::Superseded { conf_ver }, dormant) => {
                let local = p.desc.epoch.conf_ver;
                if super::promote::generation(local) >= super::promote::generation(conf_ver) {
                    return refuse(format!(
                        "the replica is at epoch {local}, of the lineage of epoch {conf_ver} or a later one: no forced promotion superseded it"
                    ));
                }
                if dormant.is_none() {
                    let done = p.go_dormant(local);
                    self.completions.extend(done);
                }
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
        // the same namespace. A replica never filled (no configuration yet:
        // its namespace id is a guess) holds none.
        let cs = &p.raft.store().raft_state().conf_state;
        let filled = !cs.voters.is_empty() || !cs.learners.is_empty() || p.raft.store().apply_state().applied_index > 0;
        let shared = !filled || self.peers.iter().any(|(id, q)| *id != range_id && q.desc.namespace_id == namespace_id);
        let (term, vote) = (p.raft.raft.term, p.raft.raft.vote);
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
        let conf_ver = why.tombstone().max(self.tombstones.get(&range_id).map_or(0, |t| t.conf_ver));
        let tombstone = Tombstone { conf_ver, term, vote };
        batch.put(Cf::RaftState, keys::tombstone_key(range_id), tombstone.encode());
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
            term,
            "replica destroyed; tombstone at epoch {conf_ver}"
        );
        Ok(Destroyed::Done)
    }

    /// The tombstone of `range_id` if its replica here was destroyed: the
    /// epoch at or below which messages for it are refused.
    pub fn tombstone(&self, range_id: u64) -> Option<u64> {
        self.tombstones.get(&range_id).map(|t| t.conf_ver)
    }

    /// Whether a message from a configuration at `conf_ver` must be refused
    /// for `range_id`: its replica here was destroyed at or past that
    /// configuration and no snapshot has brought one past it since.
    pub(super) fn tombstoned(&self, range_id: u64, conf_ver: u64) -> bool {
        let Some(t) = self.tombstones.get(&range_id) else { return false };
        conf_ver <= t.conf_ver && self.peers.get(&range_id).is_none_or(|p| p.desc.epoch.conf_ver <= t.conf_ver)
    }

    /// The term and vote a replica of `range_id` created here again starts
    /// from (zero without a tombstone).
    pub(super) fn tombstone_vote(&self, range_id: u64) -> (u64, u64) {
        self.tombstones.get(&range_id).map_or((0, 0), |t| (t.term, t.vote))
    }
}
