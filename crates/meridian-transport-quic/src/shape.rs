//! WAN shaping for tests and `meridian dev --regions`: a link to a peer
//! can delay each batch by a one-way latency with jitter and drop some.
//!
//! Kernel netem is not available on the machines Meridian is developed on,
//! so a multi-region cluster on loopback gets its latency here, in the
//! sending peer task: every batch is stamped with the time it may leave,
//! held in a bounded delay line, and written when that time comes. Order
//! is kept (a batch never leaves before the one queued ahead of it), as on
//! a real ordered stream; loss drops whole batches silently, as packets
//! are lost, and raft's retransmission covers them. Off unless configured
//! (`LinkShape::NONE`, the default, adds nothing and costs nothing).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use meridian_transport::RaftEnvelope;

/// How one direction of a link is shaped.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkShape {
    /// Added to every batch (half the round trip of the link).
    pub one_way: Duration,
    /// Each batch's delay varies uniformly by up to ± this much.
    pub jitter: Duration,
    /// Fraction of batches dropped, 0.0 ..= 1.0.
    pub loss: f64,
}

impl LinkShape {
    /// An unshaped link.
    pub const NONE: LinkShape = LinkShape { one_way: Duration::ZERO, jitter: Duration::ZERO, loss: 0.0 };

    /// True if the link adds nothing.
    pub fn is_none(&self) -> bool {
        self.one_way.is_zero() && self.jitter.is_zero() && self.loss <= 0.0
    }
}

/// Batches waiting for their time to leave, in order.
pub(crate) struct DelayLine {
    held: VecDeque<(Instant, Vec<RaftEnvelope>)>,
    capacity: usize,
    /// When the last held batch leaves: no later batch leaves before it.
    last_due: Option<Instant>,
    rng: SplitMix64,
}

impl DelayLine {
    /// A line holding at most `capacity` batches; `seed` makes jitter and
    /// loss differ between links.
    pub(crate) fn new(capacity: usize, seed: u64) -> Self {
        DelayLine { held: VecDeque::new(), capacity: capacity.max(1), last_due: None, rng: SplitMix64(seed) }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.held.len() >= self.capacity
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// When the head batch may leave.
    pub(crate) fn next_due(&self) -> Option<Instant> {
        self.held.front().map(|(due, _)| *due)
    }

    /// Stamps `batch` and holds it; `false` if `shape`'s loss dropped it.
    pub(crate) fn push(&mut self, now: Instant, shape: &LinkShape, batch: Vec<RaftEnvelope>) -> bool {
        if shape.loss > 0.0 && self.rng.unit() < shape.loss {
            return false;
        }
        let mut delay = shape.one_way;
        if !shape.jitter.is_zero() {
            // Uniform in [-jitter, +jitter], never below zero in total.
            let span = shape.jitter.as_nanos() as f64;
            let offset = (self.rng.unit() * 2.0 - 1.0) * span;
            let nanos = (delay.as_nanos() as f64 + offset).max(0.0);
            delay = Duration::from_nanos(nanos as u64);
        }
        let due = self.last_due.map_or(now + delay, |last| (now + delay).max(last));
        self.last_due = Some(due);
        self.held.push_back((due, batch));
        true
    }

    /// The head batch if its time has come.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<Vec<RaftEnvelope>> {
        if self.next_due()? <= now {
            return self.held.pop_front().map(|(_, b)| b);
        }
        None
    }

    /// Everything held (the connection was lost).
    pub(crate) fn take_all(&mut self) -> Vec<Vec<RaftEnvelope>> {
        self.last_due = None;
        self.held.drain(..).map(|(_, b)| b).collect()
    }
}

/// A small deterministic generator (SplitMix64) for jitter and loss: the
/// shaping only needs numbers that differ per batch, not cryptographic ones.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(i: u64) -> Vec<RaftEnvelope> {
        vec![RaftEnvelope { range_id: i, ..Default::default() }]
    }

    #[test]
    fn batches_leave_in_order_after_their_delay_even_with_jitter() {
        let shape = LinkShape { one_way: Duration::from_millis(30), jitter: Duration::from_millis(10), loss: 0.0 };
        let mut line = DelayLine::new(100, 7);
        let t0 = Instant::now();
        for i in 0..50 {
            assert!(line.push(t0 + Duration::from_micros(i * 100), &shape, env(i)));
        }
        assert!(line.pop_due(t0 + Duration::from_millis(19)).is_none(), "nothing leaves before one_way - jitter");
        let mut dues = vec![];
        while let Some(due) = line.next_due() {
            let b = line.pop_due(due).expect("due batch");
            dues.push((due, b[0].range_id));
        }
        assert_eq!(dues.iter().map(|d| d.1).collect::<Vec<_>>(), (0..50).collect::<Vec<_>>());
        assert!(dues.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(dues.iter().all(|(due, _)| *due >= t0 + Duration::from_millis(20) && *due <= t0 + Duration::from_millis(45)));
    }

    #[test]
    fn loss_drops_about_the_configured_fraction_and_capacity_bounds_the_line() {
        let shape = LinkShape { one_way: Duration::from_millis(1), jitter: Duration::ZERO, loss: 0.25 };
        let mut line = DelayLine::new(10_000, 42);
        let now = Instant::now();
        let kept = (0..4000).filter(|i| line.push(now, &shape, env(*i))).count();
        assert!((2800..3200).contains(&kept), "kept {kept} of 4000 at 25% loss");
        let mut small = DelayLine::new(2, 1);
        small.push(now, &LinkShape::NONE, env(1));
        assert!(!small.is_full());
        small.push(now, &LinkShape::NONE, env(2));
        assert!(small.is_full());
        assert_eq!(small.take_all().len(), 2);
        assert!(small.is_empty());
    }
}
