use meridian_raftstore::RaftstoreError;
use meridian_storage::StorageError;
use meridian_transport::TransportError;
use thiserror::Error;

/// Errors of a node and of requests made through a
/// [`NodeHandle`](crate::NodeHandle).
///
/// The store's own answers stay reachable as [`NodeError::Raft`] (e.g.
/// `NodeError::Raft(RaftstoreError::NotLeader { .. })`).
#[derive(Debug, Error)]
pub enum NodeError {
    /// The store refused or failed the request; see
    /// [`RaftstoreError::is_retryable`].
    #[error(transparent)]
    Raft(#[from] RaftstoreError),
    /// Opening the engine failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// Starting the transport failed.
    #[error("transport: {0}")]
    Transport(#[from] TransportError),
    /// No answer within the request deadline. For a proposal the outcome is
    /// unknown: it may still be applied.
    #[error("{what} timed out")]
    Timeout { what: String },
    /// The node is shut down, or stopped itself after a fatal storage error
    /// (logged at error level).
    #[error("node stopped")]
    Stopped,
    #[error("invalid node configuration: {0}")]
    Config(String),
    /// Creating the data directory, the store thread or its runtime failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl NodeError {
    /// True if the same request may safely be sent again (possibly to
    /// another node): the store said so. A [`NodeError::Timeout`] is not:
    /// the request may have taken effect.
    pub fn is_retryable(&self) -> bool {
        matches!(self, NodeError::Raft(e) if e.is_retryable())
    }

    /// The leader the store pointed to, for `NotLeader`.
    pub fn leader_hint(&self) -> Option<u64> {
        match self {
            NodeError::Raft(RaftstoreError::NotLeader { leader_hint, .. }) => *leader_hint,
            _ => None,
        }
    }
}
