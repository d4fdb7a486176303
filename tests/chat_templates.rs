//! Chat templates render byte-identical to transformers' `apply_chat_template(add_generation_prompt=True)`
//! on the fixtures' template and on Qwen3's and DeepSeek-V3's real templates.

use moeserve::chat::{ChatMessage, ChatTemplate};

fn template(name: &str) -> ChatTemplate {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let cfg_path = match name {
        "fixture" => dir.join("qwen3_moe/tokenizer_config.json"),
        other => dir.join(format!("chat/{other}_tokenizer_config.json")),
    };
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(cfg_path).unwrap()).unwrap();
    let source = cfg["chat_template"].as_str().unwrap().to_owned();
    ChatTemplate::new(&source, Some(&cfg)).unwrap()
}

#[test]
fn templates_match_transformers() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/chat/references.json");
    let refs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut checked = std::collections::HashSet::new();
    for r in &refs {
        let name = r["template"].as_str().unwrap();
        let messages: Vec<ChatMessage> = serde_json::from_value(r["messages"].clone()).unwrap();
        let ours = template(name).render(&messages, true).unwrap();
        assert_eq!(
            ours,
            r["text"].as_str().unwrap(),
            "template {name}, {} messages",
            messages.len()
        );
        checked.insert(name.to_owned());
    }
    assert_eq!(
        checked.len(),
        3,
        "fixture, qwen3 and deepseek_v3 templates all checked"
    );
}

/// Real tool-calling templates (Qwen3, Qwen2.5, Kimi K2, DeepSeek V3 / V3.1, Mistral v0.3 / Nemo) render
/// byte-identical to transformers' `apply_chat_template(messages, tools=…)`
/// (`tests/fixtures/chat/tools/references.json`, `scripts/make_tool_fixtures.py`): conversations go through
/// the API's request parser, with earlier calls' arguments as an object or as JSON text and a null content
/// dropped (transformers 5) or kept, as each reference was made; a conversation transformers refuses is
/// refused here too.
#[test]
fn tool_templates_match_transformers() {
    use moeserve::chat::{NullContent, RenderOptions, RenderStyle};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat/tools");
    let refs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("references.json")).unwrap())
            .unwrap();
    let (mut rendered, mut refused) = (0, 0);
    for r in &refs {
        let name = r["template"].as_str().unwrap();
        let source = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let cfg = serde_json::json!({"bos_token": r["bos_token"], "eos_token": r["eos_token"]});
        let template = ChatTemplate::new(&source, Some(&cfg)).unwrap();
        let mut body = serde_json::json!({"model": "m", "messages": r["messages"]});
        if !r["tools"].is_null() {
            body["tools"] = r["tools"].clone();
        }
        if r["kwargs"].as_object().is_some_and(|k| !k.is_empty()) {
            body["chat_template_kwargs"] = r["kwargs"].clone();
        }
        let parsed = moeserve::api::validate::parse_chat(body.to_string().as_bytes(), 1000)
            .unwrap_or_else(|e| panic!("{name} {}: {}", r["case"], e.message));
        let null = if r["null_keys"] == "kept" {
            NullContent::Keep
        } else {
            NullContent::Drop
        };
        let style = RenderStyle::new(r["arguments_form"].as_str() != Some("string"), null);
        let options = RenderOptions {
            add_generation_prompt: true,
            tools: (!parsed.options.tools.is_empty()).then_some(&parsed.options.tools[..]),
            kwargs: parsed.options.kwargs.as_ref(),
        };
        let ours = template.render_styled(&parsed.messages, &options, style);
        let what = format!("{name} {} ({:?})", r["case"], style);
        match r["rendered"].as_str() {
            Some(want) => {
                assert_eq!(
                    ours.as_deref().unwrap_or_else(|e| panic!("{what}: {e}")),
                    want,
                    "{what}"
                );
                rendered += 1;
            }
            None => {
                assert!(ours.is_err(), "{what}: transformers refuses it");
                refused += 1;
            }
        }
    }
    assert!(
        rendered >= 70 && refused >= 10,
        "{rendered} rendered, {refused} refused"
    );
}

/// The production renderer tries arguments as an object first and falls back to JSON text (then a kept
/// null content): DeepSeek's templates concatenate the text, Qwen's and Mistral's serialize the object.
#[test]
fn tool_call_arguments_take_the_form_each_template_needs() {
    use moeserve::chat::{MessageToolCall, RenderOptions};
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/chat/tools");
    let call = MessageToolCall {
        id: Some("call00001".into()),
        name: "get_weather".into(),
        arguments: serde_json::Value::String(r#"{"location":"Paris"}"#.into()),
    };
    let messages = vec![
        ChatMessage::new("user", "Weather?"),
        ChatMessage {
            role: "assistant".into(),
            content: None,
            tool_calls: vec![call],
            ..Default::default()
        },
        ChatMessage {
            role: "tool".into(),
            content: Some("21 C".into()),
            tool_call_id: Some("call00001".into()),
            ..Default::default()
        },
    ];
    let options = RenderOptions {
        add_generation_prompt: true,
        ..Default::default()
    };
    for (name, expect) in [
        ("qwen3", r#"{"location": "Paris"}"#),
        ("mistral", r#""arguments": {"location": "Paris"}"#),
        ("deepseek_v3", r#"{"location":"Paris"}"#),
        ("deepseek_v3_1", r#"{"location":"Paris"}"#),
    ] {
        let source = std::fs::read_to_string(dir.join(format!("{name}.jinja"))).unwrap();
        let cfg = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>"});
        let text = ChatTemplate::new(&source, Some(&cfg))
            .unwrap()
            .render_with(&messages, &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(text.contains(expect), "{name}: {text}");
        assert!(text.contains("21 C"), "{name}: {text}");
    }
}
