//! The lock workload: clients contend for one native lock with short-TTL
//! sessions. Each holder writes `(token, client)` to two fenced resources:
//! a Meridian key through a guarded txn (the server checks the token in the
//! same Raft command) and an in-process [`Fence`] (a downstream resource
//! that only knows the tokens it has seen). Some holders stall past their
//! TTL, like a GC pause, and then write without checking that they still
//! hold the lock: the fences must stop them.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use meridian_check::models::{MutexInput, MutexOutput};
use meridian_check::Operation;
use meridian_client::etcd::{request_op, PutRequest, RequestOp, TxnRequest};
use meridian_client::{Client, ClientConfig, ClientError, Fence, LockOptions, Session};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use tracing::debug;

use crate::clock::RunClock;
use crate::scenario::{LockWorkload, LOCK_PREFIX};

/// Most acquire/hold/release cycles of one client (time bounds it first).
const MAX_CYCLES: u64 = 100_000;
/// Deadline of one guarded txn or release, retries included.
const CALL_TIMEOUT: Duration = Duration::from_secs(4);

pub fn lock_name() -> String {
    format!("{LOCK_PREFIX}mutex")
}

pub fn resource_key() -> String {
    format!("{LOCK_PREFIX}resource")
}

pub type MutexOp = Operation<MutexInput, MutexOutput>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WriteOutcome {
    /// The guarded txn ran: the token was current.
    Accepted,
    /// The token was not current; nothing ran.
    Rejected,
    /// The server refused the request outright; nothing ran.
    Refused,
    /// No answer, or an ambiguous error.
    Unknown,
}

/// A guarded write to the resource key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LockWrite {
    pub client: u64,
    pub token: i64,
    /// What was written: `token:client:seq`.
    pub value: String,
    pub call_us: u64,
    pub ret_us: u64,
    pub outcome: WriteOutcome,
    /// Written after a stall longer than the TTL, without checking the lock.
    pub after_stall: bool,
}

/// A lock grant as the client saw it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Grant {
    pub client: u64,
    pub token: i64,
    pub call_us: u64,
    pub ret_us: u64,
}

/// What one lock client recorded.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct LockLog {
    /// Acquire / in-process fenced write / release, for the fenced-mutex model.
    pub mutex_ops: Vec<MutexOp>,
    pub grants: Vec<Grant>,
    pub writes: Vec<LockWrite>,
}

impl LockLog {
    pub fn merge(logs: Vec<LockLog>) -> LockLog {
        let mut all = LockLog::default();
        for l in logs {
            all.mutex_ops.extend(l.mutex_ops);
            all.grants.extend(l.grants);
            all.writes.extend(l.writes);
        }
        all
    }
}

#[derive(Debug, Default)]
pub struct LockCounters {
    pub grants: AtomicU64,
    pub accepted: AtomicU64,
    pub rejected: AtomicU64,
    pub unknown: AtomicU64,
}

impl LockCounters {
    pub fn snapshot(&self) -> (u64, u64, u64, u64) {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        (l(&self.grants), l(&self.accepted), l(&self.rejected), l(&self.unknown))
    }
}

pub fn client_for(endpoints: &[SocketAddr], first: usize) -> Result<Client, ClientError> {
    let n = endpoints.len();
    let eps: Vec<String> = (0..n).map(|i| endpoints[(first + i) % n].to_string()).collect();
    let mut cfg = ClientConfig::new(eps);
    cfg.request_timeout = Duration::from_secs(2);
    cfg.connect_timeout = Duration::from_millis(500);
    cfg.max_attempts = 4;
    Client::with_config(cfg)
}

pub struct LockClient {
    pub id: u64,
    pub endpoints: Vec<SocketAddr>,
    pub cfg: LockWorkload,
    pub fence: Arc<Fence>,
    pub rng: ChaCha8Rng,
    pub clock: RunClock,
    pub counters: Arc<LockCounters>,
    pub end: Duration,
}

impl LockClient {
    pub async fn run(mut self) -> LockLog {
        let mut log = LockLog::default();
        let client = match client_for(&self.endpoints, self.id as usize) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(client = self.id, "lock client: {e}");
                return log;
            }
        };
        let ttl = Duration::from_secs(self.cfg.ttl_s as u64);
        let wait = ttl + Duration::from_secs(1);
        let mut session: Option<Session> = None;
        let mut seq = 0u64;
        for _ in 0..MAX_CYCLES {
            if self.clock.elapsed() >= self.end {
                break;
            }
            if !session.as_ref().is_some_and(Session::is_live) {
                if let Some(old) = session.take() {
                    close_quietly(old).await;
                }
                match tokio::time::timeout(Duration::from_secs(8), client.session(LOCK_PREFIX, self.cfg.ttl_s)).await {
                    Ok(Ok(s)) => session = Some(s),
                    other => {
                        debug!(client = self.id, "session: {:?}", other.map(|r| r.err()));
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                }
            }
            // Do not wait in the queue past the end of the run.
            let wait = wait.min(self.end.saturating_sub(self.clock.elapsed())).max(Duration::from_millis(100));
            let opts = LockOptions { wait: Some(wait), value: self.id.to_string().into_bytes(), ..Default::default() };
            let call = self.clock.now_us();
            let r = match session.as_ref() {
                Some(s) => tokio::time::timeout(wait + Duration::from_secs(6), s.lock(lock_name(), opts)).await,
                None => continue,
            };
            let ret = self.clock.now_us();
            let granted = match r {
                Ok(Ok(Some(g))) => g,
                Ok(Ok(None)) => continue, // waited out: nothing granted
                other => {
                    // Possibly granted to this session: the grant may exist
                    // unseen. Abandon the session so it ends.
                    debug!(client = self.id, "acquire: {:?}", other.map(|r| r.err()));
                    log.mutex_ops.push(Operation::unknown(self.id, MutexInput::Acquire, call));
                    if let Some(old) = session.take() {
                        close_quietly(old).await;
                    }
                    continue;
                }
            };
            let token = granted.token();
            self.counters.grants.fetch_add(1, Ordering::Relaxed);
            log.mutex_ops.push(Operation::completed(self.id, MutexInput::Acquire, MutexOutput::Granted { token: token as u64 }, call, ret));
            log.grants.push(Grant { client: self.id, token, call_us: call, ret_us: ret });

            let stall_at = (self.rng.gen_range(0..100) < self.cfg.stall_percent).then(|| self.rng.gen_range(0..self.cfg.writes_per_hold));
            let mut guard = Some(granted);
            for w in 0..self.cfg.writes_per_hold {
                if self.clock.elapsed() >= self.end {
                    break;
                }
                let hold = self.cfg.hold_ms / 2 + self.rng.gen_range(0..=self.cfg.hold_ms);
                tokio::time::sleep(Duration::from_millis(hold)).await;
                let after_stall = stall_at == Some(w);
                if after_stall {
                    // A process pause (GC, SIGSTOP): its keepalives stop too
                    // (dropping every handle of the session ends them), the
                    // server expires the session, and the lock may move on.
                    // Then it writes with its old token, unchecked.
                    guard = None;
                    session = None;
                    tokio::time::sleep(ttl + Duration::from_millis(1500)).await;
                } else if !guard.as_ref().is_some_and(|g| g.is_held()) {
                    break;
                }
                seq += 1;
                self.fenced_write(&client, &mut log, token, seq, after_stall).await;
                if after_stall {
                    break;
                }
            }
            match guard {
                Some(g) if g.is_held() => {
                    let call = self.clock.now_us();
                    let r = tokio::time::timeout(CALL_TIMEOUT, g.release()).await;
                    let ret = self.clock.now_us();
                    let input = MutexInput::Release { token: token as u64 };
                    match r {
                        Ok(Ok(())) => log.mutex_ops.push(Operation::completed(self.id, input, MutexOutput::Released, call, ret)),
                        _ => {
                            // The lock may still be held by this session: an
                            // acquire on it would be answered with the same
                            // grant (acquire is idempotent per session).
                            // Abandon the session, so it ends and frees the
                            // lock; the next grant goes to a new session.
                            log.mutex_ops.push(Operation::unknown(self.id, input, call));
                            if let Some(old) = session.take() {
                                close_quietly(old).await;
                            }
                        }
                    }
                }
                Some(g) => {
                    // Lost while holding (jeopardy): the server expires it.
                    drop(g);
                    if let Some(old) = session.take() {
                        close_quietly(old).await;
                    }
                }
                None => {}
            }
            tokio::time::sleep(Duration::from_millis(self.rng.gen_range(0..100))).await;
        }
        if let Some(s) = session.take() {
            close_quietly(s).await;
        }
        log
    }

    async fn fenced_write(&self, client: &Client, log: &mut LockLog, token: i64, seq: u64, after_stall: bool) {
        // The in-process resource: it knows only the tokens it has seen.
        let call = self.clock.now_us();
        let admitted = self.fence.admit(token).is_ok();
        let ret = self.clock.now_us();
        log.mutex_ops.push(Operation::completed(
            self.id,
            MutexInput::FencedWrite { token: token as u64, value: self.id },
            MutexOutput::Write { accepted: admitted },
            call,
            ret,
        ));
        // The Meridian resource: a guarded txn.
        let value = format!("{token}:{}:{seq}", self.id);
        let put = RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: resource_key().into_bytes(),
                value: value.clone().into_bytes(),
                ..Default::default()
            })),
        };
        let txn = TxnRequest { compare: vec![], success: vec![put], failure: vec![] };
        let call = self.clock.now_us();
        let r = tokio::time::timeout(CALL_TIMEOUT, client.guarded_txn(lock_name(), token, txn)).await;
        let ret = self.clock.now_us();
        let outcome = match r {
            Ok(Ok(Some(_))) => WriteOutcome::Accepted,
            Ok(Ok(None)) => WriteOutcome::Rejected,
            // A storage failure (DataLoss) on the replica that answered is no
            // refusal of the request: its outcome elsewhere is unknown.
            Ok(Err(ClientError::Rejected { code, .. }))
                if !matches!(code, tonic::Code::Internal | tonic::Code::Unknown | tonic::Code::DataLoss) =>
            {
                WriteOutcome::Refused
            }
            other => {
                debug!(client = self.id, "guarded txn: {other:?}");
                WriteOutcome::Unknown
            }
        };
        let c = &self.counters;
        match outcome {
            WriteOutcome::Accepted => c.accepted.fetch_add(1, Ordering::Relaxed),
            WriteOutcome::Rejected | WriteOutcome::Refused => c.rejected.fetch_add(1, Ordering::Relaxed),
            WriteOutcome::Unknown => c.unknown.fetch_add(1, Ordering::Relaxed),
        };
        log.writes.push(LockWrite { client: self.id, token, value, call_us: call, ret_us: ret, outcome, after_stall });
    }
}

async fn close_quietly(s: Session) {
    if let Err(e) = tokio::time::timeout(Duration::from_secs(3), s.close())
        .await
        .unwrap_or(Err(ClientError::Unavailable { attempts: 0, message: "close timed out".into() }))
    {
        debug!(session = s.id(), "close: {e}");
    }
}
