//! Destroying replicas: refused (changing nothing) unless the caller knows
//! a configuration that leaves the replica out; once done, the replica's
//! records are gone, a tombstone stays across restarts, a stale member's
//! message is refused and a later configuration's creates it afresh.

mod common;

use std::sync::Arc;

use common::{desc, factory, lead_range_1_with_writes};
use meridian_raftstore::{Destroyed, RaftstoreError, Retirement, Store, StoreConfig};
use meridian_storage::{keys, Cf, Engine, MemEngine};
use meridian_transport::mem::MemNetwork;
use meridian_transport::RaftEnvelope;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};

fn open(engine: &MemEngine) -> Store {
    Store::open(StoreConfig::new(1), Arc::new(engine.clone()), Arc::new(MemNetwork::new(1).transport(1)), factory()).unwrap()
}

/// Node 1's store with range 1 led here (single voter, a few writes) and
/// range 2 shared with node 2 (not led here).
fn store(engine: &MemEngine) -> Store {
    Store::bootstrap(engine, 1, &[desc(1, &[1]), desc(2, &[1, 2])]).unwrap();
    let mut s = open(engine);
    lead_range_1_with_writes(&mut s);
    s
}

fn records(engine: &MemEngine, range_id: u64) -> usize {
    let (start, end) = keys::range_span(range_id);
    let mut n = 0;
    for cf in [Cf::RaftLog, Cf::RaftState, Cf::ApplyState, Cf::Meta, Cf::Data] {
        engine
            .scan(cf, &start, &end, &mut |k, _| {
                n += usize::from(k != keys::tombstone_key(range_id).as_slice());
                true
            })
            .unwrap();
    }
    n
}

fn heartbeat(range_id: u64, conf_ver: u64, term: u64) -> RaftEnvelope {
    heartbeat_kind(range_id, conf_ver, term, MessageType::MsgHeartbeat)
}

fn heartbeat_kind(range_id: u64, conf_ver: u64, term: u64, kind: MessageType) -> RaftEnvelope {
    let mut m = Message::default();
    m.set_msg_type(kind);
    (m.from, m.to, m.term) = (2, 1, term);
    RaftEnvelope { range_id, from_node: 2, to_node: 1, conf_ver, version: 1, message: m.write_to_bytes().unwrap(), ..Default::default() }
}

#[test]
fn a_replica_in_its_configuration_is_not_destroyed() {
    let engine = MemEngine::new();
    let mut s = store(&engine);
    let before = records(&engine, 1);
    let err = s.destroy_replica(1, Retirement::Removed { conf_ver: 9 }).unwrap_err();
    assert!(matches!(err, RaftstoreError::InvalidRequest { range_id: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("remove it from the range first"), "{err}");
    assert_eq!(records(&engine, 1), before, "nothing deleted");
    assert!(s.range_status(1).is_some_and(|st| !st.dormant));
    assert!(matches!(s.destroy_replica(7, Retirement::Retired), Err(RaftstoreError::RangeNotFound { range_id: 7 })));
    assert_eq!(s.tombstone(1), None);
}

#[test]
fn a_removed_replica_is_destroyed_only_under_a_configuration_as_new_as_its_removal() {
    let engine = MemEngine::new();
    let mut s = store(&engine);
    // Node 2 campaigns at term 5: node 1's replica of range 2 reaches term 5.
    s.step(heartbeat_kind(2, 1, 5, MessageType::MsgRequestVote));
    assert_eq!(s.range_status(2).unwrap().term, 5);
    // Node 2 applied a configuration at epoch 3 without node 1.
    s.step(RaftEnvelope::removed_hint(2, 2, 1, 3));
    assert_eq!(s.range_status(2).unwrap().dormant_at, Some(3));
    let before = records(&engine, 2);
    let err = s.destroy_replica(2, Retirement::Removed { conf_ver: 2 }).unwrap_err();
    assert!(err.to_string().contains("removed at epoch 3"), "{err}");
    assert_eq!(records(&engine, 2), before, "nothing deleted");

    assert_eq!(s.destroy_replica(2, Retirement::Removed { conf_ver: 3 }).unwrap(), Destroyed::Done);
    assert!(s.range_status(2).is_none());
    assert_eq!(records(&engine, 2), 0, "log, state, descriptor and data deleted");
    assert!(records(&engine, 1) > 0, "the other range's records stay");
    assert_eq!(s.metrics().replicas_destroyed, 1);

    // The tombstone outlives a restart; a member still at epoch 3 is not
    // answered by an empty replica; one that added the node back (a later
    // epoch) creates it afresh.
    drop(s);
    let mut s = open(&engine);
    assert_eq!(s.tombstone(2), Some(3));
    assert!(s.range_status(2).is_none());
    s.step(heartbeat(2, 3, 5));
    assert!(s.range_status(2).is_none(), "a message of the old configuration creates nothing");
    s.step(heartbeat(2, 4, 5));
    let st = s.range_status(2).expect("created by the later configuration's leader");
    assert!(!st.dormant && st.voters.is_empty(), "an empty replica, to be filled by a snapshot: {st:?}");
    assert_eq!(st.term, 5, "the term it had reached comes back from the tombstone");
    // Until a snapshot brings it past epoch 3, the old configuration's
    // members still get no answer from it.
    let rejected = s.metrics().messages_rejected;
    s.step(heartbeat(2, 3, 6));
    assert_eq!(s.metrics().messages_rejected, rejected + 1);
    assert_eq!(s.range_status(2).unwrap().term, 5, "the stale member's term was not taken");
}

#[test]
fn a_retired_range_is_destroyed_whatever_its_state_and_never_recreated() {
    let engine = MemEngine::new();
    let mut s = store(&engine);
    assert!(s.range_status(1).is_some_and(|st| st.role == raft::StateRole::Leader));
    let mut done = false;
    for _ in 0..5 {
        match s.destroy_replica(1, Retirement::Retired).unwrap() {
            Destroyed::Done => {
                done = true;
                break;
            }
            Destroyed::Later => {
                s.poll().unwrap();
            }
        }
    }
    assert!(done, "destroyed once its writes reached the disk");
    assert_eq!(records(&engine, 1), 0);
    assert_eq!(s.tombstone(1), Some(u64::MAX));
    s.step(heartbeat(1, u64::MAX - 1, 9));
    assert!(s.range_status(1).is_none(), "no epoch brings a retired range back");
    assert!(s.range_status(2).is_some(), "the other range stays");
}
