//! `--load-format dummy`: a published config.json alone (no weights, no tokenizer) builds the model with
//! random weights on the device, generates through the engine with the placeholder tokenizer, and
//! `inspect` reports the real architecture.

use std::process::Command;

use candle_core::{DType, Device};
use moeserve::engine::{generate, RequestParams};
use moeserve::loader::{self, LoadFormat};
use moeserve::weights::ModelSource;

/// Qwen3-30B-A3B's published config with its sizes shrunk so the test stays small.
fn small_qwen3_dir() -> tempfile::TempDir {
    let text = std::fs::read_to_string("configs/qwen3-30b-a3b/config.json").unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    for (k, v) in [
        ("num_hidden_layers", 2),
        ("hidden_size", 128),
        ("moe_intermediate_size", 32),
        ("num_experts", 16),
        ("num_experts_per_tok", 4),
        ("vocab_size", 500),
        ("head_dim", 16),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 2),
    ] {
        cfg[k] = v.into();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    dir
}

#[test]
fn dummy_model_generates_from_config_alone() {
    let dir = small_qwen3_dir();
    let source = ModelSource::Dir(dir.path().to_path_buf());
    let loaded = loader::load_with(&source, &Device::Cpu, DType::F32, LoadFormat::Dummy).unwrap();
    assert!(loaded.weights.shards.is_empty());
    // 2 layers × (4 attention + 2 norms + q/k norm + router + 16 × 3 experts) + embed, norm, lm head.
    assert_eq!(loaded.weights.tensors, 2 * (4 + 2 + 2 + 1 + 16 * 3) + 3);
    assert_eq!(loaded.tokenizer.vocab_size(), 500);
    let out = generate(
        &std::sync::Arc::new(loaded),
        vec![5, 6, 7],
        RequestParams {
            max_tokens: 6,
            ignore_eos: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(out.token_ids.len(), 6);
    // The placeholder tokenizer spells token N as the word <tN>.
    assert!(
        out.text.contains(&format!("<t{}>", out.token_ids[1])),
        "{:?}",
        out
    );
    // A dummy load without --load-format dummy is a clear error naming the missing weights.
    assert!(loader::load(&source, &Device::Cpu, DType::F32).is_err());
}

#[test]
fn inspect_reports_the_real_architecture_of_a_dummy_model() {
    let dir = small_qwen3_dir();
    let out = Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args([
            "inspect",
            "--load-format",
            "dummy",
            "--dtype",
            "bf16",
            "--model",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("Qwen3MoeForCausalLM"), "{text}");
    assert!(text.contains("16 total, 4 per token"), "{text}");
    assert!(text.contains("random (--load-format dummy)"), "{text}");
    // On the CPU `--dtype bf16` holds the weights in bf16 and computes in f32.
    assert!(text.contains("compute dtype: F32"), "{text}");
    assert!(text.contains("weight dtype:  BF16"), "{text}");
}

/// The published DeepSeek-V3 config (block-FP8 declared) shrunk to two layers: a dummy model on the CPU
/// is built from it (experts dense there; the GPU keeps them FP8) and generates.
#[test]
fn dummy_fp8_deepseek_v3_config_builds_on_the_cpu() {
    let text = std::fs::read_to_string("configs/deepseek-v3/config.json").unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(cfg["quantization_config"]["quant_method"], "fp8");
    for (k, v) in [
        ("num_hidden_layers", 2),
        ("first_k_dense_replace", 1),
        ("hidden_size", 128),
        ("intermediate_size", 96),
        ("moe_intermediate_size", 32),
        ("n_routed_experts", 16),
        ("n_group", 4),
        ("topk_group", 2),
        ("num_experts_per_tok", 4),
        ("vocab_size", 500),
        ("num_attention_heads", 4),
        ("num_key_value_heads", 4),
        ("q_lora_rank", 64),
        ("kv_lora_rank", 32),
        ("qk_nope_head_dim", 16),
        ("qk_rope_head_dim", 8),
        ("v_head_dim", 16),
        ("num_nextn_predict_layers", 0),
    ] {
        cfg[k] = v.into();
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), cfg.to_string()).unwrap();
    let source = ModelSource::Dir(dir.path().to_path_buf());
    let loaded = std::sync::Arc::new(
        loader::load_with(&source, &Device::Cpu, DType::F32, LoadFormat::Dummy).unwrap(),
    );
    let params = RequestParams {
        max_tokens: 4,
        ignore_eos: true,
        ..RequestParams::default()
    };
    let out = generate(&loaded, vec![1, 2, 3], params).unwrap();
    assert_eq!(out.token_ids.len(), 4);
}
