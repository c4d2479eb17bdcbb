//! The chaos checker must be able to fail: with reads served from local
//! state (no ReadIndex), the proof scenario has to report linearizability
//! violations. A checker that passes everything would pass this suite too.
//!
//! Needs the `meridian` binary next to `meridian-chaos`
//! (`cargo build --workspace --exclude meridian-fuzz`, or `make test`).

use std::path::PathBuf;
use std::process::Command;

fn bins() -> (PathBuf, PathBuf) {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_meridian-chaos"));
    let meridian = chaos.parent().expect("binary dir").join("meridian");
    assert!(meridian.is_file(), "{} is missing: run `cargo build --workspace --exclude meridian-fuzz` first", meridian.display());
    (chaos, meridian)
}

/// The count `V` of the final `chaos: N runs, V violations` line.
fn violations(stdout: &str) -> usize {
    let last = stdout.lines().rev().find(|l| l.starts_with("chaos: ") && l.ends_with(" violations")).expect("a final summary line");
    last.rsplit(", ").next().and_then(|v| v.split_whitespace().next()).and_then(|n| n.parse().ok()).expect("a violation count")
}

#[test]
fn unsafe_local_reads_are_reported_as_linearizability_violations() {
    let (chaos, meridian) = bins();
    let out = tempfile::tempdir().expect("temp dir");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/proof-unsafe-reads.toml");
    let run = Command::new(chaos)
        .args(["run", scenario, "--duration", "15", "--out"])
        .arg(out.path())
        .arg("--meridian-bin")
        .arg(meridian)
        .output()
        .expect("running meridian-chaos");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "the proof run must pass by finding violations:\n{stdout}\n{stderr}");
    assert!(violations(&stdout) >= 1, "no violation found with unsafe local reads:\n{stdout}");
    assert!(stdout.contains("VIOLATION [linearizability]"), "expected a linearizability violation:\n{stdout}");
    assert!(out.path().join("proof-unsafe-reads-6/registers.history.json").is_file(), "the failing history must be saved");
}
