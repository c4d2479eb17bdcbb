//! Endpoints, failover and the retry rule.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use meridian_proto::etcdserverpb as etcd;
use meridian_proto::etcdserverpb::kv_client::KvClient;
use meridian_proto::mvccpb;
use meridian_proto::ErrorCode;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tracing::debug;

use crate::error::ClientError;

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// `host:port` (or `http://host:port`) of any members.
    pub endpoints: Vec<String>,
    pub connect_timeout: Duration,
    /// Deadline of a call that does not wait on purpose (acquires and
    /// campaigns get their wait on top).
    pub request_timeout: Duration,
    /// Attempts per call, over all endpoints.
    pub max_attempts: u32,
    /// First pause between attempts; doubles up to 2 s.
    pub backoff: Duration,
    /// How often the client asks the cluster which nodes seem down
    /// (`meridian.v1.Membership/Nodes`) and avoids their endpoints while
    /// others remain; `None`: never (every endpoint is tried in turn). A
    /// server without that service (etcd) ends the checks.
    pub health_interval: Option<Duration>,
}

impl ClientConfig {
    pub fn new<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Self {
        let endpoints: Vec<String> = endpoints.into_iter().map(Into::into).collect();
        ClientConfig {
            max_attempts: (endpoints.len() as u32 * 2).clamp(3, 10),
            endpoints,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            health_interval: Some(Duration::from_secs(5)),
        }
    }
}

/// Whether a failed call may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Reads, keepalives, per-session idempotent commands.
    Always,
    /// Writes: only when the server surely did not propose them.
    IfNotSent,
}

/// A cheap handle (clone it freely) to a Meridian cluster.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClientConfig,
    channels: Vec<Channel>,
    current: AtomicUsize,
    /// Per endpoint: the cluster said its node is suspect or dead.
    avoid: Vec<AtomicBool>,
}

/// `host:port` of an endpoint as written (`http://host:port/` too).
fn host_port(endpoint: &str) -> &str {
    let e = endpoint.split_once("://").map_or(endpoint, |(_, rest)| rest);
    e.trim_end_matches('/')
}

/// Which endpoints to avoid, from the nodes' client addresses and states
/// (`suspect`, `dead`); an endpoint no node claims is not avoided.
fn endpoints_to_avoid(endpoints: &[String], nodes: &[(String, String)]) -> Vec<bool> {
    endpoints
        .iter()
        .map(|e| nodes.iter().any(|(addr, state)| addr == host_port(e) && matches!(state.as_str(), "suspect" | "dead")))
        .collect()
}

/// The server refused before proposing: safe to send again anywhere.
fn surely_not_applied(s: &Status) -> bool {
    let m = s.message();
    s.code() == Code::Unavailable
        && (refused_for_leadership(s)
            // The connection was never made (not "connection reset",
            // which can come after the request went out). These texts are
            // the transport library's, not a Meridian server's.
            || m.contains("tcp connect error")
            || m.contains("error trying to connect")
            || m.contains("Connection refused")
            || m.contains("dns error"))
}

/// "No leader" / "not leader": by the code a Meridian member attaches;
/// a status without one (an etcd server) by etcd's wording, which is its
/// wire contract (etcd's own client decides by it too).
fn refused_for_leadership(s: &Status) -> bool {
    match meridian_proto::error_code(s) {
        // (Every voter down: refused before anything was proposed.)
        Some(code) => matches!(code, ErrorCode::NoLeader | ErrorCode::NotLeader | ErrorCode::ReplicasDown),
        None => matches!(s.message(), "etcdserver: no leader" | "etcdserver: not leader"),
    }
}

fn transient(s: &Status) -> bool {
    matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown | Code::Aborted)
}

impl Client {
    /// A client over `endpoints` with default settings. Connections are
    /// made on first use, so this fails only on malformed addresses. Call
    /// it inside the Tokio runtime that will use the client.
    pub async fn connect<S: Into<String>>(endpoints: impl IntoIterator<Item = S>) -> Result<Client, ClientError> {
        Client::with_config(ClientConfig::new(endpoints))
    }

    pub fn with_config(cfg: ClientConfig) -> Result<Client, ClientError> {
        if cfg.endpoints.is_empty() {
            return Err(ClientError::NoEndpoints);
        }
        let mut channels = Vec::with_capacity(cfg.endpoints.len());
        for e in &cfg.endpoints {
            let url = if e.contains("://") { e.clone() } else { format!("http://{e}") };
            let ep = Endpoint::from_shared(url)
                .map_err(|err| ClientError::InvalidEndpoint { endpoint: e.clone(), reason: err.to_string() })?
                .connect_timeout(cfg.connect_timeout)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5));
            channels.push(ep.connect_lazy());
        }
        let avoid = channels.iter().map(|_| AtomicBool::new(false)).collect();
        let inner = Arc::new(Inner { cfg, channels, current: AtomicUsize::new(0), avoid });
        if let (Some(every), Ok(rt)) = (inner.cfg.health_interval, tokio::runtime::Handle::try_current()) {
            if inner.channels.len() > 1 {
                rt.spawn(health_loop(Arc::downgrade(&inner), every));
            }
        }
        Ok(Client { inner })
    }

    /// Endpoints avoided now (their node seemed suspect or dead at the
    /// last check).
    pub fn avoided(&self) -> Vec<String> {
        let i = &self.inner;
        i.cfg.endpoints.iter().zip(&i.avoid).filter(|(_, a)| a.load(Ordering::Relaxed)).map(|(e, _)| e.clone()).collect()
    }

    /// Asks the cluster once which nodes seem down and updates the
    /// endpoints avoided; false when the server has no such service.
    pub async fn check_health(&self) -> bool {
        check_health(&self.inner).await
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.cfg
    }

    pub(crate) fn channel(&self) -> (usize, Channel) {
        let inner = &self.inner;
        let n = inner.channels.len();
        let mut i = inner.current.load(Ordering::Relaxed) % n;
        if inner.avoid[i].load(Ordering::Relaxed) {
            // The next endpoint not avoided, if any is left.
            if let Some(j) = (1..n).map(|k| (i + k) % n).find(|j| !inner.avoid[*j].load(Ordering::Relaxed)) {
                let _ = inner.current.compare_exchange(i, j, Ordering::Relaxed, Ordering::Relaxed);
                i = j;
            }
        }
        (i, inner.channels[i].clone())
    }

    /// Moves on from endpoint `from` (if nobody else has already).
    pub(crate) fn rotate(&self, from: usize) {
        let next = (from + 1) % self.inner.channels.len();
        let _ = self.inner.current.compare_exchange(from, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Runs `f` on the current endpoint, failing over and retrying as
    /// `retry` allows, each attempt bounded by `timeout`.
    pub(crate) async fn call<T, F, Fut>(&self, retry: Retry, timeout: Duration, mut f: F) -> Result<T, ClientError>
    where
        F: FnMut(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let mut backoff = self.inner.cfg.backoff;
        let mut last = String::new();
        for attempt in 1..=self.inner.cfg.max_attempts {
            let (i, ch) = self.channel();
            let status = match tokio::time::timeout(timeout, f(ch)).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(s)) => s,
                Err(_) => Status::deadline_exceeded(format!("no answer within {timeout:?}")),
            };
            if !transient(&status) {
                return Err(ClientError::from_status(&status));
            }
            if retry == Retry::IfNotSent && !surely_not_applied(&status) {
                return Err(ClientError::OutcomeUnknown(status.message().to_string()));
            }
            debug!(endpoint = %self.inner.cfg.endpoints[i], attempt, "call failed: {status}; trying the next endpoint");
            last = status.message().to_string();
            // The endpoint the health advice left us on failed: the advice
            // may come from a node cut off from the others (which sees
            // them all as down); forget it until the next check.
            for a in &self.inner.avoid {
                a.store(false, Ordering::Relaxed);
            }
            self.rotate(i);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
        Err(ClientError::Unavailable { attempts: self.inner.cfg.max_attempts, message: last })
    }

    fn timeout(&self) -> Duration {
        self.inner.cfg.request_timeout
    }
}

/// One health check: the current endpoint's view of the nodes.
async fn check_health(inner: &Inner) -> bool {
    use meridian_proto::meridian::v1 as api;
    let i = inner.current.load(Ordering::Relaxed) % inner.channels.len();
    let mut client = api::membership_client::MembershipClient::new(inner.channels[i].clone());
    let answer = tokio::time::timeout(inner.cfg.connect_timeout, client.nodes(api::NodesRequest {})).await;
    match answer {
        Ok(Ok(r)) => {
            let nodes: Vec<(String, String)> =
                r.into_inner().nodes.into_iter().filter_map(|n| Some((n.node?.client_addr, n.state))).collect();
            for (flag, avoid) in inner.avoid.iter().zip(endpoints_to_avoid(&inner.cfg.endpoints, &nodes)) {
                flag.store(avoid, Ordering::Relaxed);
            }
            true
        }
        Ok(Err(s)) if s.code() == Code::Unimplemented => false,
        // No answer: the endpoint may be the one down; the next check
        // asks again (calls fail over on their own meanwhile).
        _ => true,
    }
}

/// Health checks every `every` while the client lives; bounded to one
/// call in flight.
async fn health_loop(inner: Weak<Inner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        if !check_health(&inner).await {
            debug!("the server has no membership service; endpoint health checks stop");
            return;
        }
    }
}

impl Client {
    // ---- key-value -----------------------------------------------------------

    /// Puts `key`; returns the revision of the write.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<i64, ClientError> {
        let req = etcd::PutRequest { key: key.into(), value: value.into(), ..Default::default() };
        let r = self
            .call(Retry::IfNotSent, self.timeout(), |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).put(req).await }
            })
            .await?;
        Ok(r.into_inner().header.map_or(0, |h| h.revision))
    }

    /// The current value of `key` (linearizable).
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<mvccpb::KeyValue>, ClientError> {
        let req = etcd::RangeRequest { key: key.into(), ..Default::default() };
        let r = self
            .call(Retry::Always, self.timeout(), |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).range(req).await }
            })
            .await?;
        Ok(r.into_inner().kvs.into_iter().next())
    }

    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<i64, ClientError> {
        let req = etcd::DeleteRangeRequest { key: key.into(), ..Default::default() };
        let r = self
            .call(Retry::IfNotSent, self.timeout(), |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).delete_range(req).await }
            })
            .await?;
        Ok(r.into_inner().deleted)
    }

    pub async fn txn(&self, req: etcd::TxnRequest) -> Result<etcd::TxnResponse, ClientError> {
        let r = self
            .call(Retry::IfNotSent, self.timeout(), |ch| {
                let req = req.clone();
                async move { KvClient::new(ch).txn(req).await }
            })
            .await?;
        Ok(r.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_endpoints_are_refused_up_front() {
        assert_eq!(Client::connect(Vec::<String>::new()).await.err(), Some(ClientError::NoEndpoints));
        assert!(matches!(Client::connect(["http://[::1"]).await, Err(ClientError::InvalidEndpoint { .. })));
    }

    #[tokio::test]
    async fn fails_over_and_gives_up_after_bounded_attempts() {
        // Nothing listens on these ports: every attempt fails to connect,
        // rotates, and the call ends after max_attempts.
        let mut cfg = ClientConfig::new(["127.0.0.1:1", "127.0.0.1:2"]);
        cfg.backoff = Duration::from_millis(1);
        cfg.max_attempts = 4;
        let c = Client::with_config(cfg).unwrap();
        let seen = std::sync::Mutex::new(Vec::new());
        let r: Result<(), _> = c
            .call(Retry::Always, Duration::from_secs(2), |ch| {
                seen.lock().unwrap().push(c.channel().0);
                async move {
                    KvClient::new(ch).range(etcd::RangeRequest::default()).await?;
                    Ok(())
                }
            })
            .await;
        assert!(matches!(r, Err(ClientError::Unavailable { attempts: 4, .. })), "{r:?}");
        assert_eq!(*seen.lock().unwrap(), vec![0, 1, 0, 1], "alternates between endpoints");
    }

    #[test]
    fn endpoints_of_suspect_or_dead_nodes_are_avoided() {
        let endpoints: Vec<String> =
            ["http://10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379/", "10.0.0.9:2379"].map(String::from).to_vec();
        let nodes = [("10.0.0.1:2379", "dead"), ("10.0.0.2:2379", "alive"), ("10.0.0.3:2379", "suspect"), ("10.0.0.4:2379", "dead")]
            .map(|(a, s)| (a.to_string(), s.to_string()));
        assert_eq!(endpoints_to_avoid(&endpoints, &nodes), vec![true, false, true, false]);
    }

    #[tokio::test]
    async fn an_avoided_endpoint_is_skipped_while_another_remains() {
        let mut cfg = ClientConfig::new(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]);
        cfg.health_interval = None;
        let c = Client::with_config(cfg).unwrap();
        c.inner.avoid[0].store(true, Ordering::Relaxed);
        assert_eq!(c.channel().0, 1, "the avoided first endpoint is skipped");
        c.rotate(1);
        c.inner.avoid[2].store(true, Ordering::Relaxed);
        assert_eq!(c.channel().0, 1, "from 2 (avoided) on to 0 (avoided) and 1");
        for a in &c.inner.avoid {
            a.store(true, Ordering::Relaxed);
        }
        assert_eq!(c.channel().0, 1, "all avoided: the current one is used");
        assert_eq!(c.avoided().len(), 3);
        // A call that fails on the endpoint the advice left forgets the
        // advice (it may come from a node cut off from the others).
        let mut cfg = c.config().clone();
        cfg.max_attempts = 1;
        cfg.connect_timeout = Duration::from_millis(200);
        let c2 = Client::with_config(cfg).unwrap();
        c2.inner.avoid[0].store(true, Ordering::Relaxed);
        let _ = c2.get("/k").await;
        assert!(c2.avoided().is_empty(), "{:?}", c2.avoided());
    }

    #[test]
    fn only_unproposed_writes_are_retried() {
        assert!(surely_not_applied(&Status::unavailable("etcdserver: no leader")));
        assert!(!surely_not_applied(&Status::unavailable("etcdserver: request timed out, possibly due to previous leader failure")));
        assert!(!surely_not_applied(&Status::deadline_exceeded("x")));
        assert!(!surely_not_applied(&Status::unavailable("error reading a body from connection: connection reset")));
        assert!(surely_not_applied(&Status::unavailable("error trying to connect: tcp connect error: Connection refused")));
    }

    /// A Meridian member's refusal is judged by its code, not its text.
    #[test]
    fn a_typed_refusal_is_judged_by_its_code() {
        let typed = |code, text| meridian_proto::with_error_code(Status::unavailable(text), code);
        assert!(surely_not_applied(&typed(ErrorCode::NoLeader, "anything")));
        assert!(surely_not_applied(&typed(ErrorCode::NotLeader, "anything")));
        assert!(!surely_not_applied(&typed(ErrorCode::OutcomeUnknown, "etcdserver: no leader")));
        assert!(!surely_not_applied(&typed(ErrorCode::NodeStopped, "etcdserver: server stopped")));
    }
}
