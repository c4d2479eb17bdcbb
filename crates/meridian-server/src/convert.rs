//! etcd API messages ↔ the KV state machine's commands and outcomes. Plain
//! field copies plus the validation etcd does before proposing.

use meridian_kv::command as c;
use meridian_kv::KeyValue as StoredKv;
use meridian_proto::etcdserverpb as pb;
use meridian_proto::mvccpb;

use crate::error::{ApiError, MAX_TXN_OPS, MAX_VALUE_BYTES};
use crate::routing::Routing;

pub fn kv_out(kv: StoredKv) -> mvccpb::KeyValue {
    mvccpb::KeyValue {
        key: kv.key.into(),
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        value: kv.value.into(),
        lease: kv.lease,
    }
}

pub fn range_op(r: &pb::RangeRequest) -> c::RangeOp {
    // Sorting and filters need every key; the limit is applied afterwards.
    let post = needs_post_processing(r);
    c::RangeOp {
        key: r.key.clone(),
        range_end: r.range_end.clone(),
        limit: if post { 0 } else { r.limit },
        revision: r.revision,
        keys_only: r.keys_only,
        count_only: r.count_only && !post,
    }
}

fn needs_post_processing(r: &pb::RangeRequest) -> bool {
    let sorted_by_key_asc = r.sort_target == pb::range_request::SortTarget::Key as i32
        && (r.sort_order == pb::range_request::SortOrder::None as i32 || r.sort_order == pb::range_request::SortOrder::Ascend as i32);
    !sorted_by_key_asc || r.min_mod_revision > 0 || r.max_mod_revision > 0 || r.min_create_revision > 0 || r.max_create_revision > 0
}

/// Applies etcd's filters, sort and limit to a range outcome.
pub fn range_response(r: &pb::RangeRequest, out: c::RangeOutcome, header: pb::ResponseHeader) -> pb::RangeResponse {
    let mut kvs: Vec<mvccpb::KeyValue> = out.kvs.into_iter().map(kv_out).collect();
    let mut more = out.more;
    if needs_post_processing(r) {
        kvs.retain(|kv| {
            (r.min_mod_revision == 0 || kv.mod_revision >= r.min_mod_revision)
                && (r.max_mod_revision == 0 || kv.mod_revision <= r.max_mod_revision)
                && (r.min_create_revision == 0 || kv.create_revision >= r.min_create_revision)
                && (r.max_create_revision == 0 || kv.create_revision <= r.max_create_revision)
        });
        use pb::range_request::{SortOrder, SortTarget};
        let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
        let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
        // etcd: a sort target without an order means ascending.
        let order = if order == SortOrder::None && target != SortTarget::Key { SortOrder::Ascend } else { order };
        if order != SortOrder::None {
            kvs.sort_by(|a, b| {
                let o = match target {
                    SortTarget::Key => a.key.cmp(&b.key),
                    SortTarget::Version => a.version.cmp(&b.version),
                    SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                    SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                    SortTarget::Value => a.value.cmp(&b.value),
                };
                if order == SortOrder::Descend {
                    o.reverse()
                } else {
                    o
                }
            });
        }
        if r.limit > 0 && kvs.len() > r.limit as usize {
            kvs.truncate(r.limit as usize);
            more = true;
        }
        if r.count_only {
            kvs.clear();
        }
    }
    pb::RangeResponse { header: Some(header), kvs, more, count: out.count }
}

pub fn put_op(p: &pb::PutRequest) -> Result<c::PutOp, ApiError> {
    if p.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if p.value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::ValueTooLarge);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(ApiError::Invalid("value is provided".into()));
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(ApiError::Invalid("lease is provided".into()));
    }
    Ok(c::PutOp {
        key: p.key.clone(),
        value: p.value.clone(),
        lease: p.lease,
        prev_kv: p.prev_kv,
        ignore_value: p.ignore_value,
        ignore_lease: p.ignore_lease,
    })
}

pub fn delete_op(d: &pb::DeleteRangeRequest) -> Result<c::DeleteOp, ApiError> {
    if d.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(c::DeleteOp { key: d.key.clone(), range_end: d.range_end.clone(), prev_kv: d.prev_kv })
}

fn compare(x: &pb::Compare) -> Result<c::Compare, ApiError> {
    use pb::compare::TargetUnion;
    if x.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    let (number, value) = match &x.target_union {
        Some(TargetUnion::Version(n) | TargetUnion::CreateRevision(n) | TargetUnion::ModRevision(n) | TargetUnion::Lease(n)) => {
            (*n, Vec::new())
        }
        Some(TargetUnion::Value(v)) => (0, v.clone()),
        None => (0, Vec::new()),
    };
    Ok(c::Compare { result: x.result, target: x.target, key: x.key.clone(), range_end: x.range_end.clone(), number, value })
}

/// Converts a Txn, counting operations (nested ones too) against the limit
/// and collecting every key interval it touches, for routing.
pub fn txn_op(t: &pb::TxnRequest, intervals: &mut Vec<(Vec<u8>, Vec<u8>)>, ops: &mut usize) -> Result<c::TxnOp, ApiError> {
    *ops += t.compare.len() + t.success.len() + t.failure.len();
    if *ops > MAX_TXN_OPS {
        return Err(ApiError::TooManyOps);
    }
    let mut out = c::TxnOp::default();
    for x in &t.compare {
        intervals.push((x.key.clone(), x.range_end.clone()));
        out.compare.push(compare(x)?);
    }
    for (src, dst) in [(&t.success, &mut out.success), (&t.failure, &mut out.failure)] {
        for op in src {
            use pb::request_op::Request;
            let kind = match &op.request {
                Some(Request::RequestRange(r)) => {
                    intervals.push((r.key.clone(), r.range_end.clone()));
                    c::RequestKind::Range(range_op(r))
                }
                Some(Request::RequestPut(p)) => {
                    intervals.push((p.key.clone(), Vec::new()));
                    c::RequestKind::Put(put_op(p)?)
                }
                Some(Request::RequestDeleteRange(d)) => {
                    intervals.push((d.key.clone(), d.range_end.clone()));
                    c::RequestKind::DeleteRange(delete_op(d)?)
                }
                Some(Request::RequestTxn(n)) => c::RequestKind::Txn(txn_op(n, intervals, ops)?),
                None => return Err(ApiError::Invalid("empty request op in txn".into())),
            };
            dst.push(c::RequestOp { kind: Some(kind) });
        }
    }
    Ok(out)
}

/// The one range every interval belongs to, or a cross-namespace error.
pub fn single_range(routing: &Routing, intervals: &[(Vec<u8>, Vec<u8>)]) -> Result<u64, ApiError> {
    let mut range = None;
    for (k, e) in intervals {
        let r = routing.range_of_interval(k, e)?;
        match range {
            None => range = Some(r),
            Some(x) if x != r => {
                return Err(ApiError::CrossNamespace(format!(
                    "request touches keys of two namespaces ({:?} and {:?}); operations must stay inside one namespace",
                    String::from_utf8_lossy(&intervals[0].0),
                    String::from_utf8_lossy(k)
                )))
            }
            _ => {}
        }
    }
    Ok(range.unwrap_or(crate::routing::ROOT_RANGE_ID))
}

pub fn txn_response(req: &pb::TxnRequest, out: c::TxnOutcome, header: &pb::ResponseHeader) -> pb::TxnResponse {
    let branch = if out.succeeded { &req.success } else { &req.failure };
    let responses = out
        .responses
        .into_iter()
        .zip(branch.iter())
        .map(|(r, q)| {
            use pb::request_op::Request;
            use pb::response_op::Response;
            let resp = match (r.kind, &q.request) {
                (Some(c::ResponseKind::Range(x)), Some(Request::RequestRange(rq))) => {
                    Some(Response::ResponseRange(range_response(rq, x, *header)))
                }
                (Some(c::ResponseKind::Put(x)), _) => {
                    Some(Response::ResponsePut(pb::PutResponse { header: Some(*header), prev_kv: x.prev_kv.map(kv_out) }))
                }
                (Some(c::ResponseKind::Delete(x)), _) => Some(Response::ResponseDeleteRange(pb::DeleteRangeResponse {
                    header: Some(*header),
                    deleted: x.deleted,
                    prev_kvs: x.prev_kvs.into_iter().map(kv_out).collect(),
                })),
                (Some(c::ResponseKind::Txn(x)), Some(Request::RequestTxn(rq))) => Some(Response::ResponseTxn(txn_response(rq, x, header))),
                _ => None,
            };
            pb::ResponseOp { response: resp }
        })
        .collect();
    pb::TxnResponse { header: Some(*header), succeeded: out.succeeded, responses }
}
