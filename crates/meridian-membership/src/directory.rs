//! The directory itself: a bounded map from node id to [`NodeRecord`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::check_host_port;

/// Nodes one directory holds at most (each costs a record and, on every
/// node, a peer connection when it holds a replica with us).
pub const MAX_NODES: usize = 4096;

/// Why the directory refused a record (it changed nothing).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DirectoryError {
    /// Node ids start at 1.
    #[error("node id 0 is not a valid node id")]
    ZeroId,
    /// The directory holds [`MAX_NODES`] nodes and this one is new.
    #[error("the directory holds {max} nodes already; node {node_id} does not fit")]
    Full {
        /// The node that did not fit.
        node_id: u64,
        /// The bound.
        max: usize,
    },
    /// An address is not `host:port`.
    #[error("node {node_id}: {field} address {addr:?} is not host:port ({reason})")]
    InvalidAddress {
        /// The node whose record it is.
        node_id: u64,
        /// Which address: `peer`, `client`, `http` or `gossip`.
        field: &'static str,
        /// The address as given.
        addr: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// What a node does. Witnesses vote and keep the log but serve no data
/// (the geography work); every node is `Data` until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Holds replicas with data and serves clients.
    #[default]
    Data,
    /// Votes and keeps the log of the ranges it is in; keeps no data.
    Witness,
}

/// Where a node is. The placement driver spreads replicas over them.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Labels {
    /// The cloud region (or data centre).
    pub region: String,
    /// The availability zone inside the region.
    pub zone: String,
    /// The machine.
    pub host: String,
}

/// How alive a node seems to this one: advice for routing and placement,
/// never used for a safety decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Liveness {
    /// Not heard of yet.
    #[default]
    Unknown,
    /// Heard from lately.
    Alive,
    /// Not heard from lately.
    Suspect,
    /// Considered gone (by the failure detector, to come).
    Dead,
}

/// One node as the directory knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's id (never 0).
    pub id: u64,
    /// `host:port` others dial for raft traffic.
    pub peer_addr: String,
    /// `host:port` of its gRPC (etcd and meridian.v1) endpoint.
    pub client_addr: String,
    /// `host:port` of its HTTP endpoint.
    pub http_addr: String,
    /// `host:port` of its gossip socket (empty: not known yet).
    pub gossip_addr: String,
    /// Where it is.
    pub labels: Labels,
    /// What it does.
    pub role: NodeRole,
    /// How alive it seems to this node.
    pub liveness: Liveness,
}

impl NodeRecord {
    fn check(&self) -> Result<(), DirectoryError> {
        if self.id == 0 {
            return Err(DirectoryError::ZeroId);
        }
        let gossip = (!self.gossip_addr.is_empty()).then_some(("gossip", &self.gossip_addr));
        for (field, addr) in [("peer", &self.peer_addr), ("client", &self.client_addr), ("http", &self.http_addr)].into_iter().chain(gossip)
        {
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
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `record`, or replaces what the directory had for its id
    /// (addresses and labels; the liveness and gossip address it had are
    /// kept unless the new record knows better). Returns whether anything changed.
    pub fn upsert(&mut self, mut record: NodeRecord) -> Result<bool, DirectoryError> {
        record.check()?;
        match self.nodes.get(&record.id) {
            Some(old) => {
                if record.liveness == Liveness::Unknown {
                    record.liveness = old.liveness;
                }
                if record.gossip_addr.is_empty() {
                    record.gossip_addr = old.gossip_addr.clone();
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

    /// The record of `id`, if known.
    pub fn get(&self, id: u64) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// Whether `id` is known.
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

    /// `nodes` ordered for a choice between equivalent nodes (request
    /// forwarding, endpoint choice): alive first, then unknown (or not in
    /// the directory), suspect, dead; each group in the order given.
    pub fn live_first(&self, nodes: &[u64]) -> Vec<u64> {
        let rank = |n: &u64| match self.get(*n).map_or(Liveness::Unknown, |r| r.liveness) {
            Liveness::Alive => 0,
            Liveness::Unknown => 1,
            Liveness::Suspect => 2,
            Liveness::Dead => 3,
        };
        let mut v = nodes.to_vec();
        v.sort_by_key(rank);
        v
    }

    /// Nodes in id order.
    pub fn iter(&self) -> impl Iterator<Item = &NodeRecord> {
        self.nodes.values()
    }

    /// Every known id, in order.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// How many nodes are known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is known.
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
            gossip_addr: String::new(),
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
    fn live_first_orders_alive_unknown_suspect_dead_and_keeps_the_given_order_within() {
        let mut d = NodeDirectory::new();
        for id in 1..=5 {
            d.upsert(node(id)).unwrap();
        }
        d.set_liveness(1, Liveness::Dead);
        d.set_liveness(2, Liveness::Suspect);
        d.set_liveness(4, Liveness::Alive);
        d.set_liveness(5, Liveness::Alive);
        assert_eq!(d.live_first(&[1, 2, 3, 5, 4, 9]), vec![5, 4, 3, 9, 2, 1]);
        assert_eq!(d.live_first(&[]), Vec::<u64>::new());
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
