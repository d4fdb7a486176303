//! The small routes: `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, `POST /tokenize`, `POST /detokenize`,
//! `GET /tokenizer_info` (vLLM's shapes),
//! and the OpenAI-format 404 / 405 fallbacks.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::json;

use super::chat_request::chat_messages;
use super::error::ApiError;
use super::handlers::{body_bytes, check_model};
use super::request::MessageList;
use super::AppState;

/// The one model this server serves, as OpenAI's model object.
fn model_object(state: &AppState) -> serde_json::Value {
    json!({
        "id": &*state.model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "moeserve",
        "max_model_len": state.max_context,
    })
}

pub(crate) async fn models(State(state): State<AppState>) -> Json<serde_json::Value> {
    Json(json!({"object": "list", "data": [model_object(&state)]}))
}

/// `GET /v1/models/{id}`: the model object, or a 404 that does not echo the id asked for.
pub(crate) async fn model(
    State(state): State<AppState>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match check_model(&state, &id) {
        Ok(()) => Json(model_object(&state)).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /tokenizer_info` (vLLM's): what a remote tokenizer needs besides `/tokenize` and `/detokenize`
/// (lm-evaluation-harness's `tokenizer_backend=remote`): the special tokens' texts, the chat template,
/// the context length.
pub(crate) async fn tokenizer_info(State(state): State<AppState>) -> Json<serde_json::Value> {
    let loaded = &state.engine.loaded;
    let text = |id: Option<u32>| id.and_then(|id| loaded.tokenizer.decode(&[id], false).ok());
    let eos = text(loaded.generation.eos_token_ids.first().copied());
    Json(json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": state.max_context,
        "vocab_size": loaded.model.spec().vocab_size,
        "eos_token": eos,
        "eos_token_ids": loaded.generation.eos_token_ids,
        "bos_token": text(loaded.generation.bos_token_id),
        "pad_token": eos,
        "chat_template": loaded.chat_template.as_ref().map(|(source, _)| source),
    }))
}

pub(crate) async fn health(State(state): State<AppState>) -> Response {
    if state
        .engine
        .stats
        .shutting_down
        .load(std::sync::atomic::Ordering::Relaxed)
    {
        ApiError::shutting_down().into_response()
    } else {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    }
}

#[derive(Deserialize)]
struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<MessageList>,
    add_special_tokens: Option<bool>,
    add_generation_prompt: Option<bool>,
}

pub(crate) async fn tokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&state, body)?;
    let tokens = state
        .blocking(move |state| tokenize_body(state, &body))
        .await?;
    Ok(
        Json(json!({"count": tokens.len(), "max_model_len": state.max_context, "tokens": tokens}))
            .into_response(),
    )
}

/// Parses, renders and tokenizes a `/tokenize` body (on the blocking pool).
fn tokenize_body(state: &AppState, body: &[u8]) -> Result<Vec<u32>, ApiError> {
    let req: TokenizeRequest = state.parse(body)?;
    if let Some(m) = &req.model {
        check_model(state, m)?;
    }
    let tok = &state.engine.loaded.tokenizer;
    let (text, special) = match (req.prompt, req.messages) {
        (Some(p), None) => (p, req.add_special_tokens.unwrap_or(true)),
        (None, Some(msgs)) => {
            let messages = chat_messages(msgs.0)?;
            let template = state
                .chat
                .as_ref()
                .ok_or_else(|| ApiError::bad_request("This model has no chat template"))?;
            let text = template
                .render(&messages, req.add_generation_prompt.unwrap_or(true))
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            (text, req.add_special_tokens.unwrap_or(false))
        }
        _ => {
            return Err(ApiError::bad_request(
                "Give exactly one of `prompt` or `messages`",
            ))
        }
    };
    tok.encode(&text, special)
        .map_err(|_| ApiError::internal("tokenization failed"))
}

#[derive(Deserialize)]
struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub(crate) async fn detokenize(
    State(state): State<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body_bytes(&state, body)?;
    let text = state
        .blocking(move |state| {
            let req: DetokenizeRequest = state.parse(&body)?;
            if let Some(m) = &req.model {
                check_model(state, m)?;
            }
            let vocab = state.engine.loaded.tokenizer.vocab_size();
            if req.tokens.iter().any(|&t| t as usize >= vocab) {
                return Err(ApiError::invalid(
                    "tokens",
                    format!("Token ids must be below {vocab}"),
                ));
            }
            state
                .engine
                .loaded
                .tokenizer
                .decode(&req.tokens, false)
                .map_err(|_| ApiError::internal("detokenization failed"))
        })
        .await?;
    Ok(Json(json!({"prompt": text})).into_response())
}

/// Prometheus text format (counts and timings only, never content).
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            super::metrics::CONTENT_TYPE,
        )],
        state.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found()
}

pub(crate) async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}
