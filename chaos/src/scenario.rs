//! Scenario files (`chaos/scenarios/*.toml`, one scenario per file): the
//! cluster, the workloads, the faults and what the run is expected to find.
//!
//! ```toml
//! name = "register-kill"
//! seed = 1
//! nodes = 3
//! duration_s = 45
//! registers = { clients = 6, keys = 3 }
//! locks = { clients = 3, ttl_s = 3 }
//! watchers = 2
//! nemesis = { interval_s = 6, fault_s = [2, 4], kinds = ["kill", "pause"], weights = [2, 1] }
//! ```

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use crate::nemesis::NemesisKind;

/// Key prefix of the register workload (and of its namespace by default).
pub const REGISTER_PREFIX: &str = "/reg/";
/// Key prefix of the lock workload (and of its namespace by default).
pub const LOCK_PREFIX: &str = "/locks/";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub seed: u64,
    #[serde(default = "default_nodes")]
    pub nodes: u64,
    pub duration_s: u64,
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Declared namespaces, each its own Raft group (range 3, 4, ... in
    /// order). Keys outside them live in the root namespace (range 2).
    #[serde(default = "default_namespaces")]
    pub namespaces: Vec<String>,
    /// Namespaces created at runtime once the cluster is up (`POST
    /// /v1/namespaces`), each with a group of its own: the `merge-split`
    /// fault merges their groups into the root group and splits them out
    /// again.
    #[serde(default)]
    pub runtime_namespaces: Vec<String>,
    pub registers: Option<RegisterWorkload>,
    pub locks: Option<LockWorkload>,
    /// Watchers of the register keys, each from revision 1.
    #[serde(default)]
    pub watchers: u32,
    pub nemesis: Option<NemesisConfig>,
    /// Runs the placement driver on every node (`[placement] execute =
    /// true`): required by the drain and kill-for-good faults.
    pub placement: Option<PlacementChaos>,
    /// A multi-region topology instead of `nodes` (as `meridian dev
    /// --regions`): required by the kill-region and partition-region
    /// faults.
    pub regions: Option<RegionsChaos>,
    /// Serve linearizable reads from local state (deliberately broken).
    #[serde(default)]
    pub unsafe_local_reads: bool,
    /// The run must find violations (the checker's self-test).
    #[serde(default)]
    pub expect_violations: bool,
    /// Longest the cluster may take to recover once every fault is undone.
    #[serde(default = "default_heal_timeout_s")]
    pub heal_timeout_s: u64,
    /// Wall-clock budget of the linearizability checks.
    #[serde(default = "default_check_budget_s")]
    pub check_budget_s: u64,
}

/// Read / write / compare-and-set on a few keys, each client pinned to one
/// node, every written value unique.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterWorkload {
    pub clients: u32,
    pub keys: u32,
    /// Per-operation deadline (one RPC to one node).
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// Pause between a client's operations.
    #[serde(default = "default_think_ms")]
    pub think_ms: u64,
    /// Percent of reads; the rest splits 60/40 between writes and CAS.
    #[serde(default = "default_read_percent")]
    pub read_percent: u32,
}

/// Clients contending for one native lock, each holder writing to a
/// fenced resource (a guarded txn on a Meridian key, and an in-process
/// [`meridian_client::Fence`]).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockWorkload {
    pub clients: u32,
    /// Session TTL; short, so pauses and partitions outlast it.
    #[serde(default = "default_lock_ttl_s")]
    pub ttl_s: i64,
    /// Fenced writes per hold.
    #[serde(default = "default_writes_per_hold")]
    pub writes_per_hold: u32,
    /// Pause before each fenced write.
    #[serde(default = "default_hold_ms")]
    pub hold_ms: u64,
    /// Percent of holds in which the holder stalls longer than its TTL (a
    /// GC pause) and then writes without checking that it still holds.
    #[serde(default = "default_stall_percent")]
    pub stall_percent: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NemesisConfig {
    /// One fault per interval.
    pub interval_s: f64,
    /// How long a fault stays, drawn uniformly from `[min, max]`.
    #[serde(default = "default_fault_s")]
    pub fault_s: [f64; 2],
    /// Pause length, when different (e.g. longer than the lock TTL).
    pub pause_s: Option<[f64; 2]>,
    /// Quiet time before the first fault.
    #[serde(default = "default_warmup_s")]
    pub warmup_s: f64,
    pub kinds: Vec<NemesisKind>,
    /// Relative weights, one per kind (default: equal).
    pub weights: Option<Vec<u32>>,
    /// Whose range leader the leader faults aim at (default: any workload's).
    pub target: Option<Workload>,
}

/// The placement driver under faults: nodes drained and undrained, nodes
/// killed for good (their replicas replaced once dead for `down_after_s`)
/// and spares joining in their place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlacementChaos {
    /// `[placement] down_after_ms`, in seconds (production's default is 5
    /// minutes; a run wants the replacement within its faults).
    #[serde(default = "default_down_after_s")]
    pub down_after_s: u64,
    /// Nodes that may join in place of ones killed for good.
    #[serde(default = "default_spares")]
    pub spares: u64,
}

impl PlacementChaos {
    /// The `[placement]` table every node's config gets.
    pub fn toml(&self) -> String {
        format!("[placement]\nexecute = true\ndown_after_ms = {}\n", self.down_after_s * 1000)
    }
}

/// Three regions as `meridian dev --regions` lays them out: `zones` data
/// nodes in each, a witness node in each when `witnesses`, WAN latency
/// between them (dev's 66/64/146 ms, or `rtt_ms` for every pair), the
/// placement driver executing. The runtime namespaces (which must hold
/// the workloads' keys) are created with region survival homed in the
/// first region, and the run starts once their replicas are in place.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionsChaos {
    pub names: Vec<String>,
    #[serde(default = "default_region_zones")]
    pub zones: usize,
    #[serde(default)]
    pub witnesses: bool,
    pub rtt_ms: Option<u64>,
}

impl RegionsChaos {
    /// Every node's place, in member order (data nodes, then witnesses).
    pub fn places(&self) -> Result<Vec<meridian_server::dev_layout::Place>> {
        let mut places = meridian_server::dev_layout::regional_places(&self.names, self.zones).map_err(anyhow::Error::msg)?;
        if self.witnesses {
            meridian_server::dev_layout::add_witnesses(&mut places, &self.names).map_err(anyhow::Error::msg)?;
        }
        Ok(places)
    }
}

fn default_region_zones() -> usize {
    2
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    Registers,
    Locks,
}

fn default_down_after_s() -> u64 {
    5
}
fn default_spares() -> u64 {
    2
}
fn default_nodes() -> u64 {
    3
}
/// The server's default, so the scenarios test what users run.
fn default_tick_ms() -> u64 {
    meridian_server::config::DEFAULT_TICK_MS
}
fn default_namespaces() -> Vec<String> {
    vec![REGISTER_PREFIX.into(), LOCK_PREFIX.into()]
}
fn default_heal_timeout_s() -> u64 {
    30
}
fn default_check_budget_s() -> u64 {
    60
}
fn default_op_timeout_ms() -> u64 {
    1500
}
fn default_think_ms() -> u64 {
    40
}
fn default_read_percent() -> u32 {
    50
}
fn default_lock_ttl_s() -> i64 {
    3
}
fn default_writes_per_hold() -> u32 {
    3
}
fn default_hold_ms() -> u64 {
    150
}
fn default_stall_percent() -> u32 {
    10
}
fn default_fault_s() -> [f64; 2] {
    [2.0, 4.0]
}
fn default_warmup_s() -> f64 {
    2.0
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading scenario {}", path.display()))?;
        let s: Scenario = toml::from_str(&text).with_context(|| format!("parsing scenario {}", path.display()))?;
        s.validate().with_context(|| format!("scenario {}", path.display()))?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(
            !self.name.is_empty() && self.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "name must be [A-Za-z0-9_-]+"
        );
        ensure!(self.nodes == 3 || self.nodes == 5, "nodes must be 3 or 5, not {}", self.nodes);
        if let Some(r) = &self.regions {
            ensure!(r.names.len() == 3, "regions.names: three regions (a region-survival layout spans three)");
            ensure!((2..=3).contains(&r.zones), "regions.zones must be 2 or 3 (region survival puts 2 voters in two regions)");
            r.places()?;
            ensure!(self.placement.is_none(), "with regions the placement driver executes already: leave out [placement]");
            ensure!(
                self.namespaces.is_empty(),
                "with regions, give the workloads' namespaces as runtime_namespaces (created with region survival)"
            );
            for prefix in
                [(self.registers.is_some(), REGISTER_PREFIX), (self.locks.is_some(), LOCK_PREFIX)].iter().filter(|p| p.0).map(|p| p.1)
            {
                ensure!(
                    self.runtime_namespaces.iter().any(|ns| prefix.starts_with(ns.as_str())),
                    "with regions, the workload keys under {prefix} need a runtime namespace (region survival)"
                );
            }
        }
        ensure!((1..=24 * 3600).contains(&self.duration_s), "duration_s must be 1..=86400");
        ensure!(self.registers.is_some() || self.locks.is_some(), "give at least one workload (registers, locks)");
        ensure!(self.watchers == 0 || self.registers.is_some(), "watchers watch the register keys: add a registers workload");
        ensure!(self.watchers <= 8, "at most 8 watchers");
        ensure!((1..=600).contains(&self.heal_timeout_s), "heal_timeout_s must be 1..=600");
        ensure!((1..=3600).contains(&self.check_budget_s), "check_budget_s must be 1..=3600");
        if let Some(r) = &self.registers {
            ensure!((1..=64).contains(&r.clients), "registers.clients must be 1..=64");
            ensure!((1..=64).contains(&r.keys), "registers.keys must be 1..=64");
            ensure!((50..=60_000).contains(&r.op_timeout_ms), "registers.op_timeout_ms must be 50..=60000");
            ensure!(r.think_ms <= 60_000, "registers.think_ms must be at most 60000");
            ensure!(r.read_percent <= 100, "registers.read_percent must be at most 100");
        }
        if let Some(l) = &self.locks {
            ensure!((1..=32).contains(&l.clients), "locks.clients must be 1..=32");
            ensure!((1..=60).contains(&l.ttl_s), "locks.ttl_s must be 1..=60");
            ensure!((1..=100).contains(&l.writes_per_hold), "locks.writes_per_hold must be 1..=100");
            ensure!(l.hold_ms <= 60_000, "locks.hold_ms must be at most 60000");
            ensure!(l.stall_percent <= 100, "locks.stall_percent must be at most 100");
        }
        if let Some(n) = &self.nemesis {
            ensure!(n.interval_s >= 0.5 && n.interval_s <= 3600.0, "nemesis.interval_s must be 0.5..=3600");
            ensure!(!n.kinds.is_empty(), "nemesis.kinds is empty (leave out [nemesis] for a fault-free run)");
            for [lo, hi] in [Some(n.fault_s), n.pause_s].into_iter().flatten() {
                ensure!(lo > 0.0 && lo <= hi && hi <= 600.0, "fault durations must satisfy 0 < min <= max <= 600");
            }
            ensure!(n.warmup_s >= 0.0 && n.warmup_s <= 600.0, "nemesis.warmup_s must be 0..=600");
            match n.target {
                Some(Workload::Registers) => {
                    ensure!(self.registers.is_some(), "nemesis.target = \"registers\" without a registers workload")
                }
                Some(Workload::Locks) => ensure!(self.locks.is_some(), "nemesis.target = \"locks\" without a locks workload"),
                None => {}
            }
            if n.kinds.contains(&NemesisKind::MergeSplit) {
                ensure!(!self.runtime_namespaces.is_empty(), "the merge-split fault needs runtime_namespaces to merge and split");
                // A merge compacts the namespace's history for watchers
                // (they are cancelled, as etcd cancels one behind a
                // compaction); the watch check follows every event.
                ensure!(self.watchers == 0, "the merge-split fault cancels watchers of the merged namespace: set watchers = 0");
            }
            let placement_kinds = n.kinds.iter().any(|k| matches!(k, NemesisKind::Drain | NemesisKind::KillForGood));
            ensure!(!placement_kinds || self.placement.is_some(), "the drain and kill-for-good faults need a [placement] table");
            let region_kinds = n.kinds.iter().any(|k| matches!(k, NemesisKind::KillRegion | NemesisKind::PartitionRegion));
            ensure!(!region_kinds || self.regions.is_some(), "the kill-region and partition-region faults need a regions table");
            ensure!(
                self.placement.is_none() || !n.kinds.contains(&NemesisKind::Membership),
                "the membership fault changes replicas by hand; with the placement driver on, use drain and kill-for-good"
            );
            if let Some(w) = &n.weights {
                ensure!(w.len() == n.kinds.len(), "nemesis.weights needs one weight per kind");
                ensure!(w.iter().any(|&x| x > 0), "nemesis.weights are all zero");
            }
        }
        if let Some(p) = &self.placement {
            ensure!((1..=600).contains(&p.down_after_s), "placement.down_after_s must be 1..=600");
            ensure!(p.spares <= 5, "placement.spares must be at most 5");
            ensure!(self.nodes == 5, "the placement faults need 5 nodes (ranges keep 3 voters while one is drained or lost)");
        }
        for ns in &self.runtime_namespaces {
            ensure!(ns.starts_with('/') && ns.ends_with('/') && ns.len() > 2, "runtime namespace {ns:?} must look like /name/");
            let overlap = self
                .namespaces
                .iter()
                .chain(self.runtime_namespaces.iter().filter(|o| *o != ns))
                .find(|o| o.starts_with(ns.as_str()) || ns.starts_with(o.as_str()));
            ensure!(overlap.is_none(), "runtime namespace {ns:?} overlaps {:?}", overlap.unwrap_or(ns));
        }
        if self.expect_violations && !self.unsafe_local_reads {
            bail!("expect_violations only makes sense with a deliberately broken mode (unsafe_local_reads)");
        }
        Ok(())
    }

    /// The cluster's shape, for reports: `3 nodes`, or the regions.
    pub fn topology(&self) -> String {
        match &self.regions {
            Some(r) => {
                let witnesses = if r.witnesses { " + a witness" } else { "" };
                format!("regions {} x {} data nodes{witnesses}", r.names.join(","), r.zones)
            }
            None => format!("{} nodes", self.nodes),
        }
    }

    /// The Raft group (range id) holding keys under `prefix`.
    pub fn range_of(&self, prefix: &str) -> u64 {
        self.namespaces.iter().position(|ns| prefix.starts_with(ns.as_str())).map_or(2, |i| i as u64 + 3)
    }

    /// The ranges the workloads use: the targets of leader faults (only
    /// the nemesis' `target` workload's when it names one).
    pub fn workload_ranges(&self) -> Vec<u64> {
        let target = self.nemesis.as_ref().and_then(|n| n.target);
        let mut out = Vec::new();
        if self.registers.is_some() && target != Some(Workload::Locks) {
            out.push(self.range_of(REGISTER_PREFIX));
        }
        if self.locks.is_some() && target != Some(Workload::Registers) {
            out.push(self.range_of(LOCK_PREFIX));
        }
        out.dedup();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_parses_and_validates() {
        let s: Scenario = toml::from_str(
            r#"
name = "x"
seed = 1
duration_s = 10
registers = { clients = 2, keys = 1 }
nemesis = { interval_s = 3, kinds = ["kill", "partition-ring"], weights = [1, 2] }
"#,
        )
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.range_of(REGISTER_PREFIX), 3);
        assert_eq!(s.range_of(LOCK_PREFIX), 4);
        assert_eq!(s.workload_ranges(), vec![3]);
    }

    #[test]
    fn every_shipped_scenario_loads() {
        for dir in ["scenarios", "soak"] {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
            let mut n = 0;
            for e in std::fs::read_dir(&dir).unwrap() {
                let p = e.unwrap().path();
                if p.extension().is_some_and(|x| x == "toml") {
                    let s = Scenario::load(&p).unwrap();
                    assert_eq!(p.file_stem().unwrap().to_str().unwrap(), s.name, "file name and scenario name differ");
                    n += 1;
                }
            }
            assert!(n > 0, "no scenarios in {}", dir.display());
        }
    }

    #[test]
    fn bad_scenarios_are_refused() {
        assert!(toml::from_str::<Scenario>("name='x'\nseed=1\nduration_s=1\nbogus=1").is_err());
        let s: Scenario = toml::from_str("name='x'\nseed=1\nduration_s=5\nnodes=4\nregisters={clients=1,keys=1}").unwrap();
        assert!(s.validate().unwrap_err().to_string().contains("nodes"));
        let s: Scenario = toml::from_str("name='x'\nseed=1\nduration_s=5\nexpect_violations=true\nregisters={clients=1,keys=1}").unwrap();
        assert!(s.validate().is_err());
        // Region faults without regions; regions that cannot hold a
        // region-survival layout; workload keys outside a runtime namespace.
        let base = "name='x'\nseed=1\nduration_s=5\nregisters={clients=1,keys=1}\n";
        for (extra, why) in [
            ("nemesis={interval_s=5,kinds=['kill-region']}", "need a regions table"),
            ("namespaces=[]\nruntime_namespaces=['/reg/']\nregions={names=['a','b']}", "three regions"),
            ("namespaces=[]\nruntime_namespaces=['/reg/']\nregions={names=['a','b','c'],zones=1}", "zones must be 2 or 3"),
            ("namespaces=[]\nruntime_namespaces=['/other/']\nregions={names=['a','b','c']}", "need a runtime namespace"),
            ("runtime_namespaces=['/other/']\nregions={names=['a','b','c']}", "as runtime_namespaces"),
        ] {
            let s: Scenario = toml::from_str(&format!("{base}{extra}")).unwrap();
            let e = s.validate().unwrap_err().to_string();
            assert!(e.contains(why), "{extra}: {e}");
        }
    }
}
