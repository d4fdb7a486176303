//! Qwen3-MoE: per-head q/k RMSNorm, no bias, softmax top-k with `norm_topk_prob`, no shared expert; dense
//! layers chosen as in Qwen2-MoE.

use super::qwen2_moe::layer_plan;
use crate::error::Result;
use crate::model::config::{CommonFields, HubConfig};
use crate::model::spec::{
    AttentionKind, Family, ModelSpec, MoeSpec, QkNorm, RouterSpec, TensorNames,
};

pub(crate) fn spec(cfg: &HubConfig) -> Result<ModelSpec> {
    let c = CommonFields::read(cfg)?;
    let attention = cfg.gqa(cfg.bool_or("attention_bias", false)?, QkNorm::PerHead)?;
    // Hub configs say num_experts; transformers 5 writes num_local_experts.
    let num_experts = cfg.usize_any(&["num_experts", "num_local_experts"])?;
    let moe = MoeSpec {
        num_experts,
        top_k: cfg.usize("num_experts_per_tok")?,
        expert_intermediate_size: cfg.usize("moe_intermediate_size")?,
        router: RouterSpec::SoftmaxTopK {
            renormalize: cfg.bool_or("norm_topk_prob", true)?,
        },
        shared: None,
    };
    let layers = layer_plan(cfg, c.num_layers, &moe)?;
    Ok(c.into_spec(
        Family::Qwen3Moe,
        AttentionKind::Gqa(attention),
        layers,
        TensorNames::default(),
    ))
}
