use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use meridian_raftstore::raft_types::StateRole;
use meridian_raftstore::test_machine::{chain_of, put_command, RegisterMachine};
use meridian_raftstore::{Completion, RaftstoreError, RangeStatus, RequestId, StateMachine, StateMachineFactory, Store, StoreConfig};
use meridian_storage::{keys, CachedEngine, Cf, Engine, MemEngine, RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};
use meridian_storage_rocks::RocksEngine;
use meridian_transport::mem::MemNetwork;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::checker::Checker;

/// A request's answer: the index it was applied or read at, and the reply.
pub type Answer = Result<(u64, Vec<u8>), RaftstoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineKind {
    /// In-memory engine that models fsync: a crash loses unsynced writes.
    Mem,
    /// RocksDB in a temporary directory (slower; real fsyncs).
    Rocks,
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub seed: u64,
    /// Nodes 1..=nodes exist; the first `initial_voters` host every range.
    pub nodes: u64,
    pub initial_voters: u64,
    pub ranges: u64,
    pub engine: EngineKind,
    pub store: StoreConfig,
    /// Nodes that run as witnesses ([`StoreConfig::witness`]): their
    /// replicas vote and keep the log, never data.
    pub witnesses: Vec<u64>,
}

impl SimConfig {
    pub fn new(seed: u64) -> Self {
        let mut store = StoreConfig::new(0);
        // Small chunks and install steps, so a snapshot here streams in
        // many chunks and moves into place over several rounds, as a large
        // one does in production.
        store.snapshot_chunk_bytes = 256;
        store.install_step_bytes = 1024;
        store.record_applied = true;
        store.compact_log_entries = 64;
        store.max_log_lag_entries = 256;
        // As production: the driver syncs (see `Cluster::step`).
        store.defer_sync = true;
        SimConfig { seed, nodes: 3, initial_voters: 3, ranges: 1, engine: EngineKind::Mem, store, witnesses: Vec::new() }
    }
}

/// Read cache of a simulated node: small, so eviction is exercised.
const SIM_READ_CACHE_BYTES: usize = 4 << 10;

enum NodeEngine {
    Mem(MemEngine),
    Rocks { dir: tempfile::TempDir, engine: Option<RocksEngine> },
}

struct SimNode {
    engine: NodeEngine,
    store: Option<Store>,
    /// The sync in flight, as the node's sync thread runs it (one at a
    /// time): it covers the writes made before it began (`mark`) and
    /// finishes at step `due`; a crash before then loses them.
    pending_sync: Option<PendingSync>,
}

#[derive(Clone, Copy)]
struct PendingSync {
    seq: u64,
    mark: u64,
    due: u64,
}

/// The state machines a cluster's stores run: a factory per node start
/// (called again at every restart, so a driver can tell incarnations
/// apart), and whether the read cache admits only the records the factory
/// calls hot (as a node does) or every key (the register simulation).
pub struct Machines {
    factory: Box<dyn Fn(u64) -> Arc<dyn StateMachineFactory>>,
    hot_records_only: bool,
}

impl Machines {
    /// The register machine of `test_machine` on every node.
    pub fn register() -> Self {
        Machines { factory: Box::new(|_| factory()), hot_records_only: false }
    }

    /// `factory(node_id)` at every start of a node; the read cache keeps
    /// only the records the factory calls hot, as on a real node.
    pub fn per_node(factory: impl Fn(u64) -> Arc<dyn StateMachineFactory> + 'static) -> Self {
        Machines { factory: Box::new(factory), hot_records_only: true }
    }
}

/// What a proposal was, to record its acknowledgement.
struct InFlight {
    range_id: u64,
    command: Vec<u8>,
    read: bool,
    /// For reads of a key whose write was acknowledged before the read
    /// started: the value a linearizable read must return.
    expect: Option<Vec<u8>>,
}

pub struct Cluster {
    pub cfg: SimConfig,
    pub rng: ChaCha8Rng,
    pub net: MemNetwork,
    pub checker: Checker,
    now: u64,
    nodes: BTreeMap<u64, SimNode>,
    ranges: Vec<RangeDescriptor>,
    inflight: HashMap<(u64, RequestId), InFlight>,
    results: HashMap<(u64, RequestId), Answer>,
    next_key: u64,
    machines: Machines,
}

fn factory() -> Arc<dyn meridian_raftstore::StateMachineFactory> {
    Arc::new(|_: &RangeDescriptor| Box::new(RegisterMachine) as Box<dyn StateMachine>)
}

/// Where a sync starting now ends: what it will cover.
fn engine_mark(engine: &NodeEngine) -> u64 {
    match engine {
        NodeEngine::Mem(m) => m.written(),
        NodeEngine::Rocks { .. } => 0,
    }
}

/// Finishes a sync that began at `mark`. RocksDB (a crash there only
/// reopens, losing nothing) syncs everything.
fn engine_sync(engine: &NodeEngine, mark: u64) -> Result<(), meridian_storage::StorageError> {
    match engine {
        NodeEngine::Mem(m) => {
            m.sync_upto(mark);
            Ok(())
        }
        NodeEngine::Rocks { engine, .. } => engine.as_ref().map_or(Ok(()), |e| e.sync()),
    }
}

impl Cluster {
    pub fn new(cfg: SimConfig) -> Cluster {
        Cluster::with_machines(cfg, Machines::register())
    }

    /// A cluster whose stores run `machines` instead of the register machine.
    pub fn with_machines(cfg: SimConfig, machines: Machines) -> Cluster {
        let net = MemNetwork::new(cfg.seed);
        let voters: Vec<ReplicaDesc> = (1..=cfg.initial_voters).map(|node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect();
        // Range r serves keys with prefix "/r<r>/"; range ids start at 1.
        let ranges: Vec<RangeDescriptor> = (1..=cfg.ranges)
            .map(|r| RangeDescriptor {
                range_id: r,
                namespace_id: r,
                start: format!("/r{r:04}/").into_bytes(),
                end: format!("/r{r:04}0").into_bytes(),
                epoch: RangeEpoch { conf_ver: 1, version: 1 },
                replicas: voters.clone(),
            })
            .collect();
        let mut c = Cluster {
            rng: ChaCha8Rng::seed_from_u64(cfg.seed),
            net,
            checker: Checker::default(),
            now: 0,
            nodes: BTreeMap::new(),
            ranges,
            inflight: HashMap::new(),
            results: HashMap::new(),
            next_key: 0,
            machines,
            cfg,
        };
        for id in 1..=c.cfg.nodes {
            let engine = match c.cfg.engine {
                EngineKind::Mem => NodeEngine::Mem(MemEngine::new()),
                EngineKind::Rocks => {
                    let dir = tempfile::tempdir().expect("temp dir");
                    NodeEngine::Rocks { engine: Some(RocksEngine::open(dir.path()).expect("open rocksdb")), dir }
                }
            };
            c.nodes.insert(id, SimNode { engine, store: None, pending_sync: None });
            c.start(id);
        }
        c
    }

    /// The engine a (re)started store gets: behind a read cache as on a
    /// real node, with a fresh cache per start (a process's memory) and a
    /// bound small enough that entries are evicted all along.
    fn engine_of(&self, id: u64, machines: &Arc<dyn StateMachineFactory>) -> Arc<dyn Engine> {
        fn cached<E: Engine + 'static>(e: E, hot: Option<Arc<dyn StateMachineFactory>>) -> Arc<dyn Engine> {
            let c = CachedEngine::new(e, Cf::Data, SIM_READ_CACHE_BYTES);
            match hot {
                Some(m) => Arc::new(c.admitting(move |key| keys::user_key(key).is_some_and(|k| m.hot_record(k)))),
                None => Arc::new(c),
            }
        }
        let hot = self.machines.hot_records_only.then(|| machines.clone());
        match &self.nodes[&id].engine {
            NodeEngine::Mem(m) => cached(m.clone(), hot),
            NodeEngine::Rocks { engine, .. } => cached(engine.clone().expect("engine open"), hot),
        }
    }

    fn start(&mut self, id: u64) {
        if let NodeEngine::Rocks { dir, engine } = &mut self.nodes.get_mut(&id).expect("node").engine {
            if engine.is_none() {
                *engine = Some(RocksEngine::open(dir.path()).expect("reopen rocksdb"));
            }
        }
        let machines = (self.machines.factory)(id);
        let engine = self.engine_of(id, &machines);
        Store::bootstrap(&*engine, id, &self.ranges).expect("bootstrap");
        let mut cfg = self.cfg.store.clone();
        cfg.node_id = id;
        cfg.seed = self.cfg.seed;
        cfg.witness = self.cfg.witnesses.contains(&id);
        let store = Store::open(cfg, engine, Arc::new(self.net.transport(id)), machines).expect("open store");
        self.nodes.get_mut(&id).expect("node").store = Some(store);
        self.net.set_down(id, false);
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn node_ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn is_up(&self, id: u64) -> bool {
        self.nodes.get(&id).is_some_and(|n| n.store.is_some())
    }

    pub fn store(&self, id: u64) -> Option<&Store> {
        self.nodes.get(&id)?.store.as_ref()
    }

    pub fn store_mut(&mut self, id: u64) -> Option<&mut Store> {
        self.nodes.get_mut(&id)?.store.as_mut()
    }

    /// kill -9: the process is gone and unsynced writes are lost, except
    /// a random prefix of them that reached the disk anyway.
    pub fn crash(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("node");
        node.store = None;
        node.pending_sync = None;
        match &mut node.engine {
            // The log keeps a prefix of the writes: some unsynced ones may
            // have reached the disk.
            NodeEngine::Mem(m) => {
                let keep = self.rng.gen_range(0..=m.unsynced_batches());
                *m = m.crash_keeping(keep);
            }
            NodeEngine::Rocks { engine, .. } => *engine = None,
        }
        self.inflight.retain(|(n, _), _| *n != id);
        self.results.retain(|(n, _), _| *n != id);
        self.net.set_down(id, true);
    }

    pub fn restart(&mut self, id: u64) {
        if !self.is_up(id) {
            self.start(id);
        }
    }

    /// One logical tick for the whole cluster.
    pub fn step(&mut self) {
        self.now += 1;
        let now = self.now;
        for env in self.net.deliver_due(now) {
            if let Some(s) = self.nodes.get_mut(&env.to_node).and_then(|n| n.store.as_mut()) {
                s.step(env);
            }
        }
        let ids = self.node_ids();
        for id in ids {
            // A sync in flight finishes when it is due.
            let due = self.nodes.get(&id).and_then(|n| n.pending_sync).is_some_and(|p| p.due <= now);
            if due && !self.finish_sync(id) {
                continue;
            }
            let Some(store) = self.store_mut(id) else { continue };
            store.tick();
            if !self.poll_node(id) {
                continue;
            }
            // This round's sync: done within the step half of the time
            // (then what it released is polled at once), else 1-3 steps
            // later, so crashes also land between a write and its fsync.
            let delay = if self.rng.gen_bool(0.5) { 0 } else { self.rng.gen_range(1..=3) };
            if self.start_sync(id, now + delay) && delay == 0 && self.finish_sync(id) && self.poll_node(id) {
                // What that poll wrote syncs at the next step.
                self.start_sync(id, now + 1);
            }
        }
    }

    /// Starts the sync node `id`'s store asks for, due at step `due`,
    /// unless one is in flight (one at a time, as the node's sync thread:
    /// the store keeps asking). It covers the writes made so far.
    fn start_sync(&mut self, id: u64, due: u64) -> bool {
        let node = self.nodes.get_mut(&id).expect("node");
        if node.pending_sync.is_some() {
            return false;
        }
        let mark = engine_mark(&node.engine);
        let Some(seq) = node.store.as_mut().and_then(|s| s.take_sync_request()) else { return false };
        node.pending_sync = Some(PendingSync { seq, mark, due });
        true
    }

    /// Finishes node `id`'s sync in flight: what it covers becomes durable
    /// and the store hears of it. False if it failed (recorded).
    fn finish_sync(&mut self, id: u64) -> bool {
        let now = self.now;
        let node = self.nodes.get_mut(&id).expect("node");
        let Some(p) = node.pending_sync.take() else { return true };
        if let Err(e) = engine_sync(&node.engine, p.mark) {
            self.checker.fail(format!("step {now}: node {id} sync failed: {e}"));
            return false;
        }
        if let Some(store) = node.store.as_mut() {
            store.on_synced(p.seq, 0);
        }
        true
    }

    /// Polls node `id` once and hands its results to the checker; false if
    /// the poll failed (recorded as a violation).
    fn poll_node(&mut self, id: u64) -> bool {
        let now = self.now;
        let Some(store) = self.nodes.get_mut(&id).and_then(|n| n.store.as_mut()) else { return false };
        let done = match store.poll() {
            Ok(d) => d,
            Err(e) => {
                self.checker.fail(format!("step {now}: node {id} poll failed: {e}"));
                return false;
            }
        };
        for e in store.take_applied() {
            let conf_ver = store.range_status(e.range_id).map_or(0, |s| s.epoch.conf_ver);
            self.checker.observe_applied(now, id, conf_ver, &e);
        }
        for st in store.statuses() {
            self.checker.observe_status(now, id, &st);
        }
        for c in done {
            self.complete(id, c);
        }
        true
    }

    fn complete(&mut self, node: u64, c: Completion) {
        let Some(op) = self.inflight.remove(&(node, c.id)) else { return };
        match (&c.result, op.read) {
            (Ok((index, _)), false) => self.checker.observe_ack(self.now, op.range_id, *index, &op.command),
            (Ok((at, value)), true) => {
                if let Some(want) = &op.expect {
                    if value != want {
                        self.checker.fail(format!(
                            "step {}: linearizability: read of {} on node {node} (answered at applied index {at}) returned {:?}, acknowledged value is {:?}",
                            self.now,
                            String::from_utf8_lossy(&op.command),
                            String::from_utf8_lossy(value),
                            String::from_utf8_lossy(want)
                        ));
                    }
                }
            }
            _ => {}
        }
        if self.results.len() < 100_000 {
            self.results.insert((node, c.id), c.result);
        }
    }

    pub fn run(&mut self, steps: u64) {
        for _ in 0..steps {
            self.step();
        }
    }

    /// Steps until `pred` holds, at most `max_steps`; true if it held.
    pub fn run_until(&mut self, max_steps: u64, mut pred: impl FnMut(&Cluster) -> bool) -> bool {
        for _ in 0..max_steps {
            if pred(self) {
                return true;
            }
            self.step();
        }
        pred(self)
    }

    /// The node that leads `range_id` in the highest term any live node
    /// knows of.
    pub fn leader_of(&self, range_id: u64) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for (id, n) in &self.nodes {
            let Some(st) = n.store.as_ref().and_then(|s| s.range_status(range_id)) else { continue };
            if st.role == StateRole::Leader && best.is_none_or(|(t, _)| st.term > t) {
                best = Some((st.term, *id));
            }
        }
        best.map(|(_, id)| id)
    }

    pub fn status(&self, node: u64, range_id: u64) -> Option<RangeStatus> {
        self.store(node)?.range_status(range_id)
    }

    pub fn range_ids(&self) -> Vec<u64> {
        self.ranges.iter().map(|r| r.range_id).collect()
    }

    /// A command writing a fresh key in the range, so every acknowledged
    /// write can be looked up at the end.
    pub fn fresh_put(&mut self, range_id: u64) -> (Vec<u8>, Vec<u8>) {
        self.next_key += 1;
        let key = format!("/r{range_id:04}/k{}", self.next_key).into_bytes();
        let cmd = put_command(&key, format!("v{}", self.next_key).as_bytes());
        (key, cmd)
    }

    /// Proposes on `node`; the answer is kept for [`Cluster::result`].
    pub fn propose_on(&mut self, node: u64, range_id: u64, command: Vec<u8>) -> Result<RequestId, RaftstoreError> {
        let store = self.store_mut(node).ok_or(RaftstoreError::RangeNotFound { range_id })?;
        let id = store.propose(store.request(range_id), command.clone())?;
        self.inflight.insert((node, id), InFlight { range_id, command, read: false, expect: None });
        Ok(id)
    }

    /// Proposes on `node` only if it leads the range (no forwarding), as
    /// the lease keeper and lease grants do.
    pub fn propose_on_leader(&mut self, node: u64, range_id: u64, command: Vec<u8>) -> Result<RequestId, RaftstoreError> {
        let store = self.store_mut(node).ok_or(RaftstoreError::RangeNotFound { range_id })?;
        let id = store.propose_on_leader(store.request(range_id), command.clone())?;
        self.inflight.insert((node, id), InFlight { range_id, command, read: false, expect: None });
        Ok(id)
    }

    /// Every serving replica of every range has applied all it knows
    /// committed, and the replicas of a range agree on that index.
    pub fn replicas_caught_up(&self) -> bool {
        self.range_ids().into_iter().all(|r| {
            let applied: Vec<(u64, u64)> = self
                .nodes
                .values()
                .filter_map(|n| n.store.as_ref()?.range_status(r))
                .filter(|st| !st.dormant)
                .map(|st| (st.applied, st.commit))
                .collect();
            applied.iter().all(|(a, c)| a >= c && *a == applied[0].0)
        })
    }

    /// Proposes to the current leader, if there is one.
    pub fn propose(&mut self, range_id: u64, command: Vec<u8>) -> Option<(u64, RequestId)> {
        let leader = self.leader_of(range_id)?;
        self.propose_on(leader, range_id, command).ok().map(|id| (leader, id))
    }

    /// Starts a linearizable read. With `expect`, a successful answer that
    /// differs is recorded as a violation.
    pub fn read_on(&mut self, node: u64, range_id: u64, key: &[u8], expect: Option<Vec<u8>>) -> Result<RequestId, RaftstoreError> {
        let store = self.store_mut(node).ok_or(RaftstoreError::RangeNotFound { range_id })?;
        let id = store.read_index(store.request(range_id), key.to_vec())?;
        self.inflight.insert((node, id), InFlight { range_id, command: key.to_vec(), read: true, expect });
        Ok(id)
    }

    /// Removes and returns a request's answer (keeps long runs' memory flat).
    pub fn take_result(&mut self, node: u64, id: RequestId) -> Option<Answer> {
        self.results.remove(&(node, id))
    }

    /// Synced writes (fsyncs) over every node's engine so far.
    pub fn total_syncs(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| match &n.engine {
                NodeEngine::Mem(m) => m.sync_count(),
                NodeEngine::Rocks { engine, .. } => engine.as_ref().map_or(0, |e| e.sync_count()),
            })
            .sum()
    }

    pub fn result(&self, node: u64, id: RequestId) -> Option<&Answer> {
        self.results.get(&(node, id))
    }

    /// Steps until the request is answered; `None` if it is not within
    /// `max_steps`.
    pub fn wait(&mut self, node: u64, id: RequestId, max_steps: u64) -> Option<Answer> {
        self.run_until(max_steps, |c| c.results.contains_key(&(node, id)));
        self.results.get(&(node, id)).cloned()
    }

    /// Keeps the answer of a request made directly on a store (not through
    /// the cluster helpers) for [`Cluster::take_result`]; the checker
    /// ignores it.
    pub fn track(&mut self, node: u64, id: RequestId) {
        self.inflight.insert((node, id), InFlight { range_id: 0, command: Vec::new(), read: true, expect: None });
    }

    /// Waits for the answer to a request made directly on a store (not
    /// through the cluster helpers).
    pub fn wait_untracked(&mut self, node: u64, id: RequestId, max_steps: u64) -> Option<Answer> {
        self.inflight.insert((node, id), InFlight { range_id: 0, command: Vec::new(), read: true, expect: None });
        self.wait(node, id, max_steps)
    }

    /// Proposes a fresh put and waits for it, retrying through leader
    /// changes. Returns the key written.
    pub fn put_and_wait(&mut self, range_id: u64, max_steps: u64) -> Option<Vec<u8>> {
        let (key, cmd) = self.fresh_put(range_id);
        let deadline = self.now + max_steps;
        while self.now < deadline {
            if let Some((node, id)) = self.propose(range_id, cmd.clone()) {
                match self.wait(node, id, deadline.saturating_sub(self.now)) {
                    Some(Ok(_)) => return Some(key),
                    _ => continue,
                }
            }
            self.step();
        }
        None
    }

    /// Heals every fault, restarts every node and waits until every replica
    /// of every range has applied the same log (same applied index and hash
    /// chain). Then checks that every acknowledged write is present on
    /// every replica. Returns false (with violations recorded) otherwise.
    pub fn converge(&mut self, max_steps: u64) -> bool {
        self.net.heal();
        for id in self.node_ids() {
            self.restart(id);
        }
        // Wake quiet ranges and make sure each has a leader that committed
        // in its term, by writing once to every range.
        for r in self.range_ids() {
            if self.put_and_wait(r, max_steps).is_none() {
                self.checker.fail(format!("step {}: range {r} accepted no write after heal", self.now));
                return false;
            }
        }
        let ok = self.run_until(max_steps, |c| c.replicas_agree());
        if !ok {
            self.checker.fail(format!("step {}: replicas did not converge after heal: {}", self.now, self.describe()));
            return false;
        }
        self.check_acked_present()
    }

    fn replicas_agree(&self) -> bool {
        for r in self.range_ids() {
            let mut seen: Option<(u64, u64)> = None;
            for (id, n) in &self.nodes {
                let Some(store) = &n.store else { continue };
                let Some(st) = store.range_status(r) else { continue };
                if st.dormant {
                    // Removed from the range (it keeps its data, serves
                    // nothing); a member is never dormant here, as the
                    // leader's messages wake it.
                    continue;
                }
                if st.applied < st.commit {
                    return false;
                }
                if self.cfg.witnesses.contains(id) {
                    // No data to compare: its applied index must match.
                    if seen.is_some_and(|s| s.0 != st.applied) {
                        return false;
                    }
                    continue;
                }
                let v = (st.applied, chain_of(&**store.engine(), r));
                if seen.is_some_and(|s| s != v) {
                    return false;
                }
                seen = Some(v);
                let _ = id;
            }
        }
        true
    }

    fn check_acked_present(&mut self) -> bool {
        let mut missing = Vec::new();
        for ((range_id, index), cmd) in self.checker.acked() {
            // "P <key> <value>"
            let body = &cmd[2..];
            let sp = body.iter().position(|b| *b == b' ').unwrap_or(body.len());
            let (key, value) = (&body[..sp], body.get(sp + 1..).unwrap_or(&[]));
            for (id, n) in &self.nodes {
                let Some(store) = &n.store else { continue };
                if store.range_status(*range_id).is_none_or(|s| s.dormant) || self.cfg.witnesses.contains(id) {
                    continue;
                }
                let got = store.read_local(store.request(*range_id), key).unwrap_or_default();
                if got != value && missing.len() < 10 {
                    missing.push(format!("node {id} range {range_id} index {index} key {}", String::from_utf8_lossy(key)));
                }
            }
        }
        for m in &missing {
            self.checker.fail(format!("acknowledged write lost: {m}"));
        }
        let witness_data = self.witness_data();
        for w in &witness_data {
            self.checker.fail(format!("a witness holds data: {w}"));
        }
        missing.is_empty() && witness_data.is_empty()
    }

    /// The data keys witnesses hold (none may: they keep only the log).
    pub fn witness_data(&self) -> Vec<String> {
        let mut out = Vec::new();
        for w in &self.cfg.witnesses {
            let Some(store) = self.nodes.get(w).and_then(|n| n.store.as_ref()) else { continue };
            for r in self.range_ids() {
                // Range r's namespace is r here.
                let (start, end) = keys::range_span(r);
                let mut any = false;
                let _ = store.engine().scan(Cf::Data, &start, &end, &mut |_, _| {
                    any = true;
                    false
                });
                if any {
                    out.push(format!("node {w} range {r}"));
                }
            }
        }
        out
    }

    /// The placement driver's replica collection, as the real one does it
    /// from the catalog: every dormant replica on `nodes` (up ones) whose
    /// range's leader applied a configuration that leaves its node out, at
    /// an epoch at or past the one the replica went dormant at, is
    /// destroyed. Returns how many were, and how many must be asked again
    /// (writes of theirs still on their way to disk).
    pub fn collect_garbage(&mut self, nodes: &[u64]) -> (usize, usize) {
        let (mut destroyed, mut later) = (0, 0);
        for &n in nodes {
            let Some(store) = self.store(n) else { continue };
            let dormant: Vec<(u64, u64)> = store.statuses().into_iter().filter_map(|s| Some((s.range_id, s.dormant_at?))).collect();
            for (r, at) in dormant {
                let Some(leader) = self.leader_of(r).and_then(|l| self.status(l, r)) else { continue };
                let out = !leader.voters.contains(&n) && !leader.learners.contains(&n) && leader.voters_outgoing.is_empty();
                if !out || leader.epoch.conf_ver < at {
                    continue;
                }
                let why = meridian_raftstore::Retirement::Removed { conf_ver: leader.epoch.conf_ver };
                match self.store_mut(n).map(|s| s.destroy_replica(r, why)) {
                    Some(Ok(meridian_raftstore::Destroyed::Done)) => destroyed += 1,
                    Some(Ok(meridian_raftstore::Destroyed::Later)) => later += 1,
                    None => {}
                    Some(Err(e)) => self.checker.fail(format!("step {}: destroying n{n}'s dormant replica of r{r}: {e}", self.now)),
                }
            }
        }
        (destroyed, later)
    }

    /// Replicas that are in no configuration of their range's leader (none
    /// once a healed run collected its garbage), as `n<node> r<range>`.
    pub fn orphans(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (id, n) in &self.nodes {
            let Some(store) = &n.store else { continue };
            for st in store.statuses() {
                let Some(leader) = self.leader_of(st.range_id).and_then(|l| self.status(l, st.range_id)) else { continue };
                let member = leader.voters.contains(id) || leader.learners.contains(id) || leader.voters_outgoing.contains(id);
                if !member {
                    out.push(format!("n{id} r{}{}", st.range_id, if st.dormant { " (dormant)" } else { "" }));
                }
            }
        }
        out
    }

    /// A one-line summary of every replica, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for (id, n) in &self.nodes {
            let Some(store) = &n.store else {
                out.push_str(&format!("[n{id} down] "));
                continue;
            };
            for st in store.statuses() {
                out.push_str(&format!(
                    "[n{id} r{} {:?} t{} c{} a{} f{} l{} q{} cv{} v{:?}{}{}] ",
                    st.range_id,
                    st.role,
                    st.term,
                    st.commit,
                    st.applied,
                    st.first_index,
                    st.last_index,
                    st.quiesced as u8,
                    st.epoch.conf_ver,
                    st.voters,
                    if st.dormant { " dormant" } else { "" },
                    if st.progress.is_empty() { String::new() } else { format!(" {:?}", st.progress) }
                ));
            }
        }
        out
    }
}
