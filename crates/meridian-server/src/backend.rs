//! What every API surface (etcd gRPC, HTTP/JSON) shares: routing a request
//! to its range, proposing or reading through the local node, decoding the
//! state machine's answer, and building etcd response headers.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use meridian_kv::command as c;
use meridian_membership::{NodeDirectory, NodeRecord};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::meridian::v1 as api;
use meridian_raftstore::{RangeRequest, RangeStatus};
use meridian_storage::{KeyInterval, RangeDescriptor, RangeEpoch, ReplicaRole};
use prost::Message as _;
use tonic::transport::{Channel, Endpoint};

use crate::config::ServerConfig;
use crate::error::ApiError;
use crate::routing::{Routing, META_RANGE_ID};

/// The node as the API sees it. Implemented by the production driver and by
/// test doubles.
#[tonic::async_trait]
pub trait RaftAccess: Send + Sync + 'static {
    /// Proposes a command (a follower hands it to the leader inside raft);
    /// answers with the state machine's reply once applied here. Refused
    /// (`EpochMismatch`, `KeyNotInRange`) when `req` does not fit the
    /// replica.
    async fn propose(&self, req: RangeRequest, command: Vec<u8>) -> Result<Vec<u8>, ApiError>;
    /// Proposes only if this node leads the range, else `NotLeader`.
    async fn propose_on_leader(&self, req: RangeRequest, command: Vec<u8>) -> Result<Vec<u8>, ApiError>;
    /// Answers a query: after ReadIndex if `linearizable`, else locally.
    async fn read(&self, req: RangeRequest, query: Vec<u8>, linearizable: bool) -> Result<Vec<u8>, ApiError>;
    async fn status(&self) -> Vec<RangeStatus>;
    /// Store counters, if the implementation has them.
    async fn metrics(&self) -> Option<meridian_raftstore::StoreMetrics> {
        None
    }
    /// Where to dial node `node_id`'s Raft traffic (`host:port`, resolved
    /// at every dial): the node directory learned or changed it.
    fn set_peer_addr(&self, _node_id: u64, _peer_addr: &str) {}
    /// How to shape the Raft traffic to node `node_id` (WAN latency on
    /// loopback, `[debug.wan]`).
    fn set_peer_shape(&self, _node_id: u64, _shape: meridian_node::LinkShape) {}
    /// Network fault controls (chaos testing), if the node has them.
    fn faults(&self) -> Option<std::sync::Arc<meridian_node::NetFaults>> {
        None
    }
    /// Asks the range's leader (on this node) to hand leadership to `to`.
    async fn transfer_leader(&self, _range_id: u64, _to: u64) -> Result<(), ApiError> {
        Err(ApiError::Unimplemented("leader transfer".into()))
    }
    /// Compacts the storage engine's files (etcd's `Defragment`).
    async fn defragment(&self) -> Result<(), ApiError> {
        Err(ApiError::Unimplemented("defragment".into()))
    }
    /// The range's data pinned at its applied index on this node (a
    /// backup reads it).
    async fn range_view(&self, _range_id: u64) -> Result<meridian_raftstore::RangeView, ApiError> {
        Err(ApiError::Unimplemented("range backup".into()))
    }
    /// Destroys this node's replica of a range it was removed from, or of
    /// a retired range (`meridian_raftstore::Store::destroy_replica`).
    async fn destroy_replica(
        &self,
        _range_id: u64,
        _why: meridian_raftstore::Retirement,
    ) -> Result<meridian_raftstore::Destroyed, ApiError> {
        Err(ApiError::Unimplemented("destroying replicas".into()))
    }
    /// Makes this node's read replica of the range its only voter, by
    /// force, `first` proposed right after
    /// (`meridian_raftstore::Store::force_promote`).
    async fn force_promote(&self, _range_id: u64, _first: Option<Vec<u8>>) -> Result<meridian_raftstore::Promotion, ApiError> {
        Err(ApiError::Unimplemented("forced promotion".into()))
    }
    /// Proposes a membership change on the range's leader (this node);
    /// answers once the change is applied here.
    async fn change_membership(&self, _req: RangeRequest, _change: meridian_raftstore::raft_types::ConfChangeV2) -> Result<(), ApiError> {
        Err(ApiError::Unimplemented("membership changes".into()))
    }
}

/// This process's wall clock in Unix ms: recorded in commands as
/// information ("held since"), never decided on.
pub fn wall_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Refusals within this long of a route refresh use its result.
const ROUTE_REFRESH_COALESCE: std::time::Duration = std::time::Duration::from_millis(100);

/// Marks a request already forwarded once, so forwarding never loops.
pub const FORWARDED_HEADER: &str = "x-meridian-forwarded";

/// How often a lease naming a namespace this node has no route for makes
/// it read the catalog, at most.
const UNKNOWN_LEASE_REFRESH: std::time::Duration = std::time::Duration::from_secs(1);

pub struct Backend {
    pub raft: Arc<dyn RaftAccess>,
    /// The route table: from the config until the meta range's catalog is
    /// read, from the catalog's descriptors after ([`Backend::install_routes`]).
    routing: RwLock<Arc<Routing>>,
    pub cfg: ServerConfig,
    /// The cluster id recorded in the meta range (random, chosen once at the
    /// cluster's bootstrap); 0 until this member has read it.
    cluster_id: AtomicU64,
    /// Every node this one knows: seeded from the initial cluster, then the
    /// meta range's node records (labels, addresses of nodes that joined).
    directory: RwLock<NodeDirectory>,
    /// The membership gossip's view, once it runs (see [`crate::gossip`]).
    pub gossip: std::sync::OnceLock<Arc<crate::gossip::GossipState>>,
    /// The placement operators this node runs and ran (see
    /// [`crate::placement::drive`]).
    pub placement: crate::placement::Driver,
    /// Writes counted under the prefixes the placement driver named.
    pub write_counts: crate::write_counts::WriteCounts,
    /// When a lease of an unknown namespace last made this node read the
    /// catalog ([`Backend::range_of_lease`]).
    unknown_lease_refresh: std::sync::Mutex<Option<std::time::Instant>>,
    /// Channels to other members' client endpoints, with the address each
    /// was dialled at.
    channels: Mutex<HashMap<u64, (String, Channel)>>,
    /// (operation, result) → (count, total seconds). The key set is small
    /// and fixed (operation and error kinds), so this stays bounded.
    requests: Mutex<BTreeMap<RequestKey, RequestTotals>>,
    /// Each range's term and leader as of at most [`BRIEF_TTL`] ago, for
    /// response headers and for routing keepalives. Asking the store thread
    /// on every answer (and on every watch event delivered, and every
    /// keepalive on a follower) was a round trip to its busiest thread per
    /// response.
    briefs: Mutex<Option<(tokio::time::Instant, HashMap<u64, RangeBrief>)>>,
    /// The route cache: the epoch each range had when this node last
    /// learned it. Every request names it; a replica at another epoch
    /// refuses, and the refusal's epoch replaces the cached one (bounded:
    /// one entry per range).
    epochs: Mutex<HashMap<u64, RangeEpoch>>,
    /// When the routes were last read again after a refusal
    /// ([`Backend::refresh_routes`]); held while reading, so concurrent
    /// refusals wait for one read.
    route_refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
    /// Nodes decommissioned (bounded by the nodes the cluster ever had):
    /// never learned again.
    decommissioned: Mutex<std::collections::BTreeSet<u64>>,
    /// range → the nodes holding a replica of it, voters first, as
    /// the catalog says: where a request for a range this node holds no
    /// replica of is forwarded ([`Backend::elsewhere`]). One entry per
    /// range of the catalog (bounded like it). With how many of them
    /// are voters.
    replicas: Mutex<HashMap<u64, (Vec<u64>, usize)>>,
    /// The raised alarms, this member's engine size and its space quota
    /// (see [`crate::alarms`]).
    pub alarms: crate::alarms::AlarmState,
}

/// How stale a [`RangeBrief`] may be.
pub const BRIEF_TTL: std::time::Duration = std::time::Duration::from_millis(100);

/// What most requests need to know of a range's Raft state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RangeBrief {
    pub term: u64,
    /// 0: none known.
    pub leader: u64,
    pub leading: bool,
    /// On a leader of a range with a witness voter: how far (entries) the
    /// most up-to-date live full voter outside this node's region is
    /// behind the commit index ([`far_lag`]); 0 otherwise.
    pub far_lag: u64,
}

/// Entries the full voters outside a leader's region may lag, in a range
/// with a witness, before the leader holds writes back: half the log a
/// witness keeps past what it applied. A witness can bring a voter up to
/// date only from its log; were the home region lost with the voters
/// beyond it lagging further, the survivors could not catch up (the
/// range would wait for the home region, though nothing is lost).
pub const WITNESS_HOLD_LAG: u64 = meridian_raftstore::DEFAULT_MAX_LOG_LAG_ENTRIES / 2;
/// How long a write is held back for that, at most, before it is refused
/// as `TooBusy` (429 / `RESOURCE_EXHAUSTED`: the client slows down).
const WITNESS_HOLD_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The [`RangeBrief::far_lag`] of a replica at `st` on node `me`: on a
/// leader whose voters include a witness, the commit index minus the
/// matched index of the most up-to-date full voter outside `me`'s region
/// that the leader heard from lately (0 when none is: a lost second
/// region must not stop the writes the home region and the witness carry
/// on with).
pub fn far_lag(
    st: &meridian_raftstore::RangeStatus,
    me: u64,
    region_of: impl Fn(u64) -> Option<String>,
    is_witness: impl Fn(u64) -> bool,
) -> u64 {
    if st.role != meridian_raftstore::raft_types::StateRole::Leader || !st.voters.iter().any(|v| is_witness(*v)) {
        return 0;
    }
    let mine = region_of(me);
    let far = |n: u64| n != me && !is_witness(n) && !st.silent.contains(&n) && region_of(n) != mine && st.voters.contains(&n);
    st.progress.iter().filter(|(n, ..)| far(*n)).map(|(_, matched, _)| *matched).max().map_or(0, |best| st.commit.saturating_sub(best))
}

/// (operation, result) of a client request.
pub type RequestKey = (&'static str, &'static str);
/// (count, total seconds).
pub type RequestTotals = (u64, f64);

fn op_name(op: &c::Op) -> &'static str {
    match op {
        c::Op::Put(_) => "put",
        c::Op::DeleteRange(_) => "delete_range",
        c::Op::Txn(_) => "txn",
        c::Op::Compact(_) => "compact",
        c::Op::LeaseGrant(_) => "lease_grant",
        c::Op::LeaseRevoke(_) => "lease_revoke",
        c::Op::LeaseCheckpoint(_) => "lease_checkpoint",
        c::Op::Range(_) => "range_in_log",
        c::Op::LockAcquire(_) => "lock_acquire",
        c::Op::LockRelease(_) => "lock_release",
        c::Op::LockCancel(_) => "lock_cancel",
        c::Op::LeaseExpire(_) => "lease_expire",
        c::Op::LockDelayEnd(_) => "lock_delay_end",
        c::Op::Proclaim(_) => "election_proclaim",
        c::Op::Carve(_) => "namespace_carve",
        c::Op::Uncarve(_) => "namespace_uncarve",
        c::Op::Seal(_) => "namespace_seal",
        c::Op::Absorb(_) => "namespace_absorb",
        c::Op::RaiseRevision(_) => "revision_raise",
    }
}

fn query_name(q: &c::QueryKind, linearizable: bool) -> &'static str {
    match (q, linearizable) {
        (c::QueryKind::Range(_), true) => "range_linearizable",
        (c::QueryKind::Range(_), false) => "range_serializable",
        (c::QueryKind::LeaseInfo(_), _) => "lease_time_to_live",
        (c::QueryKind::Leases(_), _) => "lease_leases",
        (c::QueryKind::Events(_), _) => "watch_catch_up",
        (c::QueryKind::LockDescribe(_), _) => "lock_describe",
        (c::QueryKind::Locks(_), _) => "lock_list",
        (c::QueryKind::DelayedLocks(_), _) => "lock_delayed",
        (c::QueryKind::HashKv(_), _) => "hash_kv",
        (c::QueryKind::MergeFloors(_), _) => "merge_floors",
    }
}

fn result_name(r: &Result<impl Sized, ApiError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(ApiError::Compacted { .. } | ApiError::FutureRevision) => "out_of_range",
        Err(ApiError::LeaseNotFound | ApiError::KeyNotFound | ApiError::SessionNotFound) => "not_found",
        Err(ApiError::LockNotHeld(_)) => "not_held",
        // Forwarded to the leader by the API layer; counted there as well.
        Err(ApiError::NotLeader { .. }) => "not_leader",
        Err(ApiError::NoLeader { .. }) => "no_leader",
        Err(ApiError::Timeout | ApiError::OutcomeUnknown) => "timeout",
        Err(ApiError::TooBusy) => "overloaded",
        Err(ApiError::NodeStopped) => "stopped",
        Err(ApiError::Storage(_)) => "storage",
        Err(ApiError::NoSpace) => "no_space",
        Err(ApiError::Corrupt) => "corrupt",
        Err(ApiError::EpochMismatch { .. } | ApiError::KeyNotInRange { .. }) => "stale_route",
        Err(ApiError::Internal(_)) => "internal",
        Err(_) => "invalid",
    }
}

impl Backend {
    pub fn new(raft: Arc<dyn RaftAccess>, cfg: ServerConfig) -> Result<Backend, ApiError> {
        let routing = Routing::new(&cfg.namespaces)?;
        let mut directory = NodeDirectory::new();
        for m in &cfg.initial_cluster {
            directory.upsert(cfg.node_record(m)).map_err(|e| ApiError::Invalid(e.to_string()))?;
        }
        Ok(Backend {
            directory: RwLock::new(directory),
            gossip: std::sync::OnceLock::new(),
            placement: Default::default(),
            write_counts: Default::default(),
            unknown_lease_refresh: Default::default(),
            raft,
            routing: RwLock::new(Arc::new(routing)),
            cluster_id: AtomicU64::new(0),
            channels: Mutex::new(HashMap::new()),
            requests: Mutex::new(BTreeMap::new()),
            briefs: Mutex::new(None),
            epochs: Mutex::new(HashMap::new()),
            route_refresh: tokio::sync::Mutex::new(None),
            decommissioned: Mutex::new(std::collections::BTreeSet::new()),
            replicas: Mutex::new(HashMap::new()),
            alarms: crate::alarms::AlarmState::new(cfg.node_id, cfg.quota()),
            cfg,
        })
    }

    /// The route table now.
    pub fn routing(&self) -> Arc<Routing> {
        self.routing.read().expect("route table").clone()
    }

    /// A copy of what the directory knows of `node_id`.
    pub fn node(&self, node_id: u64) -> Option<NodeRecord> {
        self.directory.read().expect("node directory").get(node_id).cloned()
    }

    /// Whether `node_id` is a witness (this node by its config; another
    /// by the directory): its replicas keep no data and serve nothing.
    pub fn is_witness(&self, node_id: u64) -> bool {
        if node_id == self.cfg.node_id {
            return self.cfg.role == meridian_membership::NodeRole::Witness;
        }
        self.directory.read().expect("node directory").get(node_id).is_some_and(|n| n.role == meridian_membership::NodeRole::Witness)
    }

    /// Every node the directory knows, in id order.
    pub fn nodes(&self) -> Vec<NodeRecord> {
        self.directory.read().expect("node directory").iter().cloned().collect()
    }

    /// Records how alive `node_id` seems (from the gossip); false if the
    /// directory does not know it.
    pub fn set_liveness(&self, node_id: u64, liveness: meridian_membership::Liveness) -> bool {
        self.directory.write().expect("node directory").set_liveness(node_id, liveness)
    }

    /// Adds or updates a node record (from the meta range, or a node that
    /// joined): the transport dials its peer address from now on, and the
    /// channel to a node whose client address changed is dialled anew.
    pub fn learn_node(&self, record: NodeRecord) -> Result<(), ApiError> {
        // A decommissioned node stays out (its process may still gossip,
        // and a lagging replica of the meta range may still hold its record).
        if self.decommissioned.lock().expect("decommissioned nodes").contains(&record.id) {
            return Ok(());
        }
        let (id, addr, peer) = (record.id, record.client_addr.clone(), record.peer_addr.clone());
        let shape = self.cfg.debug.wan.shape(&self.cfg.region, &record.labels.region);
        let changed = self.directory.write().expect("node directory").upsert(record).map_err(|e| ApiError::Invalid(e.to_string()))?;
        if changed && id != self.cfg.node_id {
            self.raft.set_peer_addr(id, &peer);
            self.raft.set_peer_shape(id, shape);
        }
        if changed {
            let mut chans = self.channels.lock().expect("channel cache");
            if chans.get(&id).is_some_and(|(a, _)| *a != addr) {
                chans.remove(&id);
            }
        }
        Ok(())
    }

    /// Forgets a decommissioned node: the directory drops it, and with it
    /// the channel to it.
    pub fn forget_node(&self, id: u64) {
        if id == self.cfg.node_id {
            return;
        }
        self.decommissioned.lock().expect("decommissioned nodes").insert(id);
        self.directory.write().expect("node directory").remove(id);
        self.channels.lock().expect("channel cache").remove(&id);
    }

    /// Every range of the catalog with the nodes holding a replica of it,
    /// voters first, by range id (empty until the catalog is read).
    /// The nodes holding a replica of `range_id`, per the catalog.
    pub fn catalog_replicas_of(&self, range_id: u64) -> Vec<u64> {
        self.replicas.lock().expect("replica lists").get(&range_id).map(|r| r.0.clone()).unwrap_or_default()
    }

    /// [`Backend::catalog_replicas_of`], and how many of them (the first
    /// ones) are voters; the rest are learners. Read together.
    pub fn catalog_replicas_and_voters(&self, range_id: u64) -> (Vec<u64>, usize) {
        self.replicas.lock().expect("replica lists").get(&range_id).cloned().unwrap_or_default()
    }

    pub fn catalog_replicas(&self) -> Vec<(u64, Vec<u64>)> {
        let mut v: Vec<(u64, Vec<u64>)> = self.replicas.lock().expect("replica lists").iter().map(|(k, n)| (*k, n.0.clone())).collect();
        v.sort_unstable_by_key(|(id, _)| *id);
        v
    }

    /// The cluster id recorded in the meta range (0: not read yet).
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id.load(Ordering::Relaxed)
    }

    /// Adopts the meta range's catalog: its cluster id, routes built from
    /// its descriptors, and their epochs where the route cache has none
    /// newer.
    pub fn install_routes(&self, cluster_id: u64, routing: Routing, ranges: &[RangeDescriptor]) {
        self.cluster_id.store(cluster_id, Ordering::Relaxed);
        *self.routing.write().expect("route table") = Arc::new(routing);
        {
            let mut replicas = self.replicas.lock().expect("replica lists");
            replicas.clear();
            for d in ranges {
                replicas.insert(d.range_id, replica_list(d));
            }
        }
        let mut epochs = self.epochs.lock().expect("route cache");
        for d in ranges {
            learn_descriptor_epoch(&mut epochs, d);
        }
    }

    /// Installs one range's descriptor (one the catalog holds now) into
    /// the routes it has, without reading the catalog; refused, changing
    /// nothing, where the routes contradict it (they may be stale: read the
    /// catalog then). Never in the middle of a catalog read's install,
    /// which could put back routes from before it.
    pub async fn install_range(&self, d: &RangeDescriptor) -> Result<(), ApiError> {
        let _refreshing = self.route_refresh.lock().await;
        {
            let mut routing = self.routing.write().expect("route table");
            let added = routing.with_range(d).map_err(|e| ApiError::Storage(e.to_string()))?;
            *routing = Arc::new(added);
        }
        self.replicas.lock().expect("replica lists").insert(d.range_id, replica_list(d));
        learn_descriptor_epoch(&mut self.epochs.lock().expect("route cache"), d);
        Ok(())
    }

    fn record(&self, op: &'static str, result: &'static str, started: std::time::Instant) {
        let mut g = self.requests.lock().expect("request metrics");
        let e = g.entry((op, result)).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += started.elapsed().as_secs_f64();
    }

    /// Request counters: ((operation, result), (count, total seconds)).
    pub fn request_metrics(&self) -> Vec<(RequestKey, RequestTotals)> {
        self.requests.lock().expect("request metrics").iter().map(|(k, v)| (*k, *v)).collect()
    }

    /// Proposes `op` from this node, leader or follower. For the meta
    /// range, through another member when no replica of it here serves
    /// (see `meta_elsewhere`).
    pub async fn execute(&self, range_id: u64, op: c::Op) -> Result<c::Outcome, ApiError> {
        if range_id != META_RANGE_ID {
            return self.execute_as(range_id, op, false).await;
        }
        match self.execute_as(range_id, op.clone(), false).await {
            Err(e @ (ApiError::NoLeader { .. } | ApiError::NotLeader { .. })) => {
                let cmd = c::Command { op: Some(op), wall_ms: wall_ms() }.encode_to_vec();
                let raw = self
                    .meta_elsewhere(e, move |mut client| {
                        let req = api::ProposeRequest { range_id: META_RANGE_ID, command: cmd.clone() };
                        async move { client.propose(forwarded(req)).await.map(|r| r.into_inner().outcome) }
                    })
                    .await?;
                c::Outcome::decode(raw.as_slice()).map_err(|e| ApiError::Internal(format!("undecodable outcome: {e}")))
            }
            r => r,
        }
    }

    /// [`Backend::execute`] on this member's replica only (what a member
    /// answers for another that forwarded to it: never forwarded again).
    pub async fn execute_here(&self, range_id: u64, op: c::Op) -> Result<c::Outcome, ApiError> {
        self.execute_as(range_id, op, false).await
    }

    /// Proposes `op` only if this node leads the range (else `NotLeader`,
    /// for the caller to forward): for operations whose caller updates
    /// leader-only state with the outcome (the lease keeper).
    pub async fn execute_on_leader(&self, range_id: u64, op: c::Op) -> Result<c::Outcome, ApiError> {
        self.execute_as(range_id, op, true).await
    }

    async fn execute_as(&self, range_id: u64, op: c::Op, leader_only: bool) -> Result<c::Outcome, ApiError> {
        let name = op_name(&op);
        let started = std::time::Instant::now();
        let r = self.execute_inner(range_id, op, leader_only).await;
        self.record(name, result_name(&r), started);
        r
    }

    async fn execute_inner(&self, range_id: u64, op: c::Op, leader_only: bool) -> Result<c::Outcome, ApiError> {
        let keys = c::op_keys(&op);
        // Load the placement driver splits and merges groups by: commands
        // with keys, reads aside.
        let counted = !matches!(op, c::Op::Range(_)) && !keys.is_empty();
        let cmd = c::Command { op: Some(op), wall_ms: wall_ms() };
        let cost = cmd.encoded_len();
        self.admit(range_id, cmd.op.as_ref().expect("set above"), cost).await?;
        self.hold_for_witness(range_id).await?;
        let cmd = cmd.encode_to_vec();
        let (keys_of, cmd) = (&keys, &cmd);
        let out = self
            .routed(range_id, &keys, |range_id| async move {
                // Refused before it is sent when every voter is down: a
                // replica here (a read replica) would forward it to a dead
                // leader and time out with an unknown outcome.
                if let Some(down) = self.voters_down(range_id) {
                    return Err(Failed::Unsent(down));
                }
                let raw = self.propose_command(range_id, keys_of.clone(), cmd, leader_only).await.map_err(Failed::Unsent)?;
                let out = c::Outcome::decode(raw.as_slice())
                    .map_err(|e| Failed::Refused(ApiError::Internal(format!("undecodable outcome: {e}"))))?;
                match &out.kind {
                    Some(c::OutcomeKind::Error(e)) => Err(Failed::Refused(ApiError::from_outcome(e))),
                    _ => Ok(out),
                }
            })
            .await?;
        if counted {
            self.write_counts.count(&keys);
        }
        Ok(out)
    }

    /// `send`'s answer for `range_id` — or, when the range refused `keys`
    /// as carved out of it (`NamespaceMoved`: the command changed nothing)
    /// or has no leader and no replica here any more (merged or dropped
    /// before this node's routes followed), once more for the range the
    /// catalog routes them to now. A request that found no replica to
    /// serve it is answered as [`Backend::elsewhere`] says.
    async fn routed<T, Fut>(&self, range_id: u64, keys: &[KeyInterval], send: impl Fn(u64) -> Fut) -> Result<T, ApiError>
    where
        Fut: std::future::Future<Output = Result<T, Failed>>,
    {
        let mut range_id = range_id;
        let mut rerouted = false;
        loop {
            match send(range_id).await {
                Ok(t) => return Ok(t),
                Err(Failed::Unsent(e)) => match self.retired_route(range_id, keys, &e, rerouted).await {
                    Some(next) => range_id = next,
                    None => return Err(self.elsewhere(range_id, e).await),
                },
                Err(Failed::Refused(ApiError::NamespaceMoved(_))) if !rerouted => range_id = self.reroute(range_id, keys).await?,
                Err(Failed::Refused(e)) => return Err(e),
            }
            rerouted = true;
        }
    }

    /// A request failed with `e` for want of a leader on a range this node
    /// holds no replica of: if the catalog routes `keys` elsewhere now (the
    /// range was merged or dropped, and its replicas collected, before this
    /// node's routes followed), the range to try once instead.
    async fn retired_route(&self, from: u64, keys: &[KeyInterval], e: &ApiError, rerouted: bool) -> Option<u64> {
        if rerouted || keys.is_empty() || !matches!(e, ApiError::NoLeader { .. }) || self.brief(from).await.is_some() {
            return None;
        }
        // Only keys this node's table routed to `from` (the catalog's own
        // reads name the meta range, which no table routes to).
        let routed_here = |routing: &Routing| keys.iter().all(|k| routing.range_of_interval(&k.key, &k.range_end).is_ok_and(|r| r == from));
        if from == META_RANGE_ID || !routed_here(&self.routing()) {
            return None;
        }
        self.refresh_routes().await.ok()?;
        let routing = self.routing();
        let mut target = None;
        for k in keys {
            let r = routing.range_of_interval(&k.key, &k.range_end).ok()?;
            if target.is_some_and(|t| t != r) {
                return None;
            }
            target = Some(r);
        }
        target.filter(|t| *t != from)
    }

    /// After a range refused keys as carved out of it: the route table is
    /// read again from the meta range and the range serving `keys` now is
    /// returned (still `from`: the namespace's descriptor is not published
    /// yet, a retryable [`ApiError::NamespaceMoved`]).
    async fn reroute(&self, from: u64, keys: &[KeyInterval]) -> Result<u64, ApiError> {
        self.refresh_routes().await?;
        let routing = self.routing();
        let mut target = None;
        for k in keys {
            let r = routing.range_of_interval(&k.key, &k.range_end)?;
            if target.is_some_and(|t| t != r) {
                return Err(ApiError::CrossNamespace(format!(
                    "the request spans namespaces (range {} and range {r}) since one was created; operations must stay inside one namespace",
                    target.unwrap_or_default()
                )));
            }
            target = Some(r);
        }
        match target {
            Some(t) if t != from => Ok(t),
            _ => {
                Err(ApiError::NamespaceMoved(format!("range {from} no longer serves these keys and the catalog names no other yet; retry")))
            }
        }
    }

    /// The range serving lease `id`'s namespace. A lease id naming a
    /// namespace this node has no route for yet (one created a moment ago
    /// through another member) makes it read the catalog first: without
    /// that, a forwarded grant would land in the root range and the
    /// session in no namespace its id names.
    pub async fn range_of_lease(&self, id: i64) -> u64 {
        let ns = meridian_kv::mvcc::lease_namespace(id);
        if ns != 0 && !self.routing().knows_namespace(ns) {
            // At most once a second: client-chosen ids and the leases of
            // dropped namespaces stay unknown, and must not each cost a
            // catalog read.
            let due = {
                let mut last = self.unknown_lease_refresh.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let due = last.is_none_or(|t| t.elapsed() >= UNKNOWN_LEASE_REFRESH);
                if due {
                    *last = Some(std::time::Instant::now());
                }
                due
            };
            if due {
                if let Err(e) = self.refresh_routes().await {
                    tracing::debug!(lease = id, "reading the catalog for a lease's namespace: {e}");
                }
            }
        }
        self.routing().range_of_lease(id)
    }

    /// Reads the catalog from the meta range (through its leader) and
    /// installs its routes, unless another request did so in the last
    /// `ROUTE_REFRESH_COALESCE` (100 ms) (a burst of refusals costs one read).
    pub async fn refresh_routes(&self) -> Result<(), ApiError> {
        let mut last = self.route_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < ROUTE_REFRESH_COALESCE) {
            return Ok(());
        }
        self.read_routes().await?;
        *last = Some(tokio::time::Instant::now());
        Ok(())
    }

    /// Reads the catalog from the meta range's leader and installs its
    /// routes now (after this node changed the catalog itself).
    pub async fn refresh_routes_now(&self) -> Result<(), ApiError> {
        let mut last = self.route_refresh.lock().await;
        self.read_routes().await?;
        *last = Some(tokio::time::Instant::now());
        Ok(())
    }

    async fn read_routes(&self) -> Result<(), ApiError> {
        let catalog: Result<Option<crate::meta::Catalog>, ApiError> = Box::pin(crate::meta::read(self, true)).await;
        if let Some(c) = catalog? {
            crate::meta::install(self, &c)?;
        }
        Ok(())
    }

    /// The epoch the route cache holds for `range_id`.
    pub fn cached_epoch(&self, range_id: u64) -> Option<RangeEpoch> {
        self.epochs.lock().expect("route cache").get(&range_id).copied()
    }

    /// Proposes an encoded command that touches `keys` at the range's cached
    /// epoch; a stale epoch is refreshed from the refusal and the proposal
    /// retried once (a refused proposal changed nothing).
    pub async fn propose_command(&self, range_id: u64, keys: Vec<KeyInterval>, cmd: &[u8], leader_only: bool) -> Result<Vec<u8>, ApiError> {
        let mut attempt = 0;
        loop {
            let req = self.route(range_id, keys.clone()).await;
            let r =
                if leader_only { self.raft.propose_on_leader(req, cmd.to_vec()).await } else { self.raft.propose(req, cmd.to_vec()).await };
            match r {
                Err(ApiError::EpochMismatch { range_id, current }) if attempt == 0 => self.learn_epoch(range_id, current),
                r => return r,
            }
            attempt += 1;
        }
    }

    /// A request to `range_id` touching `keys`, at the epoch the route cache
    /// has (filled from this node's replica on a miss).
    pub async fn route(&self, range_id: u64, keys: Vec<KeyInterval>) -> RangeRequest {
        let cached = self.epochs.lock().expect("route cache").get(&range_id).copied();
        let epoch = match cached {
            Some(e) => e,
            None => {
                let statuses = self.raft.status().await;
                let mut epochs = self.epochs.lock().expect("route cache");
                for st in &statuses {
                    epochs.entry(st.range_id).or_insert(st.epoch);
                }
                // No replica here: the default epoch, which any replica
                // refuses with its own (the retry then carries that).
                epochs.get(&range_id).copied().unwrap_or_default()
            }
        };
        RangeRequest { range_id, epoch, keys }
    }

    /// The epoch a replica refused a request with becomes the route's.
    /// Never one of an older generation than the cached one: a replica of
    /// a lineage a forced promotion superseded still answers with its own.
    pub fn learn_epoch(&self, range_id: u64, current: RangeEpoch) {
        tracing::debug!(range = range_id, ?current, "route epoch refreshed");
        let mut epochs = self.epochs.lock().expect("route cache");
        let older = epochs
            .get(&range_id)
            .is_some_and(|e| meridian_raftstore::generation(current.conf_ver) < meridian_raftstore::generation(e.conf_ver));
        if !older {
            epochs.insert(range_id, current);
        }
    }

    /// Answers `q` from this node's replica (after ReadIndex when
    /// `linearizable`). For the meta range, through another member when no
    /// replica of it here serves (see `meta_elsewhere`).
    pub async fn query(&self, range_id: u64, q: c::QueryKind, linearizable: bool) -> Result<c::QueryAnswer, ApiError> {
        if range_id != META_RANGE_ID {
            return self.query_here(range_id, q, linearizable).await;
        }
        match self.query_here(range_id, q.clone(), linearizable).await {
            Err(e @ (ApiError::NoLeader { .. } | ApiError::NotLeader { .. })) => {
                let query = c::Query { kind: Some(q) }.encode_to_vec();
                let raw = self
                    .meta_elsewhere(e, move |mut client| {
                        let req = api::RangeQueryRequest { range_id: META_RANGE_ID, query: query.clone(), linearizable };
                        async move { client.range_query(forwarded(req)).await.map(|r| r.into_inner().answer) }
                    })
                    .await?;
                c::QueryAnswer::decode(raw.as_slice()).map_err(|e| ApiError::Internal(format!("undecodable answer: {e}")))
            }
            r => r,
        }
    }

    /// [`Backend::query`] on this member's replica only (what a member
    /// answers for another that forwarded to it: never forwarded again).
    pub async fn query_here(&self, range_id: u64, q: c::QueryKind, linearizable: bool) -> Result<c::QueryAnswer, ApiError> {
        let name = query_name(&q, linearizable);
        let started = std::time::Instant::now();
        let r = self.query_inner(range_id, q, linearizable).await;
        self.record(name, result_name(&r), started);
        r
    }

    async fn query_inner(&self, range_id: u64, q: c::QueryKind, linearizable: bool) -> Result<c::QueryAnswer, ApiError> {
        // The chaos suite's deliberately broken mode: skip ReadIndex.
        let linearizable = linearizable && !self.cfg.debug.unsafe_local_reads;
        let keys = c::query_keys(&q);
        let counted = matches!(q, c::QueryKind::Range(_));
        let query = c::Query { kind: Some(q) }.encode_to_vec();
        let (keys_of, query) = (&keys, &query);
        let a = self
            .routed(range_id, &keys, |range_id| async move {
                // (A serializable read is served by any replica, a read
                // replica included, with every voter down.)
                if let Some(down) = linearizable.then(|| self.voters_down(range_id)).flatten() {
                    return Err(Failed::Unsent(down));
                }
                let mut attempt = 0;
                let raw = loop {
                    let req = self.route(range_id, keys_of.clone()).await;
                    match self.raft.read(req, query.clone(), linearizable).await {
                        Err(ApiError::EpochMismatch { range_id, current }) if attempt == 0 => self.learn_epoch(range_id, current),
                        r => break r.map_err(Failed::Unsent)?,
                    }
                    attempt += 1;
                };
                let a = c::QueryAnswer::decode(raw.as_slice())
                    .map_err(|e| Failed::Refused(ApiError::Internal(format!("undecodable answer: {e}"))))?;
                match a.error.as_ref().map(ApiError::from_outcome) {
                    Some(e) => Err(Failed::Refused(e)),
                    None => Ok(a),
                }
            })
            .await?;
        if counted {
            self.write_counts.count_reads(&keys);
        }
        Ok(a)
    }

    /// A request for the meta range failed here with `e` (no replica of
    /// it here serves): `call` sends it to a member that holds one (the
    /// catalog's replicas of it first, then the other live members), at
    /// most [`MAX_META_ASKS`], each within [`META_ASK_TIMEOUT`]. A member
    /// whose replica of the meta range was moved away so still reads and
    /// writes the catalog. `e` stands if this member's replica serves (the
    /// range is electing) or no member answers.
    async fn meta_elsewhere<F, Fut>(&self, e: ApiError, call: F) -> Result<Vec<u8>, ApiError>
    where
        F: Fn(api::internal_client::InternalClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<Vec<u8>, tonic::Status>>,
    {
        let me = self.cfg.node_id;
        // (A witness's replica serves nothing: it always asks elsewhere.)
        let here = self.raft.status().await.into_iter().any(|s| s.range_id == META_RANGE_ID && !s.dormant);
        if here && !self.is_witness(me) {
            return Err(e);
        }
        let mut candidates = self.catalog_replicas_of(META_RANGE_ID);
        if let ApiError::NotLeader { leader, .. } = e {
            candidates.insert(0, leader);
        }
        let mut seen = std::collections::BTreeSet::from([me]);
        candidates.retain(|n| seen.insert(*n));
        let others: Vec<u64> = self.nodes().iter().map(|n| n.id).filter(|n| !seen.contains(n)).collect();
        let mut order = self.live_first(&candidates);
        order.extend(self.live_first(&others));
        for node in order.into_iter().take(MAX_META_ASKS) {
            let Ok(ch) = self.channel_to(node) else { continue };
            match tokio::time::timeout(META_ASK_TIMEOUT, call(api::internal_client::InternalClient::new(ch))).await {
                Ok(Ok(raw)) => return Ok(raw),
                // Its answer, not a failure to reach it: it stands.
                Ok(Err(s)) if !matches!(ApiError::from_status(&s), ApiError::NoLeader { .. } | ApiError::NotLeader { .. }) => {
                    return Err(ApiError::from_status(&s))
                }
                Ok(Err(s)) => tracing::debug!(node, "the meta range through node {node}: {}", s.message()),
                Err(_) => tracing::debug!(node, "the meta range through node {node}: no answer within {META_ASK_TIMEOUT:?}"),
            }
        }
        Err(e)
    }

    pub async fn header(&self, range_id: u64, revision: i64) -> pb::ResponseHeader {
        let term = self.brief(range_id).await.map_or(0, |b| b.term);
        pb::ResponseHeader { cluster_id: self.cluster_id(), member_id: self.cfg.node_id, revision, raft_term: term }
    }

    /// Holds a write back while this node leads `range_id` and its full
    /// voters outside this region lag past [`WITNESS_HOLD_LAG`] (see
    /// there), for at most [`WITNESS_HOLD_WAIT`]; then `TooBusy`.
    async fn hold_for_witness(&self, range_id: u64) -> Result<(), ApiError> {
        let started = tokio::time::Instant::now();
        loop {
            let lag = self.brief(range_id).await.map_or(0, |b| b.far_lag);
            if lag <= WITNESS_HOLD_LAG {
                return Ok(());
            }
            if started.elapsed() >= WITNESS_HOLD_WAIT {
                tracing::debug!(range = range_id, lag, "write refused: the voters beyond this region lag past the witness's log");
                return Err(ApiError::TooBusy);
            }
            tokio::time::sleep(BRIEF_TTL).await;
        }
    }

    /// A request for `range_id` failed with `e`. On a node that joined
    /// (`--join`) and holds no replica of the range, the answer becomes
    /// `NotLeader` naming a node that holds one, per the catalog, so the
    /// service forwards the request there (once). Any other error stands.
    /// A founding member whose replica was removed forwards too when the
    /// placement driver moves replicas (`[placement] execute = true`);
    /// otherwise it keeps refusing (`Unavailable`), as it always has.
    /// With every voter of the range on a node the gossip holds dead, the
    /// answer is [`ApiError::ReplicasDown`], which says so and where.
    async fn elsewhere(&self, range_id: u64, e: ApiError) -> ApiError {
        if !matches!(e, ApiError::NoLeader { .. }) {
            return e;
        }
        if let Some(down) = self.voters_down(range_id) {
            return down;
        }
        if let Some(away) = self.quorum_out_of_reach(range_id) {
            return away;
        }
        let forwards = self.cfg.joining() || self.cfg.placement.execute;
        if !forwards || self.brief(range_id).await.is_some() {
            return e;
        }
        let me = self.cfg.node_id;
        let candidates: Vec<u64> = self
            .replicas
            .lock()
            .expect("replica lists")
            .get(&range_id)
            .map(|r| r.0.iter().copied().filter(|n| *n != me).collect())
            .unwrap_or_default();
        match self.next_candidate(&candidates) {
            Some(node) => ApiError::NotLeader { range_id, leader: node },
            None => e,
        }
    }

    /// One of `candidates` to hand a request to: at random among those
    /// the gossip holds likeliest alive ([`Backend::live_first`]'s first
    /// group), so that a node that died a moment ago and still looks alive
    /// costs a request's attempt now and then, not every attempt until the
    /// gossip notices (seconds, across regions). (Random, not in turn: a
    /// counter shared by every request could stay in step with a client's
    /// retries and pick the same dead node each time.)
    fn next_candidate(&self, candidates: &[u64]) -> Option<u64> {
        use std::hash::{BuildHasher as _, Hasher as _};
        let ordered = self.live_first(candidates);
        let first = *ordered.first()?;
        let dir = self.directory.read().expect("node directory");
        let liveness = |n: u64| dir.get(n).map(|r| r.liveness);
        let best: Vec<u64> = ordered.iter().copied().take_while(|n| liveness(*n) == liveness(first)).collect();
        drop(dir);
        // std's hash keys, fresh at every `RandomState::new`, as a cheap
        // random number.
        let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Some(best[(random % best.len() as u64) as usize])
    }

    /// [`ApiError::ReplicasDown`] when the gossip holds every voter of the
    /// range (per the catalog) dead — none alive, suspect or unheard of:
    /// the range cannot answer until they are back, and the error says
    /// where they are (a zone-survival namespace whose home region is
    /// lost). At once `None` when this node holds one of them.
    pub(crate) fn voters_down(&self, range_id: u64) -> Option<ApiError> {
        let voters: Vec<u64> = {
            let lists = self.replicas.lock().expect("replica lists");
            let (nodes, count) = lists.get(&range_id)?;
            let voters = &nodes[..(*count).min(nodes.len())];
            if voters.contains(&self.cfg.node_id) {
                return None;
            }
            voters.to_vec()
        };
        let dir = self.directory.read().expect("node directory");
        let nodes: Vec<&NodeRecord> = voters.iter().map(|n| dir.get(*n)).collect::<Option<Vec<_>>>()?;
        if nodes.is_empty() || nodes.iter().any(|n| n.liveness != meridian_membership::Liveness::Dead) {
            return None;
        }
        let regions: std::collections::BTreeSet<&str> = nodes.iter().map(|n| n.labels.region.as_str()).collect();
        let ids: Vec<String> = nodes.iter().map(|n| n.id.to_string()).collect();
        let regions: Vec<&str> = regions.into_iter().collect();
        Some(ApiError::ReplicasDown(format!(
            "every voter of range {range_id} is on a node that is down or cut off (nodes {} in region {}): its data is kept, and it answers again when they are back; a namespace that must stay available through a region's loss needs --survival region",
            ids.join(", "),
            regions.join(", ")
        )))
    }

    /// [`ApiError::ReplicasDown`] telling the client where to go when the
    /// gossip holds a majority (not all) of the range's voters down or cut
    /// off from here ([`crate::reach::out_of_reach_hint`]): asked only
    /// after a request failed for want of a leader.
    fn quorum_out_of_reach(&self, range_id: u64) -> Option<ApiError> {
        let voters: Vec<u64> = {
            let lists = self.replicas.lock().expect("replica lists");
            let (nodes, count) = lists.get(&range_id)?;
            nodes[..(*count).min(nodes.len())].to_vec()
        };
        let dir = self.directory.read().expect("node directory");
        let me = dir.get(self.cfg.node_id)?.clone();
        let records: Vec<NodeRecord> = voters.iter().map(|n| dir.get(*n).cloned()).collect::<Option<Vec<_>>>()?;
        drop(dir);
        crate::reach::out_of_reach_hint(range_id, &me, &records).map(ApiError::ReplicasDown)
    }

    /// `nodes` ordered for a choice between equivalent nodes: the ones
    /// the gossip holds alive first, then unknown, suspect, dead, each
    /// group in the order given. Advice: a node that seems down is tried
    /// last, not skipped.
    pub fn live_first(&self, nodes: &[u64]) -> Vec<u64> {
        self.directory.read().expect("node directory").live_first(nodes)
    }

    /// The range's term and leader as of at most [`BRIEF_TTL`] ago; `None`
    /// without a replica here.
    pub async fn brief(&self, range_id: u64) -> Option<RangeBrief> {
        let now = tokio::time::Instant::now();
        if let Some((at, briefs)) = &*self.briefs.lock().expect("range briefs") {
            if now.duration_since(*at) < BRIEF_TTL {
                return briefs.get(&range_id).copied();
            }
        }
        let briefs: HashMap<u64, RangeBrief> = self
            .raft
            .status()
            .await
            .into_iter()
            .filter(|s| !s.dormant)
            .map(|s| {
                let region_of = |n: u64| self.node(n).map(|r| r.labels.region);
                let far_lag = far_lag(&s, self.cfg.node_id, region_of, |n| self.is_witness(n));
                let leading = s.role == meridian_raftstore::raft_types::StateRole::Leader;
                (s.range_id, RangeBrief { term: s.term, leader: s.leader_id, leading, far_lag })
            })
            .collect();
        let brief = briefs.get(&range_id).copied();
        *self.briefs.lock().expect("range briefs") = Some((now, briefs));
        brief
    }

    /// A gRPC channel to another member's client endpoint, for forwarding
    /// writes to the range leader.
    pub fn channel_to(&self, node_id: u64) -> Result<Channel, ApiError> {
        let mut chans = self.channels.lock().expect("channel cache");
        if let Some((_, ch)) = chans.get(&node_id) {
            return Ok(ch.clone());
        }
        let m = self.node(node_id).ok_or(ApiError::NoLeader { range_id: 0 })?;
        let ep = Endpoint::from_shared(format!("http://{}", m.client_addr))
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .connect_timeout(std::time::Duration::from_secs(2))
            .timeout(std::time::Duration::from_secs(10));
        let ch = ep.connect_lazy();
        chans.insert(node_id, (m.client_addr.clone(), ch.clone()));
        Ok(ch)
    }
}

/// Forwards `req` to the leader when the local node is not it, at most once.
pub fn forward_target<T>(req: &tonic::Request<T>, err: &ApiError) -> Option<u64> {
    match err {
        ApiError::NotLeader { leader, .. } if req.metadata().get(FORWARDED_HEADER).is_none() => Some(*leader),
        _ => None,
    }
}

/// Members a request for the meta range tries at most when this member
/// holds no serving replica of it, and how long each may take.
const MAX_META_ASKS: usize = 5;
const META_ASK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

pub fn forwarded<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut().insert(FORWARDED_HEADER, tonic::metadata::MetadataValue::from_static("1"));
    r
}

/// A range's nodes as the route cache lists them: voters first, then
/// learners, each in id order.
fn replica_list(d: &RangeDescriptor) -> (Vec<u64>, usize) {
    let mut nodes: Vec<(bool, u64)> = d.replicas.iter().map(|r| (r.role != ReplicaRole::Voter, r.node_id)).collect();
    nodes.sort_unstable();
    let voters = nodes.iter().filter(|(learner, _)| !learner).count();
    (nodes.into_iter().map(|(_, n)| n).collect(), voters)
}

/// A published descriptor's epoch into the route cache, unless the cache
/// holds a newer one.
fn learn_descriptor_epoch(epochs: &mut HashMap<u64, RangeEpoch>, d: &RangeDescriptor) {
    let e = epochs.entry(d.range_id).or_insert(d.epoch);
    if d.epoch.conf_ver >= e.conf_ver && d.epoch.version >= e.version {
        *e = d.epoch;
    }
}

/// Why one attempt of [`Backend::routed`] failed: no replica answered
/// (`Unsent`), or the range's state machine refused the request.
enum Failed {
    Unsent(ApiError),
    Refused(ApiError),
}

#[cfg(test)]
mod tests {
    use meridian_raftstore::raft_types::StateRole;
    use meridian_raftstore::{RangeStatus, ReplicaState};

    use super::far_lag;

    /// A leader (node 1, region us) of voters 1, 2 (us), 3, 4 (ap) and 5
    /// (the eu witness) at commit 50,000, with `matched` for 3 and 4.
    fn leader(matched: [u64; 2], silent: Vec<u64>) -> RangeStatus {
        RangeStatus {
            installing: false,
            range_id: 7,
            role: StateRole::Leader,
            term: 3,
            leader_id: 1,
            commit: 50_000,
            applied: 50_000,
            last_index: 50_000,
            first_index: 1,
            namespace_id: 7,
            start: vec![],
            end: vec![],
            epoch: Default::default(),
            voters: vec![1, 2, 3, 4, 5],
            learners: vec![],
            voters_outgoing: vec![],
            quiesced: false,
            dormant: false,
            dormant_at: None,
            silent,
            live_peers: vec![2, 3, 4, 5],
            progress: [(1, 50_000), (2, 50_000), (3, matched[0]), (4, matched[1]), (5, 50_000)]
                .into_iter()
                .map(|(n, m)| (n, m, ReplicaState::Replicate))
                .collect(),
        }
    }

    fn region(n: u64) -> Option<String> {
        Some(
            match n {
                1 | 2 => "us",
                3 | 4 => "ap",
                _ => "eu",
            }
            .to_string(),
        )
    }

    #[test]
    fn the_lag_that_holds_writes_back_is_the_best_live_voter_beyond_the_region() {
        let witness = |n: u64| n == 5;
        assert_eq!(far_lag(&leader([40_000, 30_000], vec![]), 1, region, witness), 10_000, "the better of ap's two");
        assert_eq!(far_lag(&leader([40_000, 30_000], vec![3]), 1, region, witness), 20_000, "a silent voter does not count");
        assert_eq!(far_lag(&leader([40_000, 30_000], vec![3, 4]), 1, region, witness), 0, "the second region lost: no hold");
        assert_eq!(far_lag(&leader([1, 1], vec![]), 1, region, |_| false), 0, "no witness: no hold");
        let mut follower = leader([1, 1], vec![]);
        follower.role = StateRole::Follower;
        assert_eq!(far_lag(&follower, 1, region, witness), 0, "only a leader holds writes back");
    }
}
