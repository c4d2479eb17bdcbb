use thiserror::Error;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("frame of {len} bytes from node {from_node} exceeds the limit")]
    FrameTooLarge { from_node: u64, len: usize },
    #[error("malformed message from node {from_node}: {reason}")]
    Malformed { from_node: u64, reason: String },
    #[error("node {node_id} has no known address")]
    UnknownPeer { node_id: u64 },
    #[error("tls configuration: {0}")]
    Tls(String),
    #[error("io: {0}")]
    Io(String),
    #[error("connecting to node {node_id}: {reason}")]
    Connect { node_id: u64, reason: String },
    #[error("peer certificate is not valid for node {claimed_node}")]
    PeerIdentity { claimed_node: u64 },
    #[error("invalid configuration: {0}")]
    Config(String),
}
