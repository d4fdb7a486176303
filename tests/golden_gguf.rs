//! GGUF files written by llama.cpp's own converter (`scripts/make_gguf_fixtures.py`: `convert_hf_to_gguf.py`
//! on each fixture checkpoint, F32 and Q8_0) load through the GGUF path — metadata → config, llama.cpp
//! tensor names → decoder names, tokenizer and chat template from the file — and give:
//! - F32: the HF reference logits within the usual 2e-5 (the same weights, only the container differs);
//! - Q8_0: logits within a bound of the F32 file's (8-bit weights and activations), greedy tokens equal
//!   where the reference's top-1/top-2 gap exceeds that bound;
//! - the HF tokenizer's ids for the fixture prompt texts, and the same chat template text.
//! Families whose conversion llama.cpp refuses are listed in the script's docstring.

mod common;

use candle_core::{DType, Device, Tensor};
use common::*;
use moeserve::loader::{self, LoadedModel};
use moeserve::weights::ModelSource;

fn gguf(family: &str, kind: &str) -> Option<std::path::PathBuf> {
    let p = fixture_dir(family).join(format!("model-{kind}.gguf"));
    p.is_file().then_some(p)
}

fn load(path: &std::path::Path) -> LoadedModel {
    loader::load(&ModelSource::File(path.to_path_buf()), &Device::Cpu, DType::F32)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every family llama.cpp converts (a missing file is a failure for these).
const CONVERTED: &[&str] = &["qwen3_moe"];

fn prompt_logits(loaded: &LoadedModel, prompt: &[u32]) -> Vec<Vec<f32>> {
    let mut runner = Runner::new(loaded, 1, 16, 4);
    runner.step(&[(0, prompt.to_vec())]).remove(0)
}

#[test]
fn f32_gguf_equals_the_hf_reference() {
    for family in CONVERTED {
        let path = gguf(family, "f32").unwrap_or_else(|| panic!("{family}: no model-f32.gguf"));
        let loaded = load(&path);
        let r = reference(family);
        for (i, prompt) in r.prompts.iter().enumerate() {
            let ours = Tensor::new(prompt_logits(&loaded, prompt), &Device::Cpu).unwrap();
            let diff = max_abs_diff(&ours, &r.tensors[&format!("logits.{i}")]);
            assert!(diff < TOLERANCE, "{family} prompt {i}: {diff}");
        }
    }
}

#[test]
fn q8_0_gguf_stays_close_to_f32_and_keeps_clear_greedy_tokens() {
    for family in CONVERTED {
        let path = gguf(family, "q8_0").unwrap_or_else(|| panic!("{family}: no model-q8_0.gguf"));
        let q8 = load(&path);
        let f32 = load(&gguf(family, "f32").unwrap());
        let r = reference(family);
        for (i, prompt) in r.prompts.iter().enumerate() {
            let (a, b) = (prompt_logits(&q8, prompt), prompt_logits(&f32, prompt));
            let diff = a
                .iter()
                .zip(&b)
                .flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs()))
                .fold(0f32, f32::max);
            // 8-bit weights (Q8_0) and 8-bit activations (llama.cpp's Q8_0 activation rows) through
            // every projection of a random-weight model whose logits have a standard deviation of ~1.0
            // (max ~4): each dot product carries ~0.5% relative error per side; observed max 0.051
            // on qwen3_moe. Bound: 10% of the logits' spread.
            eprintln!("{family} prompt {i}: q8_0 vs f32 max |Δlogit| {diff}");
            assert!(diff < 0.1, "{family} prompt {i}: {diff}");
            for (row_a, row_b) in a.iter().zip(&b) {
                let mut sorted = row_b.clone();
                sorted.sort_by(|x, y| y.total_cmp(x));
                if sorted[0] - sorted[1] > 2.0 * diff {
                    assert_eq!(argmax(row_a), argmax(row_b), "{family} prompt {i}");
                }
            }
        }
    }
}

#[test]
fn gguf_tokenizer_and_template_equal_the_hf_ones() {
    for family in CONVERTED {
        let path = gguf(family, "f32").unwrap();
        let from_gguf = load(&path);
        let hf = loader::load(
            &ModelSource::Dir(fixture_dir(family)),
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let json: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(fixture_dir(family).join("reference.json")).unwrap(),
        )
        .unwrap();
        let mut texts: Vec<String> = json["prompt_texts"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        texts.extend(
            [
                "Hello, world! It's 2026 — numbers 12345 and spaces   here.\n\nNew line",
                "<|im_start|>user\nhi<|im_end|>",
                "ünïcödé 漢字 ✓",
            ]
            .map(str::to_owned),
        );
        for text in &texts {
            for special in [false, true] {
                assert_eq!(
                    from_gguf.tokenizer.encode(text, special).unwrap(),
                    hf.tokenizer.encode(text, special).unwrap(),
                    "{family}: {text:?}"
                );
            }
            let ids = hf.tokenizer.encode(text, false).unwrap();
            assert_eq!(
                from_gguf.tokenizer.decode(&ids, false).unwrap(),
                hf.tokenizer.decode(&ids, false).unwrap()
            );
        }
        assert_eq!(
            from_gguf.chat_template.as_ref().map(|t| &t.0),
            hf.chat_template.as_ref().map(|t| &t.0),
            "{family}"
        );
        let sorted = |mut v: Vec<u32>| {
            v.sort();
            v
        };
        assert_eq!(
            sorted(from_gguf.generation.eos_token_ids.clone()),
            sorted(hf.generation.eos_token_ids.clone()),
            "{family}: end-of-generation ids"
        );
    }
}
