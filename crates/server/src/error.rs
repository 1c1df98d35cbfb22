//! The one place where errors become HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use sluice_core::{CoreError, ErrorKind};
use sluice_proto::{ErrorBody, ErrorDetail, ErrorResponse};
use sluice_wal::WalError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            body: ErrorBody {
                code: code.into(),
                message: message.into(),
                details: Vec::new(),
            },
        }
    }

    pub fn bad_input(path: impl Into<String>, message: impl Into<String>) -> Self {
        CoreError::bad_input(path, message).into()
    }

    pub fn with_detail(mut self, path: impl Into<String>, message: impl Into<String>) -> Self {
        self.body.details.push(ErrorDetail {
            path: path.into(),
            message: message.into(),
        });
        self
    }

    pub fn shutting_down() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
    }

    pub fn not_ready() -> Self {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "the server is still replaying its log",
        )
    }
}

pub fn status_of(kind: ErrorKind) -> StatusCode {
    match kind {
        ErrorKind::BadInput => StatusCode::BAD_REQUEST,
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Conflict => StatusCode::CONFLICT,
        ErrorKind::InvalidState => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorKind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorKind::Limit => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    }
}

pub fn body_of(error: CoreError) -> ErrorBody {
    ErrorBody {
        code: error.code.into(),
        message: error.message,
        details: error
            .details
            .into_iter()
            .map(|d| ErrorDetail {
                path: d.path,
                message: d.message,
            })
            .collect(),
    }
}

impl From<CoreError> for ApiError {
    fn from(error: CoreError) -> Self {
        ApiError {
            status: status_of(error.kind),
            body: body_of(error),
        }
    }
}

impl From<WalError> for ApiError {
    fn from(error: WalError) -> Self {
        tracing::error!(%error, "write-ahead log refused a write");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            format!("the write-ahead log cannot take writes: {error}"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(ErrorResponse { error: self.body })).into_response()
    }
}
