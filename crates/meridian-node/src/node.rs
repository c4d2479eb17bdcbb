//! Starting a node: transport on the caller's runtime, engine and store on
//! the node's own thread.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use meridian_raftstore::{StateMachineFactory, Store, StoreConfig};
use meridian_storage::{keys, CachedEngine, Cf, RangeDescriptor, DEFAULT_READ_CACHE_BYTES};
use meridian_storage_rocks::{Compactor, RocksEngine};
use meridian_transport::{RaftEnvelope, Transport};
use meridian_transport_quic::{QuicConfig, QuicTransport};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, info_span, Instrument as _};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::faults::{FaultyTransport, NetFaults};
use crate::handle::NodeHandle;
use crate::store_loop::{Command, Exit, StoreLoop, COMMAND_QUEUE, INBOUND_QUEUE_ENVELOPES, INBOUND_SNAPSHOT_ENVELOPES};

/// Starts nodes; see [`Node::start`].
#[derive(Debug)]
pub struct Node;

/// What the node thread needs to open the store and run the loop.
struct Setup {
    node_id: u64,
    data_dir: PathBuf,
    ranges: Vec<RangeDescriptor>,
    store: StoreConfig,
    state_machine: Arc<dyn StateMachineFactory>,
    transport: Arc<QuicTransport>,
    inbound: mpsc::Receiver<RaftEnvelope>,
    snapshot_inbound: mpsc::Receiver<RaftEnvelope>,
    commands: mpsc::Receiver<Command>,
    stop: oneshot::Receiver<()>,
    tick: Duration,
    request_timeout: Duration,
    faults: Arc<NetFaults>,
}

impl Node {
    /// Starts a node: binds the QUIC endpoint, opens RocksDB in
    /// `data_dir`, bootstraps the configured ranges that are not on disk
    /// yet, opens the store and starts its loop. Returns once the store is
    /// open, so errors opening it are returned here.
    ///
    /// Must be awaited inside a tokio runtime: the transport's tasks run
    /// on it. The store loop runs on a dedicated OS thread with its own
    /// current-thread runtime, or with
    /// [`NodeConfig::store_on_runtime`] as a task on this runtime. Its
    /// fsyncs run on a sync thread in both cases, never on a runtime.
    pub async fn start(cfg: NodeConfig) -> Result<NodeHandle, NodeError> {
        cfg.validate()?;
        let span = info_span!("node", node = cfg.node_id);
        Self::start_inner(cfg).instrument(span).await
    }

    async fn start_inner(cfg: NodeConfig) -> Result<NodeHandle, NodeError> {
        let node_id = cfg.node_id;
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE_ENVELOPES);
        let (snapshot_tx, snapshot_rx) = mpsc::channel(INBOUND_SNAPSHOT_ENVELOPES);
        let mut quic = QuicConfig::new(node_id, cfg.listen_peer, cfg.tls.clone());
        quic.peers = cfg.peers.clone();
        quic.snapshot_inbound = Some(snapshot_tx);
        let transport = Arc::new(QuicTransport::start(quic, inbound_tx)?);
        let faults = Arc::new(NetFaults::default());

        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let request_timeout = Duration::from_millis(cfg.request_timeout_ms);
        let setup = Setup {
            node_id,
            data_dir: cfg.data_dir,
            ranges: cfg.ranges,
            store: cfg.store,
            state_machine: cfg.state_machine,
            transport: transport.clone(),
            inbound: inbound_rx,
            snapshot_inbound: snapshot_rx,
            commands: commands_rx,
            stop: stop_rx,
            tick: Duration::from_millis(cfg.tick_ms),
            request_timeout,
            faults: faults.clone(),
        };
        let runner = if cfg.store_on_runtime {
            let span = info_span!("node", node = node_id);
            StoreRunner::Task(tokio::spawn(run_node(setup, ready_tx).instrument(span)))
        } else {
            let spawned = std::thread::Builder::new().name(format!("meridian-node-{node_id}")).spawn(move || node_thread(setup, ready_tx));
            match spawned {
                Ok(t) => StoreRunner::Thread(t),
                Err(e) => {
                    transport.shutdown().await;
                    return Err(e.into());
                }
            }
        };
        let opened = match ready_rx.await {
            Ok(r) => r,
            // The store loop died before reporting (a panic; it is logged).
            Err(_) => Err(NodeError::Stopped),
        };
        let compactor = match opened {
            Ok(c) => c,
            Err(e) => {
                // The store loop shuts the transport down itself, except
                // when it could not build its runtime or panicked. Idempotent.
                runner.join().await;
                transport.shutdown().await;
                return Err(e);
            }
        };
        Ok(NodeHandle::new(crate::handle::HandleParts {
            node_id,
            commands: commands_tx,
            transport,
            request_timeout,
            stop: stop_tx,
            runner,
            faults,
            compactor,
        }))
    }
}

/// Where the store loop runs (see [`NodeConfig::store_on_runtime`]).
pub(crate) enum StoreRunner {
    Thread(std::thread::JoinHandle<()>),
    Task(tokio::task::JoinHandle<()>),
}

impl StoreRunner {
    /// Waits for the store loop to end without blocking the runtime. False
    /// if it panicked (then it may not have shut the transport down).
    pub(crate) async fn join(self) -> bool {
        let ended = match self {
            StoreRunner::Thread(thread) => match tokio::task::spawn_blocking(move || thread.join()).await {
                Ok(r) => r.map_err(|_| "panicked".to_string()),
                Err(e) => Err(e.to_string()),
            },
            StoreRunner::Task(task) => task.await.map_err(|e| e.to_string()),
        };
        match ended {
            Ok(()) => true,
            Err(e) => {
                error!("store loop of the node: {e}");
                false
            }
        }
    }
}

fn node_thread(setup: Setup, ready: oneshot::Sender<Result<Compactor, NodeError>>) {
    let span = info_span!("node", node = setup.node_id);
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_time().build() {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            return;
        }
    };
    runtime.block_on(run_node(setup, ready).instrument(span));
}

async fn run_node(setup: Setup, ready: oneshot::Sender<Result<Compactor, NodeError>>) {
    let transport = setup.transport.clone();
    match open_store(&setup) {
        Err(e) => {
            let _ = ready.send(Err(e));
        }
        // If `start` was abandoned nobody holds a handle: stop right away.
        Ok((store, compactor)) => {
            if ready.send(Ok(compactor)).is_ok() {
                let store_loop = StoreLoop::new(store, setup.inbound, setup.commands, setup.stop, setup.tick, setup.request_timeout)
                    .with_snapshot_inbound(setup.snapshot_inbound)
                    .with_faults(setup.faults);
                match store_loop.run().await {
                    Exit::Requested => info!("node shutting down"),
                    Exit::HandlesDropped => info!("every handle dropped; node shutting down"),
                    Exit::Fatal(e) => error!("store poll failed, stopping the node: {e}"),
                }
            }
        }
    }
    // The store (and RocksDB with it) is closed by now; data stays on disk.
    transport.shutdown().await;
}

/// Writes a new store in `dir` (a backup being restored): bootstraps the
/// replicas of `ranges` that list `node_id`, as a first start would, then
/// lets `fill` write their data. Every write is synced before this
/// returns; a node started on `dir` afterwards serves what `fill` wrote.
pub fn create_store(
    dir: &std::path::Path,
    node_id: u64,
    ranges: &[meridian_storage::RangeDescriptor],
    fill: &mut dyn FnMut(&dyn meridian_storage::Engine) -> Result<(), NodeError>,
) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir)?;
    let engine = RocksEngine::open(dir)?;
    Store::bootstrap(&engine, node_id, ranges)?;
    fill(&engine)?;
    meridian_storage::Engine::sync(&engine)?;
    Ok(())
}

fn open_store(setup: &Setup) -> Result<(Store, Compactor), NodeError> {
    std::fs::create_dir_all(&setup.data_dir)?;
    let engine = RocksEngine::open(&setup.data_dir)?;
    let compactor = engine.compactor();
    let bootstrap = Store::bootstrap(&engine, setup.node_id, &setup.ranges)?;
    let transport: Arc<dyn Transport> = Arc::new(FaultyTransport { inner: setup.transport.clone(), faults: setup.faults.clone() });
    // Applying commands reads the records it changes; the cache answers
    // the hot ones without RocksDB (see meridian_storage's cache module).
    let machines = setup.state_machine.clone();
    let engine = Arc::new(
        CachedEngine::new(engine, Cf::Data, DEFAULT_READ_CACHE_BYTES)
            .admitting(move |key| keys::user_key(key).is_some_and(|k| machines.hot_record(k))),
    );
    let store = Store::open(setup.store.clone(), engine, transport, setup.state_machine.clone())?;
    info!(
        data_dir = %setup.data_dir.display(),
        bootstrap = ?bootstrap,
        ranges = store.range_ids().len(),
        peer_addr = %setup.transport.local_addr(),
        "node started"
    );
    Ok((store, compactor))
}
