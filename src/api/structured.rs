//! Which constraint a chat request's output gets, compiled on the blocking pool: `response_format`
//! (`json_object`, `json_schema`), or tool calls in the model's format when `tool_choice` is `required` or
//! a named function, or when a tool is `strict` (then text may come first and the calls are optional).
//! Compile errors are 400s naming the field (`response_format.json_schema.schema`,
//! `tools[i].function.parameters`), never echoing the schema.

use super::chat_output::ChatParse;
use super::chat_request::{ChatOptions, ResponseFormat, ToolChoice};
use super::error::ApiError;
use super::validate::Guided;
use super::AppState;
use crate::engine::TokenConstraint;
use crate::grammar::{Constraint, GrammarError, OutputStart, ToolCalls};

/// vLLM's guided decoding as a constraint.
pub(crate) fn guided_constraint(guided: &Guided) -> (Constraint, &'static str) {
    match guided {
        Guided::Json(schema) => (Constraint::JsonSchema(schema.clone()), "guided_json"),
        Guided::JsonObject => (Constraint::JsonObject, "structured_outputs.json_object"),
        Guided::Regex(rx) => (Constraint::Regex(rx.clone()), "guided_regex"),
        Guided::Choice(c) => (Constraint::Choice(c.clone()), "guided_choice"),
    }
}

/// Compiles vLLM's guided decoding for a completions request (no reasoning or tool format involved).
pub(crate) fn completion_constraint(
    state: &AppState,
    guided: Option<&Guided>,
) -> Result<Option<Box<dyn TokenConstraint>>, ApiError> {
    let Some(guided) = guided else {
        return Ok(None);
    };
    let (constraint, param) = guided_constraint(guided);
    let matcher = grammars(state)?
        .compile(&constraint, OutputStart::default())
        .map_err(|e| ApiError::invalid(param, e.to_string()))?;
    Ok(Some(Box::new(matcher)))
}

/// The constraint for this request's output, if any.
pub(crate) fn constraint_for(
    state: &AppState,
    options: &ChatOptions,
    parse: &ChatParse,
    guided: Option<&Guided>,
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
    if let Some(g) = guided {
        if json || forced_tool {
            return Err(ApiError::invalid(
                guided_constraint(g).1,
                "guided decoding cannot be combined with `response_format` or a forced `tool_choice`",
            ));
        }
        let (constraint, param) = guided_constraint(g);
        let matcher = grammars(state)?
            .compile(&constraint, start)
            .map_err(|e| ApiError::invalid(param, e.to_string()))?;
        return Ok(Some(Box::new(matcher)));
    }
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
