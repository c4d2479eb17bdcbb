//! etcd `v3lockpb.Lock` (what `etcdctl lock` uses), with etcd's semantics:
//! the lock is held by the waiter whose key `name/<lease>` has the lowest
//! create revision under `name/`; that revision is a fencing token that
//! strictly increases per name. The key is tied to the caller's lease, so
//! a holder whose session dies loses the lock.
//!
//! This is the etcd-compatible surface; Meridian's native lock (one Raft
//! command per acquire, FIFO queue, lock-delay) lives in `meridian.v1`.
//!
//! As etcd's own server does it: one transaction enqueues the caller and
//! reads the current owner, so an uncontended acquire is one round through
//! Raft. A waiter subscribes to the node's applied events, looks up the key
//! just ahead of its own (its predecessor) and sleeps until this node
//! applies that key's delete (it reads the watch hub's feed, and ignores
//! every other event): a release makes one waiter
//! look again, not the whole queue. It looks on its local replica once that
//! has applied its own key; a slow re-check covers a node that holds no
//! replica of the lock's range, or a feed that lagged. A Lock call that
//! ends without the lock (its deadline, the client gone, an error) deletes
//! its key, as etcd's mutex does: a key left in the queue would later hold
//! the lock for nobody.
//!
//! The service calls the KV service in process (no loopback gRPC), which
//! forwards to the range's leader as it does for clients.

use std::sync::Arc;
use std::time::Duration;

use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::kv_server::Kv as _;
use meridian_proto::v3lockpb;
use tonic::{Request, Response, Status};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::kv_service::KvService;

/// How often a waiter re-checks without having seen a delete (a node with
/// no replica of the range sees none).
const RECHECK: Duration = Duration::from_millis(500);
/// Longest a Lock call waits before answering DEADLINE_EXCEEDED (clients
/// retry; etcdctl's own timeout is usually shorter).
const MAX_WAIT: Duration = Duration::from_secs(300);

pub struct LockService {
    pub backend: Arc<Backend>,
    /// Applied events on this node: a waiter wakes on its predecessor's
    /// delete.
    pub hub: Arc<crate::watch_service::WatchHub>,
}

impl LockService {
    /// The KV service, in process: its writes and linearizable reads go to
    /// the range's leader as clients' do.
    fn kv(&self) -> LocalKv {
        LocalKv(KvService { backend: self.backend.clone() })
    }
}

/// The etcd KV API called in process.
struct LocalKv(KvService);

impl LocalKv {
    async fn txn(&self, r: pb::TxnRequest) -> Result<pb::TxnResponse, Status> {
        self.0.txn(Request::new(r)).await.map(Response::into_inner)
    }

    async fn range(&self, r: pb::RangeRequest) -> Result<pb::RangeResponse, Status> {
        self.0.range(Request::new(r)).await.map(Response::into_inner)
    }

    async fn delete_range(&self, r: pb::DeleteRangeRequest) -> Result<pb::DeleteRangeResponse, Status> {
        self.0.delete_range(Request::new(r)).await.map(Response::into_inner)
    }
}

fn prefix_end(p: &[u8]) -> Vec<u8> {
    crate::routing::prefix_end(p)
}

/// A compare: `key` was created at revision `rev` (0: it does not exist).
fn created_at(key: &[u8], rev: i64) -> pb::Compare {
    pb::Compare {
        result: pb::compare::CompareResult::Equal as i32,
        target: pb::compare::CompareTarget::Create as i32,
        key: key.to_vec(),
        target_union: Some(pb::compare::TargetUnion::CreateRevision(rev)),
        range_end: vec![],
    }
}

/// Deletes a Lock caller's queue key (if it is still the one created at
/// `rev`) when the call ends without the lock: an error, the deadline, or
/// the client going away (the call's future dropped).
struct Abandon {
    backend: Arc<Backend>,
    key: Vec<u8>,
    rev: i64,
    armed: bool,
}

impl Drop for Abandon {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else { return };
        let (backend, key, rev) = (self.backend.clone(), std::mem::take(&mut self.key), self.rev);
        rt.spawn(async move {
            let still_ours = created_at(&key, rev);
            let delete = pb::RequestOp {
                request: Some(pb::request_op::Request::RequestDeleteRange(pb::DeleteRangeRequest { key: key.clone(), ..Default::default() })),
            };
            let txn = pb::TxnRequest { compare: vec![still_ours], success: vec![delete], failure: vec![] };
            if let Err(e) = LocalKv(KvService { backend }).txn(txn).await {
                tracing::warn!(key = %String::from_utf8_lossy(&key), "removing an abandoned lock waiter's key: {}; it goes with its lease", e.message());
            }
        });
    }
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
        let kv = self.kv();
        // Enqueue (create our key unless this lease already has it) and read
        // the owner — the oldest key under the prefix — in one transaction.
        let op = |r: pb::request_op::Request| pb::RequestOp { request: Some(r) };
        let owner = pb::RangeRequest {
            key: prefix.clone(),
            range_end: prefix_end(&prefix),
            sort_target: pb::range_request::SortTarget::Create as i32,
            sort_order: pb::range_request::SortOrder::Ascend as i32,
            limit: 1,
            keys_only: true,
            ..Default::default()
        };
        let absent = created_at(&key, 0);
        let txn = kv
            .txn(pb::TxnRequest {
                compare: vec![absent],
                success: vec![
                    op(pb::request_op::Request::RequestPut(pb::PutRequest { key: key.clone(), lease: r.lease, ..Default::default() })),
                    op(pb::request_op::Request::RequestRange(owner.clone())),
                ],
                failure: vec![
                    op(pb::request_op::Request::RequestRange(pb::RangeRequest { key: key.clone(), ..Default::default() })),
                    op(pb::request_op::Request::RequestRange(owner)),
                ],
            })
            .await?;
        // The create revision of the first key the i-th range op returned.
        let first_created = |i: usize| match txn.responses.get(i).and_then(|r| r.response.as_ref()) {
            Some(pb::response_op::Response::ResponseRange(r)) => r.kvs.first().map(|k| k.create_revision),
            _ => None,
        };
        let my_rev =
            if txn.succeeded { txn.header.as_ref().map_or(0, |h| h.revision) } else { first_created(0).ok_or(ApiError::LeaseNotFound)? };
        let owner_rev = first_created(1);
        if owner_rev == Some(my_rev) {
            return Ok(Response::new(v3lockpb::LockResponse { header: txn.header, key }));
        }
        let mut abandon = Abandon { backend: self.backend.clone(), key: key.clone(), rev: my_rev, armed: true };
        // Subscribed before the first look at the queue: a delete applied
        // here after it is seen on the feed, one applied before it is seen
        // by the look (a local read shows what this replica applied, a read
        // through the leader all that was committed). Only waiters pay for
        // a subscription (the feed counts every receiver on every event).
        let mut live = self.hub.subscribe();
        // Wait until no key under the prefix was created before ours.
        let deadline = tokio::time::Instant::now() + MAX_WAIT;
        loop {
            // The newest waiter ahead of us, on this node's replica when it
            // has applied our key (then every older key's creation, and any
            // delete it shows, are real); else through the leader. (etcd
            // counts ignore filters, so look at the key-values.)
            let older = pb::RangeRequest {
                key: prefix.clone(),
                range_end: prefix_end(&prefix),
                max_create_revision: my_rev - 1,
                sort_target: pb::range_request::SortTarget::Create as i32,
                sort_order: pb::range_request::SortOrder::Descend as i32,
                limit: 1,
                keys_only: true,
                ..Default::default()
            };
            let local = kv.range(pb::RangeRequest { serializable: true, ..older.clone() }).await?;
            let ahead = if local.header.as_ref().is_some_and(|h| h.revision >= my_rev) { local } else { kv.range(older).await? };
            let Some(predecessor) = ahead.kvs.into_iter().next().map(|kv| kv.key) else {
                // Still ours? (our lease may have expired while waiting)
                let me = kv.range(pb::RangeRequest { key: key.clone(), ..Default::default() }).await?;
                if me.kvs.first().map(|k| k.create_revision) != Some(my_rev) {
                    return Err(ApiError::LeaseNotFound.into());
                }
                abandon.armed = false;
                return Ok(Response::new(v3lockpb::LockResponse { header: me.header, key }));
            };
            // Woken by the predecessor's delete applied here (subscribed
            // before looking: none is missed), or the timer.
            let wake = tokio::time::sleep(RECHECK);
            tokio::pin!(wake);
            loop {
                tokio::select! {
                    _ = &mut wake => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(Status::deadline_exceeded("etcdserver: request timed out waiting for the lock"));
                    }
                    item = live.recv() => match item {
                        Ok(p) if p.range_id == range_id
                            && p.events.iter().any(|e| {
                                e.r#type == meridian_proto::mvccpb::event::EventType::Delete as i32
                                    && e.kv.as_ref().is_some_and(|kv| kv.key == predecessor)
                            }) => break,
                        Ok(_) => {}
                        // Lagged: re-check now; closed: the timer paces us.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => wake.as_mut().await,
                    },
                }
            }
        }
    }

    async fn unlock(&self, req: Request<v3lockpb::UnlockRequest>) -> Result<Response<v3lockpb::UnlockResponse>, Status> {
        let key = req.into_inner().key;
        if key.is_empty() {
            return Err(ApiError::EmptyKey.into());
        }
        let r = self.kv().delete_range(pb::DeleteRangeRequest { key, ..Default::default() }).await?;
        Ok(Response::new(v3lockpb::UnlockResponse { header: r.header }))
    }
}
