//! Parsing request bodies: straight from the bytes into typed shapes (no JSON tree), lists refused at
//! their limits while they are read, and errors that name fields and positions, never content.

use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;

/// Prompts in one completions request at most (also bounded by the queue: see the handler).
pub const MAX_PROMPTS: usize = 64;

/// Limits enforced while a body is parsed (so that a huge list is refused at its limit, not after it
/// was built). Set by [`with_parse_limits`] for the parse running on this thread.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_messages: usize,
    pub max_prompts: usize,
}

impl Default for ParseLimits {
    fn default() -> Self {
        Self {
            max_messages: 4096,
            max_prompts: MAX_PROMPTS,
        }
    }
}

thread_local! {
    static PARSE_LIMITS: std::cell::Cell<ParseLimits> = std::cell::Cell::new(ParseLimits::default());
}

/// Runs `f` (a parse) with `limits` in force on this thread.
pub(crate) fn with_parse_limits<R>(limits: ParseLimits, f: impl FnOnce() -> R) -> R {
    let before = PARSE_LIMITS.with(|l| l.replace(limits));
    let out = f();
    PARSE_LIMITS.with(|l| l.set(before));
    out
}

pub(crate) fn parse_limits() -> ParseLimits {
    PARSE_LIMITS.with(|l| l.get())
}

/// Names of request fields: a path segment that is not one of these (a `logit_bias` key, say) is
/// request content and is not echoed in errors.
const FIELD_NAMES: &[&str] = &[
    "model",
    "messages",
    "role",
    "content",
    "type",
    "text",
    "prompt",
    "logprobs",
    "top_logprobs",
    "max_completion_tokens",
    "echo",
    "max_tokens",
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "seed",
    "stop",
    "stop_token_ids",
    "ignore_eos",
    "n",
    "stream",
    "stream_options",
    "include_usage",
    "user",
    "tools",
    "functions",
    "tool_choice",
    "function_call",
    "response_format",
    "store",
    "min_tokens",
    "best_of",
    "suffix",
    "use_beam_search",
    "add_generation_prompt",
    "continue_final_message",
    "include_stop_str_in_output",
    "skip_special_tokens",
    "guided_json",
    "guided_regex",
    "guided_choice",
    "guided_grammar",
    "structured_outputs",
    "chat_template_kwargs",
    "reasoning_effort",
    "prompt_logprobs",
    "logits_processors",
    "bad_words",
    "length_penalty",
    "prediction",
    "audio",
    "modalities",
    "web_search_options",
    "documents",
    "tool_calls",
    "tool_call_id",
    "function",
    "name",
    "arguments",
    "parameters",
    "json_schema",
    "schema",
    "input",
    "instructions",
    "max_output_tokens",
    "output",
    "call_id",
    "format",
    "reasoning",
    "reasoning_content",
    "parallel_tool_calls",
];

/// A serde path with indices kept and only known field names shown.
fn safe_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                if FIELD_NAMES.contains(&key.as_str()) {
                    out.push_str(key);
                } else {
                    out.push_str("<key>");
                }
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// Parses a JSON object body straight into `T` (no intermediate JSON tree: memory stays near the body's
/// size), with errors that name fields but never values or unknown keys.
pub(crate) fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::bad_request("Request body must be a JSON object"));
    }
    let syntax = |e: &serde_json::Error| {
        ApiError::bad_request(format!(
            "Request body is not valid JSON ({:?} error at line {}, column {})",
            e.classify(),
            e.line(),
            e.column()
        ))
    };
    let mut de = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = safe_path(e.path());
        let inner = e.into_inner();
        if !inner.is_data() {
            return syntax(&inner);
        }
        let text = inner.to_string();
        // serde's messages can quote the offending value: keep only the category, or our own limits'
        // messages (which carry numbers only).
        let what = if let Some(own) = text.strip_prefix(LIMIT_PREFIX) {
            own.split(" at line ").next().unwrap_or(own).to_owned()
        } else if text.starts_with("missing field") {
            "missing field".into()
        } else if text.starts_with("invalid type") {
            "invalid type".into()
        } else if text.starts_with("invalid length") {
            "invalid length".into()
        } else if text.contains("did not match any variant") {
            "unsupported shape".into()
        } else {
            "invalid value".into()
        };
        // "missing field `model`": the name is one of our fields, never request content.
        let missing = text
            .strip_prefix("missing field `")
            .and_then(|t| t.split('`').next())
            .filter(|f| FIELD_NAMES.contains(f));
        if let Some(field) = missing {
            let param = if path.is_empty() {
                field.to_owned()
            } else {
                format!("{path}.{field}")
            };
            ApiError::invalid(&param, format!("Invalid request: missing field `{param}`"))
        } else if path.is_empty() {
            ApiError::bad_request(format!("Invalid request: {what}"))
        } else {
            ApiError::invalid(&path, format!("Invalid request: {what} for `{path}`"))
        }
    })?;
    de.end().map_err(|e| syntax(&e))?;
    Ok(value)
}

/// Marks errors raised by our own limits during parsing (their text is ours: numbers only).
pub(crate) const LIMIT_PREFIX: &str = "limit: ";

/// A JSON array read element by element, refused as soon as it has more than `max` elements.
pub(crate) fn bounded_seq<'de, A, T>(mut seq: A, max: usize, what: &str) -> Result<Vec<T>, A::Error>
where
    A: serde::de::SeqAccess<'de>,
    T: Deserialize<'de>,
{
    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(max).min(1024));
    while let Some(item) = seq.next_element()? {
        if out.len() == max {
            return Err(serde::de::Error::custom(format!(
                "{LIMIT_PREFIX}more than {max} {what}"
            )));
        }
        out.push(item);
    }
    Ok(out)
}
