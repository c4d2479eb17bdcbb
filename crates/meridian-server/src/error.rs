//! One mapping from Meridian's errors to gRPC status (as etcd words them,
//! so client libraries react as they do to etcd) and to HTTP codes.

use meridian_kv::command::ErrorOutcome;
use meridian_raftstore::RaftstoreError;
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
}

impl ApiError {
    pub fn from_outcome(e: &ErrorOutcome) -> ApiError {
        match e.code {
            1 => ApiError::Compacted { compact_revision: e.compact_revision },
            2 => ApiError::FutureRevision,
            3 => ApiError::LeaseNotFound,
            4 => ApiError::LeaseExists,
            5 => ApiError::DuplicateKey,
            6 => ApiError::EmptyKey,
            8 => ApiError::KeyNotFound,
            7 => ApiError::Invalid(e.message.trim_start_matches("etcdserver: ").to_string()),
            10 => ApiError::SessionNotFound,
            11 => ApiError::LockNotHeld(e.message.trim_start_matches("meridian: ").to_string()),
            12 => ApiError::TooManyWaiters(e.message.trim_start_matches("meridian: ").to_string()),
            _ => ApiError::Internal(e.message.clone()),
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
            ApiError::CrossNamespace(_) | ApiError::Membership(_) => Code::FailedPrecondition,
            ApiError::UnknownRange { .. } => Code::NotFound,
            ApiError::NoLeader { .. } | ApiError::NotLeader { .. } | ApiError::Timeout | ApiError::OutcomeUnknown => Code::Unavailable,
            ApiError::TooBusy => Code::ResourceExhausted,
            ApiError::Unimplemented(_) => Code::Unimplemented,
            ApiError::Internal(_) => Code::Internal,
        }
    }

    /// HTTP status for the JSON API.
    pub fn http_status(&self) -> u16 {
        match self {
            ApiError::LeaseNotFound | ApiError::KeyNotFound | ApiError::SessionNotFound | ApiError::UnknownRange { .. } => 404,
            ApiError::LockNotHeld(_) | ApiError::Membership(_) => 409,
            ApiError::TooManyWaiters(_) => 429,
            ApiError::Compacted { .. } | ApiError::FutureRevision | ApiError::CrossNamespace(_) | ApiError::LeaseExists => 412,
            ApiError::DuplicateKey => 409,
            ApiError::EmptyKey | ApiError::TooManyOps | ApiError::RequestTooLarge | ApiError::ValueTooLarge | ApiError::Invalid(_) => 400,
            ApiError::TooBusy => 429,
            ApiError::NoLeader { .. } | ApiError::NotLeader { .. } | ApiError::Timeout | ApiError::OutcomeUnknown => 503,
            ApiError::Unimplemented(_) => 501,
            ApiError::Internal(_) => 500,
        }
    }
}

impl From<ApiError> for tonic::Status {
    fn from(e: ApiError) -> tonic::Status {
        tonic::Status::new(e.grpc_code(), e.to_string())
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
            RaftstoreError::RangeNotFound { range_id } | RaftstoreError::RangeRemoved { range_id } => ApiError::NoLeader { range_id },
            RaftstoreError::ProposalDropped { .. } | RaftstoreError::ReadTimeout { .. } => ApiError::Timeout,
            RaftstoreError::OutcomeUnknown { .. } => ApiError::OutcomeUnknown,
            RaftstoreError::TooBusy { .. } => ApiError::TooBusy,
            RaftstoreError::InvalidRequest { reason, .. } => ApiError::Invalid(reason),
            RaftstoreError::Storage(s) => ApiError::Internal(s),
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
}
