use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use meridian_raftstore::raft_types::ConfChangeV2;
use meridian_raftstore::{RaftstoreError, RangeRequest, RangeStatus, StoreMetrics};
use meridian_storage_rocks::Compactor;
use meridian_transport_quic::{LinkShape, QuicTransport};
use tokio::sync::{mpsc, oneshot};
use tracing::{info_span, Instrument as _};

use crate::error::NodeError;
use crate::faults::NetFaults;
use crate::node::StoreRunner;
use crate::store_loop::{Command, Reply};

/// A cheap, cloneable handle to a running node. Every request has the
/// node's deadline (`request_timeout_ms`) and fails with
/// [`NodeError::Timeout`] past it, or [`NodeError::Stopped`] once the node
/// is down.
///
/// Dropping every handle stops the node too, without waiting; call
/// [`NodeHandle::shutdown`] for an orderly stop.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: u64,
    commands: mpsc::Sender<Command>,
    transport: Arc<QuicTransport>,
    request_timeout: Duration,
    /// Taken by the first `shutdown`; dropping it (with the last handle)
    /// stops the loop as well.
    stop: Mutex<Option<oneshot::Sender<()>>>,
    runner: Mutex<Option<StoreRunner>>,
    faults: Arc<NetFaults>,
    /// Serializes `defragment` calls.
    compactor: tokio::sync::Mutex<Compactor>,
}

/// What a started node hands to its [`NodeHandle`].
pub(crate) struct HandleParts {
    pub node_id: u64,
    pub commands: mpsc::Sender<Command>,
    pub transport: Arc<QuicTransport>,
    pub request_timeout: Duration,
    pub stop: oneshot::Sender<()>,
    pub runner: StoreRunner,
    pub faults: Arc<NetFaults>,
    pub compactor: Compactor,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl NodeHandle {
    pub(crate) fn new(p: HandleParts) -> Self {
        NodeHandle {
            inner: Arc::new(Inner {
                node_id: p.node_id,
                commands: p.commands,
                transport: p.transport,
                request_timeout: p.request_timeout,
                stop: Mutex::new(Some(p.stop)),
                runner: Mutex::new(Some(p.runner)),
                faults: p.faults,
                compactor: tokio::sync::Mutex::new(p.compactor),
            }),
        }
    }

    /// Compacts the engine's files (etcd's `Defragment`) on the blocking
    /// pool while the node keeps serving; one at a time per node (a second
    /// call waits for the first).
    pub async fn defragment(&self) -> Result<(), NodeError> {
        let guard = self.inner.compactor.lock().await;
        let compactor = guard.clone();
        let started = std::time::Instant::now();
        let r = tokio::task::spawn_blocking(move || compactor.compact_all()).await.map_err(|_| NodeError::Stopped)?;
        tracing::info!(node = self.inner.node_id, secs = started.elapsed().as_secs_f64(), ok = r.is_ok(), "defragment finished");
        drop(guard);
        Ok(r?)
    }

    /// Network fault controls of this node (chaos testing).
    pub fn faults(&self) -> Arc<NetFaults> {
        self.inner.faults.clone()
    }

    pub fn node_id(&self) -> u64 {
        self.inner.node_id
    }

    /// The bound QUIC address (useful after listening on port 0).
    pub fn peer_addr(&self) -> SocketAddr {
        self.inner.transport.local_addr()
    }

    /// Adds a peer node or changes its address (e.g. it restarted
    /// elsewhere): `host:port` or a socket address. A live connection to
    /// the old address is redialled.
    pub fn set_peer_addr(&self, node_id: u64, addr: impl ToString) {
        self.inner.transport.set_peer_addr(node_id, addr);
    }

    /// Shapes the Raft traffic to a peer node (WAN latency on loopback, a
    /// debug setting); [`LinkShape::NONE`] turns it off.
    pub fn set_peer_shape(&self, node_id: u64, shape: LinkShape) {
        self.inner.transport.set_peer_shape(node_id, shape);
    }

    /// Proposes a state-machine command to `range_id`. On a follower it
    /// goes to the leader inside raft and is answered when applied here;
    /// with no leader known, `NodeError::Raft(NotLeader { .. })`. Answers
    /// the index it was applied at and the state machine's response.
    pub async fn propose(&self, req: RangeRequest, command: Vec<u8>) -> Result<(u64, Vec<u8>), NodeError> {
        let range_id = req.range_id;
        self.call(|| format!("proposal to range {range_id}"), |reply| Command::Propose { req, command, forward: true, reply }).await
    }

    /// Proposes only if this node leads `range_id` (else
    /// `NodeError::Raft(NotLeader { leader_hint, .. })`).
    pub async fn propose_on_leader(&self, req: RangeRequest, command: Vec<u8>) -> Result<(u64, Vec<u8>), NodeError> {
        let range_id = req.range_id;
        self.call(|| format!("proposal to range {range_id}"), |reply| Command::Propose { req, command, forward: false, reply }).await
    }

    /// Answers `query` from this node's replica of `range_id`.
    /// `linearizable`: after a ReadIndex round confirmed by the leader
    /// (works on followers); otherwise from the local applied state, which
    /// may be stale. Answers the applied index the read was served at and
    /// the value.
    pub async fn read(&self, req: RangeRequest, query: Vec<u8>, linearizable: bool) -> Result<(u64, Vec<u8>), NodeError> {
        let range_id = req.range_id;
        self.call(|| format!("read in range {range_id}"), |reply| Command::Read { req, query, linearizable, reply }).await
    }

    /// Proposes a membership change (through joint consensus; see
    /// `Store::propose_conf_change`). Answers the index the change was
    /// applied at; a committed change raft rejected is
    /// `NodeError::Raft(InvalidRequest { .. })`.
    pub async fn conf_change(&self, req: RangeRequest, change: ConfChangeV2) -> Result<u64, NodeError> {
        let range_id = req.range_id;
        let (index, response) =
            self.call(|| format!("conf change in range {range_id}"), |reply| Command::ConfChange { req, change, reply }).await?;
        if response.is_empty() {
            Ok(index)
        } else {
            let reason = String::from_utf8_lossy(&response).into_owned();
            Err(RaftstoreError::InvalidRequest { range_id, reason }.into())
        }
    }

    /// Asks this node, the leader of `range_id`, to hand leadership to
    /// `to`. Returns once the request is made, not when it took effect.
    pub async fn transfer_leader(&self, range_id: u64, to: u64) -> Result<(), NodeError> {
        self.call(|| format!("leader transfer in range {range_id}"), |reply| Command::TransferLeader { range_id, to, reply }).await
    }

    /// Makes this node's read replica of `range_id` its only voter, by
    /// force, `first` proposed right after; see
    /// `meridian_raftstore::Store::force_promote`.
    pub async fn force_promote(&self, range_id: u64, first: Option<Vec<u8>>) -> Result<meridian_raftstore::Promotion, NodeError> {
        self.call(|| format!("forced promotion in range {range_id}"), |reply| Command::ForcePromote { range_id, first, reply }).await
    }

    /// Destroys this node's replica of `range_id`; see
    /// `meridian_raftstore::Store::destroy_replica`.
    pub async fn destroy_replica(
        &self,
        range_id: u64,
        why: meridian_raftstore::Retirement,
    ) -> Result<meridian_raftstore::Destroyed, NodeError> {
        self.call(|| format!("destroying the replica of range {range_id}"), |reply| Command::DestroyReplica { range_id, why, reply }).await
    }

    /// Status of every range replica on this node, by range id.
    pub async fn status(&self) -> Result<Vec<RangeStatus>, NodeError> {
        self.call(|| "status".to_string(), |reply| Command::Status { reply }).await
    }

    /// `range_id`'s data pinned at its applied index (a backup reads it).
    pub async fn range_view(&self, range_id: u64) -> Result<meridian_raftstore::RangeView, NodeError> {
        self.call(|| format!("view of range {range_id}"), |reply| Command::RangeView { range_id, reply }).await
    }

    /// Hands the store the nodes the membership gossip holds suspect or
    /// dead; see `meridian_raftstore::Store::set_liveness_feed`. Dropped
    /// when the store's queue is full: the gossip sends it again shortly.
    pub fn set_liveness_feed(&self, down: std::collections::BTreeSet<u64>) {
        let _ = self.inner.commands.try_send(Command::LivenessFeed { down });
    }

    pub async fn metrics(&self) -> Result<StoreMetrics, NodeError> {
        self.call(|| "metrics".to_string(), |reply| Command::Metrics { reply }).await
    }

    /// Stops the store loop, waits for it to end (RocksDB is closed when
    /// this returns; the data stays on disk) and shuts the transport down.
    /// Other clones of this handle get [`NodeError::Stopped`] afterwards.
    pub async fn shutdown(self) {
        let span = info_span!("node", node = self.inner.node_id);
        async {
            if let Some(stop) = lock(&self.inner.stop).take() {
                let _ = stop.send(());
            }
            let runner = lock(&self.inner.runner).take();
            // The store loop shuts the transport down on every exit; one
            // that panicked may not have.
            if let Some(runner) = runner {
                if !runner.join().await {
                    self.inner.transport.shutdown().await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn call<T>(&self, what: impl FnOnce() -> String, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, NodeError> {
        let (reply, answer) = oneshot::channel();
        let round_trip = async {
            self.inner.commands.send(make(reply)).await.map_err(|_| NodeError::Stopped)?;
            answer.await.map_err(|_| NodeError::Stopped)?
        };
        match tokio::time::timeout(self.inner.request_timeout, round_trip).await {
            Ok(result) => result,
            Err(_) => Err(NodeError::Timeout { what: what() }),
        }
    }
}
