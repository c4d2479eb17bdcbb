//! The `meridian-sim` binary: the deterministic simulation (`demo`) and the
//! group-commit benchmark (`bench-raft`), kept out of the production
//! `meridian` binary so it does not link the simulator.

// A driver: it times the benchmark and prints progress.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meridian_sim::bench::bench_group_commit;
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
}

fn main() -> Result<()> {
    match Cli::parse().cmd {
        Cmd::Demo { nodes, ranges, ticks, runs, seed } => demo(nodes, ranges, ticks, runs, seed),
        Cmd::BenchRaft { ranges, inflight, entries, max_secs, json } => bench(&ranges, inflight, entries, max_secs, json),
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
