//! What a chat request brings besides generation parameters, validated: its messages as the chat template
//! sees them (earlier tool calls and results, reasoning), the tools, `tool_choice`,
//! `parallel_tool_calls` and `chat_template_kwargs`. Errors name fields and positions, never content.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::request::{ChatRequest, MessageContent, RequestMessage, ToolChoiceField};
use crate::chat::{ChatMessage, MessageToolCall};

/// Tools in one request at most.
pub(crate) const MAX_TOOLS: usize = 256;

/// Which calls the model may or must make.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// No tools: they are not shown to the model and its output is not parsed for calls.
    None,
    #[default]
    Auto,
    /// At least one call.
    Required,
    /// Exactly this function.
    Named(String),
}

/// `response_format`.
#[derive(Debug, Clone, Default)]
pub enum ResponseFormat {
    #[default]
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON valid under the schema (constrained whether or not `strict` is set, as vLLM does).
    JsonSchema(Value),
}

/// The chat-only part of a request.
#[derive(Default)]
pub struct ChatOptions {
    pub response_format: ResponseFormat,
    /// Tool definitions as sent (what the template prints); empty when `tool_choice` is `none`.
    pub tools: Vec<Value>,
    pub tool_choice: ToolChoice,
    pub parallel_tool_calls: bool,
    pub kwargs: Option<Map<String, Value>>,
}

impl ChatOptions {
    /// Tool calls are expected in the output (and parsed out of it).
    pub fn tools_active(&self) -> bool {
        !self.tools.is_empty() && self.tool_choice != ToolChoice::None
    }

    /// Whether a tool asks for its arguments to follow its schema exactly (`strict: true`).
    pub fn any_strict_tool(&self) -> bool {
        self.tools.iter().any(|t| {
            t.get("function")
                .and_then(|f| f.get("strict"))
                .and_then(Value::as_bool)
                == Some(true)
        })
    }

    /// The JSON schema of each tool's parameters, by name (for constrained calls).
    pub fn tool_schemas(&self) -> Vec<(String, Value)> {
        self.tools
            .iter()
            .filter_map(|t| {
                let f = t.get("function")?;
                let name = f.get("name")?.as_str()?.to_owned();
                let params = f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"}));
                Some((name, params))
            })
            .collect()
    }
}

/// A function name as OpenAI allows them: letters, digits, `_` and `-`, 1–64 characters (`.` and `:`
/// too, which some models' names carry).
fn valid_function_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
}

/// Checks `tools` (each `{"type": "function", "function": {"name", "description"?, "parameters"?,
/// "strict"?}}`, names unique) and `tool_choice` against them.
pub(crate) fn chat_options(req: &mut ChatRequest) -> Result<ChatOptions, ApiError> {
    let tools = req.tools.take().unwrap_or_default();
    if tools.len() > MAX_TOOLS {
        return Err(ApiError::invalid(
            "tools",
            format!("at most {MAX_TOOLS} tools"),
        ));
    }
    let mut names: Vec<&str> = Vec::with_capacity(tools.len());
    for (i, t) in tools.iter().enumerate() {
        let param = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(ApiError::invalid(
                &format!("{param}.type"),
                "Only tools of type \"function\" are supported",
            ));
        }
        let Some(f) = t.get("function").and_then(Value::as_object) else {
            return Err(ApiError::invalid(
                &format!("{param}.function"),
                "A tool needs a `function` object",
            ));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        if !valid_function_name(name) {
            return Err(ApiError::invalid(
                &format!("{param}.function.name"),
                "Function names are 1-64 letters, digits, `_` or `-`",
            ));
        }
        if names.contains(&name) {
            return Err(ApiError::invalid(
                &format!("{param}.function.name"),
                "Function names must be unique",
            ));
        }
        names.push(name);
        if f.get("parameters").is_some_and(|p| !p.is_object()) {
            return Err(ApiError::invalid(
                &format!("{param}.function.parameters"),
                "`parameters` must be a JSON schema object",
            ));
        }
    }
    let tool_choice =
        match req.tool_choice.take() {
            None => ToolChoice::Auto,
            Some(ToolChoiceField::Mode(m)) => match m.as_str() {
                "none" => ToolChoice::None,
                "auto" => ToolChoice::Auto,
                "required" => ToolChoice::Required,
                _ => return Err(ApiError::invalid(
                    "tool_choice",
                    "`tool_choice` must be \"none\", \"auto\", \"required\" or a named function",
                )),
            },
            Some(ToolChoiceField::Named { function }) => {
                if !names.contains(&function.name.as_str()) {
                    return Err(ApiError::invalid(
                        "tool_choice.function.name",
                        "`tool_choice` names a function that is not among `tools`",
                    ));
                }
                ToolChoice::Named(function.name)
            }
        };
    if tool_choice == ToolChoice::Required && tools.is_empty() {
        return Err(ApiError::invalid(
            "tool_choice",
            "`tool_choice: \"required\"` needs `tools`",
        ));
    }
    let tools = if tool_choice == ToolChoice::None {
        Vec::new()
    } else {
        tools
    };
    let response_format =
        match req.response_format.take() {
            None => ResponseFormat::Text,
            Some(f) => match f.kind.as_str() {
                "text" => ResponseFormat::Text,
                "json_object" => ResponseFormat::JsonObject,
                "json_schema" => match f.json_schema.and_then(|j| j.schema) {
                    Some(schema @ (Value::Object(_) | Value::Bool(_))) => {
                        ResponseFormat::JsonSchema(schema)
                    }
                    _ => {
                        return Err(ApiError::invalid(
                            "response_format.json_schema.schema",
                            "`json_schema` needs a `schema` object",
                        ))
                    }
                },
                _ => return Err(ApiError::invalid(
                    "response_format.type",
                    "`response_format.type` must be \"text\", \"json_object\" or \"json_schema\"",
                )),
            },
        };
    Ok(ChatOptions {
        response_format,
        tools,
        tool_choice,
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        kwargs: req.chat_template_kwargs.take(),
    })
}

/// The request's messages as the template sees them: content parts joined, earlier tool calls with
/// their arguments, tool results with the call they answer.
pub(crate) fn chat_messages(messages: Vec<RequestMessage>) -> Result<Vec<ChatMessage>, ApiError> {
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let content = match m.content {
            None => None,
            Some(MessageContent::Text(t)) => Some(t),
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
                Some(texts.join("\n"))
            }
        };
        let mut tool_calls = Vec::new();
        for (k, c) in m.tool_calls.into_iter().flatten().enumerate() {
            if !valid_function_name(&c.function.name) {
                return Err(ApiError::invalid(
                    &format!("messages[{i}].tool_calls[{k}].function.name"),
                    "Function names are 1-64 letters, digits, `_` or `-`",
                ));
            }
            let arguments = match c.function.arguments {
                None => Value::String("{}".into()),
                Some(a @ (Value::String(_) | Value::Object(_))) => a,
                Some(_) => {
                    return Err(ApiError::invalid(
                        &format!("messages[{i}].tool_calls[{k}].function.arguments"),
                        "`arguments` must be JSON text",
                    ))
                }
            };
            tool_calls.push(MessageToolCall {
                id: c.id,
                name: c.function.name,
                arguments,
            });
        }
        out.push(ChatMessage {
            role: m.role,
            content,
            reasoning_content: m.reasoning_content.or(m.reasoning),
            tool_calls,
            tool_call_id: m.tool_call_id,
            name: m.name,
        });
    }
    Ok(out)
}
