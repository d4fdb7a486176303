//! Hub configs as the real checkpoints ship them (DeepSeek-V3, Kimi K2, Moonlight, DeepSeek-V2-Lite) map onto
//! the right spec, and the MLA latent cache is as small as it should be. Field values copied from the
//! published config.json files.

use moeserve::inspect::kv_bytes_per_token;
use moeserve::model::config::HubConfig;
use moeserve::model::families::model_spec;
use moeserve::model::spec::{AttentionKind, FfnSpec, ModelSpec, RouterSpec};
use serde_json::json;

fn spec(value: serde_json::Value) -> ModelSpec {
    model_spec(&HubConfig::from_value("config.json".into(), value)).unwrap()
}

fn deepseek_v3() -> serde_json::Value {
    json!({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "attention_bias": false,
        "bos_token_id": 0, "eos_token_id": 1, "ep_size": 1, "first_k_dense_replace": 3, "hidden_act": "silu",
        "hidden_size": 7168, "intermediate_size": 18432, "kv_lora_rank": 512, "max_position_embeddings": 163840,
        "moe_intermediate_size": 2048, "moe_layer_freq": 1, "n_group": 8, "n_routed_experts": 256,
        "n_shared_experts": 1, "norm_topk_prob": true, "num_attention_heads": 128, "num_experts_per_tok": 8,
        "num_hidden_layers": 61, "num_key_value_heads": 128, "num_nextn_predict_layers": 1, "q_lora_rank": 1536,
        "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "rms_norm_eps": 1e-06,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096, "type": "yarn"},
        "rope_theta": 10000, "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "seq_aux": true,
        "tie_word_embeddings": false, "topk_group": 4, "topk_method": "noaux_tc", "torch_dtype": "bfloat16",
        "v_head_dim": 128, "vocab_size": 129280})
}

fn kimi_k2() -> serde_json::Value {
    let mut v = deepseek_v3();
    let o = v.as_object_mut().unwrap();
    o.insert("model_type".into(), json!("kimi_k2"));
    o.insert("n_routed_experts".into(), json!(384));
    o.insert("n_group".into(), json!(1));
    o.insert("topk_group".into(), json!(1));
    o.insert("num_attention_heads".into(), json!(64));
    o.insert("num_key_value_heads".into(), json!(64));
    o.insert("first_k_dense_replace".into(), json!(1));
    o.insert("routed_scaling_factor".into(), json!(2.827));
    o.insert("rope_theta".into(), json!(50000.0));
    o.insert("num_nextn_predict_layers".into(), json!(0));
    o.insert("max_position_embeddings".into(), json!(131072));
    o.insert("vocab_size".into(), json!(163840));
    o.insert(
        "rope_scaling".into(),
        json!({"beta_fast": 1.0, "beta_slow": 1.0, "factor": 32.0, "mscale": 1.0, "mscale_all_dim": 1.0,
            "original_max_position_embeddings": 4096, "type": "yarn"}),
    );
    v
}

fn moonlight() -> serde_json::Value {
    json!({"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 2048,
        "intermediate_size": 11264, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
        "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64, "num_experts_per_tok": 6,
        "n_shared_experts": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1, "topk_group": 1,
        "topk_method": "noaux_tc", "scoring_func": "sigmoid", "norm_topk_prob": true,
        "routed_scaling_factor": 2.446, "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "v_head_dim": 128, "rope_theta": 50000.0, "rope_scaling": null,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "vocab_size": 163840,
        "tie_word_embeddings": false, "num_nextn_predict_layers": 0})
}

fn deepseek_v2_lite() -> serde_json::Value {
    json!({"architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "hidden_size": 2048,
        "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
        "num_attention_heads": 16, "num_key_value_heads": 16, "n_routed_experts": 64, "num_experts_per_tok": 6,
        "n_shared_experts": 2, "first_k_dense_replace": 1, "moe_layer_freq": 1, "n_group": 1, "topk_group": 1,
        "topk_method": "greedy", "scoring_func": "softmax", "norm_topk_prob": false,
        "routed_scaling_factor": 1.0, "q_lora_rank": null, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
        "qk_rope_head_dim": 64, "v_head_dim": 128, "rope_theta": 10000,
        "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
            "original_max_position_embeddings": 4096, "type": "yarn"},
        "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "vocab_size": 102400,
        "tie_word_embeddings": false})
}

#[test]
fn deepseek_v3_maps_its_config() {
    let s = spec(deepseek_v3());
    let AttentionKind::Mla(m) = &s.attention else {
        panic!("MLA expected")
    };
    assert_eq!(
        (m.q_lora_rank, m.kv_lora_rank, m.num_heads),
        (Some(1536), 512, 128)
    );
    // YaRN mscale(40, 1.0)^2 on top of 192^-0.5.
    let mscale = 0.1 * 40f64.ln() + 1.0;
    assert!((m.softmax_scale - 192f64.powf(-0.5) * mscale * mscale).abs() < 1e-12);
    assert!(m.rope.interleaved);
    assert_eq!(s.mtp_layers, 1);
    assert!(matches!(
        s.layers[2],
        FfnSpec::Dense {
            intermediate_size: 18432
        }
    ));
    let FfnSpec::Moe(moe) = &s.layers[3] else {
        panic!("layer 3 is MoE")
    };
    assert_eq!(
        moe.router,
        RouterSpec::DeepseekV3 {
            n_group: 8,
            topk_group: 4,
            renormalize: true,
            scaling: 2.5
        }
    );
    assert_eq!(moe.shared.as_ref().unwrap().intermediate_size, 2048);
}

#[test]
fn latent_cache_bytes_of_real_configs() {
    // bf16: latent (512 + 64) values per layer and token vs decompressed heads × (192 + 128).
    let (v3, v3_full) = kv_bytes_per_token(&spec(deepseek_v3()), 2);
    assert_eq!(v3, 61 * 576 * 2);
    assert_eq!(v3_full, 61 * 128 * 320 * 2);
    let (k2, k2_full) = kv_bytes_per_token(&spec(kimi_k2()), 2);
    assert_eq!(k2, 70_272);
    assert_eq!(k2_full, 61 * 64 * 320 * 2);
    let (moon, _) = kv_bytes_per_token(&spec(moonlight()), 2);
    assert_eq!(moon, 27 * 576 * 2);
}

#[test]
fn kimi_moonlight_and_v2_lite_map_their_configs() {
    let k2 = spec(kimi_k2());
    let FfnSpec::Moe(moe) = &k2.layers[1] else {
        panic!()
    };
    assert_eq!((moe.num_experts, moe.top_k), (384, 8));
    assert!(matches!(k2.layers[0], FfnSpec::Dense { .. }));
    let moon = spec(moonlight());
    let AttentionKind::Mla(m) = &moon.attention else {
        panic!()
    };
    assert_eq!(m.q_lora_rank, None);
    let FfnSpec::Moe(moe) = &moon.layers[1] else {
        panic!()
    };
    assert_eq!(moe.shared.as_ref().unwrap().intermediate_size, 2 * 1408);
    let lite = spec(deepseek_v2_lite());
    let FfnSpec::Moe(moe) = &lite.layers[1] else {
        panic!()
    };
    assert_eq!(
        moe.router,
        RouterSpec::DeepseekV2 {
            groups: None,
            renormalize: false,
            scaling: 1.0
        }
    );
    let AttentionKind::Mla(m) = &lite.attention else {
        panic!()
    };
    let mscale = 0.1 * 0.707 * 40f64.ln() + 1.0;
    assert!((m.softmax_scale - 192f64.powf(-0.5) * mscale * mscale).abs() < 1e-12);
}

#[test]
fn unsupported_routing_is_refused() {
    let mut v = deepseek_v3();
    v["scoring_func"] = json!("softmax");
    let err = model_spec(&HubConfig::from_value("config.json".into(), v))
        .unwrap_err()
        .to_string();
    assert!(err.contains("scoring_func"), "{err}");
}
