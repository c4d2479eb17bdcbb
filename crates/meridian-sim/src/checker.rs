use std::collections::HashMap;

use meridian_raftstore::raft_types::StateRole;
use meridian_raftstore::{AppliedEntry, RangeStatus};

/// Invariants checked continuously over a run. Violations are collected
/// (with the step they happened at) rather than panicking, so a report can
/// show all of them with the seed.
#[derive(Default)]
pub struct Checker {
    /// (range, term) → the node that led it.
    leaders: HashMap<(u64, u64), u64>,
    /// (range, index) → (term, data) of the entry applied there.
    applied: HashMap<(u64, u64), (u64, Vec<u8>)>,
    /// Acknowledged proposals: (range, index) → command.
    acked: HashMap<(u64, u64), Vec<u8>>,
    violations: Vec<String>,
    /// range → the lineage (epoch generation) a forced promotion started:
    /// what replicas of an older one apply or lead is the lost region's
    /// history, which the operator gave up ([`Checker::accept_loss`]).
    lineages: HashMap<u64, u64>,
}

/// Violations kept per run; past this the run is broken enough.
const MAX_VIOLATIONS: usize = 100;

impl Checker {
    fn violation(&mut self, v: String) {
        if self.violations.len() < MAX_VIOLATIONS {
            self.violations.push(v);
        }
    }

    /// Election safety: at most one leader per term per range.
    pub fn observe_status(&mut self, step: u64, node: u64, st: &RangeStatus) {
        if st.role != StateRole::Leader || self.superseded(st.range_id, st.epoch.conf_ver) {
            return;
        }
        match self.leaders.insert((st.range_id, st.term), node) {
            Some(other) if other != node => self
                .violation(format!("step {step}: election safety: range {} term {} led by nodes {other} and {node}", st.range_id, st.term)),
            _ => {}
        }
    }

    /// State-machine safety: every replica applies the same entry at the
    /// same index.
    /// (`conf_ver`: the applying replica's epoch.)
    pub fn observe_applied(&mut self, step: u64, node: u64, conf_ver: u64, e: &AppliedEntry) {
        if self.superseded(e.range_id, conf_ver) {
            return;
        }
        let key = (e.range_id, e.index);
        match self.applied.get(&key) {
            Some((term, data)) if *term != e.term || *data != e.data => {
                let v = format!(
                    "step {step}: node {node} applied a different entry at range {} index {} (term {} vs {})",
                    e.range_id, e.index, e.term, term
                );
                self.violation(v);
            }
            Some(_) => {}
            None => {
                if let Some(cmd) = self.acked.get(&key) {
                    if *cmd != e.data {
                        let v =
                            format!("step {step}: acknowledged write at range {} index {} replaced by another entry", e.range_id, e.index);
                        self.violation(v);
                    }
                }
                self.applied.insert(key, (e.term, e.data.clone()));
            }
        }
    }

    /// An acknowledged proposal: the entry at `index` must be `command`
    /// forever.
    pub fn observe_ack(&mut self, step: u64, range_id: u64, index: u64, command: &[u8]) {
        if std::env::var_os("MERIDIAN_SIM_TRACE").is_some() {
            eprintln!("step {step}: ack range {range_id} index {index} {}", String::from_utf8_lossy(command));
        }
        if let Some((_, data)) = self.applied.get(&(range_id, index)) {
            if data.as_slice() != command {
                self.violation(format!("step {step}: ack for range {range_id} index {index} does not match the applied entry"));
            }
        }
        self.acked.insert((range_id, index), command.to_vec());
    }

    /// Terms (of any range) led by one of `nodes`.
    pub fn terms_led_by(&self, nodes: &[u64]) -> u64 {
        self.leaders.values().filter(|n| nodes.contains(n)).count() as u64
    }

    /// An operator forced a promotion of `range_id` (accepting data loss):
    /// only the entries up to `kept_index` (what the promoted replica knew
    /// committed) are the range's history from here on. Entries past it —
    /// applied or acknowledged by the lost voters — are forgotten, as are
    /// the terms the old lineage led (the new one numbers its own).
    /// From now on, replicas of a lineage older than `conf_ver`'s are not
    /// observed (a returning node of the lost region applying the entries
    /// it had committed before it was lost).
    pub fn accept_loss(&mut self, range_id: u64, kept_index: u64, conf_ver: u64) {
        self.applied.retain(|(r, i), _| *r != range_id || *i <= kept_index);
        self.acked.retain(|(r, i), _| *r != range_id || *i <= kept_index);
        self.leaders.retain(|(r, _), _| *r != range_id);
        self.lineages.insert(range_id, meridian_raftstore::generation(conf_ver));
    }

    /// Whether a replica at `conf_ver` belongs to a lineage a forced
    /// promotion superseded (epoch 0: an empty replica, of none yet).
    fn superseded(&self, range_id: u64, conf_ver: u64) -> bool {
        conf_ver != 0 && self.lineages.get(&range_id).is_some_and(|g| meridian_raftstore::generation(conf_ver) < *g)
    }

    pub fn fail(&mut self, what: String) {
        self.violation(what);
    }

    pub fn acked(&self) -> impl Iterator<Item = (&(u64, u64), &Vec<u8>)> {
        self.acked.iter()
    }

    pub fn acked_count(&self) -> usize {
        self.acked.len()
    }

    pub fn violations(&self) -> &[String] {
        &self.violations
    }
}
