use meridian_codes::ErrorCode;
use thiserror::Error;

/// Errors of the KV state machine. Messages match etcd's where a client
/// library reacts to them.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KvError {
    #[error("mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("mvcc: required revision is a future revision")]
    FutureRevision { revision: i64, current: i64 },
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound { lease_id: i64 },
    #[error("etcdserver: lease already exists")]
    LeaseExists { lease_id: i64 },
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey { key: Vec<u8> },
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: {0}")]
    Invalid(String),
    #[error("meridian: session {session:#x} not found (expired or closed)")]
    SessionNotFound { session: i64 },
    #[error("meridian: lock {name:?} is not held by this session with this token")]
    LockNotHeld { name: String },
    #[error("meridian: too many waiters on lock {name:?} (limit {limit})")]
    TooManyWaiters { name: String, limit: usize },
    #[error("storage: {0}")]
    Storage(String),
}

impl KvError {
    /// The one mapping from a state-machine error to its shared code (what
    /// an `ErrorOutcome` carries across replicas and members).
    pub fn code(&self) -> ErrorCode {
        match self {
            KvError::Compacted { .. } => ErrorCode::Compacted,
            KvError::FutureRevision { .. } => ErrorCode::FutureRevision,
            KvError::LeaseNotFound { .. } => ErrorCode::LeaseNotFound,
            KvError::LeaseExists { .. } => ErrorCode::LeaseExists,
            KvError::DuplicateKey { .. } => ErrorCode::DuplicateKey,
            KvError::KeyNotFound => ErrorCode::KeyNotFound,
            KvError::EmptyKey => ErrorCode::EmptyKey,
            KvError::Invalid(_) => ErrorCode::Invalid,
            KvError::SessionNotFound { .. } => ErrorCode::SessionNotFound,
            KvError::LockNotHeld { .. } => ErrorCode::LockNotHeld,
            KvError::TooManyWaiters { .. } => ErrorCode::TooManyWaiters,
            KvError::Storage(_) => ErrorCode::Storage,
        }
    }
}

impl From<meridian_storage::StorageError> for KvError {
    fn from(e: meridian_storage::StorageError) -> Self {
        KvError::Storage(e.to_string())
    }
}
