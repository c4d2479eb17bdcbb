//! A node's identity — its id, labels and role — as persisted beside its
//! data, and the rule for a restart with other labels.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::directory::{Labels, NodeRole};

/// What a node is, persisted with its data: a data directory belongs to one
/// node, in one place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// The node's id.
    pub node_id: u64,
    /// Its labels, as replicas were placed by them.
    pub labels: Labels,
    /// Its role (never changes).
    pub role: NodeRole,
}

/// Why a node may not start on a data directory with this identity.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum IdentityError {
    /// The directory is another node's.
    #[error("the data directory belongs to node {stored}, not node {configured}")]
    OtherNode {
        /// The id the directory recorded.
        stored: u64,
        /// The id configured now.
        configured: u64,
    },
    #[error(
        "node {node_id} was started with labels {stored:?} and is configured with {configured:?}; \
         replicas were placed by the old labels: start it with --relabel to change them"
    )]
    /// Other labels than recorded, without `--relabel`.
    Relabel {
        /// The node.
        node_id: u64,
        /// The labels the directory recorded.
        stored: Box<Labels>,
        /// The labels configured now.
        configured: Box<Labels>,
    },
    /// Another role than recorded.
    #[error("node {node_id} was started as a {stored:?} node and is configured as a {configured:?} node; a node's role cannot change")]
    Role {
        /// The node.
        node_id: u64,
        /// The role the directory recorded.
        stored: NodeRole,
        /// The role configured now.
        configured: NodeRole,
    },
}

impl NodeIdentity {
    /// The identity to persist when `self` (the configuration) starts on a
    /// data directory that recorded `stored` (`None`: a new directory).
    /// `Ok(None)`: nothing to write. Other labels are refused unless
    /// `relabel`; another node id or role always is.
    pub fn reconcile(&self, stored: Option<&NodeIdentity>, relabel: bool) -> Result<Option<NodeIdentity>, IdentityError> {
        let Some(stored) = stored else { return Ok(Some(self.clone())) };
        if stored.node_id != self.node_id {
            return Err(IdentityError::OtherNode { stored: stored.node_id, configured: self.node_id });
        }
        if stored.role != self.role {
            return Err(IdentityError::Role { node_id: self.node_id, stored: stored.role, configured: self.role });
        }
        if stored.labels == self.labels {
            return Ok(None);
        }
        if !relabel {
            return Err(IdentityError::Relabel {
                node_id: self.node_id,
                stored: Box::new(stored.labels.clone()),
                configured: Box::new(self.labels.clone()),
            });
        }
        Ok(Some(self.clone()))
    }
}

/// Checks that `addr` is `host:port`: a DNS name, an IPv4 address or a
/// bracketed IPv6 address, and a port 1..=65535. Names are not resolved
/// here (whoever dials resolves them, at every dial).
pub fn check_host_port(addr: &str) -> Result<(), String> {
    let (host, port) = addr.rsplit_once(':').ok_or("no :port")?;
    let port: u16 = port.parse().map_err(|_| format!("port {port:?} is not a number 1..=65535"))?;
    if port == 0 {
        return Err("port 0".into());
    }
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().map(|_| ()).map_err(|_| format!("{v6:?} is not an IPv6 address"));
    }
    if host.is_empty() || host.len() > 253 {
        return Err("the host is empty or longer than 253 bytes".into());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if host.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!("{host:?} is not a DNS name or an IP address"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(zone: &str) -> NodeIdentity {
        NodeIdentity { node_id: 3, labels: Labels { region: "eu".into(), zone: zone.into(), host: "h3".into() }, role: NodeRole::Data }
    }

    #[test]
    fn a_restart_with_other_labels_is_refused_unless_relabel() {
        assert_eq!(id("a").reconcile(None, false), Ok(Some(id("a"))), "a new directory records the identity");
        assert_eq!(id("a").reconcile(Some(&id("a")), false), Ok(None), "same labels: nothing to write");
        let err = id("b").reconcile(Some(&id("a")), false).unwrap_err();
        assert!(matches!(err, IdentityError::Relabel { node_id: 3, .. }));
        assert!(err.to_string().contains("--relabel"), "{err}");
        assert_eq!(id("b").reconcile(Some(&id("a")), true), Ok(Some(id("b"))));
        let mut other = id("a");
        other.node_id = 4;
        assert_eq!(other.reconcile(Some(&id("a")), true), Err(IdentityError::OtherNode { stored: 3, configured: 4 }));
        let mut witness = id("a");
        witness.role = NodeRole::Witness;
        assert!(matches!(witness.reconcile(Some(&id("a")), true), Err(IdentityError::Role { .. })));
    }

    #[test]
    fn addresses_are_host_port_with_names_allowed() {
        for ok in ["127.0.0.1:2379", "localhost:2379", "meridian-0.meridian-peer.ns.svc.cluster.local:2380", "[::1]:2379"] {
            assert_eq!(check_host_port(ok), Ok(()), "{ok}");
        }
        for bad in ["localhost", ":2379", "host:0", "host:99999", "bad_host:1", "-x:1", "[zz]:1", "a..b:1"] {
            assert!(check_host_port(bad).is_err(), "{bad}");
        }
    }
}
