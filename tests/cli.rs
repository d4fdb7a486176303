//! The command line as users and scripts rely on it: `generate --json` and `inspect` on every fixture and on
//! the embedded default model.

mod common;

use std::process::Command;

fn moeserve(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_moeserve"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn generate_json_matches_reference_on_every_fixture() {
    for family in common::FAMILIES {
        let r = common::reference(family);
        let dir = common::fixture_dir(family);
        let ids: Vec<String> = r.prompts[0].iter().map(|t| t.to_string()).collect();
        let (ok, stdout, stderr) = moeserve(&[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt-ids",
            &ids.join(","),
            "--max-tokens",
            "16",
            "--ignore-eos",
            "--json",
        ]);
        assert!(ok, "{family}: {stderr}");
        let v: serde_json::Value =
            serde_json::from_str(stdout.trim()).expect("exactly one JSON object");
        let tokens: Vec<u32> = v["token_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokens, r.greedy[0], "{family}");
        assert_eq!(
            v["prompt_ids"].as_array().unwrap().len(),
            r.prompts[0].len()
        );
        assert_eq!(v["logprobs"].as_array().unwrap().len(), 16);
        assert_eq!(v["finish_reason"], "length");
        assert!(v["text"].is_string());
    }
}

#[test]
fn generate_text_prompt_uses_the_tokenizer() {
    let r = common::reference("olmoe");
    let dir = common::fixture_dir("olmoe");
    let (ok, stdout, stderr) = moeserve(&[
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--prompt",
        "The quick brown fox",
        "--max-tokens",
        "4",
        "--ignore-eos",
        "--json",
    ]);
    assert!(ok, "{stderr}");
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let ids: Vec<u32> = v["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, r.prompts[0]);
    let tokens: Vec<u32> = v["token_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tokens, r.greedy[0][..4]);
}

#[test]
fn seeded_sampling_is_reproducible_and_eos_stops() {
    let args = [
        "generate",
        "--prompt",
        "Hello",
        "--max-tokens",
        "12",
        "--temperature",
        "1.0",
        "--seed",
        "7",
        "--json",
    ];
    let (ok, a, stderr) = moeserve(&args);
    assert!(ok, "{stderr}");
    let (_, b, _) = moeserve(&args);
    // Everything but the timings is identical.
    let without_timing = |s: &str| {
        let mut v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
        assert!(v["timing"]["decode_tokens_per_s"].as_f64().unwrap() > 0.0);
        v.as_object_mut().unwrap().remove("timing");
        v
    };
    assert_eq!(without_timing(&a), without_timing(&b));
    let v: serde_json::Value = serde_json::from_str(a.trim()).unwrap();
    let n = v["token_ids"].as_array().unwrap().len();
    match v["finish_reason"].as_str().unwrap() {
        "length" => assert_eq!(n, 12),
        "stop" => assert!(n <= 12),
        other => panic!("finish_reason {other}"),
    }
}

#[test]
fn inspect_describes_fixtures_and_default_model() {
    let (ok, out, stderr) = moeserve(&["inspect"]);
    assert!(ok, "{stderr}");
    assert!(
        out.contains("Qwen3MoeForCausalLM") && out.contains("meaningless"),
        "{out}"
    );
    for (family, arch, shared, experts) in [
        (
            "mixtral",
            "MixtralForCausalLM",
            "0 shared",
            "8 total, 2 per token",
        ),
        (
            "qwen2_moe",
            "Qwen2MoeForCausalLM",
            "1 shared",
            "8 total, 2 per token",
        ),
        (
            "qwen3_moe",
            "Qwen3MoeForCausalLM",
            "0 shared",
            "8 total, 2 per token",
        ),
        (
            "olmoe",
            "OlmoeForCausalLM",
            "0 shared",
            "8 total, 2 per token",
        ),
        (
            "kimi_k2",
            "DeepseekV3ForCausalLM",
            "1 shared",
            "16 total, 4 per token",
        ),
        (
            "moonlight",
            "DeepseekV3ForCausalLM",
            "2 shared",
            "16 total, 4 per token",
        ),
        (
            "deepseek_v2_lite",
            "DeepseekV2ForCausalLM",
            "2 shared",
            "16 total, 4 per token",
        ),
        (
            "deepseek_v2",
            "DeepseekV2ForCausalLM",
            "2 shared",
            "16 total, 4 per token",
        ),
    ] {
        let dir = common::fixture_dir(family);
        let (ok, out, stderr) = moeserve(&["inspect", "--model", dir.to_str().unwrap()]);
        assert!(ok, "{family}: {stderr}");
        assert!(out.contains(arch) && out.contains(shared), "{out}");
        assert!(out.contains(experts), "{out}");
        if arch.starts_with("Deepseek") {
            // Latent cache: (32 + 8) f32 values per layer and token, 4x smaller than per-head K/V here.
            assert!(
                out.contains("kv cache:      480 bytes/token (latent"),
                "{out}"
            );
        }
        assert!(out.contains("chat template: found"), "{out}");
        assert!(out.contains("active per token"), "{out}");
    }
}
