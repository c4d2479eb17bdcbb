//! A namespace carved out of a live range under the nemesis: the placement
//! driver's `namespace create` as the raftstore and `KvMachine` run it.
//!
//! Per seed: clients write fresh keys inside and outside the prefix to the
//! parent range; at a random step a carve of the prefix is proposed (and
//! retried until it is answered, as the server does); from then on keys
//! under the prefix are written to the new range, and now and then to the
//! parent, which must refuse them. Crashes, power losses, partitions,
//! drops and membership changes of the parent run throughout. After the
//! heal, every replica of both ranges must have applied the same log, and
//! hold every acknowledged key in the range that serves it now, with the
//! revisions it was acknowledged at; the new range's replicas must hold
//! the same data; no write under the prefix may have been acknowledged by
//! the parent after the carve.

use std::collections::BTreeMap;
use std::sync::Arc;

use meridian_kv::command::*;
use meridian_kv::KvMachine;
use meridian_raftstore::{StateMachine, StateMachineFactory};
use meridian_storage::RangeDescriptor;
use prost::Message as _;
use rand::Rng;

use crate::cluster::{Cluster, Machines, SimConfig};
use crate::random_run::{nemesis_step, FaultCounts};

const PARENT: u64 = 1;
const CHILD: u64 = 7;
const PREFIX: &[u8] = b"/a/";
/// Steps to wait for one answer before proposing again.
const ANSWER_STEPS: u64 = 200;

/// What one seed's run did and found.
#[derive(Debug, Default)]
pub struct CarveReport {
    pub seed: u64,
    /// Writes acknowledged before the carve was (under the prefix, outside).
    pub acked_before: usize,
    /// Writes under the prefix acknowledged by the new range.
    pub acked_in_child: usize,
    /// Writes under the prefix the parent refused after the carve.
    pub refused_by_parent: usize,
    /// Keys the carve moved (as its first application reported).
    pub moved_keys: u64,
    pub crashes: u64,
    pub partitions: u64,
    /// Replicas of the new range opened by applying the carve, of them
    /// over a replica created for a message first; replicas that got the
    /// new range otherwise (a leader's snapshot) make up the rest.
    pub splits_applied: u64,
    pub splits_over_uninitialized: u64,
    pub splits_missed: u64,
    pub violations: Vec<String>,
}

impl CarveReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

pub(crate) fn kv_machines() -> Machines {
    Machines::per_node(|_| {
        Arc::new(|_: &RangeDescriptor| Box::new(KvMachine::new(None)) as Box<dyn StateMachine>) as Arc<dyn StateMachineFactory>
    })
}

pub(crate) fn command(op: Op) -> Vec<u8> {
    Command { op: Some(op), wall_ms: 0 }.encode_to_vec()
}

pub(crate) fn outcome(raw: &[u8]) -> Option<Outcome> {
    Outcome::decode(raw).ok()
}

/// A write in flight: where, what, and (once applied) its revision.
struct Pending {
    node: u64,
    id: meridian_raftstore::RequestId,
    range_id: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    started: u64,
}

/// Runs one seed for `steps` steps (the carve is proposed somewhere in the
/// first half).
pub fn carve_run(seed: u64, steps: u64) -> CarveReport {
    let mut cfg = SimConfig::new(seed);
    cfg.nodes = 4;
    cfg.initial_voters = 3;
    cfg.ranges = 1;
    let mut c = Cluster::with_machines(cfg, kv_machines());
    let mut report = CarveReport { seed, ..Default::default() };
    let mut faults = FaultCounts::default();
    let nodes = c.node_ids();
    let carve_at = c.rng.gen_range(steps / 8..steps / 2);
    // key → (value, range, revision) of acknowledged writes.
    let mut acked: BTreeMap<Vec<u8>, (Vec<u8>, u64, i64)> = BTreeMap::new();
    let mut pending: Vec<Pending> = Vec::new();
    let mut carve: Option<(u64, meridian_raftstore::RequestId, u64)> = None;
    let mut carved = false;
    // The parent's log index the carve applied at.
    let mut carve_index = u64::MAX;
    let mut next = 0u64;
    let carve_op = || command(Op::Carve(CarveOp { prefix: PREFIX.to_vec(), range_id: CHILD, namespace_id: CHILD }));
    for step in 0..steps {
        // Clients: a fresh write about every third step.
        if c.rng.gen_bool(0.3) && pending.len() < 8 {
            next += 1;
            let inside = c.rng.gen_bool(0.6);
            let key = if inside { format!("/a/k{next}") } else { format!("/b/k{next}") }.into_bytes();
            // Under the prefix after the carve: the new range, and now and
            // then the parent (which must refuse).
            let range_id = if inside && carved && c.rng.gen_bool(0.8) { CHILD } else { PARENT };
            let value = format!("v{next}").into_bytes();
            if let Some(node) = c.leader_of(range_id) {
                let op = Op::Put(PutOp { key: key.clone(), value: value.clone(), ..Default::default() });
                let req = c.store(node).expect("leader is up").request(range_id);
                if let Ok(id) = c.store_mut(node).expect("up").propose(req, command(op)) {
                    c.track(node, id);
                    pending.push(Pending { node, id, range_id, key, value, started: step });
                }
            }
        }
        // The carve, proposed again until answered (it is idempotent).
        if step >= carve_at && !carved {
            let stale = carve.is_none_or(|(_, _, at)| step > at + ANSWER_STEPS);
            if stale {
                if let Some(node) = c.leader_of(PARENT) {
                    let req = c.store(node).expect("up").request(PARENT);
                    if let Ok(id) = c.store_mut(node).expect("up").propose(req, carve_op()) {
                        c.track(node, id);
                        carve = Some((node, id, step));
                    }
                }
            }
        }
        nemesis_step(&mut c, &[PARENT], &nodes, &mut faults);
        c.step();
        // Answers.
        if let Some((node, id, _)) = carve {
            if let Some(answer) = c.take_result(node, id) {
                carve = None;
                // An error (dropped, leader lost) is proposed again.
                if let Ok((index, raw)) = answer {
                    match outcome(&raw).and_then(|o| o.kind) {
                        Some(OutcomeKind::Carve(out)) => {
                            carved = true;
                            if !out.already {
                                carve_index = index;
                            }
                            if !out.already {
                                report.moved_keys = out.moved_keys;
                            }
                        }
                        // Refused while the parent is in joint consensus:
                        // proposed again, as the server does.
                        Some(OutcomeKind::Error(e)) if e.code() == meridian_codes::ErrorCode::ConfChanging => {}
                        other => report.violations.push(format!("step {step}: carve answered {other:?}")),
                    }
                }
            }
        }
        let mut still = Vec::new();
        for p in pending.drain(..) {
            match c.take_result(p.node, p.id) {
                Some(Ok((index, raw))) => match outcome(&raw).and_then(|o| o.kind.map(|k| (o.revision, k))) {
                    Some((rev, OutcomeKind::Put(_))) => {
                        if p.range_id == PARENT && p.key.starts_with(PREFIX) && index > carve_index {
                            report.violations.push(format!(
                                "step {step}: the parent acknowledged {:?} at index {index}, after the carve at {carve_index}",
                                String::from_utf8_lossy(&p.key)
                            ));
                        }
                        if p.range_id == CHILD {
                            report.acked_in_child += 1;
                        } else {
                            report.acked_before += 1;
                        }
                        acked.insert(p.key, (p.value, p.range_id, rev));
                    }
                    Some((_, OutcomeKind::Error(e))) if e.code() == meridian_codes::ErrorCode::NamespaceMoved => {
                        report.refused_by_parent += 1;
                    }
                    other => report.violations.push(format!("step {step}: put answered {other:?}")),
                },
                // Dropped or unknown: not acknowledged, so not checked.
                Some(Err(_)) => {}
                None if step < p.started + ANSWER_STEPS => still.push(p),
                None => {}
            }
        }
        pending = still;
    }
    report.crashes = faults.crashes;
    report.partitions = faults.partitions;
    finish(&mut c, &mut report, carved, &acked);
    report
}

/// Whether every replica (not dormant) of each of `ranges` applied all it
/// knows committed, all at one index, and serves reads.
pub(crate) fn settled(c: &Cluster, ranges: &[u64]) -> bool {
    ranges.iter().all(|&r| {
        let applied: Vec<(u64, u64)> =
            c.node_ids().into_iter().filter_map(|n| c.status(n, r)).filter(|s| !s.dormant).map(|s| (s.applied, s.commit)).collect();
        let serving = c.node_ids().into_iter().filter(|&n| c.status(n, r).is_some_and(|s| !s.dormant)).all(|n| {
            let store = c.store(n).expect("has a status");
            let probe = Query { kind: Some(QueryKind::Range(RangeOp { key: b"/".to_vec(), count_only: true, ..Default::default() })) };
            store.read_local(store.request(r), &probe.encode_to_vec()).is_ok()
        });
        serving && !applied.is_empty() && applied.iter().all(|(a, cm)| a >= cm && *a == applied[0].0)
    })
}

/// `q` answered by `node`'s replica of `range_id` from its own state.
pub(crate) fn read_local(c: &Cluster, node: u64, range_id: u64, q: QueryKind) -> Option<QueryAnswer> {
    let store = c.store(node)?;
    let raw = store.read_local(store.request(range_id), &Query { kind: Some(q) }.encode_to_vec()).ok()?;
    QueryAnswer::decode(raw.as_slice()).ok()
}

/// Heals, waits for both ranges to agree on every replica, and checks
/// every acknowledged key where it must be now.
fn finish(c: &mut Cluster, report: &mut CarveReport, carved: bool, acked: &BTreeMap<Vec<u8>, (Vec<u8>, u64, i64)>) {
    c.net.heal();
    for id in c.node_ids() {
        c.restart(id);
    }
    if !carved {
        // The carve never got an answer in the run: propose it once more.
        let done = c.run_until(20_000, |c| c.leader_of(PARENT).is_some());
        let node = c.leader_of(PARENT);
        match (done, node) {
            (true, Some(node)) => {
                let req = c.store(node).expect("up").request(PARENT);
                let op = command(Op::Carve(CarveOp { prefix: PREFIX.to_vec(), range_id: CHILD, namespace_id: CHILD }));
                let answered = c.store_mut(node).expect("up").propose(req, op).ok().and_then(|id| c.wait_untracked(node, id, 20_000));
                if !matches!(answered, Some(Ok(_))) {
                    report.violations.push(format!("the carve was never applied after the heal: {answered:?}"));
                    return;
                }
            }
            _ => {
                report.violations.push("the parent elected no leader after the heal".into());
                return;
            }
        }
    }
    // Wake both ranges with a write each, then wait until every replica
    // applied everything.
    for (range_id, key) in [(PARENT, b"/b/final".to_vec()), (CHILD, b"/a/final".to_vec())] {
        let mut ok = false;
        for _ in 0..50 {
            if !c.run_until(2_000, |c| c.leader_of(range_id).is_some()) {
                continue;
            }
            let node = c.leader_of(range_id).expect("checked");
            let req = c.store(node).expect("up").request(range_id);
            let op = command(Op::Put(PutOp { key: key.clone(), value: b"x".to_vec(), ..Default::default() }));
            if let Ok(id) = c.store_mut(node).expect("up").propose(req, op) {
                if matches!(c.wait_untracked(node, id, 2_000), Some(Ok(_))) {
                    ok = true;
                    break;
                }
            }
        }
        if !ok {
            report.violations.push(format!("range {range_id} accepted no write after the heal"));
            return;
        }
    }
    let agreed = c.run_until(20_000, |c| settled(c, &[PARENT, CHILD]));
    if !agreed {
        report.violations.push(format!("replicas did not converge: {}", c.describe()));
        return;
    }
    let mut hashes: Vec<(u64, u32)> = Vec::new();
    for node in c.node_ids() {
        for (key, (value, _, rev)) in acked {
            let serving = if key.starts_with(PREFIX) { CHILD } else { PARENT };
            if c.status(node, serving).is_none_or(|s| s.dormant) {
                continue;
            }
            let got = read_local(c, node, serving, QueryKind::Range(RangeOp { key: key.clone(), ..Default::default() }));
            let kv = got.and_then(|a| a.range).and_then(|r| r.kvs.into_iter().next());
            match kv {
                Some(kv) if kv.value == *value && kv.mod_revision == *rev => {}
                other => report.violations.push(format!(
                    "node {node} range {serving}: acknowledged {:?} (revision {rev}) reads {other:?}",
                    String::from_utf8_lossy(key)
                )),
            }
        }
        if c.status(node, CHILD).is_some_and(|s| !s.dormant) {
            if let Some(h) = read_local(c, node, CHILD, QueryKind::HashKv(HashKvOp { revision: 0 })).and_then(|a| a.hash) {
                hashes.push((node, h.hash));
            }
            let refused = read_local(c, node, PARENT, QueryKind::Range(RangeOp { key: b"/a/k1".to_vec(), ..Default::default() }));
            if c.status(node, PARENT).is_some_and(|s| !s.dormant)
                && refused.as_ref().and_then(|a| a.error.as_ref()).map(|e| e.code()) != Some(meridian_codes::ErrorCode::NamespaceMoved)
            {
                report.violations.push(format!("node {node}: the parent serves the carved prefix: {refused:?}"));
            }
        }
    }
    if hashes.windows(2).any(|w| w[0].1 != w[1].1) {
        report.violations.push(format!("the new range's replicas hold different data: {hashes:?}"));
    }
    for n in c.node_ids() {
        if let Some(m) = c.store(n).map(|s| s.metrics()) {
            report.splits_applied += m.splits_applied;
            report.splits_over_uninitialized += m.splits_over_uninitialized;
            report.splits_missed += m.splits_missed;
        }
    }
    report.violations.truncate(20);
}
