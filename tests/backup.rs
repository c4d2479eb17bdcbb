//! Backups on real `meridian server` processes: `etcdctl snapshot save`
//! from a member that holds no replica, `meridian snapshot status`, and
//! `meridian snapshot restore` bringing up a new cluster with every key,
//! lease, lock queue and revision intact; truncated, corrupt and foreign
//! files refused with nothing written.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use meridian_client::{Client, LockOptions};
use meridian_tests::*;

fn client(c: &ProcCluster) -> Client {
    let eps: Vec<String> = c.members.iter().map(|m| m.client_addr.to_string()).collect();
    Client::with_config(meridian_client::ClientConfig::new(eps)).unwrap()
}

/// `meridian <args>`: (success, stdout + stderr).
fn meridian(args: &[&str]) -> (bool, String) {
    let out = Command::new(meridian_bin()).args(args).output().expect("run meridian");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn revision_of(ep: &str, key: &str) -> i64 {
    let out = ok(ep, &["get", key, "-w", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["header"]["revision"].as_i64().unwrap()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn etcdctl_snapshot_save_from_a_member_without_replicas_restores_a_new_cluster_intact() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let work = tempfile::tempdir().unwrap();
    let mut c = ProcCluster::start(3, &["/payments/"]);
    let ep = c.url_endpoints();
    for i in 0..40 {
        ok(&ep, &["put", &format!("/cfg/k{i:02}"), &format!("v{i}")]);
    }
    ok(&ep, &["put", "/cfg/k00", "v0-new"]);
    ok(&ep, &["del", "/cfg/k39"]);
    let compact_at = revision_of(&ep, "/cfg/k00") - 10;
    ok(&ep, &["compact", &compact_at.to_string()]);
    let granted = ok(&ep, &["lease", "grant", "600"]);
    let lease = granted.split_whitespace().nth(1).expect("lease id").to_string();
    ok(&ep, &["put", "/cfg/leased", "x", &format!("--lease={lease}")]);
    ok(&ep, &["put", "/payments/p1", "100"]);
    let root_rev = revision_of(&ep, "/cfg/k00");

    // A lock held by one session with another queued behind it.
    let rt = rt();
    let (holder_id, waiter_id, token) = rt.block_on(async {
        let cl = client(&c);
        let holder = cl.session("/payments/", 600).await.unwrap();
        let g = holder.lock("/payments/lock", LockOptions::default()).await.unwrap().unwrap();
        let waiter = cl.session("/payments/", 600).await.unwrap();
        let w = waiter.clone();
        tokio::spawn(async move { w.lock("/payments/lock", LockOptions::default()).await });
        let start = Instant::now();
        loop {
            let d = cl.describe_lock("/payments/lock").await.unwrap().lock.unwrap();
            if d.waiters.len() == 1 {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "the waiter never queued");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let ids = (holder.id(), waiter.id(), g.token());
        std::mem::forget(g);
        std::mem::forget(holder);
        std::mem::forget(waiter);
        ids
    });

    // The lock's grant wrote a revision of /payments/ too.
    let payments_rev = revision_of(&ep, "/payments/p1");

    // Saved through a member that joined and holds no replica at all.
    let m4 = meridian_server::dev_layout::members(4, free_base_port()).unwrap().pop().unwrap();
    let j = c.add_joining(m4);
    let e4 = c.members[j].client_addr.clone();
    wait_until("the joined node serves", Duration::from_secs(40), || etcdctl(&e4, &["endpoint", "status"]).0);
    let file = work.path().join("backup.db");
    let saved = ok(&e4, &["snapshot", "save", file.to_str().unwrap()]);
    assert!(saved.contains("Snapshot saved"), "{saved}");

    let (good, status) = meridian(&["snapshot", "status", file.to_str().unwrap(), "-o", "json"]);
    assert!(good, "{status}");
    let v: serde_json::Value = serde_json::from_str(&status).unwrap_or_else(|e| panic!("{e}: {status}"));
    let ranges = v["ranges"].as_array().unwrap();
    assert_eq!(ranges.len(), 2, "the root namespace and /payments/: {status}");
    let by_ns = |ns: &str| ranges.iter().find(|r| r["namespace"] == ns).unwrap_or_else(|| panic!("{ns} in {status}"));
    assert_eq!(by_ns("(root)")["revision"], root_rev, "the header names each range's revision");
    assert_eq!(by_ns("(root)")["compact_revision"], compact_at);
    assert_eq!(by_ns("/payments/")["revision"], payments_rev);
    // `meridian snapshot save` writes the same kind of file.
    let file2 = work.path().join("backup2.db");
    let (good, out) = meridian(&["snapshot", "save", "--endpoints", &c.members[0].client_addr, file2.to_str().unwrap()]);
    assert!(good && out.contains("checksums good"), "{out}");

    // Bad files: refused, nothing written.
    let bytes = std::fs::read(&file).unwrap();
    let mut fresh = ProcCluster::prepare(3, &["/payments/"]);
    let cfg0 = fresh.configs[0].to_str().unwrap().to_string();
    let raft_dir = fresh.configs[0].parent().unwrap().join("raft");
    let truncated = work.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() - 7]).unwrap();
    let corrupt = work.path().join("corrupt.db");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x01;
    std::fs::write(&corrupt, &flipped).unwrap();
    let foreign = work.path().join("etcd.db");
    std::fs::write(&foreign, [0u8; 4096]).unwrap();
    for (bad, says) in [(&truncated, "truncated"), (&corrupt, "corrupt"), (&foreign, "not a Meridian backup")] {
        let (good, out) = meridian(&["snapshot", "restore", bad.to_str().unwrap(), "--config", &cfg0]);
        assert!(!good && out.contains(says), "{}: {out}", bad.display());
        assert!(!raft_dir.exists(), "a refused restore wrote {}", raft_dir.display());
    }
    // A config that lacks a namespace the backup holds.
    let narrow = ProcCluster::prepare(1, &[]);
    let (good, out) = meridian(&["snapshot", "restore", file.to_str().unwrap(), "--config", narrow.configs[0].to_str().unwrap()]);
    assert!(!good && out.contains("/payments/"), "{out}");
    // One whose namespaces would number the backed-up ones differently
    // (lease ids carry their namespace's id).
    let shifted = ProcCluster::prepare(1, &["/a/", "/payments/"]);
    let (good, out) = meridian(&["snapshot", "restore", file.to_str().unwrap(), "--config", shifted.configs[0].to_str().unwrap()]);
    assert!(!good && out.contains("declare exactly the namespaces"), "{out}");

    // Restore every member of a new cluster, start it.
    for cfg in &fresh.configs {
        let (good, out) = meridian(&["snapshot", "restore", file.to_str().unwrap(), "--config", cfg.to_str().unwrap()]);
        assert!(good, "{out}");
    }
    fresh.launch();
    let nep = fresh.url_endpoints();
    let keys = ok(&nep, &["get", "/cfg/", "--prefix", "--keys-only"]);
    assert_eq!(keys.lines().filter(|l| !l.is_empty()).count(), 40, "k00..k38 and leased: {keys}");
    assert_eq!(ok(&nep, &["get", "/cfg/k00", "--print-value-only"]).trim(), "v0-new");
    assert_eq!(ok(&nep, &["get", "/cfg/k07", "--print-value-only"]).trim(), "v7");
    assert_eq!(ok(&nep, &["get", "/payments/p1", "--print-value-only"]).trim(), "100");
    assert_eq!(revision_of(&nep, "/cfg/k00"), root_rev, "revisions intact");
    assert_eq!(revision_of(&nep, "/payments/p1"), payments_rev);
    // History above the compaction is there; below it is compacted.
    assert_eq!(
        ok(&nep, &["get", "/cfg/k00", &format!("--rev={}", compact_at + 1), "--print-value-only"]).trim(),
        "v0",
        "k00 before its overwrite"
    );
    let (good, out) = etcdctl(&nep, &["get", "/cfg/k00", &format!("--rev={}", compact_at - 1)]);
    assert!(!good && out.contains("compacted"), "{out}");
    let ttl = ok(&nep, &["lease", "timetolive", &lease, "--keys"]);
    assert!(ttl.contains("/cfg/leased") && !ttl.contains("expired"), "the lease and its key: {ttl}");
    rt.block_on(async {
        let d = client(&fresh).describe_lock("/payments/lock").await.unwrap().lock.unwrap();
        let h = d.holder.expect("the lock is still held");
        assert_eq!((h.session_id, h.token), (holder_id, token), "holder and fencing token intact");
        assert_eq!(d.waiters.iter().map(|w| w.session_id).collect::<Vec<_>>(), vec![waiter_id], "the queue intact");
    });
    // New writes continue the revision sequence; a restore over data is refused.
    ok(&nep, &["put", "/cfg/after", "1"]);
    assert_eq!(revision_of(&nep, "/cfg/after"), root_rev + 1);
    let (good, out) = meridian(&["snapshot", "restore", file.to_str().unwrap(), "--config", &cfg0]);
    assert!(!good && out.contains("already holds"), "{out}");
}
