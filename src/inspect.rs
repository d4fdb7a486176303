//! `moeserve inspect`: a human-readable description of a checkpoint from its headers alone (architecture,
//! attention and cache layout, experts, parameter counts, dtypes, files, the memory plan) — no weight is
//! read or allocated.

use std::fmt::Write;

use candle_core::DType;

use crate::model::spec::{AttentionKind, FfnSpec, ModelSpec, QkNorm};
use crate::plan::MemoryPlan;
use crate::tokenizer::TextTokenizer;
use crate::weights::{ModelSource, StoreSummary};

/// Everything `inspect` describes.
pub struct Inspection<'a> {
    pub source: &'a ModelSource,
    pub spec: &'a ModelSpec,
    pub compute: DType,
    /// The KV cache's dtype (`--kv-cache-dtype`).
    pub kv: DType,
    pub weights: DType,
    pub device: String,
    pub summary: &'a StoreSummary,
    pub tokenizer: &'a TextTokenizer,
    pub eos_ids: &'a [u32],
    pub chat_template: Option<(usize, &'a str)>,
    pub plan: &'a MemoryPlan,
}

/// "1.23M"-style counts.
pub fn human(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

/// The attention line.
pub fn attention(spec: &ModelSpec) -> String {
    match &spec.attention {
        AttentionKind::Gqa(a) => format!(
            "GQA, {} heads, {} kv heads, head dim {}{}{}",
            a.num_heads,
            a.num_kv_heads,
            a.head_dim,
            if a.qkv_bias { ", qkv bias" } else { "" },
            match a.qk_norm {
                QkNorm::None => "",
                QkNorm::PerHead => ", q/k norm per head",
                QkNorm::Whole => ", q/k norm",
            }
        ),
        AttentionKind::Mla(m) => format!(
            "MLA, {} heads, q_lora_rank {}, kv_lora_rank {}, qk nope/rope {}/{}, v {}",
            m.num_heads,
            m.q_lora_rank.map_or("none".to_owned(), |r| r.to_string()),
            m.kv_lora_rank,
            m.qk_nope_head_dim,
            m.qk_rope_head_dim,
            m.v_head_dim
        ),
    }
}

/// KV cache bytes per token (all layers) at `elem` bytes per value: (as cached, decompressed per-head K/V).
pub fn kv_bytes_per_token(spec: &ModelSpec, elem: usize) -> (usize, usize) {
    spec.kv_bytes_per_token(elem)
}

pub fn describe(i: &Inspection<'_>) -> String {
    let spec = i.spec;
    let (total, active) = spec.parameter_counts();
    let mut o = String::new();
    let _ = writeln!(o, "source:        {}", i.source.describe());
    if matches!(i.source, ModelSource::Embedded(_)) {
        let _ = writeln!(
            o,
            "note:          tiny random-weight demo model; its text output is meaningless"
        );
    }
    let moe_layers = spec
        .layers
        .iter()
        .filter(|l| matches!(l, FfnSpec::Moe(_)))
        .count();
    let _ = writeln!(o, "architecture:  {}", spec.family.name());
    let _ = writeln!(
        o,
        "layers:        {} ({moe_layers} MoE, {} dense)",
        spec.num_layers(),
        spec.num_layers() - moe_layers
    );
    let _ = writeln!(o, "hidden size:   {}", spec.hidden_size);
    let _ = writeln!(o, "attention:     {}", attention(spec));
    let elem = i.kv.size_in_bytes();
    let (cached, full) = kv_bytes_per_token(spec, elem);
    let _ = match &spec.attention {
        AttentionKind::Mla(_) => writeln!(
            o,
            "kv cache:      {cached} bytes/token (latent, {:?}); decompressed K/V would be {full} bytes/token ({:.1}x)",
            i.kv,
            full as f64 / cached as f64
        ),
        AttentionKind::Gqa(_) => writeln!(o, "kv cache:      {cached} bytes/token ({:?})", i.kv),
    };
    if let Some(m) = spec.moe() {
        let shared = m.shared.as_ref().map_or(0, |s| {
            (s.intermediate_size / m.expert_intermediate_size.max(1)).max(1)
        });
        let _ = writeln!(
            o,
            "experts:       {} total, {} per token, {shared} shared (width {})",
            m.num_experts, m.top_k, m.expert_intermediate_size
        );
        let _ = writeln!(o, "router:        {:?}", m.router);
    }
    let _ = writeln!(
        o,
        "parameters:    {} total, {} active per token",
        human(total),
        human(active)
    );
    let _ = writeln!(
        o,
        "context:       {} positions, rope {:?}",
        spec.max_position_embeddings,
        spec.attention.rope().scaling
    );
    let dtypes: Vec<String> = i
        .summary
        .dtypes
        .iter()
        .map(|(k, v)| format!("{k} ({v} tensors)"))
        .collect();
    let _ = writeln!(o, "stored dtype:  {}", dtypes.join(", "));
    let quantized: Vec<&str> = i
        .summary
        .dtypes
        .keys()
        .filter(|k| k.parse::<crate::weights::QuantType>().is_ok())
        .map(String::as_str)
        .collect();
    let _ = if quantized.is_empty() {
        writeln!(o, "weight dtype:  {:?}", i.weights)
    } else {
        writeln!(
            o,
            "weight dtype:  {} as stored (read in place by the quantized CPU kernels), other matrices {:?}",
            quantized.join(", "),
            i.weights
        )
    };
    let _ = writeln!(o, "compute dtype: {:?} on {}", i.compute, i.device);
    let _ = if i.summary.shards.is_empty() {
        writeln!(
            o,
            "weights:       {} tensors, {:.1} MB, random (--load-format dummy)",
            i.summary.tensors,
            i.summary.bytes as f64 / 1e6,
        )
    } else {
        writeln!(
            o,
            "weights:       {} tensors, {:.1} MB in {} shard(s): {}",
            i.summary.tensors,
            i.summary.bytes as f64 / 1e6,
            i.summary.shards.len(),
            i.summary.shards.join(", ")
        )
    };
    let _ = writeln!(
        o,
        "tokenizer:     {}, {} tokens",
        i.tokenizer
            .file()
            .file_name()
            .map_or_else(|| "?".into(), |f| f.to_string_lossy()),
        i.tokenizer.vocab_size()
    );
    let _ = writeln!(o, "eos ids:       {:?}", i.eos_ids);
    let _ = match i.chat_template {
        Some((len, file)) => writeln!(o, "chat template: found in {file} ({len} bytes)"),
        None => writeln!(o, "chat template: none"),
    };
    let _ = writeln!(o, "{}", i.plan.describe());
    o
}
