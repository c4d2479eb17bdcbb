use std::collections::HashMap;

use meridian_storage::{keys, Cf, Engine, RangeDescriptor, StorageResult, WriteBatch};

/// What a state machine may touch while applying one entry: its own range's
/// data, through a batch that is written atomically with the apply index.
pub struct ApplyContext<'a> {
    pub(crate) range_id: u64,
    pub(crate) engine: &'a dyn Engine,
    pub(crate) batch: &'a mut WriteBatch,
    /// Writes staged in `batch` by earlier entries of this round, so an
    /// entry sees the effects of the ones before it.
    pub(crate) overlay: &'a mut HashMap<Vec<u8>, Option<Vec<u8>>>,
}

impl ApplyContext<'_> {
    pub fn range_id(&self) -> u64 {
        self.range_id
    }

    pub fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        if let Some(v) = self.overlay.get(key) {
            return Ok(v.clone());
        }
        self.engine.get(Cf::Data, &keys::data_key(self.range_id, key))
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) {
        self.batch.put(Cf::Data, keys::data_key(self.range_id, key), value.to_vec());
        self.overlay.insert(key.to_vec(), Some(value.to_vec()));
    }

    pub fn delete(&mut self, key: &[u8]) {
        self.batch.delete(Cf::Data, keys::data_key(self.range_id, key));
        self.overlay.insert(key.to_vec(), None);
    }
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
    fn apply(&mut self, ctx: &mut ApplyContext<'_>, index: u64, command: &[u8]) -> Vec<u8>;
    /// Rebuilds in-memory state from the engine (after restart or snapshot).
    fn reload(&mut self, engine: &dyn Engine, range_id: u64) -> StorageResult<()>;
    /// Answers a query against applied state (linearizable once the
    /// store confirmed the read index; possibly stale otherwise).
    fn read(&self, engine: &dyn Engine, range_id: u64, query: &[u8]) -> Vec<u8>;
}

/// Creates the state machine for a range replica.
pub trait StateMachineFactory: Send + Sync {
    fn create(&self, desc: &RangeDescriptor) -> Box<dyn StateMachine>;
}

impl<F> StateMachineFactory for F
where
    F: Fn(&RangeDescriptor) -> Box<dyn StateMachine> + Send + Sync,
{
    fn create(&self, desc: &RangeDescriptor) -> Box<dyn StateMachine> {
        self(desc)
    }
}
