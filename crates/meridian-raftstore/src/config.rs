/// Tuning of one node's store. Ticks are logical: the driver decides how
/// long one is (production: 100 ms).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// This node's id: its raft id in every range it holds a replica of.
    pub node_id: u64,
    /// Ticks between a leader's heartbeats (raft-rs `heartbeat_tick`).
    pub heartbeat_ticks: usize,
    /// Ticks a follower waits without hearing a leader before it campaigns
    /// (raft-rs `election_tick`; each wait is drawn from
    /// `[election_ticks, 1.5 * election_ticks)`). Also scales the store's
    /// timeouts: forwarded proposals and the liveness window wait two of
    /// these.
    pub election_ticks: usize,
    /// Bytes of entries per append message (raft-rs `max_size_per_msg`),
    /// and of staged proposals a follower forwards in one `MsgPropose`.
    pub max_size_per_msg_bytes: u64,
    /// Append messages a leader keeps in flight to one follower before it
    /// waits for acknowledgements (raft-rs `max_inflight_msgs`).
    pub max_inflight_msgs: usize,
    /// Compact a range's log once this many applied entries sit in it.
    pub compact_log_entries: u64,
    /// A leader keeps entries a lagging follower still needs, unless the
    /// follower is this far behind (then it gets a snapshot instead).
    pub max_log_lag_entries: u64,
    /// Idle ticks after which a caught-up range stops ticking.
    pub quiesce_after_ticks: u64,
    /// Ticks between node-level liveness pings to every peer node.
    pub node_ping_ticks: u64,
    /// A ReadIndex request with no answer after this many ticks is re-sent
    /// (raft-rs drops read requests silently while there is no leader).
    pub read_retry_ticks: u64,
    /// ... and failed after this many re-sends.
    pub read_max_retries: u32,
    /// Pending proposals plus reads per range; past it, `TooBusy`.
    pub max_pending_per_range: usize,
    /// Bytes of keys and values per chunk of a streamed snapshot
    /// (default [`meridian_storage::snapshot::SNAPSHOT_CHUNK_BYTES`]; the
    /// simulation cuts small chunks so its snapshots have many).
    pub snapshot_chunk_bytes: usize,
    /// Bytes of a received snapshot moved into place per poll round
    /// (default [`meridian_storage::snapshot::INSTALL_STEP_BYTES`]).
    pub install_step_bytes: usize,
    /// Record every applied entry for the simulation's checkers.
    pub record_applied: bool,
    /// Seeds every random choice the store makes (election timeouts), so a
    /// simulated run replays from its seed. Drivers pass OS entropy.
    pub seed: u64,
    /// Who makes a round's writes durable. `false`: `poll` syncs the
    /// engine itself before it returns. `true`: the driver does, off the
    /// store's thread ([`crate::Store::take_sync_request`],
    /// [`crate::Store::on_synced`]), so the next round is prepared while
    /// the fsync runs.
    pub defer_sync: bool,
    /// This node is a witness: its replicas persist the raft log and vote,
    /// but apply no command to data, serve no request (they answer
    /// `NotLeader` naming a full voter), never send a snapshot, campaign
    /// only after two to three election timeouts (a full voter nearly
    /// always first), and hand leadership to the most up-to-date full
    /// voter as soon as they win it. See `docs/geography.md`.
    pub witness: bool,
}

impl StoreConfig {
    /// The defaults for node `node_id` (production tuning; no deferred
    /// sync, no applied-entry recording, seed 0).
    pub fn new(node_id: u64) -> Self {
        StoreConfig {
            node_id,
            heartbeat_ticks: 1,
            election_ticks: 10,
            max_size_per_msg_bytes: 1 << 20,
            max_inflight_msgs: 256,
            compact_log_entries: 1024,
            max_log_lag_entries: DEFAULT_MAX_LOG_LAG_ENTRIES,
            quiesce_after_ticks: 20,
            node_ping_ticks: 2,
            read_retry_ticks: 5,
            read_max_retries: 6,
            max_pending_per_range: 4096,
            snapshot_chunk_bytes: meridian_storage::snapshot::SNAPSHOT_CHUNK_BYTES,
            install_step_bytes: meridian_storage::snapshot::INSTALL_STEP_BYTES,
            record_applied: false,
            seed: 0,
            defer_sync: false,
            witness: false,
        }
    }
}

/// [`StoreConfig::max_log_lag_entries`] by default: also the log a
/// witness keeps past what it applied.
pub const DEFAULT_MAX_LOG_LAG_ENTRIES: u64 = 16 * 1024;
