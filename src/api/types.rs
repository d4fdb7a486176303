//! OpenAI request shapes, parsed leniently (unknown fields ignored, as OpenAI does) from a JSON value, and
//! validated into engine parameters. Parse errors name the field and position, never the content. None of
//! these types derive Debug: they hold request content.

use std::collections::HashMap;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;
use crate::chat::ChatMessage;
use crate::engine::{RequestParams, SamplingParams};

/// Parses a body into a JSON value, then into `T`, with errors that name fields but not values.
pub fn parse_value(body: &[u8]) -> Result<serde_json::Value, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "Request body is not valid JSON ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    })?;
    if !value.is_object() {
        return Err(ApiError::bad_request("Request body must be a JSON object"));
    }
    Ok(value)
}

pub fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde's messages can quote the offending value: keep only the category.
        let what = if inner.starts_with("missing field") {
            "missing field"
        } else if inner.starts_with("invalid type") {
            "invalid type"
        } else if inner.starts_with("invalid length") {
            "invalid length"
        } else if inner.contains("did not match any variant") {
            "unsupported shape"
        } else {
            "invalid value"
        };
        if path == "." {
            ApiError::bad_request(format!("Invalid request: {what}"))
        } else {
            ApiError::invalid(&path, format!("Invalid request: {what} for `{path}`"))
        }
    })
}

#[derive(Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Generation parameters shared by chat and completions (OpenAI plus vLLM's extras).
#[derive(Deserialize, Default)]
pub struct GenerationFields {
    pub max_tokens: Option<u64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub min_p: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub repetition_penalty: Option<f64>,
    pub logit_bias: Option<HashMap<String, f64>>,
    pub seed: Option<i64>,
    pub stop: Option<StopField>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub n: Option<u64>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
}

#[derive(Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Deserialize)]
pub struct RequestMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

#[derive(Deserialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u64>,
    pub max_completion_tokens: Option<u64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: PromptField,
    pub logprobs: Option<u64>,
    pub echo: Option<bool>,
}

fn range(param: &str, v: Option<f64>, lo: f64, hi: f64) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) || x.is_nan() => Err(ApiError::invalid(
            param,
            format!("`{param}` must be between {lo} and {hi}"),
        )),
        other => Ok(other),
    }
}

/// Validated parameters, before the prompt length is known.
pub struct Validated {
    pub params: RequestParams,
    /// `max_tokens` as asked (None: fill the context).
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

pub const MAX_N: u64 = 64;
pub const MAX_TOP_LOGPROBS: u64 = 20;
pub const MAX_STOPS: usize = 16;

/// Checks ranges and builds engine parameters.
pub fn validate(
    g: &GenerationFields,
    max_tokens_override: Option<u64>,
    logprobs: bool,
    top_logprobs: u64,
    vocab_size: usize,
) -> Result<Validated, ApiError> {
    let temperature = range("temperature", g.temperature, 0.0, 2.0)?.unwrap_or(1.0);
    let top_p = range("top_p", g.top_p, 0.0, 1.0)?.unwrap_or(1.0);
    if top_p == 0.0 {
        return Err(ApiError::invalid("top_p", "`top_p` must be greater than 0"));
    }
    let min_p = range("min_p", g.min_p, 0.0, 1.0)?.unwrap_or(0.0);
    let presence = range("presence_penalty", g.presence_penalty, -2.0, 2.0)?.unwrap_or(0.0);
    let frequency = range("frequency_penalty", g.frequency_penalty, -2.0, 2.0)?.unwrap_or(0.0);
    let repetition = range("repetition_penalty", g.repetition_penalty, 0.01, 10.0)?.unwrap_or(1.0);
    let top_k = match g.top_k {
        None | Some(-1) | Some(0) => None,
        Some(k) if k > 0 => Some(k as usize),
        Some(_) => {
            return Err(ApiError::invalid(
                "top_k",
                "`top_k` must be -1 (disabled) or positive",
            ))
        }
    };
    let n = g.n.unwrap_or(1);
    if n == 0 || n > MAX_N {
        return Err(ApiError::invalid(
            "n",
            format!("`n` must be between 1 and {MAX_N}"),
        ));
    }
    if top_logprobs > MAX_TOP_LOGPROBS {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
        ));
    }
    let max_tokens = match max_tokens_override.or(g.max_tokens) {
        Some(0) => {
            return Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` must be at least 1",
            ))
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        None => None,
    };
    let mut logit_bias = Vec::new();
    for (k, v) in g.logit_bias.iter().flatten() {
        let id: u32 = k
            .parse()
            .ok()
            .filter(|id| (*id as usize) < vocab_size)
            .ok_or_else(|| {
                ApiError::invalid(
                    "logit_bias",
                    "`logit_bias` keys must be token ids in the vocabulary",
                )
            })?;
        if !(-100.0..=100.0).contains(v) {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` values must be between -100 and 100",
            ));
        }
        logit_bias.push((id, *v as f32));
    }
    let stop = match &g.stop {
        None => Vec::new(),
        Some(StopField::One(s)) => vec![s.clone()],
        Some(StopField::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("at most {MAX_STOPS} stop sequences"),
        ));
    }
    let stream = g.stream.unwrap_or(false);
    Ok(Validated {
        params: RequestParams {
            max_tokens: max_tokens.unwrap_or(usize::MAX),
            sampling: SamplingParams {
                temperature: temperature as f32,
                top_k,
                top_p: top_p as f32,
                min_p: min_p as f32,
                presence_penalty: presence as f32,
                frequency_penalty: frequency as f32,
                repetition_penalty: repetition as f32,
                logit_bias,
                seed: g.seed.map(|s| s as u64),
            },
            stop,
            stop_token_ids: g.stop_token_ids.clone().unwrap_or_default(),
            ignore_eos: g.ignore_eos.unwrap_or(false),
            n: n as usize,
            logprobs,
            top_logprobs: top_logprobs as usize,
        },
        max_tokens,
        stream,
        include_usage: stream && g.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

/// A parsed and validated chat request (the prompt is rendered later, with the model's template).
pub struct ParsedChat {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub validated: Validated,
}

/// Parses and validates a `/v1/chat/completions` body. Never panics; every failure is a 4xx ApiError.
pub fn parse_chat(body: &[u8], vocab_size: usize) -> Result<ParsedChat, ApiError> {
    let value = parse_value(body)?;
    let req: ChatRequest = from_value(&value)?;
    let gen: GenerationFields = from_value(&value)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        let content = match m.content {
            None => String::new(),
            Some(MessageContent::Text(t)) => t,
            Some(MessageContent::Parts(parts)) => {
                let mut texts = Vec::new();
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => texts.push(t),
                        _ => {
                            return Err(ApiError::invalid(
                                &format!("messages[{i}].content"),
                                "Only text content parts are supported",
                            ))
                        }
                    }
                }
                texts.join("\n")
            }
        };
        messages.push(ChatMessage {
            role: m.role,
            content,
        });
    }
    let logprobs = req.logprobs.unwrap_or(false);
    let top = req.top_logprobs.unwrap_or(0);
    if top > 0 && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    let validated = validate(&gen, req.max_completion_tokens, logprobs, top, vocab_size)?;
    Ok(ParsedChat {
        model: req.model,
        messages,
        validated,
    })
}

/// A parsed and validated completions request.
pub struct ParsedCompletion {
    pub model: String,
    pub prompt: PromptField,
    pub validated: Validated,
}

/// Parses and validates a `/v1/completions` body. Never panics; every failure is a 4xx ApiError.
pub fn parse_completion(body: &[u8], vocab_size: usize) -> Result<ParsedCompletion, ApiError> {
    let value = parse_value(body)?;
    let req: CompletionRequest = from_value(&value)?;
    let gen: GenerationFields = from_value(&value)?;
    if req.echo.unwrap_or(false) {
        return Err(ApiError::invalid("echo", "`echo` is not supported"));
    }
    let top = req.logprobs;
    if top.is_some_and(|t| t > 5) {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` must be between 0 and 5",
        ));
    }
    let validated = validate(&gen, None, top.is_some(), top.unwrap_or(0), vocab_size)?;
    Ok(ParsedCompletion {
        model: req.model,
        prompt: req.prompt,
        validated,
    })
}
