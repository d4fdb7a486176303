//! DeepSeek-V2 / V2-Lite: MLA attention (optional low-rank q), softmax routing (`greedy` or
//! `group_limited_greedy`), `n_shared_experts` shared experts, dense layers before `first_k_dense_replace`
//! and off the `moe_layer_freq` grid. The MLA and layer-plan readers are shared with DeepSeek-V3.

use crate::error::Result;
use crate::model::config::{CommonFields, HubConfig};
use crate::model::rope::{yarn_mscale, RopeScaling};
use crate::model::spec::{
    AttentionKind, Family, FfnSpec, MlaSpec, ModelSpec, MoeSpec, RouterSpec, SharedExpertSpec,
    TensorNames,
};

/// Multi-head latent attention from a DeepSeek config. Rope is interleaved (V2 always; V3 unless
/// `rope_interleave` is false); the softmax scale carries YaRN's `mscale_all_dim` correction squared.
pub(crate) fn mla(cfg: &HubConfig, interleaved: bool) -> Result<MlaSpec> {
    let num_heads = cfg.usize("num_attention_heads")?;
    let qk_nope_head_dim = cfg.usize("qk_nope_head_dim")?;
    let qk_rope_head_dim = cfg.usize("qk_rope_head_dim")?;
    let rope = cfg.rope(qk_rope_head_dim, interleaved)?;
    let mut softmax_scale = ((qk_nope_head_dim + qk_rope_head_dim) as f64).powf(-0.5);
    if let RopeScaling::Yarn {
        factor,
        mscale_all_dim: Some(all),
        ..
    } = &rope.scaling
    {
        if *all != 0.0 {
            let m = yarn_mscale(*factor, *all);
            softmax_scale *= m * m;
        }
    }
    Ok(MlaSpec {
        num_heads,
        q_lora_rank: cfg.opt_usize("q_lora_rank")?,
        kv_lora_rank: cfg.usize("kv_lora_rank")?,
        qk_nope_head_dim,
        qk_rope_head_dim,
        v_head_dim: cfg.usize("v_head_dim")?,
        softmax_scale,
        rope,
    })
}

/// MoE from `first_k_dense_replace` on, every `moe_layer_freq`-th layer; dense MLPs elsewhere.
pub(crate) fn layer_plan(
    cfg: &HubConfig,
    num_layers: usize,
    moe: &MoeSpec,
) -> Result<Vec<FfnSpec>> {
    let first = cfg.opt_usize("first_k_dense_replace")?.unwrap_or(0);
    let freq = cfg.opt_usize("moe_layer_freq")?.unwrap_or(1).max(1);
    let dense = cfg.usize("intermediate_size")?;
    Ok((0..num_layers)
        .map(|i| {
            if moe.num_experts > 0 && i >= first && i % freq == 0 {
                FfnSpec::Moe(moe.clone())
            } else {
                FfnSpec::Dense {
                    intermediate_size: dense,
                }
            }
        })
        .collect())
}

/// The routed + shared experts of a DeepSeek config, with the given router.
pub(crate) fn moe(cfg: &HubConfig, router: RouterSpec) -> Result<MoeSpec> {
    let expert = cfg.usize("moe_intermediate_size")?;
    let shared = cfg.opt_usize("n_shared_experts")?.unwrap_or(0);
    Ok(MoeSpec {
        num_experts: cfg.usize_any(&["n_routed_experts", "num_local_experts"])?,
        top_k: cfg.usize("num_experts_per_tok")?,
        expert_intermediate_size: expert,
        router,
        shared: (shared > 0).then_some(SharedExpertSpec {
            name: "shared_experts",
            intermediate_size: expert * shared,
            gated: false,
        }),
    })
}

/// Routing a config asks for must be possible: 1 ≤ top-k ≤ experts, and with expert groups, groups that
/// split the experts evenly and enough kept groups to hold top-k experts. (Checked at load, so that a bad
/// config is one clear error instead of a failure in every request's routing.)
fn check_routing(cfg: &HubConfig, moe: &MoeSpec) -> Result<()> {
    let (experts, k) = (moe.num_experts, moe.top_k);
    if k == 0 || k > experts {
        return Err(cfg.err(format!(
            "num_experts_per_tok ({k}) must be between 1 and the number of experts ({experts})"
        )));
    }
    let groups = match moe.router {
        RouterSpec::DeepseekV2 {
            groups: Some(g), ..
        } => Some(g),
        RouterSpec::DeepseekV3 {
            n_group,
            topk_group,
            ..
        } => Some((n_group, topk_group)),
        _ => None,
    };
    if let Some((n_group, topk_group)) = groups {
        if n_group == 0 || experts % n_group != 0 {
            return Err(cfg.err(format!(
                "n_group ({n_group}) must be at least 1 and divide the {experts} routed experts"
            )));
        }
        if topk_group == 0 || topk_group > n_group || topk_group * (experts / n_group) < k {
            return Err(cfg.err(format!(
                "topk_group ({topk_group}) must be between 1 and n_group ({n_group}) and keep at \
                 least num_experts_per_tok ({k}) experts"
            )));
        }
    }
    Ok(())
}

/// Builds a DeepSeek spec from its parts (shared by V2 and V3).
pub(crate) fn assemble(
    cfg: &HubConfig,
    family: Family,
    attention: MlaSpec,
    moe: MoeSpec,
) -> Result<ModelSpec> {
    check_routing(cfg, &moe)?;
    let c = CommonFields::read(cfg)?;
    let layers = layer_plan(cfg, c.num_layers, &moe)?;
    let mut spec = c.into_spec(
        family,
        AttentionKind::Mla(attention),
        layers,
        TensorNames::default(),
    );
    spec.mtp_layers = cfg.opt_usize("num_nextn_predict_layers")?.unwrap_or(0);
    Ok(spec)
}

pub(crate) fn spec(cfg: &HubConfig) -> Result<ModelSpec> {
    let groups = match cfg.str("topk_method").unwrap_or("greedy") {
        "greedy" => None,
        "group_limited_greedy" => Some((cfg.usize("n_group")?, cfg.usize("topk_group")?)),
        other => return Err(cfg.err(format!("unsupported topk_method {other:?} for DeepSeek-V2"))),
    };
    if let Some(scoring) = cfg.str("scoring_func") {
        if scoring != "softmax" {
            return Err(cfg.err(format!(
                "unsupported scoring_func {scoring:?} for DeepSeek-V2"
            )));
        }
    }
    let router = RouterSpec::DeepseekV2 {
        groups,
        renormalize: cfg.bool_or("norm_topk_prob", false)?,
        scaling: cfg.f64_or("routed_scaling_factor", 1.0)? as f32,
    };
    assemble(cfg, Family::DeepseekV2, mla(cfg, true)?, moe(cfg, router)?)
}
