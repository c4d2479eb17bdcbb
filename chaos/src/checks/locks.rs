//! Lock safety. Overlapping critical sections *in time* are allowed (a
//! holder's lease can expire unobserved); what must hold is that grants
//! and the fenced resources order holders by token:
//!
//! - the fenced-mutex model (Resource mode) over grants, releases and the
//!   in-process `Fence`: grants strictly increase in a linearizable order
//!   and the fence accepts exactly the tokens not below one it accepted;
//! - real time: a grant that returned before another was asked for has the
//!   smaller token; tokens are never handed out twice;
//! - the guarded txn: once a grant of token `t'` has returned, no write with
//!   a token below `t'` may be accepted, and accepted writes never go back
//!   in token order;
//! - the resource key's revision history: tokens never decrease, every
//!   acknowledged write is there exactly once, no rejected write is.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::time::Duration;

use meridian_check::models::{FenceMode, FencedMutex};
use meridian_check::{check, Budget, CheckResult, History};

use super::{Finding, Verdict, MAX_EXAMPLES};
use crate::clock::fmt_us;
use crate::workload::locks::{LockLog, LockWrite, WriteOutcome};
use crate::workload::watch::Seen;

const CHECK: &str = "locks";

pub fn check_locks(log: &LockLog, resource_history: Result<&[Seen], &str>, budget: Duration) -> Verdict {
    let mut v = Verdict::default();
    fenced_mutex_model(log, budget, &mut v);
    grants(log, &mut v);
    guarded_writes(log, &mut v);
    match resource_history {
        Ok(h) => resource(log, h, &mut v),
        Err(e) => v.findings.push(Finding::new("recovery", format!("the resource key's history could not be read: {e}"))),
    }
    let stalled: Vec<&LockWrite> = log.writes.iter().filter(|w| w.after_stall).collect();
    if !stalled.is_empty() {
        let count = |o: WriteOutcome| stalled.iter().filter(|w| w.outcome == o).count();
        let accepted: Vec<String> = stalled
            .iter()
            .filter(|w| w.outcome == WriteOutcome::Accepted)
            .take(MAX_EXAMPLES)
            .map(|w| format!("client {} token {} at {}", w.client, w.token, fmt_us(w.call_us)))
            .collect();
        let mut note = format!(
            "writes after a stall past the TTL: {} ({} rejected, {} accepted, {} unknown)",
            stalled.len(),
            count(WriteOutcome::Rejected) + count(WriteOutcome::Refused),
            count(WriteOutcome::Accepted),
            count(WriteOutcome::Unknown)
        );
        if !accepted.is_empty() {
            // Legal when nobody took the lock meanwhile and the session had
            // not expired yet: a new range leader restarts the TTL count,
            // and a paused or slow lease clock delays expiry.
            note += &format!("; accepted ones (session not yet expired): {}", accepted.join(", "));
        }
        v.notes.push(note);
    }
    v
}

fn fenced_mutex_model(log: &LockLog, budget: Duration, v: &mut Verdict) {
    let history = History::from(log.mutex_ops.clone());
    let model = FencedMutex { mode: FenceMode::Resource };
    match check(&model, &history, Budget::default().with_max_time(budget)) {
        Ok(CheckResult::Ok) => {}
        Ok(CheckResult::Unknown { reason }) => v.notes.push(format!("fenced-mutex model undecided: {reason:?}")),
        Ok(CheckResult::Violation(x)) => {
            let blocking = &history.ops[x.blocking];
            v.findings.push(Finding::new(
                CHECK,
                format!("fenced-mutex history not linearizable: op #{} {blocking:?} cannot be linearized", x.blocking),
            ));
            let mut d = format!("fenced mutex: longest linearization has {} ops; its last 8:\n", x.linearized.len());
            for &i in x.linearized.iter().rev().take(8).rev() {
                let _ = writeln!(d, "  #{i} {:?}", history.ops[i]);
            }
            let _ = writeln!(d, "then #{} cannot follow: {blocking:?}", x.blocking);
            v.details.push(d);
        }
        Err(e) => v.findings.push(Finding::new(CHECK, format!("fenced-mutex history malformed: {e}"))),
    }
}

fn grants(log: &LockLog, v: &mut Verdict) {
    let mut owners: HashMap<i64, u64> = HashMap::new();
    for g in &log.grants {
        if let Some(&other) = owners.get(&g.token) {
            if other != g.client {
                v.findings.push(Finding::new(CHECK, format!("token {} granted to client {other} and to client {}", g.token, g.client)));
            }
        }
        owners.insert(g.token, g.client);
    }
    let mut bad = Vec::new();
    for a in &log.grants {
        for b in &log.grants {
            if a.ret_us < b.call_us && a.token >= b.token {
                bad.push(format!(
                    "client {} got token {} at {}, then client {} asked at {} and got {}",
                    a.client,
                    a.token,
                    fmt_us(a.ret_us),
                    b.client,
                    fmt_us(b.call_us),
                    b.token
                ));
            }
        }
    }
    report(v, "grants out of token order in real time", bad);
}

fn guarded_writes(log: &LockLog, v: &mut Verdict) {
    let accepted: Vec<&LockWrite> = log.writes.iter().filter(|w| w.outcome == WriteOutcome::Accepted).collect();
    let mut stale = Vec::new();
    for w in &accepted {
        if let Some(g) = log.grants.iter().filter(|g| g.token > w.token && g.ret_us < w.call_us).min_by_key(|g| g.ret_us) {
            stale.push(format!(
                "client {}'s write {} (token {}) accepted [{} .. {}] although client {} had been granted token {} at {}",
                w.client,
                w.value,
                w.token,
                fmt_us(w.call_us),
                fmt_us(w.ret_us),
                g.client,
                g.token,
                fmt_us(g.ret_us)
            ));
        }
    }
    report(v, "guarded txn accepted a superseded token", stale);
    let mut backwards = Vec::new();
    for a in &accepted {
        for b in &accepted {
            if a.ret_us < b.call_us && a.token > b.token {
                backwards.push(format!("{} (token {}) accepted before {} (token {}) was", a.value, a.token, b.value, b.token));
            }
        }
    }
    report(v, "accepted guarded writes went back in token order", backwards);
}

fn resource(log: &LockLog, history: &[Seen], v: &mut Verdict) {
    let by_value: BTreeMap<&str, &LockWrite> = log.writes.iter().map(|w| (w.value.as_str(), w)).collect();
    let mut problems = Vec::new();
    let mut last: Option<(i64, &Seen)> = None;
    let mut seen_values: HashMap<&str, i64> = HashMap::new();
    for e in history {
        if let Some(first) = seen_values.insert(e.value.as_str(), e.mod_revision) {
            problems.push(format!("{} written twice (revisions {first} and {}): a write applied twice", e.value, e.mod_revision));
        }
        let Some(w) = by_value.get(e.value.as_str()) else {
            problems.push(format!("revision {} holds {:?}, which no client wrote", e.mod_revision, e.value));
            continue;
        };
        if matches!(w.outcome, WriteOutcome::Rejected | WriteOutcome::Refused) {
            problems.push(format!("revision {} holds {}, whose guarded txn was answered {:?}", e.mod_revision, e.value, w.outcome));
        }
        if let Some((t, prev)) = last {
            if w.token < t {
                problems.push(format!(
                    "revision {} holds token {} after revision {} held token {t}: tokens went backwards",
                    e.mod_revision, w.token, prev.mod_revision
                ));
            }
        }
        last = Some((w.token, e));
    }
    for w in log.writes.iter().filter(|w| w.outcome == WriteOutcome::Accepted) {
        if !seen_values.contains_key(w.value.as_str()) {
            problems.push(format!(
                "acknowledged write {} (token {}, {}) is missing from the resource key's history",
                w.value,
                w.token,
                fmt_us(w.ret_us)
            ));
        }
    }
    report(v, "the resource key's history breaks fencing", problems);
}

/// One finding per kind, with a count and a few examples.
fn report(v: &mut Verdict, what: &str, examples: Vec<String>) {
    if examples.is_empty() {
        return;
    }
    let shown: Vec<&str> = examples.iter().take(MAX_EXAMPLES).map(String::as_str).collect();
    v.findings.push(Finding::new(CHECK, format!("{what}: {} case(s), e.g.\n    {}", examples.len(), shown.join("\n    "))));
}

#[cfg(test)]
mod tests {
    use meridian_check::models::{MutexInput, MutexOutput};
    use meridian_check::Operation;

    use super::*;
    use crate::workload::locks::Grant;

    fn grant(client: u64, token: i64, call_us: u64, ret_us: u64) -> Grant {
        Grant { client, token, call_us, ret_us }
    }

    fn write(client: u64, token: i64, seq: u64, call_us: u64, ret_us: u64, outcome: WriteOutcome) -> LockWrite {
        LockWrite { client, token, value: format!("{token}:{client}:{seq}"), call_us, ret_us, outcome, after_stall: false }
    }

    fn seen(rev: i64, w: &LockWrite) -> Seen {
        Seen { key: "/locks/resource".into(), mod_revision: rev, value: w.value.clone(), delete: false }
    }

    fn log(grants: Vec<Grant>, writes: Vec<LockWrite>) -> LockLog {
        let mut mutex_ops = Vec::new();
        for g in &grants {
            mutex_ops.push(Operation::completed(
                g.client,
                MutexInput::Acquire,
                MutexOutput::Granted { token: g.token as u64 },
                g.call_us,
                g.ret_us,
            ));
        }
        LockLog { mutex_ops, grants, writes }
    }

    #[test]
    fn a_clean_handover_passes() {
        let w1 = write(1, 5, 1, 20, 30, WriteOutcome::Accepted);
        let w2 = write(2, 6, 2, 60, 70, WriteOutcome::Accepted);
        let stale = write(1, 5, 3, 80, 90, WriteOutcome::Rejected);
        let h = vec![seen(10, &w1), seen(11, &w2)];
        let l = log(vec![grant(1, 5, 0, 10), grant(2, 6, 5, 50)], vec![w1, w2, stale]);
        let v = check_locks(&l, Ok(&h), Duration::from_secs(5));
        assert!(v.findings.is_empty(), "{:?}", v.findings);
    }

    #[test]
    fn a_superseded_token_accepted_is_caught_everywhere() {
        let w1 = write(1, 5, 1, 20, 30, WriteOutcome::Accepted);
        let w2 = write(2, 6, 2, 60, 70, WriteOutcome::Accepted);
        let zombie = write(1, 5, 3, 80, 90, WriteOutcome::Accepted);
        let h = vec![seen(10, &w1), seen(11, &w2), seen(12, &zombie)];
        let l = log(vec![grant(1, 5, 0, 10), grant(2, 6, 5, 50)], vec![w1, w2, zombie]);
        let v = check_locks(&l, Ok(&h), Duration::from_secs(5));
        let text = format!("{:?}", v.findings);
        assert!(text.contains("superseded token"), "{text}");
        assert!(text.contains("back in token order"), "{text}");
        assert!(text.contains("tokens went backwards"), "{text}");
    }

    #[test]
    fn lost_rejected_and_duplicate_writes_are_caught() {
        let w1 = write(1, 5, 1, 20, 30, WriteOutcome::Accepted);
        let rejected = write(1, 5, 2, 40, 50, WriteOutcome::Rejected);
        let h = vec![seen(10, &rejected), seen(11, &rejected)];
        let l = log(vec![grant(1, 5, 0, 10)], vec![w1, rejected]);
        let text = format!("{:?}", check_locks(&l, Ok(&h), Duration::from_secs(5)).findings);
        assert!(text.contains("missing"), "{text}");
        assert!(text.contains("answered Rejected"), "{text}");
        assert!(text.contains("written twice"), "{text}");
    }

    #[test]
    fn grants_must_increase_in_real_time() {
        let l = log(vec![grant(1, 7, 0, 10), grant(2, 6, 20, 30)], vec![]);
        let v = check_locks(&l, Ok(&[]), Duration::from_secs(5));
        let text = format!("{:?}", v.findings);
        assert!(text.contains("grants out of token order"), "{text}");
        assert!(text.contains("fenced-mutex"), "{text}");
    }
}
