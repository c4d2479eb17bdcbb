//! `meridian-chaos`: runs Meridian as real processes under faults, records
//! what clients observe, and checks it.
//!
//! ```text
//!  scenario.toml ─► run (seed) ─┬─ cluster.rs    meridian server ×N on loopback
//!                               ├─ workload/     registers, locks, watchers (recorders)
//!                               ├─ nemesis.rs    kill, pause, partitions, drift, transfers
//!                               └─ HEAL, final reads
//!                                      │
//!                   checks/ ◄──────────┘  linearizability, lock safety, watch order
//!                      │
//!                      └─► summary line; on violation <out>/<scenario>-<seed>/
//! ```
//!
//! See `chaos/README.md` for usage and the scenario format.

// A driver of real processes on real time: it owns the clocks, spawns
// tasks and seeds its RNGs from the scenario (no thread_rng anywhere).
#![allow(clippy::disallowed_methods)]

mod checks;
mod clock;
mod cluster;
mod http;
mod nemesis;
mod report;
mod run;
mod scenario;
mod workload;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use meridian_check::models::{RegisterInput, RegisterOutput};
use meridian_check::History;

use crate::run::RunOptions;
use crate::scenario::Scenario;

#[derive(Parser)]
#[command(name = "meridian-chaos", about = "Chaos runner for Meridian: real processes, real faults, checked histories")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (files or directories of *.toml; default: the short suite).
    Run {
        files: Vec<PathBuf>,
        /// Seed to use instead of each scenario's own.
        #[arg(long)]
        seed: Option<u64>,
        /// Runs per scenario, with seeds seed, seed+1, ...
        #[arg(long, default_value_t = 1)]
        runs: u64,
        /// Where runs with violations leave their artifacts (OUT/SCENARIO-SEED/).
        #[arg(long, default_value = "target/chaos")]
        out: PathBuf,
        /// The meridian binary (default: next to this one).
        #[arg(long)]
        meridian_bin: Option<PathBuf>,
        /// Seconds of workload and faults, instead of each scenario's duration_s.
        #[arg(long)]
        duration: Option<u64>,
    },
    /// Re-check a saved register history (registers.history.json).
    Check {
        history: PathBuf,
        #[arg(long, default_value_t = 60)]
        budget_s: u64,
    },
}

fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,meridian_client=error"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match Cli::parse().cmd {
        Cmd::Run { files, seed, runs, out, meridian_bin, duration } => run_all(files, seed, runs, out, meridian_bin, duration),
        Cmd::Check { history, budget_s } => check_saved(&history, budget_s),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("meridian-chaos: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs every scenario × seed; true when every run did what its scenario expects.
fn run_all(files: Vec<PathBuf>, seed: Option<u64>, runs: u64, out: PathBuf, bin: Option<PathBuf>, duration: Option<u64>) -> Result<bool> {
    if !(1..=10_000).contains(&runs) {
        bail!("--runs must be 1..=10000");
    }
    let files = scenario_files(files)?;
    let scenarios: Vec<(PathBuf, Scenario)> = files.into_iter().map(|f| Scenario::load(&f).map(|s| (f, s))).collect::<Result<_>>()?;
    let bin = match bin {
        Some(b) => b,
        None => std::env::current_exe().context("locating this binary")?.parent().context("binary without a directory")?.join("meridian"),
    };
    let (mut total_runs, mut total_violations, mut expected, mut failed) = (0usize, 0usize, 0usize, Vec::new());
    for (file, s) in &scenarios {
        let base = seed.unwrap_or(s.seed);
        for k in 0..runs {
            let opts = RunOptions {
                bin: bin.clone(),
                out_base: out.clone(),
                seed: base.wrapping_add(k),
                duration_s: duration.unwrap_or(s.duration_s),
                file: file.clone(),
            };
            println!("chaos: {} seed={} ({}, {}s): {}", s.name, opts.seed, s.topology(), opts.duration_s, s.description.trim());
            total_runs += 1;
            match run::run(s, &opts) {
                Ok(r) => {
                    println!("{}", report::summary(&r));
                    print!("{}", report::findings_text(&r));
                    total_violations += r.violations();
                    if r.expect_violations {
                        expected += r.violations();
                    }
                    if !r.passed() {
                        println!("  rerun: {}", report::rerun_hint(&opts));
                        failed.push(format!("{} seed={}", s.name, opts.seed));
                    }
                }
                Err(e) => {
                    println!("chaos: {} seed={}: ERROR: {e:#}", s.name, opts.seed);
                    println!("  rerun: {}", report::rerun_hint(&opts));
                    failed.push(format!("{} seed={} (error)", s.name, opts.seed));
                }
            }
        }
    }
    if expected > 0 {
        println!("chaos: {expected} of the violations were expected (proof scenarios with a deliberately broken mode)");
    }
    if !failed.is_empty() {
        println!("chaos: failed runs: {}", failed.join(", "));
    }
    println!("chaos: {total_runs} runs, {total_violations} violations");
    Ok(failed.is_empty())
}

/// Files as given, directories expanded to their *.toml (sorted); none
/// given: the short suite next to this crate's sources.
fn scenario_files(given: Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let given = if given.is_empty() { vec![PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))] } else { given };
    let mut out = Vec::new();
    for p in given {
        if p.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            if found.is_empty() {
                bail!("no *.toml scenarios in {}", p.display());
            }
            out.extend(found);
        } else {
            out.push(p);
        }
    }
    Ok(out)
}

fn check_saved(path: &Path, budget_s: u64) -> Result<bool> {
    let history = History::<RegisterInput, RegisterOutput>::load(path)?;
    let v = checks::registers::check_registers(&history, Duration::from_secs(budget_s));
    for f in &v.findings {
        println!("VIOLATION [{}] {}", f.check, f.message);
    }
    for n in &v.notes {
        println!("note: {n}");
    }
    for d in &v.details {
        println!("{d}");
    }
    println!("{} ops, {} violations", history.ops.len(), v.findings.len());
    Ok(v.findings.is_empty())
}
