//! The family registry: which family a config.json describes, and one small file per family mapping its
//! fields and tensor names onto a [`ModelSpec`]. No family is a copy of another. (`config` holds the
//! readers the families share and imports nothing from here.)

use super::config::HubConfig;
use super::spec::{Family, ModelSpec};
use crate::error::{Error, Result};

pub(crate) mod deepseek_v2;
pub(crate) mod deepseek_v3;
pub(crate) mod mixtral;
pub(crate) mod olmoe;
pub(crate) mod qwen2_moe;
pub(crate) mod qwen3_moe;

/// Which family a config describes.
pub fn detect_family(cfg: &HubConfig) -> Result<Family> {
    let arch = cfg
        .get("architectures")
        .and_then(|a| a.as_array())
        .and_then(|a| a.first())
        .and_then(|a| a.as_str());
    let by_arch = arch.and_then(|a| match a {
        "MixtralForCausalLM" => Some(Family::Mixtral),
        "Qwen2MoeForCausalLM" => Some(Family::Qwen2Moe),
        "Qwen3MoeForCausalLM" => Some(Family::Qwen3Moe),
        "OlmoeForCausalLM" => Some(Family::Olmoe),
        "DeepseekV2ForCausalLM" => Some(Family::DeepseekV2),
        "DeepseekV3ForCausalLM" => Some(Family::DeepseekV3),
        _ => None,
    });
    let by_type = cfg.str("model_type").and_then(|t| match t {
        "mixtral" => Some(Family::Mixtral),
        "qwen2_moe" => Some(Family::Qwen2Moe),
        "qwen3_moe" => Some(Family::Qwen3Moe),
        "olmoe" => Some(Family::Olmoe),
        "deepseek_v2" => Some(Family::DeepseekV2),
        "deepseek_v3" | "kimi_k2" => Some(Family::DeepseekV3),
        _ => None,
    });
    by_arch
        .or(by_type)
        .ok_or_else(|| Error::UnknownArchitecture {
            path: cfg.path.clone(),
            name: arch
                .or(cfg.str("model_type"))
                .unwrap_or("<none>")
                .to_owned(),
            supported: "MixtralForCausalLM, Qwen2MoeForCausalLM, Qwen3MoeForCausalLM, \
                        OlmoeForCausalLM, DeepseekV2ForCausalLM, DeepseekV3ForCausalLM (and Kimi K2)"
                .into(),
        })
}

/// Maps a config onto the generic model description.
pub fn model_spec(cfg: &HubConfig) -> Result<ModelSpec> {
    let spec = match detect_family(cfg)? {
        Family::Mixtral => mixtral::spec(cfg),
        Family::Qwen2Moe => qwen2_moe::spec(cfg),
        Family::Qwen3Moe => qwen3_moe::spec(cfg),
        Family::Olmoe => olmoe::spec(cfg),
        Family::DeepseekV2 => deepseek_v2::spec(cfg),
        Family::DeepseekV3 => deepseek_v3::spec(cfg),
    }?;
    validate(cfg, &spec)?;
    Ok(spec)
}

fn validate(cfg: &HubConfig, spec: &ModelSpec) -> Result<()> {
    for layer in &spec.layers {
        if let super::spec::FfnSpec::Moe(m) = layer {
            if m.top_k == 0 || m.top_k > m.num_experts {
                return Err(cfg.err(format!(
                    "num_experts_per_tok ({}) must be between 1 and the number of experts ({})",
                    m.top_k, m.num_experts
                )));
            }
        }
    }
    Ok(())
}
