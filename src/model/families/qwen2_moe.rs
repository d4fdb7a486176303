//! Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): qkv bias, softmax top-k (`norm_topk_prob`, usually off), a shared
//! expert gated by sigmoid(`shared_expert_gate`), dense layers by `decoder_sparse_step` / `mlp_only_layers`.

use crate::error::Result;
use crate::model::config::{CommonFields, HubConfig};
use crate::model::spec::{
    Family, FfnSpec, ModelSpec, MoeSpec, QkNorm, RouterSpec, SharedExpertSpec, TensorNames,
};

/// Which layers are sparse, as Qwen2/3-MoE decide it.
pub fn sparse_layers(cfg: &HubConfig, num_layers: usize, num_experts: usize) -> Result<Vec<bool>> {
    let step = cfg.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1);
    let dense = cfg.usize_list("mlp_only_layers")?;
    Ok((0..num_layers)
        .map(|i| !dense.contains(&i) && num_experts > 0 && (i + 1) % step == 0)
        .collect())
}

pub fn spec(cfg: &HubConfig) -> Result<ModelSpec> {
    let c = CommonFields::read(cfg)?;
    let attention = cfg.gqa(cfg.bool_or("qkv_bias", true)?, QkNorm::None)?;
    let num_experts = cfg.usize("num_experts")?;
    let shared_size = cfg
        .opt_usize("shared_expert_intermediate_size")?
        .unwrap_or(0);
    let moe = MoeSpec {
        num_experts,
        top_k: cfg.usize("num_experts_per_tok")?,
        expert_intermediate_size: cfg.usize("moe_intermediate_size")?,
        router: RouterSpec::SoftmaxTopK {
            renormalize: cfg.bool_or("norm_topk_prob", false)?,
        },
        shared: (shared_size > 0).then_some(SharedExpertSpec {
            intermediate_size: shared_size,
            gated: true,
        }),
    };
    let dense = cfg.usize("intermediate_size")?;
    let layers = sparse_layers(cfg, c.num_layers, num_experts)?
        .into_iter()
        .map(|sparse| {
            if sparse {
                FfnSpec::Moe(moe.clone())
            } else {
                FfnSpec::Dense {
                    intermediate_size: dense,
                }
            }
        })
        .collect();
    Ok(ModelSpec {
        family: Family::Qwen2Moe,
        vocab_size: c.vocab_size,
        hidden_size: c.hidden_size,
        rms_norm_eps: c.rms_norm_eps,
        max_position_embeddings: c.max_position_embeddings,
        tie_word_embeddings: c.tie_word_embeddings,
        attention,
        layers,
        names: TensorNames::default(),
    })
}
