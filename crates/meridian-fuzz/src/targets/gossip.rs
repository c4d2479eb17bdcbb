//! Gossip packets as a node's UDP socket receives them: the wire checks
//! (`meridian_membership::wire::Opener`: size, magic, cluster, HMAC,
//! replay), then foca's decoder and state machine
//! (`meridian_membership::gossip::Gossip::handle_packet`). The fix-up
//! re-signs a mutated packet with the test key, so mutations reach foca.

use meridian_membership::gossip::{lan_config, Gossip, GossipId};
use meridian_membership::wire::{reseal, Opener, Sealer};
use meridian_membership::NodeRole;

use crate::target::{Target, Verdict};

const KEY: &[u8] = b"meridian fuzz cluster key, 32 bytes+";
const CLUSTER: u64 = 0xfeed;

fn id(node: u64) -> GossipId {
    GossipId { node, incarnation: 1, gossip_addr: format!("n{node}:7946"), role: NodeRole::Data, region: "r".into() }
}

pub struct GossipPacket;

impl Target for GossipPacket {
    fn name(&self) -> &'static str {
        "gossip-packet"
    }

    fn describe(&self) -> &'static str {
        "wire::Opener::open, then gossip::Gossip::handle_packet (foca's decoder) on what passes"
    }

    fn is_protobuf(&self) -> bool {
        false
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        // Real traffic: node 2 announces itself to node 1, and node 1's
        // answers, each sealed as node 2 or node 1 would.
        let (mut n1, mut n2) = (Gossip::new(id(1), lan_config(3), 1, 0), Gossip::new(id(2), lan_config(3), 2, 0));
        let (mut s1, mut s2) = (Sealer::new(KEY, CLUSTER, 1, 1), Sealer::new(KEY, CLUSTER, 2, 1));
        let mut seeds = Vec::new();
        let _ = n2.announce(1, "n1:7946");
        for (_, payload) in n2.take_outbox() {
            let _ = n1.handle_packet(10, &payload);
            seeds.extend(s2.seal(&payload));
        }
        for (_, payload) in n1.take_outbox() {
            seeds.extend(s1.seal(&payload));
        }
        n1.advance(5_000);
        for (_, payload) in n1.take_outbox() {
            seeds.extend(s1.seal(&payload));
        }
        seeds.extend(s2.seal(b"not foca"));
        seeds
    }

    fn fixup(&self, input: &mut Vec<u8>) {
        reseal(KEY, input);
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let mut opener = Opener::new(KEY, CLUSTER);
        let Ok(opened) = opener.open(input) else { return Ok(Verdict::Rejected) };
        // The same bytes again: a replay, always.
        if opener.open(input).is_ok() {
            return Err("a packet opened twice".into());
        }
        let mut g = Gossip::new(id(3), lan_config(3), 3, 0);
        let before = g.members();
        match g.handle_packet(1, opened.payload) {
            Ok(()) => Ok(Verdict::Accepted),
            Err(_) if g.members() == before => Ok(Verdict::Rejected),
            Err(e) => Err(format!("a refused packet ({e}) changed the members")),
        }
    }
}
