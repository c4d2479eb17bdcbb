//! Gossip datagrams as a node's UDP socket receives them
//! (`meridian_membership::agent::Agent::receive`): the wire checks (size,
//! magic, cluster, HMAC, replay), the pool and region prefix, then foca's
//! decoder and state machine and the record and heartbeat broadcasts. The
//! fix-up re-signs a mutated datagram with the test key, so mutations reach
//! foca.

use meridian_membership::agent::{Agent, AgentConfig, DEFAULT_HEARTBEAT_MS};
use meridian_membership::gossip::Advert;
use meridian_membership::phi::PhiConfig;
use meridian_membership::wire::reseal;
use meridian_membership::{Labels, NodeRole};

use crate::target::{Target, Verdict};

const KEY: &[u8] = b"meridian fuzz cluster key, 32 bytes+";
const CLUSTER: u64 = 0xfeed;

fn agent(node: u64) -> Agent {
    let advert = Advert {
        peer_addr: format!("n{node}:2380"),
        client_addr: format!("n{node}:2379"),
        http_addr: format!("n{node}:8080"),
        gossip_addr: format!("n{node}:7946"),
        labels: Labels { region: "r".into(), zone: "z".into(), host: format!("h{node}") },
        role: NodeRole::Data,
    };
    let cfg = AgentConfig {
        node,
        start: 1,
        advert,
        cluster: CLUSTER,
        key: KEY.to_vec(),
        phi: PhiConfig::default(),
        heartbeat_ms: DEFAULT_HEARTBEAT_MS,
        cluster_size: 3,
        seed: node,
    };
    Agent::new(cfg, 0).expect("a valid agent")
}

pub struct GossipPacket;

impl Target for GossipPacket {
    fn name(&self) -> &'static str {
        "gossip-packet"
    }

    fn describe(&self) -> &'static str {
        "agent::Agent::receive: the wire checks, the pool/region prefix, then foca's decoder and the record/heartbeat broadcasts"
    }

    fn is_protobuf(&self) -> bool {
        false
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        // Real traffic between nodes 1 and 2 (announces, feeds, probes,
        // records, heartbeats), as the datagrams node 1 receives.
        let (mut n1, mut n2) = (agent(1), agent(2));
        let mut seeds = Vec::new();
        n2.learn(1, "n1:7946", Some("r"));
        for t in (0..6_000).step_by(100) {
            for (_, d) in n2.take_outbox() {
                n1.receive(t, &d);
                seeds.push(d);
            }
            for (_, d) in n1.take_outbox() {
                n2.receive(t, &d);
            }
            n1.tick(t);
            n2.tick(t);
        }
        seeds
    }

    fn fixup(&self, input: &mut Vec<u8>) {
        reseal(KEY, input);
    }

    fn run(&self, input: &[u8]) -> Result<Verdict, String> {
        let mut a = agent(1);
        let before = a.peers(1);
        a.receive(1, input);
        let accepted = a.traffic().received_packets == 1;
        if !accepted && a.peers(1) != before {
            return Err(format!("a refused datagram changed the peers: {:?}", a.traffic().dropped));
        }
        // The same bytes again: a replay, always.
        a.receive(1, input);
        if a.traffic().received_packets > 1 {
            return Err("a datagram accepted twice".into());
        }
        Ok(if accepted { Verdict::Accepted } else { Verdict::Rejected })
    }
}
