//! The error every handler may answer, in KServe's shape
//! (`{"error": "..."}`); the OpenAI API turns it into its own.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An error answered as `{"error": "..."}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    message: String,
    /// What the status alone does not say, for the audit record
    /// (`details.error_code`): not sent to the client.
    pub(crate) code: Option<&'static str>,
}

impl ApiError {
    pub(crate) fn into_parts(self) -> (StatusCode, String) {
        (self.status, self.message)
    }

    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            code: None,
        }
    }

    pub(crate) fn with_code(self, code: &'static str) -> Self {
        Self {
            code: Some(code),
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

/// A client that left before its answer: nginx's 499 "client closed
/// request", recorded, never sent.
pub(crate) fn cancelled() -> ApiError {
    ApiError::new(
        StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        "the client closed the connection",
    )
    .with_code("cancelled")
}
