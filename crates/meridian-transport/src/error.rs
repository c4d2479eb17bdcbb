use thiserror::Error;

/// Why the transport could not carry, accept or set something up.
#[derive(Debug, Error)]
pub enum TransportError {
    /// A peer's frame is larger than [`crate::MAX_FRAME_BYTES`]; refused
    /// before anything is allocated for it.
    #[error("frame of {len} bytes from node {from_node} exceeds the limit")]
    FrameTooLarge {
        /// The sender.
        from_node: u64,
        /// The frame's length in bytes.
        len: usize,
    },
    /// A frame or a raft message in it does not decode.
    #[error("malformed message from node {from_node}: {reason}")]
    Malformed {
        /// The sender.
        from_node: u64,
        /// What did not decode.
        reason: String,
    },
    /// A send to a node with no address.
    #[error("node {node_id} has no known address")]
    UnknownPeer {
        /// The node without an address.
        node_id: u64,
    },
    /// Certificates or keys that do not load or do not fit together.
    #[error("tls configuration: {0}")]
    Tls(String),
    /// A socket or stream error.
    #[error("io: {0}")]
    Io(String),
    /// Dialling a peer failed (resolving, handshake, or timeout).
    #[error("connecting to node {node_id}: {reason}")]
    Connect {
        /// The peer dialled.
        node_id: u64,
        /// Why the dial failed.
        reason: String,
    },
    /// A peer's certificate names another node than the one it claims.
    #[error("peer certificate is not valid for node {claimed_node}")]
    PeerIdentity {
        /// The node the peer claimed to be.
        claimed_node: u64,
    },
    /// A transport configuration that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}
