//! The scheduler: `(cluster view, now) → operators`, pure.
//!
//! Per range without a running operator, the first rule that applies wins:
//!
//! 0. a learner no operator is using → removed (a read replica is kept,
//!    one per read region, unless its node is dead for good);
//! 1. a voter on a node dead for `down_after_ms` → replaced on an eligible
//!    node (removed instead when the range has voters to spare);
//! 2. fewer replicas than the policy asks → one added;
//! 3. more voters than it asks → the worst one removed (dead, suspect,
//!    draining, then the busiest node);
//! 4. a voter on a draining node, or on a witness node outside a witness
//!    slot ([`RangeView::witness_slot`]) → replaced; two voters on one
//!    host → one replaced on another host;
//! 5. a leader on a draining (or not eligible) node → moved to a voter on
//!    an eligible node; a leader outside its home region while a voter in
//!    it is eligible and caught up (its leader hears from it) → moved home.
//!
//! Geography: a range with voters wanted per region (`region_voters`)
//! gets new voters only in a region short of them (the largest shortfall
//! first), a voter in a region with too many is moved to one with too few
//! (rule 4), and an excess voter is taken from a region with too many
//! first (rule 3). A read region without a learner gets one (after rule
//! 4); rule 0 keeps one learner per read region. Leader choices prefer the
//! home region, and the leader balancer never moves a leadership out of
//! it.
//!
//! Then, with what budget is left: a replica off each node whose disk is
//! filling (under 10 % free) to the best node whose disk is not; then the
//! balancer: replicas from the node holding most to the one holding fewest (of eligible nodes, beyond
//! `balance_tolerance`), then leaderships likewise. A pinned range (the
//! meta range) is moved only by rules 0-5's healing, never to balance or
//! to spread over zones.
//!
//! Never a decision that loses a quorum: a removal (or the removal step of
//! a replacement) is proposed only when the voters left keep a majority of
//! nodes alive (or not known dead). At most one operator per range, at
//! most `max_ops_per_node` per node, `max_new_ops` per round. What could
//! not be done is reported with why (no eligible node, a quorum at risk),
//! not silently skipped.

use std::collections::{BTreeMap, BTreeSet};

use meridian_membership::{Liveness, NodeRole};

use crate::operator::{Kind, Operator};
use crate::view::{ClusterView, NodeView, RangeView, Settings};

/// One round's decisions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Operators to start, at most one per range.
    pub operators: Vec<Operator>,
    /// Ranges that need something the scheduler cannot do now, and why.
    pub blocked: Vec<(u64, String)>,
}

/// Operators per node, counting the running ones and those decided.
struct Budget {
    per_node: BTreeMap<u64, usize>,
    max_per_node: usize,
    left: usize,
}

impl Budget {
    fn allows(&self, nodes: &[u64]) -> bool {
        self.left > 0 && nodes.iter().all(|n| self.per_node.get(n).copied().unwrap_or(0) < self.max_per_node)
    }

    fn take(&mut self, nodes: &[u64]) {
        self.left -= 1;
        for n in nodes {
            *self.per_node.entry(*n).or_default() += 1;
        }
    }
}

/// The region of `node` ("" if unknown).
fn region_of(view: &ClusterView, node: u64) -> &str {
    view.nodes.get(&node).map_or("", |n| n.labels.region.as_str())
}

/// Voters `range` still wants per region once `leaving` has gone: positive
/// is a shortfall, negative an excess (a region the policy does not name
/// wants none). Empty when the range has no per-region policy.
fn region_gaps(view: &ClusterView, range: &RangeView, leaving: Option<u64>) -> BTreeMap<String, i64> {
    if range.region_voters.is_empty() {
        return BTreeMap::new();
    }
    let mut gaps: BTreeMap<String, i64> = range.region_voters.iter().map(|(r, n)| (r.clone(), *n as i64)).collect();
    for v in range.voters.iter().filter(|v| Some(**v) != leaving) {
        *gaps.entry(region_of(view, *v).to_string()).or_default() -= 1;
    }
    gaps
}

/// Whether node `n` (a witness) may hold `range`'s voter in its region: a
/// witness slot there ([`RangeView::witness_slot`]) and no other witness
/// in the range — a range keeps every data copy but one (with three
/// regions of one voter each, as the meta range, two copies stay).
pub(crate) fn witness_fits(view: &ClusterView, range: &RangeView, n: &NodeView) -> bool {
    range.witness_slot(&n.labels.region)
        && !range.members().any(|m| m != n.id && view.nodes.get(&m).is_some_and(|o| o.role == NodeRole::Witness))
}

/// Whether `n` may receive a replica of `range`: a data node that takes
/// replicas, or a witness that takes one where it fits
/// ([`witness_fits`]).
pub(crate) fn may_hold(view: &ClusterView, range: &RangeView, n: &NodeView) -> bool {
    n.takes_replicas() || (n.takes_witness() && witness_fits(view, range, n))
}

/// Whether `n` may keep a voter of `range`: eligible, or a live witness
/// that is not draining, where it fits.
pub(crate) fn fit_for(view: &ClusterView, range: &RangeView, n: &NodeView) -> bool {
    n.eligible() || (n.eligible_witness() && witness_fits(view, range, n))
}

/// Whether `node` is in `range`'s home region (true without one).
fn at_home(view: &ClusterView, range: &RangeView, node: u64) -> bool {
    range.home_region.as_deref().is_none_or(|h| region_of(view, node) == h)
}

fn label<'a>(n: &'a NodeView, key: &str) -> Option<&'a str> {
    match key {
        "region" => Some(&n.labels.region),
        "zone" => Some(&n.labels.zone),
        "host" => Some(&n.labels.host),
        _ => None,
    }
}

/// Whether `n` satisfies every constraint of `range`.
fn satisfies(n: &NodeView, range: &RangeView) -> bool {
    range.constraints.iter().all(|(k, v)| label(n, k) == Some(v.as_str()))
}

/// The best node for a new voter of `range` (none holding one, eligible,
/// constraints met, a host none of the other replicas is on, a region
/// short of voters if the range wants them per region): the largest
/// regional shortfall first, then a zone the range is not in yet, then the
/// fewest replicas, then the lowest id. `leaving` is a replica about to go
/// (its host, zone and region place do not count).
fn target(view: &ClusterView, range: &RangeView, leaving: Option<u64>, counts: &BTreeMap<u64, usize>, budget: &Budget) -> Option<u64> {
    target_where(view, range, leaving, counts, budget, |_| true)
}

/// [`target`] among the nodes `accept` takes.
fn target_where(
    view: &ClusterView,
    range: &RangeView,
    leaving: Option<u64>,
    counts: &BTreeMap<u64, usize>,
    budget: &Budget,
    accept: impl Fn(&NodeView) -> bool,
) -> Option<u64> {
    let staying: Vec<&NodeView> = range.members().filter(|m| Some(*m) != leaving).filter_map(|m| view.nodes.get(&m)).collect();
    let hosts: BTreeSet<&str> = staying.iter().map(|n| n.labels.host.as_str()).collect();
    let zones: BTreeSet<&str> = staying.iter().map(|n| n.labels.zone.as_str()).collect();
    let gaps = region_gaps(view, range, leaving);
    let gap = |n: &NodeView| if gaps.is_empty() { 1 } else { gaps.get(&n.labels.region).copied().unwrap_or(0) };
    view.nodes
        .values()
        .filter(|n| may_hold(view, range, n) && !range.holds(n.id) && satisfies(n, range) && !hosts.contains(n.labels.host.as_str()))
        .filter(|n| gap(n) > 0 && budget.allows(&[n.id]) && accept(n))
        // A witness slot goes to a witness when its region has one: the
        // vote without another copy of the data.
        .min_by_key(|n| {
            let data_copy = n.role != NodeRole::Witness;
            (std::cmp::Reverse(gap(n)), data_copy, zones.contains(n.labels.zone.as_str()), counts.get(&n.id).copied().unwrap_or(0), n.id)
        })
        .map(|n| n.id)
}

/// The best node in `region` for a read replica (a learner) of `range`:
/// eligible, constraints aside (a read replica is outside the voters'
/// region by design), not holding one, fewest replicas first.
fn learner_target(view: &ClusterView, range: &RangeView, region: &str, counts: &BTreeMap<u64, usize>, budget: &Budget) -> Option<u64> {
    view.nodes
        .values()
        .filter(|n| n.takes_replicas() && n.labels.region == region && !range.holds(n.id) && budget.allows(&[n.id]))
        .min_by_key(|n| (counts.get(&n.id).copied().unwrap_or(0), n.id))
        .map(|n| n.id)
}

/// A voter of `range` other than `not` to lead it: on an eligible node,
/// in its home region if one can, then the one leading fewest ranges.
fn successor(view: &ClusterView, range: &RangeView, not: u64, leaders: &BTreeMap<u64, usize>) -> Option<u64> {
    range
        .voters
        .iter()
        .copied()
        .filter(|v| *v != not && view.nodes.get(v).is_some_and(NodeView::eligible))
        .min_by_key(|v| (!at_home(view, range, *v), leaders.get(v).copied().unwrap_or(0), *v))
}

/// Whether removing `from` from the voters of `range` (after adding `to`,
/// for a replacement) keeps a majority surely alive, in between (with
/// `to` promoted and `from` still there) too.
fn removal_safe(view: &ClusterView, range: &RangeView, from: u64, to: Option<u64>) -> bool {
    let mut with_to: BTreeSet<u64> = range.voters.clone();
    with_to.extend(to);
    let mut after = with_to.clone();
    after.remove(&from);
    view.has_live_quorum(&with_to) && view.has_live_quorum(&after)
}

/// Replica and leader counts as they will be once an operator of `kind`
/// on `range` is done (what it did already is in the counts).
fn project(range: &RangeView, kind: Kind, counts: &mut BTreeMap<u64, usize>, leaders: &mut BTreeMap<u64, usize>) {
    let down = |m: &mut BTreeMap<u64, usize>, n: u64| {
        if let Some(c) = m.get_mut(&n) {
            *c = c.saturating_sub(1);
        }
    };
    match kind {
        Kind::Add { to } | Kind::AddLearner { to } if !range.holds(to) => *counts.entry(to).or_default() += 1,
        Kind::Replace { from, to } => {
            if !range.holds(to) {
                *counts.entry(to).or_default() += 1;
            }
            if range.holds(from) {
                down(counts, from);
            }
        }
        Kind::Remove { from } if range.holds(from) => down(counts, from),
        Kind::TransferLeader { to } if range.leader != to => {
            *leaders.entry(to).or_default() += 1;
            down(leaders, range.leader);
        }
        _ => {}
    }
}

/// Why no node can take a new voter of `range` (`leaving` about to go):
/// the region short of voters has no eligible node, or none at all.
fn nowhere(view: &ClusterView, range: &RangeView, leaving: Option<u64>) -> String {
    let short: Vec<String> = region_gaps(view, range, leaving).into_iter().filter(|(_, g)| *g > 0).map(|(r, _)| r).collect();
    if short.is_empty() {
        return "no eligible node can take its replica".into();
    }
    let live = |r: &str| view.nodes.values().any(|n| n.labels.region == r && n.eligible());
    match short.iter().find(|r| !live(r)) {
        Some(r) => format!("region {r} has no eligible node (down, draining or cut off) to take it"),
        None => format!("no eligible node in region {} can take one more (hosts taken or busy)", short.join(", ")),
    }
}

/// Distinct zones of `nodes`.
fn zones(view: &ClusterView, nodes: impl Iterator<Item = u64>) -> usize {
    nodes.filter_map(|n| view.nodes.get(&n)).map(|n| n.labels.zone.as_str()).collect::<BTreeSet<_>>().len()
}

/// How bad a voter is to keep, worst first: dead, suspect, draining, not
/// eligible, then holding more replicas.
fn badness(view: &ClusterView, range: &RangeView, node: u64, counts: &BTreeMap<u64, usize>) -> (u8, usize) {
    let rank = match view.nodes.get(&node) {
        None => 0,
        Some(n) if n.liveness == Liveness::Dead => 0,
        Some(n) if n.liveness == Liveness::Suspect => 1,
        Some(n) if n.draining => 2,
        Some(n) if !fit_for(view, range, n) => 3,
        Some(_) => 4,
    };
    (rank, usize::MAX - counts.get(&node).copied().unwrap_or(0))
}

/// One round of the scheduler over `view` at `now_ms`.
pub fn schedule(view: &ClusterView, settings: &Settings, now_ms: u64) -> Plan {
    let mut plan = Plan::default();
    let mut budget = Budget { per_node: BTreeMap::new(), max_per_node: settings.max_ops_per_node, left: settings.max_new_ops };
    // Counts as if the running and the decided operators were done, so
    // the balancer neither piles additions on one node nor moves more off
    // a node than it had.
    let mut counts = view.replica_counts();
    let mut leaders = view.leader_counts();
    // A dead node streams nothing: only live ones are charged, for the
    // running operators as for the new ones (else a dead node's
    // replacements would run `max_ops_per_node` at a time).
    let live = |n: &u64| view.nodes.get(n).is_some_and(|n| n.liveness != Liveness::Dead);
    for (range_id, kind) in &view.running {
        for n in kind.nodes().into_iter().filter(live) {
            *budget.per_node.entry(n).or_default() += 1;
        }
        if let Some(r) = view.ranges.get(range_id) {
            project(r, *kind, &mut counts, &mut leaders);
        }
    }
    let mut busy: BTreeSet<u64> = view.running.keys().copied().collect();

    let mut decide = |plan: &mut Plan, op: Operator, budget: &mut Budget, counts: &mut BTreeMap<u64, usize>, busy: &mut BTreeSet<u64>| {
        let nodes: Vec<u64> = op.nodes().into_iter().filter(live).collect();
        if !budget.allows(&nodes) {
            if budget.left > 0 {
                plan.blocked
                    .push((op.range_id, format!("{}: waiting, nodes {nodes:?} have {} operators running", op.reason, budget.max_per_node)));
            }
            return false;
        }
        budget.take(&nodes);
        if let Some(r) = view.ranges.get(&op.range_id) {
            // Leader counts are projected by the leader rules themselves.
            let mut ignored = BTreeMap::new();
            project(r, op.kind, counts, &mut ignored);
        }
        busy.insert(op.range_id);
        plan.operators.push(op);
        true
    };

    for range in view.ranges.values() {
        if busy.contains(&range.id) || range.joint {
            continue;
        }
        let wanted = range.voters_wanted();
        // Without a live quorum no configuration change can commit: only
        // an operator's forced recovery helps (the geography work).
        if !view.has_quorum(&range.voters) {
            plan.blocked.push((range.id, "no quorum of live voters: no change can commit".to_string()));
            continue;
        }
        // 0. A learner no operator is using (one rolled back whose undo was
        // lost, a driver that failed over mid-operator) and that is not
        // the read replica of a read region: removed. So is a read
        // replica on a node dead for good (rule 2b places a new one).
        let reads: BTreeSet<u64> = range
            .read_regions
            .iter()
            .filter_map(|r| range.learners.iter().copied().find(|l| region_of(view, *l) == r))
            .filter(|l| !view.dead_for_good(*l, now_ms, settings.down_after_ms))
            .collect();
        if let Some(&l) = range.learners.iter().find(|l| !reads.contains(l)) {
            let why = if range.read_regions.contains(region_of(view, l)) && !view.dead_for_good(l, now_ms, settings.down_after_ms) {
                format!("node {l} is a second read replica in region {}", region_of(view, l))
            } else if range.read_regions.contains(region_of(view, l)) {
                format!("read replica on node {l}, dead for {} s or more", settings.down_after_ms / 1000)
            } else {
                format!("node {l} is a learner no operator is using")
            };
            decide(&mut plan, Operator::remove(range, l, 0, why), &mut budget, &mut counts, &mut busy);
            continue;
        }
        // 1. Voters on nodes dead for good.
        if let Some(&dead) = range.voters.iter().find(|v| view.dead_for_good(**v, now_ms, settings.down_after_ms)) {
            let why = format!("node {dead} has been dead for {} s or more", settings.down_after_ms / 1000);
            if range.voters.len() > wanted && removal_safe(view, range, dead, None) {
                match (range.leader == dead, successor(view, range, dead, &leaders)) {
                    (true, None) => plan.blocked.push((range.id, format!("{why}, it leads the range and no voter can take over"))),
                    (_, next) => {
                        decide(&mut plan, Operator::remove(range, dead, next.unwrap_or(0), why), &mut budget, &mut counts, &mut busy);
                    }
                }
            } else if let Some(to) = target(view, range, Some(dead), &counts, &budget) {
                if removal_safe(view, range, dead, Some(to)) {
                    decide(&mut plan, Operator::replace(range, dead, to, why), &mut budget, &mut counts, &mut busy);
                } else {
                    plan.blocked.push((range.id, format!("{why}, but replacing it would leave no quorum of live voters")));
                }
            } else {
                plan.blocked.push((range.id, format!("{why}, and {}", nowhere(view, range, Some(dead)))));
            }
            // Blocked (no operator decided): the leader may still move.
            if !busy.contains(&range.id) {
                move_leader(view, range, &mut leaders, &mut plan, &mut budget, &mut counts, &mut busy, &mut decide);
            }
            continue;
        }
        // 2. Too few voters (every learner left is a read replica).
        if range.voters.len() < wanted {
            match target(view, range, None, &counts, &budget) {
                Some(to) => {
                    let why = format!("{} of {wanted} replicas", range.voters.len());
                    decide(&mut plan, Operator::add(range, to, why), &mut budget, &mut counts, &mut busy);
                }
                None if region_gaps(view, range, None).is_empty() => {
                    plan.blocked.push((range.id, format!("needs {wanted} replicas; no eligible node can take one more")))
                }
                None => plan.blocked.push((range.id, format!("needs {wanted} replicas; {}", nowhere(view, range, None)))),
            }
            // Blocked (no operator decided): the leader may still move.
            if !busy.contains(&range.id) {
                move_leader(view, range, &mut leaders, &mut plan, &mut budget, &mut counts, &mut busy, &mut decide);
            }
            continue;
        }
        // 3. Too many voters.
        let gaps = region_gaps(view, range, None);
        let surplus = |v: u64| gaps.get(region_of(view, v)).is_some_and(|g| *g < 0);
        if range.voters.len() > wanted {
            // Worst first; among equals, one from a region with too many,
            // then one whose zone another voter shares.
            let zone_shared = |v: u64| {
                let z = view.nodes.get(&v).map(|n| n.labels.zone.as_str());
                range.voters.iter().filter(|o| **o != v && view.nodes.get(o).map(|n| n.labels.zone.as_str()) == z).count() > 0
            };
            let worst = range
                .voters
                .iter()
                .copied()
                .min_by_key(|v| {
                    (badness(view, range, *v, &counts).0, !surplus(*v), !zone_shared(*v), badness(view, range, *v, &counts).1, *v)
                })
                .expect("voters");
            let next = successor(view, range, worst, &leaders);
            if range.leader == worst && next.is_none() {
                plan.blocked.push((range.id, format!("an excess voter on node {worst} leads the range and no voter can take over")));
            } else if removal_safe(view, range, worst, None) {
                let why = format!("{} voters, the policy asks for {wanted}", range.voters.len());
                decide(&mut plan, Operator::remove(range, worst, next.unwrap_or(0), why), &mut budget, &mut counts, &mut busy);
            } else {
                plan.blocked.push((range.id, format!("an excess voter on node {worst}, but removing it would leave no quorum")));
            }
            // Blocked (no operator decided): the leader may still move.
            if !busy.contains(&range.id) {
                move_leader(view, range, &mut leaders, &mut plan, &mut budget, &mut counts, &mut busy, &mut decide);
            }
            continue;
        }
        // 4. Draining nodes, a witness outside a witness slot (a founding
        // member holds every first range), and two voters on one host.
        let draining = range.voters.iter().copied().find(|v| view.nodes.get(v).is_some_and(|n| n.draining));
        let stray_witness = range
            .voters
            .iter()
            .copied()
            .find(|v| view.nodes.get(v).is_some_and(|n| n.role == NodeRole::Witness && !witness_fits(view, range, n)));
        // A data voter where a witness could cast the vote instead (a
        // witness slot, and a witness there to take it): the witness takes
        // it, so the data is not copied once more than the layout needs.
        // Only when a witness can take it now (within the operator
        // budget): else the voter stays, rather than moving to another
        // data node.
        // (The slot is checked first: most ranges have none, and the
        // target search is per voter.)
        let witness_could = range.voters.iter().copied().find(|v| {
            view.nodes.get(v).is_some_and(|n| n.role == NodeRole::Data && range.witness_slot(&n.labels.region))
                && target_where(view, range, Some(*v), &counts, &budget, |n| n.role == NodeRole::Witness).is_some()
        });
        let shared_host = {
            let mut seen = BTreeMap::new();
            range.voters.iter().copied().find(|v| {
                let host = view.nodes.get(v).map(|n| n.labels.host.clone()).unwrap_or_default();
                seen.insert(host, *v).is_some()
            })
        };
        // A voter sharing its zone with another while a zone the range is
        // not in has a node that could take it.
        let zone_of = |n: &u64| view.nodes.get(n).map(|n| n.labels.zone.as_str());
        let shared_zone = range
            .voters
            .iter()
            .copied()
            .filter(|v| !range.pinned && range.voters.iter().any(|o| o != v && zone_of(o) == zone_of(v)))
            .max_by_key(|v| (counts.get(v).copied().unwrap_or(0), *v))
            .filter(|v| {
                target(view, range, Some(*v), &counts, &budget).is_some_and(|t| !range.voters.iter().any(|o| zone_of(o) == zone_of(&t)))
            });
        // A voter in a region with too many while another has too few.
        let misplaced = if gaps.values().any(|g| *g > 0) { range.voters.iter().copied().find(|v| surplus(*v)) } else { None };
        let why_from = draining
            .map(|n| (n, format!("node {n} is draining")))
            .or(stray_witness.map(|n| (n, format!("node {n} is a witness, and the range has no witness slot in its region"))))
            .or(shared_host.map(|n| (n, format!("node {n} shares a host with another voter"))))
            .or(misplaced.map(|n| {
                let short: Vec<&str> = gaps.iter().filter(|(_, g)| **g > 0).map(|(r, _)| r.as_str()).collect();
                (n, format!("region {:?} has a voter too many (node {n}) and region {} one too few", region_of(view, n), short.join(", ")))
            }))
            .or(shared_zone.map(|n| (n, format!("node {n} shares a zone with another voter while another zone has room"))))
            .or(witness_could.map(|n| {
                (
                    n,
                    format!(
                        "region {:?} wants one voter, which a witness can be: node {n}'s copy of the data is not needed",
                        region_of(view, n)
                    ),
                )
            }));
        if let Some((from, why)) = why_from {
            match target(view, range, Some(from), &counts, &budget) {
                Some(to) if removal_safe(view, range, from, Some(to)) => {
                    decide(&mut plan, Operator::replace(range, from, to, why), &mut budget, &mut counts, &mut busy);
                }
                Some(_) => plan.blocked.push((range.id, format!("{why}, but moving it would leave no quorum"))),
                None => plan.blocked.push((range.id, format!("{why}; {}", nowhere(view, range, Some(from))))),
            }
            // Blocked (no operator decided): the leader may still move.
            if !busy.contains(&range.id) {
                move_leader(view, range, &mut leaders, &mut plan, &mut budget, &mut counts, &mut busy, &mut decide);
            }
            continue;
        }
        // 2b. A read region without its read replica.
        if let Some(region) = range.read_regions.iter().find(|r| !range.learners.iter().any(|l| region_of(view, *l) == r.as_str())) {
            match learner_target(view, range, region, &counts, &budget) {
                Some(to) => {
                    let why = format!("read replica for region {region}");
                    decide(&mut plan, Operator::add_learner(range, to, why), &mut budget, &mut counts, &mut busy);
                    continue;
                }
                None => plan.blocked.push((range.id, format!("read replica for region {region}: no eligible node there"))),
            }
        }
        // 5. A leader where it should not be.
        move_leader(view, range, &mut leaders, &mut plan, &mut budget, &mut counts, &mut busy, &mut decide);
    }
    shed_disk(view, &mut plan, &mut budget, &mut counts, &mut busy, &mut decide);
    balance_replicas(view, settings, &mut plan, &mut budget, &mut counts, &mut busy, &mut decide);
    balance_leaders(view, settings, &mut plan, &mut budget, &mut counts, &mut busy, &mut leaders, &mut decide);
    plan
}

/// Rule 5: a leader on a node draining or not eligible, or outside its
/// range's home region while a voter there can take over, is moved (also
/// for a range whose rules 1-4 are blocked: its leader can still go home).
/// Home only to a voter the leader hears from and that has the log: a
/// transfer to a node that died a moment ago (the gossip not knowing yet)
/// would hold every proposal until it failed.
#[allow(clippy::too_many_arguments)]
fn move_leader(
    view: &ClusterView,
    range: &RangeView,
    leaders: &mut BTreeMap<u64, usize>,
    plan: &mut Plan,
    budget: &mut Budget,
    counts: &mut BTreeMap<u64, usize>,
    busy: &mut BTreeSet<u64>,
    decide: &mut Decide<'_>,
) {
    let unfit = view.nodes.get(&range.leader).is_some_and(|n| !n.eligible());
    let away = !at_home(view, range, range.leader);
    if range.leader == 0 || !(unfit || away) {
        return;
    }
    let to =
        successor(view, range, range.leader, leaders).filter(|to| unfit || (at_home(view, range, *to) && range.caught_up.contains(to)));
    let Some(to) = to else { return };
    let why = if unfit {
        format!("its leader's node {} is draining or unhealthy", range.leader)
    } else {
        format!("its leader's node {} is outside its home region {}", range.leader, range.home_region.as_deref().unwrap_or(""))
    };
    if decide(plan, Operator::transfer(range, to, why), budget, counts, busy) {
        *leaders.entry(to).or_default() += 1;
        if let Some(c) = leaders.get_mut(&range.leader) {
            *c = c.saturating_sub(1);
        }
    }
}

/// The most room (free share of its disk, permille) of any eligible node
/// (1000: none reported).
fn best_free_permille(view: &ClusterView) -> u64 {
    view.nodes.values().filter(|n| n.eligible()).map(|n| n.load.map_or(1000, |l| l.free_permille())).max().unwrap_or(1000)
}

type Decide<'a> = dyn FnMut(&mut Plan, Operator, &mut Budget, &mut BTreeMap<u64, usize>, &mut BTreeSet<u64>) -> bool + 'a;

/// One replica off each eligible node whose disk is filling (least room
/// first) to the range's best target whose disk is not, quorum kept; a
/// filling node with nowhere to send one is reported. The meta range moves
/// too: a full disk would stop it with the rest.
fn shed_disk(
    view: &ClusterView,
    plan: &mut Plan,
    budget: &mut Budget,
    counts: &mut BTreeMap<u64, usize>,
    busy: &mut BTreeSet<u64>,
    decide: &mut Decide<'_>,
) {
    // Every disk filling alike (nodes sharing one disk, a cluster out of
    // room): nowhere to shed to; the loads in the plan show it.
    if best_free_permille(view) < 10 * crate::view::SHED_DISK_AVAILABLE_PERCENT {
        return;
    }
    let mut filling: Vec<&NodeView> = view.nodes.values().filter(|n| n.eligible() && n.disk_filling()).collect();
    filling.sort_by_key(|n| (n.load.map_or(1000, |l| l.free_permille()), n.id));
    for node in filling {
        let free = node.load.map_or(1000, |l| l.free_permille());
        let candidate = view.ranges.values().find_map(|r| {
            if busy.contains(&r.id) || r.joint || !r.voters.contains(&node.id) {
                return None;
            }
            let to = target_where(view, r, Some(node.id), counts, budget, |n| !n.disk_filling())?;
            removal_safe(view, r, node.id, Some(to)).then_some((r, to))
        });
        match candidate {
            Some((r, to)) => {
                let why = format!(
                    "node {} has {}.{} % of its disk free, under {} %: moving a replica to node {to}",
                    node.id,
                    free / 10,
                    free % 10,
                    crate::view::SHED_DISK_AVAILABLE_PERCENT
                );
                decide(plan, Operator::replace(r, node.id, to, why), budget, counts, busy);
            }
            // (Not while an earlier move off it runs: its ranges are busy.)
            None if view.ranges.values().any(|r| r.voters.contains(&node.id))
                && !view.running.values().any(|k| k.nodes().contains(&node.id)) =>
            {
                plan.blocked.push((
                    0,
                    format!(
                        "node {} has {}.{} % of its disk free; no node with room can take one of its replicas now",
                        node.id,
                        free / 10,
                        free % 10
                    ),
                ))
            }
            None => {}
        }
    }
}

/// Replicas from the eligible node holding most to a node holding at least
/// two fewer (the best target of the range: zones and hosts first), while
/// eligible nodes' counts differ by more than the tolerance. Every move
/// narrows the spread, so the balancer settles.
fn balance_replicas(
    view: &ClusterView,
    settings: &Settings,
    plan: &mut Plan,
    budget: &mut Budget,
    counts: &mut BTreeMap<u64, usize>,
    busy: &mut BTreeSet<u64>,
    decide: &mut Decide<'_>,
) {
    let eligible: Vec<u64> = view.nodes.values().filter(|n| n.eligible()).map(|n| n.id).collect();
    // Replicas go only to nodes with room (a full disk may still give).
    // A node sheds under 10 % free and receives none to balance under
    // 20 % while another node has that much: the gap keeps it from
    // shedding and refilling in turn. Disks all fuller than that (nodes
    // sharing one disk) hold nothing back.
    let floor = match best_free_permille(view) {
        b if b >= 20 * crate::view::SHED_DISK_AVAILABLE_PERCENT => 20 * crate::view::SHED_DISK_AVAILABLE_PERCENT,
        b if b >= 10 * crate::view::SHED_DISK_AVAILABLE_PERCENT => 10 * crate::view::SHED_DISK_AVAILABLE_PERCENT,
        _ => 0,
    };
    let free = |n: &NodeView| n.load.map_or(1000, |l| l.free_permille());
    let receivers: Vec<u64> = view.nodes.values().filter(|n| n.takes_replicas() && free(n) >= floor).map(|n| n.id).collect();
    for _ in 0..settings.max_new_ops {
        let by_count = |n: &u64| (counts.get(n).copied().unwrap_or(0), *n);
        let (Some(&most), Some(&fewest)) = (eligible.iter().max_by_key(|n| by_count(n)), receivers.iter().min_by_key(|n| by_count(n)))
        else {
            return;
        };
        if counts[&most] <= counts[&fewest] + settings.balance_tolerance {
            return;
        }
        // A range on `most` that `fewest` may take (host, zone and
        // constraints respected, quorum kept).
        // From the fullest node that has a move that narrows the spread.
        let mut sources: Vec<u64> = eligible.iter().copied().filter(|n| counts[n] > counts[&fewest] + settings.balance_tolerance).collect();
        sources.sort_by_key(|n| (usize::MAX - counts[n], *n));
        let candidate = sources.iter().find_map(|&from| {
            view.ranges.values().find_map(|r| {
                if busy.contains(&r.id) || r.joint || r.pinned || !r.voters.contains(&from) {
                    return None;
                }
                let to = target(view, r, Some(from), counts, budget)?;
                // Never at the cost of the range's spread over zones.
                let zones_before = zones(view, r.voters.iter().copied());
                let zones_after = zones(view, r.voters.iter().copied().filter(|v| *v != from).chain([to]));
                (counts.get(&to).copied().unwrap_or(0) + 1 < counts[&from]
                    && zones_after >= zones_before
                    && removal_safe(view, r, from, Some(to)))
                .then_some((r, from, to))
            })
        });
        let Some((r, most, to)) = candidate else { return };
        let why = format!("balance: node {most} holds {} replicas, node {to} {}", counts[&most], counts.get(&to).copied().unwrap_or(0));
        if !decide(plan, Operator::replace(r, most, to, why), budget, counts, busy) {
            return;
        }
    }
}

/// Leaderships from the eligible node leading most to a voter on the one
/// leading fewest, while they differ by more than the tolerance.
#[allow(clippy::too_many_arguments)]
fn balance_leaders(
    view: &ClusterView,
    settings: &Settings,
    plan: &mut Plan,
    budget: &mut Budget,
    counts: &mut BTreeMap<u64, usize>,
    busy: &mut BTreeSet<u64>,
    leaders: &mut BTreeMap<u64, usize>,
    decide: &mut Decide<'_>,
) {
    let eligible: Vec<u64> = view.nodes.values().filter(|n| n.eligible()).map(|n| n.id).collect();
    for _ in 0..settings.max_new_ops {
        let count = |n: &u64| leaders.get(n).copied().unwrap_or(0);
        // From the most-leading node that has a move narrowing the spread
        // (the most-leading one may have none: its ranges' other voters
        // outside their home regions, or not heard from by it).
        let mut by_load = eligible.clone();
        by_load.sort_by_key(|n| (usize::MAX - count(n), *n));
        let found = by_load.iter().find_map(|&most| {
            // The least-leading eligible node, in the range's home region
            // and caught up, that is a voter of one of `most`'s ranges.
            let (to, r) = view
                .ranges
                .values()
                .filter(|r| r.leader == most && !busy.contains(&r.id) && !r.joint && !r.pinned)
                .flat_map(|r| {
                    r.voters
                        .iter()
                        .copied()
                        .filter(|v| *v != most && eligible.contains(v) && at_home(view, r, *v) && r.caught_up.contains(v))
                        .map(move |v| (v, r))
                })
                .min_by_key(|(v, r)| (count(v), *v, r.id))?;
            (count(&most) > count(&to) + settings.balance_tolerance).then_some((most, to, r))
        });
        let Some((most, to, r)) = found else { return };
        let why = format!("balance: node {most} leads {} ranges, node {to} {}", leaders[&most], leaders.get(&to).copied().unwrap_or(0));
        if !decide(plan, Operator::transfer(r, to, why), budget, counts, busy) {
            return;
        }
        *leaders.entry(to).or_default() += 1;
        if let Some(c) = leaders.get_mut(&most) {
            *c = c.saturating_sub(1);
        }
    }
}
