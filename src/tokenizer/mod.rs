//! The text side of a checkpoint: `tokenizer.json` (HF tokenizers) or `tiktoken.model` (Kimi),
//! `generation_config.json` (eos/bos), and where the chat template lives (`tokenizer_config.json` or
//! `chat_template.jinja`).

pub(crate) mod gguf;
pub(crate) mod gguf_spm;
pub(crate) mod tiktoken;

use crate::error::{Error, Result};
use crate::weights::ModelSource;
use tiktoken::{TiktokenTokenizer, TIKTOKEN_FILE};

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

enum Backend {
    Hf(Box<tokenizers::Tokenizer>),
    Tiktoken(Box<TiktokenTokenizer>),
}

/// A loaded tokenizer.
pub struct TextTokenizer {
    backend: Backend,
    path: std::path::PathBuf,
}

impl TextTokenizer {
    /// Whether the checkpoint ships a tokenizer file.
    pub fn present(source: &ModelSource) -> bool {
        source.exists(TOKENIZER_FILE) || source.exists(TIKTOKEN_FILE)
    }

    /// A stand-in for dummy-weight models without tokenizer files: id `N` is the word `<tN>`
    /// (whitespace-separated), so token-id prompts and streamed output still work.
    pub fn placeholder(vocab_size: usize) -> Result<Self> {
        Self::from_json(
            Self::placeholder_json(vocab_size).as_bytes(),
            "<placeholder tokenizer>".into(),
        )
    }

    /// The `tokenizer.json` of [`Self::placeholder`] (written next to dummy checkpoints).
    pub fn placeholder_json(vocab_size: usize) -> String {
        let vocab: serde_json::Map<String, serde_json::Value> = (0..vocab_size.max(1))
            .map(|i| (format!("<t{i}>"), serde_json::Value::from(i)))
            .collect();
        serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null,
            "decoder": null,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<t0>"}
        })
        .to_string()
    }

    /// A `tokenizer.json` document; `path` names it in errors.
    pub(crate) fn from_json(bytes: &[u8], path: std::path::PathBuf) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self {
            backend: Backend::Hf(Box::new(inner)),
            path,
        })
    }

    /// `tokenizer.json` when present, else `tiktoken.model` (Kimi layout).
    pub fn load(source: &ModelSource) -> Result<Self> {
        if !source.exists(TOKENIZER_FILE) && source.exists(TIKTOKEN_FILE) {
            return Ok(Self {
                backend: Backend::Tiktoken(Box::new(TiktokenTokenizer::load(source)?)),
                path: source.path_of(TIKTOKEN_FILE),
            });
        }
        let path = source.path_of(TOKENIZER_FILE);
        let bytes = source
            .open(TOKENIZER_FILE)?
            .ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                message: "missing (neither tokenizer.json nor tiktoken.model)".into(),
            })?;
        Self::from_json(&bytes, path)
    }

    /// Which file the tokenizer came from.
    pub fn file(&self) -> &std::path::Path {
        &self.path
    }

    /// Token ids of `text`, with the tokenizer's own special-token handling (post-processor).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        match &self.backend {
            Backend::Hf(t) => Ok(t
                .encode(text, add_special_tokens)
                .map_err(|e| self.err(e))?
                .get_ids()
                .to_vec()),
            Backend::Tiktoken(t) => Ok(t.encode(text)),
        }
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        match &self.backend {
            Backend::Hf(t) => t.decode(ids, skip_special_tokens).map_err(|e| self.err(e)),
            Backend::Tiktoken(t) => t.decode(ids, skip_special_tokens),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.backend {
            Backend::Hf(t) => t.token_to_id(token),
            Backend::Tiktoken(t) => t.token_to_id(token),
        }
    }

    /// Tokens added on top of the model's vocabulary (special and control tokens, chat and tool-call
    /// markers), with their text.
    pub fn added_tokens(&self) -> Vec<(u32, String)> {
        match &self.backend {
            Backend::Hf(t) => t
                .get_added_tokens_decoder()
                .into_iter()
                .map(|(id, tok)| (id, tok.content))
                .collect(),
            Backend::Tiktoken(t) => t.added_tokens(),
        }
    }

    /// The raw bytes of one token, as OpenAI's logprobs `bytes` carry them: for a token that is only part
    /// of a character (byte-level BPE, SentencePiece `<0xHH>` byte fallback, tiktoken) its own bytes, not
    /// the replacement character its text decodes to.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.backend {
            Backend::Tiktoken(t) => t.token_bytes(id),
            Backend::Hf(t) => {
                let text = t.decode(&[id], false).unwrap_or_default();
                if !text.contains('\u{FFFD}') {
                    return text.into_bytes();
                }
                let Some(piece) = t.id_to_token(id) else {
                    return text.into_bytes();
                };
                if let Some(hex) = piece
                    .strip_prefix("<0x")
                    .and_then(|h| h.strip_suffix('>'))
                    .filter(|h| h.len() == 2)
                {
                    if let Ok(b) = u8::from_str_radix(hex, 16) {
                        return vec![b];
                    }
                }
                if matches!(
                    t.get_decoder(),
                    Some(tokenizers::DecoderWrapper::ByteLevel(_))
                ) {
                    if let Some(bytes) = byte_level_bytes(&piece) {
                        return bytes;
                    }
                }
                text.into_bytes()
            }
        }
    }

    /// Bytes of the longest token's text (an upper bound: a token that is part of a character counts the
    /// replacement character's 3 bytes). Linear in the vocabulary: call once.
    pub fn longest_token_bytes(&self) -> usize {
        (0..self.vocab_size() as u32)
            .map(|id| self.decode(&[id], false).map_or(0, |t| t.len()))
            .max()
            .unwrap_or(0)
    }

    pub fn vocab_size(&self) -> usize {
        match &self.backend {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Tiktoken(t) => t.vocab_size(),
        }
    }

    // The message comes from the tokenizers crate and never includes the input text.
    fn err(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
}

/// GPT-2's byte-level alphabet read back: each character of a byte-level token stands for one byte
/// (printable bytes as themselves, the others as U+0100 onwards in byte order).
fn byte_level_bytes(piece: &str) -> Option<Vec<u8>> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    piece
        .chars()
        .map(|c| {
            let c = c as u32;
            if c < 256 && printable(c as u8) {
                return Some(c as u8);
            }
            // The n-th non-printable byte is written as U+0100 + n.
            let n = c.checked_sub(256)?;
            (0u8..=255).filter(|&b| !printable(b)).nth(n as usize)
        })
        .collect()
}

/// Generation defaults a checkpoint ships.
#[derive(Debug, Clone, Default)]
pub struct GenerationConfig {
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

fn ids_of(v: Option<&serde_json::Value>) -> Vec<u32> {
    match v {
        Some(serde_json::Value::Number(n)) => {
            n.as_u64().map(|x| vec![x as u32]).unwrap_or_default()
        }
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|x| x.as_u64().map(|x| x as u32))
            .collect(),
        _ => Vec::new(),
    }
}

impl GenerationConfig {
    /// From generation_config.json, falling back to config.json's ids.
    pub fn load(source: &ModelSource, config: &serde_json::Value) -> Result<Self> {
        let gen = source.read_json(GENERATION_CONFIG_FILE)?;
        let pick = |key: &str| {
            let from_gen = ids_of(gen.as_ref().and_then(|g| g.get(key)));
            if from_gen.is_empty() {
                ids_of(config.get(key))
            } else {
                from_gen
            }
        };
        Ok(Self {
            eos_token_ids: pick("eos_token_id"),
            bos_token_id: pick("bos_token_id").first().copied(),
        })
    }
}

/// The chat template text, if the checkpoint has one, and which file it came from.
pub fn find_chat_template(source: &ModelSource) -> Result<Option<(String, &'static str)>> {
    if let Some(t) = source.read_text(CHAT_TEMPLATE_FILE)? {
        return Ok(Some((t, CHAT_TEMPLATE_FILE)));
    }
    let Some(cfg) = source.read_json(TOKENIZER_CONFIG_FILE)? else {
        return Ok(None);
    };
    Ok(match cfg.get("chat_template") {
        Some(serde_json::Value::String(s)) => Some((s.clone(), TOKENIZER_CONFIG_FILE)),
        // A list of named templates: take "default".
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
            .and_then(|t| t.get("template"))
            .and_then(|t| t.as_str())
            .map(|s| (s.to_owned(), TOKENIZER_CONFIG_FILE)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_pieces_read_back_as_bytes() {
        assert_eq!(byte_level_bytes("Ġhi"), Some(b" hi".to_vec()));
        // "â" + "Ģ": the first two bytes of "—" (E2 80 94), a token that is part of a character.
        assert_eq!(byte_level_bytes("âĢ"), Some(vec![0xE2, 0x80]));
        assert_eq!(byte_level_bytes("Ċ"), Some(vec![b'\n']));
        assert_eq!(byte_level_bytes("\u{4e00}"), None, "not in the alphabet");
    }
}
