//! Compiles `proto/meridian/v1/codes.proto` with prost-build alone (no
//! tonic), so the core crates can share the codes and stay IO-free.
//!
//! Needs `protoc` on `PATH` (or `PROTOC` set); `scripts/setup.sh` installs it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../../proto/meridian");
    let file = root.join("v1/codes.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    prost_build::Config::new().compile_protos(&[file], &[root])?;
    Ok(())
}
