//! What a run prints, and what it leaves behind when it finds something:
//! `<out>/<scenario>-<seed>/` with `report.txt`, the histories as JSON
//! (re-checkable with `meridian-chaos check`), the nemesis timeline and
//! the servers' logs.

use std::fmt::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::clock::fmt_us;
use crate::run::{Records, RunOptions, RunReport};
use crate::scenario::Scenario;

/// The one-line summary of a run.
pub fn summary(r: &RunReport) -> String {
    let (ok, fail, unknown) = r.register_counts;
    let (grants, accepted, rejected, lunk) = r.lock_counts;
    let mut line =
        format!("chaos: {} seed={}: {} register ops ({ok} ok, {fail} fail, {unknown} unknown)", r.scenario, r.seed, ok + fail + unknown);
    if grants + accepted + rejected + lunk > 0 {
        let _ = write!(
            line,
            ", locks {grants} grants / {} writes ({accepted} accepted, {rejected} rejected, {lunk} unknown)",
            accepted + rejected + lunk
        );
    }
    if r.watch_events > 0 {
        let _ = write!(line, ", {} watch events", r.watch_events);
    }
    let failed = r.nemesis.iter().filter(|e| e.error.is_some()).count();
    let failed = if failed > 0 { format!(" ({failed} did not fully apply)") } else { String::new() };
    let _ = write!(line, ", {} nemesis events{failed}, {} violations", r.nemesis.len(), r.violations());
    let verdict = match (r.expect_violations, r.violations() > 0) {
        (false, false) => "PASS".to_string(),
        (false, true) => "FAIL".to_string(),
        (true, true) => "PASS (violations expected: the checker caught the broken mode)".to_string(),
        (true, false) => "FAIL (violations expected, none found: the checker missed the broken mode)".to_string(),
    };
    let _ = write!(
        line,
        " -> {verdict} ({:.1}s; heal {:.1}s, checks {:.1}s)",
        r.elapsed.as_secs_f64(),
        r.heal.as_secs_f64(),
        r.checks.as_secs_f64()
    );
    line
}

/// Findings and notes, indented, for the console.
pub fn findings_text(r: &RunReport) -> String {
    let mut out = String::new();
    for f in &r.verdict.findings {
        let _ = writeln!(out, "  VIOLATION [{}] {}", f.check, f.message);
    }
    for n in &r.verdict.notes {
        let _ = writeln!(out, "  note: {n}");
    }
    for e in r.nemesis.iter().filter(|e| e.error.is_some()) {
        let _ = writeln!(out, "  nemesis: {} -- {}", e.what, e.error.as_deref().unwrap_or_default());
    }
    if let Some(dir) = &r.artifacts {
        let _ = writeln!(out, "  artifacts: {}", dir.display());
    }
    out
}

pub fn rerun_hint(opts: &RunOptions) -> String {
    format!("meridian-chaos run {} --seed {} --duration {}", opts.file.display(), opts.seed, opts.duration_s)
}

pub fn save(
    dir: &Path,
    s: &Scenario,
    opts: &RunOptions,
    r: &RunReport,
    rec: &Records,
    logs: &[(u64, PathBuf)],
    data_dir: Option<&Path>,
) -> Result<()> {
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    let json = |name: &str, v: &dyn erased::Json| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, v.to_json()?).with_context(|| format!("writing {}", p.display()))
    };
    rec.registers.save(dir.join("registers.history.json")).context("saving the register history")?;
    json("locks.json", &rec.locks)?;
    json("watches.json", &rec.watches)?;
    json("nemesis.json", &rec.nemesis)?;
    for (id, log) in logs {
        let to = dir.join("logs").join(format!("node-{id}.log"));
        if let Err(e) = std::fs::copy(log, &to) {
            tracing::warn!("copying {}: {e}", log.display());
        }
    }
    let mut t = String::new();
    let _ = writeln!(t, "scenario {} (seed {}), {}, {}s", s.name, opts.seed, s.topology(), opts.duration_s);
    let _ = writeln!(t, "{}", summary(r));
    let _ = writeln!(t, "rerun: {}", rerun_hint(opts));
    match data_dir {
        Some(d) => {
            let _ = writeln!(t, "server data dirs and logs kept in {} (copies of the logs in {}/logs)", d.display(), dir.display());
        }
        None => {
            let _ = writeln!(t, "server logs: {}/logs (data dirs removed: violations were expected)", dir.display());
        }
    }
    let _ = writeln!(t, "\n== violations ({})", r.violations());
    for f in &r.verdict.findings {
        let _ = writeln!(t, "[{}] {}", f.check, f.message);
    }
    let _ = writeln!(t, "\n== notes");
    for n in &r.verdict.notes {
        let _ = writeln!(t, "{n}");
    }
    let _ = writeln!(t, "\n== details");
    for d in &r.verdict.details {
        let _ = writeln!(t, "{d}");
    }
    let _ = writeln!(t, "\n== nemesis timeline");
    for e in &rec.nemesis {
        let end = e.end_us.map_or("?".into(), fmt_us);
        let err = e.error.as_deref().map(|x| format!("  (error: {x})")).unwrap_or_default();
        let _ = writeln!(t, "{} .. {}  {}{err}", fmt_us(e.start_us), end, e.what);
    }
    let p = dir.join("report.txt");
    std::fs::write(&p, t).with_context(|| format!("writing {}", p.display()))
}

/// Serializing differently typed records through one closure.
mod erased {
    pub trait Json {
        fn to_json(&self) -> anyhow::Result<String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> anyhow::Result<String> {
            Ok(serde_json::to_string_pretty(self)?)
        }
    }
}
