//! A GGUF model's metadata read back into the hub `config.json` its converter started from
//! (`convert_hf_to_gguf.py` in reverse), so the family files map it onto a [`ModelSpec`] exactly as they
//! map a hub checkpoint — one path from config to decoder. Also the name map between the decoder's
//! tensor names and llama.cpp's for that spec.

use serde_json::{json, Map, Value};

use super::config::HubConfig;
use super::families::model_spec;
use super::spec::{AttentionKind, FfnSpec, ModelSpec};
use crate::error::{Error, Result};
use crate::weights::gguf::tensors::NameMap;
use crate::weights::gguf::GgufModel;

/// The architectures read (`general.architecture`).
pub(crate) const ARCHITECTURES: &[&str] = &["qwen3moe", "qwen2moe", "olmoe", "llama", "deepseek2"];

fn err(model: &GgufModel, message: String) -> Error {
    Error::Config {
        path: model.path().to_path_buf(),
        message,
    }
}

/// Reads `{arch}.{key}` as an integer.
fn int(model: &GgufModel, arch: &str, key: &str) -> Result<Option<u64>> {
    let full = format!("{arch}.{key}");
    match model.get(&full) {
        // Per-layer arrays (some exports): the largest entry.
        Some(crate::weights::gguf::Value::Array(items)) => {
            Ok(items.iter().filter_map(|v| v.as_u64()).max())
        }
        _ => model.u64(&full),
    }
}

fn need(model: &GgufModel, arch: &str, key: &str) -> Result<u64> {
    int(model, arch, key)?.ok_or_else(|| err(model, format!("missing metadata {arch}.{key}")))
}

fn has_tensor(model: &GgufModel, name: &str) -> bool {
    model.tensors().any(|(_, n, _)| n == name)
}

/// The tensor's shape, if present.
fn tensor_shape(model: &GgufModel, name: &str) -> Option<Vec<usize>> {
    model
        .tensors()
        .find(|(_, n, _)| *n == name)
        .map(|(_, _, info)| info.shape.clone())
}

/// The hub config.json equivalent of a GGUF model's metadata.
pub(crate) fn hub_config(model: &GgufModel) -> Result<Value> {
    let arch = model.architecture()?.to_owned();
    let a = arch.as_str();
    let mut c = Map::new();
    let layers = need(model, a, "block_count")?;
    let hidden = need(model, a, "embedding_length")?;
    let heads = need(model, a, "attention.head_count")?;
    c.insert("num_hidden_layers".into(), json!(layers));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(int(model, a, "attention.head_count_kv")?.unwrap_or(heads)),
    );
    c.insert(
        "rms_norm_eps".into(),
        json!(model
            .f64(&format!("{a}.attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6)),
    );
    let context = int(model, a, "context_length")?.unwrap_or(4096);
    c.insert("max_position_embeddings".into(), json!(context));
    c.insert(
        "rope_theta".into(),
        json!(model
            .f64(&format!("{a}.rope.freq_base"))?
            .unwrap_or(10000.0)),
    );
    let vocab = match int(model, a, "vocab_size")? {
        Some(v) => v as usize,
        None => match model.strings("tokenizer.ggml.tokens")? {
            Some(t) => t.len(),
            None => tensor_shape(model, "token_embd.weight")
                .and_then(|s| s.first().copied())
                .ok_or_else(|| err(model, "no vocabulary size (metadata or token_embd)".into()))?,
        },
    };
    c.insert("vocab_size".into(), json!(vocab));
    c.insert(
        "tie_word_embeddings".into(),
        json!(!has_tensor(model, "output.weight")),
    );
    if let Some(ff) = int(model, a, "feed_forward_length")? {
        c.insert("intermediate_size".into(), json!(ff));
    }
    if let Some(id) = model.u64("tokenizer.ggml.bos_token_id")? {
        c.insert("bos_token_id".into(), json!(id));
    }
    if let Some(id) = model.u64("tokenizer.ggml.eos_token_id")? {
        c.insert("eos_token_id".into(), json!(id));
    }
    rope_scaling(model, a, &mut c)?;
    let experts = int(model, a, "expert_count")?.unwrap_or(0);
    let used = int(model, a, "expert_used_count")?.unwrap_or(0);
    let expert_ff = int(model, a, "expert_feed_forward_length")?;
    let norm = model.bool(&format!("{a}.expert_weights_norm"))?;
    // Layers without a router are dense (Qwen's `mlp_only_layers`).
    let dense_layers: Vec<u64> = (0..layers)
        .filter(|i| !has_tensor(model, &format!("blk.{i}.ffn_gate_inp.weight")))
        .collect();
    match a {
        "qwen3moe" | "qwen2moe" => {
            let v3 = a == "qwen3moe";
            c.insert(
                "model_type".into(),
                json!(if v3 { "qwen3_moe" } else { "qwen2_moe" }),
            );
            c.insert("num_experts".into(), json!(experts));
            c.insert("num_experts_per_tok".into(), json!(used));
            let moe_ff = expert_ff
                .or_else(|| {
                    tensor_shape(model, "blk.0.ffn_gate_exps.weight")
                        .and_then(|s| s.get(1).map(|&d| d as u64))
                })
                .ok_or_else(|| {
                    err(
                        model,
                        format!("missing metadata {a}.expert_feed_forward_length"),
                    )
                })?;
            c.insert("moe_intermediate_size".into(), json!(moe_ff));
            c.entry("intermediate_size").or_insert(json!(moe_ff));
            // llama.cpp's graphs: Qwen3-MoE renormalises the top-k weights, Qwen2-MoE does not.
            c.insert("norm_topk_prob".into(), json!(norm.unwrap_or(v3)));
            c.insert("mlp_only_layers".into(), json!(dense_layers));
            c.insert("decoder_sparse_step".into(), json!(1));
            if let Some(hd) = int(model, a, "attention.key_length")? {
                c.insert("head_dim".into(), json!(hd));
            }
            if !v3 {
                let shared = int(model, a, "expert_shared_feed_forward_length")?
                    .or_else(|| {
                        (0..layers).find_map(|i| {
                            tensor_shape(model, &format!("blk.{i}.ffn_up_shexp.weight"))
                                .and_then(|s| s.first().map(|&d| d as u64))
                        })
                    })
                    .unwrap_or(0);
                c.insert("shared_expert_intermediate_size".into(), json!(shared));
            }
        }
        "olmoe" => {
            c.insert("model_type".into(), json!("olmoe"));
            c.insert("num_experts".into(), json!(experts));
            c.insert("num_experts_per_tok".into(), json!(used));
            if let Some(ff) = expert_ff {
                c.insert("intermediate_size".into(), json!(ff));
            }
            c.insert("norm_topk_prob".into(), json!(norm.unwrap_or(false)));
            if let Some(clip) = model.f64(&format!("{a}.attention.clamp_kqv"))? {
                c.insert("clip_qkv".into(), json!(clip));
            }
        }
        "llama" if experts > 0 => {
            c.insert("model_type".into(), json!("mixtral"));
            c.insert("num_local_experts".into(), json!(experts));
            c.insert("num_experts_per_tok".into(), json!(used));
            if let Some(hd) = int(model, a, "attention.key_length")? {
                c.insert("head_dim".into(), json!(hd));
            }
        }
        "deepseek2" => deepseek(model, a, &mut c, experts, used, expert_ff, norm)?,
        "llama" => {
            return Err(err(
                model,
                "a dense llama GGUF (no experts): moeserve serves mixture-of-experts models".into(),
            ))
        }
        other => {
            return Err(Error::UnknownArchitecture {
                path: model.path().to_path_buf(),
                name: format!("GGUF architecture {other:?}"),
                supported: ARCHITECTURES.join(", "),
            })
        }
    }
    Ok(Value::Object(c))
}

fn deepseek(
    model: &GgufModel,
    a: &str,
    c: &mut Map<String, Value>,
    experts: u64,
    used: u64,
    expert_ff: Option<u64>,
    norm: Option<bool>,
) -> Result<()> {
    // expert_gating_func: 1 softmax (V2), 2 sigmoid (V3, Kimi K2, Moonlight).
    let sigmoid = int(model, a, "expert_gating_func")? == Some(2)
        || has_tensor(model, "blk.1.exp_probs_b.bias")
        || model
            .tensors()
            .any(|(_, n, _)| n.ends_with(".exp_probs_b.bias"));
    c.insert(
        "model_type".into(),
        json!(if sigmoid {
            "deepseek_v3"
        } else {
            "deepseek_v2"
        }),
    );
    c.insert("n_routed_experts".into(), json!(experts));
    c.insert("num_experts_per_tok".into(), json!(used));
    if let Some(ff) = expert_ff {
        c.insert("moe_intermediate_size".into(), json!(ff));
    }
    c.insert(
        "first_k_dense_replace".into(),
        json!(int(model, a, "leading_dense_block_count")?.unwrap_or(0)),
    );
    c.insert("moe_layer_freq".into(), json!(1));
    c.insert(
        "n_shared_experts".into(),
        json!(int(model, a, "expert_shared_count")?.unwrap_or(0)),
    );
    c.insert(
        "routed_scaling_factor".into(),
        json!(model
            .f64(&format!("{a}.expert_weights_scale"))?
            .unwrap_or(1.0)),
    );
    c.insert("norm_topk_prob".into(), json!(norm.unwrap_or(sigmoid)));
    c.insert(
        "scoring_func".into(),
        json!(if sigmoid { "sigmoid" } else { "softmax" }),
    );
    let groups = int(model, a, "expert_group_count")?;
    let groups_used = int(model, a, "expert_group_used_count")?;
    if sigmoid {
        c.insert("topk_method".into(), json!("noaux_tc"));
        c.insert("n_group".into(), json!(groups.unwrap_or(1).max(1)));
        c.insert(
            "topk_group".into(),
            json!(groups_used.or(groups).unwrap_or(1).max(1)),
        );
    } else if let (Some(g), Some(u)) = (groups.filter(|&g| g > 1), groups_used) {
        c.insert("topk_method".into(), json!("group_limited_greedy"));
        c.insert("n_group".into(), json!(g));
        c.insert("topk_group".into(), json!(u));
    } else {
        c.insert("topk_method".into(), json!("greedy"));
    }
    let q_lora = int(model, a, "attention.q_lora_rank")?.filter(|&r| r > 0);
    c.insert("q_lora_rank".into(), json!(q_lora));
    let kv_lora = need(model, a, "attention.kv_lora_rank")?;
    c.insert("kv_lora_rank".into(), json!(kv_lora));
    let rope = need(model, a, "rope.dimension_count")?;
    c.insert("qk_rope_head_dim".into(), json!(rope));
    // Newer files write the MLA dims under *_mla (key_length is then the latent's kv_lora + rope).
    let key = match int(model, a, "attention.key_length_mla")? {
        Some(k) => k,
        None => need(model, a, "attention.key_length")?,
    };
    let value = match int(model, a, "attention.value_length_mla")? {
        Some(v) => v,
        None => need(model, a, "attention.value_length")?,
    };
    c.insert("qk_nope_head_dim".into(), json!(key.saturating_sub(rope)));
    c.insert("v_head_dim".into(), json!(value));
    c.insert("rope_interleave".into(), json!(true));
    Ok(())
}

/// `rope_scaling` from `{arch}.rope.scaling.*`.
fn rope_scaling(model: &GgufModel, a: &str, c: &mut Map<String, Value>) -> Result<()> {
    let kind = model
        .str(&format!("{a}.rope.scaling.type"))
        .unwrap_or("none");
    let factor = model.f64(&format!("{a}.rope.scaling.factor"))?;
    let original = int(model, a, "rope.scaling.original_context_length")?;
    let scaling = match (kind, factor) {
        ("linear", Some(f)) => json!({"type": "linear", "factor": f}),
        ("yarn", Some(f)) => {
            let mut y = json!({
                "type": "yarn",
                "factor": f,
                "beta_fast": model.f64(&format!("{a}.rope.scaling.yarn_beta_fast"))?.unwrap_or(32.0),
                "beta_slow": model.f64(&format!("{a}.rope.scaling.yarn_beta_slow"))?.unwrap_or(1.0),
            });
            if let Some(o) = original {
                y["original_max_position_embeddings"] = json!(o);
            }
            // DeepSeek: the converter writes 0.1 · mscale_all_dim.
            if let Some(m) = model.f64(&format!("{a}.rope.scaling.yarn_log_multiplier"))? {
                let all = m / 0.1;
                y["mscale"] = json!(all);
                y["mscale_all_dim"] = json!(all);
            }
            y
        }
        ("none", _) | (_, None) => return Ok(()),
        (other, _) => return Err(err(model, format!("unsupported rope scaling {other:?}"))),
    };
    c.insert("rope_scaling".into(), scaling);
    Ok(())
}

/// The spec of a GGUF model and the name map for its tensors.
pub(crate) fn gguf_spec(model: &GgufModel) -> Result<(HubConfig, ModelSpec, NameMap)> {
    let value = hub_config(model)?;
    let cfg = HubConfig::from_value(model.path().to_path_buf(), value);
    let spec = model_spec(&cfg)?;
    let shared = spec
        .layers
        .iter()
        .find_map(|l| match l {
            FfnSpec::Moe(m) => m.shared.as_ref().map(|s| s.name),
            FfnSpec::Dense { .. } => None,
        })
        .unwrap_or("shared_expert");
    let arch = model.architecture()?;
    let names = NameMap {
        moe_block: spec.names.moe_block.to_owned(),
        expert_proj: spec.names.expert_proj.map(str::to_owned),
        shared: shared.to_owned(),
        unpermute_qk: match (&spec.attention, arch) {
            (AttentionKind::Gqa(g), "llama") => Some((g.num_heads, g.num_kv_heads)),
            _ => None,
        },
        mla: match &spec.attention {
            AttentionKind::Mla(m) => Some((m.num_heads, m.qk_nope_head_dim, m.v_head_dim)),
            _ => None,
        },
    };
    Ok((cfg, spec, names))
}
