//! etcd `v3lockpb.Lock` (what `etcdctl lock` uses), with etcd's semantics:
//! the lock is held by the waiter whose key `name/<lease>` has the lowest
//! create revision under `name/`; that revision is a fencing token that
//! strictly increases per name. The key is tied to the caller's lease, so
//! a holder whose session dies loses the lock.
//!
//! This is the etcd-compatible surface; Meridian's native lock (one Raft
//! command per acquire, FIFO queue, lock-delay) lives in `meridian.v1`.

use std::sync::Arc;
use std::time::Duration;

use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::kv_client::KvClient;
use meridian_proto::v3lockpb;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::backend::Backend;
use crate::error::ApiError;

/// How often a waiter re-checks whether its predecessor is gone.
const RECHECK: Duration = Duration::from_millis(50);
/// Longest a Lock call waits before answering DEADLINE_EXCEEDED (clients
/// retry; etcdctl's own timeout is usually shorter).
const MAX_WAIT: Duration = Duration::from_secs(300);

pub struct LockService {
    pub backend: Arc<Backend>,
}

impl LockService {
    /// The node's own etcd KV endpoint: writes there are forwarded to the
    /// range leader by the KV service.
    fn kv(&self) -> Result<KvClient<Channel>, ApiError> {
        Ok(KvClient::new(self.backend.channel_to(self.backend.cfg.node_id)?))
    }
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    crate::routing::prefix_end(p)
}

#[tonic::async_trait]
impl v3lockpb::lock_server::Lock for LockService {
    async fn lock(&self, req: Request<v3lockpb::LockRequest>) -> Result<Response<v3lockpb::LockResponse>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(ApiError::Invalid("lock name is empty".into()).into());
        }
        if r.lease == 0 {
            return Err(ApiError::Invalid("a lock needs a lease (session)".into()).into());
        }
        let mut prefix = r.name.clone();
        prefix.push(b'/');
        let mut key = prefix.clone();
        key.extend_from_slice(format!("{:x}", r.lease).as_bytes());
        let range_id = self.backend.routing().range_of_interval(&prefix, &prefix_end(&prefix)).map_err(ApiError::from)?;
        crate::kv_service::check_lease_namespace(&self.backend.routing(), r.lease, range_id)?;
        let mut kv = self.kv()?;
        // Enqueue: create our key unless this lease already has it.
        let put = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestPut(pb::PutRequest { key: key.clone(), lease: r.lease, ..Default::default() })),
        };
        let get = pb::RequestOp {
            request: Some(pb::request_op::Request::RequestRange(pb::RangeRequest { key: key.clone(), ..Default::default() })),
        };
        let absent = pb::Compare {
            result: pb::compare::CompareResult::Equal as i32,
            target: pb::compare::CompareTarget::Create as i32,
            key: key.clone(),
            target_union: Some(pb::compare::TargetUnion::CreateRevision(0)),
            range_end: vec![],
        };
        kv.txn(pb::TxnRequest { compare: vec![absent], success: vec![put], failure: vec![get] }).await?;
        let mine = kv.range(pb::RangeRequest { key: key.clone(), ..Default::default() }).await?.into_inner();
        let my_rev = mine.kvs.first().map(|k| k.create_revision).ok_or(ApiError::LeaseNotFound)?;
        // Wait until no key under the prefix was created before ours.
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            // The newest waiter ahead of us (etcd counts ignore filters, so
            // look at the key-values, not the count).
            let older = kv
                .range(pb::RangeRequest {
                    key: prefix.clone(),
                    range_end: prefix_end(&prefix),
                    max_create_revision: my_rev - 1,
                    sort_target: pb::range_request::SortTarget::Create as i32,
                    sort_order: pb::range_request::SortOrder::Descend as i32,
                    limit: 1,
                    keys_only: true,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if older.kvs.is_empty() {
                // Still ours? (our lease may have expired while waiting)
                let me = kv.range(pb::RangeRequest { key: key.clone(), ..Default::default() }).await?.into_inner();
                if me.kvs.first().map(|k| k.create_revision) != Some(my_rev) {
                    return Err(ApiError::LeaseNotFound.into());
                }
                return Ok(Response::new(v3lockpb::LockResponse { header: me.header, key }));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Status::deadline_exceeded("etcdserver: request timed out waiting for the lock"));
            }
            tokio::time::sleep(RECHECK).await;
        }
    }

    async fn unlock(&self, req: Request<v3lockpb::UnlockRequest>) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        let key = req.into_inner().key;
        if key.is_empty() {
            return Err(ApiError::EmptyKey.into());
        }
        let r = self.kv()?.delete_range(pb::DeleteRangeRequest { key, ..Default::default() }).await?.into_inner();
        Ok(Response::new(v3lockpb::UnlockResponse { header: r.header }))
    }
}
