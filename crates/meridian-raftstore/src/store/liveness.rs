//! Logical time and liveness: `tick` (the store's only clock) drives
//! every range's raft timers and the per-range timeouts (stranded and
//! forwarded proposals, read retries, probes of a silent range), wakes
//! quiesced followers whose leader's node is gone, and pings the nodes
//! this store knows; `live_peers` reports which nodes were heard from
//! recently (`last_heard`, kept by `step`: raft traffic and pings only).
//!
//! When a quiet follower's leader is gone:
//!
//! | the store is | the follower wakes when its leader's node is |
//! |---|---|
//! | fed by the membership gossip (`set_liveness_feed`, renewed within two election timeouts) | down (suspect or dead) in the feed, or silent for [`FED_SILENCE`] ping periods: a backstop for a node whose gossip runs while its store hangs, and for nodes gossip does not know |
//! | not fed (gossip off or stalled; the simulation), or fed lately | silent for two election timeouts (or, within [`FED_SILENCE`] ping periods of the last fresh feed, for that long) |
//!
//! Pings go to every known node every `node_ping_ticks`, or every
//! [`FED_PING_ELECTIONS`] election timeouts while the store is fed: the
//! gossip decides the fast wake-ups, the rare pings keep the backstop and
//! `live_peers` honest without it.

use meridian_transport::RaftEnvelope;
use tracing::{debug, info};

use std::collections::BTreeSet;

use super::{Completion, LivenessFeed, Store};
use crate::error::RaftstoreError;

/// While fed, the store pings every node once per this many election
/// timeouts.
pub const FED_PING_ELECTIONS: u64 = 2;
/// While fed (or fed lately), a leader's node silent for this many ping
/// periods is gone whatever the feed says.
pub const FED_SILENCE: u64 = 3;

impl Store {
    /// What the membership gossip says of other nodes now: the nodes it
    /// holds suspect or dead. See the module docs for what changes while
    /// the feed is fresh (renewed within two election timeouts).
    pub fn set_liveness_feed(&mut self, down: BTreeSet<u64>) {
        self.liveness_feed = Some(LivenessFeed { down, at: self.now_tick });
    }

    /// The liveness feed, while fresh.
    fn fresh_feed(&self) -> Option<&LivenessFeed> {
        let window = 2 * self.cfg.election_ticks as u64;
        self.liveness_feed.as_ref().filter(|f| self.now_tick.saturating_sub(f.at) <= window)
    }

    /// Ticks between pings while fed.
    fn fed_ping_ticks(&self) -> u64 {
        FED_PING_ELECTIONS * self.cfg.election_ticks as u64
    }

    /// Whether a feed was fresh within the backstop window: silences as
    /// long as the fed ping period are still normal.
    fn fed_lately(&self) -> bool {
        let window = 2 * self.cfg.election_ticks as u64 + FED_SILENCE * self.fed_ping_ticks();
        self.liveness_feed.as_ref().is_some_and(|f| self.now_tick.saturating_sub(f.at) <= window)
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        self.run_split_campaigns();
        let now = self.now_tick;
        let dead_after = 2 * self.cfg.election_ticks as u64;
        let orphan_ticks = 4 * self.cfg.election_ticks as u64;
        let forward_timeout = self.forward_timeout_ticks();
        let mut timeouts = Vec::new();
        let mut orphaned = Vec::new();
        let node_id = self.cfg.node_id;
        let mut probes = Vec::new();
        let feed_down = self.fresh_feed().map(|f| f.down.clone());
        // How long a leader's node may stay silent before it counts as gone.
        let silence = if self.fed_lately() { FED_SILENCE * self.fed_ping_ticks() } else { dead_after };
        // The replicas ticked or woken: the next poll round visits them.
        let mut ticked = Vec::new();
        for p in self.peers.values_mut_unmarked() {
            if p.dormant_at.is_some() {
                continue;
            }
            if p.witness && p.is_leader() {
                // A witness leader never rests: it hands leadership over.
                p.wake();
                if p.witness_handoff() {
                    self.metrics.witness_handoffs += 1;
                    info!(node = node_id, range = p.range_id(), to = ?p.raft.raft.lead_transferee, "witness won an election; handing leadership to a full voter");
                }
            }
            if let Some(msgs) = p.silence_probes(node_id, dead_after) {
                probes.push((p.range_id(), msgs));
            }
            if p.quiesced {
                // A quiet follower wakes when its leader's node goes silent,
                // or when it holds requests (proposals stranded by a lost
                // leadership must still be answered; see `Peer::settle_orphans`).
                let leader = p.raft.raft.leader_id;
                let heard = self.last_heard.get(&leader).copied().unwrap_or(0);
                let leader_gone = feed_down.as_ref().is_some_and(|down| down.contains(&leader)) || now.saturating_sub(heard) > silence;
                if leader != self.cfg.node_id && leader_gone {
                    debug!(range = p.range_id(), leader, "leader's node down or silent; waking");
                    p.wake();
                } else if p.pending() > 0 {
                    p.wake();
                } else {
                    continue;
                }
            }
            ticked.push(p.range_id());
            p.tick_raft(self.cfg.quiesce_after_ticks);
            p.settle_orphans(now, orphan_ticks, &mut orphaned);
            self.metrics.forwarded_unknown += p.expire_forwarded(now, forward_timeout, &mut orphaned);
            p.retry_reads(now, self.cfg.read_retry_ticks, self.cfg.read_max_retries, self.incarnation, &mut timeouts);
        }
        for range_id in ticked {
            self.peers.mark(range_id);
        }
        self.completions.extend(orphaned);
        self.expire_incoming();
        self.unpin_old_snapshots();
        for (range_id, msgs) in probes {
            self.queue_messages(range_id, msgs);
        }
        for (range_id, id) in timeouts {
            self.metrics.read_timeouts += 1;
            self.completions.push(Completion { id, range_id, result: Err(RaftstoreError::ReadTimeout { range_id }) });
        }
        let ping_every = if feed_down.is_some() { self.fed_ping_ticks() } else { self.cfg.node_ping_ticks };
        if now.is_multiple_of(ping_every.max(1)) {
            for &n in &self.known_nodes {
                self.outbox.entry(n).or_default().push(RaftEnvelope { to_node: n, from_node: self.cfg.node_id, ..Default::default() });
            }
        }
    }

    /// Nodes this store heard from (any message, node pings included)
    /// within two election timeouts, or two ping periods while fed. A
    /// quiet range's progress does not show a dead follower; this does.
    /// Gossip's opinion is not used: membership changes rely on this.
    pub(super) fn live_peers(&self) -> Vec<u64> {
        let window = if self.fed_lately() { 2 * self.fed_ping_ticks() } else { 2 * self.cfg.election_ticks as u64 };
        let mut live: Vec<u64> =
            self.last_heard.iter().filter(|(_, t)| self.now_tick.saturating_sub(**t) <= window).map(|(n, _)| *n).collect();
        live.sort_unstable();
        live
    }
}
