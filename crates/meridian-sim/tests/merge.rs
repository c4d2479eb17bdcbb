//! A namespace merged into its parent's group and split out again, over
//! many seeds of the nemesis (`MERIDIAN_MERGE_SEEDS` for more; a failing
//! seed replays alone with `MERIDIAN_MERGE_SEED=<seed>`).

use meridian_sim::merge_run::merge_run;

#[test]
fn a_merge_then_a_split_under_faults_lose_nothing_and_tokens_keep_growing() {
    let seeds: Vec<u64> = match std::env::var("MERIDIAN_MERGE_SEED") {
        Ok(s) => vec![s.parse().expect("MERIDIAN_MERGE_SEED is a number")],
        Err(_) => {
            let n: u64 = std::env::var("MERIDIAN_MERGE_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
            (1..=n).collect()
        }
    };
    let (mut child, mut merged, mut second, mut keys, mut refused, mut split, mut crashes) = (0, 0, 0, 0, 0, 0, 0);
    let runs = seeds.len();
    for seed in seeds {
        let r = merge_run(seed, 2_000);
        assert!(r.ok(), "seed {seed} (replay: MERIDIAN_MERGE_SEED={seed}): {:#?}", r.violations);
        child += r.acked_in_child;
        merged += r.acked_merged;
        second += r.acked_in_second;
        keys += r.merged_keys;
        refused += r.refused;
        split += usize::from(r.split_again);
        crashes += r.crashes;
    }
    println!(
        "{runs} runs: writes under the prefix acknowledged by the first group {child}, merged {merged}, after the split {second}; {keys} keys merged; {refused} writes refused by a range that no longer served the prefix; {split} runs split again in time"
    );
    // The runs exercised what they claim to.
    assert!(child > 0 && merged > 0 && second > 0, "a home of the prefix took no write");
    assert!(keys > 0, "no merge carried a key");
    assert!(refused > 0, "no stale route was refused");
    assert!(crashes > 0, "no crash happened");
}
