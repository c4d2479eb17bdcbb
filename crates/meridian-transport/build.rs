//! Compiles `proto/meridian/peer.proto` (the node-to-node envelope) into
//! prost messages, so the wire types cannot drift from the file. prost-build
//! only: no tonic, so this crate stays free of any IO stack.
//!
//! Needs `protoc` on `PATH` (or `PROTOC` set); `scripts/setup.sh` installs it.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let root = manifest_dir.join("../../proto/meridian");
    let file = root.join("peer.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    prost_build::Config::new().compile_protos(&[file], &[root])?;
    Ok(())
}
