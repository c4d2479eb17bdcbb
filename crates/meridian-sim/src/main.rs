//! The `meridian-sim` binary: the deterministic simulation (`demo`), the
//! group-commit benchmark (`bench-raft`) and the gossip benchmark
//! (`bench-gossip`), kept out of the production `meridian` binary so it
//! does not link the simulator.

// A driver: it times the benchmark and prints progress.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meridian_sim::bench::bench_group_commit;
use meridian_sim::bench_gossip::{self, SteadyConfig, TickPolicy};
use meridian_sim::{random_run, SimConfig};

#[derive(Parser)]
#[command(name = "meridian-sim", version, about = "Meridian's deterministic simulation and consensus-core benchmarks")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole simulated cluster in this process: nodes, ranges, a
    /// random workload and a nemesis (crashes, partitions, drops), with
    /// every safety invariant checked. Deterministic from --seed.
    Demo {
        #[arg(long, default_value_t = 3)]
        nodes: u64,
        #[arg(long, default_value_t = 8)]
        ranges: u64,
        /// Logical ticks to run (one tick = 100 ms of cluster time).
        #[arg(long, default_value_t = 3000)]
        ticks: u64,
        /// Seeds to run, starting at --seed.
        #[arg(long, default_value_t = 5)]
        runs: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Group-commit benchmark: concurrent proposals to N ranges on a
    /// 3-node in-process cluster with RocksDB; reports committed entries
    /// per second and fsyncs per committed entry.
    BenchRaft {
        /// Comma-separated range counts.
        #[arg(long, default_value = "1,8,64")]
        ranges: String,
        /// Outstanding proposals per range.
        #[arg(long, default_value_t = 8)]
        inflight: usize,
        /// Entries to commit per configuration (stops earlier at --max-secs).
        #[arg(long, default_value_t = 20_000)]
        entries: u64,
        #[arg(long, default_value_t = 30)]
        max_secs: u64,
        /// Also print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Gossip benchmark (issue 17): the membership agents of N simulated
    /// nodes on a virtual network (1-20 ms one way in a region, 75 ± 10 ms
    /// across): bytes, datagrams and CPU per node per second in steady
    /// state, and how long a crashed node takes to be seen suspect and dead
    /// with LAN and with WAN settings. Deterministic from --seed but for
    /// CPU, which is the wall time of the agent calls on this machine.
    BenchGossip {
        /// Comma-separated node counts for the steady state, one region.
        #[arg(long, default_value = "3,10,50")]
        nodes: String,
        /// Comma-separated node counts for the steady state, split over two
        /// regions ("" for none).
        #[arg(long, default_value = "10")]
        wan_nodes: String,
        /// Simulated seconds measured per steady-state run (after
        /// convergence and 30 s of warm-up).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Steady-state runs per configuration: the traffic is the same
        /// every time (checked), the least CPU is reported.
        #[arg(long, default_value_t = 3)]
        repeats: usize,
        /// Seeds per detection setting, starting at --seed.
        #[arg(long, default_value_t = 10)]
        seeds: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// When agents are ticked: `driver` (like meridian-server's gossip
        /// loop: after datagrams, when next_due() comes, at least every
        /// 100 ms), `when-due` (only when next_due() comes) or `every-step`
        /// (every 10 ms).
        #[arg(long, default_value = "driver")]
        tick: String,
        /// Also print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Demo { nodes, ranges, ticks, runs, seed } => demo(nodes, ranges, ticks, runs, seed),
        Cmd::BenchRaft { ranges, inflight, entries, max_secs, json } => bench(&ranges, inflight, entries, max_secs, json),
        Cmd::BenchGossip { nodes, wan_nodes, seconds, repeats, seeds, seed, tick, json } => {
            let ticks = TickPolicy::from_name(&tick)?;
            let runs = GossipRuns { seconds, repeats, seeds, seed, ticks };
            bench_gossip_cmd(&nodes, &wan_nodes, &runs, json)
        }
    }
}

fn demo(nodes: u64, ranges: u64, ticks: u64, runs: u64, seed: u64) -> Result<()> {
    if !(1..=9).contains(&nodes) || ranges == 0 || ranges > 1024 || runs == 0 {
        bail!("--nodes must be 1..=9, --ranges 1..=1024 and --runs at least 1");
    }
    println!("meridian-sim demo: {runs} simulated run(s) of a {nodes}-node, {ranges}-range cluster, {ticks} ticks each, under crashes, partitions, drops and delays");
    let mut failed = 0;
    for s in seed..seed + runs {
        let mut cfg = SimConfig::new(s);
        cfg.nodes = nodes;
        cfg.initial_voters = nodes;
        cfg.ranges = ranges;
        let started = std::time::Instant::now();
        let r = random_run(cfg, ticks);
        let verdict = if r.ok() { "ok" } else { "VIOLATION" };
        println!(
            "  seed {s:>4}: {verdict:<9} {:>6} acknowledged writes, {:>5} linearizable reads checked, {:>2} crashes, {:>2} partitions ({:.1}s)",
            r.acked_writes,
            r.reads_checked,
            r.crashes,
            r.partitions,
            started.elapsed().as_secs_f64()
        );
        if !r.ok() {
            failed += 1;
            for v in &r.violations {
                println!("      {v}");
            }
            println!("      replay: meridian-sim demo --seed {s} --runs 1 --ticks {ticks} --nodes {nodes} --ranges {ranges}");
        }
    }
    println!("checked: election safety, same entries in the same order on every replica, no lost acknowledged write, linearizable reads");
    if failed > 0 {
        bail!("{failed} run(s) violated an invariant");
    }
    println!("all {runs} run(s) clean.");
    Ok(())
}

fn bench(ranges: &str, inflight: usize, entries: u64, max_secs: u64, json: bool) -> Result<()> {
    let counts: Vec<u64> =
        ranges.split(',').map(|s| s.trim().parse::<u64>().with_context(|| format!("bad range count {s:?}"))).collect::<Result<_>>()?;
    if counts.iter().any(|c| *c == 0 || *c > 4096) || inflight == 0 || inflight > 1024 {
        bail!("range counts must be 1..=4096 and --inflight 1..=1024");
    }
    println!("group commit: 3 nodes in one process, RocksDB (fsync on), {inflight} proposals in flight per range");
    println!("{:>7} {:>12} {:>10} {:>14} {:>16}", "ranges", "committed", "secs", "entries/s", "fsyncs/entry");
    let mut rows = Vec::new();
    for c in counts {
        eprintln!("  running {c} range(s)…");
        let r = bench_group_commit(c, inflight, entries, Duration::from_secs(max_secs), 7);
        println!(
            "{:>7} {:>12} {:>10.2} {:>14.0} {:>16.3}",
            r.ranges,
            r.committed,
            r.elapsed.as_secs_f64(),
            r.entries_per_sec(),
            r.fsyncs_per_entry()
        );
        rows.push(format!(
            "{{\"ranges\":{},\"inflight_per_range\":{},\"committed\":{},\"secs\":{:.3},\"entries_per_sec\":{:.1},\"fsyncs_per_entry\":{:.4}}}",
            r.ranges,
            r.inflight_per_range,
            r.committed,
            r.elapsed.as_secs_f64(),
            r.entries_per_sec(),
            r.fsyncs_per_entry()
        ));
    }
    if json {
        println!("[{}]", rows.join(","));
    }
    Ok(())
}

/// Node counts from a comma-separated `flag` value ("" is none).
fn node_counts(flag: &str, value: &str) -> Result<Vec<usize>> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            let n: usize = s.parse().with_context(|| format!("--{flag}: bad node count {s:?}"))?;
            if !(2..=bench_gossip::MAX_BENCH_NODES).contains(&n) {
                bail!("--{flag}: node counts must be 2..={}, got {n}", bench_gossip::MAX_BENCH_NODES);
            }
            Ok(n)
        })
        .collect()
}

/// How much of `bench-gossip` to run.
struct GossipRuns {
    seconds: u64,
    repeats: usize,
    seeds: u64,
    seed: u64,
    ticks: TickPolicy,
}

fn bench_gossip_cmd(nodes: &str, wan_nodes: &str, runs: &GossipRuns, json: bool) -> Result<()> {
    let GossipRuns { seconds, repeats, seeds, seed, ticks } = *runs;
    let (lan, wan) = (node_counts("nodes", nodes)?, node_counts("wan-nodes", wan_nodes)?);
    if !(1..=bench_gossip::MAX_MEASURE_MS / 1000).contains(&seconds) || !(1..=20).contains(&repeats) || !(1..=1000).contains(&seeds) {
        bail!("--seconds must be 1..={}, --repeats 1..=20 and --seeds 1..=1000", bench_gossip::MAX_MEASURE_MS / 1000);
    }
    let tick = match ticks {
        TickPolicy::Driver => "agents ticked like meridian-server's loop (after datagrams, when due, every 100 ms at least)",
        TickPolicy::WhenDue => "agents ticked only when next_due() comes",
        TickPolicy::EveryStep => "agents ticked every 10 ms",
    };
    let mut rows = Vec::new();
    println!("gossip steady state: 1-20 ms one way in a region, 75 ± 10 ms across, no loss; {seconds} s simulated measured after convergence + 30 s; {tick}; seed {seed}");
    println!("CPU = wall time inside Agent calls on one thread, per node per simulated second, least of {repeats} run(s); bytes = sealed datagrams (no UDP/IP headers)");
    println!(
        "{:>6} {:>8} {:>12} {:>12} {:>10} {:>7} {:>12} {:>10} {:>14} {:>10}",
        "nodes", "regions", "sent B/s", "recv B/s", "pkts/s", "B/pkt", "cross B/s", "CPU µs/s", "peers() µs/call", "not alive"
    );
    for (n, regions) in lan.iter().map(|n| (*n, 1)).chain(wan.iter().map(|n| (*n, 2))) {
        eprintln!("  steady state: {n} nodes in {regions} region(s)…");
        let cfg = SteadyConfig { nodes: n, regions, measure_ms: seconds * 1000, seed, ticks };
        let r = bench_gossip::steady_state_least_cpu(&cfg, repeats)?;
        println!(
            "{:>6} {:>8} {:>12.0} {:>12.0} {:>10.2} {:>7.0} {:>12.0} {:>10.1} {:>14.1} {:>10}",
            n,
            regions,
            r.sent_bytes_per_node_s(),
            r.received_bytes_per_node_s(),
            r.sent_packets_per_node_s(),
            r.bytes_per_packet(),
            r.cross_region_bytes_per_node_s(),
            r.cpu_us_per_node_s(),
            r.peers_call.as_secs_f64() * 1e6,
            r.not_alive_pairs
        );
        if r.dropped > 0 || r.stalled_ms > 0 {
            println!("       ({} datagrams dropped, {} ms of own stalls credited)", r.dropped, r.stalled_ms);
        }
        rows.push(r.json());
    }

    println!();
    println!("crash detection: {seeds} seed(s) from {seed}, crash after convergence + 10 s; ms from the crash until the observer's peers() says suspect (or dead) / dead");
    println!(
        "{:>8} {:>6} {:>13} {:>8} {:>26} {:>26} {:>11} {:>11}",
        "setting", "nodes", "observers", "samples", "suspect ms min/p50/p90/max", "dead ms min/p50/p90/max", "undetected", "false susp."
    );
    for setting in [bench_gossip::lan_setting(5)?, bench_gossip::wan_setting(3)?] {
        let mut done = Vec::new();
        for s in seed..seed + seeds {
            eprintln!("  detection: {} seed {s}…", setting.name);
            let run = bench_gossip::detect(&setting, s, ticks)?;
            let blind: Vec<u64> = run.observations.iter().filter(|o| o.dead_ms.is_none()).map(|o| o.observer).collect();
            if !blind.is_empty() {
                println!(
                    "  {} seed {s}: node(s) {blind:?} never saw node {} dead within {} ms; rerun: meridian-sim bench-gossip --nodes '' --wan-nodes '' --seed {s} --seeds 1",
                    setting.name,
                    setting.crashed,
                    bench_gossip::DETECT_LIMIT_MS
                );
            }
            done.push(run);
        }
        for d in bench_gossip::summarize(&setting, &done) {
            let show = |s: Option<bench_gossip::Spread>| s.map_or("-".to_string(), |s| s.to_string());
            println!(
                "{:>8} {:>6} {:>13} {:>8} {:>26} {:>26} {:>11} {:>11}",
                d.setting,
                d.nodes,
                d.group,
                d.samples,
                show(d.suspect),
                show(d.dead),
                d.undetected,
                d.false_pairs
            );
            rows.push(d.json());
        }
    }
    if json {
        println!("[{}]", rows.join(","));
    }
    Ok(())
}
