//! The region run (5 nodes in 3 regions, 2 + 2 + 1 voters, latency by
//! region pair) under the randomized run's faults plus whole regions lost
//! and cut off: every invariant holds on every seed.
//!
//! Short by default (CI); `MERIDIAN_SIM_SEEDS` and `MERIDIAN_SIM_STEPS`
//! for more (`make sim-long` runs it with them), `MERIDIAN_SIM_SEED` to
//! rerun one.

use meridian_sim::{region_run, witness_region_run, RunReport};

/// Totals of a run over many seeds, and the seeds that failed.
#[derive(Default)]
struct Totals {
    seeds: usize,
    steps: u64,
    acked: usize,
    reads: u64,
    losses: u64,
    cuts: u64,
    witness_terms: u64,
    failed: Vec<u64>,
}

/// `run(seed, steps)` over the environment's seeds (8 by default, 5000
/// steps), failures printed with the command that reruns them (`filter`
/// picks the test).
fn over_seeds(filter: &str, run: impl Fn(u64, u64) -> RunReport) -> Totals {
    let (seeds, steps) = meridian_sim::seeds_from_env(8, 5000, 2000);
    let mut t = Totals { seeds: seeds.len(), steps, ..Totals::default() };
    for seed in &seeds {
        let report = run(*seed, steps);
        t.acked += report.acked_writes;
        t.reads += report.reads_checked;
        t.losses += report.region_losses;
        t.cuts += report.region_partitions;
        t.witness_terms += report.witness_terms;
        if !report.ok() {
            eprintln!("seed {seed} FAILED:\n  {}", report.violations.join("\n  "));
            eprintln!("rerun: MERIDIAN_SIM_SEED={seed} MERIDIAN_SIM_STEPS={steps} cargo test -p meridian-sim --test regions {filter}");
            t.failed.push(*seed);
        }
    }
    t
}

#[test]
fn losing_or_cutting_off_a_whole_region_keeps_every_invariant() {
    let Totals { seeds, steps, acked, reads, losses, cuts, failed, .. } = over_seeds("losing", |seed, steps| region_run(seed, 4, steps));
    eprintln!(
        "regions: {seeds} seeds x {steps} ticks, {acked} acknowledged writes, {reads} linearizable reads checked, {losses} regions lost, {cuts} regions cut off, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    assert!(acked > 0, "the workload made no progress at all");
    assert!(seeds < 4 || (losses > 0 && cuts > 0), "no region was lost or cut off: the faults did not run");
}

#[test]
fn a_witness_in_the_third_region_keeps_every_invariant_and_no_data() {
    let Totals { seeds, steps, acked, reads, losses, witness_terms, failed, .. } =
        over_seeds("witness", |seed, steps| witness_region_run(seed, 4, steps));
    eprintln!(
        "regions with a witness: {seeds} seeds x {steps} ticks, {acked} acknowledged writes, {reads} linearizable reads checked, {losses} regions lost, {witness_terms} terms led by the witness, {} failed",
        failed.len()
    );
    assert!(failed.is_empty(), "failing seeds: {failed:?}");
    assert!(acked > 0, "the workload made no progress at all");
}

/// The case a witness exists for: the second region cut off, the home
/// region and the witness commit writes alone; then the home region is
/// lost and the second region comes back. Only the witness has the last
/// writes: it must win the election (the full voters' logs are behind),
/// send them what they lack, and hand leadership over — every
/// acknowledged write then readable on the second region, none on the
/// witness.
#[test]
fn a_witness_holding_the_only_copy_of_the_last_writes_brings_the_surviving_region_up_to_date() {
    use meridian_sim::{Cluster, SimConfig};
    for seed in 1..=5 {
        let mut cfg = SimConfig::new(seed);
        (cfg.nodes, cfg.initial_voters, cfg.ranges, cfg.witnesses) = (5, 5, 1, vec![5]);
        let mut c = Cluster::new(cfg);
        assert!(c.put_and_wait(1, 3000).is_some(), "seed {seed}: no first write");
        c.net.partition(&[3, 4], &[1, 2, 5]);
        let mut acked = Vec::new();
        for _ in 0..40 {
            let key = c.put_and_wait(1, 3000).unwrap_or_else(|| panic!("seed {seed}: a write without the second region failed"));
            acked.push(key);
        }
        for n in [1, 2] {
            c.crash(n);
        }
        c.net.heal();
        let term_before = c.status(5, 1).map(|s| s.term).unwrap_or(0);
        let witness_terms = c.checker.terms_led_by(&[5]);
        // A full voter of the second region leads, in a later term.
        let led =
            c.run_until(5000, |c| c.leader_of(1).is_some_and(|l| l == 3 || l == 4) && c.status(3, 1).is_some_and(|s| s.term > term_before));
        assert!(led, "seed {seed}: no full voter of the surviving region took over: {}", c.describe());
        assert!(c.checker.terms_led_by(&[5]) > witness_terms, "seed {seed}: the witness never led (it alone had the last writes)");
        assert!(c.put_and_wait(1, 3000).is_some(), "seed {seed}: no write after the takeover");
        c.run(50);
        for n in [3, 4] {
            let store = c.store(n).expect("up");
            for key in &acked {
                let got = store.read_local(store.request(1), key).expect("serving");
                assert!(!got.is_empty(), "seed {seed}: node {n} lost the acknowledged write {}", String::from_utf8_lossy(key));
            }
        }
        assert!(c.witness_data().is_empty(), "seed {seed}: the witness holds data: {:?}", c.witness_data());
        assert!(c.checker.violations().is_empty(), "seed {seed}: {:?}", c.checker.violations());
    }
}
