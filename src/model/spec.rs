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
    DeepseekV2,
    DeepseekV3,
}

impl Family {
    pub fn name(self) -> &'static str {
        match self {
            Family::Mixtral => "MixtralForCausalLM",
            Family::Qwen2Moe => "Qwen2MoeForCausalLM",
            Family::Qwen3Moe => "Qwen3MoeForCausalLM",
            Family::Olmoe => "OlmoeForCausalLM",
            Family::DeepseekV2 => "DeepseekV2ForCausalLM",
            Family::DeepseekV3 => "DeepseekV3ForCausalLM",
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

/// Multi-head latent attention (DeepSeek-V2/V3, Kimi K2, Moonlight). The cache holds the compressed latent
/// (`kv_lora_rank`) and the shared rope key (`qk_rope_head_dim`) per token, not per-head keys and values.
#[derive(Debug, Clone)]
pub struct MlaSpec {
    pub num_heads: usize,
    /// Low-rank query path (`q_a_proj` → norm → `q_b_proj`), or `None` for a plain `q_proj`.
    pub q_lora_rank: Option<usize>,
    pub kv_lora_rank: usize,
    pub qk_nope_head_dim: usize,
    pub qk_rope_head_dim: usize,
    pub v_head_dim: usize,
    /// Softmax scale: `qk_head_dim^-0.5`, times YaRN's `mscale(factor, mscale_all_dim)²`.
    pub softmax_scale: f64,
    pub rope: RopeSpec,
}

impl MlaSpec {
    pub fn qk_head_dim(&self) -> usize {
        self.qk_nope_head_dim + self.qk_rope_head_dim
    }

    /// Values cached per token and layer.
    pub fn latent_dim(&self) -> usize {
        self.kv_lora_rank + self.qk_rope_head_dim
    }
}

/// The attention of every layer.
#[derive(Debug, Clone)]
pub enum AttentionKind {
    Gqa(AttentionSpec),
    Mla(MlaSpec),
}

/// The cache's shape type lives with the cache (`kv` imports nothing of the model); the spec says which
/// layout its attention needs.
pub use crate::kv::KvLayout;

impl AttentionKind {
    pub fn rope(&self) -> &RopeSpec {
        match self {
            AttentionKind::Gqa(a) => &a.rope,
            AttentionKind::Mla(m) => &m.rope,
        }
    }

    pub fn num_heads(&self) -> usize {
        match self {
            AttentionKind::Gqa(a) => a.num_heads,
            AttentionKind::Mla(m) => m.num_heads,
        }
    }

    pub fn sliding_window(&self) -> Option<usize> {
        match self {
            AttentionKind::Gqa(a) => a.sliding_window,
            AttentionKind::Mla(_) => None,
        }
    }

    pub fn kv_layout(&self) -> KvLayout {
        match self {
            AttentionKind::Gqa(a) => KvLayout {
                k: (a.num_kv_heads, a.head_dim),
                v: Some((a.num_kv_heads, a.head_dim)),
            },
            AttentionKind::Mla(m) => KvLayout {
                k: (1, m.latent_dim()),
                v: None,
            },
        }
    }

    /// Values per token and layer a cache of decompressed per-head keys and values would hold.
    pub fn decompressed_values_per_token(&self) -> usize {
        match self {
            AttentionKind::Gqa(_) => self.kv_layout().values_per_token(),
            AttentionKind::Mla(m) => m.num_heads * (m.qk_head_dim() + m.v_head_dim),
        }
    }
}

/// How router logits become expert ids and weights (computed in f32).
#[derive(Debug, Clone, PartialEq)]
pub enum RouterSpec {
    /// softmax over all experts → top-k → renormalise when `renormalize`.
    SoftmaxTopK { renormalize: bool },
    /// DeepSeek-V2: softmax; `greedy` top-k, or `group_limited_greedy` (keep the `topk_group` groups with the
    /// highest max score, others 0). Renormalised when `renormalize` (and top_k > 1), else × `scaling`.
    DeepseekV2 {
        groups: Option<(usize, usize)>,
        renormalize: bool,
        scaling: f32,
    },
    /// DeepSeek-V3 `noaux_tc`: sigmoid scores; choose on scores + `e_score_correction_bias`; group score = sum
    /// of the top-2 biased scores; keep `topk_group` of `n_group` groups (others −inf); weights = unbiased
    /// scores of the chosen, renormalised (+1e-20) when `renormalize`, × `scaling`.
    DeepseekV3 {
        n_group: usize,
        topk_group: usize,
        renormalize: bool,
        scaling: f32,
    },
}

/// A shared expert that every token goes through.
#[derive(Debug, Clone)]
pub struct SharedExpertSpec {
    /// Tensor prefix under the MoE block: `shared_expert` (Qwen2-MoE) or `shared_experts` (DeepSeek).
    pub name: &'static str,
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
    pub attention: AttentionKind,
    /// One entry per decoder layer.
    pub layers: Vec<FfnSpec>,
    pub names: TensorNames,
    /// Multi-token-prediction layers a checkpoint may carry after the decoder layers; skipped when loading.
    pub mtp_layers: usize,
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
    /// KV cache bytes per token (all layers) at `elem` bytes per value: (as cached, decompressed per-head
    /// K/V).
    pub fn kv_bytes_per_token(&self, elem: usize) -> (usize, usize) {
        let layers = self.num_layers();
        (
            layers * self.attention.kv_layout().values_per_token() * elem,
            layers * self.attention.decompressed_values_per_token() * elem,
        )
    }

    pub fn parameter_counts(&self) -> (u64, u64) {
        let h = self.hidden_size as u64;
        let attn = match &self.attention {
            AttentionKind::Gqa(a) => {
                let (nh, nkv, hd) = (a.num_heads as u64, a.num_kv_heads as u64, a.head_dim as u64);
                let mut attn = h * nh * hd + 2 * h * nkv * hd + nh * hd * h + h; // q, k, v, o, input norm
                if a.qkv_bias {
                    attn += nh * hd + 2 * nkv * hd;
                }
                attn + match a.qk_norm {
                    QkNorm::None => 0,
                    QkNorm::PerHead => 2 * hd,
                    QkNorm::Whole => nh * hd + nkv * hd,
                }
            }
            AttentionKind::Mla(m) => {
                let nh = m.num_heads as u64;
                let qk = m.qk_head_dim() as u64;
                let q = match m.q_lora_rank {
                    Some(r) => h * r as u64 + r as u64 + r as u64 * nh * qk,
                    None => h * nh * qk,
                };
                let kv_a = h * m.latent_dim() as u64 + m.kv_lora_rank as u64;
                let kv_b = m.kv_lora_rank as u64 * nh * (m.qk_nope_head_dim + m.v_head_dim) as u64;
                q + kv_a + kv_b + nh * m.v_head_dim as u64 * h + h
            }
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
                    let router = h * m.num_experts as u64 + m.num_experts as u64;
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
