//! The phi-accrual failure detector (Hayashibara et al., 2004, as Akka and
//! Cassandra use it): instead of a yes/no timeout, each peer gets a
//! suspicion level φ that grows the longer the peer stays silent compared
//! with how regularly it has been heard from.
//!
//! ```text
//!  arrivals of probes/heartbeats ──► window of inter-arrival intervals (mean μ, std σ)
//!  now ─────────────────────────────► φ = -log10(P(an interval this long or longer))
//!                                      with intervals ~ Normal(μ + acceptable pause, max(σ, min σ))
//!  φ < suspect_phi: alive · φ ≥ suspect_phi: suspect · suspect for dead_after_ms: dead
//! ```
//!
//! φ = 1 means about a 10 % chance that the silence is normal, φ = 8 about
//! one in 10⁸. Deterministic: time comes in as milliseconds of the caller's
//! monotonic clock, so the simulation replays it exactly. Bounded: a
//! window of at most [`PhiConfig::max_samples`] intervals per peer, and
//! the caller bounds the number of peers (the directory's `MAX_NODES`).
//!
//! **A node that was itself paused convicts nobody for that interval.**
//! The owner calls [`PhiDetector::tick`] from its loop; a gap between two
//! ticks longer than [`PhiConfig::self_pause_ms`] means this node (not its
//! peers) stalled — a GC-like pause, SIGSTOP, an overloaded machine — and
//! every peer's silence is credited with that gap.

use std::collections::{BTreeMap, VecDeque};

use crate::Liveness;

/// The detector's settings. The defaults are Akka cluster's (which
/// Cassandra's `phi_convict_threshold = 8` matches), for heartbeats about
/// once a second:
/// - `suspect_phi = 8`: a false suspicion about once in 10⁸ intervals of a
///   peer that keeps its rhythm;
/// - `acceptable_pause_ms = 3000`: a peer may miss about three heartbeats
///   (a long GC, a brief network stall) before φ climbs at all;
/// - `min_std_dev_ms = 100`: a peer with perfectly regular heartbeats
///   would otherwise have σ ≈ 0 and be suspected a few ms late;
/// - `max_samples = 1000`: about a quarter of an hour of history at one
///   heartbeat a second, enough to learn a link's jitter, small to keep;
/// - `first_interval_ms = 1000`: the interval assumed before the second
///   arrival (the expected heartbeat period);
/// - `dead_after_ms = 5000`: a peer is dead once it has been suspect that
///   long, so a suspect has time to refute (SWIM's suspicion period, a few
///   probe rounds); φ itself climbs too steeply on a regular link (σ ≈
///   100 ms) for a second φ threshold to leave that time;
/// - `self_pause_ms = 1000`: a gap of a second between two ticks of a loop
///   that ticks every 100 ms or so is this node's own stall.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhiConfig {
    /// φ at and above which a peer is suspect.
    pub suspect_phi: f64,
    /// How long a peer stays suspect before it is dead, in ms.
    pub dead_after_ms: u64,
    /// Intervals remembered per peer.
    pub max_samples: usize,
    /// Floor of the standard deviation used, in ms.
    pub min_std_dev_ms: f64,
    /// Silence tolerated on top of the mean interval, in ms.
    pub acceptable_pause_ms: f64,
    /// The interval assumed before a peer's second arrival, in ms.
    pub first_interval_ms: f64,
    /// A gap between two [`PhiDetector::tick`]s longer than this is this
    /// node's own stall, in ms.
    pub self_pause_ms: u64,
}

impl Default for PhiConfig {
    fn default() -> Self {
        PhiConfig {
            suspect_phi: 8.0,
            dead_after_ms: 5000,
            max_samples: 1000,
            min_std_dev_ms: 100.0,
            acceptable_pause_ms: 3000.0,
            first_interval_ms: 1000.0,
            self_pause_ms: 1000,
        }
    }
}

impl PhiConfig {
    /// Whether the settings make sense (positive, ordered, bounded).
    pub fn validate(&self) -> Result<(), String> {
        if !(self.suspect_phi > 0.0 && self.suspect_phi.is_finite()) {
            return Err(format!("suspect_phi must be > 0, got {}", self.suspect_phi));
        }
        if self.dead_after_ms > 3_600_000 {
            return Err(format!("dead_after_ms {} is over an hour", self.dead_after_ms));
        }
        if !(1..=100_000).contains(&self.max_samples) {
            return Err(format!("max_samples {} is outside 1..=100000", self.max_samples));
        }
        let ms_ok = |v: f64| v.is_finite() && v >= 0.0;
        if !(ms_ok(self.min_std_dev_ms) && self.min_std_dev_ms > 0.0 && ms_ok(self.acceptable_pause_ms) && ms_ok(self.first_interval_ms)) {
            return Err("min_std_dev_ms must be > 0; acceptable_pause_ms and first_interval_ms >= 0".into());
        }
        if self.self_pause_ms == 0 {
            return Err("self_pause_ms must be > 0".into());
        }
        Ok(())
    }
}

/// One peer's arrival history.
#[derive(Debug, Clone)]
struct History {
    intervals: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
    /// When it was last heard from (ms), credited with this node's stalls.
    last: u64,
}

impl History {
    fn new(now: u64, first_interval: f64) -> History {
        // Akka seeds the window with the expected interval ± a quarter.
        let mut h = History { intervals: VecDeque::new(), sum: 0.0, sum_sq: 0.0, last: now };
        h.push(first_interval - first_interval / 4.0, usize::MAX);
        h.push(first_interval + first_interval / 4.0, usize::MAX);
        h
    }

    fn push(&mut self, interval: f64, max: usize) {
        if self.intervals.len() >= max {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.intervals.push_back(interval);
        self.sum += interval;
        self.sum_sq += interval * interval;
    }

    fn mean(&self) -> f64 {
        self.sum / self.intervals.len() as f64
    }

    fn std_dev(&self) -> f64 {
        let n = self.intervals.len() as f64;
        let mean = self.mean();
        (self.sum_sq / n - mean * mean).max(0.0).sqrt()
    }
}

/// φ of a silence of `elapsed` ms given intervals of `mean` and `std_dev`
/// ms (a logistic approximation of the normal tail, as Akka computes it;
/// accurate to about 10⁻⁴ and never NaN).
pub fn phi(elapsed: f64, mean: f64, std_dev: f64) -> f64 {
    let y = (elapsed - mean) / std_dev;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean { e / (1.0 + e) } else { 1.0 - 1.0 / (1.0 + e) };
    // A tail below f64's resolution: as suspicious as it gets.
    if p_later <= f64::MIN_POSITIVE {
        return f64::MAX.log10();
    }
    // Never -0.0 (a certain arrival): reports print "0.00".
    (-p_later.log10()).max(0.0) + 0.0
}

/// One peer as the detector sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PeerPhi {
    /// The suspicion level now.
    pub phi: f64,
    /// What φ says: alive, suspect or dead.
    pub liveness: Liveness,
    /// When the peer was last heard from (ms, stalls of this node credited).
    pub last_heard_ms: u64,
}

/// The failure detector of one node, over its peers (keyed by node id).
#[derive(Debug, Clone)]
pub struct PhiDetector {
    cfg: PhiConfig,
    peers: BTreeMap<u64, History>,
    last_tick: Option<u64>,
    /// Total ms of this node's own stalls seen (information).
    stalled_ms: u64,
}

impl PhiDetector {
    /// A detector with `cfg` (see [`PhiConfig::validate`]).
    pub fn new(cfg: PhiConfig) -> PhiDetector {
        PhiDetector { cfg, peers: BTreeMap::new(), last_tick: None, stalled_ms: 0 }
    }

    /// Peer `id` was heard from (a probe answered, a heartbeat or any
    /// message arrived) at `now` ms. The first arrival only starts its
    /// history. An arrival older than the last one recorded is ignored
    /// (time never runs backwards here).
    pub fn heard(&mut self, id: u64, now: u64) {
        let (max, first) = (self.cfg.max_samples, self.cfg.first_interval_ms);
        match self.peers.get_mut(&id) {
            None => {
                self.peers.insert(id, History::new(now, first));
            }
            Some(h) if now > h.last => {
                let interval = (now - h.last) as f64;
                h.push(interval, max);
                h.last = now;
            }
            Some(_) => {}
        }
    }

    /// Forgets peer `id` (it left the cluster, or was replaced by a newer
    /// incarnation whose history starts afresh).
    pub fn remove(&mut self, id: u64) {
        self.peers.remove(&id);
    }

    /// This node's loop ran at `now` ms. A gap since the previous tick
    /// longer than [`PhiConfig::self_pause_ms`] was this node's own stall:
    /// every peer's silence is credited with it, so nobody is convicted
    /// for it. Returns the stall credited (0 if none).
    pub fn tick(&mut self, now: u64) -> u64 {
        let gap = match self.last_tick {
            Some(prev) if now > prev => now - prev,
            _ => 0,
        };
        self.last_tick = Some(self.last_tick.map_or(now, |p| p.max(now)));
        if gap <= self.cfg.self_pause_ms {
            return 0;
        }
        for h in self.peers.values_mut() {
            // Never past now: the credit only cancels silence.
            h.last = (h.last + gap).min(now);
        }
        self.stalled_ms += gap;
        gap
    }

    /// Peer `id` at `now` ms; `None` if never heard from.
    pub fn peer(&self, id: u64, now: u64) -> Option<PeerPhi> {
        let h = self.peers.get(&id)?;
        let elapsed = now.saturating_sub(h.last) as f64;
        let mean = h.mean() + self.cfg.acceptable_pause_ms;
        let std_dev = h.std_dev().max(self.cfg.min_std_dev_ms);
        let level = phi(elapsed, mean, std_dev);
        // φ grows with silence, so "suspect dead_after_ms ago already" is
        // "suspect for at least dead_after_ms".
        let suspect_since_long = phi(elapsed - self.cfg.dead_after_ms as f64, mean, std_dev) >= self.cfg.suspect_phi;
        let phi = level;
        let liveness = if phi >= self.cfg.suspect_phi && suspect_since_long {
            Liveness::Dead
        } else if phi >= self.cfg.suspect_phi {
            Liveness::Suspect
        } else {
            Liveness::Alive
        };
        Some(PeerPhi { phi, liveness, last_heard_ms: h.last })
    }

    /// Every peer at `now` ms, by id.
    pub fn peers(&self, now: u64) -> Vec<(u64, PeerPhi)> {
        self.peers.keys().filter_map(|id| self.peer(*id, now).map(|p| (*id, p))).collect()
    }

    /// Total ms of this node's own stalls credited so far.
    pub fn stalled_ms(&self) -> u64 {
        self.stalled_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heartbeats every `period` ms from 0 to `until`, ticking every 100 ms.
    fn steady(d: &mut PhiDetector, id: u64, period: u64, until: u64) {
        let mut t = 0;
        while t <= until {
            d.heard(id, t);
            let mut k = t;
            while k < t + period {
                d.tick(k);
                k += 100;
            }
            t += period;
        }
    }

    #[test]
    fn phi_grows_with_silence_and_is_never_nan() {
        let mut last = -1.0;
        for elapsed in (0..20_000).step_by(250) {
            let p = phi(elapsed as f64, 4000.0, 100.0);
            assert!(p.is_finite() && p >= 0.0, "{elapsed}: {p}");
            assert!(p >= last, "phi fell at {elapsed}: {p} < {last}");
            last = p;
        }
        assert!(phi(4000.0, 4000.0, 100.0) < 0.5, "at the mean about 1/2 chance: phi ~0.3");
        assert!(phi(1e12, 1000.0, 1.0) > 100.0, "an absurd silence saturates, never NaN");
    }

    #[test]
    fn a_regular_peer_is_alive_within_the_acceptable_pause_then_suspect_then_dead() {
        let mut d = PhiDetector::new(PhiConfig::default());
        steady(&mut d, 7, 1000, 60_000);
        let last = 60_000;
        // Two missed heartbeats: within the 3 s acceptable pause.
        assert_eq!(d.peer(7, last + 3000).unwrap().liveness, Liveness::Alive);
        // Silent long enough: suspect, then dead, never back by itself.
        let suspect_at = (last..last + 60_000).step_by(10).find(|t| d.peer(7, *t).unwrap().liveness != Liveness::Alive).unwrap();
        let dead_at = (suspect_at..last + 60_000).step_by(10).find(|t| d.peer(7, *t).unwrap().liveness == Liveness::Dead).unwrap();
        assert!((last + 4000..last + 6000).contains(&suspect_at), "suspected {} ms after the last heartbeat", suspect_at - last);
        assert!(
            (suspect_at + 4990..=suspect_at + 5010).contains(&dead_at),
            "dead {} ms after suspicion (dead_after_ms 5000)",
            dead_at - suspect_at
        );
        // Heard again: alive at once.
        d.heard(7, dead_at + 5);
        assert_eq!(d.peer(7, dead_at + 5).unwrap().liveness, Liveness::Alive);
    }

    #[test]
    fn a_jittery_link_gets_more_slack_than_a_regular_one() {
        let cfg = PhiConfig { acceptable_pause_ms: 0.0, ..PhiConfig::default() };
        let (mut regular, mut jittery) = (PhiDetector::new(cfg), PhiDetector::new(cfg));
        let mut t = 0u64;
        for i in 0..500u64 {
            regular.heard(1, i * 1000);
            t += if i % 2 == 0 { 400 } else { 1600 }; // same mean, large spread
            jittery.heard(1, t);
        }
        let probe = |d: &PhiDetector, from: u64| d.peer(1, from + 2500).unwrap().phi;
        assert!(probe(&jittery, t) < probe(&regular, 499 * 1000), "the same 2.5 s silence is less suspicious on a jittery link");
    }

    #[test]
    fn this_nodes_own_stall_convicts_nobody() {
        let mut d = PhiDetector::new(PhiConfig::default());
        steady(&mut d, 3, 1000, 30_000);
        // This node freezes for 20 s (no ticks, no arrivals processed).
        let resumed = 30_000 + 20_000;
        // The last tick before the freeze was at 30,900.
        assert_eq!(d.tick(resumed), 19_100, "the stall is seen at the first tick after it");
        assert_eq!(d.peer(3, resumed).unwrap().liveness, Liveness::Alive, "the peer's silence was our own pause");
        assert_eq!(d.stalled_ms(), 19_100);
        // Without the tick, the same silence would have convicted it.
        let mut unaware = PhiDetector::new(PhiConfig::default());
        steady(&mut unaware, 3, 1000, 30_000);
        assert_eq!(unaware.peer(3, resumed).unwrap().liveness, Liveness::Dead);
        // A real silence after the pause still convicts.
        let mut t = resumed;
        while t < resumed + 30_000 {
            d.tick(t);
            t += 100;
        }
        assert_eq!(d.peer(3, t).unwrap().liveness, Liveness::Dead);
    }

    #[test]
    fn the_window_is_bounded_and_time_never_runs_backwards() {
        let cfg = PhiConfig { max_samples: 10, ..PhiConfig::default() };
        let mut d = PhiDetector::new(cfg);
        for i in 0..1000 {
            d.heard(9, i * 500);
        }
        assert_eq!(d.peers[&9].intervals.len(), 10);
        // Only the last 10 intervals (500 ms) count: the mean followed.
        assert!((d.peers[&9].mean() - 500.0).abs() < 1e-6);
        let before = d.peer(9, 600_000).unwrap();
        d.heard(9, 1); // late, out of order: ignored
        assert_eq!(d.peer(9, 600_000).unwrap(), before);
        assert_eq!(d.peer(42, 0), None, "never heard of");
        d.remove(9);
        assert!(d.peers(0).is_empty());
    }

    #[test]
    fn settings_are_checked() {
        assert!(PhiConfig::default().validate().is_ok());
        assert!(PhiConfig { suspect_phi: 0.0, ..PhiConfig::default() }.validate().is_err());
        assert!(PhiConfig { dead_after_ms: 4_000_000, ..PhiConfig::default() }.validate().is_err());
        assert!(PhiConfig { max_samples: 0, ..PhiConfig::default() }.validate().is_err());
        assert!(PhiConfig { min_std_dev_ms: 0.0, ..PhiConfig::default() }.validate().is_err());
        assert!(PhiConfig { acceptable_pause_ms: f64::NAN, ..PhiConfig::default() }.validate().is_err());
        assert!(PhiConfig { self_pause_ms: 0, ..PhiConfig::default() }.validate().is_err());
    }
}
