//! DeepSeek-V3, Kimi K2 (`model_type: kimi_k2`) and Moonlight: DeepSeek-V2's MLA and layer plan with
//! `noaux_tc` routing — sigmoid scores, `e_score_correction_bias` for the choice, grouped top-k.

use super::deepseek_v2::{assemble, mla, moe};
use crate::error::Result;
use crate::model::config::HubConfig;
use crate::model::spec::{Family, ModelSpec, RouterSpec};

pub(crate) fn spec(cfg: &HubConfig) -> Result<ModelSpec> {
    if let Some(method) = cfg.str("topk_method") {
        if method != "noaux_tc" {
            return Err(cfg.err(format!(
                "unsupported topk_method {method:?} for DeepSeek-V3"
            )));
        }
    }
    if let Some(scoring) = cfg.str("scoring_func") {
        if scoring != "sigmoid" {
            return Err(cfg.err(format!(
                "unsupported scoring_func {scoring:?} for DeepSeek-V3"
            )));
        }
    }
    let n_group = cfg.opt_usize("n_group")?.unwrap_or(1).max(1);
    let topk_group = cfg
        .opt_usize("topk_group")?
        .unwrap_or(n_group)
        .clamp(1, n_group);
    let router = RouterSpec::DeepseekV3 {
        n_group,
        topk_group,
        renormalize: cfg.bool_or("norm_topk_prob", true)?,
        scaling: cfg.f64_or("routed_scaling_factor", 1.0)? as f32,
    };
    let interleaved = cfg.bool_or("rope_interleave", true)?;
    let moe = moe(cfg, router)?;
    if moe.num_experts % n_group != 0 {
        return Err(cfg.err(format!(
            "n_routed_experts ({}) is not a multiple of n_group ({n_group})",
            moe.num_experts
        )));
    }
    assemble(cfg, Family::DeepseekV3, mla(cfg, interleaved)?, moe)
}
