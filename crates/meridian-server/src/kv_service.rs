//! etcd `KV` service.

use std::sync::Arc;

use meridian_kv::command as c;
use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::kv_client::KvClient;
use tonic::{Request, Response, Status};

use crate::backend::{forward_target, forwarded, Backend};
use crate::convert;
use crate::error::{ApiError, MAX_REQUEST_BYTES};

pub struct KvService {
    pub backend: Arc<Backend>,
}

pub fn check_size<M: prost::Message>(m: &M) -> Result<(), ApiError> {
    if m.encoded_len() > MAX_REQUEST_BYTES {
        return Err(ApiError::RequestTooLarge);
    }
    Ok(())
}

impl KvService {
    async fn client(&self, leader: u64) -> Result<KvClient<tonic::transport::Channel>, ApiError> {
        Ok(KvClient::new(self.backend.channel_to(leader)?))
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn range(&self, req: Request<pb::RangeRequest>) -> Result<Response<pb::RangeResponse>, Status> {
        let r = req.get_ref();
        check_size(r)?;
        let range_id = self.backend.routing().range_of_interval(&r.key, &r.range_end).map_err(ApiError::from)?;
        match self.backend.query(range_id, c::QueryKind::Range(convert::range_op(r)), !r.serializable).await {
            Ok(a) => {
                let header = self.backend.header(range_id, a.revision).await;
                Ok(Response::new(convert::range_response(r, a.range.unwrap_or_default(), header)))
            }
            // No replica of the range here (a node that joined): ask one.
            Err(e) => match forward_target(&req, &e) {
                Some(node) => self.client(node).await?.range(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }

    async fn put(&self, req: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let p = req.get_ref();
        check_size(p)?;
        let op = convert::put_op(p)?;
        let range_id = self.backend.routing().range_of_key(&p.key);
        if p.lease != 0 {
            check_lease_namespace(&self.backend.routing(), p.lease, range_id)?;
        }
        match self.backend.execute(range_id, c::Op::Put(op)).await {
            Ok(out) => {
                let prev_kv = match out.kind {
                    Some(c::OutcomeKind::Put(x)) => x.prev_kv.map(convert::kv_out),
                    _ => None,
                };
                Ok(Response::new(pb::PutResponse { header: Some(self.backend.header(range_id, out.revision).await), prev_kv }))
            }
            Err(e) => match forward_target(&req, &e) {
                Some(l) => self.client(l).await?.put(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }

    async fn delete_range(&self, req: Request<pb::DeleteRangeRequest>) -> Result<Response<pb::DeleteRangeResponse>, Status> {
        let d = req.get_ref();
        check_size(d)?;
        let op = convert::delete_op(d)?;
        let range_id = self.backend.routing().range_of_interval(&d.key, &d.range_end).map_err(ApiError::from)?;
        match self.backend.execute(range_id, c::Op::DeleteRange(op)).await {
            Ok(out) => {
                let (deleted, prev_kvs) = match out.kind {
                    Some(c::OutcomeKind::Delete(x)) => (x.deleted, x.prev_kvs.into_iter().map(convert::kv_out).collect()),
                    _ => (0, Vec::new()),
                };
                Ok(Response::new(pb::DeleteRangeResponse {
                    header: Some(self.backend.header(range_id, out.revision).await),
                    deleted,
                    prev_kvs,
                }))
            }
            Err(e) => match forward_target(&req, &e) {
                Some(l) => self.client(l).await?.delete_range(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }

    async fn txn(&self, req: Request<pb::TxnRequest>) -> Result<Response<pb::TxnResponse>, Status> {
        let t = req.get_ref();
        check_size(t)?;
        let mut intervals = Vec::new();
        let mut ops = 0;
        let op = convert::txn_op(t, &mut intervals, &mut ops)?;
        let range_id = convert::single_range(&self.backend.routing(), &intervals)?;
        match self.backend.execute(range_id, c::Op::Txn(op)).await {
            Ok(out) => {
                let header = self.backend.header(range_id, out.revision).await;
                match out.kind {
                    Some(c::OutcomeKind::Txn(x)) => Ok(Response::new(convert::txn_response(t, x, &header))),
                    _ => Err(ApiError::Internal("unexpected txn outcome".into()).into()),
                }
            }
            Err(e) => match forward_target(&req, &e) {
                Some(l) => self.client(l).await?.txn(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }

    /// Compaction applies to the root namespace's revision sequence (each
    /// namespace has its own); compact a namespace through `meridian.v1`.
    async fn compact(&self, req: Request<pb::CompactionRequest>) -> Result<Response<pb::CompactionResponse>, Status> {
        let range_id = crate::routing::ROOT_RANGE_ID;
        match self.backend.execute(range_id, c::Op::Compact(req.get_ref().revision)).await {
            Ok(out) => Ok(Response::new(pb::CompactionResponse { header: Some(self.backend.header(range_id, out.revision).await) })),
            Err(e) => match forward_target(&req, &e) {
                Some(l) => self.client(l).await?.compact(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }
}

/// A lease lives in one namespace's range; keys of other namespaces cannot
/// use it.
pub fn check_lease_namespace(routing: &crate::routing::Routing, lease: i64, key_range: u64) -> Result<(), ApiError> {
    let owner = routing.range_of_lease(lease);
    if owner != key_range {
        return Err(ApiError::CrossNamespace(format!(
            "lease {lease:x} belongs to another namespace (range {owner}) than the key (range {key_range})"
        )));
    }
    Ok(())
}
