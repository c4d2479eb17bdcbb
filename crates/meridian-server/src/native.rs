//! `meridian.v1` Session, Lock and Election services, and the
//! etcd-compatible `v3electionpb.Election` — all on the native lock queue
//! (see [`crate::coordination`] and `meridian_kv::locks`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use meridian_kv::command as c;
use meridian_kv::locks::{self, LockRecord};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::meridian::v1 as api;
use meridian_proto::meridian::v1::lock_client::LockClient;
use meridian_proto::{mvccpb, v3electionpb as ev};
use rand::Rng;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::backend::{forward_target, forwarded, Backend};
use crate::convert;
use crate::coordination::{Coordinator, MAX_WAIT};
use crate::error::{ApiError, MAX_VALUE_BYTES};
use crate::lease_service::{LeaseKeeper, LeaseService, MAX_TTL_S, MIN_TTL_S};
use crate::lock_hub::LockHub;

/// Locks listed by a namespace describe.
const MAX_DESCRIBED: u64 = 10_000;
/// Leader changes buffered per observer stream.
const OBSERVE_BUFFER: usize = 64;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn wait_of(ms: i64) -> Result<Duration, ApiError> {
    match ms {
        0 => Ok(MAX_WAIT),
        ms if ms < 0 => Err(ApiError::Invalid("wait_ms must not be negative".into())),
        ms => Ok(Duration::from_millis(ms as u64)),
    }
}

fn lock_info(name: &[u8], rec: &LockRecord) -> api::LockInfo {
    api::LockInfo {
        name: name.to_vec(),
        holder: rec.holder.as_ref().map(|h| api::LockHolder {
            session_id: h.session,
            token: h.token,
            held_since_unix_ms: h.since_wall_ms,
            value: h.value.clone(),
        }),
        waiters: rec.waiters.iter().map(|w| api::LockWaiter { session_id: w.session, waiting_since_unix_ms: w.since_wall_ms }).collect(),
        lock_delay_ms: rec.delay_ms,
    }
}

// ---- sessions ----------------------------------------------------------------

pub struct SessionService {
    pub backend: Arc<Backend>,
    pub keeper: Arc<LeaseKeeper>,
}

impl SessionService {
    fn leases(&self) -> LeaseService {
        LeaseService { backend: self.backend.clone(), keeper: self.keeper.clone() }
    }
}

#[tonic::async_trait]
impl api::session_server::Session for SessionService {
    async fn create(&self, req: Request<api::SessionCreateRequest>) -> Result<Response<api::SessionCreateResponse>, Status> {
        use pb::lease_server::Lease as _;
        let r = req.into_inner();
        if !(MIN_TTL_S..=MAX_TTL_S).contains(&r.ttl_seconds) {
            return Err(ApiError::Invalid(format!("session TTL {} s outside {MIN_TTL_S}..={MAX_TTL_S} s", r.ttl_seconds)).into());
        }
        let namespace_id = self.backend.routing().namespace_of_key(&r.namespace);
        // The id carries the namespace, so every node routes it.
        for _ in 0..4 {
            let low: i64 = rand::thread_rng().gen_range(1..(1i64 << meridian_kv::mvcc::LEASE_NAMESPACE_SHIFT));
            let id = ((namespace_id as i64) << meridian_kv::mvcc::LEASE_NAMESPACE_SHIFT) | low;
            match self.leases().lease_grant(Request::new(pb::LeaseGrantRequest { ttl: r.ttl_seconds, id })).await {
                Ok(resp) => {
                    let g = resp.into_inner();
                    return Ok(Response::new(api::SessionCreateResponse { header: g.header, session_id: g.id, ttl_seconds: g.ttl }));
                }
                Err(s) if meridian_proto::error_code(&s) == Some(meridian_proto::ErrorCode::LeaseExists) => continue,
                Err(s) => return Err(s),
            }
        }
        Err(ApiError::Internal("could not pick a free session id".into()).into())
    }

    type KeepAliveStream = BoxStream<api::SessionKeepAliveResponse>;

    // The closures pass tonic's own `Status` through.
    #[allow(clippy::result_large_err)]
    async fn keep_alive(&self, req: Request<Streaming<api::SessionKeepAliveRequest>>) -> Result<Response<Self::KeepAliveStream>, Status> {
        let inbound = req.into_inner().map(|m| m.map(|m| pb::LeaseKeepAliveRequest { id: m.session_id }));
        let out = self.leases().keep_alive_stream(inbound, false);
        let mapped = out.map(|r| r.map(|r| api::SessionKeepAliveResponse { header: r.header, session_id: r.id, ttl_seconds: r.ttl }));
        Ok(Response::new(Box::pin(mapped)))
    }

    async fn close(&self, req: Request<api::SessionCloseRequest>) -> Result<Response<api::SessionCloseResponse>, Status> {
        use pb::lease_server::Lease as _;
        let id = req.into_inner().session_id;
        match self.leases().lease_revoke(Request::new(pb::LeaseRevokeRequest { id })).await {
            Ok(r) => Ok(Response::new(api::SessionCloseResponse { header: r.into_inner().header })),
            Err(s) if s.code() == tonic::Code::NotFound => Err(ApiError::SessionNotFound.into()),
            Err(s) => Err(s),
        }
    }
}

// ---- locks -------------------------------------------------------------------

pub struct NativeLockService {
    pub coord: Arc<Coordinator>,
}

#[tonic::async_trait]
impl api::lock_server::Lock for NativeLockService {
    async fn acquire(&self, req: Request<api::AcquireRequest>) -> Result<Response<api::AcquireResponse>, Status> {
        let r = req.into_inner();
        if r.value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::ValueTooLarge.into());
        }
        let a = self.coord.acquire(&r.name, r.session_id, r.try_once, wait_of(r.wait_ms)?, r.lock_delay_ms, r.value).await?;
        let range_id = self.coord.backend.routing().range_of_key(&r.name);
        Ok(Response::new(api::AcquireResponse {
            header: Some(self.coord.backend.header(range_id, a.revision).await),
            acquired: a.acquired,
            token: a.token,
            lock: Some(lock_info(&r.name, &a.lock)),
        }))
    }

    async fn release(&self, req: Request<api::ReleaseRequest>) -> Result<Response<api::ReleaseResponse>, Status> {
        let r = req.into_inner();
        let rev = self.coord.release(&r.name, r.session_id, r.token).await?;
        let range_id = self.coord.backend.routing().range_of_key(&r.name);
        Ok(Response::new(api::ReleaseResponse { header: Some(self.coord.backend.header(range_id, rev).await) }))
    }

    async fn describe(&self, req: Request<api::DescribeRequest>) -> Result<Response<api::DescribeResponse>, Status> {
        let r = req.into_inner();
        let backend = &self.coord.backend;
        let range_id = backend.routing().range_of_key(&r.name);
        if !r.namespace {
            let (rec, revision) = self.coord.describe(self.coord.lock_range(&r.name, 0)?, &r.name, true).await?;
            return Ok(Response::new(api::DescribeResponse {
                header: Some(backend.header(range_id, revision).await),
                lock: Some(lock_info(&r.name, &rec)),
                ..Default::default()
            }));
        }
        let q = c::QueryKind::Locks(c::LocksOp { from_name: Vec::new(), limit: MAX_DESCRIBED });
        let a = backend.query(range_id, q, true).await?;
        let mut resp = api::DescribeResponse { header: Some(backend.header(range_id, a.revision).await), ..Default::default() };
        for l in &a.locks {
            let Some(rec) = &l.lock else { continue };
            if let Some(h) = &rec.holder {
                for w in &rec.waiters {
                    resp.wait_for.push(api::WaitFor { waiter_session_id: w.session, holder_session_id: h.session, name: l.name.clone() });
                }
            }
            resp.locks.push(lock_info(&l.name, rec));
        }
        let cycles = locks::wait_for_cycles(&a.locks);
        self.coord.hub.set_deadlocks(range_id, cycles.len());
        resp.deadlocks = cycles.into_iter().map(|session_ids| api::Deadlock { session_ids }).collect();
        Ok(Response::new(resp))
    }

    async fn guarded_txn(&self, req: Request<api::GuardedTxnRequest>) -> Result<Response<api::GuardedTxnResponse>, Status> {
        let r = req.get_ref();
        let user = r.txn.clone().unwrap_or_default();
        crate::kv_service::check_size(&user)?;
        let mut intervals = Vec::new();
        let mut ops = 0;
        let inner = convert::txn_op(&user, &mut intervals, &mut ops)?;
        let range_id = self.coord.lock_range(&r.name, 0)?;
        if !intervals.is_empty() && convert::single_range(&self.coord.backend.routing(), &intervals)? != range_id {
            return Err(ApiError::CrossNamespace("a guarded txn must stay in its lock's namespace".into()).into());
        }
        let guard = c::Compare { result: 0, target: 5, key: r.name.clone(), number: r.token, ..Default::default() };
        let op = c::TxnOp { compare: vec![guard], success: vec![c::RequestOp { kind: Some(c::RequestKind::Txn(inner)) }], failure: vec![] };
        match self.coord.backend.execute(range_id, c::Op::Txn(op)).await {
            Ok(out) => {
                let header = self.coord.backend.header(range_id, out.revision).await;
                let Some(c::OutcomeKind::Txn(t)) = out.kind else {
                    return Err(ApiError::Internal("unexpected txn outcome".into()).into());
                };
                let inner = t.responses.into_iter().next().and_then(|r| match r.kind {
                    Some(c::ResponseKind::Txn(x)) => Some(x),
                    _ => None,
                });
                Ok(Response::new(api::GuardedTxnResponse {
                    header: Some(header),
                    token_current: t.succeeded,
                    txn: inner.map(|x| convert::txn_response(&user, x, &header)),
                }))
            }
            Err(e) => match forward_target(&req, &e) {
                Some(l) => LockClient::new(self.coord.backend.channel_to(l)?).guarded_txn(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }
}

// ---- elections (native) ----------------------------------------------------------

pub struct NativeElectionService {
    pub coord: Arc<Coordinator>,
}

fn leader_key(name: &[u8], rec: &LockRecord) -> Option<api::LeaderKey> {
    rec.holder.as_ref().map(|h| api::LeaderKey { name: name.to_vec(), session_id: h.session, token: h.token })
}

/// Streams the leader of `name` (on `range_id`) now and at every change,
/// as `T`s built by `make`; `skip_empty` leaves out "no leader" states.
fn observe<T: Send + 'static>(
    coord: Arc<Coordinator>,
    range_id: u64,
    name: Vec<u8>,
    skip_empty: bool,
    make: impl Fn(&LockRecord, pb::ResponseHeader) -> T + Send + 'static,
) -> BoxStream<T> {
    let (tx, rx) = tokio::sync::mpsc::channel(OBSERVE_BUFFER);
    let mut changes = coord.hub.subscribe();
    tokio::spawn(async move {
        let mut last: Option<(i64, Vec<u8>)> = None;
        let mut first = true;
        let mut refresh = tokio::time::interval(Duration::from_secs(5));
        loop {
            // Re-read on start, on a change of this name, on lag, and now
            // and then (a replica that installed a snapshot published none).
            let reread = if first {
                first = false;
                true
            } else {
                tokio::select! {
                    ch = changes.recv() => match ch {
                        Ok(ch) => ch.range_id == range_id && ch.name == name,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    _ = refresh.tick() => true,
                    _ = tx.closed() => break,
                }
            };
            if !reread {
                continue;
            }
            let (rec, revision) = match coord.describe(range_id, &name, false).await {
                Ok(x) => x,
                Err(e) => {
                    let _ = tx.send(Err(Status::from(e))).await;
                    break;
                }
            };
            let now = rec.holder.as_ref().map(|h| (h.token, h.value.clone()));
            if now == last || (skip_empty && now.is_none()) {
                last = now.or(last);
                continue;
            }
            last = now;
            let header = coord.backend.header(range_id, revision).await;
            if tx.send(Ok(make(&rec, header))).await.is_err() {
                break;
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[tonic::async_trait]
impl api::election_server::Election for NativeElectionService {
    async fn campaign(&self, req: Request<api::CampaignRequest>) -> Result<Response<api::CampaignResponse>, Status> {
        let r = req.into_inner();
        if r.value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::ValueTooLarge.into());
        }
        let a = self.coord.acquire(&r.name, r.session_id, false, wait_of(r.wait_ms)?, 0, r.value).await?;
        let range_id = self.coord.backend.routing().range_of_key(&r.name);
        Ok(Response::new(api::CampaignResponse {
            header: Some(self.coord.backend.header(range_id, a.revision).await),
            elected: a.acquired,
            leader: a.acquired.then(|| api::LeaderKey { name: r.name.clone(), session_id: r.session_id, token: a.token }),
        }))
    }

    async fn proclaim(&self, req: Request<api::ProclaimRequest>) -> Result<Response<api::ProclaimResponse>, Status> {
        let r = req.into_inner();
        let l = r.leader.ok_or_else(|| ApiError::Invalid("leader key is missing".into()))?;
        let rev = self.coord.proclaim(&l.name, l.session_id, l.token, r.value).await?;
        let range_id = self.coord.backend.routing().range_of_key(&l.name);
        Ok(Response::new(api::ProclaimResponse { header: Some(self.coord.backend.header(range_id, rev).await) }))
    }

    async fn resign(&self, req: Request<api::ResignRequest>) -> Result<Response<api::ResignResponse>, Status> {
        let l = req.into_inner().leader.ok_or_else(|| ApiError::Invalid("leader key is missing".into()))?;
        let rev = self.coord.release(&l.name, l.session_id, l.token).await?;
        let range_id = self.coord.backend.routing().range_of_key(&l.name);
        Ok(Response::new(api::ResignResponse { header: Some(self.coord.backend.header(range_id, rev).await) }))
    }

    async fn leader(&self, req: Request<api::LeaderRequest>) -> Result<Response<api::LeaderResponse>, Status> {
        let name = req.into_inner().name;
        let range_id = self.coord.lock_range(&name, 0)?;
        let (rec, revision) = self.coord.describe(range_id, &name, true).await?;
        Ok(Response::new(api::LeaderResponse {
            header: Some(self.coord.backend.header(range_id, revision).await),
            leader: leader_key(&name, &rec),
            value: rec.holder.map(|h| h.value).unwrap_or_default(),
        }))
    }

    type ObserveStream = BoxStream<api::LeaderResponse>;

    async fn observe(&self, req: Request<api::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let name = req.into_inner().name;
        let range_id = self.coord.lock_range(&name, 0)?;
        let n = name.clone();
        let stream = observe(self.coord.clone(), range_id, name, false, move |rec, header| api::LeaderResponse {
            header: Some(header),
            leader: leader_key(&n, rec),
            value: rec.holder.as_ref().map(|h| h.value.clone()).unwrap_or_default(),
        });
        Ok(Response::new(stream))
    }
}

// ---- elections (etcd v3election) ---------------------------------------------------

/// etcd's `Election` on the native queue. The leader key is
/// `name/<lease hex>` as etcd shows it; its revision is the fencing token.
pub struct EtcdElectionService {
    pub coord: Arc<Coordinator>,
}

fn etcd_key(name: &[u8], lease: i64) -> Vec<u8> {
    let mut k = name.to_vec();
    k.extend_from_slice(format!("/{lease:x}").as_bytes());
    k
}

fn not_leader() -> Status {
    Status::failed_precondition("etcdserver: election: not leader")
}

fn leader_kv(name: &[u8], rec: &LockRecord) -> Option<mvccpb::KeyValue> {
    rec.holder.as_ref().map(|h| mvccpb::KeyValue {
        key: etcd_key(name, h.session).into(),
        create_revision: h.token,
        mod_revision: h.token,
        version: 1,
        value: h.value.clone().into(),
        lease: h.session,
    })
}

#[tonic::async_trait]
impl ev::election_server::Election for EtcdElectionService {
    async fn campaign(&self, req: Request<ev::CampaignRequest>) -> Result<Response<ev::CampaignResponse>, Status> {
        let r = req.into_inner();
        if r.lease == 0 {
            return Err(ApiError::Invalid("a campaign needs a lease (session)".into()).into());
        }
        if r.value.len() > MAX_VALUE_BYTES {
            return Err(ApiError::ValueTooLarge.into());
        }
        let a = self.coord.acquire(&r.name, r.lease, false, MAX_WAIT, 0, r.value).await.map_err(|e| match e {
            ApiError::SessionNotFound => ApiError::LeaseNotFound,
            e => e,
        })?;
        if !a.acquired {
            return Err(Status::deadline_exceeded("etcdserver: request timed out"));
        }
        let range_id = self.coord.backend.routing().range_of_key(&r.name);
        Ok(Response::new(ev::CampaignResponse {
            header: Some(self.coord.backend.header(range_id, a.revision).await),
            leader: Some(ev::LeaderKey { key: etcd_key(&r.name, r.lease), name: r.name, rev: a.token, lease: r.lease }),
        }))
    }

    async fn proclaim(&self, req: Request<ev::ProclaimRequest>) -> Result<Response<ev::ProclaimResponse>, Status> {
        let r = req.into_inner();
        let l = r.leader.ok_or_else(|| ApiError::Invalid("leader key is missing".into()))?;
        let rev = self.coord.proclaim(&l.name, l.lease, l.rev, r.value).await.map_err(|e| match e {
            ApiError::LockNotHeld(_) => not_leader(),
            e => e.into(),
        })?;
        let range_id = self.coord.backend.routing().range_of_key(&l.name);
        Ok(Response::new(ev::ProclaimResponse { header: Some(self.coord.backend.header(range_id, rev).await) }))
    }

    async fn leader(&self, req: Request<ev::LeaderRequest>) -> Result<Response<ev::LeaderResponse>, Status> {
        let name = req.into_inner().name;
        let range_id = self.coord.lock_range(&name, 0)?;
        let (rec, revision) = self.coord.describe(range_id, &name, true).await?;
        let Some(kv) = leader_kv(&name, &rec) else {
            return Err(Status::failed_precondition("etcdserver: election: no leader"));
        };
        Ok(Response::new(ev::LeaderResponse { header: Some(self.coord.backend.header(range_id, revision).await), kv: Some(kv) }))
    }

    type ObserveStream = BoxStream<ev::LeaderResponse>;

    async fn observe(&self, req: Request<ev::LeaderRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        let name = req.into_inner().name;
        let range_id = self.coord.lock_range(&name, 0)?;
        let n = name.clone();
        let stream = observe(self.coord.clone(), range_id, name, true, move |rec, header| ev::LeaderResponse {
            header: Some(header),
            kv: leader_kv(&n, rec),
        });
        Ok(Response::new(stream))
    }

    async fn resign(&self, req: Request<ev::ResignRequest>) -> Result<Response<ev::ResignResponse>, Status> {
        let l = req.into_inner().leader.ok_or_else(|| ApiError::Invalid("leader key is missing".into()))?;
        let range_id = self.coord.backend.routing().range_of_key(&l.name);
        let rev = match self.coord.release(&l.name, l.lease, l.rev).await {
            Ok(rev) => rev,
            // etcd: resigning when no longer leader is not an error.
            Err(ApiError::LockNotHeld(_)) => 0,
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(ev::ResignResponse { header: Some(self.coord.backend.header(range_id, rev).await) }))
    }
}

/// The hub and coordinator of one server.
pub fn coordinator(backend: Arc<Backend>, hub: Arc<LockHub>) -> Arc<Coordinator> {
    Arc::new(Coordinator { backend, hub })
}
