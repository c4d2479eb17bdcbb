//! The placement driver's dry run on real `meridian server` processes:
//! `GET /v1/placement/plan` and `meridian placement plan` show what the
//! scheduler would do — a joined node taking its share, a dead node's
//! replicas replaced once it has been dead for `down_after_ms` — and
//! nothing is executed.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use meridian_tests::*;

fn plan(c: &ProcCluster, i: usize) -> Option<serde_json::Value> {
    let (code, body) = http_get(&c.members[i].http_addr, "/v1/placement/plan");
    (code == 200).then(|| serde_json::from_str(&body).ok()).flatten()
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn state_of(c: &ProcCluster, i: usize, id: u64) -> Option<String> {
    let (_, body) = http_get(&c.members[i].http_addr, "/v1/nodes");
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["nodes"].as_array()?.iter().find(|n| n["id"] == id)?["state"].as_str().map(str::to_string)
}

fn voters(c: &ProcCluster, i: usize) -> Vec<(u64, Vec<u64>)> {
    let (_, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["ranges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["range_id"].as_u64().unwrap(), r["voters"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()))
        .collect()
}

#[test]
fn the_plan_gives_a_joined_node_its_share_replaces_a_dead_one_and_executes_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::prepare(3, &["/a/", "/b/"]);
    // Node 1 replaces a dead node's replicas after 3 s (the default, 5
    // minutes, is for production).
    let mut cfg = std::fs::read_to_string(&c.configs[0]).unwrap();
    cfg.push_str("\n[placement]\ndown_after_ms = 3000\n");
    std::fs::write(&c.configs[0], cfg).unwrap();
    c.launch();
    let base: u16 = c.members[0].client_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let fourth = meridian_server::dev_layout::members(4, base).unwrap().pop().unwrap();
    let i = c.add_joining(fourth);
    wait_until("node 4 alive on node 1", Duration::from_secs(60), || state_of(&c, 0, 4).as_deref() == Some("alive"));
    let before = voters(&c, 0);

    // Four ranges (meta, root, /a/, /b/) on nodes 1-3, none on node 4.
    let p = plan(&c, 0).unwrap();
    assert_eq!(p["executed"], false);
    assert_eq!(p["ranges_reported"], 4, "{p}");
    let ops = p["operators"].as_array().unwrap();
    assert!(
        ops.iter().any(|o| o["kind"] == "replace" && o["to"] == 4 && o["reason"].as_str().unwrap().contains("balance")),
        "node 4 should take a share: {p:#}"
    );
    let ranges: std::collections::BTreeSet<u64> = ops.iter().map(|o| o["range_id"].as_u64().unwrap()).collect();
    assert_eq!(ranges.len(), ops.len(), "one operator per range: {p}");
    // The CLI shows the same.
    let out = Command::new(meridian_bin()).args(["placement", "plan", "--http", &c.members[0].http_addr]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("replace") && text.contains("-> 4"), "{text}");

    // Node 3 dies; once dead for 3 s, node 1 plans its replacement.
    c.kill9(2);
    wait_until("a replacement of node 3 planned", Duration::from_secs(60), || {
        plan(&c, 0).is_some_and(|p| {
            p["operators"]
                .as_array()
                .unwrap()
                .iter()
                .any(|o| o["kind"] == "replace" && o["from"] == 3 && o["reason"].as_str().unwrap().contains("dead"))
        })
    });
    let p = plan(&c, 0).unwrap();
    assert!(p["unreachable"].as_array().unwrap().iter().any(|u| u["node_id"] == 3), "{p}");
    // A dry run: the voters are as they were.
    let mut after = voters(&c, 0);
    after.sort();
    let mut before = before;
    before.sort();
    assert_eq!(before, after);
    let _ = i;
}
