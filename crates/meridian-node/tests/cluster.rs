//! Real nodes on 127.0.0.1: RocksDB in temp dirs, QUIC with a dev CA, wall
//! clock ticks. Every test is bounded by a timeout so a regression fails
//! instead of hanging CI. Set `RUST_LOG=meridian_node=debug,meridian_raftstore=info`
//! to see the nodes' logs of a failing run.

// Tests own the clock: deadlines, and measuring how long failover takes.
#![allow(clippy::disallowed_methods)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use meridian_node::{Node, NodeConfig, NodeError, NodeHandle};
use meridian_raftstore::raft_types::StateRole;
use meridian_raftstore::test_machine::{put_command, RegisterMachine};
use meridian_raftstore::{RaftstoreError, RangeRequest, StateMachine, StateMachineFactory, StoreMetrics};
use meridian_storage::{RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};
use meridian_transport_quic::DevCa;

/// A request to `range_id` at the epoch every range here is bootstrapped
/// with (no membership changes in these tests).
fn at_bootstrap(range_id: u64) -> RangeRequest {
    RangeRequest::new(range_id, RangeEpoch { conf_ver: 1, version: 1 })
}
use tempfile::TempDir;
use tokio::task::JoinSet;
use tokio::time::{sleep, timeout, Instant};

const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Short ticks keep elections (10 ticks) around 200–400 ms.
const TICK_MS: u64 = 20;
/// Bound of one logical operation including its retries.
const OP_DEADLINE: Duration = Duration::from_secs(20);

async fn bounded<F: Future<Output = ()>>(f: F) {
    let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).with_test_writer().try_init();
    timeout(TEST_TIMEOUT, f).await.expect("test exceeded its time bound");
}

fn factory() -> Arc<dyn StateMachineFactory> {
    Arc::new(|_: &RangeDescriptor| Box::new(RegisterMachine) as Box<dyn StateMachine>)
}

/// Ranges 1..=n, each replicated on every node in `voters`.
fn ranges(n: u64, voters: &[u64]) -> Vec<RangeDescriptor> {
    let replicas: Vec<ReplicaDesc> = voters.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect();
    (1..=n)
        .map(|r| RangeDescriptor {
            range_id: r,
            namespace_id: r,
            start: format!("/r{r:04}/").into_bytes(),
            end: format!("/r{r:04}0").into_bytes(),
            epoch: RangeEpoch { conf_ver: 1, version: 1 },
            replicas: replicas.clone(),
        })
        .collect()
}

fn key(range_id: u64, name: &str) -> Vec<u8> {
    format!("/r{range_id:04}/{name}").into_bytes()
}

/// Talks to whichever nodes are up, finding leaders through status.
#[derive(Clone)]
struct Client {
    nodes: BTreeMap<u64, NodeHandle>,
}

impl Client {
    /// The node that leads `range_id` in the highest term, if any.
    async fn leader_of(&self, range_id: u64) -> Option<u64> {
        let mut best: Option<(u64, u64)> = None;
        for (id, h) in &self.nodes {
            let Ok(statuses) = h.status().await else { continue };
            if let Some(s) = statuses.iter().find(|s| s.range_id == range_id && s.role == StateRole::Leader) {
                if best.is_none_or(|(term, _)| s.term > term) {
                    best = Some((s.term, *id));
                }
            }
        }
        best.map(|(_, id)| id)
    }

    async fn wait_for_leaders(&self, range_ids: impl IntoIterator<Item = u64>) -> BTreeMap<u64, u64> {
        let deadline = Instant::now() + OP_DEADLINE;
        let mut leaders = BTreeMap::new();
        for r in range_ids {
            loop {
                if let Some(l) = self.leader_of(r).await {
                    leaders.insert(r, l);
                    break;
                }
                assert!(Instant::now() < deadline, "range {r} elected no leader within {OP_DEADLINE:?}");
                sleep(Duration::from_millis(TICK_MS)).await;
            }
        }
        leaders
    }

    /// Writes through the leader, retrying (the register put is idempotent)
    /// until it succeeds. Returns the index it was applied at.
    async fn put(&self, range_id: u64, k: &[u8], v: &[u8]) -> u64 {
        let deadline = Instant::now() + OP_DEADLINE;
        let mut target = None;
        let mut last_err = String::from("no leader found");
        while Instant::now() < deadline {
            let Some(node) = (match target.take() {
                Some(t) => Some(t),
                None => self.leader_of(range_id).await,
            }) else {
                sleep(Duration::from_millis(TICK_MS)).await;
                continue;
            };
            let Some(h) = self.nodes.get(&node) else {
                sleep(Duration::from_millis(TICK_MS)).await;
                continue;
            };
            match h.propose(at_bootstrap(range_id), put_command(k, v)).await {
                Ok((index, _)) => return index,
                Err(e) => {
                    assert_retryable(&e);
                    target = e.leader_hint().filter(|l| self.nodes.contains_key(l));
                    last_err = format!("node {node}: {e}");
                    if target.is_none() {
                        sleep(Duration::from_millis(TICK_MS)).await;
                    }
                }
            }
        }
        panic!("put to range {range_id} did not succeed within {OP_DEADLINE:?}; last error: {last_err}");
    }

    /// A linearizable read on `node`, retried while the range has no leader.
    async fn read(&self, node: u64, range_id: u64, k: &[u8]) -> (u64, Vec<u8>) {
        let deadline = Instant::now() + OP_DEADLINE;
        loop {
            match self.nodes[&node].read(at_bootstrap(range_id), k.to_vec(), true).await {
                Ok(answer) => return answer,
                Err(e) => {
                    assert_retryable(&e);
                    assert!(Instant::now() < deadline, "read on node {node} in range {range_id} kept failing: {e}");
                    sleep(Duration::from_millis(TICK_MS)).await;
                }
            }
        }
    }

    async fn metrics(&self) -> BTreeMap<u64, StoreMetrics> {
        let mut out = BTreeMap::new();
        for (id, h) in &self.nodes {
            out.insert(*id, h.metrics().await.expect("metrics"));
        }
        out
    }

    async fn applied(&self, node: u64, range_id: u64) -> u64 {
        let statuses = self.nodes[&node].status().await.expect("status");
        statuses.iter().find(|s| s.range_id == range_id).map_or(0, |s| s.applied)
    }
}

/// Errors a client retries on; anything else is a bug.
fn assert_retryable(e: &NodeError) {
    let ok = e.is_retryable()
        || matches!(e, NodeError::Timeout { .. } | NodeError::Raft(RaftstoreError::OutcomeUnknown { .. }))
        || e.leader_hint().is_some();
    assert!(ok, "unexpected error: {e}");
}

/// Nodes 1..=n on 127.0.0.1 with their own data dirs. Nodes listen on port
/// 0 and learn each other's addresses afterwards, so no port is ever
/// guessed.
struct TestCluster {
    ca: DevCa,
    ranges: Vec<RangeDescriptor>,
    dirs: BTreeMap<u64, TempDir>,
    client: Client,
    /// NodeConfig::store_on_runtime for every node.
    store_on_runtime: bool,
}

impl TestCluster {
    async fn start(nodes: u64, range_count: u64) -> TestCluster {
        Self::start_with(nodes, range_count, false).await
    }

    async fn start_with(nodes: u64, range_count: u64, store_on_runtime: bool) -> TestCluster {
        let ids: Vec<u64> = (1..=nodes).collect();
        let mut c = TestCluster {
            ca: DevCa::generate().expect("dev CA"),
            ranges: ranges(range_count, &ids),
            dirs: BTreeMap::new(),
            client: Client { nodes: BTreeMap::new() },
            store_on_runtime,
        };
        for &id in &ids {
            c.dirs.insert(id, tempfile::tempdir().expect("temp dir"));
            let h = Node::start(c.config(id, HashMap::new())).await.expect("start node");
            c.client.nodes.insert(id, h);
        }
        for (a, ha) in &c.client.nodes {
            for (b, hb) in &c.client.nodes {
                if a != b {
                    ha.set_peer_addr(*b, hb.peer_addr());
                }
            }
        }
        c
    }

    fn config(&self, id: u64, peers: HashMap<u64, std::net::SocketAddr>) -> NodeConfig {
        let tls = self.ca.issue(id).expect("issue certificate");
        let mut cfg = NodeConfig::new(id, self.dirs[&id].path(), "127.0.0.1:0".parse().expect("addr"), tls, factory());
        cfg.peers = peers.into_iter().map(|(id, a)| (id, a.to_string())).collect();
        cfg.ranges = self.ranges.clone();
        cfg.tick_ms = TICK_MS;
        cfg.request_timeout_ms = 2_000;
        cfg.store_on_runtime = self.store_on_runtime;
        cfg
    }

    async fn stop(&mut self, id: u64) {
        let h = self.client.nodes.remove(&id).expect("node is up");
        h.shutdown().await;
    }

    /// Restarts `id` from its data dir on a fresh port, telling the others.
    async fn restart(&mut self, id: u64) {
        let peers = self.client.nodes.iter().map(|(n, h)| (*n, h.peer_addr())).collect();
        let h = Node::start(self.config(id, peers)).await.expect("restart node");
        for other in self.client.nodes.values() {
            other.set_peer_addr(id, h.peer_addr());
        }
        self.client.nodes.insert(id, h);
    }

    /// Stops every node, concurrently: a node whose peer is already gone
    /// may spend the transport's shutdown grace on connections to it.
    async fn shutdown(self) {
        let mut stopping = JoinSet::new();
        for (_, h) in self.client.nodes {
            stopping.spawn(h.shutdown());
        }
        while let Some(done) = stopping.join_next().await {
            done.expect("shutdown task");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_elect_and_replicate_over_quic() {
    bounded(async {
        const RANGES: u64 = 4;
        const WRITES: usize = 50;
        let c = TestCluster::start(3, RANGES).await;
        let leaders = c.client.wait_for_leaders(1..=RANGES).await;
        eprintln!("leaders by range: {leaders:?}");

        let mut writers = JoinSet::new();
        for r in 1..=RANGES {
            let client = c.client.clone();
            writers.spawn(async move {
                for i in 0..WRITES {
                    client.put(r, &key(r, &format!("k{i:02}")), format!("v{r}-{i}").as_bytes()).await;
                }
            });
        }
        while let Some(done) = writers.join_next().await {
            done.expect("writer task");
        }

        let mut readers = JoinSet::new();
        for &node in c.client.nodes.keys() {
            for r in 1..=RANGES {
                let client = c.client.clone();
                readers.spawn(async move {
                    for i in 0..WRITES {
                        let (_, value) = client.read(node, r, &key(r, &format!("k{i:02}"))).await;
                        assert_eq!(
                            String::from_utf8_lossy(&value),
                            format!("v{r}-{i}"),
                            "linearizable read on node {node} in range {r} missed an acknowledged write"
                        );
                    }
                });
            }
        }
        while let Some(done) = readers.join_next().await {
            done.expect("reader task");
        }
        c.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_node_killed_writes_resume_and_restart_catches_up() {
    leader_killed_then_restarted(false).await;
}

/// The same with every store loop a task on one current-thread runtime
/// (as `meridian dev` runs each node): nothing may wait for the runtime's
/// only thread while holding it.
#[tokio::test(flavor = "current_thread")]
async fn leader_node_killed_and_restarted_with_every_store_on_one_thread() {
    leader_killed_then_restarted(true).await;
}

async fn leader_killed_then_restarted(store_on_runtime: bool) {
    bounded(async {
        let mut c = TestCluster::start_with(3, 2, store_on_runtime).await;
        c.client.wait_for_leaders(1..=2).await;
        for i in 0..10 {
            c.client.put(1, &key(1, &format!("before{i}")), b"x").await;
        }
        let victim = c.client.leader_of(1).await.expect("range 1 has a leader");
        c.stop(victim).await;
        let stopped_at = Instant::now();

        c.client.put(1, &key(1, "first-after-failover"), b"y").await;
        let failover = stopped_at.elapsed();
        eprintln!("node {victim} (leader of range 1) stopped; first write succeeded after {failover:?}");
        let new_leader = c.client.leader_of(1).await.expect("range 1 has a new leader");
        assert_ne!(new_leader, victim);

        let mut last_index = 0;
        for i in 0..20 {
            last_index = c.client.put(1, &key(1, "latest"), format!("v{i}").as_bytes()).await;
        }

        c.restart(victim).await;
        let deadline = Instant::now() + OP_DEADLINE;
        loop {
            let leader = c.client.leader_of(1).await.unwrap_or(new_leader);
            let target = c.client.applied(leader, 1).await.max(last_index);
            let applied = c.client.applied(victim, 1).await;
            if applied >= target {
                eprintln!("restarted node {victim} caught up to applied index {applied} (leader {leader} at {target})");
                break;
            }
            assert!(Instant::now() < deadline, "restarted node {victim} stuck at applied {applied}, leader {leader} at {target}");
            sleep(Duration::from_millis(TICK_MS)).await;
        }
        let (at, value) = c.client.read(victim, 1, &key(1, "latest")).await;
        assert_eq!(value, b"v19", "linearizable read on the restarted node (at index {at}) must see the latest write");
        let (_, value) = c.client.read(victim, 1, &key(1, "before3")).await;
        assert_eq!(value, b"x", "writes from before the restart survive on disk");
        c.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synced_writes_per_poll_round() {
    bounded(async {
        const RANGES: u64 = 8;
        const PER_RANGE: usize = 128;
        let c = TestCluster::start(3, RANGES).await;
        c.client.wait_for_leaders(1..=RANGES).await;
        // Warm up: every leader has committed an entry of its term.
        for r in 1..=RANGES {
            c.client.put(r, &key(r, "warmup"), b"w").await;
        }
        let leaders = c.client.wait_for_leaders(1..=RANGES).await;
        let before = c.client.metrics().await;

        let mut proposals = JoinSet::new();
        for r in 1..=RANGES {
            let h = c.client.nodes[&leaders[&r]].clone();
            for i in 0..PER_RANGE {
                let h = h.clone();
                proposals.spawn(async move { h.propose(at_bootstrap(r), put_command(&key(r, &format!("k{i}")), b"v")).await });
            }
        }
        let mut acked = 0;
        while let Some(done) = proposals.join_next().await {
            match done.expect("proposal task") {
                Ok(_) => acked += 1,
                Err(e) => assert_retryable(&e),
            }
        }
        assert!(acked > 0, "no proposal succeeded");

        // Let every replica persist and apply everything, so each node's
        // counters cover the same entries.
        let deadline = Instant::now() + OP_DEADLINE;
        for r in 1..=RANGES {
            let leader = c.client.leader_of(r).await.unwrap_or(leaders[&r]);
            let target = c.client.applied(leader, r).await;
            for &node in c.client.nodes.keys() {
                while c.client.applied(node, r).await < target {
                    assert!(Instant::now() < deadline, "node {node} did not catch up in range {r}");
                    sleep(Duration::from_millis(TICK_MS)).await;
                }
            }
        }
        let after = c.client.metrics().await;

        let (mut synced, mut persisted) = (0, 0);
        for (node, a) in &after {
            let b = &before[node];
            let (s, p) = (a.synced_writes - b.synced_writes, a.entries_persisted - b.entries_persisted);
            eprintln!("node {node}: {s} synced writes for {p} persisted entries ({} poll rounds)", a.poll_rounds - b.poll_rounds);
            // Every replica persisted all acknowledged entries; without
            // group commit each would have cost at least one fsync.
            assert!(s < p, "node {node}: {s} synced writes for {p} entries — proposals are not batched into poll rounds");
            synced += s;
            persisted += p;
        }
        eprintln!("{acked} proposals acknowledged; {synced} synced writes for {persisted} persisted entries across the cluster");
        assert!(persisted >= 3 * acked as u64, "every acknowledged entry is persisted on every replica eventually");
        c.shutdown().await;
    })
    .await;
}
