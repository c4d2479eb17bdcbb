//! One node's membership, IO-free: two gossip pools, the phi-accrual
//! detector and the wire checks, behind packets in, packets out and a
//! clock. The node drives it from a UDP socket; the simulation and the
//! gossip benchmark drive the same code over a virtual network.
//!
//! ```text
//!  UDP datagram ──► Agent::receive(now, bytes)   wire::Opener (cluster, HMAC, replay) → pool → foca
//!  the clock ─────► Agent::tick(now)             stall credit, heartbeats, foca timers, WAN announces
//!                     │
//!                     ├─► take_outbox(): (gossip address, datagram) to send
//!                     └─► peers(now): id, record, region, alive | suspect | dead, φ, incarnation, last heard
//! ```
//!
//! **Two pools, one per kind of link.** Members of this node's region
//! gossip in the LAN pool with foca's LAN settings (1 s probes); once a
//! node knows a member of another region, it also joins the WAN pool
//! (every node of a multi-region cluster, foca's WAN settings: 5 s probes,
//! 3 s round trips), whose verdicts count for cross-region peers only. A
//! single-region cluster never runs the WAN pool. Every datagram carries
//! its pool and its sender's region before foca's bytes; a LAN datagram
//! from another region is dropped (`other_region`).
//!
//! **A peer's state** combines foca's verdict in the pool that covers the
//! link (down, suspect) with the phi-accrual detector fed by every
//! datagram and every heartbeat heard from the peer: dead if either says
//! dead, suspect if either says suspect, alive otherwise. A stall of this
//! node's own loop (a gap between two calls longer than the detector's
//! `self_pause_ms`) is credited to every peer's silence and moves foca's
//! pending timers by the same gap: the stalled node convicts nobody for it.

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroUsize;

use foca::Config;

use crate::gossip::{incarnation_of_start, lan_config, wan_config, Advert, Gossip, GossipEvent, GossipId, MAX_LABEL, RENEWALS_PER_START};
use crate::phi::{PhiConfig, PhiDetector};
use crate::wire::{DropReason, Opener, Sealer, MAX_PAYLOAD};
use crate::Liveness;

/// The two gossip pools.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Pool {
    /// Members of this node's region.
    Lan = 0,
    /// Every member of a multi-region cluster.
    Wan = 1,
}

/// Bytes before foca's in a datagram's payload: pool, region length.
const PREFIX: usize = 2;
/// Largest foca packet: what the wire carries less the prefix and the
/// longest region.
pub const MAX_FOCA_PACKET: usize = MAX_PAYLOAD - PREFIX - MAX_LABEL;

/// What a node's membership needs to start.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's id.
    pub node: u64,
    /// How many times this node's data directory has started (persisted,
    /// raised at every start): the incarnation derives from it, so a
    /// restart outranks every identity of the previous run.
    pub start: u64,
    /// This node's record (addresses, labels, role).
    pub advert: Advert,
    /// The cluster's id on the wire (packets of other clusters are dropped).
    pub cluster: u64,
    /// The cluster key packets are authenticated with.
    pub key: Vec<u8>,
    /// The failure detector's settings.
    pub phi: PhiConfig,
    /// How often this node disseminates a heartbeat, in ms.
    pub heartbeat_ms: u64,
    /// Expected cluster size (sizes foca's dissemination and suspicion).
    pub cluster_size: u32,
    /// Randomness of foca's choices.
    pub seed: u64,
}

/// Default heartbeat period: the phi detector's expected interval.
pub const DEFAULT_HEARTBEAT_MS: u64 = 1000;

/// A peer as this node sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerView {
    /// Its node id.
    pub node: u64,
    /// Its newest incarnation heard of (0: not heard of through gossip).
    pub incarnation: u64,
    /// Its record, once one arrived.
    pub advert: Option<Advert>,
    /// Alive, suspect or dead (unknown: never heard from).
    pub state: Liveness,
    /// Its suspicion level now (0 when never heard from).
    pub phi: f64,
    /// When it was last heard from (ms of this node's clock).
    pub last_heard_ms: Option<u64>,
}

/// Traffic counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Datagrams sealed for sending.
    pub sent_packets: u64,
    /// Their bytes.
    pub sent_bytes: u64,
    /// Datagrams that passed the wire checks.
    pub received_packets: u64,
    /// Their bytes.
    pub received_bytes: u64,
    /// Datagrams dropped, by reason (wire reasons, `other_region`,
    /// `bad_prefix`, `refused` by foca).
    pub dropped: BTreeMap<&'static str, u64>,
}

#[derive(Debug, Clone, Default)]
struct Peer {
    id: Option<GossipId>,
    advert: Option<Advert>,
    /// Where to reach it before its identity arrived (a seed).
    gossip_addr: Option<String>,
    region: Option<String>,
    /// Declared down by the covering pool (until up again).
    down: bool,
}

/// One node's membership.
pub struct Agent {
    node: u64,
    region: String,
    lan: Gossip,
    wan: Gossip,
    wan_joined: bool,
    phi: PhiDetector,
    sealer: Sealer,
    opener: Opener,
    peers: BTreeMap<u64, Peer>,
    heartbeat_ms: u64,
    next_beat: u64,
    outbox: Vec<(u64, String, Vec<u8>)>,
    traffic: Traffic,
    stalled: u64,
    next_reconcile: u64,
    /// Where the last reconcile round stopped (rotates through peers).
    reconcile_from: u64,
    /// A peer of another region is known (the WAN pool may be joined).
    foreign_seen: bool,
    next_readvertise: u64,
    /// The latest time given to `receive` or `tick` (ms).
    now: u64,
}

/// How often a node announces itself to known peers missing from the pool
/// that covers them (two pools formed apart, a restarted peer).
pub const RECONCILE_EVERY_MS: u64 = 5000;
/// Announces per reconcile round at most.
pub const RECONCILE_BATCH: usize = 3;
/// How often a node disseminates its record again, whatever happened: a
/// broadcast is sent a bounded number of times and loss can keep it from
/// a member (records are otherwise advertised when a member comes up).
pub const READVERTISE_EVERY_MS: u64 = 15_000;

fn pool_config(mut c: Config) -> Config {
    c.max_packet_size = NonZeroUsize::new(MAX_FOCA_PACKET).expect("positive");
    c
}

impl Agent {
    /// This node's membership at `now` ms (it knows nobody yet: see
    /// [`Agent::learn`]).
    pub fn new(cfg: AgentConfig, now: u64) -> Result<Agent, String> {
        cfg.advert.check()?;
        cfg.phi.validate()?;
        if cfg.node == 0 {
            return Err("node id 0".into());
        }
        if cfg.heartbeat_ms == 0 {
            return Err("heartbeat_ms must be > 0".into());
        }
        let incarnation = incarnation_of_start(cfg.start);
        let region = cfg.advert.labels.region.clone();
        let me = GossipId {
            node: cfg.node,
            incarnation,
            gossip_addr: cfg.advert.gossip_addr.clone(),
            role: cfg.advert.role,
            region: region.clone(),
        };
        let mut lan = Gossip::new(me.clone(), pool_config(lan_config(cfg.cluster_size)), cfg.seed, now);
        let mut wan = Gossip::new(me, pool_config(wan_config(cfg.cluster_size)), cfg.seed ^ 0x5741_4e00, now);
        lan.advertise(cfg.advert.clone()).map_err(|e| e.to_string())?;
        wan.advertise(cfg.advert.clone()).map_err(|e| e.to_string())?;
        Ok(Agent {
            node: cfg.node,
            region,
            lan,
            wan,
            wan_joined: false,
            phi: PhiDetector::new(cfg.phi),
            sealer: Sealer::new(&cfg.key, cfg.cluster, cfg.node, incarnation),
            opener: Opener::new(&cfg.key, cfg.cluster),
            peers: BTreeMap::new(),
            heartbeat_ms: cfg.heartbeat_ms,
            next_beat: now,
            outbox: Vec::new(),
            traffic: Traffic::default(),
            stalled: 0,
            next_reconcile: now + RECONCILE_EVERY_MS,
            reconcile_from: 0,
            foreign_seen: false,
            next_readvertise: now + READVERTISE_EVERY_MS,
            now,
        })
    }

    /// This node's identity.
    pub fn identity(&self) -> &GossipId {
        self.lan.identity()
    }

    /// Tells the agent of `node`, reachable at `gossip_addr`, in `region`
    /// if known (from the config, the meta range's node records or a join
    /// answer): it is announced to in the pool that covers the link, until
    /// the cluster knows this node. Ignored for this node itself and past
    /// the directory's bound.
    pub fn learn(&mut self, node: u64, gossip_addr: &str, region: Option<&str>) {
        if node == self.node || node == 0 || crate::check_host_port(gossip_addr).is_err() {
            return;
        }
        if !self.peers.contains_key(&node) && self.peers.len() >= crate::MAX_NODES {
            return;
        }
        let p = self.peers.entry(node).or_default();
        p.gossip_addr = Some(gossip_addr.to_string());
        if let Some(r) = region.filter(|r| !r.is_empty()) {
            p.region = Some(r.to_string());
        }
        let foreign = p.region.as_deref().is_some_and(|r| r != self.region);
        if foreign {
            self.foreign_seen = true;
            self.lan.forget_seed(node);
            if !self.wan_joined || !self.wan.is_active() {
                let _ = self.wan.announce(node, gossip_addr);
                self.wan_joined = true;
            }
        } else if !self.lan.is_active() {
            let _ = self.lan.announce(node, gossip_addr);
        }
        self.collect();
    }

    /// A datagram arrived at `now` ms.
    pub fn receive(&mut self, now: u64, packet: &[u8]) {
        self.observe_clock(now);
        let opened = match self.opener.verify(packet) {
            Ok(o) => o,
            Err(reason) => {
                *self.traffic.dropped.entry(reason.name()).or_insert(0) += 1;
                return;
            }
        };
        let (sender, payload) = (opened.node, opened.payload);
        if payload.len() < PREFIX || payload.len() < PREFIX + payload[1] as usize || payload[1] as usize > MAX_LABEL {
            *self.traffic.dropped.entry("bad_prefix").or_insert(0) += 1;
            return;
        }
        let pool = match payload[0] {
            0 => Pool::Lan,
            1 => Pool::Wan,
            _ => {
                *self.traffic.dropped.entry("bad_prefix").or_insert(0) += 1;
                return;
            }
        };
        let rlen = payload[1] as usize;
        let Ok(region) = std::str::from_utf8(&payload[PREFIX..PREFIX + rlen]) else {
            *self.traffic.dropped.entry("bad_prefix").or_insert(0) += 1;
            return;
        };
        if pool == Pool::Lan && region != self.region {
            // A member of another region took this node for a neighbour
            // (regions are unknown in an initial cluster's config). The
            // datagram is authenticated: learn its region, so the WAN pool
            // joins through it and the LAN pool stops announcing to it.
            *self.traffic.dropped.entry("other_region").or_insert(0) += 1;
            if let Some(p) = self.peers.get_mut(&sender) {
                p.region = Some(region.to_string());
                self.foreign_seen = true;
                self.lan.forget_seed(sender);
                self.collect();
            }
            return;
        }
        if sender == self.node {
            *self.traffic.dropped.entry("refused").or_insert(0) += 1;
            return;
        }
        if !self.peers.contains_key(&sender) && self.peers.len() >= crate::MAX_NODES {
            *self.traffic.dropped.entry(DropReason::TooManySenders.name()).or_insert(0) += 1;
            return;
        }
        let foca = &payload[PREFIX + rlen..];
        let r = match pool {
            Pool::Lan => self.lan.handle_packet(now, foca),
            Pool::Wan => {
                self.wan_joined = true;
                self.wan.handle_packet(now, foca)
            }
        };
        if r.is_err() {
            *self.traffic.dropped.entry("refused").or_insert(0) += 1;
        } else {
            // Only an accepted datagram moves its sender's replay window.
            self.opener.record(&opened);
            self.traffic.received_packets += 1;
            self.traffic.received_bytes += packet.len() as u64;
            self.peers.entry(sender).or_default().region.get_or_insert_with(|| region.to_string());
            self.foreign_seen |= region != self.region;
            self.phi.heard(sender, now);
        }
        self.collect();
    }

    /// Time is now `now` ms: credits a stall of this node, sends a
    /// heartbeat when due, fires foca's due timers.
    pub fn tick(&mut self, now: u64) {
        self.observe_clock(now);
        if now >= self.next_beat {
            let _ = self.lan.beat();
            if self.wan_joined {
                let _ = self.wan.beat();
            }
            self.next_beat = now + self.heartbeat_ms;
        }
        self.lan.advance(now);
        if self.wan_joined {
            self.wan.advance(now);
        }
        if now >= self.next_reconcile {
            self.next_reconcile = now + RECONCILE_EVERY_MS;
            self.reconcile();
        }
        if now >= self.next_readvertise {
            self.next_readvertise = now + READVERTISE_EVERY_MS;
            let _ = self.lan.readvertise();
            if self.wan_joined {
                let _ = self.wan.readvertise();
            }
        }
        self.collect();
    }

    /// Announces this node to a few known peers that the pool covering
    /// them does not list: SWIM never merges two pools that formed apart
    /// (each is content with itself), and this is what merges them.
    fn reconcile(&mut self) {
        let lan: BTreeSet<u64> = self.lan.member_states().into_iter().map(|(id, _)| id.node).collect();
        let wan: BTreeSet<u64> = self.wan.member_states().into_iter().map(|(id, _)| id.node).collect();
        let missing: Vec<(u64, String, Pool)> = self
            .peers
            .range(self.reconcile_from..)
            .chain(self.peers.range(..self.reconcile_from))
            .filter_map(|(n, p)| {
                let addr = p.advert.as_ref().map(|a| a.gossip_addr.clone()).or_else(|| p.gossip_addr.clone())?;
                let foreign = p.region.as_deref().is_some_and(|r| r != self.region);
                let (pool, members) = if foreign { (Pool::Wan, &wan) } else { (Pool::Lan, &lan) };
                (!members.contains(n)).then_some((*n, addr, pool))
            })
            .take(RECONCILE_BATCH)
            .collect();
        for (n, addr, pool) in missing {
            self.reconcile_from = n.wrapping_add(1);
            let _ = match pool {
                Pool::Lan => self.lan.announce_once(n, &addr),
                Pool::Wan => {
                    self.wan_joined = true;
                    self.wan.announce_once(n, &addr)
                }
            };
        }
    }

    /// When [`Agent::tick`] next has something to do (ms).
    pub fn next_due(&self) -> u64 {
        let mut due = self.next_beat.min(self.next_reconcile).min(self.next_readvertise);
        for d in [self.lan.next_due(), if self.wan_joined { self.wan.next_due() } else { None }].into_iter().flatten() {
            due = due.min(d);
        }
        due
    }

    /// Datagrams to send: (gossip address, bytes), taken.
    pub fn take_outbox(&mut self) -> Vec<(String, Vec<u8>)> {
        self.take_outbox_to().into_iter().map(|(_, addr, d)| (addr, d)).collect()
    }

    /// Datagrams to send with the node each is for: (node, gossip
    /// address, bytes), taken.
    pub fn take_outbox_to(&mut self) -> Vec<(u64, String, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// Traffic so far.
    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    /// Total ms of this node's own stalls credited so far.
    pub fn stalled_ms(&self) -> u64 {
        self.stalled
    }

    /// Every peer this node knows of, by id, at `now` ms.
    pub fn peers(&self, now: u64) -> Vec<PeerView> {
        let lan: BTreeMap<u64, bool> = self.lan.member_states().into_iter().map(|(id, s)| (id.node, s)).collect();
        let wan: BTreeMap<u64, bool> = self.wan.member_states().into_iter().map(|(id, s)| (id.node, s)).collect();
        self.peers
            .iter()
            .map(|(&node, p)| {
                let covering = if p.region.as_deref().is_some_and(|r| r != self.region) { &wan } else { &lan };
                let phi = self.phi.peer(node, now);
                let foca_suspect = covering.get(&node).copied().unwrap_or(false);
                let state = match phi.map(|p| p.liveness) {
                    _ if p.down => Liveness::Dead,
                    Some(Liveness::Dead) => Liveness::Dead,
                    Some(Liveness::Suspect) => Liveness::Suspect,
                    _ if foca_suspect => Liveness::Suspect,
                    Some(l) => l,
                    None if covering.contains_key(&node) => Liveness::Alive,
                    None => Liveness::Unknown,
                };
                PeerView {
                    node,
                    incarnation: p.id.as_ref().map_or(0, |i| i.incarnation),
                    advert: p.advert.clone(),
                    state,
                    phi: phi.map_or(0.0, |p| p.phi),
                    last_heard_ms: phi.map(|p| p.last_heard_ms),
                }
            })
            .collect()
    }

    /// A gap since the previous call longer than the detector's bound is
    /// this node's own stall: credit it to the peers and to foca's timers.
    fn observe_clock(&mut self, now: u64) {
        self.now = self.now.max(now);
        let gap = self.phi.tick(now);
        if gap > 0 {
            self.stalled += gap;
            self.lan.credit_pause(gap);
            self.wan.credit_pause(gap);
            self.next_beat = self.next_beat.max(now);
        }
    }

    /// Seals what the pools want sent and folds their events into the
    /// peers.
    fn collect(&mut self) {
        for pool in [Pool::Lan, Pool::Wan] {
            let g = match pool {
                Pool::Lan => &mut self.lan,
                Pool::Wan => &mut self.wan,
            };
            let out = g.take_outbox();
            let events = g.take_events();
            for (to, data) in out {
                let addr = if to.gossip_addr.is_empty() {
                    match self.peers.get(&to.node).and_then(|p| p.gossip_addr.clone()) {
                        Some(a) => a,
                        None => continue,
                    }
                } else {
                    to.gossip_addr.clone()
                };
                let mut payload = Vec::with_capacity(PREFIX + self.region.len() + data.len());
                payload.push(pool as u8);
                payload.push(self.region.len() as u8);
                payload.extend_from_slice(self.region.as_bytes());
                payload.extend_from_slice(&data);
                if let Ok(packet) = self.sealer.seal(&payload) {
                    self.traffic.sent_packets += 1;
                    self.traffic.sent_bytes += packet.len() as u64;
                    self.outbox.push((to.node, addr, packet));
                }
            }
            for e in events {
                self.apply(pool, e);
            }
        }
        // A member of another region became known (through the LAN pool's
        // records): join the WAN pool through it.
        if !self.wan_joined && self.foreign_seen {
            let foreign: Option<(u64, String)> = self.peers.iter().find_map(|(n, p)| {
                let addr = p.advert.as_ref().map(|a| a.gossip_addr.clone()).or_else(|| p.gossip_addr.clone())?;
                p.region.as_deref().is_some_and(|r| r != self.region).then_some((*n, addr))
            });
            if let Some((n, addr)) = foreign {
                self.wan_joined = true;
                let _ = self.wan.announce(n, &addr);
                self.collect();
            }
        }
    }

    fn covers(&self, pool: Pool, node: u64) -> bool {
        let foreign = self.peers.get(&node).and_then(|p| p.region.as_deref()).is_some_and(|r| r != self.region);
        (pool == Pool::Wan) == foreign
    }

    fn apply(&mut self, pool: Pool, e: GossipEvent) {
        let node = match &e {
            GossipEvent::Up(id) | GossipEvent::Down(id) => id.node,
            GossipEvent::Renamed { new, .. } => new.node,
            GossipEvent::Record { node, .. } | GossipEvent::Beat { node, .. } => *node,
            GossipEvent::Active | GossipEvent::Idle | GossipEvent::Rejoined(_) => return,
        };
        if node == self.node || node == 0 {
            return;
        }
        if !self.peers.contains_key(&node) && self.peers.len() >= crate::MAX_NODES {
            return;
        }
        let covers = {
            // The region may arrive with this very event.
            let region = match &e {
                GossipEvent::Up(id) | GossipEvent::Down(id) | GossipEvent::Renamed { new: id, .. } => Some(id.region.clone()),
                GossipEvent::Record { advert, .. } => Some(advert.labels.region.clone()),
                _ => None,
            };
            let p = self.peers.entry(node).or_default();
            if let Some(r) = region.filter(|r| !r.is_empty()) {
                self.foreign_seen |= r != self.region;
                p.region = Some(r);
            }
            self.covers(pool, node)
        };
        let now = self.now;
        let p = self.peers.get_mut(&node).expect("inserted above");
        // Identities come from the pool covering the link only (each pool
        // renews its own after a false "down"): an event about an older
        // one is stale. Records and heartbeats are stale only when they
        // come from an earlier start of the node.
        let current = |p: &Peer, inc: u64| p.id.as_ref().is_none_or(|id| inc >= id.incarnation);
        let start = |inc: u64| inc / RENEWALS_PER_START;
        let this_start = |p: &Peer, inc: u64| p.id.as_ref().is_none_or(|id| start(inc) >= start(id.incarnation));
        match e {
            GossipEvent::Up(id) | GossipEvent::Renamed { new: id, .. } if covers && current(p, id.incarnation) => {
                // Back from the dead, or restarted: the silence before is
                // no interval of its rhythm; its history starts afresh.
                let restarted = p.id.as_ref().is_some_and(|old| start(id.incarnation) > start(old.incarnation));
                if restarted || p.down {
                    self.phi.remove(node);
                }
                p.down = false;
                p.id = Some(id);
            }
            GossipEvent::Down(id) if covers && current(p, id.incarnation) => p.down = true,
            GossipEvent::Record { incarnation, advert, .. } if this_start(p, incarnation) => p.advert = Some(advert),
            GossipEvent::Beat { incarnation, .. } if this_start(p, incarnation) => self.phi.heard(node, now),
            _ => {}
        }
    }
}

/// Nodes of `peers` in `state`.
pub fn in_state(peers: &[PeerView], state: Liveness) -> BTreeSet<u64> {
    peers.iter().filter(|p| p.state == state).map(|p| p.node).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use meridian_codes::seeded::SplitMix64;

    use super::*;
    use crate::{Labels, NodeRole};

    const KEY: &[u8] = b"agent test cluster key, 32 bytes or more";

    fn advert(i: u64, region: &str) -> Advert {
        Advert {
            peer_addr: format!("n{i}:2380"),
            client_addr: format!("n{i}:2379"),
            http_addr: format!("n{i}:8080"),
            gossip_addr: format!("n{i}:7946"),
            labels: Labels { region: region.into(), zone: format!("{region}-a"), host: format!("h{i}") },
            role: NodeRole::Data,
        }
    }

    fn agent(i: u64, start: u64, region: &str, n: u32, seed: u64, now: u64) -> Agent {
        let cfg = AgentConfig {
            node: i,
            start,
            advert: advert(i, region),
            cluster: 9,
            key: KEY.to_vec(),
            phi: PhiConfig::default(),
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            cluster_size: n,
            seed: seed ^ (i << 8) ^ start,
        };
        Agent::new(cfg, now).unwrap()
    }

    /// A virtual network: one-way delay 1-20 ms within a region and
    /// `wan_ms` ± 10 across, loss per mille, partitions, crashes, pauses.
    struct Net {
        agents: BTreeMap<u64, Agent>,
        regions: BTreeMap<u64, String>,
        crashed: BTreeSet<u64>,
        /// node → paused until (ms): it processes nothing, packets queue.
        paused: BTreeMap<u64, u64>,
        /// Packets for a paused node are lost instead (its socket buffer
        /// overflowed).
        pause_loses: bool,
        minority: BTreeSet<u64>,
        in_flight: BTreeMap<(u64, u64), (u64, Vec<u8>)>,
        seq: u64,
        rng: SplitMix64,
        loss: u64,
        wan_ms: u64,
        now: u64,
        /// (observer, peer) pairs ever seen dead.
        ever_dead: BTreeSet<(u64, u64)>,
    }

    fn node_of(addr: &str) -> u64 {
        addr.trim_start_matches('n').split(':').next().unwrap().parse().unwrap()
    }

    impl Net {
        fn new(layout: &[(u64, &str)], seed: u64, loss: u64) -> Net {
            let n = layout.len() as u32;
            let mut net = Net {
                agents: BTreeMap::new(),
                regions: layout.iter().map(|(i, r)| (*i, r.to_string())).collect(),
                crashed: BTreeSet::new(),
                paused: BTreeMap::new(),
                pause_loses: false,
                minority: BTreeSet::new(),
                in_flight: BTreeMap::new(),
                seq: 0,
                rng: SplitMix64::new(seed),
                loss,
                wan_ms: 75,
                now: 0,
                ever_dead: BTreeSet::new(),
            };
            for (i, r) in layout {
                let mut a = agent(*i, 1, r, n, seed, 0);
                // Like an initial cluster: every other member's gossip
                // address, regions unknown.
                for (j, _) in layout {
                    a.learn(*j, &format!("n{j}:7946"), None);
                }
                net.agents.insert(*i, a);
            }
            net.flush();
            net
        }

        fn flush(&mut self) {
            let ids: Vec<u64> = self.agents.keys().copied().collect();
            for i in ids {
                let out = self.agents.get_mut(&i).unwrap().take_outbox();
                for (addr, data) in out {
                    let to = node_of(&addr);
                    let cut = self.minority.contains(&i) != self.minority.contains(&to);
                    if cut || self.rng.below(1000) < self.loss {
                        continue;
                    }
                    let delay =
                        if self.regions[&i] == self.regions[&to] { 1 + self.rng.below(20) } else { self.wan_ms - 10 + self.rng.below(20) };
                    self.in_flight.insert((self.now + delay, self.seq), (to, data));
                    self.seq += 1;
                }
            }
        }

        fn run(&mut self, until: u64) {
            while self.now < until {
                self.now += 10;
                let now = self.now;
                let mut held = Vec::new();
                while let Some(e) = self.in_flight.first_entry() {
                    if e.key().0 > now {
                        break;
                    }
                    let ((at, seq), (to, data)) = e.remove_entry();
                    if self.crashed.contains(&to) {
                        continue;
                    }
                    if self.paused.get(&to).is_some_and(|until| *until > now) {
                        if !self.pause_loses {
                            held.push(((at, seq), (to, data)));
                        }
                        continue;
                    }
                    if let Some(a) = self.agents.get_mut(&to) {
                        a.receive(now, &data);
                    }
                }
                for ((_, seq), v) in held {
                    // Still queued in its socket: delivered after the pause.
                    self.in_flight.insert((self.paused[&v.0], seq), v);
                }
                for (i, a) in self.agents.iter_mut() {
                    if self.crashed.contains(i) || self.paused.get(i).is_some_and(|u| *u > now) {
                        continue;
                    }
                    a.tick(now);
                    if now.is_multiple_of(100) {
                        for p in a.peers(now) {
                            if p.state == Liveness::Dead {
                                self.ever_dead.insert((*i, p.node));
                            }
                        }
                    }
                }
                self.flush();
            }
        }

        fn states(&self, i: u64) -> HashMap<u64, Liveness> {
            self.agents[&i].peers(self.now).into_iter().map(|p| (p.node, p.state)).collect()
        }

        fn live(&self) -> Vec<u64> {
            self.agents.keys().copied().filter(|i| !self.crashed.contains(i)).collect()
        }

        fn all_alive(&self, i: u64) -> bool {
            let s = self.states(i);
            self.live().iter().all(|j| *j == i || s.get(j) == Some(&Liveness::Alive))
        }

        /// Runs until every live node sees every other alive; the time taken.
        fn until_converged(&mut self, limit: u64) -> Option<u64> {
            let start = self.now;
            while self.now < start + limit {
                self.run(self.now + 100);
                if self.live().iter().all(|i| self.all_alive(*i)) {
                    return Some(self.now - start);
                }
            }
            None
        }

        /// Runs until every node of `1..=n` holds the record of every other.
        fn until_records(&mut self, n: u64, limit: u64) -> bool {
            let start = self.now;
            while self.now < start + limit {
                if (1..=n).all(|i| self.agents[&i].peers(self.now).iter().filter(|p| p.advert.is_some()).count() as u64 == n - 1) {
                    return true;
                }
                self.run(self.now + 100);
            }
            false
        }

        /// Runs until every live node sees `node` dead; the time taken.
        fn until_dead(&mut self, node: u64, limit: u64) -> Option<u64> {
            let start = self.now;
            while self.now < start + limit {
                self.run(self.now + 100);
                if self.live().iter().all(|i| self.states(*i).get(&node) == Some(&Liveness::Dead)) {
                    return Some(self.now - start);
                }
            }
            None
        }
    }

    /// Seeds `base..base + n`: `n` by default, `MERIDIAN_GOSSIP_SEEDS` when
    /// set (`make sim-long`), from `MERIDIAN_SIM_BASE_SEED` (0).
    fn seeds(n: u64) -> std::ops::Range<u64> {
        let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
        let base = env("MERIDIAN_SIM_BASE_SEED").unwrap_or(0);
        base..base + env("MERIDIAN_GOSSIP_SEEDS").unwrap_or(n).clamp(1, 100_000)
    }

    fn one_region(n: u64) -> Vec<(u64, &'static str)> {
        (1..=n).map(|i| (i, "eu")).collect()
    }

    #[test]
    fn members_converge_with_records_a_crash_is_dead_everywhere_and_a_restart_comes_back() {
        for seed in seeds(10) {
            let mut net = Net::new(&one_region(5), seed, 20);
            assert!(net.until_converged(15_000).is_some(), "seed {seed}: no convergence");
            // Records may miss a member through loss until the next
            // re-advertisement.
            assert!(net.until_records(5, 2 * READVERTISE_EVERY_MS), "seed {seed}: records missing");
            for i in 1..=5u64 {
                for p in net.agents[&i].peers(net.now) {
                    assert_eq!(p.advert.as_ref(), Some(&advert(p.node, "eu")), "seed {seed}: node {i} lacks {}'s record", p.node);
                }
            }
            net.run(net.now + 20_000);
            assert!(net.ever_dead.is_empty(), "seed {seed}: a live node was declared dead at 2 % loss: {:?}", net.ever_dead);
            net.crashed.insert(3);
            let took = net.until_dead(3, 30_000);
            assert!(
                took.is_some(),
                "seed {seed}: node 3 not dead everywhere: {:?}",
                net.live().iter().map(|i| net.states(*i)[&3]).collect::<Vec<_>>()
            );
            net.crashed.remove(&3);
            let mut restarted = agent(3, 2, "eu", 5, seed, net.now);
            restarted.learn(1, "n1:7946", None);
            net.agents.insert(3, restarted);
            net.flush();
            assert!(net.until_converged(20_000).is_some(), "seed {seed}: node 3 did not come back");
            for i in [1, 2, 4, 5] {
                let p = net.agents[&i].peers(net.now).into_iter().find(|p| p.node == 3).unwrap();
                assert_eq!(p.incarnation, incarnation_of_start(2), "seed {seed}: node {i} knows node 3's new incarnation");
            }
        }
    }

    #[test]
    fn a_partitioned_minority_is_suspected_then_alive_after_the_heal() {
        for seed in seeds(10) {
            let mut net = Net::new(&one_region(5), seed, 10);
            assert!(net.until_converged(15_000).is_some());
            net.minority = BTreeSet::from([4, 5]);
            net.run(net.now + 30_000);
            for i in [1, 2, 3] {
                let s = net.states(i);
                assert!(s[&4] != Liveness::Alive && s[&5] != Liveness::Alive, "seed {seed}: node {i} still sees the minority alive");
            }
            net.minority.clear();
            // foca's LAN settings announce to down members every 65 s.
            assert!(net.until_converged(150_000).is_some(), "seed {seed}: no merge after the heal");
        }
    }

    #[test]
    fn a_pause_shorter_than_the_acceptable_pause_convicts_nobody() {
        for seed in seeds(10) {
            let mut net = Net::new(&one_region(3), seed, 0);
            assert!(net.until_converged(15_000).is_some());
            net.run(net.now + 10_000);
            net.paused.insert(2, net.now + 2_500);
            net.run(net.now + 20_000);
            assert!(net.ever_dead.is_empty(), "seed {seed}: a pause convicted {:?}", net.ever_dead);
            assert!(net.agents[&2].stalled_ms() >= 2_000, "seed {seed}: the stall was not seen");
            assert!(net.live().iter().all(|i| net.all_alive(*i)));
        }
    }

    #[test]
    fn a_node_paused_past_the_acceptable_pause_blames_none_of_its_peers() {
        // 5 s: longer than the detector's acceptable pause (3 s), and what
        // arrived meanwhile is lost (its socket buffer overflowed), so
        // without the stall credit its peers' silence would make them
        // suspect in its eyes. (The others may well suspect it: it was
        // silent.)
        for seed in seeds(10) {
            let mut net = Net::new(&one_region(3), seed, 0);
            net.pause_loses = true;
            assert!(net.until_converged(15_000).is_some());
            net.run(net.now + 10_000);
            let resume = net.now + 5_000;
            net.paused.insert(2, resume);
            net.run(resume);
            let mut seen = Vec::new();
            while net.now < resume + 15_000 {
                // Every step at first: the view right after the node's
                // first tick, before its peers' next datagrams arrive, is
                // the one the stall credit protects.
                net.run(net.now + if net.now < resume + 500 { 10 } else { 100 });
                seen.extend(
                    net.agents[&2].peers(net.now).into_iter().filter(|p| p.state != Liveness::Alive).map(|p| (net.now, p.node, p.state)),
                );
            }
            assert!(seen.is_empty(), "seed {seed}: the paused node blamed its peers: {seen:?}");
            assert!(net.agents[&2].stalled_ms() >= 5_000, "seed {seed}");
        }
    }

    #[test]
    fn regions_gossip_over_the_wan_pool_and_see_each_other() {
        for seed in seeds(5) {
            let layout = [(1, "eu"), (2, "eu"), (3, "eu"), (4, "us"), (5, "us"), (6, "us")];
            let mut net = Net::new(&layout, seed, 5);
            assert!(net.until_converged(60_000).is_some(), "seed {seed}: regions did not converge");
            assert!(net.until_records(6, 2 * READVERTISE_EVERY_MS), "seed {seed}: records missing");
            for i in 1..=6u64 {
                assert!(net.agents[&i].wan_joined, "seed {seed}: node {i} is not in the WAN pool");
                assert_eq!(
                    net.agents[&i].peers(net.now).iter().filter(|p| p.advert.is_some()).count(),
                    5,
                    "seed {seed}: node {i}'s records"
                );
            }
            net.crashed.insert(2);
            let took = net.until_dead(2, 60_000);
            assert!(took.is_some(), "seed {seed}: a crash in eu not seen from us");
            net.run(net.now + 10_000);
            assert!(!net.ever_dead.iter().any(|(_, p)| *p != 2), "seed {seed}: {:?}", net.ever_dead);
        }
    }

    #[test]
    fn bad_datagrams_are_dropped_by_reason_and_change_nothing() {
        let mut net = Net::new(&one_region(3), 3, 0);
        assert!(net.until_converged(15_000).is_some());
        let now = net.now;
        let before: Vec<(u64, u64, Liveness)> = net.agents[&1].peers(now).iter().map(|p| (p.node, p.incarnation, p.state)).collect();
        let mut other_cluster = Sealer::new(KEY, 10, 2, incarnation_of_start(1));
        let mut forged = Sealer::new(b"not the key", 9, 2, incarnation_of_start(1));
        let mut stale = Sealer::new(KEY, 9, 2, 0);
        let mut well_signed = Sealer::new(KEY, 9, 7, incarnation_of_start(5));
        // A real datagram of node 2 to node 1 (its next heartbeat round).
        let n2 = net.agents.get_mut(&2).unwrap();
        n2.tick(now + 1000);
        let real = n2.take_outbox().into_iter().find(|(to, _)| to == "n1:7946").expect("node 2 gossips to node 1").1;
        let a = net.agents.get_mut(&1).unwrap();
        a.receive(now, b"");
        a.receive(now, &[0xff; 3000]);
        a.receive(now, b"MGS1 truncated");
        a.receive(now, &other_cluster.seal(b"\x00\x02eu").unwrap());
        a.receive(now, &forged.seal(b"\x00\x02eu").unwrap());
        a.receive(now, &stale.seal(b"\x00\x02eu").unwrap());
        a.receive(now, &well_signed.seal(b"\x07\x02eu").unwrap());
        a.receive(now, &well_signed.seal(b"\x00\x02us garbage").unwrap());
        a.receive(now, &well_signed.seal(b"\x00\x02eu not foca").unwrap());
        // A refused datagram moves no replay window: node 7's next real
        // sequence number is not taken from it, and refusing it again is
        // refusing, not a replay.
        let refused = well_signed.seal(b"\x00\x02eu").unwrap();
        a.receive(now, &refused);
        a.receive(now, &refused);
        let received = a.traffic().received_packets;
        a.receive(now, &real);
        assert_eq!(a.traffic().received_packets, received + 1, "node 2's real datagram accepted: {:?}", a.traffic().dropped);
        a.receive(now, &real);
        let d = &a.traffic().dropped;
        for (reason, n) in [
            ("truncated", 2),
            ("oversized", 1),
            ("other_cluster", 1),
            ("forged", 1),
            ("stale_incarnation", 1),
            ("bad_prefix", 1),
            ("other_region", 1),
            ("replayed", 1),
        ] {
            assert_eq!(d.get(reason).copied(), Some(n), "{reason}: {d:?}");
        }
        assert!(d.get("refused").copied().unwrap_or(0) >= 3, "{d:?}");
        let after: Vec<(u64, u64, Liveness)> = a.peers(now).iter().map(|p| (p.node, p.incarnation, p.state)).collect();
        assert_eq!(before, after);
        // And node 2 (whose id the stale datagram claimed) is still heard.
        net.run(net.now + 5_000);
        assert!(net.all_alive(1), "{:?}", net.states(1));
    }
}
