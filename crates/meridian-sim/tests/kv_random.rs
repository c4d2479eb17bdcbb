//! The KV simulation over many seeds: `KvMachine` on every replica, the
//! server's lease keeper on the simulated clock, clients of leases, locks
//! and keys, and the register run's nemesis (crashes, power losses,
//! partitions, drops and delays, membership changes).
//!
//! Short by default (CI). The long run is `make sim-long`. Rerun one seed
//! with `MERIDIAN_SIM_SEED=<seed>`; `MERIDIAN_SIM_SEEDS`,
//! `MERIDIAN_SIM_BASE_SEED` and `MERIDIAN_SIM_STEPS` set the many-seed run.

use meridian_sim::{kv_random_run, SimConfig};

#[test]
fn kv_randomized_runs_keep_locks_leases_and_event_streams_safe() {
    let (seeds, steps) = meridian_sim::seeds_from_env(20, 7000, 1500);
    let mut failed = Vec::new();
    let mut known = Vec::new();
    let mut total = meridian_sim::kv::KvStats::default();
    let (mut grants, mut keepalives, mut late, mut abandoned, mut acquires, mut crashes, mut power, mut partitions, mut changes) =
        (0, 0, 0, 0, 0, 0, 0, 0, 0);
    for seed in &seeds {
        let mut cfg = SimConfig::new(*seed);
        cfg.ranges = 2;
        let report = kv_random_run(cfg, steps);
        let s = report.stats;
        total.applies += s.applies;
        total.publications_compared += s.publications_compared;
        total.events_compared += s.events_compared;
        total.grants += s.grants;
        total.promises += s.promises;
        total.lease_expiries += s.lease_expiries;
        total.lock_delays += s.lock_delays;
        total.lock_delay_ends += s.lock_delay_ends;
        total.tables_checked += s.tables_checked;
        grants += report.workload.lease_grants;
        keepalives += report.workload.keepalives;
        late += report.workload.late_keepalives;
        abandoned += report.workload.abandoned;
        acquires += report.workload.acquires;
        crashes += report.crashes;
        power += report.power_losses;
        partitions += report.partitions;
        changes += report.membership_changes;
        if !report.known.is_empty() {
            eprintln!("seed {seed}: known checkpoint gap:\n  {}", report.known.join("\n  "));
            known.push(*seed);
        }
        if !report.ok() {
            eprintln!("seed {seed} FAILED:\n  {}", report.violations.join("\n  "));
            eprintln!("rerun: MERIDIAN_SIM_SEED={seed} MERIDIAN_SIM_STEPS={steps} cargo test --workspace --test kv_random -- --nocapture");
            failed.push(*seed);
        }
    }
    eprintln!(
        "kv simulation: {} seeds x {steps} ticks: {grants} lease grants, {keepalives} keepalives ({late} late), {abandoned} sessions abandoned, {} lease expiries, {acquires} lock acquires, {} lock grants (fencing tokens), {} lock-delays ({} ended), {} entries applied, {} publications ({} key events) compared across replicas, {} lock tables checked, {crashes} crashes, {power} power losses, {partitions} partitions, {changes} membership changes, {} failed, {} with the known checkpoint gap {known:?}",
        seeds.len(),
        total.lease_expiries,
        total.grants,
        total.lock_delays,
        total.lock_delay_ends,
        total.applies,
        total.publications_compared,
        total.events_compared,
        total.tables_checked,
        failed.len(),
        known.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    assert!(total.grants > 0 && total.lease_expiries > 0 && total.lock_delays > 0, "the workload exercised too little: {total:?}");
    assert!(total.events_compared > 0, "no event stream was compared across replicas");
}

/// The known open bug (docs/testing.md, "Known gap"): a keepalive answered
/// after the leader checkpointed the lease's remaining TTL lives only in
/// that leader's memory; the next leader continues from the checkpoint and
/// expires the lease up to one checkpoint interval (5 s) before the TTL the
/// keepalive promised. Seed 7017: checkpoint at 45.0 s (20 s left),
/// keepalive at 45.6 s (promised until 75.6 s), leader change at 50.6 s,
/// expired at 70.9 s. Fails until keepalives reset checkpoints durably.
#[test]
#[ignore = "known bug: a keepalive after a lease checkpoint is lost in a leader change"]
fn lease_kept_alive_after_a_checkpoint_is_not_expired_early_by_the_next_leader() {
    let mut cfg = SimConfig::new(7017);
    cfg.ranges = 2;
    let report = kv_random_run(cfg, 1500);
    assert!(report.ok(), "{:#?}", report.violations);
    assert!(report.known.is_empty(), "early expiries:\n  {}", report.known.join("\n  "));
}

/// A run is a function of its seed: what a failing seed printed, its rerun
/// prints again.
#[test]
fn kv_run_replays_from_its_seed() {
    let run = || {
        let mut cfg = SimConfig::new(7003);
        cfg.ranges = 2;
        let r = kv_random_run(cfg, 400);
        (format!("{:?} {:?} {:?}", r.stats, r.workload, r.keeper), r.crashes, r.partitions, r.violations, r.known)
    };
    let first = run();
    assert!(first.0.contains("grants"), "{first:?}");
    assert_eq!(first, run());
}
