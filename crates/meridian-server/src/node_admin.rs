//! Draining and decommissioning nodes (`meridian node drain|undrain|
//! decommission|status`, HTTP `/v1/nodes/{drain,undrain,decommission,
//! status}?id=N`).
//!
//! A node's administrative state lives in the meta range
//! (`\0meridian/node-admin/<id u64 BE>`, JSON). The placement driver reads
//! it each round: a draining node gets no new replica, and its voters and
//! leaderships are moved to other nodes (rules 4 and 5 of the scheduler).
//! Once it holds no replica, `decommission` removes it from the directory
//! for good (its id is never registered again).

use std::collections::BTreeMap;

use meridian_kv::command as c;
use meridian_membership::{Liveness, NodeRole};
use meridian_proto::meridian::v1 as api;
use serde::{Deserialize, Serialize};
use tracing::info;

use crate::backend::Backend;
use crate::error::ApiError;
use crate::meta::NODE_PREFIX;
use crate::routing::{prefix_end, META_RANGE_ID};

/// Prefix of the administrative records.
pub const ADMIN_PREFIX: &[u8] = b"\0meridian/node-admin/";

/// A node's administrative state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAdmin {
    pub draining: bool,
    pub decommissioned: bool,
    /// Decommissioned by the placement driver once drained (etcd's
    /// `member remove`).
    #[serde(default)]
    pub remove_when_drained: bool,
    /// Wall clock of the last change (information only).
    #[serde(default)]
    pub changed_ms: i64,
}

/// Where a node's drain stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainStatus {
    pub node_id: u64,
    pub draining: bool,
    pub decommissioned: bool,
    /// Ranges with a replica on the node, per their leaders' reports.
    pub replicas: Vec<u64>,
    /// Ranges the node leads.
    pub leaders: Vec<u64>,
    /// Members whose ranges did not report (their replicas may be missing
    /// from `replicas`): the status is complete only when empty.
    pub unreported: Vec<u64>,
}

fn admin_key(id: u64) -> Vec<u8> {
    let mut k = ADMIN_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Every node's administrative state recorded (nodes absent: neither
/// draining nor decommissioned).
pub async fn states(backend: &Backend, linearizable: bool) -> Result<BTreeMap<u64, NodeAdmin>, ApiError> {
    Ok(read_states(backend, linearizable).await?.0)
}

/// [`states`], and the meta range's revision they were read at.
async fn read_states(backend: &Backend, linearizable: bool) -> Result<(BTreeMap<u64, NodeAdmin>, i64), ApiError> {
    let op = c::RangeOp { key: ADMIN_PREFIX.to_vec(), range_end: prefix_end(ADMIN_PREFIX), ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), linearizable).await?;
    let revision = a.revision;
    let mut out = BTreeMap::new();
    for kv in a.range.map(|r| r.kvs).unwrap_or_default() {
        let Some(id) = kv.key.strip_prefix(ADMIN_PREFIX).and_then(|b| <[u8; 8]>::try_from(b).ok()).map(u64::from_be_bytes) else {
            continue;
        };
        if let Ok(s) = serde_json::from_slice::<NodeAdmin>(&kv.value) {
            out.insert(id, s);
        }
    }
    Ok((out, revision))
}

/// Writes node `id`'s state if no node's state changed since `read_at`
/// (two drains checked against each other's old state must not both
/// pass); refused otherwise, changing nothing.
async fn write(backend: &Backend, id: u64, state: NodeAdmin, read_at: i64, extra: Vec<c::RequestOp>) -> Result<(), ApiError> {
    let value =
        serde_json::to_vec(&NodeAdmin { changed_ms: crate::backend::wall_ms(), ..state }).map_err(|e| ApiError::Internal(e.to_string()))?;
    let mut success = vec![c::RequestOp { kind: Some(c::RequestKind::Put(c::PutOp { key: admin_key(id), value, ..Default::default() })) }];
    success.extend(extra);
    // Every admin record's MOD revision at most the one read (LESS than
    // read_at + 1; none recorded passes too).
    let unchanged = c::Compare {
        result: 2,
        target: 2,
        key: ADMIN_PREFIX.to_vec(),
        range_end: prefix_end(ADMIN_PREFIX),
        number: read_at + 1,
        ..Default::default()
    };
    match backend.execute(META_RANGE_ID, c::Op::Txn(c::TxnOp { compare: vec![unchanged], success, failure: vec![] })).await? {
        c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), .. } if t.succeeded => Ok(()),
        _ => Err(ApiError::Invalid("another node's drain or decommission changed the cluster meanwhile; nothing was done: retry".into())),
    }
}

/// The node's state now, every node's, and the revision they were read
/// at; refuses unknown and decommissioned nodes.
async fn current(backend: &Backend, id: u64) -> Result<(NodeAdmin, BTreeMap<u64, NodeAdmin>, i64), ApiError> {
    let (all, read_at) = read_states(backend, true).await?;
    let state = all.get(&id).copied().unwrap_or_default();
    if state.decommissioned {
        return Err(ApiError::Invalid(format!("node {id} was decommissioned")));
    }
    if backend.node(id).is_none() {
        return Err(ApiError::MemberNotFound);
    }
    Ok((state, all, read_at))
}

/// Leaders' reports of the ranges the catalog names (a dropped
/// namespace's sealed range still reports, and is nobody's to move), and
/// the members that did not report.
async fn catalog_reports(backend: &Backend) -> Result<(BTreeMap<u64, api::RangeReport>, Vec<u64>), ApiError> {
    backend.refresh_routes_now().await?;
    let catalog: std::collections::BTreeSet<u64> = backend.catalog_replicas().into_iter().map(|(id, _)| id).collect();
    let crate::placement::Gathered { mut reports, unreachable, .. } = crate::placement::gather(backend, &[]).await;
    reports.retain(|id, _| catalog.contains(id));
    Ok((reports, unreachable.into_iter().map(|(n, _)| n).collect()))
}

/// etcd's `member remove`: drains node `id` and has the placement driver
/// decommission it once it holds nothing (refused as [`drain`] refuses).
pub async fn remove(backend: &Backend, id: u64) -> Result<DrainStatus, ApiError> {
    drain_then(backend, id, true).await
}

/// Starts draining node `id`: refused (changing nothing) when the
/// placement driver does not run here, or when the other data nodes that
/// can take replicas are fewer than a range with a replica on it needs.
pub async fn drain(backend: &Backend, id: u64) -> Result<DrainStatus, ApiError> {
    drain_then(backend, id, false).await
}

async fn drain_then(backend: &Backend, id: u64, remove: bool) -> Result<DrainStatus, ApiError> {
    let (state, admin, read_at) = current(backend, id).await?;
    if id == backend.cfg.node_id && remove {
        return Err(ApiError::Invalid(format!("node {id} is the member asked: ask another member to remove it")));
    }
    if !backend.cfg.placement.execute {
        return Err(ApiError::Invalid(
            "nothing would move: the placement driver does not run ([placement] execute = false); turn it on on every node to drain".into(),
        ));
    }
    if !state.draining {
        let eligible: Vec<u64> = backend
            .nodes()
            .into_iter()
            .filter(|n| n.id != id && n.role == NodeRole::Data && matches!(n.liveness, Liveness::Alive | Liveness::Unknown))
            .filter(|n| admin.get(&n.id).is_none_or(|a| !a.draining && !a.decommissioned))
            .map(|n| n.id)
            .collect();
        let policies = crate::namespace::policies(backend).await?;
        let (reports, _) = catalog_reports(backend).await?;
        for r in reports.values().filter(|r| r.voters.contains(&id)) {
            let wanted = policies.get(&r.range_id).map_or(backend.cfg.placement.replicas, |p| p.0);
            if eligible.len() < wanted.min(r.voters.len()) {
                return Err(ApiError::Invalid(format!(
                    "draining node {id} would leave range {} with fewer than {} voters: only {} other live data node(s) can take replicas ({eligible:?})",
                    r.range_id,
                    wanted.min(r.voters.len()),
                    eligible.len()
                )));
            }
        }
        write(backend, id, NodeAdmin { draining: true, remove_when_drained: remove, ..state }, read_at, Vec::new()).await?;
        info!(node = id, remove, "drain started");
    } else if remove && !state.remove_when_drained {
        write(backend, id, NodeAdmin { remove_when_drained: true, ..state }, read_at, Vec::new()).await?;
    }
    status(backend, id).await
}

/// Decommissions the nodes `member remove` asked for whose drain is done
/// (run by the placement driver each round; a refusal waits for the next).
pub async fn finish_removals(backend: &Backend, admin: &BTreeMap<u64, NodeAdmin>) {
    for (id, _) in admin.iter().filter(|(_, a)| a.draining && a.remove_when_drained && !a.decommissioned) {
        match decommission(backend, *id).await {
            Ok(_) => info!(node = id, "member removed: drained and decommissioned"),
            Err(e) => tracing::debug!(node = id, "member removal waits: {e}"),
        }
    }
}

/// Stops draining node `id` (what moved stays moved).
pub async fn undrain(backend: &Backend, id: u64) -> Result<DrainStatus, ApiError> {
    let (state, _, read_at) = current(backend, id).await?;
    if state.draining {
        write(backend, id, NodeAdmin { draining: false, remove_when_drained: false, ..state }, read_at, Vec::new()).await?;
        info!(node = id, "drain stopped");
    }
    status(backend, id).await
}

/// Where node `id`'s drain stands.
pub async fn status(backend: &Backend, id: u64) -> Result<DrainStatus, ApiError> {
    let state = states(backend, true).await?.get(&id).copied().unwrap_or_default();
    if !state.decommissioned && backend.node(id).is_none() {
        return Err(ApiError::MemberNotFound);
    }
    let (reports, unreported) = catalog_reports(backend).await?;
    let replicas = reports.values().filter(|r| r.voters.contains(&id) || r.learners.contains(&id)).map(|r| r.range_id).collect();
    let leaders = reports.values().filter(|r| r.leader == id).map(|r| r.range_id).collect();
    Ok(DrainStatus { node_id: id, draining: state.draining, decommissioned: state.decommissioned, replicas, leaders, unreported })
}

/// Removes a drained node from the directory for good: refused while it
/// is not draining or still holds a replica (or a member did not report).
pub async fn decommission(backend: &Backend, id: u64) -> Result<DrainStatus, ApiError> {
    let (state, _, read_at) = current(backend, id).await?;
    if !state.draining {
        return Err(ApiError::Invalid(format!("node {id} is not draining: drain it first (meridian node drain {id})")));
    }
    let st = status(backend, id).await?;
    // The catalog (just read again) must not list the node either: a range
    // without a leader right now does not report.
    let listed: Vec<u64> = backend.catalog_replicas().into_iter().filter(|(_, nodes)| nodes.contains(&id)).map(|(r, _)| r).collect();
    if !listed.is_empty() {
        return Err(ApiError::Invalid(format!(
            "the catalog still lists node {id} in ranges {listed:?}; wait until the drain moved them (meridian node status {id})"
        )));
    }
    // Members that did not report, other than the node itself and dead
    // ones (whose replicas the catalog check covers).
    let silent: Vec<u64> =
        st.unreported.iter().copied().filter(|n| *n != id && backend.node(*n).is_some_and(|r| r.liveness != Liveness::Dead)).collect();
    if !silent.is_empty() {
        return Err(ApiError::Invalid(format!(
            "members {silent:?} did not report their ranges: cannot tell whether node {id} still holds a replica; retry"
        )));
    }
    if !st.replicas.is_empty() {
        return Err(ApiError::Invalid(format!(
            "node {id} still holds {} replica(s) (ranges {:?}); wait until the drain moved them (meridian node status {id})",
            st.replicas.len(),
            st.replicas
        )));
    }
    let mut node_key = NODE_PREFIX.to_vec();
    node_key.extend_from_slice(&id.to_be_bytes());
    let delete = c::RequestOp { kind: Some(c::RequestKind::DeleteRange(c::DeleteOp { key: node_key, ..Default::default() })) };
    write(
        backend,
        id,
        NodeAdmin { draining: false, decommissioned: true, remove_when_drained: false, changed_ms: 0 },
        read_at,
        vec![delete],
    )
    .await?;
    backend.forget_node(id);
    info!(node = id, "decommissioned");
    status(backend, id).await
}
