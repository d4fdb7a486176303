//! Errors in OpenAI's format (`{"error": {"message", "type", "param", "code"}}`) with the right status.
//! Messages name fields and numbers, never request content.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
    pub code: Option<&'static str>,
    /// Seconds for a Retry-After header (429).
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    param: Option<&'a str>,
    code: Option<&'a str>,
}

impl ApiError {
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 for a bad parameter.
    pub fn invalid(param: &str, message: impl Into<String>) -> Self {
        Self {
            param: Some(param.to_owned()),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    pub fn model_not_found(requested_len: usize) -> Self {
        Self {
            code: Some("model_not_found"),
            param: Some("model".into()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model does not exist (requested name: {requested_len} bytes); see GET /v1/models"),
            )
        }
    }

    pub fn not_found() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "Unknown route",
        )
    }

    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "Method not allowed",
        )
    }

    pub fn too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            format!("Request body larger than {limit} bytes"),
        )
    }

    pub fn unauthorized() -> Self {
        Self {
            code: Some("invalid_api_key"),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                "Missing or invalid API key (Authorization: Bearer <key>)",
            )
        }
    }

    pub fn forbidden() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "This API key's role may not use this route",
        )
    }

    /// 429 for a per-key limit, with the seconds to wait.
    pub fn rate_limited(retry_after_secs: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            retry_after: Some(retry_after_secs),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "Rate limit reached for this API key",
            )
        }
    }

    /// 400: the request alone needs more tokens than its key may use in a minute.
    pub fn over_token_limit(needed: u64, limit: u64) -> Self {
        Self {
            code: Some("rate_limit_exceeded"),
            param: Some("max_tokens".into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                format!(
                    "The prompt and max_tokens need {needed} tokens; this API key may use {limit} \
                     tokens per minute"
                ),
            )
        }
    }

    pub fn queue_full() -> Self {
        Self {
            code: Some("queue_full"),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "The server is at capacity; retry later",
            )
        }
    }

    /// 503 for a connection over `--max-connections` (written by the accept loop itself).
    pub fn too_many_connections() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "Too many open connections; retry later",
        )
    }

    /// 408: the request body did not arrive within the body deadline.
    pub fn body_timeout(secs: f64) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            format!("The request body did not arrive within {secs} s"),
        )
    }

    /// 415: POST bodies must be JSON.
    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "Send the body as JSON with `Content-Type: application/json`",
        )
    }

    /// 400: the Host header names a host this server does not answer for (DNS rebinding guard).
    pub fn host_not_allowed() -> Self {
        Self {
            param: Some("Host".into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                "The Host header is not one this server answers for (see --allowed-hosts)",
            )
        }
    }

    pub fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
            "The server is shutting down",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", message)
    }

    /// The JSON body (also used inside SSE streams).
    pub fn body(&self) -> serde_json::Value {
        serde_json::to_value(Body {
            error: Inner {
                message: &self.message,
                kind: self.kind,
                param: self.param.as_deref(),
                code: self.code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body())).into_response();
        if self.status == StatusCode::TOO_MANY_REQUESTS {
            // The computed wait (per-key limits); 1 s for a full queue.
            let secs = self.retry_after.unwrap_or(1).max(1);
            resp.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        resp
    }
}

impl From<crate::engine::SubmitError> for ApiError {
    fn from(e: crate::engine::SubmitError) -> Self {
        match e {
            crate::engine::SubmitError::QueueFull => Self::queue_full(),
            crate::engine::SubmitError::ShuttingDown => Self::shutting_down(),
        }
    }
}
