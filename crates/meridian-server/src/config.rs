//! `meridian server` configuration (TOML file and/or flags).

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};

use meridian_membership::phi::PhiConfig;
use meridian_membership::{Labels, Liveness, NodeDirectory, NodeIdentity, NodeRecord, NodeRole, MAX_NODES};
use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("reading {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// A node's advertised addresses: `host:port` each, DNS names allowed —
/// what other nodes and clients dial (resolved at every dial). What a node
/// binds is its `listen_*` addresses (default: its advertised ones,
/// resolved at start).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub peer_addr: String,
    pub client_addr: String,
    pub http_addr: String,
    /// The gossip (UDP) socket; unset: the peer address's host with the
    /// peer port + 1 (2381 beside 2380).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gossip_addr: Option<String>,
}

impl Member {
    /// The gossip address: the configured one, or the peer address's host
    /// with the peer port + 1.
    pub fn gossip_addr(&self) -> String {
        if let Some(a) = &self.gossip_addr {
            return a.clone();
        }
        match self.peer_addr.rsplit_once(':').and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?.checked_add(1)?))) {
            Some((host, port)) => format!("{host}:{port}"),
            None => String::new(),
        }
    }
}

/// Membership gossip (SWIM over UDP, phi-accrual failure detection): see
/// docs/operations.md. The detector's defaults are Akka's and Cassandra's
/// (`meridian_membership::phi::PhiConfig`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GossipSettings {
    /// Whether gossip runs. Unset: it runs when `key_file` is set (a
    /// config written before gossip existed starts as it did, without it,
    /// and says so). Off, nodes know each other's liveness only from raft
    /// traffic and pings, and `meridian nodes` shows no states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// A file of at least 32 bytes shared by every node (the cluster key):
    /// gossip datagrams are authenticated with it (HMAC-SHA256). Required
    /// with `enabled = true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// How often a node disseminates a heartbeat (ms).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_ms: u64,
    /// φ at which a peer becomes suspect.
    #[serde(default = "default_suspect_phi")]
    pub suspect_phi: f64,
    /// Silence tolerated on top of the mean heartbeat interval (ms).
    #[serde(default = "default_acceptable_pause_ms")]
    pub acceptable_pause_ms: u64,
    /// Floor of the standard deviation of heartbeat intervals (ms).
    #[serde(default = "default_min_std_dev_ms")]
    pub min_std_dev_ms: u64,
    /// Heartbeat intervals remembered per peer.
    #[serde(default = "default_max_samples")]
    pub max_samples: usize,
    /// How long a peer stays suspect before it is dead (ms).
    #[serde(default = "default_dead_after_ms")]
    pub dead_after_ms: u64,
}

fn default_heartbeat_ms() -> u64 {
    meridian_membership::agent::DEFAULT_HEARTBEAT_MS
}
fn default_suspect_phi() -> f64 {
    PhiConfig::default().suspect_phi
}
fn default_acceptable_pause_ms() -> u64 {
    PhiConfig::default().acceptable_pause_ms as u64
}
fn default_min_std_dev_ms() -> u64 {
    PhiConfig::default().min_std_dev_ms as u64
}
fn default_max_samples() -> usize {
    PhiConfig::default().max_samples
}
fn default_dead_after_ms() -> u64 {
    PhiConfig::default().dead_after_ms
}

impl Default for GossipSettings {
    fn default() -> Self {
        GossipSettings {
            enabled: None,
            key_file: None,
            heartbeat_ms: default_heartbeat_ms(),
            suspect_phi: default_suspect_phi(),
            acceptable_pause_ms: default_acceptable_pause_ms(),
            min_std_dev_ms: default_min_std_dev_ms(),
            max_samples: default_max_samples(),
            dead_after_ms: default_dead_after_ms(),
        }
    }
}

impl GossipSettings {
    /// The detector's settings (the heartbeat period is its expected
    /// interval).
    pub fn phi(&self) -> PhiConfig {
        PhiConfig {
            suspect_phi: self.suspect_phi,
            dead_after_ms: self.dead_after_ms,
            max_samples: self.max_samples,
            min_std_dev_ms: self.min_std_dev_ms as f64,
            acceptable_pause_ms: self.acceptable_pause_ms as f64,
            first_interval_ms: self.heartbeat_ms as f64,
            // Well above the gossip loop's period (100 ms at most) and the
            // heartbeat's, so only a real stall of this node counts.
            self_pause_ms: PhiConfig::default().self_pause_ms.max(2 * self.heartbeat_ms),
        }
    }

    fn is_default(&self) -> bool {
        *self == GossipSettings::default()
    }

    /// Whether gossip runs: `enabled`, or else whether a key is set.
    pub fn on(&self) -> bool {
        self.enabled.unwrap_or(self.key_file.is_some())
    }

    fn validate(&self) -> Result<(), String> {
        if !self.on() {
            return Ok(());
        }
        if self.key_file.is_none() {
            return Err("gossip.enabled = true needs gossip.key_file: a file of at least 32 random bytes that every node \
                        shares (e.g. `head -c 32 /dev/urandom > gossip.key`)"
                .into());
        }
        if !(100..=60_000).contains(&self.heartbeat_ms) {
            return Err(format!("gossip.heartbeat_ms {} is outside 100..=60000", self.heartbeat_ms));
        }
        self.phi().validate().map_err(|e| format!("gossip: {e}"))
    }
}

/// The socket addresses a node binds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenAddrs {
    pub peer: SocketAddr,
    pub client: SocketAddr,
    pub http: SocketAddr,
    /// `None` while gossip is off.
    pub gossip: Option<SocketAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TlsPaths {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub node_id: u64,
    pub data_dir: PathBuf,
    /// Every node of the initial cluster, this one included. With `join`,
    /// this node's own entry only (its advertised addresses).
    #[serde(default)]
    pub initial_cluster: Vec<Member>,
    /// Client (gRPC) addresses of members of a running cluster, `host:port`
    /// (`meridian server --join`): instead of bootstrapping with
    /// `initial_cluster`, the node registers itself through the first that
    /// answers and holds no replica until it is added to a range.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub join: Vec<String>,
    /// What to bind, when it differs from the advertised addresses (a pod
    /// advertises its DNS name and binds `0.0.0.0`). Unset: the advertised
    /// address, resolved at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_peer_addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_client_addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_http_addr: Option<SocketAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen_gossip_addr: Option<SocketAddr>,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_zone")]
    pub zone: String,
    /// The machine (failure domain below the zone); default `node-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// `data` (the default) or `witness`: a witness node takes only the
    /// tie-breaking voter of region-survival namespaces in its region; its
    /// replicas vote and keep the log, never data, and it serves no
    /// client (docs/geography.md).
    #[serde(default)]
    pub role: NodeRole,
    /// Declared namespaces (key prefixes); each gets its own Raft group.
    #[serde(default)]
    pub namespaces: Vec<String>,
    /// Peer (QUIC) TLS material signed by the cluster CA.
    pub tls: TlsPaths,
    /// One Raft tick (default [`DEFAULT_TICK_MS`]); heartbeat = 1 tick,
    /// election timeout = 10-15 ticks, drawn anew at every reset of the
    /// election timer (0.5-0.75 s at the default).
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Threads of the async runtime (gRPC, HTTP, peer transport). Unset:
    /// one per core, and the Raft store loop has a thread of its own
    /// besides. 1: the node runs single-threaded: gRPC, the peer transport
    /// and the store loop share one thread (only fsyncs and RocksDB's
    /// background jobs run elsewhere), so a request crosses no thread
    /// until its fsync. That is the cheapest setting where several nodes
    /// share few cores (`meridian dev` uses it); see docs/operations.md.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_threads: Option<usize>,
    /// The space quota of this member's engine files, in bytes (etcd's
    /// `--quota-backend-bytes`): 0, the default, means etcd's default of
    /// 2 GiB; a negative value turns the quota off. A write that would
    /// pass it raises the NOSPACE alarm, which refuses writes that grow
    /// the data on every member until an operator disarms it (see
    /// docs/operations.md).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub quota_backend_bytes: i64,
    /// Membership gossip and failure detection.
    #[serde(default, skip_serializing_if = "GossipSettings::is_default")]
    pub gossip: GossipSettings,
    /// The placement driver's policy (its plan is a dry run so far).
    #[serde(default, skip_serializing_if = "crate::placement::PlacementSettings::is_default")]
    pub placement: crate::placement::PlacementSettings,
    /// Fault injection for chaos testing; all off by default.
    #[serde(default)]
    pub debug: DebugConfig,
    /// `meridian server --relabel`: accept labels other than the ones the
    /// data directory recorded (never read from a file, so it cannot stay
    /// on by accident).
    #[serde(skip)]
    pub relabel: bool,
}

/// Test-only switches. `faults` exposes `POST /v1/debug/*` (network
/// partitions, leader transfers, lease-clock rate); the `unsafe_*` ones
/// deliberately break a guarantee so the chaos suite can prove its checker
/// catches it. Never set them in production.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DebugConfig {
    #[serde(default)]
    pub faults: bool,
    /// Serve "linearizable" reads from local state without ReadIndex.
    #[serde(default)]
    pub unsafe_local_reads: bool,
    /// WAN latency between regions, on loopback (see [`crate::wan`]).
    #[serde(default, skip_serializing_if = "crate::wan::WanConfig::is_off")]
    pub wan: crate::wan::WanConfig,
}

/// Addresses `join` may list (any one member is enough).
pub const MAX_JOIN_ADDRS: usize = 16;

/// Upper bound of `worker_threads`.
pub const MAX_WORKER_THREADS: usize = 1024;

fn is_zero(n: &i64) -> bool {
    *n == 0
}

fn default_region() -> String {
    "local".into()
}
fn default_zone() -> String {
    "local-a".into()
}
/// Default Raft tick: a leader that dies is replaced after 0.5-0.75 s.
/// Groups whose members are far apart (round trips over ~20 ms) want a
/// longer tick; see docs/operations.md.
pub const DEFAULT_TICK_MS: u64 = 50;

fn default_tick_ms() -> u64 {
    DEFAULT_TICK_MS
}

impl ServerConfig {
    /// The space quota in bytes (`None`: off); see `quota_backend_bytes`.
    pub fn quota(&self) -> Option<u64> {
        match self.quota_backend_bytes {
            0 => Some(crate::alarms::DEFAULT_QUOTA_BACKEND_BYTES),
            n if n < 0 => None,
            n => Some(n as u64),
        }
    }

    /// `worker_threads = 1`: one current-thread runtime carries the whole
    /// node, the store loop included.
    pub fn single_threaded(&self) -> bool {
        self.worker_threads == Some(1)
    }

    pub fn load(path: &Path) -> Result<ServerConfig, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        let cfg: ServerConfig =
            toml::from_str(&text).map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }

    /// This node's labels.
    pub fn labels(&self) -> Labels {
        Labels {
            region: self.region.clone(),
            zone: self.zone.clone(),
            host: self.host.clone().unwrap_or_else(|| format!("node-{}", self.node_id)),
        }
    }

    /// What this node is, as persisted with its data.
    pub fn identity(&self) -> NodeIdentity {
        NodeIdentity { node_id: self.node_id, labels: self.labels(), role: self.role }
    }

    /// The directory record of initial member `m` (labels known for this
    /// node only; the others' come from their records in the meta range).
    pub fn node_record(&self, m: &Member) -> NodeRecord {
        let me = m.id == self.node_id;
        NodeRecord {
            id: m.id,
            peer_addr: m.peer_addr.to_string(),
            client_addr: m.client_addr.to_string(),
            http_addr: m.http_addr.to_string(),
            gossip_addr: if self.gossip.on() { m.gossip_addr() } else { String::new() },
            labels: if me { self.labels() } else { Labels::default() },
            role: if me { self.role } else { NodeRole::Data },
            liveness: if me { Liveness::Alive } else { Liveness::Unknown },
        }
    }

    pub fn me(&self) -> &Member {
        self.initial_cluster.iter().find(|m| m.id == self.node_id).expect("validated")
    }

    /// Joins a running cluster (`join`) instead of bootstrapping one.
    pub fn joining(&self) -> bool {
        !self.join.is_empty()
    }

    /// What this node binds: each `listen_*` address, or else the
    /// advertised one resolved now (an IPv4 address first).
    pub fn listen(&self) -> Result<ListenAddrs, ConfigError> {
        let me = self.me();
        let pick = |explicit: Option<SocketAddr>, advertised: &str, field: &str| -> Result<SocketAddr, ConfigError> {
            if let Some(a) = explicit {
                return Ok(a);
            }
            let addrs: Vec<SocketAddr> = advertised
                .to_socket_addrs()
                .map_err(|e| {
                    ConfigError::Invalid(format!(
                        "the advertised {field} address {advertised} does not resolve ({e}); set listen_{field}_addr to what this node binds"
                    ))
                })?
                .collect();
            addrs.iter().find(|a| a.is_ipv4()).or(addrs.first()).copied().ok_or_else(|| {
                ConfigError::Invalid(format!("the advertised {field} address {advertised} resolves to nothing; set listen_{field}_addr"))
            })
        };
        Ok(ListenAddrs {
            peer: pick(self.listen_peer_addr, &me.peer_addr, "peer")?,
            client: pick(self.listen_client_addr, &me.client_addr, "client")?,
            http: pick(self.listen_http_addr, &me.http_addr, "http")?,
            gossip: if self.gossip.on() { Some(pick(self.listen_gossip_addr, &me.gossip_addr(), "gossip")?) } else { None },
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |s: String| Err(ConfigError::Invalid(s));
        if self.node_id == 0 {
            return bad("node_id must be at least 1".into());
        }
        if !self.initial_cluster.iter().any(|m| m.id == self.node_id) {
            return bad(format!("node_id {} is not in initial_cluster", self.node_id));
        }
        let mut ids: Vec<u64> = self.initial_cluster.iter().map(|m| m.id).collect();
        ids.sort_unstable();
        ids.dedup();
        if ids.len() != self.initial_cluster.len() || ids.contains(&0) {
            return bad("initial_cluster ids must be unique and at least 1".into());
        }
        if self.initial_cluster.len() > MAX_NODES {
            return bad(format!("initial_cluster has more than {MAX_NODES} members"));
        }
        if self.joining() {
            if self.initial_cluster.len() != 1 {
                return bad("with join, initial_cluster lists this node only (its advertised addresses); the cluster's members come from the node it joins through".into());
            }
            if self.join.len() > MAX_JOIN_ADDRS {
                return bad(format!("join lists more than {MAX_JOIN_ADDRS} addresses"));
            }
            for a in &self.join {
                meridian_membership::check_host_port(a).map_err(|e| ConfigError::Invalid(format!("join address {a:?}: {e}")))?;
            }
        }
        // A founding member is a voter of every first range (the meta
        // range, the root, declared namespaces): as a witness it would
        // hold a vote but no copy of them until the placement driver moves
        // it off, which it does only when it executes.
        if self.role == NodeRole::Witness && !self.joining() && !self.placement.execute {
            return bad("a witness in initial_cluster becomes a voter of every first range, without their data: set [placement] execute = true (the driver moves it off them) or start the witness with join".into());
        }
        for m in &self.initial_cluster {
            let rec = self.node_record(m);
            if let Err(e) = NodeDirectory::new().upsert(rec) {
                return bad(e.to_string());
            }
        }
        if let Err(e) = self.gossip.validate() {
            return bad(e);
        }
        if let Err(e) = self.placement.validate() {
            return bad(e);
        }
        if let Err(e) = self.debug.wan.validate() {
            return bad(e);
        }
        if self.gossip.on() {
            // Two members on one gossip socket, or a gossip socket on a
            // peer (QUIC, UDP too) socket: the default, peer port + 1,
            // collides when nodes of one host take consecutive peer ports.
            // (TCP client and HTTP ports may share a number with it.)
            let mut taken = std::collections::BTreeMap::new();
            for m in &self.initial_cluster {
                taken.insert(m.peer_addr.clone(), format!("node {}'s peer address", m.id));
            }
            for m in &self.initial_cluster {
                let g = m.gossip_addr();
                if g.is_empty() {
                    return bad(format!("node {}: no gossip address can be derived from {}; set gossip_addr", m.id, m.peer_addr));
                }
                if let Some(other) = taken.insert(g.clone(), format!("node {}'s gossip address", m.id)) {
                    return bad(format!("node {}'s gossip address {g} is also {other}; set gossip_addr for node {}", m.id, m.id));
                }
            }
        }
        if !(10..=10_000).contains(&self.tick_ms) {
            return bad(format!("tick_ms {} is outside 10..=10000", self.tick_ms));
        }
        if let Some(n) = self.worker_threads {
            if !(1..=MAX_WORKER_THREADS).contains(&n) {
                return bad(format!("worker_threads {n} is outside 1..={MAX_WORKER_THREADS}"));
            }
        }
        crate::routing::Routing::new(&self.namespaces).map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ServerConfig {
        let m = |id: u64| Member {
            id,
            peer_addr: format!("127.0.0.1:{}", 2380 + id).parse().unwrap(),
            client_addr: format!("127.0.0.1:{}", 2370 + id).parse().unwrap(),
            http_addr: format!("127.0.0.1:{}", 8080 + id).parse().unwrap(),
            gossip_addr: Some(format!("127.0.0.1:{}", 7940 + id)),
        };
        ServerConfig {
            node_id: 1,
            data_dir: "/tmp/m1".into(),
            initial_cluster: vec![m(1), m(2), m(3)],
            region: "r".into(),
            zone: "z".into(),
            namespaces: vec!["/payments/".into()],
            tls: TlsPaths { cert: "c".into(), key: "k".into(), ca: "ca".into() },
            tick_ms: 100,
            worker_threads: Some(2),
            debug: DebugConfig::default(),
            quota_backend_bytes: 0,
            host: None,
            role: NodeRole::Data,
            relabel: false,
            join: Vec::new(),
            listen_peer_addr: None,
            listen_client_addr: None,
            listen_http_addr: None,
            listen_gossip_addr: None,
            gossip: GossipSettings { key_file: Some("gossip.key".into()), ..GossipSettings::default() },
            placement: Default::default(),
        }
    }

    #[test]
    fn gossip_needs_a_key_and_sockets_of_its_own() {
        let mut c = sample();
        c.validate().unwrap();
        assert!(c.gossip.on(), "a key turns gossip on");
        c.gossip.key_file = None;
        assert!(!c.gossip.on(), "no key, nothing said: off (a config from before gossip starts as it did)");
        c.validate().unwrap();
        assert_eq!(c.listen().unwrap().gossip, None, "gossip off binds no socket");
        c.gossip.enabled = Some(true);
        assert!(c.validate().unwrap_err().to_string().contains("needs gossip.key_file"));
        c.gossip.enabled = Some(false);
        c.gossip.key_file = Some("k".into());
        assert!(!c.gossip.on());
        c.validate().unwrap();
        let mut c = sample();
        c.initial_cluster[0].gossip_addr = Some(c.initial_cluster[0].client_addr.clone());
        c.validate().expect("a UDP gossip socket may share its number with a TCP client port");
        let mut c = sample();
        // Peer ports 2381, 2382, 2383: the default gossip port of node 1
        // (peer + 1) is node 2's peer port.
        for m in &mut c.initial_cluster {
            m.gossip_addr = None;
        }
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("node 1's gossip address 127.0.0.1:2382 is also node 2's peer address"), "{e}");
        let mut c = sample();
        c.initial_cluster[1].gossip_addr = c.initial_cluster[0].gossip_addr.clone();
        assert!(c.validate().unwrap_err().to_string().contains("is also node 1's gossip address"));
        let mut c = sample();
        c.gossip.heartbeat_ms = 5;
        assert!(c.validate().unwrap_err().to_string().contains("heartbeat_ms"));
        let mut c = sample();
        c.gossip.suspect_phi = 0.0;
        assert!(c.validate().unwrap_err().to_string().contains("suspect_phi"));
        let m = Member {
            id: 1,
            peer_addr: "meridian-0.peer:2380".into(),
            client_addr: "a:1".into(),
            http_addr: "a:2".into(),
            gossip_addr: None,
        };
        assert_eq!(m.gossip_addr(), "meridian-0.peer:2381");
        assert_eq!(sample().listen().unwrap().gossip, Some("127.0.0.1:7941".parse().unwrap()));
    }

    #[test]
    fn the_quota_defaults_to_etcds_and_a_negative_one_is_off() {
        let mut c = sample();
        assert_eq!(c.quota(), Some(2 << 30));
        c.quota_backend_bytes = 8 << 20;
        assert_eq!(c.quota(), Some(8 << 20));
        c.quota_backend_bytes = -1;
        assert_eq!(c.quota(), None);
    }

    #[test]
    fn roundtrips_through_toml_and_validates() {
        let c = sample();
        let back: ServerConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        back.validate().unwrap();
    }

    #[test]
    fn rejects_bad_configs_with_clear_errors() {
        let mut c = sample();
        c.node_id = 7;
        assert!(c.validate().unwrap_err().to_string().contains("not in initial_cluster"));
        let mut c = sample();
        c.namespaces = vec!["/a/".into(), "/a/b/".into()];
        assert!(c.validate().unwrap_err().to_string().contains("overlaps"));
        let mut c = sample();
        c.tick_ms = 1;
        assert!(c.validate().is_err());
        let mut c = sample();
        c.worker_threads = Some(0);
        assert!(c.validate().unwrap_err().to_string().contains("worker_threads 0"));
        let mut c = sample();
        c.worker_threads = None;
        let back: ServerConfig = toml::from_str(&c.to_toml()).unwrap();
        assert_eq!(back.worker_threads, None, "unset stays unset (one thread per core)");
        assert!(!back.single_threaded());
        c.worker_threads = Some(1);
        assert!(c.single_threaded(), "one worker: the store loop shares the runtime's thread");
        c.worker_threads = Some(2);
        assert!(!c.single_threaded());
        assert!(toml::from_str::<ServerConfig>("node_id = 1\nbogus = 2").is_err(), "unknown fields are errors");
    }
}
