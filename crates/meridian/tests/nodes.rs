//! The node directory on real `meridian server` processes: every member
//! learns the others' labels from the meta range, and a node's labels are
//! persisted with its data (a restart with other labels needs --relabel).

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

mod common;
use common::*;

/// Node `node_id`'s zone as member `i`'s directory has it.
fn zone_seen_by(c: &ProcCluster, i: usize, node_id: u64) -> Option<String> {
    let (code, body) = http_get(c.members[i].http_addr, "/v1/cluster/status");
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let m = v["members"].as_array()?.iter().find(|m| m["id"] == node_id)?.clone();
    m["zone"].as_str().filter(|z| !z.is_empty()).map(str::to_string)
}

fn wait_for_zone(c: &ProcCluster, i: usize, node_id: u64, zone: &str) {
    let deadline = Instant::now() + Duration::from_secs(40);
    while zone_seen_by(c, i, node_id).as_deref() != Some(zone) {
        assert!(Instant::now() < deadline, "member {i} never learned node {node_id}'s zone {zone}: {:?}", zone_seen_by(c, i, node_id));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn set_zone(c: &ProcCluster, i: usize, zone: &str) {
    let path = &c.configs[i];
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().find(|l| l.starts_with("zone = ")).expect("a zone line").to_string();
    std::fs::write(path, text.replace(&line, &format!("zone = \"{zone}\""))).unwrap();
}

#[test]
fn labels_are_learned_persisted_and_changed_only_with_relabel() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    // `meridian dev`'s layout puts node 3 in zone local-c; node 1 learns it
    // from node 3's record in the meta range, not from its own config.
    wait_for_zone(&c, 0, 3, "local-c");

    c.kill9(2);
    set_zone(&c, 2, "local-z");
    let (status, log) = c.start_expecting_exit(2, Duration::from_secs(30));
    assert!(!status.success(), "refused without --relabel");
    assert!(log.contains("--relabel"), "the refusal says how to proceed: {log}");

    c.children[2] = Some(c.spawn_with(2, &["--relabel"]));
    c.wait_ready(Duration::from_secs(60));
    wait_for_zone(&c, 2, 3, "local-z");
    wait_for_zone(&c, 0, 3, "local-z");
    // The new labels are the record now: a plain restart is accepted.
    c.kill9(2);
    c.restart(2);
    c.wait_ready(Duration::from_secs(60));
}
