//! An engine that fails on demand, for tests of what sits above the
//! engine: a dying disk (writes and syncs fail) or a hung one (syncs block).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex};

use crate::engine::{Cf, Engine, EngineSnapshot, WriteBatch};
use crate::error::{StorageError, StorageResult};
use crate::MemEngine;

/// A [`MemEngine`] whose writes and syncs fail once `fail` is set (only
/// its syncs, with `only_sync`): a dying disk. With `hold_syncs`, each
/// sync first blocks until the sender of that channel is dropped: a hung
/// disk.
pub struct FailingEngine {
    /// The engine that holds the data and serves every call that does not
    /// fail.
    pub inner: MemEngine,
    /// Once set, writes and syncs (only syncs, with `only_sync`) return
    /// [`StorageError::Io`]; shared so a test can flip it while the engine
    /// is in use.
    pub fail: Arc<AtomicBool>,
    /// With `fail` set, fail only [`Engine::sync`], not writes (synced or
    /// not).
    pub only_sync: bool,
    /// If set, each sync waits on this channel first: it blocks until a
    /// message arrives or the sender is dropped.
    pub hold_syncs: Option<Mutex<Receiver<()>>>,
}

impl FailingEngine {
    /// A healthy engine until `fail` is set.
    pub fn new(fail: Arc<AtomicBool>) -> Self {
        FailingEngine { inner: MemEngine::new(), fail, only_sync: false, hold_syncs: None }
    }
}

impl Engine for FailingEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }
    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        self.inner.scan(cf, start, end, f)
    }
    fn write(&self, batch: &WriteBatch, sync: bool) -> StorageResult<()> {
        if self.fail.load(Ordering::SeqCst) && !self.only_sync {
            return Err(StorageError::Io("injected write failure".into()));
        }
        self.inner.write(batch, sync)
    }
    fn sync(&self) -> StorageResult<()> {
        if let Some(hold) = &self.hold_syncs {
            let _ = hold.lock().expect("hold").recv();
        }
        if self.fail.load(Ordering::SeqCst) {
            return Err(StorageError::Io("injected sync failure".into()));
        }
        self.inner.sync()
    }
    fn snapshot(&self) -> Box<dyn EngineSnapshot> {
        self.inner.snapshot()
    }
    fn sync_count(&self) -> u64 {
        self.inner.sync_count()
    }
}
