//! The server's lease keeper (`meridian-server`'s `run_keeper` and the
//! keepalive path of its `Lease` service), one per node start, on the
//! simulated clock: the same decisions from the same inputs, with its
//! awaits turned into requests answered in later steps.
//!
//! Each round (every tick; the server's is 100 ms, one tick):
//! - a range this node newly leads (a new term) gets a [`LeaseClock`]
//!   built from the leases a linearizable read finds (ReadIndex, then the
//!   records of the applied state); a range it stopped leading loses it;
//! - leases past their deadline are expired (`LeaseExpire`, leader only),
//!   and forgotten once that is answered (or the lease is gone);
//! - locks under lock-delay are timed from when this leader first saw them
//!   and ended (`LockDelayEnd`) once the delay passed;
//! - every 50 rounds (5 s) long leases' remaining TTLs are checkpointed.
//!
//! Keepalives are answered from the clock alone, as the server does —
//! except a keepalive of a lease this leader checkpointed, which first
//! resets the checkpoint through the log (`LeaseCheckpoint` of 0 s) and is
//! answered when that applies.

use std::collections::{BTreeMap, HashMap};

use meridian_kv::command::{Command, LeaseCheckpointOp, Op, Outcome, OutcomeKind, Query, QueryKind};
use meridian_kv::lease_clock::{LeaseClock, LockDelayTimer};
use meridian_kv::mvcc::Mvcc;
use meridian_kv::EngineRead;
use meridian_raftstore::raft_types::StateRole;
use meridian_raftstore::RequestId;
use prost::Message as _;

use super::checker::KvChecker;
use crate::cluster::Cluster;

/// Rounds between checkpoints of long leases (5 s of 100 ms rounds).
pub const CHECKPOINT_EVERY_ROUNDS: u64 = 50;
/// Leases longer than this are checkpointed (the server's `min_ttl_s`).
pub const CHECKPOINT_MIN_TTL_S: i64 = 10;
/// Checkpoints proposed per range per round (the server's bound).
const MAX_CHECKPOINTS: usize = 256;
/// Delayed locks read per round (the query's bound).
const MAX_DELAYED: usize = 10_000;

/// A keepalive the clock renewed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Renewed {
    /// Answered at once with this TTL.
    Now(i64),
    /// Answered with `ttl_s` once the reset of the lease's checkpoint,
    /// proposed as `req` on this node, applies (see
    /// [`Keeper::reset_applied`]).
    AfterReset { ttl_s: i64, req: RequestId },
}

/// Why a keepalive was not answered with a TTL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeepaliveRefused {
    /// This node keeps no clock for the range: ask its leader.
    NotLeader,
    /// The clock does not know the lease: expired or revoked.
    LeaseNotFound,
}

/// What a keeper round did, for the run's report.
#[derive(Debug, Default, Clone, Copy)]
pub struct KeeperCounts {
    pub clocks_built: u64,
    pub expiries_proposed: u64,
    pub delay_ends_proposed: u64,
    pub checkpoints_proposed: u64,
}

#[derive(Default)]
pub struct Keeper {
    node: u64,
    /// The store start of the node this keeper runs in.
    start: u64,
    /// range → (term it was built in, the clock).
    clocks: HashMap<u64, (u64, LeaseClock)>,
    /// Linearizable reads that will build a clock: (range, term, read).
    /// Kept until answered, even once the term is over (then ignored).
    loading: Vec<(u64, u64, RequestId)>,
    /// range → the lock-delays this leader times there.
    delays: HashMap<u64, LockDelayTimer>,
    /// Expiries and delay ends in flight (the server awaits each one).
    expiring: BTreeMap<(u64, i64), RequestId>,
    ending: BTreeMap<(u64, Vec<u8>), RequestId>,
    /// Checkpoints in flight (answers are only collected).
    checkpointing: Vec<RequestId>,
    /// (range, lease) → when this leader last renewed it (a keepalive, a
    /// grant, or building its clock). For the checker's view of this clock.
    seen_ms: HashMap<(u64, i64), u64>,
    rounds: u64,
}

/// `MERIDIAN_SIM_TRACE=1`: print what every keeper decides.
pub(crate) fn tracing_on() -> bool {
    std::env::var_os("MERIDIAN_SIM_TRACE").is_some()
}

fn command(op: Op, now_ms: u64) -> Vec<u8> {
    // The proposer's clock, recorded as information only.
    Command { op: Some(op), wall_ms: now_ms as i64 }.encode_to_vec()
}

/// The outcome of an answered proposal, if it was applied.
pub fn outcome_of(answer: &crate::Answer) -> Option<Outcome> {
    let (_, raw) = answer.as_ref().ok()?;
    Outcome::decode(raw.as_slice()).ok()
}

fn lease_gone(o: &Outcome) -> bool {
    match &o.kind {
        Some(OutcomeKind::Error(e)) => e.code == meridian_codes::ErrorCode::LeaseNotFound as i32,
        _ => true,
    }
}

impl Keeper {
    pub fn new(node: u64, start: u64) -> Self {
        Keeper { node, start, ..Default::default() }
    }

    pub fn start(&self) -> u64 {
        self.start
    }

    /// The server's `keepalive_once` on this node: renews from this node's
    /// clock, whether or not raft still makes it the leader; a lease it
    /// checkpointed is answered only after a reset through the log.
    pub fn keepalive(&mut self, c: &mut Cluster, now_ms: u64, range_id: u64, id: i64) -> Result<Renewed, KeepaliveRefused> {
        let node = self.node;
        let (_, clock) = self.clocks.get_mut(&range_id).ok_or(KeepaliveRefused::NotLeader)?;
        let before = clock.remaining_s(now_ms, id);
        let ttl_s = clock.keepalive(now_ms, id).ok_or(KeepaliveRefused::LeaseNotFound)?;
        let reset = clock.needs_reset(id);
        if tracing_on() {
            eprintln!("{now_ms} ms: node {node} keepalive of lease {id} (range {range_id}): {before:?} s were left, reset {reset}");
        }
        self.seen_ms.insert((range_id, id), now_ms);
        if !reset {
            return Ok(Renewed::Now(ttl_s));
        }
        let op = Op::LeaseCheckpoint(LeaseCheckpointOp::reset(id));
        // Refused (no longer leader, say): the server's stream fails and
        // the client asks again, elsewhere.
        let req = c.propose_on_leader(node, range_id, command(op, now_ms)).map_err(|_| KeepaliveRefused::NotLeader)?;
        Ok(Renewed::AfterReset { ttl_s, req })
    }

    /// The reset a keepalive proposed applied: the record's reset count is
    /// now `resets`.
    pub fn reset_applied(&mut self, range_id: u64, id: i64, resets: u64) {
        if let Some((_, clock)) = self.clocks.get_mut(&range_id) {
            clock.reset_applied(id, resets);
        }
    }

    /// A grant this node proposed was applied (the server's `lease_grant`).
    pub fn granted(&mut self, now_ms: u64, range_id: u64, id: i64, ttl_s: i64) {
        if let Some((_, clock)) = self.clocks.get_mut(&range_id) {
            clock.granted(now_ms, id, ttl_s);
            self.seen_ms.insert((range_id, id), now_ms);
        }
    }

    /// A revoke this node proposed was applied.
    pub fn revoked(&mut self, range_id: u64, id: i64) {
        if let Some((_, clock)) = self.clocks.get_mut(&range_id) {
            clock.revoked(id);
        }
    }

    /// One keeper round at `now_ms`.
    pub fn round(&mut self, c: &mut Cluster, now_ms: u64, checker: &mut KvChecker, counts: &mut KeeperCounts) {
        self.rounds += 1;
        let node = self.node;
        let Some(store) = c.store(node) else { return };
        let statuses = store.statuses();
        for st in &statuses {
            let r = st.range_id;
            let leading = st.role == StateRole::Leader && !st.dormant;
            let known = self.clocks.get(&r).map(|(t, _)| *t);
            if leading && known != Some(st.term) && !self.loading.iter().any(|(lr, t, _)| *lr == r && *t == st.term) {
                let q = Query { kind: Some(QueryKind::Leases(true)) }.encode_to_vec();
                if let Ok(id) = c.read_on(node, r, &q, None) {
                    self.loading.push((r, st.term, id));
                }
            } else if !leading && known.is_some() {
                if tracing_on() {
                    eprintln!("{now_ms} ms: node {node} no longer leads range {r}: clock dropped");
                }
                self.clocks.remove(&r);
            }
            if !leading {
                // A later leader times a delay from scratch: never shorter.
                self.delays.remove(&r);
            }
        }
        self.finish_loads(c, now_ms, &statuses, counts);
        self.collect_answers(c);
        let mut ranges: Vec<u64> = self.clocks.keys().copied().collect();
        ranges.sort_unstable();
        for r in ranges {
            self.expire(c, r, now_ms, checker, counts);
            self.end_lock_delays(c, r, now_ms, counts);
            if self.rounds.is_multiple_of(CHECKPOINT_EVERY_ROUNDS) {
                let cps = self.clocks.get_mut(&r).expect("clock").1.checkpoint_ops(now_ms, CHECKPOINT_MIN_TTL_S, MAX_CHECKPOINTS);
                for cp in cps {
                    let LeaseCheckpointOp { id, remaining_ttl_s, resets } = cp;
                    if let Ok(req) = c.propose_on_leader(node, r, command(Op::LeaseCheckpoint(cp), now_ms)) {
                        if tracing_on() {
                            eprintln!(
                                "{now_ms} ms: node {node} checkpoints lease {id} (range {r}) at {remaining_ttl_s} s ({resets} resets)"
                            );
                        }
                        self.checkpointing.push(req);
                        counts.checkpoints_proposed += 1;
                    }
                }
            }
        }
    }

    /// Clocks whose linearizable read was answered: built from the leases
    /// of the applied state (now at least at the read's index), if this
    /// node still leads in that term.
    fn finish_loads(&mut self, c: &mut Cluster, now_ms: u64, statuses: &[meridian_raftstore::RangeStatus], counts: &mut KeeperCounts) {
        let node = self.node;
        let loads = std::mem::take(&mut self.loading);
        for (r, term, id) in loads {
            let Some(answer) = c.take_result(node, id) else {
                self.loading.push((r, term, id));
                continue;
            };
            let still = statuses.iter().any(|s| s.range_id == r && s.term == term && s.role == StateRole::Leader && !s.dormant);
            if answer.is_err() || !still {
                continue;
            }
            let Some(store) = c.store(node) else { continue };
            let read = EngineRead { engine: &**store.engine(), namespace_id: r };
            let Ok(leases) = Mvcc::leases(&read) else { continue };
            let clock = LeaseClock::on_become_leader(now_ms, &leases);
            for l in &leases {
                // A checkpointed lease continues from its remaining TTL: as
                // if renewed a TTL before the deadline it gets.
                let left_s = if l.remaining_ttl_s > 0 { l.remaining_ttl_s } else { l.ttl_s };
                let renewed_ms = (now_ms + left_s as u64 * 1000).saturating_sub(l.ttl_s as u64 * 1000);
                self.seen_ms.insert((r, l.id), renewed_ms);
            }
            if tracing_on() {
                eprintln!("{now_ms} ms: node {node} leads range {r} in term {term}: clock of leases {leases:?}");
            }
            self.clocks.insert(r, (term, clock));
            counts.clocks_built += 1;
        }
    }

    fn collect_answers(&mut self, c: &mut Cluster) {
        let node = self.node;
        let done: Vec<((u64, i64), Option<Outcome>)> =
            self.expiring.iter().filter_map(|(k, id)| c.take_result(node, *id).map(|a| (*k, outcome_of(&a)))).collect();
        for ((r, lease), outcome) in done {
            self.expiring.remove(&(r, lease));
            if outcome.as_ref().is_some_and(lease_gone) {
                self.revoked(r, lease);
            }
        }
        let done: Vec<(u64, Vec<u8>)> =
            self.ending.iter().filter(|(_, id)| c.take_result(node, **id).is_some()).map(|(k, _)| k.clone()).collect();
        for (r, name) in done {
            // A delay under this name from now on is a new one.
            self.delays.entry(r).or_default().ended(&name);
            self.ending.remove(&(r, name));
        }
        self.checkpointing.retain(|id| c.take_result(node, *id).is_none());
    }

    fn expire(&mut self, c: &mut Cluster, r: u64, now_ms: u64, checker: &mut KvChecker, counts: &mut KeeperCounts) {
        let node = self.node;
        let clock = &self.clocks[&r].1;
        for id in clock.expired(now_ms) {
            if self.expiring.contains_key(&(r, id)) {
                continue;
            }
            // The ttl the clock holds is private; the record's is the same.
            let ttl_s = c
                .store(node)
                .and_then(|s| Mvcc::lease(&EngineRead { engine: &**s.engine(), namespace_id: r }, id).ok().flatten())
                .map(|l| l.ttl_s);
            if let Some(ttl_s) = ttl_s {
                let seen = self.seen_ms.get(&(r, id)).copied();
                checker.observe_expiry_proposal(now_ms, node, id, ttl_s, seen);
            }
            // Expiry, not a clean revoke: held locks get lock-delay.
            if let Ok(req) = c.propose_on_leader(node, r, command(Op::LeaseExpire(id), now_ms)) {
                if tracing_on() {
                    eprintln!("{now_ms} ms: node {node} proposes to expire lease {id} (range {r})");
                }
                self.expiring.insert((r, id), req);
                counts.expiries_proposed += 1;
            }
        }
    }

    /// Ends lock-delays this leader has timed in full on its own clock.
    fn end_lock_delays(&mut self, c: &mut Cluster, r: u64, now_ms: u64, counts: &mut KeeperCounts) {
        let node = self.node;
        let Some(store) = c.store(node) else { return };
        let read = EngineRead { engine: &**store.engine(), namespace_id: r };
        let Ok(delayed) = meridian_kv::locks::delayed(&read, MAX_DELAYED) else { return };
        let delayed: Vec<(Vec<u8>, i64)> = delayed.into_iter().map(|l| (l.name, l.lock.map_or(0, |rec| rec.delay_ms))).collect();
        for name in self.delays.entry(r).or_default().due(now_ms, &delayed) {
            let key = (r, name.clone());
            if self.ending.contains_key(&key) {
                continue;
            }
            match c.propose_on_leader(node, r, command(Op::LockDelayEnd(name.clone()), now_ms)) {
                Ok(req) => {
                    if tracing_on() {
                        eprintln!("{now_ms} ms: node {node} ends the lock-delay of {} (range {r})", String::from_utf8_lossy(&name));
                    }
                    self.ending.insert(key, req);
                    counts.delay_ends_proposed += 1;
                }
                // Refused at once: answered, as the server's await is.
                Err(_) => self.delays.entry(r).or_default().ended(&name),
            }
        }
    }
}
