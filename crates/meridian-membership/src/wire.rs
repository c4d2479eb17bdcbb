//! Gossip packets on the wire: authenticated with the cluster key,
//! bounded in size, and protected against replay — every check before a
//! byte reaches foca's decoder.
//!
//! ```text
//!  "MGS1" · cluster id u64 · sender node u64 · sender incarnation u64 · seq u64 · payload length u16
//!  · payload (foca's packet, ≤ MAX_PAYLOAD) · HMAC-SHA256(cluster key, everything before it)
//! ```
//!
//! A packet is dropped, counted by reason ([`DropReason`]) and never
//! panics: too short or too long, another magic, another cluster, a
//! length that does not match, a tag that does not verify (forged, or
//! another key), a sequence number already seen or older than the window
//! (replayed), or a sender incarnation lower than one already heard from
//! that node (a stale identity). Senders are bounded by the directory's
//! `MAX_NODES`.

use std::collections::BTreeMap;

use ring::hmac;

/// The first bytes of every gossip packet.
pub const MAGIC: [u8; 4] = *b"MGS1";
/// Largest foca payload carried (foca's default `max_packet_size`).
pub const MAX_PAYLOAD: usize = 1400;
const HEADER: usize = 4 + 8 + 8 + 8 + 8 + 2;
const TAG: usize = 32;
/// Largest packet accepted.
pub const MAX_PACKET: usize = HEADER + MAX_PAYLOAD + TAG;
/// Sequence numbers remembered per sender behind its highest (a packet
/// reordered further back is dropped as replayed).
pub const REPLAY_WINDOW: u64 = 64;

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DropReason {
    /// Longer than [`MAX_PACKET`] (or a payload over [`MAX_PAYLOAD`] to seal).
    Oversized,
    /// Shorter than a header and a tag, or its length field does not match.
    Truncated,
    /// Not a Meridian gossip packet.
    BadMagic,
    /// Claims another cluster.
    OtherCluster,
    /// Its tag does not verify with this cluster's key.
    Forged,
    /// Seen before, or older than the replay window.
    Replayed,
    /// From an incarnation of its sender older than one already heard.
    StaleIncarnation,
    /// From a new sender while [`crate::MAX_NODES`] are known already.
    TooManySenders,
}

impl DropReason {
    /// The label metrics use.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Truncated => "truncated",
            DropReason::BadMagic => "bad_magic",
            DropReason::OtherCluster => "other_cluster",
            DropReason::Forged => "forged",
            DropReason::Replayed => "replayed",
            DropReason::StaleIncarnation => "stale_incarnation",
            DropReason::TooManySenders => "too_many_senders",
        }
    }
}

/// Seals this node's outgoing packets.
pub struct Sealer {
    key: hmac::Key,
    cluster: u64,
    node: u64,
    incarnation: u64,
    seq: u64,
}

impl Sealer {
    /// A sealer for `node` at `incarnation` in `cluster`, keyed by the
    /// cluster key.
    pub fn new(cluster_key: &[u8], cluster: u64, node: u64, incarnation: u64) -> Sealer {
        Sealer { key: hmac::Key::new(hmac::HMAC_SHA256, cluster_key), cluster, node, incarnation, seq: 0 }
    }

    /// `payload` as a packet (each with the next sequence number).
    pub fn seal(&mut self, payload: &[u8]) -> Result<Vec<u8>, DropReason> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DropReason::Oversized);
        }
        self.seq += 1;
        let mut out = Vec::with_capacity(HEADER + payload.len() + TAG);
        out.extend_from_slice(&MAGIC);
        for v in [self.cluster, self.node, self.incarnation, self.seq] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        out.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        out.extend_from_slice(payload);
        let tag = hmac::sign(&self.key, &out);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }
}

/// Makes `packet` well-formed for `cluster_key`: its length field set to
/// what it carries and its tag recomputed (a fuzzer's fix-up, so mutated
/// payloads reach foca's decoder). Leaves a packet too short or too long
/// for that as it is.
pub fn reseal(cluster_key: &[u8], packet: &mut Vec<u8>) {
    if packet.len() < HEADER + TAG || packet.len() > MAX_PACKET {
        return;
    }
    let len = packet.len() - HEADER - TAG;
    packet[HEADER - 2..HEADER].copy_from_slice(&(len as u16).to_be_bytes());
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, cluster_key), &packet[..HEADER + len]);
    packet.truncate(HEADER + len);
    packet.extend_from_slice(tag.as_ref());
}

/// The sender node a packet claims, unverified (for fault injection that
/// drops a peer's traffic before it is checked); `None` if it is not a
/// Meridian gossip packet.
pub fn claimed_sender(packet: &[u8]) -> Option<u64> {
    (packet.len() >= HEADER && packet[..MAGIC.len()] == MAGIC).then(|| u64_at(packet, 12))
}

/// A packet that passed every check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened<'a> {
    /// The sender's node id.
    pub node: u64,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The packet's sequence number.
    pub seq: u64,
    /// foca's packet.
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, Copy)]
struct Window {
    incarnation: u64,
    highest: u64,
    /// Bit i: `highest - i` was seen.
    seen: u64,
}

/// Checks incoming packets and counts the ones it drops.
pub struct Opener {
    key: hmac::Key,
    cluster: u64,
    windows: BTreeMap<u64, Window>,
    drops: BTreeMap<DropReason, u64>,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

impl Opener {
    /// An opener for `cluster`, keyed by the cluster key.
    pub fn new(cluster_key: &[u8], cluster: u64) -> Opener {
        Opener { key: hmac::Key::new(hmac::HMAC_SHA256, cluster_key), cluster, windows: BTreeMap::new(), drops: BTreeMap::new() }
    }

    /// The packet's sender and payload, or why it was dropped (counted);
    /// the packet counts as seen ([`Opener::verify`] then
    /// [`Opener::record`]).
    pub fn open<'a>(&mut self, packet: &'a [u8]) -> Result<Opened<'a>, DropReason> {
        let opened = self.verify(packet)?;
        self.record(&opened);
        Ok(opened)
    }

    /// Every check of [`Opener::open`] without recording the packet as
    /// seen: the caller records it ([`Opener::record`]) once it accepted
    /// what it says, so a packet refused later moves no replay window.
    pub fn verify<'a>(&mut self, packet: &'a [u8]) -> Result<Opened<'a>, DropReason> {
        let r = self.check(packet);
        if let Err(reason) = r {
            *self.drops.entry(reason).or_insert(0) += 1;
        }
        r
    }

    /// Records a verified packet as seen (its sender's window moves).
    pub fn record(&mut self, p: &Opened<'_>) {
        let fresh = Window { incarnation: p.incarnation, highest: p.seq, seen: 1 };
        let Some(w) = self.windows.get_mut(&p.node) else {
            if self.windows.len() < crate::MAX_NODES {
                self.windows.insert(p.node, fresh);
            }
            return;
        };
        if p.incarnation > w.incarnation {
            *w = fresh; // a restart: its sequence starts again
        } else if p.incarnation == w.incarnation {
            if p.seq > w.highest {
                let shift = p.seq - w.highest;
                w.seen = if shift >= REPLAY_WINDOW { 0 } else { w.seen << shift };
                w.seen |= 1;
                w.highest = p.seq;
            } else if w.highest - p.seq < REPLAY_WINDOW {
                w.seen |= 1 << (w.highest - p.seq);
            }
        }
    }

    fn check<'a>(&mut self, packet: &'a [u8]) -> Result<Opened<'a>, DropReason> {
        if packet.len() > MAX_PACKET {
            return Err(DropReason::Oversized);
        }
        if packet.len() >= MAGIC.len() && packet[..MAGIC.len()] != MAGIC {
            return Err(DropReason::BadMagic);
        }
        if packet.len() < HEADER + TAG {
            return Err(DropReason::Truncated);
        }
        if u64_at(packet, 4) != self.cluster {
            return Err(DropReason::OtherCluster);
        }
        let len = u16::from_be_bytes([packet[HEADER - 2], packet[HEADER - 1]]) as usize;
        if HEADER + len + TAG != packet.len() {
            return Err(DropReason::Truncated);
        }
        let (signed, tag) = packet.split_at(HEADER + len);
        if hmac::verify(&self.key, signed, tag).is_err() {
            return Err(DropReason::Forged);
        }
        let (node, incarnation, seq) = (u64_at(packet, 12), u64_at(packet, 20), u64_at(packet, 28));
        self.admissible(node, incarnation, seq)?;
        Ok(Opened { node, incarnation, seq, payload: &packet[HEADER..HEADER + len] })
    }

    /// The replay check for an authenticated packet (changes nothing).
    fn admissible(&self, node: u64, incarnation: u64, seq: u64) -> Result<(), DropReason> {
        let Some(w) = self.windows.get(&node) else {
            return if self.windows.len() >= crate::MAX_NODES { Err(DropReason::TooManySenders) } else { Ok(()) };
        };
        if incarnation < w.incarnation {
            return Err(DropReason::StaleIncarnation);
        }
        if incarnation > w.incarnation || seq > w.highest {
            return Ok(());
        }
        let back = w.highest - seq;
        if back >= REPLAY_WINDOW || w.seen & (1 << back) != 0 {
            return Err(DropReason::Replayed);
        }
        Ok(())
    }

    /// Packets dropped so far, by reason.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        self.drops.iter().map(|(r, n)| (*r, *n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"cluster key of at least 32 bytes!!";

    #[test]
    fn a_sealed_packet_opens_once() {
        let mut s = Sealer::new(KEY, 7, 3, 1);
        let mut o = Opener::new(KEY, 7);
        let p = s.seal(b"hello").unwrap();
        assert_eq!(o.open(&p), Ok(Opened { node: 3, incarnation: 1, seq: 1, payload: b"hello" }));
        assert_eq!(o.open(&p), Err(DropReason::Replayed));
        assert_eq!(o.drops(), vec![(DropReason::Replayed, 1)]);
    }

    #[test]
    fn every_bad_packet_is_dropped_by_its_reason() {
        let mut s = Sealer::new(KEY, 7, 3, 1);
        let mut o = Opener::new(KEY, 7);
        let good = s.seal(b"payload").unwrap();
        assert_eq!(o.open(&[]), Err(DropReason::Truncated));
        assert_eq!(o.open(&good[..good.len() - 1]), Err(DropReason::Truncated));
        assert_eq!(o.open(b"GET / HTTP/1.1\r\n"), Err(DropReason::BadMagic));
        assert_eq!(o.open(&vec![0u8; MAX_PACKET + 1]), Err(DropReason::Oversized));
        assert_eq!(s.seal(&vec![0u8; MAX_PAYLOAD + 1]), Err(DropReason::Oversized));
        let other = Sealer::new(KEY, 8, 3, 1).seal(b"x").unwrap();
        assert_eq!(o.open(&other), Err(DropReason::OtherCluster));
        let wrong_key = Sealer::new(b"another key", 7, 3, 1).seal(b"x").unwrap();
        assert_eq!(o.open(&wrong_key), Err(DropReason::Forged));
        for at in [12, 20, 28, HEADER, good.len() - 1] {
            let mut bent = good.clone();
            bent[at] ^= 1;
            assert_eq!(o.open(&bent), Err(DropReason::Forged), "a flipped byte at {at}");
        }
        assert_eq!(o.open(&good), Ok(Opened { node: 3, incarnation: 1, seq: 1, payload: b"payload" }), "nothing above changed the window");
    }

    #[test]
    fn reordering_within_the_window_is_fine_replays_and_old_incarnations_are_not() {
        let mut s = Sealer::new(KEY, 7, 3, 5);
        let mut o = Opener::new(KEY, 7);
        let packets: Vec<Vec<u8>> = (0..100).map(|i| s.seal(&[i as u8]).unwrap()).collect();
        assert!(o.open(&packets[80]).is_ok());
        assert!(o.open(&packets[40]).is_ok(), "40 back: inside the window");
        assert_eq!(o.open(&packets[40]), Err(DropReason::Replayed));
        assert_eq!(o.open(&packets[10]), Err(DropReason::Replayed), "70 back: outside the window");
        assert!(o.open(&packets[99]).is_ok());
        // The sender restarts: a higher incarnation starts a new sequence;
        // its old incarnation is stale from then on.
        let mut restarted = Sealer::new(KEY, 7, 3, 6);
        assert!(o.open(&restarted.seal(b"again").unwrap()).is_ok());
        let mut old = Sealer::new(KEY, 7, 3, 5);
        old.seq = 500;
        assert_eq!(o.open(&old.seal(b"late").unwrap()), Err(DropReason::StaleIncarnation));
    }

    #[test]
    fn a_resealed_packet_opens_with_its_new_payload() {
        let mut p = Sealer::new(KEY, 7, 3, 1).seal(b"abc").unwrap();
        p.insert(HEADER, b'z');
        reseal(KEY, &mut p);
        assert_eq!(Opener::new(KEY, 7).open(&p).map(|o| o.payload), Ok(&b"zabc"[..]));
    }

    #[test]
    fn senders_are_bounded() {
        let mut o = Opener::new(KEY, 7);
        for node in 0..crate::MAX_NODES as u64 {
            assert!(o.open(&Sealer::new(KEY, 7, node, 1).seal(b"x").unwrap()).is_ok());
        }
        let extra = Sealer::new(KEY, 7, u64::MAX, 1).seal(b"x").unwrap();
        assert_eq!(o.open(&extra), Err(DropReason::TooManySenders));
    }
}
