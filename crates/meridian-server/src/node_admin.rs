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
//!
//! etcd's `member add` and `member promote` live here too. `member add`
//! reserves the next node id for a peer address (the record's
//! `reserved_peer`); the node then starts with that id and `--join`, and
//! only a node with that peer address may join under it. With `--learner`
//! the member is a *learner* until `member promote`: it joins and is
//! watched by the gossip, but the placement driver gives it no replica.
//! (Every replica a node receives starts as a Raft learner of its range
//! anyway, promoted by the driver once caught up; the member's learner
//! state is the gate before that.)

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
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Added by `member add` and not joined yet: the peer address
    /// (`host:port`) it must join with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_peer: Option<String>,
    /// A learner member (`member add --learner`) not promoted yet: it
    /// receives no replica.
    #[serde(default)]
    pub learner: bool,
}

impl NodeAdmin {
    /// Whether the placement driver may give the node replicas (as far as
    /// its administrative state goes).
    pub fn takes_replicas(&self) -> bool {
        !self.draining && !self.decommissioned && !self.learner
    }
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
    if write_guarded(backend, id, state, read_at, Vec::new(), extra).await? {
        Ok(())
    } else {
        Err(ApiError::Invalid("another node's drain or decommission changed the cluster meanwhile; nothing was done: retry".into()))
    }
}

/// [`write`], also guarded by `guards`; false (nothing written) when any
/// guard failed.
async fn write_guarded(
    backend: &Backend,
    id: u64,
    state: NodeAdmin,
    read_at: i64,
    guards: Vec<c::Compare>,
    extra: Vec<c::RequestOp>,
) -> Result<bool, ApiError> {
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
    let mut compare = vec![unchanged];
    compare.extend(guards);
    match backend.execute(META_RANGE_ID, c::Op::Txn(c::TxnOp { compare, success, failure: vec![] })).await? {
        c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), .. } => Ok(t.succeeded),
        other => Err(ApiError::Internal(format!("unexpected outcome of an administrative write: {other:?}"))),
    }
}

/// The guard that node `id` has no record in the directory (it never
/// joined).
fn not_joined(id: u64) -> c::Compare {
    c::Compare { result: 0, target: 1, key: crate::meta::node_key(id), number: 0, ..Default::default() }
}

/// Every node's id and peer address: the records in the meta range (this
/// member's copy of the directory may lag a node that just joined
/// through another) and this member's directory (the founding members are
/// in it from their config before they recorded themselves).
async fn directory(backend: &Backend) -> Result<Vec<(u64, String)>, ApiError> {
    let mut nodes = crate::meta::node_peers(backend, true).await?;
    for n in backend.nodes() {
        if !nodes.iter().any(|(id, _)| *id == n.id) {
            nodes.push((n.id, n.peer_addr));
        }
    }
    Ok(nodes)
}

/// Attempts of `member add` and `member remove` when a concurrent change
/// of the administrative records or the directory won.
const MEMBER_ATTEMPTS: usize = 4;

/// The node's state now, every node's, and the revision they were read
/// at; refuses unknown and decommissioned nodes.
async fn current(backend: &Backend, id: u64) -> Result<(NodeAdmin, BTreeMap<u64, NodeAdmin>, i64), ApiError> {
    let (all, read_at) = read_states(backend, true).await?;
    let state = all.get(&id).cloned().unwrap_or_default();
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
    for _ in 0..MEMBER_ATTEMPTS {
        let (all, read_at) = read_states(backend, true).await?;
        let state = all.get(&id).cloned().unwrap_or_default();
        if state.decommissioned {
            // As etcd answers for a member removed already.
            return Err(ApiError::MemberNotFound);
        }
        let joined = directory(backend).await?.iter().any(|(n, _)| *n == id);
        if state.reserved_peer.is_none() || joined {
            return drain_then(backend, id, true).await;
        }
        // An added member that never joined holds nothing: its id is
        // retired at once — unless it joins meanwhile (then it drains).
        if write_guarded(backend, id, NodeAdmin { decommissioned: true, ..state }, read_at, vec![not_joined(id)], Vec::new()).await? {
            info!(node = id, "added member removed before it joined");
            return status(backend, id).await;
        }
    }
    Err(ApiError::Invalid("the cluster's members changed meanwhile; nothing was done: retry".into()))
}

/// The peer address (`host:port`) of etcd's `member add` peer URLs:
/// exactly one, `http://` or `https://` (a Meridian node has one peer
/// address).
pub fn peer_addr_of(urls: &[String]) -> Result<String, ApiError> {
    let bad = |why: &str| {
        info!(?urls, "member add refused: {why}");
        ApiError::Invalid("given member URLs are invalid".into())
    };
    let [url] = urls else {
        return Err(bad("a Meridian node has exactly one peer address"));
    };
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://")).ok_or_else(|| bad("not an http(s) URL"))?;
    let addr = rest.strip_suffix('/').unwrap_or(rest);
    meridian_membership::check_host_port(addr).map_err(|e| bad(&e))?;
    Ok(addr.to_string())
}

/// Why `member add` of `peer` is refused by what the cluster has (the
/// directory's `(id, peer address)` pairs and the administrative records),
/// if it is; else the id the new member gets: one above every id ever
/// used (decommissioned ones included, never handed out again).
pub fn add_refusal(nodes: &[(u64, String)], admin: &BTreeMap<u64, NodeAdmin>, peer: &str) -> Result<u64, ApiError> {
    let taken =
        nodes.iter().any(|(_, p)| p == peer) || admin.values().any(|a| !a.decommissioned && a.reserved_peer.as_deref() == Some(peer));
    if taken {
        return Err(ApiError::PeerUrlExists);
    }
    let highest = nodes.iter().map(|(id, _)| *id).chain(admin.keys().copied()).max().unwrap_or(0);
    highest.checked_add(1).ok_or_else(|| ApiError::Invalid("no node id left".into()))
}

/// etcd's `member add`: reserves the next node id for a node with peer
/// address `peer`, a learner until promoted when `learner`. Answers the id.
pub async fn add(backend: &Backend, peer: &str, learner: bool) -> Result<u64, ApiError> {
    for _ in 0..MEMBER_ATTEMPTS {
        let (all, read_at) = read_states(backend, true).await?;
        let nodes = directory(backend).await?;
        let id = add_refusal(&nodes, &all, peer)?;
        let state = NodeAdmin { reserved_peer: Some(peer.to_string()), learner, ..NodeAdmin::default() };
        if write_guarded(backend, id, state, read_at, vec![not_joined(id)], Vec::new()).await? {
            info!(node = id, peer, learner, "member added; start it with this node id and --join");
            return Ok(id);
        }
    }
    Err(ApiError::Invalid("the cluster's members changed meanwhile; nothing was done: retry".into()))
}

/// etcd's `member promote`: a learner member that joined and is alive may
/// take replicas from now on.
pub async fn promote(backend: &Backend, id: u64) -> Result<(), ApiError> {
    let (all, read_at) = read_states(backend, true).await?;
    let state = all.get(&id).filter(|a| !a.decommissioned);
    let Some(node) = backend.node(id) else {
        return Err(match state {
            Some(a) if a.learner => ApiError::LearnerNotReady,
            Some(a) if a.reserved_peer.is_some() => ApiError::MemberNotLearner,
            _ => ApiError::MemberNotFound,
        });
    };
    let Some(state) = state.filter(|a| a.learner) else {
        return Err(ApiError::MemberNotLearner);
    };
    // Joined, and not down as far as this member's gossip knows (one that
    // has not met it yet says unknown; the driver gives replicas only to
    // a node alive in its own view anyway).
    if id != backend.cfg.node_id && matches!(node.liveness, Liveness::Suspect | Liveness::Dead) {
        return Err(ApiError::LearnerNotReady);
    }
    write(backend, id, NodeAdmin { learner: false, ..state.clone() }, read_at, Vec::new()).await?;
    info!(node = id, "learner member promoted: it takes replicas from now on");
    Ok(())
}

/// A node that joined under an id `member add` reserved: the reservation
/// is spent (best effort: a stale one only names the joined node's own
/// address, which the directory holds anyway).
pub async fn joined(backend: &Backend, id: u64) {
    let Ok((all, read_at)) = read_states(backend, true).await else { return };
    if let Some(state) = all.get(&id).filter(|a| a.reserved_peer.is_some()) {
        if let Err(e) = write(backend, id, NodeAdmin { reserved_peer: None, ..state.clone() }, read_at, Vec::new()).await {
            tracing::debug!(node = id, "the spent member reservation stays: {e}");
        }
    }
}

/// Why node `id` may not join with peer address `peer`, by what `member
/// add` reserved, if it may not.
pub fn reservation_refusal(admin: &BTreeMap<u64, NodeAdmin>, id: u64, peer: &str) -> Option<ApiError> {
    if let Some(reserved) = admin.get(&id).and_then(|a| a.reserved_peer.as_deref()).filter(|r| *r != peer) {
        return Some(ApiError::Membership(format!(
            "node id {id} was added (member add) for peer address {reserved}, not {peer}; start the node with that address or another id"
        )));
    }
    let other = admin.iter().find(|(other, a)| **other != id && !a.decommissioned && a.reserved_peer.as_deref() == Some(peer));
    other.map(|(other, _)| {
        ApiError::Membership(format!("peer address {peer} was added (member add) as node {other}: start the node with node id {other}"))
    })
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
            .filter(|n| admin.get(&n.id).is_none_or(NodeAdmin::takes_replicas))
            .map(|n| n.id)
            .collect();
        let policies = crate::namespace::policies(backend).await?;
        let (reports, _) = catalog_reports(backend).await?;
        for r in reports.values().filter(|r| r.voters.contains(&id)) {
            let wanted = policies.get(&r.range_id).map_or(backend.cfg.placement.replicas, |p| p.replicas);
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
    let state = states(backend, true).await?.get(&id).cloned().unwrap_or_default();
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
    write(backend, id, NodeAdmin { decommissioned: true, ..NodeAdmin::default() }, read_at, vec![delete]).await?;
    backend.forget_node(id);
    info!(node = id, "decommissioned");
    status(backend, id).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reserved(peer: &str, learner: bool) -> NodeAdmin {
        NodeAdmin { reserved_peer: Some(peer.into()), learner, ..NodeAdmin::default() }
    }

    #[test]
    fn a_peer_url_is_one_http_url_with_a_host_and_port() {
        let one = |u: &str| peer_addr_of(&[u.to_string()]);
        assert_eq!(one("http://10.0.0.5:2380").unwrap(), "10.0.0.5:2380");
        assert_eq!(one("https://node-5.meridian:2380/").unwrap(), "node-5.meridian:2380");
        let bad = ApiError::Invalid("given member URLs are invalid".into());
        for u in ["10.0.0.5:2380", "http://10.0.0.5", "unix:///tmp/x", "http://:2380", ""] {
            assert_eq!(one(u), Err(bad.clone()), "{u}");
        }
        assert_eq!(peer_addr_of(&[]), Err(bad.clone()));
        assert_eq!(peer_addr_of(&["http://a:1".into(), "http://b:1".into()]), Err(bad));
    }

    #[test]
    fn an_added_member_gets_an_id_never_used_and_a_peer_address_nobody_has() {
        let nodes = vec![(1, "h1:2380".to_string()), (2, "h2:2380".to_string()), (3, "h3:2380".to_string())];
        let mut admin = BTreeMap::new();
        assert_eq!(add_refusal(&nodes, &admin, "h4:2380"), Ok(4));
        assert_eq!(add_refusal(&nodes, &admin, "h2:2380"), Err(ApiError::PeerUrlExists));
        // An id decommissioned (or reserved) is never handed out again.
        admin.insert(7, NodeAdmin { decommissioned: true, ..reserved("h7:2380", false) });
        assert_eq!(add_refusal(&nodes, &admin, "h7:2380"), Ok(8), "a removed reservation frees its address, not its id");
        admin.insert(8, reserved("h8:2380", true));
        assert_eq!(add_refusal(&nodes, &admin, "h8:2380"), Err(ApiError::PeerUrlExists));
        assert_eq!(add_refusal(&nodes, &admin, "h9:2380"), Ok(9));
    }

    #[test]
    fn only_the_reserved_address_joins_under_a_reserved_id() {
        let admin: BTreeMap<u64, NodeAdmin> = [(4, reserved("h4:2380", true))].into();
        assert_eq!(reservation_refusal(&admin, 4, "h4:2380"), None);
        let wrong = reservation_refusal(&admin, 4, "h9:2380").expect("another address");
        assert!(wrong.to_string().contains("h4:2380"), "{wrong}");
        let other = reservation_refusal(&admin, 5, "h4:2380").expect("the address is node 4's");
        assert!(other.to_string().contains("node id 4"), "{other}");
        // Nodes nobody reserved anything for join as before.
        assert_eq!(reservation_refusal(&admin, 5, "h5:2380"), None);
    }

    #[test]
    fn a_learner_a_draining_or_a_decommissioned_node_takes_no_replica() {
        assert!(NodeAdmin::default().takes_replicas());
        assert!(!reserved("h:1", true).takes_replicas());
        assert!(reserved("h:1", false).takes_replicas());
        assert!(!NodeAdmin { draining: true, ..NodeAdmin::default() }.takes_replicas());
        assert!(!NodeAdmin { decommissioned: true, ..NodeAdmin::default() }.takes_replicas());
    }
}
