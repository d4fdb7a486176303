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
