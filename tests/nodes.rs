//! The node directory on real `meridian server` processes: every member
//! learns the others' labels from the meta range, and a node's labels are
//! persisted with its data (a restart with other labels needs --relabel).

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use meridian_tests::*;

/// Node `node_id`'s zone as member `i`'s directory has it.
fn zone_seen_by(c: &ProcCluster, i: usize, node_id: u64) -> Option<String> {
    let (code, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
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

/// What member `i`'s `/v1/cluster/status` says: (member ids, range ids it
/// holds a replica of).
fn status_of(c: &ProcCluster, i: usize) -> Option<(Vec<u64>, Vec<u64>)> {
    let (code, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let members = v["members"].as_array()?.iter().filter_map(|m| m["id"].as_u64()).collect();
    let ranges = v["ranges"].as_array()?.iter().filter_map(|r| r["range_id"].as_u64()).collect();
    Some((members, ranges))
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Members named by DNS names (`localhost`), not IP addresses: peers dial
/// each other by name (resolved at every dial), clients reach them by name,
/// and the names are what `MemberList` reports.
#[test]
fn a_cluster_whose_members_are_dns_names_elects_serves_and_reconnects() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut members = meridian_server::dev_layout::members(3, free_base_port()).unwrap();
    for m in &mut members {
        for a in [&mut m.peer_addr, &mut m.client_addr, &mut m.http_addr] {
            *a = a.replace("127.0.0.1", "localhost");
        }
    }
    let mut c = ProcCluster::start_members(members, &[]);
    let eps = c.endpoints();
    assert!(eps.starts_with("localhost:"), "{eps}");
    ok(&eps, &["put", "/dns/a", "1"]);
    assert!(ok(&eps, &["get", "/dns/a"]).contains('1'));
    let list = ok(&eps, &["member", "list"]);
    assert_eq!(list.matches("https://localhost:").count(), 3, "peer URLs by name: {list}");
    // A restarted member is dialled again by name.
    c.kill9(1);
    c.restart(1);
    c.wait_ready(Duration::from_secs(60));
    ok(&eps, &["put", "/dns/b", "2"]);
    let e1 = c.members[1].client_addr.clone();
    wait_until("the restarted member serves a linearizable read", Duration::from_secs(30), || {
        etcdctl(&e1, &["get", "/dns/b"]).1.contains('2')
    });
}

/// `--join`: a node started with only its own addresses and a member to
/// join through registers itself, is listed by every member, and holds no
/// replica until it is added to a range; then it catches up like any
/// replica.
#[test]
fn a_node_that_joins_is_listed_everywhere_and_holds_no_replica_until_added() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    let m4 = meridian_server::dev_layout::members(4, free_base_port()).unwrap().pop().unwrap();
    let j = c.add_joining(m4);
    assert_eq!(c.members[j].id, 4);
    // The member it joined through knows it at once; the others from the
    // meta range within a refresh (10 s); the new node knows them all.
    for i in [0, 1, 2, j] {
        wait_until(&format!("member {i} lists node 4"), Duration::from_secs(40), || {
            status_of(&c, i).is_some_and(|(m, _)| m == vec![1, 2, 3, 4])
        });
    }
    let (_, ranges) = status_of(&c, j).unwrap();
    assert!(ranges.is_empty(), "a joined node holds no replica until added: {ranges:?}");
    let list = ok(&c.members[0].client_addr, &["member", "list"]);
    assert!(list.contains(&c.members[j].peer_addr), "MemberList shows the joined node: {list}");
    assert!(ok(&c.members[j].client_addr, &["member", "list"]).lines().count() >= 4, "and so does the new node");

    // Added to range 2 as a learner, it receives the range (so the leader
    // dials it at the address it registered) and catches up.
    // With no replica yet, it serves its clients by forwarding to a node
    // that holds the range (the catalog's replica list).
    let e4 = c.members[j].client_addr.clone();
    ok(&e4, &["put", "/j/k", "before"]);
    assert!(ok(&e4, &["get", "/j/k"]).contains("before"), "a linearizable read through the joined node");
    assert!(ok(&c.members[0].client_addr, &["get", "/j/k"]).contains("before"));
    let leader = c.leader_of(2).expect("range 2 has a leader");
    let (code, body) = http_request(
        &c.members[leader].http_addr,
        "POST",
        "/v1/ranges/2/members",
        r#"{"op":"add-learner","node_id":4}"#,
        "application/json",
    );
    assert_eq!(code, 200, "{body}");
    wait_until("node 4 holds range 2", Duration::from_secs(30), || status_of(&c, j).is_some_and(|(_, r)| r.contains(&2)));
    wait_until("node 4 serves what was written before it joined", Duration::from_secs(30), || {
        etcdctl(&e4, &["get", "/j/k", "--consistency=s"]).1.contains("before")
    });
    // A learner of the root range is what etcd's status calls a learner.
    assert!(ok(&e4, &["endpoint", "status", "-w", "json"]).contains("\"isLearner\":true"), "node 4 reports itself a learner");
    assert!(!ok(&c.members[0].client_addr, &["endpoint", "status", "-w", "json"]).contains("isLearner"), "a voter does not");
    // A node id already taken by a member is refused, and says why.
    let mut clash = meridian_server::dev_layout::members(2, free_base_port()).unwrap().pop().unwrap();
    clash.id = 2;
    let k = c.add_joining(clash);
    let log = c.configs[k].parent().unwrap().join("server.log");
    wait_until("the clashing node is refused", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).unwrap_or_default().contains("already registered with peer address")
    });
    assert_eq!(status_of(&c, 0).unwrap().0, vec![1, 2, 3, 4], "the refusal changed nothing");
}
