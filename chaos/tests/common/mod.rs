//! Running one scenario file of `chaos/scenarios` through the real
//! `meridian-chaos` binary, with the `meridian` binary built next to it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `scenarios/<name>.toml` for `duration_s` seconds with its output
/// in a fresh temp dir (returned, so a failing test can keep it).
pub fn run_scenario(name: &str, duration_s: u32) -> (Output, tempfile::TempDir) {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_meridian-chaos"));
    let meridian = chaos.parent().expect("binary dir").join("meridian");
    assert!(meridian.is_file(), "{} is missing: run `cargo build --workspace` first", meridian.display());
    let out = tempfile::tempdir().expect("temp dir");
    let scenario = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let run = Command::new(chaos)
        .args(["run", &scenario, "--duration", &duration_s.to_string(), "--out"])
        .arg(out.path())
        .arg("--meridian-bin")
        .arg(meridian)
        .output()
        .expect("running meridian-chaos");
    (run, out)
}
