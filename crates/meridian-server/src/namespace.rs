//! Namespaces at runtime: `create`, `list`, `describe`, `drop`, `merge`,
//! `split`.
//!
//! The catalog in the meta range holds one record per namespace created at
//! runtime (`\0meridian/ns/<prefix>`, JSON) and the next range id to
//! allocate (`\0meridian/next-range-id`). Namespaces declared in the config
//! at the cluster's bootstrap have descriptors but no record; they list
//! with the default policy.
//!
//! `create` (any member runs it; the meta range's conditional writes keep
//! concurrent ones apart):
//!
//! ```text
//!  1. validate the name and policy          (refusals change nothing)
//!  2. Txn: record {state: creating, range id} + next-range-id += 1
//!  3. carve the prefix out of the root range (kv::carve: keys move with
//!     their revisions, the root fences the prefix, the new range's
//!     replicas open on the root's voters)
//!  4. publish the new range's descriptor; record → ready
//!  5. refresh this member's routes; wait until the range has a leader
//! ```
//!
//! A create cut short (a crash, a lost leader) leaves a `creating` record;
//! running `create` again with the same name continues it (the carve is
//! idempotent), as does the placement driver's round. A carve refused for
//! good (leased keys under the prefix, …) deletes the record: nothing
//! changed.
//!
//! `drop` seals the namespace's range (it stops serving the prefix), gives
//! the prefix back to the root range with the root's revision raised above
//! the namespace's last (fencing tokens never go back), and deletes the
//! descriptor and record, and marks the range retired: every member then
//! deletes its sealed replica (`crate::collect`).
//!
//! A **shared** namespace (`create --shared`, or merged) is a record with
//! state `shared` and no group: the root range serves its prefix. `merge`
//! (record `merging`) seals the group for a merge (it exports its keys;
//! refused, changing nothing, while the namespace has sessions or locks),
//! absorbs the keys into the root range (revisions kept, the root's raised
//! above the namespace's last, history below it compacted), then retires
//! the group and records the namespace shared. `split` is a create of a
//! shared namespace (record `creating` with `split`): a refused carve
//! leaves it shared. Every finisher of a create or merge first claims the
//! record (`claim`), so two of them never both undo and do. See
//! docs/architecture.md, "Merges and splits of groups".

use std::collections::BTreeMap;
use std::time::Duration;

use meridian_kv::command as c;
use meridian_membership::NodeRole;
use meridian_proto::meridian::v1 as api;
use meridian_storage::{RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::geo::{GeoPolicy, GeoSpec};
use crate::meta;
use crate::routing::{prefix_end, META_RANGE_ID, ROOT_RANGE_ID};

/// Prefix of the namespace records in the meta range.
pub const NS_PREFIX: &[u8] = b"\0meridian/ns/";
/// The next range id to allocate.
pub const NEXT_RANGE_KEY: &[u8] = b"\0meridian/next-range-id";
/// Longest namespace name, in bytes.
pub const MAX_NAME_BYTES: usize = 128;
/// Most voters a namespace may ask for.
pub const MAX_REPLICAS: usize = 7;
/// Label keys a constraint may name.
pub const CONSTRAINT_KEYS: [&str; 3] = ["region", "zone", "host"];
/// How long `create` waits for the new range to elect a leader, and a
/// retryable step to succeed.
const SETTLE: Duration = Duration::from_secs(15);
/// The first pause of a retried step, doubled up to [`RETRY_MAX`] (most
/// steps wait for an election that takes a few ticks).
const RETRY_FIRST: Duration = Duration::from_millis(10);
const RETRY_MAX: Duration = Duration::from_millis(200);
/// A step that took longer is logged (with its name and time).
const SLOW_STEP: Duration = Duration::from_millis(100);

/// Where a namespace is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NsState {
    /// Recorded; the carve may not have applied yet.
    Creating,
    /// Serving.
    Ready,
    /// Being dropped.
    Dropping,
    /// Its group being merged into the root group.
    Merging,
    /// Served by the root group (created `--shared`, or merged): its keys
    /// and revisions are the root range's, its record is its only trace.
    Shared,
}

impl NsState {
    /// As the APIs spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            NsState::Creating => "creating",
            NsState::Ready => "ready",
            NsState::Dropping => "dropping",
            NsState::Merging => "merging",
            NsState::Shared => "shared",
        }
    }

    fn parse(s: &str) -> NsState {
        match s {
            "creating" => NsState::Creating,
            "dropping" => NsState::Dropping,
            "merging" => NsState::Merging,
            "shared" => NsState::Shared,
            _ => NsState::Ready,
        }
    }
}

/// A namespace's record in the meta range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsRecord {
    pub name: String,
    pub range_id: u64,
    pub namespace_id: u64,
    /// Voters its policy asks for.
    pub replicas: usize,
    /// Labels every replica's node must have.
    pub constraints: BTreeMap<String, String>,
    pub state: NsState,
    /// Wall clock of the create (information only).
    pub created_ms: i64,
    /// Its home region, survival goal and voters per region (none: the
    /// voters go wherever `constraints` allow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub geo: Option<GeoPolicy>,
    /// Keys the carve moved in from the root namespace, and the revision
    /// the namespace started at (set once ready).
    #[serde(default)]
    pub moved_keys: u64,
    #[serde(default)]
    pub start_revision: i64,
    /// Wall clock of the last state change (information; the placement
    /// driver finishes a create or drop left this long).
    #[serde(default)]
    pub changed_ms: i64,
    /// A drop in progress discards keys and locks.
    #[serde(default)]
    pub drop_force: bool,
    /// A `creating` record splitting a shared namespace out of the root
    /// group: a refused carve makes it shared again (rather than deleting
    /// it).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub split: bool,
    /// Keys the last merge carried into the root group.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub merged_keys: u64,
    /// A forced promotion under way (`meridian namespace promote`): the
    /// node whose read replica it promotes, and the region. Recorded
    /// before the replica is touched, so that a second request finishes
    /// this one rather than promoting another replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promotion: Option<crate::promote::PromotionIntent>,
    /// The meta range's revision the record was last written at: every
    /// change of the record is conditional on it (two creates or drops of
    /// one name never both act).
    #[serde(skip)]
    pub mod_revision: i64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What a create asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateSpec {
    pub name: String,
    /// Default: `[placement] replicas`.
    #[serde(default)]
    pub replicas: Option<usize>,
    /// `KEY=VALUE`, KEY one of [`CONSTRAINT_KEYS`].
    #[serde(default)]
    pub constraints: Vec<String>,
    /// Served by the root group rather than a group of its own (no
    /// `replicas` or `constraints` then: it has the root group's).
    #[serde(default)]
    pub shared: bool,
    /// The region whose clients it serves (see [`crate::geo`]).
    #[serde(default)]
    pub home_region: Option<String>,
    /// `zone` (the default with a home region) or `region`.
    #[serde(default)]
    pub survival: Option<String>,
    /// A read replica in every other region (zone survival).
    #[serde(default)]
    pub read_replicas: bool,
}

impl CreateSpec {
    /// The geography it asks for.
    fn geo_spec(&self, constraints: &BTreeMap<String, String>) -> GeoSpec {
        GeoSpec {
            home_region: self.home_region.clone(),
            survival: self.survival.clone(),
            read_replicas: self.read_replicas,
            replicas: self.replicas,
            constrained: !constraints.is_empty(),
        }
    }
}

/// One replica of a namespace as `describe` shows it: where it is and
/// why it is there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaPlace {
    pub node: u64,
    pub region: String,
    pub zone: String,
    /// `voter` or `learner`.
    pub role: String,
    pub why: String,
}

/// A namespace as `list` and `describe` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NsInfo {
    pub name: String,
    pub range_id: u64,
    pub namespace_id: u64,
    /// `creating`, `ready`, `dropping`, `merging` or `shared`.
    pub state: NsState,
    /// Declared in the config at the cluster's bootstrap (no record).
    pub declared: bool,
    pub replicas_wanted: usize,
    pub constraints: BTreeMap<String, String>,
    /// The nodes holding a replica (voters first), per the catalog.
    pub replicas: Vec<u64>,
    pub epoch: String,
    pub moved_keys: u64,
    pub start_revision: i64,
    /// Keys the last merge carried into the root group.
    #[serde(default)]
    pub merged_keys: u64,
    /// Its home region and survival goal ("" without geography).
    #[serde(default)]
    pub home_region: String,
    #[serde(default)]
    pub survival: String,
    /// Regions that keep a read replica.
    #[serde(default)]
    pub read_regions: Vec<String>,
    /// Where every replica is and why (per the catalog and the node
    /// directory).
    #[serde(default)]
    pub placement: Vec<ReplicaPlace>,
    /// `describe` only: keys and current revision, read from the range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

fn ns_key(name: &str) -> Vec<u8> {
    let mut k = NS_PREFIX.to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

/// Refuses a name that is not a clean prefix: `/seg/…/seg/`, each segment
/// of `A-Z a-z 0-9 . _ -`, at most [`MAX_NAME_BYTES`].
pub fn validate_name(name: &str) -> Result<(), ApiError> {
    let bad = |why: &str| ApiError::Invalid(format!("invalid namespace name {name:?}: {why}"));
    if name.is_empty() {
        return Err(bad("empty (the root namespace \"\" always exists)"));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(bad(&format!("longer than {MAX_NAME_BYTES} bytes")));
    }
    if !name.starts_with('/') || !name.ends_with('/') || name.len() < 3 {
        return Err(bad("a namespace is a key prefix written /name/ (it must start and end with '/')"));
    }
    for seg in name[1..name.len() - 1].split('/') {
        if seg.is_empty() {
            return Err(bad("empty path segment ('//')"));
        }
        if let Some(ch) = seg.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
            return Err(bad(&format!("character {ch:?} (allowed: A-Z a-z 0-9 . _ - and '/' between segments)")));
        }
    }
    Ok(())
}

/// Parses `KEY=VALUE` constraints.
pub fn parse_constraints(raw: &[String]) -> Result<BTreeMap<String, String>, ApiError> {
    let mut out = BTreeMap::new();
    for c in raw {
        let Some((k, v)) = c.split_once('=') else {
            return Err(ApiError::Invalid(format!("constraint {c:?} is not KEY=VALUE")));
        };
        if !CONSTRAINT_KEYS.contains(&k) {
            return Err(ApiError::Invalid(format!("constraint key {k:?} is not one of {}", CONSTRAINT_KEYS.join(", "))));
        }
        if v.is_empty() {
            return Err(ApiError::Invalid(format!("constraint {c:?} has an empty value")));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ApiError::Invalid(format!("constraint key {k:?} given twice")));
        }
    }
    Ok(out)
}

/// Every namespace record in the meta range, by name.
pub async fn records(backend: &Backend, linearizable: bool) -> Result<BTreeMap<String, NsRecord>, ApiError> {
    let op = c::RangeOp { key: NS_PREFIX.to_vec(), range_end: prefix_end(NS_PREFIX), ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), linearizable).await?;
    let mut out = BTreeMap::new();
    for kv in a.range.map(|r| r.kvs).unwrap_or_default() {
        match serde_json::from_slice::<NsRecord>(&kv.value) {
            Ok(mut r) => {
                r.mod_revision = kv.mod_revision;
                out.insert(r.name.clone(), r);
            }
            Err(e) => warn!("undecodable namespace record {:?}: {e}", String::from_utf8_lossy(&kv.key)),
        }
    }
    Ok(out)
}

/// The record of namespace `name`, if it has one (a point read: creates
/// and describes cost the same with ten namespaces or ten thousand).
pub async fn record(backend: &Backend, name: &str, linearizable: bool) -> Result<Option<NsRecord>, ApiError> {
    let op = c::RangeOp { key: ns_key(name), ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), linearizable).await?;
    let Some(kv) = a.range.and_then(|r| r.kvs.into_iter().next()) else { return Ok(None) };
    let mut r: NsRecord =
        serde_json::from_slice(&kv.value).map_err(|e| ApiError::Internal(format!("undecodable record of namespace {name:?}: {e}")))?;
    r.mod_revision = kv.mod_revision;
    Ok(Some(r))
}

/// How many namespace records the meta range holds (counted, not read).
async fn count_records(backend: &Backend) -> Result<i64, ApiError> {
    let op = c::RangeOp { key: NS_PREFIX.to_vec(), range_end: prefix_end(NS_PREFIX), count_only: true, ..Default::default() };
    Ok(backend.query(META_RANGE_ID, c::QueryKind::Range(op), true).await?.range.map_or(0, |r| r.count))
}

/// [`record`], linearizable (for functions that name a local `record`).
async fn record_of(backend: &Backend, name: &str) -> Result<Option<NsRecord>, ApiError> {
    record(backend, name, true).await
}

/// Where a range's replicas go, as its namespace's record says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Voters wanted.
    pub replicas: usize,
    /// Labels every replica's node must have.
    pub constraints: Vec<(String, String)>,
    /// Its geography, if it has one.
    pub geo: Option<GeoPolicy>,
}

/// The policy of every range a namespace record names (range id →
/// policy), for the placement driver.
pub async fn policies(backend: &Backend) -> Result<BTreeMap<u64, Policy>, ApiError> {
    Ok(policies_of(&records(backend, false).await?))
}

/// [`policies`] from records read already. Shared namespaces have the
/// root group's.
pub fn policies_of(recs: &BTreeMap<String, NsRecord>) -> BTreeMap<u64, Policy> {
    recs.values()
        .filter(|r| r.state != NsState::Shared)
        .map(|r| {
            let policy = Policy {
                replicas: r.replicas,
                constraints: r.constraints.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                geo: r.geo.clone(),
            };
            (r.range_id, policy)
        })
        .collect()
}

fn put(key: Vec<u8>, value: Vec<u8>) -> c::RequestOp {
    c::RequestOp { kind: Some(c::RequestKind::Put(c::PutOp { key, value, ..Default::default() })) }
}

fn delete(key: Vec<u8>) -> c::RequestOp {
    c::RequestOp { kind: Some(c::RequestKind::DeleteRange(c::DeleteOp { key, ..Default::default() })) }
}

fn json(r: &NsRecord) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(r).map_err(|e| ApiError::Internal(e.to_string()))
}

/// Retries `f` while it fails with an error a retry may cure, up to
/// [`SETTLE`].
pub(crate) async fn settle<T, F, Fut>(what: &str, mut f: F) -> Result<T, ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + SETTLE;
    let mut pause = RETRY_FIRST;
    loop {
        let r = f().await;
        if r.is_ok() && started.elapsed() > SLOW_STEP {
            info!(step = what, ms = started.elapsed().as_millis() as u64, "slow namespace step");
        }
        match r {
            Err(e) if retryable(&e) && tokio::time::Instant::now() < deadline => {
                tracing::debug!("{what}: {e}; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(RETRY_MAX);
            }
            r => return r,
        }
    }
}

fn retryable(e: &ApiError) -> bool {
    e.is_retryable()
}

/// Prefix of the retired-range markers: a dropped namespace's range id,
/// never published again (its sealed replicas may still report).
pub const RETIRED_PREFIX: &[u8] = b"\0meridian/retired/";

/// The retired marker of `range_id`.
pub fn retired_key(range_id: u64) -> Vec<u8> {
    let mut k = RETIRED_PREFIX.to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

/// Applies `ops` to the meta range if `record` is still as read (its mod
/// revision); returns the revision written at, or `None` if the record
/// changed meanwhile.
async fn guarded(backend: &Backend, record: &NsRecord, ops: Vec<c::RequestOp>) -> Result<Option<i64>, ApiError> {
    let same = c::Compare { result: 0, target: 2, key: ns_key(&record.name), number: record.mod_revision, ..Default::default() };
    let txn = c::TxnOp { compare: vec![same], success: ops, failure: vec![] };
    match backend.execute(META_RANGE_ID, c::Op::Txn(txn)).await? {
        c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), revision } if t.succeeded => Ok(Some(revision)),
        _ => Ok(None),
    }
}

/// Writes `record` (changed) over the version read; the new mod revision,
/// or an error if another request changed it meanwhile.
pub(crate) async fn rewrite(backend: &Backend, record: &mut NsRecord) -> Result<(), ApiError> {
    record.changed_ms = crate::backend::wall_ms();
    let value = json(record)?;
    match guarded(backend, record, vec![put(ns_key(&record.name), value)]).await? {
        Some(rev) => {
            record.mod_revision = rev;
            Ok(())
        }
        None => Err(ApiError::NamespaceExists(format!(
            "namespace {:?} was changed by another request meanwhile; look again (meridian namespace describe)",
            record.name
        ))),
    }
}

/// Checks that `wanted` data nodes satisfy `constraints` (on distinct
/// hosts).
fn check_satisfiable(
    backend: &Backend,
    admin: &BTreeMap<u64, crate::node_admin::NodeAdmin>,
    wanted: usize,
    constraints: &BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let mut hosts = std::collections::BTreeSet::new();
    // Data nodes that take replicas (not draining, decommissioned or an
    // unpromoted learner member).
    let takes = |id: u64| admin.get(&id).is_none_or(crate::node_admin::NodeAdmin::takes_replicas);
    for n in backend.nodes().into_iter().filter(|n| n.role == NodeRole::Data && takes(n.id)) {
        let label = |k: &str| match k {
            "region" => n.labels.region.clone(),
            "zone" => n.labels.zone.clone(),
            _ => n.labels.host.clone(),
        };
        if constraints.iter().all(|(k, v)| label(k) == *v) {
            hosts.insert(if n.labels.host.is_empty() { format!("node-{}", n.id) } else { n.labels.host.clone() });
        }
    }
    if hosts.len() < wanted {
        let what = if constraints.is_empty() {
            String::new()
        } else {
            format!(" matching {}", constraints.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(","))
        };
        return Err(ApiError::Invalid(format!(
            "{wanted} replicas need {wanted} data nodes on distinct hosts{what}; the cluster has {}",
            hosts.len()
        )));
    }
    Ok(())
}

/// Creates a namespace (see the module docs); returns it as `describe`
/// shows it.
pub async fn create(backend: &Backend, spec: &CreateSpec) -> Result<NsInfo, ApiError> {
    let name = spec.name.as_str();
    validate_name(name)?;
    let constraints = parse_constraints(&spec.constraints)?;
    if spec.shared && (spec.replicas.is_some() || !constraints.is_empty()) {
        return Err(ApiError::Invalid(format!(
            "namespace {name:?}: a shared namespace is served by the root group, with its placement; replicas and constraints need a group of its own (create it without shared)"
        )));
    }
    let geo_spec = spec.geo_spec(&constraints);
    if spec.shared && geo_spec.asked() {
        return Err(ApiError::Invalid(format!(
            "namespace {name:?}: a shared namespace is served by the root group, with its placement; a home region and survival goal need a group of its own (create it without shared)"
        )));
    }
    let mut replicas = spec.replicas.unwrap_or(backend.cfg.placement.replicas);
    if replicas == 0 || replicas > MAX_REPLICAS {
        return Err(ApiError::Invalid(format!("replicas must be 1 to {MAX_REPLICAS}, not {replicas}")));
    }
    let mut geo = None;
    if !spec.shared {
        // This member's copy of the administrative states: advice, as the
        // directory is (the placement driver places what it can).
        let admin = crate::node_admin::states(backend, false).await.unwrap_or_default();
        let takes = |id: u64| admin.get(&id).is_none_or(crate::node_admin::NodeAdmin::takes_replicas);
        let nodes: Vec<_> = backend.nodes().into_iter().filter(|n| takes(n.id)).collect();
        geo = crate::geo::plan(&geo_spec, &nodes, replicas)?;
        match &geo {
            Some(g) => replicas = g.voters(),
            None => check_satisfiable(backend, &admin, replicas, &constraints)?,
        }
    }
    // The routes matter here only for the namespaces the config declared
    // (the records guard every other overlap): read the catalog when none
    // was read yet, or when the routes show an overlap (a namespace since
    // dropped would be a false one) — not on every create (10,000
    // descriptors).
    if backend.cluster_id() == 0 || backend.routing().overlapping(name.as_bytes()).is_some() {
        settle("reading the catalog", || backend.refresh_routes_now()).await?;
    }
    let existing = settle("reading the namespace's record", || record(backend, name, true)).await?;
    let record = match existing.as_ref() {
        Some(r) if r.state == NsState::Creating && !spec.shared && !r.split => {
            if r.replicas != replicas || r.constraints != constraints || r.geo != geo {
                return Err(ApiError::NamespaceExists(format!(
                    "namespace {name:?} is being created with another policy ({} replicas, constraints {:?}, geography {:?})",
                    r.replicas, r.constraints, r.geo
                )));
            }
            info!(namespace = name, range = r.range_id, "continuing a create cut short");
            r.clone()
        }
        Some(r) if r.state == NsState::Dropping => {
            return Err(ApiError::NamespaceExists(format!("namespace {name:?} is being dropped; drop it again to finish, then create")))
        }
        Some(r) if r.state == NsState::Merging => {
            return Err(ApiError::NamespaceExists(format!("namespace {name:?} exists; its group is being merged into the root group")))
        }
        Some(r) if r.state == NsState::Shared || r.split => {
            return Err(ApiError::NamespaceExists(format!(
                "namespace {name:?} already exists, in the root group (meridian namespace split gives it a group of its own)"
            )))
        }
        Some(_) => return Err(ApiError::NamespaceExists(format!("namespace {name:?} already exists"))),
        None => {
            // Overlaps are checked against the namespaces routed (every one
            // ready or dropping); one being created elsewhere at the same
            // time is refused by the root's carve (the arbiter of overlaps).
            // Every record (whatever its state) and the namespaces the
            // config declared (which have none).
            let routing = backend.routing();
            let records = settle("counting namespaces", || count_records(backend)).await?;
            let count = usize::try_from(records).unwrap_or(0) + backend.cfg.namespaces.len();
            if count >= crate::routing::MAX_NAMESPACES {
                return Err(ApiError::Invalid(format!(
                    "the cluster has {count} namespaces, the most it holds ({}); drop one first",
                    crate::routing::MAX_NAMESPACES
                )));
            }
            if routing.overlapping(name.as_bytes()).is_some_and(|n| n.prefix == name.as_bytes()) {
                return Err(ApiError::NamespaceExists(format!("namespace {name:?} already exists (declared in the config)")));
            }
            let overlapping = routing.overlapping(name.as_bytes()).map(|n| String::from_utf8_lossy(&n.prefix).into_owned());
            if let Some(other) = overlapping {
                return Err(ApiError::Invalid(format!(
                    "namespace {name:?} overlaps namespace {other:?}: a key must belong to one namespace"
                )));
            }
            let allocated =
                settle("recording the namespace", || allocate(backend, name, replicas, &constraints, geo.as_ref(), spec.shared)).await;
            let record = match allocated {
                Ok(r) => r,
                // An allocation that committed but whose answer was lost (a
                // timeout, a leader change) and was tried again finds its
                // own record: `creating` with this request's policy, which
                // this create goes on with (as with a create cut short,
                // above). Anything else is another request's.
                Err(ApiError::NamespaceExists(why)) => {
                    match settle("reading the namespace's record", || record(backend, name, true)).await? {
                        Some(r)
                            if r.state == NsState::Creating
                                && !r.split
                                && !spec.shared
                                && (r.replicas, &r.constraints, &r.geo) == (replicas, &constraints, &geo) =>
                        {
                            info!(
                                namespace = name,
                                range = r.range_id,
                                "the namespace's record was written by an earlier attempt of this create"
                            );
                            r
                        }
                        _ => return Err(ApiError::NamespaceExists(why)),
                    }
                }
                Err(e) => return Err(e),
            };
            if record.state == NsState::Shared {
                info!(namespace = name, "namespace created in the root group");
                return describe(backend, name).await;
            }
            record
        }
    };
    finish_create(backend, record).await
}

/// Conflicting allocations (concurrent creates) tried again at once before
/// the caller's paced retry.
const ALLOCATE_ATTEMPTS: usize = 16;

/// Records a `creating` namespace with a fresh range id, atomically with
/// the id counter (a concurrent create that took the id makes this one
/// read the counter again).
async fn allocate(
    backend: &Backend,
    name: &str,
    replicas: usize,
    constraints: &BTreeMap<String, String>,
    geo: Option<&GeoPolicy>,
    shared: bool,
) -> Result<NsRecord, ApiError> {
    for _ in 0..ALLOCATE_ATTEMPTS {
        if let Some(r) = try_allocate(backend, name, replicas, constraints, geo, shared).await? {
            return Ok(r);
        }
    }
    Err(ApiError::Timeout)
}

/// The namespaces `name` lies inside (`/a/` and `/a/b/` for `/a/b/c/`).
fn ancestors(name: &str) -> Vec<&str> {
    name.char_indices().filter(|&(i, ch)| ch == '/' && i > 0 && i + 1 < name.len()).map(|(i, _)| &name[..=i]).collect()
}

/// Guards that no record overlaps `name` (for a Txn's compares), and the
/// reads that say which one did (for its failure branch).
fn no_overlap(name: &str) -> (Vec<c::Compare>, Vec<c::RequestOp>) {
    // Its own record and its descendants' (one interval), its ancestors'.
    let own = ns_key(name);
    let end = prefix_end(&own);
    let absent = |key: Vec<u8>, range_end: Vec<u8>| c::Compare { result: 0, target: 1, key, range_end, number: 0, ..Default::default() };
    let read = |key: Vec<u8>, range_end: Vec<u8>| c::RequestOp {
        kind: Some(c::RequestKind::Range(c::RangeOp { key, range_end, keys_only: true, limit: 1, ..Default::default() })),
    };
    let mut compares = vec![absent(own.clone(), end.clone())];
    let mut reads = vec![read(own, end)];
    for a in ancestors(name) {
        compares.push(absent(ns_key(a), Vec::new()));
        reads.push(read(ns_key(a), Vec::new()));
    }
    (compares, reads)
}

/// The refusal for a create whose [`no_overlap`] guard failed: the first
/// record the reads found.
fn overlap_refusal(name: &str, responses: &[c::ResponseOp]) -> Option<ApiError> {
    let found = responses.iter().find_map(|r| match r.kind.as_ref() {
        Some(c::ResponseKind::Range(r)) => r.kvs.first().map(|kv| kv.key.clone()),
        _ => None,
    })?;
    let other = String::from_utf8_lossy(&found[NS_PREFIX.len()..]).into_owned();
    Some(if other == name {
        ApiError::NamespaceExists(format!("namespace {name:?} is being created by another request"))
    } else {
        ApiError::Invalid(format!("namespace {name:?} overlaps namespace {other:?}: a key must belong to one namespace"))
    })
}

/// One allocation attempt: `None` if another create won the race (the
/// counter moved), an error if the name was taken meanwhile. A shared
/// namespace takes no range id: its record is all of it.
async fn try_allocate(
    backend: &Backend,
    name: &str,
    replicas: usize,
    constraints: &BTreeMap<String, String>,
    geo: Option<&GeoPolicy>,
    shared: bool,
) -> Result<Option<NsRecord>, ApiError> {
    let (mut compare, failure) = no_overlap(name);
    if shared {
        let mut record = new_record(name, ROOT_RANGE_ID, backend.routing().root_namespace_id(), replicas, constraints);
        record.state = NsState::Shared;
        let txn = c::TxnOp { compare, success: vec![put(ns_key(name), json(&record)?)], failure };
        return match backend.execute(META_RANGE_ID, c::Op::Txn(txn)).await? {
            c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), revision } if t.succeeded => {
                record.mod_revision = revision;
                Ok(Some(record))
            }
            c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), .. } => Err(overlap_refusal(name, &t.responses)
                .unwrap_or_else(|| ApiError::Internal("an overlap guard failed with no overlap found".into()))),
            other => Err(ApiError::Internal(format!("unexpected allocation outcome {other:?}"))),
        };
    }
    let (next, guard) = next_range_id(backend).await?;
    let mut record = new_record(name, next, next, replicas, constraints);
    record.geo = geo.cloned();
    // On failure, whether the name is taken or overlapped (then the create
    // is refused) or the counter moved (then it is tried again).
    compare.insert(0, guard);
    let txn = c::TxnOp {
        compare,
        success: vec![put(NEXT_RANGE_KEY.to_vec(), (next + 1).to_be_bytes().to_vec()), put(ns_key(name), json(&record)?)],
        failure,
    };
    match backend.execute(META_RANGE_ID, c::Op::Txn(txn)).await? {
        c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), revision } if t.succeeded => {
            record.mod_revision = revision;
            Ok(Some(record))
        }
        c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), .. } => match overlap_refusal(name, &t.responses) {
            Some(refusal) => Err(refusal),
            None => Ok(None),
        },
        other => Err(ApiError::Internal(format!("unexpected allocation outcome {other:?}"))),
    }
}

/// The next range id to allocate, and the compare that holds while no
/// other allocation took it (the counter's mod revision, or its absence:
/// then one above every range the catalog names).
async fn next_range_id(backend: &Backend) -> Result<(u64, c::Compare), ApiError> {
    let op = c::RangeOp { key: NEXT_RANGE_KEY.to_vec(), ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), true).await?;
    match a.range.and_then(|r| r.kvs.into_iter().next()) {
        Some(kv) => {
            let raw: [u8; 8] = kv.value.as_slice().try_into().map_err(|_| ApiError::Storage("corrupt next-range-id record".into()))?;
            let guard = c::Compare { result: 0, target: 2, key: NEXT_RANGE_KEY.to_vec(), number: kv.mod_revision, ..Default::default() };
            Ok((u64::from_be_bytes(raw), guard))
        }
        None => {
            let catalog = meta::read(backend, true).await?.ok_or(ApiError::NoLeader { range_id: META_RANGE_ID })?;
            let top = catalog.ranges.iter().map(|d| d.range_id).max().unwrap_or(ROOT_RANGE_ID);
            Ok((top + 1, c::Compare { result: 0, target: 1, key: NEXT_RANGE_KEY.to_vec(), number: 0, ..Default::default() }))
        }
    }
}

/// A fresh `creating` record.
fn new_record(name: &str, range_id: u64, namespace_id: u64, replicas: usize, constraints: &BTreeMap<String, String>) -> NsRecord {
    NsRecord {
        name: name.to_string(),
        range_id,
        namespace_id,
        replicas,
        constraints: constraints.clone(),
        state: NsState::Creating,
        created_ms: crate::backend::wall_ms(),
        geo: None,
        moved_keys: 0,
        start_revision: 0,
        changed_ms: crate::backend::wall_ms(),
        drop_force: false,
        split: false,
        merged_keys: 0,
        promotion: None,
        mod_revision: 0,
    }
}

/// Takes `record` for this request: rewritten as read, so the record's
/// mod revision is this finisher's. Two requests finishing one create or
/// merge (a retry, the placement driver) then never both undo and do: the
/// later claim makes the earlier one's conditional writes (its undo of a
/// refused step, its last step) fail, and it stops.
/// A claim whose answer was lost (a timeout, the meta range's leader
/// changing) is read back: it landed if the record reads exactly as
/// written, and is made again if the record is still as it was; anything
/// else is another request's claim.
async fn claim(backend: &Backend, record: &mut NsRecord) -> Result<(), ApiError> {
    let started = tokio::time::Instant::now();
    loop {
        let before = record.clone();
        match rewrite(backend, record).await {
            Ok(()) => return Ok(()),
            Err(e) if e.is_retryable() && started.elapsed() < SETTLE => {
                tracing::debug!(namespace = record.name, "claiming the record: {e}; reading it back");
                tokio::time::sleep(RETRY_MAX).await;
                let now = settle("reading the namespace's record back", || record_of(backend, &record.name)).await?;
                let written = |r: &NsRecord| NsRecord { mod_revision: 0, ..r.clone() } == NsRecord { mod_revision: 0, ..record.clone() };
                match now {
                    Some(r) if written(&r) => {
                        record.mod_revision = r.mod_revision;
                        return Ok(());
                    }
                    Some(r) if r.mod_revision == before.mod_revision => *record = before,
                    _ => {
                        return Err(ApiError::NamespaceExists(format!(
                            "namespace {:?} was changed by another request meanwhile; look again (meridian namespace describe)",
                            record.name
                        )))
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
}

/// Steps 3–5 of a create, for a `creating` record (idempotent).
pub async fn finish_create(backend: &Backend, mut record: NsRecord) -> Result<NsInfo, ApiError> {
    claim(backend, &mut record).await?;
    let name = record.name.clone();
    let carve = c::CarveOp { prefix: name.as_bytes().to_vec(), range_id: record.range_id, namespace_id: record.namespace_id };
    let carved = settle("carving the namespace out of the root range", || async {
        match backend.execute(ROOT_RANGE_ID, c::Op::Carve(carve.clone())).await?.kind {
            Some(c::OutcomeKind::Carve(out)) => Ok(out),
            other => Err(ApiError::Internal(format!("unexpected carve outcome {other:?}"))),
        }
    })
    .await;
    let carved = match carved {
        Ok(out) => out,
        // The root refused the carve itself (leased keys, locks, an
        // overlapping namespace, …): nothing moved, and nothing of this
        // create stays (the name is free again). Any other error may
        // follow a carve that applied: the record stays, for a retry or
        // the placement driver to finish.
        Err(ApiError::Invalid(why)) => {
            // A split refused: the namespace stays shared, as it was.
            let undo = if record.split {
                let mut shared = record.clone();
                shared.state = NsState::Shared;
                shared.split = false;
                shared.range_id = ROOT_RANGE_ID;
                shared.namespace_id = backend.routing().root_namespace_id();
                shared.changed_ms = crate::backend::wall_ms();
                put(ns_key(&name), json(&shared)?)
            } else {
                delete(ns_key(&name))
            };
            if guarded(backend, &record, vec![undo]).await.ok().flatten().is_none() {
                warn!(namespace = name, "the record of a refused create changed meanwhile; left as it is");
            }
            return Err(ApiError::Invalid(why));
        }
        Err(e) => return Err(e),
    };
    let desc = RangeDescriptor {
        range_id: record.range_id,
        namespace_id: record.namespace_id,
        start: name.as_bytes().to_vec(),
        end: prefix_end(name.as_bytes()),
        epoch: RangeEpoch { conf_ver: 1, version: 1 },
        replicas: carved.voters.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect(),
    };
    // A retry finishing the create after the range changed (the driver
    // moved a replica) finds a newer descriptor published: that one routes.
    let desc = settle("publishing the descriptor", || meta::publish(backend, &desc)).await?.unwrap_or(desc);
    if !carved.already {
        record.moved_keys = carved.moved_keys;
        record.start_revision = carved.start_revision;
    }
    record.state = NsState::Ready;
    record.split = false;
    let mut attempt = record.clone();
    let written = settle("recording the namespace ready", || {
        let mut r = attempt.clone();
        async move { rewrite(backend, &mut r).await.map(|()| r) }
    })
    .await;
    match written {
        Ok(r) => attempt = r,
        // Another request finished it (a retry, the placement driver).
        Err(ApiError::NamespaceExists(_)) => match record_of(backend, &name).await? {
            Some(r) if r.state == NsState::Ready && r.range_id == record.range_id => attempt = r,
            _ => return Err(ApiError::NamespaceExists(format!("namespace {name:?} was changed by another request during its create"))),
        },
        Err(e) => return Err(e),
    }
    let record = attempt;
    // This member routes to the new range from now on; others learn it
    // from the refusal their first request under the prefix gets.
    if let Err(e) = backend.install_range(&desc).await {
        tracing::debug!(namespace = name, "the routes here contradict the new range ({e}): reading the catalog");
        settle("reading the catalog", || backend.refresh_routes_now()).await?;
    }
    // Usable once its range answers a linearizable read (it has a leader).
    let probe =
        c::RangeOp { key: name.as_bytes().to_vec(), range_end: prefix_end(name.as_bytes()), count_only: true, ..Default::default() };
    settle("waiting for the namespace's range to elect a leader", || {
        backend.query(record.range_id, c::QueryKind::Range(probe.clone()), true)
    })
    .await?;
    info!(
        namespace = name,
        range = record.range_id,
        moved = record.moved_keys,
        start_revision = record.start_revision,
        "namespace created"
    );
    describe(backend, &name).await
}

/// How long a `creating` or `dropping` record stays so before the
/// placement driver finishes it (a request still running has its own steps
/// in flight).
const RESUME_AFTER_MS: i64 = 60_000;

/// Finishes creates and drops cut short (the member running them died):
/// run by the placement driver each round, so neither is left half done.
/// Failures are logged and retried next round.
pub async fn resume(backend: &Backend) {
    let Ok(recs) = records(backend, true).await else { return };
    let now = crate::backend::wall_ms();
    let unfinished = |r: &NsRecord| !matches!(r.state, NsState::Ready | NsState::Shared);
    for r in recs.into_values().filter(|r| unfinished(r) && now - r.changed_ms > RESUME_AFTER_MS) {
        let name = r.name.clone();
        let done = match r.state {
            NsState::Creating => finish_create(backend, r).await.map(|_| ()),
            NsState::Merging => finish_merge(backend, r).await.map(|_| ()),
            NsState::Shared => continue,
            _ => finish_drop(backend, r).await,
        };
        match done {
            Ok(()) => info!(namespace = name, "finished a create, merge or drop cut short"),
            Err(e) => warn!(namespace = name, "finishing a create, merge or drop cut short: {e}"),
        }
    }
}

/// A namespace as shown, from its record.
fn info_of_record(backend: &Backend, r: &NsRecord) -> NsInfo {
    NsInfo {
        name: r.name.clone(),
        range_id: r.range_id,
        namespace_id: r.namespace_id,
        state: r.state,
        declared: false,
        replicas_wanted: r.replicas,
        constraints: r.constraints.clone(),
        replicas: backend.catalog_replicas_of(r.range_id),
        epoch: epoch_of(backend, r.range_id),
        moved_keys: r.moved_keys,
        start_revision: r.start_revision,
        merged_keys: r.merged_keys,
        home_region: r.geo.as_ref().map(|g| g.home_region.clone()).unwrap_or_default(),
        survival: r.geo.as_ref().map(|g| g.survival.as_str().to_string()).unwrap_or_default(),
        read_regions: r.geo.as_ref().map(|g| g.read_regions.iter().cloned().collect()).unwrap_or_default(),
        placement: placement_of(backend, r.range_id, r.geo.as_ref()),
        keys: None,
        revision: None,
    }
}

/// Where each replica of `range_id` is (per the catalog and the node
/// directory) and why, per the namespace's geography.
fn placement_of(backend: &Backend, range_id: u64, geo: Option<&GeoPolicy>) -> Vec<ReplicaPlace> {
    let nodes: BTreeMap<u64, meridian_membership::NodeRecord> = backend.nodes().into_iter().map(|n| (n.id, n)).collect();
    let (replicas, voters) = backend.catalog_replicas_and_voters(range_id);
    replicas
        .into_iter()
        .enumerate()
        .map(|(i, node)| {
            let voter = i < voters;
            let (region, zone) = nodes.get(&node).map(|n| (n.labels.region.clone(), n.labels.zone.clone())).unwrap_or_default();
            let witness = nodes.get(&node).is_some_and(|n| n.role == meridian_membership::NodeRole::Witness);
            let why = match geo {
                Some(g) if witness && voter => format!("{} (a witness: it votes and keeps the log, not the data)", g.why(&region, voter)),
                Some(g) => g.why(&region, voter),
                None if voter => "voter (placed by replicas and constraints)".into(),
                None => "learner being added or removed by the placement driver".into(),
            };
            let role = match (voter, witness) {
                (true, true) => "witness",
                (true, false) => "voter",
                (false, _) => "learner",
            };
            ReplicaPlace { node, region, zone, role: role.into(), why }
        })
        .collect()
}

/// A namespace declared in the config at bootstrap (it has no record).
fn info_of_declared(backend: &Backend, n: &crate::routing::Namespace) -> NsInfo {
    NsInfo {
        name: String::from_utf8_lossy(&n.prefix).into_owned(),
        range_id: n.range_id,
        namespace_id: n.namespace_id,
        state: NsState::Ready,
        declared: true,
        replicas_wanted: backend.cfg.placement.replicas,
        constraints: BTreeMap::new(),
        replicas: backend.catalog_replicas_of(n.range_id),
        epoch: epoch_of(backend, n.range_id),
        moved_keys: 0,
        start_revision: 0,
        merged_keys: 0,
        home_region: String::new(),
        survival: String::new(),
        read_regions: Vec::new(),
        placement: placement_of(backend, n.range_id, None),
        keys: None,
        revision: None,
    }
}

fn epoch_of(backend: &Backend, range_id: u64) -> String {
    backend.cached_epoch(range_id).map(|e| format!("{}.{}", e.conf_ver, e.version)).unwrap_or_default()
}

/// Every namespace: the records, and the ones declared in the config.
pub async fn list(backend: &Backend) -> Result<Vec<NsInfo>, ApiError> {
    let recs = records(backend, true).await?;
    let routing = backend.routing();
    let mut out: Vec<NsInfo> = recs.values().map(|r| info_of_record(backend, r)).collect();
    for n in routing.namespaces() {
        if !recs.contains_key(String::from_utf8_lossy(&n.prefix).as_ref()) {
            out.push(info_of_declared(backend, n));
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// One namespace, with its key count and revision read from its range (its
/// record read alone, not the whole catalog).
pub async fn describe(backend: &Backend, name: &str) -> Result<NsInfo, ApiError> {
    let not_found = || ApiError::NamespaceNotFound(format!("namespace {name:?} not found"));
    let mut info = match record(backend, name, true).await? {
        Some(r) => info_of_record(backend, &r),
        None => {
            let routing = backend.routing();
            let declared = routing.overlapping(name.as_bytes()).filter(|n| n.prefix == name.as_bytes()).ok_or_else(not_found)?;
            info_of_declared(backend, declared)
        }
    };
    if matches!(info.state, NsState::Ready | NsState::Shared) {
        let op =
            c::RangeOp { key: name.as_bytes().to_vec(), range_end: prefix_end(name.as_bytes()), count_only: true, ..Default::default() };
        let a = backend.query(info.range_id, c::QueryKind::Range(op), true).await?;
        info.keys = Some(a.range.map_or(0, |r| r.count));
        info.revision = Some(a.revision);
    }
    Ok(info)
}

/// Drops a namespace created at runtime (see the module docs). Refused
/// while it holds keys or locks unless `force`.
pub async fn drop_namespace(backend: &Backend, name: &str, force: bool) -> Result<(), ApiError> {
    validate_name(name)?;
    let found = settle("reading the namespace's record", || record(backend, name, true)).await?;
    let Some(mut record) = found else {
        if backend.routing().overlapping(name.as_bytes()).is_some_and(|n| n.prefix == name.as_bytes()) {
            return Err(ApiError::Invalid(format!(
                "namespace {name:?} was declared in the config at the cluster's bootstrap; only namespaces created at runtime can be dropped"
            )));
        }
        return Err(ApiError::NamespaceNotFound(format!("namespace {name:?} not found")));
    };
    if record.state == NsState::Shared {
        return drop_shared(backend, record, force).await;
    }
    if record.state == NsState::Merging {
        // A merge cut short: finish it, then drop the shared namespace.
        let r = finish_merge(backend, record).await?;
        return drop_shared(backend, r, force).await;
    }
    if record.state == NsState::Creating {
        // A create cut short: finish it, so there is one state to undo.
        finish_create(backend, record.clone()).await?;
        record = record_of(backend, name).await?.ok_or_else(|| ApiError::NamespaceNotFound(format!("namespace {name:?} not found")))?;
    }
    if record.state == NsState::Ready {
        record.state = NsState::Dropping;
        record.drop_force = force;
        rewrite(backend, &mut record).await?;
    } else if force && !record.drop_force {
        record.drop_force = true;
        rewrite(backend, &mut record).await?;
    }
    finish_drop(backend, record).await
}

/// The steps of a drop after its record says `dropping` (idempotent).
async fn finish_drop(backend: &Backend, mut record: NsRecord) -> Result<(), ApiError> {
    if record.range_id == ROOT_RANGE_ID {
        // A shared namespace: the root range is never sealed.
        return finish_drop_shared(backend, record).await;
    }
    let name = record.name.clone();
    let prefix = name.as_bytes().to_vec();
    // The range stops serving; refused (changing nothing) while it holds
    // keys or locks, unless forced. Its last revision is the floor the
    // root continues from under the prefix.
    let seal = c::SealOp { prefix: prefix.clone(), force: record.drop_force, merge: false };
    let sealed = settle("sealing the namespace's range", || backend.execute(record.range_id, c::Op::Seal(seal.clone()))).await;
    let floor = match sealed {
        Ok(out) => out.revision,
        Err(ApiError::Invalid(why)) => {
            record.state = NsState::Ready;
            rewrite(backend, &mut record).await?;
            return Err(ApiError::NamespaceNotEmpty(why));
        }
        Err(e) => return Err(e),
    };
    let uncarve = c::UncarveOp { prefix: prefix.clone(), revision_floor: floor, namespace_id: record.namespace_id };
    settle("returning the prefix to the root range", || backend.execute(ROOT_RANGE_ID, c::Op::Uncarve(uncarve.clone()))).await?;
    let ops =
        vec![delete(meta::range_key(record.range_id)), delete(ns_key(&name)), put(retired_key(record.range_id), name.clone().into_bytes())];
    if settle("removing the namespace from the catalog", || guarded(backend, &record, ops.clone())).await?.is_none() {
        return Err(ApiError::NamespaceExists(format!("namespace {name:?} was changed by another request during its drop")));
    }
    settle("reading the catalog", || backend.refresh_routes_now()).await?;
    info!(namespace = name, range = record.range_id, floor, "namespace dropped");
    Ok(())
}

/// Drops a shared namespace: its keys are the root range's, deleted with
/// `force` (refused, changing nothing, while it holds keys or locks
/// without). The record says `dropping` first, so a split racing the drop
/// (its allocation is conditional on the record) cannot carve the prefix
/// out from under the delete.
async fn drop_shared(backend: &Backend, mut record: NsRecord, force: bool) -> Result<(), ApiError> {
    let name = record.name.clone();
    let prefix = name.as_bytes().to_vec();
    if !force {
        let count = c::RangeOp { key: prefix.clone(), range_end: prefix_end(&prefix), count_only: true, ..Default::default() };
        let held = backend.query(ROOT_RANGE_ID, c::QueryKind::Range(count), true).await?.range.map_or(0, |r| r.count);
        if held > 0 {
            return Err(ApiError::NamespaceNotEmpty(format!("namespace {name:?} holds {held} key(s); delete them first, or drop --force")));
        }
        let q = c::QueryKind::Locks(c::LocksOp { from_name: prefix.clone(), limit: 1 });
        let locks = backend.query(ROOT_RANGE_ID, q, true).await?.locks;
        if let Some(l) = locks.iter().find(|l| l.name.starts_with(&prefix)) {
            return Err(ApiError::NamespaceNotEmpty(format!(
                "lock {:?} in namespace {name:?} is held or waited for; release it first, or drop --force",
                String::from_utf8_lossy(&l.name)
            )));
        }
    }
    record.state = NsState::Dropping;
    record.drop_force = force;
    rewrite(backend, &mut record).await?;
    finish_drop_shared(backend, record).await
}

/// The steps of a shared namespace's drop after its record says
/// `dropping` (idempotent): its keys deleted if forced, then its record.
/// The prefix is the root namespace's again (locks under it stay the
/// root's until released).
async fn finish_drop_shared(backend: &Backend, record: NsRecord) -> Result<(), ApiError> {
    let name = record.name.clone();
    let prefix = name.as_bytes().to_vec();
    let mut deleted = 0;
    if record.drop_force {
        let del = c::DeleteOp { key: prefix.clone(), range_end: prefix_end(&prefix), ..Default::default() };
        let out = settle("deleting the namespace's keys", || backend.execute(ROOT_RANGE_ID, c::Op::DeleteRange(del.clone()))).await?;
        if let Some(c::OutcomeKind::Delete(d)) = out.kind {
            deleted = d.deleted;
        }
    }
    if settle("removing the namespace from the catalog", || guarded(backend, &record, vec![delete(ns_key(&name))])).await?.is_none() {
        return Err(ApiError::NamespaceExists(format!("namespace {name:?} was changed by another request during its drop")));
    }
    info!(namespace = name, deleted, "shared namespace dropped");
    Ok(())
}

/// Merges a namespace's group into the root group: the namespace becomes
/// shared (see the module docs). Idempotent: a shared namespace is left as
/// it is, a merge cut short is finished.
pub async fn merge(backend: &Backend, name: &str) -> Result<NsInfo, ApiError> {
    validate_name(name)?;
    let found = settle("reading the namespace's record", || record(backend, name, true)).await?;
    let Some(mut record) = found else { return Err(not_runtime(backend, name, "merged")) };
    match record.state {
        NsState::Shared => return describe(backend, name).await,
        NsState::Merging => {}
        NsState::Creating => {
            return Err(ApiError::NamespaceExists(format!(
                "namespace {name:?} is being created; finish the create first (create it again)"
            )))
        }
        NsState::Dropping => return Err(ApiError::NamespaceExists(format!("namespace {name:?} is being dropped"))),
        NsState::Ready => {
            if record.replicas != backend.cfg.placement.replicas || !record.constraints.is_empty() {
                return Err(ApiError::Invalid(format!(
                    "namespace {name:?} has a placement of its own ({} replicas, constraints {:?}); the root group's is {} replicas and none: a merge would drop it",
                    record.replicas, record.constraints, backend.cfg.placement.replicas
                )));
            }
            record.state = NsState::Merging;
            rewrite(backend, &mut record).await?;
        }
    }
    finish_merge(backend, record).await?;
    describe(backend, name).await
}

/// The refusal for a name with no record: declared in the config, or
/// unknown.
fn not_runtime(backend: &Backend, name: &str, what: &str) -> ApiError {
    if backend.routing().overlapping(name.as_bytes()).is_some_and(|n| n.prefix == name.as_bytes()) {
        return ApiError::Invalid(format!(
            "namespace {name:?} was declared in the config at the cluster's bootstrap; only namespaces created at runtime can be {what}"
        ));
    }
    ApiError::NamespaceNotFound(format!("namespace {name:?} not found"))
}

/// The steps of a merge after its record says `merging` (idempotent):
/// seal the group for the merge (it exports its keys; refused, changing
/// nothing, while the namespace has sessions or locks), absorb the keys
/// into the root range with its revision raised above the namespace's
/// last, then retire the range and record the namespace shared. Returns
/// the record as written.
async fn finish_merge(backend: &Backend, mut record: NsRecord) -> Result<NsRecord, ApiError> {
    claim(backend, &mut record).await?;
    let name = record.name.clone();
    let prefix = name.as_bytes().to_vec();
    let seal = c::SealOp { prefix: prefix.clone(), force: false, merge: true };
    let sealed = settle("sealing the namespace's group for the merge", || async {
        let out = backend.execute(record.range_id, c::Op::Seal(seal.clone())).await?;
        match out.kind {
            Some(c::OutcomeKind::Sealed(s)) => Ok((s.kvs, out.revision)),
            other => Err(ApiError::Internal(format!("unexpected seal outcome {other:?}"))),
        }
    })
    .await;
    let (kvs, floor) = match sealed {
        Ok(x) => x,
        Err(ApiError::Invalid(why)) => {
            record.state = NsState::Ready;
            rewrite(backend, &mut record).await?;
            return Err(ApiError::NamespaceNotEmpty(format!("namespace {name:?} cannot be merged now: {why}")));
        }
        Err(e) => return Err(e),
    };
    let moved = kvs.len() as u64;
    let absorb = c::AbsorbOp { prefix: prefix.clone(), namespace_id: record.namespace_id, revision_floor: floor, kvs };
    let absorbed =
        settle("absorbing the namespace into the root range", || backend.execute(ROOT_RANGE_ID, c::Op::Absorb(absorb.clone()))).await?;
    if matches!(absorbed.kind, Some(c::OutcomeKind::Done(false))) {
        // No carve of this namespace was left: an earlier absorb applied
        // (a retry), so the root serves the prefix. Proven before the
        // group is retired: a root fencing it for another namespace would
        // mean the keys went nowhere.
        let probe = c::RangeOp { key: prefix.clone(), range_end: prefix_end(&prefix), count_only: true, ..Default::default() };
        if let Err(e) = backend.query(ROOT_RANGE_ID, c::QueryKind::Range(probe), true).await {
            return Err(ApiError::Internal(format!(
                "merge of {name:?}: the root range found no carve of namespace {} to undo and does not serve the prefix ({e}); the group is left as it is",
                record.namespace_id
            )));
        }
    }
    let range_id = record.range_id;
    let mut shared = record.clone();
    shared.state = NsState::Shared;
    shared.range_id = ROOT_RANGE_ID;
    shared.namespace_id = backend.routing().root_namespace_id();
    shared.merged_keys = moved;
    shared.changed_ms = crate::backend::wall_ms();
    let ops =
        vec![delete(meta::range_key(range_id)), put(retired_key(range_id), name.clone().into_bytes()), put(ns_key(&name), json(&shared)?)];
    match settle("recording the namespace shared", || guarded(backend, &record, ops.clone())).await? {
        Some(rev) => shared.mod_revision = rev,
        None => return Err(ApiError::NamespaceExists(format!("namespace {name:?} was changed by another request during its merge"))),
    }
    settle("reading the catalog", || backend.refresh_routes_now()).await?;
    info!(namespace = name, range = range_id, keys = moved, floor, "namespace merged into the root group");
    Ok(shared)
}

/// Gives a shared namespace a group of its own: a create that carves its
/// prefix out of the root range (its keys move with their revisions; the
/// new group's revisions continue above them). Refused, leaving it shared,
/// while keys under it are attached to leases or locks are held there.
pub async fn split(backend: &Backend, name: &str) -> Result<NsInfo, ApiError> {
    validate_name(name)?;
    let found = settle("reading the namespace's record", || record(backend, name, true)).await?;
    let Some(record) = found else { return Err(not_runtime(backend, name, "split")) };
    let record = match record.state {
        NsState::Ready => return describe(backend, name).await,
        NsState::Creating if record.split => record,
        NsState::Shared => settle("allocating the namespace's group", || allocate_split(backend, &record)).await?,
        NsState::Merging => return Err(ApiError::NamespaceExists(format!("namespace {name:?} is being merged; merge it again to finish"))),
        _ => return Err(ApiError::NamespaceExists(format!("namespace {name:?} is {}", record.state.as_str()))),
    };
    finish_create(backend, record).await
}

/// Turns a shared record into a `creating` one with a fresh range id,
/// atomically with the id counter and conditional on the record.
async fn allocate_split(backend: &Backend, shared: &NsRecord) -> Result<NsRecord, ApiError> {
    for _ in 0..ALLOCATE_ATTEMPTS {
        let (next, guard) = next_range_id(backend).await?;
        let mut record = shared.clone();
        record.state = NsState::Creating;
        record.split = true;
        record.range_id = next;
        record.namespace_id = next;
        record.changed_ms = crate::backend::wall_ms();
        let same = c::Compare { result: 0, target: 2, key: ns_key(&shared.name), number: shared.mod_revision, ..Default::default() };
        let txn = c::TxnOp {
            compare: vec![guard, same],
            success: vec![put(NEXT_RANGE_KEY.to_vec(), (next + 1).to_be_bytes().to_vec()), put(ns_key(&shared.name), json(&record)?)],
            failure: vec![],
        };
        if let c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), revision } = backend.execute(META_RANGE_ID, c::Op::Txn(txn)).await? {
            if t.succeeded {
                record.mod_revision = revision;
                return Ok(record);
            }
        }
        match record_of(backend, &shared.name).await? {
            Some(r) if r.mod_revision == shared.mod_revision => {} // the counter moved: again
            _ => return Err(ApiError::NamespaceExists(format!("namespace {:?} was changed by another request meanwhile", shared.name))),
        }
    }
    Err(ApiError::Timeout)
}

/// The `meridian.v1.Namespaces` gRPC service.
pub struct NamespacesService {
    pub backend: std::sync::Arc<Backend>,
}

fn to_wire(n: NsInfo) -> api::NamespaceInfo {
    api::NamespaceInfo {
        name: n.name,
        range_id: n.range_id,
        namespace_id: n.namespace_id,
        state: n.state.as_str().into(),
        declared: n.declared,
        replicas_wanted: n.replicas_wanted as u32,
        constraints: n.constraints.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
        replicas: n.replicas,
        moved_keys: n.moved_keys,
        start_revision: n.start_revision,
        keys: n.keys.unwrap_or(-1),
        revision: n.revision.unwrap_or(-1),
        epoch: n.epoch,
        merged_keys: n.merged_keys,
        home_region: n.home_region,
        survival: n.survival,
        read_regions: n.read_regions,
        placement: n
            .placement
            .into_iter()
            .map(|p| api::ReplicaPlace { node: p.node, region: p.region, zone: p.zone, role: p.role, why: p.why })
            .collect(),
    }
}

fn from_wire(w: api::NamespaceInfo) -> NsInfo {
    NsInfo {
        name: w.name,
        range_id: w.range_id,
        namespace_id: w.namespace_id,
        state: NsState::parse(&w.state),
        declared: w.declared,
        replicas_wanted: w.replicas_wanted as usize,
        constraints: w.constraints.iter().filter_map(|c| c.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        replicas: w.replicas,
        epoch: w.epoch,
        moved_keys: w.moved_keys,
        start_revision: w.start_revision,
        merged_keys: w.merged_keys,
        home_region: w.home_region,
        survival: w.survival,
        read_regions: w.read_regions,
        placement: w
            .placement
            .into_iter()
            .map(|p| ReplicaPlace { node: p.node, region: p.region, zone: p.zone, role: p.role, why: p.why })
            .collect(),
        keys: (w.keys >= 0).then_some(w.keys),
        revision: (w.revision >= 0).then_some(w.revision),
    }
}

type NamespacesClient = api::namespaces_client::NamespacesClient<tonic::transport::Channel>;

/// `local`'s answer; when this member holds no replica of the root range
/// (the placement driver moved it away: `NotLeader`), `remote`'s, asked of
/// the member that leads it — once, unless `forwarded` (this request came
/// from another member already).
async fn here_or_on_leader<T, R: std::future::Future<Output = Result<T, Status>>>(
    backend: &Backend,
    forwarded: bool,
    local: impl std::future::Future<Output = Result<T, ApiError>>,
    remote: impl FnOnce(NamespacesClient) -> R,
) -> Result<T, ApiError> {
    match local.await {
        Err(ApiError::NotLeader { leader, .. }) if !forwarded => {
            let client = api::namespaces_client::NamespacesClient::new(backend.channel_to(leader)?);
            remote(client).await.map_err(|s| ApiError::from_status(&s))
        }
        r => r,
    }
}

/// [`create`] here, or on the member leading the root range when this
/// one holds no replica of it (once, unless `forwarded`). What the gRPC
/// and HTTP APIs call.
pub async fn create_via(backend: &Backend, spec: &CreateSpec, forwarded: bool) -> Result<NsInfo, ApiError> {
    let req = api::NamespaceCreateRequest {
        name: spec.name.clone(),
        replicas: spec.replicas.unwrap_or(0) as u32,
        constraints: spec.constraints.clone(),
        shared: spec.shared,
        home_region: spec.home_region.clone().unwrap_or_default(),
        survival: spec.survival.clone().unwrap_or_default(),
        read_replicas: spec.read_replicas,
    };
    here_or_on_leader(backend, forwarded, create(backend, spec), |mut c| async move {
        Ok(from_wire(c.create(crate::backend::forwarded(req)).await?.into_inner()))
    })
    .await
}

/// [`drop_namespace`], forwarded as [`create_via`] is.
pub async fn drop_via(backend: &Backend, name: &str, force: bool, forwarded: bool) -> Result<(), ApiError> {
    let req = api::NamespaceDropRequest { name: name.to_string(), force };
    here_or_on_leader(backend, forwarded, drop_namespace(backend, name, force), |mut c| async move {
        c.drop(crate::backend::forwarded(req)).await.map(|_| ())
    })
    .await
}

/// [`describe`] here, or — when this member holds no replica of the
/// namespace's range (its key count is read there) — on the member the
/// range's refusal names (once, unless `forwarded`).
pub async fn describe_via(backend: &Backend, name: &str, forwarded: bool) -> Result<NsInfo, ApiError> {
    let req = api::NamespaceDescribeRequest { name: name.to_string() };
    here_or_on_leader(backend, forwarded, describe(backend, name), |mut c| async move {
        Ok(from_wire(c.describe(crate::backend::forwarded(req)).await?.into_inner()))
    })
    .await
}

/// [`merge`], forwarded as [`create_via`] is.
pub async fn merge_via(backend: &Backend, name: &str, forwarded: bool) -> Result<NsInfo, ApiError> {
    let req = api::NamespaceMergeRequest { name: name.to_string() };
    here_or_on_leader(backend, forwarded, merge(backend, name), |mut c| async move {
        Ok(from_wire(c.merge(crate::backend::forwarded(req)).await?.into_inner()))
    })
    .await
}

/// [`split`], forwarded as [`create_via`] is.
pub async fn split_via(backend: &Backend, name: &str, forwarded: bool) -> Result<NsInfo, ApiError> {
    let req = api::NamespaceSplitRequest { name: name.to_string() };
    here_or_on_leader(backend, forwarded, split(backend, name), |mut c| async move {
        Ok(from_wire(c.split(crate::backend::forwarded(req)).await?.into_inner()))
    })
    .await
}

#[tonic::async_trait]
impl api::namespaces_server::Namespaces for NamespacesService {
    async fn merge(&self, req: Request<api::NamespaceMergeRequest>) -> Result<Response<api::NamespaceInfo>, Status> {
        let forwarded = req.metadata().get(crate::backend::FORWARDED_HEADER).is_some();
        Ok(Response::new(to_wire(merge_via(&self.backend, &req.get_ref().name, forwarded).await?)))
    }

    async fn split(&self, req: Request<api::NamespaceSplitRequest>) -> Result<Response<api::NamespaceInfo>, Status> {
        let forwarded = req.metadata().get(crate::backend::FORWARDED_HEADER).is_some();
        Ok(Response::new(to_wire(split_via(&self.backend, &req.get_ref().name, forwarded).await?)))
    }

    async fn create(&self, req: Request<api::NamespaceCreateRequest>) -> Result<Response<api::NamespaceInfo>, Status> {
        let forwarded = req.metadata().get(crate::backend::FORWARDED_HEADER).is_some();
        let r = req.into_inner();
        let spec = CreateSpec {
            name: r.name,
            replicas: (r.replicas > 0).then_some(r.replicas as usize),
            constraints: r.constraints,
            shared: r.shared,
            home_region: (!r.home_region.is_empty()).then_some(r.home_region),
            survival: (!r.survival.is_empty()).then_some(r.survival),
            read_replicas: r.read_replicas,
        };
        Ok(Response::new(to_wire(create_via(&self.backend, &spec, forwarded).await?)))
    }

    async fn list(&self, _req: Request<api::NamespaceListRequest>) -> Result<Response<api::NamespaceListResponse>, Status> {
        let namespaces = list(&self.backend).await?.into_iter().map(to_wire).collect();
        Ok(Response::new(api::NamespaceListResponse { namespaces }))
    }

    async fn describe(&self, req: Request<api::NamespaceDescribeRequest>) -> Result<Response<api::NamespaceInfo>, Status> {
        let forwarded = req.metadata().get(crate::backend::FORWARDED_HEADER).is_some();
        Ok(Response::new(to_wire(describe_via(&self.backend, &req.get_ref().name, forwarded).await?)))
    }

    async fn promote(&self, req: Request<api::NamespacePromoteRequest>) -> Result<Response<api::NamespacePromoteResponse>, Status> {
        crate::promote::serve(&self.backend, req).await
    }

    async fn drop(&self, req: Request<api::NamespaceDropRequest>) -> Result<Response<api::NamespaceDropResponse>, Status> {
        let forwarded = req.metadata().get(crate::backend::FORWARDED_HEADER).is_some();
        let r = req.into_inner();
        drop_via(&self.backend, &r.name, r.force, forwarded).await?;
        Ok(Response::new(api::NamespaceDropResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_clean_prefixes() {
        for ok in ["/a/", "/payments/", "/team-1/locks_v2/", "/A.b/"] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        let long = format!("/{}/", "x".repeat(MAX_NAME_BYTES));
        for (bad, why) in [
            ("", "empty"),
            ("/", "start and end"),
            ("a/", "start and end"),
            ("/a", "start and end"),
            ("/a//b/", "empty path segment"),
            ("/a b/", "character ' '"),
            ("/ä/", "character 'ä'"),
            (long.as_str(), "longer than"),
        ] {
            match validate_name(bad) {
                Err(ApiError::Invalid(m)) => assert!(m.contains(why), "{bad:?}: {m}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_name_lies_inside_each_of_its_parent_prefixes() {
        assert_eq!(ancestors("/a/b/c/"), ["/a/", "/a/b/"]);
        assert!(ancestors("/a/").is_empty());
    }

    #[test]
    fn constraints_are_known_labels() {
        let ok = parse_constraints(&["zone=a".into(), "region=eu".into()]).unwrap();
        assert_eq!(ok.get("zone").map(String::as_str), Some("a"));
        for (bad, why) in [("zone", "KEY=VALUE"), ("rack=1", "not one of"), ("zone=", "empty value")] {
            match parse_constraints(&[bad.into()]) {
                Err(ApiError::Invalid(m)) => assert!(m.contains(why), "{bad}: {m}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(parse_constraints(&["zone=a".into(), "zone=b".into()]).is_err());
    }
}
