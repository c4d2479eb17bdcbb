//! One mapping from Meridian's errors to gRPC status (as etcd words them,
//! so client libraries react as they do to etcd) and to HTTP codes.

use meridian_kv::command::ErrorOutcome;
use meridian_proto::{error_code as status_code, ErrorCode};
use meridian_raftstore::RaftstoreError;
use meridian_storage::RangeEpoch;
use thiserror::Error;

use crate::routing::RoutingError;

/// Largest request accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 3 << 19; // 1.5 MiB
/// Largest value accepted.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
/// Most operations in one Txn, nested ones included.
pub const MAX_TXN_OPS: usize = 128;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted { compact_revision: i64 },
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRevision,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: value is too large")]
    ValueTooLarge,
    #[error("etcdserver: {0}")]
    Invalid(String),
    #[error("{0}")]
    CrossNamespace(String),
    #[error("etcdserver: no leader")]
    NoLeader { range_id: u64 },
    #[error("etcdserver: not leader")]
    NotLeader { range_id: u64, leader: u64 },
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: too many requests")]
    TooBusy,
    #[error("etcdserver: request timed out, possibly due to previous leader failure")]
    OutcomeUnknown,
    #[error("etcdserver: not implemented: {0}")]
    Unimplemented(String),
    #[error("etcdserver: {0}")]
    Internal(String),
    #[error("meridian: session not found (expired or closed)")]
    SessionNotFound,
    #[error("meridian: {0}")]
    LockNotHeld(String),
    #[error("meridian: {0}")]
    TooManyWaiters(String),
    #[error("meridian: range {range_id} has no replica on this node")]
    UnknownRange { range_id: u64 },
    /// A membership change that does not fit the range's current
    /// configuration (already a member, not caught up, change in progress).
    #[error("meridian: {0}")]
    Membership(String),
    /// The node is shut down, or stopped itself after a fatal storage
    /// error: retry on another member. etcd's wording and code for a
    /// stopped server.
    #[error("etcdserver: server stopped")]
    NodeStopped,
    /// A corrupt or unreadable record, or an engine IO error, on this
    /// replica: fatal for it, not a bug of the request and not retried here.
    #[error("meridian: storage: {0}")]
    Storage(String),
    /// The route named a stale epoch of the range; the backend refreshes
    /// its route and retries once before a client sees this.
    #[error("meridian: range {range_id} changed (now at conf_ver {} version {}); retry", current.conf_ver, current.version)]
    EpochMismatch { range_id: u64, current: RangeEpoch },
    /// A key was routed to a range that does not hold it.
    #[error("meridian: key {key:?} is not in range {range_id}; retry")]
    KeyNotInRange { range_id: u64, key: String },
    /// A write that grows the data while a NOSPACE alarm is raised, or
    /// that would take this member's engine files past its quota.
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    /// A CORRUPT alarm is raised: no key-value request is served.
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// etcd's `member add` with a peer address a member already has.
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExists,
    /// etcd's `member promote` of a member that is not a learner.
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    /// etcd's `member promote` of a learner not joined or not alive.
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    /// The keys belong to a namespace carved out of the range the route
    /// named (created at runtime since): retryable once routes refresh.
    #[error("meridian: {0}")]
    NamespaceMoved(String),
    #[error("meridian: {0}")]
    NamespaceExists(String),
    #[error("meridian: {0}")]
    NamespaceNotFound(String),
    #[error("meridian: {0}")]
    NamespaceNotEmpty(String),
    /// The range is in joint consensus and the command needs it settled.
    #[error("meridian: range is changing its membership; retry once the change is done")]
    ConfChanging,
    /// Every replica of the range is on a node that is down or cut off:
    /// the message says which regions (a zone-survival namespace whose
    /// home region is lost).
    #[error("meridian: {0}")]
    ReplicasDown(String),
}

impl ApiError {
    /// The state machine's refusal, typed by its code.
    pub fn from_outcome(e: &ErrorOutcome) -> ApiError {
        match e.code() {
            ErrorCode::Compacted => ApiError::Compacted { compact_revision: e.compact_revision },
            code => ApiError::from_code(code, &e.message),
        }
    }

    /// A peer member's error status (a forwarded request's answer) back as
    /// the error it was: by the `meridian-error-code` it carries, or, when
    /// it has none (the transport failed before a member answered), by its
    /// gRPC code alone.
    pub fn from_status(s: &tonic::Status) -> ApiError {
        match status_code(s) {
            Some(code) => ApiError::from_code(code, s.message()),
            None => match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => ApiError::Timeout,
                _ => ApiError::Internal(s.message().trim_start_matches("etcdserver: ").to_string()),
            },
        }
    }

    /// The error a code names; `message` fills the variants that carry
    /// text (their prefix is the variant's own, so it is not doubled). A
    /// leader hint does not survive the trip: a forwarded request is
    /// never forwarded again.
    fn from_code(code: ErrorCode, message: &str) -> ApiError {
        let text = |prefix: &str| message.strip_prefix(prefix).unwrap_or(message).to_string();
        match code {
            ErrorCode::Compacted => ApiError::Compacted { compact_revision: 0 },
            ErrorCode::FutureRevision => ApiError::FutureRevision,
            ErrorCode::LeaseNotFound => ApiError::LeaseNotFound,
            ErrorCode::LeaseExists => ApiError::LeaseExists,
            ErrorCode::DuplicateKey => ApiError::DuplicateKey,
            ErrorCode::EmptyKey => ApiError::EmptyKey,
            ErrorCode::Invalid => ApiError::Invalid(text("etcdserver: ")),
            ErrorCode::KeyNotFound => ApiError::KeyNotFound,
            ErrorCode::Storage => {
                let m = message.strip_prefix("meridian: ").unwrap_or(message);
                ApiError::Storage(m.strip_prefix("storage: ").unwrap_or(m).to_string())
            }
            ErrorCode::SessionNotFound => ApiError::SessionNotFound,
            ErrorCode::LockNotHeld => ApiError::LockNotHeld(text("meridian: ")),
            ErrorCode::TooManyWaiters => ApiError::TooManyWaiters(text("meridian: ")),
            ErrorCode::TooManyOps => ApiError::TooManyOps,
            ErrorCode::RequestTooLarge => ApiError::RequestTooLarge,
            ErrorCode::ValueTooLarge => ApiError::ValueTooLarge,
            ErrorCode::CrossNamespace => ApiError::CrossNamespace(message.to_string()),
            ErrorCode::NoLeader | ErrorCode::NotLeader => ApiError::NoLeader { range_id: 0 },
            ErrorCode::Timeout => ApiError::Timeout,
            ErrorCode::TooBusy => ApiError::TooBusy,
            ErrorCode::OutcomeUnknown => ApiError::OutcomeUnknown,
            ErrorCode::Unimplemented => ApiError::Unimplemented(text("etcdserver: not implemented: ")),
            ErrorCode::UnknownRange => ApiError::UnknownRange { range_id: 0 },
            ErrorCode::Membership => ApiError::Membership(text("meridian: ")),
            ErrorCode::NodeStopped => ApiError::NodeStopped,
            // A peer's route went stale: the forwarded request is retried
            // by the client, with its own route.
            ErrorCode::EpochMismatch => ApiError::EpochMismatch { range_id: 0, current: RangeEpoch::default() },
            ErrorCode::KeyNotInRange => ApiError::KeyNotInRange { range_id: 0, key: String::new() },
            ErrorCode::NoSpace => ApiError::NoSpace,
            ErrorCode::Corrupt => ApiError::Corrupt,
            ErrorCode::MemberNotFound => ApiError::MemberNotFound,
            ErrorCode::PeerUrlExists => ApiError::PeerUrlExists,
            ErrorCode::MemberNotLearner => ApiError::MemberNotLearner,
            ErrorCode::LearnerNotReady => ApiError::LearnerNotReady,
            ErrorCode::NamespaceMoved => ApiError::NamespaceMoved(text("meridian: ")),
            ErrorCode::NamespaceExists => ApiError::NamespaceExists(text("meridian: ")),
            ErrorCode::NamespaceNotFound => ApiError::NamespaceNotFound(text("meridian: ")),
            ErrorCode::NamespaceNotEmpty => ApiError::NamespaceNotEmpty(text("meridian: ")),
            ErrorCode::ConfChanging => ApiError::ConfChanging,
            ErrorCode::ReplicasDown => ApiError::ReplicasDown(text("meridian: ")),
            ErrorCode::Internal | ErrorCode::Unspecified => ApiError::Internal(text("etcdserver: ")),
        }
    }

    /// Whether the same request may succeed if sent again shortly (a
    /// leader being elected, a stale route, a busy or stopping node): what
    /// internal retry loops retry.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ApiError::NoLeader { .. }
                | ApiError::NotLeader { .. }
                | ApiError::Timeout
                | ApiError::OutcomeUnknown
                | ApiError::TooBusy
                | ApiError::EpochMismatch { .. }
                | ApiError::KeyNotInRange { .. }
                | ApiError::NamespaceMoved(_)
                | ApiError::ConfChanging
                | ApiError::NodeStopped
        )
    }

    /// The one mapping from an error to its shared code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ApiError::Compacted { .. } => ErrorCode::Compacted,
            ApiError::FutureRevision => ErrorCode::FutureRevision,
            ApiError::LeaseNotFound => ErrorCode::LeaseNotFound,
            ApiError::LeaseExists => ErrorCode::LeaseExists,
            ApiError::DuplicateKey => ErrorCode::DuplicateKey,
            ApiError::EmptyKey => ErrorCode::EmptyKey,
            ApiError::KeyNotFound => ErrorCode::KeyNotFound,
            ApiError::TooManyOps => ErrorCode::TooManyOps,
            ApiError::RequestTooLarge => ErrorCode::RequestTooLarge,
            ApiError::ValueTooLarge => ErrorCode::ValueTooLarge,
            ApiError::Invalid(_) => ErrorCode::Invalid,
            ApiError::CrossNamespace(_) => ErrorCode::CrossNamespace,
            ApiError::NoLeader { .. } => ErrorCode::NoLeader,
            ApiError::NotLeader { .. } => ErrorCode::NotLeader,
            ApiError::Timeout => ErrorCode::Timeout,
            ApiError::TooBusy => ErrorCode::TooBusy,
            ApiError::OutcomeUnknown => ErrorCode::OutcomeUnknown,
            ApiError::Unimplemented(_) => ErrorCode::Unimplemented,
            ApiError::Internal(_) => ErrorCode::Internal,
            ApiError::SessionNotFound => ErrorCode::SessionNotFound,
            ApiError::LockNotHeld(_) => ErrorCode::LockNotHeld,
            ApiError::TooManyWaiters(_) => ErrorCode::TooManyWaiters,
            ApiError::UnknownRange { .. } => ErrorCode::UnknownRange,
            ApiError::Membership(_) => ErrorCode::Membership,
            ApiError::NodeStopped => ErrorCode::NodeStopped,
            ApiError::Storage(_) => ErrorCode::Storage,
            ApiError::EpochMismatch { .. } => ErrorCode::EpochMismatch,
            ApiError::KeyNotInRange { .. } => ErrorCode::KeyNotInRange,
            ApiError::NoSpace => ErrorCode::NoSpace,
            ApiError::Corrupt => ErrorCode::Corrupt,
            ApiError::MemberNotFound => ErrorCode::MemberNotFound,
            ApiError::PeerUrlExists => ErrorCode::PeerUrlExists,
            ApiError::MemberNotLearner => ErrorCode::MemberNotLearner,
            ApiError::LearnerNotReady => ErrorCode::LearnerNotReady,
            ApiError::NamespaceMoved(_) => ErrorCode::NamespaceMoved,
            ApiError::NamespaceExists(_) => ErrorCode::NamespaceExists,
            ApiError::NamespaceNotFound(_) => ErrorCode::NamespaceNotFound,
            ApiError::NamespaceNotEmpty(_) => ErrorCode::NamespaceNotEmpty,
            ApiError::ConfChanging => ErrorCode::ConfChanging,
            ApiError::ReplicasDown(_) => ErrorCode::ReplicasDown,
        }
    }

    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            ApiError::Compacted { .. } | ApiError::FutureRevision => Code::OutOfRange,
            ApiError::LeaseNotFound | ApiError::KeyNotFound | ApiError::SessionNotFound => Code::NotFound,
            ApiError::LeaseExists | ApiError::LockNotHeld(_) => Code::FailedPrecondition,
            ApiError::TooManyWaiters(_) => Code::ResourceExhausted,
            ApiError::DuplicateKey
            | ApiError::EmptyKey
            | ApiError::TooManyOps
            | ApiError::RequestTooLarge
            | ApiError::ValueTooLarge
            | ApiError::Invalid(_) => Code::InvalidArgument,
            ApiError::CrossNamespace(_)
            | ApiError::Membership(_)
            | ApiError::PeerUrlExists
            | ApiError::MemberNotLearner
            | ApiError::LearnerNotReady => Code::FailedPrecondition,
            ApiError::UnknownRange { .. } => Code::NotFound,
            ApiError::NoLeader { .. }
            | ApiError::NotLeader { .. }
            | ApiError::Timeout
            | ApiError::OutcomeUnknown
            | ApiError::NodeStopped
            | ApiError::EpochMismatch { .. }
            | ApiError::KeyNotInRange { .. }
            | ApiError::NamespaceMoved(_)
            | ApiError::ConfChanging
            | ApiError::ReplicasDown(_) => Code::Unavailable,
            ApiError::NamespaceExists(_) => Code::AlreadyExists,
            ApiError::NamespaceNotFound(_) => Code::NotFound,
            ApiError::NamespaceNotEmpty(_) => Code::FailedPrecondition,
            ApiError::TooBusy | ApiError::NoSpace => Code::ResourceExhausted,
            ApiError::MemberNotFound => Code::NotFound,
            ApiError::Unimplemented(_) => Code::Unimplemented,
            ApiError::Storage(_) | ApiError::Corrupt => Code::DataLoss,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    /// HTTP status for the JSON API.
    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::LeaseNotFound
            | ApiError::KeyNotFound
            | ApiError::SessionNotFound
            | ApiError::UnknownRange { .. }
            | ApiError::MemberNotFound
            | ApiError::NamespaceNotFound(_) => 404,
            ApiError::NamespaceExists(_) | ApiError::NamespaceNotEmpty(_) => 409,
            ApiError::NoSpace => 507,
            ApiError::LockNotHeld(_)
            | ApiError::Membership(_)
            | ApiError::PeerUrlExists
            | ApiError::MemberNotLearner
            | ApiError::LearnerNotReady => 409,
            ApiError::TooManyWaiters(_) => 429,
            ApiError::Compacted { .. } | ApiError::FutureRevision | ApiError::CrossNamespace(_) | ApiError::LeaseExists => 412,
            ApiError::DuplicateKey => 409,
            ApiError::EmptyKey | ApiError::TooManyOps | ApiError::RequestTooLarge | ApiError::ValueTooLarge | ApiError::Invalid(_) => 400,
            ApiError::TooBusy => 429,
            ApiError::NoLeader { .. }
            | ApiError::NotLeader { .. }
            | ApiError::Timeout
            | ApiError::OutcomeUnknown
            | ApiError::NodeStopped => 503,
            ApiError::Unimplemented(_) => 501,
            ApiError::Internal(_) | ApiError::Storage(_) | ApiError::Corrupt => 500,
            ApiError::EpochMismatch { .. }
            | ApiError::KeyNotInRange { .. }
            | ApiError::NamespaceMoved(_)
            | ApiError::ConfChanging
            | ApiError::ReplicasDown(_) => 503,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        let code = e.code();
        meridian_proto::with_error_code(tonic::Status::new(e.grpc_code(), e.to_string()), code)
    }
}

impl From<meridian_kv::KvError> for ApiError {
    fn from(e: meridian_kv::KvError) -> ApiError {
        ApiError::from_outcome(&meridian_kv::machine::error_outcome(&e))
    }
}

impl From<RoutingError> for ApiError {
    fn from(e: RoutingError) -> ApiError {
        ApiError::CrossNamespace(e.to_string())
    }
}

impl From<RaftstoreError> for ApiError {
    fn from(e: RaftstoreError) -> ApiError {
        match e {
            RaftstoreError::NotLeader { range_id, leader_hint: Some(leader) } => ApiError::NotLeader { range_id, leader },
            RaftstoreError::NotLeader { range_id, leader_hint: None } => ApiError::NoLeader { range_id },
            RaftstoreError::RangeNotFound { range_id }
            | RaftstoreError::RangeRemoved { range_id }
            | RaftstoreError::SnapshotInstalling { range_id } => ApiError::NoLeader { range_id },
            RaftstoreError::ProposalDropped { .. } | RaftstoreError::ReadTimeout { .. } => ApiError::Timeout,
            RaftstoreError::OutcomeUnknown { .. } => ApiError::OutcomeUnknown,
            RaftstoreError::TooBusy { .. } => ApiError::TooBusy,
            RaftstoreError::InvalidRequest { reason, .. } => ApiError::Invalid(reason),
            RaftstoreError::Storage(s) => ApiError::Storage(s),
            RaftstoreError::IncompatibleData { reason } => ApiError::Storage(reason),
            RaftstoreError::EpochMismatch { range_id, current } => ApiError::EpochMismatch { range_id, current },
            RaftstoreError::KeyNotInRange { range_id, key } => {
                ApiError::KeyNotInRange { range_id, key: String::from_utf8_lossy(&key).into_owned() }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_etcd() {
        let s: tonic::Status = ApiError::Compacted { compact_revision: 3 }.into();
        assert_eq!(s.code(), tonic::Code::OutOfRange);
        assert_eq!(s.message(), "etcdserver: mvcc: required revision has been compacted");
        let s: tonic::Status = ApiError::LeaseNotFound.into();
        assert_eq!((s.code(), s.message()), (tonic::Code::NotFound, "etcdserver: requested lease not found"));
        let s: tonic::Status = ApiError::from(RaftstoreError::NotLeader { range_id: 2, leader_hint: None }).into();
        assert_eq!(s.code(), tonic::Code::Unavailable);
        assert_eq!(ApiError::TooBusy.http_status(), 429);
    }

    fn every_error() -> Vec<ApiError> {
        vec![
            ApiError::Compacted { compact_revision: 0 },
            ApiError::FutureRevision,
            ApiError::LeaseNotFound,
            ApiError::LeaseExists,
            ApiError::DuplicateKey,
            ApiError::EmptyKey,
            ApiError::KeyNotFound,
            ApiError::TooManyOps,
            ApiError::RequestTooLarge,
            ApiError::ValueTooLarge,
            ApiError::Invalid("bad range".into()),
            ApiError::CrossNamespace("spans /a/ and /b/".into()),
            ApiError::NoLeader { range_id: 0 },
            ApiError::Timeout,
            ApiError::TooBusy,
            ApiError::OutcomeUnknown,
            ApiError::Unimplemented("defragment".into()),
            ApiError::Internal("bug".into()),
            ApiError::SessionNotFound,
            ApiError::LockNotHeld("lock \"a\" is not held".into()),
            ApiError::TooManyWaiters("too many".into()),
            ApiError::UnknownRange { range_id: 0 },
            ApiError::Membership("node 4 is already a voter".into()),
            ApiError::NodeStopped,
            ApiError::Storage("corrupt record".into()),
            ApiError::EpochMismatch { range_id: 0, current: RangeEpoch::default() },
            ApiError::KeyNotInRange { range_id: 0, key: String::new() },
            ApiError::NoSpace,
            ApiError::Corrupt,
            ApiError::MemberNotFound,
            ApiError::PeerUrlExists,
            ApiError::MemberNotLearner,
            ApiError::LearnerNotReady,
            ApiError::NamespaceMoved("namespace \"/a/\" has moved to a range of its own; retry".into()),
            ApiError::NamespaceExists("namespace \"/a/\" already exists".into()),
            ApiError::NamespaceNotFound("namespace \"/a/\" not found".into()),
            ApiError::NamespaceNotEmpty("namespace \"/a/\" holds 3 keys".into()),
            ApiError::ConfChanging,
            ApiError::ReplicasDown("every voter of range 7 is down: nodes 1, 2, 3 in region us".into()),
        ]
    }

    /// A forwarded request's error comes back from the member that
    /// answered it as the same error, decided by its code, never its text.
    #[test]
    fn every_error_survives_a_trip_through_a_status() {
        for e in every_error() {
            let s: tonic::Status = e.clone().into();
            assert_eq!(status_code(&s), Some(e.code()), "{e:?}");
            assert_eq!(ApiError::from_status(&s), e, "{e:?}");
        }
        // A leader hint does not survive the trip (a forwarded request is
        // never forwarded again).
        let s: tonic::Status = ApiError::NotLeader { range_id: 3, leader: 2 }.into();
        assert_eq!(ApiError::from_status(&s), ApiError::NoLeader { range_id: 0 });
    }

    /// The state machine's codes and the server's never collide.
    #[test]
    fn codes_are_distinct() {
        let codes: std::collections::BTreeSet<i32> = every_error().iter().map(|e| e.code() as i32).collect();
        assert_eq!(codes.len(), every_error().len());
    }

    /// A status with no code (the transport failed before any member
    /// answered) is judged by its gRPC code alone.
    #[test]
    fn an_untyped_status_is_judged_by_its_grpc_code() {
        assert_eq!(ApiError::from_status(&tonic::Status::unavailable("tcp connect error")), ApiError::Timeout);
        assert_eq!(ApiError::from_status(&tonic::Status::unknown("etcdserver: boom")), ApiError::Internal("boom".into()));
    }

    /// A stopped node is retryable elsewhere, a broken disk is not a bug:
    /// neither is `Internal`.
    #[test]
    fn a_stopped_node_and_a_storage_failure_are_not_internal() {
        assert_eq!((ApiError::NodeStopped.grpc_code(), ApiError::NodeStopped.http_status()), (tonic::Code::Unavailable, 503));
        let storage = ApiError::from(RaftstoreError::Storage("io: disk gone".into()));
        assert_eq!((storage.grpc_code(), storage.http_status()), (tonic::Code::DataLoss, 500));
        let outcome = meridian_kv::machine::error_outcome(&meridian_kv::KvError::Storage("corrupt lease".into()));
        assert_eq!(ApiError::from_outcome(&outcome), ApiError::Storage("corrupt lease".into()));
    }
}
