//! The region run: the randomized run of [`random_run`](fn@crate::random_run) on five
//! nodes in three regions — a region-survival layout, 2 + 2 + 1 voters —
//! with latency by region pair in the simulated network, and two more
//! faults: a whole region lost at once (every node of it crashed), and a
//! region cut off from the others. Every invariant of the randomized run
//! holds (acknowledged writes survive, reads are linearizable, one leader
//! per term, replicas converge).
//!
//! ```text
//!   home {1, 2} ──2 ticks── second {3, 4} ──2 ticks── third {5}
//!        └──────────────4 ticks──────────────────────────┘
//! ```

use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::{Cluster, SimConfig};
use crate::random_run::{random_run_with, FaultCounts, RunReport};

/// The regions, home first: a region's loss always leaves a majority.
pub const REGIONS: [&[u64]; 3] = [&[1, 2], &[3, 4], &[5]];

/// Extra ticks on a link between two regions (home–second, second–third,
/// home–third): a cross-region round trip is several ticks, against an
/// election timeout of ten.
pub const REGION_LINK_TICKS: [(usize, usize, u64); 3] = [(0, 1, 2), (1, 2, 2), (0, 2, 4)];

/// The five-node, region-survival cluster with latency by region pair.
fn shape(c: &mut Cluster) {
    for (a, b, ticks) in REGION_LINK_TICKS {
        for &x in REGIONS[a] {
            for &y in REGIONS[b] {
                c.net.set_link_delay(x, y, ticks);
            }
        }
    }
}

/// About every 150 ticks: a random region lost (its nodes crashed at once,
/// restarted by the shared nemesis or below), the crashed ones restarted,
/// or a random region cut off from the others.
fn region_step(c: &mut Cluster, _ranges: &[u64], nodes: &[u64], faults: &mut FaultCounts) {
    if !c.rng.gen_bool(1.0 / 150.0) {
        return;
    }
    let region = *REGIONS.choose(&mut c.rng).expect("regions");
    match c.rng.gen_range(0..3) {
        0 => {
            // Only when the rest keeps a majority up: a region's loss on
            // top of other crashes would take the quorum, which no layout
            // survives.
            let down_elsewhere = nodes.iter().filter(|n| !region.contains(n) && !c.is_up(**n)).count();
            if down_elsewhere == 0 {
                for &n in region {
                    if c.is_up(n) {
                        c.crash(n);
                    }
                }
                faults.region_losses += 1;
            }
        }
        1 => {
            for &n in nodes {
                if !c.is_up(n) {
                    c.restart(n);
                }
            }
        }
        _ => {
            let rest: Vec<u64> = nodes.iter().copied().filter(|n| !region.contains(n)).collect();
            c.net.partition(region, &rest);
            faults.region_partitions += 1;
        }
    }
}

/// A region run of `steps` ticks from `seed`: 5 nodes, every range on all
/// five, `ranges` ranges.
pub fn region_run(seed: u64, ranges: u64, steps: u64) -> RunReport {
    let mut cfg = SimConfig::new(seed);
    cfg.nodes = 5;
    cfg.initial_voters = 5;
    cfg.ranges = ranges;
    random_run_with(cfg, steps, region_step, shape)
}

/// [`region_run`] with node 5, alone in the third region, a witness: it
/// votes and keeps the log but no data, serves nothing, and hands
/// leadership to a full voter when it wins it. Every invariant still
/// holds, and the witness's data column stays empty.
pub fn witness_region_run(seed: u64, ranges: u64, steps: u64) -> RunReport {
    let mut cfg = SimConfig::new(seed);
    cfg.nodes = 5;
    cfg.initial_voters = 5;
    cfg.ranges = ranges;
    cfg.witnesses = REGIONS[2].to_vec();
    random_run_with(cfg, steps, region_step, shape)
}
