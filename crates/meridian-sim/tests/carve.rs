//! A namespace carved out of a live range, over many seeds of the nemesis
//! (`MERIDIAN_CARVE_SEEDS` for more; a failing seed replays alone with
//! `MERIDIAN_CARVE_SEED=<seed>`).

use meridian_sim::carve_run::carve_run;

#[test]
fn a_carve_under_faults_loses_no_acknowledged_write_and_fences_the_parent() {
    let seeds: Vec<u64> = match std::env::var("MERIDIAN_CARVE_SEED") {
        Ok(s) => vec![s.parse().expect("MERIDIAN_CARVE_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("MERIDIAN_CARVE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
            (1..=n).collect()
        }
    };
    let (mut moved, mut child, mut refused, mut crashes, mut split, mut over, mut missed) = (0, 0, 0, 0, 0, 0, 0);
    for seed in seeds {
        let r = carve_run(seed, 1_500);
        assert!(r.ok(), "seed {seed} (replay: MERIDIAN_CARVE_SEED={seed}): {:#?}", r.violations);
        moved += r.moved_keys;
        child += r.acked_in_child;
        refused += r.refused_by_parent;
        crashes += r.crashes;
        split += r.splits_applied;
        over += r.splits_over_uninitialized;
        missed += r.splits_missed;
    }
    println!(
        "{split} replicas split off by applying the carve, {over} of them over a replica created for a message first; {missed} created empty after a snapshot of the parent"
    );
    // The runs exercised what they claim to.
    assert!(moved > 0, "no carve moved a key");
    assert!(child > 0, "no write reached the new range");
    assert!(refused > 0, "the parent was never asked for the carved prefix");
    assert!(crashes > 0, "no crash happened");
}
