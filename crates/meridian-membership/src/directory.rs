//! The directory itself: a bounded map from node id to [`NodeRecord`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::check_host_port;

/// Nodes one directory holds at most (each costs a record and, on every
/// node, a peer connection when it holds a replica with us).
pub const MAX_NODES: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DirectoryError {
    #[error("node id 0 is not a valid node id")]
    ZeroId,
    #[error("the directory holds {max} nodes already; node {node_id} does not fit")]
    Full { node_id: u64, max: usize },
    #[error("node {node_id}: {field} address {addr:?} is not host:port ({reason})")]
    InvalidAddress { node_id: u64, field: &'static str, addr: String, reason: String },
}

/// What a node does. Witnesses vote and keep the log but serve no data
/// (the geography work); every node is `Data` until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    #[default]
    Data,
    Witness,
}

/// Where a node is. The placement driver spreads replicas over them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Labels {
    pub region: String,
    pub zone: String,
    pub host: String,
}

/// How alive a node seems to this one: advice for routing and placement,
/// never used for a safety decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Liveness {
    /// Not heard of yet.
    #[default]
    Unknown,
    Alive,
    /// Not heard from lately.
    Suspect,
    Dead,
}

/// One node as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub id: u64,
    /// `host:port` others dial for raft traffic.
    pub peer_addr: String,
    /// `host:port` of its gRPC (etcd and meridian.v1) endpoint.
    pub client_addr: String,
    /// `host:port` of its HTTP endpoint.
    pub http_addr: String,
    pub labels: Labels,
    pub role: NodeRole,
    pub liveness: Liveness,
}

impl NodeRecord {
    fn check(&self) -> Result<(), DirectoryError> {
        if self.id == 0 {
            return Err(DirectoryError::ZeroId);
        }
        for (field, addr) in [("peer", &self.peer_addr), ("client", &self.client_addr), ("http", &self.http_addr)] {
            check_host_port(addr).map_err(|reason| DirectoryError::InvalidAddress {
                node_id: self.id,
                field,
                addr: addr.clone(),
                reason,
            })?;
        }
        Ok(())
    }
}

/// Every known node by id, bounded by [`MAX_NODES`]. A failed update
/// changes nothing.
#[derive(Debug, Clone, Default)]
pub struct NodeDirectory {
    nodes: BTreeMap<u64, NodeRecord>,
}

impl NodeDirectory {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `record`, or replaces what the directory had for its id
    /// (addresses and labels; the liveness it had is kept unless the new
    /// record knows better). Returns whether anything changed.
    pub fn upsert(&mut self, mut record: NodeRecord) -> Result<bool, DirectoryError> {
        record.check()?;
        match self.nodes.get(&record.id) {
            Some(old) => {
                if record.liveness == Liveness::Unknown {
                    record.liveness = old.liveness;
                }
                let changed = *old != record;
                self.nodes.insert(record.id, record);
                Ok(changed)
            }
            None if self.nodes.len() >= MAX_NODES => Err(DirectoryError::Full { node_id: record.id, max: MAX_NODES }),
            None => {
                self.nodes.insert(record.id, record);
                Ok(true)
            }
        }
    }

    pub fn get(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.nodes.contains_key(&id)
    }

    /// Forgets `id` (it left the cluster for good).
    pub fn remove(&mut self, id: u64) -> Option<NodeRecord> {
        self.nodes.remove(&id)
    }

    /// Records what this node now thinks of `id`'s liveness; false if the
    /// directory does not know it.
    pub fn set_liveness(&mut self, id: u64, liveness: Liveness) -> bool {
        match self.nodes.get_mut(&id) {
            Some(n) => {
                n.liveness = liveness;
                true
            }
            None => false,
        }
    }

    /// Nodes in id order.
    pub fn iter(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64) -> NodeRecord {
        NodeRecord {
            id,
            peer_addr: format!("meridian-{id}.meridian-peer:2380"),
            client_addr: format!("127.0.0.1:{}", 2370 + id),
            http_addr: format!("localhost:{}", 8080 + id),
            labels: Labels { region: "eu".into(), zone: format!("eu-{id}"), host: format!("h{id}") },
            role: NodeRole::Data,
            liveness: Liveness::Unknown,
        }
    }

    #[test]
    fn upsert_adds_replaces_and_keeps_what_it_knew_of_liveness() {
        let mut d = NodeDirectory::new();
        assert_eq!(d.upsert(node(2)), Ok(true));
        assert_eq!(d.upsert(node(2)), Ok(false), "the same record changes nothing");
        assert!(d.set_liveness(2, Liveness::Alive));
        let mut moved = node(2);
        moved.client_addr = "10.0.0.2:2379".into();
        assert_eq!(d.upsert(moved), Ok(true));
        assert_eq!(d.get(2).unwrap().client_addr, "10.0.0.2:2379");
        assert_eq!(d.get(2).unwrap().liveness, Liveness::Alive, "an address change is not news about liveness");
        assert!(!d.set_liveness(9, Liveness::Dead), "unknown nodes are not invented");
    }

    #[test]
    fn bad_records_are_refused_and_change_nothing() {
        let mut d = NodeDirectory::new();
        d.upsert(node(1)).unwrap();
        let before = d.get(1).cloned();
        let mut bad = node(1);
        bad.peer_addr = "no-port".into();
        assert!(matches!(d.upsert(bad), Err(DirectoryError::InvalidAddress { node_id: 1, field: "peer", .. })));
        assert_eq!(d.get(1).cloned(), before);
        assert_eq!(d.upsert(node(0)), Err(DirectoryError::ZeroId));
    }

    #[test]
    fn the_directory_is_bounded_not_capped_at_nine() {
        let mut d = NodeDirectory::new();
        for id in 1..=MAX_NODES as u64 {
            d.upsert(node(id)).unwrap();
        }
        assert_eq!(d.len(), MAX_NODES);
        assert_eq!(d.upsert(node(MAX_NODES as u64 + 1)), Err(DirectoryError::Full { node_id: MAX_NODES as u64 + 1, max: MAX_NODES }));
        assert_eq!(d.upsert(node(7)), Ok(false), "known nodes still update when full");
    }
}
