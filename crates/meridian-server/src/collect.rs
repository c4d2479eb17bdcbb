//! Replica collection: every member deletes the replicas it no longer
//! needs, from what the placement catalog (the meta range) says.
//!
//! ```text
//!  every COLLECT_EVERY, on every member:
//!    local replicas ─┬─ range retired (a dropped namespace's) ─────────────► destroy (Retired)
//!                    ├─ dormant since epoch d, and the catalog's descriptor
//!                    │  at epoch X >= d leaves this node out ──────────────► destroy (Removed at X)
//!                    └─ of an epoch generation before the catalog's (a
//!                       forced promotion superseded its lineage) ──────────► destroy (Superseded)
//! ```
//!
//! A removed replica keeps its log and data while it is dormant, because a
//! replica cannot tell by itself whether a leader added it back (see
//! `meridian_raftstore::Store::destroy_replica`). A descriptor in the
//! catalog is one a range's leader applied (committed) and published, and
//! epochs only grow there, so a descriptor at epoch X >= d without this
//! node proves the removal, and every later configuration that holds the
//! node again added it afresh. A descriptor missing or older than the
//! removal decides nothing: the replica waits for the next publication.
//!
//! At most [`MAX_PER_ROUND`] replicas go per round; a replica still writing
//! (a retired range's, put to sleep first) is taken by a later round.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use meridian_kv::command as c;
use meridian_raftstore::{Destroyed, RangeStatus, Retirement};
use meridian_storage::RangeDescriptor;
use tracing::{debug, info, warn};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::meta;
use crate::namespace::RETIRED_PREFIX;
use crate::routing::{prefix_end, META_RANGE_ID};

/// How often a member looks for replicas to delete. Each look reads the
/// retired ranges (one short scan of the meta range) and, per dormant
/// replica, its descriptor.
pub const COLLECT_EVERY: Duration = Duration::from_secs(10);
/// Replicas destroyed per round at most (each is one synced write).
pub const MAX_PER_ROUND: usize = 64;
/// Retired ranges read per round at most (the oldest first; a member
/// holding a replica of a later one gets to it once these are gone).
const MAX_RETIRED_READ: i64 = 10_000;

/// Which local replicas may go, and why: `local` is this member's replicas
/// (id, dormant since which epoch), `retired` the retired ranges, and
/// `catalog` the published descriptors of the dormant ones.
pub fn decide(
    node: u64,
    local: &[(u64, Option<u64>)],
    retired: &BTreeSet<u64>,
    catalog: &BTreeMap<u64, RangeDescriptor>,
) -> Vec<(u64, Retirement)> {
    let mut out = Vec::new();
    for &(range_id, dormant_at) in local {
        // The meta range is never retired (a removed replica of it is
        // collected like any other, below).
        if range_id != META_RANGE_ID && retired.contains(&range_id) {
            out.push((range_id, Retirement::Retired));
            continue;
        }
        let (Some(at), Some(d)) = (dormant_at, catalog.get(&range_id)) else { continue };
        if d.epoch.conf_ver >= at && d.replica(node).is_none() {
            out.push((range_id, Retirement::Removed { conf_ver: d.epoch.conf_ver }));
        }
    }
    out.truncate(MAX_PER_ROUND);
    out
}

/// The local replicas (id, epoch) whose lineage a forced promotion
/// superseded: the catalog (`catalog_conf_vers`, the route cache's epochs
/// as published) names a later epoch generation for the range (see
/// `meridian_raftstore::generation`). Their log and data are another
/// history's; they go whether or not they are dormant. (Epoch 0: a replica
/// created empty, of no lineage yet.)
pub fn superseded(local: &[(u64, u64)], catalog_conf_vers: &BTreeMap<u64, u64>) -> Vec<(u64, Retirement)> {
    let mut out = Vec::new();
    for &(range_id, conf_ver) in local {
        let Some(&listed) = catalog_conf_vers.get(&range_id) else { continue };
        if conf_ver != 0 && meridian_raftstore::generation(conf_ver) < meridian_raftstore::generation(listed) {
            out.push((range_id, Retirement::Superseded { conf_ver: listed }));
        }
    }
    out.truncate(MAX_PER_ROUND);
    out
}

/// The ranges retired so far (their markers in the meta range).
async fn retired(backend: &Backend) -> Result<BTreeSet<u64>, ApiError> {
    let op = c::RangeOp {
        key: RETIRED_PREFIX.to_vec(),
        range_end: prefix_end(RETIRED_PREFIX),
        keys_only: true,
        limit: MAX_RETIRED_READ,
        ..Default::default()
    };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), true).await?;
    Ok(a.range
        .map(|r| r.kvs)
        .unwrap_or_default()
        .iter()
        .filter_map(|kv| Some(u64::from_be_bytes(kv.key.strip_prefix(RETIRED_PREFIX)?.try_into().ok()?)))
        .collect())
}

/// The published descriptor of `range_id`, if there is one.
async fn descriptor(backend: &Backend, range_id: u64) -> Result<Option<RangeDescriptor>, ApiError> {
    let op = c::RangeOp { key: meta::range_key(range_id), ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), true).await?;
    match a.range.and_then(|r| r.kvs.into_iter().next()) {
        Some(kv) => RangeDescriptor::decode(&kv.value, range_id).map(Some).map_err(|e| ApiError::Storage(e.to_string())),
        None => Ok(None),
    }
}

/// One look: destroys what [`decide`] allows; returns how many replicas
/// were destroyed.
pub async fn round(backend: &Backend) -> Result<usize, ApiError> {
    let statuses: Vec<RangeStatus> = backend.raft.status().await;
    if statuses.is_empty() {
        return Ok(0);
    }
    let retired = retired(backend).await?;
    let mut catalog = BTreeMap::new();
    for st in statuses.iter().filter(|s| s.dormant && !retired.contains(&s.range_id)).take(MAX_PER_ROUND) {
        if let Some(d) = descriptor(backend, st.range_id).await? {
            catalog.insert(st.range_id, d);
        }
    }
    let local: Vec<(u64, Option<u64>)> = statuses.iter().map(|s| (s.range_id, s.dormant_at)).collect();
    let epochs: Vec<(u64, u64)> = statuses.iter().map(|s| (s.range_id, s.epoch.conf_ver)).collect();
    let listed: BTreeMap<u64, u64> =
        statuses.iter().filter_map(|s| Some((s.range_id, backend.cached_epoch(s.range_id)?.conf_ver))).collect();
    let mut doomed = decide(backend.cfg.node_id, &local, &retired, &catalog);
    for (range_id, why) in superseded(&epochs, &listed) {
        if !doomed.iter().any(|(r, _)| *r == range_id) {
            doomed.push((range_id, why));
        }
    }
    let mut destroyed = 0;
    for (range_id, why) in doomed {
        match backend.raft.destroy_replica(range_id, why).await {
            Ok(Destroyed::Done) => {
                destroyed += 1;
                info!(node = backend.cfg.node_id, range = range_id, ?why, "replica collected: its log and data are deleted");
            }
            Ok(Destroyed::Later) => debug!(range = range_id, "replica put to sleep; collected once its writes are on disk"),
            Err(e) => warn!(range = range_id, ?why, "collecting the replica: {e}"),
        }
    }
    Ok(destroyed)
}

/// Collects replicas every [`COLLECT_EVERY`] while the server runs.
pub async fn run(backend: Arc<Backend>) {
    loop {
        tokio::time::sleep(COLLECT_EVERY).await;
        if let Err(e) = round(&backend).await {
            debug!("replica collection skipped this round: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meridian_storage::{RangeEpoch, ReplicaDesc, ReplicaRole};

    #[test]
    fn a_lineage_a_forced_promotion_superseded_is_collected_dormant_or_not() {
        let next = meridian_raftstore::next_generation(9);
        let catalog = BTreeMap::from([(5, next + 2), (6, 9), (7, next)]);
        // Range 5: this replica predates the promotion; range 6: same
        // generation (an ordinary lag); range 7: empty replica (epoch 0);
        // range 8: not in the catalog.
        let local = [(5, 7), (6, 3), (7, 0), (8, 4)];
        assert_eq!(superseded(&local, &catalog), vec![(5, Retirement::Superseded { conf_ver: next + 2 })]);
        assert!(superseded(&[(5, next + 3)], &catalog).is_empty(), "a replica of the new lineage stays");
    }

    fn desc(range_id: u64, conf_ver: u64, nodes: &[u64]) -> RangeDescriptor {
        RangeDescriptor {
            range_id,
            namespace_id: range_id,
            start: vec![],
            end: vec![],
            epoch: RangeEpoch { conf_ver, version: 1 },
            replicas: nodes.iter().map(|&node_id| ReplicaDesc { node_id, role: ReplicaRole::Voter }).collect(),
        }
    }

    #[test]
    fn only_a_proven_removal_or_a_retired_range_lets_a_replica_go() {
        let local = [
            (1, Some(4)), // the meta range, removed at 4
            (2, None),    // serving
            (3, Some(5)), // removed at 5; the catalog knows epoch 4 only
            (4, Some(5)), // removed at 5; the catalog at 6 holds node 7 again
            (5, Some(5)), // removed at 5; the catalog at 5 leaves it out
            (6, Some(2)), // removed; no descriptor published
            (7, None),    // serving, but its range was retired
        ];
        let retired = BTreeSet::from([7, 2_000]);
        let catalog =
            BTreeMap::from([(1, desc(1, 4, &[1, 2, 3])), (3, desc(3, 4, &[1, 2])), (4, desc(4, 6, &[1, 7])), (5, desc(5, 5, &[1, 2, 3]))]);
        assert_eq!(
            decide(7, &local, &retired, &catalog),
            vec![(1, Retirement::Removed { conf_ver: 4 }), (5, Retirement::Removed { conf_ver: 5 }), (7, Retirement::Retired)]
        );
        assert!(decide(7, &local, &BTreeSet::new(), &BTreeMap::new()).is_empty(), "nothing known, nothing deleted");
    }

    #[test]
    fn a_round_destroys_a_bounded_number() {
        let local: Vec<(u64, Option<u64>)> = (10..10 + 2 * MAX_PER_ROUND as u64).map(|r| (r, None)).collect();
        let retired: BTreeSet<u64> = local.iter().map(|(r, _)| *r).collect();
        assert_eq!(decide(1, &local, &retired, &BTreeMap::new()).len(), MAX_PER_ROUND);
    }
}
