//! A healthy cluster under kill -9 of nodes (often the leader) passes every
//! check: linearizable registers, ordered and complete watches, recovery
//! after the faults end.
//!
//! Needs the `meridian` binary next to `meridian-chaos`
//! (`cargo build --workspace`, or `make test`).

mod common;

#[test]
fn registers_and_watches_stay_correct_across_leader_kills() {
    let (run, out) = common::run_scenario("register-kill", 20);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() || !stdout.lines().any(|l| l == "chaos: 1 runs, 0 violations") {
        let kept = out.keep();
        panic!("a healthy run found violations; histories and logs kept in {}:\n{stdout}\n{stderr}", kept.display());
    }
}

/// A namespace's group merged into the root group and split out again,
/// over and over under kills and leader faults: its registers stay
/// linearizable and recover.
#[test]
fn registers_stay_linearizable_across_merges_and_splits_of_their_group() {
    let (run, out) = common::run_scenario_with_log("merge-split", 25, "warn,meridian_chaos::nemesis=info");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() || !stdout.lines().any(|l| l == "chaos: 1 runs, 0 violations") {
        let kept = out.keep();
        panic!("a merge-split run found violations; histories and logs kept in {}:\n{stdout}\n{stderr}", kept.display());
    }
    // The faults applied: at least one merge and one split.
    assert!(stderr.contains("merge /reg/: now") && stderr.contains("split /reg/: now"), "{stderr}");
}

/// Three regions with WAN latency and a witness in each; the registers
/// and locks in region-survival namespaces: whole regions killed and cut
/// off, and every check still passes.
#[test]
fn registers_and_locks_stay_correct_across_whole_regions_killed_and_cut_off() {
    let (run, out) = common::run_scenario_with_log("regions", 30, "warn,meridian_chaos::nemesis=info");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() || !stdout.lines().any(|l| l == "chaos: 1 runs, 0 violations") {
        let kept = out.keep();
        panic!("a regions run found violations; histories and logs kept in {}:\n{stdout}\n{stderr}", kept.display());
    }
    // The region faults applied.
    assert!(stderr.contains("kill -9 region") || stderr.contains("cut region"), "{stderr}");
}
