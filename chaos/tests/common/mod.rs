//! Running one scenario file of `chaos/scenarios` through the real
//! `meridian-chaos` binary, with the `meridian` binary built next to it.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs `scenarios/<name>.toml` for `duration_s` seconds with its output
/// in a fresh temp dir (returned, so a failing test can keep it).
pub fn run_scenario(name: &str, duration_s: u32) -> (Output, tempfile::TempDir) {
    run_scenario_with_log(name, duration_s, "")
}

/// [`run_scenario`] with `RUST_LOG` set to `log` (empty: the default).
pub fn run_scenario_with_log(name: &str, duration_s: u32, log: &str) -> (Output, tempfile::TempDir) {
    let chaos = PathBuf::from(env!("CARGO_BIN_EXE_meridian-chaos"));
    let meridian = chaos.parent().expect("binary dir").join("meridian");
    assert!(meridian.is_file(), "{} is missing: run `cargo build --workspace` first", meridian.display());
    let out = tempfile::tempdir().expect("temp dir");
    let scenario = format!("{}/scenarios/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = Command::new(chaos);
    if !log.is_empty() {
        cmd.env("RUST_LOG", log);
    }
    let run = cmd
        .args(["run", &scenario, "--duration", &duration_s.to_string(), "--out"])
        .arg(out.path())
        .arg("--meridian-bin")
        .arg(meridian)
        .output()
        .expect("running meridian-chaos");
    (run, out)
}
