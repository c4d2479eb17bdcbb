//! `meridian server`: one node with its Raft store, the etcd gRPC API and
//! HTTP, until asked to stop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use meridian_kv::KvMachine;
use meridian_node::{Node, NodeConfig, NodeError, NodeHandle};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::meridian::v1 as api;
use meridian_proto::v3electionpb;
use meridian_raftstore::{RangeRequest, RangeStatus, StateMachine, StateMachineFactory};
use meridian_storage::{RangeDescriptor, ReplicaDesc, ReplicaRole};
use meridian_transport_quic::TlsMaterial;
use thiserror::Error;
use tracing::{error, info, warn};

use crate::backend::{Backend, RaftAccess};
use crate::config::ServerConfig;
use crate::coordination::InternalService;
use crate::error::{ApiError, MAX_REQUEST_BYTES};
use crate::http::{router, HttpState};
use crate::kv_service::KvService;
use crate::lease_service::{run_keeper, LeaseKeeper, LeaseService};
use crate::lock_hub::{LockHub, Sinks};
use crate::lock_service::LockService;
use crate::maintenance::{ClusterService, MaintenanceService};
use crate::meta;
use crate::native::{self, EtcdElectionService, NativeElectionService, NativeLockService, SessionService};
use crate::routing::{Routing, META_RANGE_ID};
use crate::watch_service::{WatchHub, WatchService};

/// How often the leader-side keeper expires leases and ends lock-delays.
const KEEPER_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("configuration: {0}")]
    Config(String),
    #[error("starting the node: {0}")]
    Node(#[from] NodeError),
    #[error("binding {addr}: {reason}")]
    Bind { addr: String, reason: String },
}

/// [`RaftAccess`] over the production node.
pub struct NodeRaft {
    pub node: NodeHandle,
}

fn api_err(e: NodeError) -> ApiError {
    match e {
        NodeError::Raft(r) => r.into(),
        NodeError::Timeout { .. } => ApiError::Timeout,
        NodeError::Stopped => ApiError::NodeStopped,
        NodeError::Storage(e) => ApiError::Storage(e.to_string()),
        other => ApiError::Internal(other.to_string()),
    }
}

#[tonic::async_trait]
impl RaftAccess for NodeRaft {
    async fn propose(&self, req: RangeRequest, command: Vec<u8>) -> Result<Vec<u8>, ApiError> {
        self.node.propose(req, command).await.map(|(_, r)| r).map_err(api_err)
    }

    async fn propose_on_leader(&self, req: RangeRequest, command: Vec<u8>) -> Result<Vec<u8>, ApiError> {
        self.node.propose_on_leader(req, command).await.map(|(_, r)| r).map_err(api_err)
    }

    async fn read(&self, req: RangeRequest, query: Vec<u8>, linearizable: bool) -> Result<Vec<u8>, ApiError> {
        self.node.read(req, query, linearizable).await.map(|(_, r)| r).map_err(api_err)
    }

    async fn status(&self) -> Vec<RangeStatus> {
        self.node.status().await.unwrap_or_default()
    }

    async fn metrics(&self) -> Option<meridian_raftstore::StoreMetrics> {
        self.node.metrics().await.ok()
    }

    fn set_peer_addr(&self, node_id: u64, peer_addr: &str) {
        self.node.set_peer_addr(node_id, peer_addr);
    }

    fn set_peer_shape(&self, node_id: u64, shape: meridian_node::LinkShape) {
        self.node.set_peer_shape(node_id, shape);
    }

    fn faults(&self) -> Option<Arc<meridian_node::NetFaults>> {
        Some(self.node.faults())
    }

    async fn defragment(&self) -> Result<(), ApiError> {
        self.node.defragment().await.map_err(api_err)
    }

    async fn range_view(&self, range_id: u64) -> Result<meridian_raftstore::RangeView, ApiError> {
        self.node.range_view(range_id).await.map_err(api_err)
    }

    async fn transfer_leader(&self, range_id: u64, to: u64) -> Result<(), ApiError> {
        self.node.transfer_leader(range_id, to).await.map_err(api_err)
    }

    async fn change_membership(&self, req: RangeRequest, change: meridian_raftstore::raft_types::ConfChangeV2) -> Result<(), ApiError> {
        self.node.conf_change(req, change).await.map(|_| ()).map_err(api_err)
    }

    async fn force_promote(&self, range_id: u64, first: Option<Vec<u8>>) -> Result<meridian_raftstore::Promotion, ApiError> {
        self.node.force_promote(range_id, first).await.map_err(api_err)
    }

    async fn destroy_replica(&self, range_id: u64, why: meridian_raftstore::Retirement) -> Result<meridian_raftstore::Destroyed, ApiError> {
        self.node.destroy_replica(range_id, why).await.map_err(api_err)
    }
}

struct KvFactory {
    sinks: Arc<Sinks>,
}

impl StateMachineFactory for KvFactory {
    fn create(&self, desc: &RangeDescriptor) -> Box<dyn StateMachine> {
        Box::new(KvMachine::new(Some(self.sinks.clone())).for_range(desc.range_id))
    }

    fn hot_record(&self, key: &[u8]) -> bool {
        meridian_kv::keys::is_hot(key)
    }
}

/// The descriptor a replica's status describes.
pub fn descriptor_of(s: &RangeStatus) -> RangeDescriptor {
    let role = |id: &u64| if s.learners.contains(id) { ReplicaRole::Learner } else { ReplicaRole::Voter };
    let mut ids: Vec<u64> = s.voters.iter().chain(&s.learners).chain(&s.voters_outgoing).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    RangeDescriptor {
        range_id: s.range_id,
        namespace_id: s.namespace_id,
        start: s.start.clone(),
        end: s.end.clone(),
        epoch: s.epoch,
        replicas: ids.iter().map(|id| ReplicaDesc { node_id: *id, role: role(id) }).collect(),
    }
}

/// Reads (or, on a new cluster, records) the meta range's catalog and
/// adopts it: the cluster id and the routes. Runs beside the server, as
/// range 1 may still be electing its first leader.
async fn load_catalog(backend: Arc<Backend>) {
    let statuses = backend.raft.status().await;
    if !statuses.iter().any(|s| s.range_id == META_RANGE_ID && !s.dormant) {
        if backend.cfg.joining() {
            crate::join::run_joined(backend).await;
            return;
        }
        // Its replica was moved away: the catalog is read (and this node's
        // record kept) through the members that hold one.
        info!("no replica of the meta range here; reading the catalog through the other members");
        refresh_from_meta(backend).await;
        return;
    }
    let local: Vec<RangeDescriptor> = statuses.iter().filter(|s| !s.dormant).map(descriptor_of).collect();
    match meta::load_or_bootstrap(&backend, &local).await.and_then(|c| meta::install(&backend, &c).map(|()| c)) {
        Ok(c) => info!(cluster_id = %format!("{:#018x}", c.cluster_id), ranges = c.ranges.len(), "catalog read from the meta range"),
        Err(e) => {
            error!("reading the catalog from the meta range: {e}; routes stay those of the config");
            return;
        }
    }
    refresh_from_meta(backend).await
}

/// This node's record, then everyone's, and the catalog, again and again
/// from this node's replica of the meta range: the directory learns labels
/// and addresses (of nodes added later too), the routes follow the
/// descriptors.
pub(crate) async fn refresh_from_meta(backend: Arc<Backend>) {
    let me = backend.node(backend.cfg.node_id).expect("the directory holds this node");
    let mut registered = false;
    loop {
        let admin = crate::node_admin::states(&backend, false).await.unwrap_or_default();
        if admin.get(&me.id).is_some_and(|a| a.decommissioned) {
            if !registered {
                error!(
                    node = me.id,
                    "this node was decommissioned: it is not registered again; start a new node with a new id and an empty data directory"
                );
                registered = true;
            }
        } else if !registered {
            match meta::register_node(&backend, &me).await {
                Ok(()) => registered = true,
                Err(e) => warn!("recording this node in the meta range: {e}; retrying"),
            }
        }
        if let Err(e) = meta::refresh_nodes(&backend).await {
            warn!("reading node records from the meta range: {e}");
        }
        for (id, _) in admin.iter().filter(|(_, a)| a.decommissioned) {
            backend.forget_node(*id);
        }
        match meta::read(&backend, false).await {
            Ok(Some(c)) => {
                if let Err(e) = meta::install(&backend, &c) {
                    warn!("installing the catalog: {e}");
                }
                republish_behind(&backend, &c).await;
            }
            Ok(None) => {}
            Err(e) => warn!("reading the catalog from the meta range: {e}"),
        }
        tokio::time::sleep(NODE_REFRESH).await;
    }
}

/// How often the node directory is refreshed from the meta range.
const NODE_REFRESH: Duration = Duration::from_secs(10);

/// Publishes again the membership of every range this node leads whose
/// descriptor in `catalog` is behind it: a membership change publishes
/// its descriptor once, best effort, so one whose publication failed (the
/// meta range electing, its leader killed mid-operator) would leave the
/// catalog's replica list stale until the range's next change — and every
/// member without a replica of the range would forward requests to nodes
/// that no longer hold one. Only membership (`conf_ver`) is caught up
/// here: a span that changed (`version`, a split or merge) is published
/// by the namespace operation that changed it, together with the other
/// range's. Ranges the catalog does not name (one being created, one
/// retired) are left alone.
async fn republish_behind(backend: &Backend, catalog: &meta::Catalog) {
    let listed: std::collections::HashMap<u64, &RangeDescriptor> = catalog.ranges.iter().map(|d| (d.range_id, d)).collect();
    for st in backend.raft.status().await {
        let Some(listed) = listed.get(&st.range_id) else { continue };
        let settled = st.role == meridian_raftstore::raft_types::StateRole::Leader && !st.dormant && st.voters_outgoing.is_empty();
        if !(settled && membership_behind(listed.epoch, st.epoch)) {
            continue;
        }
        info!(range = st.range_id, listed = ?listed.epoch, current = ?st.epoch, "the catalog's descriptor is behind the range's membership: publishing it again");
        if let Err(e) = meta::publish(backend, &descriptor_of(&st)).await {
            warn!(range = st.range_id, "publishing the range's descriptor again: {e}");
        }
    }
}

/// Whether the catalog's `listed` epoch names an older membership of the
/// same span, in the same generation, than a replica's `current` one (a
/// forced promotion publishes its own generation's first descriptor).
fn membership_behind(listed: meridian_storage::RangeEpoch, current: meridian_storage::RangeEpoch) -> bool {
    listed.version == current.version
        && listed.conf_ver < current.conf_ver
        && meridian_raftstore::generation(listed.conf_ver) == meridian_raftstore::generation(current.conf_ver)
}

/// The identity file beside the data: node id, labels, role.
const IDENTITY_FILE: &str = "identity.toml";

/// Checks this node's configured identity against the one its data
/// directory recorded, and records it on a new directory (or on
/// `--relabel`). Nothing is written when the check fails.
fn check_identity(cfg: &ServerConfig) -> Result<(), ServerError> {
    let path = cfg.data_dir.join(IDENTITY_FILE);
    let stored: Option<meridian_membership::NodeIdentity> = match std::fs::read_to_string(&path) {
        Ok(text) => Some(toml::from_str(&text).map_err(|e| ServerError::Config(format!("{}: {e}", path.display())))?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(ServerError::Config(format!("reading {}: {e}", path.display()))),
    };
    let write = cfg.identity().reconcile(stored.as_ref(), cfg.relabel).map_err(|e| ServerError::Config(e.to_string()))?;
    if let Some(id) = write {
        if stored.is_some() {
            info!(labels = ?id.labels, "relabelled (--relabel)");
        }
        let text = toml::to_string_pretty(&id).map_err(|e| ServerError::Config(e.to_string()))?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| ServerError::Config(format!("creating {}: {e}", cfg.data_dir.display())))?;
        // Written whole or not at all: a temporary file, synced, renamed.
        let tmp = path.with_extension("toml.tmp");
        let io = |e: std::io::Error| ServerError::Config(format!("writing {}: {e}", path.display()));
        {
            use std::io::Write as _;
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(text.as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    Ok(())
}

/// Runs the server until `shutdown` resolves.
pub async fn run(cfg: ServerConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    cfg.validate().map_err(|e| ServerError::Config(e.to_string()))?;
    let me = cfg.me().clone();
    let listen = cfg.listen().map_err(|e| ServerError::Config(e.to_string()))?;
    let tls = TlsMaterial::from_files(&cfg.tls.cert, &cfg.tls.key, &cfg.tls.ca).map_err(|e| ServerError::Config(e.to_string()))?;
    check_identity(&cfg)?;
    let routing = Routing::new(&cfg.namespaces).map_err(|e| ServerError::Config(e.to_string()))?;
    let ids: Vec<u64> = cfg.initial_cluster.iter().map(|m| m.id).collect();
    let hub = Arc::new(WatchHub::default());
    let locks = Arc::new(LockHub::new(cfg.node_id));
    let sinks = Arc::new(Sinks { watch: hub.clone(), locks: locks.clone() });
    let mut ncfg = NodeConfig::new(cfg.node_id, cfg.data_dir.join("raft"), listen.peer, tls, Arc::new(KvFactory { sinks }));
    ncfg.peers = cfg.initial_cluster.iter().filter(|m| m.id != cfg.node_id).map(|m| (m.id, m.peer_addr.clone())).collect::<HashMap<_, _>>();
    // A joining node creates no range: it is added to ranges later.
    ncfg.ranges = if cfg.joining() { Vec::new() } else { routing.initial_ranges(&ids) };
    ncfg.tick_ms = cfg.tick_ms;
    // A witness node's replicas vote and keep the log, never data.
    ncfg.store.witness = cfg.role == meridian_membership::NodeRole::Witness;
    ncfg.store_on_runtime = cfg.single_threaded();
    let node = Node::start(ncfg).await?;
    // The ranges on disk are the record once the cluster is bootstrapped:
    // a config whose namespaces differ (added, dropped) would route keys
    // to another namespace's group. Refuse it before serving anything.
    let local: Vec<(u64, Vec<u8>, Vec<u8>)> =
        node.status().await.map_err(|e| ServerError::Config(e.to_string()))?.into_iter().map(|s| (s.range_id, s.start, s.end)).collect();
    if let Err(e) = routing.check_against(&local) {
        node.shutdown().await;
        return Err(ServerError::Config(e.to_string()));
    }
    let raft: Arc<dyn RaftAccess> = Arc::new(NodeRaft { node: node.clone() });
    let backend = Arc::new(Backend::new(raft, cfg.clone()).map_err(|e| ServerError::Config(e.to_string()))?);
    let keeper = Arc::new(LeaseKeeper::new());
    let keeper_for_http = keeper.clone();
    let keeper_task = tokio::spawn(run_keeper(backend.clone(), keeper.clone(), locks.clone(), KEEPER_INTERVAL));
    let catalog_task = tokio::spawn(load_catalog(backend.clone()));
    let alarm_task = tokio::spawn(crate::alarms::monitor(backend.clone()));
    let collect_task = tokio::spawn(crate::collect::run(backend.clone()));
    let placement_task = cfg.placement.execute.then(|| tokio::spawn(crate::placement::drive(backend.clone())));
    let coord = native::coordinator(backend.clone(), locks.clone());

    let limit = MAX_REQUEST_BYTES + (64 << 10);
    let grpc = tonic::transport::Server::builder()
        .add_service(pb::kv_server::KvServer::new(KvService { backend: backend.clone() }).max_decoding_message_size(limit))
        .add_service(
            pb::lease_server::LeaseServer::new(LeaseService { backend: backend.clone(), keeper: keeper.clone() })
                .max_decoding_message_size(limit),
        )
        .add_service(crate::watch_wire::WatchServer::new(WatchService { backend: backend.clone(), hub: hub.clone() }))
        .add_service(meridian_proto::v3lockpb::lock_server::LockServer::new(LockService { backend: backend.clone(), hub: hub.clone() }))
        .add_service(pb::maintenance_server::MaintenanceServer::new(MaintenanceService { backend: backend.clone() }))
        .add_service(pb::cluster_server::ClusterServer::new(ClusterService { backend: backend.clone() }))
        .add_service(v3electionpb::election_server::ElectionServer::new(EtcdElectionService { coord: coord.clone() }))
        .add_service(api::session_server::SessionServer::new(SessionService { backend: backend.clone(), keeper }))
        .add_service(api::lock_server::LockServer::new(NativeLockService { coord: coord.clone() }).max_decoding_message_size(limit))
        .add_service(api::election_server::ElectionServer::new(NativeElectionService { coord: coord.clone() }))
        .add_service(api::internal_server::InternalServer::new(InternalService { backend: backend.clone() }))
        .add_service(api::membership_server::MembershipServer::new(crate::gossip::MembershipService { backend: backend.clone() }))
        .add_service(api::namespaces_server::NamespacesServer::new(crate::namespace::NamespacesService { backend: backend.clone() }));
    let grpc_listener = tokio::net::TcpListener::bind(listen.client)
        .await
        .map_err(|e| ServerError::Bind { addr: listen.client.to_string(), reason: e.to_string() })?;
    let http_listener = tokio::net::TcpListener::bind(listen.http)
        .await
        .map_err(|e| ServerError::Bind { addr: listen.http.to_string(), reason: e.to_string() })?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let gossip_task = match listen.gossip {
        Some(addr) => {
            let (state, task) =
                crate::gossip::start(&cfg, addr, backend.clone(), node.clone(), stop_rx.clone()).await.map_err(|e| match e {
                    crate::gossip::GossipError::Bind { addr, reason } => ServerError::Bind { addr, reason },
                    other => ServerError::Config(other.to_string()),
                })?;
            let _ = backend.gossip.set(state);
            Some(task)
        }
        None => {
            warn!(
                "membership gossip is off (no gossip.key_file): node states are unknown and quiet ranges rely on the store's pings; \
                 see docs/operations.md, \"Membership and failure detection\""
            );
            None
        }
    };
    let mut grpc_stop = stop_rx.clone();
    // TCP_NODELAY on every accepted connection: without it, answers larger
    // than a segment wait for the client's delayed ACK (~40 ms).
    let incoming = tonic::transport::server::TcpIncoming::from_listener(grpc_listener, true, Some(Duration::from_secs(60)))
        .map_err(|e| ServerError::Bind { addr: listen.client.to_string(), reason: e.to_string() })?;
    // etcd's Go clients send endpoints written as URLs as `:authority`,
    // which hyper refuses: see crate::authority.
    let incoming = tokio_stream::StreamExt::map(incoming, |conn| conn.map(crate::authority::AuthorityFix::new));
    let grpc_task = tokio::spawn(grpc.serve_with_incoming_shutdown(incoming, async move {
        let _ = grpc_stop.changed().await;
    }));
    let mut http_stop = stop_rx.clone();
    let app =
        router(HttpState { backend: backend.clone(), locks: Some(locks.clone()), watch: Some(hub.clone()), keeper: Some(keeper_for_http) });
    let http_task = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop.changed().await;
            })
            .await
    });
    info!(
        node = cfg.node_id,
        client = %me.client_addr, peer = %me.peer_addr, http = %me.http_addr, gossip = %if listen.gossip.is_some() { me.gossip_addr() } else { "off".into() },
        listen_client = %listen.client, listen_peer = %listen.peer, listen_http = %listen.http,
        "meridian server ready"
    );
    shutdown.await;
    info!(node = cfg.node_id, "shutting down");
    let _ = stop_tx.send(true);
    keeper_task.abort();
    catalog_task.abort();
    alarm_task.abort();
    collect_task.abort();
    if let Some(t) = placement_task {
        t.abort();
    }
    if let Ok(Err(e)) = grpc_task.await {
        warn!("gRPC server: {e}");
    }
    if let Ok(Err(e)) = http_task.await {
        warn!("HTTP server: {e}");
    }
    if let Some(t) = gossip_task {
        let _ = t.await;
    }
    node.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_storage::RangeEpoch;

    use super::membership_behind;

    #[test]
    fn only_an_older_membership_of_the_same_span_is_published_again() {
        let e = |conf_ver, version| RangeEpoch { conf_ver, version };
        assert!(membership_behind(e(3, 2), e(5, 2)), "a membership change whose publication was lost");
        assert!(!membership_behind(e(5, 2), e(5, 2)), "up to date");
        assert!(!membership_behind(e(6, 2), e(5, 2)), "the catalog is ahead of this replica (it lags)");
        assert!(!membership_behind(e(3, 2), e(5, 3)), "a span change is the namespace operation's to publish");
        assert!(!membership_behind(e(3, 3), e(5, 2)), "a span change is the namespace operation's to publish");
        let forced = meridian_raftstore::next_generation(3);
        assert!(!membership_behind(e(3, 2), e(forced, 2)), "a forced promotion publishes its own descriptor");
        assert!(membership_behind(e(forced, 2), e(forced + 2, 2)), "changes within the new generation are caught up");
    }
}
