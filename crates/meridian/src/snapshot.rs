//! `meridian snapshot save|status|restore`: backups (see
//! `meridian_server::backup` for the format).

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use meridian_proto::etcdserverpb as pb;
use meridian_server::backup::{self, Verified};
use meridian_server::config::ServerConfig;

/// Streams a backup from the first endpoint that answers into `file`
/// (written as `file.part`, checked, then renamed), with progress on
/// stderr.
pub async fn save(endpoints: &str, file: &Path) -> Result<()> {
    let mut last = None;
    let mut channel = None;
    for ep in endpoints.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = if ep.starts_with("http") { ep.to_string() } else { format!("http://{ep}") };
        // No overall timeout: a backup takes as long as the data takes.
        match tonic::transport::Endpoint::from_shared(url.clone())?.connect_timeout(Duration::from_secs(2)).connect().await {
            Ok(ch) => {
                channel = Some(ch);
                break;
            }
            Err(e) => last = Some(format!("{url}: {e}")),
        }
    }
    let Some(ch) = channel else { bail!("no endpoint answered ({})", last.unwrap_or_else(|| "no endpoints given".into())) };
    let mut client = pb::maintenance_client::MaintenanceClient::new(ch).max_decoding_message_size(64 << 20);
    let mut stream = client.snapshot(pb::SnapshotRequest {}).await.context("starting the backup")?.into_inner();
    let part = file.with_extension(match file.extension() {
        Some(e) => format!("{}.part", e.to_string_lossy()),
        None => "part".into(),
    });
    let mut out = std::io::BufWriter::new(std::fs::File::create(&part).with_context(|| format!("creating {}", part.display()))?);
    let mut bytes = 0u64;
    let mut next_report = 0u64;
    loop {
        let msg = match stream.message().await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                drop(out);
                let _ = std::fs::remove_file(&part);
                bail!("the backup failed: {}", e.message());
            }
        };
        out.write_all(&msg.blob)?;
        bytes += msg.blob.len() as u64;
        if bytes >= next_report {
            eprintln!("received {} MiB", bytes >> 20);
            next_report = bytes + (64 << 20);
        }
    }
    let f = out.into_inner().map_err(|e| e.into_error())?;
    f.sync_all()?;
    drop(f);
    match backup::verify(&part) {
        Ok(v) => {
            std::fs::rename(&part, file)?;
            print_status(file, &v);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_file(&part);
            bail!("the backup received does not check out: {e}")
        }
    }
}

fn print_status(file: &Path, v: &Verified) {
    println!("{}: Meridian backup format {}, {} bytes, checksums good", file.display(), v.header.format, v.bytes);
    println!("cluster {:#018x}, written by member {} at {} (Unix ms)", v.header.cluster_id, v.header.member, v.header.created_unix_ms);
    println!("{:<8} {:<24} {:>10} {:>10} {:>10} {:>10}", "range", "namespace", "revision", "compacted", "index", "keys");
    for (s, keys) in v.header.ranges.iter().zip(&v.keys) {
        println!(
            "{:<8} {:<24} {:>10} {:>10} {:>10} {:>10}",
            s.range_id,
            s.namespace(),
            s.revision,
            s.compact_revision,
            s.applied_index,
            keys
        );
    }
}

/// Checks every frame of `file` and prints what it holds.
pub fn status(file: &Path, json: bool) -> Result<()> {
    let v = backup::verify(file).with_context(|| format!("{}", file.display()))?;
    if json {
        let ranges: Vec<serde_json::Value> = v
            .header
            .ranges
            .iter()
            .zip(&v.keys)
            .map(|(s, k)| {
                serde_json::json!({
                    "range_id": s.range_id, "namespace": s.namespace(), "revision": s.revision,
                    "compact_revision": s.compact_revision, "applied_index": s.applied_index, "keys": k,
                })
            })
            .collect();
        let doc = serde_json::json!({
            "format": v.header.format, "bytes": v.bytes, "cluster_id": v.header.cluster_id,
            "member": v.header.member, "created_unix_ms": v.header.created_unix_ms, "ranges": ranges,
        });
        println!("{}", serde_json::to_string_pretty(&doc)?);
    } else {
        print_status(file, &v);
    }
    Ok(())
}

/// Writes a new data directory for the member `config` describes from
/// `file`.
pub fn restore(file: &Path, config: &Path, data_dir: Option<&Path>) -> Result<()> {
    let mut cfg = ServerConfig::load(config)?;
    if let Some(d) = data_dir {
        cfg.data_dir = d.to_path_buf();
    }
    let r = backup::restore(file, &cfg, &mut |line| eprintln!("{line}"))?;
    println!("restored {} ranges, {} keys into {} for node {}", r.ranges, r.keys, r.data_dir.display(), cfg.node_id);
    match data_dir {
        None => println!("start it with `meridian server --config {}`", config.display()),
        Some(d) => println!(
            "set data_dir = {:?} in {}, then start it with `meridian server --config {}`",
            d.display().to_string(),
            config.display(),
            config.display()
        ),
    }
    Ok(())
}
