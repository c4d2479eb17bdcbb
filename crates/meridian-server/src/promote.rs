//! `meridian namespace promote NAME --to-region R --accept-data-loss`: the
//! operator's last resort for a zone-survival namespace whose home region
//! is lost (every voter there is down). Its read replica in region `R`
//! becomes the only voter, by force (`meridian_raftstore::Store::force_promote`),
//! and the namespace moves home to `R`:
//!
//! ```text
//!  any member: check the request, the policy, that every voter is down
//!     │        (gossip), and find the read replica in R (catalog)
//!     ▼ (forwarded once to that replica's node)
//!  its node:   force_promote ─► it leads alone ─► RaiseRevision(rev + 2^40)
//!              ─► publish the descriptor (next epoch generation)
//!              ─► record home_region = R ─► report
//! ```
//!
//! What it reports: how far the replica's log reached (everything up to
//! its last index is kept; what the lost voters committed past it is
//! lost), the revision it had, and the floor every later revision and
//! fencing token exceeds. The placement driver then adds voters in `R`
//! (the policy's voter count, zones spread) and read replicas where the
//! policy wants them; the lost region's replicas, when it returns, belong
//! to a superseded lineage and are destroyed (`collect.rs`), or, if their
//! node is added back first, refilled by snapshot.

use std::time::Duration;

use meridian_kv::command as c;
use meridian_proto::meridian::v1 as api;
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::geo::{GeoPolicy, Survival};
use crate::namespace::{record, rewrite, validate_name, NsState};

/// How far the revision jumps at a forced promotion: the lost voters could
/// have granted revisions (and fencing tokens) past what the promoted
/// replica received; every one granted afterwards exceeds them unless the
/// lost region went on for more than 2^40 (about 10^12) revisions.
pub const PROMOTE_REVISION_GAP: i64 = 1 << 40;

/// How long the promoted replica may take to lead, and the forced
/// promotion to be taken while the replica is busy (writes on their way to
/// disk, a snapshot moving into place).
const PROMOTE_WAIT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);

/// What `POST /v1/namespaces/promote` takes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PromoteSpec {
    pub name: String,
    pub to_region: String,
    #[serde(default)]
    pub accept_data_loss: bool,
}

/// What a forced promotion did (see the proto's `NamespacePromoteResponse`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromoteReport {
    pub name: String,
    pub range_id: u64,
    pub node: u64,
    pub region: String,
    pub previous_home_region: String,
    pub applied_index: u64,
    pub last_index: u64,
    pub commit_index: u64,
    pub revision_before: i64,
    pub revision_floor: i64,
    pub epoch: String,
}

/// A forced promotion under way, in the namespace's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromotionIntent {
    /// The node whose read replica is promoted.
    pub node: u64,
    /// The region promoted to.
    pub region: String,
}

/// Which replica a promotion takes, once the request is checked.
struct Plan {
    range_id: u64,
    node: u64,
    geo: GeoPolicy,
    /// The record names this promotion already (a request asked again):
    /// finish it.
    resume: bool,
    record: crate::namespace::NsRecord,
}

/// Checks `spec` against the namespace's record, the gossip's view of its
/// voters and the catalog's replicas: the read replica to promote (or the
/// one a promotion under way named). Refused, changing nothing, otherwise.
async fn plan(backend: &Backend, spec: &PromoteSpec) -> Result<Plan, ApiError> {
    let name = spec.name.as_str();
    validate_name(name)?;
    let region = spec.to_region.trim();
    if region.is_empty() {
        return Err(ApiError::Invalid("to_region (--to-region) names the region whose read replica becomes the voter".into()));
    }
    if !spec.accept_data_loss {
        return Err(ApiError::Invalid(format!(
            "promoting {name:?} by force loses every write its lost voters acknowledged that the read replica in {region} had not received, and lets its fencing tokens jump; pass --accept-data-loss (accept_data_loss: true) to go ahead"
        )));
    }
    let rec = record(backend, name, true).await?.ok_or_else(|| ApiError::NamespaceNotFound(format!("namespace {name:?} not found")))?;
    if let Some(intent) = rec.promotion.clone() {
        if intent.region != region {
            return Err(ApiError::Membership(format!(
                "a forced promotion of {name:?} to {} (node {}'s read replica) is under way: ask for that one again to finish it",
                intent.region, intent.node
            )));
        }
        let geo =
            rec.geo.clone().ok_or_else(|| ApiError::Internal(format!("namespace {name:?} records a promotion but no home region")))?;
        return Ok(Plan { range_id: rec.range_id, node: intent.node, geo, resume: true, record: rec });
    }
    if rec.state != NsState::Ready || rec.split {
        return Err(ApiError::Invalid(format!("namespace {name:?} is {} (a group of its own, ready, is promoted)", rec.state.as_str())));
    }
    let Some(geo) = rec.geo.clone() else {
        return Err(ApiError::Invalid(format!(
            "namespace {name:?} has no home region: a forced promotion is for a zone-survival namespace whose home region is lost"
        )));
    };
    if geo.survival == Survival::Region {
        return Err(ApiError::Invalid(format!(
            "namespace {name:?} survives a region's loss by itself (a surviving region's voter leads, with the others' votes): there is nothing to promote"
        )));
    }
    if region == geo.home_region {
        return Err(ApiError::Invalid(format!("{region} is namespace {name:?}'s home region already")));
    }
    let nodes = backend.nodes();
    if !nodes.iter().any(|n| n.labels.region == region) {
        let mut known: Vec<&str> = nodes.iter().map(|n| n.labels.region.as_str()).filter(|r| !r.is_empty()).collect();
        known.sort_unstable();
        known.dedup();
        return Err(ApiError::Invalid(format!("unknown region {region:?} (regions: {})", known.join(", "))));
    }
    let range_id = rec.range_id;
    if backend.voters_down(range_id).is_none() {
        let (replicas, voters) = backend.catalog_replicas_and_voters(range_id);
        let voters: Vec<String> = replicas.iter().take(voters).map(u64::to_string).collect();
        return Err(ApiError::Membership(format!(
            "namespace {name:?}: not every voter (nodes {}) is down as the membership gossip sees them; a forced promotion is refused while any is alive, suspect or not heard of yet (it would split the namespace in two) — wait until the gossip holds them dead, or bring them back",
            voters.join(", ")
        )));
    }
    let (replicas, voters) = backend.catalog_replicas_and_voters(range_id);
    let in_region: Vec<u64> =
        replicas.iter().skip(voters).copied().filter(|n| backend.node(*n).is_some_and(|r| r.labels.region == region)).collect();
    let Some(&node) = backend.live_first(&in_region).first() else {
        return Err(ApiError::Membership(format!(
            "namespace {name:?} has no read replica in region {region} (create it with --read-replicas, and let the placement driver place one)"
        )));
    };
    Ok(Plan { range_id, node, geo, resume: false, record: rec })
}

/// Checks the request, records it in the namespace's record, then
/// promotes here or on the member holding the read replica (once, unless
/// `forwarded`). What the gRPC and HTTP APIs call. Asked again after a
/// failure, it finishes the promotion the record names.
pub async fn promote_via(backend: &Backend, spec: &PromoteSpec, forwarded: bool) -> Result<PromoteReport, ApiError> {
    let mut plan = plan(backend, spec).await?;
    if !plan.resume {
        // Recorded before anything changes: a concurrent or later request
        // finishes this promotion instead of promoting another replica
        // into the same generation. (A concurrent one loses the
        // conditional write: 409, nothing changed.)
        plan.record.promotion = Some(PromotionIntent { node: plan.node, region: spec.to_region.trim().to_string() });
        rewrite(backend, &mut plan.record).await?;
        plan.resume = true;
    }
    if plan.node == backend.cfg.node_id {
        return promote_here(backend, spec, plan).await;
    }
    if forwarded {
        return Err(ApiError::Membership(format!(
            "this member (node {}) was asked to promote its read replica, but the record names node {}'s; ask again",
            backend.cfg.node_id, plan.node
        )));
    }
    let req = api::NamespacePromoteRequest {
        name: spec.name.clone(),
        to_region: spec.to_region.clone(),
        accept_data_loss: spec.accept_data_loss,
    };
    let mut client = api::namespaces_client::NamespacesClient::new(backend.channel_to(plan.node)?);
    let r = client.promote(crate::backend::forwarded(req)).await.map_err(|s| ApiError::from_status(&s))?.into_inner();
    Ok(from_wire(r))
}

/// The raise of the revision a promotion makes, as a command.
fn raise_command(floor: i64) -> Vec<u8> {
    c::Command { op: Some(c::Op::RaiseRevision(floor)), wall_ms: crate::backend::wall_ms() }.encode_to_vec()
}

async fn promote_here(backend: &Backend, spec: &PromoteSpec, plan: Plan) -> Result<PromoteReport, ApiError> {
    let Plan { range_id, node, geo, .. } = plan;
    let name = spec.name.as_str();
    let region = spec.to_region.trim().to_string();
    // The revision this replica reached, before it changes anything.
    let revision_before = backend.query_here(range_id, c::QueryKind::Leases(true), false).await?.revision;
    let floor = revision_before + PROMOTE_REVISION_GAP;
    let deadline = tokio::time::Instant::now() + PROMOTE_WAIT;
    let local = local_status(backend, range_id).await?;
    // (The record names this node's promotion, and its replica votes in
    // a forced generation: that promotion's forced step is done.)
    let already = local.voters.contains(&node) && meridian_raftstore::generation(local.epoch.conf_ver) > 0;
    let (promotion, raised) = if already {
        // A promotion cut short after its forced step: the steps after it
        // are finished now (the revision raised again, from where it is).
        (promotion_of(&local), false)
    } else {
        // A replica that missed a split or merge of the range would publish
        // a span the catalog no longer has.
        let listed = backend.cached_epoch(range_id).map_or(0, |e| e.version);
        if local.epoch.version < listed {
            return Err(ApiError::Membership(format!(
                "node {node}'s read replica of {name:?} has not applied the range's last split or merge (version {} of {listed}): it cannot be promoted",
                local.epoch.version
            )));
        }
        let p = loop {
            match backend.raft.force_promote(range_id, Some(raise_command(floor))).await {
                Ok(p) => break p,
                Err(e @ (ApiError::TooBusy | ApiError::NoLeader { .. })) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(range = range_id, "forced promotion: {e}; asking again");
                    tokio::time::sleep(POLL).await;
                }
                Err(e) => return Err(e),
            }
        };
        let raised = p.first_proposed;
        (p, raised)
    };
    warn!(
        namespace = name,
        range = range_id,
        node,
        region = %region,
        last_index = promotion.last_index,
        commit_index = promotion.commit_index,
        "namespace promoted by force (--accept-data-loss): the read replica is its only voter"
    );
    while !backend.brief(range_id).await.is_some_and(|b| b.leading) {
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::Timeout);
        }
        tokio::time::sleep(POLL).await;
    }
    // The catalog next: until it names the new voter, every member (this
    // one too) holds the range's voters down and refuses requests.
    let status = local_status(backend, range_id).await?;
    let desc = crate::server::descriptor_of(&status);
    crate::namespace::settle("publishing the descriptor", || crate::meta::publish(backend, &desc)).await?;
    crate::namespace::settle("reading the catalog", || backend.refresh_routes_now()).await?;
    if !raised {
        // (Proposed with the election when the replica led at once, as it
        // does alone: before any lease expiry or lock grant of its own.)
        crate::namespace::settle("raising the revision", || backend.execute(range_id, c::Op::RaiseRevision(floor))).await?;
    }
    let revision_floor = floor.max(backend.query_here(range_id, c::QueryKind::Leases(true), false).await?.revision);
    // The namespace's new home: the voters it asked for, in the region
    // promoted to; a read replica where it had one, and in the lost home
    // region (for when it returns).
    let mut new_geo = geo.clone();
    new_geo.home_region = region.clone();
    new_geo.region_voters = std::iter::once((region.clone(), geo.voters())).collect();
    if !geo.read_regions.is_empty() {
        new_geo.read_regions.insert(geo.home_region.clone());
        new_geo.read_regions.remove(&region);
    }
    crate::namespace::settle("recording the new home region", || async {
        let mut rec =
            record(backend, name, true).await?.ok_or_else(|| ApiError::NamespaceNotFound(format!("namespace {name:?} not found")))?;
        if rec.promotion.is_none() {
            return Ok(()); // another request finished it
        }
        rec.geo = Some(new_geo.clone());
        rec.promotion = None;
        rewrite(backend, &mut rec).await
    })
    .await?;
    info!(namespace = name, range = range_id, floor = revision_floor, "forced promotion done");
    Ok(PromoteReport {
        name: name.to_string(),
        range_id,
        node,
        region,
        previous_home_region: geo.home_region,
        applied_index: promotion.applied_index,
        last_index: promotion.last_index,
        commit_index: promotion.commit_index,
        revision_before,
        revision_floor,
        epoch: format!("{}.{}", desc.epoch.conf_ver, desc.epoch.version),
    })
}

/// This node's replica of `range_id` as its store reports it.
async fn local_status(backend: &Backend, range_id: u64) -> Result<meridian_raftstore::RangeStatus, ApiError> {
    backend.raft.status().await.into_iter().find(|s| s.range_id == range_id).ok_or(ApiError::UnknownRange { range_id })
}

/// What a replica promoted by an earlier request reports now.
fn promotion_of(st: &meridian_raftstore::RangeStatus) -> meridian_raftstore::Promotion {
    meridian_raftstore::Promotion {
        range_id: st.range_id,
        applied_index: st.applied,
        last_index: st.last_index,
        commit_index: st.commit,
        last_term: st.term,
        conf_ver_before: 0,
        conf_ver: st.epoch.conf_ver,
        first_proposed: false,
    }
}

fn to_wire(r: PromoteReport) -> api::NamespacePromoteResponse {
    api::NamespacePromoteResponse {
        name: r.name,
        range_id: r.range_id,
        node: r.node,
        region: r.region,
        previous_home_region: r.previous_home_region,
        applied_index: r.applied_index,
        last_index: r.last_index,
        commit_index: r.commit_index,
        revision_before: r.revision_before,
        revision_floor: r.revision_floor,
        epoch: r.epoch,
    }
}

fn from_wire(w: api::NamespacePromoteResponse) -> PromoteReport {
    PromoteReport {
        name: w.name,
        range_id: w.range_id,
        node: w.node,
        region: w.region,
        previous_home_region: w.previous_home_region,
        applied_index: w.applied_index,
        last_index: w.last_index,
        commit_index: w.commit_index,
        revision_before: w.revision_before,
        revision_floor: w.revision_floor,
        epoch: w.epoch,
    }
}

/// The gRPC method (`meridian.v1.Namespaces/Promote`).
pub async fn serve(
    backend: &Backend,
    req: Request<api::NamespacePromoteRequest>,
) -> Result<Response<api::NamespacePromoteResponse>, Status> {
    let forwarded = req.metadata().get(crate::backend::FORWARDED_HEADER).is_some();
    let r = req.into_inner();
    let spec = PromoteSpec { name: r.name, to_region: r.to_region, accept_data_loss: r.accept_data_loss };
    Ok(Response::new(to_wire(promote_via(backend, &spec, forwarded).await?)))
}
