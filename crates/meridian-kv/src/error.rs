use meridian_codes::ErrorCode;
use thiserror::Error;

/// Errors of the KV state machine. Messages match etcd's where a client
/// library reacts to them.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum KvError {
    /// The revision asked for is compacted away: a read below the last
    /// compaction, events from at or below it, or a compaction not above it.
    #[error("mvcc: required revision has been compacted")]
    Compacted {
        /// The revision of the last compaction.
        compact_revision: i64,
    },
    /// The revision asked for (a read or a compaction) is above the
    /// range's current revision.
    #[error("mvcc: required revision is a future revision")]
    FutureRevision {
        /// The revision asked for.
        revision: i64,
        /// The range's current revision.
        current: i64,
    },
    /// The lease (of a put, revoke or checkpoint) does not exist: never
    /// granted, or revoked or expired since.
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound {
        /// The lease asked for.
        lease_id: i64,
    },
    /// A grant asked for a lease id that is in use.
    #[error("etcdserver: lease already exists")]
    LeaseExists {
        /// The id asked for.
        lease_id: i64,
    },
    /// A transaction writes one key twice (put twice, or put and deleted).
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey {
        /// The key written twice.
        key: Vec<u8>,
    },
    /// A put with `ignore_value` or `ignore_lease` names a key that does
    /// not exist.
    #[error("etcdserver: key not found")]
    KeyNotFound,
    /// A put or delete gave an empty key.
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// The command or query is malformed or out of bounds (the text says
    /// how); it can never succeed as given.
    #[error("etcdserver: {0}")]
    Invalid(String),
    /// A lock command's session (lease) does not exist.
    #[error("meridian: session {session:#x} not found (expired or closed)")]
    SessionNotFound {
        /// The session asked for.
        session: i64,
    },
    /// A release or proclaim of a lock that the session does not hold
    /// (or holds under another token).
    #[error("meridian: lock {name:?} is not held by this session with this token")]
    LockNotHeld {
        /// The lock's name (lossy UTF-8).
        name: String,
    },
    /// The lock's queue is full ([`crate::locks::MAX_WAITERS`]); the
    /// acquire was not queued.
    #[error("meridian: too many waiters on lock {name:?} (limit {limit})")]
    TooManyWaiters {
        /// The lock's name (lossy UTF-8).
        name: String,
        /// Most waiters a lock may queue.
        limit: usize,
    },
    /// The request's keys belong to a namespace carved out of this range
    /// (a stale route): retry once the route table is refreshed.
    #[error("meridian: namespace {prefix:?} has moved to a range of its own; retry")]
    NamespaceMoved {
        /// The carved namespace's prefix (lossy UTF-8).
        prefix: String,
    },
    /// The command needs the range's membership settled and it is in joint
    /// consensus: retry once the change is done.
    #[error("meridian: range is changing its membership; retry once the change is done")]
    ConfChanging,
    /// The storage engine failed, or a stored record does not decode.
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
            KvError::NamespaceMoved { .. } => ErrorCode::NamespaceMoved,
            KvError::ConfChanging => ErrorCode::ConfChanging,
            KvError::Storage(_) => ErrorCode::Storage,
        }
    }
}

impl From<meridian_storage::StorageError> for KvError {
    fn from(e: meridian_storage::StorageError) -> Self {
        KvError::Storage(e.to_string())
    }
}
