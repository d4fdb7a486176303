//! A GGUF SentencePiece vocabulary (`tokenizer.ggml.model = "llama"`: Mistral/Mixtral, Llama 2 …) rebuilt as
//! the tokenizer.json transformers' `LlamaConverter` makes from a `tokenizer.model` (legacy mode): BPE with
//! byte fallback, merges derived from the piece scores as its `SentencePieceExtractor` does (every split of
//! a piece into two pieces, ranked by the merged piece's score), `▁` for spaces with a prefix space when
//! `add_space_prefix` (the default), control tokens as special added tokens, `<0xHH>` pieces for bytes.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::error::Result;
use crate::weights::gguf::GgufModel;

/// The merges `SentencePieceExtractor::extract` derives: for each piece (in vocabulary order), every
/// split into two pieces of the vocabulary, sorted by (left id, right id); then all of them stably by the
/// piece's score, highest first.
pub(crate) fn merges_from_scores(tokens: &[&str], scores: &[f32]) -> Vec<(String, String)> {
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(usize, usize, f32)> = Vec::new();
    for (piece, score) in tokens.iter().zip(scores) {
        let mut local: Vec<(usize, usize, f32)> = piece
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (l, r) = piece.split_at(at);
                Some((*ids.get(l)?, *ids.get(r)?, *score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        merges.extend(local);
    }
    merges.sort_by(|a, b| b.2.total_cmp(&a.2));
    merges
        .into_iter()
        .map(|(l, r, _)| (tokens[l].to_owned(), tokens[r].to_owned()))
        .collect()
}

/// The tokenizer.json document (`tokens`, `scores`, `types` from the file).
pub(crate) fn tokenizer_json(model: &GgufModel, tokens: &[&str], types: &[i64]) -> Result<Value> {
    let scores: Vec<f32> = match model
        .get("tokenizer.ggml.scores")
        .and_then(|v| v.as_array())
    {
        Some(a) => a.iter().map(|v| v.as_f64().unwrap_or(0.0) as f32).collect(),
        None => vec![0.0; tokens.len()],
    };
    let vocab: serde_json::Map<String, Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| ((*t).to_owned(), json!(i)))
        .collect();
    let merges: Vec<Value> = merges_from_scores(tokens, &scores)
        .into_iter()
        .map(|(l, r)| json!([l, r]))
        .collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter_map(|(id, tok)| {
            // 2: unknown, 3: control — special; 4: user-defined — matched whole, not special.
            let special = matches!(types.get(id), Some(2) | Some(3));
            (special || types.get(id) == Some(&4)).then(|| {
                json!({"id": id, "content": tok, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": special})
            })
        })
        .collect();
    let unk = model
        .u64("tokenizer.ggml.unknown_token_id")?
        .and_then(|id| tokens.get(id as usize))
        .map(|t| (*t).to_owned());
    let prefix = model
        .bool("tokenizer.ggml.add_space_prefix")?
        .unwrap_or(true);
    let mut normalizers = Vec::new();
    if prefix {
        normalizers.push(json!({"type": "Prepend", "prepend": "▁"}));
    }
    normalizers.push(json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"}));
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": normalizers},
        "pre_tokenizer": null,
        "post_processor": bos_post_processor(model, tokens)?,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    }))
}

/// A post-processor adding BOS when the file says `add_bos_token` (null otherwise); the BPE vocabularies
/// (`super::gguf`) use it too.
pub(super) fn bos_post_processor(model: &GgufModel, tokens: &[&str]) -> Result<Value> {
    let bos = model
        .u64("tokenizer.ggml.bos_token_id")?
        .and_then(|id| tokens.get(id as usize).map(|t| (id, (*t).to_owned())));
    Ok(match (model.bool("tokenizer.ggml.add_bos_token")?, bos) {
        (Some(true), Some((id, bos))) => json!({
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos.clone(): {"id": bos, "ids": [id], "tokens": [bos]}},
        }),
        _ => Value::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_the_merged_pieces_scores() {
        let tokens = ["<unk>", "a", "b", "c", "ab", "abc", "bc"];
        let scores = [0.0, -1.0, -2.0, -3.0, -0.5, -0.1, -0.9];
        let m = merges_from_scores(&tokens, &scores);
        // abc (-0.1): a+bc and ab+c, by (left id, right id): (a=1, bc=6) then (ab=4, c=3); then ab (-0.5),
        // then bc (-0.9).
        let want = [("a", "bc"), ("ab", "c"), ("a", "b"), ("b", "c")];
        let got: Vec<(&str, &str)> = m.iter().map(|(l, r)| (l.as_str(), r.as_str())).collect();
        assert_eq!(got, want);
    }
}
