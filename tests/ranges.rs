//! Ranges as recorded at bootstrap, on real `meridian server` processes:
//! the cluster id, range ids that a reordered config does not renumber, and
//! a config that contradicts the recorded layout refused at start.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use meridian_proto::etcdserverpb as pb;

use meridian_tests::*;

/// Every node's answer header names the cluster id, once it has read it
/// from the meta range.
fn cluster_ids(c: &ProcCluster) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ids: Vec<u64> = rt().block_on(async {
            let mut ids = Vec::new();
            for i in 0..c.members.len() {
                if c.children[i].is_none() {
                    continue;
                }
                let mut kv = kv_client(c, i).await;
                let r = kv.range(pb::RangeRequest { key: b"/probe".to_vec(), serializable: true, ..Default::default() }).await;
                ids.push(r.ok().and_then(|r| r.into_inner().header).map_or(0, |h| h.cluster_id));
            }
            ids
        });
        if ids.iter().all(|id| *id != 0) || Instant::now() > deadline {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The cluster id is drawn at random once, recorded in the meta range,
/// shared by every member and kept across restarts (it is not derived from
/// the members' addresses).
#[test]
fn cluster_id_is_random_shared_and_stable() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    let ids = cluster_ids(&c);
    assert!(ids.iter().all(|id| *id != 0), "every member read the cluster id: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] == w[1]), "one cluster id for every member: {ids:?}");
    c.kill9(0);
    c.restart(0);
    c.wait_ready(Duration::from_secs(60));
    assert_eq!(cluster_ids(&c), ids, "the cluster id survives a restart");
    drop(c);
    let other = ProcCluster::start(3, &[]);
    let other_ids = cluster_ids(&other);
    assert_ne!(other_ids[0], ids[0], "another cluster draws another id");
}

fn set_namespaces(c: &ProcCluster, i: usize, namespaces: &str) {
    let path = &c.configs[i];
    let text = std::fs::read_to_string(path).unwrap();
    // The array may span lines: replace from its key to its closing bracket.
    let start = text.find("namespaces = [").expect("a namespaces array");
    let end = start + text[start..].find(']').expect("the array's end") + 1;
    std::fs::write(path, format!("{}namespaces = {namespaces}{}", &text[..start], &text[end..])).unwrap();
}

/// Range ids follow the recorded layout, not the order of a config's list:
/// reordering the namespaces and restarting keeps every key where it was.
/// A config that adds a namespace to the bootstrapped cluster is refused at
/// start, with a message naming it, and the node serves nothing.
#[test]
fn reordered_namespaces_keep_their_data_and_an_added_one_is_refused() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &["/b/", "/a/"]);
    let ep = c.endpoints();
    ok(&ep, &["put", "/a/k", "in-a"]);
    ok(&ep, &["put", "/b/k", "in-b"]);
    ok(&ep, &["put", "/k", "in-root"]);
    for i in 0..3 {
        c.kill9(i);
        set_namespaces(&c, i, r#"["/a/", "/b/"]"#);
    }
    for i in 0..3 {
        c.restart(i);
    }
    c.wait_ready(Duration::from_secs(60));
    assert_eq!(ok(&ep, &["get", "/a/k", "--print-value-only"]).trim(), "in-a");
    assert_eq!(ok(&ep, &["get", "/b/k", "--print-value-only"]).trim(), "in-b");
    assert_eq!(ok(&ep, &["get", "/k", "--print-value-only"]).trim(), "in-root");

    c.kill9(0);
    set_namespaces(&c, 0, r#"["/a/", "/b/", "/0/"]"#);
    let (status, log) = c.start_expecting_exit(0, Duration::from_secs(30));
    assert!(!status.success(), "refused at start");
    assert!(log.contains("\"/0/\"") && log.contains("namespaces do not match"), "the refusal names the namespace: {log}");
    assert_eq!(ok(&ep, &["get", "/a/k", "--print-value-only"]).trim(), "in-a", "the others still serve");
}
