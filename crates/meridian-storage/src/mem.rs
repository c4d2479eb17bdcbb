//! In-memory engine for simulation and tests. It models durability: writes
//! become durable at the next synced write (write-ahead-log order), and
//! [`MemEngine::crash`] throws away everything that was not.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::engine::{Cf, Engine, EngineSnapshot, WriteBatch, WriteOp};
use crate::error::StorageResult;

type Tables = [BTreeMap<Vec<u8>, Vec<u8>>; Cf::ALL.len()];

#[derive(Default)]
struct Inner {
    /// What reads see.
    current: Tables,
    /// What survives a crash.
    durable: Tables,
    /// Batches written without sync since the last synced write.
    unsynced: Vec<WriteBatch>,
    /// Batches written so far, synced or not: marks for [`MemEngine::sync_upto`].
    written: u64,
}

/// See the module docs. Cloning shares the same storage (like reopening the
/// same directory).
#[derive(Clone, Default)]
pub struct MemEngine {
    inner: Arc<Mutex<Inner>>,
    syncs: Arc<AtomicU64>,
}

fn apply(tables: &mut Tables, batch: &WriteBatch) {
    for op in batch.ops() {
        match op {
            WriteOp::Put { cf, key, value } => {
                tables[cf.idx()].insert(key.clone(), value.clone());
            }
            WriteOp::Delete { cf, key } => {
                tables[cf.idx()].remove(key);
            }
            WriteOp::DeleteRange { cf, start, end } => {
                if start >= end {
                    continue;
                }
                let t = &mut tables[cf.idx()];
                let doomed: Vec<Vec<u8>> = t
                    .range::<[u8], _>((Bound::Included(start.as_slice()), Bound::Excluded(end.as_slice())))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in doomed {
                    t.remove(&k);
                }
            }
        }
    }
}

fn scan_table(t: &BTreeMap<Vec<u8>, Vec<u8>>, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) {
    if start >= end {
        return;
    }
    for (k, v) in t.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end))) {
        if !f(k, v) {
            break;
        }
    }
}

impl MemEngine {
    /// An empty engine with nothing written.
    pub fn new() -> Self {
        Self::default()
    }

    /// Simulates kill -9 / power loss: every write not covered by a synced
    /// write is lost. The returned engine is what a restarted node finds.
    pub fn crash(&self) -> MemEngine {
        self.crash_keeping(0)
    }

    /// A crash after which the first `n` unsynced batches happened to
    /// reach the disk anyway (the log keeps a prefix of the writes).
    pub fn crash_keeping(&self, n: usize) -> MemEngine {
        let inner = self.inner.lock().expect("mem engine lock");
        let mut durable = inner.durable.clone();
        for b in inner.unsynced.iter().take(n) {
            apply(&mut durable, b);
        }
        MemEngine {
            inner: Arc::new(Mutex::new(Inner { current: durable.clone(), durable, unsynced: Vec::new(), written: inner.written })),
            syncs: Arc::new(AtomicU64::new(self.syncs.load(Ordering::Relaxed))),
        }
    }

    /// Batches not covered by a sync yet.
    pub fn unsynced_batches(&self) -> usize {
        self.inner.lock().expect("mem engine lock").unsynced.len()
    }

    /// Batches written so far: a mark for [`MemEngine::sync_upto`].
    pub fn written(&self) -> u64 {
        self.inner.lock().expect("mem engine lock").written
    }

    /// A sync that started when [`MemEngine::written`] was `mark`: makes
    /// durable the batches written before then, not later ones (as an
    /// fsync covers what was written before it began).
    pub fn sync_upto(&self, mark: u64) {
        let mut inner = self.inner.lock().expect("mem engine lock");
        let first_unsynced = inner.written - inner.unsynced.len() as u64;
        let n = mark.saturating_sub(first_unsynced).min(inner.unsynced.len() as u64) as usize;
        let covered: Vec<WriteBatch> = inner.unsynced.drain(..n).collect();
        for b in &covered {
            apply(&mut inner.durable, b);
        }
        self.syncs.fetch_add(1, Ordering::Relaxed);
    }

    /// Flips bits in the stored value of `key`, to test corruption handling.
    pub fn corrupt(&self, cf: Cf, key: &[u8]) {
        let mut guard = self.inner.lock().expect("mem engine lock");
        let inner = &mut *guard;
        for t in [&mut inner.current, &mut inner.durable] {
            if let Some(v) = t[cf.idx()].get_mut(key) {
                if let Some(b) = v.first_mut() {
                    *b ^= 0xff;
                }
            }
        }
    }
}

impl Engine for MemEngine {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.inner.lock().expect("mem engine lock").current[cf.idx()].get(key).cloned())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        let inner = self.inner.lock().expect("mem engine lock");
        scan_table(&inner.current[cf.idx()], start, end, f);
        Ok(())
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> StorageResult<()> {
        let mut inner = self.inner.lock().expect("mem engine lock");
        apply(&mut inner.current, batch);
        inner.written += 1;
        if sync {
            let pending = std::mem::take(&mut inner.unsynced);
            for b in &pending {
                apply(&mut inner.durable, b);
            }
            apply(&mut inner.durable, batch);
            self.syncs.fetch_add(1, Ordering::Relaxed);
        } else {
            inner.unsynced.push(batch.clone());
        }
        Ok(())
    }

    fn sync(&self) -> StorageResult<()> {
        self.sync_upto(self.written());
        Ok(())
    }

    fn snapshot(&self) -> Box<dyn EngineSnapshot> {
        let current = self.inner.lock().expect("mem engine lock").current.clone();
        Box::new(MemSnapshot { tables: current })
    }

    fn sync_count(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }
}

struct MemSnapshot {
    tables: Tables,
}

impl EngineSnapshot for MemSnapshot {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        Ok(self.tables[cf.idx()].get(key).cloned())
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        scan_table(&self.tables[cf.idx()], start, end, f);
        Ok(())
    }
}
