//! Request limits checked before any expensive work, each answered in OpenAI's error format: the Host
//! header against `--allowed-hosts` (a browser page on another origin can point a DNS name at 127.0.0.1 —
//! "DNS rebinding" — but it cannot make the browser send an allowed Host), the URI and header sizes, JSON
//! as the only POST body type (HTML forms and `text/plain` cannot start inference), and the body: its
//! size while it streams in and a deadline for all of it to arrive.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use super::error::ApiError;
use super::AppState;

/// Longest request target (path and query) in bytes.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// Largest total of header names and values in bytes.
pub const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Which Host headers the server answers.
#[derive(Debug, Clone, Default)]
pub enum AllowedHosts {
    /// Any host (bound to a non-loopback address, or `--allowed-hosts '*'`).
    #[default]
    Any,
    /// These host names (compared without the port, case-insensitively).
    Only(Vec<String>),
}

impl AllowedHosts {
    /// The names a loopback-bound server answers by default.
    pub fn loopback() -> Self {
        Self::Only(
            ["localhost", "127.0.0.1", "::1"]
                .into_iter()
                .map(String::from)
                .collect(),
        )
    }

    /// `--allowed-hosts a,b,c` (`*`: any host).
    pub fn parse(list: &str) -> Self {
        let names: Vec<String> = list
            .split(',')
            .map(|h| h.trim().trim_matches(['[', ']']).to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        if names.iter().any(|h| h == "*") {
            Self::Any
        } else {
            Self::Only(names)
        }
    }

    /// Whether a request with this Host header (absent: HTTP/1.0 clients) is answered.
    pub fn allows(&self, host: Option<&str>) -> bool {
        let Self::Only(names) = self else {
            return true;
        };
        let Some(host) = host else {
            return true;
        };
        let name = host_name(host);
        names.iter().any(|n| n.eq_ignore_ascii_case(name))
    }
}

/// The host name of a Host header value: without the port, IPv6 brackets removed.
fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Limits of requests, set from `serve`'s flags.
#[derive(Debug, Clone)]
pub struct RequestLimits {
    pub allowed_hosts: AllowedHosts,
    /// Time for the whole body to arrive.
    pub body_timeout: Duration,
    /// Messages in one chat request at most.
    pub max_messages: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            allowed_hosts: AllowedHosts::Any,
            body_timeout: Duration::from_secs(30),
            max_messages: 4096,
        }
    }
}

fn is_json(req: &Request) -> bool {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| {
            let m = m.trim();
            m.eq_ignore_ascii_case("application/json")
                || (m.len() > 5 && m[m.len() - 5..].eq_ignore_ascii_case("+json"))
        })
}

/// Host, URI, headers and content type: checked before authentication and before the body is read.
pub async fn check_head(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .map(|v| v.to_str().unwrap_or("\u{0}"));
    if !state.limits.allowed_hosts.allows(host) {
        return ApiError::host_not_allowed().into_response();
    }
    let uri_len = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if uri_len > MAX_URI_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "invalid_request_error",
            format!("The request target is longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    let header_bytes: usize = req
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum();
    if header_bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "invalid_request_error",
            format!("The request headers are larger than {MAX_HEADER_BYTES} bytes"),
        )
        .into_response();
    }
    if req.method() == Method::POST && !is_json(&req) {
        return ApiError::unsupported_media_type().into_response();
    }
    next.run(req).await
}

/// Reads a POST body under the size limit and the body deadline (after authentication, so anonymous
/// clients cannot make the server buffer bodies); handlers get it whole.
pub async fn read_body(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.method() != Method::POST {
        return next.run(req).await;
    }
    let limit = state.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return ApiError::too_large(limit).into_response();
    }
    let (parts, body) = req.into_parts();
    let timeout = state.limits.body_timeout;
    let bytes = match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => return ApiError::body_timeout(timeout.as_secs_f64()).into_response(),
        Ok(Err(e)) if e.is::<LengthLimitError>() => {
            return ApiError::too_large(limit).into_response()
        }
        Ok(Err(_)) => {
            return ApiError::bad_request("Could not read the request body").into_response()
        }
        Ok(Ok(collected)) => collected.to_bytes(),
    };
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_with_and_without_ports() {
        let h = AllowedHosts::loopback();
        for ok in [
            "localhost",
            "LOCALHOST:8000",
            "127.0.0.1:1",
            "[::1]:8000",
            "[::1]",
        ] {
            assert!(h.allows(Some(ok)), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8000",
            "localhost.attacker.example",
            "127.0.0.2",
            "",
        ] {
            assert!(!h.allows(Some(bad)), "{bad}");
        }
        assert!(h.allows(None));
        assert!(AllowedHosts::Any.allows(Some("anything")));
    }

    #[test]
    fn parsed_lists() {
        let h = AllowedHosts::parse("api.internal, [::1] ,Example.com");
        assert!(h.allows(Some("example.com:443")));
        assert!(h.allows(Some("[::1]:1")));
        assert!(h.allows(Some("API.internal")));
        assert!(!h.allows(Some("localhost")));
        assert!(matches!(AllowedHosts::parse("a,*"), AllowedHosts::Any));
    }
}
