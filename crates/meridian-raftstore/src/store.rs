//! The node-level Multi-Raft driver core. See the crate docs for the shape
//! of a poll round.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use meridian_codes::ReplicaState;
use meridian_storage::{
    build_snapshot, keys, Cf, Engine, EntryCacheBudget, KeyInterval, PeerStorage, RangeDescriptor, RangeEpoch, StorageError, WriteBatch,
};
use meridian_transport::{Feedback, RaftEnvelope, Transport};
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeType, ConfChangeV2, Entry, EntryType, Message, MessageType, Snapshot};
use raft::{RawNode, ReadOnlyOption, SnapshotStatus, StateRole};
use tracing::{debug, info, warn};

use crate::config::{SnapshotBuild, StoreConfig};
use crate::error::RaftstoreError;
use crate::logger::raft_logger;
use crate::peer::{splitmix, Forwarded, Peer, PendingRead, Proposal, ProposalTag, Staged, UnsyncedReady};
use crate::state_machine::{ApplyContext, StateMachineFactory};

/// What every request handed to the store names: the range, the epoch the
/// caller's route has for it, and the keys it touches. The store refuses a
/// request whose epoch is not the replica's ([`RaftstoreError::EpochMismatch`])
/// or whose keys lie outside the range's span
/// ([`RaftstoreError::KeyNotInRange`]), before it changes anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    pub range_id: u64,
    pub epoch: RangeEpoch,
    pub keys: Vec<KeyInterval>,
}

impl RangeRequest {
    /// A request to `range_id` at `epoch` that names no keys (admin
    /// commands, lease commands).
    pub fn new(range_id: u64, epoch: RangeEpoch) -> Self {
        RangeRequest { range_id, epoch, keys: Vec::new() }
    }

    /// The same request, touching `keys`.
    pub fn with_keys(mut self, keys: Vec<KeyInterval>) -> Self {
        self.keys = keys;
        self
    }

    /// Refuses the request if it does not fit `desc`.
    fn check(&self, desc: &RangeDescriptor) -> Result<(), RaftstoreError> {
        if self.epoch != desc.epoch {
            return Err(RaftstoreError::EpochMismatch { range_id: desc.range_id, current: desc.epoch });
        }
        match self.keys.iter().find(|k| !desc.contains_interval(k)) {
            Some(k) => Err(RaftstoreError::KeyNotInRange { range_id: desc.range_id, key: k.key.clone() }),
            None => Ok(()),
        }
    }
}

/// The on-disk format this build reads and writes, recorded at bootstrap.
/// Format 1: before the bootstrap record (ranges were created again on
/// every start). Format 2: data keyed by range id. Format 3: data keyed by
/// namespace id (descriptors name it).
pub const STORE_FORMAT: u64 = 3;

/// Where the bootstrap record lives (range id 0 is never a range).
const BOOTSTRAP_KEY: &[u8] = b"bootstrap";

/// (format, node id) of a bootstrap record.
fn decode_bootstrap(raw: &[u8]) -> Option<(u64, u64)> {
    let format = u64::from_be_bytes(raw.get(..8)?.try_into().ok()?);
    let node = u64::from_be_bytes(raw.get(8..16)?.try_into().ok()?);
    (raw.len() == 16).then_some((format, node))
}

/// What [`Store::bootstrap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap {
    /// The engine was empty: these many replicas were created.
    Created(usize),
    /// The engine was bootstrapped before: nothing was created.
    Existing,
}

/// Identifies a proposal or read handed to the store; its answer comes back
/// as a [`Completion`] from [`Store::poll`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub id: RequestId,
    pub range_id: u64,
    /// The state machine's response, with the index the request was applied
    /// (or read) at.
    pub result: Result<(u64, Vec<u8>), RaftstoreError>,
}

impl Completion {
    /// A request whose fate this replica cannot know (it may still be
    /// applied elsewhere).
    fn unknown(id: RequestId, range_id: u64) -> Completion {
        Completion { id, range_id, result: Err(RaftstoreError::OutcomeUnknown { range_id }) }
    }
}

/// An applied entry, recorded for the simulation's checkers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEntry {
    pub range_id: u64,
    pub index: u64,
    pub term: u64,
    pub data: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeStatus {
    pub range_id: u64,
    pub role: StateRole,
    pub term: u64,
    pub leader_id: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub first_index: u64,
    /// The namespace whose data the replica holds.
    pub namespace_id: u64,
    /// The span the replica serves (`end` empty: to the end of the keyspace).
    pub start: Vec<u8>,
    pub end: Vec<u8>,
    pub epoch: RangeEpoch,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Non-empty while the range is in a joint configuration (a membership
    /// change entered, not yet left).
    pub voters_outgoing: Vec<u64>,
    pub quiesced: bool,
    /// Not in the range's configuration (it applied its removal, or a
    /// member told it so): serves nothing until added back.
    pub dormant: bool,
    /// On a leader: each replica's matched index and replication state.
    pub progress: Vec<(u64, u64, ReplicaState)>,
    /// Other nodes this store heard from within two election timeouts.
    pub live_peers: Vec<u64>,
}

/// raft-rs's progress state as the shared [`ReplicaState`].
fn replica_state(s: raft::ProgressState) -> ReplicaState {
    match s {
        raft::ProgressState::Probe => ReplicaState::Probe,
        raft::ProgressState::Replicate => ReplicaState::Replicate,
        raft::ProgressState::Snapshot => ReplicaState::Snapshot,
    }
}

/// Counters an operator (and the group-commit benchmark) watches.
#[derive(Debug, Clone, Copy, Default)]
pub struct StoreMetrics {
    pub poll_rounds: u64,
    pub synced_writes: u64,
    pub entries_persisted: u64,
    pub entries_applied: u64,
    pub messages_sent: u64,
    pub messages_rejected: u64,
    pub snapshots_built: u64,
    pub snapshots_installed: u64,
    pub proposals_dropped: u64,
    /// Proposals a follower handed to its leader inside raft.
    pub proposals_forwarded: u64,
    /// ... of which this many never reached this replica's log, before
    /// the forward timeout or while it followed the leader they were
    /// handed to, and were answered `OutcomeUnknown`.
    pub forwarded_unknown: u64,
    pub read_timeouts: u64,
    /// Microseconds the driver's sync thread spent in log fsyncs (its
    /// own measurement; 0 when `poll` syncs inline).
    pub sync_micros: u64,
    /// Bytes held now by the entry caches of every range here.
    pub entry_cache_bytes: u64,
    /// The engine's read cache of hot records, if it has one: reads it
    /// answered, reads that went to the engine, bytes held now.
    pub read_cache_hits: u64,
    pub read_cache_misses: u64,
    pub read_cache_bytes: u64,
}

/// Bytes of entries a range's leader holds appended but uncommitted; past
/// it, raft-rs drops new proposals (local ones answer `TooBusy`,
/// forwarded ones time out as `OutcomeUnknown`).
pub const MAX_UNCOMMITTED_BYTES: u64 = 32 << 20;

/// Snapshot builds handed to the driver and not yet answered, per node
/// (each holds an engine snapshot, which pins files on disk).
pub const MAX_SNAPSHOT_BUILDS: usize = 4;

/// A snapshot build that the store hands to its driver
/// ([`SnapshotBuild::Deferred`]): the driver runs [`SnapshotTask::build`]
/// wherever it likes (a thread of its own) and gives the result back with
/// [`Store::on_snapshot_built`]. The task reads only the engine snapshot it
/// holds, so it may run concurrently with the poll loop.
pub struct SnapshotTask {
    /// The range the snapshot is for.
    pub range_id: u64,
    build: Box<dyn FnOnce() -> Result<Snapshot, StorageError> + Send>,
}

impl std::fmt::Debug for SnapshotTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotTask").field("range_id", &self.range_id).finish_non_exhaustive()
    }
}

impl SnapshotTask {
    /// Builds the snapshot (reads the engine snapshot; may take long).
    pub fn build(self) -> Result<Snapshot, StorageError> {
        (self.build)()
    }
}

pub struct Store {
    cfg: StoreConfig,
    engine: Arc<dyn Engine>,
    transport: Arc<dyn Transport>,
    factory: Arc<dyn StateMachineFactory>,
    peers: BTreeMap<u64, Peer>,
    now_tick: u64,
    next_request: u64,
    /// Incremented durably at every open. Read-index contexts carry it, so
    /// a late answer to a read from before a restart can never be matched
    /// to a new read with the same request id.
    incarnation: u64,
    /// Names this life of the store in [`ProposalTag`]s.
    tag_nonce: u64,
    /// Tick at which each peer node was last heard from.
    last_heard: HashMap<u64, u64>,
    known_nodes: BTreeSet<u64>,
    outbox: BTreeMap<u64, Vec<RaftEnvelope>>,
    completions: Vec<Completion>,
    applied_log: Vec<AppliedEntry>,
    /// Builds waiting for the driver to take them ([`Store::take_snapshot_tasks`]).
    snapshot_tasks: Vec<SnapshotTask>,
    /// Ranges whose build the driver holds (taken, not yet answered).
    snapshot_in_flight: BTreeSet<u64>,
    metrics: StoreMetrics,
    /// Sync sequence: every round whose write raft needs durable takes the
    /// next number; `synced_seq` is the highest a finished engine sync
    /// covered. Readies wait in `Peer::unsynced` for their number.
    write_seq: u64,
    synced_seq: u64,
    /// `defer_sync`: a sync of `write_seq` is wanted, not yet handed out.
    sync_wanted: bool,
    /// Shared by the entry caches of every range here.
    entry_cache_budget: EntryCacheBudget,
}

/// Puts a replica that is no longer in its range's configuration (as of
/// `conf_ver`) to sleep; answers what it still held. Safe between `ready()`
/// and `advance_append`: stepping down creates no messages and changes
/// neither term nor vote.
fn go_dormant(p: &mut Peer, conf_ver: u64) -> Vec<Completion> {
    let range_id = p.desc.range_id;
    p.dormant_at = Some(conf_ver);
    if p.raft.raft.state == StateRole::Leader {
        // raft-rs keeps a removed leader leading without its own progress
        // entry (the next persist would panic), and a cut-off leader told
        // of its removal must stop serving leases and reads. Step down: the
        // voters left elect a leader among them.
        let term = p.raft.raft.term;
        p.raft.raft.become_follower(term, raft::INVALID_ID);
    }
    // Its in-flight proposals may still commit on the others; its reads
    // cannot be answered.
    let mut done = Vec::new();
    for s in p.staged.drain(..) {
        done.push(Completion { id: s.id, range_id, result: Err(RaftstoreError::RangeRemoved { range_id }) });
    }
    let forwarded = std::mem::take(&mut p.forwarded).into_keys();
    for x in p.proposals.drain(..).filter_map(|x| x.id).chain(forwarded) {
        done.push(Completion::unknown(x, range_id));
    }
    for r in p.reads.drain(..) {
        done.push(Completion { id: r.id, range_id, result: Err(RaftstoreError::RangeRemoved { range_id }) });
    }
    p.sm.removed(range_id);
    done
}

/// Tells raft-rs how far the state machine applied, as far as raft-rs
/// allows: a snapshot installed but not yet synced is applied here before
/// raft-rs counts it as persisted.
fn advance_applied(p: &mut Peer) {
    let log = &p.raft.raft.raft_log;
    let to = p.raft.store().apply_state().applied_index.min(log.committed).min(log.persisted);
    if to > log.applied {
        p.raft.advance_apply_to(to);
    }
}

/// Legacy single conf changes (from etcd-era tooling) as a V2 change.
fn legacy_to_v2(c: ConfChange) -> ConfChangeV2 {
    let mut single = raft::prelude::ConfChangeSingle::default();
    single.set_change_type(c.get_change_type());
    single.node_id = c.node_id;
    let mut v2 = ConfChangeV2::default();
    v2.set_changes(vec![single].into());
    v2.context = c.context;
    v2
}

/// A read-index context: the store's incarnation and the request id.
fn read_ctx(incarnation: u64, id: RequestId) -> Vec<u8> {
    let mut ctx = Vec::with_capacity(16);
    ctx.extend_from_slice(&incarnation.to_be_bytes());
    ctx.extend_from_slice(&id.0.to_be_bytes());
    ctx
}

fn parse_read_ctx(ctx: &[u8]) -> Option<(u64, u64)> {
    let inc = u64::from_be_bytes(ctx.get(..8)?.try_into().ok()?);
    let id = u64::from_be_bytes(ctx.get(8..16)?.try_into().ok()?);
    (ctx.len() == 16).then_some((inc, id))
}

fn not_found(range_id: u64) -> RaftstoreError {
    RaftstoreError::RangeNotFound { range_id }
}

impl Store {
    /// Bootstraps this node's store **once**: on an empty engine, creates the
    /// replicas of `ranges` that list `node_id` and records, in the same
    /// synced write, that the engine was bootstrapped (by which node, in
    /// which on-disk format). Every later start finds the record and
    /// creates nothing, whatever `ranges` says: the ranges on disk, their
    /// descriptors and a replica that was removed stay as they are.
    ///
    /// Refuses (changing nothing) an engine bootstrapped by another node,
    /// one in another on-disk format, and one that holds ranges but no
    /// record (written before the record existed: format 1).
    pub fn bootstrap(engine: &dyn Engine, node_id: u64, ranges: &[RangeDescriptor]) -> Result<Bootstrap, RaftstoreError> {
        let key = keys::data_key(0, BOOTSTRAP_KEY);
        if let Some(raw) = engine.get(Cf::RaftState, &key)? {
            let (format, by) = decode_bootstrap(&raw).ok_or_else(|| RaftstoreError::Storage("corrupt bootstrap record".into()))?;
            if format != STORE_FORMAT {
                return Err(RaftstoreError::IncompatibleData {
                    reason: format!(
                        "the data directory is in on-disk format {format}; this build reads format {STORE_FORMAT} and does not migrate: start the node on an empty data directory"
                    ),
                });
            }
            if by != node_id {
                return Err(RaftstoreError::IncompatibleData {
                    reason: format!("the data directory belongs to node {by}, not node {node_id}"),
                });
            }
            return Ok(Bootstrap::Existing);
        }
        if !PeerStorage::list_ranges(engine)?.is_empty() {
            return Err(RaftstoreError::IncompatibleData {
                reason: format!(
                    "the data directory holds ranges in on-disk format 1 (before ranges were recorded at bootstrap); this build reads format {STORE_FORMAT} and does not migrate: start the node on an empty data directory"
                ),
            });
        }
        let mut batch = WriteBatch::new();
        let mut created = 0;
        for desc in ranges.iter().filter(|d| d.replica(node_id).is_some()) {
            let voters = desc.replicas.iter().map(|r| r.node_id).collect();
            PeerStorage::bootstrap(&mut batch, desc, voters);
            created += 1;
        }
        let mut record = STORE_FORMAT.to_be_bytes().to_vec();
        record.extend_from_slice(&node_id.to_be_bytes());
        batch.put(Cf::RaftState, key, record);
        engine.write(&batch, true)?;
        Ok(Bootstrap::Created(created))
    }

    /// Opens every range stored on `engine`. Corruption in any range stops
    /// the node with an error naming the range: serving from a damaged log
    /// could lose acknowledged writes.
    pub fn open(
        cfg: StoreConfig,
        engine: Arc<dyn Engine>,
        transport: Arc<dyn Transport>,
        factory: Arc<dyn StateMachineFactory>,
    ) -> Result<Store, RaftstoreError> {
        let incarnation = Self::bump_incarnation(&*engine)?;
        let tag_nonce = splitmix(cfg.seed ^ splitmix(incarnation));
        let mut store = Store {
            incarnation,
            tag_nonce,
            cfg,
            engine,
            transport,
            factory,
            peers: BTreeMap::new(),
            now_tick: 0,
            // Request ids never repeat across restarts of the node.
            next_request: (incarnation << 32) | 1,
            last_heard: HashMap::new(),
            known_nodes: BTreeSet::new(),
            outbox: BTreeMap::new(),
            completions: Vec::new(),
            applied_log: Vec::new(),
            snapshot_tasks: Vec::new(),
            snapshot_in_flight: BTreeSet::new(),
            metrics: StoreMetrics::default(),
            write_seq: 0,
            synced_seq: 0,
            sync_wanted: false,
            entry_cache_budget: EntryCacheBudget::new(EntryCacheBudget::DEFAULT_BYTES),
        };
        for desc in PeerStorage::list_ranges(&*store.engine)? {
            let storage = PeerStorage::open(store.engine.clone(), desc.range_id)?;
            for r in &desc.replicas {
                if r.node_id != store.cfg.node_id {
                    store.known_nodes.insert(r.node_id);
                }
            }
            store.add_peer(desc, storage)?;
        }
        info!(node = store.cfg.node_id, ranges = store.peers.len(), "store opened");
        Ok(store)
    }

    fn bump_incarnation(engine: &dyn Engine) -> Result<u64, RaftstoreError> {
        // Range id 0 is never a range, so this key collides with nothing.
        let key = keys::data_key(0, b"incarnation");
        let prev = match engine.get(Cf::RaftState, &key)? {
            Some(v) => {
                u64::from_be_bytes(v.as_slice().try_into().map_err(|_| RaftstoreError::Storage("corrupt incarnation record".into()))?)
            }
            None => 0,
        };
        let next = prev.checked_add(1).ok_or_else(|| RaftstoreError::Storage("corrupt incarnation record (at its maximum)".into()))?;
        let mut batch = WriteBatch::new();
        batch.put(Cf::RaftState, key, next.to_be_bytes().to_vec());
        engine.write(&batch, true)?;
        Ok(next)
    }

    fn add_peer(&mut self, desc: RangeDescriptor, mut storage: PeerStorage) -> Result<(), RaftstoreError> {
        let range_id = desc.range_id;
        storage.set_cache_budget(self.entry_cache_budget.clone());
        let applied = storage.apply_state().applied_index;
        let rc = raft::Config {
            id: self.cfg.node_id,
            election_tick: self.cfg.election_ticks,
            heartbeat_tick: self.cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: self.cfg.max_size_per_msg_bytes,
            max_inflight_msgs: self.cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // Followers hand proposals over without asking; this bounds what
            // a leader holds uncommitted (raft-rs drops proposals past it).
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            read_only_option: ReadOnlyOption::Safe,
            ..Default::default()
        };
        rc.validate().map_err(|e| RaftstoreError::InvalidRequest { range_id, reason: e.to_string() })?;
        let raft =
            RawNode::new(&rc, storage, &raft_logger(self.cfg.node_id, range_id)).map_err(|e| RaftstoreError::Storage(e.to_string()))?;
        let mut sm = self.factory.create(&desc);
        sm.reload(&*self.engine, desc.namespace_id)?;
        let rng_state = splitmix(self.cfg.seed ^ splitmix(self.cfg.node_id ^ splitmix(range_id ^ splitmix(self.incarnation))));
        // A replica that was removed before a restart stays dormant.
        let cs = &raft.store().raft_state().conf_state;
        let initialized = !cs.voters.is_empty() || !cs.learners.is_empty();
        let removed = initialized && !Peer::in_conf(cs, self.cfg.node_id);
        let dormant_at = removed.then_some(desc.epoch.conf_ver);
        let mut peer = Peer {
            raft,
            unsynced: VecDeque::new(),
            sm,
            desc,
            staged: Vec::new(),
            proposals: VecDeque::new(),
            forwarded: BTreeMap::new(),
            reads: VecDeque::new(),
            idle_ticks: 0,
            quiesced: false,
            announce_quiesce: false,
            dormant_at,
            rng_state,
            orphaned_since: None,
            orphan_applied: 0,
            silent_ticks: 0,
        };
        peer.redraw_election_timeout();
        self.peers.insert(range_id, peer);
        Ok(())
    }

    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    pub fn metrics(&self) -> StoreMetrics {
        let mut m = self.metrics;
        m.entry_cache_bytes = self.entry_cache_budget.used() as u64;
        if let Some(c) = self.engine.cache_stats() {
            (m.read_cache_hits, m.read_cache_misses, m.read_cache_bytes) = (c.hits, c.misses, c.bytes as u64);
        }
        m
    }

    pub fn range_ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    pub fn descriptor(&self, range_id: u64) -> Option<&RangeDescriptor> {
        self.peers.get(&range_id).map(|p| &p.desc)
    }

    /// A request to `range_id` at the epoch of this store's replica, naming
    /// no keys: what a caller with an up-to-date route would send (tests,
    /// the simulation). Without a replica here, the default epoch.
    pub fn request(&self, range_id: u64) -> RangeRequest {
        RangeRequest::new(range_id, self.descriptor(range_id).map(|d| d.epoch).unwrap_or_default())
    }

    pub fn range_status(&self, range_id: u64) -> Option<RangeStatus> {
        let p = self.peers.get(&range_id)?;
        let r = &p.raft.raft;
        let cs = p.raft.store().raft_state().conf_state.clone();
        Some(RangeStatus {
            range_id,
            role: r.state,
            term: r.term,
            leader_id: r.leader_id,
            commit: r.raft_log.committed,
            applied: p.raft.store().apply_state().applied_index,
            last_index: r.raft_log.last_index(),
            first_index: p.raft.store().truncated_index() + 1,
            namespace_id: p.desc.namespace_id,
            start: p.desc.start.clone(),
            end: p.desc.end.clone(),
            epoch: p.desc.epoch,
            voters: cs.voters,
            learners: cs.learners,
            voters_outgoing: cs.voters_outgoing,
            quiesced: p.quiesced,
            dormant: p.dormant_at.is_some(),
            progress: if p.is_leader() {
                r.prs().iter().map(|(id, pr)| (*id, pr.matched, replica_state(pr.state))).collect()
            } else {
                Vec::new()
            },
            live_peers: self.live_peers(),
        })
    }

    /// Nodes this store heard from (any message, node pings included)
    /// within two election timeouts. A quiet range's progress does not show
    /// a dead follower; this does.
    fn live_peers(&self) -> Vec<u64> {
        let window = 2 * self.cfg.election_ticks as u64;
        let mut live: Vec<u64> =
            self.last_heard.iter().filter(|(_, t)| self.now_tick.saturating_sub(**t) <= window).map(|(n, _)| *n).collect();
        live.sort_unstable();
        live
    }

    pub fn statuses(&self) -> Vec<RangeStatus> {
        self.peers.keys().filter_map(|id| self.range_status(*id)).collect()
    }

    /// Entries applied since the last call (only with `record_applied`).
    pub fn take_applied(&mut self) -> Vec<AppliedEntry> {
        std::mem::take(&mut self.applied_log)
    }

    fn next_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

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
    fn flush_staged(&mut self) {
        let (node_id, nonce, now) = (self.cfg.node_id, self.tag_nonce, self.now_tick);
        let max_bytes = self.cfg.max_size_per_msg_bytes.max(1) as usize;
        for (&range_id, p) in self.peers.iter_mut() {
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
        p.proposals.push_back(Proposal { index, term: p.raft.raft.term, id: Some(id) });
        Ok(id)
    }

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

    // ---- inputs ----------------------------------------------------------

    /// Handles one inbound envelope. Bad input is counted and logged, never
    /// a panic.
    pub fn step(&mut self, env: RaftEnvelope) {
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
        if !self.peers.contains_key(&env.range_id) && !self.maybe_create_peer(&env, &msg) {
            return;
        }
        let p = self.peers.get_mut(&env.range_id).expect("present or created");
        if p.dormant_at.is_some_and(|d| env.conf_ver > d) {
            info!(node = self.cfg.node_id, range = env.range_id, from, conf_ver = env.conf_ver, "replica added back; active again");
            p.rejoin();
        }
        let cs = &p.raft.store().raft_state().conf_state;
        if env.conf_ver < p.desc.epoch.conf_ver && !Peer::in_conf(cs, from) {
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
        let mtype = msg.get_msg_type();
        let quiet_ok = matches!(mtype, MessageType::MsgHeartbeatResponse) || (env.quiesce && mtype == MessageType::MsgHeartbeat);
        if !quiet_ok {
            p.wake();
        }
        if let Err(e) = p.raft.step(msg) {
            debug!(range = env.range_id, from, "step: {e}");
        }
        p.after_raft_call();
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
        let done = go_dormant(p, env.conf_ver);
        self.completions.extend(done);
    }

    fn reject(&mut self, env: &RaftEnvelope, why: &str) {
        self.metrics.messages_rejected += 1;
        warn!(node = self.cfg.node_id, from = env.from_node, range = env.range_id, "rejected peer message: {why}");
    }

    /// A leader's message for a range this node does not have: this node
    /// was just added to it. Create an empty replica that log replication
    /// or a snapshot will fill. (A replica removed from here stays, dormant,
    /// so a later message for it never lands here.)
    fn maybe_create_peer(&mut self, env: &RaftEnvelope, msg: &Message) -> bool {
        let range_id = env.range_id;
        let leaderish = matches!(msg.get_msg_type(), MessageType::MsgAppend | MessageType::MsgHeartbeat | MessageType::MsgSnapshot);
        if !leaderish || range_id == 0 {
            self.reject(env, "message for an unknown range");
            return false;
        }
        let desc = RangeDescriptor {
            range_id,
            namespace_id: range_id,
            start: env.range_start.clone(),
            end: env.range_end.clone(),
            epoch: RangeEpoch::default(),
            replicas: vec![],
        };
        let mut batch = WriteBatch::new();
        PeerStorage::create_uninitialized(&mut batch, &desc);
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

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        let now = self.now_tick;
        let dead_after = 2 * self.cfg.election_ticks as u64;
        let orphan_ticks = 4 * self.cfg.election_ticks as u64;
        let forward_timeout = self.forward_timeout_ticks();
        let mut timeouts = Vec::new();
        let mut orphaned = Vec::new();
        let node_id = self.cfg.node_id;
        let mut probes = Vec::new();
        for p in self.peers.values_mut() {
            if p.dormant_at.is_some() {
                continue;
            }
            // A learner, or a replica outside its own configuration, never
            // campaigns. Removed (again, after being added back) before it
            // caught up, it would wait forever for a leader that no longer
            // writes to it, serving stale data. So when nothing has come for
            // the range in a while it asks the voters it knows: a member at
            // a later epoch answers with a removed hint (it goes dormant), a
            // live leader simply carries on. The probe is a term-0
            // heartbeat response, which raft-rs ignores everywhere but on
            // the leader, where it only marks the replica active.
            p.silent_ticks += 1;
            let cs = &p.raft.store().raft_state().conf_state;
            let initialized = !cs.voters.is_empty() || !cs.learners.is_empty();
            let votes = cs.voters.contains(&node_id) || cs.voters_outgoing.contains(&node_id);
            if initialized && !votes && p.silent_ticks > dead_after && p.silent_ticks % dead_after == 1 {
                let msgs: Vec<Message> = cs
                    .voters
                    .iter()
                    .filter(|&&v| v != node_id)
                    .map(|&to| {
                        let mut m = Message::default();
                        m.set_msg_type(MessageType::MsgHeartbeatResponse);
                        m.from = node_id;
                        m.to = to;
                        m
                    })
                    .collect();
                probes.push((p.range_id(), msgs));
            }
            if p.quiesced {
                // A quiet follower wakes when its leader's node goes silent,
                // or when it holds requests (proposals stranded by a lost
                // leadership must still be answered; see below).
                let leader = p.raft.raft.leader_id;
                let heard = self.last_heard.get(&leader).copied().unwrap_or(0);
                if leader != self.cfg.node_id && now.saturating_sub(heard) > dead_after {
                    debug!(range = p.range_id(), leader, "leader's node silent; waking");
                    p.wake();
                } else if p.pending() > 0 {
                    p.wake();
                } else {
                    continue;
                }
            }
            p.raft.tick();
            p.after_raft_call();
            // A leader elected while the range was joint finishes the change.
            p.maybe_leave_joint();
            if p.leader_is_idle() {
                p.idle_ticks += 1;
                if p.idle_ticks >= self.cfg.quiesce_after_ticks {
                    // One last heartbeat, flagged, tells followers to stop
                    // ticking too.
                    p.announce_quiesce = true;
                    p.raft.ping();
                    p.quiesced = true;
                }
            } else {
                p.idle_ticks = 0;
            }
            // Proposals left behind by a lost leadership are normally settled
            // when their index is applied (same term: done; other term:
            // dropped). If the log was cut short of them they would wait
            // for an index that may never come, so after a while they are
            // answered "outcome unknown", as etcd answers "leader changed".
            let applied = p.raft.raft.raft_log.applied;
            if p.is_leader() || p.proposals.is_empty() {
                p.orphaned_since = None;
            } else if p.orphaned_since.is_none() || p.orphan_applied != applied {
                // Applying makes progress towards them: restart the clock.
                p.orphaned_since = Some(now);
                p.orphan_applied = applied;
            } else {
                let since = p.orphaned_since.unwrap_or(now);
                if now - since > orphan_ticks {
                    let range_id = p.desc.range_id;
                    for x in p.proposals.drain(..) {
                        if let Some(id) = x.id {
                            orphaned.push(Completion::unknown(id, range_id));
                        }
                    }
                    p.orphaned_since = None;
                }
            }
            // Forwarded proposals the leader dropped (it lost leadership or
            // was handing it over) never come back as entries. Those handed
            // to a leader this replica no longer follows are answered at
            // once, as etcd answers "leader changed" (their fate is
            // unknown: the old leader may have replicated them); the rest
            // after the forward timeout.
            let range_id = p.desc.range_id;
            let leader = p.raft.raft.leader_id;
            let before = p.forwarded.len();
            p.forwarded.retain(|&id, f| {
                let keep = f.leader == leader && now.saturating_sub(f.at_tick) < forward_timeout;
                if !keep {
                    orphaned.push(Completion::unknown(id, range_id));
                }
                keep
            });
            self.metrics.forwarded_unknown += (before - p.forwarded.len()) as u64;
            // Re-send read requests raft-rs may have dropped.
            let retry = self.cfg.read_retry_ticks;
            let max = self.cfg.read_max_retries;
            let mut i = 0;
            while i < p.reads.len() {
                let r = &mut p.reads[i];
                if r.index.is_none() && now.saturating_sub(r.issued_tick) >= retry {
                    if r.retries >= max {
                        let r = p.reads.remove(i).expect("index in bounds");
                        timeouts.push((p.desc.range_id, r.id));
                        continue;
                    }
                    r.retries += 1;
                    r.issued_tick = now;
                    p.raft.read_index(read_ctx(self.incarnation, r.id));
                }
                i += 1;
            }
        }
        self.completions.extend(orphaned);
        for (range_id, msgs) in probes {
            self.queue_messages(range_id, msgs);
        }
        for (range_id, id) in timeouts {
            self.metrics.read_timeouts += 1;
            self.completions.push(Completion { id, range_id, result: Err(RaftstoreError::ReadTimeout { range_id }) });
        }
        if now.is_multiple_of(self.cfg.node_ping_ticks.max(1)) {
            for &n in &self.known_nodes {
                self.outbox.entry(n).or_default().push(RaftEnvelope { to_node: n, from_node: self.cfg.node_id, ..Default::default() });
            }
        }
    }

    // ---- the poll round -------------------------------------------------

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
        Ok(out)
    }

    /// True when a poll would find work without anything new arriving: a
    /// Ready raft-rs holds, or Readies a finished sync made durable. A
    /// driver polls again at once then.
    pub fn has_ready(&self) -> bool {
        let synced = self.synced_seq;
        self.peers.values().any(|p| p.raft.has_ready() || p.unsynced.front().is_some_and(|u| u.seq <= synced))
    }

    /// With `defer_sync`: the sequence number a sync should cover now, if
    /// one is wanted and was not handed out yet. The driver calls
    /// [`Engine::sync`] (every write so far returned before this call),
    /// then [`Store::on_synced`] with the number.
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
        let ids: Vec<u64> = self.peers.keys().copied().collect();
        for range_id in ids {
            let p = self.peers.get_mut(&range_id).expect("listed");
            if !p.raft.has_ready() {
                continue;
            }
            let mut rd = p.raft.ready();
            must_sync |= rd.must_sync();
            let msgs = rd.take_messages();
            let mut installed = false;
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                let desc = p.raft.mut_store().apply_snapshot(&snap, &mut batch)?;
                p.desc.namespace_id = desc.namespace_id;
                p.desc.start = desc.start;
                p.desc.end = desc.end;
                p.desc.epoch = desc.epoch.max(p.desc.epoch);
                p.desc.replicas = desc.replicas;
                installed = true;
            }
            self.metrics.entries_persisted += rd.entries().len() as u64;
            // This store's forwarded proposals, now in the log: from here on
            // they resolve by (index, term), definitely (an entry is
            // appended once, so another entry at its index means it is gone).
            if !p.forwarded.is_empty() {
                for e in rd.entries() {
                    let Some(tag) = ProposalTag::decode(&e.context) else { continue };
                    if tag.node_id != self.cfg.node_id || tag.nonce != self.tag_nonce || p.forwarded.remove(&tag.id).is_none() {
                        continue;
                    }
                    let at = p.proposals.partition_point(|x| x.index <= e.index);
                    p.proposals.insert(at, Proposal { index: e.index, term: e.term, id: Some(tag.id) });
                }
            }
            p.raft.mut_store().append(rd.entries(), &mut batch);
            if let Some(hs) = rd.hs() {
                p.raft.mut_store().set_hard_state(hs, &mut batch);
            }
            for rs in rd.take_read_states() {
                let Some((inc, id)) = parse_read_ctx(&rs.request_ctx) else { continue };
                if inc != self.incarnation {
                    continue;
                }
                if let Some(r) = p.reads.iter_mut().find(|r| r.id.0 == id) {
                    r.index = Some(rs.index);
                }
            }
            self.queue_messages(range_id, msgs);
            // After a snapshot install the state machine reloads from the
            // engine first (phase 2).
            let committed = if installed { Vec::new() } else { rd.take_committed_entries() };
            let mut overlay = BTreeMap::new();
            self.apply_entries(range_id, committed, &mut batch, &mut overlay, &mut done)?;
            readies.push((range_id, rd, installed));
        }
        // Leader messages go out before the write; replies after the sync.
        self.flush_outbox();
        if !batch.is_empty() {
            self.engine.write(&batch, false)?;
        }
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
        for (range_id, mut rd, installed) in readies {
            let p = self.peers.get_mut(&range_id).expect("listed");
            if installed {
                self.metrics.snapshots_installed += 1;
                let applied = p.raft.store().apply_state().applied_index;
                p.sm.reload(&*self.engine, p.desc.namespace_id)?;
                // Proposals the snapshot jumped over: their fate is unknown here.
                while p.proposals.front().is_some_and(|x| x.index <= applied) {
                    let x = p.proposals.pop_front().expect("front");
                    if let Some(id) = x.id {
                        done.push(Completion::unknown(id, range_id));
                    }
                }
                // Forwarded proposals: their entries may be among those the
                // snapshot covers, so they will never be applied here.
                for id in std::mem::take(&mut p.forwarded).into_keys() {
                    done.push(Completion::unknown(id, range_id));
                }
                info!(node = self.cfg.node_id, range = range_id, index = applied, "installed snapshot");
            }
            let messages = rd.take_persisted_messages();
            let number = rd.number();
            p.raft.advance_append_async(rd);
            // A Ready with nothing to make durable still waits behind
            // earlier ones: raft-rs counts Readies as persisted in order.
            p.unsynced.push_back(UnsyncedReady { number, seq: self.write_seq, messages });
            advance_applied(p);
            p.maybe_leave_joint();
            self.maybe_compact(range_id, &mut apply_batch)?;
        }
        self.release_synced();
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

    /// Tells raft-rs which Readies a finished sync made durable (in order)
    /// and queues the messages they held back.
    fn release_synced(&mut self) {
        let synced = self.synced_seq;
        let ids: Vec<u64> =
            self.peers.iter().filter(|(_, p)| p.unsynced.front().is_some_and(|u| u.seq <= synced)).map(|(id, _)| *id).collect();
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
            advance_applied(p);
            self.queue_messages(range_id, msgs);
        }
    }

    /// Applies committed entries of one range. `overlay` holds what earlier
    /// entries staged in `batch` (not yet in the engine), and must be
    /// shared by every call for the range that stages into the same batch.
    fn apply_entries(
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
                    let cc: Result<ConfChangeV2, String> = if e.get_entry_type() == EntryType::EntryConfChange {
                        ConfChange::parse_from_bytes(&e.data).map(legacy_to_v2).map_err(|x| x.to_string())
                    } else {
                        ConfChangeV2::parse_from_bytes(&e.data).map_err(|x| x.to_string())
                    };
                    match cc.map_err(|x| x.to_string()).and_then(|cc| p.raft.apply_conf_change(&cc).map_err(|x| x.to_string())) {
                        Ok(cs) => {
                            p.set_conf(&cs);
                            p.raft.mut_store().set_conf_state(cs.clone(), batch);
                            batch.put(Cf::Meta, keys::state_key(range_id), p.desc.encode());
                            info!(node = node_id, range = range_id, voters = ?cs.voters, outgoing = ?cs.voters_outgoing, learners = ?cs.learners, conf_ver = p.desc.epoch.conf_ver, "membership changed");
                            if Peer::in_conf(&cs, node_id) {
                                if p.dormant_at.is_some() {
                                    info!(node = node_id, range = range_id, "replica added back; active again");
                                    p.rejoin();
                                }
                            } else if p.dormant_at.is_none() {
                                let at = p.desc.epoch.conf_ver;
                                done.extend(go_dormant(p, at));
                                info!(node = node_id, range = range_id, "replica removed from the range; dormant (data kept)");
                            }
                        }
                        Err(err) => {
                            // A committed but invalid change is skipped alike on
                            // every replica.
                            warn!(range = range_id, index = e.index, "conf change not applied: {err}");
                            response = err.into_bytes();
                        }
                    }
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

    fn answer_reads(&mut self, done: &mut Vec<Completion>) {
        for (range_id, p) in self.peers.iter_mut() {
            let applied = p.raft.store().apply_state().applied_index;
            while p.reads.front().is_some_and(|r| r.index.is_some_and(|i| i <= applied)) {
                let r = p.reads.pop_front().expect("front");
                let value = p.sm.read(&*self.engine, p.desc.namespace_id, &r.query);
                done.push(Completion { id: r.id, range_id: *range_id, result: Ok((applied, value)) });
            }
            // A read whose index is known but later than an unanswered one
            // must not wait behind it forever: answer any that are ready.
            let mut i = 0;
            while i < p.reads.len() {
                if p.reads[i].index.is_some_and(|x| x <= applied) {
                    let r = p.reads.remove(i).expect("index in bounds");
                    let value = p.sm.read(&*self.engine, p.desc.namespace_id, &r.query);
                    done.push(Completion { id: r.id, range_id: *range_id, result: Ok((applied, value)) });
                } else {
                    i += 1;
                }
            }
        }
    }

    fn maybe_compact(&mut self, range_id: u64, batch: &mut WriteBatch) -> Result<(), RaftstoreError> {
        let p = self.peers.get_mut(&range_id).expect("caller checked");
        let applied = p.raft.store().apply_state().applied_index;
        let truncated = p.raft.store().truncated_index();
        if applied.saturating_sub(truncated) < self.cfg.compact_log_entries {
            return Ok(());
        }
        let mut to = applied;
        if p.is_leader() {
            // Keep what lagging followers still need, unless they are so far
            // behind that a snapshot is cheaper.
            // Only replicas heard from recently hold the log back: a dead
            // node must not make the log grow without bound; it catches up
            // by snapshot when it returns.
            let min_matched =
                p.raft.raft.prs().iter().filter(|(_, pr)| pr.recent_active).map(|(_, pr)| pr.matched).min().unwrap_or(applied);
            if applied.saturating_sub(min_matched) <= self.cfg.max_log_lag_entries {
                to = to.min(min_matched);
            }
        }
        if to > truncated {
            p.raft.mut_store().compact(to, batch)?;
        }
        Ok(())
    }

    fn handle_feedback(&mut self) {
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

    /// Builds the snapshots raft-rs asked for: inline, or as tasks for the
    /// driver ([`SnapshotBuild::Deferred`]), at most
    /// [`MAX_SNAPSHOT_BUILDS`] outstanding.
    fn handle_snapshot_requests(&mut self) {
        for p in self.peers.values_mut() {
            let range_id = p.desc.range_id;
            let outstanding = self.snapshot_in_flight.contains(&range_id) || self.snapshot_tasks.iter().any(|t| t.range_id == range_id);
            if outstanding {
                continue;
            }
            let deferred = self.cfg.snapshot_build == SnapshotBuild::Deferred;
            if deferred && self.snapshot_in_flight.len() + self.snapshot_tasks.len() >= MAX_SNAPSHOT_BUILDS {
                break; // raft-rs asks again later
            }
            let Some(req) = p.raft.store().take_snapshot_request() else { continue };
            let st = p.raft.store();
            let applied = st.apply_state();
            let meta = raft::prelude::SnapshotMetadata {
                index: applied.applied_index,
                term: applied.applied_term,
                conf_state: Some(st.raft_state().conf_state.clone()).into(),
                ..Default::default()
            };
            let view = self.engine.snapshot();
            let desc = p.desc.clone();
            let build = move || -> Result<Snapshot, StorageError> {
                let data = build_snapshot(&*view, &desc)?;
                let mut s = Snapshot::default();
                s.set_metadata(meta);
                s.set_data(data.into());
                Ok(s)
            };
            if deferred {
                self.snapshot_tasks.push(SnapshotTask { range_id: req.range_id, build: Box::new(build) });
                continue;
            }
            match build() {
                Ok(s) => {
                    self.metrics.snapshots_built += 1;
                    p.raft.mut_store().set_built_snapshot(s);
                }
                Err(e) => warn!(range = req.range_id, "building snapshot: {e}"),
            }
        }
    }

    /// The snapshot builds waiting for the driver ([`SnapshotBuild::Deferred`]).
    /// Each must be answered with [`Store::on_snapshot_built`]; until then
    /// the store asks for no other build of that range.
    pub fn take_snapshot_tasks(&mut self) -> Vec<SnapshotTask> {
        let tasks = std::mem::take(&mut self.snapshot_tasks);
        self.snapshot_in_flight.extend(tasks.iter().map(|t| t.range_id));
        tasks
    }

    /// The result of a build taken with [`Store::take_snapshot_tasks`]. A
    /// failed build is logged; raft-rs asks again later.
    pub fn on_snapshot_built(&mut self, range_id: u64, result: Result<Snapshot, StorageError>) {
        self.snapshot_in_flight.remove(&range_id);
        match result {
            Ok(snap) => {
                if let Some(p) = self.peers.get_mut(&range_id) {
                    self.metrics.snapshots_built += 1;
                    p.raft.mut_store().set_built_snapshot(snap);
                }
            }
            Err(e) => warn!(range = range_id, "building snapshot: {e}"),
        }
    }

    fn queue_messages(&mut self, range_id: u64, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let p = self.peers.get_mut(&range_id).expect("caller checked");
        let announce = p.announce_quiesce;
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
            };
            self.outbox.entry(m.to).or_default().push(env);
        }
        if announce {
            p.announce_quiesce = false;
        }
    }

    fn flush_outbox(&mut self) {
        for (to, envs) in std::mem::take(&mut self.outbox) {
            self.metrics.messages_sent += envs.len() as u64;
            self.transport.send(to, envs);
        }
    }
}
