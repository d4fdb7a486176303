//! The architecture as data: what every family's config.json is mapped onto. The generic decoder builds
//! itself from a [`ModelSpec`]; nothing below this type knows which family it runs.

use super::rope::RopeSpec;

/// Supported model families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Mixtral,
    Qwen2Moe,
    Qwen3Moe,
    Olmoe,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Mixtral => "MixtralForCausalLM",
            Family::Qwen2Moe => "Qwen2MoeForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
            Family::Olmoe => "OlmoeForCausalLM",
        }
    }
}

/// Where q/k normalisation applies, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QkNorm {
    None,
    /// RMSNorm over each head's `head_dim` (Qwen3).
    PerHead,
    /// RMSNorm over the whole q / k projection (OLMoE).
    Whole,
}

/// Grouped-query attention.
#[derive(Debug, Clone)]
pub struct AttentionSpec {
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub qkv_bias: bool,
    pub qk_norm: QkNorm,
    /// Clamp q, k, v to ±clip after projection (OLMoE's `clip_qkv`).
    pub clip_qkv: Option<f64>,
    /// Keys further back than this many positions are masked (Mixtral's `sliding_window`).
    pub sliding_window: Option<usize>,
    pub rope: RopeSpec,
}

/// How router logits become expert ids and weights (computed in f32).
#[derive(Debug, Clone, PartialEq)]
pub enum RouterSpec {
    /// softmax over all experts → top-k → renormalise when `renormalize`.
    SoftmaxTopK { renormalize: bool },
}

/// A shared expert that every token goes through.
#[derive(Debug, Clone)]
pub struct SharedExpertSpec {
    pub intermediate_size: usize,
    /// Output scaled by sigmoid(gate(x)) (Qwen2-MoE's `shared_expert_gate`).
    pub gated: bool,
}

/// A mixture-of-experts feed-forward block.
#[derive(Debug, Clone)]
pub struct MoeSpec {
    pub num_experts: usize,
    pub top_k: usize,
    pub expert_intermediate_size: usize,
    pub router: RouterSpec,
    pub shared: Option<SharedExpertSpec>,
}

/// A layer's feed-forward kind.
#[derive(Debug, Clone)]
pub enum FfnSpec {
    Dense { intermediate_size: usize },
    Moe(MoeSpec),
}

/// Tensor names of a family (relative to `model.layers.{i}.`).
#[derive(Debug, Clone)]
pub struct TensorNames {
    /// Prefix of the MoE block: `block_sparse_moe` (Mixtral) or `mlp`.
    pub moe_block: &'static str,
    /// Expert projections: gate, up, down (`w1`, `w3`, `w2` in Mixtral).
    pub expert_proj: [&'static str; 3],
}

impl Default for TensorNames {
    fn default() -> Self {
        Self {
            moe_block: "mlp",
            expert_proj: ["gate_proj", "up_proj", "down_proj"],
        }
    }
}

/// Everything the generic decoder needs to build and run a model.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub family: Family,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub rms_norm_eps: f64,
    pub max_position_embeddings: usize,
    pub tie_word_embeddings: bool,
    pub attention: AttentionSpec,
    /// One entry per decoder layer.
    pub layers: Vec<FfnSpec>,
    pub names: TensorNames,
}

impl ModelSpec {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The first MoE spec, for reporting.
    pub fn moe(&self) -> Option<&MoeSpec> {
        self.layers.iter().find_map(|l| match l {
            FfnSpec::Moe(m) => Some(m),
            FfnSpec::Dense { .. } => None,
        })
    }

    /// Parameter counts: (total, active per token).
    pub fn parameter_counts(&self) -> (u64, u64) {
        let h = self.hidden_size as u64;
        let a = &self.attention;
        let (nh, nkv, hd) = (a.num_heads as u64, a.num_kv_heads as u64, a.head_dim as u64);
        let mut attn = h * nh * hd + 2 * h * nkv * hd + nh * hd * h + h; // q, k, v, o, input norm
        if a.qkv_bias {
            attn += nh * hd + 2 * nkv * hd;
        }
        attn += match a.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead => 2 * hd,
            QkNorm::Whole => nh * hd + nkv * hd,
        };
        let embed = self.vocab_size as u64 * h;
        let head = if self.tie_word_embeddings { 0 } else { embed };
        let (mut total, mut active) = (embed + head + h, embed + head + h);
        for layer in &self.layers {
            let (t, act) = match layer {
                FfnSpec::Dense { intermediate_size } => {
                    let p = 3 * h * *intermediate_size as u64;
                    (p, p)
                }
                FfnSpec::Moe(m) => {
                    let expert = 3 * h * m.expert_intermediate_size as u64;
                    let router = h * m.num_experts as u64;
                    let shared = m.shared.as_ref().map_or(0, |s| {
                        3 * h * s.intermediate_size as u64 + if s.gated { h } else { 0 }
                    });
                    (
                        router + shared + expert * m.num_experts as u64,
                        router + shared + expert * m.top_k as u64,
                    )
                }
            };
            total += attn + h + t;
            active += attn + h + act;
        }
        (total, active)
    }
}
