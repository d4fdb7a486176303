//! Mixtral: GQA without bias, every layer MoE (`block_sparse_moe`, experts `w1`/`w3`/`w2`), softmax → top-k
//! → always renormalised, optional sliding window.

use crate::error::Result;
use crate::model::config::{CommonFields, HubConfig};
use crate::model::spec::{
    AttentionKind, Family, FfnSpec, ModelSpec, MoeSpec, QkNorm, RouterSpec, TensorNames,
};

pub(crate) fn spec(cfg: &HubConfig) -> Result<ModelSpec> {
    let c = CommonFields::read(cfg)?;
    let mut attention = cfg.gqa(false, QkNorm::None)?;
    attention.sliding_window = cfg.opt_usize("sliding_window")?;
    let moe = MoeSpec {
        num_experts: cfg.usize("num_local_experts")?,
        top_k: cfg.usize("num_experts_per_tok")?,
        expert_intermediate_size: cfg.usize("intermediate_size")?,
        router: RouterSpec::SoftmaxTopK { renormalize: true },
        shared: None,
    };
    Ok(c.into_spec(
        Family::Mixtral,
        AttentionKind::Gqa(attention),
        vec![FfnSpec::Moe(moe); c.num_layers],
        TensorNames {
            moe_block: "block_sparse_moe",
            expert_proj: ["w1", "w3", "w2"],
        },
    ))
}
