//! HTTP/JSON for curl users and health checks, plus Prometheus metrics.
//!
//! | route | answer |
//! |---|---|
//! | `GET /healthz` | 200 while the process serves |
//! | `GET /readyz` | 200 when every range has a leader, else 503 |
//! | `GET /metrics` | Prometheus text |
//! | `GET/PUT/DELETE /v1/kv/{key}` | the key: the rest of the path, percent-decoded (`/v1/kv/%2Fa` is `/a`); UTF-8 values |
//! | `GET /v1/cluster/status` | nodes and ranges |
//! | `GET /v1/placement/operators` | the placement operators this node runs (as the meta range's leader, with `[placement] execute = true`) and the last 64 it ran, with why and how each ended |
//! | `GET /v1/placement/plan` | what the placement scheduler would do now (a dry run: nothing is executed), with why |
//! | `GET /v1/nodes` | every node with its addresses, labels, role and the gossip's view: state, φ, incarnation, last heard |
//! | `GET /v1/ranges/{id}/members` | the range's voters and learners as this replica sees them |
//! | `POST /v1/ranges/{id}/members` | one membership step on the range leader: `{"op": "add-learner" \| "promote" \| "remove", "node_id": N}` (see `membership`) |
//! | `POST /v1/debug/{net,transfer-leader,lease-clock-rate}` | fault injection, only with `[debug] faults = true` (404 otherwise) |
//!
//! Errors: 400 bad input, 404 missing, 409/412 conflict or failed
//! precondition, 429 with `Retry-After` when overloaded, 503 without quorum.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use meridian_kv::command as c;
use meridian_raftstore::raft_types::StateRole;
use serde::{Deserialize, Serialize};

use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::kv_client::KvClient;

use crate::backend::{forwarded, Backend};
use crate::error::{ApiError, MAX_VALUE_BYTES};

#[derive(Clone)]
pub struct HttpState {
    pub backend: Arc<Backend>,
    pub locks: Option<Arc<crate::lock_hub::LockHub>>,
    pub watch: Option<Arc<crate::watch_service::WatchHub>>,
    pub keeper: Option<Arc<crate::lease_service::LeaseKeeper>>,
}

pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/cluster/status", get(cluster_status))
        .route("/v1/nodes", get(nodes))
        .route("/v1/placement/plan", get(placement_plan))
        .route("/v1/placement/operators", get(placement_operators))
        .route("/v1/namespaces", get(namespaces_list).post(namespaces_create).delete(namespaces_drop))
        .route("/v1/namespaces/describe", get(namespaces_describe))
        .route("/v1/namespaces/merge", post(namespaces_merge))
        .route("/v1/namespaces/promote", post(namespaces_promote))
        .route("/v1/namespaces/split", post(namespaces_split))
        .route("/v1/nodes/status", get(node_status))
        .route("/v1/nodes/drain", axum::routing::post(node_drain))
        .route("/v1/nodes/undrain", axum::routing::post(node_undrain))
        .route("/v1/nodes/decommission", axum::routing::post(node_decommission))
        .route("/v1/kv/*key", get(kv_get).put(kv_put).delete(kv_delete))
        .route("/v1/ranges/:range_id/members", get(members_get).post(members_change))
        .route("/v1/debug/net", axum::routing::post(debug_net))
        .route("/v1/debug/transfer-leader", axum::routing::post(debug_transfer_leader))
        .route("/v1/debug/lease-clock-rate", axum::routing::post(debug_clock_rate))
        .with_state(state)
}

// ---- fault injection (only with `[debug] faults = true`) ----------------------

#[derive(Deserialize)]
struct NetFaultsBody {
    #[serde(default)]
    block_out: Vec<u64>,
    #[serde(default)]
    block_in: Vec<u64>,
}

/// The answer when fault injection is off (a 404), else `None`.
fn debug_disabled(s: &HttpState) -> Option<Response> {
    (!s.backend.cfg.debug.faults).then(|| (StatusCode::NOT_FOUND, "fault injection is off (set [debug] faults = true)\n").into_response())
}

/// Drops Raft traffic to (`block_out`) and from (`block_in`) peers; empty
/// lists heal.
async fn debug_net(State(s): State<HttpState>, Json(body): Json<NetFaultsBody>) -> Response {
    if let Some(r) = debug_disabled(&s) {
        return r;
    }
    let Some(f) = s.backend.raft.faults() else { return error_response(ApiError::Unimplemented("network faults".into())) };
    f.set(body.block_out.into_iter().collect(), body.block_in.into_iter().collect());
    let (out, inn) = f.blocked();
    tracing::warn!(node = s.backend.cfg.node_id, blocked_out = ?out, blocked_in = ?inn, "fault injection: network");
    "ok\n".into_response()
}

#[derive(Deserialize)]
struct TransferBody {
    range_id: u64,
    to: u64,
}

async fn debug_transfer_leader(State(s): State<HttpState>, Json(body): Json<TransferBody>) -> Response {
    if let Some(r) = debug_disabled(&s) {
        return r;
    }
    if s.backend.is_witness(body.to) {
        return error_response(ApiError::Invalid(format!("node {} is a witness: it votes but never leads a range", body.to)));
    }
    match s.backend.raft.transfer_leader(body.range_id, body.to).await {
        Ok(()) => "ok\n".into_response(),
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
struct RateBody {
    rate: f64,
}

async fn debug_clock_rate(State(s): State<HttpState>, Json(body): Json<RateBody>) -> Response {
    if let Some(r) = debug_disabled(&s) {
        return r;
    }
    let Some(k) = &s.keeper else { return error_response(ApiError::Unimplemented("lease clock".into())) };
    match k.set_clock_rate(body.rate) {
        Ok(()) => {
            tracing::warn!(node = s.backend.cfg.node_id, rate = body.rate, "fault injection: lease clock rate");
            "ok\n".into_response()
        }
        Err(e) => error_response(e),
    }
}

async fn members_get(State(s): State<HttpState>, Path(range_id): Path<u64>) -> Response {
    match crate::membership::describe(&s.backend, range_id).await {
        Ok(m) => Json(m).into_response(),
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemberBody {
    op: crate::membership::MemberOp,
    node_id: u64,
}

async fn members_change(State(s): State<HttpState>, Path(range_id): Path<u64>, raw: Bytes) -> Response {
    let body: MemberBody = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => {
            let why = format!(r#"body must be {{"op": "add-learner" | "promote" | "remove", "node_id": N}}: {e}"#);
            return error_response(ApiError::Invalid(why));
        }
    };
    match crate::membership::change(&s.backend, range_id, body.op, body.node_id).await {
        Ok(m) => Json(m).into_response(),
        Err(ApiError::NotLeader { leader, .. }) => {
            // Point the operator (or script) at the node that can do it.
            let http = s.backend.node(leader).map(|m| m.http_addr);
            let msg = format!("node {} does not lead range {range_id}; node {leader} does", s.backend.cfg.node_id);
            let body = serde_json::json!({ "error": msg, "leader": leader, "leader_http": http });
            (StatusCode::MISDIRECTED_REQUEST, Json(body)).into_response()
        }
        Err(e) => error_response(e),
    }
}

#[derive(Serialize)]
struct ErrorBody {
    error: String,
}

fn error_response(e: ApiError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = (status, Json(ErrorBody { error: e.to_string() })).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
    }
    resp
}

#[derive(Serialize)]
struct KvBody {
    key: String,
    value: String,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

#[derive(Deserialize, Default)]
struct KvQuery {
    #[serde(default)]
    serializable: bool,
    #[serde(default)]
    lease: i64,
}

async fn kv_get(State(s): State<HttpState>, Path(key): Path<String>, Query(q): Query<KvQuery>) -> Response {
    let key = key.into_bytes();
    let range_id = s.backend.routing().range_of_key(&key);
    let op = c::RangeOp { key: key.clone(), ..Default::default() };
    let found = |kv: Option<meridian_proto::mvccpb::KeyValue>| match kv {
        Some(kv) => Json(KvBody {
            key: String::from_utf8_lossy(&kv.key).into_owned(),
            value: String::from_utf8_lossy(&kv.value).into_owned(),
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
            lease: kv.lease,
        })
        .into_response(),
        None => error_response(ApiError::KeyNotFound),
    };
    match s.backend.query(range_id, c::QueryKind::Range(op), !q.serializable).await {
        Ok(a) => found(a.range.and_then(|r| r.kvs.into_iter().next()).map(crate::convert::kv_out)),
        // This node's replica serves no read (a witness): the node it
        // names answers, over its etcd API.
        Err(ApiError::NotLeader { leader, .. }) => match forward_kv(&s, leader).await {
            Ok(mut kv) => {
                let req = pb::RangeRequest { key, serializable: q.serializable, ..Default::default() };
                match kv.range(forwarded(req)).await {
                    Ok(r) => found(r.into_inner().kvs.into_iter().next()),
                    Err(st) => status_response(&st),
                }
            }
            Err(e) => error_response(e),
        },
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
struct PutBody {
    value: String,
}

async fn kv_put(
    State(s): State<HttpState>,
    Path(key): Path<String>,
    Query(q): Query<KvQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // Accept either a JSON body {"value": "..."} or the raw value.
    let is_json = headers.get("content-type").and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("application/json"));
    let value = if is_json {
        match serde_json::from_slice::<PutBody>(&body) {
            Ok(b) => b.value.into_bytes(),
            Err(e) => return error_response(ApiError::Invalid(format!("malformed JSON body: {e}"))),
        }
    } else {
        body.to_vec()
    };
    if value.len() > MAX_VALUE_BYTES {
        return error_response(ApiError::ValueTooLarge);
    }
    let key = key.into_bytes();
    let range_id = s.backend.routing().range_of_key(&key);
    if q.lease != 0 {
        if let Err(e) = crate::kv_service::check_lease_namespace(&s.backend.routing(), q.lease, range_id) {
            return error_response(e);
        }
    }
    let op = c::Op::Put(c::PutOp { key: key.clone(), value: value.clone(), lease: q.lease, ..Default::default() });
    match s.backend.execute(range_id, op).await {
        Ok(out) => Json(serde_json::json!({ "revision": out.revision })).into_response(),
        Err(ApiError::NotLeader { leader, .. }) => {
            // Forward to the leader over its etcd API.
            let req = pb::PutRequest { key, value, lease: q.lease, ..Default::default() };
            match forward_kv(&s, leader).await {
                Ok(mut kv) => match kv.put(forwarded(req)).await {
                    Ok(r) => Json(serde_json::json!({ "revision": r.into_inner().header.map_or(0, |h| h.revision) })).into_response(),
                    Err(st) => status_response(&st),
                },
                Err(e) => error_response(e),
            }
        }
        Err(e) => error_response(e),
    }
}

async fn forward_kv(s: &HttpState, leader: u64) -> Result<KvClient<tonic::transport::Channel>, ApiError> {
    Ok(KvClient::new(s.backend.channel_to(leader)?))
}

/// A forwarded request's gRPC error as an HTTP answer: the same status
/// and headers as the error it names (one table: `ApiError::http_status`).
fn status_response(st: &tonic::Status) -> Response {
    error_response(ApiError::from_status(st))
}

async fn kv_delete(State(s): State<HttpState>, Path(key): Path<String>) -> Response {
    let key = key.into_bytes();
    let range_id = s.backend.routing().range_of_key(&key);
    match s.backend.execute(range_id, c::Op::DeleteRange(c::DeleteOp { key: key.clone(), range_end: vec![], prev_kv: false })).await {
        Ok(c::Outcome { kind: Some(c::OutcomeKind::Delete(d)), .. }) if d.deleted == 0 => error_response(ApiError::KeyNotFound),
        Ok(out) => Json(serde_json::json!({ "revision": out.revision })).into_response(),
        Err(ApiError::NotLeader { leader, .. }) => match forward_kv(&s, leader).await {
            Ok(mut kv) => match kv.delete_range(forwarded(pb::DeleteRangeRequest { key, ..Default::default() })).await {
                Ok(r) if r.get_ref().deleted == 0 => error_response(ApiError::KeyNotFound),
                Ok(r) => Json(serde_json::json!({ "revision": r.into_inner().header.map_or(0, |h| h.revision) })).into_response(),
                Err(st) => status_response(&st),
            },
            Err(e) => error_response(e),
        },
        Err(e) => error_response(e),
    }
}

#[derive(Serialize)]
struct RangeView {
    range_id: u64,
    role: String,
    term: u64,
    leader: u64,
    commit: u64,
    applied: u64,
    voters: Vec<u64>,
    learners: Vec<u64>,
    conf_ver: u64,
    quiesced: bool,
    dormant: bool,
    /// Moving a received snapshot into place (serves nothing until done).
    installing: bool,
}

async fn cluster_status(State(s): State<HttpState>) -> Response {
    let ranges: Vec<RangeView> = s
        .backend
        .raft
        .status()
        .await
        .into_iter()
        .map(|r| RangeView {
            range_id: r.range_id,
            role: format!("{:?}", r.role),
            term: r.term,
            leader: r.leader_id,
            commit: r.commit,
            applied: r.applied,
            voters: r.voters,
            learners: r.learners,
            conf_ver: r.epoch.conf_ver,
            quiesced: r.quiesced,
            dormant: r.dormant,
            installing: r.installing,
        })
        .collect();
    let members: Vec<serde_json::Value> = s
        .backend
        .nodes()
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "client_addr": m.client_addr,
                "http_addr": m.http_addr,
                "region": m.labels.region,
                "zone": m.labels.zone,
                "host": m.labels.host,
                "role": m.role,
            })
        })
        .collect();
    Json(serde_json::json!({
        "node_id": s.backend.cfg.node_id,
        "region": s.backend.cfg.region,
        "zone": s.backend.cfg.zone,
        "members": members,
        "ranges": ranges,
    }))
    .into_response()
}

async fn nodes(State(s): State<HttpState>) -> Response {
    let view = s.backend.gossip.get().map(|g| g.view());
    let nodes = crate::gossip::report(&s.backend.nodes(), s.backend.cfg.node_id, view.as_ref());
    Json(serde_json::json!({
        "node_id": s.backend.cfg.node_id,
        "gossip": view.is_some(),
        "nodes": nodes,
    }))
    .into_response()
}

async fn placement_operators(State(s): State<HttpState>) -> Response {
    Json(serde_json::json!({
        "node_id": s.backend.cfg.node_id,
        "execute": s.backend.cfg.placement.execute,
        "operators": s.backend.placement.list(),
    }))
    .into_response()
}

#[derive(Deserialize)]
struct NodeQuery {
    id: u64,
}

fn drain_answer(r: Result<crate::node_admin::DrainStatus, ApiError>) -> Response {
    match r {
        Ok(st) => Json(st).into_response(),
        Err(e) => error_response(e),
    }
}

async fn node_status(State(s): State<HttpState>, Query(q): Query<NodeQuery>) -> Response {
    drain_answer(crate::node_admin::status(&s.backend, q.id).await)
}

async fn node_drain(State(s): State<HttpState>, Query(q): Query<NodeQuery>) -> Response {
    drain_answer(crate::node_admin::drain(&s.backend, q.id).await)
}

async fn node_undrain(State(s): State<HttpState>, Query(q): Query<NodeQuery>) -> Response {
    drain_answer(crate::node_admin::undrain(&s.backend, q.id).await)
}

async fn node_decommission(State(s): State<HttpState>, Query(q): Query<NodeQuery>) -> Response {
    drain_answer(crate::node_admin::decommission(&s.backend, q.id).await)
}

async fn namespaces_list(State(s): State<HttpState>) -> Response {
    match crate::namespace::list(&s.backend).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error_response(e),
    }
}

async fn namespaces_create(State(s): State<HttpState>, raw: Bytes) -> Response {
    let spec: crate::namespace::CreateSpec = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => {
            let why = format!(
                r#"body must be {{"name": "/prefix/", "replicas": N (optional), "constraints": ["zone=a", …] (optional), "shared": bool (optional), "home_region": "REGION" (optional), "survival": "zone"|"region" (optional), "read_replicas": bool (optional)}}: {e}"#
            );
            return error_response(ApiError::Invalid(why));
        }
    };
    match crate::namespace::create_via(&s.backend, &spec, false).await {
        Ok(info) => (StatusCode::CREATED, Json(info)).into_response(),
        Err(e) => error_response(e),
    }
}

async fn namespaces_promote(State(s): State<HttpState>, raw: Bytes) -> Response {
    let spec: crate::promote::PromoteSpec = match serde_json::from_slice(&raw) {
        Ok(b) => b,
        Err(e) => {
            let why = format!(r#"body must be {{"name": "/prefix/", "to_region": "REGION", "accept_data_loss": true}}: {e}"#);
            return error_response(ApiError::Invalid(why));
        }
    };
    match crate::promote::promote_via(&s.backend, &spec, false).await {
        Ok(report) => Json(report).into_response(),
        Err(e) => error_response(e),
    }
}

#[derive(Deserialize)]
struct NamespaceQuery {
    name: String,
    #[serde(default)]
    force: bool,
}

async fn namespaces_describe(State(s): State<HttpState>, Query(q): Query<NamespaceQuery>) -> Response {
    match crate::namespace::describe_via(&s.backend, &q.name, false).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => error_response(e),
    }
}

async fn namespaces_drop(State(s): State<HttpState>, Query(q): Query<NamespaceQuery>) -> Response {
    match crate::namespace::drop_via(&s.backend, &q.name, q.force, false).await {
        Ok(()) => Json(serde_json::json!({ "dropped": q.name })).into_response(),
        Err(e) => error_response(e),
    }
}

async fn namespaces_merge(State(s): State<HttpState>, Query(q): Query<NamespaceQuery>) -> Response {
    match crate::namespace::merge_via(&s.backend, &q.name, false).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => error_response(e),
    }
}

async fn namespaces_split(State(s): State<HttpState>, Query(q): Query<NamespaceQuery>) -> Response {
    match crate::namespace::split_via(&s.backend, &q.name, false).await {
        Ok(info) => Json(info).into_response(),
        Err(e) => error_response(e),
    }
}

async fn placement_plan(State(s): State<HttpState>) -> Response {
    Json(crate::placement::dry_run(&s.backend).await).into_response()
}

async fn readyz(State(s): State<HttpState>) -> Response {
    let st = s.backend.raft.status().await;
    let missing: Vec<u64> = st.iter().filter(|r| r.leader_id == 0 && !r.dormant).map(|r| r.range_id).collect();
    // A witness with no replica is normal (only region-survival ranges
    // with a slot in its region take one); a data node starts with ranges.
    let witness = s.backend.cfg.role == meridian_membership::NodeRole::Witness;
    if (st.is_empty() && !witness) || !missing.is_empty() {
        return (StatusCode::SERVICE_UNAVAILABLE, format!("ranges without a leader: {missing:?}\n")).into_response();
    }
    "ready\n".into_response()
}

async fn metrics(State(s): State<HttpState>) -> Response {
    use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
    let reg = Registry::new();
    let gauge = |name: &str, help: &str| {
        let g = IntGaugeVec::new(Opts::new(name, help), &["range"]).expect("valid metric");
        reg.register(Box::new(g.clone())).expect("unique metric");
        g
    };
    let leader = gauge("meridian_range_is_leader", "1 if this node leads the range");
    let has_leader = gauge("meridian_range_has_leader", "1 if the range knows a leader (alert when 0)");
    let term = gauge("meridian_range_term", "Raft term of the range");
    let commit = gauge("meridian_range_commit_index", "Committed index");
    let applied = gauge("meridian_range_applied_index", "Applied index");
    let lag = gauge("meridian_range_apply_lag", "commit - applied (alert when it grows)");
    let quiet = gauge("meridian_range_quiesced", "1 if the range is quiesced");
    for r in s.backend.raft.status().await {
        let l = [r.range_id.to_string()];
        let l: [&str; 1] = [l[0].as_str()];
        leader.with_label_values(&l).set((r.role == StateRole::Leader) as i64);
        has_leader.with_label_values(&l).set((r.leader_id != 0) as i64);
        term.with_label_values(&l).set(r.term as i64);
        commit.with_label_values(&l).set(r.commit as i64);
        applied.with_label_values(&l).set(r.applied as i64);
        lag.with_label_values(&l).set(r.commit.saturating_sub(r.applied) as i64);
        quiet.with_label_values(&l).set(r.quiesced as i64);
    }
    {
        let alarms = IntGaugeVec::new(
            Opts::new(
                "meridian_alarms_raised",
                "Alarms raised in the cluster, by type (NOSPACE: writes that grow the data are refused; alert when > 0)",
            ),
            &["alarm"],
        )
        .expect("valid metric");
        reg.register(Box::new(alarms.clone())).expect("unique metric");
        let raised = s.backend.alarms.raised();
        for kind in [crate::alarms::AlarmKind::NoSpace, crate::alarms::AlarmKind::Corrupt] {
            alarms.with_label_values(&[kind.name()]).set(raised.iter().filter(|a| a.kind == kind).count() as i64);
        }
        let engine =
            prometheus::IntGauge::new("meridian_engine_bytes", "Size of this member's engine files (tables, write-ahead logs, manifests)")
                .expect("valid metric");
        engine.set(s.backend.alarms.engine_bytes() as i64);
        reg.register(Box::new(engine)).expect("unique metric");
        let quota = prometheus::IntGauge::new(
            "meridian_quota_backend_bytes",
            "This member's space quota (0: none); alert as meridian_engine_bytes nears it",
        )
        .expect("valid metric");
        quota.set(s.backend.alarms.quota().unwrap_or(0) as i64);
        reg.register(Box::new(quota)).expect("unique metric");
    }
    if let Some(m) = s.backend.raft.metrics().await {
        let counters: [(&str, &str, u64); 23] = [
            ("meridian_store_poll_rounds_total", "Poll rounds of the store", m.poll_rounds),
            (
                "meridian_store_synced_writes_total",
                "fsyncs of the raft log (each covers every round written before it that persisted entries, a snapshot or a term/vote change)",
                m.synced_writes,
            ),
            ("meridian_store_entries_persisted_total", "Raft entries persisted", m.entries_persisted),
            ("meridian_store_entries_applied_total", "Entries applied to state machines", m.entries_applied),
            ("meridian_store_messages_rejected_total", "Malformed, misaddressed or stale peer messages", m.messages_rejected),
            ("meridian_store_snapshots_built_total", "Snapshots built for followers", m.snapshots_built),
            ("meridian_store_snapshots_installed_total", "Snapshots installed on this node", m.snapshots_installed),
            ("meridian_store_snapshots_sent_total", "Snapshot streams handed to the transport", m.snapshots_sent),
            (
                "meridian_store_witness_handoffs_total",
                "Leaderships a witness won and started handing to a full voter (it held writes the survivors lacked)",
                m.witness_handoffs,
            ),
            (
                "meridian_store_witness_snapshots_refused_total",
                "Snapshot requests a witness left unanswered (a full voter sends one once it leads)",
                m.witness_snapshots_refused,
            ),
            ("meridian_store_snapshot_chunks_received_total", "Chunks of received snapshots staged", m.snapshot_chunks_received),
            ("meridian_store_snapshot_bytes_received_total", "Bytes of received snapshot chunks staged", m.snapshot_bytes_received),
            (
                "meridian_store_snapshots_abandoned_total",
                "Received snapshot transfers given up (gap, corrupt chunk, wrong total, silence, or refused by raft)",
                m.snapshots_abandoned,
            ),
            (
                "meridian_store_snapshot_chunks_refused_total",
                "Snapshot chunks refused (too many transfers at once, or the range busy installing)",
                m.snapshot_chunks_refused,
            ),
            ("meridian_store_proposals_dropped_total", "Proposals lost to leader changes", m.proposals_dropped),
            ("meridian_store_proposals_forwarded_total", "Proposals a follower handed to its leader inside raft", m.proposals_forwarded),
            (
                "meridian_store_forwarded_unknown_total",
                "Forwarded proposals that never reached this replica's log (leader changed or timed out), answered outcome-unknown",
                m.forwarded_unknown,
            ),
            (
                "meridian_store_replicas_destroyed_total",
                "Replicas deleted here: removed from their range (the catalog proved it) or of a dropped namespace",
                m.replicas_destroyed,
            ),
            ("meridian_store_read_timeouts_total", "Linearizable reads that found no quorum", m.read_timeouts),
            ("meridian_store_entry_cache_bytes", "Bytes held by the raft entry caches of every range (bounded per node)", m.entry_cache_bytes),
            ("meridian_read_cache_hits_total", "Reads of hot records (leases, lock queues, meta) answered by the read cache", m.read_cache_hits),
            ("meridian_read_cache_misses_total", "Reads of hot records that went to RocksDB", m.read_cache_misses),
            ("meridian_read_cache_bytes", "Bytes held by the read cache of hot records (bounded)", m.read_cache_bytes),
        ];
        for (name, help, v) in counters {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric");
            g.set(v as i64);
            reg.register(Box::new(g)).expect("unique metric");
        }
        let sync_secs = prometheus::Counter::new(
            "meridian_store_sync_seconds_total",
            "Time spent in raft log fsyncs; divided by meridian_store_synced_writes_total, the mean fsync latency",
        )
        .expect("valid metric");
        sync_secs.inc_by(m.sync_micros as f64 / 1e6);
        reg.register(Box::new(sync_secs)).expect("unique metric");
    }
    let reqs =
        prometheus::IntCounterVec::new(Opts::new("meridian_requests_total", "Client requests by operation and result"), &["op", "result"])
            .expect("valid metric");
    let secs = prometheus::CounterVec::new(Opts::new("meridian_request_seconds_total", "Time spent serving requests"), &["op", "result"])
        .expect("valid metric");
    for ((op, result), (count, total)) in s.backend.request_metrics() {
        reqs.with_label_values(&[op, result]).inc_by(count);
        secs.with_label_values(&[op, result]).inc_by(total);
    }
    reg.register(Box::new(reqs)).expect("unique metric");
    if let Some(hub) = &s.locks {
        let m = hub.metrics();
        let waiting = prometheus::IntGauge::new("meridian_lock_waiters", "Lock acquires blocked on this node").expect("valid metric");
        waiting.set(m.waiting as i64);
        reg.register(Box::new(waiting)).expect("unique metric");
        let wakeups = prometheus::IntCounter::new("meridian_lock_wakeups_total", "Blocked acquires woken by their grant (one per grant)")
            .expect("valid metric");
        wakeups.inc_by(m.wakeups);
        reg.register(Box::new(wakeups)).expect("unique metric");
        let dl = gauge("meridian_lock_deadlocks", "Wait-for cycles between sessions found by the last scan (alert when > 0)");
        for (range, n) in hub.deadlocks() {
            dl.with_label_values(&[range.to_string().as_str()]).set(n as i64);
        }
    }
    reg.register(Box::new(secs)).expect("unique metric");
    if let Some(hub) = &s.watch {
        let w = hub.stats();
        for (name, help, v) in [
            ("meridian_watch_streams", "Watch streams open on this node", w.streams),
            ("meridian_watch_watchers", "Watchers on this node's watch streams", w.watchers),
        ] {
            let g = prometheus::IntGauge::new(name, help).expect("valid metric");
            g.set(v as i64);
            reg.register(Box::new(g)).expect("unique metric");
        }
        for (name, help, v) in [
            (
                "meridian_watch_resyncs_total",
                "Times a watch stream fell behind the live feed and was brought up to date from the log (slow clients)",
                w.resyncs,
            ),
            ("meridian_watch_compacted_cancels_total", "Watchers canceled because a revision they still needed was compacted", w.compacted),
        ] {
            let c = prometheus::IntCounter::new(name, help).expect("valid metric");
            c.inc_by(v);
            reg.register(Box::new(c)).expect("unique metric");
        }
    }
    if let Some(g) = s.backend.gossip.get() {
        crate::gossip::register_metrics(&reg, &g.view()).expect("unique metrics");
    }
    let mut buf = Vec::new();
    if TextEncoder::new().encode(&reg.gather(), &mut buf).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    ([("content-type", "text/plain; version=0.0.4")], buf).into_response()
}
