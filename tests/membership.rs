//! Membership changes on real `meridian server` processes: a replica is
//! removed from a range and added back (learner, then voter) while a client
//! keeps writing and a watcher is connected to the node that loses the
//! replica. Nothing acknowledged is lost, the watcher sees every write once
//! and in order, and bad requests are refused without changing anything.

// Real processes on real time: this test drives wall clocks by design.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_client::Client;

use meridian_tests::*;

const RANGE: u64 = 2;

fn members(c: &ProcCluster, i: usize) -> serde_json::Value {
    let (code, body) = http_get(&c.members[i].http_addr, &format!("/v1/ranges/{RANGE}/members"));
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn change(c: &ProcCluster, i: usize, body: &str) -> (u16, serde_json::Value) {
    let (code, text) = http_request(&c.members[i].http_addr, "POST", &format!("/v1/ranges/{RANGE}/members"), body, "application/json");
    (code, serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
}

#[test]
fn replica_removed_and_added_back_under_writes_and_a_watch() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let c = ProcCluster::start(3, &[]);
    let leader = c.leader_of(RANGE).expect("a leader");
    let victim = (leader + 1) % 3;
    let victim_id = c.members[victim].id;
    let before = members(&c, leader);
    let conf_ver = before["conf_ver"].as_u64().unwrap();
    assert_eq!(ids(&before["voters"]).len(), 3);

    // Refusals change nothing.
    let (code, v) = change(&c, victim, &format!(r#"{{"op":"remove","node_id":{victim_id}}}"#));
    assert_eq!(code, 421, "a follower points at the leader: {v}");
    assert_eq!(v["leader_http"], c.members[leader].http_addr.to_string());
    let leader_id = c.members[leader].id;
    for (body, want, says) in [
        (r#"{"op":"evict","node_id":2}"#.to_string(), 400, "body must be"),
        (r#"{"op":"remove"}"#.to_string(), 400, "node_id"),
        (r#"{"op":"add-learner","node_id":9}"#.to_string(), 400, "not a member of the cluster"),
        (format!(r#"{{"op":"add-learner","node_id":{victim_id}}}"#), 409, "already a voter"),
        (format!(r#"{{"op":"promote","node_id":{victim_id}}}"#), 409, "already a voter"),
        (format!(r#"{{"op":"remove","node_id":{leader_id}}}"#), 409, "transfer leadership first"),
    ] {
        let (code, v) = change(&c, leader, &body);
        assert_eq!(code, want, "{body}: {v}");
        assert!(v["error"].as_str().unwrap_or_default().contains(says), "{body}: {v}");
    }
    let (code, _) =
        http_request(&c.members[leader].http_addr, "POST", "/v1/ranges/999/members", r#"{"op":"remove","node_id":2}"#, "application/json");
    assert_eq!(code, 404);
    assert_eq!(members(&c, leader)["conf_ver"].as_u64().unwrap(), conf_ver, "refusals changed the configuration");

    let rt = rt();
    let stop = Arc::new(AtomicBool::new(false));
    let stop_watch = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let seen: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    // The watcher talks to the victim first; the writer to everyone.
    let mut order: Vec<String> = vec![c.members[victim].client_addr.to_string()];
    order.extend(c.members.iter().enumerate().filter(|(i, _)| *i != victim).map(|(_, m)| m.client_addr.to_string()));
    let all: Vec<String> = c.members.iter().map(|m| m.client_addr.to_string()).collect();
    let start_rev = rt.block_on(async {
        let cl = Client::with_config(meridian_client::ClientConfig::new(all.clone())).unwrap();
        cl.put("/m/start", "x").await.unwrap() + 1
    });
    let watcher = {
        let (seen, stop) = (seen.clone(), stop_watch.clone());
        let order = order.clone();
        std::thread::spawn(move || {
            meridian_tests::rt().block_on(async {
                let cl = Client::with_config(meridian_client::ClientConfig::new(order)).unwrap();
                let mut w = cl.watch("/m/", "/m0", start_rev);
                let deadline = Instant::now() + Duration::from_secs(120);
                while Instant::now() < deadline {
                    match tokio::time::timeout(Duration::from_millis(200), w.recv()).await {
                        Ok(Some(Ok(e))) => seen.lock().unwrap().push((String::from_utf8_lossy(&e.kv.key).into_owned(), e.kv.mod_revision)),
                        Ok(Some(Err(e))) => panic!("watch failed: {e}"),
                        Ok(None) => break,
                        Err(_) if stop.load(Ordering::SeqCst) => break,
                        Err(_) => {}
                    }
                }
            })
        })
    };
    let writer = {
        let (acked, stop) = (acked.clone(), stop.clone());
        std::thread::spawn(move || {
            meridian_tests::rt().block_on(async {
                let cl = Client::with_config(meridian_client::ClientConfig::new(all)).unwrap();
                for n in 0..20_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("/m/{n:05}");
                    if let Ok(rev) = cl.put(key.clone(), "v").await {
                        acked.lock().unwrap().push((key, rev));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
    };
    std::thread::sleep(Duration::from_secs(1));

    // Remove the victim's replica (through the CLI, which finds the leader).
    let http: Vec<String> = c.members.iter().map(|m| m.http_addr.to_string()).collect();
    let out = std::process::Command::new(meridian_bin())
        .args(["members", "--http", &http.join(","), &RANGE.to_string(), "remove", &victim_id.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "meridian members remove: {}", String::from_utf8_lossy(&out.stderr));
    let after: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!ids(&after["voters"]).contains(&victim_id), "{after}");
    let t = Instant::now();
    while http_get(&c.members[victim].http_addr, &format!("/v1/ranges/{RANGE}/members")).0 != 404 {
        assert!(t.elapsed() < Duration::from_secs(20), "the victim kept its replica");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The victim no longer answers for the range (rather than answering stale).
    let refused = rt.block_on(async {
        let mut kv = kv_client(&c, victim).await;
        let req = meridian_proto::etcdserverpb::RangeRequest { key: b"/m/start".to_vec(), ..Default::default() };
        kv.range(req).await.unwrap_err()
    });
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    std::thread::sleep(Duration::from_secs(1));

    // Add it back: learner, then voter once caught up.
    let (code, v) = change(&c, leader, &format!(r#"{{"op":"add-learner","node_id":{victim_id}}}"#));
    assert_eq!(code, 200, "{v}");
    assert!(ids(&v["learners"]).contains(&victim_id), "{v}");
    let t = Instant::now();
    loop {
        let (code, v) = change(&c, leader, &format!(r#"{{"op":"promote","node_id":{victim_id}}}"#));
        if code == 200 {
            assert!(ids(&v["voters"]).contains(&victim_id) && ids(&v["learners"]).is_empty(), "{v}");
            break;
        }
        assert_eq!(code, 409, "{v}");
        assert!(v["error"].as_str().unwrap().contains("not caught up"), "{v}");
        assert!(t.elapsed() < Duration::from_secs(30), "the learner never caught up: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > 100, "the writer made little progress: {}", acked.len());

    // The re-added replica serves every acknowledged write (linearizable).
    rt.block_on(async {
        let cl = Client::with_config(meridian_client::ClientConfig::new(vec![c.members[victim].client_addr.to_string()])).unwrap();
        let last = &acked.last().unwrap().0;
        let kv = cl.get(last.clone()).await.unwrap().expect("last acknowledged write");
        assert_eq!(kv.mod_revision, acked.last().unwrap().1);
    });
    let t = Instant::now();
    while seen.lock().unwrap().iter().filter(|(k, _)| k != "/m/start").count() < acked.len() && t.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop_watch.store(true, Ordering::SeqCst);
    watcher.join().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert!(seen.windows(2).all(|w| w[0].1 < w[1].1), "the watch repeated or reordered events");
    let seen_set: std::collections::BTreeSet<(String, i64)> = seen.into_iter().collect();
    let missing: Vec<&(String, i64)> = acked.iter().filter(|a| !seen_set.contains(*a)).collect();
    assert!(missing.is_empty(), "the watch missed {} acknowledged writes, first {:?}", missing.len(), missing.first());
    let end = members(&c, leader);
    assert_eq!(ids(&end["voters"]).len(), 3, "{end}");
    assert!(end["conf_ver"].as_u64().unwrap() >= conf_ver + 3, "{end}");
}
