//! The forced-promotion run: a zone-survival range's voters all live in
//! one region (nodes 1-3) and a read replica (learner) in another (node 4).
//! Writes flow, the learner is now and then cut off from the home region
//! (so it lags) and the home voters change now and then (one removed,
//! added back as a learner, promoted), then the home region is lost at once and the operator
//! promotes the learner by force (`Store::force_promote`). Checked:
//!
//! - a replica whose log holds a membership change past what it applied
//!   (the lost voters' change, cut off with them) is refused, and nothing
//!   changes;
//! - the promoted replica leads within an election's time and takes
//!   writes, alone, at once;
//! - every write acknowledged at or below the index it knew committed is
//!   still there, on every replica the new lineage ends with (what the lost
//!   voters acknowledged past it is the accepted loss: the checker forgets
//!   it, [`Checker::accept_loss`](crate::Checker::accept_loss));
//! - the lost region comes back: one of its nodes, left alone, is
//!   superseded in-band (the new leader adds it back; its replica of the
//!   old lineage is destroyed and filled afresh by snapshot), the others
//!   are collected as the server's collector does from the catalog
//!   (`Retirement::Superseded`) before they run; the new lineage then adds
//!   them all back and makes two of them voters;
//! - every replica converges to the same log and data, all of them in the
//!   new generation, and no invariant of the simulation is broken.

use rand::Rng;

use meridian_raftstore::raft_types::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
use meridian_raftstore::test_machine::put_command;
use meridian_raftstore::{generation, Promotion, RaftstoreError, Retirement};

use crate::cluster::{Cluster, SimConfig};

/// The home region (every voter) and the read replica's node.
pub const HOME: [u64; 3] = [1, 2, 3];
pub const READ_REPLICA: u64 = 4;
const RANGE: u64 = 1;

/// What one forced-promotion run saw.
#[derive(Debug, Default, Clone)]
pub struct PromoteReport {
    pub seed: u64,
    /// Writes acknowledged before the home region was lost.
    pub acked_before: usize,
    /// Of them, the ones past what the read replica knew committed: lost,
    /// as the operator accepted.
    pub lost: usize,
    /// What the promotion reported.
    pub promotion: Option<Promotion>,
    /// Steps from the promotion to the first write it acknowledged.
    pub steps_to_first_write: u64,
    /// Membership changes of the home region's voters proposed during the
    /// writes (a voter removed, added back as a learner, promoted).
    pub membership_changes: u64,
    /// The promotion was refused: the replica's log held a membership
    /// change past what it applied (checked to change nothing).
    pub refused: bool,
    pub violations: Vec<String>,
}

impl PromoteReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// A forced-promotion run from `seed`, with `writes_steps` steps of writes
/// before the home region is lost.
pub fn promote_run(seed: u64, writes_steps: u64) -> PromoteReport {
    let mut cfg = SimConfig::new(seed);
    cfg.nodes = 4;
    cfg.initial_voters = 3;
    let mut c = Cluster::new(cfg);
    let mut report = PromoteReport { seed, ..Default::default() };

    // The read replica joins.
    if !add(&mut c, ConfChangeType::AddLearnerNode, READ_REPLICA) {
        fail(&mut c, "the read replica was never added".into());
        return finish(c, report);
    }

    // Writes, with the read replica cut off from the home region now and
    // then (it lags, and the promotion loses what it missed).
    let mut pending = Vec::new();
    let mut cut = false;
    for _ in 0..writes_steps {
        if c.rng.gen_bool(0.5) {
            let (_, cmd) = c.fresh_put(RANGE);
            if let Some(p) = c.propose(RANGE, cmd) {
                pending.push(p);
            }
        }
        if c.rng.gen_bool(0.004) {
            home_membership_step(&mut c);
            report.membership_changes += 1;
        }
        if c.rng.gen_bool(0.01) {
            if cut {
                c.net.heal();
            } else {
                c.net.partition(&[READ_REPLICA], &HOME);
            }
            cut = !cut;
        }
        c.step();
        pending.retain(|(n, id)| c.take_result(*n, *id).is_none());
    }
    report.acked_before = c.checker.acked_count();

    // The home region is lost at once; the network heals around it.
    for n in HOME {
        c.crash(n);
    }
    c.net.heal();
    let wait = c.rng.gen_range(1..30);
    c.run(wait);

    // The operator promotes the read replica (asked again while it has
    // writes on their way to disk or moves a snapshot into place).
    let mut promotion = None;
    for _ in 0..100 {
        match c.store_mut(READ_REPLICA).map(|s| s.force_promote(RANGE, Some(put_command(b"/r0001/promoted", b"1")))) {
            Some(Ok(p)) => {
                promotion = Some(p);
                break;
            }
            Some(Err(RaftstoreError::TooBusy { .. } | RaftstoreError::SnapshotInstalling { .. })) => c.step(),
            // The lost voters' membership change in its log past what it
            // applied: refused, and nothing changed.
            Some(Err(RaftstoreError::InvalidRequest { reason, .. })) if reason.contains("membership change of the lost voters") => {
                let st = c.status(READ_REPLICA, RANGE);
                if st.as_ref().is_none_or(|st| !st.learners.contains(&READ_REPLICA) || generation(st.epoch.conf_ver) != 0) {
                    fail(&mut c, format!("a refused promotion changed the replica: {st:?}"));
                }
                report.refused = true;
                return finish(c, report);
            }
            other => {
                fail(&mut c, format!("the forced promotion was refused: {other:?}"));
                return finish(c, report);
            }
        }
    }
    let Some(p) = promotion else {
        fail(&mut c, "the forced promotion stayed refused as busy for 100 steps".into());
        return finish(c, report);
    };
    report.promotion = Some(p);
    if !p.first_proposed {
        fail(&mut c, "the promoted replica did not lead at once (its first command was not proposed)".into());
    }
    let before = c.checker.acked_count();
    c.checker.accept_loss(RANGE, p.commit_index, p.conf_ver);
    report.lost = before - c.checker.acked_count();
    if generation(p.conf_ver) != generation(p.conf_ver_before) + 1 {
        fail(&mut c, format!("the promotion's epoch {} is not in the next generation after {}", p.conf_ver, p.conf_ver_before));
    }

    // It leads at once, alone, and takes writes.
    let promoted_at = c.now();
    if !c.run_until(50, |c| c.leader_of(RANGE) == Some(READ_REPLICA)) {
        {
            let d = c.describe();
            fail(&mut c, format!("the promoted replica does not lead: {}", d));
        }
        return finish(c, report);
    }
    if c.put_and_wait(RANGE, 200).is_none() {
        fail(&mut c, "the promoted replica took no write".into());
        return finish(c, report);
    }
    report.steps_to_first_write = c.now() - promoted_at;

    // The lost region returns. One of its nodes, alone (no quorum of the
    // old lineage), is superseded in-band once the new leader adds it;
    // the others are collected first, as the server's collector does once
    // it reads the promoted descriptor from the catalog.
    let alone = HOME[c.rng.gen_range(0..HOME.len())];
    c.restart(alone);
    let wait = c.rng.gen_range(0..40);
    c.run(wait);
    if !add(&mut c, ConfChangeType::AddLearnerNode, alone) {
        {
            let d = c.describe();
            fail(&mut c, format!("node {alone} was never added back: {}", d));
        }
        return finish(c, report);
    }
    for n in HOME.into_iter().filter(|n| *n != alone) {
        c.restart(n);
        match c.store_mut(n).map(|s| s.destroy_replica(RANGE, Retirement::Superseded { conf_ver: p.conf_ver })) {
            Some(Ok(_)) => {}
            other => fail(&mut c, format!("collecting node {n}'s superseded replica: {other:?}")),
        }
        if !add(&mut c, ConfChangeType::AddLearnerNode, n) {
            {
                let d = c.describe();
                fail(&mut c, format!("node {n} was never added back: {}", d));
            }
            return finish(c, report);
        }
    }
    // Three voters again: two of the returned nodes promoted.
    for n in HOME.into_iter().filter(|n| *n != alone).take(1).chain([alone]) {
        if !add(&mut c, ConfChangeType::AddNode, n) {
            {
                let d = c.describe();
                fail(&mut c, format!("node {n} was never made a voter: {}", d));
            }
            return finish(c, report);
        }
    }
    if !c.converge(3000) {
        return finish(c, report);
    }
    for n in c.node_ids() {
        let Some(st) = c.status(n, RANGE) else { continue };
        if generation(st.epoch.conf_ver) != generation(p.conf_ver) {
            fail(&mut c, format!("node {n}'s replica is of epoch {} after convergence, not of the promotion's lineage", st.epoch.conf_ver));
        }
    }
    finish(c, report)
}

/// One membership change of the home region's voters on the range's
/// leader, never waited for: a home learner promoted, else a missing home
/// node added back as a learner, else a home follower removed.
fn home_membership_step(c: &mut Cluster) {
    let Some(l) = c.leader_of(RANGE) else { return };
    let Some(st) = c.status(l, RANGE) else { return };
    if !st.voters_outgoing.is_empty() {
        return;
    }
    let learner = HOME.into_iter().find(|n| st.learners.contains(n));
    let missing = HOME.into_iter().find(|n| !st.voters.contains(n) && !st.learners.contains(n));
    let follower = HOME.into_iter().find(|n| *n != l && st.voters.contains(n));
    let (kind, node) = match (learner, missing, follower) {
        (Some(n), _, _) => (ConfChangeType::AddNode, n),
        (None, Some(n), _) => (ConfChangeType::AddLearnerNode, n),
        (None, None, Some(n)) => (ConfChangeType::RemoveNode, n),
        _ => return,
    };
    propose_change(c, l, kind, node);
}

/// Proposes `kind` of `node` on `leader`, unwaited (a refusal is part of
/// the game: the callers look at the configuration, not the answer).
fn propose_change(c: &mut Cluster, leader: u64, kind: ConfChangeType, node: u64) {
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    if let Some(s) = c.store_mut(leader) {
        let _ = s.propose_conf_change(s.request(RANGE), cc);
    }
}

/// Proposes one membership change on the range's leader (asked again
/// while a change is in progress) and steps until the leader applied it:
/// true if it did within the bound.
fn add(c: &mut Cluster, kind: ConfChangeType, node: u64) -> bool {
    let applied = |c: &Cluster| {
        let Some(st) = c.leader_of(RANGE).and_then(|l| c.status(l, RANGE)) else { return false };
        st.voters_outgoing.is_empty()
            && match kind {
                ConfChangeType::AddNode => st.voters.contains(&node),
                _ => st.learners.contains(&node) || st.voters.contains(&node),
            }
    };
    for _ in 0..60 {
        if applied(c) {
            // Until the node's replica caught up (filled by snapshot).
            return c.run_until(1500, |c| {
                let lead = c.leader_of(RANGE).and_then(|l| c.status(l, RANGE));
                let mine = c.status(node, RANGE);
                matches!((lead, mine), (Some(l), Some(m)) if m.applied >= l.commit && !m.dormant)
            });
        }
        if let Some(l) = c.leader_of(RANGE) {
            propose_change(c, l, kind, node);
        }
        c.run(25);
    }
    applied(c)
}

fn fail(c: &mut Cluster, what: String) {
    let now = c.now();
    c.checker.fail(format!("step {now}: {what}"));
}

fn finish(c: Cluster, mut report: PromoteReport) -> PromoteReport {
    report.violations = c.checker.violations().to_vec();
    report
}
