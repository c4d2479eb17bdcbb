//! What the scheduler sees: nodes, ranges, the operators running, and its
//! settings. Built by the placement driver from node and range heartbeats
//! and the membership gossip; plain data, so tests and the simulation
//! build it by hand.

use std::collections::{BTreeMap, BTreeSet};

use meridian_membership::{Labels, Liveness, NodeRole};

/// One node as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// The node id.
    pub id: u64,
    /// Where it is.
    pub labels: Labels,
    /// Data nodes take replicas; a witness takes only the witness slot of
    /// a region-survival range ([`RangeView::witness_slot`]).
    pub role: NodeRole,
    /// What the membership gossip says of it.
    pub liveness: Liveness,
    /// Since when (ms) it has been dead without a break, if it is.
    pub dead_since_ms: Option<u64>,
    /// An operator asked for every replica and leadership to leave it
    /// (`meridian node drain`).
    pub draining: bool,
    /// Its capacity and load, as it last reported them (none yet: not
    /// held against it).
    pub load: Option<Load>,
}

/// A node's capacity and load: its heartbeat to the placement driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// The size of the file system holding its data.
    pub disk_capacity_bytes: u64,
    /// What is free on it.
    pub disk_available_bytes: u64,
    /// Its storage engine's files.
    pub engine_bytes: u64,
    /// Replicas it holds.
    pub replicas: u64,
    /// Ranges it leads.
    pub leaders: u64,
}

/// Below this share of its disk free (percent), a node takes no new
/// replica: a replica brought to a full disk would stop the node's every
/// write, where the moves away from it need room to stage snapshots.
/// (CockroachDB stops at 95 % full too.)
pub const MIN_DISK_AVAILABLE_PERCENT: u64 = 5;

/// Below this share of its disk free (percent), a node sheds replicas to
/// nodes with more room, one at a time, before it fills up (twice the
/// room [`MIN_DISK_AVAILABLE_PERCENT`] keeps: it stops well before the
/// engine's own limits, and the receiving nodes stage the snapshots).
pub const SHED_DISK_AVAILABLE_PERCENT: u64 = 10;

impl Load {
    fn below(&self, percent: u64) -> bool {
        self.disk_capacity_bytes > 0
            && u128::from(self.disk_available_bytes) * 100 < u128::from(self.disk_capacity_bytes) * u128::from(percent)
    }

    /// Less than [`MIN_DISK_AVAILABLE_PERCENT`] of the disk free.
    pub fn disk_full(&self) -> bool {
        self.below(MIN_DISK_AVAILABLE_PERCENT)
    }

    /// Less than [`SHED_DISK_AVAILABLE_PERCENT`] of the disk free.
    pub fn disk_filling(&self) -> bool {
        self.below(SHED_DISK_AVAILABLE_PERCENT)
    }

    /// Free share of the disk, in thousandths (1000 when not reported).
    pub fn free_permille(&self) -> u64 {
        if self.disk_capacity_bytes == 0 {
            return 1000;
        }
        (u128::from(self.disk_available_bytes) * 1000 / u128::from(self.disk_capacity_bytes)) as u64
    }
}

impl NodeView {
    /// A live data node that is not draining: it may receive replicas and
    /// leaderships. A suspect node gets none.
    pub fn eligible(&self) -> bool {
        self.role == NodeRole::Data && self.liveness == Liveness::Alive && !self.draining
    }

    /// An eligible node with room on its disk: it may receive a new
    /// replica.
    pub fn takes_replicas(&self) -> bool {
        self.eligible() && !self.load.is_some_and(|l| l.disk_full())
    }

    /// A live witness node that is not draining: it may keep the witness
    /// replica of a range with a witness slot in its region (a witness's
    /// [`NodeView::eligible`]).
    pub fn eligible_witness(&self) -> bool {
        self.role == NodeRole::Witness && self.liveness == Liveness::Alive && !self.draining
    }

    /// An eligible witness with room on its disk: it may receive one.
    pub fn takes_witness(&self) -> bool {
        self.eligible_witness() && !self.load.is_some_and(|l| l.disk_full())
    }

    /// Its disk is filling ([`Load::disk_filling`]): it sheds replicas and
    /// receives none to balance.
    pub fn disk_filling(&self) -> bool {
        self.load.is_some_and(|l| l.disk_filling())
    }

    /// Whether it counts towards a range's quorum now (alive, or not heard
    /// of yet: the scheduler only ever needs "surely not").
    pub fn counts_for_quorum(&self) -> bool {
        matches!(self.liveness, Liveness::Alive | Liveness::Unknown)
    }
}

/// One range (Raft group) as its leader reports it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RangeView {
    /// The range id.
    pub id: u64,
    /// Its voters (the incoming configuration's while `joint`).
    pub voters: BTreeSet<u64>,
    /// Its learners.
    pub learners: BTreeSet<u64>,
    /// The node leading it (0: none known).
    pub leader: u64,
    /// Replicas within reach of the leader's log (a learner that may be
    /// promoted).
    pub caught_up: BTreeSet<u64>,
    /// In a joint configuration (a change entered, not left yet).
    pub joint: bool,
    /// Voters its policy asks for.
    pub replicas: usize,
    /// Labels every replica's node must have (`region`, `zone` or `host`
    /// = value).
    pub constraints: Vec<(String, String)>,
    /// Moved only to heal it (a dead or draining node, missing or excess
    /// replicas, hosts shared), never to balance or spread zones: the meta
    /// range, which every founding member reads its catalog from and whose
    /// leader runs the placement driver.
    pub pinned: bool,
    /// Voters wanted per region (its namespace's survival goal: all in
    /// the home region for `zone`, over three regions for `region`).
    /// Empty: `replicas` voters wherever the constraints allow.
    pub region_voters: BTreeMap<String, usize>,
    /// The region its leadership belongs in (none: anywhere).
    pub home_region: Option<String>,
    /// Regions that keep one non-voting replica (a learner) each: read
    /// replicas, warm for a planned move.
    pub read_regions: BTreeSet<String>,
}

impl RangeView {
    /// Every node holding a replica.
    pub fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.voters.iter().chain(self.learners.iter()).copied()
    }

    /// Whether `node` holds a replica.
    pub fn holds(&self, node: u64) -> bool {
        self.voters.contains(&node) || self.learners.contains(&node)
    }

    /// Whether the voter `range` wants in `region` may be a witness: a
    /// region-survival layout (voters over three regions or more) wanting
    /// a single voter there, outside the home region — the tie-breaking
    /// vote, which needs the log but not the data. (A range holds one
    /// witness at most: the scheduler checks that too.)
    pub fn witness_slot(&self, region: &str) -> bool {
        self.region_voters.len() >= 3 && self.region_voters.get(region) == Some(&1) && self.home_region.as_deref() != Some(region)
    }

    /// Voters its policy asks for: the per-region ones' sum when it has
    /// them, else `replicas` (at least one).
    pub fn voters_wanted(&self) -> usize {
        if self.region_voters.is_empty() {
            self.replicas.max(1)
        } else {
            self.region_voters.values().sum::<usize>().max(1)
        }
    }
}

/// The scheduler's knobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long a node must have been dead before its replicas are
    /// replaced elsewhere. 5 minutes (CockroachDB's
    /// `server.time_until_store_dead`): a rolling restart or a reboot
    /// takes a minute or two, and replacing a replica costs a snapshot.
    pub down_after_ms: u64,
    /// Operators a node takes part in at once at most (each may stream a
    /// snapshot to or from it).
    pub max_ops_per_node: usize,
    /// New operators one round proposes at most.
    pub max_new_ops: usize,
    /// Replica (and leader) counts of eligible nodes may differ by this
    /// much before the balancer moves one.
    pub balance_tolerance: usize,
    /// How long one step may take before the operator is rolled back.
    pub step_timeout_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { down_after_ms: 300_000, max_ops_per_node: 4, max_new_ops: 16, balance_tolerance: 1, step_timeout_ms: 60_000 }
    }
}

/// The whole cluster as the scheduler sees it at one moment.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Every node, by id.
    pub nodes: BTreeMap<u64, NodeView>,
    /// Every range, by id.
    pub ranges: BTreeMap<u64, RangeView>,
    /// Ranges with an operator running, and what each does.
    pub running: BTreeMap<u64, crate::operator::Kind>,
}

impl ClusterView {
    /// Replicas held per node.
    pub fn replica_counts(&self) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = self.nodes.keys().map(|n| (*n, 0)).collect();
        for r in self.ranges.values() {
            for n in r.members() {
                *c.entry(n).or_default() += 1;
            }
        }
        c
    }

    /// Leaderships held per node.
    pub fn leader_counts(&self) -> BTreeMap<u64, usize> {
        let mut c: BTreeMap<u64, usize> = self.nodes.keys().map(|n| (*n, 0)).collect();
        for r in self.ranges.values().filter(|r| r.leader != 0) {
            *c.entry(r.leader).or_default() += 1;
        }
        c
    }

    /// Whether `node` has been dead for at least `down_after_ms` at `now`.
    pub fn dead_for_good(&self, node: u64, now_ms: u64, down_after_ms: u64) -> bool {
        self.nodes
            .get(&node)
            .is_some_and(|n| n.liveness == Liveness::Dead && n.dead_since_ms.is_some_and(|t| now_ms.saturating_sub(t) >= down_after_ms))
    }

    /// Whether `voters` may still have a quorum (a majority alive or not
    /// known dead): a range without one cannot commit any change.
    pub fn has_quorum(&self, voters: &BTreeSet<u64>) -> bool {
        let live = voters.iter().filter(|v| self.nodes.get(v).is_some_and(NodeView::counts_for_quorum)).count();
        !voters.is_empty() && live > voters.len() / 2
    }

    /// Whether a majority of `voters` is surely alive: what a removal or a
    /// promotion must keep (a node not heard of yet counts against it).
    pub fn has_live_quorum(&self, voters: &BTreeSet<u64>) -> bool {
        let live = voters.iter().filter(|v| self.nodes.get(v).is_some_and(|n| n.liveness == Liveness::Alive)).count();
        !voters.is_empty() && live > voters.len() / 2
    }
}
