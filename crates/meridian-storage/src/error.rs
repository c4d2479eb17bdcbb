use thiserror::Error;

/// Errors of the storage layer. Corruption is fatal for the range it names;
/// an engine IO error is fatal for the node.
#[derive(Debug, Error)]
pub enum StorageError {
    #[error("engine io error: {0}")]
    Io(String),
    #[error("corrupt record in range {range_id}: {what}")]
    Corrupt { range_id: u64, what: String },
    #[error("log gap in range {range_id}: expected index {expected}, found {found}")]
    LogGap { range_id: u64, expected: u64, found: u64 },
    #[error("range {range_id} is not stored on this node")]
    RangeNotFound { range_id: u64 },
}

pub type StorageResult<T> = Result<T, StorageError>;
