//! A namespace merged back into its parent's group, then split out again,
//! under the nemesis: the placement driver's `namespace merge` and
//! `namespace split` as the raftstore and `KvMachine` run them.
//!
//! Per seed: the prefix is carved out of the parent first (range
//! [`CHILD`]); clients write fresh keys inside and outside it. At a random
//! step the merge starts: a seal for the merge is proposed to the child
//! until answered (it exports the child's keys, again on a retry), then an
//! absorb of those keys to the parent until answered. From then on keys
//! under the prefix go to the parent. Later the prefix is split out again
//! (a carve to range [`SECOND`]). Now and then a write goes to a range that
//! no longer serves the prefix, which must refuse it. Crashes, power
//! losses, partitions, drops and membership changes of the parent run
//! throughout.
//!
//! Checked: no range acknowledged a write under the prefix after it
//! stopped serving it (the child after its seal, the parent after the
//! split); every write under the prefix took a revision above every one
//! acknowledged before it (fencing tokens never go back across the merge
//! and the split); after the heal every acknowledged key reads, on every
//! replica of the range serving it now, with the value and revision it was
//! acknowledged at, and the replicas of that range hold the same data.

use std::collections::BTreeMap;

use meridian_kv::command::*;
use meridian_kv::mvcc::KeyValue;
use rand::Rng;

use crate::carve_run::{command, kv_machines, outcome, read_local, settled};
use crate::cluster::{Cluster, SimConfig};
use crate::random_run::{nemesis_step, FaultCounts};

const PARENT: u64 = 1;
/// The namespace's first group (carved out at the start).
pub const CHILD: u64 = 7;
/// Its group after the split that follows the merge.
pub const SECOND: u64 = 8;
const PREFIX: &[u8] = b"/a/";
/// Steps to wait for one answer before proposing again.
const ANSWER_STEPS: u64 = 200;

/// What one seed's run did and found.
#[derive(Debug, Default)]
pub struct MergeReport {
    pub seed: u64,
    /// Writes under the prefix acknowledged by each of its three homes.
    pub acked_in_child: usize,
    pub acked_merged: usize,
    pub acked_in_second: usize,
    /// Keys the seal exported (its first answer).
    pub merged_keys: usize,
    /// Writes refused by a range that no longer served the prefix.
    pub refused: usize,
    /// The run got as far as the split after the merge.
    pub split_again: bool,
    pub crashes: u64,
    pub partitions: u64,
    pub violations: Vec<String>,
}

impl MergeReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Where the namespace is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Carving,
    Carved,
    Sealing,
    Absorbing,
    Merged,
    Splitting,
    Split,
}

/// The range serving the prefix in `phase` (the child while sealing: it
/// answers, refusing once sealed).
fn home(phase: Phase) -> u64 {
    match phase {
        Phase::Carving | Phase::Absorbing | Phase::Merged | Phase::Splitting => PARENT,
        Phase::Carved | Phase::Sealing => CHILD,
        Phase::Split => SECOND,
    }
}

struct Pending {
    node: u64,
    id: meridian_raftstore::RequestId,
    range_id: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    started: u64,
}

/// One admin command in flight: the node, the request, when proposed.
type InFlight = Option<(u64, meridian_raftstore::RequestId, u64)>;

/// Runs one seed for `steps` steps.
pub fn merge_run(seed: u64, steps: u64) -> MergeReport {
    let mut cfg = SimConfig::new(seed);
    cfg.nodes = 4;
    cfg.initial_voters = 3;
    cfg.ranges = 1;
    let mut c = Cluster::with_machines(cfg, kv_machines());
    let mut report = MergeReport { seed, ..Default::default() };
    let mut faults = FaultCounts::default();
    let nodes = c.node_ids();
    let merge_at = c.rng.gen_range(steps / 6..steps / 3);
    let split_at = c.rng.gen_range(steps / 2..steps * 3 / 4);
    let mut phase = Phase::Carving;
    let mut admin: InFlight = None;
    // The seal's answer: the keys and the child's last revision.
    let mut export: Option<(Vec<KeyValue>, i64)> = None;
    // The log index at which each range stopped serving the prefix.
    let mut stopped: BTreeMap<u64, u64> = BTreeMap::new();
    // key → (value, range, revision) of acknowledged writes.
    let mut acked: BTreeMap<Vec<u8>, (Vec<u8>, u64, i64)> = BTreeMap::new();
    // The lowest and highest revision acknowledged under the prefix by
    // each later home: the child (1), the parent after the merge (2), the
    // second group (3).
    let mut spans: BTreeMap<u8, (i64, i64)> = BTreeMap::new();
    // The parent's indexes of the first carve and of the absorb, when an
    // answer says it applied there (not a retry's): between them the
    // parent must refuse the prefix.
    let mut carved_at = u64::MAX;
    let mut absorbed_at = u64::MAX;
    let mut pending: Vec<Pending> = Vec::new();
    let mut next = 0u64;
    for step in 0..steps {
        if c.rng.gen_bool(0.3) && pending.len() < 8 {
            next += 1;
            let inside = c.rng.gen_bool(0.6);
            let key = if inside { format!("/a/k{next}") } else { format!("/b/k{next}") }.into_bytes();
            let range_id = if !inside {
                PARENT
            } else if c.rng.gen_bool(0.15) {
                // A client with a stale route.
                [PARENT, CHILD, SECOND][c.rng.gen_range(0..3)]
            } else {
                home(phase)
            };
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
        if phase == Phase::Carved && step >= merge_at {
            phase = Phase::Sealing;
        }
        if phase == Phase::Merged && step >= split_at {
            phase = Phase::Splitting;
        }
        // The admin command of the phase, proposed again until answered
        // (each is idempotent).
        let admin_op = match phase {
            Phase::Carving => Some((PARENT, Op::Carve(CarveOp { prefix: PREFIX.to_vec(), range_id: CHILD, namespace_id: CHILD }))),
            Phase::Sealing => Some((CHILD, Op::Seal(SealOp { prefix: PREFIX.to_vec(), force: false, merge: true }))),
            Phase::Absorbing => {
                let (kvs, floor) = export.clone().expect("sealed");
                Some((PARENT, Op::Absorb(AbsorbOp { prefix: PREFIX.to_vec(), namespace_id: CHILD, revision_floor: floor, kvs })))
            }
            Phase::Splitting => Some((PARENT, Op::Carve(CarveOp { prefix: PREFIX.to_vec(), range_id: SECOND, namespace_id: SECOND }))),
            _ => None,
        };
        if let Some((range_id, op)) = admin_op {
            if admin.is_none_or(|(_, _, at)| step > at + ANSWER_STEPS) {
                if let Some(node) = c.leader_of(range_id) {
                    let req = c.store(node).expect("up").request(range_id);
                    if let Ok(id) = c.store_mut(node).expect("up").propose(req, command(op)) {
                        c.track(node, id);
                        admin = Some((node, id, step));
                    }
                }
            }
        }
        nemesis_step(&mut c, &[PARENT], &nodes, &mut faults);
        c.step();
        if let Some((node, id, _)) = admin {
            if let Some(answer) = c.take_result(node, id) {
                admin = None;
                if let Ok((index, raw)) = answer {
                    let o = outcome(&raw);
                    let revision = o.as_ref().map_or(0, |o| o.revision);
                    match (phase, o.and_then(|o| o.kind)) {
                        // Refused while the parent is in joint consensus:
                        // proposed again, as the server does.
                        (_, Some(OutcomeKind::Error(e))) if e.code() == meridian_codes::ErrorCode::ConfChanging => {}
                        (Phase::Carving, Some(OutcomeKind::Carve(out))) => {
                            if !out.already {
                                carved_at = index;
                            }
                            phase = Phase::Carved;
                        }
                        (Phase::Splitting, Some(OutcomeKind::Carve(_))) => {
                            // At or after the index it applied at (a retry's
                            // answer comes later): no false alarm.
                            stopped.entry(PARENT).or_insert(index);
                            phase = Phase::Split;
                            report.split_again = true;
                        }
                        (Phase::Sealing, Some(OutcomeKind::Sealed(s))) => {
                            stopped.entry(CHILD).or_insert(index);
                            report.merged_keys = s.kvs.len();
                            export = Some((s.kvs, revision));
                            phase = Phase::Absorbing;
                        }
                        (Phase::Absorbing, Some(OutcomeKind::Done(applied))) => {
                            if applied {
                                absorbed_at = index;
                            }
                            phase = Phase::Merged;
                        }
                        (p, other) => report.violations.push(format!("step {step}: {p:?} answered {other:?}")),
                    }
                }
            }
        }
        let mut still = Vec::new();
        for p in pending.drain(..) {
            match c.take_result(p.node, p.id) {
                Some(Ok((index, raw))) => match outcome(&raw).and_then(|o| o.kind.map(|k| (o.revision, k))) {
                    Some((rev, OutcomeKind::Put(_))) => {
                        if p.key.starts_with(PREFIX) {
                            if p.range_id == PARENT && carved_at < index && index < absorbed_at && absorbed_at != u64::MAX {
                                report.violations.push(format!(
                                    "step {step}: the parent acknowledged {:?} at index {index}, while the prefix was carved out ({carved_at}..{absorbed_at})",
                                    String::from_utf8_lossy(&p.key)
                                ));
                            }
                            if stopped.get(&p.range_id).is_some_and(|&at| index > at) {
                                report.violations.push(format!(
                                    "step {step}: range {} acknowledged {:?} at index {index}, after it stopped serving the prefix at {}",
                                    p.range_id,
                                    String::from_utf8_lossy(&p.key),
                                    stopped[&p.range_id]
                                ));
                            }
                            // Every revision a later home gives is above every
                            // one an earlier home gave (fencing tokens).
                            let period = match p.range_id {
                                CHILD => Some(1u8),
                                SECOND => Some(3),
                                _ if index > absorbed_at => Some(2),
                                _ => None,
                            };
                            if let Some(period) = period {
                                let earlier_above = spans.range(..period).find(|(_, (_, hi))| *hi >= rev);
                                let later_below = spans.range(period + 1..).find(|(_, (lo, _))| *lo <= rev);
                                if let Some((q, span)) = earlier_above.or(later_below) {
                                    report.violations.push(format!(
                                        "step {step}: {:?} took revision {rev} in range {} (home {period}); home {q} acknowledged revisions {span:?}",
                                        String::from_utf8_lossy(&p.key),
                                        p.range_id
                                    ));
                                }
                                let e = spans.entry(period).or_insert((rev, rev));
                                *e = (e.0.min(rev), e.1.max(rev));
                            }
                            match p.range_id {
                                CHILD => report.acked_in_child += 1,
                                SECOND => report.acked_in_second += 1,
                                _ if phase >= Phase::Absorbing => report.acked_merged += 1,
                                _ => {}
                            }
                        }
                        acked.insert(p.key, (p.value, p.range_id, rev));
                    }
                    Some((_, OutcomeKind::Error(e))) if e.code() == meridian_codes::ErrorCode::NamespaceMoved => report.refused += 1,
                    other => report.violations.push(format!("step {step}: put to range {} answered {other:?}", p.range_id)),
                },
                Some(Err(_)) => {}
                None if step < p.started + ANSWER_STEPS => still.push(p),
                None => {}
            }
        }
        pending = still;
    }
    report.crashes = faults.crashes;
    report.partitions = faults.partitions;
    finish(&mut c, &mut report, phase, export, &acked);
    report
}

/// Proposes `op` to `range_id` after the heal until it is answered with
/// anything but a retryable refusal; the answer.
fn settle(c: &mut Cluster, range_id: u64, op: &Op) -> Option<Outcome> {
    for _ in 0..50 {
        if !c.run_until(2_000, |c| c.leader_of(range_id).is_some()) {
            continue;
        }
        let node = c.leader_of(range_id).expect("checked");
        let req = c.store(node).expect("up").request(range_id);
        if let Ok(id) = c.store_mut(node).expect("up").propose(req, command(op.clone())) {
            if let Some(Ok((_, raw))) = c.wait_untracked(node, id, 2_000) {
                let o = outcome(&raw)?;
                if !matches!(&o.kind, Some(OutcomeKind::Error(e)) if e.code() == meridian_codes::ErrorCode::ConfChanging) {
                    return Some(o);
                }
            }
        }
    }
    None
}

/// Heals, finishes the merge if the run cut it short, waits for the
/// serving range's replicas to agree, and checks every acknowledged key.
fn finish(
    c: &mut Cluster,
    report: &mut MergeReport,
    phase: Phase,
    export: Option<(Vec<KeyValue>, i64)>,
    acked: &BTreeMap<Vec<u8>, (Vec<u8>, u64, i64)>,
) {
    c.net.heal();
    for id in c.node_ids() {
        c.restart(id);
    }
    let mut phase = phase;
    let mut export = export;
    if phase == Phase::Carving {
        if settle(c, PARENT, &Op::Carve(CarveOp { prefix: PREFIX.to_vec(), range_id: CHILD, namespace_id: CHILD })).is_none() {
            report.violations.push("the carve was never applied after the heal".into());
            return;
        }
        phase = Phase::Carved;
    }
    if phase == Phase::Sealing {
        match settle(c, CHILD, &Op::Seal(SealOp { prefix: PREFIX.to_vec(), force: false, merge: true })) {
            Some(Outcome { revision, kind: Some(OutcomeKind::Sealed(s)) }) => export = Some((s.kvs, revision)),
            other => {
                report.violations.push(format!("the seal was never applied after the heal: {other:?}"));
                return;
            }
        }
        phase = Phase::Absorbing;
    }
    if phase == Phase::Absorbing {
        let (kvs, floor) = export.expect("sealed");
        let op = Op::Absorb(AbsorbOp { prefix: PREFIX.to_vec(), namespace_id: CHILD, revision_floor: floor, kvs });
        if !matches!(settle(c, PARENT, &op), Some(Outcome { kind: Some(OutcomeKind::Done(_)), .. })) {
            report.violations.push("the absorb was never applied after the heal".into());
            return;
        }
        phase = Phase::Merged;
    }
    if phase == Phase::Splitting {
        let op = Op::Carve(CarveOp { prefix: PREFIX.to_vec(), range_id: SECOND, namespace_id: SECOND });
        if !matches!(settle(c, PARENT, &op), Some(Outcome { kind: Some(OutcomeKind::Carve(_)), .. })) {
            report.violations.push("the split was never applied after the heal".into());
            return;
        }
        phase = Phase::Split;
    }
    let serving = home(phase);
    // Wake the ranges with a write each, then wait until every replica
    // applied everything.
    for (range_id, key) in [(PARENT, b"/b/final".to_vec()), (serving, b"/a/final".to_vec())] {
        let op = Op::Put(PutOp { key, value: b"x".to_vec(), ..Default::default() });
        if !matches!(settle(c, range_id, &op), Some(Outcome { kind: Some(OutcomeKind::Put(_)), .. })) {
            report.violations.push(format!("range {range_id} accepted no write after the heal"));
            return;
        }
    }
    let agreed = c.run_until(20_000, |c| settled(c, &[PARENT, serving]));
    if !agreed {
        report.violations.push(format!("replicas did not converge: {}", c.describe()));
        return;
    }
    let mut views: Vec<(u64, Vec<KeyValue>)> = Vec::new();
    for node in c.node_ids() {
        for (key, (value, _, rev)) in acked {
            let range = if key.starts_with(PREFIX) { serving } else { PARENT };
            if c.status(node, range).is_none_or(|s| s.dormant) {
                continue;
            }
            let got = read_local(c, node, range, QueryKind::Range(RangeOp { key: key.clone(), ..Default::default() }));
            let now = got.as_ref().map_or(0, |a| a.revision);
            let kv = got.and_then(|a| a.range).and_then(|r| r.kvs.into_iter().next());
            match kv {
                Some(kv) if kv.value == *value && kv.mod_revision == *rev => {}
                other => report.violations.push(format!(
                    "node {node} range {range}: acknowledged {:?} (revision {rev}) reads {other:?}",
                    String::from_utf8_lossy(key)
                )),
            }
            // The same through the history, at the range's current revision
            // named (what a merge's moved history must answer too).
            let at = read_local(c, node, range, QueryKind::Range(RangeOp { key: key.clone(), revision: now, ..Default::default() }));
            let kv_at = at.as_ref().and_then(|a| a.range.as_ref()).and_then(|r| r.kvs.first());
            if !kv_at.is_some_and(|kv| kv.value == *value && kv.mod_revision == *rev) {
                report.violations.push(format!(
                    "node {node} range {range}: acknowledged {:?} (revision {rev}) reads {at:?} at revision {now}",
                    String::from_utf8_lossy(key)
                ));
            }
        }
        if c.status(node, serving).is_some_and(|s| !s.dormant) {
            let all =
                QueryKind::Range(RangeOp { key: PREFIX.to_vec(), range_end: meridian_kv::keys::prefix_end(PREFIX), ..Default::default() });
            if let Some(r) = read_local(c, node, serving, all).and_then(|a| a.range) {
                views.push((node, r.kvs));
            }
        }
    }
    if views.windows(2).any(|w| w[0].1 != w[1].1) {
        report.violations.push(format!("the replicas of range {serving} hold different keys under the prefix"));
    }
    report.violations.truncate(20);
}
