//! The KV tests' fixture: one range's `KvMachine` over a `MemEngine`, each
//! command applied as its own entry, published events recorded.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use meridian_kv::command::*;
use meridian_kv::{Event, EventSink, KvMachine, LockEvent};
use meridian_raftstore::{ApplyContext, StateMachine};
use meridian_storage::{Engine, MemEngine, WriteBatch};
use prost::Message;

pub const RANGE: u64 = 3;

/// What the state machine published: key events with their revision, and
/// lock holder changes.
#[derive(Default)]
pub struct Sink {
    pub events: Mutex<Vec<(i64, Event)>>,
    pub locks: Mutex<Vec<LockEvent>>,
}

impl EventSink for Sink {
    fn publish(&self, _range: u64, revision: i64, events: &[Event]) {
        self.events.lock().unwrap().extend(events.iter().map(|e| (revision, e.clone())));
    }

    fn publish_locks(&self, _range: u64, _revision: i64, events: &[LockEvent]) {
        self.locks.lock().unwrap().extend(events.iter().cloned());
    }
}

pub struct Fixture {
    pub engine: MemEngine,
    pub sm: KvMachine,
    pub sink: Arc<Sink>,
    pub index: u64,
}

impl Fixture {
    pub fn new() -> Self {
        let sink = Arc::new(Sink::default());
        Fixture { engine: MemEngine::new(), sm: KvMachine::new(Some(sink.clone())), sink, index: 0 }
    }

    /// Applies `op` as the next log entry (wall clock 1000 ms, recorded
    /// by locks as "held since") and writes its batch.
    pub fn apply(&mut self, op: Op) -> Outcome {
        self.apply_answered(op, true)
    }

    /// [`Fixture::apply`] on a replica where a proposer waits for the
    /// answer (`answered`) or none does.
    pub fn apply_answered(&mut self, op: Op, answered: bool) -> Outcome {
        let mut batch = WriteBatch::new();
        let mut overlay = BTreeMap::new();
        self.index += 1;
        let out = {
            let mut ctx = ApplyContext::new(RANGE, &self.engine, &mut batch, &mut overlay, 1).with_answer(answered);
            self.sm.apply(&mut ctx, self.index, &Command { op: Some(op), wall_ms: 1000 }.encode_to_vec())
        };
        self.engine.write(&batch, false).unwrap();
        Outcome::decode(out.as_slice()).unwrap()
    }

    /// Applies `op` to a range whose voters are `voters` (`joint`: in
    /// joint consensus), writes its batch and any split-off namespace's
    /// records, and returns the outcome with the ranges split off.
    pub fn apply_conf(&mut self, op: Op, voters: &[u64], joint: bool) -> (Outcome, Vec<meridian_raftstore::SplitOff>) {
        let mut batch = WriteBatch::new();
        let mut overlay = BTreeMap::new();
        self.index += 1;
        let (out, splits) = {
            let mut ctx = ApplyContext::new(RANGE, &self.engine, &mut batch, &mut overlay, 1).with_conf(voters.to_vec(), joint);
            let out = self.sm.apply(&mut ctx, self.index, &Command { op: Some(op), wall_ms: 1000 }.encode_to_vec());
            (out, ctx.take_splits())
        };
        for s in &splits {
            for (k, v) in &s.records {
                batch.put(meridian_storage::Cf::Data, meridian_storage::keys::data_key(s.desc.namespace_id, k), v.clone());
            }
        }
        self.engine.write(&batch, false).unwrap();
        (Outcome::decode(out.as_slice()).unwrap(), splits)
    }

    /// A query against namespace `namespace_id`'s data on this engine.
    pub fn query_in(&self, namespace_id: u64, kind: QueryKind) -> QueryAnswer {
        let q = Query { kind: Some(kind) };
        let sm = KvMachine::new(None);
        QueryAnswer::decode(sm.read(&self.engine, namespace_id, &q.encode_to_vec()).as_slice()).unwrap()
    }

    pub fn query(&self, kind: QueryKind) -> QueryAnswer {
        let q = Query { kind: Some(kind) };
        QueryAnswer::decode(self.sm.read(&self.engine, RANGE, &q.encode_to_vec()).as_slice()).unwrap()
    }
}
