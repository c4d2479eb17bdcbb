//! SWIM gossip (the `foca` crate) driven without IO: packets in, packets
//! out, timers as data, time as an input — the same code in the
//! deterministic simulation and, later, in the node behind a UDP socket.
//!
//! ```text
//!  received packet ──► Gossip::handle_packet(now, bytes)
//!  the clock ────────► Gossip::advance(now)   fires every due foca timer, in order
//!                          │
//!                          ├─► outbox: (to, bytes) for the transport to send
//!                          └─► events: member up / down / renamed, this node active / defunct
//! ```
//!
//! A member's identity is its node id (foca's "address": one live
//! identity per node) with an incarnation that a restart renews, so a
//! restarted node replaces its old identity instead of resurrecting it.
//!
//! Besides membership, gossip disseminates two kinds of [`Broadcast`]
//! (foca's custom broadcasts): each node's directory record (its
//! addresses, labels and role: [`Advert`]), advertised again whenever a
//! member comes up so a node that joins later learns every record, and
//! each node's heartbeat, a counter it raises every second (Cassandra's
//! heartbeat versions: the phi-accrual detector is fed by their arrival,
//! so a peer's suspicion does not depend on how often this node happens to
//! probe it).

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use foca::{AccumulatingRuntime, BroadcastHandler, Config, Foca, Identity, Invalidates, OwnedNotification, PostcardCodec, Timer};
use rand010::rngs::SmallRng;
use rand010::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::{check_host_port, Labels, NodeRole};

/// A member as gossip carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GossipId {
    /// The node id (unique in the cluster: foca's address).
    pub node: u64,
    /// Renewed (raised) by every restart and by a rejoin after being
    /// declared down; the higher one wins.
    pub incarnation: u64,
    /// Where its gossip packets go (`host:port`).
    pub gossip_addr: String,
    /// `data` or `witness`.
    pub role: NodeRole,
    /// Its region: members of one region gossip with foca's LAN settings,
    /// across regions with its WAN settings.
    pub region: String,
}

/// Renewals (foca's rejoin after being declared down) one incarnation
/// leaves room for: a restart starts at the next multiple, so a restarted
/// node always outranks every identity of its previous run.
pub const RENEWALS_PER_START: u64 = 1 << 20;

/// The incarnation of the `start`-th start of a node (its restart counter,
/// persisted): above every incarnation an earlier start could reach.
pub fn incarnation_of_start(start: u64) -> u64 {
    start.saturating_mul(RENEWALS_PER_START)
}

impl Identity for GossipId {
    type Addr = u64;

    fn renew(&self) -> Option<Self> {
        // Within this start's room: past it would collide with the next
        // start's incarnations (a million rejoins in one run: give up).
        let next = self.incarnation.checked_add(1)?;
        (next / RENEWALS_PER_START == self.incarnation / RENEWALS_PER_START).then(|| GossipId { incarnation: next, ..self.clone() })
    }

    fn addr(&self) -> u64 {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// What changed, as this node's gossip sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GossipEvent {
    /// A member is up (joined, or back).
    Up(GossipId),
    /// A member was declared down.
    Down(GossipId),
    /// A member's identity was replaced by a newer one (a restart).
    Renamed {
        /// The identity replaced.
        old: GossipId,
        /// The one that replaced it.
        new: GossipId,
    },
    /// This node is known to the cluster.
    Active,
    /// Every other member is gone or down.
    Idle,
    /// This node was declared down and rejoined under a new incarnation.
    Rejoined(GossipId),
    /// A member's directory record arrived (new to this node).
    Record {
        /// The member.
        node: u64,
        /// Its incarnation when it advertised the record.
        incarnation: u64,
        /// The record.
        advert: Advert,
    },
    /// A member's heartbeat arrived (newer than any seen from it).
    Beat {
        /// The member.
        node: u64,
        /// Its incarnation.
        incarnation: u64,
    },
}

/// A node's directory record as gossip carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Advert {
    /// `host:port` for raft traffic.
    pub peer_addr: String,
    /// `host:port` of the gRPC endpoint.
    pub client_addr: String,
    /// `host:port` of the HTTP endpoint.
    pub http_addr: String,
    /// `host:port` of the gossip socket.
    pub gossip_addr: String,
    /// Where the node is.
    pub labels: Labels,
    /// What it does.
    pub role: NodeRole,
}

/// Longest label (region, zone, host) a broadcast may carry.
pub const MAX_LABEL: usize = 63;

impl Advert {
    /// Whether the record is well-formed: `host:port` addresses, labels
    /// of at most [`MAX_LABEL`] bytes.
    pub fn check(&self) -> Result<(), String> {
        for (field, a) in
            [("peer", &self.peer_addr), ("client", &self.client_addr), ("http", &self.http_addr), ("gossip", &self.gossip_addr)]
        {
            check_host_port(a).map_err(|e| format!("{field} address {a:?}: {e}"))?;
        }
        for l in [&self.labels.region, &self.labels.zone, &self.labels.host] {
            if l.len() > MAX_LABEL {
                return Err(format!("label {l:?} is longer than {MAX_LABEL} bytes"));
            }
        }
        Ok(())
    }
}

/// What gossip disseminates besides membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Broadcast {
    /// `node`'s directory record; `seq` is raised at every advertisement.
    Record {
        /// The member.
        node: u64,
        /// Its incarnation.
        incarnation: u64,
        /// Raised at every advertisement.
        seq: u64,
        /// The record.
        advert: Advert,
    },
    /// `node`'s heartbeat number `seq`.
    Beat {
        /// The member.
        node: u64,
        /// Its incarnation.
        incarnation: u64,
        /// Raised every heartbeat.
        seq: u64,
    },
}

impl Broadcast {
    fn key(&self) -> BroadcastKey {
        match self {
            Broadcast::Record { node, incarnation, seq, .. } => BroadcastKey { node: *node, kind: 0, version: (*incarnation, *seq) },
            Broadcast::Beat { node, incarnation, seq } => BroadcastKey { node: *node, kind: 1, version: (*incarnation, *seq) },
        }
    }
}

/// Which broadcast a backlog entry is: a newer version of the same node's
/// record (or heartbeat) replaces an older one still being disseminated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BroadcastKey {
    node: u64,
    kind: u8,
    version: (u64, u64),
}

impl Invalidates for BroadcastKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.node == other.node && self.kind == other.kind && self.version >= other.version
    }
}

/// A broadcast refused (foca drops the rest of its packet).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("gossip broadcast refused: {0}")]
pub struct BroadcastError(String);

/// The broadcast side of one node's gossip: the newest version seen of
/// each node's record and heartbeat (bounded by the directory's
/// `MAX_NODES`), and what arrived since the owner last looked.
/// Shared with the owning [`Gossip`] (foca owns the handler and offers no
/// way back to it).
#[derive(Default, Clone)]
pub struct Disseminated {
    inner: Arc<Mutex<Newest>>,
}

#[derive(Default)]
struct Newest {
    newest: BTreeMap<(u64, u8), (u64, u64)>,
    arrived: Vec<Broadcast>,
}

impl Disseminated {
    fn lock(&self) -> std::sync::MutexGuard<'_, Newest> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The broadcast in `data`, if well-formed and room is left for its
    /// node (changes nothing).
    fn check(&self, data: &[u8]) -> Result<Broadcast, BroadcastError> {
        let b: Broadcast = postcard::from_bytes(data).map_err(|e| BroadcastError(e.to_string()))?;
        let key = b.key();
        if key.node == 0 {
            return Err(BroadcastError("node id 0".into()));
        }
        if let Broadcast::Record { advert, .. } = &b {
            advert.check().map_err(BroadcastError)?;
        }
        let n = self.lock();
        if !n.newest.contains_key(&(key.node, key.kind)) && n.newest.len() >= 2 * crate::MAX_NODES {
            return Err(BroadcastError("too many nodes".into()));
        }
        Ok(b)
    }
}

impl BroadcastHandler<GossipId> for Disseminated {
    type Key = BroadcastKey;
    type Error = BroadcastError;

    fn receive_item(&mut self, data: &[u8], _sender: Option<&GossipId>) -> Result<Option<BroadcastKey>, BroadcastError> {
        let b = self.check(data)?;
        let key = b.key();
        let mut n = self.lock();
        match n.newest.get(&(key.node, key.kind)) {
            Some(v) if *v >= key.version => return Ok(None),
            None if n.newest.len() >= 2 * crate::MAX_NODES => return Err(BroadcastError("too many nodes".into())),
            _ => {}
        }
        n.newest.insert((key.node, key.kind), key.version);
        if n.arrived.len() < MAX_PENDING {
            n.arrived.push(b);
        }
        Ok(Some(key))
    }
}

/// Errors of the gossip driver (foca's, by text: it has no typed codes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GossipError {
    /// A packet that does not decode, or that foca refused.
    #[error("gossip packet refused: {0}")]
    Packet(String),
    /// foca refused an operation.
    #[error("gossip: {0}")]
    Foca(String),
}

/// Pending timers at most (foca keeps a handful per member; more is a
/// bug, refused rather than grown).
pub const MAX_TIMERS: usize = 4 * crate::MAX_NODES + 64;
/// Packets and events waiting to be taken at most (the owner drains them
/// after every call).
pub const MAX_PENDING: usize = 16 * crate::MAX_NODES;

/// One node's gossip.
pub struct Gossip {
    foca: Foca<GossipId, PostcardCodec, SmallRng, Disseminated>,
    runtime: AccumulatingRuntime<GossipId>,
    /// (due ms, sequence) → timer: fired in due order, ties in the order
    /// they were asked for.
    timers: BTreeMap<(u64, u64), Timer<GossipId>>,
    seq: u64,
    now: u64,
    outbox: Vec<(GossipId, Vec<u8>)>,
    events: Vec<GossipEvent>,
    /// Members to announce this node to (node id, gossip address) until
    /// the cluster knows it: an announce lost on the way is sent again
    /// every [`ANNOUNCE_EVERY_MS`].
    seeds: Vec<(u64, String)>,
    /// The cluster knows this node (foca said Active, and not Idle since).
    active: bool,
    next_announce: u64,
    /// This node's record (advertised again whenever a member comes up).
    advert: Option<Advert>,
    /// Sequence of this node's own broadcasts.
    own_seq: u64,
    broadcasts: Disseminated,
}

/// How often a node the cluster does not know yet announces itself again.
pub const ANNOUNCE_EVERY_MS: u64 = 1000;
/// Seeds kept at most.
pub const MAX_SEEDS: usize = 16;

/// foca's LAN settings for a cluster of about `cluster_size` nodes.
pub fn lan_config(cluster_size: u32) -> Config {
    Config::new_lan(NonZeroU32::new(cluster_size.max(1)).expect("at least 1"))
}

/// foca's WAN settings (longer probe periods and suspicion).
pub fn wan_config(cluster_size: u32) -> Config {
    Config::new_wan(NonZeroU32::new(cluster_size.max(1)).expect("at least 1"))
}

impl Gossip {
    /// This node's gossip as `me`, with `config`, its randomness from
    /// `seed`, at time `now` ms.
    pub fn new(me: GossipId, config: Config, seed: u64, now: u64) -> Gossip {
        let broadcasts = Disseminated::default();
        let foca = Foca::with_custom_broadcast(me, config, SmallRng::seed_from_u64(seed), PostcardCodec, broadcasts.clone());
        Gossip {
            foca,
            runtime: AccumulatingRuntime::new(),
            timers: BTreeMap::new(),
            seq: 0,
            now,
            outbox: Vec::new(),
            events: Vec::new(),
            seeds: Vec::new(),
            active: false,
            next_announce: now,
            advert: None,
            own_seq: 0,
            broadcasts,
        }
    }

    /// Disseminates this node's directory record (again whenever a
    /// member comes up, so that late joiners learn it).
    pub fn advertise(&mut self, advert: Advert) -> Result<(), GossipError> {
        advert.check().map_err(GossipError::Foca)?;
        self.advert = Some(advert);
        self.readvertise()
    }

    /// Disseminates this node's record again (a new version): a broadcast
    /// is sent a bounded number of times, and loss can keep it from a
    /// member; the owner calls this now and then.
    pub fn readvertise(&mut self) -> Result<(), GossipError> {
        let Some(advert) = self.advert.clone() else { return Ok(()) };
        self.own_seq += 1;
        let me = self.foca.identity();
        let b = Broadcast::Record { node: me.node, incarnation: me.incarnation, seq: self.own_seq, advert };
        self.add_broadcast(&b)
    }

    /// Disseminates a new heartbeat of this node.
    pub fn beat(&mut self) -> Result<(), GossipError> {
        self.own_seq += 1;
        let me = self.foca.identity();
        let b = Broadcast::Beat { node: me.node, incarnation: me.incarnation, seq: self.own_seq };
        self.add_broadcast(&b)
    }

    fn add_broadcast(&mut self, b: &Broadcast) -> Result<(), GossipError> {
        let data = postcard::to_allocvec(b).map_err(|e| GossipError::Foca(e.to_string()))?;
        self.foca.add_broadcast(&data).map_err(|e| GossipError::Foca(e.to_string()))?;
        // Our own broadcast is not news to us.
        self.broadcasts.lock().arrived.pop();
        Ok(())
    }

    /// This node's own loop stalled for `gap` ms (detected by its owner):
    /// every pending timer moves `gap` later, so foca's probes that were
    /// waiting for answers still queued in the socket do not count the
    /// stall against the peers.
    pub fn credit_pause(&mut self, gap: u64) {
        if gap == 0 {
            return;
        }
        let timers = std::mem::take(&mut self.timers);
        self.timers = timers.into_iter().map(|((due, seq), t)| ((due.saturating_add(gap), seq), t)).collect();
    }

    /// Members and their foca state (alive or suspect), itself excluded.
    pub fn member_states(&self) -> Vec<(GossipId, bool)> {
        self.foca
            .iter_membership_state()
            .filter(|m| m.state() != foca::State::Down)
            .map(|m| (m.id().clone(), m.state() == foca::State::Suspect))
            .collect()
    }

    /// This node's identity now.
    pub fn identity(&self) -> &GossipId {
        self.foca.identity()
    }

    /// Whether the cluster knows this node (foca is active).
    pub fn is_active(&self) -> bool {
        self.active
    }

    /// The time of the last call (ms).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Asks `node` (reachable at `gossip_addr`) to let this node in, now
    /// and again every [`ANNOUNCE_EVERY_MS`] until the cluster knows this
    /// node (at most [`MAX_SEEDS`] seeds are kept).
    pub fn announce(&mut self, node: u64, gossip_addr: &str) -> Result<(), GossipError> {
        if !self.seeds.iter().any(|(n, _)| *n == node) && self.seeds.len() < MAX_SEEDS {
            self.seeds.push((node, gossip_addr.to_string()));
        }
        self.announce_to(node, gossip_addr)
    }

    /// Asks `node` once to let this node in (no retry).
    pub fn announce_once(&mut self, node: u64, gossip_addr: &str) -> Result<(), GossipError> {
        let next = self.next_announce;
        let r = self.announce_to(node, gossip_addr);
        self.next_announce = next;
        r
    }

    /// Stops announcing to `node` (it turned out to be in another pool).
    pub fn forget_seed(&mut self, node: u64) {
        self.seeds.retain(|(n, _)| *n != node);
    }

    fn announce_to(&mut self, node: u64, gossip_addr: &str) -> Result<(), GossipError> {
        let dst = GossipId { node, incarnation: 0, gossip_addr: gossip_addr.into(), role: NodeRole::Data, region: String::new() };
        let r = self.foca.announce(dst, &mut self.runtime).map_err(|e| GossipError::Foca(e.to_string()));
        self.next_announce = self.now + ANNOUNCE_EVERY_MS;
        self.drain();
        r
    }

    /// Checks a packet the way foca reads it — header, member updates,
    /// then each custom broadcast — without changing anything. foca applies
    /// the member updates before it reads the broadcasts, so a packet whose
    /// broadcasts are bad would otherwise be refused half-applied.
    fn precheck(&self, mut data: &[u8]) -> Result<(), GossipError> {
        use foca::Codec as _;
        let bad = |what: &str| GossipError::Packet(what.to_string());
        let mut codec = PostcardCodec;
        let header: foca::Header<GossipId> = codec.decode_header(&mut data).map_err(|e| bad(&format!("header: {e}")))?;
        if data.len() == 1 || (header.message == foca::Message::Announce && !data.is_empty()) {
            return Err(bad("trailing bytes"));
        }
        if data.len() >= 2 && header.message != foca::Message::Broadcast {
            let n = u16::from_be_bytes([data[0], data[1]]);
            data = &data[2..];
            for _ in 0..n {
                let _: foca::Member<GossipId> = codec.decode_member(&mut data).map_err(|e| bad(&format!("member update: {e}")))?;
            }
        }
        if !data.is_empty() && data.len() < 3 {
            return Err(bad("a truncated broadcast"));
        }
        while data.len() > 2 {
            let len = u16::from_be_bytes([data[0], data[1]]) as usize;
            data = &data[2..];
            if len == 0 || data.len() < len {
                return Err(bad("a truncated broadcast"));
            }
            self.broadcasts.check(&data[..len]).map_err(|e| GossipError::Packet(e.to_string()))?;
            data = &data[len..];
        }
        if !data.is_empty() {
            return Err(bad("trailing bytes"));
        }
        Ok(())
    }

    /// A packet arrived at `now` ms. A packet the precheck refuses changes
    /// nothing; one foca refuses later may have had its member updates
    /// applied.
    pub fn handle_packet(&mut self, now: u64, data: &[u8]) -> Result<(), GossipError> {
        self.precheck(data)?;
        self.advance(now);
        let r = self.foca.handle_data(data, &mut self.runtime).map_err(|e| GossipError::Packet(e.to_string()));
        self.drain();
        r
    }

    /// Time is now `now` ms: fires every timer due by then, in order.
    pub fn advance(&mut self, now: u64) {
        self.now = self.now.max(now);
        while let Some(entry) = self.timers.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let timer = entry.remove();
            // A timer foca no longer cares for is answered with an error
            // it ignores; nothing to do about it here.
            let _ = self.foca.handle_timer(timer, &mut self.runtime);
            self.drain();
        }
        if !self.active && self.now >= self.next_announce && !self.seeds.is_empty() {
            for (node, addr) in self.seeds.clone() {
                // A seed that is this node itself, or refused: the next
                // round tries again.
                let _ = self.announce_to(node, &addr);
            }
        }
    }

    /// When the next timer, or the next repeated announce, is due (ms),
    /// if any.
    pub fn next_due(&self) -> Option<u64> {
        let timer = self.timers.keys().next().map(|(due, _)| *due);
        let announce = (!self.active && !self.seeds.is_empty()).then_some(self.next_announce);
        timer.into_iter().chain(announce).min()
    }

    /// Packets to send, taken.
    pub fn take_outbox(&mut self) -> Vec<(GossipId, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Events since the last call, taken.
    pub fn take_events(&mut self) -> Vec<GossipEvent> {
        std::mem::take(&mut self.events)
    }

    /// The members this node believes active (itself not included).
    pub fn members(&self) -> Vec<GossipId> {
        let mut v: Vec<GossipId> = self.foca.iter_members().map(|m| m.id().clone()).collect();
        v.sort_by_key(|m| m.node);
        v
    }

    /// Moves what foca produced into the outbox, the timer queue and the
    /// events.
    fn drain(&mut self) {
        while let Some((to, data)) = self.runtime.to_send() {
            if self.outbox.len() < MAX_PENDING {
                self.outbox.push((to, data.to_vec()));
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            if self.timers.len() >= MAX_TIMERS {
                continue;
            }
            let due = self.now + u64::try_from(after.as_millis()).unwrap_or(u64::MAX / 2);
            self.timers.insert((due, self.seq), timer);
            self.seq += 1;
        }
        let arrived = std::mem::take(&mut self.broadcasts.lock().arrived);
        for b in arrived {
            let event = match b {
                Broadcast::Record { node, incarnation, advert, .. } => GossipEvent::Record { node, incarnation, advert },
                Broadcast::Beat { node, incarnation, .. } => GossipEvent::Beat { node, incarnation },
            };
            if self.events.len() < MAX_PENDING {
                self.events.push(event);
            }
        }
        let mut readvertise = false;
        while let Some(n) = self.runtime.to_notify() {
            let event = match n {
                OwnedNotification::MemberUp(id) => {
                    readvertise = true;
                    GossipEvent::Up(id)
                }
                OwnedNotification::MemberDown(id) => GossipEvent::Down(id),
                OwnedNotification::Rename(old, new) => GossipEvent::Renamed { old, new },
                OwnedNotification::Active => {
                    self.active = true;
                    GossipEvent::Active
                }
                OwnedNotification::Idle => {
                    self.active = false;
                    GossipEvent::Idle
                }
                OwnedNotification::Rejoin(id) => GossipEvent::Rejoined(id),
                _ => continue,
            };
            if self.events.len() < MAX_PENDING {
                self.events.push(event);
            }
        }
        if readvertise {
            // A member came up: it may not know this node's record.
            let _ = self.readvertise();
        }
    }
}

/// How long foca's settings take at most to declare a silent member down
/// (probe period plus suspicion), for bounds in tests and docs.
pub fn detection_bound(config: &Config) -> Duration {
    config.probe_period + config.probe_rtt + config.suspect_to_down_after
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeSet, HashMap};

    use meridian_codes::seeded::SplitMix64;

    use super::*;

    /// A deterministic network of gossip nodes: packets are delayed 1-20
    /// ms and dropped with `loss` (per mille), from `seed`.
    struct Net {
        nodes: BTreeMap<u64, Gossip>,
        crashed: BTreeSet<u64>,
        /// Nodes cut off from the rest (packets between the two sides are
        /// lost).
        minority: BTreeSet<u64>,
        /// (deliver at ms, seq) → (to node, bytes)
        in_flight: BTreeMap<(u64, u64), (u64, Vec<u8>)>,
        seq: u64,
        rng: SplitMix64,
        loss: u64,
        now: u64,
        events: HashMap<u64, Vec<GossipEvent>>,
    }

    fn id(node: u64, incarnation: u64) -> GossipId {
        GossipId { node, incarnation, gossip_addr: format!("n{node}:7946"), role: NodeRole::Data, region: "r".into() }
    }

    impl Net {
        fn new(n: u64, seed: u64, loss: u64) -> Net {
            let mut net = Net {
                nodes: BTreeMap::new(),
                crashed: BTreeSet::new(),
                minority: BTreeSet::new(),
                in_flight: BTreeMap::new(),
                seq: 0,
                rng: SplitMix64::new(seed),
                loss,
                now: 0,
                events: HashMap::new(),
            };
            for i in 1..=n {
                net.nodes.insert(i, Gossip::new(id(i, 0), lan_config(n as u32), seed ^ i, 0));
            }
            for i in 2..=n {
                net.nodes.get_mut(&i).unwrap().announce(1, "n1:7946").unwrap();
            }
            net.flush();
            net
        }

        fn flush(&mut self) {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            for i in ids {
                let g = self.nodes.get_mut(&i).unwrap();
                let out = g.take_outbox();
                let ev = g.take_events();
                self.events.entry(i).or_default().extend(ev);
                for (to, data) in out {
                    let cut = self.minority.contains(&i) != self.minority.contains(&to.node);
                    if self.rng.below(1000) < self.loss || cut {
                        continue;
                    }
                    let at = self.now + 1 + self.rng.below(20);
                    self.in_flight.insert((at, self.seq), (to.node, data));
                    self.seq += 1;
                }
            }
        }

        /// Runs until `until` ms, 10 ms at a time.
        fn run(&mut self, until: u64) {
            while self.now < until {
                self.now += 10;
                while let Some(e) = self.in_flight.first_entry() {
                    if e.key().0 > self.now {
                        break;
                    }
                    let (to, data) = e.remove();
                    if self.crashed.contains(&to) {
                        continue;
                    }
                    if let Some(g) = self.nodes.get_mut(&to) {
                        let _ = g.handle_packet(self.now, &data);
                    }
                }
                let now = self.now;
                for (i, g) in self.nodes.iter_mut() {
                    if !self.crashed.contains(i) {
                        g.advance(now);
                    }
                }
                self.flush();
            }
        }

        fn view(&self, i: u64) -> Vec<u64> {
            self.nodes[&i].members().iter().map(|m| m.node).collect()
        }
    }

    #[test]
    fn members_converge_a_crash_is_declared_down_and_a_restart_renews_the_identity() {
        for seed in 0..20u64 {
            let mut net = Net::new(5, seed, 20);
            net.run(15_000);
            for i in 1..=5 {
                let want: Vec<u64> = (1..=5).filter(|j| *j != i).collect();
                assert_eq!(net.view(i), want, "seed {seed}: node {i} sees every other member");
            }
            // With 2 % loss, no member alive throughout was declared down.
            for i in 1..=5 {
                assert!(!net.events[&i].iter().any(|e| matches!(e, GossipEvent::Down(_))), "seed {seed}: node {i} convicted a live member");
            }
            // Node 3 crashes (stops processing and answering).
            net.crashed.insert(3);
            let crashed_at = net.now;
            let bound = detection_bound(&lan_config(5)).as_millis() as u64 * 3;
            net.run(crashed_at + bound);
            for i in [1, 2, 4, 5] {
                assert!(!net.view(i).contains(&3), "seed {seed}: node {i} still lists the crashed node");
                assert!(
                    net.events[&i].iter().any(|e| matches!(e, GossipEvent::Down(g) if g.node == 3)),
                    "seed {seed}: node {i} never declared node 3 down"
                );
            }
            // Restarted with a new incarnation and the same id.
            net.crashed.remove(&3);
            net.nodes.insert(3, Gossip::new(id(3, 1), lan_config(5), seed ^ 99, net.now));
            net.nodes.get_mut(&3).unwrap().announce(1, "n1:7946").unwrap();
            net.flush();
            net.run(net.now + 15_000);
            for i in [1, 2, 4, 5] {
                let three: Vec<GossipId> = net.nodes[&i].members().into_iter().filter(|m| m.node == 3).collect();
                assert_eq!(three, vec![id(3, 1)], "seed {seed}: node {i} knows node 3's new incarnation only");
            }
        }
    }

    #[test]
    fn a_partitioned_minority_is_declared_down_then_both_sides_merge_after_the_heal() {
        for seed in 0..20u64 {
            let mut net = Net::new(5, seed, 10);
            net.run(15_000);
            net.minority = BTreeSet::from([4, 5]);
            net.run(net.now + 60_000);
            assert!(!net.view(1).contains(&4) && !net.view(1).contains(&5), "seed {seed}: the majority still lists the minority");
            net.minority.clear();
            // foca's LAN settings announce to down members every 65 s.
            net.run(net.now + 150_000);
            for i in 1..=5 {
                let want: Vec<u64> = (1..=5).filter(|j| *j != i).collect();
                assert_eq!(net.view(i), want, "seed {seed}: node {i} after the heal");
            }
        }
    }

    #[test]
    fn garbage_packets_are_refused_without_changing_anything() {
        let mut net = Net::new(3, 7, 0);
        net.run(10_000);
        let before = net.view(1);
        let g = net.nodes.get_mut(&1).unwrap();
        for junk in [&b""[..], b"\x00", b"\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", &[7u8; 2000][..]] {
            assert!(g.handle_packet(10_000, junk).is_err(), "{junk:?} accepted");
        }
        assert_eq!(net.view(1), before);
    }

    #[test]
    fn a_higher_incarnation_wins_the_node_id() {
        assert!(id(4, 2).win_addr_conflict(&id(4, 1)));
        assert!(!id(4, 1).win_addr_conflict(&id(4, 2)));
        assert_eq!(id(4, 1).renew(), Some(id(4, 2)));
        assert_eq!(id(4, 1).addr(), 4);
    }
}
