//! The text side of a checkpoint: `tokenizer.json`, `generation_config.json` (eos/bos), and where the chat
//! template lives (`tokenizer_config.json` or `chat_template.jinja`).

use crate::error::{Error, Result};
use crate::weights::ModelSource;

pub const TOKENIZER_FILE: &str = "tokenizer.json";
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// A loaded tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    path: std::path::PathBuf,
}

impl TextTokenizer {
    pub fn load(source: &ModelSource) -> Result<Self> {
        let path = source.path_of(TOKENIZER_FILE);
        let bytes = source
            .open(TOKENIZER_FILE)?
            .ok_or_else(|| Error::Tokenizer {
                path: path.clone(),
                message: "missing".into(),
            })?;
        let inner = tokenizers::Tokenizer::from_bytes(&*bytes).map_err(|e| Error::Tokenizer {
            path: path.clone(),
            message: e.to_string(),
        })?;
        Ok(Self { inner, path })
    }

    /// Token ids of `text`, with the tokenizer's own special-token handling (post-processor).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| self.err(e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| self.err(e))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    // The message comes from the tokenizers crate and never includes the input text.
    fn err(&self, e: tokenizers::Error) -> Error {
        Error::Tokenizer {
            path: self.path.clone(),
            message: e.to_string(),
        }
    }
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
