//! The randomized many-seed run: a 3-node, 8-range cluster under crashes,
//! partitions, drops and delays, with every invariant checked.
//!
//! Short by default (CI). The long run is `make sim-long`, i.e.
//! `MERIDIAN_SIM_SEEDS=500 MERIDIAN_SIM_STEPS=4000 cargo test --workspace --test random`.
//! Rerun one seed with `MERIDIAN_SIM_SEED=<seed>`.

use meridian_sim::{random_run, SimConfig};

#[test]
fn randomized_runs_keep_every_invariant() {
    let (seeds, steps) = meridian_sim::seeds_from_env(12, 1000, 1500);
    let mut failed = Vec::new();
    let (mut acked, mut crashes, mut partitions, mut reads, mut changes, mut forwarded, mut power, mut destroyed) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    for seed in &seeds {
        let mut cfg = SimConfig::new(*seed);
        cfg.ranges = 8;
        let report = random_run(cfg, steps);
        acked += report.acked_writes;
        crashes += report.crashes;
        power += report.power_losses;
        partitions += report.partitions;
        reads += report.reads_checked;
        changes += report.membership_changes;
        destroyed += report.replicas_destroyed;
        forwarded += report.forwarded_acked;
        if !report.ok() {
            eprintln!("seed {seed} FAILED:\n  {}", report.violations.join("\n  "));
            eprintln!("rerun: MERIDIAN_SIM_SEED={seed} MERIDIAN_SIM_STEPS={steps} cargo test --workspace --test random");
            failed.push(*seed);
        }
    }
    eprintln!(
        "simulation: {} seeds x {steps} ticks, {acked} acknowledged writes ({forwarded} proposed on followers), {reads} linearizable reads checked, {crashes} crashes, {power} power losses (all nodes), {partitions} partitions, {changes} membership changes, {destroyed} removed replicas destroyed, {} failed",
        seeds.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    assert!(acked > 0, "the workload made no progress at all");
    assert!(forwarded > 0, "no write proposed on a follower was acknowledged");
    assert!(seeds.len() < 20 || power > 0, "no run lost power on every node");
    assert!(seeds.len() < 10 || destroyed > 0, "no removed replica was ever destroyed");
}
