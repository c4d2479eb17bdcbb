//! The node's membership gossip: a UDP socket driving
//! `meridian_membership::agent::Agent`, and what its view feeds.
//!
//! ```text
//!  UDP gossip_addr ─► Agent ─► every 250 ms (5 raft ticks when shorter): the view
//!                               ├─► node directory: records learned from gossip, liveness of every node
//!                               ├─► raft store: suspect and dead nodes (wakes quiet ranges whose leader is down)
//!                               └─► `GET /v1/nodes`, `meridian nodes`, metrics
//!  node directory ──(every 5 s: gossip addresses and regions)──► Agent::learn (seeds)
//! ```
//!
//! Gossip is advice: it never changes Raft membership, and no safety
//! property depends on it. The loop drains the socket before it fires
//! timers, so a node that was itself stalled reads its peers' answers
//! before it would blame them (and the agent credits the stall anyway).

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use meridian_membership::agent::{Agent, AgentConfig, PeerView, Traffic};
use meridian_membership::gossip::{Advert, GossipId};
use meridian_membership::{Liveness, NodeRecord};
use meridian_node::NodeHandle;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument as _};

use crate::backend::Backend;
use crate::config::ServerConfig;

/// How often the view is published to the directory, the store and
/// readers at most: every 5 raft ticks, so the store (which ignores a feed
/// older than two election timeouts, 20 ticks) always holds a fresh one.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(250);

/// The publish period for a raft tick of `tick_ms`.
pub fn publish_every(tick_ms: u64) -> Duration {
    Duration::from_millis((5 * tick_ms).clamp(10, PUBLISH_EVERY.as_millis() as u64))
}
/// How often the directory's nodes are handed to the agent as seeds.
const LEARN_EVERY: Duration = Duration::from_secs(5);
/// The loop runs at least this often (the stall detector's clock).
const MAX_SLEEP: Duration = Duration::from_millis(100);
/// Datagrams read per wake-up at most before timers run.
const MAX_DRAIN: usize = 256;
/// Resolved gossip addresses are reused this long.
const RESOLVE_TTL: Duration = Duration::from_secs(30);
/// Resolution cache entries at most.
const MAX_RESOLVED: usize = 2 * meridian_membership::MAX_NODES;
/// Shortest cluster key.
pub const MIN_KEY_BYTES: usize = 32;

/// What the gossip knows now, for readers (HTTP, metrics).
#[derive(Debug, Clone, Default)]
pub struct View {
    /// This node's identity.
    pub me: Option<GossipId>,
    /// Every peer heard of.
    pub peers: Vec<PeerView>,
    /// Traffic counters.
    pub traffic: Traffic,
    /// This node's own stalls credited so far (ms).
    pub stalled_ms: u64,
    /// The view's time on the gossip clock (ms).
    pub now_ms: u64,
}

/// The gossip's shared view.
#[derive(Default)]
pub struct GossipState {
    view: RwLock<View>,
}

impl GossipState {
    /// A copy of the view now.
    pub fn view(&self) -> View {
        self.view.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }
}

/// Why gossip could not start.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// The cluster key file is missing, unreadable or too short.
    #[error("gossip key {path}: {reason}")]
    Key { path: String, reason: String },
    /// The start counter could not be kept.
    #[error("gossip start counter {path}: {reason}")]
    Starts { path: String, reason: String },
    /// The socket could not be bound.
    #[error("binding the gossip socket {addr}: {reason}")]
    Bind { addr: String, reason: String },
    /// The agent refused this node's own record.
    #[error("gossip: {0}")]
    Agent(String),
}

/// The cluster key: the key file's bytes, trailing whitespace dropped
/// (so `head -c 32 /dev/urandom` and `openssl rand -hex 32` files both
/// work), at least [`MIN_KEY_BYTES`].
pub fn load_key(path: &Path) -> Result<Vec<u8>, GossipError> {
    let err = |reason: String| GossipError::Key { path: path.display().to_string(), reason };
    let mut key = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    while key.last().is_some_and(|b| b.is_ascii_whitespace()) {
        key.pop();
    }
    if key.len() < MIN_KEY_BYTES {
        return Err(err(format!("{} bytes; at least {MIN_KEY_BYTES} are needed", key.len())));
    }
    Ok(key)
}

/// The cluster's id on the gossip wire: the first 8 bytes of the SHA-256
/// of the cluster CA certificate (clusters with other CAs are other
/// clusters).
pub fn wire_cluster_id(ca_pem: &[u8]) -> u64 {
    let d = ring::digest::digest(&ring::digest::SHA256, ca_pem);
    u64::from_be_bytes(d.as_ref()[..8].try_into().expect("8 bytes"))
}

const STARTS_FILE: &str = "gossip-starts";

/// Raises and returns the data directory's start counter (written whole
/// or not at all: a temporary file, synced, renamed).
pub fn next_start(data_dir: &Path) -> Result<u64, GossipError> {
    let path = data_dir.join(STARTS_FILE);
    let err = |reason: String| GossipError::Starts { path: path.display().to_string(), reason };
    let prev: u64 = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().parse().map_err(|_| err(format!("{:?} is not a number", t.trim())))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(err(e.to_string())),
    };
    let next = prev.checked_add(1).ok_or_else(|| err("at its maximum".into()))?;
    std::fs::create_dir_all(data_dir).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&tmp).map_err(|e| err(e.to_string()))?;
        f.write_all(format!("{next}\n").as_bytes()).map_err(|e| err(e.to_string()))?;
        f.sync_all().map_err(|e| err(e.to_string()))?;
    }
    std::fs::rename(&tmp, &path).map_err(|e| err(e.to_string()))?;
    Ok(next)
}

/// This node's record as gossip carries it.
fn advert_of(cfg: &ServerConfig) -> Advert {
    let me = cfg.me();
    Advert {
        peer_addr: me.peer_addr.clone(),
        client_addr: me.client_addr.clone(),
        http_addr: me.http_addr.clone(),
        gossip_addr: me.gossip_addr(),
        labels: cfg.labels(),
        role: cfg.role,
    }
}

/// The directory record of a peer gossip told of.
fn record_of(p: &PeerView) -> Option<NodeRecord> {
    let a = p.advert.as_ref()?;
    Some(NodeRecord {
        id: p.node,
        peer_addr: a.peer_addr.clone(),
        client_addr: a.client_addr.clone(),
        http_addr: a.http_addr.clone(),
        gossip_addr: a.gossip_addr.clone(),
        labels: a.labels.clone(),
        role: a.role,
        liveness: p.state,
    })
}

/// Binds the gossip socket and starts the loop; it ends when `stop`
/// turns true.
pub async fn start(
    cfg: &ServerConfig,
    listen: SocketAddr,
    backend: Arc<Backend>,
    node: NodeHandle,
    stop: watch::Receiver<bool>,
) -> Result<(Arc<GossipState>, tokio::task::JoinHandle<()>), GossipError> {
    let key_path = cfg
        .gossip
        .key_file
        .as_deref()
        .ok_or_else(|| GossipError::Key { path: "(unset)".into(), reason: "gossip.key_file is required while gossip is enabled".into() })?;
    let key = load_key(key_path)?;
    let ca = std::fs::read(&cfg.tls.ca).map_err(|e| GossipError::Key { path: cfg.tls.ca.display().to_string(), reason: e.to_string() })?;
    let start = next_start(&cfg.data_dir)?;
    let socket = UdpSocket::bind(listen).await.map_err(|e| GossipError::Bind { addr: listen.to_string(), reason: e.to_string() })?;
    let agent_cfg = AgentConfig {
        node: cfg.node_id,
        start,
        advert: advert_of(cfg),
        cluster: wire_cluster_id(&ca),
        key,
        phi: cfg.gossip.phi(),
        heartbeat_ms: cfg.gossip.heartbeat_ms,
        cluster_size: cfg.initial_cluster.len().max(backend.nodes().len()).max(3) as u32,
        seed: cfg.node_id ^ start.rotate_left(32) ^ std::process::id() as u64,
    };
    let agent = Agent::new(agent_cfg, 0).map_err(GossipError::Agent)?;
    info!(node = cfg.node_id, incarnation = agent.identity().incarnation, listen = %listen, advertise = %cfg.me().gossip_addr(), "gossip started");
    let state = Arc::new(GossipState::default());
    let span = info_span!("gossip", node = cfg.node_id);
    let task = tokio::spawn(run(agent, socket, backend, node, state.clone(), stop).instrument(span));
    Ok((state, task))
}

/// Gossip addresses resolved off the loop: a name not in the cache starts
/// a lookup in a task of its own and its datagrams are dropped until the
/// answer is in (gossip tolerates loss; a slow or dead DNS never blocks
/// the loop). Answers are kept [`RESOLVE_TTL`], failures
/// [`RESOLVE_FAILED_TTL`]; a stale answer serves while it is refreshed.
struct Resolver {
    cache: HashMap<String, (Instant, Option<SocketAddr>)>,
    pending: std::collections::HashSet<String>,
    done_tx: tokio::sync::mpsc::Sender<(String, Option<SocketAddr>)>,
    done_rx: tokio::sync::mpsc::Receiver<(String, Option<SocketAddr>)>,
}

/// A failed lookup is tried again after this long.
const RESOLVE_FAILED_TTL: Duration = Duration::from_secs(2);
/// Lookups in flight at most.
const MAX_LOOKUPS: usize = 16;

impl Resolver {
    fn new() -> Resolver {
        let (done_tx, done_rx) = tokio::sync::mpsc::channel(MAX_LOOKUPS);
        Resolver { cache: HashMap::new(), pending: Default::default(), done_tx, done_rx }
    }

    fn resolve(&mut self, addr: &str) -> Option<SocketAddr> {
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return Some(a);
        }
        while let Ok((name, found)) = self.done_rx.try_recv() {
            self.pending.remove(&name);
            if self.cache.len() >= MAX_RESOLVED {
                self.cache.clear();
            }
            self.cache.insert(name, (Instant::now(), found));
        }
        let cached = self.cache.get(addr).copied();
        let fresh = cached.is_some_and(|(at, a)| at.elapsed() < if a.is_some() { RESOLVE_TTL } else { RESOLVE_FAILED_TTL });
        if !fresh && !self.pending.contains(addr) && self.pending.len() < MAX_LOOKUPS {
            self.pending.insert(addr.to_string());
            let (name, tx) = (addr.to_string(), self.done_tx.clone());
            tokio::spawn(async move {
                let found = match tokio::time::timeout(Duration::from_secs(2), tokio::net::lookup_host(name.as_str())).await {
                    Ok(Ok(mut addrs)) => addrs.next(),
                    _ => None,
                };
                let _ = tx.send((name, found)).await;
            });
        }
        cached.and_then(|(_, a)| a)
    }
}

async fn run(
    mut agent: Agent,
    socket: UdpSocket,
    backend: Arc<Backend>,
    node: NodeHandle,
    state: Arc<GossipState>,
    mut stop: watch::Receiver<bool>,
) {
    let t0 = Instant::now();
    let ms = move || t0.elapsed().as_millis() as u64;
    let mut buf = vec![0u8; meridian_membership::wire::MAX_PACKET + 1];
    let mut resolver = Resolver::new();
    let mut next_publish = Instant::now();
    let publish_period = publish_every(backend.cfg.tick_ms);
    let mut next_learn = Instant::now();
    let me = backend.cfg.node_id;
    // Chaos partitions (`POST /v1/debug/net`) cut gossip as they cut raft.
    let faults = node.faults();
    let blocked_in = |packet: &[u8]| meridian_membership::wire::claimed_sender(packet).is_some_and(|n| faults.blocks_in(n));
    loop {
        let due = t0 + Duration::from_millis(agent.next_due());
        let wake = due.min(Instant::now() + MAX_SLEEP).min(next_publish).min(next_learn);
        tokio::select! {
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, _)) if !blocked_in(&buf[..n]) => agent.receive(ms(), &buf[..n]),
                Ok(_) => {}
                Err(e) => debug!("gossip receive: {e}"),
            },
            _ = tokio::time::sleep_until(wake.into()) => {}
            _ = stop.changed() => break,
        }
        // Everything already queued first: after a stall of this node, its
        // peers' answers are in the socket, not missing.
        for _ in 0..MAX_DRAIN {
            match socket.try_recv_from(&mut buf) {
                Ok((n, _)) if !blocked_in(&buf[..n]) => agent.receive(ms(), &buf[..n]),
                Ok(_) => {}
                Err(_) => break,
            }
        }
        if Instant::now() >= next_learn {
            next_learn = Instant::now() + LEARN_EVERY;
            for n in backend.nodes() {
                if n.id != me && !n.gossip_addr.is_empty() {
                    let region = (!n.labels.region.is_empty()).then_some(n.labels.region.as_str());
                    agent.learn(n.id, &n.gossip_addr, region);
                }
            }
        }
        agent.tick(ms());
        for (to_node, addr, packet) in agent.take_outbox_to() {
            if faults.blocks_out(to_node) {
                continue;
            }
            match resolver.resolve(&addr) {
                // A full socket buffer drops the datagram, as the network
                // may: gossip tolerates loss.
                Some(to) => {
                    if let Err(e) = socket.try_send_to(&packet, to) {
                        debug!(to = %addr, "gossip send: {e}");
                    }
                }
                None => debug!(to = %addr, "gossip address not resolved (yet)"),
            }
        }
        if Instant::now() >= next_publish {
            next_publish = Instant::now() + publish_period;
            publish(&agent, ms(), &backend, &node, &state);
        }
    }
    info!("gossip stopped");
}

/// Hands the view to the directory, the store and readers.
fn publish(agent: &Agent, now: u64, backend: &Backend, node: &NodeHandle, state: &GossipState) {
    let peers = agent.peers(now);
    let mut down = BTreeSet::new();
    for p in &peers {
        if matches!(p.state, Liveness::Suspect | Liveness::Dead) {
            down.insert(p.node);
        }
        let known = backend.node(p.node);
        match record_of(p) {
            // Learned from gossip (a node that joined through another
            // member), or its record changed: the directory takes it.
            Some(rec) if known.as_ref().is_none_or(|k| !same_record(k, &rec)) => {
                if let Err(e) = backend.learn_node(rec) {
                    warn!(node = p.node, "a record from gossip refused: {e}");
                }
            }
            _ => {
                backend.set_liveness(p.node, p.state);
            }
        }
    }
    node.set_liveness_feed(down);
    let view =
        View { me: Some(agent.identity().clone()), peers, traffic: agent.traffic().clone(), stalled_ms: agent.stalled_ms(), now_ms: now };
    *state.view.write().unwrap_or_else(std::sync::PoisonError::into_inner) = view;
}

/// One node as `GET /v1/nodes` and `meridian nodes` show it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    pub id: u64,
    /// The node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
    pub peer_addr: String,
    pub client_addr: String,
    pub http_addr: String,
    pub gossip_addr: String,
    pub region: String,
    pub zone: String,
    pub host: String,
    pub role: String,
    /// `alive`, `suspect`, `dead` or `unknown` (gossip off, or not heard
    /// from yet).
    pub state: String,
    /// The failure detector's suspicion level (0 for this node, and when
    /// never heard from).
    pub phi: f64,
    /// The node's gossip incarnation (0: not heard of through gossip).
    pub incarnation: u64,
    /// How long ago it was last heard from, in ms (`None`: never; 0 for
    /// this node).
    pub last_heard_ms_ago: Option<u64>,
}

/// The name of a liveness state in reports and metrics.
pub fn state_name(l: Liveness) -> &'static str {
    match l {
        Liveness::Alive => "alive",
        Liveness::Suspect => "suspect",
        Liveness::Dead => "dead",
        Liveness::Unknown => "unknown",
    }
}

/// Every node of the directory, with what the gossip `view` (if it runs)
/// says of it, in id order; nodes gossip knows and the directory does not
/// yet are listed from their gossip records.
pub fn report(directory: &[NodeRecord], me: u64, view: Option<&View>) -> Vec<NodeReport> {
    let peers: HashMap<u64, &PeerView> = view.map(|v| v.peers.iter().map(|p| (p.node, p)).collect()).unwrap_or_default();
    let mut records: Vec<NodeRecord> = directory.to_vec();
    for p in peers.values() {
        if !directory.iter().any(|d| d.id == p.node) {
            records.extend(record_of(p));
        }
    }
    records.sort_by_key(|r| r.id);
    records
        .into_iter()
        .map(|r| {
            let p = peers.get(&r.id);
            let is_self = r.id == me;
            let state = match (is_self, view, p) {
                (true, _, _) => Liveness::Alive,
                (false, Some(_), Some(p)) => p.state,
                (false, Some(_), None) => Liveness::Unknown,
                (false, None, _) => r.liveness,
            };
            NodeReport {
                id: r.id,
                is_self,
                peer_addr: r.peer_addr,
                client_addr: r.client_addr,
                http_addr: r.http_addr,
                gossip_addr: r.gossip_addr,
                region: r.labels.region,
                zone: r.labels.zone,
                host: r.labels.host,
                role: match r.role {
                    meridian_membership::NodeRole::Data => "data".into(),
                    meridian_membership::NodeRole::Witness => "witness".into(),
                },
                state: state_name(state).into(),
                phi: if is_self { 0.0 } else { p.map_or(0.0, |p| (p.phi * 100.0).round() / 100.0) },
                incarnation: if is_self {
                    view.and_then(|v| v.me.as_ref()).map_or(0, |m| m.incarnation)
                } else {
                    p.map_or(0, |p| p.incarnation)
                },
                last_heard_ms_ago: if is_self {
                    Some(0)
                } else {
                    p.and_then(|p| p.last_heard_ms).and_then(|t| view.map(|v| v.now_ms.saturating_sub(t)))
                },
            }
        })
        .collect()
}

/// `meridian.v1.Membership`: [`report`] over gRPC, for clients choosing
/// an endpoint.
pub struct MembershipService {
    pub backend: Arc<Backend>,
}

#[tonic::async_trait]
impl meridian_proto::meridian::v1::membership_server::Membership for MembershipService {
    async fn nodes(
        &self,
        _req: tonic::Request<meridian_proto::meridian::v1::NodesRequest>,
    ) -> Result<tonic::Response<meridian_proto::meridian::v1::NodesResponse>, tonic::Status> {
        use meridian_proto::meridian::v1 as api;
        let view = self.backend.gossip.get().map(|g| g.view());
        let nodes = report(&self.backend.nodes(), self.backend.cfg.node_id, view.as_ref())
            .into_iter()
            .map(|n| api::NodeStatus {
                node: Some(api::NodeInfo {
                    id: n.id,
                    peer_addr: n.peer_addr,
                    client_addr: n.client_addr,
                    http_addr: n.http_addr,
                    region: n.region,
                    zone: n.zone,
                    host: n.host,
                    role: n.role,
                    gossip_addr: n.gossip_addr,
                }),
                state: n.state,
                phi: n.phi,
                incarnation: n.incarnation,
            })
            .collect();
        Ok(tonic::Response::new(api::NodesResponse { node_id: self.backend.cfg.node_id, nodes }))
    }
}

/// The gossip's metrics, into `reg`.
pub fn register_metrics(reg: &prometheus::Registry, view: &View) -> Result<(), prometheus::Error> {
    use prometheus::{GaugeVec, IntCounter, IntCounterVec, IntGaugeVec, Opts};
    let members = IntGaugeVec::new(
        Opts::new("meridian_membership_members", "Other nodes by the state this node's gossip gives them (alert on suspect or dead)"),
        &["state"],
    )?;
    for l in [Liveness::Alive, Liveness::Suspect, Liveness::Dead, Liveness::Unknown] {
        members.with_label_values(&[state_name(l)]).set(view.peers.iter().filter(|p| p.state == l).count() as i64);
    }
    reg.register(Box::new(members))?;
    let phi = GaugeVec::new(Opts::new("meridian_membership_phi", "The failure detector's suspicion level of each peer"), &["peer"])?;
    for p in &view.peers {
        phi.with_label_values(&[p.node.to_string().as_str()]).set(p.phi);
    }
    reg.register(Box::new(phi))?;
    let packets = IntCounterVec::new(Opts::new("meridian_gossip_packets_total", "Gossip datagrams sent and accepted"), &["direction"])?;
    packets.with_label_values(&["sent"]).inc_by(view.traffic.sent_packets);
    packets.with_label_values(&["received"]).inc_by(view.traffic.received_packets);
    reg.register(Box::new(packets))?;
    let bytes =
        IntCounterVec::new(Opts::new("meridian_gossip_bytes_total", "Bytes of gossip datagrams sent and accepted"), &["direction"])?;
    bytes.with_label_values(&["sent"]).inc_by(view.traffic.sent_bytes);
    bytes.with_label_values(&["received"]).inc_by(view.traffic.received_bytes);
    reg.register(Box::new(bytes))?;
    let dropped = IntCounterVec::new(
        Opts::new(
            "meridian_gossip_packets_dropped_total",
            "Gossip datagrams dropped, by reason (forged or other_cluster: a misconfigured or hostile sender)",
        ),
        &["reason"],
    )?;
    for (reason, n) in &view.traffic.dropped {
        dropped.with_label_values(&[reason]).inc_by(*n);
    }
    reg.register(Box::new(dropped))?;
    let stalled = IntCounter::new("meridian_gossip_self_stall_ms_total", "Stalls of this node's own gossip loop, credited to its peers")?;
    stalled.inc_by(view.stalled_ms);
    reg.register(Box::new(stalled))?;
    Ok(())
}

/// Whether two records agree on everything but liveness.
fn same_record(a: &NodeRecord, b: &NodeRecord) -> bool {
    a.peer_addr == b.peer_addr
        && a.client_addr == b.client_addr
        && a.http_addr == b.http_addr
        && a.gossip_addr == b.gossip_addr
        && a.labels == b.labels
        && a.role == b.role
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_start_counter_rises_at_every_start_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_start(dir.path()).unwrap(), 1);
        assert_eq!(next_start(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join(STARTS_FILE), "bogus").unwrap();
        assert!(matches!(next_start(dir.path()), Err(GossipError::Starts { .. })));
        assert_eq!(std::fs::read_to_string(dir.path().join(STARTS_FILE)).unwrap(), "bogus", "a refusal writes nothing");
    }

    #[test]
    fn a_short_key_is_refused_and_trailing_whitespace_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        std::fs::write(&p, "short\n").unwrap();
        assert!(load_key(&p).unwrap_err().to_string().contains("at least 32"));
        std::fs::write(&p, format!("{}\n", "a".repeat(32))).unwrap();
        assert_eq!(load_key(&p).unwrap(), "a".repeat(32).into_bytes());
        assert!(load_key(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn clusters_with_other_cas_have_other_wire_ids() {
        assert_ne!(wire_cluster_id(b"ca one"), wire_cluster_id(b"ca two"));
        assert_eq!(wire_cluster_id(b"ca one"), wire_cluster_id(b"ca one"));
    }
}
