//! The OpenAI-compatible HTTP API (axum): routes, shared state, the access log (ids, counts and timings
//! only), and serving with graceful shutdown (new requests get 503 while in-flight ones finish).

pub mod auth;
pub(crate) mod chat_output;
pub(crate) mod chat_request;
pub(crate) mod completion_output;
pub(crate) mod error;
pub(crate) mod generation;
pub(crate) mod handlers;
pub mod limits;
pub(crate) mod metrics;
pub(crate) mod misc;
pub(crate) mod output;
pub(crate) mod parse;
pub mod request;
pub(crate) mod response;
pub(crate) mod responses;
pub(crate) mod responses_output;
pub mod server;
pub(crate) mod structured;
pub mod validate;

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
pub use response::Usage;

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
    /// Host, body and size limits of requests.
    pub limits: Arc<limits::RequestLimits>,
    /// Permits for CPU work of requests (parsing, templates, tokenizing) on the blocking pool.
    prep_slots: Arc<tokio::sync::Semaphore>,
    /// A rendered prompt longer than this (bytes) cannot fit the context whatever it tokenizes to: it is
    /// refused before tokenizing (the context × the longest token's bytes).
    pub max_prompt_bytes: usize,
    /// How chat output is split into reasoning, content and tool calls (from the template, or flags).
    pub output_format: crate::parsers::OutputFormat,
    /// Structured outputs (`response_format`, constrained tool calls); `None` if the tokenizer cannot
    /// give one (requests that need it get a 400).
    pub grammars: Option<Arc<crate::grammar::Grammars>>,
    /// Per-process random secret that tenant keys of the prefix cache are derived with (never leaves
    /// the process; a restart makes every cached prefix unreachable).
    tenant_secret: Arc<[u8; 32]>,
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
        let max_context = spec_ctx.min(kv_ctx);
        let longest_token = engine.loaded.tokenizer.longest_token_bytes().max(16);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let output_format = chat
            .as_ref()
            .map(|c| crate::parsers::OutputFormat::detect(c.source()))
            .unwrap_or_default();
        let loaded = &engine.loaded;
        let grammars = crate::grammar::Grammars::new(
            &loaded.tokenizer,
            loaded.model.spec().vocab_size,
            &loaded.generation.eos_token_ids,
        )
        .map_err(|e| tracing::warn!(error = %e, "structured outputs unavailable"))
        .ok()
        .map(Arc::new);
        let tenant_secret = {
            use rand::Rng;
            let mut secret = [0u8; 32];
            rand::rng().fill(&mut secret);
            Arc::new(secret)
        };
        Self {
            tenant_secret,
            grammars,
            output_format,
            chat: chat.map(Arc::new),
            model_name: model_name.into(),
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            max_body_bytes,
            max_context,
            max_prompt_bytes: max_context.saturating_mul(longest_token),
            prep_slots: Arc::new(tokio::sync::Semaphore::new(cores)),
            metrics: Arc::new(Metrics::new(engine.stats.clone(), engine.loaded.clone())),
            keys: Arc::new(Keys::default()),
            limits: Arc::new(limits::RequestLimits::default()),
            request_ids: Arc::new(AtomicU64::new(1)),
            engine,
        }
    }

    /// Runs a request's CPU work (parsing, templating, tokenizing: time in proportion to what the client
    /// sent) on the blocking pool, at most one per core at once, so the async workers keep answering.
    pub async fn blocking<R: Send + 'static>(
        &self,
        work: impl FnOnce(&AppState) -> Result<R, ApiError> + Send + 'static,
    ) -> Result<R, ApiError> {
        let _permit = self
            .prep_slots
            .acquire()
            .await
            .map_err(|_| ApiError::shutting_down())?;
        let state = self.clone();
        tokio::task::spawn_blocking(move || work(&state))
            .await
            .map_err(|_| ApiError::internal("internal error"))?
    }

    /// This server's list limits: messages per chat request, prompts per completions request (bounded
    /// by the queue too: more prompts than it holds could never be admitted).
    pub fn parse_limits(&self) -> parse::ParseLimits {
        parse::ParseLimits {
            max_messages: self.limits.max_messages,
            max_prompts: validate::MAX_PROMPTS.min(self.engine.config.max_waiting),
        }
    }

    /// Parses a body with this server's list limits.
    pub fn parse<T: serde::de::DeserializeOwned>(&self, body: &[u8]) -> Result<T, ApiError> {
        parse::with_parse_limits(self.parse_limits(), || parse::parse_body(body))
    }

    /// Sets the request limits (allowed hosts, body deadline, message count).
    pub fn with_limits(mut self, limits: limits::RequestLimits) -> Self {
        self.limits = Arc::new(limits);
        self
    }

    /// The prefix-cache tenant of a request: a keyed hash of the API key id it was authenticated with
    /// (one anonymous tenant without keys). Clients cannot choose it: no request field reaches it.
    pub fn tenant(&self, key_id: Option<&str>) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(*self.tenant_secret);
        match key_id {
            Some(id) => {
                h.update(b"key:");
                h.update(id.as_bytes());
            }
            None => h.update(b"anonymous"),
        }
        h.finalize().into()
    }

    /// Each prompt's place in the prefix cache (empty when caching is off).
    pub fn prefix_keys(
        &self,
        prompts: &[Vec<u32>],
        key_id: Option<&str>,
    ) -> Vec<Option<Arc<crate::engine::PrefixKey>>> {
        if self.engine.config.prefix_cache_ttl.is_none() {
            return Vec::new();
        }
        let seed = crate::kv::prefix_cache::chain_seed(&self.tenant(key_id));
        let bs = self.engine.config.block_size;
        prompts
            .iter()
            .map(|p| {
                Some(Arc::new(crate::engine::PrefixKey {
                    seed,
                    prompt_hashes: crate::kv::prefix_cache::chain(&seed, p, bs),
                }))
            })
            .collect()
    }

    /// Splits chat output with these markers instead of those found in the chat template.
    pub fn with_output_format(mut self, format: crate::parsers::OutputFormat) -> Self {
        self.output_format = format;
        self
    }

    /// Whitespace inside constrained JSON (at startup, while the grammars have one owner).
    pub fn with_json_whitespace(mut self, whitespace: crate::grammar::JsonWhitespace) -> Self {
        if let Some(g) = self.grammars.take() {
            self.grammars = match Arc::try_unwrap(g) {
                Ok(g) => Some(Arc::new(g.with_whitespace(whitespace))),
                Err(shared) => Some(shared),
            };
        }
        self
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
        return ApiError::rate_limited(wait.as_secs_f64().ceil() as u64).into_response();
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
    if let Ok(v) = axum::http::HeaderValue::from_str(&format!("req-{id}")) {
        resp.headers_mut().insert("x-request-id", v);
    }
    let streamed = resp.extensions().get::<generation::Streamed>().cloned();
    let mut line = AccessLine {
        id,
        method,
        route,
        status: resp.status().as_u16(),
        usage: resp
            .extensions()
            .get::<Usage>()
            .copied()
            .unwrap_or_default(),
        started,
        streamed: None,
    };
    match streamed {
        // A stream is logged when its body ends (or the client leaves): its tokens and whole duration.
        Some(generation::Streamed(counts)) => {
            line.streamed = Some(counts);
            resp.map(|body| {
                axum::body::Body::new(http_body_util::BodyExt::map_frame(body, move |f| {
                    let _ = &line;
                    f
                }))
            })
        }
        None => {
            line.write();
            resp
        }
    }
}

/// What the access log says of one request; a streamed one writes it when dropped with its body.
struct AccessLine {
    id: u64,
    method: axum::http::Method,
    route: String,
    status: u16,
    usage: Usage,
    started: Instant,
    streamed: Option<Arc<generation::StreamCounts>>,
}

impl AccessLine {
    fn write(&self) {
        let completion_tokens = match &self.streamed {
            Some(c) => c.completion_tokens.load(Ordering::Relaxed),
            None => self.usage.completion_tokens,
        };
        tracing::info!(
            target: "moeserve::access",
            request_id = self.id,
            method = %self.method,
            route = %self.route,
            status = self.status,
            prompt_tokens = self.usage.prompt_tokens,
            completion_tokens,
            streamed = self.streamed.is_some(),
            duration_ms = self.started.elapsed().as_millis() as u64,
            "request"
        );
    }
}

impl Drop for AccessLine {
    fn drop(&mut self) {
        if self.streamed.is_some() {
            self.write();
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat_completions))
        .route("/v1/completions", post(handlers::completions))
        .route("/v1/responses", post(handlers::responses))
        .route("/v1/models", get(misc::models))
        .route("/v1/models/{id}", get(misc::model))
        .route("/health", get(misc::health))
        .route("/metrics", get(misc::metrics))
        .route("/tokenize", post(misc::tokenize))
        .route("/detokenize", post(misc::detokenize))
        .route("/tokenizer_info", get(misc::tokenizer_info))
        .fallback(misc::not_found)
        .method_not_allowed_fallback(misc::method_not_allowed)
        .layer(DefaultBodyLimit::max(state.max_body_bytes))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::read_body,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            limits::check_head,
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
