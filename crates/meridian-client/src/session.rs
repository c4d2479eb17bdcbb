//! Sessions with jeopardy, fenced locks and elections.
//!
//! **Jeopardy.** The server expires a session one TTL after the last
//! keepalive it *received*, measured on the range leader's monotonic clock
//! (a new leader restarts the count, never shortens it). A keepalive is
//! received after it is *sent*, so when the answer to a keepalive sent at
//! `t` arrives, the server cannot expire the session before `t + ttl` (by
//! any clock running at about the same rate). The session is therefore
//! safe until `t + ttl - margin` on this process's monotonic clock, the
//! margin absorbing clock-rate differences. Past that instant with no newer
//! acknowledgement the session is reported lost, and with it every lock and
//! leadership — before the server could have granted them to anyone else.
//! A process paused (GC, SIGSTOP) past that instant sees the loss as soon as
//! it runs again: [`Session::is_live`] reads the clock, not a flag that the
//! paused keepalive task would have had to set.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meridian_proto::meridian::v1 as api;
use meridian_proto::meridian::v1::election_client::ElectionClient;
use meridian_proto::meridian::v1::lock_client::LockClient;
use meridian_proto::meridian::v1::session_client::SessionClient;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tracing::{debug, warn};

use crate::client::{Client, Retry};
use crate::error::ClientError;

/// Keepalive requests buffered on the stream.
const KEEPALIVE_BUFFER: usize = 4;

/// The jeopardy margin for a TTL: a tenth of it, at least 500 ms, at most
/// half of it.
pub fn margin_for(ttl: Duration) -> Duration {
    (ttl / 10).max(Duration::from_millis(500)).min(ttl / 2)
}

struct Inner {
    client: Client,
    id: i64,
    ttl: Duration,
    /// Safe until this instant (monotonic), extended by acknowledgements.
    safe_until: Mutex<Instant>,
    lost: watch::Sender<bool>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Inner {
    fn safe_until(&self) -> Instant {
        *self.safe_until.lock().expect("session clock")
    }

    fn extend(&self, until: Instant) {
        let mut g = self.safe_until.lock().expect("session clock");
        if until > *g {
            *g = until;
        }
    }

    fn mark_lost(&self, why: &str) {
        if !*self.lost.borrow() {
            warn!(session = self.id, "session lost: {why}");
            self.lost.send_replace(true);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.lock().expect("session tasks").drain(..) {
            t.abort();
        }
    }
}

/// A live session; clones share it. Dropping the last clone stops the
/// keepalives (the server then expires it); [`Session::close`] ends it at
/// once and releases its locks without lock-delay.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

/// How to acquire a lock.
#[derive(Debug, Clone, Default)]
pub struct LockOptions {
    /// Take it only if free now; never queue.
    pub try_once: bool,
    /// Longest wait (`None`: until granted or the session is lost).
    pub wait: Option<Duration>,
    /// Lock-delay if this session expires while holding (≤ 60 s).
    pub lock_delay: Duration,
    /// Published with the lock.
    pub value: Vec<u8>,
}

impl Client {
    /// Creates a session in the namespace holding `namespace` (a prefix or
    /// any name inside it) with a TTL in seconds, and keeps it alive.
    pub async fn session(&self, namespace: impl Into<Vec<u8>>, ttl_seconds: i64) -> Result<Session, ClientError> {
        let req = api::SessionCreateRequest { namespace: namespace.into(), ttl_seconds };
        let sent = Instant::now();
        let r = self
            .call(Retry::IfNotSent, self.config().request_timeout, |ch| {
                let req = req.clone();
                async move { SessionClient::new(ch).create(req).await }
            })
            .await?;
        let r = r.into_inner();
        let ttl = Duration::from_secs(r.ttl_seconds.max(1) as u64);
        let (lost, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            client: self.clone(),
            id: r.session_id,
            ttl,
            safe_until: Mutex::new(sent + ttl - margin_for(ttl)),
            lost,
            tasks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&inner);
        let keepalive = tokio::spawn(keepalive_loop(weak.clone(), self.clone(), r.session_id, ttl));
        let jeopardy = tokio::spawn(jeopardy_loop(weak));
        inner.tasks.lock().expect("session tasks").extend([keepalive, jeopardy]);
        Ok(Session { inner })
    }

    /// The current leader of election `name`.
    pub async fn leader(&self, name: impl Into<Vec<u8>>) -> Result<LeaderEvent, ClientError> {
        let req = api::LeaderRequest { name: name.into() };
        let r = self
            .call(Retry::Always, self.config().request_timeout, |ch| {
                let req = req.clone();
                async move { ElectionClient::new(ch).leader(req).await }
            })
            .await?;
        Ok(LeaderEvent::from(r.into_inner()))
    }

    /// Leader changes of election `name`: the current state first, then
    /// each change; reconnects (to another member if need be) by itself.
    pub fn observe(&self, name: impl Into<Vec<u8>>) -> mpsc::Receiver<LeaderEvent> {
        let (tx, rx) = mpsc::channel(16);
        let client = self.clone();
        let name = name.into();
        tokio::spawn(async move {
            let mut last: Option<LeaderEvent> = None;
            let mut backoff = client.config().backoff;
            loop {
                let (i, ch) = client.channel();
                match ElectionClient::new(ch).observe(api::LeaderRequest { name: name.clone() }).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        while let Some(Ok(r)) = stream.next().await {
                            backoff = client.config().backoff;
                            let ev = LeaderEvent::from(r);
                            if last.as_ref() != Some(&ev) {
                                last = Some(ev.clone());
                                if tx.send(ev).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    Err(e) => debug!("observe: {e}"),
                }
                if tx.is_closed() {
                    return;
                }
                client.rotate(i);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        rx
    }
}

async fn keepalive_loop(session: std::sync::Weak<Inner>, client: Client, id: i64, ttl: Duration) {
    let every = (ttl / 3).max(Duration::from_millis(200));
    let mut backoff = client.config().backoff;
    loop {
        let (i, ch) = client.channel();
        let (tx, rx) = mpsc::channel(KEEPALIVE_BUFFER);
        let mut stream = match SessionClient::new(ch).keep_alive(tokio_stream::wrappers::ReceiverStream::new(rx)).await {
            Ok(s) => s.into_inner(),
            Err(e) => {
                debug!(session = id, "keepalive stream: {e}");
                client.rotate(i);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(every);
                continue;
            }
        };
        loop {
            let Some(inner) = session.upgrade() else { return };
            if *inner.lost.borrow() {
                return;
            }
            drop(inner);
            let sent = Instant::now();
            if tx.send(api::SessionKeepAliveRequest { session_id: id }).await.is_err() {
                break;
            }
            match tokio::time::timeout(every, stream.next()).await {
                Ok(Some(Ok(r))) => {
                    let Some(inner) = session.upgrade() else { return };
                    if r.ttl_seconds <= 0 {
                        inner.mark_lost("the server no longer knows it (expired or closed)");
                        return;
                    }
                    let granted = Duration::from_secs(r.ttl_seconds as u64);
                    inner.extend(sent + granted - margin_for(granted));
                    backoff = client.config().backoff;
                }
                Ok(Some(Err(e))) => {
                    debug!(session = id, "keepalive: {e}");
                    if e.code() == tonic::Code::NotFound {
                        if let Some(inner) = session.upgrade() {
                            inner.mark_lost("the server no longer knows it");
                        }
                        return;
                    }
                    break;
                }
                Ok(None) | Err(_) => break,
            }
            tokio::time::sleep_until(sent + every).await;
        }
        client.rotate(i);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(every);
    }
}

/// Declares the session lost when its safe period runs out.
async fn jeopardy_loop(session: std::sync::Weak<Inner>) {
    loop {
        let Some(inner) = session.upgrade() else { return };
        let until = inner.safe_until();
        drop(inner);
        tokio::time::sleep_until(until).await;
        let Some(inner) = session.upgrade() else { return };
        if Instant::now() >= inner.safe_until() {
            inner.mark_lost("no keepalive acknowledged in time (jeopardy)");
            return;
        }
    }
}

impl Session {
    pub fn id(&self) -> i64 {
        self.inner.id
    }

    pub fn ttl(&self) -> Duration {
        self.inner.ttl
    }

    /// Until when (monotonic) the server cannot have expired the session.
    pub fn safe_until(&self) -> Instant {
        self.inner.safe_until()
    }

    /// Synchronous check: the session (and its locks) can still be relied
    /// on right now. Reads the clock, so it is right even after a pause.
    pub fn is_live(&self) -> bool {
        if *self.inner.lost.borrow() {
            return false;
        }
        if Instant::now() >= self.inner.safe_until() {
            self.inner.mark_lost("no keepalive acknowledged in time (jeopardy)");
            return false;
        }
        true
    }

    /// Resolves when the session is lost (at once if it already is).
    pub async fn lost(&self) {
        let mut rx = self.inner.lost.subscribe();
        loop {
            if *rx.borrow_and_update() || !self.is_live() {
                return;
            }
            // Wake at the end of the safe period as well as on a change.
            let until = self.inner.safe_until();
            tokio::select! {
                r = rx.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// Ends the session: its locks and candidacies are released at once.
    pub async fn close(&self) -> Result<(), ClientError> {
        self.inner.lost.send_replace(true);
        let req = api::SessionCloseRequest { session_id: self.inner.id };
        let c = &self.inner.client;
        match c.call(Retry::Always, c.config().request_timeout, |ch| async move { SessionClient::new(ch).close(req).await }).await {
            Ok(_) => Ok(()),
            // Already gone (a retried close, or it expired): closed.
            Err(e) if e.code() == Some(tonic::Code::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn check_live(&self) -> Result<(), ClientError> {
        if self.is_live() {
            Ok(())
        } else {
            Err(ClientError::SessionLost { session_id: self.inner.id })
        }
    }

    /// Acquires lock `name` (in the session's namespace). `Ok(None)`: not
    /// acquired (try-once on a held lock, or the wait ran out).
    pub async fn lock(&self, name: impl Into<Vec<u8>>, opts: LockOptions) -> Result<Option<LockGuard>, ClientError> {
        self.check_live()?;
        let name = name.into();
        let req = api::AcquireRequest {
            name: name.clone(),
            session_id: self.inner.id,
            try_once: opts.try_once,
            wait_ms: opts.wait.map_or(0, |w| w.as_millis().max(1) as i64),
            lock_delay_ms: opts.lock_delay.as_millis() as i64,
            value: opts.value,
        };
        let c = &self.inner.client;
        // An acquire is idempotent per session (a retry finds its place in
        // the queue or its grant), so it is retried anywhere.
        let timeout = opts.wait.unwrap_or(Duration::from_secs(3600)) + c.config().request_timeout;
        let r = c
            .call(Retry::Always, timeout, |ch| {
                let req = req.clone();
                async move { LockClient::new(ch).acquire(req).await }
            })
            .await?
            .into_inner();
        if !r.acquired {
            return Ok(None);
        }
        // Granted, but if the session went into jeopardy meanwhile the
        // grant cannot be relied on.
        self.check_live()?;
        Ok(Some(LockGuard { session: self.clone(), name, token: r.token }))
    }

    /// Campaigns in election `name` with `value`; waits until elected
    /// (or `wait` runs out: `Ok(None)`).
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        wait: Option<Duration>,
    ) -> Result<Option<Leadership>, ClientError> {
        self.check_live()?;
        let name = name.into();
        let req = api::CampaignRequest {
            name: name.clone(),
            session_id: self.inner.id,
            value: value.into(),
            wait_ms: wait.map_or(0, |w| w.as_millis().max(1) as i64),
        };
        let c = &self.inner.client;
        let timeout = wait.unwrap_or(Duration::from_secs(3600)) + c.config().request_timeout;
        let r = c
            .call(Retry::Always, timeout, |ch| {
                let req = req.clone();
                async move { ElectionClient::new(ch).campaign(req).await }
            })
            .await?
            .into_inner();
        match r.leader {
            Some(l) if r.elected => {
                self.check_live()?;
                Ok(Some(Leadership { session: self.clone(), name, token: l.token }))
            }
            _ => Ok(None),
        }
    }

    /// Every lock of the session's namespace, with the wait-for graph.
    pub async fn describe_namespace(&self, any_name: impl Into<Vec<u8>>) -> Result<api::DescribeResponse, ClientError> {
        describe(&self.inner.client, any_name.into(), true).await
    }
}

pub(crate) async fn describe(c: &Client, name: Vec<u8>, namespace: bool) -> Result<api::DescribeResponse, ClientError> {
    let req = api::DescribeRequest { name, namespace };
    Ok(c.call(Retry::Always, c.config().request_timeout, |ch| {
        let req = req.clone();
        async move { LockClient::new(ch).describe(req).await }
    })
    .await?
    .into_inner())
}

impl Client {
    /// Holder and waiters of lock `name`.
    pub async fn describe_lock(&self, name: impl Into<Vec<u8>>) -> Result<api::DescribeResponse, ClientError> {
        describe(self, name.into(), false).await
    }

    /// Every lock of the namespace holding `name`, with its deadlocks.
    pub async fn describe_namespace(&self, name: impl Into<Vec<u8>>) -> Result<api::DescribeResponse, ClientError> {
        describe(self, name.into(), true).await
    }

    /// A Txn that runs only while `token` is the current token of lock
    /// `name`. `Ok(None)`: the token is stale, nothing ran.
    pub async fn guarded_txn(
        &self,
        name: impl Into<Vec<u8>>,
        token: i64,
        txn: crate::etcd::TxnRequest,
    ) -> Result<Option<crate::etcd::TxnResponse>, ClientError> {
        let req = api::GuardedTxnRequest { name: name.into(), token, txn: Some(txn) };
        let r = self
            .call(Retry::IfNotSent, self.config().request_timeout, |ch| {
                let req = req.clone();
                async move { LockClient::new(ch).guarded_txn(req).await }
            })
            .await?;
        let r = r.into_inner();
        Ok(if r.token_current { r.txn } else { None })
    }
}

/// A held lock. Check [`LockGuard::is_held`] before acting on it and hand
/// [`LockGuard::token`] to every resource you write.
pub struct LockGuard {
    session: Session,
    name: Vec<u8>,
    token: i64,
}

impl LockGuard {
    pub fn token(&self) -> i64 {
        self.token
    }

    pub fn name(&self) -> &[u8] {
        &self.name
    }

    pub fn session(&self) -> &Session {
        &self.session
    }

    /// False once the session is lost or in jeopardy.
    pub fn is_held(&self) -> bool {
        self.session.is_live()
    }

    /// Resolves when the lock can no longer be relied on.
    pub async fn lost(&self) {
        self.session.lost().await
    }

    /// Releases the lock; the next waiter is granted at once.
    pub async fn release(self) -> Result<(), ClientError> {
        release(&self.session, &self.name, self.token).await
    }
}

async fn release(session: &Session, name: &[u8], token: i64) -> Result<(), ClientError> {
    let req = api::ReleaseRequest { name: name.to_vec(), session_id: session.id(), token };
    let c = &session.inner.client;
    let mut attempt = 0;
    c.call(Retry::Always, c.config().request_timeout, |ch| {
        attempt += 1;
        let first = attempt == 1;
        let req = req.clone();
        async move {
            match LockClient::new(ch).release(req).await {
                // A retry that finds the lock already released: the first
                // attempt did it.
                Err(s) if !first && s.code() == tonic::Code::FailedPrecondition => Ok(()),
                r => r.map(|_| ()),
            }
        }
    })
    .await
}

/// Leadership of an election.
pub struct Leadership {
    session: Session,
    name: Vec<u8>,
    token: i64,
}

impl Leadership {
    pub fn token(&self) -> i64 {
        self.token
    }

    pub fn is_leader(&self) -> bool {
        self.session.is_live()
    }

    pub async fn lost(&self) {
        self.session.lost().await
    }

    /// Publishes a new value; refused unless still the leader.
    pub async fn proclaim(&self, value: impl Into<Vec<u8>>) -> Result<(), ClientError> {
        self.session.check_live()?;
        let req = api::ProclaimRequest {
            leader: Some(api::LeaderKey { name: self.name.clone(), session_id: self.session.id(), token: self.token }),
            value: value.into(),
        };
        let c = &self.session.inner.client;
        c.call(Retry::Always, c.config().request_timeout, |ch| {
            let req = req.clone();
            async move { ElectionClient::new(ch).proclaim(req).await }
        })
        .await?;
        Ok(())
    }

    pub async fn resign(self) -> Result<(), ClientError> {
        release(&self.session, &self.name, self.token).await
    }
}

/// An election's state as observers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderEvent {
    /// (session, token) of the leader; `None`: nobody leads.
    pub leader: Option<(i64, i64)>,
    pub value: Vec<u8>,
}

impl From<api::LeaderResponse> for LeaderEvent {
    fn from(r: api::LeaderResponse) -> Self {
        LeaderEvent { leader: r.leader.map(|l| (l.session_id, l.token)), value: r.value }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_is_bounded() {
        assert_eq!(margin_for(Duration::from_secs(10)), Duration::from_secs(1));
        assert_eq!(margin_for(Duration::from_secs(2)), Duration::from_millis(500));
        assert_eq!(margin_for(Duration::from_millis(600)), Duration::from_millis(300));
    }
}
