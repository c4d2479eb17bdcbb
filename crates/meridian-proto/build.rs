//! Compiles Meridian's etcd-compatible `.proto` files (under `proto/etcd/` at
//! the workspace root) into prost messages and tonic clients and servers.
//!
//! Needs `protoc` on `PATH` (or `PROTOC` set); `scripts/setup.sh` installs it.

use std::path::PathBuf;

const PROTO_FILES: [&str; 4] = ["mvccpb/kv.proto", "etcdserverpb/rpc.proto", "v3lockpb/v3lock.proto", "v3electionpb/v3election.proto"];

/// Meridian's own API (`meridian.v1`), under `proto/meridian/`.
const NATIVE_FILE: &str = "v1/coordination.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let proto_root = manifest_dir.join("../../proto/etcd");
    let files: Vec<PathBuf> = PROTO_FILES.iter().map(|f| proto_root.join(f)).collect();

    println!("cargo:rerun-if-changed={}", proto_root.display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let native_root = manifest_dir.join("../../proto/meridian");
    let native = native_root.join(NATIVE_FILE);
    println!("cargo:rerun-if-changed={}", native.display());
    let mut all = files;
    all.push(native);
    // A key-value's key and value as `Bytes`: a watch event is converted
    // once per revision and then shared by every watcher it goes to
    // (clones are reference counts, not copies).
    tonic_build::configure()
        .bytes([".mvccpb.KeyValue"])
        .build_server(true)
        .build_client(true)
        .compile_protos(&all, &[proto_root, native_root])?;
    Ok(())
}
