//! What the store's integration tests share: the register state machine
//! and a descriptor of voters at epoch (1, 1).

use std::sync::Arc;

use meridian_raftstore::test_machine::RegisterMachine;
use meridian_raftstore::{StateMachine, StateMachineFactory};
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
