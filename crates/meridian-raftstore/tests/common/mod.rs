//! What the store's integration tests share: the register state machine
//! and a descriptor of voters at epoch (1, 1).

use std::sync::Arc;

use meridian_raftstore::test_machine::{put_command, RegisterMachine};
use meridian_raftstore::{StateMachine, StateMachineFactory, Store};
use meridian_storage::{RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole};

/// Every range runs the register machine.
pub fn factory() -> Arc<dyn StateMachineFactory> {
    Arc::new(|_: &RangeDescriptor| Box::new(RegisterMachine) as Box<dyn StateMachine>)
}

/// Range `range_id` (its own namespace, the whole keyspace) with `voters`.
pub fn desc(range_id: u64, voters: &[u64]) -> RangeDescriptor {
    RangeDescriptor {
        range_id,
        namespace_id: range_id,
        start: vec![],
        end: vec![],
        epoch: RangeEpoch { conf_ver: 1, version: 1 },
        replicas: voters.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect(),
    }
}

/// Makes `s` lead range 1 (a single voter) and apply three writes to it.
pub fn lead_range_1_with_writes(s: &mut Store) {
    s.campaign(1).unwrap();
    for i in 0..3 {
        s.poll().unwrap();
        s.propose(s.request(1), put_command(format!("k{i}").as_bytes(), b"v")).unwrap();
    }
    for _ in 0..3 {
        s.poll().unwrap();
    }
}
