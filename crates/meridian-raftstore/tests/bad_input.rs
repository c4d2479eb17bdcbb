//! Bad input from peers, callers and disk: a clear error or a counted,
//! logged rejection — never a panic, never a change of state.

mod common;

use std::sync::Arc;

use common::{desc, factory, lead_range_1_with_writes};
use meridian_raftstore::{Bootstrap, RaftstoreError, Store, StoreConfig, INITIAL_LOG_INDEX};
use meridian_storage::{keys, Cf, Engine, MemEngine, PeerStorage, WriteBatch};
use meridian_transport::mem::MemNetwork;
use meridian_transport::RaftEnvelope;
use protobuf::Message as _;
use raft::prelude::{Message, MessageType};

fn open(engine: &MemEngine, voters: &[u64]) -> Result<Store, RaftstoreError> {
    Store::bootstrap(engine, 1, &[desc(1, voters)])?;
    let cfg = StoreConfig::new(1);
    Store::open(cfg, Arc::new(engine.clone()), Arc::new(MemNetwork::new(1).transport(1)), factory())
}

/// A single-voter store that leads range 1 and has applied a few writes.
fn leader_store(engine: &MemEngine) -> Store {
    let mut s = open(engine, &[1]).unwrap();
    lead_range_1_with_writes(&mut s);
    assert_eq!(s.range_status(1).unwrap().applied, INITIAL_LOG_INDEX + 4, "leader no-op plus three writes");
    s
}

fn raft_msg(kind: MessageType, from: u64, to: u64, term: u64) -> Vec<u8> {
    let mut m = Message::default();
    m.set_msg_type(kind);
    m.from = from;
    m.to = to;
    m.term = term;
    m.write_to_bytes().unwrap()
}

fn env(range_id: u64, from: u64, message: Vec<u8>) -> RaftEnvelope {
    RaftEnvelope { range_id, from_node: from, to_node: 1, conf_ver: 1, version: 1, message, ..Default::default() }
}

fn snapshot_of(s: &Store) -> (u64, u64, u64) {
    let st = s.range_status(1).unwrap();
    (st.term, st.commit, st.applied)
}

#[test]
fn malformed_peer_messages_are_rejected_and_change_nothing() {
    let engine = MemEngine::new();
    let mut s = leader_store(&engine);
    let before = snapshot_of(&s);
    let cases = vec![
        ("garbage raft bytes", env(1, 2, vec![0xff, 0xff, 0x01])),
        ("from node 0", env(1, 0, raft_msg(MessageType::MsgHeartbeat, 0, 1, 99))),
        ("addressed to another node", RaftEnvelope { to_node: 7, ..env(1, 2, raft_msg(MessageType::MsgHeartbeat, 2, 7, 99)) }),
        ("ids disagree with the envelope", env(1, 2, raft_msg(MessageType::MsgHeartbeat, 3, 1, 99))),
        ("unknown range, not from a leader", env(42, 2, raft_msg(MessageType::MsgRequestVote, 2, 1, 99))),
        ("from ourselves", env(1, 1, raft_msg(MessageType::MsgHeartbeat, 1, 1, 99))),
    ];
    for (i, (what, e)) in cases.into_iter().enumerate() {
        s.step(e);
        s.poll().unwrap();
        assert_eq!(s.metrics().messages_rejected, i as u64 + 1, "{what}: counted as rejected");
        assert_eq!(snapshot_of(&s), before, "{what}: state unchanged");
        assert_eq!(s.range_ids(), vec![1], "{what}: no range created");
    }
}

#[test]
fn stale_epoch_message_from_a_removed_replica_is_rejected() {
    let engine = MemEngine::new();
    let mut s = leader_store(&engine);
    let before = snapshot_of(&s);
    // Node 9 is not in the range and speaks for an older epoch, with a
    // higher term that would otherwise depose the leader.
    let mut e = env(1, 9, raft_msg(MessageType::MsgHeartbeat, 9, 1, 50));
    e.conf_ver = 0;
    s.step(e);
    s.poll().unwrap();
    assert_eq!(s.metrics().messages_rejected, 1);
    assert_eq!(snapshot_of(&s), before, "the stale message did not change the term");
}

#[test]
fn bad_requests_get_clear_errors() {
    let engine = MemEngine::new();
    let mut s = leader_store(&engine);
    assert!(matches!(s.propose(s.request(1), vec![]), Err(RaftstoreError::InvalidRequest { range_id: 1, .. })));
    assert!(matches!(s.propose(s.request(77), b"P k v".to_vec()), Err(RaftstoreError::RangeNotFound { range_id: 77 })));
    assert!(matches!(s.read_index(s.request(77), b"k".to_vec()), Err(RaftstoreError::RangeNotFound { range_id: 77 })));
    assert!(matches!(s.transfer_leader(1, 5), Err(RaftstoreError::InvalidRequest { .. })), "transfer to a non-voter");
    assert_eq!(snapshot_of(&s).2, INITIAL_LOG_INDEX + 4, "nothing was applied");

    // A follower that knows of no leader refuses proposals.
    let engine = MemEngine::new();
    let mut f = open(&engine, &[1, 2, 3]).unwrap();
    match f.propose(f.request(1), b"P k v".to_vec()) {
        Err(e @ RaftstoreError::NotLeader { range_id: 1, leader_hint: None }) => assert!(e.is_retryable()),
        other => panic!("expected NotLeader without a hint, got {other:?}"),
    }
    // One that knows its leader hands the proposal over inside raft. Never
    // applied here (the leader keeps sending heartbeats but never the
    // entry), it is answered "outcome unknown" after the forward timeout,
    // not before.
    let heartbeat = |from: u64, term: u64| {
        let mut m = Message::default();
        m.set_msg_type(MessageType::MsgHeartbeat);
        m.from = from;
        m.to = 1;
        m.term = term;
        env(1, from, m.write_to_bytes().unwrap())
    };
    f.step(heartbeat(2, INITIAL_LOG_INDEX + 3));
    f.poll().unwrap();
    let id = f.propose(f.request(1), b"P k v".to_vec()).expect("a follower with a leader forwards");
    let mut answers = f.poll().unwrap();
    assert_eq!(f.metrics().proposals_forwarded, 1);
    for _ in 0..f.forward_timeout_ticks() - 1 {
        f.step(heartbeat(2, INITIAL_LOG_INDEX + 3));
        f.tick();
        answers.extend(f.poll().unwrap());
    }
    assert!(answers.iter().all(|c| c.id != id), "answered before the timeout: {answers:?}");
    f.tick();
    answers.extend(f.poll().unwrap());
    match answers.iter().find(|c| c.id == id) {
        Some(c) => assert!(matches!(c.result, Err(RaftstoreError::OutcomeUnknown { range_id: 1 })), "{c:?}"),
        None => panic!("no answer after the forward timeout"),
    }
    assert_eq!(f.metrics().forwarded_unknown, 1);
    // Handed to a leader that is then replaced: answered at the next tick,
    // as etcd answers "leader changed".
    f.step(heartbeat(2, INITIAL_LOG_INDEX + 3));
    f.poll().unwrap();
    let id = f.propose(f.request(1), b"P k v".to_vec()).unwrap();
    f.poll().unwrap();
    f.step(heartbeat(3, INITIAL_LOG_INDEX + 4));
    f.tick();
    let answers = f.poll().unwrap();
    match answers.iter().find(|c| c.id == id) {
        Some(c) => assert!(matches!(c.result, Err(RaftstoreError::OutcomeUnknown { range_id: 1 })), "{c:?}"),
        None => panic!("not answered when the leader changed: {answers:?}"),
    }
    assert_eq!(f.metrics().forwarded_unknown, 2);
}

#[test]
fn corrupt_log_record_at_startup_is_a_clear_error() {
    let engine = MemEngine::new();
    drop(leader_store(&engine));
    let crashed = engine.crash();
    crashed.corrupt(Cf::RaftLog, &keys::log_key(1, INITIAL_LOG_INDEX + 2));
    let err = open(&crashed, &[1]).err().expect("opening a corrupt log must fail");
    let msg = err.to_string();
    assert!(msg.contains("range 1") && msg.contains("checksum"), "unclear error: {msg}");
}

#[test]
fn acknowledged_writes_survive_restart_of_a_single_node() {
    let engine = MemEngine::new();
    drop(leader_store(&engine));
    let mut s = open(&engine.crash(), &[1]).unwrap();
    for _ in 0..30 {
        s.tick();
        s.poll().unwrap();
    }
    for i in 0..3 {
        assert_eq!(s.read_local(s.request(1), format!("k{i}").as_bytes()).unwrap(), b"v", "k{i} survived kill -9");
    }
}

/// A node is bootstrapped once: a later start with other ranges (a
/// reordered or extended config) creates nothing and leaves every range as
/// it was.
#[test]
fn bootstrap_happens_once() {
    let engine = MemEngine::new();
    assert_eq!(Store::bootstrap(&engine, 1, &[desc(1, &[1])]).unwrap(), Bootstrap::Created(1));
    let before = PeerStorage::list_ranges(&engine).unwrap();
    let mut other = desc(1, &[1, 2]);
    other.end = b"z".to_vec();
    assert_eq!(Store::bootstrap(&engine, 1, &[other, desc(2, &[1])]).unwrap(), Bootstrap::Existing);
    assert_eq!(PeerStorage::list_ranges(&engine).unwrap(), before, "the ranges on disk are unchanged");
}

/// Another node's data directory, and one written before the bootstrap
/// record existed (format 1), are refused with a clear error, unchanged.
#[test]
fn a_foreign_or_old_data_directory_is_refused() {
    let engine = MemEngine::new();
    Store::bootstrap(&engine, 1, &[desc(1, &[1])]).unwrap();
    let err = Store::bootstrap(&engine, 2, &[desc(1, &[2])]).unwrap_err();
    assert!(matches!(&err, RaftstoreError::IncompatibleData { reason } if reason.contains("belongs to node 1")), "{err}");

    let old = MemEngine::new();
    let mut batch = WriteBatch::new();
    PeerStorage::bootstrap(&mut batch, &desc(1, &[1]), vec![1]);
    old.write(&batch, true).unwrap();
    let before = PeerStorage::list_ranges(&old).unwrap();
    let err = Store::bootstrap(&old, 1, &[desc(1, &[1])]).unwrap_err();
    assert!(matches!(&err, RaftstoreError::IncompatibleData { reason } if reason.contains("format 1")), "{err}");
    assert_eq!(PeerStorage::list_ranges(&old).unwrap(), before);
}
