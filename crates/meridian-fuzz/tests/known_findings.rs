//! Panics the fuzzer found at start-up, as small hand-written cases, one
//! per bug. Every record here is well-formed and checksummed; what is wrong
//! is its *content* (an index at u64::MAX, a commit past the log, a voter
//! that is also a learner). The open path promises "corruption is an error
//! naming the range, never a panic" — these used to panic.
//!
//! All seven are fixed (`PeerStorage::open` validates indexes, terms and
//! the conf state; the incarnation bump is checked); these stay as
//! regression tests.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use meridian_fuzz::targets::storage::entry_record;
use meridian_kv::KvMachine;
use meridian_raftstore::{StateMachine, StateMachineFactory, Store, StoreConfig};
use meridian_storage::{
    keys, ApplyState, Cf, Engine, MemEngine, PeerStorage, RaftLocalState, RangeDescriptor, RangeEpoch, ReplicaDesc, ReplicaRole, WriteBatch,
};
use meridian_transport::mem::MemNetwork;
use raft::prelude::{ConfState, Entry, HardState};

const RANGE: u64 = 1;

/// A range with node 1 as its only voter, stored with exactly these
/// records (all checksummed by the real encoders).
fn stored(rs: RaftLocalState, apply: ApplyState, entries: &[(u64, u64)]) -> MemEngine {
    let desc = RangeDescriptor {
        range_id: RANGE,
        namespace_id: RANGE,
        start: Vec::new(),
        end: Vec::new(),
        epoch: RangeEpoch { conf_ver: 1, version: 1 },
        replicas: vec![ReplicaDesc { node_id: 1, role: ReplicaRole::Voter }],
    };
    let mut b = WriteBatch::new();
    b.put(Cf::Meta, keys::state_key(RANGE), desc.encode());
    b.put(Cf::RaftState, keys::state_key(RANGE), rs.encode());
    b.put(Cf::ApplyState, keys::state_key(RANGE), apply.encode());
    for &(index, term) in entries {
        let e = Entry { index, term, ..Default::default() };
        b.put(Cf::RaftLog, keys::log_key(RANGE, index), entry_record(&e));
    }
    let engine = MemEngine::new();
    engine.write(&b, true).unwrap();
    engine
}

fn local_state(term: u64, commit: u64, voters: Vec<u64>, learners: Vec<u64>, truncated_index: u64) -> RaftLocalState {
    RaftLocalState {
        hard_state: HardState { term, vote: 1, commit, ..Default::default() },
        conf_state: ConfState { voters, learners, ..Default::default() },
        truncated_index,
        truncated_term: term.min(1),
    }
}

/// What a restarting node does: open the store and run past an election.
fn restart(engine: MemEngine) -> Result<(), String> {
    let cfg = StoreConfig::new(1);
    let factory: Arc<dyn StateMachineFactory> = Arc::new(|_: &RangeDescriptor| Box::new(KvMachine::new(None)) as Box<dyn StateMachine>);
    let net = MemNetwork::new(0);
    let mut store = Store::open(cfg, Arc::new(engine), Arc::new(net.transport(1)), factory).map_err(|e| e.to_string())?;
    for _ in 0..25 {
        store.tick();
        store.poll().map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The open path must answer with an error, not a panic.
fn assert_error_not_panic(what: &str, f: impl FnOnce() -> Result<(), String>) {
    match catch_unwind(AssertUnwindSafe(f)) {
        Err(p) => {
            let msg = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
            panic!("{what}: panicked ({msg}) instead of returning an error");
        }
        Ok(Ok(())) => panic!("{what}: accepted corrupt state"),
        Ok(Err(_)) => {}
    }
}

/// F1 — meridian-storage `PeerStorage::open` (peer_storage.rs, the log
/// scan start `raft_state.truncated_index + 1`): overflow panic in debug,
/// wraps to index 0 in release.
#[test]
fn f1_peer_storage_open_rejects_truncated_index_at_u64_max() {
    let engine = stored(local_state(1, 0, vec![1], vec![], u64::MAX), ApplyState::default(), &[]);
    assert_error_not_panic("PeerStorage::open", || PeerStorage::open(Arc::new(engine), RANGE).map(drop).map_err(|e| e.to_string()));
}

/// F2 — meridian-raftstore `Store::bump_incarnation` (store/mod.rs,
/// `prev + 1`): the incarnation record is 8 raw bytes with no checksum;
/// all-ones overflows.
#[test]
fn f2_store_open_rejects_incarnation_at_u64_max() {
    let engine = stored(local_state(1, 1, vec![1], vec![], 0), ApplyState::default(), &[(1, 1)]);
    let mut b = WriteBatch::new();
    b.put(Cf::RaftState, keys::data_key(0, b"incarnation"), u64::MAX.to_be_bytes().to_vec());
    engine.write(&b, true).unwrap();
    assert_error_not_panic("Store::open", || restart(engine));
}

/// F3 — `PeerStorage::open` accepts a log ending at index u64::MAX;
/// raft-rs then computes `last_index + 1` (raft_log.rs `RaftLog::new`,
/// log_unstable.rs on the next append) and overflows.
#[test]
fn f3_open_rejects_a_log_ending_at_u64_max() {
    let engine = stored(local_state(1, u64::MAX, vec![1], vec![], u64::MAX - 1), ApplyState::default(), &[(u64::MAX, 1)]);
    assert_error_not_panic("Store::open", || restart(engine));
}

/// F4 — `PeerStorage::open` does not check `truncated_index <= commit <=
/// last_index`; raft-rs `Raft::load_state` (raft.rs) is fatal:
/// "hs.commit 5 is out of range [0, 1]".
#[test]
fn f4_open_rejects_commit_past_the_log() {
    let engine = stored(local_state(1, 5, vec![1], vec![], 0), ApplyState::default(), &[(1, 1)]);
    assert_error_not_panic("Store::open", || restart(engine));
}

/// F5 — `PeerStorage::open` checks `applied <= max(last_index, commit)`;
/// raft-rs needs `truncated_index <= applied <= min(commit, last_index)`
/// and is fatal in `RaftLog::applied_to` (raft_log.rs): "applied(3) is out
/// of range [prev_applied(0), min(committed(2), persisted(3))]".
#[test]
fn f5_open_rejects_applied_past_commit() {
    let apply = ApplyState { applied_index: 3, applied_term: 1 };
    let engine = stored(local_state(1, 2, vec![1], vec![], 0), apply, &[(1, 1), (2, 1), (3, 1)]);
    assert_error_not_panic("Store::open", || restart(engine));
}

/// F6 — `PeerStorage::open` accepts any `ConfState`; raft-rs
/// `Raft::new` restores it and is fatal when the result differs (raft.rs
/// "invalid restore"): a node that is both voter and learner, a learner in
/// `voters_outgoing` not listed in `learners_next`, node id 0, duplicate
/// voters, `auto_leave` without a joint config.
#[test]
fn f6_open_rejects_a_voter_that_is_also_a_learner() {
    let engine = stored(local_state(1, 1, vec![1, 2], vec![2], 0), ApplyState::default(), &[(1, 1)]);
    assert_error_not_panic("Store::open", || restart(engine));
}

/// F7 — `PeerStorage::open` accepts `hard_state.term = u64::MAX`; the
/// first election computes `term + 1` (raft.rs `Raft::campaign`) and
/// overflows.
#[test]
fn f7_open_rejects_term_at_u64_max() {
    let mut rs = local_state(u64::MAX, 1, vec![1], vec![], 0);
    rs.hard_state.vote = 0;
    let engine = stored(rs, ApplyState::default(), &[(1, u64::MAX)]);
    assert_error_not_panic("restart", || restart(engine));
}
