//! The KV simulation: the register simulation's cluster and nemesis with
//! every store running `meridian_kv::KvMachine`, the server's lease keeper
//! on the simulated clock, and seeded clients of leases, locks and keys.
//!
//! ```text
//!   seed ─► ChaCha8 RNG ─► clients (workload) + nemesis (random_run's)
//!                                   │ LeaseGrant / keepalive / LockAcquire
//!                                   ▼ LockRelease / LockCancel / Put / Delete
//!   Cluster ── Store (node n) ── Recording(KvMachine) ─► NodeRecorder
//!      ▲                                                     │ every applied entry:
//!      │ LeaseExpire / LockDelayEnd / LeaseCheckpoint         │ events, lock events,
//!   Keeper (node n): LeaseClock on ticks × 100 ms             │ outcome, lock table
//!                                                            ▼
//!                         KvChecker: one holder, fencing tokens, lease expiry,
//!                         lock-delay, identical event streams
//! ```
//!
//! A tick is 100 ms, as the server's default tick and keeper interval. The
//! cluster's own [`crate::Checker`] (election safety, the same entry at the
//! same index everywhere, acknowledged entries never replaced) runs too.

mod checker;
mod keeper;
mod recorder;
mod workload;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use meridian_kv::command::{Command, LocksOp, Op, PutOp, Query, QueryAnswer, QueryKind};
use meridian_kv::{keys as kvkeys, DataRead, EngineRead};
use meridian_raftstore::data_bounds;
use meridian_storage::Cf;
use prost::Message as _;

pub use checker::{KvChecker, KvStats};
pub use keeper::{Keeper, KeeperCounts};
pub use recorder::{AppliedKv, LockDelta, NodeRecorder, Published};
pub use workload::WorkloadCounts;

use crate::cluster::{Cluster, Machines, SimConfig};
use crate::random_run::{nemesis_step, FaultCounts};
use workload::Workload;

/// Simulated ms per tick (the server's default tick).
pub const TICK_MS: u64 = 100;
/// Ticks of the final drain: every client is gone and the network healed;
/// every lease must expire (the longest TTL is 30 s; a new leader may
/// start it over) and every lock-delay end (3 s at most) within it.
const DRAIN_TICKS: u64 = 900;
/// Steps between reads of every replica's lock table.
const TABLE_CHECK_EVERY: u64 = 5;

/// What a run did and found.
#[derive(Debug, Default, Clone)]
pub struct KvRunReport {
    pub seed: u64,
    pub steps: u64,
    pub stats: KvStats,
    pub workload: WorkloadCounts,
    pub keeper: KeeperCounts,
    pub crashes: u64,
    pub power_losses: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    pub violations: Vec<String>,
}

impl KvRunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Recorders of every node's current store start.
type Recorders = Arc<Mutex<BTreeMap<u64, Arc<NodeRecorder>>>>;

struct KvSim {
    c: Cluster,
    recorders: Recorders,
    /// node → the keeper of its current store start.
    keepers: BTreeMap<u64, Keeper>,
    checker: KvChecker,
    workload: Workload,
    keeper_counts: KeeperCounts,
}

fn cluster(cfg: SimConfig, recorders: &Recorders) -> Cluster {
    let recs = recorders.clone();
    let machines = Machines::per_node(move |node| {
        let mut recs = recs.lock().expect("recorders");
        let start = recs.get(&node).map_or(1, |r| r.incarnation() + 1);
        let rec = NodeRecorder::new(node, start);
        recs.insert(node, rec.clone());
        rec.factory()
    });
    Cluster::with_machines(cfg, machines)
}

impl KvSim {
    fn new(cfg: SimConfig) -> Self {
        let recorders: Recorders = Arc::default();
        let c = cluster(cfg, &recorders);
        KvSim {
            c,
            recorders,
            keepers: BTreeMap::new(),
            checker: KvChecker::default(),
            workload: Workload::default(),
            keeper_counts: KeeperCounts::default(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.c.now() * TICK_MS
    }

    /// One tick: the cluster steps, what every replica applied is checked,
    /// clients hear answers, then every live node's keeper runs its round.
    fn tick(&mut self, keeper_on: bool) {
        self.c.step();
        let now_ms = self.now_ms();
        let recorders: Vec<Arc<NodeRecorder>> = self.recorders.lock().expect("recorders").values().cloned().collect();
        for rec in recorders {
            for a in rec.take() {
                if self.checker.observe_applied(now_ms, &a) {
                    if keeper::tracing_on() && a.locks.is_some() {
                        eprintln!(
                            "{now_ms} ms: node {} first applies range {} index {}: {:?} -> {:?}",
                            a.node,
                            a.range_id,
                            a.index,
                            a.op(),
                            a.published
                        );
                    }
                    self.workload.observe_first_apply(&a);
                }
            }
        }
        self.sync_keepers();
        self.workload.collect(&mut self.c, &mut self.keepers, &mut self.checker);
        if keeper_on {
            for k in self.keepers.values_mut() {
                k.round(&mut self.c, now_ms, &mut self.checker, &mut self.keeper_counts);
            }
        }
        if self.c.now().is_multiple_of(TABLE_CHECK_EVERY) {
            self.check_tables();
        }
    }

    fn starts(&self) -> BTreeMap<u64, u64> {
        self.recorders.lock().expect("recorders").iter().map(|(n, r)| (*n, r.incarnation())).collect()
    }

    /// A keeper lives as long as its node's process: a crash loses it, a
    /// restart starts a new one.
    fn sync_keepers(&mut self) {
        let starts = self.starts();
        for n in self.c.node_ids() {
            let start = starts.get(&n).copied().unwrap_or(0);
            if !self.c.is_up(n) {
                self.keepers.remove(&n);
            } else if self.keepers.get(&n).is_none_or(|k| k.start() != start) {
                self.keepers.insert(n, Keeper::new(n, start));
            }
        }
    }

    /// Every live, serving replica's lock table through the `KvMachine`
    /// query API, with its leases and its session index.
    fn check_tables(&mut self) {
        let now_ms = self.now_ms();
        for n in self.c.node_ids() {
            let Some(store) = self.c.store(n) else { continue };
            for st in store.statuses().into_iter().filter(|s| !s.dormant && !s.installing) {
                let r = st.range_id;
                let ask = |kind: QueryKind| -> Option<QueryAnswer> {
                    let q = Query { kind: Some(kind) }.encode_to_vec();
                    let raw = store.read_local(store.request(r), &q).ok()?;
                    QueryAnswer::decode(raw.as_slice()).ok().filter(|a| a.error.is_none())
                };
                let locks = ask(QueryKind::Locks(LocksOp { from_name: Vec::new(), limit: 10_000 }));
                let leases = ask(QueryKind::Leases(true));
                let (Some(locks), Some(leases)) = (locks, leases) else {
                    self.checker.fail_external(format!("{now_ms} ms: node {n} range {r}: lock table or leases unreadable"));
                    continue;
                };
                let index = session_index(&EngineRead { engine: &**store.engine(), namespace_id: r });
                let leases: BTreeSet<i64> = leases.lease_ids.into_iter().collect();
                self.checker.observe_lock_table(now_ms, n, r, &locks.locks, &leases, &index);
            }
        }
    }

    /// The end of a run: every client dies and the network heals; every
    /// lease must expire and every lock-delay end (liveness), then every
    /// replica of a range must hold the same data.
    fn finish(&mut self) {
        self.workload.abandon_all();
        self.c.net.heal();
        for n in self.c.node_ids() {
            self.c.restart(n);
        }
        let mut drained = false;
        for _ in 0..DRAIN_TICKS {
            self.tick(true);
            if self.c.now().is_multiple_of(10) && self.idle() {
                drained = true;
                break;
            }
        }
        if !drained {
            let left = self.leftovers();
            self.checker.fail_external(format!(
                "{} ms: liveness: {DRAIN_TICKS} ticks after every client died on a healed network, still {left}",
                self.now_ms()
            ));
        }
        // Quiet: keepers off; one write per range so each leader has
        // committed in its term, then every replica catches up.
        for r in self.c.range_ids() {
            let op = Op::Put(PutOp { key: format!("/r{r:04}/final").into_bytes(), value: b"end".to_vec(), ..Default::default() });
            let cmd = Command { op: Some(op), wall_ms: 0 }.encode_to_vec();
            if !self.write_and_wait(r, cmd) {
                self.checker.fail_external(format!("{} ms: range {r} accepted no write after heal", self.now_ms()));
                return;
            }
        }
        let mut caught_up = false;
        for _ in 0..2_000 {
            if self.c.replicas_caught_up() {
                caught_up = true;
                break;
            }
            self.tick(false);
        }
        if !caught_up {
            self.checker.fail_external(format!("{} ms: replicas did not converge after heal: {}", self.now_ms(), self.c.describe()));
            return;
        }
        self.check_tables();
        self.check_same_data();
    }

    fn write_and_wait(&mut self, r: u64, cmd: Vec<u8>) -> bool {
        for _ in 0..20 {
            if let Some((node, req)) = self.c.propose(r, cmd.clone()) {
                for _ in 0..200 {
                    self.tick(false);
                    match self.c.take_result(node, req) {
                        Some(Ok(_)) => return true,
                        Some(Err(_)) => break,
                        None if !self.c.is_up(node) => break,
                        None => {}
                    }
                }
            } else {
                self.tick(false);
            }
        }
        false
    }

    /// No lease and no lock left on any range's leader.
    fn idle(&self) -> bool {
        self.leftovers().is_empty()
    }

    fn leftovers(&self) -> String {
        let mut out = Vec::new();
        for r in self.c.range_ids() {
            let Some(l) = self.c.leader_of(r) else {
                out.push(format!("range {r} has no leader"));
                continue;
            };
            let Some(store) = self.c.store(l) else { continue };
            let read = EngineRead { engine: &**store.engine(), namespace_id: r };
            let leases = meridian_kv::mvcc::Mvcc::leases(&read).unwrap_or_default();
            let locks = meridian_kv::locks::list(&read, b"", 10_000).unwrap_or_default();
            if !leases.is_empty() {
                out.push(format!("range {r} keeps leases {:?}", leases.iter().map(|l| l.id).collect::<Vec<_>>()));
            }
            if !locks.is_empty() {
                out.push(format!("range {r} keeps locks {locks:?}"));
            }
        }
        out.join("; ")
    }

    /// Every serving replica of a range holds the same data (keys,
    /// history, event log, leases, locks), byte for byte.
    fn check_same_data(&mut self) {
        for r in self.c.range_ids() {
            let mut seen: Option<(u64, u64)> = None;
            for n in self.c.node_ids() {
                let Some(store) = self.c.store(n) else { continue };
                if store.range_status(r).is_none_or(|s| s.dormant) {
                    continue;
                }
                let d = digest(&**store.engine(), r);
                match seen {
                    Some((other, od)) if od != d => {
                        self.checker.fail_external(format!("range {r}: replicas on nodes {other} and {n} hold different data"));
                    }
                    _ => seen = Some((n, d)),
                }
            }
        }
    }
}

/// (session, lock name) pairs of a range's session index.
fn session_index(r: &dyn DataRead) -> BTreeSet<(i64, Vec<u8>)> {
    let mut out = BTreeSet::new();
    let _ = r.scan(&[kvkeys::SESSION_LOCK], &[kvkeys::SESSION_LOCK + 1], &mut |k, _| {
        if k.len() >= 9 {
            let session = i64::from_be_bytes(k[1..9].try_into().expect("8 bytes"));
            out.insert((session, k[9..].to_vec()));
        }
        true
    });
    out
}

/// FNV-1a over a range's data.
fn digest(engine: &dyn meridian_storage::Engine, range_id: u64) -> u64 {
    let (s, e) = data_bounds(range_id, b"", b"");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let _ = engine.scan(Cf::Data, &s, &e, &mut |k, v| {
        for b in (k.len() as u64).to_le_bytes().iter().chain(k).chain(&(v.len() as u64).to_le_bytes()).chain(v) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x100_0000_01b3);
        }
        true
    });
    h
}

/// Runs `steps` ticks of clients of leases, locks and keys against `cfg`'s
/// cluster, with the server's lease keeper on every node and the register
/// run's nemesis; then lets every client die on a healed network and checks
/// that every lease expires and every replica holds the same data. Every
/// invariant of [`KvChecker`] is checked on every entry every replica
/// applies, and every replica's lock table every few ticks.
pub fn kv_random_run(cfg: SimConfig, steps: u64) -> KvRunReport {
    let seed = cfg.seed;
    let mut sim = KvSim::new(cfg);
    let ranges = sim.c.range_ids();
    let nodes = sim.c.node_ids();
    let mut faults = FaultCounts::default();
    sim.sync_keepers();
    for _ in 0..steps {
        sim.workload.act(&mut sim.c, &mut sim.keepers, &mut sim.checker);
        nemesis_step(&mut sim.c, &ranges, &nodes, &mut faults);
        sim.tick(true);
    }
    sim.finish();
    let mut violations: Vec<String> = sim.c.checker.violations().to_vec();
    violations.extend(sim.checker.violations().iter().cloned());
    if !violations.is_empty() {
        violations.push(format!("final state: {}", sim.c.describe()));
    }
    KvRunReport {
        seed,
        steps,
        stats: sim.checker.stats,
        workload: sim.workload.counts,
        keeper: sim.keeper_counts,
        crashes: faults.crashes,
        power_losses: faults.power_losses,
        partitions: faults.partitions,
        membership_changes: faults.membership_changes,
        violations,
    }
}
