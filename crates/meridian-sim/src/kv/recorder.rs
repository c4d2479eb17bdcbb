//! `KvMachine` on every replica, wrapped so the simulation sees what each
//! applied entry did: the events and lock events it published (through the
//! machine's own [`EventSink`]), its outcome, and — for lock and lease
//! commands — the replica's lock table before and after it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use meridian_kv::command::{Command, Op, Outcome};
use meridian_kv::locks::{self, NamedLock};
use meridian_kv::mvcc::Mvcc;
use meridian_kv::{DataRead, Event, EventSink, KvMachine, LockEvent};
use meridian_raftstore::{ApplyContext, StateMachine, StateMachineFactory};
use meridian_storage::{Engine, RangeDescriptor, StorageResult};
use prost::Message as _;

/// Locks read from a replica's table at once (the workload uses a few).
const MAX_LOCKS_READ: usize = 10_000;

/// One publication of the state machine, in the order it was made.
#[derive(Debug, Clone, PartialEq)]
pub enum Published {
    Events { revision: i64, events: Vec<Event> },
    Locks { revision: i64, events: Vec<LockEvent> },
}

/// A lock or lease command's effect on the replica's lock table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LockDelta {
    pub before: Vec<NamedLock>,
    pub after: Vec<NamedLock>,
    /// Sessions named in `after` (holders and waiters) whose lease exists
    /// after the command.
    pub live_sessions: BTreeSet<i64>,
}

/// One entry as one replica applied it.
#[derive(Debug, Clone, PartialEq)]
pub struct AppliedKv {
    pub node: u64,
    /// Starts of the node's store so far: a restart replays entries.
    pub incarnation: u64,
    pub range_id: u64,
    pub index: u64,
    pub command: Option<Command>,
    pub outcome: Option<Outcome>,
    pub published: Vec<Published>,
    /// For lock and lease commands; `Err` if the table could not be read.
    pub locks: Option<Result<LockDelta, String>>,
}

impl AppliedKv {
    pub fn op(&self) -> Option<&Op> {
        self.command.as_ref()?.op.as_ref()
    }

    /// The command succeeded (a failed one changes nothing).
    pub fn succeeded(&self) -> bool {
        self.outcome.as_ref().is_some_and(|o| !matches!(o.kind, Some(meridian_kv::command::OutcomeKind::Error(_))))
    }

    pub fn revision(&self) -> i64 {
        self.outcome.as_ref().map_or(0, |o| o.revision)
    }
}

#[derive(Default)]
struct State {
    /// What the entry being applied published so far, per range.
    building: HashMap<u64, Vec<Published>>,
    done: Vec<AppliedKv>,
}

/// The recorder of one start of one node: its stores' machines publish
/// into it and the simulation drains it after every step.
pub struct NodeRecorder {
    node: u64,
    incarnation: u64,
    state: Mutex<State>,
}

impl NodeRecorder {
    pub fn new(node: u64, incarnation: u64) -> Arc<Self> {
        Arc::new(NodeRecorder { node, incarnation, state: Mutex::new(State::default()) })
    }

    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("recorder")
    }

    /// Entries applied since the last call, in apply order.
    pub fn take(&self) -> Vec<AppliedKv> {
        std::mem::take(&mut self.state().done)
    }

    /// The factory a store of this node start runs: `KvMachine` with this
    /// recorder as its sink, hot records as on a real node.
    pub fn factory(self: &Arc<Self>) -> Arc<dyn StateMachineFactory> {
        Arc::new(Factory { rec: self.clone() })
    }
}

impl EventSink for NodeRecorder {
    fn publish(&self, range_id: u64, revision: i64, events: &[Event]) {
        self.state().building.entry(range_id).or_default().push(Published::Events { revision, events: events.to_vec() });
    }

    fn publish_locks(&self, range_id: u64, revision: i64, events: &[LockEvent]) {
        self.state().building.entry(range_id).or_default().push(Published::Locks { revision, events: events.to_vec() });
    }
}

struct Factory {
    rec: Arc<NodeRecorder>,
}

impl StateMachineFactory for Factory {
    fn create(&self, _desc: &RangeDescriptor) -> Box<dyn StateMachine> {
        Box::new(Recording { inner: KvMachine::new(Some(self.rec.clone() as Arc<dyn EventSink>)), rec: self.rec.clone() })
    }

    fn hot_record(&self, key: &[u8]) -> bool {
        meridian_kv::keys::is_hot(key)
    }
}

/// Commands that may change the lock table.
fn touches_locks(op: &Op) -> bool {
    matches!(
        op,
        Op::LockAcquire(_)
            | Op::LockRelease(_)
            | Op::LockCancel(_)
            | Op::LockDelayEnd(_)
            | Op::Proclaim(_)
            | Op::LeaseRevoke(_)
            | Op::LeaseExpire(_)
    )
}

fn read_locks(r: &dyn DataRead) -> Result<Vec<NamedLock>, String> {
    locks::list(r, b"", MAX_LOCKS_READ).map_err(|e| e.to_string())
}

/// Sessions a lock table names.
pub fn sessions_of(table: &[NamedLock]) -> BTreeSet<i64> {
    let mut out = BTreeSet::new();
    for rec in table.iter().filter_map(|l| l.lock.as_ref()) {
        out.extend(rec.holder.as_ref().map(|h| h.session));
        out.extend(rec.waiters.iter().map(|w| w.session));
    }
    out
}

struct Recording {
    inner: KvMachine,
    rec: Arc<NodeRecorder>,
}

impl StateMachine for Recording {
    fn apply(&mut self, ctx: &mut ApplyContext<'_>, index: u64, command: &[u8]) -> Vec<u8> {
        let range_id = ctx.range_id();
        let cmd = Command::decode(command).ok();
        let lockish = cmd.as_ref().and_then(|c| c.op.as_ref()).is_some_and(touches_locks);
        let before = lockish.then(|| read_locks(&*ctx));
        let out = self.inner.apply(ctx, index, command);
        let locks = before.map(|before| {
            let before = before?;
            let after = read_locks(&*ctx)?;
            let mut live_sessions = BTreeSet::new();
            for s in sessions_of(&after) {
                if Mvcc::lease(&*ctx, s).map_err(|e| e.to_string())?.is_some() {
                    live_sessions.insert(s);
                }
            }
            Ok(LockDelta { before, after, live_sessions })
        });
        let mut st = self.rec.state();
        let published = st.building.remove(&range_id).unwrap_or_default();
        st.done.push(AppliedKv {
            node: self.rec.node,
            incarnation: self.rec.incarnation,
            range_id,
            index,
            command: cmd,
            outcome: Outcome::decode(out.as_slice()).ok(),
            published,
            locks,
        });
        out
    }

    fn reload(&mut self, engine: &dyn Engine, range_id: u64) -> StorageResult<()> {
        self.inner.reload(engine, range_id)
    }

    fn read(&self, engine: &dyn Engine, range_id: u64, query: &[u8]) -> Vec<u8> {
        self.inner.read(engine, range_id, query)
    }

    fn removed(&mut self, range_id: u64) {
        self.inner.removed(range_id)
    }
}
