//! Qwen2-MoE (Qwen1.5-MoE, Qwen2-57B-A14B): qkv bias, softmax top-k (`norm_topk_prob`, usually off), a shared
//! expert gated by sigmoid(`shared_expert_gate`), dense layers by `decoder_sparse_step` / `mlp_only_layers`.

use crate::error::Result;
use crate::model::config::{CommonFields, HubConfig};
use crate::model::spec::{
    AttentionKind, Family, FfnSpec, ModelSpec, MoeSpec, QkNorm, RouterSpec, SharedExpertSpec,
    TensorNames,
};

/// Each layer's FFN, as Qwen2/3-MoE decide it: MoE unless listed in `mlp_only_layers` or off the
/// `decoder_sparse_step` grid, else a dense MLP of `intermediate_size`.
pub(crate) fn layer_plan(
    cfg: &HubConfig,
    num_layers: usize,
    moe: &MoeSpec,
) -> Result<Vec<FfnSpec>> {
    let step = cfg.opt_usize("decoder_sparse_step")?.unwrap_or(1).max(1);
    let dense_layers = cfg.usize_list("mlp_only_layers")?;
    let dense = cfg.opt_usize("intermediate_size")?.unwrap_or(0);
    Ok((0..num_layers)
        .map(|i| {
            if !dense_layers.contains(&i) && moe.num_experts > 0 && (i + 1) % step == 0 {
                FfnSpec::Moe(moe.clone())
            } else {
                FfnSpec::Dense {
                    intermediate_size: dense,
                }
            }
        })
        .collect())
}

pub(crate) fn spec(cfg: &HubConfig) -> Result<ModelSpec> {
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
            name: "shared_expert",
            intermediate_size: shared_size,
            gated: true,
        }),
    };
    let layers = layer_plan(cfg, c.num_layers, &moe)?;
    Ok(c.into_spec(
        Family::Qwen2Moe,
        AttentionKind::Gqa(attention),
        layers,
        TensorNames::default(),
    ))
}
