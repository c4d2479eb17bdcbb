//! A bounded cache of point reads of one column family, in front of
//! another engine.
//!
//! Applying a command reads the few records it changes — a lock's queue,
//! the session's lease, the range's meta record — and the same records are
//! read again by the next command on them. In RocksDB each such read walks
//! the memtable's skip list past every older version of the key, and then
//! the immutable memtables and level-0 files when the memtable was just
//! switched. This cache answers them from a hash map.
//!
//! - **Only hot records.** The owner names the keys worth caching (for a
//!   node: the records its state machine reads again and again, see
//!   `StateMachineFactory::hot_record`); other keys pass straight through,
//!   at the cost of one call of that predicate. A user's key, read once
//!   per put, would only push the hot records out.
//! - **Filled by reads, kept by writes.** A read that misses stores what
//!   the engine answered (an absent key too). A write changes a cached
//!   key's entry (a delete records the absence) and does not add keys.
//! - **Always the engine's state.** Every write goes through this wrapper
//!   and updates the cache under the same lock that the write to the inner
//!   engine is made under, and a miss reads the engine under that lock too;
//!   so no read can put back a value a concurrent write replaced. A write
//!   the engine refuses clears the cache.
//! - **Bounded** by bytes (keys, values and a fixed overhead per entry);
//!   beyond the bound, entries leave in insertion order, except that one
//!   read since the last pass earns a second chance (CLOCK).
//!
//! Snapshots, scans, syncs go straight to the inner engine.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::engine::{Cf, Engine, EngineSnapshot, WriteBatch, WriteOp};
use crate::error::StorageResult;

/// Default bound of a node's read cache.
pub const DEFAULT_READ_CACHE_BYTES: usize = 16 << 20;

/// Bytes counted per entry beyond its key (held twice) and value.
const ENTRY_OVERHEAD: usize = 64;

/// Hit and miss counts of a [`CachedEngine`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Reads of cached keys answered from the cache, since it was made.
    pub hits: u64,
    /// Reads of cacheable keys that went to the inner engine, since it
    /// was made. Reads of other column families, or of keys the cache does
    /// not admit, count as neither.
    pub misses: u64,
    /// Entries held now (absent keys included).
    pub entries: usize,
    /// Bytes held now, as the bound counts them: keys twice, values, and a
    /// fixed overhead per entry.
    pub bytes: usize,
}

struct Slot {
    value: Option<Arc<[u8]>>,
    referenced: bool,
}

#[derive(Default)]
struct ReadCache {
    map: HashMap<Box<[u8]>, Slot>,
    /// Every key of `map`, once, oldest first.
    clock: VecDeque<Box<[u8]>>,
    bytes: usize,
    capacity: usize,
    hits: u64,
    misses: u64,
}

fn cost(key: &[u8], value: &Option<Arc<[u8]>>) -> usize {
    2 * key.len() + value.as_ref().map_or(0, |v| v.len()) + ENTRY_OVERHEAD
}

impl ReadCache {
    fn insert(&mut self, key: &[u8], value: Option<Arc<[u8]>>) {
        let c = cost(key, &value);
        if c > self.capacity {
            return;
        }
        self.bytes += c;
        self.map.insert(key.into(), Slot { value, referenced: false });
        self.clock.push_back(key.into());
        self.evict();
    }

    /// Changes the entry of `key` if it is cached.
    fn update(&mut self, key: &[u8], value: Option<&[u8]>) {
        let Some(slot) = self.map.get_mut(key) else { return };
        let value: Option<Arc<[u8]>> = value.map(Into::into);
        self.bytes = self.bytes + cost(key, &value) - cost(key, &slot.value);
        slot.value = value;
        self.evict();
    }

    fn evict(&mut self) {
        while self.bytes > self.capacity {
            let Some(key) = self.clock.pop_front() else { break };
            let slot = self.map.get_mut(&key).expect("the clock lists only cached keys");
            if std::mem::take(&mut slot.referenced) {
                self.clock.push_back(key);
                continue;
            }
            let slot = self.map.remove(&key).expect("present");
            self.bytes -= cost(&key, &slot.value);
        }
    }

    fn remove_span(&mut self, start: &[u8], end: &[u8]) {
        let inside = |k: &[u8]| start <= k && k < end;
        let before = self.map.len();
        let mut freed = 0;
        self.map.retain(|k, slot| {
            let keep = !inside(k);
            if !keep {
                freed += cost(k, &slot.value);
            }
            keep
        });
        if self.map.len() != before {
            self.bytes -= freed;
            self.clock.retain(|k| !inside(k));
        }
    }

    fn clear(&mut self) {
        self.map.clear();
        self.clock.clear();
        self.bytes = 0;
    }
}

/// Which keys a [`CachedEngine`] caches.
type Admit = dyn Fn(&[u8]) -> bool + Send + Sync;

/// `inner` with a `ReadCache` of `cf`'s point reads. Every write to the
/// inner engine must go through this wrapper.
pub struct CachedEngine<E> {
    inner: E,
    cf: Cf,
    admit: Box<Admit>,
    cache: Mutex<ReadCache>,
}

impl<E: Engine> CachedEngine<E> {
    /// Caches reads of every key of `cf`, up to `capacity_bytes` (0:
    /// caches nothing).
    pub fn new(inner: E, cf: Cf, capacity_bytes: usize) -> Self {
        CachedEngine {
            inner,
            cf,
            admit: Box::new(|_| true),
            cache: Mutex::new(ReadCache { capacity: capacity_bytes, ..Default::default() }),
        }
    }

    /// Caches only the keys of `cf` for which `admit` is true.
    pub fn admitting(mut self, admit: impl Fn(&[u8]) -> bool + Send + Sync + 'static) -> Self {
        self.admit = Box::new(admit);
        self
    }

    /// Hit and miss counts so far, and what the cache holds now.
    pub fn stats(&self) -> CacheStats {
        let c = self.lock();
        CacheStats { hits: c.hits, misses: c.misses, entries: c.map.len(), bytes: c.bytes }
    }

    /// The wrapped engine. Write only through this wrapper, or the cache
    /// goes stale.
    pub fn inner(&self) -> &E {
        &self.inner
    }

    fn lock(&self) -> MutexGuard<'_, ReadCache> {
        // The cache holds no invariant a panicking reader could break half
        // way that clear() would not repair; start over empty.
        self.cache.lock().unwrap_or_else(|poisoned| {
            let mut c = poisoned.into_inner();
            c.clear();
            c
        })
    }
}

impl<E: Engine> Engine for CachedEngine<E> {
    fn get(&self, cf: Cf, key: &[u8]) -> StorageResult<Option<Vec<u8>>> {
        if cf != self.cf || !(self.admit)(key) {
            return self.inner.get(cf, key);
        }
        let mut c = self.lock();
        if let Some(slot) = c.map.get_mut(key) {
            slot.referenced = true;
            let value = slot.value.as_deref().map(<[u8]>::to_vec);
            c.hits += 1;
            return Ok(value);
        }
        c.misses += 1;
        let value = self.inner.get(cf, key)?;
        c.insert(key, value.as_deref().map(Into::into));
        Ok(value)
    }

    fn scan(&self, cf: Cf, start: &[u8], end: &[u8], f: &mut dyn FnMut(&[u8], &[u8]) -> bool) -> StorageResult<()> {
        self.inner.scan(cf, start, end, f)
    }

    fn write(&self, batch: &WriteBatch, sync: bool) -> StorageResult<()> {
        let mut c = self.lock();
        if let Err(e) = self.inner.write(batch, sync) {
            c.clear();
            return Err(e);
        }
        for op in batch.ops() {
            match op {
                WriteOp::Put { cf, key, value } if *cf == self.cf && (self.admit)(key) => c.update(key, Some(value)),
                WriteOp::Delete { cf, key } if *cf == self.cf && (self.admit)(key) => c.update(key, None),
                WriteOp::DeleteRange { cf, start, end } if *cf == self.cf => c.remove_span(start, end),
                _ => {}
            }
        }
        Ok(())
    }

    fn sync(&self) -> StorageResult<()> {
        self.inner.sync()
    }

    fn snapshot(&self) -> Box<dyn EngineSnapshot> {
        self.inner.snapshot()
    }

    fn sync_count(&self) -> u64 {
        self.inner.sync_count()
    }

    fn cache_stats(&self) -> Option<CacheStats> {
        Some(self.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemEngine;

    fn put(e: &dyn Engine, cf: Cf, k: &[u8], v: &[u8]) {
        let mut b = WriteBatch::new();
        b.put(cf, k.to_vec(), v.to_vec());
        e.write(&b, false).unwrap();
    }

    #[test]
    fn reads_fill_writes_update_and_deletes_are_remembered() {
        let e = CachedEngine::new(MemEngine::new(), Cf::Data, 1 << 20);
        put(&e, Cf::Data, b"a", b"1");
        assert_eq!(e.stats().entries, 0, "a write does not add keys");
        assert_eq!(e.get(Cf::Data, b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(e.get(Cf::Data, b"a").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!((e.stats().misses, e.stats().hits), (1, 1));
        put(&e, Cf::Data, b"a", b"2");
        assert_eq!(e.get(Cf::Data, b"a").unwrap().as_deref(), Some(&b"2"[..]));
        let mut b = WriteBatch::new();
        b.delete(Cf::Data, b"a".to_vec());
        e.write(&b, false).unwrap();
        assert_eq!(e.get(Cf::Data, b"a").unwrap(), None);
        // An absent key is cached too, and a later put replaces it.
        assert_eq!(e.get(Cf::Data, b"b").unwrap(), None);
        put(&e, Cf::Data, b"b", b"3");
        assert_eq!(e.get(Cf::Data, b"b").unwrap().as_deref(), Some(&b"3"[..]));
        assert_eq!((e.stats().misses, e.stats().hits), (2, 4));
        // Other column families pass through.
        put(&e, Cf::Meta, b"a", b"m");
        assert_eq!(e.get(Cf::Meta, b"a").unwrap().as_deref(), Some(&b"m"[..]));
        assert_eq!(e.get(Cf::Data, b"a").unwrap(), None);
        assert_eq!(e.stats().entries, 2);
    }

    #[test]
    fn only_admitted_keys_are_cached() {
        let e = CachedEngine::new(MemEngine::new(), Cf::Data, 1 << 20).admitting(|k| k.starts_with(b"hot"));
        put(&e, Cf::Data, b"hot1", b"1");
        put(&e, Cf::Data, b"cold1", b"1");
        assert_eq!(e.get(Cf::Data, b"hot1").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(e.get(Cf::Data, b"cold1").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(e.get(Cf::Data, b"cold2").unwrap(), None);
        put(&e, Cf::Data, b"cold1", b"2");
        assert_eq!(e.get(Cf::Data, b"cold1").unwrap().as_deref(), Some(&b"2"[..]));
        assert_eq!(e.stats(), CacheStats { hits: 0, misses: 1, entries: 1, bytes: cost(b"hot1", &Some(Arc::from(&b"1"[..]))) });
    }

    #[test]
    fn delete_range_drops_exactly_its_span() {
        let e = CachedEngine::new(MemEngine::new(), Cf::Data, 1 << 20);
        for k in [b"a", b"b", b"c", b"d"] {
            put(&e, Cf::Data, k, k);
            e.get(Cf::Data, k).unwrap();
        }
        let mut b = WriteBatch::new();
        b.delete_range(Cf::Data, b"b".to_vec(), b"d".to_vec());
        b.put(Cf::Data, b"c".to_vec(), b"new".to_vec());
        e.write(&b, false).unwrap();
        assert_eq!(e.stats().entries, 2);
        assert_eq!(e.get(Cf::Data, b"a").unwrap().as_deref(), Some(&b"a"[..]));
        assert_eq!(e.get(Cf::Data, b"b").unwrap(), None);
        assert_eq!(e.get(Cf::Data, b"c").unwrap().as_deref(), Some(&b"new"[..]));
        assert_eq!(e.get(Cf::Data, b"d").unwrap().as_deref(), Some(&b"d"[..]));
        let c = e.lock();
        assert_eq!(c.clock.len(), c.map.len());
        assert_eq!(c.bytes, c.map.iter().map(|(k, s)| cost(k, &s.value)).sum::<usize>());
    }

    #[test]
    fn stays_within_its_bound_and_gives_read_entries_a_second_chance() {
        let per_entry = cost(&[0u8; 4], &Some(Arc::from(&[0u8; 8][..])));
        let e = CachedEngine::new(MemEngine::new(), Cf::Data, 10 * per_entry);
        let key = |i: u32| i.to_be_bytes();
        for i in 0..10 {
            put(&e, Cf::Data, &key(i), &[7; 8]);
            e.get(Cf::Data, &key(i)).unwrap();
        }
        assert_eq!(e.stats().entries, 10);
        e.get(Cf::Data, &key(0)).unwrap(); // key 0 is read again: it stays
        for i in 10..1000 {
            put(&e, Cf::Data, &key(i), &[7; 8]);
            e.get(Cf::Data, &key(i)).unwrap();
            let s = e.stats();
            assert!(s.bytes <= 10 * per_entry && s.entries <= 10, "over the bound at {i}: {s:?}");
            if i == 10 {
                assert!(e.lock().map.contains_key(&key(0)[..]), "a read entry gets a second chance");
            }
        }
        // Every answer is still the engine's.
        for i in 0..1000 {
            assert_eq!(e.get(Cf::Data, &key(i)).unwrap(), Some(vec![7; 8]));
        }
        // An entry larger than the bound is not cached at all.
        put(&e, Cf::Data, b"big", &vec![1; 20 * per_entry]);
        assert_eq!(e.get(Cf::Data, b"big").unwrap().map(|v| v.len()), Some(20 * per_entry));
        assert!(e.stats().bytes <= 10 * per_entry);
    }

    #[test]
    fn a_refused_write_changes_no_answer() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let e = CachedEngine::new(crate::failing::FailingEngine::new(fail.clone()), Cf::Data, 1 << 20);
        put(&e, Cf::Data, b"a", b"1");
        e.get(Cf::Data, b"a").unwrap();
        fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut b = WriteBatch::new();
        b.put(Cf::Data, b"a".to_vec(), b"2".to_vec());
        assert!(e.write(&b, true).is_err());
        assert_eq!(e.stats().entries, 0);
        assert_eq!(e.get(Cf::Data, b"a").unwrap().as_deref(), Some(&b"1"[..]));
    }
}
