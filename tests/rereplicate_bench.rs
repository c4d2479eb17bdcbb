//! Re-replication on real processes (a measurement, run by `make
//! bench-rereplicate`; ignored by `make verify`): three founding nodes and
//! a fourth that joins, the placement driver executing with `down_after`
//! D; N namespaces created (each a Raft group of three voters); then the
//! node holding the most replicas is killed -9, and the benchmark reports
//! how long until every range's leader counts three voters again, none on
//! the dead node: the time to re-replicate, D included, and the replicas
//! moved per second after D.
//!
//! `MERIDIAN_BENCH_NAMESPACES` (default 1000), `MERIDIAN_BENCH_DOWN_AFTER_MS`
//! (default 5000), `MERIDIAN_BENCH_LIMIT_S` (default 1800: the run gives up
//! and reports how far it got), `MERIDIAN_BENCH_JOIN_LAST=1`: the fourth
//! node joins only once the namespaces exist, so the killed founding node
//! holds a replica of every range and the new node takes them all.

// A measurement on real processes and real time.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use meridian_proto::meridian::v1 as api;
use meridian_tests::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Each range's voters as its leader reports them, over the live members
/// (the newest term's leader wins).
fn voters_by_range(c: &ProcCluster, members: &[usize]) -> BTreeMap<u64, (u64, Vec<u64>)> {
    let mut out: BTreeMap<u64, (u64, Vec<u64>)> = BTreeMap::new();
    for &i in members {
        let (code, body) = http_get(&c.members[i].http_addr, "/v1/cluster/status");
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else { continue };
        if code != 200 {
            continue;
        }
        for r in v["ranges"].as_array().into_iter().flatten().filter(|r| r["role"] == "Leader") {
            let id = r["range_id"].as_u64().unwrap_or(0);
            let term = r["term"].as_u64().unwrap_or(0);
            let voters: Vec<u64> = r["voters"].as_array().into_iter().flatten().filter_map(|x| x.as_u64()).collect();
            if out.get(&id).is_none_or(|(t, _)| term > *t) {
                out.insert(id, (term, voters));
            }
        }
    }
    out
}

#[test]
#[ignore = "a measurement: make bench-rereplicate"]
fn bench_rereplicate_a_dead_node() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = env("MERIDIAN_BENCH_NAMESPACES", 1000);
    let down_after_ms = env("MERIDIAN_BENCH_DOWN_AFTER_MS", 5000);
    let limit = Duration::from_secs(env("MERIDIAN_BENCH_LIMIT_S", 1800));
    // Groups stay as they are: the driver would merge the quiet
    // namespaces (after merge_quiet_s), retiring the ranges measured.
    let placement = format!("[placement]\nexecute = true\ndown_after_ms = {down_after_ms}\n\n[placement.groups]\nenabled = false\n");
    let mut c = ProcCluster::prepare(3, &[]);
    for path in &c.configs {
        let mut cfg = std::fs::read_to_string(path).unwrap();
        cfg.push('\n');
        cfg.push_str(&placement);
        std::fs::write(path, cfg).unwrap();
    }
    c.launch();
    c.wait_ready(Duration::from_secs(60));
    let join_last = env("MERIDIAN_BENCH_JOIN_LAST", 0) == 1;
    let base: u16 = c.members[0].client_addr.rsplit_once(':').unwrap().1.parse().unwrap();
    let fourth = meridian_server::dev_layout::members(4, base).unwrap().pop().unwrap();
    if !join_last {
        c.add_joining_with(fourth.clone(), &placement);
    }

    let endpoint = format!("http://{}", c.members[0].client_addr);
    let started = Instant::now();
    rt().block_on(async {
        let ch = tonic::transport::Channel::from_shared(endpoint).unwrap().connect().await.unwrap();
        let mut ns = api::namespaces_client::NamespacesClient::new(ch);
        for i in 0..n {
            let name = format!("/bench-{i:05}/");
            let mut tries = 0;
            while let Err(e) = ns.create(api::NamespaceCreateRequest { name: name.clone(), ..Default::default() }).await {
                // A retry after an answer lost midway finds it created.
                if tries > 0 && e.code() == tonic::Code::AlreadyExists {
                    break;
                }
                tries += 1;
                println!("create {name}: {} (retrying)", e.message());
                assert!(tries < 20 && e.code() != tonic::Code::InvalidArgument, "create {name}: {e:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if (i + 1) % 250 == 0 {
                println!("created {} namespaces in {:.1} s", i + 1, started.elapsed().as_secs_f64());
            }
        }
    });
    if join_last {
        c.add_joining_with(fourth, &placement);
        // Known alive to the driver (gossip) before its peers are killed.
        std::thread::sleep(Duration::from_secs(5));
    }
    let all = [0, 1, 2, 3];
    let layout = voters_by_range(&c, &all);
    let mut held: BTreeMap<u64, usize> = BTreeMap::new();
    for (_, voters) in layout.values() {
        for v in voters {
            *held.entry(*v).or_default() += 1;
        }
    }
    println!("{} ranges; voters per node before the kill: {held:?}", layout.len());
    // The founding node holding most (the joined one may hold some by now).
    let victim = *[1u64, 2, 3].iter().max_by_key(|id| held.get(id).copied().unwrap_or(0)).unwrap();
    let on_victim = held.get(&victim).copied().unwrap_or(0);
    c.kill9(victim as usize - 1);
    let killed = Instant::now();
    let live: Vec<usize> = all.iter().copied().filter(|i| *i != victim as usize - 1).collect();
    println!("killed node {victim} holding {on_victim} voters");
    let mut last_print = Instant::now();
    let (done_at, left) = loop {
        let now = voters_by_range(&c, &live);
        let left = layout.keys().filter(|id| now.get(id).is_none_or(|(_, v)| v.len() != 3 || v.contains(&victim))).count();
        if left == 0 {
            break (Some(killed.elapsed()), 0);
        }
        if killed.elapsed() > limit {
            break (None, left);
        }
        if last_print.elapsed() > Duration::from_secs(10) {
            println!("  {:>5.0} s: {left} ranges still count node {victim} or lack a voter", killed.elapsed().as_secs_f64());
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    match done_at {
        Some(t) => {
            let after = t.as_secs_f64() - down_after_ms as f64 / 1000.0;
            println!(
                "re-replicated {on_victim} replicas of node {victim} in {:.1} s ({:.1} s after down_after): {:.1} replicas/s",
                t.as_secs_f64(),
                after,
                on_victim as f64 / after.max(0.001)
            );
        }
        None => println!("gave up after {limit:?}: {left} of {} ranges not re-replicated", layout.len()),
    }
    assert!(done_at.is_some(), "{left} ranges not re-replicated within {limit:?}");
}
