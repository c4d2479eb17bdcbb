use meridian_raftstore::{data_bounds, ApplyContext};
use meridian_storage::{keys as skeys, Cf, Engine, StorageResult};

/// Read access to a range's data: while applying (sees staged writes) or
/// from the engine (answering reads).
pub trait DataRead {
    /// The value of `key`; `None` if absent.
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>>;
    /// `[start, end)` in order until `f` returns false; empty `end` = no bound.
    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()>;
}

impl DataRead for ApplyContext<'_> {
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        ApplyContext::get(self, key)
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        ApplyContext::scan(self, start, end, f)
    }
}

/// Reads applied data of one namespace straight from the engine.
pub struct EngineRead<'a> {
    /// The engine holding the data.
    pub engine: &'a dyn Engine,
    /// The namespace whose data is read.
    pub namespace_id: u64,
}

impl DataRead for EngineRead<'_> {
    fn get(&self, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.engine.get(Cf::Data, &skeys::data_key(self.namespace_id, key))
    }

    fn scan(&self, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        let (s, e) = data_bounds(self.namespace_id, start, end);
        self.engine.scan(Cf::Data, &s, &e, &mut |k, v| f(&k[8..], v))
    }
}
