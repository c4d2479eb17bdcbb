//! Runs the store's snapshot builds (`SnapshotBuild::Deferred`) on threads
//! of their own, so a large range's snapshot never stalls the poll loop.
//! The store bounds how many are outstanding (`MAX_SNAPSHOT_BUILDS`).

use std::thread::JoinHandle;

use meridian_raftstore::raft_types::Snapshot;
use meridian_raftstore::{SnapshotTask, Store};
use meridian_storage::StorageError;
use tracing::warn;

type Build = JoinHandle<Result<Snapshot, StorageError>>;

/// The builds in flight, one thread each.
#[derive(Default)]
pub(crate) struct SnapshotBuilders {
    running: Vec<(u64, Build)>,
}

impl SnapshotBuilders {
    /// Hands finished builds back to the store and starts the ones it asks
    /// for. Never waits.
    pub(crate) fn turn(&mut self, store: &mut Store) {
        let mut i = 0;
        while i < self.running.len() {
            if self.running[i].1.is_finished() {
                let (range_id, handle) = self.running.swap_remove(i);
                let result =
                    handle.join().unwrap_or_else(|_| Err(StorageError::Io(format!("the snapshot build of range {range_id} panicked"))));
                store.on_snapshot_built(range_id, result);
            } else {
                i += 1;
            }
        }
        for task in store.take_snapshot_tasks() {
            self.start(store, task);
        }
    }

    fn start(&mut self, store: &mut Store, task: SnapshotTask) {
        let range_id = task.range_id;
        match std::thread::Builder::new().name(format!("meridian-snap-{range_id}")).spawn(move || task.build()) {
            Ok(handle) => self.running.push((range_id, handle)),
            Err(e) => {
                warn!(range = range_id, "spawning a snapshot builder: {e}");
                store.on_snapshot_built(range_id, Err(StorageError::Io(format!("spawning a snapshot builder: {e}"))));
            }
        }
    }
}
