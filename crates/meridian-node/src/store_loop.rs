//! The store loop: the only code that touches the [`Store`]. It runs on the
//! node's dedicated thread (see `node.rs`).
//!
//! One round: wait for a tick, an inbound envelope or a command; take
//! whatever else is already queued (bounded); run `Store::poll` once; hand
//! completions to their waiters. Taking everything queued before polling
//! is what makes group commit work: every proposal and every append that
//! arrived during the previous round's fsync shares the next one.

use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meridian_raftstore::raft_types::ConfChangeV2;
use meridian_raftstore::{Completion, RaftstoreError, RangeRequest, RangeStatus, RequestId, Store, StoreMetrics};
use meridian_storage::{Engine, StorageError};
use meridian_transport::RaftEnvelope;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::MissedTickBehavior;
use tracing::{debug, warn};

use crate::error::NodeError;
use crate::faults::NetFaults;

/// Bound of the channel from the transport's listener to the store loop.
/// When full, the listener stops reading and QUIC flow control pushes back
/// on the sending node.
pub const INBOUND_QUEUE_ENVELOPES: usize = 4096;
/// Bound of the queue of snapshot stream envelopes (chunks of about 1 MiB,
/// and the `MsgSnapshot` that ends each stream). Kept apart from the raft
/// queue and small, so received snapshot data held in memory is bounded by
/// a few chunks: a full queue stops the transport reading the stream, and
/// QUIC flow control stops the sender.
pub const INBOUND_SNAPSHOT_ENVELOPES: usize = 8;
/// Snapshot chunks staged per round at most (each an engine write of up to
/// a chunk), so a transfer never starves the raft traffic.
const MAX_SNAPSHOT_ENVELOPES_PER_ROUND: usize = 4;
/// Bound of the channel from handles to the store loop; when full, callers
/// wait (within their deadline).
pub const COMMAND_QUEUE: usize = 4096;
/// Envelopes stepped per round at most, so a flood of peer traffic cannot
/// starve ticks and client commands.
pub const MAX_INBOUND_PER_ROUND: usize = 1024;
/// Commands handled per round at most.
pub const MAX_COMMANDS_PER_ROUND: usize = 1024;
/// How often waiters are checked for expired deadlines and callers that
/// gave up.
const SWEEP_INTERVAL: Duration = Duration::from_millis(500);
/// Polls in a row without waiting while the store has work at hand (see
/// `Store::has_ready`); then the loop waits for input once, so ticks and
/// shutdown are never starved.
const MAX_EAGER_POLLS: u32 = 8;
/// How long shutdown waits for the sync thread's fsync in flight before it
/// leaves the thread behind (a hung disk must not hang shutdown).
const SYNC_JOIN_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) type Reply<T> = oneshot::Sender<Result<T, NodeError>>;
/// The index a request was applied (or read) at, and the state machine's
/// response.
pub(crate) type Answer = (u64, Vec<u8>);

/// A request from a handle.
pub(crate) enum Command {
    /// `forward`: a follower hands the proposal to its leader inside raft;
    /// without it, a follower answers `NotLeader`.
    Propose {
        req: RangeRequest,
        command: Vec<u8>,
        forward: bool,
        reply: Reply<Answer>,
    },
    Read {
        req: RangeRequest,
        query: Vec<u8>,
        linearizable: bool,
        reply: Reply<Answer>,
    },
    ConfChange {
        req: RangeRequest,
        change: ConfChangeV2,
        reply: Reply<Answer>,
    },
    TransferLeader {
        range_id: u64,
        to: u64,
        reply: Reply<()>,
    },
    ForcePromote {
        range_id: u64,
        first: Option<Vec<u8>>,
        reply: Reply<meridian_raftstore::Promotion>,
    },
    Status {
        reply: Reply<Vec<RangeStatus>>,
    },
    Metrics {
        reply: Reply<StoreMetrics>,
    },
    RangeView {
        range_id: u64,
        reply: Reply<meridian_raftstore::RangeView>,
    },
    DestroyReplica {
        range_id: u64,
        why: meridian_raftstore::Retirement,
        reply: Reply<meridian_raftstore::Destroyed>,
    },
    /// Node liveness from the membership gossip (no answer).
    LivenessFeed {
        down: BTreeSet<u64>,
    },
}

/// Makes the store's writes durable off the store thread
/// (`StoreConfig::defer_sync`): one fsync at a time, each covering every
/// write made before it was asked for, while the store prepares the next
/// round. Bounded: at most one request in flight.
struct Syncer {
    requests: Option<std::sync::mpsc::SyncSender<u64>>,
    /// (sequence number, microseconds the fsync took)
    done: mpsc::Receiver<Result<(u64, u64), StorageError>>,
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
    join_timeout: Duration,
}

impl Syncer {
    fn start(engine: Arc<dyn Engine>, node_id: u64) -> std::io::Result<Syncer> {
        let (requests, inbox) = std::sync::mpsc::sync_channel::<u64>(1);
        let (finished, done) = mpsc::channel(1);
        let thread = std::thread::Builder::new().name(format!("meridian-sync-{node_id}")).spawn(move || {
            while let Ok(seq) = inbox.recv() {
                let started = Instant::now();
                let r = engine.sync().map(|()| (seq, started.elapsed().as_micros() as u64));
                let failed = r.is_err();
                if finished.blocking_send(r).is_err() || failed {
                    break;
                }
            }
        })?;
        Ok(Syncer { requests: Some(requests), done, in_flight: false, thread: Some(thread), join_timeout: SYNC_JOIN_TIMEOUT })
    }

    /// Hands the store's sync request to the thread, unless one is in
    /// flight (the store asks again after the answer).
    fn request(&mut self, store: &mut Store) -> Result<(), StorageError> {
        if self.in_flight {
            return Ok(());
        }
        let Some(seq) = store.take_sync_request() else { return Ok(()) };
        self.in_flight = true;
        if self.requests.as_ref().is_some_and(|r| r.try_send(seq).is_ok()) {
            return Ok(());
        }
        self.settle(store, None)
    }

    /// Hands the store what finished syncs covered, without waiting.
    fn collect(&mut self, store: &mut Store) -> Result<(), StorageError> {
        loop {
            match self.done.try_recv() {
                Ok(r) => self.settle(store, Some(r))?,
                Err(mpsc::error::TryRecvError::Empty) => return Ok(()),
                Err(mpsc::error::TryRecvError::Disconnected) => return if self.in_flight { self.settle(store, None) } else { Ok(()) },
            }
        }
    }

    /// Hands the store one finished sync; `None`: the thread is gone.
    fn settle(&mut self, store: &mut Store, r: Option<Result<(u64, u64), StorageError>>) -> Result<(), StorageError> {
        self.in_flight = false;
        let (seq, micros) = r.unwrap_or_else(|| Err(StorageError::Io("the sync thread stopped".into())))?;
        store.on_synced(seq, micros);
        Ok(())
    }

    /// The next answer of the sync thread (`None`: it is gone); pending
    /// forever without a syncer.
    async fn finished(syncer: &mut Option<Syncer>) -> Option<Result<(u64, u64), StorageError>> {
        match syncer.as_mut() {
            Some(s) => s.done.recv().await,
            None => std::future::pending().await,
        }
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        // Closing the request channel ends the thread after its sync in
        // flight (whose answer fits in the channel of one).
        self.requests.take();
        let Some(t) = self.thread.take() else { return };
        // Blocks the loop's thread (on a single-threaded node, the node's
        // only one), but only until the bound.
        let deadline = Instant::now() + self.join_timeout;
        while !t.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if t.is_finished() {
            let _ = t.join();
        } else {
            warn!("the sync thread is still in an fsync after {:?}; shutting down without it", self.join_timeout);
        }
    }
}

/// A caller waiting for a [`Completion`].
struct Waiter {
    reply: Reply<Answer>,
    deadline: Instant,
    range_id: u64,
}

/// Why the loop ended.
pub(crate) enum Exit {
    /// `NodeHandle::shutdown`.
    Requested,
    /// Every handle was dropped.
    HandlesDropped,
    /// `Store::poll` failed: storage IO. The node must not go on.
    Fatal(RaftstoreError),
}

pub(crate) struct StoreLoop {
    store: Store,
    inbound: mpsc::Receiver<RaftEnvelope>,
    /// Snapshot streams' envelopes ([`INBOUND_SNAPSHOT_ENVELOPES`]).
    snapshots: Option<mpsc::Receiver<RaftEnvelope>>,
    commands: mpsc::Receiver<Command>,
    stop: oneshot::Receiver<()>,
    tick: Duration,
    /// Waiters the store has not answered by then are failed. Bounded in
    /// number by the store's `max_pending_per_range` (every waiter is a
    /// request the store holds).
    request_timeout: Duration,
    waiters: HashMap<RequestId, Waiter>,
    /// Inbound traffic from these peers is dropped (chaos testing).
    faults: Arc<NetFaults>,
}

/// The next envelope of the snapshot queue (never called without one).
async fn recv_snapshot(rx: &mut Option<mpsc::Receiver<RaftEnvelope>>) -> Option<RaftEnvelope> {
    match rx {
        Some(rx) => rx.recv().await,
        None => None,
    }
}

impl StoreLoop {
    pub(crate) fn new(
        store: Store,
        inbound: mpsc::Receiver<RaftEnvelope>,
        commands: mpsc::Receiver<Command>,
        stop: oneshot::Receiver<()>,
        tick: Duration,
        request_timeout: Duration,
    ) -> Self {
        StoreLoop {
            store,
            inbound,
            snapshots: None,
            commands,
            stop,
            tick,
            request_timeout,
            waiters: HashMap::new(),
            faults: Arc::default(),
        }
    }

    /// Takes snapshot streams' envelopes from their own queue (see
    /// [`INBOUND_SNAPSHOT_ENVELOPES`]).
    pub(crate) fn with_snapshot_inbound(mut self, snapshots: mpsc::Receiver<RaftEnvelope>) -> Self {
        self.snapshots = Some(snapshots);
        self
    }

    pub(crate) fn with_faults(mut self, faults: Arc<NetFaults>) -> Self {
        self.faults = faults;
        self
    }

    fn step(&mut self, env: RaftEnvelope) {
        if !self.faults.blocks_in(env.from_node) {
            self.store.step(env);
        }
    }

    /// Runs until shutdown, until every handle is gone, or until a fatal
    /// storage error. Waiters still pending then get [`NodeError::Stopped`].
    /// The store (and with it the engine) is dropped on return.
    pub(crate) async fn run(mut self) -> Exit {
        // Tick at a phase of this node's own (from its seed) within the
        // tick: nodes started together would otherwise tick in step, and
        // two followers that drew the same election timeout would campaign
        // at the same instant and split the vote.
        let tick_nanos = u64::try_from(self.tick.as_nanos()).unwrap_or(u64::MAX).max(1);
        let phase = Duration::from_nanos(self.store.config().seed % tick_nanos);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, self.tick);
        // After a stall (a slow fsync), tick at the normal pace again rather
        // than in a burst: a burst of ticks would fire elections.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut next_sweep = Instant::now() + SWEEP_INTERVAL;
        let mut inbound_open = true;
        let mut syncer = if self.store.config().defer_sync {
            match Syncer::start(self.store.engine().clone(), self.store.node_id()) {
                Ok(s) => Some(s),
                Err(e) => {
                    self.fail_all();
                    return Exit::Fatal(RaftstoreError::Storage(format!("starting the sync thread: {e}")));
                }
            }
        } else {
            None
        };
        let mut eager = 0;
        let exit = loop {
            // Whether anything that may give the store work happened: a
            // status or a local read changes nothing, and a poll round
            // costs a check of every range (thousands of them).
            let mut changed = true;
            if self.store.has_ready() && eager < MAX_EAGER_POLLS {
                eager += 1;
            } else {
                eager = 0;
                tokio::select! {
                    synced = Syncer::finished(&mut syncer) => {
                        let settled = syncer.as_mut().expect("answers come from a syncer").settle(&mut self.store, synced);
                        if let Err(e) = settled {
                            break Exit::Fatal(e.into());
                        }
                    }
                    stop = &mut self.stop => {
                        break if stop.is_ok() { Exit::Requested } else { Exit::HandlesDropped };
                    }
                    _ = ticker.tick() => {
                        self.store.tick();
                        let now = Instant::now();
                        if now >= next_sweep {
                            self.sweep_waiters(now);
                            next_sweep = now + SWEEP_INTERVAL;
                        }
                    }
                    env = self.inbound.recv(), if inbound_open => match env {
                        Some(env) => self.step(env),
                        None => {
                            // Only happens once the transport is shutting down.
                            warn!("transport inbound channel closed");
                            inbound_open = false;
                        }
                    },
                    env = recv_snapshot(&mut self.snapshots), if self.snapshots.is_some() => match env {
                        Some(env) => self.step(env),
                        None => self.snapshots = None,
                    },
                    cmd = self.commands.recv() => match cmd {
                        Some(cmd) => changed = self.handle(cmd),
                        None => break Exit::HandlesDropped,
                    },
                }
            }
            changed |= self.drain_queued(inbound_open);
            if changed {
                match self.store.poll() {
                    Ok(done) => self.complete(done),
                    Err(e) => break Exit::Fatal(e),
                }
            }
            if let Some(s) = syncer.as_mut() {
                // A sync that finished meanwhile frees the thread for the
                // next one now, not when the select gets to it.
                if let Err(e) = s.collect(&mut self.store).and_then(|()| s.request(&mut self.store)) {
                    break Exit::Fatal(e.into());
                }
            }
        };
        self.fail_all();
        exit
    }

    /// Takes what is already queued, bounded, without waiting; true if
    /// any of it may have given the store work (see [`StoreLoop::handle`]).
    fn drain_queued(&mut self, inbound_open: bool) -> bool {
        let mut changed = false;
        for _ in 1..MAX_SNAPSHOT_ENVELOPES_PER_ROUND {
            let Some(rx) = self.snapshots.as_mut() else { break };
            match rx.try_recv() {
                Ok(env) => {
                    self.step(env);
                    changed = true;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => self.snapshots = None,
            }
        }
        if inbound_open {
            for _ in 1..MAX_INBOUND_PER_ROUND {
                match self.inbound.try_recv() {
                    Ok(env) => {
                        self.step(env);
                        changed = true;
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
        }
        for _ in 1..MAX_COMMANDS_PER_ROUND {
            match self.commands.try_recv() {
                Ok(cmd) => changed |= self.handle(cmd),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        changed
    }

    /// Carries out one command; false for those that only read the store
    /// (status, metrics, a range's view, a local read), after which no
    /// poll round is needed.
    fn handle(&mut self, cmd: Command) -> bool {
        let reads_only = matches!(
            cmd,
            Command::Status { .. } | Command::Metrics { .. } | Command::RangeView { .. } | Command::Read { linearizable: false, .. }
        );
        match cmd {
            Command::Propose { req, command, forward, reply } => {
                let range_id = req.range_id;
                // A caller that already gave up (deadline) gets no proposal
                // on its behalf.
                if !reply.is_closed() {
                    let r = if forward { self.store.propose(req, command) } else { self.store.propose_on_leader(req, command) };
                    self.wait(range_id, r, reply);
                }
            }
            Command::Read { req, query, linearizable: true, reply } => {
                let range_id = req.range_id;
                if !reply.is_closed() {
                    let r = self.store.read_index(req, query);
                    self.wait(range_id, r, reply);
                }
            }
            Command::Read { req, query, linearizable: false, reply } => {
                let range_id = req.range_id;
                let r = self.store.read_local(req, &query).map(|value| {
                    let applied = self.store.range_status(range_id).map_or(0, |s| s.applied);
                    (applied, value)
                });
                let _ = reply.send(r.map_err(NodeError::from));
            }
            Command::ConfChange { req, change, reply } => {
                let range_id = req.range_id;
                if !reply.is_closed() {
                    let r = self.store.propose_conf_change(req, change);
                    self.wait(range_id, r, reply);
                }
            }
            Command::TransferLeader { range_id, to, reply } => {
                let _ = reply.send(self.store.transfer_leader(range_id, to).map_err(NodeError::from));
            }
            Command::ForcePromote { range_id, first, reply } => {
                let _ = reply.send(self.store.force_promote(range_id, first).map_err(NodeError::from));
            }
            Command::Status { reply } => {
                let _ = reply.send(Ok(self.store.statuses()));
            }
            Command::Metrics { reply } => {
                let _ = reply.send(Ok(self.store.metrics()));
            }
            Command::RangeView { range_id, reply } => {
                let _ = reply.send(self.store.range_view(range_id).map_err(NodeError::from));
            }
            Command::DestroyReplica { range_id, why, reply } => {
                let _ = reply.send(self.store.destroy_replica(range_id, why).map_err(NodeError::from));
            }
            Command::LivenessFeed { down } => self.store.set_liveness_feed(down),
        }
        !reads_only
    }

    fn wait(&mut self, range_id: u64, submitted: Result<RequestId, RaftstoreError>, reply: Reply<Answer>) {
        match submitted {
            Ok(id) => {
                let deadline = Instant::now() + self.request_timeout;
                self.waiters.insert(id, Waiter { reply, deadline, range_id });
            }
            Err(e) => {
                let _ = reply.send(Err(e.into()));
            }
        }
    }

    fn complete(&mut self, done: Vec<Completion>) {
        for c in done {
            // No waiter: its deadline passed, or the caller is gone.
            if let Some(w) = self.waiters.remove(&c.id) {
                let _ = w.reply.send(c.result.map_err(NodeError::from));
            }
        }
    }

    /// Fails waiters past their deadline (the store normally answers every
    /// request, but a reply must never depend on that) and forgets those
    /// whose caller gave up.
    fn sweep_waiters(&mut self, now: Instant) {
        let expired: Vec<RequestId> =
            self.waiters.iter().filter(|(_, w)| w.reply.is_closed() || now >= w.deadline).map(|(id, _)| *id).collect();
        for id in expired {
            let w = self.waiters.remove(&id).expect("listed");
            if !w.reply.is_closed() {
                debug!(range = w.range_id, request = id.0, "request unanswered by its deadline");
                let what = format!("request {} in range {}", id.0, w.range_id);
                let _ = w.reply.send(Err(NodeError::Timeout { what }));
            }
        }
    }

    fn fail_all(&mut self) {
        for (_, w) in self.waiters.drain() {
            let _ = w.reply.send(Err(NodeError::Stopped));
        }
        // Commands still queued are dropped with the receiver, which their
        // callers see as `Stopped`.
        self.commands.close();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use meridian_raftstore::test_machine::{put_command, RegisterMachine};
    use meridian_raftstore::{StateMachine, StateMachineFactory, StoreConfig};
    use meridian_storage::failing::FailingEngine;
    use meridian_storage::{Engine, MemEngine, RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};
    use meridian_transport::mem::MemNetwork;

    use super::*;

    /// A request to the tests' range 1 at its bootstrap epoch.
    fn range_one() -> RangeRequest {
        RangeRequest::new(1, RangeEpoch { conf_ver: 1, version: 1 })
    }

    /// A store of node 1 with range 1 replicated on `voters`.
    fn store(voters: &[u64], fail: Arc<AtomicBool>) -> Store {
        store_with(voters, fail, false, false)
    }

    /// `defer_sync`: the loop's sync thread makes writes durable, as on a
    /// node; `only_sync`: `fail` breaks syncs, not writes.
    fn store_with(voters: &[u64], fail: Arc<AtomicBool>, defer_sync: bool, only_sync: bool) -> Store {
        let engine = FailingEngine { inner: MemEngine::new(), fail, only_sync, hold_syncs: None };
        let desc = RangeDescriptor {
            range_id: 1,
            namespace_id: 1,
            start: Vec::new(),
            end: Vec::new(),
            epoch: RangeEpoch { conf_ver: 1, version: 1 },
            replicas: voters.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect(),
        };
        Store::bootstrap(&engine, 1, &[desc]).unwrap();
        let factory: Arc<dyn StateMachineFactory> = Arc::new(|_: &RangeDescriptor| Box::new(RegisterMachine) as Box<dyn StateMachine>);
        let transport = Arc::new(MemNetwork::new(1).transport(1));
        let mut cfg = StoreConfig::new(1);
        cfg.defer_sync = defer_sync;
        Store::open(cfg, Arc::new(engine), transport, factory).unwrap()
    }

    struct Harness {
        store_loop: StoreLoop,
        commands: mpsc::Sender<Command>,
        _inbound: mpsc::Sender<RaftEnvelope>,
        stop: oneshot::Sender<()>,
    }

    fn harness(store: Store, tick: Duration, request_timeout: Duration) -> Harness {
        let (inbound_tx, inbound_rx) = mpsc::channel(16);
        let (commands_tx, commands_rx) = mpsc::channel(16);
        let (stop_tx, stop_rx) = oneshot::channel();
        Harness {
            store_loop: StoreLoop::new(store, inbound_rx, commands_rx, stop_rx, tick, request_timeout),
            commands: commands_tx,
            _inbound: inbound_tx,
            stop: stop_tx,
        }
    }

    async fn propose(commands: &mpsc::Sender<Command>, value: &[u8]) -> Result<Answer, NodeError> {
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command::Propose { req: range_one(), command: put_command(b"k", value), forward: true, reply })
            .await
            .map_err(|_| NodeError::Stopped)?;
        answer.await.map_err(|_| NodeError::Stopped)?
    }

    #[tokio::test]
    async fn storage_failure_stops_the_loop_and_fails_waiters() {
        storage_failure_case(false, false).await;
    }

    #[tokio::test]
    async fn with_the_sync_thread_writes_commit_and_a_failed_write_stops_the_loop() {
        storage_failure_case(true, false).await;
    }

    #[tokio::test]
    async fn a_failed_sync_on_the_sync_thread_stops_the_loop_and_fails_waiters() {
        storage_failure_case(true, true).await;
    }

    async fn storage_failure_case(defer_sync: bool, only_sync: bool) {
        let fail = Arc::new(AtomicBool::new(false));
        let h = harness(store_with(&[1], fail.clone(), defer_sync, only_sync), Duration::from_millis(5), Duration::from_secs(10));
        let commands = h.commands.clone();
        let client = async move {
            // A single voter elects itself after an election timeout.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match propose(&commands, b"ok").await {
                    Ok(_) => break,
                    Err(e) => assert!(Instant::now() < deadline, "no leader elected: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            fail.store(true, Ordering::SeqCst);
            let r = propose(&commands, b"lost").await;
            assert!(matches!(r, Err(NodeError::Stopped)), "a waiter of a failed poll gets Stopped, got {r:?}");
            let r = propose(&commands, b"after").await;
            assert!(matches!(r, Err(NodeError::Stopped)), "requests after a fatal error get Stopped, got {r:?}");
        };
        let (exit, ()) =
            tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(h.store_loop.run(), client) }).await.expect("bounded");
        assert!(matches!(exit, Exit::Fatal(RaftstoreError::Storage(_))), "the loop stops on a storage error");
    }

    /// An engine whose syncs block until the returned sender is dropped.
    fn hanging_sync() -> (Arc<FailingEngine>, std::sync::mpsc::Sender<()>) {
        let (release, hold) = std::sync::mpsc::channel::<()>();
        let engine = FailingEngine {
            inner: MemEngine::new(),
            fail: Arc::new(AtomicBool::new(false)),
            only_sync: true,
            hold_syncs: Some(std::sync::Mutex::new(hold)),
        };
        (Arc::new(engine), release)
    }

    #[test]
    fn a_hung_fsync_delays_shutdown_only_up_to_the_bound() {
        let (engine, release) = hanging_sync();
        let mut s = Syncer::start(engine, 1).expect("sync thread");
        s.join_timeout = Duration::from_millis(200);
        s.requests.as_ref().expect("open").try_send(1).expect("first request fits");
        let started = Instant::now();
        drop(s);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(200), "waited for the fsync up to the bound, took {took:?}");
        assert!(took < Duration::from_secs(5), "left the hung thread behind at the bound, took {took:?}");
        // The disk comes back: the thread ends by itself.
        drop(release);
    }

    #[test]
    fn shutdown_waits_for_an_fsync_that_returns() {
        let (engine, release) = hanging_sync();
        let s = Syncer::start(engine.clone(), 1).expect("sync thread");
        s.requests.as_ref().expect("open").try_send(1).expect("first request fits");
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            drop(release);
        });
        drop(s);
        releaser.join().unwrap();
        assert_eq!(engine.sync_count(), 1, "the fsync in flight finished before shutdown went on");
    }

    #[tokio::test]
    async fn unanswered_requests_fail_at_their_deadline() {
        // Two voters, the other never answers: no leader, so a ReadIndex
        // waits (the store itself gives up only after 30 ticks = 3 s).
        let fail = Arc::new(AtomicBool::new(false));
        let h = harness(store(&[1, 2], fail), Duration::from_millis(100), Duration::from_millis(100));
        let commands = h.commands.clone();
        let client = async move {
            let (reply, answer) = oneshot::channel();
            commands.send(Command::Read { req: range_one(), query: b"k".to_vec(), linearizable: true, reply }).await.unwrap();
            let started = Instant::now();
            let r = answer.await.expect("answered");
            assert!(matches!(r, Err(NodeError::Timeout { .. })), "got {r:?}");
            assert!(started.elapsed() < Duration::from_secs(2), "failed by the sweep, not by the store's own read timeout");
        };
        let stop = h.stop;
        let client = async move {
            client.await;
            let _ = stop.send(());
        };
        let (exit, ()) =
            tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(h.store_loop.run(), client) }).await.expect("bounded");
        assert!(matches!(exit, Exit::Requested));
    }
}
