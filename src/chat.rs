//! Chat templates: the checkpoint's Jinja `chat_template` rendered with minijinja (+ minijinja-contrib's
//! Python-compatible methods) the way transformers' `apply_chat_template` renders it: trim_blocks and
//! lstrip_blocks on, `raise_exception`, `strftime_now`, Python-style `tojson`, `bos_token` / `eos_token`.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::weights::ModelSource;

/// One chat message as the template sees it (request content: its Debug prints lengths only). Keys left
/// `None` are absent for the template (transformers 5 drops null-valued message keys before rendering).
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct ChatMessage {
    pub role: String,
    pub content: Option<String>,
    /// The reasoning an assistant turn carried (templates of thinking models may render it).
    pub reasoning_content: Option<String>,
    pub tool_calls: Vec<MessageToolCall>,
    /// A `tool` message: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name (some templates print it).
    pub name: Option<String>,
}

/// A tool call of an earlier assistant turn, as the client sent it back.
#[derive(Clone, Default, Serialize, Deserialize)]
pub struct MessageToolCall {
    pub id: Option<String>,
    pub name: String,
    /// The arguments: JSON text (OpenAI's form) or, from clients that send an object, that object.
    pub arguments: serde_json::Value,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: Some(content.to_owned()),
            ..Self::default()
        }
    }

    /// The message as a template variable, in OpenAI's key order.
    fn to_template(&self, style: RenderStyle) -> serde_json::Value {
        use serde_json::{Map, Value as J};
        let mut m = Map::new();
        m.insert("role".into(), J::String(self.role.clone()));
        match &self.content {
            Some(c) => {
                m.insert("content".into(), J::String(c.clone()));
            }
            None => match style.null_content {
                NullContent::Drop => {}
                NullContent::Keep => {
                    m.insert("content".into(), J::Null);
                }
                NullContent::Empty => {
                    m.insert("content".into(), J::String(String::new()));
                }
            },
        }
        if let Some(r) = &self.reasoning_content {
            m.insert("reasoning_content".into(), J::String(r.clone()));
        }
        if !self.tool_calls.is_empty() {
            let calls = self
                .tool_calls
                .iter()
                .map(|c| {
                    let mut call = Map::new();
                    if let Some(id) = &c.id {
                        call.insert("id".into(), J::String(id.clone()));
                    }
                    call.insert("type".into(), J::String("function".into()));
                    let mut f = Map::new();
                    f.insert("name".into(), J::String(c.name.clone()));
                    f.insert("arguments".into(), style.arguments(&c.arguments));
                    call.insert("function".into(), J::Object(f));
                    J::Object(call)
                })
                .collect();
            m.insert("tool_calls".into(), J::Array(calls));
        }
        if let Some(id) = &self.tool_call_id {
            m.insert("tool_call_id".into(), J::String(id.clone()));
        }
        if let Some(n) = &self.name {
            m.insert("name".into(), J::String(n.clone()));
        }
        J::Object(m)
    }
}

impl std::fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatMessage")
            .field("role", &self.role.len())
            .field("content_len", &self.content.as_ref().map(String::len))
            .field("tool_calls", &self.tool_calls.len())
            .finish_non_exhaustive()
    }
}

/// How messages are shown to a template. Templates disagree on the form of earlier tool calls' arguments
/// (Qwen, Mistral: an object they serialize themselves; DeepSeek: the JSON text they concatenate) and on
/// a null `content` beside tool calls (Qwen3 needs a string, DeepSeek-V3 renders calls only beside a
/// none); the style that renders a probe conversation's calls is found once per template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenderStyle {
    /// Arguments given as JSON text are parsed into an object first.
    pub arguments_as_object: bool,
    pub null_content: NullContent,
}

/// What a message without content shows the template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NullContent {
    /// No `content` key (transformers 5 drops null-valued keys).
    Drop,
    /// `content` is none (transformers 4).
    Keep,
    /// `content` is the empty string.
    Empty,
}

impl RenderStyle {
    /// The styles tried, in order: transformers 5 with arguments parsed (as vLLM does) first.
    pub const ALL: [RenderStyle; 6] = [
        RenderStyle::new(true, NullContent::Drop),
        RenderStyle::new(false, NullContent::Drop),
        RenderStyle::new(false, NullContent::Keep),
        RenderStyle::new(true, NullContent::Keep),
        RenderStyle::new(true, NullContent::Empty),
        RenderStyle::new(false, NullContent::Empty),
    ];

    pub const fn new(arguments_as_object: bool, null_content: NullContent) -> Self {
        Self {
            arguments_as_object,
            null_content,
        }
    }

    fn arguments(&self, a: &serde_json::Value) -> serde_json::Value {
        use serde_json::Value as J;
        match (a, self.arguments_as_object) {
            (J::String(text), true) => match serde_json::from_str::<J>(text) {
                Ok(v @ J::Object(_)) => v,
                _ => a.clone(),
            },
            (J::String(_), false) => a.clone(),
            (other, true) => other.clone(),
            (other, false) => {
                let mut out = String::new();
                python_json(other, None, 0, &mut out);
                J::String(out)
            }
        }
    }
}

/// What a request adds to the template's variables besides the messages.
#[derive(Default)]
pub struct RenderOptions<'a> {
    pub add_generation_prompt: bool,
    /// OpenAI `tools` as the client sent them (`None`: the template sees `tools` as none).
    pub tools: Option<&'a [serde_json::Value]>,
    /// `chat_template_kwargs`: extra top-level variables (`enable_thinking`, `thinking`, …).
    pub kwargs: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// Why a template could not be used. Messages describe the template, never the conversation.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("the model has no chat template")]
    NoTemplate,
    #[error("the chat template does not compile: {0}")]
    Compile(String),
    #[error("the chat template rejected the conversation: {0}")]
    Render(String),
}

/// A compiled chat template with the special tokens it may use.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: String,
    /// How this template wants earlier tool calls shown (found by [`ChatTemplate::probe_tool_style`]).
    tool_style: RenderStyle,
    bos_token: String,
    eos_token: String,
}

/// `bos_token` / `eos_token` in tokenizer_config.json: a string or an AddedToken object.
fn special_token(cfg: Option<&serde_json::Value>, key: &str) -> String {
    match cfg.and_then(|c| c.get(key)) {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or_default()
            .to_owned(),
        _ => String::new(),
    }
}

/// Python's `json.dumps(value, ensure_ascii=False, indent=indent)`, which HF's `tojson` filter is.
fn python_json(v: &serde_json::Value, indent: Option<usize>, level: usize, out: &mut String) {
    use serde_json::Value as J;
    let (nl, pad, pad_in, sep) = match indent {
        Some(n) => (
            "\n",
            " ".repeat(n * level),
            " ".repeat(n * (level + 1)),
            ",",
        ),
        None => ("", String::new(), String::new(), ", "),
    };
    match v {
        J::Array(items) if !items.is_empty() => {
            out.push('[');
            out.push_str(nl);
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                    out.push_str(nl);
                }
                out.push_str(&pad_in);
                python_json(item, indent, level + 1, out);
            }
            out.push_str(nl);
            out.push_str(&pad);
            out.push(']');
        }
        J::Object(map) if !map.is_empty() => {
            out.push('{');
            out.push_str(nl);
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(sep);
                    out.push_str(nl);
                }
                out.push_str(&pad_in);
                out.push_str(&serde_json::Value::String(k.clone()).to_string());
                out.push_str(": ");
                python_json(item, indent, level + 1, out);
            }
            out.push_str(nl);
            out.push_str(&pad);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn tojson(value: Value, indent: Option<usize>) -> Result<Value, JinjaError> {
    let json = serde_json::to_value(&value)
        .map_err(|e| JinjaError::new(ErrorKind::InvalidOperation, format!("tojson: {e}")))?;
    let mut out = String::new();
    python_json(&json, indent, 0, &mut out);
    Ok(Value::from_safe_string(out))
}

impl ChatTemplate {
    /// Compiles `source` with the special tokens from tokenizer_config.json.
    pub fn new(
        source: &str,
        tokenizer_config: Option<&serde_json::Value>,
    ) -> Result<Self, ChatError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        minijinja_contrib::add_to_environment(&mut env);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<Value, JinjaError> {
                Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", |fmt: String| -> Result<Value, JinjaError> {
            Ok(Value::from(format_now(&fmt)))
        });
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        let mut template = Self {
            env,
            source: source.to_owned(),
            tool_style: RenderStyle::ALL[0],
            bos_token: special_token(tokenizer_config, "bos_token"),
            eos_token: special_token(tokenizer_config, "eos_token"),
        };
        template.tool_style = template.probe_tool_style();
        Ok(template)
    }

    /// The template a checkpoint ships, if any.
    pub fn from_source(source: &ModelSource) -> Result<Option<Self>, ChatError> {
        let cfg = source
            .read_json(crate::tokenizer::TOKENIZER_CONFIG_FILE)
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        let found = crate::tokenizer::find_chat_template(source)
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        match found {
            Some((text, _)) => Ok(Some(Self::new(&text, cfg.as_ref())?)),
            None => Ok(None),
        }
    }

    /// A template from a Jinja file (`--chat-template`), with the checkpoint's special tokens.
    pub fn from_file(path: &std::path::Path, source: &ModelSource) -> Result<Self, ChatError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ChatError::Compile(format!("{}: {e}", path.display())))?;
        let cfg = source
            .read_json(crate::tokenizer::TOKENIZER_CONFIG_FILE)
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        Self::new(&text, cfg.as_ref())
    }

    /// The prompt text for `messages`, ending with the assistant's turn when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        self.render_with(
            messages,
            &RenderOptions {
                add_generation_prompt,
                ..RenderOptions::default()
            },
        )
    }

    /// Renders with tools and extra variables. Earlier tool calls are shown in the style found for this
    /// template ([`RenderStyle`]); should that fail on a conversation, the other styles are tried.
    /// Without earlier tool calls there is one render.
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        options: &RenderOptions,
    ) -> Result<String, ChatError> {
        let has_calls = messages.iter().any(|m| !m.tool_calls.is_empty());
        let styles: Vec<RenderStyle> = if has_calls {
            std::iter::once(self.tool_style)
                .chain(
                    RenderStyle::ALL
                        .into_iter()
                        .filter(|s| *s != self.tool_style),
                )
                .collect()
        } else {
            vec![self.tool_style]
        };
        let mut first_error = None;
        for style in styles {
            match self.render_styled(messages, options, style) {
                Ok(text) => return Ok(text),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        Err(first_error.unwrap_or(ChatError::NoTemplate))
    }

    /// One render with messages shown in `style`.
    pub fn render_styled(
        &self,
        messages: &[ChatMessage],
        options: &RenderOptions,
        style: RenderStyle,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        let shown: Vec<serde_json::Value> = messages.iter().map(|m| m.to_template(style)).collect();
        let tools = options.tools.map(Value::from_serialize);
        let base = context! {
            messages => Value::from_serialize(&shown),
            tools => tools,
            add_generation_prompt => options.add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        };
        let ctx = match options.kwargs {
            // Ours come first, so they win over a request variable of the same name.
            Some(kw) => context! { ..base, ..Value::from_serialize(kw) },
            None => base,
        };
        tmpl.render(ctx)
            .map_err(|e| ChatError::Render(describe(&e)))
    }

    /// The first style in which a probe conversation (a call with null content, answered by a tool)
    /// renders with its arguments visible; the first style when none does (templates without tools).
    fn probe_tool_style(&self) -> RenderStyle {
        const PROBE: &str = "moeserve_probe_7c1d";
        if !self.source.contains("tool_calls") {
            return RenderStyle::ALL[0];
        }
        let messages = [
            ChatMessage::new("user", "q"),
            ChatMessage {
                role: "assistant".into(),
                tool_calls: vec![MessageToolCall {
                    id: Some("call00001".into()),
                    name: "probe".into(),
                    arguments: serde_json::Value::String(format!("{{\"v\": \"{PROBE}\"}}")),
                }],
                ..ChatMessage::default()
            },
            ChatMessage {
                role: "tool".into(),
                content: Some("r".into()),
                tool_call_id: Some("call00001".into()),
                name: Some("probe".into()),
                ..ChatMessage::default()
            },
        ];
        let options = RenderOptions {
            add_generation_prompt: true,
            ..RenderOptions::default()
        };
        RenderStyle::ALL
            .into_iter()
            .find(|&style| {
                self.render_styled(&messages, &options, style)
                    .is_ok_and(|text| text.contains(PROBE))
            })
            .unwrap_or(RenderStyle::ALL[0])
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether the template reads `tools` at all (DeepSeek's do not: tools must then come from a
    /// template made for them, `--chat-template`).
    pub fn renders_tools(&self) -> bool {
        self.source.contains("tools")
    }
}

/// The error's kind and template location, without the detail text (which can echo message content).
fn describe(e: &JinjaError) -> String {
    match e.kind() {
        // raise_exception messages come from the template author, not from the conversation.
        ErrorKind::InvalidOperation => e.detail().unwrap_or("invalid operation").to_owned(),
        kind => match e.line() {
            Some(line) => format!("{kind} at line {line}"),
            None => kind.to_string(),
        },
    }
}

/// `strftime` for the few directives templates use (date only, UTC).
fn format_now(fmt: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil-from-days (Howard Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month_name = MONTHS[(month - 1) as usize];
    fmt.replace("%Y", &year.to_string())
        .replace("%m", &format!("{month:02}"))
        .replace("%d", &format!("{day:02}"))
        .replace("%B", month_name)
        .replace("%b", &month_name[..3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tojson_is_python_style() {
        let v = Value::from_serialize(serde_json::json!({"a": [1, "é"], "b": {}}));
        assert_eq!(
            tojson(v.clone(), None).unwrap().to_string(),
            r#"{"a": [1, "é"], "b": {}}"#
        );
        assert_eq!(
            tojson(v, Some(2)).unwrap().to_string(),
            "{\n  \"a\": [\n    1,\n    \"é\"\n  ],\n  \"b\": {}\n}"
        );
    }

    #[test]
    fn raise_exception_surfaces_template_message() {
        let t = ChatTemplate::new("{{ raise_exception('Only user roles') }}", None).unwrap();
        let err = t.render(&[], true).unwrap_err().to_string();
        assert!(err.contains("Only user roles"), "{err}");
    }

    #[test]
    fn date_formatting() {
        let s = format_now("%d %b %Y");
        assert_eq!(s.len(), 11, "{s}");
    }
}
