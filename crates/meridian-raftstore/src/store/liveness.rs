//! Logical time and liveness: `tick` (the store's only clock) drives
//! every range's raft timers and the per-range timeouts (stranded and
//! forwarded proposals, read retries, probes of a silent range), wakes
//! quiesced followers whose leader's node went silent, and pings the
//! nodes this store knows — unless the membership gossip feeds it node
//! liveness (`set_liveness_feed`), which then decides both; `live_peers`
//! reports which nodes were heard from recently (`last_heard`, kept by
//! `step`, and the feed's alive nodes).

use meridian_transport::RaftEnvelope;
use tracing::debug;

use std::collections::BTreeSet;

use super::{Completion, LivenessFeed, Store};
use crate::error::RaftstoreError;

impl Store {
    /// What the membership gossip says of other nodes now: `down` (suspect
    /// or dead) and `alive`. While the feed is renewed (at least every two
    /// election timeouts), a quiet follower wakes when its leader's node is
    /// down instead of when no message arrived from it, and the store sends
    /// no pings of its own; a stale feed is ignored and the pings resume.
    pub fn set_liveness_feed(&mut self, down: BTreeSet<u64>, alive: BTreeSet<u64>) {
        self.liveness_feed = Some(LivenessFeed { down, alive, at: self.now_tick });
    }

    /// The liveness feed, while fresh.
    fn fresh_feed(&self) -> Option<&LivenessFeed> {
        let window = 2 * self.cfg.election_ticks as u64;
        self.liveness_feed.as_ref().filter(|f| self.now_tick.saturating_sub(f.at) <= window)
    }

    /// Advances logical time by one tick.
    pub fn tick(&mut self) {
        self.now_tick += 1;
        let now = self.now_tick;
        let dead_after = 2 * self.cfg.election_ticks as u64;
        let orphan_ticks = 4 * self.cfg.election_ticks as u64;
        let forward_timeout = self.forward_timeout_ticks();
        let mut timeouts = Vec::new();
        let mut orphaned = Vec::new();
        let node_id = self.cfg.node_id;
        let mut probes = Vec::new();
        let feed_down = self.fresh_feed().map(|f| f.down.clone());
        for p in self.peers.values_mut() {
            if p.dormant_at.is_some() {
                continue;
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
                let leader_gone = match &feed_down {
                    Some(down) => down.contains(&leader),
                    None => now.saturating_sub(heard) > dead_after,
                };
                if leader != self.cfg.node_id && leader_gone {
                    debug!(range = p.range_id(), leader, "leader's node down or silent; waking");
                    p.wake();
                } else if p.pending() > 0 {
                    p.wake();
                } else {
                    continue;
                }
            }
            p.tick_raft(self.cfg.quiesce_after_ticks);
            p.settle_orphans(now, orphan_ticks, &mut orphaned);
            self.metrics.forwarded_unknown += p.expire_forwarded(now, forward_timeout, &mut orphaned);
            p.retry_reads(now, self.cfg.read_retry_ticks, self.cfg.read_max_retries, self.incarnation, &mut timeouts);
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
        if feed_down.is_none() && now.is_multiple_of(self.cfg.node_ping_ticks.max(1)) {
            for &n in &self.known_nodes {
                self.outbox.entry(n).or_default().push(RaftEnvelope { to_node: n, from_node: self.cfg.node_id, ..Default::default() });
            }
        }
    }

    /// Nodes this store heard from (any message, node pings included)
    /// within two election timeouts, and the nodes a fresh liveness feed
    /// says are alive. A quiet range's progress does not show a dead
    /// follower; this does.
    pub(super) fn live_peers(&self) -> Vec<u64> {
        let window = 2 * self.cfg.election_ticks as u64;
        let mut live: BTreeSet<u64> =
            self.last_heard.iter().filter(|(_, t)| self.now_tick.saturating_sub(**t) <= window).map(|(n, _)| *n).collect();
        if let Some(f) = self.fresh_feed() {
            live.extend(f.alive.iter().copied());
        }
        live.into_iter().collect()
    }
}
