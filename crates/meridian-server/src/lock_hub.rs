//! Delivers lock changes applied on this node to the requests waiting for
//! them: a blocked acquire is woken by the one grant that names its waiter
//! id (never by other releases), election observers hear every holder
//! change of their name.
//!
//! Publishing runs on the store thread and never blocks: waiters are
//! oneshot channels, observers a bounded broadcast (a lagging observer
//! re-reads the lock instead of growing memory).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use meridian_kv::locks::Holder;
use meridian_kv::{Event, EventSink, LockEvent};
use tokio::sync::{broadcast, oneshot};

use crate::watch_service::WatchHub;

/// Lock changes buffered for observers.
pub const OBSERVER_CAPACITY: usize = 1024;

/// What a blocked acquire hears.
#[derive(Debug, Clone)]
pub enum Wake {
    Granted(Holder),
    /// Removed from the queue without a grant: its session ended.
    Dropped,
    /// The range's replica left this node; the wait is still queued in the
    /// range and the client should ask another member.
    Moved,
}

#[derive(Debug)]
pub struct LockChange {
    pub range_id: u64,
    pub revision: i64,
    pub name: Vec<u8>,
    pub holder: Option<Holder>,
}

pub struct LockHub {
    node_id: u64,
    next: AtomicU64,
    waiters: Mutex<HashMap<(u64, u64), oneshot::Sender<Wake>>>,
    changes: broadcast::Sender<Arc<LockChange>>,
    wakeups: AtomicU64,
    /// Wait-for cycles found per range by the leader's last scan.
    deadlocks: Mutex<BTreeMap<u64, usize>>,
}

/// Counters for `/metrics`.
#[derive(Debug, Default, Clone, Copy)]
pub struct LockHubMetrics {
    pub waiting: u64,
    pub wakeups: u64,
}

impl LockHub {
    pub fn new(node_id: u64) -> Self {
        LockHub {
            node_id,
            next: AtomicU64::new(1),
            waiters: Mutex::new(HashMap::new()),
            changes: broadcast::channel(OBSERVER_CAPACITY).0,
            wakeups: AtomicU64::new(0),
            deadlocks: Mutex::new(BTreeMap::new()),
        }
    }

    /// A waiter id unique across the cluster (node id in the top bits).
    pub fn next_waiter_id(&self) -> u64 {
        (self.node_id << 44) | self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a waiter before its acquire is proposed, so a grant that
    /// applies before the proposal's answer arrives is not missed.
    pub fn register(&self, range_id: u64, waiter_id: u64) -> oneshot::Receiver<Wake> {
        let (tx, rx) = oneshot::channel();
        self.waiters.lock().expect("lock hub").insert((range_id, waiter_id), tx);
        rx
    }

    pub fn unregister(&self, range_id: u64, waiter_id: u64) {
        self.waiters.lock().expect("lock hub").remove(&(range_id, waiter_id));
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LockChange>> {
        self.changes.subscribe()
    }

    pub fn set_deadlocks(&self, range_id: u64, cycles: usize) {
        self.deadlocks.lock().expect("lock hub").insert(range_id, cycles);
    }

    pub fn deadlocks(&self) -> Vec<(u64, usize)> {
        self.deadlocks.lock().expect("lock hub").iter().map(|(r, n)| (*r, *n)).collect()
    }

    pub fn metrics(&self) -> LockHubMetrics {
        LockHubMetrics { waiting: self.waiters.lock().expect("lock hub").len() as u64, wakeups: self.wakeups.load(Ordering::Relaxed) }
    }

    /// Wakes every waiter of a range whose replica left this node.
    fn range_removed(&self, range_id: u64) {
        let mut waiters = self.waiters.lock().expect("lock hub");
        let moved: Vec<(u64, u64)> = waiters.keys().filter(|(r, _)| *r == range_id).copied().collect();
        for k in moved {
            if let Some(tx) = waiters.remove(&k) {
                let _ = tx.send(Wake::Moved);
            }
        }
        self.deadlocks.lock().expect("lock hub").remove(&range_id);
    }

    fn publish(&self, range_id: u64, revision: i64, events: &[LockEvent]) {
        let mut waiters = self.waiters.lock().expect("lock hub");
        for e in events {
            if e.granted_waiter != 0 {
                if let (Some(tx), Some(h)) = (waiters.remove(&(range_id, e.granted_waiter)), &e.holder) {
                    self.wakeups.fetch_add(1, Ordering::Relaxed);
                    let _ = tx.send(Wake::Granted(h.clone()));
                }
            }
            for w in &e.dropped_waiters {
                if let Some(tx) = waiters.remove(&(range_id, *w)) {
                    let _ = tx.send(Wake::Dropped);
                }
            }
            let change = LockChange { range_id, revision, name: e.name.clone(), holder: e.holder.clone() };
            let _ = self.changes.send(Arc::new(change));
        }
    }
}

/// The state machine's one sink: key events to the watch hub, lock events
/// to the lock hub.
pub struct Sinks {
    pub watch: Arc<WatchHub>,
    pub locks: Arc<LockHub>,
}

impl EventSink for Sinks {
    fn publish(&self, range_id: u64, revision: i64, events: &[Event]) {
        self.watch.publish(range_id, revision, events);
    }

    fn revision_moved(&self, range_id: u64, revision: i64) {
        self.watch.revision_moved(range_id, revision);
    }

    fn publish_locks(&self, range_id: u64, revision: i64, events: &[LockEvent]) {
        self.locks.publish(range_id, revision, events);
    }

    fn range_removed(&self, range_id: u64) {
        self.watch.range_removed(range_id);
        self.locks.range_removed(range_id);
    }

    fn namespace_carved(&self, range_id: u64, prefix: &[u8]) {
        self.watch.namespace_carved(range_id, prefix);
    }

    fn namespace_returned(&self, range_id: u64, prefix: &[u8]) {
        self.watch.namespace_returned(range_id, prefix);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_grant_wakes_only_its_waiter() {
        let hub = LockHub::new(1);
        let (a, b) = (hub.next_waiter_id(), hub.next_waiter_id());
        let mut ra = hub.register(3, a);
        let mut rb = hub.register(3, b);
        let holder = Holder { session: 7, token: 42, ..Default::default() };
        let ev = LockEvent { name: b"x".to_vec(), holder: Some(holder), granted_waiter: b, dropped_waiters: vec![] };
        hub.publish(3, 42, &[ev]);
        assert!(matches!(rb.try_recv(), Ok(Wake::Granted(h)) if h.token == 42));
        assert!(ra.try_recv().is_err(), "the other waiter is not woken");
        assert_eq!(hub.metrics().wakeups, 1);
        assert_eq!(hub.metrics().waiting, 1);
        // Same waiter id on another range is a different waiter.
        let ev = LockEvent { name: b"x".to_vec(), holder: None, granted_waiter: 0, dropped_waiters: vec![a] };
        hub.publish(4, 43, std::slice::from_ref(&ev));
        assert!(ra.try_recv().is_err());
        hub.publish(3, 43, &[ev]);
        assert!(matches!(ra.try_recv(), Ok(Wake::Dropped)));
    }
}
