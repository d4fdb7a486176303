//! Lark grammars (llguidance's dialect) for each constraint: JSON through `%json` with our whitespace
//! rule, tool calls written exactly as each model's format writes them (markers that are single tokens by
//! id, others as text), and — for thinking models — the reasoning block first.

use serde_json::{json, Map, Value};

use super::{
    Constraint, GrammarError, Grammars, JsonWhitespace, OutputStart, ToolCalls, JSON_WHITESPACE,
};
use crate::parsers::ToolFormat;

/// A Lark string literal (Lark strings are read as JSON strings).
pub(super) fn quote(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// The grammar text for `constraint`.
pub(super) fn grammar(
    g: &Grammars,
    constraint: &Constraint,
    start: OutputStart,
) -> Result<String, GrammarError> {
    let mut rules: Vec<String> = Vec::new();
    let prefix = reasoning_prefix(g, start, &mut rules);
    let body = match constraint {
        Constraint::JsonObject => json_rule(g, &json!({"type": "object"}))?,
        Constraint::JsonSchema(schema) => json_rule(g, schema)?,
        Constraint::ToolCalls(calls) => tool_calls(g, calls, &mut rules)?,
        Constraint::Regex(rx) => {
            rules.push(format!("ANSWER: /{}/", slash_escaped(rx)));
            "ANSWER".into()
        }
        Constraint::Choice(choices) => {
            let alternatives: Vec<String> = choices.iter().map(|c| quote(c)).collect();
            format!("({})", alternatives.join(" | "))
        }
    };
    // Between calls and after reasoning: a line break or a few spaces, never a run to loop in.
    rules.push(r"WS: /[\x20\x0A\x0D\x09]{1,4}/".into());
    Ok(format!(
        "%llguidance {{}}\nstart: {prefix}{body}\n{}\n",
        rules.join("\n")
    ))
}

/// A regular expression inside Lark's one-line `/…/`: unescaped slashes escaped, line breaks written as
/// escapes.
fn slash_escaped(rx: &str) -> String {
    let mut out = String::with_capacity(rx.len());
    let mut escaped = false;
    for c in rx.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '/' if !escaped => out.push_str("\\/"),
            _ => out.push(c),
        }
        escaped = c == '\\' && !escaped;
    }
    out
}

/// `%json {…}` for a schema, with the client's `x-guidance` options replaced by ours.
fn json_rule(g: &Grammars, schema: &Value) -> Result<String, GrammarError> {
    Ok(format!("%json {}", prepare(schema, g.whitespace)?))
}

/// The schema as compiled: an object schema (`true` = any JSON) carrying our JSON options.
fn prepare(schema: &Value, whitespace: JsonWhitespace) -> Result<Value, GrammarError> {
    let mut schema = match schema {
        Value::Bool(true) => json!({}),
        Value::Object(_) => schema.clone(),
        Value::Bool(false) => {
            return Err(GrammarError::Schema("no JSON value satisfies the schema"))
        }
        _ => return Err(GrammarError::Schema("the schema must be a JSON object")),
    };
    if let Some(o) = schema.as_object_mut() {
        o.remove("x-guidance");
        let options = match whitespace {
            JsonWhitespace::Flexible => json!({"whitespace_pattern": JSON_WHITESPACE}),
            JsonWhitespace::Compact => json!({"whitespace_flexible": false}),
        };
        o.insert("x-guidance".into(), options);
    }
    Ok(schema)
}

/// Reasoning first, when the model thinks: inside an open block the output starts with free text up to
/// the end marker; otherwise a whole block may come first.
fn reasoning_prefix(g: &Grammars, start: OutputStart, rules: &mut Vec<String>) -> String {
    let Some(m) = start.reasoning else {
        return String::new();
    };
    if g.is_token(m.end) {
        // A special token never occurs inside free text: it ends it.
        rules.push(format!("reason: REASON_TEXT? {}", g.literal(m.end)));
        rules.push(r"REASON_TEXT: /(.|\n)+/".into());
    } else {
        rules.push(format!("reason[suffix={}]: /(.|\\n)*/", quote(m.end)));
    }
    if start.in_reasoning {
        "reason WS? ".into()
    } else {
        format!("({} reason WS?)? ", g.literal(m.start))
    }
}

/// Calls of `calls.tools` in the model's format: the group of calls (`open` + `rest`), optionally after
/// free text (`tool_choice: auto`).
fn tool_calls(
    g: &Grammars,
    calls: &ToolCalls,
    rules: &mut Vec<String>,
) -> Result<String, GrammarError> {
    if calls.tools.is_empty() {
        return Err(GrammarError::Tools("no tools"));
    }
    let m = calls.format.markers();
    let more = if calls.parallel { " (WS? call)*" } else { "" };
    let (open, rest) = if calls.format == ToolFormat::Mistral {
        // One JSON list of call objects after the marker.
        let mut items: Vec<Value> = calls
            .tools
            .iter()
            .map(|(name, schema)| call_object(name, schema))
            .collect::<Result<_, _>>()?;
        let mut list = json!({"type": "array", "items": {}, "minItems": 1});
        // Definitions move to the list's top, where `#/$defs/…` resolves.
        for item in &mut items {
            for key in ["$defs", "definitions"] {
                if let Some(Value::Object(defs)) = item.as_object_mut().and_then(|o| o.remove(key))
                {
                    let top = list[key].as_object().cloned().unwrap_or_default();
                    let mut merged = top;
                    merged.extend(defs);
                    list[key] = Value::Object(merged);
                }
            }
        }
        list["items"] = json!({"anyOf": items});
        if !calls.parallel {
            list["maxItems"] = json!(1);
        }
        (
            g.literal(m.call_begin),
            format!("\" \"? {}", json_rule(g, &list)?),
        )
    } else {
        let mut names = Vec::new();
        for (i, (name, schema)) in calls.tools.iter().enumerate() {
            rules.push(format!(
                "tail_{i}: {}",
                call_tail(g, calls.format, name, schema)?
            ));
            names.push(format!("tail_{i}"));
        }
        rules.push(format!("tail: {}", names.join(" | ")));
        rules.push(format!("call: {} tail", g.literal(m.call_begin)));
        match (m.section_begin, m.section_end) {
            (Some(begin), Some(end)) => (
                g.literal(begin),
                format!("WS? call{more} WS? {}", g.literal(end)),
            ),
            _ => (g.literal(m.call_begin), format!("tail{more}")),
        }
    };
    if !calls.optional {
        return Ok(format!("{open} {rest}"));
    }
    let first = m.section_begin.unwrap_or(m.call_begin);
    if g.is_token(first) {
        // Free text cannot contain the marker token: when it comes, the calls follow.
        rules.push(r"FREE: /(.|\n)+/".into());
        Ok(format!("FREE? ({open} {rest})?"))
    } else {
        // The marker is text: free text up to it (lazily), then the calls; text may follow.
        rules.push(format!("hd[lazy]: ANY {}", quote(first)));
        rules.push(r"ANY: /(.|\n)*/".into());
        Ok(format!("(hd {rest})* ANY"))
    }
}

/// One call after its opening marker, in `format`, its arguments valid under `schema`.
fn call_tail(
    g: &Grammars,
    format: ToolFormat,
    name: &str,
    schema: &Value,
) -> Result<String, GrammarError> {
    let m = format.markers();
    let end = m.call_end.map(|e| g.literal(e)).unwrap_or_default();
    let args = json_rule(g, schema)?;
    Ok(match format {
        ToolFormat::Hermes => format!(
            "\"\\n\" {} \"\\n\" {end}",
            json_rule(g, &call_object(name, schema)?)?
        ),
        ToolFormat::KimiK2 => format!(
            "{} /[0-9]{{1,4}}/ {} {args} {end}",
            quote(&format!("functions.{name}:")),
            g.literal("<|tool_call_argument_begin|>")
        ),
        ToolFormat::DeepSeekV3 => format!(
            "\"function\" {} {} {args} \"\\n```\" {end}",
            g.literal("<｜tool▁sep｜>"),
            quote(&format!("{name}\n```json\n"))
        ),
        ToolFormat::DeepSeekV31 => {
            format!(
                "{} {} {args} {end}",
                quote(name),
                g.literal("<｜tool▁sep｜>")
            )
        }
        ToolFormat::MistralV11 => format!("{} {} {args}", quote(name), g.literal("[ARGS]")),
        ToolFormat::Mistral => return Err(GrammarError::Tools("internal: list format")),
    })
}

/// `{"name": NAME, "arguments": {…}}` with the parameters' definitions moved to the top, so their
/// `#/$defs/…` references still resolve.
fn call_object(name: &str, schema: &Value) -> Result<Value, GrammarError> {
    let mut params = match schema {
        Value::Object(o) => o.clone(),
        Value::Bool(true) => Map::new(),
        _ => {
            return Err(GrammarError::Schema(
                "tool parameters must be a JSON schema object",
            ))
        }
    };
    params.remove("x-guidance");
    let mut call = json!({
        "type": "object",
        "properties": {"name": {"const": name}, "arguments": {}},
        "required": ["name", "arguments"],
        "additionalProperties": false,
    });
    for key in ["$defs", "definitions"] {
        if let Some(defs) = params.remove(key) {
            call[key] = defs;
        }
    }
    call["properties"]["arguments"] = Value::Object(params);
    Ok(call)
}
