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
        let mut batch = WriteBatch::new();
        let mut overlay = BTreeMap::new();
        self.index += 1;
        let out = {
            let mut ctx = ApplyContext::new(RANGE, &self.engine, &mut batch, &mut overlay, 1);
            self.sm.apply(&mut ctx, self.index, &Command { op: Some(op), wall_ms: 1000 }.encode_to_vec())
        };
        self.engine.write(&batch, false).unwrap();
        Outcome::decode(out.as_slice()).unwrap()
    }

    pub fn query(&self, kind: QueryKind) -> QueryAnswer {
        let q = Query { kind: Some(kind) };
        QueryAnswer::decode(self.sm.read(&self.engine, RANGE, &q.encode_to_vec()).as_slice()).unwrap()
    }
}
