//! Meridian's production transport: raft messages over QUIC (quinn) with
//! mutual TLS. The [`Transport`] trait, the envelope and the in-memory
//! network live in `meridian-transport`, which depends on no IO stack; this
//! crate is the driver that owns sockets, tasks and clocks.
//!
//! ```text
//!  send(to, Vec<RaftEnvelope>)      never awaits: try_send, or drop + Feedback
//!  send_snapshot(to, SnapshotStream) the same; the stream is read later
//!        │
//!        ▼ bounded mpsc per peer (peer_queue_batches)
//!  ┌───────────┐  one connection per peer, dialled by us, redialled with backoff
//!  │ PeerTask  │──► long-lived uni stream: [u32 LE len][PeerBatch][len][PeerBatch]…
//!  │ (peer.rs) │──► one new uni stream per snapshot: its chunk frames read as the
//!  │           │    stream takes them (≤ 1 MiB each), the MsgSnapshot, finish, await ack
//!  └───────────┘──► Unreachable / Snapshot{ok} ──► FeedbackSink ──► drain_feedback
//!        │ QUIC, to the peer node
//!        ▼
//!  ┌─────────────────────────────────────┐
//!  │ Listener (listener.rs), on the peer │  mTLS; from_node checked against the
//!  │ accept conn → accept uni → frames   │  certificate; len ≤ MAX_FRAME_BYTES;
//!  └─────────────────────────────────────┘  shared receive byte budget
//!        │ inbound.send(env).await  (bounded: backpressure reaches the sender)
//!        ▼
//!    raftstore
//! ```
//!
//! Peers are known by `host:port` (DNS names allowed). A peer's address is
//! resolved at every dial, reconnects included, so a node that comes back
//! under the same name at another IP (a rescheduled pod) is found again
//! ([`Resolve`]; [`DnsResolver`] by default).
//!
//! Connections are one-way: node A dials B to send, B dials A to send, so
//! each side owns the lifecycle of what it sends and no dial races need
//! resolving. One UDP socket (the endpoint) serves both directions.
//!
//! Local drops are reported: whatever cannot be queued, or is queued while
//! the peer is unreachable, comes back as [`Feedback::Unreachable`] (or
//! `Snapshot { ok: false }`). Bytes already written when a connection dies
//! are lost silently, like packets; raft's own retransmission covers both.

// This crate is a driver: it owns sockets, spawns tasks and reads clocks
// (timeouts, backoff). The simulation transport (`mem`) stays under the
// workspace's determinism lints.
#![allow(clippy::disallowed_methods)]

mod feedback;
mod frame;
mod listener;
mod peer;
mod resolve;
mod shape;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tracing::Instrument as _;

use meridian_transport::{Feedback, RaftEnvelope, SnapshotStream, Transport, TransportError};

pub use resolve::{DnsResolver, Resolve, ResolveFuture};
pub use shape::LinkShape;
pub use tls::{node_server_name, DevCa, TlsMaterial, ALPN_PROTOCOL};

use feedback::FeedbackSink;
use listener::Listener;
use peer::{Outgoing, PeerTask};

/// Default bound of each peer's send queue, in `send` calls (batches).
pub const DEFAULT_PEER_QUEUE_BATCHES: usize = 1024;

/// Bytes of inbound frames that may be buffered at once across all
/// connections. Must be at least `MAX_FRAME_BYTES` so any legal frame can
/// be read.
const RECV_BUDGET_BYTES: usize = 256 << 20;

/// How long `shutdown` waits for tasks and for connections to close.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// QUIC application close code for an orderly close.
const CLOSE_NORMAL: u32 = 0;

#[derive(Debug, Clone)]
pub struct QuicConfig {
    pub node_id: u64,
    /// Address to listen on; port 0 picks one (see [`QuicTransport::local_addr`]).
    pub listen: SocketAddr,
    /// Known peers, `host:port` each (resolved at every dial). More can be
    /// added with [`QuicTransport::set_peer_addr`].
    pub peers: HashMap<u64, String>,
    /// Turns a peer's `host:port` into addresses to dial.
    pub resolver: Arc<dyn Resolve>,
    pub tls: TlsMaterial,
    /// Bound of each peer's send queue, in batches; full means dropped
    /// (and reported). Default [`DEFAULT_PEER_QUEUE_BATCHES`].
    pub peer_queue_batches: usize,
    /// Where envelopes of snapshot streams (chunks and the `MsgSnapshot`
    /// ending each) go, in stream order; `None`: the inbound channel. A
    /// small queue here bounds the snapshot data a receiver buffers: when
    /// it is full the stream is not read, and QUIC flow control stops the
    /// sender.
    pub snapshot_inbound: Option<mpsc::Sender<RaftEnvelope>>,
}

impl QuicConfig {
    /// A config with no peers and the default queue bound.
    pub fn new(node_id: u64, listen: SocketAddr, tls: TlsMaterial) -> Self {
        QuicConfig {
            node_id,
            listen,
            peers: HashMap::new(),
            resolver: Arc::new(DnsResolver),
            tls,
            peer_queue_batches: DEFAULT_PEER_QUEUE_BATCHES,
            snapshot_inbound: None,
        }
    }
}

/// Completes once shutdown has begun (or the transport is gone).
#[derive(Clone)]
pub(crate) struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    pub(crate) async fn wait(&mut self) {
        // An error means the sender is gone, which is shutdown too.
        let _ = self.0.wait_for(|&down| down).await;
    }
}

/// A peer's send queue and the address its task dials.
struct PeerQueue {
    batches: mpsc::Sender<Outgoing>,
    addr: watch::Sender<String>,
    shape: watch::Sender<LinkShape>,
}

#[derive(Default)]
struct PeerTable {
    addrs: HashMap<u64, String>,
    /// Links shaped by [`QuicTransport::set_peer_shape`]; others are not.
    shapes: HashMap<u64, LinkShape>,
    /// Created on first send; a task per entry.
    queues: HashMap<u64, PeerQueue>,
}

struct Shared {
    node_id: u64,
    local_addr: SocketAddr,
    endpoint: quinn::Endpoint,
    resolver: Arc<dyn Resolve>,
    /// `send` may run on a thread outside the runtime; tasks are spawned here.
    runtime: tokio::runtime::Handle,
    peer_queue_batches: usize,
    peers: Mutex<PeerTable>,
    feedback: Arc<FeedbackSink>,
    shutdown: watch::Sender<bool>,
    /// The listener and the peer tasks (at most one per peer ever sent to).
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// The QUIC [`Transport`]. See the module docs.
///
/// Dropping it begins shutdown (endpoint closed, tasks told to stop) but
/// cannot wait; call [`QuicTransport::shutdown`] for an orderly stop.
pub struct QuicTransport {
    shared: Arc<Shared>,
}

impl QuicTransport {
    /// Binds the endpoint and starts the listener.
    ///
    /// Synchronous, but must be called within a tokio runtime (multi-thread
    /// recommended): the endpoint and all tasks run on the caller's
    /// runtime. After that, [`Transport::send`] may be called from any
    /// thread.
    pub fn start(config: QuicConfig, inbound: mpsc::Sender<RaftEnvelope>) -> Result<QuicTransport, TransportError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| TransportError::Config("QuicTransport::start must run inside a tokio runtime".into()))?;
        if config.peer_queue_batches == 0 {
            return Err(TransportError::Config("peer_queue_batches must be positive".into()));
        }
        let server_config = config.tls.quinn_server_config()?;
        let client_config = config.tls.quinn_client_config()?;
        let mut endpoint = quinn::Endpoint::server(server_config, config.listen)
            .map_err(|e| TransportError::Io(format!("binding {}: {e}", config.listen)))?;
        endpoint.set_default_client_config(client_config);
        let local_addr = endpoint.local_addr().map_err(|e| TransportError::Io(format!("local address: {e}")))?;

        let (shutdown, shutdown_rx) = watch::channel(false);
        let listener = Listener {
            node_id: config.node_id,
            endpoint: endpoint.clone(),
            snapshot_inbound: config.snapshot_inbound.clone().unwrap_or_else(|| inbound.clone()),
            inbound,
            shutdown: ShutdownSignal(shutdown_rx),
            budget: Arc::new(Semaphore::new(RECV_BUDGET_BYTES)),
        };
        let span = tracing::info_span!("quic_listener", node = config.node_id, %local_addr);
        let listener_task = runtime.spawn(listener.run().instrument(span));
        tracing::info!(node = config.node_id, %local_addr, peers = config.peers.len(), "QUIC transport started");

        Ok(QuicTransport {
            shared: Arc::new(Shared {
                node_id: config.node_id,
                local_addr,
                endpoint,
                resolver: config.resolver,
                runtime,
                peer_queue_batches: config.peer_queue_batches,
                peers: Mutex::new(PeerTable { addrs: config.peers, shapes: HashMap::new(), queues: HashMap::new() }),
                feedback: Arc::new(FeedbackSink::default()),
                shutdown,
                tasks: Mutex::new(vec![listener_task]),
            }),
        })
    }

    pub fn node_id(&self) -> u64 {
        self.shared.node_id
    }

    /// The bound address (useful after listening on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// Adds a peer or changes its address (`host:port`, or a socket
    /// address). A live connection to the old address is closed and the
    /// peer is redialled; the same address again changes nothing.
    pub fn set_peer_addr(&self, node_id: u64, addr: impl ToString) {
        let addr = addr.to_string();
        let mut peers = self.shared.lock_peers();
        peers.addrs.insert(node_id, addr.clone());
        if let Some(queue) = peers.queues.get(&node_id) {
            queue.addr.send_if_modified(|current| {
                let changed = *current != addr;
                *current = addr;
                changed
            });
        }
    }

    /// Shapes the link to a peer (WAN latency on loopback, a debug
    /// setting): every batch sent to it from now on waits `shape.one_way`
    /// (± jitter) and a `shape.loss` fraction is dropped. Snapshot streams
    /// are not delayed. [`LinkShape::NONE`] turns it off.
    pub fn set_peer_shape(&self, node_id: u64, shape: LinkShape) {
        let mut peers = self.shared.lock_peers();
        if shape.is_none() {
            peers.shapes.remove(&node_id);
        } else {
            peers.shapes.insert(node_id, shape);
        }
        if let Some(queue) = peers.queues.get(&node_id) {
            queue.shape.send_replace(shape);
        }
    }

    /// Forgets a peer (e.g. removed from the cluster): its task closes the
    /// connection and ends, and later sends to it are reported unreachable.
    pub fn remove_peer(&self, node_id: u64) {
        let mut peers = self.shared.lock_peers();
        peers.addrs.remove(&node_id);
        peers.shapes.remove(&node_id);
        peers.queues.remove(&node_id);
    }

    /// Stops everything: closes the endpoint (all connections), stops the
    /// tasks and waits, bounded, for them and for the connections to close
    /// so the UDP port is released promptly. Idempotent.
    pub async fn shutdown(&self) {
        self.shared.begin_shutdown();
        let tasks = std::mem::take(&mut *self.shared.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let stopped = async {
            for task in tasks {
                let _ = task.await;
            }
            // Lets peers see our CONNECTION_CLOSE instead of waiting out
            // their idle timeout; the socket is released once it is done.
            self.shared.endpoint.wait_idle().await;
        };
        if tokio::time::timeout(SHUTDOWN_GRACE, stopped).await.is_err() {
            tracing::debug!(node = self.shared.node_id, "connections still draining after the grace period");
        }
        tracing::info!(node = self.shared.node_id, "QUIC transport stopped");
    }
}

impl Drop for QuicTransport {
    fn drop(&mut self) {
        self.shared.begin_shutdown();
    }
}

impl Shared {
    fn lock_peers(&self) -> MutexGuard<'_, PeerTable> {
        // A panic elsewhere must not take `send` down with it; the table
        // stays consistent because every update is a single insert/remove.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn begin_shutdown(&self) {
        // Under the peers lock so no new peer task can start afterwards.
        let mut peers = self.lock_peers();
        if self.shutdown.send_replace(true) {
            return;
        }
        peers.queues.clear();
        drop(peers);
        self.endpoint.close(quinn::VarInt::from_u32(CLOSE_NORMAL), b"node shutting down");
    }

    /// The queue for `to_node`, starting its task on first use. `None` if
    /// the node has no address or the transport is shutting down.
    fn queue_for(&self, to_node: u64) -> Option<mpsc::Sender<Outgoing>> {
        let mut peers = self.lock_peers();
        if *self.shutdown.borrow() {
            return None;
        }
        if let Some(queue) = peers.queues.get(&to_node) {
            if !queue.batches.is_closed() {
                return Some(queue.batches.clone());
            }
        }
        let addr = peers.addrs.get(&to_node)?.clone();
        let (batches, batches_rx) = mpsc::channel(self.peer_queue_batches);
        let (addr_tx, addr_rx) = watch::channel(addr);
        let (shape_tx, shape_rx) = watch::channel(peers.shapes.get(&to_node).copied().unwrap_or_default());
        let task = PeerTask::new(
            self.node_id,
            to_node,
            self.endpoint.clone(),
            self.resolver.clone(),
            batches_rx,
            addr_rx,
            self.feedback.clone(),
            ShutdownSignal(self.shutdown.subscribe()),
            shape_rx,
            self.peer_queue_batches,
        );
        let span = tracing::info_span!("quic_peer", node = self.node_id, peer = to_node);
        let handle = self.runtime.spawn(task.run().instrument(span));
        {
            let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
            tasks.retain(|t| !t.is_finished());
            tasks.push(handle);
        }
        peers.queues.insert(to_node, PeerQueue { batches: batches.clone(), addr: addr_tx, shape: shape_tx });
        Some(batches)
    }
}

impl Transport for QuicTransport {
    fn send(&self, to_node: u64, mut envelopes: Vec<RaftEnvelope>) {
        if envelopes.is_empty() {
            return;
        }
        for env in &mut envelopes {
            env.from_node = self.shared.node_id;
            env.to_node = to_node;
        }
        let Some(queue) = self.shared.queue_for(to_node) else {
            tracing::debug!(node = self.shared.node_id, to_node, n = envelopes.len(), "no address for node; dropped");
            self.shared.feedback.dropped_all(&envelopes);
            return;
        };
        if let Err(e) = queue.try_send(Outgoing::Batch(envelopes)) {
            let (why, out) = match e {
                TrySendError::Full(v) => ("queue full", v),
                TrySendError::Closed(v) => ("peer task stopped", v),
            };
            tracing::debug!(node = self.shared.node_id, to_node, why, "dropped");
            self.shared.feedback.undelivered(to_node, &out);
        }
    }

    fn send_snapshot(&self, to_node: u64, stream: Box<dyn SnapshotStream>) {
        let range_id = stream.range_id();
        let failed = Feedback::Snapshot { range_id, to_node, ok: false };
        let Some(queue) = self.shared.queue_for(to_node) else {
            tracing::debug!(node = self.shared.node_id, to_node, range_id, "no address for node; snapshot not sent");
            self.shared.feedback.push(failed);
            return;
        };
        if queue.try_send(Outgoing::Snapshot(stream)).is_err() {
            tracing::debug!(node = self.shared.node_id, to_node, range_id, "peer queue full; snapshot not sent");
            self.shared.feedback.push(failed);
        }
    }

    fn drain_feedback(&self, out: &mut Vec<Feedback>) {
        self.shared.feedback.drain(out);
    }
}
