//! Register histories: linearizability per key (the authoritative check),
//! plus a direct stale-read scan that says in plain words what went wrong.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::Duration;

use meridian_check::models::{Register, RegisterInput as In, RegisterOutput as Out};
use meridian_check::{check_partitioned, Budget, CheckResult, History};

use super::{Finding, Verdict, MAX_EXAMPLES};
use crate::clock::fmt_us;
use crate::workload::register::RegisterOp;

/// Linearizable-prefix operations shown before the blocking one.
const CONTEXT_OPS: usize = 8;

/// Checks the history key by key (P-compositionality) under `budget`; the
/// first key found in violation stops the others, which on a broken
/// history would otherwise search long for explanations that do not exist.
/// The stale-read scan then counts the damage over every key.
pub fn check_registers(history: &History<In, Out>, budget: Duration) -> Verdict {
    let mut verdict = Verdict::default();
    let budget = Budget::default().with_max_time(budget).with_max_steps(steps_for(history.ops.len()));
    match check_partitioned(&Register, history, budget) {
        Ok(CheckResult::Ok) => {}
        Ok(CheckResult::Unknown { reason }) => verdict.notes.push(format!("linearizability undecided: {reason:?}")),
        Ok(CheckResult::Violation(v)) => {
            let key = &v.partition;
            let blocking = &history.ops[v.blocking];
            verdict.findings.push(Finding::new(
                "linearizability",
                format!("key {key} is not linearizable: op #{} {} cannot be linearized", v.blocking, describe(blocking)),
            ));
            let mut d = format!("key {key}: longest linearization has {} ops; its last {CONTEXT_OPS}:\n", v.linearized.len());
            for &i in v.linearized.iter().rev().take(CONTEXT_OPS).rev() {
                let _ = writeln!(d, "  #{i} {}", describe(&history.ops[i]));
            }
            let _ = writeln!(d, "then #{} cannot follow: {}", v.blocking, describe(blocking));
            verdict.details.push(d);
        }
        Err(e) => verdict.findings.push(Finding::new("linearizability", format!("the register history is malformed: {e}"))),
    }
    verdict.absorb(stale_reads(history));
    verdict
}

/// Search steps allowed per key: generous for a healthy history (mostly
/// one step per operation), bounded for a pathological one.
fn steps_for(ops: usize) -> u64 {
    (ops as u64).saturating_mul(200).clamp(2_000_000, 50_000_000)
}

/// One operation in words.
pub fn describe(op: &RegisterOp) -> String {
    let when = match op.ret {
        Some(r) => format!("[{} .. {}]", fmt_us(op.call), fmt_us(r)),
        None => format!("[{} .. ?]", fmt_us(op.call)),
    };
    let what = match (&op.input, &op.output) {
        (In::Read { .. }, Some(Out::Read(v))) => format!("read -> {}", show(*v)),
        (In::Write { value, .. }, Some(_)) => format!("write {value} -> ok"),
        (In::Cas { expected, new, .. }, Some(Out::Cas(s))) => {
            format!("cas {} -> {new}: {}", show(*expected), if *s { "swapped" } else { "no swap" })
        }
        (input, None) => format!("{input:?} -> unknown outcome"),
        (input, Some(out)) => format!("{input:?} -> {out:?}"),
    };
    format!("client {} {what} {when}", op.client)
}

fn show(v: Option<u64>) -> String {
    v.map_or("absent".into(), |v| v.to_string())
}

/// Reads that returned a value already overwritten, by an acknowledged
/// write that began after that value's write had returned, before the read
/// began: stale by any linearization. A diagnostic, not a second verdict.
fn stale_reads(history: &History<In, Out>) -> Verdict {
    let mut verdict = Verdict::default();
    // Per key: the writes with their values, acknowledged or not.
    let mut writes: BTreeMap<&str, Vec<(u64, &RegisterOp, bool)>> = BTreeMap::new();
    for op in &history.ops {
        let acked = matches!(op.output, Some(Out::Write) | Some(Out::Cas(true)));
        match &op.input {
            In::Write { key, value } => writes.entry(key).or_default().push((*value, op, acked)),
            In::Cas { key, new, .. } if !matches!(op.output, Some(Out::Cas(false))) => {
                writes.entry(key).or_default().push((*new, op, acked))
            }
            _ => {}
        }
    }
    let mut examples = Vec::new();
    let mut count = 0usize;
    for op in &history.ops {
        let (In::Read { key }, Some(Out::Read(seen))) = (&op.input, &op.output) else { continue };
        let ws = writes.get(key.as_str()).map(Vec::as_slice).unwrap_or(&[]);
        // When did the value read become visible at the latest (its write's return)?
        let written_by = match seen {
            None => Some(0),
            Some(v) => match ws.iter().find(|(x, _, _)| x == v) {
                Some((_, w, _)) => w.ret,
                None => {
                    count += 1;
                    if examples.len() < MAX_EXAMPLES {
                        examples.push(format!("{key}: {} returned {v}, which no client wrote", describe(op)));
                    }
                    continue;
                }
            },
        };
        let Some(visible_by) = written_by else { continue };
        let newer = ws.iter().find(|(x, w, acked)| {
            *acked && Some(*x) != *seen && (seen.is_none() || w.call > visible_by) && w.ret.is_some_and(|r| r < op.call)
        });
        if let Some((x, w, _)) = newer {
            count += 1;
            if examples.len() < MAX_EXAMPLES {
                examples.push(format!(
                    "{key}: {} but {x} had been acknowledged [{} .. {}]",
                    describe(op),
                    fmt_us(w.call),
                    fmt_us(w.ret.unwrap_or(0))
                ));
            }
        }
    }
    if count > 0 {
        verdict.notes.push(format!("stale or phantom reads: {count}, e.g.\n    {}", examples.join("\n    ")));
    }
    verdict
}

#[cfg(test)]
mod tests {
    use meridian_check::Operation;

    use super::*;

    fn w(c: u64, key: &str, v: u64, call: u64, ret: u64) -> RegisterOp {
        Operation::completed(c, In::Write { key: key.into(), value: v }, Out::Write, call, ret)
    }
    fn r(c: u64, key: &str, v: Option<u64>, call: u64, ret: u64) -> RegisterOp {
        Operation::completed(c, In::Read { key: key.into() }, Out::Read(v), call, ret)
    }

    #[test]
    fn a_stale_read_is_a_violation_with_a_diagnostic() {
        let h = History::from(vec![
            w(1, "a", 1, 0, 10),
            w(1, "a", 2, 20, 30),
            r(2, "a", Some(1), 40, 50),
            w(1, "b", 7, 0, 5),
            r(3, "b", Some(7), 6, 8),
        ]);
        let v = check_registers(&h, Duration::from_secs(5));
        assert_eq!(v.findings.len(), 1, "{:?}", v.findings);
        assert!(v.findings[0].message.contains("key a"));
        assert!(v.notes.iter().any(|n| n.contains("stale or phantom reads: 1")), "{:?}", v.notes);
    }

    #[test]
    fn concurrent_reads_are_fine() {
        let h = History::from(vec![w(1, "a", 1, 0, 10), w(1, "a", 2, 20, 30), r(2, "a", Some(1), 25, 50), r(2, "a", None, 0, 1)]);
        let v = check_registers(&h, Duration::from_secs(5));
        assert!(v.findings.is_empty() && v.notes.is_empty(), "{v:?}");
    }
}
