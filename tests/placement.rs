//! The placement driver on real `meridian server` processes: its dry run
//! (`GET /v1/placement/plan`, `meridian placement plan`) shows what the
//! scheduler would do — a joined node taking its share, a dead node's
//! replicas replaced once it has been dead for `down_after_ms` — and
//! executes nothing; with `[placement] execute = true` the meta range's
//! leader runs it: a joined node receives replicas and a killed node's
//! are replaced, while writes go on.

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
    // Every member reported its load with its ranges: its disk, and what
    // it holds and leads (node 4 nothing yet).
    for n in p["nodes"].as_array().unwrap() {
        let load = &n["load"];
        let (capacity, available) = (load["disk_capacity_bytes"].as_u64().unwrap(), load["disk_available_bytes"].as_u64().unwrap());
        assert!(capacity > 0 && available <= capacity, "{n}");
        // Full below 5 % free (true of this machine's disk or not).
        let full = available * 100 < capacity * 5;
        assert_eq!((load["disk_full"].as_bool(), n["takes_replicas"].as_bool()), (Some(full), Some(!full)), "{n}");
        let held = load["replicas"].as_u64().unwrap();
        assert_eq!(held, if n["id"] == 4 { 0 } else { 4 }, "{n}");
    }
    let leaders: u64 = p["nodes"].as_array().unwrap().iter().map(|n| n["load"]["leaders"].as_u64().unwrap()).sum();
    assert_eq!(leaders, 4, "one leader per range: {p:#}");
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

fn plan_nodes(c: &ProcCluster, i: usize) -> Option<serde_json::Value> {
    plan(c, i).map(|p| p["nodes"].clone())
}

fn replicas_on(c: &ProcCluster, i: usize, node: u64) -> Option<u64> {
    plan_nodes(c, i)?.as_array()?.iter().find(|n| n["id"] == node)?["replicas"].as_u64()
}

#[test]
fn with_execute_on_a_joined_node_receives_replicas_and_a_dead_ones_are_replaced() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut c, placement) = executing_cluster();
    let eps = c.endpoints();
    ok(&eps, &["put", "/a/before", "1"]);
    let base: u16 = c.members[0].client_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let fourth = meridian_server::dev_layout::members(4, base).unwrap().pop().unwrap();
    c.add_joining_with(fourth, placement);
    // The joined node receives its share. Zones come first: nodes 1 and 4
    // share zone a while 2 and 3 are alone in b and c, so every range
    // keeps a replica on 2 and on 3, and 1 and 4 split zone a's.
    wait_until("node 4 holds replicas", Duration::from_secs(120), || replicas_on(&c, 0, 4).is_some_and(|n| n >= 1));
    ok(&eps, &["put", "/a/during", "2"]);
    // Some member's driver lists what it did, with why.
    let listed: Vec<serde_json::Value> = (0..4)
        .filter_map(|i| {
            let (code, body) = http_get(&c.members[i].http_addr, "/v1/placement/operators");
            (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).unwrap())
        })
        .flat_map(|v| v["operators"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(
        listed.iter().any(|o| o["to"] == 4 && (o["state"] == "done" || o["state"] == "running")),
        "no operator towards node 4 listed: {listed:?}"
    );
    // Node 3 dies: once dead for 3 s its replicas are replaced on the
    // others, every range back to 3 voters.
    c.kill9(2);
    wait_until("node 3's replicas replaced", Duration::from_secs(180), || {
        plan(&c, 0).is_some_and(|p| {
            let gone = p["nodes"].as_array().unwrap().iter().any(|n| n["id"] == 3 && n["replicas"] == 0);
            let placed =
                p["nodes"].as_array().unwrap().iter().filter(|n| n["id"] != 3).map(|n| n["replicas"].as_u64().unwrap()).sum::<u64>();
            gone && placed == 9 && p["ranges_reported"] == 3
        })
    });
    // Every range has 3 voters, none on node 3, no learner left, as each
    // range's leader reports it.
    wait_until("every range back to 3 voters", Duration::from_secs(60), || {
        let mut led = 0;
        let all_good = [0, 1, 3].iter().all(|&i| {
            let (_, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { return false };
            v["ranges"].as_array().unwrap().iter().filter(|r| r["role"] == "Leader").all(|r| {
                led += 1;
                let voters = r["voters"].as_array().unwrap();
                voters.len() == 3 && !voters.contains(&serde_json::json!(3)) && r["learners"].as_array().unwrap().is_empty()
            })
        });
        all_good && led == 3
    });
    let live = [0, 1, 3].map(|i| c.members[i].client_addr.clone()).join(",");
    ok(&live, &["put", "/a/after", "3"]);
    for (k, v) in [("/a/before", "1"), ("/a/during", "2"), ("/a/after", "3")] {
        assert!(ok(&live, &["get", k]).contains(v), "{k} lost");
        // Through each node alone: one whose replica moved away forwards.
        for i in [0, 1, 3] {
            assert!(ok(&c.members[i].client_addr, &["get", k]).contains(v), "{k} through node {}", i + 1);
        }
    }
}

/// Three nodes with namespace `/a/` whose placement drivers execute (and
/// replace a node dead for 3 s), launched; and that `[placement]` section,
/// for nodes added later.
fn executing_cluster() -> (ProcCluster, &'static str) {
    let placement = "[placement]\nexecute = true\ndown_after_ms = 3000\n";
    (cluster_with(3, &["/a/"], placement), placement)
}

/// `nodes` founding members declaring `namespaces`, each config ending
/// with `extra_toml`, launched.
fn cluster_with(nodes: u64, namespaces: &[&str], extra_toml: &str) -> ProcCluster {
    let mut c = ProcCluster::prepare(nodes, namespaces);
    for path in &c.configs {
        let mut cfg = std::fs::read_to_string(path).unwrap();
        cfg.push('\n');
        cfg.push_str(extra_toml);
        std::fs::write(path, cfg).unwrap();
    }
    c.launch();
    c
}

/// `meridian ARGS`: success and output.
fn meridian(args: &[&str]) -> (bool, String) {
    let out = Command::new(meridian_bin()).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn a_drained_node_gives_up_every_replica_under_a_lock_workload_then_is_decommissioned() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut c, placement) = executing_cluster();
    let base: u16 = c.members[0].client_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let fourth = meridian_server::dev_layout::members(4, base).unwrap().pop().unwrap();
    c.add_joining_with(fourth, placement);
    let http2 = c.members[1].http_addr.to_string();
    wait_until("node 4 alive on node 2", Duration::from_secs(60), || state_of(&c, 1, 4).as_deref() == Some("alive"));

    // Bad input first: refused, nothing changed.
    for (args, why) in [(vec!["node", "drain", "9"], "member not found"), (vec!["node", "decommission", "2"], "is not draining")] {
        let (success, out) = meridian(&[&args[..], &["--http", &http2]].concat());
        assert!(!success && out.contains(why), "{args:?}: expected {why:?}, got: {out}");
    }

    // Clients take a lock in turns on every member while node 1 drains:
    // each holder writes its start and end; no two may interleave.
    let journal = c.node_dir(1).join("lock-journal");
    std::fs::write(&journal, "").unwrap();
    let endpoints = c.endpoints();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|w| {
            let (journal, endpoints, stop) = (journal.clone(), endpoints.clone(), stop.clone());
            std::thread::spawn(move || {
                let script = format!("echo start {w} >> {0}; sleep 0.2; echo end {w} >> {0}", journal.display());
                let (mut held, mut retried) = (0, 0);
                let deadline = Instant::now() + Duration::from_secs(300);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline && held < 200 {
                    let out = Command::new(meridian_bin())
                        .args(["lock", "--endpoints", &endpoints, "--wait", "20", "/locks/job", "--", "sh", "-c", &script])
                        .output()
                        .unwrap();
                    if out.status.success() {
                        held += 1;
                    } else {
                        retried += 1;
                    }
                }
                (held, retried)
            })
        })
        .collect();

    let (drained, out) = meridian(&["node", "drain", "1", "--wait", "--timeout-s", "240", "--http", &http2]);
    assert!(drained, "{out}");
    assert!(out.contains("node 1 holds nothing"), "{out}");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let results: Vec<(u32, u32)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let held: u32 = results.iter().map(|r| r.0).sum();
    let retried: u32 = results.iter().map(|r| r.1).sum();
    assert!(held >= 3, "the lock workload ran: {results:?}");
    assert!(retried <= held, "clients saw more failures than successes: {results:?}");
    let lines = std::fs::read_to_string(&journal).unwrap();
    let mut holder: Option<&str> = None;
    for l in lines.lines() {
        match (l.split_once(' '), holder) {
            (Some(("start", w)), None) => holder = Some(w),
            (Some(("end", w)), Some(h)) if h == w => holder = None,
            _ => panic!("lock holders overlapped at {l:?} (holder {holder:?}):\n{lines}"),
        }
    }

    // Every range's leader reports no replica on node 1.
    wait_until("node 1 holds nothing per the leaders", Duration::from_secs(30), || {
        [1, 2, 3].iter().all(|&i| {
            let (_, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { return false };
            v["ranges"].as_array().unwrap().iter().filter(|r| r["role"] == "Leader").all(|r| {
                !r["voters"].as_array().unwrap().contains(&serde_json::json!(1))
                    && !r["learners"].as_array().unwrap().contains(&serde_json::json!(1))
            })
        })
    });
    // Node 1's removed replicas are collected (their logs and data
    // deleted) once the catalog proves each removal.
    wait_until("node 1's removed replicas are collected", Duration::from_secs(60), || {
        let (code, body) = http_get(&c.members[0].http_addr, "/v1/cluster/status");
        code == 200 && serde_json::from_str::<serde_json::Value>(&body).is_ok_and(|v| v["ranges"].as_array().is_some_and(Vec::is_empty))
    });
    assert!(metric(&c, 0, "meridian_store_replicas_destroyed_total") >= 2);
    // A member without a replica of the root or the meta range still
    // creates and drops namespaces (through the members that hold them).
    let http1 = c.members[0].http_addr.to_string();
    let (created, out) = meridian(&["namespace", "create", "/drained/", "--http", &http1]);
    assert!(created, "{out}");
    let (dropped, out) = meridian(&["namespace", "drop", "/drained/", "--http", &http1]);
    assert!(dropped, "{out}");
    let (done, out) = meridian(&["node", "decommission", "1", "--http", &http2]);
    assert!(done && out.contains("decommissioned"), "{out}");
    // Three nodes left: draining another would leave ranges short.
    let (refused, out) = meridian(&["node", "drain", "2", "--http", &http2]);
    assert!(!refused && out.contains("fewer than 3 voters"), "{out}");
    let (_, out) = meridian(&["node", "status", "1", "-o", "json", "--http", &http2]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["decommissioned"], true);
    // etcd's Cluster API: the list no longer has node 1; removing another
    // member is refused as its drain would be.
    let live2 = c.members[1].client_addr.to_string();
    let members = ok(&live2, &["member", "list", "-w", "json"]);
    let ids: Vec<u64> = serde_json::from_str::<serde_json::Value>(&members).unwrap()["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["ID"].as_u64().unwrap())
        .collect();
    assert!(!ids.contains(&1) && ids.contains(&4), "{ids:?}");
    let (removed, out) = etcdctl(&live2, &["member", "remove", "3"]);
    assert!(!removed && out.contains("fewer than 3 voters"), "{out}");
    let live = [1, 2, 3].map(|i| c.members[i].client_addr.clone()).join(",");
    ok(&live, &["put", "/a/after-drain", "1"]);
}

#[test]
fn etcdctl_member_remove_drains_the_member_and_the_driver_decommissions_it() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut c, placement) = executing_cluster();
    let base: u16 = c.members[0].client_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let fourth = meridian_server::dev_layout::members(4, base).unwrap().pop().unwrap();
    c.add_joining_with(fourth, placement);
    wait_until("node 4 holds replicas", Duration::from_secs(120), || replicas_on(&c, 0, 4).is_some_and(|n| n >= 1));
    let live = c.members[1].client_addr.to_string();
    let out = ok(&live, &["member", "remove", "4"]);
    assert!(out.contains("removed"), "{out}");
    // Drained, then decommissioned by the driver: gone from every list.
    wait_until("node 4 removed", Duration::from_secs(180), || {
        let members = ok(&live, &["member", "list", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&members).unwrap();
        !v["members"].as_array().unwrap().iter().any(|m| m["ID"] == 4)
    });
    let (_, out) = meridian(&["node", "status", "4", "-o", "json", "--http", &c.members[1].http_addr]);
    let st: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((st["decommissioned"].as_bool(), st["replicas"].as_array().map(Vec::len)), (Some(true), Some(0)), "{st}");
    ok(&live, &["put", "/a/after-remove", "1"]);
}

/// etcd's `member add` reserves an id for a peer address; with
/// `--learner` the node joins and holds nothing until `member promote`,
/// then takes its share. Refusals with etcd's words change nothing.
#[test]
fn etcdctl_member_add_reserves_an_id_and_a_learner_takes_replicas_once_promoted() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut c, placement) = executing_cluster();
    let base: u16 = c.members[0].client_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let fourth = meridian_server::dev_layout::members(4, base).unwrap().pop().unwrap();
    let live = c.members[1].client_addr.to_string();
    let peer = format!("--peer-urls=http://{}", fourth.peer_addr);
    let member_4 = |live: &str| -> Option<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(&ok(live, &["member", "list", "-w", "json"])).unwrap();
        v["members"].as_array().unwrap().iter().find(|m| m["ID"] == 4).cloned()
    };
    let out = ok(&live, &["member", "add", "node-4", &peer, "--learner"]);
    assert!(out.contains(" 4 added to cluster"), "{out}");
    let m = member_4(&live).expect("listed once added");
    assert_eq!((m["isLearner"].as_bool(), m.get("name")), (Some(true), None), "unstarted, no name: {m}");
    for (args, says) in [
        (vec!["member", "add", "again", &peer], "Peer URLs already exists"),
        (vec!["member", "add", "bad", "--peer-urls=http://10.0.0.9:1,http://10.0.0.9:2"], "given member URLs are invalid"),
        (vec!["member", "promote", "4"], "can only promote a learner member which is in sync with leader"),
        (vec!["member", "promote", "1"], "can only promote a learner member"),
        (vec!["member", "promote", "99"], "member not found"),
    ] {
        let (success, out) = etcdctl(&live, &args);
        assert!(!success && out.contains(says), "{args:?}: {out}");
    }
    assert_eq!(member_4(&live).unwrap()["isLearner"].as_bool(), Some(true));

    // The node joins under the reserved id; as a learner it takes nothing.
    c.add_joining_with(fourth, placement);
    wait_until("node 4 alive on node 1", Duration::from_secs(60), || state_of(&c, 0, 4).as_deref() == Some("alive"));
    let node_4 = |c: &ProcCluster| plan_nodes(c, 0).and_then(|n| n.as_array()?.iter().find(|n| n["id"] == 4).cloned());
    wait_until("node 4 in the plan", Duration::from_secs(30), || node_4(&c).is_some());
    let n = node_4(&c).unwrap();
    assert_eq!((n["learner"].as_bool(), n["takes_replicas"].as_bool()), (Some(true), Some(false)), "{n}");
    // Several driver rounds later, still nothing on it.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(replicas_on(&c, 0, 4), Some(0));
    // Every member's directory learns of it (from the meta range) in time.
    wait_until("node 4 listed as started", Duration::from_secs(30), || member_4(&live).is_some_and(|m| m["name"].as_str().is_some()));

    // As etcd's clients do, promote is retried while the member answers
    // that the learner is not ready.
    wait_until("node 4 promoted", Duration::from_secs(30), || {
        let (done, out) = etcdctl(&live, &["member", "promote", "4"]);
        assert!(done || out.contains("in sync with leader"), "{out}");
        done
    });
    assert_eq!(member_4(&live).unwrap().get("isLearner"), None, "a voter member now");
    wait_until("node 4 holds replicas", Duration::from_secs(120), || replicas_on(&c, 0, 4).is_some_and(|n| n >= 1));
    ok(&c.endpoints(), &["put", "/a/after-promote", "1"]);
}

#[test]
fn the_driver_merges_a_quiet_namespace_into_the_root_group_and_splits_one_that_grew() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let placement = "[placement]\nexecute = true\n\n[placement.groups]\nmerge_max_keys = 10\nmerge_quiet_s = 6\nsplit_min_keys = 20\n";
    let c = cluster_with(3, &[], placement);
    c.wait_ready(Duration::from_secs(60));
    let all = c.endpoints();
    let http = c.members[0].http_addr.to_string();
    let describe = |name: &str| -> serde_json::Value {
        let (found, out) = meridian(&["namespace", "describe", name, "-o", "json", "--http", &http]);
        assert!(found, "{out}");
        serde_json::from_str(&out).unwrap()
    };
    // A namespace of its own with two keys, then left quiet; a busy one
    // with keys written all along (a write a second: 60 a minute, above
    // merge_max_writes_per_min = 30) keeps its group.
    for name in ["/quiet/", "/busy/"] {
        let (ok_, out) = meridian(&["namespace", "create", name, "--http", &http]);
        assert!(ok_, "{out}");
    }
    ok(&all, &["put", "/quiet/a", "1"]);
    ok(&all, &["put", "/quiet/b", "2"]);
    let (_, out) = meridian(&["namespace", "create", "/grows/", "--shared", "--http", &http]);
    assert!(out.contains("shared"), "{out}");
    let quiet_range = describe("/quiet/")["range_id"].as_u64().unwrap();
    let started = Instant::now();
    let mut i = 0;
    wait_until("the quiet namespace merged into the root group", Duration::from_secs(90), || {
        i += 1;
        ok(&all, &["put", "/busy/k", &i.to_string()]);
        std::thread::sleep(Duration::from_millis(800));
        describe("/quiet/")["state"] == "shared"
    });
    println!("merged {:?} after the create", started.elapsed());
    let d = describe("/quiet/");
    assert_eq!((d["range_id"].as_u64(), d["keys"].as_i64()), (Some(2), Some(2)));
    assert_eq!(describe("/busy/")["state"], "ready", "a namespace taking writes keeps its group");
    // The value is etcdctl's first line; its retry warnings (a leader
    // elected after the merge) follow on stderr, which `ok` appends.
    let out = ok(&all, &["get", "/quiet/a", "--print-value-only"]);
    let value = out.lines().next().unwrap_or_default().trim();
    assert_eq!(value, "1");

    // The shared namespace grows past split_min_keys: it gets a group.
    for k in 0..25 {
        ok(&all, &["put", &format!("/grows/k{k:02}"), "v"]);
    }
    wait_until("the grown namespace split out", Duration::from_secs(60), || describe("/grows/")["state"] == "ready");
    let d = describe("/grows/");
    assert!(d["range_id"].as_u64().unwrap() > quiet_range, "{d}");
    assert_eq!(d["keys"].as_i64(), Some(25));

    // Both changes are listed with why, by the meta range's leader (the
    // descriptor is published before the driver lists the split as done:
    // wait for it).
    let listed = || -> Vec<serde_json::Value> {
        (0..3)
            .filter_map(|i| {
                let (code, body) = http_get(&c.members[i].http_addr, "/v1/placement/operators");
                (code == 200).then(|| serde_json::from_str::<serde_json::Value>(&body).ok()).flatten()
            })
            .flat_map(|v| v["operators"].as_array().cloned().unwrap_or_default())
            .collect()
    };
    let find = |kind: &str| listed().into_iter().find(|o| o["kind"] == kind && o["state"] != "running");
    wait_until("the split listed as finished", Duration::from_secs(30), || find("split /grows/").is_some());
    let merge = find("merge /quiet/").expect("the merge is listed");
    assert_eq!(merge["state"], "done");
    assert!(merge["reason"].as_str().unwrap().contains("quiet for"), "{merge}");
    let split = find("split /grows/").expect("the split is listed");
    assert!(split["reason"].as_str().unwrap().contains("25 keys"), "{split}");
}

#[test]
fn a_new_meta_leader_takes_over_the_operators_of_a_killed_one() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Five founding members: every range starts with five voters, and the
    // driver removes two of each (policy: 3 replicas), one operator a range.
    let placement = "[placement]\nexecute = true\ndown_after_ms = 60000\n";
    let mut c = cluster_with(5, &["/a/", "/b/"], placement);
    c.wait_ready(Duration::from_secs(60));
    let eps = c.endpoints();
    ok(&eps, &["put", "/a/before", "1"]);
    ok(&eps, &["put", "/b/before", "2"]);
    // The member listing a running operator leads the meta range: killed
    // there, mid-operator.
    let running_on = |c: &ProcCluster, i: usize| -> bool {
        let (code, body) = http_get(&c.members[i].http_addr, "/v1/placement/operators");
        code == 200
            && serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["operators"].as_array().cloned())
                .is_some_and(|ops| ops.iter().any(|o| o["state"] == "running"))
    };
    let mut driver = None;
    wait_until("an operator running", Duration::from_secs(60), || {
        driver = (0..5).find(|&i| running_on(&c, i));
        driver.is_some()
    });
    let driver = driver.unwrap();
    c.kill9(driver);
    let survivors: Vec<usize> = (0..5).filter(|i| *i != driver).collect();
    let took_over = |c: &ProcCluster| {
        survivors.iter().any(|&i| {
            let log = std::fs::read_to_string(c.node_dir(i).join("server.log")).unwrap_or_default();
            log.contains("placement operator taken over")
        })
    };
    wait_until("another member took the recorded operators over", Duration::from_secs(60), || took_over(&c));
    c.restart(driver);
    c.wait_ready(Duration::from_secs(60));
    // Every range ends with three voters and no learner, as its leader
    // reports it.
    wait_until("every range at 3 voters", Duration::from_secs(120), || {
        let mut leaders = std::collections::BTreeMap::new();
        for i in 0..5 {
            let (_, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { return false };
            for r in v["ranges"].as_array().into_iter().flatten().filter(|r| r["role"] == "Leader") {
                let good = r["voters"].as_array().is_some_and(|v| v.len() == 3) && r["learners"].as_array().is_some_and(|l| l.is_empty());
                leaders.insert(r["range_id"].as_u64().unwrap_or(0), good);
            }
        }
        leaders.len() == 4 && leaders.values().all(|g| *g)
    });
    for (k, v) in [("/a/before", "1"), ("/b/before", "2")] {
        assert!(ok(&eps, &["get", k]).contains(v), "{k} lost");
    }
}
