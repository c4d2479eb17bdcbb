//! The run loop: derive an input from (seed, target, iteration), run it
//! under `catch_unwind` with heap accounting, and turn panics, invariant
//! violations and oversized peaks into [`Failure`]s that name how to
//! replay them.
//!
//! Every input depends only on (seed, target name, iteration) — there is no
//! evolving corpus — so a failure is reproduced by its seed and iteration
//! alone, or by the saved input file.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::{Duration, Instant};

use meridian_codes::seeded::{fnv1a64, splitmix64};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::alloc_counter::{self, AllocScope};
use crate::mutate::{mutate_bytes, random_bytes};
use crate::proto_tree::mutate_encoding;
use crate::target::{Target, Verdict};

/// Default bound on the heap one input may make a target hold at once.
pub const DEFAULT_MAX_ALLOC_BYTES: usize = 64 << 20;

#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    /// First iteration to run (to replay one input: `start = i`, `iterations = 1`).
    pub start: u64,
    pub iterations: u64,
    pub max_alloc_bytes: usize,
    /// Where failing inputs are written.
    pub out_dir: PathBuf,
    /// Shrink each new failure by deleting chunks while it still fails the
    /// same way.
    pub minimize: bool,
    /// Stop a target after this many distinct failures.
    pub max_distinct_failures: usize,
    /// Call the progress callback at most this often.
    pub progress_every: Duration,
}

impl RunConfig {
    pub fn new(seed: u64, iterations: u64) -> Self {
        RunConfig {
            seed,
            start: 0,
            iterations,
            max_alloc_bytes: DEFAULT_MAX_ALLOC_BYTES,
            out_dir: default_out_dir(),
            minimize: true,
            max_distinct_failures: 20,
            progress_every: Duration::from_secs(5),
        }
    }
}

/// `$CARGO_TARGET_DIR/fuzz-failures` if set, else `<workspace>/target/fuzz-failures`.
pub fn default_out_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join("fuzz-failures"),
        _ => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-failures"),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum FailureKind {
    Panic {
        message: String,
        location: String,
    },
    /// The input made the target hold more than the bound at once.
    Alloc {
        peak_bytes: usize,
        largest_request_bytes: usize,
        limit_bytes: usize,
    },
    /// The target's own check failed (its message starts with a stable name).
    Invariant {
        message: String,
    },
}

impl FailureKind {
    /// What makes two failures "the same bug": the panic site and message
    /// with numbers masked, the invariant's name, or "allocation bound".
    pub fn signature(&self) -> String {
        match self {
            FailureKind::Panic { message, location } => {
                // Numbers differ between inputs that hit the same bug.
                let mut masked = String::new();
                for c in message.lines().next().unwrap_or("").chars() {
                    if !c.is_ascii_digit() {
                        masked.push(c);
                    } else if !masked.ends_with('#') {
                        masked.push('#');
                    }
                }
                // raft-rs appends state dumps after a ": "; keep the head
                // (but not a head as short as "range #").
                let head = masked.match_indices(": ").map(|(i, _)| i).find(|&i| i >= 12).map_or(masked.as_str(), |i| &masked[..i]);
                let masked: String = head.chars().take(120).collect();
                let site = location.rsplit_once(':').map_or(location.as_str(), |(file_line, _col)| file_line);
                // Dependencies: `raft-0.7.0/src/raft.rs:2786`, not the registry path.
                let site = site.find("/registry/src/").and_then(|i| site[i..].splitn(5, '/').nth(4)).unwrap_or(site);
                format!("panic at {site}: {masked}")
            }
            FailureKind::Alloc { .. } => "allocation bound exceeded".into(),
            FailureKind::Invariant { message } => {
                format!("invariant: {}", message.split(':').next().unwrap_or(message))
            }
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureKind::Panic { message, location } => write!(f, "panic at {location}: {message}"),
            FailureKind::Alloc { peak_bytes, largest_request_bytes, limit_bytes } => write!(
                f,
                "peak heap {} (largest single request {}) above the bound of {}",
                mib(*peak_bytes),
                mib(*largest_request_bytes),
                mib(*limit_bytes)
            ),
            FailureKind::Invariant { message } => write!(f, "invariant violated: {message}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub target: &'static str,
    pub seed: u64,
    pub iteration: u64,
    pub kind: FailureKind,
    pub input: Vec<u8>,
    /// The smallest input found that fails with the same signature.
    pub minimized: Vec<u8>,
    pub saved: Vec<PathBuf>,
    /// Inputs of this run that failed with this signature.
    pub occurrences: u64,
}

impl Failure {
    /// A report a person can act on: what, where, which input, how to rerun.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "FAILURE in target {} (seed {}, iteration {}): {}", self.target, self.seed, self.iteration, self.kind);
        let _ = writeln!(s, "  signature: {}", self.kind.signature());
        let _ = writeln!(s, "  minimized input ({} bytes): {}", self.minimized.len(), hex(&self.minimized, 1024));
        if self.minimized != self.input {
            let _ = writeln!(s, "  original input ({} bytes): {}", self.input.len(), hex(&self.input, 256));
        }
        for p in &self.saved {
            let _ = writeln!(s, "  saved: {}", p.display());
        }
        let _ = writeln!(
            s,
            "  rerun: cargo run -p meridian-fuzz -- --target {} --seed {} --start {} --iterations 1",
            self.target, self.seed, self.iteration
        );
        if let Some(p) = self.saved.last() {
            let _ = writeln!(s, "  replay: cargo run -p meridian-fuzz -- --target {} --replay {}", self.target, p.display());
        }
        s
    }
}

#[derive(Debug, Clone, Default)]
pub struct TargetReport {
    pub target: &'static str,
    pub inputs: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub failures: Vec<Failure>,
    pub max_peak_bytes: usize,
    pub slowest_input: Duration,
    pub elapsed: Duration,
    /// False when the counting allocator is not installed (bounds unchecked).
    pub alloc_checked: bool,
}

impl TargetReport {
    pub fn failed_inputs(&self) -> u64 {
        self.failures.iter().map(|f| f.occurrences).sum()
    }

    pub fn summary_line(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        format!(
            "{:<17} {:>9} inputs {:>8.0}/s  accepted {:>5.1}%  distinct failures {} ({} inputs)  peak heap {}{}  slowest {:.1} ms",
            self.target,
            self.inputs,
            self.inputs as f64 / secs,
            100.0 * self.accepted as f64 / self.inputs.max(1) as f64,
            self.failures.len(),
            self.failed_inputs(),
            mib(self.max_peak_bytes),
            if self.alloc_checked { "" } else { " (UNCHECKED: counting allocator not installed)" },
            self.slowest_input.as_secs_f64() * 1e3,
        )
    }
}

pub fn mib(bytes: usize) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", bytes as f64 / 1024.0)
    }
}

pub fn hex(bytes: &[u8], max: usize) -> String {
    let mut s = String::with_capacity(bytes.len().min(max) * 2 + 16);
    for b in bytes.iter().take(max) {
        let _ = write!(s, "{b:02x}");
    }
    if bytes.len() > max {
        let _ = write!(s, "… (+{} bytes)", bytes.len() - max);
    }
    s
}

// ---- input generation ------------------------------------------------------

/// The RNG of one input. Keyed by the target's *name*, so adding a target
/// does not change the inputs of the others.
pub fn input_rng(seed: u64, target: &str, iteration: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(splitmix64(seed ^ splitmix64(fnv1a64(target.as_bytes()) ^ splitmix64(iteration))))
}

/// Input `iteration` of `target` under `seed`: pure random bytes, a
/// structured input from the target's own generator, or a valid seed input
/// with a few stacked mutations (byte-level, and protobuf-structural for
/// protobuf targets).
pub fn generate_input(target: &dyn Target, seeds: &[Vec<u8>], rng: &mut ChaCha8Rng) -> Vec<u8> {
    let roll = rng.gen_range(0..100);
    if roll < 15 || seeds.is_empty() {
        return random_bytes(rng);
    }
    let mut input = if roll < 40 {
        match target.generate(rng) {
            Some(g) if rng.gen_bool(0.5) => return g,
            Some(g) => g,
            None => seeds.choose(rng).expect("non-empty").clone(),
        }
    } else {
        seeds.choose(rng).expect("non-empty").clone()
    };
    let rounds = if rng.gen_bool(0.6) { rng.gen_range(1..=2) } else { rng.gen_range(3..=8) };
    for _ in 0..rounds {
        if target.is_protobuf() && rng.gen_bool(0.5) && mutate_encoding(rng, &mut input) {
            continue;
        }
        mutate_bytes(rng, &mut input, seeds);
    }
    target.fixup(&mut input);
    input
}

// ---- running one input -----------------------------------------------------

thread_local! {
    static CAPTURING: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
    static INFLIGHT: RefCell<Option<Inflight>> = const { RefCell::new(None) };
}

struct Inflight {
    target: &'static str,
    seed: u64,
    iteration: u64,
    input: Vec<u8>,
    out_dir: PathBuf,
}

/// Panics on fuzzing threads are recorded, not printed (there may be
/// thousands); everywhere else the previous hook runs as before.
fn install_hooks() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CAPTURING.with(Cell::get) {
                let message = info
                    .payload()
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| info.payload().downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(non-string panic payload)".into());
                let location = info.location().map_or_else(|| "?".into(), |l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
                LAST_PANIC.with(|p| *p.borrow_mut() = Some((message, location)));
            } else {
                previous(info);
            }
        }));
        alloc_counter::set_huge_request_hook(on_huge_request);
    });
}

/// Saves the running input before a huge allocation is attempted: if it
/// fails, the process aborts and this file is all that is left. Runs
/// inside the allocator, so it must not panic (no `eprintln!`, which
/// panics on a closed stderr); it reports the first few only.
fn on_huge_request(size: usize) {
    use std::io::Write as _;
    use std::sync::atomic::{AtomicUsize, Ordering};
    static REPORTED: AtomicUsize = AtomicUsize::new(0);
    if REPORTED.fetch_add(1, Ordering::Relaxed) >= 5 {
        return;
    }
    let _ = INFLIGHT.try_with(|cell| {
        let Ok(guard) = cell.try_borrow() else { return };
        let Some(f) = guard.as_ref() else { return };
        let path = f.out_dir.join(format!("{}-s{}-i{}-huge-request.bin", f.target, f.seed, f.iteration));
        let _ = std::fs::create_dir_all(&f.out_dir);
        let _ = std::fs::write(&path, &f.input);
        let _ = writeln!(
            std::io::stderr(),
            "meridian-fuzz: target {} seed {} iteration {} requested one allocation of {size} bytes; input saved to {} \
             (if the process aborts now, this input is why)",
            f.target,
            f.seed,
            f.iteration,
            path.display()
        );
    });
}

struct Executed {
    result: Result<Verdict, FailureKind>,
    peak_bytes: usize,
    took: Duration,
}

fn execute(target: &dyn Target, input: &[u8], max_alloc_bytes: usize) -> Executed {
    CAPTURING.with(|c| c.set(true));
    LAST_PANIC.with(|p| p.borrow_mut().take());
    let started = Instant::now();
    let scope = AllocScope::begin();
    let outcome = catch_unwind(AssertUnwindSafe(|| target.run(input)));
    let peak_bytes = scope.peak_bytes();
    let largest_request_bytes = scope.largest_request_bytes();
    let took = started.elapsed();
    CAPTURING.with(|c| c.set(false));
    let result = match outcome {
        Err(_) => {
            let (message, location) = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| ("(no panic info)".into(), "?".into()));
            Err(FailureKind::Panic { message, location })
        }
        Ok(_) if peak_bytes > max_alloc_bytes => {
            Err(FailureKind::Alloc { peak_bytes, largest_request_bytes, limit_bytes: max_alloc_bytes })
        }
        Ok(Err(message)) => Err(FailureKind::Invariant { message }),
        Ok(Ok(v)) => Ok(v),
    };
    Executed { result, peak_bytes, took }
}

/// Runs one input exactly as the fuzz loop does (for replaying a saved
/// file): `Ok` with the verdict, or the failure.
pub fn run_one(target: &dyn Target, input: &[u8], max_alloc_bytes: usize) -> Result<Verdict, FailureKind> {
    install_hooks();
    execute(target, input, max_alloc_bytes).result
}

/// Deletes chunks of `input` while it keeps failing with `signature`.
fn minimize(target: &dyn Target, input: &[u8], signature: &str, max_alloc_bytes: usize) -> Vec<u8> {
    const BUDGET_RUNS: usize = 3000;
    let mut best = input.to_vec();
    let mut runs = 0;
    let mut chunk = (best.len() / 2).max(1);
    loop {
        let mut i = 0;
        let mut shrunk = false;
        while i < best.len() && runs < BUDGET_RUNS {
            let mut candidate = best.clone();
            candidate.drain(i..(i + chunk).min(best.len()));
            runs += 1;
            match execute(target, &candidate, max_alloc_bytes).result {
                Err(k) if k.signature() == signature => {
                    best = candidate;
                    shrunk = true;
                }
                _ => i += chunk,
            }
        }
        if runs >= BUDGET_RUNS || (chunk == 1 && !shrunk) {
            return best;
        }
        if !shrunk {
            chunk /= 2;
        }
    }
}

fn save(dir: &Path, name: &str, bytes: &[u8]) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(name);
    std::fs::write(&path, bytes).ok()?;
    Some(path)
}

/// Fuzzes one target. `on_progress` is called about every
/// `cfg.progress_every` with the report so far; `on_failure` once per new
/// distinct failure (after minimizing and saving it).
pub fn run_target(
    target: &dyn Target,
    cfg: &RunConfig,
    on_progress: &mut dyn FnMut(&TargetReport),
    on_failure: &mut dyn FnMut(&Failure),
) -> TargetReport {
    install_hooks();
    let seeds = target.seeds();
    let mut report = TargetReport { target: target.name(), alloc_checked: alloc_counter::is_installed(), ..Default::default() };
    let mut seen: HashMap<String, usize> = HashMap::new();
    let started = Instant::now();
    let mut last_progress = started;
    for iteration in cfg.start..cfg.start.saturating_add(cfg.iterations) {
        let mut rng = input_rng(cfg.seed, target.name(), iteration);
        let input = generate_input(target, &seeds, &mut rng);
        INFLIGHT.with(|f| {
            *f.borrow_mut() =
                Some(Inflight { target: target.name(), seed: cfg.seed, iteration, input: input.clone(), out_dir: cfg.out_dir.clone() })
        });
        let ran = execute(target, &input, cfg.max_alloc_bytes);
        INFLIGHT.with(|f| f.borrow_mut().take());
        report.inputs += 1;
        report.max_peak_bytes = report.max_peak_bytes.max(ran.peak_bytes);
        report.slowest_input = report.slowest_input.max(ran.took);
        match ran.result {
            Ok(Verdict::Accepted) => report.accepted += 1,
            Ok(Verdict::Rejected) => report.rejected += 1,
            Err(kind) => {
                let signature = kind.signature();
                if let Some(&i) = seen.get(&signature) {
                    report.failures[i].occurrences += 1;
                } else {
                    let minimized = if cfg.minimize { minimize(target, &input, &signature, cfg.max_alloc_bytes) } else { input.clone() };
                    let stem = format!("{}-s{}-i{}", target.name(), cfg.seed, iteration);
                    let saved =
                        [save(&cfg.out_dir, &format!("{stem}.bin"), &input), save(&cfg.out_dir, &format!("{stem}-min.bin"), &minimized)]
                            .into_iter()
                            .flatten()
                            .collect();
                    let failure =
                        Failure { target: target.name(), seed: cfg.seed, iteration, kind, input, minimized, saved, occurrences: 1 };
                    on_failure(&failure);
                    seen.insert(signature, report.failures.len());
                    report.failures.push(failure);
                    if report.failures.len() >= cfg.max_distinct_failures {
                        break;
                    }
                }
            }
        }
        if last_progress.elapsed() >= cfg.progress_every {
            last_progress = Instant::now();
            report.elapsed = started.elapsed();
            on_progress(&report);
        }
    }
    report.elapsed = started.elapsed();
    report
}
