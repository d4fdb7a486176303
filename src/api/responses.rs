//! `POST /v1/responses`, stateless: a Responses API request is turned into the equivalent chat request
//! (instructions → system message, input items → messages, earlier `function_call` /
//! `function_call_output` items → assistant tool calls and tool results, flat function tools → chat
//! tools, `text.format` → `response_format`) and validated and run exactly as one. Nothing is kept
//! after the request: `store: true`, `previous_response_id`, `conversation` and `background` are 400s.

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::parse::{bounded_seq, parse_body, parse_limits};

/// The Responses request fields this server reads (others that change behaviour are refused below).
#[derive(Deserialize)]
struct ResponsesRequest {
    model: String,
    input: Option<Input>,
    instructions: Option<String>,
    tools: Option<Vec<Value>>,
    tool_choice: Option<Value>,
    parallel_tool_calls: Option<bool>,
    max_output_tokens: Option<u64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    stream: Option<bool>,
    text: Option<TextOptions>,
    store: Option<bool>,
    previous_response_id: Option<String>,
    conversation: Option<Value>,
    background: Option<bool>,
    reasoning: Option<Value>,
    prompt: Option<Value>,
    include: Option<Vec<String>>,
    truncation: Option<String>,
    top_logprobs: Option<u64>,
    max_tool_calls: Option<u64>,
}

#[derive(Deserialize)]
struct TextOptions {
    format: Option<Value>,
    verbosity: Option<String>,
}

/// `input`: a string, or a list of items (at most `--max-messages`).
enum Input {
    Text(String),
    Items(Vec<Value>),
}

impl<'de> Deserialize<'de> for Input {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Input;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or a list of input items")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Input, E> {
                Ok(Input::Text(v.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Input, E> {
                Ok(Input::Text(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Input, A::Error> {
                bounded_seq(seq, parse_limits().max_messages, "input items").map(Input::Items)
            }
        }
        d.deserialize_any(V)
    }
}

/// What the answer repeats from the request (OpenAI's response object carries the settings).
#[derive(Default, Clone)]
pub(crate) struct ResponsesSettings {
    pub tools: Vec<Value>,
    pub tool_choice: Value,
    pub parallel_tool_calls: bool,
    pub temperature: f64,
    pub top_p: f64,
    pub max_output_tokens: Option<u64>,
    pub text_format: Value,
}

fn refuse(field: &str, what: &str) -> ApiError {
    ApiError::invalid(
        field,
        format!("`{field}` is not supported by this server ({what})"),
    )
}

/// The text of a message item's `content`: a string or a list of `input_text` / `output_text` parts.
fn content_text(content: &Value, param: &str) -> Result<String, ApiError> {
    match content {
        Value::String(s) => Ok(s.clone()),
        Value::Array(parts) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (k, p) in parts.iter().enumerate() {
                match (p.get("type").and_then(Value::as_str), p.get("text")) {
                    (Some("input_text" | "output_text" | "text"), Some(Value::String(t))) => {
                        texts.push(t.as_str())
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}.content[{k}]"),
                            "Only text content parts are supported",
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        _ => Err(ApiError::invalid(
            &format!("{param}.content"),
            "`content` must be a string or a list of text parts",
        )),
    }
}

/// A string field of an input item.
fn item_str<'a>(item: &'a Value, key: &str, param: &str) -> Result<&'a str, ApiError> {
    item.get(key).and_then(Value::as_str).ok_or_else(|| {
        ApiError::invalid(
            &format!("{param}.{key}"),
            format!("`{key}` must be a string"),
        )
    })
}

/// Input items → chat messages. Consecutive `function_call` items become one assistant message with
/// several tool calls; a `reasoning` item's text goes with the assistant turn that follows it.
fn messages(input: Input, instructions: Option<String>) -> Result<Vec<Value>, ApiError> {
    let mut out: Vec<Value> = Vec::new();
    if let Some(i) = instructions {
        out.push(json!({"role": "system", "content": i}));
    }
    let items = match input {
        Input::Text(t) => {
            return Ok({
                out.push(json!({"role": "user", "content": t}));
                out
            })
        }
        Input::Items(items) => items,
    };
    let mut reasoning: Option<String> = None;
    for (i, item) in items.into_iter().enumerate() {
        let param = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => {
                let role = item_str(&item, "role", &param)?;
                let role = if role == "developer" { "system" } else { role };
                let content = content_text(item.get("content").unwrap_or(&Value::Null), &param)?;
                let mut m = json!({"role": role, "content": content});
                if role == "assistant" {
                    if let Some(r) = reasoning.take() {
                        m["reasoning_content"] = r.into();
                    }
                }
                out.push(m);
            }
            "function_call" => {
                let call = json!({
                    "id": item_str(&item, "call_id", &param)?,
                    "type": "function",
                    "function": {
                        "name": item_str(&item, "name", &param)?,
                        "arguments": item_str(&item, "arguments", &param)?,
                    }
                });
                let continues = out
                    .last()
                    .is_some_and(|m| m["role"] == "assistant" && m.get("tool_calls").is_some());
                if continues {
                    if let Some(Value::Array(calls)) =
                        out.last_mut().and_then(|m| m.get_mut("tool_calls"))
                    {
                        calls.push(call);
                    }
                } else {
                    let mut m = json!({"role": "assistant", "content": null, "tool_calls": [call]});
                    if let Some(r) = reasoning.take() {
                        m["reasoning_content"] = r.into();
                    }
                    out.push(m);
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(v @ Value::Array(_)) => content_text(v, &format!("{param}.output"))?,
                    _ => {
                        return Err(ApiError::invalid(
                            &format!("{param}.output"),
                            "`output` must be a string",
                        ))
                    }
                };
                out.push(json!({
                    "role": "tool",
                    "tool_call_id": item_str(&item, "call_id", &param)?,
                    "content": output,
                }));
            }
            "reasoning" => {
                let text: Vec<&str> = ["content", "summary"]
                    .iter()
                    .filter_map(|k| item.get(*k).and_then(Value::as_array))
                    .flatten()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect();
                if !text.is_empty() {
                    reasoning = Some(text.join("\n"));
                }
            }
            _ => {
                return Err(ApiError::invalid(
                    &format!("{param}.type"),
                    "Only message, function_call, function_call_output and reasoning items are \
                     supported",
                ))
            }
        }
    }
    Ok(out)
}

/// The Responses body as the equivalent chat request body, and the settings the answer repeats.
pub(crate) fn to_chat_body(body: &[u8]) -> Result<(Vec<u8>, ResponsesSettings), ApiError> {
    let req: ResponsesRequest = parse_body(body)?;
    if req.store == Some(true) {
        return Err(refuse(
            "store",
            "nothing is stored: requests are kept only while they run",
        ));
    }
    if req.previous_response_id.is_some() {
        return Err(refuse(
            "previous_response_id",
            "no response is kept; send the whole conversation in `input`",
        ));
    }
    if req.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(refuse("conversation", "no conversation is kept"));
    }
    if req.background == Some(true) {
        return Err(refuse(
            "background",
            "responses are not kept to be fetched later",
        ));
    }
    if req.reasoning.as_ref().is_some_and(|r| {
        r.as_object()
            .is_some_and(|o| o.values().any(|v| !v.is_null()))
    }) {
        return Err(refuse(
            "reasoning",
            "reasoning effort is set by the model's template",
        ));
    }
    if req.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(refuse("prompt", "stored prompt templates"));
    }
    if req.include.as_ref().is_some_and(|i| !i.is_empty()) {
        return Err(refuse("include", "no extra output data"));
    }
    if req.truncation.as_deref().is_some_and(|t| t != "disabled") {
        return Err(refuse("truncation", "only \"disabled\""));
    }
    if req.top_logprobs.is_some_and(|n| n > 0) {
        return Err(refuse("top_logprobs", "logprobs on /v1/responses"));
    }
    if req.max_tool_calls.is_some() {
        return Err(refuse("max_tool_calls", "not implemented"));
    }
    if req
        .text
        .as_ref()
        .and_then(|t| t.verbosity.as_deref())
        .is_some_and(|v| v != "medium")
    {
        return Err(refuse("text.verbosity", "only \"medium\""));
    }
    let Some(input) = req.input else {
        return Err(ApiError::invalid("input", "`input` is required"));
    };
    let mut chat = Map::new();
    chat.insert("model".into(), req.model.into());
    chat.insert(
        "messages".into(),
        Value::Array(messages(input, req.instructions)?),
    );
    let mut tools = Vec::new();
    for (i, t) in req.tools.iter().flatten().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                &format!("tools[{i}].type"),
                "Only function tools are supported",
            ));
        }
        let mut f = Map::new();
        for key in ["name", "description", "parameters", "strict"] {
            if let Some(v) = t.get(key).filter(|v| !v.is_null()) {
                f.insert(key.into(), v.clone());
            }
        }
        tools.push(json!({"type": "function", "function": f}));
    }
    if !tools.is_empty() {
        chat.insert("tools".into(), Value::Array(tools));
    }
    if let Some(choice) = &req.tool_choice {
        let chat_choice = match choice {
            Value::String(_) => choice.clone(),
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}})
            }
            _ => {
                return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or a function",
                ))
            }
        };
        chat.insert("tool_choice".into(), chat_choice);
    }
    if let Some(p) = req.parallel_tool_calls {
        chat.insert("parallel_tool_calls".into(), p.into());
    }
    let text_format = req
        .text
        .and_then(|t| t.format)
        .unwrap_or_else(|| json!({"type": "text"}));
    match text_format.get("type").and_then(Value::as_str) {
        Some("text") | None => {}
        Some("json_object") => {
            chat.insert("response_format".into(), json!({"type": "json_object"}));
        }
        Some("json_schema") => {
            let mut schema = Map::new();
            for key in ["name", "schema", "strict", "description"] {
                if let Some(v) = text_format.get(key) {
                    schema.insert(key.into(), v.clone());
                }
            }
            chat.insert(
                "response_format".into(),
                json!({"type": "json_schema", "json_schema": schema}),
            );
        }
        Some(_) => {
            return Err(ApiError::invalid(
                "text.format.type",
                "`text.format.type` must be \"text\", \"json_object\" or \"json_schema\"",
            ))
        }
    }
    for (key, v) in [
        ("max_tokens", req.max_output_tokens.map(Value::from)),
        ("temperature", req.temperature.map(Value::from)),
        ("top_p", req.top_p.map(Value::from)),
        ("stream", req.stream.map(Value::from)),
    ] {
        if let Some(v) = v {
            chat.insert(key.into(), v);
        }
    }
    let settings = ResponsesSettings {
        tools: req.tools.unwrap_or_default(),
        tool_choice: req.tool_choice.unwrap_or_else(|| "auto".into()),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        temperature: req.temperature.unwrap_or(1.0),
        top_p: req.top_p.unwrap_or(1.0),
        max_output_tokens: req.max_output_tokens,
        text_format,
    };
    let bytes = serde_json::to_vec(&Value::Object(chat))
        .map_err(|_| ApiError::internal("internal error"))?;
    Ok((bytes, settings))
}
