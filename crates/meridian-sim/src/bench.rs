//! The group-commit benchmark: proposals to many ranges at once on an
//! in-process 3-node cluster with RocksDB engines, measuring committed
//! entries per second and fsyncs per committed entry.
//!
//! One thread drives all three nodes in turn (as the simulation does), so
//! absolute throughput is a lower bound; the fsync ratio is the point: with
//! group commit it falls as more ranges have work in the same poll round.

use std::time::{Duration, Instant};

use crate::cluster::{Cluster, EngineKind, SimConfig};

#[derive(Debug, Clone)]
pub struct BenchResult {
    pub ranges: u64,
    pub inflight_per_range: usize,
    pub committed: u64,
    pub elapsed: Duration,
    pub fsyncs: u64,
}

impl BenchResult {
    pub fn entries_per_sec(&self) -> f64 {
        self.committed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// fsyncs on all three nodes per committed entry.
    pub fn fsyncs_per_entry(&self) -> f64 {
        self.fsyncs as f64 / (self.committed.max(1)) as f64
    }
}

/// Runs until `target` entries are acknowledged or `max_wall` passes.
#[allow(clippy::disallowed_methods)] // a benchmark measures wall time
pub fn bench_group_commit(ranges: u64, inflight_per_range: usize, target: u64, max_wall: Duration, seed: u64) -> BenchResult {
    let mut cfg = SimConfig::new(seed);
    cfg.ranges = ranges;
    cfg.engine = EngineKind::Rocks;
    cfg.store.record_applied = false;
    cfg.store.compact_log_entries = 4096;
    // Every poll syncs its round before it returns: fsyncs per entry then
    // count rounds, not the simulation's random sync timing.
    cfg.store.defer_sync = false;
    let mut c = Cluster::new(cfg);
    let ids = c.range_ids();
    assert!(c.run_until(2_000, |c| ids.iter().all(|r| c.leader_of(*r).is_some())), "ranges did not elect leaders");
    // Let leaders commit their first entry before measuring.
    c.run(20);
    let syncs_before = c.total_syncs();
    let start = Instant::now();
    let mut committed = 0u64;
    let mut outstanding: Vec<(u64, u64, meridian_raftstore::RequestId)> = Vec::new();
    while committed < target && start.elapsed() < max_wall {
        for &r in &ids {
            let have = outstanding.iter().filter(|(rr, _, _)| *rr == r).count();
            for _ in have..inflight_per_range {
                let (_, cmd) = c.fresh_put(r);
                match c.propose(r, cmd) {
                    Some((node, id)) => outstanding.push((r, node, id)),
                    None => break,
                }
            }
        }
        c.step();
        outstanding.retain(|(_, node, id)| match c.take_result(*node, *id) {
            Some(Ok(_)) => {
                committed += 1;
                false
            }
            Some(Err(_)) => false,
            None => true,
        });
    }
    BenchResult { ranges, inflight_per_range, committed, elapsed: start.elapsed(), fsyncs: c.total_syncs() - syncs_before }
}
