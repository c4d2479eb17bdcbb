//! Membership gossip on real `meridian server` processes: a kill -9 is
//! seen as suspect, then dead, by both other nodes; a restarted node comes
//! back with a new incarnation and the same id; a SIGSTOP shorter than the
//! acceptable pause convicts nobody; a node that joins appears in
//! `meridian nodes` everywhere; bad datagrams are dropped and counted.
//!
//! `detection_distribution` (ignored; `make bench-detect`) measures the
//! kill -9 detection times over several runs.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::process::Command;
use std::time::{Duration, Instant};

use meridian_server::gossip::NodeReport;
use meridian_tests::*;

/// What member `i` says of every node (`None`: no answer).
fn nodes_seen_by(c: &ProcCluster, i: usize) -> Option<Vec<NodeReport>> {
    let (code, body) = http_get(&c.members[i].http_addr, "/v1/nodes");
    if code != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    serde_json::from_value(v["nodes"].clone()).ok()
}

/// Member `i`'s report of node `id`.
fn seen(c: &ProcCluster, i: usize, id: u64) -> Option<NodeReport> {
    nodes_seen_by(c, i)?.into_iter().find(|n| n.id == id)
}

fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every running member sees every node of `ids` alive.
fn all_alive(c: &ProcCluster, members: &[usize], ids: &[u64]) -> bool {
    members.iter().all(|i| ids.iter().all(|id| seen(c, *i, *id).is_some_and(|n| n.state == "alive")))
}

fn signal(c: &ProcCluster, i: usize, sig: &str) {
    let pid = c.pid(i).expect("running").to_string();
    let st = Command::new("kill").args([sig, pid.as_str()]).status().expect("kill(1)");
    assert!(st.success(), "kill {sig} {pid}");
}

/// Kills node 3 and measures, on nodes 1 and 2, how long until it is seen
/// suspect and dead: ((suspect 1, dead 1), (suspect 2, dead 2)).
fn kill_and_time(c: &mut ProcCluster) -> [(Duration, Duration); 2] {
    c.kill9(2);
    let start = Instant::now();
    let mut times: [(Option<Duration>, Option<Duration>); 2] = [(None, None); 2];
    let deadline = start + Duration::from_secs(60);
    while times.iter().any(|(_, d)| d.is_none()) {
        assert!(Instant::now() < deadline, "node 3 not seen dead by both others within 60 s: {times:?}");
        for (k, t) in times.iter_mut().enumerate() {
            if let Some(n) = seen(c, k, 3) {
                if n.state != "alive" && t.0.is_none() {
                    t.0 = Some(start.elapsed());
                }
                if n.state == "dead" && t.1.is_none() {
                    t.0.get_or_insert(start.elapsed());
                    t.1 = Some(start.elapsed());
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    times.map(|(s, d)| (s.expect("suspect seen"), d.expect("dead seen")))
}

#[test]
fn a_killed_node_is_suspect_then_dead_everywhere_and_comes_back_with_a_new_incarnation() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    wait_until("every node alive everywhere", Duration::from_secs(30), || all_alive(&c, &[0, 1, 2], &[1, 2, 3]));
    let before = seen(&c, 0, 3).unwrap();
    assert!(before.incarnation > 0 && before.phi < 8.0, "{before:?}");
    assert_eq!(before.region, "local");
    assert_eq!(before.gossip_addr, c.members[2].gossip_addr.clone().unwrap());
    let t = kill_and_time(&mut c);
    // foca's LAN settings make it ~1.5-2.5 s to suspect and ~5.5-6.5 s to
    // dead (docs/performance.md); the bound leaves room for a loaded
    // machine. The distribution: `make bench-detect`.
    for (k, (suspect, dead)) in t.iter().enumerate() {
        assert!(*dead <= Duration::from_secs(30), "node {} took {dead:?} to see node 3 dead", k + 1);
        assert!(suspect <= dead);
    }
    // A client given node 3 first avoids its endpoint once it asks.
    let eps = [2, 0, 1].map(|k| c.members[k].client_addr.clone());
    let avoided = rt().block_on(async {
        let client = meridian_client::Client::connect(eps.clone()).await.unwrap();
        // The first endpoint is down: the check fails over like a call.
        for _ in 0..3 {
            client.check_health().await;
            if !client.avoided().is_empty() {
                break;
            }
            client.get("/any").await.unwrap();
        }
        client.get("/any").await.unwrap();
        client.avoided()
    });
    assert_eq!(avoided, vec![eps[0].clone()]);
    c.restart(2);
    wait_until("node 3 back everywhere", Duration::from_secs(60), || all_alive(&c, &[0, 1, 2], &[1, 2, 3]));
    for k in [0, 1] {
        let after = seen(&c, k, 3).unwrap();
        assert!(after.incarnation > before.incarnation, "node {}: incarnation {} after {}", k + 1, after.incarnation, before.incarnation);
        assert_eq!(after.id, 3);
    }
    // The CLI shows the same.
    let out = Command::new(meridian_bin()).args(["nodes", "--http", &c.members[0].http_addr]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    assert_eq!(table.lines().filter(|l| l.contains(" alive ")).count(), 3, "{table}");
    let out = Command::new(meridian_bin()).args(["nodes", "--http", &c.members[1].http_addr, "-o", "json"]).output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["node_id"], 2);
    assert_eq!(v["nodes"].as_array().unwrap().len(), 3);
}

#[test]
fn a_pause_shorter_than_the_acceptable_pause_convicts_nobody() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    wait_until("every node alive everywhere", Duration::from_secs(30), || all_alive(&c, &[0, 1, 2], &[1, 2, 3]));
    // Long enough for the phi history to settle.
    std::thread::sleep(Duration::from_secs(5));
    signal(&c, 1, "-STOP");
    let stopped = Instant::now();
    let mut others_saw = Vec::new();
    while stopped.elapsed() < Duration::from_millis(2000) {
        for k in [0, 2] {
            others_saw.extend(seen(&c, k, 2).map(|n| n.state));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    signal(&c, 1, "-CONT");
    // The paused node convicts nobody, and nobody convicts it.
    let watch = Instant::now();
    let mut paused_saw = Vec::new();
    while watch.elapsed() < Duration::from_secs(10) {
        for id in [1, 3] {
            paused_saw.extend(seen(&c, 1, id).map(|n| (id, n.state)));
        }
        for k in [0, 2] {
            others_saw.extend(seen(&c, k, 2).map(|n| n.state));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(paused_saw.iter().all(|(_, s)| s == "alive"), "the paused node blamed its peers: {paused_saw:?}");
    assert!(!others_saw.iter().any(|s| s == "dead"), "a 2 s pause convicted the paused node: {others_saw:?}");
    let stalled = metric(&c, 1, "meridian_gossip_self_stall_ms_total");
    assert!(stalled >= 1000, "the stall was not credited: {stalled} ms");
    assert!(all_alive(&c, &[0, 1, 2], &[1, 2, 3]));
}

#[test]
fn a_node_that_joins_appears_in_nodes_on_every_member() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut c = ProcCluster::start(3, &[]);
    let fourth = meridian_server::dev_layout::members(4, c.members[0].client_addr.rsplit_once(':').unwrap().1.parse().unwrap())
        .unwrap()
        .pop()
        .unwrap();
    let i = c.add_joining(fourth);
    wait_until("the joined node alive on every member, and every member on it", Duration::from_secs(60), || {
        all_alive(&c, &[0, 1, 2, i], &[1, 2, 3, 4])
    });
    // Its record (addresses, labels) reached the members it did not join
    // through, and it learned theirs.
    let rec = seen(&c, 2, 4).unwrap();
    assert_eq!(rec.client_addr, c.members[i].client_addr);
    assert_eq!(rec.zone, "local-a");
    let three = seen(&c, i, 3).unwrap();
    assert_eq!(three.gossip_addr, c.members[2].gossip_addr.clone().unwrap());
}

#[test]
fn bad_datagrams_are_dropped_counted_and_change_nothing() {
    use meridian_membership::wire::Sealer;
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    wait_until("every node alive everywhere", Duration::from_secs(30), || all_alive(&c, &[0, 1, 2], &[1, 2, 3]));
    let before: Vec<(u64, String, u64)> = nodes_seen_by(&c, 0).unwrap().into_iter().map(|n| (n.id, n.state, n.incarnation)).collect();
    let ca = std::fs::read(c.node_dir(0).join("ca.pem")).unwrap();
    let key = meridian_server::gossip::load_key(&c.node_dir(0).join("gossip.key")).unwrap();
    let cluster = meridian_server::gossip::wire_cluster_id(&ca);
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = c.members[0].gossip_addr.clone().unwrap();
    let valid_inc = meridian_membership::gossip::incarnation_of_start(1_000);
    let datagrams: Vec<Vec<u8>> = vec![
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![0u8; 3000],
        Sealer::new(&key, cluster ^ 1, 2, valid_inc).seal(b"\x00\x05local").unwrap(),
        Sealer::new(b"another key, also 32 bytes long!!", cluster, 2, valid_inc).seal(b"\x00\x05local").unwrap(),
        // Authentic, but a node claiming id 2 at an incarnation lower than
        // node 2's.
        Sealer::new(&key, cluster, 2, 1).seal(b"\x00\x05local").unwrap(),
        // Authentic and new, but not foca.
        Sealer::new(&key, cluster, 9, valid_inc).seal(b"\x00\x05localgarbage").unwrap(),
    ];
    for d in &datagrams {
        sock.send_to(d, &to).unwrap();
    }
    let dropped = |reason: &str| -> u64 {
        let (_, body) = http_get(&c.members[0].http_addr, "/metrics");
        body.lines()
            .find(|l| l.starts_with(&format!("meridian_gossip_packets_dropped_total{{reason=\"{reason}\"}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    wait_until("every bad datagram counted", Duration::from_secs(10), || {
        ["bad_magic", "oversized", "other_cluster", "forged", "stale_incarnation", "refused"].iter().all(|r| dropped(r) >= 1)
    });
    let after: Vec<(u64, String, u64)> = nodes_seen_by(&c, 0).unwrap().into_iter().map(|n| (n.id, n.state, n.incarnation)).collect();
    assert_eq!(before, after, "bad datagrams changed the node list");
}

/// `make bench-detect`: kill -9 of node 3 of a 3-node cluster, RUNS times
/// (default 10), and the time until nodes 1 and 2 see it suspect and
/// dead; prints the distribution.
#[test]
#[ignore]
fn detection_distribution() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(10).clamp(1, 100);
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (mut suspect, mut dead) = (Vec::new(), Vec::new());
    for run in 1..=runs {
        let mut c = ProcCluster::start(3, &[]);
        wait_until("every node alive everywhere", Duration::from_secs(30), || all_alive(&c, &[0, 1, 2], &[1, 2, 3]));
        // A settled detector, as in production.
        std::thread::sleep(Duration::from_secs(10));
        let t = kill_and_time(&mut c);
        for (s, d) in t {
            suspect.push(s.as_secs_f64());
            dead.push(d.as_secs_f64());
        }
        println!(
            "run {run:>2}: node 1 suspect {:.2} s dead {:.2} s; node 2 suspect {:.2} s dead {:.2} s",
            t[0].0.as_secs_f64(),
            t[0].1.as_secs_f64(),
            t[1].0.as_secs_f64(),
            t[1].1.as_secs_f64()
        );
    }
    for (what, v) in [("suspect", &mut suspect), ("dead", &mut dead)] {
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        println!("{what:>8}: n={} min {:.2} s, median {:.2} s, p90 {:.2} s, max {:.2} s", v.len(), v[0], q(0.5), q(0.9), v[v.len() - 1]);
    }
}
