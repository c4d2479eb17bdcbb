//! One run of one scenario with one seed.
//!
//! ```text
//!  start cluster ─► wait /readyz ─► workloads ∥ nemesis ∥ progress   (duration_s)
//!       ─► HEAL: resume, restart, heal nets, clock ×1, /readyz, a write succeeds (≤ heal_timeout_s)
//!       ─► final linearizable reads ─► watchers catch up ─► resource key history
//!       ─► checks (registers, locks, watches) ─► summary, artifacts on violation
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use meridian_check::models::{RegisterInput, RegisterOutput};
use meridian_check::History;
use meridian_client::Fence;
use meridian_proto::etcdserverpb::kv_client::KvClient;
use meridian_proto::etcdserverpb::PutRequest;
use meridian_proto::mvccpb::KeyValue;
use meridian_server::config::DebugConfig;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use tokio::task::JoinHandle;
use tracing::warn;

use crate::checks::{self, Finding, Verdict};
use crate::clock::RunClock;
use crate::cluster::{Cluster, ClusterSpec, ProcState};
use crate::nemesis::{self, Nemesis, NemesisEvent};
use crate::report;
use crate::scenario::{Scenario, LOCK_PREFIX, REGISTER_PREFIX};
use crate::workload::locks::{self, LockClient, LockCounters, LockLog};
use crate::workload::register::{self, Counters, RegisterClient, RegisterOp};
use crate::workload::watch::{self, WatchLog};
use meridian_codes::seeded::{fnv1a64, splitmix64};

/// Longest wait for a fresh cluster to become ready.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a multi-region run waits for the replicas to reach their
/// places before the faults start.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(240);
/// Longest wait for a workload task once the run is over (their own
/// operations are bounded; a lock stall adds TTL + 1.5 s).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// How often the progress line is printed.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Client id of the final reads in the register history.
const FINAL_READER: u64 = 10_000;

pub struct RunOptions {
    pub bin: PathBuf,
    pub out_base: PathBuf,
    pub seed: u64,
    pub duration_s: u64,
    /// The scenario file, for the rerun hint.
    pub file: PathBuf,
}

/// Everything a run observed and concluded.
pub struct RunReport {
    pub scenario: String,
    pub seed: u64,
    pub expect_violations: bool,
    pub register_counts: (u64, u64, u64),
    pub lock_counts: (u64, u64, u64, u64),
    pub watch_events: usize,
    pub nemesis: Vec<NemesisEvent>,
    pub verdict: Verdict,
    pub elapsed: Duration,
    /// From the end of the workload until every node was ready and writable.
    pub heal: Duration,
    pub checks: Duration,
    pub artifacts: Option<PathBuf>,
}

impl RunReport {
    pub fn violations(&self) -> usize {
        self.verdict.findings.len()
    }

    /// Whether the run did what its scenario expects.
    pub fn passed(&self) -> bool {
        (self.violations() > 0) == self.expect_violations
    }
}

/// What the run recorded, handed to the checks.
#[derive(Default)]
pub struct Records {
    pub registers: History<RegisterInput, RegisterOutput>,
    pub finals: BTreeMap<String, Option<KeyValue>>,
    pub locks: LockLog,
    pub resource_history: Option<Result<Vec<watch::Seen>, String>>,
    pub watches: Vec<WatchLog>,
    pub nemesis: Vec<NemesisEvent>,
    /// Recovery failures and crashes found while running.
    pub findings: Vec<Finding>,
    pub heal: Duration,
}

pub fn run(s: &Scenario, opts: &RunOptions) -> Result<RunReport> {
    let started = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("building the tokio runtime")?;
    let spec = ClusterSpec {
        nodes: s.nodes,
        namespaces: &s.namespaces,
        tick_ms: s.tick_ms,
        debug: DebugConfig { faults: true, unsafe_local_reads: s.unsafe_local_reads, ..DebugConfig::default() },
        port_seed: splitmix64(opts.seed) ^ splitmix64(fnv1a64(s.name.as_bytes())),
        extra_toml: s.placement.as_ref().map(|p| p.toml()).unwrap_or_default(),
        spares: s.placement.as_ref().map_or(0, |p| p.spares),
        regions: s.regions.as_ref(),
    };
    let mut cluster = Cluster::start(&opts.bin, &spec)?;
    let (records, counts) = match rt.block_on(drive(s, opts, &mut cluster)) {
        Ok(r) => r,
        Err(e) => return Err(e.context(format!("server data and logs kept in {}", cluster.keep_data_dir().display()))),
    };
    drop(rt);
    // The checks are CPU-bound: give them the cores.
    cluster.stop_all();

    let checks_started = Instant::now();
    let budget = Duration::from_secs(s.check_budget_s);
    let mut verdict = Verdict { findings: records.findings.clone(), ..Default::default() };
    if s.registers.is_some() {
        verdict.absorb(checks::registers::check_registers(&records.registers, budget));
    }
    if s.locks.is_some() {
        let history = records.resource_history.clone().unwrap_or_else(|| Err("not read".into()));
        verdict.absorb(checks::locks::check_locks(&records.locks, history.as_deref().map_err(String::as_str), budget));
    }
    if !records.watches.is_empty() {
        verdict.absorb(checks::watch::check_watchers(&records.watches, &records.finals, &records.registers));
    }
    let mut report = RunReport {
        scenario: s.name.clone(),
        seed: opts.seed,
        expect_violations: s.expect_violations,
        register_counts: counts.0,
        lock_counts: counts.1,
        watch_events: records.watches.iter().map(|w| w.events.len()).sum(),
        nemesis: records.nemesis.clone(),
        verdict,
        elapsed: started.elapsed(),
        heal: records.heal,
        checks: checks_started.elapsed(),
        artifacts: None,
    };
    if report.violations() > 0 {
        let logs = cluster.logs();
        // A post-mortem needs the servers' state only when the violation
        // is real (a proof scenario's are expected; its logs suffice).
        let data_dir = if s.expect_violations { None } else { Some(cluster.keep_data_dir()) };
        let dir = opts.out_base.join(format!("{}-{}", s.name, opts.seed));
        match report::save(&dir, s, opts, &report, &records, &logs, data_dir.as_deref()) {
            Ok(()) => report.artifacts = Some(dir),
            Err(e) => warn!("saving the artifacts to {}: {e:#}", dir.display()),
        }
    }
    Ok(report)
}

type Counts = ((u64, u64, u64), (u64, u64, u64, u64));

async fn drive(s: &Scenario, opts: &RunOptions, cluster: &mut Cluster) -> Result<(Records, Counts)> {
    cluster.wait_ready(START_TIMEOUT).await?;
    match &s.regions {
        Some(r) => {
            for name in &s.runtime_namespaces {
                cluster.create_region_namespace(name, &r.names[0], START_TIMEOUT).await?;
            }
            // Faults start once every replica is where the policies say
            // (a region's loss before then could take a quorum).
            cluster.wait_placed(PLACEMENT_TIMEOUT).await?;
            cluster.wait_ready(START_TIMEOUT).await?;
        }
        None => {
            for name in &s.runtime_namespaces {
                cluster.create_namespace(name, START_TIMEOUT).await?;
            }
        }
    }
    // Witnesses serve no client: nobody's endpoint.
    let endpoints: Vec<SocketAddr> = (0..cluster.len()).filter(|&i| !cluster.is_witness(i)).map(|i| cluster.client_addr(i)).collect();
    let clock = RunClock::start();
    let end = Duration::from_secs(opts.duration_s);
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut child_rng = move || ChaCha8Rng::seed_from_u64(rand::Rng::gen(&mut rng));

    let reg_counters = Arc::new(Counters::default());
    let lock_counters = Arc::new(LockCounters::default());
    let mut reg_tasks: Vec<JoinHandle<Vec<RegisterOp>>> = Vec::new();
    if let Some(r) = &s.registers {
        for c in 0..r.clients {
            let client = RegisterClient {
                id: u64::from(c),
                endpoint: endpoints[c as usize % endpoints.len()],
                keys: r.keys,
                cfg: r.clone(),
                rng: child_rng(),
                clock,
                counters: reg_counters.clone(),
                end,
            };
            reg_tasks.push(tokio::spawn(client.run()));
        }
    }
    let mut lock_tasks: Vec<JoinHandle<LockLog>> = Vec::new();
    if let Some(l) = &s.locks {
        let fence = Arc::new(Fence::in_memory());
        for c in 0..l.clients {
            let client = LockClient {
                id: u64::from(c),
                endpoints: endpoints.clone(),
                cfg: l.clone(),
                fence: fence.clone(),
                rng: child_rng(),
                clock,
                counters: lock_counters.clone(),
                end,
            };
            lock_tasks.push(tokio::spawn(client.run()));
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None::<i64>);
    let mut watch_tasks: Vec<JoinHandle<WatchLog>> = Vec::new();
    for w in 0..s.watchers {
        let client = locks::client_for(&endpoints, w as usize + 1)?;
        let (start, range_end) = register::key_interval();
        watch_tasks.push(tokio::spawn(watch::watch_until(
            u64::from(w),
            client,
            start,
            range_end,
            stop_rx.clone(),
            Duration::from_secs(20),
        )));
    }

    let status: nemesis::Status = Arc::new(Mutex::new("none".into()));
    let done = Arc::new(AtomicBool::new(false));
    let shown =
        Shown { registers: s.registers.is_some().then(|| reg_counters.clone()), locks: s.locks.is_some().then(|| lock_counters.clone()) };
    let progress = tokio::spawn(progress(clock, end, shown, status.clone(), done.clone()));

    let mut records = Records::default();
    match &s.nemesis {
        Some(cfg) => {
            let ranges = s.workload_ranges();
            let n = Nemesis {
                cluster: &mut *cluster,
                cfg,
                ranges: &ranges,
                runtime_namespaces: &s.runtime_namespaces,
                rng: child_rng(),
                clock,
                status: status.clone(),
            };
            records.nemesis = n.run(end).await;
        }
        None => tokio::time::sleep(end).await,
    }
    *status.lock().expect("status") = "none (draining clients)".into();

    for t in reg_tasks {
        match tokio::time::timeout(DRAIN_TIMEOUT, t).await {
            Ok(Ok(ops)) => records.registers.ops.extend(ops),
            other => records.findings.push(Finding::new("runner", format!("a register client did not finish: {other:?}"))),
        }
    }
    let mut lock_logs = Vec::new();
    for t in lock_tasks {
        match tokio::time::timeout(DRAIN_TIMEOUT, t).await {
            Ok(Ok(log)) => lock_logs.push(log),
            other => records.findings.push(Finding::new("runner", format!("a lock client did not finish: {:?}", other.err()))),
        }
    }
    records.locks = LockLog::merge(lock_logs);
    done.store(true, Ordering::Relaxed);
    progress.abort();

    // HEAL: every fault off; the cluster must recover on its own.
    for (id, status) in cluster.crashed() {
        records.findings.push(Finding::new("crash", format!("node {id} exited on its own ({status}); see its server.log")));
    }
    let heal_started = Instant::now();
    if let Err(e) = heal(cluster, s, &endpoints).await {
        records
            .findings
            .push(Finding::new("recovery", format!("the cluster did not recover within {}s of healing: {e}", s.heal_timeout_s)));
    }
    records.heal = heal_started.elapsed();

    // Final state, read linearizably.
    let limit = Duration::from_secs(s.heal_timeout_s);
    if let Some(r) = &s.registers {
        for k in 0..r.keys {
            let key = register::key_name(k);
            match register::final_read(&endpoints, &key, clock, FINAL_READER, limit).await {
                Ok((op, kv)) => {
                    records.registers.ops.push(op);
                    records.finals.insert(key, kv);
                }
                Err(e) => records.findings.push(Finding::new("recovery", e)),
            }
        }
    }
    let target = records.finals.values().flatten().map(|kv| kv.mod_revision).max().unwrap_or(0);
    let _ = stop_tx.send(Some(target));
    for t in watch_tasks {
        match tokio::time::timeout(Duration::from_secs(40), t).await {
            Ok(Ok(log)) => records.watches.push(log),
            other => records.findings.push(Finding::new("watch", format!("a watcher did not finish: {:?}", other.err()))),
        }
    }
    if s.locks.is_some() {
        let key = locks::resource_key();
        records.resource_history = Some(match register::final_read(&endpoints, &key, clock, FINAL_READER, limit).await {
            Ok((_, kv)) => {
                let until = kv.map_or(0, |kv| kv.mod_revision);
                let client = locks::client_for(&endpoints, 0)?;
                watch::key_history(&client, &key, until, Duration::from_secs(20)).await
            }
            Err(e) => Err(e),
        });
    }
    for (id, status) in cluster.crashed() {
        records.findings.push(Finding::new("crash", format!("node {id} exited on its own ({status}) after the heal; see its server.log")));
    }
    Ok((records, (reg_counters.snapshot(), lock_counters.snapshot())))
}

/// Resumes, restarts and heals everything, then waits until every node is
/// ready and a write to each workload namespace succeeds.
async fn heal(cluster: &mut Cluster, s: &Scenario, endpoints: &[SocketAddr]) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(s.heal_timeout_s);
    for i in 0..cluster.len() {
        let r = match cluster.state(i) {
            ProcState::Paused => cluster.resume(i),
            ProcState::Dead => cluster.restart(i),
            ProcState::Running | ProcState::Retired => Ok(()),
        };
        r.map_err(|e| format!("{e:#}"))?;
    }
    let mut last = String::new();
    for _ in 0..10_000 {
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("faults could not be cleared: {last}"));
        }
        let mut ok = nemesis::heal_net(cluster).await.map_err(|e| last = format!("{e:#}")).is_ok();
        for i in (0..cluster.len()).filter(|&i| cluster.state(i) != ProcState::Retired) {
            if let Err(e) = cluster.set_clock_rate(i, 1.0).await {
                last = format!("{e:#}");
                ok = false;
            }
        }
        if ok {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    cluster.wait_ready(remaining).await.map_err(|e| format!("{e:#}"))?;
    // A membership fault whose undo did not finish: every node a voter
    // again. (With the placement driver on, it keeps the replicas: with a
    // placement table, and with regions.)
    if s.placement.is_none() && s.regions.is_none() {
        for range in s.workload_ranges() {
            cluster.restore_members(range, deadline).await.map_err(|e| format!("{e:#}"))?;
        }
    }
    let mut prefixes = Vec::new();
    if s.registers.is_some() {
        prefixes.push(REGISTER_PREFIX);
    }
    if s.locks.is_some() {
        prefixes.push(LOCK_PREFIX);
    }
    for prefix in prefixes {
        let key = format!("{prefix}_heal");
        let mut done = false;
        for attempt in 0..10_000usize {
            if tokio::time::Instant::now() >= deadline {
                break;
            }
            let mut kv = KvClient::new(register::channel(endpoints[attempt % endpoints.len()]));
            let put = PutRequest { key: key.clone().into_bytes(), value: b"healed".to_vec(), ..Default::default() };
            match tokio::time::timeout(Duration::from_secs(2), kv.put(put)).await {
                Ok(Ok(_)) => {
                    done = true;
                    break;
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "put timed out".into(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if !done {
            return Err(format!("no write to {key} succeeded: {last}"));
        }
    }
    Ok(())
}

/// The counters the progress line shows.
struct Shown {
    registers: Option<Arc<Counters>>,
    locks: Option<Arc<LockCounters>>,
}

async fn progress(clock: RunClock, end: Duration, shown: Shown, status: nemesis::Status, done: Arc<AtomicBool>) {
    let max_lines = end.as_secs() / PROGRESS_EVERY.as_secs() + 100;
    for _ in 0..max_lines {
        tokio::time::sleep(PROGRESS_EVERY).await;
        if done.load(Ordering::Relaxed) {
            return;
        }
        let mut line = format!("  [{:>4}s/{}s]", clock.elapsed().as_secs(), end.as_secs());
        if let Some(r) = &shown.registers {
            let (ok, fail, unknown) = r.snapshot();
            line += &format!(" registers: {} ops ({ok} ok, {fail} fail, {unknown} unknown) |", ok + fail + unknown);
        }
        if let Some(l) = &shown.locks {
            let (grants, acc, rej, unk) = l.snapshot();
            line += &format!(" locks: {grants} grants, writes {acc} accepted, {rej} rejected, {unk} unknown |");
        }
        let nem = status.lock().expect("status").clone();
        println!("{line} nemesis: {nem}");
    }
}
