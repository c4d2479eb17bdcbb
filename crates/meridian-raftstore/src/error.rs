use meridian_storage::{RangeEpoch, StorageError};
use thiserror::Error;

/// Errors the store returns to callers. [`RaftstoreError::is_retryable`]
/// tells a client whether trying again (possibly elsewhere) is safe.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RaftstoreError {
    #[error("range {range_id} has no replica on this node")]
    RangeNotFound { range_id: u64 },
    #[error("not the leader of range {range_id} (leader hint: {leader_hint:?})")]
    NotLeader { range_id: u64, leader_hint: Option<u64> },
    /// The entry was replaced by another leader's: it was certainly not
    /// applied, so the request can be retried.
    #[error("proposal in range {range_id} was dropped by a leader change")]
    ProposalDropped { range_id: u64 },
    /// The replica was overwritten by a snapshot before the proposal's entry
    /// was applied here: it may or may not have taken effect.
    #[error("outcome of proposal in range {range_id} is unknown")]
    OutcomeUnknown { range_id: u64 },
    #[error("read in range {range_id} timed out waiting for a quorum")]
    ReadTimeout { range_id: u64 },
    #[error("range {range_id} has too many pending requests ({pending})")]
    TooBusy { range_id: u64, pending: usize },
    #[error("invalid request for range {range_id}: {reason}")]
    InvalidRequest { range_id: u64, reason: String },
    #[error("range {range_id} was removed from this node")]
    RangeRemoved { range_id: u64 },
    /// The replica is moving a received snapshot into place: it serves
    /// nothing until that is done (a moment; retry, or ask another).
    #[error("range {range_id} is installing a snapshot")]
    SnapshotInstalling { range_id: u64 },
    /// The request named another epoch than the replica's: the caller's
    /// route is stale (a membership change, a split or a merge happened
    /// since). Refresh the route and retry.
    #[error("range {range_id} is at epoch {current:?}, not the one the request names")]
    EpochMismatch { range_id: u64, current: RangeEpoch },
    /// A key of the request lies outside the range's span: the caller
    /// routed it to the wrong range. Refresh the route and retry.
    #[error("key {key:?} is not in range {range_id}")]
    KeyNotInRange { range_id: u64, key: Vec<u8> },
    /// The data directory cannot be used by this node or this build
    /// (another node's, another on-disk format); nothing was changed.
    #[error("incompatible data directory: {reason}")]
    IncompatibleData { reason: String },
    /// Fatal, not retryable: the engine failed (IO) or holds a corrupt
    /// record. The node stops rather than serve from a store it cannot
    /// trust; callers see a stopped node and go elsewhere.
    #[error("storage: {0}")]
    Storage(String),
}

impl RaftstoreError {
    /// True for the errors after which this store must not go on
    /// ([`RaftstoreError::Storage`]); kept apart from the retryable ones.
    pub fn is_fatal(&self) -> bool {
        matches!(self, RaftstoreError::Storage(_) | RaftstoreError::IncompatibleData { .. })
    }

    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            RaftstoreError::NotLeader { .. }
                | RaftstoreError::ProposalDropped { .. }
                | RaftstoreError::ReadTimeout { .. }
                | RaftstoreError::TooBusy { .. }
                | RaftstoreError::RangeRemoved { .. }
                | RaftstoreError::SnapshotInstalling { .. }
                | RaftstoreError::EpochMismatch { .. }
                | RaftstoreError::KeyNotInRange { .. }
        )
    }
}

impl From<StorageError> for RaftstoreError {
    fn from(e: StorageError) -> Self {
        RaftstoreError::Storage(e.to_string())
    }
}
