//! In-memory network for deterministic simulation.
//!
//! All randomness comes from one seeded RNG and all time from the harness's
//! logical clock, so a run is a pure function of its seed. Faults can be
//! changed at any time: drop probability, delay range (which reorders),
//! one-way and two-way partitions between node sets, crashed nodes, heal.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::envelope::RaftEnvelope;
use crate::transport::{Feedback, SnapshotStream, Transport};

/// Messages in flight beyond this are dropped (and reported unreachable).
pub const MAX_IN_FLIGHT: usize = 200_000;
/// Feedback entries kept per node between drains.
const MAX_FEEDBACK: usize = 10_000;

/// The faults the simulated network applies now.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// Probability that any message is silently lost.
    pub drop_prob: f64,
    /// Each message is delayed a uniform number of ticks in this range.
    pub min_delay: u64,
    /// Upper end of the delay range, in ticks.
    pub max_delay: u64,
    /// Directed pairs (from, to) that cannot talk.
    pub blocked: BTreeSet<(u64, u64)>,
    /// Crashed nodes: nothing is delivered to or sent from them.
    pub down: BTreeSet<u64>,
    /// Latency of a link, in ticks added to every message on it (directed
    /// pairs): the geography of a multi-region cluster. Not a fault:
    /// `heal` keeps it.
    pub link_delay: BTreeMap<(u64, u64), u64>,
}

/// Messages counted by the simulated network since it was made.
#[derive(Debug, Default, Clone, Copy)]
pub struct NetStats {
    /// Handed to `send`.
    pub sent: u64,
    /// Delivered by `deliver_due`.
    pub delivered: u64,
    /// Lost: dropped at random, blocked, over the in-flight bound, or to or
    /// from a crashed node.
    pub dropped: u64,
}

struct InFlight {
    at: u64,
    seq: u64,
    env: RaftEnvelope,
}

impl PartialEq for InFlight {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for InFlight {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Inner {
    rng: ChaCha8Rng,
    now: u64,
    seq: u64,
    faults: Faults,
    queue: BinaryHeap<Reverse<InFlight>>,
    feedback: HashMap<u64, Vec<Feedback>>,
    stats: NetStats,
}

impl Inner {
    fn push_feedback(&mut self, node: u64, f: Feedback) {
        let v = self.feedback.entry(node).or_default();
        if v.len() < MAX_FEEDBACK && !v.contains(&f) {
            v.push(f);
        }
    }

    /// A delivery delay from `from` to `to`: drawn from the faults' range,
    /// plus the link's latency, in ticks.
    fn draw_delay(&mut self, from: u64, to: u64) -> u64 {
        let (lo, hi) = (self.faults.min_delay, self.faults.max_delay);
        let link = self.faults.link_delay.get(&(from, to)).copied().unwrap_or(0);
        link + if hi > lo { self.rng.gen_range(lo..=hi) } else { lo }
    }

    fn blocked(&self, from: u64, to: u64) -> bool {
        self.faults.down.contains(&from) || self.faults.down.contains(&to) || self.faults.blocked.contains(&(from, to))
    }

    fn reject(&mut self, env: &RaftEnvelope) {
        self.stats.dropped += 1;
        if env.is_snapshot_chunk() {
            // Its stream's MsgSnapshot, cut off with it, reports the loss.
            return;
        }
        let f = if env.is_snapshot() {
            Feedback::Snapshot { range_id: env.range_id, to_node: env.to_node, ok: false }
        } else {
            Feedback::Unreachable { range_id: env.range_id, to_node: env.to_node }
        };
        self.push_feedback(env.from_node, f);
    }
}

/// The shared network. Cheap to clone.
#[derive(Clone)]
pub struct MemNetwork {
    inner: Arc<Mutex<Inner>>,
}

impl MemNetwork {
    /// A clean network (no loss, one tick of delay) whose randomness comes
    /// from `seed` alone, so a run replays from it.
    pub fn new(seed: u64) -> Self {
        MemNetwork {
            inner: Arc::new(Mutex::new(Inner {
                rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_7477_6f72_6b00),
                now: 0,
                seq: 0,
                faults: Faults { min_delay: 1, max_delay: 1, ..Faults::default() },
                queue: BinaryHeap::new(),
                feedback: HashMap::new(),
                stats: NetStats::default(),
            })),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("mem network lock")
    }

    /// Node `node_id`'s [`Transport`] on this network.
    pub fn transport(&self, node_id: u64) -> MemTransport {
        MemTransport { node_id, net: self.clone() }
    }

    /// Loses each message with probability `p` (clamped to 0..=1).
    pub fn set_drop_prob(&self, p: f64) {
        self.lock().faults.drop_prob = p.clamp(0.0, 1.0);
    }

    /// Delays each message a uniform number of ticks in
    /// `min_ticks..=max_ticks` (at least one).
    pub fn set_delay(&self, min_ticks: u64, max_ticks: u64) {
        let mut g = self.lock();
        g.faults.min_delay = min_ticks.max(1);
        g.faults.max_delay = max_ticks.max(g.faults.min_delay);
    }

    /// Adds `ticks` of latency to every message between `a` and `b`, both
    /// ways (0: none). Kept by [`MemNetwork::heal`].
    pub fn set_link_delay(&self, a: u64, b: u64, ticks: u64) {
        let mut g = self.lock();
        for pair in [(a, b), (b, a)] {
            if ticks == 0 {
                g.faults.link_delay.remove(&pair);
            } else {
                g.faults.link_delay.insert(pair, ticks);
            }
        }
    }

    /// Two-way partition between the sets `a` and `b`.
    pub fn partition(&self, a: &[u64], b: &[u64]) {
        let mut g = self.lock();
        for &x in a {
            for &y in b {
                g.faults.blocked.insert((x, y));
                g.faults.blocked.insert((y, x));
            }
        }
    }

    /// Messages from `from` to `to` are lost; the reverse direction works.
    /// Cuts the direction `from` → `to` only.
    pub fn block_one_way(&self, from: u64, to: u64) {
        self.lock().faults.blocked.insert((from, to));
    }

    /// Removes every partition and restores drop/delay to a clean network.
    pub fn heal(&self) {
        let mut g = self.lock();
        g.faults.blocked.clear();
        g.faults.drop_prob = 0.0;
        g.faults.min_delay = 1;
        g.faults.max_delay = 1;
    }

    /// Marks a node crashed (its in-flight messages are lost) or back up.
    pub fn set_down(&self, node: u64, down: bool) {
        let mut g = self.lock();
        if down {
            g.faults.down.insert(node);
            // In-flight messages of a crashed node are lost; their senders
            // learn of it as they would from a broken connection.
            let q = std::mem::take(&mut g.queue);
            let (lost, kept): (Vec<_>, Vec<_>) = q.into_iter().partition(|Reverse(m)| m.env.to_node == node || m.env.from_node == node);
            g.queue = kept.into_iter().collect();
            for Reverse(m) in lost {
                g.reject(&m.env);
            }
        } else {
            g.faults.down.remove(&node);
        }
    }

    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        self.lock().faults.clone()
    }

    /// The counters so far.
    pub fn stats(&self) -> NetStats {
        self.lock().stats
    }

    /// Advances logical time and returns the messages due, in delivery
    /// order. Messages whose path was cut while in flight are lost.
    pub fn deliver_due(&self, now: u64) -> Vec<RaftEnvelope> {
        let mut g = self.lock();
        g.now = now;
        let mut out = Vec::new();
        while g.queue.peek().is_some_and(|Reverse(m)| m.at <= now) {
            let Reverse(m) = g.queue.pop().expect("peeked");
            if g.blocked(m.env.from_node, m.env.to_node) {
                g.reject(&m.env);
                continue;
            }
            g.stats.delivered += 1;
            if m.env.is_snapshot() {
                let f = Feedback::Snapshot { range_id: m.env.range_id, to_node: m.env.to_node, ok: true };
                g.push_feedback(m.env.from_node, f);
            }
            out.push(m.env);
        }
        out
    }
}

/// One node's handle on the [`MemNetwork`].
#[derive(Clone)]
pub struct MemTransport {
    node_id: u64,
    net: MemNetwork,
}

impl Transport for MemTransport {
    fn send(&self, to_node: u64, envelopes: Vec<RaftEnvelope>) {
        let mut g = self.net.lock();
        for mut env in envelopes {
            env.from_node = self.node_id;
            env.to_node = to_node;
            g.stats.sent += 1;
            if g.blocked(self.node_id, to_node) || g.queue.len() >= MAX_IN_FLIGHT {
                g.reject(&env);
                continue;
            }
            let p = g.faults.drop_prob;
            if p > 0.0 && g.rng.gen_bool(p) {
                g.stats.dropped += 1;
                if env.is_snapshot() {
                    g.push_feedback(self.node_id, Feedback::Snapshot { range_id: env.range_id, to_node, ok: false });
                }
                continue;
            }
            let at = g.now + g.draw_delay(self.node_id, to_node);
            g.seq += 1;
            let seq = g.seq;
            g.queue.push(Reverse(InFlight { at, seq, env }));
        }
    }

    /// Reads the whole stream at once (simulated snapshots are small) and
    /// puts its envelopes in flight with one delivery time, in order, as
    /// one QUIC stream would carry them. Random loss cuts the stream: the
    /// envelopes before the lost one arrive, none after it, and the sender
    /// is told the snapshot failed.
    fn send_snapshot(&self, to_node: u64, mut stream: Box<dyn SnapshotStream>) {
        let range_id = stream.range_id();
        let failed = Feedback::Snapshot { range_id, to_node, ok: false };
        let mut envs = Vec::new();
        loop {
            match stream.next_envelope() {
                Ok(Some(env)) => envs.push(env),
                Ok(None) => break,
                Err(_) => {
                    self.net.lock().push_feedback(self.node_id, failed);
                    return;
                }
            }
        }
        let mut g = self.net.lock();
        g.stats.sent += envs.len() as u64;
        if g.blocked(self.node_id, to_node) || g.queue.len() + envs.len() > MAX_IN_FLIGHT {
            g.stats.dropped += envs.len() as u64;
            g.push_feedback(self.node_id, failed);
            return;
        }
        let at = g.now + g.draw_delay(self.node_id, to_node);
        let p = g.faults.drop_prob;
        let total = envs.len();
        for (i, mut env) in envs.into_iter().enumerate() {
            if p > 0.0 && g.rng.gen_bool(p) {
                g.stats.dropped += (total - i) as u64;
                g.push_feedback(self.node_id, failed);
                return;
            }
            env.from_node = self.node_id;
            env.to_node = to_node;
            g.seq += 1;
            let seq = g.seq;
            g.queue.push(Reverse(InFlight { at, seq, env }));
        }
    }

    fn drain_feedback(&self, out: &mut Vec<Feedback>) {
        if let Some(v) = self.net.lock().feedback.remove(&self.node_id) {
            out.extend(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(range_id: u64) -> RaftEnvelope {
        RaftEnvelope { range_id, message: vec![0x08, 0x03], ..Default::default() }
    }

    #[test]
    fn partition_drops_and_reports_then_heals() {
        let net = MemNetwork::new(1);
        let t1 = net.transport(1);
        net.partition(&[1], &[2]);
        t1.send(2, vec![env(5)]);
        assert!(net.deliver_due(10).is_empty());
        let mut fb = Vec::new();
        t1.drain_feedback(&mut fb);
        assert_eq!(fb, vec![Feedback::Unreachable { range_id: 5, to_node: 2 }]);
        net.heal();
        t1.send(2, vec![env(5)]);
        let got = net.deliver_due(20);
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].from_node, got[0].to_node), (1, 2));
    }

    #[test]
    fn one_way_block_lets_the_other_direction_through() {
        let net = MemNetwork::new(1);
        net.block_one_way(1, 2);
        net.transport(1).send(2, vec![env(1)]);
        net.transport(2).send(1, vec![env(1)]);
        let got = net.deliver_due(5);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].to_node, 1);
    }

    #[test]
    fn same_seed_same_schedule() {
        let run = |seed| {
            let net = MemNetwork::new(seed);
            net.set_delay(1, 20);
            net.set_drop_prob(0.3);
            let t = net.transport(1);
            for i in 0..200 {
                t.send(2, vec![env(i)]);
            }
            net.deliver_due(100).iter().map(|e| e.range_id).collect::<Vec<_>>()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        let order = run(7);
        let mut sorted = order.clone();
        sorted.sort();
        assert_ne!(order, sorted, "random delays reorder messages");
        assert!(order.len() < 200, "some messages were dropped");
    }

    struct Stream(Vec<RaftEnvelope>);
    impl SnapshotStream for Stream {
        fn range_id(&self) -> u64 {
            9
        }
        fn next_envelope(&mut self) -> Result<Option<RaftEnvelope>, crate::TransportError> {
            Ok((!self.0.is_empty()).then(|| self.0.remove(0)))
        }
    }

    fn snapshot_stream(chunks: u64) -> Box<Stream> {
        let mut envs: Vec<RaftEnvelope> = (0..chunks)
            .map(|seq| RaftEnvelope {
                range_id: 9,
                chunk: Some(crate::SnapshotChunk { seq, last: seq + 1 == chunks, ..Default::default() }),
                ..Default::default()
            })
            .collect();
        let mut m = raft::prelude::Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
        envs.push(RaftEnvelope { range_id: 9, message: protobuf::Message::write_to_bytes(&m).unwrap(), ..Default::default() });
        Box::new(Stream(envs))
    }

    #[test]
    fn a_snapshot_stream_arrives_in_order_or_is_cut_and_reported() {
        let net = MemNetwork::new(3);
        net.set_delay(1, 30);
        let t = net.transport(1);
        t.send_snapshot(2, snapshot_stream(20));
        let got = net.deliver_due(100);
        let seqs: Vec<u64> = got.iter().filter_map(|e| e.chunk.as_ref().map(|c| c.seq)).collect();
        assert_eq!(seqs, (0..20).collect::<Vec<_>>(), "chunks in order despite random delays");
        assert!(got.last().unwrap().is_snapshot(), "the MsgSnapshot comes last");
        let mut fb = Vec::new();
        t.drain_feedback(&mut fb);
        assert_eq!(fb, vec![Feedback::Snapshot { range_id: 9, to_node: 2, ok: true }]);

        // With loss, some stream is cut: a prefix arrives, never the
        // MsgSnapshot, and the sender hears of the failure.
        net.set_drop_prob(0.2);
        let mut cut = 0;
        for _ in 0..20 {
            t.send_snapshot(2, snapshot_stream(20));
            let got = net.deliver_due(u64::MAX / 2);
            let mut fb = Vec::new();
            t.drain_feedback(&mut fb);
            if got.last().is_some_and(RaftEnvelope::is_snapshot) {
                assert_eq!(got.len(), 21);
                continue;
            }
            cut += 1;
            let seqs: Vec<u64> = got.iter().filter_map(|e| e.chunk.as_ref().map(|c| c.seq)).collect();
            assert_eq!(seqs, (0..got.len() as u64).collect::<Vec<_>>(), "a cut stream delivers a prefix");
            assert_eq!(fb, vec![Feedback::Snapshot { range_id: 9, to_node: 2, ok: false }]);
        }
        assert!(cut > 0, "at 20% loss per envelope, some of 20 streams of 21 are cut");
    }

    #[test]
    fn a_links_latency_delays_its_messages_only_and_outlives_heal() {
        let net = MemNetwork::new(1);
        net.set_link_delay(1, 3, 4);
        net.heal();
        net.transport(1).send(2, vec![env(1)]);
        net.transport(1).send(3, vec![env(2)]);
        net.transport(3).send(1, vec![env(3)]);
        assert_eq!(net.deliver_due(1).len(), 1, "only the unshaped link's message at tick 1");
        assert!(net.deliver_due(4).is_empty());
        assert_eq!(net.deliver_due(5).len(), 2, "both ways of the 4-tick link at 1 + 4");
        net.set_link_delay(1, 3, 0);
        net.transport(1).send(3, vec![env(4)]);
        assert_eq!(net.deliver_due(6).len(), 1);
    }

    #[test]
    fn messages_cut_in_flight_are_lost() {
        let net = MemNetwork::new(1);
        net.set_delay(5, 5);
        net.transport(1).send(2, vec![env(1)]);
        net.set_down(2, true);
        net.set_down(2, false);
        assert!(net.deliver_due(10).is_empty());
    }
}
