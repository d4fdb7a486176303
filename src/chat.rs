//! Chat templates: the checkpoint's Jinja `chat_template` rendered with minijinja (+ minijinja-contrib's
//! Python-compatible methods) the way transformers' `apply_chat_template` renders it: trim_blocks and
//! lstrip_blocks on, `raise_exception`, `strftime_now`, Python-style `tojson`, `bos_token` / `eos_token`.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use crate::weights::ModelSource;

/// One chat message (request content: its Debug prints lengths only).
#[derive(Clone, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

impl std::fmt::Debug for ChatMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatMessage")
            .field("role", &self.role)
            .field("content_len", &self.content.len())
            .finish()
    }
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
        Ok(Self {
            env,
            bos_token: special_token(tokenizer_config, "bos_token"),
            eos_token: special_token(tokenizer_config, "eos_token"),
        })
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

    /// The prompt text for `messages`, ending with the assistant's turn when `add_generation_prompt`.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ChatError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| ChatError::Compile(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
        })
        .map_err(|e| ChatError::Render(describe(&e)))
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
