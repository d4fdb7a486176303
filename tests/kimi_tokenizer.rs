//! The Kimi tokenizer layout (`tiktoken.model` + tokenizer_config.json special tokens) gives the same ids as
//! PyPI's tiktoken with Kimi's pattern (references from scripts/make_kimi_tokenizer.py), and decodes back.

use moeserve::tokenizer::TextTokenizer;
use moeserve::weights::ModelSource;

#[test]
fn ids_match_tiktoken() {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kimi_tokenizer");
    let tok = TextTokenizer::load(&ModelSource::Dir(dir.clone())).unwrap();
    assert_eq!(tok.vocab_size(), 700 + 256);
    assert_eq!(tok.token_to_id("[BOS]"), Some(700));
    assert_eq!(tok.token_to_id("<|im_middle|>"), Some(717));
    assert_eq!(tok.token_to_id("<|reserved_token_5|>"), Some(705));
    let refs: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("references.json")).unwrap())
            .unwrap();
    for r in &refs {
        let text = r["text"].as_str().unwrap();
        let expected: Vec<u32> = r["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let ids = tok.encode(text, true).unwrap();
        assert_eq!(ids, expected, "text of {} bytes", text.len());
        assert_eq!(tok.decode(&ids, false).unwrap(), text);
    }
    let chat = tok.encode("<|im_user|>hi<|im_end|>", true).unwrap();
    assert_eq!(chat.first(), Some(&703));
    assert_eq!(tok.decode(&chat, true).unwrap(), "hi");
}
