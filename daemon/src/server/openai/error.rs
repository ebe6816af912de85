//! Errors as OpenAI sends them, and the OpenAI API's one mapping of engine
//! errors to statuses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use deepseek_audit::entry::Entry;
use serde_json::{Value, json};

use crate::engine::InferError;
use crate::server::http::{ApiError, AppState, Recorded, record_or_refuse};

/// An error as OpenAI sends it: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug)]
pub(crate) struct OpenAiError {
    pub(super) status: StatusCode,
    pub(super) message: String,
    pub(super) param: Option<String>,
    pub(super) code: Option<&'static str>,
}

impl OpenAiError {
    /// An error with `status` and a `code` a client can act on.
    pub(crate) fn coded(status: StatusCode, message: String, code: &'static str) -> Self {
        Self {
            status,
            message,
            param: None,
            code: Some(code),
        }
    }

    pub(super) fn invalid(
        message: impl Into<String>,
        param: Option<&str>,
        code: Option<&'static str>,
    ) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.map(str::to_owned),
            code,
        }
    }

    /// A 400 for a field over one of the documented limits.
    pub(super) fn over_limit(param: &str, what: &str, size: usize, max: usize) -> Self {
        Self::invalid(
            format!("{param} is {size} {what}, over the limit of {max}"),
            Some(param),
            None,
        )
    }

    pub(super) fn body(&self) -> Value {
        let kind = if self.status.is_server_error() {
            "server_error"
        } else if self.status == StatusCode::TOO_MANY_REQUESTS {
            "requests"
        } else {
            "invalid_request_error"
        };
        json!({"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}})
    }
}

impl From<ApiError> for OpenAiError {
    fn from(error: ApiError) -> Self {
        let (status, message) = error.into_parts();
        Self {
            status,
            message,
            param: None,
            code: None,
        }
    }
}

impl From<InferError> for OpenAiError {
    fn from(error: InferError) -> Self {
        match error {
            InferError::QueueFull(_) => Self {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: error.to_string(),
                param: None,
                code: Some("queue_full"),
            },
            InferError::BadRequest(message) => Self::invalid(message, None, None),
            InferError::Runtime(detail) => {
                tracing::error!(error = %detail, "generation failed");
                Self {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    message: "generation failed; the daemon's log has the details".to_owned(),
                    param: None,
                    code: None,
                }
            }
        }
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.body())).into_response()
    }
}

/// Records `entry`; `Err` with the 503 (`audit_unavailable`) to answer when
/// it was not acknowledged and audit is required.
pub(super) async fn record_entry(state: &AppState, entry: Entry) -> Result<Recorded, OpenAiError> {
    record_or_refuse(state, entry)
        .await
        .map_err(|refused| OpenAiError {
            code: Some("audit_unavailable"),
            ..refused.into()
        })
}
