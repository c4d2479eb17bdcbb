//! The placement driver's view of the live cluster, and its plan as a dry
//! run: what `meridian_placement::schedule` would do now, with why.
//!
//! ```text
//!  every member ── Internal.RangeReports (the ranges it leads) ──┐
//!  node directory + gossip (labels, liveness, last heard) ────────┼─► ClusterView ─► schedule ─► GET /v1/placement/plan
//!  [placement] settings ──────────────────────────────────────────┘                             meridian placement plan
//! ```
//!
//! With `[placement] execute = true`, the meta range's leader also runs
//! the operators ([`drive`]): every [`DRIVE_EVERY`] ([`DRIVE_BUSY`] while operators run) it advances each
//! running operator one step (issued on the range's leader,
//! `Internal.RangeStep`) and starts what the scheduler plans. The running
//! operators live in that leader's memory: a new leader starts afresh, and
//! the scheduler removes a learner an interrupted operator left behind
//! (replicated operator records are still to come: docs/roadmap.md).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_kv::command as c;
use meridian_membership::Liveness;
use meridian_placement::{schedule, ClusterView, Kind, Load, NodeView, Operator, Plan, Progress, RangeView, Running, Settings, Step};
use meridian_proto::meridian::v1 as api;
use meridian_raftstore::raft_types::StateRole;
use serde::{Deserialize, Serialize};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::membership::MemberOp;
use crate::routing::META_RANGE_ID;

/// Bound of one member's answer.
const REPORT_TIMEOUT: Duration = Duration::from_secs(2);

/// `[placement]`: the scheduler's policy and knobs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PlacementSettings {
    /// Voters every range should have.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How long a node must have been dead before its replicas are
    /// replaced (default 5 minutes: longer than a rolling restart).
    #[serde(default = "default_down_after_ms")]
    pub down_after_ms: u64,
    /// Run the operators the scheduler plans (default off: the plan is
    /// shown, not executed).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub execute: bool,
    /// Merges and splits of groups (run with `execute`).
    #[serde(default)]
    pub groups: crate::groups::GroupConfig,
}

fn default_replicas() -> usize {
    3
}
fn default_down_after_ms() -> u64 {
    Settings::default().down_after_ms
}

impl Default for PlacementSettings {
    fn default() -> Self {
        PlacementSettings {
            replicas: default_replicas(),
            down_after_ms: default_down_after_ms(),
            execute: false,
            groups: Default::default(),
        }
    }
}

impl PlacementSettings {
    pub(crate) fn is_default(&self) -> bool {
        *self == PlacementSettings::default()
    }

    /// Whether the settings make sense.
    pub fn validate(&self) -> Result<(), String> {
        if !(1..=7).contains(&self.replicas) {
            return Err(format!("placement.replicas {} is outside 1..=7", self.replicas));
        }
        if !(1_000..=7 * 86_400_000).contains(&self.down_after_ms) {
            return Err(format!("placement.down_after_ms {} is outside 1 s..=7 days", self.down_after_ms));
        }
        self.groups.validate()
    }

    fn scheduler(&self) -> Settings {
        Settings { down_after_ms: self.down_after_ms, ..Settings::default() }
    }
}

/// The ranges this member leads, as reports.
pub async fn local_reports(backend: &Backend) -> Vec<api::RangeReport> {
    backend
        .raft
        .status()
        .await
        .into_iter()
        .filter(|s| s.role == StateRole::Leader && !s.dormant)
        .map(|s| api::RangeReport {
            range_id: s.range_id,
            leader: backend.cfg.node_id,
            term: s.term,
            // Within reach of the log and heard from lately (a node that
            // died a moment ago, the gossip not knowing yet, is not).
            caught_up: s
                .progress
                .iter()
                .filter(|(n, matched, state)| crate::membership::within_reach(*state, *matched, s.commit) && !s.silent.contains(n))
                .map(|(n, ..)| *n)
                .collect(),
            joint: !s.voters_outgoing.is_empty(),
            voters: s.voters,
            learners: s.learners,
        })
        .collect()
}

/// This member's capacity and load: the file system under its data
/// directory (zero when it cannot be read), its engine's files, and the
/// replicas it holds and leads.
pub async fn local_load(backend: &Backend) -> api::NodeLoad {
    let statuses = backend.raft.status().await;
    let (capacity, available) = match nix::sys::statvfs::statvfs(&backend.cfg.data_dir) {
        Ok(s) => {
            let unit = s.fragment_size();
            (s.blocks().saturating_mul(unit), s.blocks_available().saturating_mul(unit))
        }
        Err(e) => {
            tracing::warn!(dir = %backend.cfg.data_dir.display(), "reading the data directory's file system: {e}");
            (0, 0)
        }
    };
    api::NodeLoad {
        disk_capacity_bytes: capacity,
        disk_available_bytes: available,
        engine_bytes: backend.alarms.engine_bytes(),
        replicas: statuses.iter().filter(|s| !s.dormant).count() as u64,
        leaders: statuses.iter().filter(|s| !s.dormant && s.role == StateRole::Leader).count() as u64,
        writes: backend
            .write_counts
            .snapshot()
            .into_iter()
            .map(|(prefix, count, reads)| api::PrefixWrites { prefix, count, reads })
            .collect(),
    }
}

/// What a round learns from the members: each range's report (the newest
/// term's), each member's load, and the members that did not answer, with
/// why.
#[derive(Debug, Default)]
pub struct Gathered {
    pub reports: BTreeMap<u64, api::RangeReport>,
    pub loads: BTreeMap<u64, api::NodeLoad>,
    pub unreachable: Vec<(u64, String)>,
}

/// Whether every member that is not dead answered: only then are the
/// counts whole enough to plan from.
fn complete(backend: &Backend, unreachable: &[(u64, String)]) -> bool {
    unreachable.iter().all(|(n, _)| backend.node(*n).is_some_and(|r| r.liveness == Liveness::Dead))
}

/// Every member's reports and load ([`Gathered`]). Members the gossip
/// holds dead are not asked. Non-empty `count_writes`: the prefixes every
/// member counts writes under from now on.
pub async fn gather(backend: &Backend, count_writes: &[Vec<u8>]) -> Gathered {
    if !count_writes.is_empty() {
        backend.write_counts.watch(count_writes);
    }
    let mut asks = tokio::task::JoinSet::new();
    let mut unreachable = Vec::new();
    let mut reports: Vec<api::RangeReport> = local_reports(backend).await;
    let mut loads = BTreeMap::from([(backend.cfg.node_id, local_load(backend).await)]);
    for n in backend.nodes() {
        if n.id == backend.cfg.node_id {
            continue;
        }
        if n.liveness == Liveness::Dead {
            unreachable.push((n.id, "dead (gossip)".to_string()));
            continue;
        }
        let ch = match backend.channel_to(n.id) {
            Ok(ch) => ch,
            Err(e) => {
                unreachable.push((n.id, e.to_string()));
                continue;
            }
        };
        let id = n.id;
        let count_writes = count_writes.to_vec();
        asks.spawn(async move {
            let mut c = api::internal_client::InternalClient::new(ch);
            let r = tokio::time::timeout(REPORT_TIMEOUT, c.range_reports(api::RangeReportsRequest { count_writes })).await;
            (id, r)
        });
    }
    while let Some(done) = asks.join_next().await {
        match done {
            Ok((id, Ok(Ok(r)))) => {
                let r = r.into_inner();
                reports.extend(r.ranges);
                if let Some(load) = r.load {
                    loads.insert(id, load);
                }
            }
            Ok((id, Ok(Err(s)))) => unreachable.push((id, s.message().to_string())),
            Ok((id, Err(_))) => unreachable.push((id, format!("no answer within {REPORT_TIMEOUT:?}"))),
            Err(e) => unreachable.push((0, e.to_string())),
        }
    }
    let mut by_range: BTreeMap<u64, api::RangeReport> = BTreeMap::new();
    for r in reports {
        if by_range.get(&r.range_id).is_none_or(|old| r.term > old.term) {
            by_range.insert(r.range_id, r);
        }
    }
    unreachable.sort();
    Gathered { reports: by_range, loads, unreachable }
}

/// The scheduler's view: the directory's nodes with the gossip's liveness
/// (dead since it was last heard from) and the reported ranges.
/// Each range's policy a namespace record sets. Ranges without one get
/// `[placement] replicas`.
pub type Policies = BTreeMap<u64, crate::namespace::Policy>;

/// Nodes' administrative states (draining, decommissioned).
pub type Admin = BTreeMap<u64, crate::node_admin::NodeAdmin>;

pub fn view(backend: &Backend, g: &Gathered, policies: &Policies, admin: &Admin, now_ms: u64) -> ClusterView {
    let reports = &g.reports;
    let gossip = backend.gossip.get().map(|g| g.view());
    let heard_ago: BTreeMap<u64, u64> = gossip
        .as_ref()
        .map(|v| v.peers.iter().filter_map(|p| Some((p.node, v.now_ms.saturating_sub(p.last_heard_ms?)))).collect())
        .unwrap_or_default();
    let mut nodes: BTreeMap<u64, NodeView> = backend
        .nodes()
        .into_iter()
        .map(|n| {
            let liveness = if n.id == backend.cfg.node_id { Liveness::Alive } else { n.liveness };
            let dead_since_ms = (liveness == Liveness::Dead).then(|| now_ms.saturating_sub(heard_ago.get(&n.id).copied().unwrap_or(0)));
            // A learner member (not promoted) holds nothing and takes
            // nothing: to the scheduler, a draining node.
            let draining = admin.get(&n.id).is_some_and(|a| a.draining || a.learner);
            let load = g.loads.get(&n.id).map(|l| Load {
                disk_capacity_bytes: l.disk_capacity_bytes,
                disk_available_bytes: l.disk_available_bytes,
                engine_bytes: l.engine_bytes,
                replicas: l.replicas,
                leaders: l.leaders,
            });
            (n.id, NodeView { id: n.id, labels: n.labels, role: n.role, liveness, dead_since_ms, draining, load })
        })
        .collect();
    // A decommissioned node is gone for good: dead long since, so any
    // replica still on it is replaced at once.
    for (id, _) in admin.iter().filter(|(_, a)| a.decommissioned) {
        let labels = nodes.get(id).map(|n| n.labels.clone()).unwrap_or_default();
        let view = NodeView {
            id: *id,
            labels,
            role: meridian_membership::NodeRole::Data,
            liveness: Liveness::Dead,
            dead_since_ms: Some(0),
            draining: true,
            load: None,
        };
        nodes.insert(*id, view);
    }
    let replicas = backend.cfg.placement.replicas;
    let meta_layout = meta_layout(&nodes, replicas);
    // Only ranges the catalog names (once it is read): a dropped
    // namespace's sealed range still reports, and is left alone.
    let catalog: std::collections::BTreeSet<u64> = backend.catalog_replicas().into_iter().map(|(id, _)| id).collect();
    let ranges = reports
        .values()
        .filter(|r| catalog.is_empty() || catalog.contains(&r.range_id))
        .map(|r| {
            let policy = policies.get(&r.range_id);
            let geo = policy.and_then(|p| p.geo.as_ref());
            (
                r.range_id,
                RangeView {
                    id: r.range_id,
                    voters: r.voters.iter().copied().collect(),
                    learners: r.learners.iter().copied().collect(),
                    leader: r.leader,
                    caught_up: r.caught_up.iter().copied().collect(),
                    joint: r.joint,
                    replicas: policy.map_or(replicas, |p| p.replicas),
                    constraints: policy.map(|p| p.constraints.clone()).unwrap_or_default(),
                    pinned: r.range_id == META_RANGE_ID,
                    region_voters: if r.range_id == META_RANGE_ID {
                        meta_layout.clone()
                    } else {
                        geo.map(|g| g.region_voters.clone()).unwrap_or_default()
                    },
                    home_region: geo.map(|g| g.home_region.clone()),
                    read_regions: geo.map(|g| g.read_regions.clone()).unwrap_or_default(),
                },
            )
        })
        .collect();
    ClusterView { nodes, ranges, running: BTreeMap::new() }
}

/// Voters of the meta range per region, so that it survives a region's
/// loss: with three regions or more holding data nodes, `replicas` spread
/// round-robin over the three with the most hosts (3: one each; 5: two,
/// two, one), no region given more voters than it has hosts. With fewer
/// regions — or when the hosts cannot spread `replicas` so that no region
/// holds a majority — none (the voters go anywhere, zones spread). Dead
/// nodes count, so a lost region does not reshuffle the layout.
pub fn meta_layout(nodes: &BTreeMap<u64, NodeView>, replicas: usize) -> BTreeMap<String, usize> {
    let mut hosts: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    for n in nodes.values().filter(|n| n.role == meridian_membership::NodeRole::Data && !n.labels.region.is_empty()) {
        hosts.entry(n.labels.region.as_str()).or_default().insert(n.labels.host.as_str());
    }
    if hosts.len() < 3 {
        return BTreeMap::new();
    }
    let mut regions: Vec<(&str, usize)> = hosts.iter().map(|(r, h)| (*r, h.len())).collect();
    regions.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    regions.truncate(3);
    let mut layout: BTreeMap<String, usize> = BTreeMap::new();
    let mut placed = 0;
    while placed < replicas {
        let before = placed;
        for (region, cap) in &regions {
            let n = layout.entry(region.to_string()).or_default();
            if placed < replicas && *n < *cap {
                *n += 1;
                placed += 1;
            }
        }
        if placed == before {
            break;
        }
    }
    // A layout short of `replicas`, or one region holding a majority (its
    // loss would take the catalog with it): none, the voters go anywhere.
    if placed < replicas || layout.values().any(|n| 2 * n >= replicas) {
        return BTreeMap::new();
    }
    layout
}

/// One operator as `GET /v1/placement/plan` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorReport {
    pub range_id: u64,
    /// `add`, `replace`, `remove`, `transfer-leader` or `add-learner`.
    pub kind: String,
    pub from: Option<u64>,
    pub to: Option<u64>,
    pub steps: Vec<String>,
    pub reason: String,
}

/// The plan as JSON-ready reports.
pub fn report(plan: &Plan) -> (Vec<OperatorReport>, Vec<(u64, String)>) {
    let ops = plan
        .operators
        .iter()
        .map(|o| {
            let (kind, from, to) = match o.kind {
                Kind::Add { to } => ("add", None, Some(to)),
                Kind::Replace { from, to } => ("replace", Some(from), Some(to)),
                Kind::Remove { from } => ("remove", Some(from), None),
                Kind::TransferLeader { to } => ("transfer-leader", None, Some(to)),
                Kind::AddLearner { to } => ("add-learner", None, Some(to)),
            };
            OperatorReport {
                range_id: o.range_id,
                kind: kind.into(),
                from,
                to,
                steps: o.steps.iter().map(ToString::to_string).collect(),
                reason: o.reason.clone(),
            }
        })
        .collect();
    (ops, plan.blocked.clone())
}

/// What the scheduler would do now (nothing is executed).
pub async fn dry_run(backend: &Backend) -> serde_json::Value {
    let g = gather(backend, &[]).await;
    let (reports, unreachable) = (&g.reports, &g.unreachable);
    let now_ms = crate::backend::wall_ms().max(0) as u64;
    let policies = crate::namespace::policies(backend).await.unwrap_or_default();
    let admin = crate::node_admin::states(backend, false).await.unwrap_or_default();
    let mut v = view(backend, &g, &policies, &admin, now_ms);
    // What this node's driver runs already is not planned again.
    v.running = lock(&backend.placement.running).iter().map(|(id, r)| (*id, r.op.kind)).collect();
    let plan = schedule(&v, &backend.cfg.placement.scheduler(), now_ms);
    let (operators, blocked) = report(&plan);
    let replicas = v.replica_counts();
    let leaders = v.leader_counts();
    let nodes: Vec<serde_json::Value> = v
        .nodes
        .values()
        .map(|n| {
            serde_json::json!({
                "id": n.id,
                "state": crate::gossip::state_name(n.liveness),
                "eligible": n.eligible(),
                "takes_replicas": n.takes_replicas(),
                // Added by `member add --learner`, not promoted yet.
                "learner": admin.get(&n.id).is_some_and(|a| a.learner),
                "replicas": replicas.get(&n.id).copied().unwrap_or(0),
                "leaders": leaders.get(&n.id).copied().unwrap_or(0),
                // Its own report (absent until it answered a round).
                "load": n.load.map(|l| serde_json::json!({
                    "disk_capacity_bytes": l.disk_capacity_bytes,
                    "disk_available_bytes": l.disk_available_bytes,
                    "disk_full": l.disk_full(),
                    "engine_bytes": l.engine_bytes,
                    "replicas": l.replicas,
                    "leaders": l.leaders,
                })),
            })
        })
        .collect();
    serde_json::json!({
        "node_id": backend.cfg.node_id,
        "executed": false,
        "execute": backend.cfg.placement.execute,
        // With a live member unheard, its ranges are missing from the
        // counts: the driver plans nothing then.
        "complete": complete(backend, unreachable),
        "nodes": nodes,
        "ranges_reported": reports.len(),
        "unreachable": unreachable.iter().map(|(n, why)| serde_json::json!({"node_id": n, "why": why})).collect::<Vec<_>>(),
        "operators": operators,
        // Operators this node's driver runs now (as the meta range's
        // leader): not in `operators`.
        "running": v.running.len(),
        "blocked": blocked.iter().map(|(r, why)| serde_json::json!({"range_id": r, "why": why})).collect::<Vec<_>>(),
    })
}

/// How often the driver advances operators and plans.
pub const DRIVE_EVERY: Duration = Duration::from_secs(2);
/// ... while operators run: each advances a step a round, so a replica
/// replaced (about four steps) takes about 2 s rather than 8.
pub const DRIVE_BUSY: Duration = Duration::from_millis(500);
/// How long one round may spend issuing steps.
const ROUND_BUDGET: Duration = Duration::from_secs(10);
/// Finished operators remembered for `GET /v1/placement/operators`.
const MAX_FINISHED: usize = 64;

/// One operator as the driver lists it.
#[derive(Debug, Clone, Serialize)]
pub struct OperatorState {
    #[serde(flatten)]
    pub op: OperatorReport,
    /// The step it is at (index into `steps`; `steps.len()` once done).
    pub at: usize,
    /// `running`, `done` or `rolled back: …`.
    pub state: String,
    pub started_ms: u64,
}

/// The operators this node's driver runs and ran.
#[derive(Default)]
pub struct Driver {
    running: Mutex<BTreeMap<u64, Running>>,
    finished: Mutex<VecDeque<OperatorState>>,
    started: Mutex<BTreeMap<u64, u64>>,
    /// The merge or split of a group under way (one at a time), listed as
    /// running until it is recorded as finished.
    group_change: Mutex<Option<OperatorState>>,
    /// Merges and splits of groups.
    pub groups: crate::groups::GroupDriver,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn op_report(op: &Operator) -> OperatorReport {
    report(&Plan { operators: vec![op.clone()], blocked: Vec::new() }).0.remove(0)
}

impl Driver {
    /// Running operators, then finished ones (newest first).
    pub fn list(&self) -> Vec<OperatorState> {
        let started = lock(&self.started).clone();
        let mut v: Vec<OperatorState> = lock(&self.running)
            .iter()
            .map(|(id, r)| OperatorState {
                op: op_report(&r.op),
                at: r.at,
                state: "running".into(),
                started_ms: started.get(id).copied().unwrap_or(0),
            })
            .collect();
        v.extend(lock(&self.group_change).iter().cloned());
        v.extend(lock(&self.finished).iter().rev().cloned());
        v
    }

    /// Lists a merge or split of a group as running (until
    /// [`Driver::record_finished`] lists its outcome).
    pub fn group_change_started(&self, s: OperatorState) {
        *lock(&self.group_change) = Some(s);
    }

    fn finish(&self, r: &Running, state: String) {
        let started_ms = lock(&self.started).remove(&r.op.range_id).unwrap_or(0);
        self.record_finished(OperatorState { op: op_report(&r.op), at: r.at, state, started_ms });
    }

    /// Lists a finished operator (the newest 64 stay).
    pub fn record_finished(&self, s: OperatorState) {
        let mut running = lock(&self.group_change);
        if running.as_ref().is_some_and(|r| r.op.kind == s.op.kind) {
            *running = None;
        }
        drop(running);
        let mut f = lock(&self.finished);
        if f.len() >= MAX_FINISHED {
            f.pop_front();
        }
        f.push_back(s);
    }
}

/// Prefix of the running operators' records in the meta range (one per
/// range, JSON of [`Running`]): what the next leader of the meta range
/// takes over, so a failover of the driver loses no decision.
pub const OP_PREFIX: &[u8] = b"\0meridian/op/";

fn op_key(range_id: u64) -> Vec<u8> {
    let mut k = OP_PREFIX.to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

/// Records `r` (started, or moved to another step).
async fn record_op(backend: &Backend, r: &Running) -> Result<(), ApiError> {
    let value = serde_json::to_vec(r).map_err(|e| ApiError::Internal(e.to_string()))?;
    backend.execute(META_RANGE_ID, c::Op::Put(c::PutOp { key: op_key(r.op.range_id), value, ..Default::default() })).await?;
    Ok(())
}

/// Forgets the record of `range_id`'s operator (done or rolled back); a
/// failure is logged (the next leader finds the operator done and drops
/// it then).
async fn forget_op(backend: &Backend, range_id: u64) {
    let op = c::Op::DeleteRange(c::DeleteOp { key: op_key(range_id), ..Default::default() });
    if let Err(e) = backend.execute(META_RANGE_ID, op).await {
        tracing::warn!(range = range_id, "forgetting a finished operator's record: {e}");
    }
}

/// The operators recorded as running (by an earlier leader of the meta
/// range, or by this node before it lost the leadership).
async fn recorded_ops(backend: &Backend) -> Result<BTreeMap<u64, Running>, ApiError> {
    let op = c::RangeOp { key: OP_PREFIX.to_vec(), range_end: crate::routing::prefix_end(OP_PREFIX), ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), true).await?;
    let mut out = BTreeMap::new();
    for kv in a.range.map(|r| r.kvs).unwrap_or_default() {
        match serde_json::from_slice::<Running>(&kv.value) {
            Ok(r) => {
                out.insert(r.op.range_id, r);
            }
            Err(e) => tracing::warn!("undecodable operator record {:?}: {e}", String::from_utf8_lossy(&kv.key)),
        }
    }
    Ok(out)
}

/// One step on this node, which must lead the range (`Internal.RangeStep`).
pub async fn apply_step(backend: &Backend, range_id: u64, step: &str, node: u64) -> Result<(), ApiError> {
    let op = match step {
        "add-learner" => MemberOp::AddLearner,
        "promote" => MemberOp::Promote,
        "remove" => MemberOp::Remove,
        "transfer-leader" => return backend.raft.transfer_leader(range_id, node).await,
        other => {
            return Err(ApiError::Invalid(format!("unknown placement step {other:?}: add-learner, promote, remove or transfer-leader")))
        }
    };
    crate::membership::change(backend, range_id, op, node).await.map(|_| ())
}

/// Issues `step` of an operator on `range` through its leader.
async fn issue(backend: &Backend, range: &RangeView, step: Step) -> Result<(), ApiError> {
    let (name, node) = match step {
        Step::CatchUp(_) => return Ok(()),
        Step::AddLearner(n) => ("add-learner", n),
        Step::Promote(n) => ("promote", n),
        Step::Remove(n) => ("remove", n),
        Step::TransferLeader(n) => ("transfer-leader", n),
    };
    if range.leader == backend.cfg.node_id {
        return apply_step(backend, range.id, name, node).await;
    }
    if range.leader == 0 {
        return Err(ApiError::NoLeader { range_id: range.id });
    }
    let mut c = api::internal_client::InternalClient::new(backend.channel_to(range.leader)?);
    let req = api::RangeStepRequest { range_id: range.id, step: name.into(), node_id: node };
    // The channel's own deadline (10 s) bounds the call.
    c.range_step(crate::backend::forwarded(req)).await.map(|_| ()).map_err(|s| ApiError::from_status(&s))
}

/// The driver's loop: on the meta range's leader, with `execute` on,
/// every [`DRIVE_EVERY`] ([`DRIVE_BUSY`] while operators run): advance every running operator by a step, then
/// start what the scheduler plans. Steps go out one at a time (bounded
/// work per round); a node that loses the meta range's leadership drops
/// its operators (their leftovers are the next leader's orphans).
pub async fn drive(backend: Arc<Backend>) {
    let settings = backend.cfg.placement.scheduler();
    let driver = &backend.placement;
    let leading = || async { backend.brief(META_RANGE_ID).await.is_some_and(|b| b.leading) };
    // When each running operator's range was last reported.
    let mut reported: BTreeMap<u64, u64> = BTreeMap::new();
    // Whether this node took over the recorded operators since it last
    // became the meta range's leader.
    let mut took_over = false;
    let resuming = Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        let busy = !lock(&driver.running).is_empty();
        tokio::time::sleep(if busy { DRIVE_BUSY } else { DRIVE_EVERY }).await;
        if !leading().await {
            // Their records stay: the next leader takes them over.
            driver.groups.reset();
            let dropped = std::mem::take(&mut *lock(&driver.running));
            for r in dropped.values() {
                driver.finish(r, "handed over: this node no longer leads the meta range".into());
            }
            took_over = false;
            continue;
        }
        if !took_over {
            match recorded_ops(&backend).await {
                Ok(ops) => {
                    let now = crate::backend::wall_ms().max(0) as u64;
                    let mut running = lock(&driver.running);
                    for (id, r) in ops {
                        if let std::collections::btree_map::Entry::Vacant(e) = running.entry(id) {
                            tracing::info!(range = id, reason = %r.op.reason, at = r.at, "placement operator taken over");
                            lock(&driver.started).insert(id, now);
                            e.insert(r);
                        }
                    }
                    took_over = true;
                }
                Err(e) => {
                    tracing::warn!("placement round skipped: reading the recorded operators: {e}");
                    continue;
                }
            }
        }
        // Policies unread: no plan (defaults could move a namespace's
        // replicas against its own policy).
        let records = match crate::namespace::records(&backend, false).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("placement round skipped: reading the namespace records: {e}");
                continue;
            }
        };
        let counted = if backend.cfg.placement.groups.enabled { crate::groups::counted(&records) } else { Vec::new() };
        let g = gather(&backend, &counted).await;
        let now = crate::backend::wall_ms().max(0) as u64;
        let policies = crate::namespace::policies_of(&records);
        let admin = match crate::node_admin::states(&backend, false).await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("placement round skipped: reading node states: {e}");
                continue;
            }
        };
        // Creates and drops cut short are finished, and removed members
        // whose drain is done decommissioned, beside the rounds (each step
        // may wait up to its settle bound), one pass at a time.
        if !resuming.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let (b, flag, admin) = (backend.clone(), resuming.clone(), admin.clone());
            tokio::spawn(async move {
                crate::namespace::resume(&b).await;
                crate::node_admin::finish_removals(&b, &admin).await;
                flag.store(false, std::sync::atomic::Ordering::Release);
            });
        }
        let mut v = view(&backend, &g, &policies, &admin, now);
        // Steps of one round go out within this bound; the rest wait for
        // the next round (a slow round must not outlive the leadership).
        let round_ends = tokio::time::Instant::now() + ROUND_BUDGET;
        let mut still_leading = true;
        let ids: Vec<u64> = lock(&driver.running).keys().copied().collect();
        for id in ids {
            let Some(range) = v.ranges.get(&id).cloned() else {
                // Not reported (its leader unreachable): given up once
                // unheard of for a step's timeout.
                let since = *reported.entry(id).or_insert(now);
                if now.saturating_sub(since) > settings.step_timeout_ms {
                    let gone = lock(&driver.running).remove(&id);
                    if let Some(r) = gone {
                        forget_op(&backend, id).await;
                        driver.finish(&r, "abandoned: the range was not reported".into());
                    }
                    reported.remove(&id);
                }
                continue;
            };
            reported.insert(id, now);
            if tokio::time::Instant::now() >= round_ends {
                break;
            }
            if !leading().await {
                still_leading = false;
                break;
            }
            let (progress, moved) = {
                let mut running = lock(&driver.running);
                let Some(r) = running.get_mut(&id) else { continue };
                let at = r.at;
                let p = r.advance(&range, &v, now, settings.step_timeout_ms);
                (p, (r.at != at).then(|| r.clone()))
            };
            // A step further: recorded, so a new leader times it from its start.
            if let (Some(r), Progress::Issue(_) | Progress::Hold(_)) = (moved, &progress) {
                if let Err(e) = record_op(&backend, &r).await {
                    tracing::debug!(range = id, "recording an operator's progress: {e}");
                }
            }
            match progress {
                Progress::Issue(step) => {
                    if let Err(e) = issue(&backend, &range, step).await {
                        tracing::info!(range = id, %step, "placement step not done yet: {e}");
                    }
                }
                Progress::Hold(step) => tracing::debug!(range = id, %step, "placement step held: it would leave no live quorum"),
                Progress::Done => {
                    let done = lock(&driver.running).remove(&id);
                    if let Some(r) = done {
                        tracing::info!(range = id, reason = %r.op.reason, "placement operator done");
                        forget_op(&backend, id).await;
                        driver.finish(&r, "done".into());
                    }
                }
                Progress::RollBack { stalled, undo } => {
                    for s in undo {
                        if let Err(e) = issue(&backend, &range, s).await {
                            tracing::warn!(range = id, step = %s, "undoing a stalled operator: {e}");
                        }
                    }
                    let undone = lock(&driver.running).remove(&id);
                    if let Some(r) = undone {
                        tracing::warn!(range = id, %stalled, "placement operator rolled back");
                        forget_op(&backend, id).await;
                        driver.finish(&r, format!("rolled back: {stalled} stalled"));
                    }
                }
            }
        }
        reported.retain(|id, _| lock(&driver.running).contains_key(id));
        if !still_leading {
            // The next round abandons the operators; nothing new starts.
            continue;
        }
        // Counts with a live member's ranges missing would mislead the
        // balancer: running operators go on, nothing new starts.
        if !complete(&backend, &g.unreachable) {
            tracing::info!(unreachable = ?g.unreachable, "placement: members did not report; planning nothing this round");
            continue;
        }
        crate::groups::round(&backend, &records, &g, now).await;
        v.running = lock(&driver.running).iter().map(|(id, r)| (*id, r.op.kind)).collect();
        let plan = schedule(&v, &settings, now);
        for op in plan.operators {
            // Recorded before its first step, so no decision is lost with
            // this node.
            let r = Running::start(op, now);
            if let Err(e) = record_op(&backend, &r).await {
                tracing::info!(range = r.op.range_id, "placement operator not started: recording it failed: {e}");
                continue;
            }
            tracing::info!(range = r.op.range_id, reason = %r.op.reason, "placement operator started");
            lock(&driver.started).insert(r.op.range_id, now);
            lock(&driver.running).insert(r.op.range_id, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(per_region: &[(&str, u64)]) -> BTreeMap<u64, NodeView> {
        let mut out = BTreeMap::new();
        for (region, n) in per_region {
            for _ in 0..*n {
                let id = out.len() as u64 + 1;
                let labels = meridian_membership::Labels { region: region.to_string(), zone: format!("z{id}"), host: format!("h{id}") };
                let view = NodeView {
                    id,
                    labels,
                    role: meridian_membership::NodeRole::Data,
                    liveness: Liveness::Alive,
                    dead_since_ms: None,
                    draining: false,
                    load: None,
                };
                out.insert(id, view);
            }
        }
        out
    }

    #[test]
    fn the_meta_range_spreads_over_three_regions_when_there_are_three() {
        assert!(meta_layout(&nodes(&[("us", 3), ("eu", 3)]), 3).is_empty(), "two regions: anywhere");
        let three = nodes(&[("us", 3), ("eu", 3), ("ap", 1)]);
        assert_eq!(meta_layout(&three, 3), BTreeMap::from([("ap".into(), 1), ("eu".into(), 1), ("us".into(), 1)]));
        assert_eq!(meta_layout(&three, 5), BTreeMap::from([("ap".into(), 1), ("eu".into(), 2), ("us".into(), 2)]));
        let four = nodes(&[("us", 3), ("eu", 3), ("ap", 2), ("sa", 1)]);
        assert_eq!(meta_layout(&four, 5), BTreeMap::from([("ap".into(), 1), ("eu".into(), 2), ("us".into(), 2)]));
        // One big region and two of one host: 5 voters would put 3 in us,
        // a majority; and 3 voters in regions of one host each fit.
        let lopsided = nodes(&[("us", 3), ("eu", 1), ("ap", 1)]);
        assert!(meta_layout(&lopsided, 5).is_empty(), "no layout that survives us's loss");
        assert_eq!(meta_layout(&lopsided, 3).values().sum::<usize>(), 3);
    }

    /// A running operator's record reads back as the operator it was, at
    /// the step it was at: what a new leader of the meta range takes over.
    #[test]
    fn an_operator_record_reads_back_whole() {
        let op = Operator {
            range_id: 7,
            kind: Kind::Replace { from: 3, to: 4 },
            steps: vec![Step::AddLearner(4), Step::CatchUp(4), Step::Promote(4), Step::TransferLeader(4), Step::Remove(3)],
            reason: "node 3 is draining".into(),
        };
        let mut r = Running::start(op, 1_000);
        r.at = 3;
        let back: Running = serde_json::from_slice(&serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(back, r);
        assert_eq!(op_key(7).strip_prefix(OP_PREFIX), Some(&7u64.to_be_bytes()[..]));
    }
}
