//! Snapshot builds: the snapshots raft-rs asks for (to catch a lagging
//! follower up) are built inline, or handed to the driver as
//! [`SnapshotTask`]s ([`SnapshotBuild::Deferred`]), at most
//! [`MAX_SNAPSHOT_BUILDS`] outstanding, and given back with
//! `on_snapshot_built`. Installing a received snapshot is part of the poll
//! round (`poll.rs`).

use meridian_storage::{build_snapshot, StorageError};
use raft::prelude::Snapshot;
use tracing::warn;

use super::{SnapshotTask, Store, MAX_SNAPSHOT_BUILDS};
use crate::config::SnapshotBuild;

impl Store {
    /// Builds the snapshots raft-rs asked for: inline, or as tasks for the
    /// driver ([`SnapshotBuild::Deferred`]), at most
    /// [`MAX_SNAPSHOT_BUILDS`] outstanding.
    pub(super) fn handle_snapshot_requests(&mut self) {
        for p in self.peers.values_mut() {
            let range_id = p.desc.range_id;
            let outstanding = self.snapshot_in_flight.contains(&range_id) || self.snapshot_tasks.iter().any(|t| t.range_id == range_id);
            if outstanding {
                continue;
            }
            let deferred = self.cfg.snapshot_build == SnapshotBuild::Deferred;
            if deferred && self.snapshot_in_flight.len() + self.snapshot_tasks.len() >= MAX_SNAPSHOT_BUILDS {
                break; // raft-rs asks again later
            }
            let Some(req) = p.raft.store().take_snapshot_request() else { continue };
            let st = p.raft.store();
            let applied = st.apply_state();
            let meta = raft::prelude::SnapshotMetadata {
                index: applied.applied_index,
                term: applied.applied_term,
                conf_state: Some(st.raft_state().conf_state.clone()).into(),
                ..Default::default()
            };
            let view = self.engine.snapshot();
            let desc = p.desc.clone();
            let build = move || -> Result<Snapshot, StorageError> {
                let data = build_snapshot(&*view, &desc)?;
                let mut s = Snapshot::default();
                s.set_metadata(meta);
                s.set_data(data.into());
                Ok(s)
            };
            if deferred {
                self.snapshot_tasks.push(SnapshotTask { range_id: req.range_id, build: Box::new(build) });
                continue;
            }
            match build() {
                Ok(s) => {
                    self.metrics.snapshots_built += 1;
                    p.raft.mut_store().set_built_snapshot(s);
                }
                Err(e) => warn!(range = req.range_id, "building snapshot: {e}"),
            }
        }
    }

    /// The snapshot builds waiting for the driver ([`SnapshotBuild::Deferred`]).
    /// Each must be answered with [`Store::on_snapshot_built`]; until then
    /// the store asks for no other build of that range.
    pub fn take_snapshot_tasks(&mut self) -> Vec<SnapshotTask> {
        let tasks = std::mem::take(&mut self.snapshot_tasks);
        self.snapshot_in_flight.extend(tasks.iter().map(|t| t.range_id));
        tasks
    }

    /// The result of a build taken with [`Store::take_snapshot_tasks`]. A
    /// failed build is logged; raft-rs asks again later.
    pub fn on_snapshot_built(&mut self, range_id: u64, result: Result<Snapshot, StorageError>) {
        self.snapshot_in_flight.remove(&range_id);
        match result {
            Ok(snap) => {
                if let Some(p) = self.peers.get_mut(&range_id) {
                    self.metrics.snapshots_built += 1;
                    p.raft.mut_store().set_built_snapshot(snap);
                }
            }
            Err(e) => warn!(range = range_id, "building snapshot: {e}"),
        }
    }
}
