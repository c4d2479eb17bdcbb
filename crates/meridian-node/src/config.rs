use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use meridian_raftstore::{StateMachineFactory, StoreConfig};
use meridian_storage::RangeDescriptor;
use meridian_transport_quic::TlsMaterial;

use crate::error::NodeError;

/// Default length of one logical tick.
pub const DEFAULT_TICK_MS: u64 = 100;
/// Default deadline of a request made through a handle.
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// Everything one node needs to start.
#[derive(Clone)]
pub struct NodeConfig {
    pub node_id: u64,
    /// RocksDB lives here; created if missing. Data survives restarts.
    pub data_dir: PathBuf,
    /// UDP address of the QUIC endpoint; port 0 picks one (see
    /// [`NodeHandle::peer_addr`](crate::NodeHandle::peer_addr)).
    pub listen_peer: SocketAddr,
    /// Peer nodes' advertised QUIC addresses, `host:port` (DNS names are
    /// resolved at every dial). More can be added later with
    /// [`NodeHandle::set_peer_addr`](crate::NodeHandle::set_peer_addr).
    pub peers: HashMap<u64, String>,
    pub tls: TlsMaterial,
    /// Bootstrap: the ranges listing this node are created on the node's
    /// first start (an empty data directory) and ignored on every later
    /// one (`Store::bootstrap`).
    pub ranges: Vec<RangeDescriptor>,
    /// Wall-clock length of one store tick (election and heartbeat timing
    /// are counted in ticks).
    pub tick_ms: u64,
    /// Deadline of each request made through a handle; past it the caller
    /// gets [`NodeError::Timeout`].
    pub request_timeout_ms: u64,
    /// `store.node_id` must equal `node_id`.
    pub store: StoreConfig,
    pub state_machine: Arc<dyn StateMachineFactory>,
    /// Where the store loop runs. False (the default): on a thread of its
    /// own, with its own runtime. True: as a task on the runtime that
    /// calls [`Node::start`](crate::Node::start), which must then outlive
    /// the node. On a current-thread runtime that puts gRPC, the peer
    /// transport and the store on one thread, and a request crosses no
    /// thread until its fsync (on the sync thread, in both modes): the
    /// cheapest way to run several nodes on few cores. A poll round then
    /// holds that thread while it writes to RocksDB, so leave this off
    /// where the runtime must answer quickly under load.
    pub store_on_runtime: bool,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("node_id", &self.node_id)
            .field("data_dir", &self.data_dir)
            .field("listen_peer", &self.listen_peer)
            .field("peers", &self.peers)
            .field("tls", &self.tls)
            .field("ranges", &self.ranges.len())
            .field("tick_ms", &self.tick_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("store", &self.store)
            .field("store_on_runtime", &self.store_on_runtime)
            .finish_non_exhaustive()
    }
}

impl NodeConfig {
    /// Production defaults: 100 ms ticks, 5 s request deadline, the store
    /// seeded from OS entropy, no peers and no ranges yet.
    pub fn new(
        node_id: u64,
        data_dir: impl Into<PathBuf>,
        listen_peer: SocketAddr,
        tls: TlsMaterial,
        state_machine: Arc<dyn StateMachineFactory>,
    ) -> Self {
        let mut store = StoreConfig::new(node_id);
        store.record_applied = false;
        // Production runs need no replay from a seed; independent nodes
        // must not draw the same election timeouts.
        store.seed = rand::random();
        // The store loop's sync thread fsyncs while the store prepares the
        // next round.
        store.defer_sync = true;
        NodeConfig {
            node_id,
            data_dir: data_dir.into(),
            listen_peer,
            peers: HashMap::new(),
            tls,
            ranges: Vec::new(),
            tick_ms: DEFAULT_TICK_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            store,
            state_machine,
            store_on_runtime: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), NodeError> {
        let bad = |why: String| Err(NodeError::Config(why));
        if self.node_id == 0 {
            return bad("node_id 0 is reserved".into());
        }
        if self.store.node_id != self.node_id {
            return bad(format!("store.node_id {} differs from node_id {}", self.store.node_id, self.node_id));
        }
        if self.tick_ms == 0 || self.request_timeout_ms == 0 {
            return bad("tick_ms and request_timeout_ms must be positive".into());
        }
        if self.peers.contains_key(&self.node_id) || self.peers.contains_key(&0) {
            return bad("peers must not list this node or node 0".into());
        }
        if self.store.record_applied {
            // Nothing would ever drain the record: it would grow without bound.
            return bad("store.record_applied is for the simulation only".into());
        }
        Ok(())
    }
}
