//! The lock core shared by `meridian.v1` (Session, Lock, Election) and the
//! etcd-compatible `v3electionpb.Election`: proposing lock commands from
//! any node, and waiting for a grant without polling or herds.
//!
//! A blocked acquire waits on the node that received it. Its waiter is
//! registered in the [`LockHub`] *before* the acquire is proposed, so the
//! grant — applied on every replica — wakes it wherever it waits. A slow
//! re-check of the local replica covers a replica that skipped the grant's
//! entry by installing a snapshot. A wait that ends without a grant
//! (deadline, client gone) leaves the queue through a cancel command.

use std::sync::Arc;
use std::time::Duration;

use meridian_kv::command as c;
use meridian_kv::locks::{self, Holder, LockRecord};
use meridian_proto::meridian::v1 as api;
use meridian_proto::meridian::v1::internal_client::InternalClient;
use prost::Message as _;
use tonic::{Request, Response, Status};
use tracing::debug;

use crate::backend::{forwarded, Backend, FORWARDED_HEADER};
use crate::error::ApiError;
use crate::lease_service::lease_range_of;
use crate::lock_hub::{LockHub, Wake};

/// Longest an acquire waits when the caller set no limit.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// How often a waiter re-reads its replica in case it missed its grant.
const RECHECK: Duration = Duration::from_secs(2);

/// Result of an acquire.
#[derive(Debug, Clone)]
pub struct Acquired {
    pub acquired: bool,
    pub token: i64,
    pub lock: LockRecord,
    pub revision: i64,
}

pub struct Coordinator {
    pub backend: Arc<Backend>,
    pub hub: Arc<LockHub>,
}

/// Leaves the queue if the wait ends without a grant (deadline passed,
/// or the caller went away and the request future was dropped).
struct WaitGuard {
    coord: Option<(Arc<Backend>, Arc<LockHub>)>,
    range_id: u64,
    name: Vec<u8>,
    session: i64,
    waiter_id: u64,
}

impl WaitGuard {
    fn disarm(&mut self) {
        if let Some((_, hub)) = self.coord.take() {
            hub.unregister(self.range_id, self.waiter_id);
        }
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        let Some((backend, hub)) = self.coord.take() else { return };
        hub.unregister(self.range_id, self.waiter_id);
        let op =
            c::Op::LockCancel(c::LockCancelOp { name: std::mem::take(&mut self.name), session: self.session, waiter_id: self.waiter_id });
        let range_id = self.range_id;
        tokio::spawn(async move {
            let coord = Coordinator { backend, hub };
            if let Err(e) = coord.exec(range_id, op).await {
                debug!(range = range_id, "cancelling an abandoned lock wait: {e}");
            }
        });
    }
}

impl Coordinator {
    /// Proposes on the range leader: here, or forwarded once through the
    /// internal service (the caller keeps waiting here).
    pub async fn exec(&self, range_id: u64, op: c::Op) -> Result<c::Outcome, ApiError> {
        match self.backend.execute(range_id, op.clone()).await {
            Err(ApiError::NotLeader { leader, .. }) if leader != 0 && leader != self.backend.cfg.node_id => {
                let cmd = c::Command { op: Some(op), wall_ms: crate::backend::wall_ms() };
                let mut client = InternalClient::new(self.backend.channel_to(leader)?);
                let req = forwarded(api::ProposeRequest { range_id, command: cmd.encode_to_vec() });
                let raw = client.propose(req).await.map_err(|s| ApiError::from_status(&s))?.into_inner().outcome;
                let out = c::Outcome::decode(raw.as_slice()).map_err(|e| ApiError::Internal(format!("undecodable outcome: {e}")))?;
                match &out.kind {
                    Some(c::OutcomeKind::Error(e)) => Err(ApiError::from_outcome(e)),
                    _ => Ok(out),
                }
            }
            other => other,
        }
    }

    /// The range of a lock name, checking the session lives there too.
    pub fn lock_range(&self, name: &[u8], session: i64) -> Result<u64, ApiError> {
        locks::validate_name(name)?;
        let range_id = self.backend.routing().range_of_key(name);
        if session != 0 && lease_range_of(&self.backend.routing(), session) != range_id {
            return Err(ApiError::CrossNamespace(format!(
                "session {session:#x} belongs to another namespace than lock {:?}; create the session in the lock's namespace",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(range_id)
    }

    pub async fn describe(&self, range_id: u64, name: &[u8], linearizable: bool) -> Result<(LockRecord, i64), ApiError> {
        let a = self.backend.query(range_id, c::QueryKind::LockDescribe(name.to_vec()), linearizable).await?;
        Ok((a.lock.unwrap_or_default(), a.revision))
    }

    /// Joins the queue and waits (or, `try_once`, takes the lock only if
    /// free). `wait` bounds the wait.
    pub async fn acquire(
        &self,
        name: &[u8],
        session: i64,
        try_once: bool,
        wait: Duration,
        lock_delay_ms: i64,
        value: Vec<u8>,
    ) -> Result<Acquired, ApiError> {
        let range_id = self.lock_range(name, session)?;
        let waiter_id = self.hub.next_waiter_id();
        let mut rx = (!try_once).then(|| self.hub.register(range_id, waiter_id));
        let mut guard = WaitGuard {
            coord: rx.is_some().then(|| (self.backend.clone(), self.hub.clone())),
            range_id,
            name: name.to_vec(),
            session,
            waiter_id,
        };
        let op = c::LockAcquireOp { name: name.to_vec(), session, waiter_id, try_only: try_once, lock_delay_ms, value };
        let out = self.exec(range_id, c::Op::LockAcquire(op)).await?;
        let Some(c::OutcomeKind::Lock(l)) = out.kind else {
            return Err(ApiError::Internal("unexpected acquire outcome".into()));
        };
        if l.granted || try_once {
            guard.disarm();
            return Ok(Acquired { acquired: l.granted, token: l.token, lock: l.lock.unwrap_or_default(), revision: out.revision });
        }
        let deadline = tokio::time::Instant::now() + wait.min(MAX_WAIT);
        let rx = rx.as_mut().expect("registered when not try-once");
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        loop {
            tokio::select! {
                w = &mut *rx => {
                    if matches!(w, Ok(Wake::Moved)) {
                        // The replica left this node. The client retries on
                        // another member, where the same session's acquire
                        // takes over its place in the queue; the armed guard
                        // cancels this wait if it can still reach the range.
                        return Err(ApiError::NoLeader { range_id });
                    }
                    guard.disarm();
                    return match w {
                        Ok(Wake::Granted(h)) => Ok(self.granted(range_id, name, h).await),
                        _ => Err(ApiError::SessionNotFound),
                    };
                }
                _ = recheck.tick() => {
                    // The local replica may lag (a partition): it can still
                    // show this session holding from an *earlier* acquire.
                    // Only a grant naming this very waiter counts here.
                    let (rec, _) = self.describe(range_id, name, false).await?;
                    if let Some(h) = rec.holder.clone().filter(|h| h.session == session && h.waiter_id == waiter_id) {
                        guard.disarm();
                        return Ok(self.granted(range_id, name, h).await);
                    }
                    if !rec.waiters.iter().any(|w| w.session == session) {
                        // Neither holding nor queued here: the session ended,
                        // or this replica lags. A linearizable read decides.
                        let (rec, _) = self.describe(range_id, name, true).await?;
                        if let Some(h) = rec.holder.filter(|h| h.session == session) {
                            guard.disarm();
                            return Ok(self.granted(range_id, name, h).await);
                        }
                        if !rec.waiters.iter().any(|w| w.session == session) {
                            guard.disarm();
                            return Err(ApiError::SessionNotFound);
                        }
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    guard.disarm();
                    let cancel = c::Op::LockCancel(c::LockCancelOp { name: name.to_vec(), session, waiter_id });
                    let out = self.exec(range_id, cancel).await?;
                    // Not cancelled: granted in the meantime.
                    let (rec, revision) = self.describe(range_id, name, true).await?;
                    if let (Some(c::OutcomeKind::Done(false)), Some(h)) = (&out.kind, rec.holder.clone().filter(|h| h.session == session)) {
                        return Ok(Acquired { acquired: true, token: h.token, lock: rec, revision });
                    }
                    return Ok(Acquired { acquired: false, token: 0, lock: rec, revision });
                }
            }
        }
    }

    async fn granted(&self, range_id: u64, name: &[u8], h: Holder) -> Acquired {
        let token = h.token;
        let (lock, revision) =
            self.describe(range_id, name, false).await.unwrap_or_else(|_| (LockRecord { holder: Some(h), ..Default::default() }, token));
        Acquired { acquired: true, token, lock, revision: revision.max(token) }
    }

    pub async fn release(&self, name: &[u8], session: i64, token: i64) -> Result<i64, ApiError> {
        let range_id = self.lock_range(name, session)?;
        let out = self.exec(range_id, c::Op::LockRelease(c::LockReleaseOp { name: name.to_vec(), session, token })).await?;
        Ok(out.revision)
    }

    pub async fn proclaim(&self, name: &[u8], session: i64, token: i64, value: Vec<u8>) -> Result<i64, ApiError> {
        let range_id = self.lock_range(name, session)?;
        let out = self.exec(range_id, c::Op::Proclaim(c::ProclaimOp { name: name.to_vec(), session, token, value })).await?;
        Ok(out.revision)
    }
}

/// Node-to-node forwarding of lock commands to the range leader.
pub struct InternalService {
    pub backend: Arc<Backend>,
}

#[tonic::async_trait]
impl api::internal_server::Internal for InternalService {
    async fn propose(&self, req: Request<api::ProposeRequest>) -> Result<Response<api::ProposeResponse>, Status> {
        if req.metadata().get(FORWARDED_HEADER).is_none() {
            return Err(Status::permission_denied("meridian.v1.Internal is for forwarding between members"));
        }
        let r = req.into_inner();
        let cmd = c::Command::decode(r.command.as_slice()).map_err(|e| ApiError::Invalid(format!("undecodable command: {e}")))?;
        let lock = matches!(cmd.op, Some(c::Op::LockAcquire(_) | c::Op::LockRelease(_) | c::Op::LockCancel(_) | c::Op::Proclaim(_)));
        // The catalog's own records, for a member without a replica of the
        // meta range (`Backend::execute`).
        let catalog = r.range_id == crate::routing::META_RANGE_ID
            && matches!(cmd.op, Some(c::Op::Put(_) | c::Op::DeleteRange(_) | c::Op::Txn(_)))
            && cmd.op.as_ref().is_some_and(|op| c::op_keys(op).iter().all(|k| k.key.starts_with(crate::meta::RESERVED_PREFIX)));
        if !lock && !catalog {
            return Err(ApiError::Invalid("only lock commands and the catalog's records are forwarded".into()).into());
        }
        if let Some(op) = &cmd.op {
            self.backend.admit(r.range_id, op, r.command.len()).await?;
        }
        let keys = cmd.op.as_ref().map(c::op_keys).unwrap_or_default();
        let outcome = self.backend.propose_command(r.range_id, keys, &cmd.encode_to_vec(), false).await?;
        Ok(Response::new(api::ProposeResponse { outcome }))
    }

    type RangeBackupStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<api::RangeBackupChunk, Status>> + Send + 'static>>;

    async fn range_backup(&self, req: Request<api::RangeBackupRequest>) -> Result<Response<Self::RangeBackupStream>, Status> {
        if req.metadata().get(FORWARDED_HEADER).is_none() {
            return Err(Status::permission_denied("meridian.v1.Internal is for forwarding between members"));
        }
        let rx = crate::backup::range_backup(&self.backend, req.into_inner().range_id).await?;
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn range_reports(&self, req: Request<api::RangeReportsRequest>) -> Result<Response<api::RangeReportsResponse>, Status> {
        let count = req.into_inner().count_writes;
        if !count.is_empty() {
            self.backend.write_counts.watch(&count);
        }
        let ranges = crate::placement::local_reports(&self.backend).await;
        let load = Some(crate::placement::local_load(&self.backend).await);
        Ok(Response::new(api::RangeReportsResponse { node_id: self.backend.cfg.node_id, ranges, load }))
    }

    async fn range_step(&self, req: Request<api::RangeStepRequest>) -> Result<Response<api::RangeStepResponse>, Status> {
        if req.metadata().get(FORWARDED_HEADER).is_none() {
            return Err(Status::permission_denied("meridian.v1.Internal is for forwarding between members"));
        }
        let r = req.into_inner();
        crate::placement::apply_step(&self.backend, r.range_id, &r.step, r.node_id).await?;
        Ok(Response::new(api::RangeStepResponse {}))
    }

    async fn range_query(&self, req: Request<api::RangeQueryRequest>) -> Result<Response<api::RangeQueryResponse>, Status> {
        if req.metadata().get(FORWARDED_HEADER).is_none() {
            return Err(Status::permission_denied("meridian.v1.Internal is for forwarding between members"));
        }
        let r = req.into_inner();
        if r.range_id != crate::routing::META_RANGE_ID {
            return Err(Status::invalid_argument("only the meta range is read for another member"));
        }
        let q = match meridian_kv::command::Query::decode(r.query.as_slice()).ok().and_then(|q| q.kind) {
            Some(q @ meridian_kv::command::QueryKind::Range(_)) => q,
            _ => return Err(Status::invalid_argument("only a range read of the meta range is answered")),
        };
        let a = self.backend.query_here(r.range_id, q, r.linearizable).await?;
        Ok(Response::new(api::RangeQueryResponse { answer: a.encode_to_vec() }))
    }

    async fn join(&self, req: Request<api::JoinRequest>) -> Result<Response<api::JoinResponse>, Status> {
        crate::join::handle(&self.backend, req.into_inner()).await.map(Response::new).map_err(Status::from)
    }
}
