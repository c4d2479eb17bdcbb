//! The nemesis: one fault per interval, chosen by the run's seeded RNG,
//! applied for a while and then undone.
//!
//! ```text
//!  warmup ─► pick kind (weights) ─► apply ─► hold fault_s ─► undo ─► quiet ─► next interval
//!             kill            kill -9 (often the leader)        restart
//!             pause           SIGSTOP (often the leader)        SIGCONT
//!             partition-*     POST /v1/debug/net on each side   heal every node
//!             one-way         one node's out- or in-traffic     heal
//!             clock-drift     lease clock ×0.5 … ×3             ×1
//!             transfer-leader leadership of each workload range (nothing to undo)
//!             membership      remove a follower's replica of a     add it back as a learner,
//!                             workload range (load continues)      promote once caught up
//!             drain           `POST /v1/nodes/drain` (often the    undrain (what moved stays)
//!                             leader): the placement driver moves
//!                             its replicas and leaderships away
//!             kill-for-good   kill -9, never restarted: once dead  a spare node joins
//!                             for down_after its replicas are      (--join) and receives its
//!                             replaced on the others               share from the driver
//!             merge-split     a runtime namespace's group merged   (nothing: the next one
//!                             into the root group, or a merged     splits or merges it again)
//!                             one split out again, under load
//!             kill-region     kill -9 every node of a region       restart them all
//!                             (witness included), all running
//!             partition-region a region cut off from the others,  heal every node
//!                             both directions
//! ```

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::distributions::WeightedIndex;
use rand::prelude::*;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use crate::clock::RunClock;
use crate::cluster::{Cluster, ProcState};
use crate::scenario::NemesisConfig;

/// Most faults in one run (the loop's count bound; time bounds it first).
const MAX_FAULTS: usize = 100_000;
/// Lease-clock rates clock-drift picks from (the server takes 0.1..=10).
const DRIFT_RATES: [f64; 5] = [0.5, 0.75, 1.5, 2.0, 3.0];
/// How long undoing a membership change may take (a learner catching up
/// under other faults); the heal phase tries again if it runs out.
const REJOIN_LIMIT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NemesisKind {
    /// kill -9 a node, restart it after the fault.
    Kill,
    /// kill -9 a minority at once (1 of 3, 2 of 5; the leader among them
    /// when one is known), restart them all after the fault.
    KillMinority,
    /// SIGSTOP a node, SIGCONT after the fault.
    Pause,
    /// Cut a range leader off from every peer, both directions.
    PartitionLeader,
    /// Split into a minority and a majority.
    PartitionHalves,
    /// 5 nodes: each sees only its two ring neighbours. 3 nodes: a bridge
    /// (one node sees both others, which do not see each other).
    PartitionRing,
    /// One node's outgoing or incoming Raft traffic dropped.
    OneWay,
    /// One node's lease-expiry clock runs faster or slower.
    ClockDrift,
    /// Leadership of each workload range moved to another node.
    TransferLeader,
    /// A follower's replica of a workload range removed (the range runs
    /// with one voter fewer), then added back through learner → voter.
    Membership,
    /// A node drained by the placement driver, then undrained.
    Drain,
    /// A node killed and never restarted; a spare joins in its place.
    KillForGood,
    /// A runtime namespace's group merged into the root group, or, when
    /// merged, split out into a group of its own again.
    MergeSplit,
    /// Every node of a random region killed at once (only while every
    /// node runs: a region's loss on top of another fault can take a
    /// quorum no layout survives), restarted after the fault.
    KillRegion,
    /// A random region cut off from the others, both directions.
    PartitionRegion,
}

/// A fault as applied, for the report.
#[derive(Debug, Clone, Serialize)]
pub struct NemesisEvent {
    pub kind: NemesisKind,
    pub what: String,
    pub start_us: u64,
    pub end_us: Option<u64>,
    /// Applying or undoing went wrong (the heal phase retries the undo).
    pub error: Option<String>,
}

/// How to take a fault back.
enum Undo {
    Restart(usize),
    RestartAll(Vec<usize>),
    Resume(usize),
    HealNet,
    ClockRate(usize),
    /// Every node a voter of the range again.
    Rejoin(u64),
    /// The node (id) takes replicas again.
    Undrain(u64),
    /// A spare node joins.
    AddSpare,
    Nothing,
}

/// What the progress line shows.
pub type Status = Arc<Mutex<String>>;

pub struct Nemesis<'a> {
    pub cluster: &'a mut Cluster,
    pub cfg: &'a NemesisConfig,
    /// Leader faults target the leaders of these ranges.
    pub ranges: &'a [u64],
    /// What `merge-split` merges and splits.
    pub runtime_namespaces: &'a [String],
    pub rng: ChaCha8Rng,
    pub clock: RunClock,
    pub status: Status,
}

impl Nemesis<'_> {
    /// Runs faults until `end` (run time), leaving none applied.
    pub async fn run(mut self, end: Duration) -> Vec<NemesisEvent> {
        let weights = self.cfg.weights.clone().unwrap_or_else(|| vec![1; self.cfg.kinds.len()]);
        let pick = WeightedIndex::new(&weights).expect("validated weights");
        let interval = Duration::from_secs_f64(self.cfg.interval_s);
        let mut next = Duration::from_secs_f64(self.cfg.warmup_s);
        let mut events = Vec::new();
        for _ in 0..MAX_FAULTS {
            if next >= end {
                break;
            }
            tokio::time::sleep(next.saturating_sub(self.clock.elapsed())).await;
            let kind = self.cfg.kinds[pick.sample(&mut self.rng)];
            let [lo, hi] = match kind {
                NemesisKind::Pause => self.cfg.pause_s.unwrap_or(self.cfg.fault_s),
                _ => self.cfg.fault_s,
            };
            let hold = Duration::from_secs_f64(self.rng.gen_range(lo..=hi));
            let start_us = self.clock.now_us();
            let (what, undo, error) = match self.apply(kind, hold).await {
                Ok((what, undo)) => (what, undo, None),
                Err(e) => (format!("{kind:?} (failed)"), Undo::HealNet, Some(format!("{e:#}"))),
            };
            info!(?kind, %what, "nemesis: apply");
            self.set_status(format!("{what} (since {:.1}s)", start_us as f64 / 1e6));
            tokio::time::sleep(hold.min(end.saturating_sub(self.clock.elapsed()))).await;
            let undo_error = self.undo(undo).await.err().map(|e| format!("undo: {e:#}"));
            self.set_status("none".into());
            events.push(NemesisEvent { kind, what, start_us, end_us: Some(self.clock.now_us()), error: error.or(undo_error) });
            next = (next + interval).max(self.clock.elapsed() + interval / 4);
        }
        events
    }

    fn set_status(&self, s: String) {
        *self.status.lock().expect("status") = s;
    }

    fn running(&self) -> Vec<usize> {
        (0..self.cluster.len()).filter(|&i| self.cluster.state(i) == ProcState::Running).collect()
    }

    /// A random region of the cluster's (an error without regions).
    fn random_region(&mut self) -> anyhow::Result<String> {
        let regions = self.cluster.regions();
        regions.choose(&mut self.rng).cloned().ok_or_else(|| anyhow::anyhow!("the cluster has no regions"))
    }

    fn random_node(&mut self) -> usize {
        let running = self.running();
        *running.choose(&mut self.rng).unwrap_or(&0)
    }

    /// The leader of a random workload range (with probability `p`), else a
    /// random running node. Returns the node and how it was chosen.
    async fn target(&mut self, p_leader: f64) -> (usize, String) {
        if self.rng.gen_bool(p_leader) {
            let range = *self.ranges.choose(&mut self.rng).unwrap_or(&2);
            if let Some(l) = self.cluster.leader_of(range).await {
                return (l, format!("node {} (leader of range {range})", self.cluster.id(l)));
            }
        }
        let i = self.random_node();
        (i, format!("node {}", self.cluster.id(i)))
    }

    async fn apply(&mut self, kind: NemesisKind, hold: Duration) -> anyhow::Result<(String, Undo)> {
        let n = self.cluster.len();
        let secs = hold.as_secs_f64();
        Ok(match kind {
            NemesisKind::Kill => {
                let (i, who) = self.target(0.5).await;
                self.cluster.kill9(i);
                (format!("kill -9 {who} for {secs:.1}s"), Undo::Restart(i))
            }
            NemesisKind::KillMinority => {
                let (first, _) = self.target(0.8).await;
                let mut rest: Vec<usize> = self.running().into_iter().filter(|&j| j != first).collect();
                rest.shuffle(&mut self.rng);
                let mut victims = vec![first];
                victims.extend(rest.into_iter().take(((n - 1) / 2).saturating_sub(1)));
                for &i in &victims {
                    self.cluster.kill9(i);
                }
                let ids: Vec<u64> = victims.iter().map(|&i| self.cluster.id(i)).collect();
                (format!("kill -9 minority {ids:?} for {secs:.1}s"), Undo::RestartAll(victims))
            }
            NemesisKind::Pause => {
                let (i, who) = self.target(0.7).await;
                self.cluster.pause(i)?;
                (format!("SIGSTOP {who} for {secs:.1}s"), Undo::Resume(i))
            }
            NemesisKind::PartitionLeader => {
                let (i, who) = self.target(1.0).await;
                self.partition(&isolate(n, i)).await?;
                (format!("isolate {who} for {secs:.1}s"), Undo::HealNet)
            }
            NemesisKind::PartitionHalves => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                let blocked = halves(&order);
                self.partition(&blocked).await?;
                let minority: Vec<u64> = order[..n / 2].iter().map(|&i| self.cluster.id(i)).collect();
                (format!("partition minority {minority:?} from the rest for {secs:.1}s"), Undo::HealNet)
            }
            NemesisKind::PartitionRing => {
                let mut order: Vec<usize> = (0..n).collect();
                order.shuffle(&mut self.rng);
                self.partition(&ring(&order)).await?;
                let ids: Vec<u64> = order.iter().map(|&i| self.cluster.id(i)).collect();
                let shape = if n >= 5 { "ring" } else { "bridge (first node sees both)" };
                (format!("{shape} {ids:?} for {secs:.1}s"), Undo::HealNet)
            }
            NemesisKind::OneWay => {
                let (i, who) = self.target(0.5).await;
                let others: Vec<u64> = (0..n).filter(|&j| j != i).map(|j| self.cluster.id(j)).collect();
                let outgoing = self.rng.gen_bool(0.5);
                if outgoing {
                    self.cluster.set_net(i, &others, &[]).await?;
                } else {
                    self.cluster.set_net(i, &[], &others).await?;
                }
                let dir = if outgoing { "cannot send to" } else { "cannot hear from" };
                (format!("one-way: {who} {dir} {others:?} for {secs:.1}s"), Undo::HealNet)
            }
            NemesisKind::ClockDrift => {
                let (i, who) = self.target(0.6).await;
                let rate = *DRIFT_RATES.choose(&mut self.rng).expect("non-empty");
                self.cluster.set_clock_rate(i, rate).await?;
                (format!("lease clock x{rate} on {who} for {secs:.1}s"), Undo::ClockRate(i))
            }
            NemesisKind::TransferLeader => {
                let mut done = Vec::new();
                for &range in self.ranges {
                    let Some(l) = self.cluster.leader_of(range).await else { continue };
                    let others: Vec<usize> = self.running().into_iter().filter(|&j| j != l).collect();
                    let Some(&to) = others.choose(&mut self.rng) else { continue };
                    let to_id = self.cluster.id(to);
                    match self.cluster.transfer_leader(l, range, to_id).await {
                        Ok(()) => done.push(format!("range {range}: {} -> {to_id}", self.cluster.id(l))),
                        Err(e) => done.push(format!("range {range}: failed ({e:#})")),
                    }
                }
                (format!("transfer leader {}", done.join(", ")), Undo::Nothing)
            }
            NemesisKind::Membership => {
                let range = *self.ranges.choose(&mut self.rng).unwrap_or(&2);
                let Some((l, voters, _)) = self.cluster.members_of(range).await else {
                    anyhow::bail!("range {range} has no leader to change its membership")
                };
                let leader_id = self.cluster.id(l);
                let followers: Vec<u64> = voters.into_iter().filter(|v| *v != leader_id).collect();
                let Some(&victim) = followers.choose(&mut self.rng) else { anyhow::bail!("range {range} has no follower to remove") };
                self.cluster.change_member(l, range, "remove", victim).await?;
                (format!("remove node {victim} from range {range} for {secs:.1}s, then add it back"), Undo::Rejoin(range))
            }
            NemesisKind::Drain => {
                let (i, who) = self.target(0.5).await;
                let id = self.cluster.id(i);
                let via = self.random_node();
                self.cluster.post(via, &format!("/v1/nodes/drain?id={id}")).await?;
                (format!("drain {who} for {secs:.1}s"), Undo::Undrain(id))
            }
            NemesisKind::MergeSplit => {
                let name = self.runtime_namespaces.choose(&mut self.rng).expect("validated: some").clone();
                let via = self.random_node();
                let info: serde_json::Value =
                    serde_json::from_str(&self.cluster.get(via, &format!("/v1/namespaces/describe?name={name}")).await?)?;
                let shared = info["state"] == "shared";
                let op = if shared { "split" } else { "merge" };
                let after: serde_json::Value =
                    serde_json::from_str(&self.cluster.post(via, &format!("/v1/namespaces/{op}?name={name}")).await?)?;
                (format!("{op} {name}: now {} in range {}", after["state"], after["range_id"]), Undo::Nothing)
            }
            NemesisKind::KillRegion => {
                anyhow::ensure!(self.running().len() == n, "not yet: a node is down, and a region's loss on top could take a quorum");
                let region = self.random_region()?;
                let victims: Vec<usize> = (0..n).filter(|&i| self.cluster.region_of(i) == Some(region.as_str())).collect();
                for &i in &victims {
                    self.cluster.kill9(i);
                }
                let ids: Vec<u64> = victims.iter().map(|&i| self.cluster.id(i)).collect();
                (format!("kill -9 region {region} (nodes {ids:?}) for {secs:.1}s"), Undo::RestartAll(victims))
            }
            NemesisKind::PartitionRegion => {
                let region = self.random_region()?;
                let inside: Vec<usize> = (0..n).filter(|&i| self.cluster.region_of(i) == Some(region.as_str())).collect();
                let outside: Vec<usize> = (0..n).filter(|i| !inside.contains(i)).collect();
                let blocked: Vec<Vec<usize>> = (0..n).map(|i| if inside.contains(&i) { outside.clone() } else { inside.clone() }).collect();
                self.partition(&blocked).await?;
                (format!("cut region {region} off from the others for {secs:.1}s"), Undo::HealNet)
            }
            NemesisKind::KillForGood => {
                anyhow::ensure!(self.cluster.spares_left() > 0, "no spare node left to join in place of one killed for good");
                // Two permanent losses before the first is repaired can take
                // a range's majority: beyond what 3 replicas survive.
                let down = self.cluster.voters_down().await;
                anyhow::ensure!(down.is_empty(), "not yet: a range still counts a voter that is down ({})", down.join(", "));
                let (i, who) = self.target(0.5).await;
                self.cluster.retire(i);
                (format!("kill -9 {who} for good; a spare joins after {secs:.1}s"), Undo::AddSpare)
            }
        })
    }

    /// Applies blocked sets (node indices per node), both directions.
    async fn partition(&self, blocked: &[Vec<usize>]) -> anyhow::Result<()> {
        for (i, b) in blocked.iter().enumerate() {
            if b.is_empty() || self.cluster.state(i) != ProcState::Running {
                continue;
            }
            let ids: Vec<u64> = b.iter().map(|&j| self.cluster.id(j)).collect();
            self.cluster.set_net(i, &ids, &ids).await?;
        }
        Ok(())
    }

    async fn undo(&mut self, undo: Undo) -> anyhow::Result<()> {
        match undo {
            Undo::Restart(i) => self.cluster.restart(i),
            Undo::RestartAll(v) => {
                for i in v {
                    self.cluster.restart(i)?;
                }
                Ok(())
            }
            Undo::Resume(i) => self.cluster.resume(i),
            Undo::HealNet => heal_net(self.cluster).await,
            Undo::ClockRate(i) => self.cluster.set_clock_rate(i, 1.0).await,
            Undo::Rejoin(range) => self.cluster.restore_members(range, tokio::time::Instant::now() + REJOIN_LIMIT).await,
            Undo::Undrain(id) => {
                let via = self.random_node();
                self.cluster.post(via, &format!("/v1/nodes/undrain?id={id}")).await.map(|_| ())
            }
            Undo::AddSpare => {
                let through = self.random_node();
                self.cluster.add_spare(through).map(|_| ())
            }
            Undo::Nothing => Ok(()),
        }
    }
}

/// Clears every running node's network faults; reports the first failure.
pub async fn heal_net(cluster: &Cluster) -> anyhow::Result<()> {
    let mut first_err = None;
    for i in 0..cluster.len() {
        if cluster.state(i) == ProcState::Running {
            if let Err(e) = cluster.set_net(i, &[], &[]).await {
                debug!("healing node {}: {e:#}", cluster.id(i));
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// Node `x` cut off from everyone: blocked sets per node index.
pub fn isolate(n: usize, x: usize) -> Vec<Vec<usize>> {
    (0..n).map(|i| if i == x { (0..n).filter(|&j| j != x).collect() } else { vec![x] }).collect()
}

/// The first `n / 2` of `order` against the rest.
pub fn halves(order: &[usize]) -> Vec<Vec<usize>> {
    let n = order.len();
    let minority = &order[..n / 2];
    let side = |i: usize| minority.contains(&i);
    (0..n).map(|i| (0..n).filter(|&j| side(j) != side(i)).collect()).collect()
}

/// Each node sees only its neighbours in `order` (a ring); with fewer than
/// five nodes a ring is fully connected, so `order[0]` bridges the others
/// instead.
pub fn ring(order: &[usize]) -> Vec<Vec<usize>> {
    let n = order.len();
    let pos = |i: usize| order.iter().position(|&x| x == i).expect("a permutation");
    (0..n)
        .map(|i| {
            (0..n)
                .filter(|&j| {
                    if j == i {
                        return false;
                    }
                    let (a, b) = (pos(i), pos(j));
                    if n < 5 {
                        a != 0 && b != 0
                    } else {
                        let d = (a + n - b) % n;
                        d != 1 && d != n - 1
                    }
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symmetric(b: &[Vec<usize>]) -> bool {
        b.iter().enumerate().all(|(i, bi)| bi.iter().all(|&j| b[j].contains(&i)))
    }

    #[test]
    fn isolation_cuts_one_node_both_ways() {
        let b = isolate(3, 1);
        assert_eq!(b, vec![vec![1], vec![0, 2], vec![1]]);
        assert!(symmetric(&b));
    }

    #[test]
    fn halves_leave_a_majority_connected() {
        let b = halves(&[4, 2, 0, 1, 3]);
        assert!(symmetric(&b));
        assert_eq!(b[4], vec![0, 1, 3]);
        assert_eq!(b[0], vec![2, 4]);
        assert_eq!(halves(&[1, 0, 2])[1], vec![0, 2]);
    }

    #[test]
    fn five_node_ring_sees_exactly_two_neighbours() {
        let order = [3, 0, 4, 1, 2];
        let b = ring(&order);
        assert!(symmetric(&b));
        for (i, bi) in b.iter().enumerate() {
            assert_eq!(bi.len(), 2, "node {i} blocks {bi:?}");
        }
        // 0's neighbours are 3 and 4.
        assert_eq!(b[0], vec![1, 2]);
    }

    #[test]
    fn three_node_ring_is_a_bridge() {
        let b = ring(&[2, 0, 1]);
        assert_eq!(b, vec![vec![1], vec![0], vec![]]);
    }
}
