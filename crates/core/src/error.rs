use thiserror::Error;

/// What went wrong, in the terms the HTTP layer maps to status codes.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// 400: the request is malformed or breaks a rule.
    BadInput,
    /// 404
    NotFound,
    /// 409: a stale lease id.
    Conflict,
    /// 422: the job is in a state that does not allow this.
    InvalidState,
    /// 413: a payload or request above its size limit.
    TooLarge,
    /// 429: a count limit (queues) is reached.
    Limit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Detail {
    pub path: String,
    pub message: String,
}

#[derive(Debug, Clone, Error, PartialEq, Eq)]
#[error("{message}")]
pub struct CoreError {
    pub kind: ErrorKind,
    /// Stable snake_case code for clients to match on.
    pub code: &'static str,
    pub message: String,
    pub details: Vec<Detail>,
}

impl CoreError {
    pub fn new(kind: ErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        CoreError {
            kind,
            code,
            message: message.into(),
            details: Vec::new(),
        }
    }

    pub fn bad_input(path: impl Into<String>, message: impl Into<String>) -> Self {
        let message = message.into();
        CoreError {
            kind: ErrorKind::BadInput,
            code: "invalid_request",
            message: "the request is invalid".into(),
            details: vec![Detail {
                path: path.into(),
                message,
            }],
        }
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        CoreError::new(
            ErrorKind::NotFound,
            "not_found",
            format!("{what} {id} not found"),
        )
    }

    pub fn stale_lease(id: &str) -> Self {
        CoreError::new(
            ErrorKind::Conflict,
            "stale_lease",
            format!("job {id} is not leased under this lease id (it expired, finished, was cancelled or was leased again)"),
        )
    }
}
