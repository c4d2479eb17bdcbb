use thiserror::Error;

#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum ClientError {
    #[error("no endpoints given")]
    NoEndpoints,
    #[error("invalid endpoint {endpoint}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// Every endpoint failed; the last error.
    #[error("unavailable after {attempts} attempts: {message}")]
    Unavailable { attempts: u32, message: String },
    /// A write whose outcome is unknown (the connection broke after it was
    /// sent): it may or may not have been applied.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    #[error("session {session_id:#x} is lost (expired, closed, or in jeopardy)")]
    SessionLost { session_id: i64 },
    /// The server refused the request ({code:?}): nothing changed.
    #[error("{code:?}: {message}")]
    Rejected { code: tonic::Code, message: String },
}

impl ClientError {
    pub fn from_status(s: &tonic::Status) -> ClientError {
        ClientError::Rejected { code: s.code(), message: s.message().to_string() }
    }

    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}
