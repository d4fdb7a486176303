//! The OpenAI-compatible HTTP API (axum): routes, shared state, the access log (ids, counts and timings
//! only), and serving with graceful shutdown (new requests get 503 while in-flight ones finish).

pub mod auth;
pub mod error;
pub mod generation;
pub mod handlers;
pub mod metrics;
pub mod misc;
pub mod types;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use auth::{KeyId, Keys, Role};
use error::ApiError;
use metrics::Metrics;

use crate::chat::ChatTemplate;
use crate::engine::EngineHandle;
pub use generation::Usage;

/// What every handler can see. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub engine: EngineHandle,
    pub chat: Option<Arc<ChatTemplate>>,
    pub model_name: Arc<str>,
    pub created: u64,
    pub max_body_bytes: usize,
    /// Longest prompt + completion a request may have (model context and KV capacity).
    pub max_context: usize,
    pub metrics: Arc<Metrics>,
    /// Configured API keys (empty: no authentication).
    pub keys: Arc<Keys>,
    request_ids: Arc<AtomicU64>,
}

impl AppState {
    pub fn new(
        engine: EngineHandle,
        chat: Option<ChatTemplate>,
        model_name: String,
        max_body_bytes: usize,
    ) -> Self {
        let spec_ctx = engine.loaded.model.spec().max_position_embeddings;
        let kv_ctx = engine.config.num_blocks * engine.config.block_size;
        Self {
            chat: chat.map(Arc::new),
            model_name: model_name.into(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            max_body_bytes,
            max_context: spec_ctx.min(kv_ctx),
            metrics: Arc::new(Metrics::default()),
            keys: Arc::new(Keys::default()),
            request_ids: Arc::new(AtomicU64::new(1)),
            engine,
        }
    }

    /// Requires API keys (as parsed by [`Keys::parse`]) on every route but `/health`.
    pub fn with_keys(mut self, keys: Keys) -> Self {
        self.keys = Arc::new(keys);
        self
    }
}

/// Authentication, role and per-key limits; runs inside the access log.
async fn authorize(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if state.keys.is_empty() || req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let presented = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(entry) = presented.and_then(|k| state.keys.authenticate(k)) else {
        return ApiError::unauthorized().into_response();
    };
    if req.uri().path() == "/metrics" && entry.role != Role::Admin {
        return ApiError::forbidden().into_response();
    }
    if let Err(wait) = state.keys.admit(entry) {
        return ApiError::rate_limited(wait.as_secs().max(1)).into_response();
    }
    state.metrics.record_key_request(&entry.id);
    req.extensions_mut().insert(KeyId(entry.id.clone()));
    next.run(req).await
}

/// One line per request: id, method, route, status, token counts, duration. Never content.
async fn access_log(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let id = state.request_ids.fetch_add(1, Ordering::Relaxed);
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "<unmatched>".to_owned());
    let started = Instant::now();
    let mut resp = next.run(req).await;
    state.metrics.record_request(&route, resp.status().as_u16());
    let usage = resp
        .extensions()
        .get::<Usage>()
        .copied()
        .unwrap_or_default();
    tracing::info!(
        target: "moeserve::access",
        request_id = id,
        method = %method,
        route = %route,
        status = resp.status().as_u16(),
        prompt_tokens = usage.prompt_tokens,
        completion_tokens = usage.completion_tokens,
        duration_ms = started.elapsed().as_millis() as u64,
        "request"
    );
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("req-{id}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/models", get(misc::models))
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access_log,
        ))
        .with_state(state)
}

/// A handler that panicked answers 500 in OpenAI's format; the server keeps running.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    ApiError::internal("internal error").into_response()
}

/// Resolves when SIGINT or SIGTERM arrives.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

/// Serves until a shutdown signal; then refuses new work (503) and drains in-flight requests.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let engine = state.engine.clone();
    let app = router(state);
    // Streams write small SSE events: without TCP_NODELAY, Nagle + delayed ACK can hold tokens ~40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining in-flight requests");
        engine.shutdown();
    })
    .await
}

/// The same over TLS (rustls), with a certificate chain and private key in PEM files.
pub async fn serve_tls(
    listener: std::net::TcpListener,
    state: AppState,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<()> {
    let config = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key).await?;
    let engine = state.engine.clone();
    let handle = axum_server::Handle::new();
    let shutdown = handle.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested: draining in-flight requests");
        engine.shutdown();
        shutdown.graceful_shutdown(None);
    });
    let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(config)
        .acceptor(axum_server::accept::NoDelayAcceptor::new());
    axum_server::from_tcp(listener)?
        .acceptor(acceptor)
        .handle(handle)
        .serve(router(state).into_make_service_with_connect_info::<SocketAddr>())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_openai_format() {
        let app: Router = Router::new()
            .route("/boom", get(|| async { panic!("boom") as &str }))
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                panic_response,
            ));
        let req = axum::http::Request::get("/boom")
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 500);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["type"], "internal_error");
        // The service still answers afterwards.
        let req = axum::http::Request::get("/boom")
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(app.oneshot(req).await.unwrap().status(), 500);
    }
}
