//! Watch guarantees, for watchers that followed the register keys from
//! revision 1: events of a key arrive in strictly increasing mod_revision
//! with no duplicate, the stream never goes back in revision, every
//! acknowledged write is delivered, nothing is delivered that no client
//! wrote, all watchers see the same history, and each key's last event is
//! the final linearizable read.

use std::collections::{BTreeMap, HashSet};

use meridian_check::models::{RegisterInput as In, RegisterOutput as Out};
use meridian_check::History;
use meridian_proto::mvccpb::KeyValue;

use super::{Finding, Verdict, MAX_EXAMPLES};
use crate::workload::watch::{Seen, WatchLog};

const CHECK: &str = "watch";

pub fn check_watchers(logs: &[WatchLog], finals: &BTreeMap<String, Option<KeyValue>>, history: &History<In, Out>) -> Verdict {
    let mut v = Verdict::default();
    let mut attempted: BTreeMap<&str, HashSet<String>> = BTreeMap::new();
    let mut acked: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for op in &history.ops {
        let (key, value, ok) = match (&op.input, &op.output) {
            (In::Write { key, value }, out) => (key, *value, out.is_some()),
            (In::Cas { .. }, Some(Out::Cas(false))) => continue,
            (In::Cas { key, new, .. }, out) => (key, *new, out.is_some()),
            _ => continue,
        };
        attempted.entry(key).or_default().insert(value.to_string());
        if ok {
            acked.entry(key).or_default().push(value.to_string());
        }
    }
    let mut per_watcher: Vec<(u64, BTreeMap<&str, Vec<&Seen>>)> = Vec::new();
    for log in logs {
        let w = log.watcher;
        let mut problems = Vec::new();
        if let Some(why) = &log.ended_with {
            problems.push(format!("stopped early: {why}"));
        }
        let mut by_key: BTreeMap<&str, Vec<&Seen>> = BTreeMap::new();
        let mut last_rev = 0;
        for e in &log.events {
            if e.mod_revision < last_rev {
                problems.push(format!("revision {} of {} delivered after revision {last_rev}", e.mod_revision, e.key));
            }
            last_rev = last_rev.max(e.mod_revision);
            if e.delete {
                problems.push(format!("a delete of {} at revision {}, but no client deletes", e.key, e.mod_revision));
            }
            if !attempted.get(e.key.as_str()).is_some_and(|a| a.contains(&e.value)) {
                problems.push(format!("{}={:?} at revision {}: no client wrote that value", e.key, e.value, e.mod_revision));
            }
            let list = by_key.entry(e.key.as_str()).or_default();
            if let Some(prev) = list.last() {
                if e.mod_revision <= prev.mod_revision {
                    let what = if e.mod_revision == prev.mod_revision { "duplicate" } else { "out of order" };
                    problems.push(format!("{}: revision {} after {} ({what})", e.key, e.mod_revision, prev.mod_revision));
                }
            }
            list.push(e);
        }
        for (key, values) in &acked {
            let delivered: HashSet<&str> = by_key.get(key).into_iter().flatten().map(|e| e.value.as_str()).collect();
            let missing: Vec<&String> = values.iter().filter(|x| !delivered.contains(x.as_str())).collect();
            if !missing.is_empty() {
                problems.push(format!(
                    "{key}: {} acknowledged write(s) never delivered, e.g. {:?}",
                    missing.len(),
                    &missing[..missing.len().min(3)]
                ));
            }
        }
        for (key, fin) in finals {
            let last = by_key.get(key.as_str()).and_then(|l| l.last());
            match (fin, last) {
                (None, None) => {}
                (None, Some(e)) => {
                    problems.push(format!("{key}: final read finds it absent, last event sets {:?} at {}", e.value, e.mod_revision))
                }
                (Some(kv), None) => problems.push(format!("{key}: final read finds revision {}, no event was delivered", kv.mod_revision)),
                (Some(kv), Some(e)) => {
                    let value = String::from_utf8_lossy(&kv.value);
                    if e.mod_revision != kv.mod_revision || e.value != value {
                        problems.push(format!(
                            "{key}: last event is {:?} at revision {}, the final read {value:?} at revision {}",
                            e.value, e.mod_revision, kv.mod_revision
                        ));
                    }
                }
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            problems.truncate(MAX_EXAMPLES);
            v.findings.push(Finding::new(CHECK, format!("watcher {w}: {n} problem(s):\n    {}", problems.join("\n    "))));
        }
        if log.ended_with.is_none() {
            per_watcher.push((w, by_key));
        }
    }
    // Everyone saw the same history.
    if let Some((first, reference)) = per_watcher.first() {
        for (w, other) in &per_watcher[1..] {
            let keys: HashSet<&&str> = reference.keys().chain(other.keys()).collect();
            for key in keys {
                let a: Vec<(i64, &str)> = reference.get(*key).into_iter().flatten().map(|e| (e.mod_revision, e.value.as_str())).collect();
                let b: Vec<(i64, &str)> = other.get(*key).into_iter().flatten().map(|e| (e.mod_revision, e.value.as_str())).collect();
                if a != b {
                    let at = a.iter().zip(&b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()));
                    v.findings.push(Finding::new(
                        CHECK,
                        format!("watchers {first} and {w} disagree on {key} from event {at}: {:?} vs {:?}", a.get(at), b.get(at)),
                    ));
                }
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use meridian_check::Operation;

    use super::*;

    fn ev(key: &str, rev: i64, value: u64) -> Seen {
        Seen { key: key.into(), mod_revision: rev, value: value.to_string(), delete: false }
    }

    fn history() -> History<In, Out> {
        History::from(vec![
            Operation::completed(1, In::Write { key: "k".into(), value: 1 }, Out::Write, 0, 1),
            Operation::completed(1, In::Write { key: "k".into(), value: 2 }, Out::Write, 2, 3),
        ])
    }

    fn finals(rev: i64, value: &str) -> BTreeMap<String, Option<KeyValue>> {
        let kv = KeyValue { key: b"k".to_vec().into(), value: value.as_bytes().to_vec().into(), mod_revision: rev, ..Default::default() };
        BTreeMap::from([("k".to_string(), Some(kv))])
    }

    #[test]
    fn a_complete_ordered_stream_passes() {
        let logs = vec![
            WatchLog { watcher: 0, events: vec![ev("k", 2, 1), ev("k", 3, 2)], ended_with: None },
            WatchLog { watcher: 1, events: vec![ev("k", 2, 1), ev("k", 3, 2)], ended_with: None },
        ];
        let v = check_watchers(&logs, &finals(3, "2"), &history());
        assert!(v.findings.is_empty(), "{:?}", v.findings);
    }

    #[test]
    fn duplicates_gaps_and_disagreement_are_caught() {
        let logs = vec![
            WatchLog { watcher: 0, events: vec![ev("k", 2, 1), ev("k", 2, 1), ev("k", 3, 2)], ended_with: None },
            WatchLog { watcher: 1, events: vec![ev("k", 3, 2)], ended_with: None },
        ];
        let text = format!("{:?}", check_watchers(&logs, &finals(3, "2"), &history()).findings);
        assert!(text.contains("duplicate"), "{text}");
        assert!(text.contains("never delivered"), "{text}");
        assert!(text.contains("disagree"), "{text}");
    }

    #[test]
    fn last_event_must_match_the_final_read() {
        let logs = vec![WatchLog { watcher: 0, events: vec![ev("k", 2, 1), ev("k", 3, 2)], ended_with: None }];
        let text = format!("{:?}", check_watchers(&logs, &finals(4, "9"), &history()).findings);
        assert!(text.contains("final read"), "{text}");
    }
}
