//! WAN latency on loopback (`[debug.wan]`): a multi-region cluster on one
//! machine, with each pair of regions `rtt_ms` apart.
//!
//! Every Raft batch this node sends to a node of another region waits half
//! the pair's round trip (± `jitter_ms`), and `loss` of them are dropped,
//! in the node transport (kernel netem is not available here). The other
//! node does the same on the way back, so a message and its answer take
//! one round trip. Only Raft traffic is shaped: gossip and the gRPC hop
//! that forwards a client's request to its range's leader are not.
//! A debug setting: off (empty) by default, never for production.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use meridian_node::LinkShape;

/// Largest round trip accepted, ms.
pub const MAX_RTT_MS: u64 = 10_000;

/// The round trip between two regions.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WanLink {
    /// The two regions (either order).
    pub regions: [String; 2],
    /// Their round trip, ms.
    pub rtt_ms: u64,
}

/// `[debug.wan]`: the round-trip matrix, jitter and loss.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WanConfig {
    /// One entry per pair of regions; a pair not listed is not delayed.
    #[serde(default)]
    pub links: Vec<WanLink>,
    /// Round trip between two nodes of one region, ms (default 0).
    #[serde(default)]
    pub intra_region_rtt_ms: u64,
    /// Each one-way delay varies uniformly by up to ± this many ms.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Fraction of cross-region batches dropped (0.0 ..= 0.5).
    #[serde(default)]
    pub loss: f64,
}

impl WanConfig {
    /// True if nothing is shaped.
    pub fn is_off(&self) -> bool {
        self.links.is_empty() && self.intra_region_rtt_ms == 0 && self.jitter_ms == 0 && self.loss == 0.0
    }

    /// Refuses what cannot be meant: empty or repeated region names, a
    /// pair listed twice, a round trip or jitter over [`MAX_RTT_MS`], loss
    /// outside 0 ..= 0.5.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = BTreeMap::new();
        for l in &self.links {
            let [a, b] = &l.regions;
            if a.is_empty() || b.is_empty() {
                return Err("debug.wan: a link names an empty region".into());
            }
            if a == b {
                return Err(format!("debug.wan: link {a:?}-{b:?} joins a region to itself (set intra_region_rtt_ms)"));
            }
            if l.rtt_ms > MAX_RTT_MS {
                return Err(format!("debug.wan: link {a}-{b}: rtt_ms {} is over {MAX_RTT_MS}", l.rtt_ms));
            }
            if seen.insert(pair(a, b), l.rtt_ms).is_some() {
                return Err(format!("debug.wan: link {a}-{b} is listed twice"));
            }
        }
        if self.intra_region_rtt_ms > MAX_RTT_MS {
            return Err(format!("debug.wan: intra_region_rtt_ms {} is over {MAX_RTT_MS}", self.intra_region_rtt_ms));
        }
        if self.jitter_ms > MAX_RTT_MS {
            return Err(format!("debug.wan: jitter_ms {} is over {MAX_RTT_MS}", self.jitter_ms));
        }
        if !(0.0..=0.5).contains(&self.loss) {
            return Err(format!("debug.wan: loss {} is outside 0.0 ..= 0.5", self.loss));
        }
        Ok(())
    }

    /// The round trip between regions `a` and `b`, ms.
    pub fn rtt_ms(&self, a: &str, b: &str) -> u64 {
        if a == b {
            return self.intra_region_rtt_ms;
        }
        let want = pair(a, b);
        self.links.iter().find(|l| pair(&l.regions[0], &l.regions[1]) == want).map_or(0, |l| l.rtt_ms)
    }

    /// How this node (in region `from`) shapes what it sends to a node in
    /// region `to`: half the round trip, the jitter, and the loss between
    /// regions (none within one).
    pub fn shape(&self, from: &str, to: &str) -> LinkShape {
        // (A peer whose record has not arrived yet has no region: not
        // shaped until it has.)
        if self.is_off() || to.is_empty() {
            return LinkShape::NONE;
        }
        let rtt = self.rtt_ms(from, to);
        let listed = from == to || self.links.iter().any(|l| pair(&l.regions[0], &l.regions[1]) == pair(from, to));
        if !listed {
            // A pair not listed: not shaped at all (no loss either).
            return LinkShape::NONE;
        }
        LinkShape {
            one_way: Duration::from_micros(rtt * 500),
            jitter: if rtt == 0 { Duration::ZERO } else { Duration::from_millis(self.jitter_ms) },
            loss: if from == to { 0.0 } else { self.loss },
        }
    }
}

fn pair<'a>(a: &'a str, b: &'a str) -> (&'a str, &'a str) {
    if a <= b {
        (a, b)
    } else {
        (b, a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wan() -> WanConfig {
        WanConfig {
            links: vec![
                WanLink { regions: ["us-east".into(), "eu-west".into()], rtt_ms: 66 },
                WanLink { regions: ["ap-south".into(), "us-east".into()], rtt_ms: 146 },
            ],
            intra_region_rtt_ms: 1,
            jitter_ms: 2,
            loss: 0.01,
        }
    }

    #[test]
    fn a_pair_is_found_in_either_order_and_each_side_delays_half_the_round_trip() {
        let w = wan();
        w.validate().unwrap();
        assert_eq!(w.rtt_ms("eu-west", "us-east"), 66);
        assert_eq!(w.rtt_ms("us-east", "ap-south"), 146);
        assert_eq!(w.rtt_ms("eu-west", "ap-south"), 0, "unlisted pair");
        let s = w.shape("us-east", "eu-west");
        assert_eq!(s.one_way, Duration::from_millis(33));
        assert_eq!((s.jitter, s.loss), (Duration::from_millis(2), 0.01));
        let local = w.shape("us-east", "us-east");
        assert_eq!((local.one_way, local.loss), (Duration::from_micros(500), 0.0));
        assert!(WanConfig::default().shape("a", "b").is_none());
        assert!(w.shape("eu-west", "ap-south").is_none(), "an unlisted pair: no delay, no loss");
        assert!(w.shape("us-east", "").is_none(), "a peer of no known region yet");
    }

    #[test]
    fn impossible_matrices_are_refused() {
        let with = |f: &dyn Fn(&mut WanConfig)| {
            let mut w = wan();
            f(&mut w);
            w.validate().unwrap_err()
        };
        assert!(with(&|w| w.links[0].regions[1] = "us-east".into()).contains("to itself"));
        assert!(with(&|w| w.links[1].regions = ["eu-west".into(), "us-east".into()]).contains("twice"));
        assert!(with(&|w| w.links[0].rtt_ms = MAX_RTT_MS + 1).contains("over"));
        assert!(with(&|w| w.loss = 0.9).contains("loss"));
        assert!(with(&|w| w.links[0].regions[0] = String::new()).contains("empty"));
    }

    #[test]
    fn the_toml_form_reads_as_documented() {
        let w: WanConfig = toml::from_str(
            r#"
            links = [ { regions = ["us-east", "eu-west"], rtt_ms = 66 } ]
            jitter_ms = 1
            "#,
        )
        .unwrap();
        assert_eq!(w.rtt_ms("eu-west", "us-east"), 66);
        assert!(toml::from_str::<WanConfig>("rtt = 3").is_err(), "unknown keys are refused");
    }
}
