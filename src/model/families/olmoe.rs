//! OLMoE: q/k RMSNorm over the whole projection, optional `clip_qkv`, every layer MoE with softmax top-k
//! (`norm_topk_prob`, off in OLMoE-1B-7B).

use crate::error::Result;
use crate::model::config::{CommonFields, HubConfig};
use crate::model::spec::{
    AttentionKind, Family, FfnSpec, ModelSpec, MoeSpec, QkNorm, RouterSpec, TensorNames,
};

pub(crate) fn spec(cfg: &HubConfig) -> Result<ModelSpec> {
    let c = CommonFields::read(cfg)?;
    let mut attention = cfg.gqa(cfg.bool_or("attention_bias", false)?, QkNorm::Whole)?;
    attention.clip_qkv = cfg.get("clip_qkv").and_then(|v| v.as_f64());
    let moe = MoeSpec {
        num_experts: cfg.usize("num_experts")?,
        top_k: cfg.usize("num_experts_per_tok")?,
        expert_intermediate_size: cfg.usize("intermediate_size")?,
        router: RouterSpec::SoftmaxTopK {
            renormalize: cfg.bool_or("norm_topk_prob", false)?,
        },
        shared: None,
    };
    Ok(c.into_spec(
        Family::Olmoe,
        AttentionKind::Gqa(attention),
        vec![FfnSpec::Moe(moe); c.num_layers],
        TensorNames::default(),
    ))
}
