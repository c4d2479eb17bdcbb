//! The chaos checker must be able to fail: with reads served from local
//! state (no ReadIndex), the proof scenario has to report linearizability
//! violations. A checker that passes everything would pass this suite too.
//!
//! Needs the `meridian` binary next to `meridian-chaos`
//! (`cargo build --workspace`, or `make test`).

mod common;

/// The count `V` of the final `chaos: N runs, V violations` line.
fn violations(stdout: &str) -> usize {
    let last = stdout.lines().rev().find(|l| l.starts_with("chaos: ") && l.ends_with(" violations")).expect("a final summary line");
    last.rsplit(", ").next().and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("a violation count")
}

#[test]
fn unsafe_local_reads_are_reported_as_linearizability_violations() {
    let (run, out) = common::run_scenario("proof-unsafe-reads", 15);
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the proof run must pass by finding violations:\n{stdout}\n{stderr}");
    assert!(violations(&stdout) >= 1, "no violation found with unsafe local reads:\n{stdout}");
    assert!(stdout.contains("VIOLATION [linearizability]"), "expected a linearizability violation:\n{stdout}");
    assert!(out.path().join("proof-unsafe-reads-6/registers.history.json").is_file(), "the failing history must be saved");
}
