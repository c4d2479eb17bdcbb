use std::collections::BTreeMap;

use meridian_storage::{keys, Cf, Engine, RangeDescriptor, StorageResult, WriteBatch};

/// What a state machine may touch while applying one entry: the data of the
/// namespace its range serves, through a batch that is written atomically
/// with the apply index.
pub struct ApplyContext<'a> {
    pub(crate) range_id: u64,
    /// Whose data records the entry reads and writes
    /// ([`RangeDescriptor::namespace_id`]).
    pub(crate) namespace_id: u64,
    pub(crate) engine: &'a dyn Engine,
    pub(crate) batch: &'a mut WriteBatch,
    /// Writes staged in `batch` by earlier entries of this round, so an
    /// entry sees the effects of the ones before it.
    pub(crate) overlay: &'a mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    pub(crate) term: u64,
    /// Undo journal for savepoints: each staged write's key and what the
    /// overlay held for it before (`None`: nothing). A savepoint is a length
    /// of this journal, so taking one costs nothing however many writes the
    /// round has staged (cloning the overlay made a round quadratic).
    pub(crate) undo: Vec<Undo>,
    /// The range's voters as of this entry (its incoming configuration),
    /// and whether it is in joint consensus: the same on every replica at
    /// the same index.
    pub(crate) voters: Vec<u64>,
    pub(crate) joint: bool,
    /// Ranges this entry splits off (see [`ApplyContext::split_off`]).
    pub(crate) split: Vec<SplitOff>,
    /// Whether a proposer on this node waits for the entry's answer
    /// ([`ApplyContext::answered`]).
    pub(crate) answered: bool,
}

/// A range an applied entry carves out of its own (a namespace moving to a
/// group of its own): its descriptor and the records of its namespace's
/// data, which the store writes with the entry, and the replica it creates
/// here once that write is made, unless this node already has one (a
/// replica the new range's leader created first and fills by itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitOff {
    /// The new range (its replicas: the voters it starts with).
    pub desc: RangeDescriptor,
    /// `(record key, value)` in the new namespace's data.
    pub records: Vec<(Vec<u8>, Vec<u8>)>,
}

/// A staged write's key and the overlay entry it replaced (`None`: none;
/// `Some(None)`: a staged delete).
pub(crate) type Undo = (Vec<u8>, Option<Option<Vec<u8>>>);

impl<'a> ApplyContext<'a> {
    /// For drivers and state-machine tests: writes go to `batch`, reads see
    /// `engine` overlaid with `overlay` (what earlier entries staged). The
    /// range serves the namespace of its own id, as every range does at
    /// bootstrap; [`ApplyContext::for_namespace`] names another.
    pub fn new(
        range_id: u64,
        engine: &'a dyn Engine,
        batch: &'a mut WriteBatch,
        overlay: &'a mut BTreeMap<Vec<u8>, Option<Vec<u8>>>,
        term: u64,
    ) -> Self {
        ApplyContext {
            range_id,
            namespace_id: range_id,
            engine,
            batch,
            overlay,
            term,
            undo: Vec::new(),
            voters: Vec::new(),
            joint: false,
            split: Vec::new(),
            answered: true,
        }
    }

    /// The same context for an entry whose answer nobody on this node
    /// waits for (`answered` false): see [`ApplyContext::answered`].
    pub fn with_answer(mut self, answered: bool) -> Self {
        self.answered = answered;
        self
    }

    /// Whether a proposer on this node waits for this entry's answer. When
    /// none does (every replica but the proposer's, as a rule), an apply
    /// may skip work that only shapes the answer — the reads inside a
    /// transaction — but never anything that decides its writes or
    /// whether it fails: those must be the same on every replica.
    pub fn answered(&self) -> bool {
        self.answered
    }

    /// The same context for a range whose configuration (as of this entry)
    /// has `voters`, `joint` if it is in joint consensus.
    pub fn with_conf(mut self, voters: Vec<u64>, joint: bool) -> Self {
        self.voters = voters;
        self.joint = joint;
        self
    }

    /// The range's voters as of this entry (the incoming configuration
    /// while joint), sorted.
    pub fn voters(&self) -> &[u64] {
        &self.voters
    }

    /// Whether the range is in joint consensus as of this entry.
    pub fn joint(&self) -> bool {
        self.joint
    }

    /// Splits a new range off this one, applied with the entry: the store
    /// writes `split.records` into the data of `split.desc.namespace_id`
    /// and creates this node's replica (if `split.desc` lists this node and
    /// it has no replica of that range yet). Undone by a rollback, like a
    /// staged write.
    pub fn split_off(&mut self, split: SplitOff) {
        self.split.push(split);
    }

    /// The same context over the data of `namespace_id`.
    pub fn for_namespace(mut self, namespace_id: u64) -> Self {
        self.namespace_id = namespace_id;
        self
    }

    /// The range whose entry is being applied.
    pub fn range_id(&self) -> u64 {
        self.range_id
    }

    /// The namespace whose data this entry reads and writes.
    pub fn namespace_id(&self) -> u64 {
        self.namespace_id
    }

    /// Takes the ranges split off so far (for drivers other than the store,
    /// and tests; the store takes them itself).
    pub fn take_splits(&mut self) -> Vec<SplitOff> {
        std::mem::take(&mut self.split)
    }

    /// Marks the current state so a failed command can be undone with
    /// [`ApplyContext::rollback`]: a command that fails changes nothing.
    pub fn savepoint(&self) -> Savepoint {
        Savepoint { batch_len: self.batch.len(), undo_len: self.undo.len(), split_len: self.split.len() }
    }

    /// Undoes every write staged since `sp` was taken (in the batch and
    /// as later reads see them); writes staged before it stay.
    pub fn rollback(&mut self, sp: Savepoint) {
        self.batch.truncate(sp.batch_len);
        self.split.truncate(sp.split_len);
        while self.undo.len() > sp.undo_len {
            let (key, before) = self.undo.pop().expect("length checked");
            match before {
                Some(v) => self.overlay.insert(key, v),
                None => self.overlay.remove(&key),
            };
        }
    }

    /// Raft term of the entry being applied.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Calls `f` for each key in `[start, end)` (empty `end`: no upper
    /// bound) in order, seeing this round's staged writes, until it returns
    /// false.
    pub fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        let mut base = Vec::new();
        let (ds, de) = data_bounds(self.namespace_id, start, end);
        self.engine.scan(Cf::Data, &ds, &de, &mut |k, v| {
            base.push((k[8..].to_vec(), v.to_vec()));
            true
        })?;
        let upper = |k: &[u8]| end.is_empty() || k < end;
        let mut staged = self
            .overlay
            .range::<[u8], _>((std::ops::Bound::Included(start), std::ops::Bound::Unbounded))
            .take_while(|(k, _)| upper(k))
            .peekable();
        let mut base = base.into_iter().peekable();
        loop {
            let next_staged = staged.peek().map(|(k, _)| k.as_slice());
            let next_base = base.peek().map(|(k, _)| k.as_slice());
            let (key, value): (Vec<u8>, Option<Vec<u8>>) = match (next_base, next_staged) {
                (None, None) => return Ok(()),
                (Some(b), Some(s)) if b < s => {
                    let (k, v) = base.next().expect("peeked");
                    (k, Some(v))
                }
                (Some(b), Some(s)) if b == s => {
                    base.next();
                    let (k, v) = staged.next().expect("peeked");
                    (k.clone(), v.clone())
                }
                (Some(_), None) => {
                    let (k, v) = base.next().expect("peeked");
                    (k, Some(v))
                }
                _ => {
                    let (k, v) = staged.next().expect("peeked");
                    (k.clone(), v.clone())
                }
            };
            if let Some(v) = value {
                if !f(&key, &v) {
                    return Ok(());
                }
            }
        }
    }

    /// The value of `key` in the namespace's data (`None`: absent), seeing
    /// this round's staged writes and deletes. Errs only if the engine
    /// read fails.
    pub fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.engine.get(Cf::Data, &keys::data_key(self.namespace_id, key))
    }

    /// Stages a write of `key` in the namespace's data: durable with the
    /// round's batch, visible to later reads of this round at once.
    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put(Cf::Data, keys::data_key(self.namespace_id, key), value.to_vec());
        self.stage(key, Some(value.to_vec()));
    }

    /// Stages a delete of `key` in the namespace's data, like
    /// [`ApplyContext::put`].
    pub fn delete(&mut self, key: &[u8]) {
        self.batch.delete(Cf::Data, keys::data_key(self.namespace_id, key));
        self.stage(key, None);
    }

    fn stage(&mut self, key: &[u8], value: Option<Vec<u8>>) {
        let before = self.overlay.insert(key.to_vec(), value);
        self.undo.push((key.to_vec(), before));
    }
}

/// See [`ApplyContext::savepoint`].
pub struct Savepoint {
    batch_len: usize,
    undo_len: usize,
    split_len: usize,
}

/// Engine bounds of the record-key interval `[start, end)` of a namespace's
/// data (empty `end`: to the end of the namespace).
pub fn data_bounds(namespace_id: u64, start: &[u8], end: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let ds = keys::data_key(namespace_id, start);
    let de = if end.is_empty() { keys::range_span(namespace_id).1 } else { keys::data_key(namespace_id, end) };
    (ds, de)
}

/// The replicated state machine of one range.
///
/// To ensure correctness:
/// - `apply` is deterministic: the same entries in the same order give the
///   same writes and responses on every replica. Time, if needed, must come
///   inside the command.
/// - All durable state lives in the range's data (through [`ApplyContext`]);
///   in-memory caches are rebuilt by `reload` after a restart or snapshot.
/// - A command it cannot parse is answered with an error response, not a
///   panic: the entry is committed and must be applied everywhere alike.
pub trait StateMachine: Send {
    /// Applies the committed `command` at log `index`, writing through
    /// `ctx`, and returns the response the proposer gets. Called once per
    /// non-empty normal entry, in log order (never for conf changes).
    fn apply(&mut self, ctx: &mut ApplyContext<'_>, index: u64, command: &[u8]) -> Vec<u8>;
    /// Rebuilds in-memory state from the engine (after restart or
    /// snapshot), from the data of `namespace_id`.
    fn reload(&mut self, engine: &dyn Engine, namespace_id: u64) -> StorageResult<()>;
    /// Answers a query against applied state of `namespace_id`
    /// (linearizable once the store confirmed the read index; possibly
    /// stale otherwise).
    fn read(&self, engine: &dyn Engine, namespace_id: u64, query: &[u8]) -> Vec<u8>;
    /// The replica was removed from this node (a membership change) and its
    /// data deleted: whoever waits on it here must look elsewhere.
    fn removed(&mut self, _range_id: u64) {}

    /// The ranges this machine's applied state says were split off its
    /// range (their descriptors as of the split). A replica that reached
    /// that state by a snapshot, not by applying the split, creates the
    /// ones listing its node as empty replicas their leaders fill.
    fn split_offs(&self) -> Vec<RangeDescriptor> {
        Vec::new()
    }
}

/// The state machine of a witness replica: it applies nothing (the store
/// still advances the applied index and applies membership changes, which
/// do not pass through a state machine), keeps no data and answers no
/// query — a witness refuses requests before they get here.
pub struct WitnessMachine;

impl StateMachine for WitnessMachine {
    fn apply(&mut self, _ctx: &mut ApplyContext<'_>, _index: u64, _command: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn reload(&mut self, _engine: &dyn Engine, _namespace_id: u64) -> StorageResult<()> {
        Ok(())
    }

    fn read(&self, _engine: &dyn Engine, _namespace_id: u64, _query: &[u8]) -> Vec<u8> {
        Vec::new()
    }
}

/// Creates the state machine for a range replica.
pub trait StateMachineFactory: Send + Sync {
    /// A state machine for the replica `desc` describes (called when the
    /// store opens or creates the replica; its state comes from
    /// [`StateMachine::reload`] next).
    fn create(&self, desc: &RangeDescriptor) -> Box<dyn StateMachine>;

    /// Whether the record at `key` (the machine's own key, without the
    /// range prefix) is read again and again by commands — a lock's queue,
    /// a lease — so the node keeps it in its read cache. None by default.
    fn hot_record(&self, _key: &[u8]) -> bool {
        false
    }
}

impl<F> StateMachineFactory for F
where
    F: Fn(&RangeDescriptor) -> Box<dyn StateMachine> + Send + Sync,
{
    fn create(&self, desc: &RangeDescriptor) -> Box<dyn StateMachine> {
        self(desc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_storage::MemEngine;

    #[test]
    fn scan_merges_staged_writes_over_the_engine() {
        let engine = MemEngine::new();
        let mut b = WriteBatch::new();
        for k in ["a", "c", "e", "g"] {
            b.put(Cf::Data, keys::data_key(3, k.as_bytes()), b"old".to_vec());
        }
        b.put(Cf::Data, keys::data_key(4, b"b"), b"other range".to_vec());
        engine.write(&b, true).unwrap();
        let mut batch = WriteBatch::new();
        let mut overlay = BTreeMap::new();
        let mut ctx = ApplyContext::new(3, &engine, &mut batch, &mut overlay, 1);
        ctx.put(b"b", b"new");
        ctx.put(b"c", b"new");
        ctx.delete(b"e");
        ctx.put(b"z", b"new");
        let mut seen = Vec::new();
        ctx.scan(b"", b"", &mut |k, v| {
            seen.push(format!("{}={}", String::from_utf8_lossy(k), String::from_utf8_lossy(v)));
            true
        })
        .unwrap();
        assert_eq!(seen, ["a=old", "b=new", "c=new", "g=old", "z=new"]);
        let mut bounded = Vec::new();
        ctx.scan(b"b", b"g", &mut |k, _| {
            bounded.push(String::from_utf8_lossy(k).into_owned());
            true
        })
        .unwrap();
        assert_eq!(bounded, ["b", "c"], "bounds apply to staged and stored keys alike");
        assert_eq!(ctx.get(b"e").unwrap(), None, "a staged delete hides the stored value");
        let sp = ctx.savepoint();
        ctx.put(b"a", b"changed");
        ctx.delete(b"g");
        ctx.put(b"b", b"changed");
        ctx.put(b"b", b"changed twice");
        ctx.delete(b"z");
        let inner = ctx.savepoint();
        ctx.put(b"c", b"inner");
        ctx.rollback(inner);
        assert_eq!(ctx.get(b"c").unwrap(), Some(b"new".to_vec()), "an inner rollback keeps the outer writes");
        assert_eq!(ctx.get(b"b").unwrap(), Some(b"changed twice".to_vec()));
        ctx.rollback(sp);
        assert_eq!(ctx.get(b"a").unwrap(), Some(b"old".to_vec()), "rollback undoes staged writes");
        assert_eq!(ctx.get(b"g").unwrap(), Some(b"old".to_vec()));
        assert_eq!(ctx.get(b"b").unwrap(), Some(b"new".to_vec()), "a key staged before the savepoint gets its staged value back");
        assert_eq!(ctx.get(b"z").unwrap(), Some(b"new".to_vec()));
        assert_eq!(ctx.get(b"e").unwrap(), None);
        assert_eq!(overlay.len(), 4, "keys first staged after the savepoint leave the overlay");
        assert_eq!(batch.len(), 4, "and drops them from the batch");
    }
}
