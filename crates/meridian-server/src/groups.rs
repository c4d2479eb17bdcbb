//! The placement driver's merges and splits of groups (see
//! [`meridian_placement::groups`] for the decisions): each round it names
//! every namespace created at runtime to the members (they count the
//! writes under each), reads the key counts of a few namespaces, feeds the
//! tracker, and runs the change it decides — one at a time, beside the
//! rounds — through the same steps as `meridian namespace merge|split`.
//! Each change shows in the operator list with its reason and outcome.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use meridian_kv::command as c;
use meridian_placement::{GroupChange, GroupSettings, GroupTracker, Observation};
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::namespace::{NsRecord, NsState};
use crate::placement::{Gathered, OperatorReport, OperatorState};
use crate::routing::{prefix_end, ROOT_RANGE_ID};

/// Key counts read per round (one count query each, in name order from
/// where the last round stopped): the load of reading them stays flat
/// however many namespaces there are.
pub const KEY_COUNTS_PER_ROUND: usize = 32;

/// `[placement.groups]`: when the driver merges a namespace's group into
/// the root group, and splits a shared namespace out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct GroupConfig {
    /// Merge and split at all (with `placement.execute`).
    pub enabled: bool,
    pub merge_max_keys: u64,
    pub merge_max_writes_per_min: u64,
    pub merge_max_reads_per_min: u64,
    pub merge_max_bytes: u64,
    pub merge_quiet_s: u64,
    pub split_min_keys: u64,
    pub split_min_bytes: u64,
    pub split_min_writes_per_min: u64,
    pub split_sustain_s: u64,
}

impl Default for GroupConfig {
    fn default() -> Self {
        let d = GroupSettings::default();
        GroupConfig {
            enabled: d.enabled,
            merge_max_keys: d.merge_max_keys,
            merge_max_writes_per_min: d.merge_max_writes_per_min,
            merge_max_reads_per_min: d.merge_max_reads_per_min,
            merge_max_bytes: d.merge_max_bytes,
            merge_quiet_s: d.merge_quiet_ms / 1000,
            split_min_keys: d.split_min_keys,
            split_min_bytes: d.split_min_bytes,
            split_min_writes_per_min: d.split_min_writes_per_min,
            split_sustain_s: d.split_sustain_ms / 1000,
        }
    }
}

impl GroupConfig {
    /// The tracker's settings.
    pub fn settings(&self) -> GroupSettings {
        GroupSettings {
            enabled: self.enabled,
            merge_max_keys: self.merge_max_keys,
            merge_max_writes_per_min: self.merge_max_writes_per_min,
            merge_max_reads_per_min: self.merge_max_reads_per_min,
            merge_max_bytes: self.merge_max_bytes,
            merge_quiet_ms: self.merge_quiet_s.saturating_mul(1000),
            split_min_keys: self.split_min_keys,
            split_min_bytes: self.split_min_bytes,
            split_min_writes_per_min: self.split_min_writes_per_min,
            split_sustain_ms: self.split_sustain_s.saturating_mul(1000),
            ..GroupSettings::default()
        }
    }

    /// Whether the thresholds make sense.
    pub fn validate(&self) -> Result<(), String> {
        let max = meridian_kv::carve::MAX_MERGE_KEYS as u64;
        if self.merge_max_keys > max {
            return Err(format!("placement.groups.merge_max_keys {} is above {max}, the most a merge moves", self.merge_max_keys));
        }
        let max_bytes = meridian_kv::carve::MAX_MERGE_BYTES as u64;
        if self.merge_max_bytes > max_bytes {
            return Err(format!("placement.groups.merge_max_bytes {} is above {max_bytes}, the most a merge moves", self.merge_max_bytes));
        }
        self.settings().validate().map_err(|e| format!("placement.groups: {e}"))
    }
}

/// The driver's group state: the tracker, where key counting goes on, and
/// whether a change is running.
#[derive(Default)]
pub struct GroupDriver {
    tracker: Mutex<GroupTracker>,
    cursor: Mutex<String>,
    busy: Arc<AtomicBool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The prefixes the members are asked to count writes under: every
/// namespace created at runtime.
pub fn counted(recs: &BTreeMap<String, NsRecord>) -> Vec<Vec<u8>> {
    recs.keys().map(|n| n.as_bytes().to_vec()).collect()
}

/// Whether the driver may change `r`'s group: settled, and with the root
/// group's placement (no constraints, no geography: a namespace homed in
/// a region keeps a group placed by its policy).
fn movable(backend: &Backend, r: &NsRecord) -> bool {
    matches!(r.state, NsState::Ready | NsState::Shared)
        && r.replicas == backend.cfg.placement.replicas
        && r.constraints.is_empty()
        && r.geo.is_none()
}

/// The next [`KEY_COUNTS_PER_ROUND`] names after the cursor (wrapping).
fn next_batch(recs: &BTreeMap<String, NsRecord>, cursor: &str) -> Vec<String> {
    let after = recs.range::<str, _>((std::ops::Bound::Excluded(cursor), std::ops::Bound::Unbounded)).map(|(n, _)| n.clone());
    let mut batch: Vec<String> = after.take(KEY_COUNTS_PER_ROUND).collect();
    if batch.len() < KEY_COUNTS_PER_ROUND {
        let more = KEY_COUNTS_PER_ROUND - batch.len();
        let wrapped: Vec<String> = recs.keys().take(more).filter(|n| !batch.contains(n)).cloned().collect();
        batch.extend(wrapped);
    }
    batch
}

/// How long one key count may take: a range without a leader leaves its
/// namespace uncounted this round, never the round waiting.
const KEY_COUNT_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(500);

/// Keys under `name` in the range serving it, and their bytes (keys and
/// values), through its leader: the driver's node need not hold a replica.
async fn key_count(backend: &Backend, range: u64, name: &str) -> Option<(u64, u64)> {
    let a = tokio::time::timeout(KEY_COUNT_TIMEOUT, size_of(backend, range, name)).await.ok()?.ok()?;
    Some(a)
}

/// Keys and bytes under `name` in `range`, read linearizably.
async fn size_of(backend: &Backend, range: u64, name: &str) -> Result<(u64, u64), crate::error::ApiError> {
    let op = c::RangeOp { key: name.as_bytes().to_vec(), range_end: prefix_end(name.as_bytes()), count_only: true, ..Default::default() };
    let a = backend.query(range, c::QueryKind::Range(op), true).await?;
    Ok(a.range.map_or((0, 0), |r| (u64::try_from(r.count).unwrap_or(0), r.bytes)))
}

/// One round: measure, decide, and start the change decided (if none
/// runs). `g` must hold every live member's load (writes summed).
pub async fn round(backend: &Arc<Backend>, recs: &BTreeMap<String, NsRecord>, g: &Gathered, now_ms: u64) {
    let cfg = &backend.cfg.placement.groups;
    if !cfg.enabled {
        return;
    }
    let settings = cfg.settings();
    let gd = &backend.placement.groups;
    let cursor = lock(&gd.cursor).clone();
    let batch = next_batch(recs, &cursor);
    // The batch's counts at once, each bounded in time.
    let mut counting = tokio::task::JoinSet::new();
    for r in batch.iter().filter_map(|n| recs.get(n)) {
        let range = if r.state == NsState::Shared { ROOT_RANGE_ID } else { r.range_id };
        let (b, name) = (backend.clone(), r.name.clone());
        counting.spawn(async move { (key_count(&b, range, &name).await, name) });
    }
    let mut keys = BTreeMap::new();
    while let Some(done) = counting.join_next().await {
        if let Ok((Some(size), name)) = done {
            keys.insert(name, size);
        }
    }
    if let Some(last) = batch.last() {
        *lock(&gd.cursor) = last.clone();
    }
    let mut totals: BTreeMap<&[u8], (u64, u64)> = BTreeMap::new();
    for load in g.loads.values() {
        for w in &load.writes {
            let t = totals.entry(w.prefix.as_slice()).or_default();
            t.0 += w.count;
            t.1 += w.reads;
        }
    }
    let observations: Vec<Observation> = recs
        .values()
        .map(|r| Observation {
            name: r.name.clone(),
            shared: r.state == NsState::Shared,
            movable: movable(backend, r),
            keys: keys.get(&r.name).map(|s| s.0),
            bytes: keys.get(&r.name).map(|s| s.1),
            writes: totals.get(r.name.as_bytes()).map_or(0, |t| t.0),
            reads: totals.get(r.name.as_bytes()).map_or(0, |t| t.1),
        })
        .collect();
    let change = {
        let mut t = lock(&gd.tracker);
        t.observe(now_ms, &observations, &settings);
        t.plan(now_ms, &settings)
    };
    let Some(change) = change else { return };
    if gd.busy.swap(true, Ordering::AcqRel) {
        return;
    }
    let backend = backend.clone();
    tokio::spawn(async move {
        run(&backend, change, now_ms).await;
        backend.placement.groups.busy.store(false, Ordering::Release);
    });
}

impl GroupDriver {
    /// Forgets every measurement: this node stopped leading the meta
    /// range, and whatever it measured before may be long stale when it
    /// leads again.
    pub fn reset(&self) {
        *lock(&self.tracker) = GroupTracker::default();
    }
}

/// Keys and bytes under a namespace with a group of its own, read now
/// (linearizable): what a merge decided on a count read rounds ago checks
/// first.
async fn size_now(backend: &Backend, name: &str) -> Result<(u64, u64), crate::error::ApiError> {
    let Some(r) = crate::namespace::record(backend, name, true).await? else {
        return Err(crate::error::ApiError::NamespaceNotFound(format!("namespace {name:?} not found")));
    };
    size_of(backend, r.range_id, name).await
}

/// Runs one change and lists it (with its outcome) among the operators.
async fn run(backend: &Backend, change: GroupChange, started_ms: u64) {
    let name = change.name().to_string();
    let (kind, reason) = match &change {
        GroupChange::Merge { reason, .. } => ("merge", reason.clone()),
        GroupChange::Split { reason, .. } => ("split", reason.clone()),
    };
    tracing::info!(namespace = name, kind, reason, "placement: changing a namespace's group");
    let steps: &[&str] = match kind {
        "merge" => &["seal the namespace's group", "absorb its keys into the root range", "retire the group"],
        _ => &["allocate a group", "carve the prefix out of the root range", "publish the descriptor"],
    };
    let report = |range_id: u64| OperatorReport {
        range_id,
        kind: format!("{kind} {name}"),
        from: None,
        to: None,
        steps: steps.iter().map(|s| s.to_string()).collect(),
        reason: reason.clone(),
    };
    let range_before = crate::namespace::record(backend, &name, false).await.ok().flatten().map_or(0, |r| r.range_id);
    backend.placement.group_change_started(OperatorState { op: report(range_before), at: 0, state: "running".into(), started_ms });
    let (max_keys, max_bytes) = (backend.cfg.placement.groups.merge_max_keys, backend.cfg.placement.groups.merge_max_bytes);
    let done = match change {
        GroupChange::Merge { .. } => match size_now(backend, &name).await {
            Ok((k, _)) if k > max_keys => {
                Err(crate::error::ApiError::NamespaceNotEmpty(format!("it holds {k} keys now, above merge_max_keys ({max_keys})")))
            }
            Ok((_, b)) if b > max_bytes => {
                Err(crate::error::ApiError::NamespaceNotEmpty(format!("it holds {b} bytes now, above merge_max_bytes ({max_bytes})")))
            }
            Ok(_) => crate::namespace::merge(backend, &name).await,
            Err(e) => Err(e),
        },
        GroupChange::Split { .. } => crate::namespace::split(backend, &name).await,
    };
    let (range_id, state) = match &done {
        Ok(info) => (info.range_id, "done".to_string()),
        Err(e) => {
            let now = crate::backend::wall_ms().max(0) as u64;
            lock(&backend.placement.groups.tracker).failed(&name, now, &backend.cfg.placement.groups.settings());
            tracing::info!(namespace = name, kind, "placement: the group change was not made: {e}");
            (0, format!("failed: {e}"))
        }
    };
    backend.placement.record_finished(OperatorState { op: report(range_id), at: steps.len(), state, started_ms });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_counts_go_round_every_namespace_a_batch_at_a_time() {
        let recs: BTreeMap<String, NsRecord> = (0..40)
            .map(|i| {
                let name = format!("/n{i:02}/");
                let r: NsRecord = serde_json::from_value(serde_json::json!({
                    "name": name, "range_id": 3, "namespace_id": 3, "replicas": 3, "constraints": {}, "state": "ready", "created_ms": 0
                }))
                .unwrap();
                (name, r)
            })
            .collect();
        let first = next_batch(&recs, "");
        assert_eq!((first.len(), first[0].as_str(), first[31].as_str()), (32, "/n00/", "/n31/"));
        let second = next_batch(&recs, &first[31]);
        assert_eq!((second.len(), second[0].as_str(), second[7].as_str(), second[8].as_str()), (32, "/n32/", "/n39/", "/n00/"));
        let few: BTreeMap<String, NsRecord> = recs.into_iter().take(3).collect();
        assert_eq!(next_batch(&few, "/n01/"), ["/n02/", "/n00/", "/n01/"]);
    }

    #[test]
    fn thresholds_are_checked() {
        assert_eq!(GroupConfig::default().validate(), Ok(()));
        let bad = GroupConfig { merge_max_keys: 20_000, split_min_keys: 50_000, ..GroupConfig::default() };
        assert!(bad.validate().unwrap_err().contains("the most a merge moves"));
        let bad = GroupConfig { split_min_keys: 10, ..GroupConfig::default() };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn byte_thresholds_are_checked() {
        let bad = GroupConfig { merge_max_bytes: 8 << 20, split_min_bytes: 16 << 20, ..GroupConfig::default() };
        assert!(bad.validate().unwrap_err().contains("merge_max_bytes"), "above what a merge moves");
        let bad = GroupConfig { split_min_bytes: 1024, ..GroupConfig::default() };
        assert!(bad.validate().unwrap_err().contains("split_min_bytes"));
    }
}
