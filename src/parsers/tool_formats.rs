//! The tool-call formats models are trained on, as data: the markers around a call (and around a group of
//! calls), and how a finished call's text splits into name, id and arguments.
//!
//! - Qwen / hermes: `<tool_call>\n{"name": N, "arguments": {…}}\n</tool_call>` (Qwen2, Qwen2.5, Qwen3).
//! - Kimi K2: `<|tool_calls_section_begin|>` then per call `<|tool_call_begin|>functions.N:IDX
//!   <|tool_call_argument_begin|>{…}<|tool_call_end|>`, then `<|tool_calls_section_end|>`.
//! - DeepSeek V3 / R1 (told from V3.1 by the ```json fence in its template): `<｜tool▁calls▁begin｜>` then per call `<｜tool▁call▁begin｜>function<｜tool▁sep｜>N
//!   \n```json\n{…}\n```<｜tool▁call▁end｜>`; V3.1: `<｜tool▁call▁begin｜>N<｜tool▁sep｜>{…}<｜tool▁call▁end｜>`.
//! - Mistral: `[TOOL_CALLS] [{"name": N, "arguments": {…}}, …]` (tokenizer v3, Mixtral-8x22B, Nemo) or,
//!   from tokenizer v11 on, `[TOOL_CALLS]N[ARGS]{…}` once per call; both run to the end of the output.

use serde_json::Value;

/// A call read from the model's output. `arguments` is JSON text (compact, in the model's key order).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedCall {
    /// The model's own id for the call (Kimi K2 writes one); otherwise the server makes one.
    pub id: Option<String>,
    pub name: String,
    pub arguments: String,
}

/// The start of a call, known before its arguments are complete (so they can be streamed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallHeader {
    pub id: Option<String>,
    pub name: String,
    /// Where the arguments' JSON text starts in the call's text.
    pub args_start: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    Hermes,
    KimiK2,
    /// DeepSeek V3 / R1: `function<｜tool▁sep｜>NAME` and the arguments in a ```json fence.
    DeepSeekV3,
    /// DeepSeek V3.1: `NAME<｜tool▁sep｜>{…}`.
    DeepSeekV31,
    /// Tokenizer v3 (Mixtral-8x22B, Mistral-7B v0.3, Nemo): one JSON list of calls.
    Mistral,
    /// Tokenizer v11+: `[TOOL_CALLS]NAME[ARGS]{…}` per call.
    MistralV11,
}

/// The markers of one format.
pub struct Markers {
    /// Opens a group of calls (the calls inside still have their own markers).
    pub section_begin: Option<&'static str>,
    pub section_end: Option<&'static str>,
    pub call_begin: &'static str,
    /// Ends a call; `None`: the calls run to the end of the output (Mistral).
    pub call_end: Option<&'static str>,
}

impl ToolFormat {
    pub const ALL: [ToolFormat; 6] = [
        ToolFormat::Hermes,
        ToolFormat::KimiK2,
        ToolFormat::DeepSeekV3,
        ToolFormat::DeepSeekV31,
        ToolFormat::Mistral,
        ToolFormat::MistralV11,
    ];

    /// The name used on the command line (`--tool-parser`).
    pub fn name(self) -> &'static str {
        match self {
            ToolFormat::Hermes => "qwen",
            ToolFormat::KimiK2 => "kimi_k2",
            ToolFormat::DeepSeekV3 => "deepseek_v3",
            ToolFormat::DeepSeekV31 => "deepseek_v31",
            ToolFormat::Mistral => "mistral",
            ToolFormat::MistralV11 => "mistral_v11",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "qwen" | "hermes" => Some(ToolFormat::Hermes),
            "kimi_k2" | "kimi" => Some(ToolFormat::KimiK2),
            "deepseek_v3" | "deepseek_r1" => Some(ToolFormat::DeepSeekV3),
            "deepseek_v31" => Some(ToolFormat::DeepSeekV31),
            "mistral" => Some(ToolFormat::Mistral),
            "mistral_v11" => Some(ToolFormat::MistralV11),
            _ => None,
        }
    }

    /// The format a chat template writes earlier calls in (and so the one its model was trained on).
    pub fn detect(template: &str) -> Option<Self> {
        let found = Self::ALL
            .into_iter()
            .find(|f| template.contains(f.markers().call_begin))?;
        Some(match found {
            ToolFormat::DeepSeekV3 if !template.contains("```json") => ToolFormat::DeepSeekV31,
            ToolFormat::Mistral if template.contains("[ARGS]") => ToolFormat::MistralV11,
            other => other,
        })
    }

    pub fn markers(self) -> Markers {
        match self {
            ToolFormat::Hermes => Markers {
                section_begin: None,
                section_end: None,
                call_begin: "<tool_call>",
                call_end: Some("</tool_call>"),
            },
            ToolFormat::KimiK2 => Markers {
                section_begin: Some("<|tool_calls_section_begin|>"),
                section_end: Some("<|tool_calls_section_end|>"),
                call_begin: "<|tool_call_begin|>",
                call_end: Some("<|tool_call_end|>"),
            },
            ToolFormat::DeepSeekV3 | ToolFormat::DeepSeekV31 => Markers {
                section_begin: Some("<｜tool▁calls▁begin｜>"),
                section_end: Some("<｜tool▁calls▁end｜>"),
                call_begin: "<｜tool▁call▁begin｜>",
                call_end: Some("<｜tool▁call▁end｜>"),
            },
            ToolFormat::Mistral | ToolFormat::MistralV11 => Markers {
                section_begin: None,
                section_end: None,
                call_begin: "[TOOL_CALLS]",
                call_end: None,
            },
        }
    }

    /// What ends one call and not the output: Mistral v11 calls run to the next `[TOOL_CALLS]` (which also
    /// begins the next call); Mistral v3's list runs to the end of the output.
    pub fn call_terminator(self) -> Option<&'static str> {
        match self {
            ToolFormat::MistralV11 => Some("[TOOL_CALLS]"),
            other => other.markers().call_end,
        }
    }

    /// The call's id and name once `body` (the call's text so far, after its opening marker) has them and
    /// its arguments have begun; `None` before, or for a layout that cannot be streamed (it is then
    /// parsed whole at its end).
    pub fn header(self, body: &str) -> Option<CallHeader> {
        let after = |body: &str, marker: &str| body.find(marker).map(|at| (at, at + marker.len()));
        let (id, name, args_start) = match self {
            ToolFormat::Hermes => {
                let (name, start) = hermes_header(body)?;
                (None, name, start)
            }
            ToolFormat::KimiK2 => {
                let (at, start) = after(body, "<|tool_call_argument_begin|>")?;
                let id = body[..at].trim();
                let name = id.split(':').next()?.rsplit('.').next()?.to_owned();
                (Some(id.to_owned()), name, start)
            }
            ToolFormat::DeepSeekV3 => {
                let (_, sep) = after(body, "<｜tool▁sep｜>")?;
                let (fence, start) = after(&body[sep..], "```json")?;
                (None, body[sep..sep + fence].trim().to_owned(), sep + start)
            }
            ToolFormat::DeepSeekV31 => {
                let (at, start) = after(body, "<｜tool▁sep｜>")?;
                (None, body[..at].trim().to_owned(), start)
            }
            ToolFormat::MistralV11 => {
                let (at, start) = after(body, "[ARGS]")?;
                let name = body[..at].split("[CALL_ID]").next()?.trim().to_owned();
                (None, name, start)
            }
            ToolFormat::Mistral => return None,
        };
        // The arguments have begun with an object (not text that quotes one).
        let args_start =
            args_start + (body.len() - args_start - body[args_start..].trim_start().len());
        if !body[args_start..].starts_with('{') {
            return None;
        }
        Some(CallHeader {
            id,
            name: valid_name(&name)?,
            args_start,
        })
    }

    /// Where the arguments end in `body`: when `complete`, their final end (before the closing `}` of
    /// Qwen's wrapper object, or DeepSeek-V3's closing fence); otherwise how far they can be given out
    /// now (held back: Qwen's last `}`, which may close the wrapper; DeepSeek-V3's last line, which may
    /// be its closing fence).
    pub fn args_end(self, body: &str, args_start: usize, complete: bool) -> usize {
        let rest = &body[args_start..];
        match (self, complete) {
            (ToolFormat::Hermes, _) => rest.rfind('}').map_or(body.len(), |at| args_start + at),
            (ToolFormat::DeepSeekV3, true) => {
                let t = body.trim_end();
                t.strip_suffix("```")
                    .map_or(t.len(), |x| x.trim_end().len())
            }
            // The closing fence starts on a new line: hold from the last line break.
            (ToolFormat::DeepSeekV3, false) => {
                rest.rfind('\n').map_or(body.len(), |at| args_start + at)
            }
            (_, true) => body.trim_end().len(),
            (_, false) => body.len(),
        }
        .max(args_start)
    }

    /// The calls in the text between a call's markers (for Mistral: everything after `[TOOL_CALLS]`).
    /// `None` when it is not a well-formed call (the text is then shown as content).
    pub fn parse_body(self, body: &str) -> Option<Vec<ParsedCall>> {
        match self {
            ToolFormat::Hermes => {
                let v: Value = serde_json::from_str(body.trim()).ok()?;
                call_object(&v).map(|c| vec![c])
            }
            ToolFormat::KimiK2 => {
                let (id, args) = body.split_once("<|tool_call_argument_begin|>")?;
                let id = id.trim();
                // functions.get_weather:0 → get_weather
                let name = id.split(':').next()?.rsplit('.').next()?;
                Some(vec![ParsedCall {
                    id: Some(id.to_owned()),
                    name: valid_name(name)?,
                    arguments: json_text(args)?,
                }])
            }
            ToolFormat::DeepSeekV3 | ToolFormat::DeepSeekV31 => {
                let (left, right) = body.split_once("<｜tool▁sep｜>")?;
                let (name, args) = match right.split_once("```json") {
                    // V3: function<｜tool▁sep｜>NAME\n```json\n{…}\n```
                    Some((name, rest)) => (name, rest.trim().strip_suffix("```")?),
                    // V3.1: NAME<｜tool▁sep｜>{…}
                    None => (left, right),
                };
                Some(vec![ParsedCall {
                    id: None,
                    name: valid_name(name.trim())?,
                    arguments: json_text(args)?,
                }])
            }
            ToolFormat::Mistral | ToolFormat::MistralV11 => {
                let body = body.trim();
                if body.starts_with('[') {
                    let v: Value = serde_json::from_str(body).ok()?;
                    v.as_array()?.iter().map(call_object).collect()
                } else {
                    // v11: NAME[ARGS]{…}, calls separated by further [TOOL_CALLS] markers.
                    body.split("[TOOL_CALLS]")
                        .filter(|c| !c.trim().is_empty())
                        .map(|call| {
                            let (name, args) = call.split_once("[ARGS]")?;
                            let name = name.split("[CALL_ID]").next()?;
                            Some(ParsedCall {
                                id: None,
                                name: valid_name(name.trim())?,
                                arguments: json_text(args)?,
                            })
                        })
                        .collect()
                }
            }
        }
    }
}

/// Bytes at the end of `buf` that could be the beginning of one of `markers` (held back).
pub(crate) fn held_suffix(buf: &str, markers: &[&str]) -> usize {
    let longest = markers.iter().map(|m| m.len()).max().unwrap_or(0);
    (1..longest.min(buf.len() + 1))
        .rev()
        .find(|&k| {
            let start = buf.len() - k;
            buf.is_char_boundary(start) && markers.iter().any(|m| m.starts_with(&buf[start..]))
        })
        .unwrap_or(0)
}

/// `{"name": "N", "arguments": ` at the start of a Qwen call: the name and where the arguments start.
fn hermes_header(body: &str) -> Option<(String, usize)> {
    let b = body.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    let lit = |i: &mut usize, s: &str| {
        ws(i);
        if body[*i..].starts_with(s) {
            *i += s.len();
            true
        } else {
            false
        }
    };
    if !lit(&mut i, "{") || !lit(&mut i, "\"name\"") || !lit(&mut i, ":") {
        return None;
    }
    ws(&mut i);
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut end = i + 1;
    while end < b.len() && b[end] != b'"' {
        end += if b[end] == b'\\' { 2 } else { 1 };
    }
    let name: String = serde_json::from_str(body.get(i..=end)?).ok()?;
    i = end + 1;
    if !lit(&mut i, ",") {
        return None;
    }
    if !(lit(&mut i, "\"arguments\"") || lit(&mut i, "\"parameters\"")) || !lit(&mut i, ":") {
        return None;
    }
    ws(&mut i);
    (i < b.len()).then_some((name, i))
}

/// `{"name": N, "arguments": {…}}` (also `parameters`, which some fine-tunes write).
fn call_object(v: &Value) -> Option<ParsedCall> {
    let name = valid_name(v.get("name")?.as_str()?)?;
    let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
        None => "{}".to_owned(),
        // Arguments already given as JSON text.
        Some(Value::String(s)) => json_text(s)?,
        Some(args @ Value::Object(_)) => serde_json::to_string(args).ok()?,
        Some(_) => return None,
    };
    Some(ParsedCall {
        id: None,
        name,
        arguments,
    })
}

/// The JSON object in `s`, as compact text.
fn json_text(s: &str) -> Option<String> {
    let v: Value = serde_json::from_str(s.trim()).ok()?;
    v.is_object().then(|| serde_json::to_string(&v).ok())?
}

/// A function name as OpenAI allows them (letters, digits, `_`, `-`, `.`, `:`; 1–64 characters).
fn valid_name(s: &str) -> Option<String> {
    let ok = (1..=64).contains(&s.len())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    ok.then(|| s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_found_from_their_templates_markers() {
        assert_eq!(
            ToolFormat::detect("{{- '<tool_call>\\n' }}"),
            Some(ToolFormat::Hermes)
        );
        assert_eq!(
            ToolFormat::detect("[TOOL_CALLS] ["),
            Some(ToolFormat::Mistral)
        );
        assert_eq!(ToolFormat::detect("plain"), None);
        for f in ToolFormat::ALL {
            assert_eq!(ToolFormat::from_name(f.name()), Some(f));
        }
    }

    #[test]
    fn malformed_bodies_are_not_calls() {
        assert_eq!(ToolFormat::Hermes.parse_body("{\"name\": \"f\""), None);
        assert_eq!(ToolFormat::Hermes.parse_body("{\"arguments\": {}}"), None);
        assert_eq!(
            ToolFormat::Hermes.parse_body("{\"name\": \"bad name!\", \"arguments\": {}}"),
            None
        );
        assert_eq!(ToolFormat::KimiK2.parse_body("functions.f:0"), None);
        assert_eq!(
            ToolFormat::DeepSeekV31.parse_body("f<｜tool▁sep｜>[1, 2]"),
            None,
            "arguments must be an object"
        );
    }
}
