//! The region run (5 nodes in 3 regions, 2 + 2 + 1 voters, latency by
//! region pair) under the randomized run's faults plus whole regions lost
//! and cut off: every invariant holds on every seed.
//!
//! Short by default (CI); `MERIDIAN_SIM_SEEDS` and `MERIDIAN_SIM_STEPS`
//! for more (`make sim-long` runs it with them), `MERIDIAN_SIM_SEED` to
//! rerun one.

use meridian_sim::region_run;

#[test]
fn losing_or_cutting_off_a_whole_region_keeps_every_invariant() {
    let (seeds, steps) = meridian_sim::seeds_from_env(8, 5000, 2000);
    let mut failed = Vec::new();
    let (mut acked, mut losses, mut cuts, mut reads) = (0, 0, 0, 0);
    for seed in &seeds {
        let report = region_run(*seed, 4, steps);
        acked += report.acked_writes;
        losses += report.region_losses;
        cuts += report.region_partitions;
        reads += report.reads_checked;
        if !report.ok() {
            eprintln!("seed {seed} FAILED:\n  {}", report.violations.join("\n  "));
            eprintln!("rerun: MERIDIAN_SIM_SEED={seed} MERIDIAN_SIM_STEPS={steps} cargo test -p meridian-sim --test regions");
            failed.push(*seed);
        }
    }
    eprintln!(
        "regions: {} seeds x {steps} ticks, {acked} acknowledged writes, {reads} linearizable reads checked, {losses} regions lost, {cuts} regions cut off, {} failed",
        seeds.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    assert!(acked > 0, "the workload made no progress at all");
    assert!(seeds.len() < 4 || (losses > 0 && cuts > 0), "no region was lost or cut off: the faults did not run");
}
