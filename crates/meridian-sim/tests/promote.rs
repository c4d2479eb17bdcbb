//! The forced-promotion run (a zone-survival range's home region lost, its
//! read replica promoted by force, the lost region returning): on every
//! seed the promoted replica leads and takes writes, keeps every write
//! acknowledged up to what it knew committed, supersedes the old lineage
//! and converges with the replicas added back.
//!
//! Short by default (CI); `MERIDIAN_SIM_SEEDS` and `MERIDIAN_SIM_STEPS`
//! for more (`make sim-long`), `MERIDIAN_SIM_SEED` to rerun one.

use meridian_sim::promote_run;

#[test]
fn a_read_replica_promoted_by_force_leads_keeps_what_it_knew_committed_and_supersedes_the_lost_lineage() {
    // `MERIDIAN_SIM_LOG=debug` (a tracing filter): the stores' logs.
    if let Ok(filter) = std::env::var("MERIDIAN_SIM_LOG") {
        let _ = tracing_subscriber::fmt().with_env_filter(tracing_subscriber::EnvFilter::new(filter)).with_test_writer().try_init();
    }
    let (seeds, steps) = meridian_sim::seeds_from_env(16, 9000, 600);
    let (mut acked, mut lost, mut first_write, mut failed) = (0, 0, 0, Vec::new());
    let (mut changes, mut refused) = (0, 0);
    for seed in &seeds {
        let r = promote_run(*seed, steps);
        acked += r.acked_before;
        lost += r.lost;
        changes += r.membership_changes;
        refused += usize::from(r.refused);
        first_write = first_write.max(r.steps_to_first_write);
        if !r.ok() {
            eprintln!("seed {seed} FAILED:\n  {}", r.violations.join("\n  "));
            eprintln!("rerun: MERIDIAN_SIM_SEED={seed} MERIDIAN_SIM_STEPS={steps} cargo test -p meridian-sim --test promote");
            failed.push(*seed);
        }
    }
    eprintln!(
        "promote: {} seeds x {steps} steps of writes, {changes} membership changes of the home voters, {acked} writes acknowledged before the region's loss, {lost} of them past what the read replica knew committed (the accepted loss), first write after the promotion within {first_write} steps, {refused} promotions refused (a membership change in the replica's log past what it applied), {} failed",
        seeds.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    assert!(refused < seeds.len(), "every promotion was refused: the run proves nothing");
    assert!(acked > 0, "the workload made no progress at all");
}
