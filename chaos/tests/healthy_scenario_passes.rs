//! A healthy cluster under kill -9 of nodes (often the leader) passes every
//! check: linearizable registers, ordered and complete watches, recovery
//! after the faults end.
//!
//! Needs the `meridian` binary next to `meridian-chaos`
//! (`cargo build --workspace --exclude meridian-fuzz`, or `make test`).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn registers_and_watches_stay_correct_across_leader_kills() {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_meridian-chaos"));
    let meridian = chaos.parent().expect("binary dir").join("meridian");
    assert!(meridian.is_file(), "{} is missing: run `cargo build --workspace --exclude meridian-fuzz` first", meridian.display());
    let out = tempfile::tempdir().expect("temp dir");
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/register-kill.toml");
    let run = Command::new(chaos)
        .args(["run", scenario, "--duration", "20", "--out"])
        .arg(out.path())
        .arg("--meridian-bin")
        .arg(meridian)
        .output()
        .expect("running meridian-chaos");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    if !run.status.success() || !stdout.lines().any(|l| l == "chaos: 1 runs, 0 violations") {
        let kept = out.keep();
        panic!("a healthy run found violations; histories and logs kept in {}:\n{stdout}\n{stderr}", kept.display());
    }
}
