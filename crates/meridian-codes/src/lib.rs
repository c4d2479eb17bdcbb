//! Meridian's typed error codes ([`ErrorCode`]) and replica states
//! ([`ReplicaState`]), defined once in `proto/meridian/v1/codes.proto`.
//!
//! ```text
//!   meridian-kv  ── KvError::code() ──► ErrorOutcome.code (inside replicated answers)
//!   raftstore    ── RangeStatus.progress: ReplicaState
//!   server       ── ApiError::code() ──► gRPC metadata `meridian-error-code`, HTTP
//!   client/chaos ◄── error_code(&Status)
//! ```
//!
//! Every crate names a refusal by this enum; none keeps a table of numbers
//! by hand, and none decides by the text of a message.
//!
//! It also holds the one seeded hash ([`seeded`]) that every crate derives
//! reproducible choices from, since every crate already depends on it.

#![deny(missing_docs)]

pub mod seeded;

mod wire {
    #![allow(missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/meridian.v1.rs"));
}

pub use wire::{ErrorCode, ReplicaState};

/// gRPC metadata key under which every error status Meridian sends names
/// its [`ErrorCode`] (by [`ErrorCode::as_str_name`]). Plain metadata, not
/// `grpc-status-details-bin`: grpc-go fails a call whose details are not a
/// `google.rpc.Status`.
pub const ERROR_CODE_KEY: &str = "meridian-error-code";

impl ErrorCode {
    /// True for the codes a state machine's `ErrorOutcome` may carry
    /// (1-14); the others are the server's and the raftstore's.
    pub fn is_state_machine(self) -> bool {
        (1..=14).contains(&(self as i32))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The state machine's codes travel inside replicated answers: their
    /// numbers are wire values and must never move.
    #[test]
    fn state_machine_codes_keep_their_numbers() {
        let pinned = [
            (ErrorCode::Compacted, 1),
            (ErrorCode::FutureRevision, 2),
            (ErrorCode::LeaseNotFound, 3),
            (ErrorCode::LeaseExists, 4),
            (ErrorCode::DuplicateKey, 5),
            (ErrorCode::EmptyKey, 6),
            (ErrorCode::Invalid, 7),
            (ErrorCode::KeyNotFound, 8),
            (ErrorCode::Storage, 9),
            (ErrorCode::SessionNotFound, 10),
            (ErrorCode::LockNotHeld, 11),
            (ErrorCode::TooManyWaiters, 12),
            (ErrorCode::NamespaceMoved, 13),
            (ErrorCode::ConfChanging, 14),
        ];
        for (code, n) in pinned {
            assert_eq!(code as i32, n, "{code:?}");
            assert!(code.is_state_machine());
            assert_eq!(ErrorCode::from_str_name(code.as_str_name()), Some(code));
        }
        assert!(!ErrorCode::NodeStopped.is_state_machine());
    }
}
