use std::collections::{BTreeMap, BTreeSet};

use meridian_codes::seeded::SplitMix64;
use meridian_membership::{Labels, Liveness, NodeRole};

use crate::*;

fn node(id: u64, zone: &str) -> NodeView {
    NodeView {
        id,
        labels: Labels { region: "eu".into(), zone: zone.into(), host: format!("h{id}") },
        role: NodeRole::Data,
        liveness: Liveness::Alive,
        dead_since_ms: None,
        draining: false,
        load: None,
    }
}

/// A range whose voters are all caught up (its leader hears from them).
fn range(id: u64, voters: &[u64], leader: u64) -> RangeView {
    let voters: BTreeSet<u64> = voters.iter().copied().collect();
    RangeView { id, caught_up: voters.clone(), voters, leader, replicas: 3, ..Default::default() }
}

/// Nodes 1..=n over zones a, b, c.
fn cluster(n: u64, ranges: &[RangeView]) -> ClusterView {
    let zones = ["a", "b", "c"];
    ClusterView {
        nodes: (1..=n).map(|i| (i, node(i, zones[(i as usize - 1) % 3]))).collect(),
        ranges: ranges.iter().map(|r| (r.id, r.clone())).collect(),
        running: BTreeMap::new(),
    }
}

fn kill(v: &mut ClusterView, id: u64, since: u64) {
    let n = v.nodes.get_mut(&id).unwrap();
    n.liveness = Liveness::Dead;
    n.dead_since_ms = Some(since);
}

#[test]
fn a_node_dead_past_down_after_has_its_replicas_replaced_not_before() {
    let s = Settings::default();
    let mut v = cluster(4, &[range(10, &[1, 2, 3], 1)]);
    kill(&mut v, 3, 0);
    let early = schedule(&v, &s, s.down_after_ms - 1);
    assert!(early.operators.is_empty(), "replaced before down_after: {early:?}");
    let plan = schedule(&v, &s, s.down_after_ms);
    assert_eq!(plan.operators.len(), 1, "{plan:?}");
    let op = &plan.operators[0];
    assert_eq!(op.kind, Kind::Replace { from: 3, to: 4 });
    assert_eq!(op.steps, vec![Step::AddLearner(4), Step::CatchUp(4), Step::Promote(4), Step::Remove(3)]);
    assert!(op.reason.contains("dead"), "{}", op.reason);
}

#[test]
fn a_suspect_or_draining_node_gets_no_replica_and_a_witness_none() {
    let s = Settings::default();
    let mut v = cluster(6, &[range(10, &[1, 2], 1)]);
    v.nodes.get_mut(&3).unwrap().liveness = Liveness::Suspect;
    v.nodes.get_mut(&4).unwrap().draining = true;
    v.nodes.get_mut(&5).unwrap().role = NodeRole::Witness;
    let plan = schedule(&v, &s, 0);
    assert_eq!(plan.operators[0].kind, Kind::Add { to: 6 });
    v.nodes.get_mut(&6).unwrap().liveness = Liveness::Suspect;
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.is_empty());
    assert!(plan.blocked[0].1.contains("no eligible node"), "{plan:?}");
}

#[test]
fn a_node_with_its_disk_nearly_full_gets_no_new_replica() {
    let s = Settings::default();
    let mut v = cluster(5, &[range(10, &[1, 2], 1)]);
    let disk = |available: u64| Some(Load { disk_capacity_bytes: 1000, disk_available_bytes: available, ..Default::default() });
    // Node 3 would be first (a zone the range lacks, fewest replicas).
    v.nodes.get_mut(&3).unwrap().load = disk(49);
    v.nodes.get_mut(&4).unwrap().load = disk(50);
    let plan = schedule(&v, &s, 0);
    assert_eq!(plan.operators[0].kind, Kind::Add { to: 4 }, "{plan:?}");
    // With no room anywhere else, nothing is added, and the plan says so.
    v.nodes.get_mut(&4).unwrap().load = disk(0);
    v.nodes.get_mut(&5).unwrap().load = disk(10);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.is_empty(), "{plan:?}");
    assert!(plan.blocked[0].1.contains("no eligible node"), "{plan:?}");
    // A full node still leads and keeps what it has.
    assert!(v.nodes[&3].eligible() && !v.nodes[&3].takes_replicas());
    assert!(!Load::default().disk_full(), "no capacity reported: not full");
    // An empty node with a full disk is no reason to rebalance: the others
    // are even, so nothing moves.
    let ranges: Vec<RangeView> = (0..6).map(|i| range(10 + i, &[1, 2, 3], 1 + i % 3)).collect();
    let mut v = cluster(4, &ranges);
    v.nodes.get_mut(&4).unwrap().load = disk(10);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.is_empty(), "{plan:?}");
}

#[test]
fn no_decision_leaves_a_range_without_a_quorum() {
    let s = Settings::default();
    // Two of three voters dead for good and no spare node: replacing one
    // would first need a quorum to add the learner.
    let mut v = cluster(4, &[range(10, &[1, 2, 3], 1)]);
    kill(&mut v, 2, 0);
    kill(&mut v, 3, 0);
    let plan = schedule(&v, &s, s.down_after_ms);
    assert!(plan.operators.is_empty(), "{plan:?}");
    assert!(plan.blocked[0].1.contains("no quorum"), "{plan:?}");
    // An excess voter whose removal would leave 2 of 4 live: refused too.
    let mut v = cluster(5, &[range(10, &[1, 2, 3, 4], 1)]);
    kill(&mut v, 3, 0);
    kill(&mut v, 4, 0);
    v.nodes.get_mut(&4).unwrap().dead_since_ms = Some(10);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().all(|o| !matches!(o.kind, Kind::Remove { from: 1 | 2 })), "{plan:?}");
}

#[test]
fn a_node_not_heard_of_counts_against_a_removal() {
    let s = Settings::default();
    // Five voters for a policy of three; node 1 drains; 4 and 5 are not
    // heard of (a driver that just took over): removing 1 would leave
    // two of four surely alive.
    let mut r = range(10, &[1, 2, 3, 4, 5], 2);
    r.replicas = 3;
    let mut v = cluster(5, &[r]);
    v.nodes.get_mut(&1).unwrap().draining = true;
    v.nodes.get_mut(&4).unwrap().liveness = Liveness::Unknown;
    v.nodes.get_mut(&5).unwrap().liveness = Liveness::Unknown;
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.is_empty(), "{plan:?}");
    assert!(plan.blocked[0].1.contains("no quorum"), "{plan:?}");
}

#[test]
fn voters_sharing_a_host_are_spread_and_a_new_zone_is_preferred() {
    let s = Settings::default();
    let mut v = cluster(5, &[range(10, &[1, 2, 4], 1)]);
    // Nodes 1 (zone a) and 4 (zone a) are on one host.
    v.nodes.get_mut(&4).unwrap().labels.host = "h1".into();
    let plan = schedule(&v, &s, 0);
    // Node 3 is in zone c, which the range lacks; node 5 is in zone b.
    assert_eq!(plan.operators[0].kind, Kind::Replace { from: 4, to: 3 }, "{plan:?}");
}

#[test]
fn a_draining_node_loses_its_replicas_and_leaderships() {
    let s = Settings::default();
    let mut v = cluster(4, &[range(10, &[1, 2, 3], 1), range(11, &[1, 2, 4], 2)]);
    v.nodes.get_mut(&1).unwrap().draining = true;
    let plan = schedule(&v, &s, 0);
    let r10 = plan.operators.iter().find(|o| o.range_id == 10).unwrap();
    assert_eq!(r10.kind, Kind::Replace { from: 1, to: 4 });
    assert_eq!(r10.steps[3], Step::TransferLeader(4), "the leadership leaves the draining node before its replica");
    let r11 = plan.operators.iter().find(|o| o.range_id == 11).unwrap();
    assert_eq!(r11.kind, Kind::Replace { from: 1, to: 3 });
}

#[test]
fn a_new_node_receives_replicas_and_leaderships() {
    let s = Settings::default();
    let ranges: Vec<RangeView> = (0..6).map(|i| range(10 + i, &[1, 2, 3], 1)).collect();
    let v = cluster(4, &ranges);
    let plan = schedule(&v, &s, 0);
    let to4 = plan.operators.iter().filter(|o| matches!(o.kind, Kind::Replace { to: 4, .. })).count();
    assert!(to4 >= 3, "node 4 should take a share: {plan:?}");
    assert!(plan.operators.iter().any(|o| matches!(o.kind, Kind::TransferLeader { .. })), "node 1 leads all six: {plan:?}");
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    for o in &plan.operators {
        for n in o.nodes() {
            *per_node.entry(n).or_default() += 1;
        }
    }
    assert!(per_node.values().all(|c| *c <= s.max_ops_per_node), "per-node bound: {per_node:?}");
    let ranges_with_ops: BTreeSet<u64> = plan.operators.iter().map(|o| o.range_id).collect();
    assert_eq!(ranges_with_ops.len(), plan.operators.len(), "one operator per range");
}

#[test]
fn a_pinned_range_is_healed_but_never_balanced() {
    let s = Settings::default();
    let mut meta = range(1, &[1, 2, 3], 1);
    meta.pinned = true;
    let mut v = cluster(4, &[meta, range(10, &[1, 2, 3], 1), range(11, &[1, 2, 3], 1)]);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().all(|o| o.range_id != 1), "the pinned range moved for balance: {plan:?}");
    assert!(plan.operators.iter().any(|o| o.range_id != 1), "the others balance: {plan:?}");
    // A dead node's replica of it is replaced all the same.
    kill(&mut v, 3, 0);
    let plan = schedule(&v, &s, s.down_after_ms);
    assert!(plan.operators.iter().any(|o| o.range_id == 1 && o.kind == Kind::Replace { from: 3, to: 4 }), "{plan:?}");
}

#[test]
fn running_operators_count_as_done_for_the_balancer() {
    let s = Settings::default();
    let mut v = cluster(4, &[range(10, &[1, 2, 3], 1), range(11, &[1, 2, 3], 2), range(12, &[1, 2, 3], 3)]);
    // A move off node 1 is under way (not started yet).
    v.running.insert(10, Kind::Replace { from: 1, to: 4 });
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().all(|o| o.range_id != 10), "{plan:?}");
    assert!(
        plan.operators.iter().all(|o| !matches!(o.kind, Kind::Replace { from: 1, .. })),
        "node 1 is already giving one replica away: {plan:?}"
    );
}

#[test]
fn a_stalled_step_rolls_back_an_unpromoted_learner() {
    let r = range(10, &[1, 2, 3], 1);
    let mut v = cluster(4, std::slice::from_ref(&r));
    let op = Operator::replace(&r, 3, 4, "test");
    let mut run = Running::start(op, 0);
    assert_eq!(run.advance(&r, &v, 0, 1000), Progress::Issue(Step::AddLearner(4)));
    let mut with_learner = r.clone();
    with_learner.learners.insert(4);
    assert_eq!(run.advance(&with_learner, &v, 10, 1000), Progress::Issue(Step::CatchUp(4)));
    match run.advance(&with_learner, &v, 2000, 1000) {
        Progress::RollBack { stalled: Step::CatchUp(4), undo } => assert_eq!(undo, vec![Step::Remove(4)]),
        other => panic!("{other:?}"),
    }
    // Done when the report shows every step's effect, whatever issued it.
    let mut run = Running::start(Operator::replace(&r, 3, 4, "test"), 0);
    let done = range(10, &[1, 2, 4], 1);
    assert_eq!(run.advance(&done, &v, 5, 1000), Progress::Done);
    // A removal that a death since the decision made unsafe is held.
    let mut run = Running::start(Operator::replace(&r, 3, 4, "test"), 0);
    let promoted = range(10, &[1, 2, 3, 4], 1);
    kill(&mut v, 2, 0);
    kill(&mut v, 4, 0);
    assert_eq!(run.advance(&promoted, &v, 5, 1000), Progress::Hold(Step::Remove(3)));
}

/// A model cluster the operators act on: each round the scheduler plans,
/// running operators advance one step (a step may stall), and faults
/// strike; the truth is the view.
struct Model {
    view: ClusterView,
    running: BTreeMap<u64, Running>,
    rng: SplitMix64,
    now: u64,
    settings: Settings,
    /// Nodes not alive at once at most.
    max_down: usize,
    /// Whether a settled layout must have even replica counts within each
    /// zone. Off where a region's data nodes hold only read replicas
    /// (learners are placed on the emptiest node but not rebalanced
    /// afterwards: docs/geography.md, "Not built yet").
    check_balance: bool,
}

impl Model {
    /// `nodes` over zones a, b, c; `ranges` ranges of `replicas` voters,
    /// all on the first nodes and led by node 1 (unbalanced).
    fn new(seed: u64, nodes: u64, ranges: u64, replicas: usize) -> Model {
        let zones = ["a", "b", "c"];
        let first: Vec<u64> = (1..=replicas as u64).collect();
        let view = ClusterView {
            nodes: (1..=nodes).map(|i| (i, node(i, zones[(i as usize - 1) % 3]))).collect(),
            ranges: (0..ranges)
                .map(|i| {
                    let mut r = range(100 + i, &first, 1);
                    r.replicas = replicas;
                    (100 + i, r)
                })
                .collect(),
            running: BTreeMap::new(),
        };
        let settings = Settings { down_after_ms: 60_000, step_timeout_ms: 40_000, ..Settings::default() };
        // One more node down than a range survives: faults alone may take
        // a range's quorum, and the scheduler must not take one itself.
        Model {
            view,
            running: BTreeMap::new(),
            rng: SplitMix64::new(seed),
            now: 0,
            settings,
            max_down: (replicas - 1) / 2 + 1,
            check_balance: true,
        }
    }

    /// Applies `step` to the range if the world lets it happen.
    fn apply(&mut self, range_id: u64, step: Step) {
        if self.rng.below(10) == 0 {
            return; // this step stalls this round
        }
        let alive: BTreeSet<u64> = self.view.nodes.values().filter(|n| n.liveness == Liveness::Alive).map(|n| n.id).collect();
        let quorum_ok = |voters: &BTreeSet<u64>| voters.iter().filter(|v| alive.contains(v)).count() > voters.len() / 2;
        let r = self.view.ranges.get_mut(&range_id).unwrap();
        // A configuration change needs a live leader and a live quorum.
        let can_change = alive.contains(&r.leader) && quorum_ok(&r.voters);
        match step {
            Step::AddLearner(n) if can_change && !r.holds(n) => {
                r.learners.insert(n);
            }
            Step::CatchUp(n) if alive.contains(&n) && r.learners.contains(&n) && can_change => {
                r.caught_up.insert(n);
            }
            Step::Promote(n) if can_change && r.caught_up.contains(&n) && r.learners.contains(&n) => {
                let mut after = r.voters.clone();
                after.insert(n);
                // The invariant: a decision never adds a voter that tips
                // the range below a live majority (can_change: it had one).
                assert!(
                    quorum_ok(&after),
                    "range {range_id}: promoting node {n} leaves voters {after:?} without a live quorum (alive {alive:?})"
                );
                r.learners.remove(&n);
                r.voters.insert(n);
            }
            Step::TransferLeader(n) if can_change && alive.contains(&n) && r.voters.contains(&n) => r.leader = n,
            Step::Remove(n) if can_change && r.holds(n) => {
                let mut after = r.voters.clone();
                after.remove(&n);
                // The invariant: a decision never removes a quorum the
                // range had (can_change: it had one).
                assert!(
                    quorum_ok(&after),
                    "range {range_id}: removing node {n} leaves voters {after:?} without a live quorum (alive {alive:?})"
                );
                r.voters.remove(&n);
                r.learners.remove(&n);
                r.caught_up.remove(&n);
                if r.leader == n {
                    r.leader = *r.voters.iter().find(|v| alive.contains(v)).unwrap_or(&0);
                }
            }
            _ => {}
        }
    }

    fn round(&mut self, faults: bool) {
        self.now += 10_000;
        // Faults: a node dies, turns suspect or unknown (all three: down,
        // in this model), comes back, or starts or stops draining.
        if faults && self.rng.below(4) == 0 {
            let n = 1 + self.rng.below(self.view.nodes.len() as u64);
            let now = self.now;
            let down = self.view.nodes.values().filter(|n| n.liveness != Liveness::Alive).count();
            let draining = self.view.nodes.values().filter(|n| n.draining).count();
            let pick = self.rng.below(6);
            let node = self.view.nodes.get_mut(&n).unwrap();
            match pick {
                // At most max_down nodes down at once: every range keeps
                // a quorum.
                0..=2 if node.liveness == Liveness::Alive && down < self.max_down => {
                    node.liveness = [Liveness::Dead, Liveness::Suspect, Liveness::Unknown][pick as usize];
                    node.dead_since_ms = (pick == 0).then_some(now);
                }
                3 | 4 => {
                    node.liveness = Liveness::Alive;
                    node.dead_since_ms = None;
                }
                _ => node.draining = !node.draining && draining == 0,
            }
        }
        // Leaders on dead nodes are replaced by raft (not the scheduler);
        // a leader hears from its live voters (they are caught up) and not
        // from the others.
        let alive: BTreeSet<u64> = self.view.nodes.values().filter(|n| n.liveness == Liveness::Alive).map(|n| n.id).collect();
        for r in self.view.ranges.values_mut() {
            let voters = r.voters.clone();
            r.caught_up.retain(|n| alive.contains(n));
            r.caught_up.extend(voters.iter().filter(|v| alive.contains(v)));
            if !alive.contains(&r.leader) {
                if let Some(v) = r.voters.iter().find(|v| alive.contains(v)) {
                    r.leader = *v;
                }
            }
        }
        // Running operators advance.
        let ids: Vec<u64> = self.running.keys().copied().collect();
        for id in ids {
            let range = self.view.ranges[&id].clone();
            let progress = self.running.get_mut(&id).unwrap().advance(&range, &self.view, self.now, self.settings.step_timeout_ms);
            match progress {
                Progress::Issue(step) => self.apply(id, step),
                Progress::Hold(_) => {}
                Progress::Done => {
                    self.running.remove(&id);
                }
                Progress::RollBack { undo, .. } => {
                    for s in undo {
                        self.apply(id, s);
                    }
                    self.running.remove(&id);
                }
            }
        }
        // The scheduler plans.
        self.view.running = self.running.iter().map(|(id, r)| (*id, r.op.kind)).collect();
        for op in schedule(&self.view, &self.settings, self.now).operators {
            assert!(!self.running.contains_key(&op.range_id), "a second operator on range {}", op.range_id);
            self.running.insert(op.range_id, Running::start(op, self.now));
        }
    }

    /// The layout the policy asks for: 3 voters on eligible nodes of
    /// distinct hosts, no learner left, no operator running or planned
    /// (the scheduler is at rest, not flapping), and replica counts of
    /// eligible nodes of one zone within 2 of each other (spreading over
    /// zones comes before counts: a zone with one eligible node holds a
    /// replica of every range, and the balancer does not trade that away).
    fn settled(&self) -> Result<(), String> {
        if !self.running.is_empty() {
            return Err(format!("{} operators running", self.running.len()));
        }
        let mut view = self.view.clone();
        view.running.clear();
        let plan = schedule(&view, &self.settings, self.now);
        if !plan.operators.is_empty() || !plan.blocked.is_empty() {
            return Err(format!("the scheduler is not at rest: {plan:?}"));
        }
        for r in self.view.ranges.values() {
            let hosts: BTreeSet<&str> = r.voters.iter().map(|v| self.view.nodes[v].labels.host.as_str()).collect();
            let learner_regions: BTreeSet<String> = r.learners.iter().map(|l| self.view.nodes[l].labels.region.clone()).collect();
            if r.voters.len() != r.replicas
                || hosts.len() != r.replicas
                || r.learners.len() != r.read_regions.len()
                || learner_regions != r.read_regions
            {
                return Err(format!("range {}: voters {:?} learners {:?}", r.id, r.voters, r.learners));
            }
            if !r.region_voters.is_empty() {
                let mut per: BTreeMap<String, usize> = BTreeMap::new();
                for v in &r.voters {
                    *per.entry(self.view.nodes[v].labels.region.clone()).or_default() += 1;
                }
                if per != r.region_voters {
                    return Err(format!("range {}: voters per region {per:?}, the policy asks {:?}", r.id, r.region_voters));
                }
            }
            if let Some(home) = &r.home_region {
                if self.view.nodes.get(&r.leader).is_none_or(|n| &n.labels.region != home) {
                    return Err(format!("range {}: led by node {} outside its home region {home}", r.id, r.leader));
                }
            }
            if let Some(v) = r.voters.iter().find(|v| !crate::scheduler::fit_for(&self.view, r, &self.view.nodes[v])) {
                return Err(format!("range {}: voter on node {v}, which is not eligible", r.id));
            }
            let witnesses = r.voters.iter().filter(|v| self.view.nodes[v].role == NodeRole::Witness).count();
            if witnesses > 1 || (witnesses == 1 && r.region_voters.len() < 3) {
                return Err(format!("range {}: {witnesses} witness voter(s) in {:?}", r.id, r.voters));
            }
        }
        let counts = self.view.replica_counts();
        let mut by_zone: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for n in self.view.nodes.values().filter(|n| n.eligible()) {
            by_zone.entry(n.labels.zone.as_str()).or_default().push(counts[&n.id]);
        }
        for (zone, c) in &by_zone {
            let (lo, hi) = (c.iter().min().copied().unwrap_or(0), c.iter().max().copied().unwrap_or(0));
            if self.check_balance && hi > lo + 2 {
                return Err(format!("zone {zone}: replica counts {counts:?}"));
            }
        }
        // Every range spread over as many zones as have eligible nodes (up
        // to its voters).
        // (Per region for a range with voters per region.)
        let zones_available = by_zone.len();
        let zones_in = |region: &str| {
            self.view
                .nodes
                .values()
                .filter(|n| n.eligible() && n.labels.region == region)
                .map(|n| n.labels.zone.as_str())
                .collect::<BTreeSet<_>>()
                .len()
        };
        for r in self.view.ranges.values() {
            let z: BTreeSet<&str> = r.voters.iter().map(|v| self.view.nodes[v].labels.zone.as_str()).collect();
            let want = if r.region_voters.is_empty() {
                zones_available.min(r.voters.len())
            } else {
                r.region_voters.iter().map(|(region, n)| zones_in(region).min(*n)).sum()
            };
            if z.len() < want {
                return Err(format!("range {} on zones {z:?}, {want} available", r.id));
            }
        }
        Ok(())
    }
}

impl Model {
    /// Twelve nodes, four per region (us, eu, ap; zones REGION-a, -b, -c,
    /// the fourth node back in -a) and `ranges` ranges of each policy: zone
    /// survival homed in us with read replicas in eu and ap, and region
    /// survival (2 + 2 + 1) homed in eu. All start on nodes 1-3 (us).
    fn new_geo(seed: u64, ranges: u64) -> Model {
        let mut m = Model::new(seed, 12, 2 * ranges, 3);
        for (i, n) in m.view.nodes.values_mut().enumerate() {
            let region = ["us", "eu", "ap"][i / 4];
            n.labels.region = region.to_string();
            n.labels.zone = format!("{region}-{}", (b'a' + (i % 4 % 3) as u8) as char);
        }
        for (k, r) in m.view.ranges.values_mut().enumerate() {
            if k % 2 == 0 {
                r.region_voters = BTreeMap::from([("us".to_string(), 3)]);
                r.home_region = Some("us".into());
                r.read_regions = BTreeSet::from(["eu".to_string(), "ap".to_string()]);
            } else {
                r.region_voters = BTreeMap::from([("eu".to_string(), 2), ("us".to_string(), 2), ("ap".to_string(), 1)]);
                r.home_region = Some("eu".into());
            }
            r.replicas = r.region_voters.values().sum();
        }
        m
    }
}

impl Model {
    /// [`Model::new_geo`] with node 13 a witness in ap (zone ap-w), where
    /// the region-survival ranges want one voter: their ap vote goes to
    /// it while it is up, to an ap data node while it is dead for good.
    fn new_geo_witness(seed: u64, ranges: u64) -> Model {
        let mut m = Model::new_geo(seed, ranges);
        let mut w = node(13, "ap-w");
        (w.labels.region, w.role) = ("ap".into(), NodeRole::Witness);
        m.view.nodes.insert(13, w);
        // With the witness casting ap's votes, ap's data nodes hold read
        // replicas only, which are not rebalanced.
        m.check_balance = false;
        m
    }
}

fn seeds() -> u64 {
    std::env::var("MERIDIAN_PLACEMENT_SEEDS").ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(30).clamp(1, 100_000)
}

#[test]
fn under_crashes_drains_and_stalls_no_quorum_is_lost_and_the_layout_converges() {
    run_model(6, 12, 3);
}

#[test]
fn five_voter_ranges_with_two_nodes_down_lose_no_quorum_and_converge() {
    run_model(9, 10, 5);
}

#[test]
fn ranges_with_region_policies_lose_no_quorum_and_converge_to_their_regions_with_leaders_home() {
    for seed in 0..seeds() {
        converge(seed, Model::new_geo(seed, 6), 3);
    }
}

#[test]
fn with_a_witness_region_survival_ranges_keep_one_in_the_third_region_and_lose_no_quorum() {
    for seed in 0..seeds() {
        let m = converge(seed, Model::new_geo_witness(seed, 6), 3);
        if m.view.nodes[&13].liveness == Liveness::Alive {
            for r in m.view.ranges.values().filter(|r| r.region_voters.len() == 3) {
                assert!(r.voters.contains(&13), "seed {seed}: range {} keeps a data voter in ap with the witness up: {r:?}", r.id);
            }
        }
    }
}

fn run_model(nodes: u64, ranges: u64, replicas: usize) {
    for seed in 0..seeds() {
        converge(seed, Model::new(seed, nodes, ranges, replicas), replicas);
    }
}

/// Runs `m` 200 rounds with faults, then without until it settles; panics
/// with the seed if it does not (or if a decision lost a quorum).
fn converge(seed: u64, mut m: Model, replicas: usize) -> Model {
    for _ in 0..200 {
        m.round(true);
    }
    // Faults stop: a suspect or unknown node turns out alive or dead;
    // whatever is dead stays dead and is replaced, and whatever drains
    // is emptied.
    // At most as many stay dead as a range survives; the others come
    // back (with more dead for good, quorums are gone for good).
    let now = m.now;
    let survivable = (replicas - 1) / 2;
    for n in m.view.nodes.values_mut() {
        if matches!(n.liveness, Liveness::Suspect | Liveness::Unknown) {
            let dead = m.rng.below(2) == 0;
            n.liveness = if dead { Liveness::Dead } else { Liveness::Alive };
            n.dead_since_ms = dead.then_some(now);
        }
    }
    // With policies per region, a node draining next to a dead one could
    // leave a region fewer eligible nodes than its voters: drains end.
    if m.view.ranges.values().any(|r| !r.region_voters.is_empty()) {
        for n in m.view.nodes.values_mut() {
            n.draining = false;
        }
    }
    let dead: Vec<u64> = m.view.nodes.values().filter(|n| n.liveness == Liveness::Dead).map(|n| n.id).collect();
    for id in dead.into_iter().skip(survivable) {
        let n = m.view.nodes.get_mut(&id).unwrap();
        n.liveness = Liveness::Alive;
        n.dead_since_ms = None;
    }
    for _ in 0..300 {
        m.round(false);
        if m.settled().is_ok() {
            break;
        }
    }
    if let Err(e) = m.settled() {
        panic!(
            "seed {seed}: did not converge: {e}\nnodes {:?}",
            m.view.nodes.values().map(|n| (n.id, n.liveness, n.draining)).collect::<Vec<_>>()
        );
    }
    m
}

/// A dead node's replacements are bounded by the nodes that receive them,
/// not by the dead node: it streams nothing, whether the operators are
/// new or already running.
#[test]
fn a_dead_nodes_replacements_are_not_charged_to_it() {
    let s = Settings { max_ops_per_node: 2, max_new_ops: 64, ..Settings::default() };
    // Ranges 10..22 on nodes 1, 2, 3; nodes 4..=9 hold nothing.
    let ranges: Vec<RangeView> = (10..22).map(|id| range(id, &[1, 2, 3], 1)).collect();
    let mut v = cluster(9, &ranges);
    kill(&mut v, 3, 0);
    let plan = schedule(&v, &s, s.down_after_ms);
    // Six receivers, two operators each: twelve at once, all from node 3.
    assert_eq!(plan.operators.len(), 12, "{plan:?}");
    assert!(plan.operators.iter().all(|o| matches!(o.kind, Kind::Replace { from: 3, .. })));
    // With six of them running, the other six still start.
    v.running = plan.operators.iter().take(6).map(|o| (o.range_id, o.kind)).collect();
    let next = schedule(&v, &s, s.down_after_ms);
    assert_eq!(next.operators.len(), 6, "{next:?}");
}

#[test]
fn a_node_whose_disk_is_filling_sheds_replicas_to_nodes_with_room_only() {
    let s = Settings::default();
    let disk = |available: u64| Some(Load { disk_capacity_bytes: 1000, disk_available_bytes: available, ..Default::default() });
    // Nodes 1-3 hold ranges 10 and 11; node 4 (zone a, like node 1) and
    // node 5 (zone b) hold nothing.
    let mut v = cluster(5, &[range(10, &[1, 2, 3], 1), range(11, &[1, 2, 3], 2)]);
    v.nodes.get_mut(&1).unwrap().load = disk(80);
    v.nodes.get_mut(&5).unwrap().load = disk(95);
    let plan = schedule(&v, &s, 0);
    let shed: Vec<&Operator> = plan.operators.iter().filter(|o| o.reason.contains("disk free")).collect();
    assert_eq!(shed.len(), 1, "one replica a round off the filling node: {plan:?}");
    assert_eq!(shed[0].kind, Kind::Replace { from: 1, to: 4 }, "to the node with room, not to node 5 (filling too)");
    assert!(shed[0].reason.contains("node 1 has 8.0 % of its disk free, under 10 %"), "{}", shed[0].reason);
    // The balancer sends nothing to a filling node.
    assert!(plan.operators.iter().all(|o| !matches!(o.kind, Kind::Replace { to: 5, .. } | Kind::Add { to: 5 })), "{plan:?}");
    // With room nowhere, the plan says so and moves nothing off it.
    v.nodes.get_mut(&4).unwrap().load = disk(90);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().all(|o| !o.reason.contains("disk free")), "{plan:?}");
    assert!(plan.blocked.iter().any(|(_, why)| why.contains("no node with room")), "{plan:?}");
    // Above 10 % free nothing is shed.
    v.nodes.get_mut(&1).unwrap().load = disk(100);
    v.nodes.get_mut(&4).unwrap().load = disk(500);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().all(|o| !o.reason.contains("disk free")), "{plan:?}");
}

#[test]
fn shedding_skips_a_filling_best_target_for_the_next_and_a_node_refills_only_well_above_the_threshold() {
    let s = Settings::default();
    let disk = |available: u64| Some(Load { disk_capacity_bytes: 1000, disk_available_bytes: available, ..Default::default() });
    // Node 4 (zone a) would be the best target of node 1's replica, but
    // its disk is filling too: node 5 (zone b) takes it.
    let mut v = cluster(5, &[range(10, &[1, 2, 3], 1)]);
    v.nodes.get_mut(&1).unwrap().load = disk(80);
    v.nodes.get_mut(&4).unwrap().load = disk(90);
    let plan = schedule(&v, &s, 0);
    let shed: Vec<&Operator> = plan.operators.iter().filter(|o| o.reason.contains("disk free")).collect();
    assert_eq!(shed.iter().map(|o| o.kind).collect::<Vec<_>>(), [Kind::Replace { from: 1, to: 5 }], "{plan:?}");
    // At 15 % free node 4 sheds nothing, and the balancer gives it
    // nothing either (nodes 1-3 hold 2 replicas each, 4 and 5 none).
    let mut v = cluster(5, &[range(10, &[1, 2, 3], 1), range(11, &[1, 2, 3], 2)]);
    v.nodes.get_mut(&4).unwrap().load = disk(150);
    v.nodes.get_mut(&5).unwrap().load = disk(150);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().all(|o| !matches!(o.kind, Kind::Replace { to: 4 | 5, .. })), "{plan:?}");
    // At 20 % it receives its share again.
    v.nodes.get_mut(&4).unwrap().load = disk(200);
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().any(|o| matches!(o.kind, Kind::Replace { to: 4, .. })), "{plan:?}");
}

#[test]
fn disks_all_filling_alike_shed_nothing_and_balancing_goes_on() {
    // Every node on one disk with 7 % free (test machines, a cluster out
    // of room): nowhere to shed to, and the joined node still gets its
    // share (5 % is where new replicas stop).
    let s = Settings::default();
    let mut v = cluster(4, &[range(10, &[1, 2, 3], 1), range(11, &[1, 2, 3], 2)]);
    for n in v.nodes.values_mut() {
        n.load = Some(Load { disk_capacity_bytes: 1000, disk_available_bytes: 70, ..Default::default() });
    }
    let plan = schedule(&v, &s, 0);
    assert!(plan.operators.iter().all(|o| !o.reason.contains("disk free")), "{plan:?}");
    assert!(plan.blocked.is_empty(), "{plan:?}");
    assert!(plan.operators.iter().any(|o| matches!(o.kind, Kind::Replace { to: 4, .. }) && o.reason.contains("balance")), "{plan:?}");
}

// ---- geography: voters per region, home-region leaders, read replicas ----

/// Nodes 1-3 in region us, 4-6 in eu, 7-9 in ap, one per zone.
fn regions(ranges: &[RangeView]) -> ClusterView {
    let mut nodes = BTreeMap::new();
    for (i, region) in ["us", "eu", "ap"].iter().enumerate() {
        for z in 0..3u64 {
            let id = i as u64 * 3 + z + 1;
            let mut n = node(id, &format!("{region}-{}", (b'a' + z as u8) as char));
            n.labels.region = region.to_string();
            nodes.insert(id, n);
        }
    }
    ClusterView { nodes, ranges: ranges.iter().map(|r| (r.id, r.clone())).collect(), running: BTreeMap::new() }
}

fn geo(id: u64, voters: &[u64], leader: u64, per_region: &[(&str, usize)], reads: &[&str]) -> RangeView {
    let mut r = range(id, voters, leader);
    r.region_voters = per_region.iter().map(|(g, n)| (g.to_string(), *n)).collect();
    r.replicas = r.region_voters.values().sum();
    r.home_region = Some(per_region[0].0.to_string());
    r.read_regions = reads.iter().map(|g| g.to_string()).collect();
    r.caught_up = r.voters.clone();
    r
}

/// Applies a plan's operators as if every step succeeded.
fn apply(v: &mut ClusterView, plan: &Plan) {
    for op in &plan.operators {
        let r = v.ranges.get_mut(&op.range_id).unwrap();
        for step in &op.steps {
            match *step {
                Step::AddLearner(n) => {
                    r.learners.insert(n);
                }
                Step::CatchUp(_) => {}
                Step::Promote(n) => {
                    r.learners.remove(&n);
                    r.voters.insert(n);
                    r.caught_up.insert(n);
                }
                Step::TransferLeader(n) => r.leader = n,
                Step::Remove(n) => {
                    r.voters.remove(&n);
                    r.learners.remove(&n);
                    r.caught_up.remove(&n);
                }
            }
        }
    }
}

/// Runs the scheduler until it proposes nothing (at most 20 rounds).
fn settle(v: &mut ClusterView) -> usize {
    let s = Settings::default();
    for round in 0..20 {
        let plan = schedule(v, &s, 0);
        if plan.operators.is_empty() {
            return round;
        }
        apply(v, &plan);
    }
    panic!("the scheduler did not settle in 20 rounds: {v:?}");
}

fn per_region(v: &ClusterView, r: &RangeView) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for n in &r.voters {
        *m.entry(v.nodes[n].labels.region.clone()).or_default() += 1;
    }
    m
}

#[test]
fn a_zone_survival_range_keeps_its_voters_in_the_home_regions_zones() {
    // Created wherever: voters in eu and ap are moved home, one per zone.
    let mut v = regions(&[geo(10, &[1, 4, 7], 1, &[("us", 3)], &[])]);
    settle(&mut v);
    let r = &v.ranges[&10];
    assert_eq!(r.voters, BTreeSet::from([1, 2, 3]), "{r:?}");
    assert_eq!(r.leader, 1);
}

#[test]
fn a_region_survival_range_spreads_two_two_one_and_its_leader_goes_home() {
    let mut v = regions(&[geo(10, &[4, 5, 7], 5, &[("us", 2), ("eu", 2), ("ap", 1)], &[])]);
    settle(&mut v);
    let r = v.ranges[&10].clone();
    assert_eq!(per_region(&v, &r), BTreeMap::from([("ap".into(), 1), ("eu".into(), 2), ("us".into(), 2)]), "{r:?}");
    assert_eq!(v.nodes[&r.leader].labels.region, "us", "the leader goes home: {r:?}");
    // Zones spread within each region.
    let zones: BTreeSet<&str> = r.voters.iter().map(|n| v.nodes[n].labels.zone.as_str()).collect();
    assert_eq!(zones.len(), 5);
}

#[test]
fn leadership_moves_home_once_a_home_voter_is_eligible_and_not_before() {
    let r = geo(10, &[1, 2, 4, 5, 7], 4, &[("us", 2), ("eu", 2), ("ap", 1)], &[]);
    let mut v = regions(&[r]);
    v.nodes.get_mut(&1).unwrap().liveness = Liveness::Dead;
    v.nodes.get_mut(&2).unwrap().liveness = Liveness::Suspect;
    let plan = schedule(&v, &Settings::default(), 0);
    assert!(plan.operators.is_empty(), "no home voter is eligible: {plan:?}");
    v.nodes.get_mut(&2).unwrap().liveness = Liveness::Alive;
    // Alive in the gossip but not heard from by the leader (it died a
    // moment ago): not yet.
    v.ranges.get_mut(&10).unwrap().caught_up.remove(&2);
    assert!(schedule(&v, &Settings::default(), 0).operators.is_empty(), "a transfer to a silent voter");
    v.ranges.get_mut(&10).unwrap().caught_up.insert(2);
    let plan = schedule(&v, &Settings::default(), 0);
    assert_eq!(plan.operators.len(), 1, "{plan:?}");
    assert_eq!(plan.operators[0].kind, Kind::TransferLeader { to: 2 });
    assert!(plan.operators[0].reason.contains("home region us"), "{plan:?}");
}

#[test]
fn a_lost_region_blocks_its_replacement_with_a_reason_and_nothing_moves_elsewhere() {
    let s = Settings::default();
    let mut v = regions(&[geo(10, &[1, 2, 4, 5, 7], 4, &[("us", 2), ("eu", 2), ("ap", 1)], &[])]);
    for n in 1..=3 {
        kill(&mut v, n, 0);
    }
    let plan = schedule(&v, &s, s.down_after_ms);
    assert!(plan.operators.is_empty(), "voters stay per region: {plan:?}");
    assert!(plan.blocked.iter().any(|(r, why)| *r == 10 && why.contains("region us has no eligible node")), "{plan:?}");
}

#[test]
fn read_replicas_one_learner_per_read_region_extras_and_strays_removed() {
    let mut v = regions(&[geo(10, &[1, 2, 3], 1, &[("us", 3)], &["eu", "ap"])]);
    settle(&mut v);
    let r = v.ranges[&10].clone();
    assert_eq!(r.voters, BTreeSet::from([1, 2, 3]));
    let learner_regions: BTreeSet<&str> = r.learners.iter().map(|n| v.nodes[n].labels.region.as_str()).collect();
    assert_eq!((r.learners.len(), learner_regions), (2, BTreeSet::from(["ap", "eu"])), "{r:?}");
    // A second learner in eu is removed; so is every learner once the
    // policy has no read regions.
    v.ranges.get_mut(&10).unwrap().learners.insert(6);
    let plan = schedule(&v, &Settings::default(), 0);
    assert_eq!(plan.operators.len(), 1, "{plan:?}");
    assert!(matches!(plan.operators[0].kind, Kind::Remove { from: 4..=6 }), "{plan:?}");
    v.ranges.get_mut(&10).unwrap().read_regions.clear();
    v.ranges.get_mut(&10).unwrap().learners.remove(&6);
    settle(&mut v);
    assert!(v.ranges[&10].learners.is_empty());
}

#[test]
fn the_leader_balancer_never_moves_a_leadership_out_of_its_home_region() {
    // Node 1 leads all four ranges; the only other voters at home are
    // 2 and 3: leaderships may go there, never to eu or ap.
    let ranges: Vec<RangeView> = (10..14).map(|id| geo(id, &[1, 2, 4, 5, 7], 1, &[("us", 2), ("eu", 2), ("ap", 1)], &[])).collect();
    let mut v = regions(&ranges);
    settle(&mut v);
    for r in v.ranges.values() {
        assert_eq!(v.nodes[&r.leader].labels.region, "us", "{r:?}");
    }
}

#[test]
fn a_range_blocked_on_a_replacement_still_gets_its_leader_home() {
    // Home voter 1 dead for good and no other us node to take its place:
    // the replacement is blocked, but leadership goes to home voter 2.
    let s = Settings::default();
    let mut v = regions(&[geo(10, &[1, 2, 4, 5, 7], 4, &[("us", 2), ("eu", 2), ("ap", 1)], &[])]);
    kill(&mut v, 1, 0);
    kill(&mut v, 3, 0);
    v.ranges.get_mut(&10).unwrap().caught_up.remove(&1);
    let plan = schedule(&v, &s, s.down_after_ms);
    assert!(plan.blocked.iter().any(|(r, why)| *r == 10 && why.contains("no eligible node in region us")), "{plan:?}");
    assert_eq!(plan.operators.iter().map(|o| o.kind).collect::<Vec<_>>(), [Kind::TransferLeader { to: 2 }], "{plan:?}");
}

#[test]
fn a_witness_takes_the_third_regions_slot_of_region_survival_and_nothing_else() {
    // Node 10: a witness in ap, next to ap's data nodes 7-9.
    let witness = |v: &mut ClusterView| {
        let mut w = node(10, "ap-w");
        (w.labels.region, w.role) = ("ap".into(), NodeRole::Witness);
        v.nodes.insert(10, w);
    };
    let mut v = regions(&[geo(20, &[1, 2, 4, 5], 1, &[("us", 2), ("eu", 2), ("ap", 1)], &[])]);
    witness(&mut v);
    settle(&mut v);
    let r = &v.ranges[&20];
    assert!(r.voters.contains(&10), "the third region's vote goes to the witness: {r:?}");
    assert_eq!(per_region(&v, r), BTreeMap::from([("ap".into(), 1), ("eu".into(), 2), ("us".into(), 2)]));
    assert_ne!(r.leader, 10);
    // It stays: a witness in its slot is not a misplaced voter.
    assert!(schedule(&v, &Settings::default(), 0).operators.is_empty());

    // Zone survival, read replicas, and a region survival home region: no
    // witness.
    let mut v = regions(&[
        geo(21, &[1, 4, 7], 1, &[("ap", 3)], &["us"]),
        geo(22, &[1, 2, 4, 5, 7], 7, &[("ap", 2), ("eu", 2), ("us", 1)], &[]),
        range(23, &[1, 4, 7], 1),
    ]);
    witness(&mut v);
    settle(&mut v);
    for r in v.ranges.values() {
        assert!(!r.holds(10), "range {} got the witness: {r:?}", r.id);
    }

    // A data voter in the slot gives it up to the witness.
    let mut v = regions(&[geo(25, &[1, 2, 4, 5, 7], 1, &[("us", 2), ("eu", 2), ("ap", 1)], &[])]);
    witness(&mut v);
    settle(&mut v);
    assert!(v.ranges[&25].voters.contains(&10) && !v.ranges[&25].voters.contains(&7), "{:?}", v.ranges[&25]);

    // One voter in each of three regions (the meta range's layout): one
    // witness at most, two data copies stay.
    let mut v = regions(&[range(26, &[1, 4, 7], 1)]);
    v.ranges.get_mut(&26).unwrap().region_voters = BTreeMap::from([("us".into(), 1), ("eu".into(), 1), ("ap".into(), 1)]);
    witness(&mut v);
    let mut w = node(11, "eu-w");
    (w.labels.region, w.role) = ("eu".into(), NodeRole::Witness);
    v.nodes.insert(11, w);
    settle(&mut v);
    let r = &v.ranges[&26];
    assert_eq!(r.voters.iter().filter(|n| **n >= 10).count(), 1, "{r:?}");
    assert_eq!(r.voters.len(), 3, "{r:?}");

    // A witness that is a voter where it has no slot (a founding member)
    // is replaced by a data node.
    let mut v = regions(&[range(24, &[1, 4, 10], 1)]);
    witness(&mut v);
    settle(&mut v);
    assert!(!v.ranges[&24].holds(10), "{:?}", v.ranges[&24]);
}
