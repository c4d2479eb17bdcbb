//! Long fuzz runs:
//!
//! ```text
//! cargo run -p meridian-fuzz --release -- --target all --iterations 1000000 --seed 7
//! cargo run -p meridian-fuzz -- --target store-open --replay target/fuzz-failures/store-open-s7-i123-min.bin
//! ```
//!
//! Exit status: 0 when no target failed in a way not already known (see
//! `meridian_fuzz::known`; `--strict` counts known findings too), 1 when
//! one did, 2 on bad arguments.

#![allow(clippy::disallowed_methods)] // a driver: wall-clock progress output

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use meridian_fuzz::harness::{self, RunConfig};
use meridian_fuzz::{known, targets, CountingAlloc, Target};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser, Debug)]
#[command(about = "Deterministic fuzzing of Meridian's decoders of untrusted bytes")]
struct Args {
    /// `all`, or target names separated by commas (see --list).
    #[arg(long, default_value = "all")]
    target: String,
    /// Inputs per target.
    #[arg(long, default_value_t = 100_000)]
    iterations: u64,
    /// Seed of the whole run; every input derives from (seed, target, iteration).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// First iteration (with --iterations 1: rerun one reported input).
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Bound on the heap one input may hold at once, in MiB.
    #[arg(long, default_value_t = 64)]
    max_alloc_mib: usize,
    /// Where failing inputs go [default: $CARGO_TARGET_DIR/fuzz-failures or target/fuzz-failures].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 5)]
    progress_secs: u64,
    /// Do not shrink failing inputs.
    #[arg(long)]
    no_minimize: bool,
    /// Stop a target after this many distinct failures.
    #[arg(long, default_value_t = 20)]
    max_failures: usize,
    /// Run one saved input file against --target (a single name) and report.
    #[arg(long)]
    replay: Option<PathBuf>,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
    /// Stack of the fuzzing thread, in KiB. The default is what tokio
    /// workers and `std::thread` get (2 MiB), where these decoders run in
    /// production; a stack overflow aborts the process (rerun with a
    /// narrower --start/--iterations window to find the input).
    #[arg(long, default_value_t = 2048)]
    stack_kib: usize,
    /// Fail (exit 1) on known, already reported findings too.
    #[arg(long)]
    strict: bool,
}

fn selected(spec: &str) -> anyhow::Result<Vec<Box<dyn Target>>> {
    if spec == "all" {
        return Ok(targets::all());
    }
    spec.split(',')
        .map(|n| targets::by_name(n.trim()).with_context(|| format!("unknown target {n:?}; known: {}", targets::NAMES.join(", "))))
        .collect()
}

fn replay(args: &Args, path: &PathBuf) -> anyhow::Result<bool> {
    let ts = selected(&args.target)?;
    let [t] = ts.as_slice() else { bail!("--replay needs exactly one --target") };
    let input = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    println!("replaying {} ({} bytes) against {}: {}", path.display(), input.len(), t.name(), harness::hex(&input, 256));
    match meridian_fuzz::run_one(t.as_ref(), &input, args.max_alloc_mib << 20) {
        Ok(v) => {
            println!("ok: {v:?}");
            Ok(true)
        }
        Err(k) => {
            println!("FAILED: {k}\n  signature: {}", k.signature());
            Ok(false)
        }
    }
}

fn run(args: &Args) -> anyhow::Result<bool> {
    if args.list {
        for t in targets::all() {
            println!("{:<17} {}", t.name(), t.describe());
        }
        return Ok(true);
    }
    if let Some(path) = &args.replay {
        return replay(args, path);
    }
    let mut cfg = RunConfig::new(args.seed, args.iterations);
    cfg.start = args.start;
    cfg.max_alloc_bytes = args.max_alloc_mib << 20;
    cfg.minimize = !args.no_minimize;
    cfg.max_distinct_failures = args.max_failures.max(1);
    cfg.progress_every = Duration::from_secs(args.progress_secs.max(1));
    if let Some(out) = &args.out {
        cfg.out_dir = out.clone();
    }
    if !meridian_fuzz::alloc_counter::is_installed() {
        bail!("the counting allocator is not installed; allocation bounds would not be checked");
    }
    let started = Instant::now();
    let mut reports = Vec::new();
    for t in selected(&args.target)? {
        println!(
            "== {} — {} (seed {}, iterations {}..{})",
            t.name(),
            t.describe(),
            cfg.seed,
            cfg.start,
            cfg.start.saturating_add(cfg.iterations)
        );
        let iterations = cfg.iterations;
        let report = harness::run_target(
            t.as_ref(),
            &cfg,
            &mut |r| {
                println!(
                    "[{:>7.1}s] {:<17} {:>9}/{iterations} ({:.0}/s) accepted {:.1}% failures {} peak heap {}",
                    started.elapsed().as_secs_f64(),
                    r.target,
                    r.inputs,
                    r.inputs as f64 / r.elapsed.as_secs_f64().max(1e-9),
                    100.0 * r.accepted as f64 / r.inputs.max(1) as f64,
                    r.failed_inputs(),
                    harness::mib(r.max_peak_bytes),
                )
            },
            &mut |f| match known::classify(f.target, f) {
                Some(k) => println!("known finding {} (already reported): {}", k.id, f.kind.signature()),
                None => println!("{}", f.describe()),
            },
        );
        println!("   {}", report.summary_line());
        reports.push(report);
    }
    let inputs: u64 = reports.iter().map(|r| r.inputs).sum();
    let (mut new, mut known_ids) = (Vec::new(), std::collections::BTreeSet::new());
    println!("\n== summary (seed {}):", cfg.seed);
    for r in &reports {
        println!("   {}", r.summary_line());
        for f in &r.failures {
            let tag = match known::classify(r.target, f) {
                Some(k) => {
                    known_ids.insert(k.id);
                    format!("known {}", k.id)
                }
                None => {
                    new.push(format!("{} ({})", r.target, f.kind.signature()));
                    "NEW".to_string()
                }
            };
            println!("      [{tag}] {} × {} — first at iteration {}", f.occurrences, f.kind.signature(), f.iteration);
        }
    }
    let known_list = known_ids.into_iter().collect::<Vec<_>>().join(", ");
    println!(
        "meridian-fuzz: {} targets, {inputs} inputs in {:.1}s, {} new distinct failure(s){}",
        reports.len(),
        started.elapsed().as_secs_f64(),
        new.len(),
        if known_list.is_empty() { String::new() } else { format!(", known findings hit: {known_list}") }
    );
    Ok(new.is_empty() && (!args.strict || known_list.is_empty()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let stack_bytes = args.stack_kib.max(64) << 10;
    let worker = std::thread::Builder::new().name("fuzz".into()).stack_size(stack_bytes).spawn(move || run(&args));
    let result = match worker {
        Ok(handle) => handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("the fuzzing thread panicked outside a target"))),
        Err(e) => Err(anyhow::anyhow!("spawning the fuzzing thread: {e}")),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("meridian-fuzz: {e:#}");
            ExitCode::from(2)
        }
    }
}
