//! The seeded clients of the KV simulation: sessions (leases) kept alive by
//! keepalives — sometimes late, sometimes abandoned, sometimes revoked —
//! that acquire, release and cancel locks with and without lock-delay,
//! and writes and deletes of keys, some attached to a session.

use std::collections::BTreeMap;

use meridian_kv::command::*;
use meridian_raftstore::RequestId;
use prost::Message as _;
use rand::seq::SliceRandom;
use rand::Rng;

use super::checker::KvChecker;
use super::keeper::{outcome_of, KeepaliveRefused, Keeper, Renewed};
use super::recorder::{AppliedKv, Published};
use super::TICK_MS;
use crate::cluster::Cluster;

/// Lease TTLs clients ask for, in seconds (the server's minimum is 2 s;
/// those over 10 s are checkpointed).
const TTLS_S: [i64; 7] = [2, 3, 5, 8, 15, 20, 30];
/// Lock-delays holders ask for, in ms.
const LOCK_DELAYS_MS: [i64; 5] = [0, 0, 300, 1_000, 3_000];
/// Live sessions per range.
const SESSIONS_PER_RANGE: usize = 4;
/// Lock names and keys per range: few, so they are contended.
const LOCK_NAMES: u64 = 3;
const KEYS: u64 = 12;
/// Ticks a client waits for a keepalive held back by a checkpoint reset
/// before it sends another (the server's stream failed or hangs).
const RESET_WAIT_TICKS: u64 = 20;

/// What the clients did, for the run's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct WorkloadCounts {
    pub lease_grants: u64,
    pub keepalives: u64,
    pub late_keepalives: u64,
    /// Keepalives answered only after a reset of the lease's checkpoint.
    pub checkpoint_resets: u64,
    pub abandoned: u64,
    pub revoked: u64,
    pub acquires: u64,
    pub releases: u64,
    pub writes: u64,
}

struct Session {
    range_id: u64,
    id: i64,
    /// The node this client sends keepalives to (it moves on a refusal).
    target: u64,
    next_keepalive: u64,
    /// A keepalive waits for its checkpoint reset: the tick it was sent.
    resetting: Option<u64>,
    /// Lock name → token, as this client knows.
    holds: BTreeMap<Vec<u8>, i64>,
    /// Lock name → (waiter id, since tick).
    waits: BTreeMap<Vec<u8>, (u64, u64)>,
}

enum Kind {
    Grant {
        range_id: u64,
        ttl_s: i64,
        sent_ms: u64,
    },
    Acquire {
        id: i64,
        name: Vec<u8>,
        waiter_id: u64,
        try_only: bool,
    },
    Revoke {
        range_id: u64,
        id: i64,
    },
    /// A keepalive answered once its checkpoint reset applies.
    Keepalive {
        range_id: u64,
        id: i64,
        ttl_s: i64,
        sent_ms: u64,
    },
    Other,
}

struct Pending {
    node: u64,
    req: RequestId,
    kind: Kind,
}

#[derive(Default)]
pub struct Workload {
    sessions: Vec<Session>,
    pending: Vec<Pending>,
    next_waiter: u64,
    /// Latest revision seen per range (for compactions).
    revision: BTreeMap<u64, i64>,
    pub counts: WorkloadCounts,
}

pub fn lock_name(range_id: u64, i: u64) -> Vec<u8> {
    format!("/r{range_id:04}/lock{i}").into_bytes()
}

fn key(range_id: u64, i: u64) -> Vec<u8> {
    format!("/r{range_id:04}/k{i}").into_bytes()
}

fn cmd(op: Op, now_ms: u64) -> Vec<u8> {
    Command { op: Some(op), wall_ms: now_ms as i64 }.encode_to_vec()
}

impl Workload {
    /// One step of every client at tick `now` (before the cluster steps).
    pub fn act(&mut self, c: &mut Cluster, keepers: &mut BTreeMap<u64, Keeper>, checker: &mut KvChecker) {
        let now = c.now();
        let now_ms = now * TICK_MS;
        let ranges = c.range_ids();
        let nodes = c.node_ids();
        for &r in &ranges {
            let live = self.sessions.iter().filter(|s| s.range_id == r).count();
            let granting = self.pending.iter().any(|p| matches!(p.kind, Kind::Grant { range_id, .. } if range_id == r));
            if live < SESSIONS_PER_RANGE && !granting && c.rng.gen_bool(0.2) {
                let ttl_s = *TTLS_S.choose(&mut c.rng).expect("ttls");
                // Grants go to the leader (the server's execute_on_leader).
                if let Some(node) = c.leader_of(r) {
                    let op = Op::LeaseGrant(LeaseGrantOp { id: 0, ttl_s });
                    if let Ok(req) = c.propose_on_leader(node, r, cmd(op, now_ms)) {
                        self.pending.push(Pending { node, req, kind: Kind::Grant { range_id: r, ttl_s, sent_ms: now_ms } });
                    }
                }
            }
            if c.rng.gen_bool(0.3) {
                self.write(c, r, &nodes, now_ms);
            }
            if c.rng.gen_bool(0.002) {
                // Compact the history behind the latest revision seen.
                if let Some(rev) = self.revision.get(&r).map(|v| v - 5).filter(|v| *v > 1) {
                    self.propose_any(c, r, &nodes, Op::Compact(rev), now_ms, Kind::Other);
                }
            }
        }
        let mut i = 0;
        while i < self.sessions.len() {
            if self.session_step(c, i, keepers, checker, &nodes, now, now_ms) {
                i += 1;
            } else {
                self.sessions.swap_remove(i);
            }
        }
    }

    /// One client's turn; false when the client gives its session up
    /// (abandoned, revoked or lost).
    #[allow(clippy::too_many_arguments)]
    fn session_step(
        &mut self,
        c: &mut Cluster,
        i: usize,
        keepers: &mut BTreeMap<u64, Keeper>,
        checker: &mut KvChecker,
        nodes: &[u64],
        now: u64,
        now_ms: u64,
    ) -> bool {
        let (r, id) = (self.sessions[i].range_id, self.sessions[i].id);
        if c.rng.gen_bool(0.002) {
            // The client dies: no more keepalives; the lease expires and
            // its locks go under lock-delay.
            self.counts.abandoned += 1;
            return false;
        }
        if c.rng.gen_bool(0.001) {
            if let Some(node) = c.leader_of(r) {
                if let Ok(req) = c.propose_on_leader(node, r, cmd(Op::LeaseRevoke(id), now_ms)) {
                    self.pending.push(Pending { node, req, kind: Kind::Revoke { range_id: r, id } });
                    self.counts.revoked += 1;
                    return false;
                }
            }
        }
        let waiting = self.sessions[i].resetting.is_some_and(|sent| now < sent + RESET_WAIT_TICKS);
        if self.sessions[i].next_keepalive <= now && !waiting {
            let target = self.sessions[i].target;
            self.sessions[i].resetting = None;
            let answer = match keepers.get_mut(&target) {
                Some(k) if c.is_up(target) => k.keepalive(c, now_ms, r, id),
                _ => Err(KeepaliveRefused::NotLeader),
            };
            match answer {
                Ok(Renewed::Now(ttl)) => {
                    self.counts.keepalives += 1;
                    checker.observe_lease_promise(now_ms, id, ttl, now_ms);
                    self.schedule_keepalive(c, i, now, ttl);
                }
                Ok(Renewed::AfterReset { ttl_s, req }) => {
                    self.sessions[i].resetting = Some(now);
                    self.pending.push(Pending { node: target, req, kind: Kind::Keepalive { range_id: r, id, ttl_s, sent_ms: now_ms } });
                }
                Err(KeepaliveRefused::NotLeader) => {
                    // Ask the leader the cluster knows of, else anyone.
                    let next = c.leader_of(r).unwrap_or_else(|| *nodes.choose(&mut c.rng).expect("nodes"));
                    self.sessions[i].target = next;
                }
                // The server says the session is gone.
                Err(KeepaliveRefused::LeaseNotFound) => return false,
            }
        }
        // Locks.
        let name = lock_name(r, c.rng.gen_range(0..LOCK_NAMES));
        let s = &self.sessions[i];
        if !s.holds.contains_key(&name) && !s.waits.contains_key(&name) && c.rng.gen_bool(0.05) {
            self.next_waiter += 1;
            let waiter_id = self.next_waiter;
            let try_only = c.rng.gen_bool(0.2);
            let lock_delay_ms = *LOCK_DELAYS_MS.choose(&mut c.rng).expect("delays");
            let op = Op::LockAcquire(LockAcquireOp {
                name: name.clone(),
                session: id,
                waiter_id,
                try_only,
                lock_delay_ms,
                value: format!("w{waiter_id}").into_bytes(),
            });
            self.counts.acquires += 1;
            self.propose_any(c, r, nodes, op, now_ms, Kind::Acquire { id, name: name.clone(), waiter_id, try_only });
            if !try_only {
                self.sessions[i].waits.insert(name, (waiter_id, now));
            }
        } else if let Some(&token) = s.holds.get(&name).filter(|_| c.rng.gen_bool(0.08)) {
            self.sessions[i].holds.remove(&name);
            self.counts.releases += 1;
            let op = Op::LockRelease(LockReleaseOp { name, session: id, token });
            self.propose_any(c, r, nodes, op, now_ms, Kind::Other);
        } else if let Some(&(waiter_id, _)) = s.waits.get(&name).filter(|(_, since)| now > since + 30 && c.rng.gen_bool(0.02)) {
            // The acquire's deadline passed: leave the queue.
            self.sessions[i].waits.remove(&name);
            let op = Op::LockCancel(LockCancelOp { name, session: id, waiter_id });
            self.propose_any(c, r, nodes, op, now_ms, Kind::Other);
        }
        true
    }

    /// The next keepalive of session `i`, after one answered with `ttl`.
    fn schedule_keepalive(&mut self, c: &mut Cluster, i: usize, now: u64, ttl: i64) {
        let ttl_ticks = ttl as u64 * 1000 / TICK_MS;
        let next = if c.rng.gen_bool(0.03) {
            // A pause (GC, SIGSTOP): the next keepalive may be late.
            self.counts.late_keepalives += 1;
            c.rng.gen_range(ttl_ticks * 7 / 10..=ttl_ticks * 13 / 10)
        } else {
            c.rng.gen_range(ttl_ticks / 4..=ttl_ticks / 2)
        };
        self.sessions[i].next_keepalive = now + next.max(1);
    }

    /// A keepalive held back by its checkpoint reset was answered: with the
    /// TTL if the reset applied, else the client asks again.
    fn reset_answered(
        &mut self,
        c: &mut Cluster,
        keepers: &mut BTreeMap<u64, Keeper>,
        checker: &mut KvChecker,
        p: &Pending,
        out: Option<Outcome>,
    ) {
        let Kind::Keepalive { range_id, id, ttl_s, sent_ms } = p.kind else { return };
        let now = c.now();
        let applied = match out.and_then(|o| o.kind) {
            Some(OutcomeKind::Lease(l)) => Some(l.resets),
            _ => None,
        };
        if let Some(resets) = applied {
            if let Some(k) = keepers.get_mut(&p.node) {
                k.reset_applied(range_id, id, resets);
            }
            self.counts.keepalives += 1;
            self.counts.checkpoint_resets += 1;
            checker.observe_lease_promise(now * TICK_MS, id, ttl_s, sent_ms);
        }
        let Some(i) = self.sessions.iter().position(|s| s.id == id) else { return };
        self.sessions[i].resetting = None;
        if applied.is_some() {
            self.schedule_keepalive(c, i, now, ttl_s);
        } else {
            self.sessions[i].next_keepalive = now;
        }
    }

    fn write(&mut self, c: &mut Cluster, r: u64, nodes: &[u64], now_ms: u64) {
        self.counts.writes += 1;
        let k = key(r, c.rng.gen_range(0..KEYS));
        let op = if c.rng.gen_bool(0.75) {
            // Some keys live with a session: its end deletes them.
            let lease = match self.sessions.iter().filter(|s| s.range_id == r).collect::<Vec<_>>().choose(&mut c.rng) {
                Some(s) if c.rng.gen_bool(0.3) => s.id,
                _ => 0,
            };
            Op::Put(PutOp { key: k, value: format!("v{now_ms}").into_bytes(), lease, prev_kv: c.rng.gen_bool(0.3), ..Default::default() })
        } else if c.rng.gen_bool(0.7) {
            Op::DeleteRange(DeleteOp { key: k, ..Default::default() })
        } else {
            // A span of keys.
            let end = format!("/r{r:04}/k{}", c.rng.gen_range(0..KEYS)).into_bytes();
            Op::DeleteRange(DeleteOp { key: k, range_end: end, prev_kv: true })
        };
        self.propose_any(c, r, nodes, op, now_ms, Kind::Other);
    }

    /// Proposes on a random live node (a follower hands it to its leader
    /// inside raft) or on the leader.
    fn propose_any(&mut self, c: &mut Cluster, r: u64, nodes: &[u64], op: Op, now_ms: u64, kind: Kind) {
        let node = *nodes.choose(&mut c.rng).expect("nodes");
        let proposed = if c.rng.gen_bool(0.5) && c.is_up(node) {
            c.propose_on(node, r, cmd(op, now_ms)).ok().map(|req| (node, req))
        } else {
            c.propose(r, cmd(op, now_ms))
        };
        if let Some((node, req)) = proposed {
            self.pending.push(Pending { node, req, kind });
        }
    }

    /// Collects answers after a step.
    pub fn collect(&mut self, c: &mut Cluster, keepers: &mut BTreeMap<u64, Keeper>, checker: &mut KvChecker) {
        let now_ms = c.now() * TICK_MS;
        let pending = std::mem::take(&mut self.pending);
        for p in pending {
            let Some(answer) = c.take_result(p.node, p.req) else {
                if c.is_up(p.node) {
                    self.pending.push(p);
                }
                continue;
            };
            if matches!(p.kind, Kind::Keepalive { .. }) {
                self.reset_answered(c, keepers, checker, &p, outcome_of(&answer));
                continue;
            }
            let Some(out) = outcome_of(&answer) else { continue };
            if let Some(r) = self.range_of(&p.kind) {
                let rev = self.revision.entry(r).or_default();
                *rev = (*rev).max(out.revision);
            }
            match (p.kind, out.kind) {
                (Kind::Grant { range_id, ttl_s, sent_ms }, Some(OutcomeKind::Lease(l))) => {
                    self.counts.lease_grants += 1;
                    if let Some(k) = keepers.get_mut(&p.node) {
                        k.granted(now_ms, range_id, l.id, l.ttl_s);
                    }
                    checker.observe_lease_promise(now_ms, l.id, ttl_s, sent_ms);
                    let next = now_ms / TICK_MS + (ttl_s as u64 * 1000 / TICK_MS / 3).max(1);
                    self.sessions.push(Session {
                        range_id,
                        id: l.id,
                        target: p.node,
                        next_keepalive: next,
                        resetting: None,
                        holds: BTreeMap::new(),
                        waits: BTreeMap::new(),
                    });
                }
                (Kind::Revoke { range_id, id }, Some(k)) if !matches!(k, OutcomeKind::Error(_)) => {
                    if let Some(k) = keepers.get_mut(&p.node) {
                        k.revoked(range_id, id);
                    }
                }
                (Kind::Acquire { id, name, waiter_id, try_only }, Some(OutcomeKind::Lock(l))) => {
                    if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id) {
                        if l.granted {
                            s.waits.remove(&name);
                            s.holds.insert(name, l.token);
                        } else if try_only {
                            s.waits.remove(&name);
                        } else if let Some(w) = s.waits.get_mut(&name) {
                            w.0 = waiter_id;
                        }
                    }
                }
                (Kind::Acquire { id, name, .. }, Some(OutcomeKind::Error(_))) => {
                    if let Some(s) = self.sessions.iter_mut().find(|s| s.id == id) {
                        s.waits.remove(&name);
                    }
                }
                _ => {}
            }
        }
    }

    fn range_of(&self, k: &Kind) -> Option<u64> {
        match k {
            Kind::Grant { range_id, .. } | Kind::Revoke { range_id, .. } => Some(*range_id),
            _ => None,
        }
    }

    /// Lock holder changes of an entry's first apply: what a blocked
    /// acquire learns from the node that serves it.
    pub fn observe_first_apply(&mut self, a: &AppliedKv) {
        let r = a.range_id;
        self.revision.insert(r, self.revision.get(&r).copied().unwrap_or(0).max(a.revision()));
        for p in &a.published {
            let Published::Locks { events, .. } = p else { continue };
            for e in events {
                for s in self.sessions.iter_mut().filter(|s| s.range_id == r) {
                    let holds = e.holder.as_ref().filter(|h| h.session == s.id);
                    match holds {
                        Some(h) => {
                            s.waits.remove(&e.name);
                            s.holds.insert(e.name.clone(), h.token);
                        }
                        None => {
                            s.holds.remove(&e.name);
                            if s.waits.get(&e.name).is_some_and(|(w, _)| e.dropped_waiters.contains(w)) {
                                s.waits.remove(&e.name);
                            }
                        }
                    }
                }
            }
        }
    }

    /// Every client dies at once (the end of a run): every lease must then
    /// expire, and every lock be freed.
    pub fn abandon_all(&mut self) {
        self.counts.abandoned += self.sessions.len() as u64;
        self.sessions.clear();
    }
}
