use meridian_storage::{RangeEpoch, StorageError};
use thiserror::Error;

/// Errors the store returns to callers. [`RaftstoreError::is_retryable`]
/// tells a client whether trying again (possibly elsewhere) is safe.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum RaftstoreError {
    /// This node holds no replica of the range (it never had one, or not
    /// yet: a new replica appears with its leader's first message). Not
    /// retryable here: ask another node.
    #[error("range {range_id} has no replica on this node")]
    RangeNotFound {
        /// The range asked for.
        range_id: u64,
    },
    /// This replica is not the range's leader (for a proposal it may
    /// forward: knows of no leader), or raft-rs refused the request during
    /// a leadership change; the request never reached the log. Retryable,
    /// preferably at the hinted node.
    #[error("not the leader of range {range_id} (leader hint: {leader_hint:?})")]
    NotLeader {
        /// The range asked for.
        range_id: u64,
        /// The node this replica believes leads the range (the transfer
        /// target while leadership moves); `None` if it knows of none.
        leader_hint: Option<u64>,
    },
    /// The entry was replaced by another leader's: it was certainly not
    /// applied, so the request can be retried.
    #[error("proposal in range {range_id} was dropped by a leader change")]
    ProposalDropped {
        /// The range of the proposal.
        range_id: u64,
    },
    /// The replica was overwritten by a snapshot before the proposal's entry
    /// was applied here: it may or may not have taken effect.
    #[error("outcome of proposal in range {range_id} is unknown")]
    OutcomeUnknown {
        /// The range of the proposal.
        range_id: u64,
    },
    /// A ReadIndex read got no confirmed index after all its re-sends
    /// ([`crate::StoreConfig::read_max_retries`]). Retryable.
    #[error("read in range {range_id} timed out waiting for a quorum")]
    ReadTimeout {
        /// The range of the read.
        range_id: u64,
    },
    /// The replica holds [`crate::StoreConfig::max_pending_per_range`]
    /// requests already, or the leader holds too many uncommitted bytes
    /// (`MAX_UNCOMMITTED_BYTES`); nothing was proposed. Retryable, after a
    /// pause.
    #[error("range {range_id} has too many pending requests ({pending})")]
    TooBusy {
        /// The range asked for.
        range_id: u64,
        /// Proposals and reads the replica had pending.
        pending: usize,
    },
    /// The request can never succeed as given: an empty command, a
    /// malformed membership change, a leader transfer to a non-voter, a
    /// campaign raft-rs refused, or a raft configuration that does not
    /// validate. Not retryable.
    #[error("invalid request for range {range_id}: {reason}")]
    InvalidRequest {
        /// The range asked for.
        range_id: u64,
        /// What is wrong with the request.
        reason: String,
    },
    /// The replica was removed from the range's configuration (it is
    /// dormant here until added back), or was removed while the request
    /// waited. Retryable at another replica.
    #[error("range {range_id} was removed from this node")]
    RangeRemoved {
        /// The range asked for.
        range_id: u64,
    },
    /// The replica is moving a received snapshot into place: it serves
    /// nothing until that is done (a moment; retry, or ask another).
    #[error("range {range_id} is installing a snapshot")]
    SnapshotInstalling {
        /// The range asked for.
        range_id: u64,
    },
    /// The request named another epoch than the replica's: the caller's
    /// route is stale (a membership change, a split or a merge happened
    /// since). Refresh the route and retry.
    #[error("range {range_id} is at epoch {current:?}, not the one the request names")]
    EpochMismatch {
        /// The range asked for.
        range_id: u64,
        /// The replica's epoch, for the caller to compare with its route.
        current: RangeEpoch,
    },
    /// A key of the request lies outside the range's span: the caller
    /// routed it to the wrong range. Refresh the route and retry.
    #[error("key {key:?} is not in range {range_id}")]
    KeyNotInRange {
        /// The range asked for.
        range_id: u64,
        /// The start of the first key interval outside the span.
        key: Vec<u8>,
    },
    /// The data directory cannot be used by this node or this build
    /// (another node's, another on-disk format); nothing was changed.
    #[error("incompatible data directory: {reason}")]
    IncompatibleData {
        /// Whose data directory it is or which format it holds, and what
        /// to do about it.
        reason: String,
    },
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

    /// True for the errors after which the request may be sent again (here
    /// or to another replica) without risk of applying it twice: it
    /// certainly did not take effect. False for the fatal ones, for
    /// [`RaftstoreError::OutcomeUnknown`] (it may have taken effect) and for
    /// those that cannot succeed as sent ([`RaftstoreError::RangeNotFound`],
    /// [`RaftstoreError::InvalidRequest`]).
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
