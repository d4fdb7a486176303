//! The tokenizer a GGUF file carries (`tokenizer.ggml.*`), rebuilt as the HF `tokenizer.json` it was
//! converted from: byte-level BPE (`gpt2` model) with its merges, the pre-tokenizer llama.cpp names in
//! `tokenizer.ggml.pre` (the split expressions of the original tokenizer.json — the same ones llama.cpp's
//! `llama-vocab.cpp` applies), control and user-defined tokens as added tokens, BOS added when
//! `add_bos_token` says so. Also the generation ids (eos / eot / eom) and the chat template.

use serde_json::{json, Value};

use super::gguf_spm::bos_post_processor;
use super::tiktoken::KIMI_PATTERN;
use super::{GenerationConfig, TextTokenizer};
use crate::error::{Error, Result};
use crate::weights::gguf::GgufModel;

/// The original tokenizer.json split expressions for each `tokenizer.ggml.pre` we rebuild; `None`
/// for GPT-2's own (ByteLevel with its regex).
fn pre_splits(pre: &str) -> Option<Option<Vec<&'static str>>> {
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const DEEPSEEK_V3: [&str; 3] = [
        r"\p{N}{1,3}",
        r"[一-龥぀-ゟ゠-ヿ]+",
        r##"[!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"##,
    ];
    Some(match pre {
        "gpt-2" | "olmo" | "mpt" | "phi-2" => None,
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => Some(vec![QWEN2]),
        "llama3" | "llama-v3" | "llama-bpe" | "dbrx" | "smaug-bpe" => Some(vec![LLAMA3]),
        "deepseek-v3" => Some(DEEPSEEK_V3.to_vec()),
        // Digits one by one, then GPT-2's split (SmolLM, StarCoder).
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" => Some(vec![r"\p{N}", ""]),
        "kimi-k2" => Some(vec![KIMI_PATTERN]),
        _ => return None,
    })
}

fn err(model: &GgufModel, message: String) -> Error {
    Error::Tokenizer {
        path: model.path().to_path_buf(),
        message,
    }
}

/// The tokenizer.json document for a GGUF model's vocabulary.
pub(crate) fn tokenizer_json(model: &GgufModel) -> Result<Value> {
    let kind = model.str("tokenizer.ggml.model").unwrap_or("");
    let tokens = model
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| err(model, "missing tokenizer.ggml.tokens".into()))?;
    if kind == "llama" {
        let types = model.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
        return super::gguf_spm::tokenizer_json(model, &tokens, &types);
    }
    if kind != "gpt2" {
        return Err(err(
            model,
            format!("tokenizer.ggml.model {kind:?}: byte-level BPE (\"gpt2\") and SentencePiece (\"llama\") vocabularies are rebuilt from GGUF"),
        ));
    }
    let merges = model.strings("tokenizer.ggml.merges")?.unwrap_or_default();
    let types = model.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    let pre = model.str("tokenizer.ggml.pre").unwrap_or("default");
    let splits = pre_splits(pre).ok_or_else(|| {
        err(
            model,
            format!("tokenizer.ggml.pre {pre:?} is not one moeserve rebuilds yet"),
        )
    })?;

    let mut vocab = serde_json::Map::with_capacity(tokens.len());
    let mut added = Vec::new();
    for (id, tok) in tokens.iter().enumerate() {
        vocab.insert((*tok).to_owned(), json!(id));
        // 3: control, 4: user-defined — matched whole before BPE, as HF's added tokens.
        match types.get(id) {
            Some(3) | Some(4) => added.push(json!({
                "id": id, "content": tok, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": false, "special": types.get(id) == Some(&3),
            })),
            _ => {}
        }
    }
    let merges: Vec<Value> = merges
        .iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| json!([a, b])))
        .collect();

    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": use_regex});
    let pre_tokenizer = match splits {
        None => byte_level(true),
        Some(exprs) => {
            let mut seq: Vec<Value> = exprs
                .iter()
                .filter(|e| !e.is_empty())
                .map(|e| json!({"type": "Split", "pattern": {"Regex": e}, "behavior": "Isolated", "invert": false}))
                .collect();
            // An empty entry asks for GPT-2's own split after the others.
            seq.push(byte_level(exprs.contains(&"")));
            json!({"type": "Sequence", "pretokenizers": seq})
        }
    };
    let post_processor = bos_post_processor(model, &tokens)?;
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": post_processor,
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// The GGUF model's tokenizer.
pub(crate) fn load(model: &GgufModel) -> Result<TextTokenizer> {
    let doc = tokenizer_json(model)?;
    TextTokenizer::from_json(doc.to_string().as_bytes(), model.path().to_path_buf())
}

/// Token texts that end generation wherever they are in a vocabulary (llama.cpp's end-of-generation
/// list in `llama-vocab.cpp`: GGUF files carry one eos id, while the hub's generation_config.json
/// often lists several, e.g. Qwen's `<|im_end|>` and `<|endoftext|>`).
const END_OF_GENERATION: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<｜end▁of▁sentence｜>",
];

/// End-of-generation ids — eos, eot, eom, then control tokens named in [`END_OF_GENERATION`] — and bos.
pub(crate) fn generation_config(model: &GgufModel) -> Result<GenerationConfig> {
    let mut eos: Vec<u32> = Vec::new();
    let mut add = |id: u32| {
        if !eos.contains(&id) {
            eos.push(id);
        }
    };
    for key in ["eos_token_id", "eot_token_id", "eom_token_id"] {
        if let Some(id) = model.u64(&format!("tokenizer.ggml.{key}"))? {
            add(id as u32);
        }
    }
    let tokens = model.strings("tokenizer.ggml.tokens")?.unwrap_or_default();
    let types = model.ints("tokenizer.ggml.token_type")?.unwrap_or_default();
    for (id, tok) in tokens.iter().enumerate() {
        let control = matches!(types.get(id), Some(3) | Some(4));
        if control && END_OF_GENERATION.contains(tok) {
            add(id as u32);
        }
    }
    Ok(GenerationConfig {
        eos_token_ids: eos,
        bos_token_id: model
            .u64("tokenizer.ggml.bos_token_id")?
            .map(|id| id as u32),
    })
}

/// `tokenizer.chat_template`.
pub(crate) fn chat_template(model: &GgufModel) -> Option<String> {
    model.str("tokenizer.chat_template").map(str::to_owned)
}
