use thiserror::Error;

/// Errors of the storage layer. Corruption is fatal for the range it names;
/// an engine IO error is fatal for the node.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The engine failed (a read, write or sync, or its worker thread is
    /// gone); the message is the engine's. The node cannot trust its
    /// storage any more.
    #[error("engine io error: {0}")]
    Io(String),
    /// A record of the range (stored, or a received snapshot header) failed
    /// its checks: bad checksum or version, truncated, or values that
    /// cannot be right (e.g. a commit index outside the log).
    #[error("corrupt record in range {range_id}: {what}")]
    Corrupt {
        /// The range the record belongs to.
        range_id: u64,
        /// Which record and what is wrong with it.
        what: String,
    },
    /// The range's stored log is not contiguous: an entry is missing.
    #[error("log gap in range {range_id}: expected index {expected}, found {found}")]
    LogGap {
        /// The range whose log has the gap.
        range_id: u64,
        /// The log index that should have come next.
        expected: u64,
        /// The log index found instead: the next stored entry's, 0 for a
        /// malformed log key, or the end of the requested span when a read
        /// ran out of entries before it.
        found: u64,
    },
    /// The engine holds no raft state for the range.
    #[error("range {range_id} is not stored on this node")]
    RangeNotFound {
        /// The range asked for.
        range_id: u64,
    },
}

/// A result whose error is a [`StorageError`].
pub type StorageResult<T> = Result<T, StorageError>;
