//! Nodes that join a running cluster (`meridian server --join`).
//!
//! ```text
//!  new node N (no replica)                 any member M
//!   Join{N's record, cluster id or 0} ───► refuse: another cluster, or id taken
//!                                          record N in the meta range (\0meridian/node/N)
//!                                          learn N (its transport dials N from now on)
//!   learn cluster id, nodes, ranges   ◄─── {cluster id, directory, descriptors}
//!   ... every 10 s while N holds no replica of the meta range
//! ```
//!
//! N then shows in `MemberList` and `meridian status` everywhere, and holds
//! no replica until an operator (`meridian members`, later the placement
//! driver) adds it to a range. Once it holds a replica of the meta range it
//! reads the directory from there like every member.

use std::sync::Arc;
use std::time::Duration;

use meridian_membership::{Labels, Liveness, NodeRecord, NodeRole};
use meridian_proto::meridian::v1 as api;
use meridian_storage::RangeDescriptor;
use tracing::{info, warn};

use crate::backend::{forwarded, Backend};
use crate::error::ApiError;
use crate::meta;
use crate::routing::META_RANGE_ID;

/// Pause between join attempts until one succeeds.
const RETRY: Duration = Duration::from_secs(1);
/// How often a joined node asks again (new nodes, moved ranges).
const REFRESH: Duration = Duration::from_secs(10);
/// Bound of one Join call (connect included).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A directory record on the wire.
pub fn node_info(n: &NodeRecord) -> api::NodeInfo {
    api::NodeInfo {
        id: n.id,
        peer_addr: n.peer_addr.clone(),
        client_addr: n.client_addr.clone(),
        http_addr: n.http_addr.clone(),
        gossip_addr: n.gossip_addr.clone(),
        region: n.labels.region.clone(),
        zone: n.labels.zone.clone(),
        host: n.labels.host.clone(),
        role: match n.role {
            NodeRole::Data => "data".into(),
            NodeRole::Witness => "witness".into(),
        },
    }
}

/// A wire record as a directory record (liveness unknown: advice).
pub fn record_of(i: &api::NodeInfo) -> Result<NodeRecord, ApiError> {
    let role = match i.role.as_str() {
        "" | "data" => NodeRole::Data,
        "witness" => NodeRole::Witness,
        other => return Err(ApiError::Invalid(format!("node {}: unknown role {other:?} (data or witness)", i.id))),
    };
    Ok(NodeRecord {
        id: i.id,
        peer_addr: i.peer_addr.clone(),
        client_addr: i.client_addr.clone(),
        http_addr: i.http_addr.clone(),
        gossip_addr: i.gossip_addr.clone(),
        labels: Labels { region: i.region.clone(), zone: i.zone.clone(), host: i.host.clone() },
        role,
        liveness: Liveness::Unknown,
    })
}

/// Why member `backend` refuses `node` (joining, formerly of `cluster_id`
/// or 0), if it does. Pure over what the member knows.
pub fn refusal(backend_cluster: u64, known: Option<&NodeRecord>, node: &NodeRecord, cluster_id: u64) -> Option<ApiError> {
    if backend_cluster == 0 {
        // The catalog is not read yet: the cluster id to hand out is unknown.
        return Some(ApiError::NoLeader { range_id: META_RANGE_ID });
    }
    if cluster_id != 0 && cluster_id != backend_cluster {
        return Some(ApiError::Membership(format!(
            "node {} belongs to cluster {cluster_id:#018x}; this is cluster {backend_cluster:#018x}",
            node.id
        )));
    }
    match known {
        // Another machine claiming a member's id: its certificate would be
        // refused by peers anyway, but clients would be sent to it.
        Some(k) if !k.peer_addr.is_empty() && k.peer_addr != node.peer_addr => Some(ApiError::Membership(format!(
            "node id {} is already registered with peer address {}; give the new node another id",
            node.id, k.peer_addr
        ))),
        _ => None,
    }
}

/// Member side of `Join`: records the node and answers the cluster.
pub async fn handle(backend: &Backend, req: api::JoinRequest) -> Result<api::JoinResponse, ApiError> {
    let info = req.node.ok_or_else(|| ApiError::Invalid("join: no node record".into()))?;
    let node = record_of(&info)?;
    if node.id == 0 {
        return Err(ApiError::Invalid("join: node id 0".into()));
    }
    // Validates the addresses (host:port) before anything is written.
    meridian_membership::NodeDirectory::new().upsert(node.clone()).map_err(|e| ApiError::Invalid(e.to_string()))?;
    if let Some(e) = refusal(backend.cluster_id(), backend.node(node.id).as_ref(), &node, req.cluster_id) {
        return Err(e);
    }
    // A decommissioned id is gone for good.
    let admin = crate::node_admin::states(backend, true).await?;
    if admin.get(&node.id).is_some_and(|a| a.decommissioned) {
        return Err(ApiError::Invalid(format!(
            "join: node {} was decommissioned; start a new node with a new id and an empty data directory",
            node.id
        )));
    }
    if let Some(e) = crate::node_admin::reservation_refusal(&admin, node.id, &node.peer_addr) {
        return Err(e);
    }
    meta::register_node(backend, &node).await?;
    if admin.get(&node.id).is_some_and(|a| a.reserved_peer.is_some()) {
        crate::node_admin::joined(backend, node.id).await;
    }
    let first = backend.node(node.id).is_none();
    backend.learn_node(node.clone())?;
    if first {
        info!(node = node.id, peer = %node.peer_addr, "node joined");
    }
    let catalog = meta::read(backend, true).await?.ok_or(ApiError::NoLeader { range_id: META_RANGE_ID })?;
    Ok(api::JoinResponse {
        cluster_id: catalog.cluster_id,
        nodes: backend.nodes().iter().map(node_info).collect(),
        ranges: catalog.ranges.iter().map(RangeDescriptor::encode).collect(),
    })
}

/// Adopts a member's answer: cluster id, routes, directory.
fn adopt(backend: &Backend, resp: api::JoinResponse) -> Result<(), ApiError> {
    let mut ranges = Vec::with_capacity(resp.ranges.len());
    for raw in resp.ranges.iter().take(meta::MAX_CATALOG_RANGES) {
        ranges.push(RangeDescriptor::decode(raw, 0).map_err(|e| ApiError::Storage(format!("a joined member's descriptor: {e}")))?);
    }
    meta::install(backend, &meta::Catalog { cluster_id: resp.cluster_id, ranges })?;
    for n in resp.nodes.iter().take(meridian_membership::MAX_NODES) {
        if n.id == backend.cfg.node_id {
            continue;
        }
        match record_of(n).and_then(|r| backend.learn_node(r)) {
            Ok(()) => {}
            Err(e) => warn!(node = n.id, "a member's node record refused: {e}"),
        }
    }
    Ok(())
}

async fn call(addr: &str, req: api::JoinRequest) -> Result<api::JoinResponse, ApiError> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ApiError::Invalid(format!("join address {addr}: {e}")))?
        .connect_timeout(CALL_TIMEOUT)
        .timeout(CALL_TIMEOUT);
    let ch = ep.connect().await.map_err(|e| ApiError::Internal(format!("connecting to {addr}: {e}")))?;
    let mut client = api::internal_client::InternalClient::new(ch);
    client.join(forwarded(req)).await.map(|r| r.into_inner()).map_err(|s| ApiError::from_status(&s))
}

/// The joined node's loop: registers through the first `join` address that
/// answers (retrying every second, saying so), then asks again every 10 s
/// for the directory and routes — until this node holds a replica of the
/// meta range, from where it reads them like every member.
pub async fn run_joined(backend: Arc<Backend>) {
    let me = backend.node(backend.cfg.node_id).expect("the directory holds this node");
    let addrs = backend.cfg.join.clone();
    let mut joined = false;
    let mut attempt: usize = 0;
    loop {
        let statuses = backend.raft.status().await;
        if statuses.iter().any(|s| s.range_id == META_RANGE_ID && !s.dormant) {
            info!("this node holds a replica of the meta range now; the directory is read from it");
            crate::server::refresh_from_meta(backend).await;
            return;
        }
        let addr = &addrs[attempt % addrs.len()];
        attempt += 1;
        let req = api::JoinRequest { node: Some(node_info(&me)), cluster_id: backend.cluster_id() };
        match call(addr, req).await.and_then(|r| adopt(&backend, r)) {
            Ok(()) => {
                if !joined {
                    info!(via = %addr, cluster_id = %format!("{:#018x}", backend.cluster_id()), nodes = backend.nodes().len(), "joined the cluster; holding no replica until added to a range");
                }
                joined = true;
                attempt -= 1; // stay with the member that answered
            }
            Err(e @ ApiError::Membership(_)) => {
                // Refused for good (another cluster, an id taken): say so
                // loudly, and keep asking in case an operator fixes it.
                warn!(via = %addr, "join refused: {e}");
            }
            Err(e) if !joined || attempt.is_multiple_of(30) => warn!(via = %addr, "joining: {e}; retrying"),
            Err(_) => {}
        }
        tokio::time::sleep(if joined { REFRESH } else { RETRY }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: u64, peer: &str) -> NodeRecord {
        NodeRecord {
            id,
            peer_addr: peer.into(),
            client_addr: "localhost:2379".into(),
            http_addr: "localhost:8080".into(),
            gossip_addr: String::new(),
            labels: Labels { region: "r".into(), zone: "z".into(), host: "h".into() },
            role: NodeRole::Data,
            liveness: Liveness::Unknown,
        }
    }

    #[test]
    fn records_roundtrip_through_the_wire() {
        let r = rec(4, "meridian-4.meridian:2380");
        assert_eq!(record_of(&node_info(&r)).unwrap(), r);
        let mut bad = node_info(&r);
        bad.role = "arbiter".into();
        assert!(record_of(&bad).unwrap_err().to_string().contains("unknown role"));
    }

    #[test]
    fn joins_are_refused_for_another_cluster_a_taken_id_or_an_unread_catalog() {
        let n = rec(4, "n4:2380");
        assert!(refusal(7, None, &n, 0).is_none(), "a first join");
        assert!(refusal(7, Some(&n), &n, 7).is_none(), "the same node again");
        assert!(matches!(refusal(0, None, &n, 0), Some(ApiError::NoLeader { .. })), "no cluster id yet: retry");
        let other = refusal(7, None, &n, 9).unwrap().to_string();
        assert!(other.contains("belongs to cluster"), "{other}");
        let taken = refusal(7, Some(&rec(4, "elsewhere:2380")), &n, 0).unwrap().to_string();
        assert!(taken.contains("already registered with peer address elsewhere:2380"), "{taken}");
        let mut w = n.clone();
        w.role = NodeRole::Witness;
        assert!(refusal(7, None, &w, 0).is_none(), "a witness joins like a data node");
    }
}
