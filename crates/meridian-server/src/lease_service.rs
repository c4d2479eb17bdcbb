//! etcd `Lease` service and the leader-side lease keeper.
//!
//! Expiry runs only where a range's leader is, on this process's monotonic
//! clock ([`LeaseClock`]); an expired lease is revoked through Raft, so
//! every replica deletes its keys at the same revision.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meridian_kv::command as c;
use meridian_kv::lease_clock::{LeaseClock, LockDelayTimer};
use meridian_proto::etcdserverpb as pb;
use meridian_proto::etcdserverpb::lease_client::LeaseClient;
use meridian_raftstore::raft_types::StateRole;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, warn};

use crate::backend::{forward_target, forwarded, Backend};
use crate::error::ApiError;
use crate::lock_hub::LockHub;
use crate::routing::ROOT_RANGE_ID;

/// Shortest and longest lease TTLs accepted (etcd's minimum is about
/// 2 × election timeout; ours is at most 0.75 s at the default tick).
pub const MIN_TTL_S: i64 = 2;
pub const MAX_TTL_S: i64 = 9_000_000_000 / 1_000_000; // ~104 days, like etcd's cap
/// Keepalive responses buffered per stream.
const KEEPALIVE_BUFFER: usize = 64;

/// How long a keepalive waits for the lease's range to have a leader that
/// takes it (an election, a leadership transfer, a new leader loading its
/// lease clock), trying again every [`KEEPALIVE_RETRY`]: as etcd's
/// `LeaseRenew` waits for a leader, so that a client's keepalive stream
/// does not end on a moment without one. A renewal is idempotent, so
/// asking again is safe.
const KEEPALIVE_LEADER_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
const KEEPALIVE_RETRY: std::time::Duration = std::time::Duration::from_millis(100);

/// Lease clocks of the ranges this node leads, keyed by range with the term
/// they were built in.
#[derive(Default)]
pub struct LeaseKeeper {
    clocks: Mutex<HashMap<u64, (u64, LeaseClock)>>,
    clock: Mutex<Option<DriftClock>>,
}

/// The keeper's monotonic clock in ms. Its rate is 1 unless a chaos test
/// sets another (`POST /v1/debug/lease-clock-rate`), to show what a fast or
/// slow clock on a leader does to leases.
#[derive(Debug, Clone, Copy)]
struct DriftClock {
    anchor: Instant,
    anchor_ms: f64,
    rate: f64,
}

impl DriftClock {
    fn now_ms(&self) -> f64 {
        self.anchor_ms + self.anchor.elapsed().as_secs_f64() * 1000.0 * self.rate
    }
}

impl LeaseKeeper {
    pub fn new() -> Self {
        let clock = DriftClock { anchor: Instant::now(), anchor_ms: 0.0, rate: 1.0 };
        LeaseKeeper { clocks: Mutex::new(HashMap::new()), clock: Mutex::new(Some(clock)) }
    }

    fn now_ms(&self) -> u64 {
        self.clock.lock().expect("lease keeper clock").map_or(0, |c| c.now_ms() as u64)
    }

    /// Runs the lease clock `rate` times as fast as real time from now on
    /// (fault injection; 0.1..=10).
    pub fn set_clock_rate(&self, rate: f64) -> Result<(), ApiError> {
        if !(0.1..=10.0).contains(&rate) {
            return Err(ApiError::Invalid(format!("clock rate {rate} outside 0.1..=10")));
        }
        let mut g = self.clock.lock().expect("lease keeper clock");
        if let Some(c) = g.as_mut() {
            *c = DriftClock { anchor: Instant::now(), anchor_ms: c.now_ms(), rate };
        }
        Ok(())
    }

    fn with<T>(&self, range_id: u64, f: impl FnOnce(&mut LeaseClock, u64) -> T) -> Option<T> {
        let now = self.now_ms();
        let mut g = self.clocks.lock().expect("lease keeper");
        g.get_mut(&range_id).map(|(_, c)| f(c, now))
    }
}

/// The range that owns lease `id`, by the namespace in its top bits.
pub fn lease_range_of(routing: &crate::routing::Routing, id: i64) -> u64 {
    routing.range_of_lease(id)
}

/// Runs forever: tracks leadership changes, expires leases, checkpoints
/// long ones. Bounded work per round. Everything it proposes is timed on
/// this leader's clock, so it proposes only while leading
/// (`execute_on_leader`): a deposed leader must not hand its expiries to
/// the new one.
pub async fn run_keeper(backend: Arc<Backend>, keeper: Arc<LeaseKeeper>, locks: Arc<LockHub>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    // Rounds between checkpoints (~5 s) and deadlock scans (~10 s).
    let every = |d: Duration| (d.as_millis() / interval.as_millis().max(1)).max(1) as u64;
    let (checkpoint_every, deadlock_every) = (every(Duration::from_secs(5)), every(Duration::from_secs(10)));
    // range → the lock-delays this leader times there.
    let mut delays: HashMap<u64, LockDelayTimer> = HashMap::new();
    // Ranges whose delayed locks must be read: ones this node began to
    // lead (a delay may predate it) or expired a lease on (the only way a
    // delay begins); a range leaves the set once a read finds none. Reading
    // every led range every round cost an idle leader of thousands of
    // namespaces a core. A range stays watched for [`DELAY_WATCH_ROUNDS`]
    // reads that find nothing (an expiry whose answer was lost may still
    // apply meanwhile).
    let mut delay_watch: HashMap<u64, u32> = HashMap::new();
    // Ranges that refused a lease or lock command as sealed (a dropped
    // namespace's): nothing there is the keeper's to do any more.
    let mut sealed: std::collections::HashSet<u64> = std::collections::HashSet::new();
    loop {
        tick.tick().await;
        rounds += 1;
        let statuses = backend.raft.status().await;
        // Build clocks for ranges we newly lead; drop the ones we lost.
        for st in &statuses {
            let leading = st.role == StateRole::Leader && !st.dormant;
            let known = keeper.clocks.lock().expect("lease keeper").get(&st.range_id).map(|(t, _)| *t);
            if leading && known != Some(st.term) {
                match load_clock(&backend, st.range_id, keeper.now_ms()).await {
                    Ok(clock) => {
                        keeper.clocks.lock().expect("lease keeper").insert(st.range_id, (st.term, clock));
                        delay_watch.insert(st.range_id, DELAY_WATCH_ROUNDS);
                    }
                    Err(e) => debug!(range = st.range_id, "loading leases: {e}"),
                }
            } else if !leading && known.is_some() {
                keeper.clocks.lock().expect("lease keeper").remove(&st.range_id);
            }
            if !leading {
                // A later leader times a delay from scratch: never shorter.
                delays.remove(&st.range_id);
                delay_watch.remove(&st.range_id);
            }
        }
        let ranges: Vec<u64> = keeper.clocks.lock().expect("lease keeper").keys().copied().collect();
        for range_id in ranges {
            if sealed.contains(&range_id) {
                continue;
            }
            let now = keeper.now_ms();
            let expired = keeper.with(range_id, |c, now| c.expired(now)).unwrap_or_default();
            for id in expired {
                // Expiry, not a clean revoke: held locks get lock-delay.
                delay_watch.insert(range_id, DELAY_WATCH_ROUNDS);
                match backend.execute_on_leader(range_id, c::Op::LeaseExpire(id)).await {
                    Ok(_) | Err(ApiError::LeaseNotFound) => {
                        keeper.with(range_id, |c, _| c.revoked(id));
                        debug!(range = range_id, lease = id, "lease expired and revoked");
                    }
                    Err(ApiError::NamespaceMoved(_)) => {
                        sealed.insert(range_id);
                        break;
                    }
                    Err(e) => warn!(range = range_id, lease = id, "revoking expired lease: {e}"),
                }
            }
            if let Some(left) = delay_watch.get(&range_id).copied() {
                let timer = delays.entry(range_id).or_default();
                let read = end_lock_delays(&backend, range_id, now, timer).await;
                if read.is_none() {
                    sealed.insert(range_id);
                    continue;
                }
                if read == Some(true) && timer.is_idle() {
                    if left <= 1 {
                        delay_watch.remove(&range_id);
                    } else {
                        delay_watch.insert(range_id, left - 1);
                    }
                } else {
                    delay_watch.insert(range_id, DELAY_WATCH_ROUNDS);
                }
            }
            if rounds.is_multiple_of(deadlock_every) {
                scan_deadlocks(&backend, &locks, range_id).await;
            }
            // Checkpoint long leases every ~5 s so a new leader continues them.
            if rounds.is_multiple_of(checkpoint_every) {
                let cps = keeper.with(range_id, |c, now| c.checkpoint_ops(now, 10, 256)).unwrap_or_default();
                for cp in cps {
                    let id = cp.id;
                    if let Err(e) = backend.execute_on_leader(range_id, c::Op::LeaseCheckpoint(cp)).await {
                        debug!(range = range_id, lease = id, "checkpoint: {e}");
                    }
                }
            }
        }
    }
}

/// Reads of a range's delayed locks that find none before the keeper stops
/// reading them (50 rounds of 100 ms).
const DELAY_WATCH_ROUNDS: u32 = 50;

/// Ends lock-delays this leader has timed in full on its own clock: false
/// if the delayed locks could not be read, `None` if the range refused as
/// sealed.
async fn end_lock_delays(backend: &Backend, range_id: u64, now: u64, timer: &mut LockDelayTimer) -> Option<bool> {
    let delayed = match backend.query(range_id, c::QueryKind::DelayedLocks(true), false).await {
        Ok(a) => a.locks,
        Err(e) => {
            debug!(range = range_id, "listing delayed locks: {e}");
            return Some(false);
        }
    };
    let delayed: Vec<(Vec<u8>, i64)> = delayed.into_iter().map(|l| (l.name, l.lock.map_or(0, |r| r.delay_ms))).collect();
    for name in timer.due(now, &delayed) {
        match backend.execute_on_leader(range_id, c::Op::LockDelayEnd(name.clone())).await {
            Ok(_) => debug!(range = range_id, lock = %String::from_utf8_lossy(&name), "lock-delay over"),
            Err(ApiError::NamespaceMoved(_)) => return None,
            Err(e) => debug!(range = range_id, "ending lock-delay: {e}"),
        }
        // A delay under this name from now on is a new one.
        timer.ended(&name);
    }
    Some(true)
}

/// Counts wait-for cycles between sessions of a range, for the metric.
async fn scan_deadlocks(backend: &Backend, hub: &LockHub, range_id: u64) {
    let q = c::QueryKind::Locks(c::LocksOp { from_name: Vec::new(), limit: meridian_kv::machine::MAX_LOCKS_PER_QUERY as u64 });
    match backend.query(range_id, q, false).await {
        Ok(a) => {
            let cycles = meridian_kv::locks::wait_for_cycles(&a.locks);
            if !cycles.is_empty() {
                warn!(range = range_id, cycles = ?cycles, "deadlock: sessions wait for each other's locks");
            }
            hub.set_deadlocks(range_id, cycles.len());
        }
        Err(e) => debug!(range = range_id, "scanning locks: {e}"),
    }
}

async fn load_clock(backend: &Backend, range_id: u64, now_ms: u64) -> Result<LeaseClock, ApiError> {
    let ids = backend.query(range_id, c::QueryKind::Leases(true), true).await?.lease_ids;
    let mut recs = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(l) = backend.query(range_id, c::QueryKind::LeaseInfo(id), true).await?.lease {
            if l.found {
                let remaining_ttl_s = if l.checkpointed { l.remaining_ttl_s } else { 0 };
                recs.push(meridian_kv::mvcc::LeaseRecord { id, ttl_s: l.ttl_s, remaining_ttl_s, resets: l.resets });
            }
        }
    }
    Ok(LeaseClock::on_become_leader(now_ms, &recs))
}

pub struct LeaseService {
    pub backend: Arc<Backend>,
    pub keeper: Arc<LeaseKeeper>,
}

impl LeaseService {
    fn client(&self, leader: u64) -> Result<LeaseClient<tonic::transport::Channel>, ApiError> {
        Ok(LeaseClient::new(self.backend.channel_to(leader)?))
    }

    /// Makes sure this node's clock for `range_id` exists if it leads the
    /// range (the keeper loop may not have noticed a fresh leadership yet).
    async fn ensure_clock(&self, range_id: u64) {
        if self.keeper.clocks.lock().expect("lease keeper").contains_key(&range_id) {
            return;
        }
        if let Some(b) = self.backend.brief(range_id).await.filter(|b| b.leading) {
            if let Ok(clock) = load_clock(&self.backend, range_id, self.keeper.now_ms()).await {
                self.keeper.clocks.lock().expect("lease keeper").entry(range_id).or_insert((b.term, clock));
            }
        }
    }

    /// [`LeaseService::keepalive_once`], asked again while the range has
    /// no leader that takes it, for at most [`KEEPALIVE_LEADER_WAIT`]. A
    /// member a keepalive was forwarded to answers at once: the member
    /// that forwarded it waits.
    async fn keepalive(&self, id: i64, already_forwarded: bool) -> Result<i64, ApiError> {
        let started = tokio::time::Instant::now();
        loop {
            match self.keepalive_once(id, already_forwarded).await {
                Err(ApiError::NoLeader { .. } | ApiError::NotLeader { .. })
                    if !already_forwarded && started.elapsed() + KEEPALIVE_RETRY < KEEPALIVE_LEADER_WAIT =>
                {
                    tokio::time::sleep(KEEPALIVE_RETRY).await;
                }
                r => return r,
            }
        }
    }

    async fn keepalive_once(&self, id: i64, already_forwarded: bool) -> Result<i64, ApiError> {
        let range_id = self.backend.range_of_lease(id).await;
        self.ensure_clock(range_id).await;
        if let Some(renewed) = self.keeper.with(range_id, |c, now| c.keepalive(now, id).map(|ttl| (ttl, c.needs_reset(id)))) {
            let (ttl, reset) = renewed.ok_or(ApiError::LeaseNotFound)?;
            if reset {
                // The record holds a checkpoint this renewal outlives: the
                // next leader would continue it. Reset it in the log first.
                let op = c::Op::LeaseCheckpoint(c::LeaseCheckpointOp::reset(id));
                let out = self.backend.execute_on_leader(range_id, op).await?;
                if let Some(c::OutcomeKind::Lease(l)) = out.kind {
                    self.keeper.with(range_id, |c, _| c.reset_applied(id, l.resets));
                }
            }
            return Ok(ttl);
        }
        // Not the leader here: ask the leader.
        let leader = self.backend.brief(range_id).await.map_or(0, |b| b.leader);
        if leader == 0 || leader == self.backend.cfg.node_id || already_forwarded {
            return Err(ApiError::NoLeader { range_id });
        }
        let mut client = self.client(leader)?;
        let req = forwarded(tokio_stream::once(pb::LeaseKeepAliveRequest { id }));
        let mut stream = client.lease_keep_alive(req).await.map_err(|s| ApiError::from_status(&s))?.into_inner();
        match stream.next().await {
            Some(Ok(r)) if r.ttl > 0 => Ok(r.ttl),
            Some(Ok(_)) => Err(ApiError::LeaseNotFound),
            Some(Err(s)) => Err(ApiError::from_status(&s)),
            None => Err(ApiError::Timeout),
        }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<pb::LeaseKeepAliveResponse, Status>> + Send>>;

impl LeaseService {
    /// Answers each keepalive of `inbound` in order (etcd's stream; also
    /// the session service's).
    pub fn keep_alive_stream<S>(&self, inbound: S, already_forwarded: bool) -> KeepAliveStream
    where
        S: Stream<Item = Result<pb::LeaseKeepAliveRequest, Status>> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::mpsc::channel(KEEPALIVE_BUFFER);
        let svc = LeaseService { backend: self.backend.clone(), keeper: self.keeper.clone() };
        tokio::spawn(async move {
            tokio::pin!(inbound);
            while let Some(msg) = inbound.next().await {
                let Ok(msg) = msg else { break };
                let range_id = svc.backend.range_of_lease(msg.id).await;
                let resp = match svc.keepalive(msg.id, already_forwarded).await {
                    Ok(ttl) => pb::LeaseKeepAliveResponse { header: Some(svc.backend.header(range_id, 0).await), id: msg.id, ttl },
                    // etcd answers TTL 0 for a lease that is gone.
                    Err(ApiError::LeaseNotFound) => {
                        pb::LeaseKeepAliveResponse { header: Some(svc.backend.header(range_id, 0).await), id: msg.id, ttl: 0 }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        break;
                    }
                };
                if tx.send(Ok(resp)).await.is_err() {
                    break;
                }
            }
        });
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
    }
}

#[tonic::async_trait]
impl pb::lease_server::Lease for LeaseService {
    async fn lease_grant(&self, req: Request<pb::LeaseGrantRequest>) -> Result<Response<pb::LeaseGrantResponse>, Status> {
        let g = req.get_ref();
        if !(MIN_TTL_S..=MAX_TTL_S).contains(&g.ttl) {
            // etcd raises short TTLs to its minimum; an absurd TTL is an error.
            if g.ttl <= 0 || g.ttl > MAX_TTL_S {
                return Err(ApiError::Invalid(format!("lease TTL {} outside 1..={MAX_TTL_S} seconds", g.ttl)).into());
            }
        }
        let ttl = g.ttl.max(MIN_TTL_S);
        let range_id = self.backend.range_of_lease(g.id).await;
        self.ensure_clock(range_id).await;
        match self.backend.execute_on_leader(range_id, c::Op::LeaseGrant(c::LeaseGrantOp { id: g.id, ttl_s: ttl })).await {
            Ok(out) => {
                let (id, ttl) = match out.kind {
                    Some(c::OutcomeKind::Lease(l)) => (l.id, l.ttl_s),
                    _ => return Err(ApiError::Internal("unexpected grant outcome".into()).into()),
                };
                self.keeper.with(range_id, |c, now| c.granted(now, id, ttl));
                Ok(Response::new(pb::LeaseGrantResponse {
                    header: Some(self.backend.header(range_id, out.revision).await),
                    id,
                    ttl,
                    error: String::new(),
                }))
            }
            Err(e) => match forward_target(&req, &e) {
                Some(l) => self.client(l)?.lease_grant(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }

    async fn lease_revoke(&self, req: Request<pb::LeaseRevokeRequest>) -> Result<Response<pb::LeaseRevokeResponse>, Status> {
        let id = req.get_ref().id;
        let range_id = self.backend.range_of_lease(id).await;
        match self.backend.execute_on_leader(range_id, c::Op::LeaseRevoke(id)).await {
            Ok(out) => {
                self.keeper.with(range_id, |c, _| c.revoked(id));
                Ok(Response::new(pb::LeaseRevokeResponse { header: Some(self.backend.header(range_id, out.revision).await) }))
            }
            Err(e) => match forward_target(&req, &e) {
                Some(l) => self.client(l)?.lease_revoke(forwarded(req.into_inner())).await,
                None => Err(e.into()),
            },
        }
    }

    type LeaseKeepAliveStream = KeepAliveStream;

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<pb::LeaseKeepAliveRequest>>,
    ) -> Result<Response<Self::LeaseKeepAliveStream>, Status> {
        let already_forwarded = req.metadata().get(crate::backend::FORWARDED_HEADER).is_some();
        Ok(Response::new(self.keep_alive_stream(req.into_inner(), already_forwarded)))
    }

    async fn lease_time_to_live(&self, req: Request<pb::LeaseTimeToLiveRequest>) -> Result<Response<pb::LeaseTimeToLiveResponse>, Status> {
        let r = req.get_ref();
        let range_id = self.backend.range_of_lease(r.id).await;
        self.ensure_clock(range_id).await;
        let a = self.backend.query(range_id, c::QueryKind::LeaseInfo(r.id), true).await?;
        let info = a.lease.unwrap_or_default();
        let header = Some(self.backend.header(range_id, a.revision).await);
        if !info.found {
            return Ok(Response::new(pb::LeaseTimeToLiveResponse { header, id: r.id, ttl: -1, granted_ttl: 0, keys: vec![] }));
        }
        let remaining = self.keeper.with(range_id, |c, now| c.remaining_s(now, r.id)).flatten().unwrap_or(info.remaining_ttl_s);
        Ok(Response::new(pb::LeaseTimeToLiveResponse {
            header,
            id: r.id,
            ttl: remaining,
            granted_ttl: info.ttl_s,
            keys: if r.keys { info.keys } else { vec![] },
        }))
    }

    async fn lease_leases(&self, _req: Request<pb::LeaseLeasesRequest>) -> Result<Response<pb::LeaseLeasesResponse>, Status> {
        let mut leases = Vec::new();
        let mut revision = 0;
        let mut ranges: Vec<u64> = vec![ROOT_RANGE_ID];
        ranges.extend(self.backend.routing().namespaces().iter().map(|n| n.range_id));
        for range_id in ranges {
            let a = self.backend.query(range_id, c::QueryKind::Leases(true), true).await?;
            revision = revision.max(a.revision);
            leases.extend(a.lease_ids.into_iter().map(|id| pb::LeaseStatus { id }));
        }
        Ok(Response::new(pb::LeaseLeasesResponse { header: Some(self.backend.header(ROOT_RANGE_ID, revision).await), leases }))
    }
}
