//! Benchmark (not part of `make verify`; `make bench-snapshot` runs it):
//! a large namespace sent to a new replica by streamed snapshot, on real
//! processes. Fills namespace `/big/` of a 3-node cluster with
//! `MERIDIAN_SNAPSHOT_BENCH_MB` MiB of values (default 512, which MVCC
//! stores twice: a 1 GiB namespace), starts a
//! fourth node that joins, adds it to the namespace's range as a learner,
//! and measures how long until it has installed the snapshot and applied
//! what the leader had committed, with the resident memory (VmRSS, sampled
//! every 100 ms) of the sender and the receiver meanwhile.
//!
//! It checks what it measures (the data arrived, by snapshot, and reads
//! back); the numbers are printed, never asserted.

// Real processes on real time: a benchmark reads wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use meridian_tests::*;

use meridian_proto::etcdserverpb::{PutRequest, RangeRequest};
use meridian_server::routing::ROOT_RANGE_ID;

/// The namespace's range: the first declared namespace follows the root.
const BIG_RANGE: u64 = ROOT_RANGE_ID + 1;
const VALUE_BYTES: usize = 256 << 10;
const WRITERS: usize = 8;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field("VmRSS:")
}

fn range_view(c: &ProcCluster, i: usize, range_id: u64) -> Option<serde_json::Value> {
    let (code, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["ranges"].as_array()?.iter().find(|r| r["range_id"] == range_id).cloned()
}

/// Whether member `i` lists node `id`.
fn knows_node(c: &ProcCluster, i: usize, id: u64) -> bool {
    let (code, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
    let v: serde_json::Value = if code == 200 { serde_json::from_str(&body).unwrap_or_default() } else { return false };
    v["members"].as_array().is_some_and(|m| m.iter().any(|m| m["id"] == id))
}

#[test]
#[ignore = "a benchmark: make bench-snapshot"]
fn bench_a_large_namespace_streams_to_a_new_replica() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mib: usize = std::env::var("MERIDIAN_SNAPSHOT_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(512);
    assert!((1..=16 << 10).contains(&mib), "MERIDIAN_SNAPSHOT_BENCH_MB must be 1..16384");
    let mut c = ProcCluster::start(3, &["/big/"]);
    let leader = c.leader_of(BIG_RANGE).expect("the namespace's range has a leader");

    // Fill: WRITERS concurrent writers of VALUE_BYTES values, each to its
    // own share of the keys, through the leader.
    let puts = (mib << 20) / VALUE_BYTES;
    let filled = Instant::now();
    rt().block_on(async {
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let mut kv = kv_client(&c, leader).await;
            tasks.push(tokio::spawn(async move {
                for n in (w..puts).step_by(WRITERS) {
                    let mut value = vec![(n % 251) as u8; VALUE_BYTES];
                    value[..8].copy_from_slice(&(n as u64).to_be_bytes());
                    let req = PutRequest { key: format!("/big/{n:08}").into_bytes(), value, ..Default::default() };
                    let mut tries = 0;
                    while let Err(e) = kv.put(req.clone()).await {
                        tries += 1;
                        assert!(tries < 20, "put {n} keeps failing: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    let fill_s = filled.elapsed().as_secs_f64();
    eprintln!("filled /big/ with {puts} values of {} KiB ({mib} MiB) in {fill_s:.1} s", VALUE_BYTES >> 10);

    let leader = c.leader_of(BIG_RANGE).expect("a leader after the fill");
    let target_commit = range_view(&c, leader, BIG_RANGE).unwrap()["commit"].as_u64().unwrap();
    let sender_pid = c.children[leader].as_ref().unwrap().id();
    let sender_before = rss_kib(sender_pid);

    let m4 = meridian_server::dev_layout::members(4, free_base_port()).unwrap().pop().unwrap();
    let j = c.add_joining(m4);
    let receiver_pid = c.children[j].as_ref().unwrap().id();
    // Every member must know node 4 before the leader can dial it (the
    // meta range is re-read every 10 s).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(0..3).all(|i| knows_node(&c, i, 4)) {
        assert!(Instant::now() < deadline, "the members did not learn of node 4");
        std::thread::sleep(Duration::from_millis(200));
    }
    let receiver_before = rss_kib(receiver_pid);

    let started = Instant::now();
    let (code, body) = http_request(
        &c.members[leader].http_addr,
        "POST",
        &format!("/v1/ranges/{BIG_RANGE}/members"),
        r#"{"op":"add-learner","node_id":4}"#,
        "application/json",
    );
    assert_eq!(code, 200, "{body}");
    let (mut sender_peak, mut receiver_peak) = (sender_before, receiver_before);
    let limit = Duration::from_secs(1800);
    loop {
        sender_peak = sender_peak.max(rss_kib(sender_pid));
        receiver_peak = receiver_peak.max(rss_kib(receiver_pid));
        let applied = range_view(&c, j, BIG_RANGE).and_then(|r| r["applied"].as_u64()).unwrap_or(0);
        if applied >= target_commit && metric(&c, j, "meridian_store_snapshots_installed_total") >= 1 {
            break;
        }
        assert!(started.elapsed() < limit, "node 4 did not catch up within {limit:?} (applied {applied} of {target_commit})");
        std::thread::sleep(Duration::from_millis(100));
    }
    let took = started.elapsed().as_secs_f64();
    let bytes = metric(&c, j, "meridian_store_snapshot_bytes_received_total");
    let chunks = metric(&c, j, "meridian_store_snapshot_chunks_received_total");
    let abandoned = metric(&c, j, "meridian_store_snapshots_abandoned_total");

    // What it holds reads back, served by its own replica.
    let sample = puts / 2;
    let got = rt().block_on(async {
        let mut kv = kv_client(&c, j).await;
        let req = RangeRequest { key: format!("/big/{sample:08}").into_bytes(), serializable: true, ..Default::default() };
        kv.range(req).await.unwrap().into_inner()
    });
    let value = &got.kvs.first().expect("node 4 serves the key").value;
    assert_eq!(value.len(), VALUE_BYTES);
    assert_eq!(&value[..8], &(sample as u64).to_be_bytes());

    let mib_f = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "{}",
        serde_json::json!({
            "bench": "snapshot-to-new-replica",
            "values_written_mib": mib,
            "snapshot_bytes": bytes,
            "snapshot_chunks": chunks,
            "transfers_abandoned": abandoned,
            "seconds": took,
            "mib_per_s": mib_f(bytes) / took,
            "sender_rss_before_kib": sender_before,
            "sender_rss_peak_kib": sender_peak,
            "receiver_rss_before_kib": receiver_before,
            "receiver_rss_peak_kib": receiver_peak,
        })
    );
    eprintln!(
        "snapshot of {:.0} MiB in {chunks} chunks to a new replica: {took:.1} s ({:.0} MiB/s); \
         RSS sender {:.0} -> peak {:.0} MiB, receiver {:.0} -> peak {:.0} MiB",
        mib_f(bytes),
        mib_f(bytes) / took,
        sender_before as f64 / 1024.0,
        sender_peak as f64 / 1024.0,
        receiver_before as f64 / 1024.0,
        receiver_peak as f64 / 1024.0,
    );
}
