//! Writes and reads counted under namespace prefixes: the load the
//! placement driver splits and merges groups by.
//!
//! The driver names the prefixes it wants counted (every namespace created
//! at runtime) in each round's report request; every member then counts
//! the keys of the commands it executes under each, and of the range reads
//! it answers, and reports the totals in its next answer. The driver sums the members'
//! totals and takes rates from their growth. Bounded: at most
//! [`crate::routing::MAX_NAMESPACES`] prefixes, each a counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::RwLock;

use meridian_storage::KeyInterval;

/// One prefix's totals.
#[derive(Default)]
struct Counter {
    writes: AtomicU64,
    reads: AtomicU64,
}

/// The counters of one member.
#[derive(Default)]
pub struct WriteCounts {
    /// Requests share the read lock (each counter is atomic); only a new
    /// list takes the write lock.
    counts: RwLock<HashMap<Vec<u8>, Counter>>,
    /// Some prefix is counted (the hot path checks this alone otherwise).
    active: AtomicBool,
}

impl WriteCounts {
    /// Counts exactly `prefixes` from now on (at most
    /// [`crate::routing::MAX_NAMESPACES`]): counters of prefixes still
    /// named keep their totals, new ones start at 0, others are dropped.
    pub fn watch(&self, prefixes: &[Vec<u8>]) {
        let mut counts = self.counts.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut next = HashMap::with_capacity(prefixes.len().min(crate::routing::MAX_NAMESPACES));
        for p in prefixes.iter().take(crate::routing::MAX_NAMESPACES) {
            next.insert(p.clone(), counts.remove(p).unwrap_or_default());
        }
        self.active.store(!next.is_empty(), Ordering::Release);
        *counts = next;
    }

    /// One executed command with `keys` (each key or interval a command
    /// names, a Txn's every one): each counts under every counted prefix it
    /// lies under, so a Txn of a hundred puts weighs a hundred writes.
    pub fn count(&self, keys: &[KeyInterval]) {
        self.add(keys, |c| &c.writes);
    }

    /// One range read answered, of `keys` (as [`WriteCounts::count`]).
    pub fn count_reads(&self, keys: &[KeyInterval]) {
        self.add(keys, |c| &c.reads);
    }

    fn add(&self, keys: &[KeyInterval], which: impl Fn(&Counter) -> &AtomicU64) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        let counts = self.counts.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        for k in keys {
            // A namespace is /seg/…/seg/: its prefixes end at each '/'.
            for (i, _) in k.key.iter().enumerate().filter(|(i, b)| **b == b'/' && *i > 0) {
                if let Some(c) = counts.get(&k.key[..=i]) {
                    which(c).fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }

    /// Every counted prefix and its totals: (prefix, writes, reads).
    pub fn snapshot(&self) -> Vec<(Vec<u8>, u64, u64)> {
        let counts = self.counts.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        counts.iter().map(|(p, c)| (p.clone(), c.writes.load(Ordering::Relaxed), c.reads.load(Ordering::Relaxed))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> KeyInterval {
        KeyInterval { key: k.as_bytes().to_vec(), range_end: Vec::new() }
    }

    #[test]
    fn keys_count_under_each_named_prefix_and_totals_survive_a_new_list() {
        let w = WriteCounts::default();
        w.count(&[key("/a/x")]);
        assert!(w.snapshot().is_empty(), "nothing counted before a list");
        w.watch(&[b"/a/".to_vec(), b"/a/b/".to_vec()]);
        w.count(&[key("/a/x"), key("/a/y")]);
        w.count(&[key("/a/b/z")]);
        w.count(&[key("/ab"), key("/c/a/")]);
        w.count_reads(&[key("/a/b/q")]);
        let mut got = w.snapshot();
        got.sort();
        assert_eq!(got, [(b"/a/".to_vec(), 3, 1), (b"/a/b/".to_vec(), 1, 1)]);
        w.watch(&[b"/a/b/".to_vec(), b"/c/".to_vec()]);
        let mut got = w.snapshot();
        got.sort();
        assert_eq!(got, [(b"/a/b/".to_vec(), 1, 1), (b"/c/".to_vec(), 0, 0)], "kept, added, dropped");
        w.watch(&[]);
        assert!(w.snapshot().is_empty());
    }
}
