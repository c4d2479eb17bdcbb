//! The randomized run: workload and faults drawn from one seed.

use rand::seq::SliceRandom;
use rand::Rng;

use meridian_raftstore::test_machine::put_command;
use meridian_raftstore::RequestId;

use crate::cluster::{Cluster, SimConfig};

struct PendingPut {
    node: u64,
    id: RequestId,
    range_id: u64,
    key: Vec<u8>,
    value: Vec<u8>,
    /// Proposed on a follower.
    forwarded: bool,
}

#[derive(Debug, Default, Clone)]
pub struct RunReport {
    pub seed: u64,
    pub steps: u64,
    pub acked_writes: usize,
    pub reads_checked: u64,
    pub crashes: u64,
    /// Every node crashed at once (a zone losing power): only what was
    /// synced survives anywhere.
    pub power_losses: u64,
    pub partitions: u64,
    /// Every node of a region crashed at once (a region run).
    pub region_losses: u64,
    /// A region cut off from the others (a region run).
    pub region_partitions: u64,
    /// Terms a witness led (it hands leadership to a full voter at once).
    pub witness_terms: u64,
    /// Membership changes proposed (remove a voter, add it back as a
    /// learner, promote it).
    pub membership_changes: u64,
    /// Removed replicas destroyed (deleted, a tombstone left), during the
    /// run and once it healed; none may be left over.
    pub replicas_destroyed: u64,
    /// Acknowledged writes that a follower proposed (handed to its leader
    /// inside raft) and answered when it applied them.
    pub forwarded_acked: u64,
    pub violations: Vec<String>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.violations.is_empty()
    }
}

/// One membership step on a random range's leader, moving the range
/// towards "every node a voter" or, when it is there, removing a follower:
/// promote a learner if there is one, else add a missing node as a learner,
/// else remove a random follower. Refusals (a change in progress, no
/// leader) are part of the game. True when a change was proposed.
fn membership_step(c: &mut Cluster, ranges: &[u64], nodes: &[u64]) -> bool {
    use meridian_raftstore::raft_types::{ConfChangeSingle, ConfChangeType, ConfChangeV2};
    let r = *ranges.choose(&mut c.rng).expect("ranges");
    let Some(l) = c.leader_of(r) else { return false };
    let Some(st) = c.status(l, r) else { return false };
    let missing: Vec<u64> = nodes.iter().copied().filter(|n| !st.voters.contains(n) && !st.learners.contains(n)).collect();
    let followers: Vec<u64> = st.voters.iter().copied().filter(|v| *v != l).collect();
    let (kind, node) = if let Some(&n) = st.learners.first() {
        (ConfChangeType::AddNode, n)
    } else if let Some(&n) = missing.choose(&mut c.rng) {
        (ConfChangeType::AddLearnerNode, n)
    } else if let Some(&n) = followers.choose(&mut c.rng) {
        (ConfChangeType::RemoveNode, n)
    } else {
        return false;
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(kind);
    single.node_id = node;
    let mut cc = ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    c.store_mut(l).is_some_and(|s| s.propose_conf_change(s.request(r), cc).is_ok())
}

/// Faults injected by [`nemesis_step`] over a run.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FaultCounts {
    pub crashes: u64,
    pub power_losses: u64,
    pub partitions: u64,
    pub membership_changes: u64,
    /// Removed (dormant) replicas destroyed once their range's leader
    /// applied a configuration without them.
    pub replicas_destroyed: u64,
    pub region_losses: u64,
    pub region_partitions: u64,
}

/// The nemesis, about every 60 ticks: crashes a node (never a majority at
/// once), restarts the crashed ones, partitions (random halves, an isolated
/// leader, one-way links), sets drops and delays, changes membership, cuts
/// power to every node, or heals. Shared by every randomized run, so they
/// all face the same faults.
pub(crate) fn nemesis_step(c: &mut Cluster, ranges: &[u64], nodes: &[u64], faults: &mut FaultCounts) {
    let majority_down_limit = (nodes.len() as u64 - 1) / 2;
    if c.rng.gen_bool(1.0 / 60.0) {
        let down: Vec<u64> = nodes.iter().copied().filter(|n| !c.is_up(*n)).collect();
        match c.rng.gen_range(0..10) {
            0 | 1 if (down.len() as u64) < majority_down_limit.max(1) => {
                let n = *nodes.choose(&mut c.rng).expect("nodes");
                c.crash(n);
                faults.crashes += 1;
            }
            2 => {
                for n in down {
                    c.restart(n);
                }
            }
            3 => {
                let mut shuffled = nodes.to_vec();
                shuffled.shuffle(&mut c.rng);
                let cut = c.rng.gen_range(1..shuffled.len());
                c.net.partition(&shuffled[..cut], &shuffled[cut..]);
                faults.partitions += 1;
            }
            4 => {
                // Isolate the leader of a random range.
                let r = *ranges.choose(&mut c.rng).expect("ranges");
                if let Some(l) = c.leader_of(r) {
                    let others: Vec<u64> = nodes.iter().copied().filter(|n| *n != l).collect();
                    c.net.partition(&[l], &others);
                    faults.partitions += 1;
                }
            }
            5 => {
                let a = *nodes.choose(&mut c.rng).expect("nodes");
                let b = *nodes.choose(&mut c.rng).expect("nodes");
                if a != b {
                    c.net.block_one_way(a, b);
                    faults.partitions += 1;
                }
            }
            6 => {
                let p = c.rng.gen_range(0.0..0.2);
                c.net.set_drop_prob(p);
                let hi = c.rng.gen_range(1..6);
                c.net.set_delay(1, hi);
            }
            7 if c.rng.gen_bool(0.3) => {
                // The placement driver collecting removed replicas, between
                // the removals and re-adds below.
                faults.replicas_destroyed += c.collect_garbage(nodes).0 as u64;
            }
            7 => {
                if membership_step(c, ranges, nodes) {
                    faults.membership_changes += 1;
                }
            }
            8 if c.rng.gen_bool(0.3) => {
                for &n in nodes {
                    if c.is_up(n) {
                        c.crash(n);
                    }
                }
                faults.power_losses += 1;
            }
            _ => c.net.heal(),
        }
    }
}

/// Runs `steps` ticks of random writes and reads against `cfg`'s cluster
/// while a nemesis crashes and restarts nodes (also all at once),
/// partitions the network
/// (two-way and one-way), drops and delays messages, and removes and adds
/// back replicas; then heals, waits for
/// convergence and checks every invariant.
pub fn random_run(cfg: SimConfig, steps: u64) -> RunReport {
    random_run_with(cfg, steps, |_, _, _, _| {}, |_| {})
}

/// [`random_run`] with `setup` applied to the new cluster (a network's
/// geography) and `extra` run every tick after the shared nemesis (faults
/// of its own: a region's loss).
pub(crate) fn random_run_with(
    cfg: SimConfig,
    steps: u64,
    mut extra: impl FnMut(&mut Cluster, &[u64], &[u64], &mut FaultCounts),
    setup: impl FnOnce(&mut Cluster),
) -> RunReport {
    let seed = cfg.seed;
    let mut c = Cluster::new(cfg);
    setup(&mut c);
    let mut report = RunReport { seed, steps, ..Default::default() };
    let ranges = c.range_ids();
    let nodes = c.node_ids();
    let mut faults = FaultCounts::default();
    // Writes acknowledged so far, to read back: (range, key, value).
    let mut written: Vec<(u64, Vec<u8>, Vec<u8>)> = Vec::new();
    let mut pending: Vec<PendingPut> = Vec::new();
    for _ in 0..steps {
        // Workload.
        if c.rng.gen_bool(0.6) {
            let r = *ranges.choose(&mut c.rng).expect("ranges");
            let (key, _) = c.fresh_put(r);
            let value = format!("v{}", c.now()).into_bytes();
            // Half the writes go to a random replica: a follower hands them
            // to its leader inside raft and answers them when it applies them.
            let node = *nodes.choose(&mut c.rng).expect("nodes");
            let leader = c.leader_of(r);
            let proposed = if c.rng.gen_bool(0.5) && c.is_up(node) {
                c.propose_on(node, r, put_command(&key, &value)).ok().map(|id| (node, id))
            } else {
                c.propose(r, put_command(&key, &value))
            };
            if let Some((node, id)) = proposed {
                let forwarded = leader != Some(node);
                pending.push(PendingPut { node, id, range_id: r, key, value, forwarded });
            }
        }
        if !written.is_empty() && c.rng.gen_bool(0.2) {
            let (r, key, value) = written[c.rng.gen_range(0..written.len())].clone();
            let node = *nodes.choose(&mut c.rng).expect("nodes");
            if c.is_up(node) && c.read_on(node, r, &key, Some(value)).is_ok() {
                report.reads_checked += 1;
            }
        }
        nemesis_step(&mut c, &ranges, &nodes, &mut faults);
        extra(&mut c, &ranges, &nodes, &mut faults);
        c.step();
        pending.retain(|p| match c.take_result(p.node, p.id) {
            Some(Ok(_)) => {
                report.forwarded_acked += p.forwarded as u64;
                written.push((p.range_id, p.key.clone(), p.value.clone()));
                false
            }
            Some(Err(_)) => false,
            None => c.is_up(p.node),
        });
        if written.len() > 10_000 {
            written.drain(..5_000);
        }
    }
    if c.converge(5_000) {
        // Healed: every removed replica is collected, none is left, and
        // the ranges still take writes and agree. A replica with writes
        // still on their way to disk is asked again a few ticks later, as
        // the driver's next round does.
        for _ in 0..20 {
            let (done, later) = c.collect_garbage(&nodes);
            faults.replicas_destroyed += done as u64;
            if later == 0 {
                break;
            }
            for _ in 0..5 {
                c.step();
            }
        }
        let orphans = c.orphans();
        if !orphans.is_empty() {
            c.checker.fail(format!("replicas left outside their range once healed: {orphans:?}"));
        } else {
            c.converge(5_000);
        }
    }
    (report.crashes, report.power_losses, report.partitions, report.membership_changes, report.replicas_destroyed) =
        (faults.crashes, faults.power_losses, faults.partitions, faults.membership_changes, faults.replicas_destroyed);
    (report.region_losses, report.region_partitions) = (faults.region_losses, faults.region_partitions);
    report.witness_terms = c.checker.terms_led_by(&c.cfg.witnesses);
    report.acked_writes = c.checker.acked_count();
    report.violations = c.checker.violations().to_vec();
    if !report.ok() {
        report.violations.push(format!("final state: {}", c.describe()));
    }
    report
}
