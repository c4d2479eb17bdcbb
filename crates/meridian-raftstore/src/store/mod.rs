//! The node-level Multi-Raft driver core. See the crate docs for the shape
//! of a poll round.
//!
//! This file holds the [`Store`] itself, the public types it takes and
//! hands out ([`RangeRequest`], [`Completion`], [`RangeStatus`],
//! [`StoreMetrics`], [`Bootstrap`]), bootstrapping and
//! opening a store, and its read-only accessors. The rest of `impl Store`
//! is split by concern, one file each:
//!
//! - `propose.rs`: accepting proposals, staging them and handing each
//!   round's to raft (`flush_staged`), conf changes, leader transfer and
//!   campaigns;
//! - `read.rs`: linearizable (ReadIndex) and local reads, answering them;
//! - `step.rs`: inbound envelopes, replicas created for a leader's
//!   message, removed hints;
//! - `poll.rs`: the poll round (the Ready contract, the round's write) and
//!   the sync sequence (`take_sync_request` / `on_synced` /
//!   `release_synced`);
//! - `apply.rs`: applying committed entries and answering their proposals;
//! - `snapshot.rs`: the snapshots raft-rs asks for (a pinned engine view
//!   and a header), streaming them out, and moving a received one into
//!   place a bounded step per round;
//! - `incoming.rs`: snapshot chunks as they arrive, staged; a
//!   `MsgSnapshot` accepted only once its chunks all did;
//! - `outbox.rs`: outgoing messages (queue, flush) and the transport's
//!   feedback;
//! - `promote.rs`: a learner made the only voter by force (a lost
//!   region), and replicas of the lineage it superseded;
//! - `liveness.rs`: logical time (`tick`), node pings, quiescence and which
//!   nodes were heard from.
//!
//! Work on a single range is a method of `Peer` (`peer.rs`); these files
//! drive it across ranges and own what ranges share.

mod apply;
mod destroy;
mod incoming;
mod liveness;
mod outbox;
mod peers;
mod poll;
mod promote;
mod propose;
mod read;
mod snapshot;
mod step;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use meridian_codes::ReplicaState;
use meridian_storage::snapshot::{clear_staged, finish_install};
use meridian_storage::{keys, Cf, Engine, EntryCacheBudget, KeyInterval, PeerStorage, RangeDescriptor, RangeEpoch, WriteBatch};
use meridian_transport::{RaftEnvelope, Transport};
use raft::{RawNode, ReadOnlyOption, StateRole};
use tracing::info;

use crate::config::StoreConfig;
use crate::error::RaftstoreError;
use crate::logger::raft_logger;
use crate::peer::Peer;
use crate::state_machine::StateMachineFactory;
pub use destroy::{Destroyed, Retirement};
use incoming::IncomingSnapshots;
use meridian_codes::seeded::splitmix64;
pub use promote::{generation, next_generation, Promotion};
pub(crate) use snapshot::PinnedSnapshot;

/// What every request handed to the store names: the range, the epoch the
/// caller's route has for it, and the keys it touches. The store refuses a
/// request whose epoch is not the replica's ([`RaftstoreError::EpochMismatch`])
/// or whose keys lie outside the range's span
/// ([`RaftstoreError::KeyNotInRange`]), before it changes anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// The range the request is for.
    pub range_id: u64,
    /// The range's epoch as the caller's route has it; must equal the
    /// replica's.
    pub epoch: RangeEpoch,
    /// The keys the request touches; each must lie in the range's span.
    /// Empty for requests that touch no keys.
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

/// Where the log of a range created at bootstrap starts (after it): a
/// replica added later can never be sent the log from its start, where
/// the initial configuration is not, so it gets a snapshot first, which
/// carries the configuration (see `PeerStorage::bootstrap_at`). Before
/// this, a replica added to a young range replayed the log from index 1
/// with no configuration and could not apply the conf changes in it.
pub const INITIAL_LOG_INDEX: u64 = 5;

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

/// The answer to a proposal or read, handed out by [`Store::poll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The request answered: the id [`Store::propose`],
    /// [`Store::read_index`] or another request method returned.
    pub id: RequestId,
    /// The range the request went to.
    pub range_id: u64,
    /// The state machine's response, with the index the request was applied
    /// (or read) at.
    pub result: Result<(u64, Vec<u8>), RaftstoreError>,
}

impl Completion {
    /// A request whose fate this replica cannot know (it may still be
    /// applied elsewhere).
    pub(crate) fn unknown(id: RequestId, range_id: u64) -> Completion {
        Completion { id, range_id, result: Err(RaftstoreError::OutcomeUnknown { range_id }) }
    }
}

/// An applied entry, recorded for the simulation's checkers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedEntry {
    /// The range whose log holds the entry.
    pub range_id: u64,
    /// The entry's log index.
    pub index: u64,
    /// The entry's raft term.
    pub term: u64,
    /// The entry's payload: the command (empty for a leader's empty entry;
    /// the encoded change for a conf change).
    pub data: Vec<u8>,
}

/// A range's data pinned at its applied index ([`Store::range_view`]).
#[derive(Clone)]
pub struct RangeView {
    /// The replica's descriptor.
    pub desc: RangeDescriptor,
    /// The index the view holds the state of.
    pub applied_index: u64,
    /// The term of that entry.
    pub applied_term: u64,
    /// The engine as of that index; the range's records are those of
    /// `desc.namespace_id`.
    pub view: Arc<dyn meridian_storage::EngineSnapshot>,
}

impl std::fmt::Debug for RangeView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RangeView").field("desc", &self.desc).field("applied_index", &self.applied_index).finish_non_exhaustive()
    }
}

/// A snapshot of one replica's state, from [`Store::range_status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeStatus {
    /// The range.
    pub range_id: u64,
    /// This replica's raft role.
    pub role: StateRole,
    /// This replica's current raft term.
    pub term: u64,
    /// The leader this replica knows of (0: none).
    pub leader_id: u64,
    /// Highest log index this replica knows is committed.
    pub commit: u64,
    /// Highest log index applied to the state machine.
    pub applied: u64,
    /// Index of the last entry in this replica's log (appended, possibly
    /// not yet durable).
    pub last_index: u64,
    /// Index of the first entry still in the log (entries before it were
    /// compacted away).
    pub first_index: u64,
    /// The namespace whose data the replica holds.
    pub namespace_id: u64,
    /// The span the replica serves (`end` empty: to the end of the keyspace).
    pub start: Vec<u8>,
    /// Exclusive end of that span (empty: unbounded).
    pub end: Vec<u8>,
    /// The epoch requests to the replica must name.
    pub epoch: RangeEpoch,
    /// Node ids of the voters (of the incoming configuration while joint).
    pub voters: Vec<u64>,
    /// Node ids of the learners.
    pub learners: Vec<u64>,
    /// Non-empty while the range is in a joint configuration (a membership
    /// change entered, not yet left).
    pub voters_outgoing: Vec<u64>,
    /// The range is idle and caught up and has stopped ticking, until a
    /// request or message wakes it.
    pub quiesced: bool,
    /// Not in the range's configuration (it applied its removal, or a
    /// member told it so): serves nothing until added back.
    pub dormant: bool,
    /// While dormant: the epoch (`conf_ver`) of the configuration that
    /// left it out, as it learned it. A committed configuration at this
    /// epoch or later without the node lets it be destroyed
    /// ([`Store::destroy_replica`]).
    pub dormant_at: Option<u64>,
    /// Moving a received snapshot into place: serves nothing until done.
    pub installing: bool,
    /// On a leader: each replica's matched index and replication state.
    pub progress: Vec<(u64, u64, ReplicaState)>,
    /// On a leader: the replicas it has not heard from since its last
    /// quorum check (raft's `recent_active` off, within an election
    /// timeout): down, cut off or stalled, whatever the gossip says yet.
    pub silent: Vec<u64>,
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
    /// Poll rounds run (a [`Store::poll`] may run two).
    pub poll_rounds: u64,
    /// Ranges split off here by an applied split (a namespace created at
    /// runtime).
    pub splits_applied: u64,
    /// Of those, ones whose replica existed uninitialized (created for a
    /// vote or a leader's message) and was initialized by the split.
    pub splits_over_uninitialized: u64,
    /// Replicas of split-off ranges created empty because this node
    /// reached the parent's state by a snapshot, not by the split.
    pub splits_missed: u64,
    /// Engine syncs that made new writes durable (each covers the writes
    /// of one or more rounds).
    pub synced_writes: u64,
    /// Raft log entries written.
    pub entries_persisted: u64,
    /// Commands applied to state machines (empty entries and conf changes
    /// not counted).
    pub entries_applied: u64,
    /// Envelopes handed to the transport (raft messages, node pings,
    /// removed hints; snapshot streams not counted).
    pub messages_sent: u64,
    /// Inbound messages dropped: malformed or misaddressed, from a removed
    /// replica, for a range not here (and not a leader's), or a
    /// `MsgSnapshot` whose data had not all arrived.
    pub messages_rejected: u64,
    /// Snapshots built for raft-rs (an engine view pinned for each).
    pub snapshots_built: u64,
    /// Received snapshots moved into place in full.
    pub snapshots_installed: u64,
    /// Snapshot requests of raft-rs a witness left unanswered (it has no
    /// data to send).
    pub witness_snapshots_refused: u64,
    /// Leadership hand-offs a witness started after winning an election.
    pub witness_handoffs: u64,
    /// Snapshot streams handed to the transport (one per follower sent to).
    pub snapshots_sent: u64,
    /// Chunks of received snapshots staged, and their bytes.
    pub snapshot_chunks_received: u64,
    /// Bytes of data in the received snapshot chunks staged.
    pub snapshot_bytes_received: u64,
    /// Received transfers given up (a gap, a corrupt chunk, a wrong total,
    /// silence, or raft refused the snapshot), and chunks refused (over the
    /// bound of transfers, or for a range busy installing).
    pub snapshots_abandoned: u64,
    /// Received snapshot chunks refused (see above).
    pub snapshot_chunks_refused: u64,
    /// Replicas destroyed here ([`Store::destroy_replica`]).
    pub replicas_destroyed: u64,
    /// Proposals answered [`RaftstoreError::ProposalDropped`] (their entry
    /// was replaced by another leader's).
    pub proposals_dropped: u64,
    /// Proposals a follower handed to its leader inside raft.
    pub proposals_forwarded: u64,
    /// ... of which this many never reached this replica's log, before
    /// the forward timeout or while it followed the leader they were
    /// handed to, and were answered `OutcomeUnknown`.
    pub forwarded_unknown: u64,
    /// Reads answered [`RaftstoreError::ReadTimeout`].
    pub read_timeouts: u64,
    /// Microseconds the driver's sync thread spent in log fsyncs (its
    /// own measurement; 0 when `poll` syncs inline).
    pub sync_micros: u64,
    /// Bytes held now by the entry caches of every range here.
    pub entry_cache_bytes: u64,
    /// The engine's read cache of hot records, if it has one: reads it
    /// answered, reads that went to the engine, bytes held now.
    pub read_cache_hits: u64,
    /// Reads the engine's read cache passed to the engine (see above).
    pub read_cache_misses: u64,
    /// Bytes the engine's read cache holds now (see above).
    pub read_cache_bytes: u64,
}

/// Bytes of entries a range's leader holds appended but uncommitted; past
/// it, raft-rs drops new proposals (local ones answer `TooBusy`,
/// forwarded ones time out as `OutcomeUnknown`).
pub const MAX_UNCOMMITTED_BYTES: u64 = 32 << 20;

/// Received snapshots being staged at once, per node (each holds staged
/// records on disk until it completes or is given up). A transfer for
/// another range past it is refused; raft sends the snapshot again.
pub const MAX_INCOMING_SNAPSHOTS: usize = 4;

/// Ticks a leader keeps a built snapshot's engine view pinned (and the
/// snapshot offered to raft-rs) after building it. Streams in flight hold
/// their own reference; past this, raft-rs's next request builds afresh,
/// so an engine view never pins old files on disk for long.
pub const PINNED_SNAPSHOT_TICKS: u64 = 600;

/// Ticks without a chunk after which a received transfer is given up and
/// its staged records deleted (the sender died or gave up).
pub const INCOMING_SNAPSHOT_IDLE_TICKS: u64 = 600;

/// Node liveness from the membership gossip (advice: it only decides when
/// a quiet range wakes up, and how often the store pings).
#[derive(Debug, Clone, Default)]
pub(crate) struct LivenessFeed {
    /// Nodes suspect or dead.
    pub(crate) down: BTreeSet<u64>,
    /// The tick it arrived at: a feed not renewed within two election
    /// timeouts is ignored and the store's own pings resume.
    pub(crate) at: u64,
}

/// One node's Multi-Raft store: every range replica on the node, driven
/// by its caller through inputs (requests, inbound envelopes, ticks) and
/// [`Store::poll`] rounds. See the crate docs for the shape of a round.
pub struct Store {
    cfg: StoreConfig,
    engine: Arc<dyn Engine>,
    transport: Arc<dyn Transport>,
    factory: Arc<dyn StateMachineFactory>,
    peers: peers::Peers,
    now_tick: u64,
    next_request: u64,
    /// Incremented durably at every open. Read-index contexts carry it, so
    /// a late answer to a read from before a restart can never be matched
    /// to a new read with the same request id.
    incarnation: u64,
    /// Names this life of the store in [`ProposalTag`]s.
    ///
    /// [`ProposalTag`]: crate::peer::ProposalTag
    tag_nonce: u64,
    /// Tick at which each peer node was last heard from.
    last_heard: HashMap<u64, u64>,
    /// What the membership gossip says of other nodes, if it runs (see
    /// [`Store::set_liveness_feed`]).
    liveness_feed: Option<LivenessFeed>,
    known_nodes: BTreeSet<u64>,
    outbox: BTreeMap<u64, Vec<RaftEnvelope>>,
    completions: Vec<Completion>,
    applied_log: Vec<AppliedEntry>,
    /// Snapshots being received, by range (see `incoming.rs`).
    incoming: IncomingSnapshots,
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
    /// Ranges split off in this round's applies, opened once its batch is
    /// written.
    /// (and whether this node campaigns for it at once: it led the parent).
    split_pending: Vec<(RangeDescriptor, bool)>,
    /// Split-off ranges this node campaigns for: (range, due tick,
    /// attempts left). Bounded by the splits of recent rounds.
    split_campaigns: Vec<(u64, u64, u32)>,
    /// Ranges whose replica here was destroyed, and the epoch at or below
    /// which their messages are refused (see `destroy.rs`).
    tombstones: destroy::Tombstones,
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
            PeerStorage::bootstrap_at(&mut batch, desc, voters, INITIAL_LOG_INDEX);
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
        let tombstones = destroy::load_tombstones(&*engine)?;
        let tag_nonce = splitmix64(cfg.seed ^ splitmix64(incarnation));
        let mut store = Store {
            incarnation,
            tag_nonce,
            cfg,
            engine,
            transport,
            factory,
            peers: peers::Peers::default(),
            now_tick: 0,
            // Request ids never repeat across restarts of the node.
            next_request: (incarnation << 32) | 1,
            last_heard: HashMap::new(),
            liveness_feed: None,
            known_nodes: BTreeSet::new(),
            outbox: BTreeMap::new(),
            completions: Vec::new(),
            applied_log: Vec::new(),
            incoming: IncomingSnapshots::default(),
            metrics: StoreMetrics::default(),
            write_seq: 0,
            synced_seq: 0,
            sync_wanted: false,
            entry_cache_budget: EntryCacheBudget::new(EntryCacheBudget::DEFAULT_BYTES),
            split_pending: Vec::new(),
            split_campaigns: Vec::new(),
            tombstones,
        };
        // One write for every range's leftover staging, not one per range.
        let mut unstaged = WriteBatch::new();
        for desc in PeerStorage::list_ranges(&*store.engine)? {
            // A snapshot install the last life decided but did not finish is
            // finished now; staged chunks of a transfer that never completed
            // are deleted (raft sends the snapshot again).
            if finish_install(&*store.engine, desc.range_id)? {
                info!(node = store.cfg.node_id, range = desc.range_id, "finished a snapshot install cut short by the last stop");
            } else {
                clear_staged(desc.range_id, &mut unstaged);
            }
            let storage = PeerStorage::open(store.engine.clone(), desc.range_id)?;
            for r in &desc.replicas {
                if r.node_id != store.cfg.node_id {
                    store.known_nodes.insert(r.node_id);
                }
            }
            store.add_peer(desc, storage)?;
        }
        store.engine.write(&unstaged, false)?;
        let ids: Vec<u64> = store.peers.keys().copied().collect();
        for id in ids {
            store.create_missed_splits(id)?;
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
            // A witness campaigns late (see `witness_timeout_draw`).
            min_election_tick: if self.cfg.witness { 2 * self.cfg.election_ticks } else { 0 },
            max_election_tick: if self.cfg.witness { 3 * self.cfg.election_ticks } else { 0 },
            ..Default::default()
        };
        rc.validate().map_err(|e| RaftstoreError::InvalidRequest { range_id, reason: e.to_string() })?;
        let raft =
            RawNode::new(&rc, storage, &raft_logger(self.cfg.node_id, range_id)).map_err(|e| RaftstoreError::Storage(e.to_string()))?;
        let mut sm = if self.cfg.witness { Box::new(crate::state_machine::WitnessMachine) } else { self.factory.create(&desc) };
        sm.reload(&*self.engine, desc.namespace_id)?;
        let rng_state = splitmix64(self.cfg.seed ^ splitmix64(self.cfg.node_id ^ splitmix64(range_id ^ splitmix64(self.incarnation))));
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
            reads_open_term: 0,
            idle_ticks: 0,
            quiesced: false,
            announce_quiesce: false,
            dormant_at,
            rng_state,
            orphaned_since: None,
            orphan_applied: 0,
            silent_ticks: 0,
            installing: None,
            pinned: None,
            witness: self.cfg.witness,
        };
        peer.redraw_election_timeout();
        self.peers.insert(range_id, peer);
        Ok(())
    }

    /// This node's id.
    pub fn node_id(&self) -> u64 {
        self.cfg.node_id
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The engine every replica here stores its log and data in.
    pub fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// A view of `range_id`'s data as of its applied index, for a backup:
    /// taken between rounds, where the engine holds exactly the applied
    /// state. Refused for a replica that is removed (dormant), holds no
    /// data yet (created to receive a snapshot) or is moving a received
    /// snapshot into place, or a witness's (it keeps no data: `NotLeader`
    /// naming a full voter).
    pub fn range_view(&self, range_id: u64) -> Result<RangeView, RaftstoreError> {
        let p = self.peers.get(&range_id).ok_or_else(|| not_found(range_id))?;
        if p.witness {
            return Err(RaftstoreError::NotLeader { range_id, leader_hint: p.full_voter_hint() });
        }
        if p.dormant_at.is_some() {
            return Err(RaftstoreError::RangeRemoved { range_id });
        }
        let applied = p.raft.store().apply_state();
        if p.installing.is_some() || applied.applied_index < INITIAL_LOG_INDEX {
            return Err(RaftstoreError::SnapshotInstalling { range_id });
        }
        Ok(RangeView {
            desc: p.desc.clone(),
            applied_index: applied.applied_index,
            applied_term: applied.applied_term,
            view: Arc::from(self.engine.snapshot()),
        })
    }

    /// The counters since the store was opened, with the entry-cache and
    /// read-cache gauges read now.
    pub fn metrics(&self) -> StoreMetrics {
        let mut m = self.metrics;
        m.entry_cache_bytes = self.entry_cache_budget.used() as u64;
        if let Some(c) = self.engine.cache_stats() {
            (m.read_cache_hits, m.read_cache_misses, m.read_cache_bytes) = (c.hits, c.misses, c.bytes as u64);
        }
        m
    }

    /// Ids of the ranges with a replica here (dormant ones included), in
    /// ascending order.
    pub fn range_ids(&self) -> Vec<u64> {
        self.peers.keys().copied().collect()
    }

    /// The descriptor of this node's replica of `range_id` (span, epoch,
    /// replicas), or `None` without one.
    pub fn descriptor(&self, range_id: u64) -> Option<&RangeDescriptor> {
        self.peers.get(&range_id).map(|p| &p.desc)
    }

    /// A request to `range_id` at the epoch of this store's replica, naming
    /// no keys: what a caller with an up-to-date route would send (tests,
    /// the simulation). Without a replica here, the default epoch.
    pub fn request(&self, range_id: u64) -> RangeRequest {
        RangeRequest::new(range_id, self.descriptor(range_id).map(|d| d.epoch).unwrap_or_default())
    }

    /// The state of this node's replica of `range_id`, or `None` without
    /// one.
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
            dormant_at: p.dormant_at,
            installing: p.installing.is_some(),
            progress: if p.is_leader() {
                r.prs().iter().map(|(id, pr)| (*id, pr.matched, replica_state(pr.state))).collect()
            } else {
                Vec::new()
            },
            silent: if p.is_leader() {
                r.prs().iter().filter(|(id, pr)| **id != self.cfg.node_id && !pr.recent_active).map(|(id, _)| *id).collect()
            } else {
                Vec::new()
            },
            live_peers: self.live_peers(),
        })
    }

    /// [`Store::range_status`] of every replica here, by ascending range id.
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
}
