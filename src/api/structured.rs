//! Which constraint a chat request's output gets, compiled on the blocking pool: `response_format`
//! (`json_object`, `json_schema`), or tool calls in the model's format when `tool_choice` is `required` or
//! a named function, or when a tool is `strict` (then text may come first and the calls are optional).
//! Compile errors are 400s naming the field (`response_format.json_schema.schema`,
//! `tools[i].function.parameters`), never echoing the schema.

use super::chat_output::ChatParse;
use super::chat_request::{ChatOptions, ResponseFormat, ToolChoice};
use super::error::ApiError;
use super::AppState;
use crate::engine::TokenConstraint;
use crate::grammar::{Constraint, GrammarError, OutputStart, ToolCalls};

/// The constraint for this request's output, if any.
pub fn constraint_for(
    state: &AppState,
    options: &ChatOptions,
    parse: &ChatParse,
) -> Result<Option<Box<dyn TokenConstraint>>, ApiError> {
    let forced_tool = matches!(
        options.tool_choice,
        ToolChoice::Required | ToolChoice::Named(_)
    ) && options.tools_active();
    let json = !matches!(options.response_format, ResponseFormat::Text);
    if json && forced_tool {
        return Err(ApiError::invalid(
            "response_format",
            "`response_format` and a `tool_choice` that forces a call cannot both apply",
        ));
    }
    let start = OutputStart {
        reasoning: parse.reasoning.filter(|_| !parse.reasoning_closed),
        in_reasoning: parse.in_reasoning,
    };
    let (constraint, param) = match &options.response_format {
        ResponseFormat::JsonObject => (Constraint::JsonObject, "response_format"),
        ResponseFormat::JsonSchema(schema) => (
            Constraint::JsonSchema(schema.clone()),
            "response_format.json_schema.schema",
        ),
        ResponseFormat::Text => {
            let strict = options.any_strict_tool() && options.tools_active();
            let Some(format) = parse.tools.filter(|_| forced_tool || strict) else {
                return Ok(None);
            };
            let mut tools = options.tool_schemas();
            if let ToolChoice::Named(name) = &options.tool_choice {
                tools.retain(|(n, _)| n == name);
            }
            let grammars = grammars(state)?;
            // Each tool's schema alone first, so an error names the tool.
            for (i, (_, schema)) in tools.iter().enumerate() {
                grammars.check_schema(schema).map_err(|e| {
                    ApiError::invalid(&format!("tools[{i}].function.parameters"), e.to_string())
                })?;
            }
            let calls = ToolCalls {
                format,
                tools,
                parallel: options.parallel_tool_calls
                    && !matches!(options.tool_choice, ToolChoice::Named(_)),
                optional: !forced_tool,
            };
            (Constraint::ToolCalls(calls), "tools")
        }
    };
    let matcher = grammars(state)?
        .compile(&constraint, start)
        .map_err(|e| ApiError::invalid(param, e.to_string()))?;
    Ok(Some(Box::new(matcher)))
}

fn grammars(state: &AppState) -> Result<&crate::grammar::Grammars, ApiError> {
    state
        .grammars
        .as_deref()
        .ok_or_else(|| ApiError::bad_request(GrammarError::Unavailable.to_string()))
}
