//! Logprobs `bytes` are a token's own bytes: for tokens that are only part of a character (byte-level BPE,
//! tiktoken), not the bytes of the "�" their text decodes to. The bytes of a text's tokens, joined, are the
//! text's bytes.

use moeserve::tokenizer::TextTokenizer;
use moeserve::weights::ModelSource;

const TEXT: &str = "héllo — 日本語 ✓ naïve 🙂 end";

fn check(dir: std::path::PathBuf) {
    let tok = TextTokenizer::load(&ModelSource::Dir(dir.clone())).unwrap();
    let ids = tok.encode(TEXT, false).unwrap();
    let joined: Vec<u8> = ids.iter().flat_map(|&id| tok.token_bytes(id)).collect();
    assert_eq!(joined, TEXT.as_bytes(), "{}", dir.display());
    // The case this guards: some of these tokens decode alone to the replacement character.
    let partial = ids
        .iter()
        .filter(|&&id| tok.decode(&[id], false).unwrap().contains('\u{FFFD}'))
        .count();
    assert!(partial > 0, "{}: no partial-character token", dir.display());
}

#[test]
fn byte_level_bpe_tokens_give_their_own_bytes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    check(root.join("weights/default"));
    check(root.join("tests/fixtures/qwen3_moe"));
}

#[test]
fn tiktoken_tokens_give_their_own_bytes() {
    check(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kimi_tokenizer"));
}
