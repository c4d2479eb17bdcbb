//! The engine conformance suite against both engines.

use std::sync::Arc;

use meridian_storage::conformance::{run_all, EngineFactory};
use meridian_storage::{CachedEngine, Cf, Engine, MemEngine};
use meridian_storage_rocks::RocksEngine;

struct Mem {
    live: Vec<MemEngine>,
    /// Bound of a read cache in front of each engine (None: no cache).
    cache: Option<usize>,
}

/// `e`, behind a read cache of `cache` bytes if one is asked for.
fn wrap<E: Engine>(e: E, cache: Option<usize>) -> Arc<dyn Engine> {
    match cache {
        Some(bytes) => Arc::new(CachedEngine::new(e, Cf::Data, bytes)),
        None => Arc::new(e),
    }
}

impl EngineFactory for Mem {
    fn create(&mut self) -> Arc<dyn Engine> {
        let e = MemEngine::new();
        self.live.push(e.clone());
        wrap(e, self.cache)
    }

    fn restart(&mut self, engine: Arc<dyn Engine>) -> Arc<dyn Engine> {
        // The suite restarts only the engine it created last; simulate
        // kill -9 on it.
        let idx = self.live.len() - 1;
        drop(engine);
        let crashed = self.live[idx].crash();
        self.live[idx] = crashed.clone();
        wrap(crashed, self.cache)
    }
}

struct Rocks {
    dirs: Vec<tempfile::TempDir>,
    cache: Option<usize>,
}

impl EngineFactory for Rocks {
    fn create(&mut self) -> Arc<dyn Engine> {
        let dir = tempfile::tempdir().unwrap();
        let e = RocksEngine::open(dir.path()).unwrap();
        self.dirs.push(dir);
        wrap(e, self.cache)
    }

    fn restart(&mut self, engine: Arc<dyn Engine>) -> Arc<dyn Engine> {
        drop(engine);
        let dir = self.dirs.last().unwrap().path();
        let e = RocksEngine::open(dir).expect("reopen rocksdb");
        wrap(e, self.cache)
    }
}

#[test]
fn mem_engine_conformance() {
    run_all(&mut Mem { live: Vec::new(), cache: None });
}

/// The read cache changes no answer: the whole suite again through it, with
/// a bound small enough that entries are evicted all along.
#[test]
fn cached_mem_engine_conformance() {
    run_all(&mut Mem { live: Vec::new(), cache: Some(512) });
}

#[test]
fn cached_rocks_engine_conformance() {
    run_all(&mut Rocks { dirs: Vec::new(), cache: Some(512) });
}

#[test]
fn rocks_engine_conformance() {
    run_all(&mut Rocks { dirs: Vec::new(), cache: None });
}

#[test]
fn mem_engine_crash_loses_only_unsynced_writes() {
    use meridian_storage::{Cf, WriteBatch};
    let e = MemEngine::new();
    let mut b = WriteBatch::new();
    b.put(Cf::Data, b"synced".to_vec(), b"1".to_vec());
    e.write(&b, true).unwrap();
    let mut b = WriteBatch::new();
    b.put(Cf::Data, b"unsynced".to_vec(), b"1".to_vec());
    e.write(&b, false).unwrap();
    let after = e.crash();
    assert!(after.get(Cf::Data, b"synced").unwrap().is_some());
    assert!(after.get(Cf::Data, b"unsynced").unwrap().is_none());
}

#[test]
fn mem_engine_sync_upto_covers_only_earlier_writes_and_crashes_keep_a_prefix() {
    use meridian_storage::{Cf, WriteBatch};
    let put = |e: &MemEngine, k: &[u8]| {
        let mut b = WriteBatch::new();
        b.put(Cf::Data, k.to_vec(), b"v".to_vec());
        e.write(&b, false).unwrap();
    };
    let e = MemEngine::new();
    put(&e, b"a");
    let mark = e.written();
    put(&e, b"b");
    e.sync_upto(mark);
    assert_eq!(e.unsynced_batches(), 1, "the write after the sync began is not covered");
    let after = e.crash();
    assert!(after.get(Cf::Data, b"a").unwrap().is_some());
    assert!(after.get(Cf::Data, b"b").unwrap().is_none());
    put(&e, b"c");
    put(&e, b"d");
    let after = e.crash_keeping(2);
    assert!(after.get(Cf::Data, b"b").unwrap().is_some() && after.get(Cf::Data, b"c").unwrap().is_some());
    assert!(after.get(Cf::Data, b"d").unwrap().is_none(), "a prefix survives, not the rest");
}
