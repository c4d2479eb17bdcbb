//! Namespaces at scale on three real `meridian server` processes (a
//! measurement, run by `make bench-namespaces`; ignored by `make verify`):
//! creates N namespaces through `meridian.v1.Namespaces` with C at a time
//! and reports the time, creates per second and their latency; then lets
//! the cluster idle and reports each node's CPU and resident memory, per
//! range held.
//!
//! `MERIDIAN_BENCH_NAMESPACES` (default 1000), `MERIDIAN_BENCH_CONCURRENCY`
//! (default 4), `MERIDIAN_BENCH_IDLE_S` (default 30),
//! `MERIDIAN_BENCH_SHARED=1`: the namespaces are created shared (served by
//! the root group; no range each).

// A measurement on real processes and real time.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use meridian_proto::meridian::v1 as api;
use meridian_tests::*;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// User + system CPU seconds of `pid` so far.
fn cpu_s(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 =
        f.get(11).and_then(|u| u.parse::<f64>().ok()).unwrap_or(0.0) + f.get(12).and_then(|s| s.parse::<f64>().ok()).unwrap_or(0.0);
    ticks / 100.0
}

/// Resident memory of `pid`, in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
    kb / 1024.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or_default()
}

#[test]
#[ignore = "a measurement: make bench-namespaces"]
fn bench_create_namespaces_then_idle() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let n = env("MERIDIAN_BENCH_NAMESPACES", 1000);
    let concurrency = env("MERIDIAN_BENCH_CONCURRENCY", 4).max(1);
    let idle_s = env("MERIDIAN_BENCH_IDLE_S", 30);
    let shared = env("MERIDIAN_BENCH_SHARED", 0) == 1;
    let c = ProcCluster::start(3, &[]);
    c.wait_ready(Duration::from_secs(60));
    let endpoints: Vec<String> = c.members.iter().map(|m| format!("http://{}", m.client_addr)).collect();
    let started = Instant::now();
    let mut latencies: Vec<Duration> = rt().block_on(async {
        let mut tasks = Vec::new();
        for w in 0..concurrency {
            let ep = endpoints[(w as usize) % endpoints.len()].clone();
            tasks.push(tokio::spawn(async move {
                let ch = tonic::transport::Channel::from_shared(ep).unwrap().connect().await.unwrap();
                let mut ns = api::namespaces_client::NamespacesClient::new(ch);
                let mut lat = Vec::new();
                let mut i = w;
                while i < n {
                    let t = Instant::now();
                    let name = format!("/bench-{i:05}/");
                    let r = ns.create(api::NamespaceCreateRequest { name: name.clone(), shared, ..Default::default() }).await;
                    if let Err(e) = r {
                        panic!("create {name}: {e}");
                    }
                    lat.push(t.elapsed());
                    if lat.len() % 100 == 0 {
                        eprintln!("worker {w}: {} created", lat.len());
                    }
                    i += concurrency;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    });
    let took = started.elapsed();
    if std::env::var("MERIDIAN_BENCH_SLOW_STEPS").is_ok() {
        for i in 0..3 {
            let log = std::fs::read_to_string(c.node_dir(i).join("server.log")).unwrap_or_default();
            for l in log.lines().filter(|l| l.contains("slow namespace step")).take(20) {
                println!("node {}: {l}", i + 1);
            }
        }
    }
    latencies.sort();
    println!(
        "created {n} {}namespaces on 3 nodes, {concurrency} at a time: {:.1} s, {:.1} creates/s; latency p50 {:?} p99 {:?} max {:?}",
        if shared { "shared " } else { "" },
        took.as_secs_f64(),
        n as f64 / took.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default()
    );
    // Quiet: ranges quiesce once idle; measure a window after that.
    std::thread::sleep(Duration::from_secs(10));
    let pids: Vec<u32> = (0..3).filter_map(|i| c.pid(i)).collect();
    let before: Vec<f64> = pids.iter().map(|p| cpu_s(*p)).collect();
    std::thread::sleep(Duration::from_secs(idle_s));
    let ranges = if shared { 2 } else { n + 2 };
    for (i, p) in pids.iter().enumerate() {
        let cpu = (cpu_s(*p) - before[i]) / idle_s as f64 * 100.0;
        let rss = rss_mib(*p);
        println!(
            "node {}: idle CPU {cpu:.1}% of one core over {idle_s} s; RSS {rss:.0} MiB for {ranges} ranges and {n} namespaces ({:.1} KiB per range, {:.1} KiB per namespace)",
            i + 1,
            rss * 1024.0 / ranges as f64,
            rss * 1024.0 / n.max(1) as f64
        );
    }
}
