//! From parsed request shapes to engine parameters: fields of OpenAI's or vLLM's API that this server does
//! not implement refused by name ([`refuse_unimplemented`]), ranges and list sizes checked, stop strings
//! compiled. Errors name the field, never the content.

use std::sync::Arc;

use serde::Deserialize;

use super::chat_request::{chat_messages, chat_options, ChatOptions};
use super::error::ApiError;
use super::parse::parse_body;
use super::request::{ChatRequest, CompletionRequest, GenerationFields, PromptField, StopField};
use crate::chat::ChatMessage;
use crate::engine::stop::StopStrings;
use crate::engine::{RequestParams, SamplingParams};

/// Fields of OpenAI's and vLLM's request APIs this server does not implement, when set to anything but
/// their neutral value: a field silently ignored turns a missing feature into a wrong answer nobody
/// notices (a schema not enforced, a tool never called), so each is a 400 naming it.
#[derive(Deserialize, Default)]
struct NotImplemented {
    functions: Option<Vec<serde::de::IgnoredAny>>,
    function_call: Option<Choice>,
    response_format: Option<ResponseFormat>,
    store: Option<bool>,
    min_tokens: Option<u64>,
    best_of: Option<u64>,
    suffix: Option<String>,
    use_beam_search: Option<bool>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
    include_stop_str_in_output: Option<bool>,
    reasoning_effort: Option<serde::de::IgnoredAny>,
    logits_processors: Option<serde::de::IgnoredAny>,
    bad_words: Option<serde::de::IgnoredAny>,
    length_penalty: Option<serde::de::IgnoredAny>,
    prediction: Option<serde::de::IgnoredAny>,
    audio: Option<serde::de::IgnoredAny>,
    modalities: Option<Vec<String>>,
    web_search_options: Option<serde::de::IgnoredAny>,
    documents: Option<serde::de::IgnoredAny>,
}

/// `tool_choice` / `function_call`: a mode string or a named function.
#[derive(Deserialize)]
#[serde(untagged)]
enum Choice {
    Mode(String),
    Other(serde::de::IgnoredAny),
}

#[derive(Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: Option<String>,
}

/// A 400 naming the first field of [`NotImplemented`] that is set to something this server would not honour.
/// `chat`: the body is a chat request (which implements `response_format`).
fn refuse_unimplemented(body: &[u8], chat: bool) -> Result<(), ApiError> {
    let n: NotImplemented = parse_body(body)?;
    let refuse = |field: &str, what: &str| {
        Err(ApiError::invalid(
            field,
            format!("`{field}` is not supported by this server ({what})"),
        ))
    };
    let mode_ok = |c: &Option<Choice>| match c {
        None => true,
        Some(Choice::Mode(m)) => m == "none" || m == "auto",
        Some(Choice::Other(_)) => false,
    };
    if n.functions.as_ref().is_some_and(|t| !t.is_empty()) {
        return refuse("functions", "the deprecated `functions` API; use `tools`");
    }
    if !mode_ok(&n.function_call) {
        return refuse(
            "function_call",
            "the deprecated `function_call` API; use `tool_choice`",
        );
    }
    if !chat
        && n.response_format
            .as_ref()
            .is_some_and(|f| f.kind.as_deref().unwrap_or("text") != "text")
    {
        return refuse(
            "response_format",
            "structured outputs are available on /v1/chat/completions",
        );
    }
    if n.store == Some(true) {
        return refuse(
            "store",
            "nothing is stored: requests are kept only while they run",
        );
    }
    if n.min_tokens.is_some_and(|v| v > 0) {
        return refuse("min_tokens", "not implemented");
    }
    if n.best_of.is_some_and(|v| v > 1) {
        return refuse("best_of", "not implemented; use `n`");
    }
    if n.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return refuse("suffix", "insertion is not implemented");
    }
    if n.modalities
        .as_ref()
        .is_some_and(|m| m.iter().any(|x| x != "text"))
    {
        return refuse("modalities", "text only");
    }
    let flags = [
        ("use_beam_search", n.use_beam_search == Some(true)),
        (
            "add_generation_prompt",
            n.add_generation_prompt == Some(false),
        ),
        (
            "continue_final_message",
            n.continue_final_message == Some(true),
        ),
        (
            "include_stop_str_in_output",
            n.include_stop_str_in_output == Some(true),
        ),
        ("reasoning_effort", n.reasoning_effort.is_some()),
        ("logits_processors", n.logits_processors.is_some()),
        ("bad_words", n.bad_words.is_some()),
        ("length_penalty", n.length_penalty.is_some()),
        ("prediction", n.prediction.is_some()),
        ("audio", n.audio.is_some()),
        ("web_search_options", n.web_search_options.is_some()),
        ("documents", n.documents.is_some()),
    ];
    match flags.iter().find(|(_, set)| *set) {
        Some((field, _)) => refuse(field, "not implemented"),
        None => Ok(()),
    }
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

/// Guided decoding as vLLM's extension fields ask for it.
#[derive(Debug, Clone)]
pub enum Guided {
    Json(serde_json::Value),
    JsonObject,
    Regex(String),
    Choice(Vec<String>),
}

/// Choices in one `guided_choice` at most.
pub const MAX_CHOICES: usize = 256;

/// vLLM's `structured_outputs` / `guided_*` fields, at most one kind.
fn guided(g: &GenerationFields) -> Result<Option<Guided>, ApiError> {
    let so = g.structured_outputs.as_ref();
    if g.guided_grammar.is_some() || so.is_some_and(|s| s.grammar.is_some()) {
        let field = if g.guided_grammar.is_some() {
            "guided_grammar"
        } else {
            "structured_outputs.grammar"
        };
        return Err(ApiError::invalid(
            field,
            "grammars are not supported; use a JSON schema, a regex or choices",
        ));
    }
    if so.is_some_and(|s| s.structural_tag.is_some()) {
        return Err(ApiError::invalid(
            "structured_outputs.structural_tag",
            "structural tags are not supported; use `tools`",
        ));
    }
    let json = |v: &serde_json::Value, field: &str| match v {
        // vLLM accepts the schema as JSON text too.
        serde_json::Value::String(text) => serde_json::from_str(text)
            .map(Guided::Json)
            .map_err(|_| ApiError::invalid(field, "the schema is not valid JSON")),
        other => Ok(Guided::Json(other.clone())),
    };
    let mut found: Vec<(&str, Guided)> = Vec::new();
    if let Some(v) = &g.guided_json {
        found.push(("guided_json", json(v, "guided_json")?));
    }
    if let Some(r) = &g.guided_regex {
        found.push(("guided_regex", Guided::Regex(r.clone())));
    }
    if let Some(c) = &g.guided_choice {
        found.push(("guided_choice", Guided::Choice(c.clone())));
    }
    if let Some(s) = so {
        if let Some(v) = &s.json {
            found.push((
                "structured_outputs.json",
                json(v, "structured_outputs.json")?,
            ));
        }
        if let Some(r) = &s.regex {
            found.push(("structured_outputs.regex", Guided::Regex(r.clone())));
        }
        if let Some(c) = &s.choice {
            found.push(("structured_outputs.choice", Guided::Choice(c.clone())));
        }
        if s.json_object == Some(true) {
            found.push(("structured_outputs.json_object", Guided::JsonObject));
        }
    }
    if found.len() > 1 {
        return Err(ApiError::invalid(
            found[1].0,
            "only one kind of guided decoding per request",
        ));
    }
    let Some((field, guided)) = found.pop() else {
        return Ok(None);
    };
    if let Guided::Choice(c) = &guided {
        if c.is_empty() || c.len() > MAX_CHOICES {
            return Err(ApiError::invalid(
                field,
                format!("give between 1 and {MAX_CHOICES} choices"),
            ));
        }
    }
    Ok(Some(guided))
}

/// Validated parameters, before the prompt length is known.
pub struct Validated {
    pub params: RequestParams,
    /// `max_tokens` as asked (None: fill the context).
    pub max_tokens: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
    /// Completions: the prompt's text (and, with `logprobs`, its tokens' logprobs) starts each choice.
    pub echo: bool,
    /// vLLM's `prompt_logprobs` was asked for (answered in its own field).
    pub prompt_logprobs: bool,
    /// vLLM's guided decoding.
    pub guided: Option<Guided>,
}

pub const MAX_N: u64 = 64;
pub use super::parse::MAX_PROMPTS;
pub const MAX_TOP_LOGPROBS: u64 = 20;
pub const MAX_STOPS: usize = 16;
/// Longest stop sequence in bytes (matching time does not depend on it; this bounds the request's memory).
pub const MAX_STOP_BYTES: usize = 4096;
pub const MAX_STOP_TOKEN_IDS: usize = 256;
/// `logit_bias` entries at most (each costs a little on every sampled token).
pub const MAX_LOGIT_BIAS: usize = 1024;

/// What a request asks for beyond the shared generation fields.
#[derive(Default)]
pub struct Asked {
    /// `max_completion_tokens` (chat's newer name), which wins over `max_tokens`.
    pub max_tokens_override: Option<u64>,
    pub logprobs: bool,
    pub top_logprobs: u64,
    /// `echo` (completions): the prompt is part of the answer, so `max_tokens: 0` is allowed.
    pub echo: bool,
}

/// Checks ranges and builds engine parameters.
pub fn validate(
    g: &GenerationFields,
    asked: Asked,
    vocab_size: usize,
) -> Result<Validated, ApiError> {
    let Asked {
        max_tokens_override,
        logprobs,
        top_logprobs,
        echo,
    } = asked;
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
    let prompt_logprobs = match g.prompt_logprobs {
        None => None,
        Some(k) if (0..=MAX_TOP_LOGPROBS as i64).contains(&k) => Some(k as usize),
        Some(_) => {
            return Err(ApiError::invalid(
                "prompt_logprobs",
                format!("`prompt_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}"),
            ))
        }
    };
    // Only the prompt's logprobs wanted: nothing needs to be generated.
    let prompt_only = echo || prompt_logprobs.is_some();
    let max_tokens = match max_tokens_override.or(g.max_tokens) {
        Some(0) if !prompt_only => {
            return Err(ApiError::invalid(
                "max_tokens",
                "`max_tokens` must be at least 1 (0 only with `echo` or `prompt_logprobs`)",
            ))
        }
        Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
        None => None,
    };
    if g.logit_bias
        .as_ref()
        .is_some_and(|b| b.len() > MAX_LOGIT_BIAS)
    {
        return Err(ApiError::invalid(
            "logit_bias",
            format!("at most {MAX_LOGIT_BIAS} `logit_bias` entries"),
        ));
    }
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
    if stop.iter().any(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!("a stop sequence may be at most {MAX_STOP_BYTES} bytes long"),
        ));
    }
    let stop_token_ids = g.stop_token_ids.clone().unwrap_or_default();
    if stop_token_ids.len() > MAX_STOP_TOKEN_IDS {
        return Err(ApiError::invalid(
            "stop_token_ids",
            format!("at most {MAX_STOP_TOKEN_IDS} stop token ids"),
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
            stop: Arc::new(StopStrings::new(&stop)),
            stop_token_ids,
            ignore_eos: g.ignore_eos.unwrap_or(false),
            n: n as usize,
            logprobs,
            top_logprobs: top_logprobs as usize,
            prompt_logprobs,
            skip_special_tokens: g.skip_special_tokens.unwrap_or(true),
        },
        echo,
        prompt_logprobs: prompt_logprobs.is_some(),
        guided: guided(g)?,
        max_tokens,
        stream,
        include_usage: stream && g.stream_options.as_ref().is_some_and(|o| o.include_usage),
    })
}

/// A parsed and validated chat request (the prompt is rendered later, with the model's template).
pub struct ParsedChat {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub options: ChatOptions,
    pub validated: Validated,
}

/// Parses and validates a `/v1/chat/completions` body. Never panics; every failure is a 4xx ApiError.
pub fn parse_chat(body: &[u8], vocab_size: usize) -> Result<ParsedChat, ApiError> {
    let mut req: ChatRequest = parse_body(body)?;
    let gen: GenerationFields = parse_body(body)?;
    refuse_unimplemented(body, true)?;
    if req.messages.0.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must not be empty",
        ));
    }
    let options = chat_options(&mut req)?;
    let messages = chat_messages(std::mem::take(&mut req.messages.0))?;
    let logprobs = req.logprobs.unwrap_or(false);
    let top = req.top_logprobs.unwrap_or(0);
    if top > 0 && !logprobs {
        return Err(ApiError::invalid(
            "top_logprobs",
            "`top_logprobs` needs `logprobs: true`",
        ));
    }
    if gen.prompt_logprobs.is_some() && gen.stream == Some(true) {
        return Err(ApiError::invalid(
            "prompt_logprobs",
            "`prompt_logprobs` is not available when streaming chat completions",
        ));
    }
    let asked = Asked {
        max_tokens_override: req.max_completion_tokens,
        logprobs,
        top_logprobs: top,
        echo: false,
    };
    let validated = validate(&gen, asked, vocab_size)?;
    Ok(ParsedChat {
        model: req.model,
        messages,
        options,
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
    let req: CompletionRequest = parse_body(body)?;
    let gen: GenerationFields = parse_body(body)?;
    refuse_unimplemented(body, false)?;
    let top = req.logprobs;
    if top.is_some_and(|t| t > 5) {
        return Err(ApiError::invalid(
            "logprobs",
            "`logprobs` must be between 0 and 5",
        ));
    }
    let asked = Asked {
        logprobs: top.is_some(),
        top_logprobs: top.unwrap_or(0),
        echo: req.echo.unwrap_or(false),
        ..Asked::default()
    };
    let mut validated = validate(&gen, asked, vocab_size)?;
    if validated.echo && validated.params.logprobs {
        // The echoed prompt's tokens carry logprobs too.
        validated.params.prompt_logprobs = validated
            .params
            .prompt_logprobs
            .max(Some(validated.params.top_logprobs));
    }
    Ok(ParsedCompletion {
        model: req.model,
        prompt: req.prompt,
        validated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::parse::{with_parse_limits, ParseLimits};

    fn err(body: &str) -> ApiError {
        match parse_chat(body.as_bytes(), 100) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        }
    }

    #[test]
    fn unimplemented_fields_are_refused_by_name_neutral_values_accepted() {
        let base = r#""model": "m", "messages": [{"role": "user", "content": "hi"}]"#;
        for (extra, field) in [
            (r#""tool_choice": "required""#, "tool_choice"),
            (
                r#""tool_choice": {"type": "function", "function": {"name": "f"}}"#,
                "tool_choice.function.name",
            ),
            (
                r#""tools": [{"type": "function", "function": {"name": "bad name"}}]"#,
                "tools[0].function.name",
            ),
            (r#""tools": [{"type": "retrieval"}]"#, "tools[0].type"),
            (
                r#""response_format": {"type": "json_schema", "json_schema": {}}"#,
                "response_format.json_schema.schema",
            ),
            (
                r#""response_format": {"type": "xml"}"#,
                "response_format.type",
            ),
            (r#""store": true"#, "store"),
            (r#""min_tokens": 4"#, "min_tokens"),
            (r#""best_of": 3"#, "best_of"),
            (r#""guided_grammar": "start: x""#, "guided_grammar"),
            (
                r#""guided_choice": ["a"], "guided_regex": "b""#,
                "guided_choice",
            ),
        ] {
            let e = err(&format!("{{{base}, {extra}}}"));
            assert_eq!(e.param.as_deref(), Some(field), "{extra}");
        }
        for extra in [
            r#""tools": []"#,
            r#""tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]"#,
            r#""chat_template_kwargs": {"enable_thinking": false}"#,
            r#""tools": null"#,
            r#""tool_choice": "none""#,
            r#""response_format": {"type": "text"}"#,
            r#""response_format": {"type": "json_object"}"#,
            r#""store": false"#,
            r#""min_tokens": 0"#,
            r#""best_of": 1"#,
            r#""user": "someone""#,
            r#""parallel_tool_calls": true"#,
            r#""skip_special_tokens": true"#,
            r#""something_new": {"x": 1}"#,
        ] {
            assert!(
                parse_chat(format!("{{{base}, {extra}}}").as_bytes(), 100).is_ok(),
                "{extra}"
            );
        }
        let c = parse_completion(br#"{"model": "m", "prompt": "a", "suffix": "b"}"#, 100);
        assert_eq!(c.err().and_then(|e| e.param).as_deref(), Some("suffix"));
        let c = parse_completion(
            br#"{"model": "m", "prompt": "a", "response_format": {"type": "json_object"}}"#,
            100,
        );
        assert_eq!(
            c.err().and_then(|e| e.param).as_deref(),
            Some("response_format")
        );
    }

    #[test]
    fn errors_name_our_fields_never_client_keys_or_values() {
        let e = err(r#"{"messages": [{"role": "user", "content": "hi"}]}"#);
        assert_eq!(e.param.as_deref(), Some("model"));
        let e = err(r#"{"model": "m", "messages": [{"content": "hi"}]}"#);
        assert_eq!(e.param.as_deref(), Some("messages[0].role"));
        let e = err(
            r#"{"model": "m", "messages": [{"role": "u", "content": "hi"}],
               "logit_bias": {"CANARY_KEY": "CANARY_VALUE"}}"#,
        );
        let text = format!("{} {:?}", e.message, e.param);
        assert!(!text.contains("CANARY"), "{text}");
        assert_eq!(e.param.as_deref(), Some("logit_bias.<key>"));
    }

    #[test]
    fn message_lists_stop_at_the_limit() {
        let body = format!(
            r#"{{"model": "m", "messages": [{}]}}"#,
            [r#"{"role": "user", "content": "x"}"#; 11].join(",")
        );
        let limits = ParseLimits {
            max_messages: 10,
            max_prompts: 2,
        };
        let e = match with_parse_limits(limits, || parse_chat(body.as_bytes(), 100)) {
            Err(e) => e,
            Ok(_) => panic!("accepted"),
        };
        assert!(e.message.contains("more than 10 messages"), "{}", e.message);
        let three = r#"{"model": "m", "prompt": ["a", "b", "c"]}"#;
        assert!(with_parse_limits(limits, || parse_completion(three.as_bytes(), 100)).is_err());
        let mixed = r#"{"model": "m", "prompt": ["a", [1, 2]]}"#;
        assert!(parse_completion(mixed.as_bytes(), 100).is_err());
        let ids = r#"{"model": "m", "prompt": [1, 2, 3]}"#;
        assert!(matches!(
            parse_completion(ids.as_bytes(), 100).map(|p| p.prompt),
            Ok(PromptField::Ids(v)) if v == [1, 2, 3]
        ));
    }
}
