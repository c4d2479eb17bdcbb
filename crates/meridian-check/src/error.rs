use std::path::PathBuf;

use thiserror::Error;

/// Why a history could not be checked, saved or loaded. A history that is
/// checked but not linearizable is not an error: see
/// [`CheckResult::Violation`](crate::CheckResult::Violation).
#[derive(Debug, Error)]
pub enum CheckError {
    /// An operation returns before it was invoked: the recorder is broken.
    #[error("operation {index} returns at {ret}, before its call at {call}")]
    ReturnBeforeCall {
        /// Index of the operation in the history.
        index: usize,
        /// Its invocation time.
        call: u64,
        /// Its return time.
        ret: u64,
    },
    /// [`Model::partition`](crate::Model::partition) named an operation the
    /// history does not have.
    #[error("partition {partition:?} names operation {index}, but the history has {len}")]
    PartitionOutOfRange {
        /// Label of the offending partition.
        partition: String,
        /// The out-of-range index.
        index: usize,
        /// Number of operations in the history.
        len: usize,
    },
    /// Reading or writing a saved history failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A history could not be encoded to or decoded from JSON.
    #[error("history JSON: {0}")]
    Json(#[from] serde_json::Error),
}
