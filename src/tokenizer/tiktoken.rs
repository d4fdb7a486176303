//! Kimi K2 / Moonlight tokenizers: `tiktoken.model` (base64 token + rank per line) with the pre-tokenization
//! pattern of their `tokenization_kimi.py` and 256 special tokens after the base vocabulary (named ones from
//! tokenizer_config.json's `added_tokens_decoder`, the rest `<|reserved_token_{i}|>`). Encoding and decoding
//! through tiktoken-rs, the same Rust core PyPI's tiktoken runs.

use std::collections::HashMap;

use base64::Engine;
use tiktoken_rs::CoreBPE;

use crate::error::{Error, Result};
use crate::weights::ModelSource;

pub(crate) const TIKTOKEN_FILE: &str = "tiktoken.model";
const NUM_RESERVED_SPECIAL_TOKENS: u32 = 256;

/// Kimi's pre-tokenization pattern (tokenization_kimi.py).
pub(crate) const KIMI_PATTERN: &str = concat!(
    r"[\p{Han}]+",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]+[\p{Ll}\p{Lm}\p{Lo}\p{M}&&[^\p{Han}]]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?",
    "|",
    r"\p{N}{1,3}",
    "|",
    r" ?[^\s\p{L}\p{N}]+[\r\n]*",
    "|",
    r"\s*[\r\n]+",
    "|",
    r"\s+(?!\S)",
    "|",
    r"\s+",
);

pub(crate) struct TiktokenTokenizer {
    bpe: CoreBPE,
    encoder: HashMap<Vec<u8>, u32>,
    specials: HashMap<String, u32>,
    special_ids: std::collections::HashSet<u32>,
    base: u32,
}

impl TiktokenTokenizer {
    pub(crate) fn load(source: &ModelSource) -> Result<Self> {
        let path = source.path_of(TIKTOKEN_FILE);
        let err = |message: String| Error::Tokenizer {
            path: path.clone(),
            message,
        };
        let text = source
            .read_text(TIKTOKEN_FILE)?
            .ok_or_else(|| err("missing".into()))?;
        let mut encoder = HashMap::new();
        for (n, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let mut parts = line.split_whitespace();
            let (Some(token), Some(rank)) = (parts.next(), parts.next()) else {
                return Err(err(format!("line {}: expected \"<base64> <rank>\"", n + 1)));
            };
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(token)
                .map_err(|e| err(format!("line {}: {e}", n + 1)))?;
            let rank: u32 = rank
                .parse()
                .map_err(|e| err(format!("line {}: {e}", n + 1)))?;
            encoder.insert(bytes, rank);
        }
        let base = encoder.len() as u32;
        let named: HashMap<u32, String> = source
            .read_json(super::TOKENIZER_CONFIG_FILE)?
            .and_then(|c| c.get("added_tokens_decoder").cloned())
            .and_then(|d| d.as_object().cloned())
            .map(|d| {
                d.iter()
                    .filter_map(|(id, v)| {
                        Some((id.parse().ok()?, v.get("content")?.as_str()?.to_owned()))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let specials: HashMap<String, u32> = (base..base + NUM_RESERVED_SPECIAL_TOKENS)
            .map(|id| {
                let name = named
                    .get(&id)
                    .cloned()
                    .unwrap_or_else(|| format!("<|reserved_token_{}|>", id - base));
                (name, id)
            })
            .collect();
        let bpe = CoreBPE::new(
            encoder.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            specials.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            KIMI_PATTERN,
        )
        .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            bpe,
            special_ids: specials.values().copied().collect(),
            encoder,
            specials,
            base,
        })
    }

    /// Ids of `text`; special tokens written in the text are recognised (as Kimi's tokenizer does).
    pub(crate) fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_with_special_tokens(text)
    }

    pub(crate) fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        let ids: Vec<u32> = ids
            .iter()
            .copied()
            .filter(|id| !(skip_special_tokens && self.special_ids.contains(id)))
            .collect();
        let bytes = self.bpe.decode_bytes(&ids).map_err(|e| Error::Tokenizer {
            path: TIKTOKEN_FILE.into(),
            message: e.to_string(),
        })?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes of one token (a special token: its name's bytes).
    pub(crate) fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.bpe.decode_bytes(&[id]).unwrap_or_default()
    }

    pub(crate) fn token_to_id(&self, token: &str) -> Option<u32> {
        self.specials
            .get(token)
            .or_else(|| self.encoder.get(token.as_bytes()))
            .copied()
    }

    /// The special tokens (`<|im_end|>`, tool-call markers, reserved ones) and their ids.
    pub(crate) fn added_tokens(&self) -> Vec<(u32, String)> {
        self.specials
            .iter()
            .map(|(t, &id)| (id, t.clone()))
            .collect()
    }

    pub(crate) fn vocab_size(&self) -> usize {
        (self.base + NUM_RESERVED_SPECIAL_TOKENS) as usize
    }
}
