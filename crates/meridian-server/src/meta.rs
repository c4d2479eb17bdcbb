//! The catalog in the meta range (range 1): the cluster id and every range's
//! descriptor, written once when the cluster is bootstrapped and the source
//! of truth for descriptors from then on.
//!
//! ```text
//!  range 1 (KvMachine, no client can route to it)
//!    \0meridian/cluster            → cluster id (u64 BE, random, never 0)
//!    \0meridian/node/<id u64 BE>   → the node's directory record (JSON)
//!    \0meridian/range/<id u64 BE>  → RangeDescriptor::encode()
//! ```
//!
//! Every founding member proposes the same conditional Txn once range 1 has
//! a leader: "if the cluster key does not exist, write it and the
//! descriptors". The first to commit wins; the others read what it wrote,
//! so every member ends up with one random cluster id and one set of
//! descriptors. The server's routes are then built from those descriptors
//! ([`Routing::from_descriptors`]). A membership change publishes the
//! range's new descriptor ([`publish`]); a publication never moves an epoch
//! back.

use std::time::Duration;

use meridian_kv::command as c;
use meridian_membership::NodeRecord;
use meridian_storage::RangeDescriptor;
use tracing::{info, warn};

use crate::backend::Backend;
use crate::error::ApiError;
use crate::routing::{Routing, META_RANGE_ID};

/// Every record of the catalog (and the driver's, the alarms', the
/// namespaces') lives under this prefix of the meta range.
pub const RESERVED_PREFIX: &[u8] = b"\0meridian/";
/// The cluster id's key.
pub const CLUSTER_KEY: &[u8] = b"\0meridian/cluster";
/// Prefix of the descriptor keys.
pub const RANGE_PREFIX: &[u8] = b"\0meridian/range/";
/// Prefix of the node records.
pub const NODE_PREFIX: &[u8] = b"\0meridian/node/";
/// Descriptors read in one catalog read at most (the catalog has one per
/// range; a larger answer is corruption or a bug, refused).
pub const MAX_CATALOG_RANGES: usize = crate::routing::MAX_NAMESPACES + 2;
/// Pause between attempts while range 1 has no leader yet.
const RETRY: Duration = Duration::from_millis(200);
/// How often a member still waiting for the catalog says so.
const WAITING_LOG_EVERY: u32 = 25;

/// What the meta range records of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    pub cluster_id: u64,
    /// By range id.
    pub ranges: Vec<RangeDescriptor>,
}

/// The key of `range_id`'s descriptor.
pub fn range_key(range_id: u64) -> Vec<u8> {
    let mut k = RANGE_PREFIX.to_vec();
    k.extend_from_slice(&range_id.to_be_bytes());
    k
}

fn put(key: Vec<u8>, value: Vec<u8>) -> c::RequestOp {
    c::RequestOp { kind: Some(c::RequestKind::Put(c::PutOp { key, value, ..Default::default() })) }
}

/// The bootstrap Txn: if no cluster id is recorded, record `cluster_id` and
/// `ranges`; either way, read the cluster id back.
pub fn bootstrap_txn(cluster_id: u64, ranges: &[RangeDescriptor]) -> c::TxnOp {
    // CREATE revision 0: the key does not exist.
    let absent = c::Compare { result: 0, target: 1, key: CLUSTER_KEY.to_vec(), number: 0, ..Default::default() };
    let mut success = vec![put(CLUSTER_KEY.to_vec(), cluster_id.to_be_bytes().to_vec())];
    success.extend(ranges.iter().map(|d| put(range_key(d.range_id), d.encode())));
    c::TxnOp { compare: vec![absent], success, failure: vec![] }
}

/// Decodes a catalog from the key-values of range 1 under `\0meridian/`
/// (`None`: no cluster id recorded yet).
pub fn decode(kvs: &[meridian_kv::KeyValue]) -> Result<Option<Catalog>, String> {
    let mut cluster_id = None;
    let mut ranges = Vec::new();
    for kv in kvs {
        if kv.key == CLUSTER_KEY {
            let raw: [u8; 8] = kv.value.as_slice().try_into().map_err(|_| "corrupt cluster id record".to_string())?;
            cluster_id = Some(u64::from_be_bytes(raw));
        } else if let Some(id) = kv.key.strip_prefix(RANGE_PREFIX) {
            let id: [u8; 8] = id.try_into().map_err(|_| format!("corrupt descriptor key {:?}", kv.key))?;
            let id = u64::from_be_bytes(id);
            let d = RangeDescriptor::decode(&kv.value, id).map_err(|e| e.to_string())?;
            if d.range_id != id {
                return Err(format!("descriptor of range {} stored under range {id}", d.range_id));
            }
            ranges.push(d);
        }
    }
    ranges.sort_by_key(|d| d.range_id);
    Ok(cluster_id.map(|cluster_id| Catalog { cluster_id, ranges }))
}

/// The records of range 1 under `prefix`, at most `limit` (more is an
/// error, not a truncated answer).
async fn scan(backend: &Backend, prefix: &[u8], limit: usize, linearizable: bool) -> Result<Vec<meridian_kv::KeyValue>, ApiError> {
    let op =
        c::RangeOp { key: prefix.to_vec(), range_end: crate::routing::prefix_end(prefix), limit: limit as i64 + 1, ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), linearizable).await?;
    let kvs = a.range.map(|r| r.kvs).unwrap_or_default();
    if kvs.len() > limit {
        return Err(ApiError::Internal(format!(
            "the meta range holds more than {limit} records under {:?}",
            String::from_utf8_lossy(prefix)
        )));
    }
    Ok(kvs)
}

/// Reads the catalog from range 1 (`linearizable`: through the leader;
/// otherwise this member's replica).
pub async fn read(backend: &Backend, linearizable: bool) -> Result<Option<Catalog>, ApiError> {
    let mut kvs = scan(backend, CLUSTER_KEY, 1, linearizable).await?;
    kvs.retain(|kv| kv.key == CLUSTER_KEY);
    kvs.extend(scan(backend, RANGE_PREFIX, MAX_CATALOG_RANGES, linearizable).await?);
    decode(&kvs).map_err(ApiError::Storage)
}

/// A node's record as the meta range keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
struct NodeWire {
    id: u64,
    peer_addr: String,
    client_addr: String,
    http_addr: String,
    /// Absent in records written before gossip.
    #[serde(default)]
    gossip_addr: String,
    labels: meridian_membership::Labels,
    role: meridian_membership::NodeRole,
}

/// Every node record's id and peer address, read from the meta range
/// (linearizably if asked): what `member add` checks a new address against,
/// where this member's directory may lag.
pub async fn node_peers(backend: &Backend, linearizable: bool) -> Result<Vec<(u64, String)>, ApiError> {
    let kvs = scan(backend, NODE_PREFIX, meridian_membership::MAX_NODES, linearizable).await?;
    Ok(kvs.iter().filter_map(|kv| serde_json::from_slice::<NodeWire>(&kv.value).ok()).map(|w| (w.id, w.peer_addr)).collect())
}

/// The meta range's key of node `id`'s record.
pub fn node_key(id: u64) -> Vec<u8> {
    let mut k = NODE_PREFIX.to_vec();
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// Records this node (its addresses, labels and role) in the meta range, so
/// every member's directory learns them.
pub async fn register_node(backend: &Backend, n: &NodeRecord) -> Result<(), ApiError> {
    let wire = NodeWire {
        id: n.id,
        peer_addr: n.peer_addr.clone(),
        client_addr: n.client_addr.clone(),
        http_addr: n.http_addr.clone(),
        gossip_addr: n.gossip_addr.clone(),
        labels: n.labels.clone(),
        role: n.role,
    };
    let value = serde_json::to_vec(&wire).map_err(|e| ApiError::Internal(e.to_string()))?;
    backend.execute(META_RANGE_ID, c::Op::Put(c::PutOp { key: node_key(n.id), value, ..Default::default() })).await?;
    Ok(())
}

/// Every node record of the meta range, into `backend`'s directory. A
/// record that does not decode or fit is skipped with a warning (advice,
/// not authority: nothing depends on it for safety).
pub async fn refresh_nodes(backend: &Backend) -> Result<usize, ApiError> {
    let kvs = scan(backend, NODE_PREFIX, meridian_membership::MAX_NODES, false).await?;
    let mut learned = 0;
    for kv in kvs {
        let rec = match serde_json::from_slice::<NodeWire>(&kv.value) {
            // This node knows itself better than its record (which may
            // predate a --relabel that is being registered).
            Ok(w) if w.id == backend.cfg.node_id => continue,
            Ok(w) => NodeRecord {
                id: w.id,
                peer_addr: w.peer_addr,
                client_addr: w.client_addr,
                http_addr: w.http_addr,
                gossip_addr: w.gossip_addr,
                labels: w.labels,
                role: w.role,
                liveness: meridian_membership::Liveness::Unknown,
            },
            Err(e) => {
                warn!("undecodable node record {:?}: {e}", kv.key);
                continue;
            }
        };
        match backend.learn_node(rec) {
            Ok(()) => learned += 1,
            Err(e) => warn!("node record refused: {e}"),
        }
    }
    Ok(learned)
}

/// The catalog, bootstrapping it from `local` (this member's descriptors)
/// with a fresh random cluster id if no member did yet. Retries while range 1
/// has no leader; gives up only on errors a retry cannot cure.
pub async fn load_or_bootstrap(backend: &Backend, local: &[RangeDescriptor]) -> Result<Catalog, ApiError> {
    if let Ok(Some(c)) = read(backend, false).await {
        return Ok(c);
    }
    let fresh_id = loop {
        let id: u64 = rand::random();
        if id != 0 {
            break id;
        }
    };
    let txn = bootstrap_txn(fresh_id, local);
    let mut attempts = 0u32;
    loop {
        match backend.execute(META_RANGE_ID, c::Op::Txn(txn.clone())).await {
            Ok(_) => match read(backend, true).await {
                Ok(Some(c)) => return Ok(c),
                Ok(None) => return Err(ApiError::Internal("the catalog bootstrap committed but reads back empty".into())),
                Err(e) if retryable(&e) => {}
                Err(e) => return Err(e),
            },
            Err(e) if retryable(&e) => {}
            Err(e) => return Err(e),
        }
        attempts += 1;
        if attempts.is_multiple_of(WAITING_LOG_EVERY) {
            info!(attempts, "waiting for the meta range to elect a leader to record the catalog");
        }
        tokio::time::sleep(RETRY).await;
    }
}

fn retryable(e: &ApiError) -> bool {
    e.is_retryable()
}

/// Records `desc` as its range's descriptor, unless the catalog already
/// holds a newer one (an epoch never goes back): then answers that one.
/// Best effort: the caller logs a failure; the next change publishes again.
pub async fn publish(backend: &Backend, desc: &RangeDescriptor) -> Result<Option<RangeDescriptor>, ApiError> {
    let key = range_key(desc.range_id);
    let op = c::RangeOp { key: key.clone(), ..Default::default() };
    let a = backend.query(META_RANGE_ID, c::QueryKind::Range(op), true).await?;
    let current = a.range.and_then(|r| r.kvs.into_iter().next());
    let guard = match &current {
        Some(kv) => {
            let old = RangeDescriptor::decode(&kv.value, desc.range_id).map_err(|e| ApiError::Storage(e.to_string()))?;
            if old.epoch.conf_ver >= desc.epoch.conf_ver && old.epoch.version >= desc.epoch.version {
                return Ok(Some(old)); // as new or newer already
            }
            // MOD revision unchanged since the read: no publication raced us.
            c::Compare { result: 0, target: 2, key: key.clone(), number: kv.mod_revision, ..Default::default() }
        }
        None => c::Compare { result: 0, target: 1, key: key.clone(), number: 0, ..Default::default() },
    };
    // A dropped namespace's range is retired: its sealed replicas may still
    // report and change membership, but it never returns to the catalog.
    let retired = crate::namespace::retired_key(desc.range_id);
    let not_retired = c::Compare { result: 0, target: 1, key: retired, number: 0, ..Default::default() };
    let txn = c::TxnOp { compare: vec![guard, not_retired], success: vec![put(key, desc.encode())], failure: vec![] };
    match backend.execute(META_RANGE_ID, c::Op::Txn(txn)).await? {
        c::Outcome { kind: Some(c::OutcomeKind::Txn(t)), .. } if !t.succeeded => {
            warn!(
                range = desc.range_id,
                "descriptor not published: another publication raced it (the next change publishes again), or the range is retired"
            );
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// Installs `catalog` in `backend`: the cluster id, the routes built from
/// its descriptors and their epochs in the route cache.
pub fn install(backend: &Backend, catalog: &Catalog) -> Result<(), ApiError> {
    let routing = Routing::from_descriptors(&catalog.ranges).map_err(|e| ApiError::Storage(e.to_string()))?;
    backend.install_routes(catalog.cluster_id, routing, &catalog.ranges);
    Ok(())
}

#[cfg(test)]
mod tests {
    use meridian_storage::{RangeEpoch, ReplicaDesc, ReplicaRole};

    use super::*;

    fn desc(range_id: u64, start: &[u8], end: &[u8]) -> RangeDescriptor {
        RangeDescriptor {
            range_id,
            namespace_id: range_id,
            start: start.to_vec(),
            end: end.to_vec(),
            epoch: RangeEpoch { conf_ver: 1, version: 1 },
            replicas: vec![ReplicaDesc { node_id: 1, role: ReplicaRole::Voter }],
        }
    }

    fn kvs_of(txn: &c::TxnOp) -> Vec<meridian_kv::KeyValue> {
        txn.success
            .iter()
            .filter_map(|r| match &r.kind {
                Some(c::RequestKind::Put(p)) => {
                    Some(meridian_kv::KeyValue { key: p.key.clone(), value: p.value.clone(), ..Default::default() })
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn the_bootstrap_txn_records_what_decode_reads() {
        let ranges = vec![desc(1, b"", b""), desc(2, b"", b""), desc(3, b"/a/", b"/a0")];
        let txn = bootstrap_txn(0xfeed, &ranges);
        assert_eq!(txn.compare.len(), 1, "written only if no cluster id is recorded yet");
        let catalog = decode(&kvs_of(&txn)).unwrap().expect("a cluster id");
        assert_eq!(catalog, Catalog { cluster_id: 0xfeed, ranges });
        assert_eq!(decode(&[]).unwrap(), None, "nothing recorded yet");
    }

    #[test]
    fn a_corrupt_catalog_is_an_error_not_a_guess() {
        let bad_id = meridian_kv::KeyValue { key: CLUSTER_KEY.to_vec(), value: vec![1, 2], ..Default::default() };
        assert!(decode(&[bad_id]).is_err());
        let misplaced = meridian_kv::KeyValue { key: range_key(4), value: desc(3, b"/a/", b"/a0").encode(), ..Default::default() };
        assert!(decode(&[misplaced]).is_err());
    }
}
