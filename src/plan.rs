//! The memory plan, made from a checkpoint's headers before anything is allocated: bytes of the weights
//! at the precision they will be held in, of the KV pool, and an upper estimate of the activations and
//! workspace of one step at `--max-batch-tokens`; compared with what the device can still give. A model
//! that does not fit is refused with one line that says what is needed, what is available, and what
//! would fit instead.

use candle_core::DType;

use crate::model::spec::{FfnSpec, ModelSpec};

/// What serving a model will hold.
#[derive(Debug, Clone)]
pub struct MemoryPlan {
    /// Weights at their held precision.
    pub weights: u64,
    pub matrix_dtype: DType,
    /// The KV pool.
    pub kv: u64,
    pub kv_blocks: usize,
    /// Bytes of one KV block.
    pub block_bytes: u64,
    /// Activations and scratch of one step (an upper estimate).
    pub workspace: u64,
    /// What the device can still give (None: unknown).
    pub available: Option<u64>,
}

/// The inputs of a plan.
pub struct PlanInputs<'a> {
    pub spec: &'a ModelSpec,
    pub matrix_dtype: DType,
    /// Bytes the weights are held in when the store knows them (block-quantized GGUF tensors held in
    /// place); otherwise parameters × the matrix dtype.
    pub weight_bytes: Option<u64>,
    pub compute_dtype: DType,
    /// The KV cache's dtype (`--kv-cache-dtype`; the compute dtype by default).
    pub kv_dtype: DType,
    pub kv_blocks: usize,
    pub block_size: usize,
    pub max_batch_tokens: usize,
    pub max_running: usize,
    pub available: Option<u64>,
}

/// What `device` can still give: the host's available memory on the CPU (MemAvailable, cgroup limit);
/// unknown on a GPU (the allocation itself reports it there).
pub fn available_on(device: &candle_core::Device) -> Option<u64> {
    if device.is_cpu() {
        crate::memory::host_available_bytes()
    } else {
        None
    }
}

fn mib(n: u64) -> u64 {
    n.div_ceil(1 << 20)
}

impl MemoryPlan {
    pub fn new(p: PlanInputs<'_>) -> Self {
        let spec = p.spec;
        let (params, _) = spec.parameter_counts();
        let weights = p
            .weight_bytes
            .unwrap_or(params * p.matrix_dtype.size_in_bytes() as u64);
        let (per_token, _) = spec.kv_bytes_per_token(p.kv_dtype.size_in_bytes());
        let block_bytes = (per_token * p.block_size) as u64;
        Self {
            weights,
            matrix_dtype: p.matrix_dtype,
            kv: block_bytes * p.kv_blocks as u64,
            kv_blocks: p.kv_blocks,
            block_bytes,
            workspace: workspace(spec, p.compute_dtype, p.max_batch_tokens, p.max_running),
            available: p.available,
        }
    }

    pub fn total(&self) -> u64 {
        self.weights + self.kv + self.workspace
    }

    /// Fits, or one line: needed, available, and what would fit.
    pub fn check(&self) -> Result<(), String> {
        let Some(available) = self.available else {
            return Ok(());
        };
        if self.total() <= available {
            return Ok(());
        }
        let mut fixes = Vec::new();
        let room_for_kv = available.saturating_sub(self.weights + self.workspace);
        let blocks = room_for_kv / self.block_bytes.max(1);
        if blocks > 0 {
            fixes.push(format!("--kv-blocks {blocks}"));
        }
        if self.matrix_dtype == DType::F32 {
            let half = self.weights / 2 + self.kv + self.workspace;
            if half <= available {
                fixes.push("bf16 weights (--dtype bf16)".into());
            }
        }
        if fixes.is_empty() {
            // Even the weights alone do not fit: only a smaller precision could.
            // Q4_K: 4.5 bits per weight.
            let q4 = self.weights * 9 / (16 * self.matrix_dtype.size_in_bytes() as u64).max(1);
            fixes.push(format!(
                "a 4-bit quantization (~{} MiB of weights) or a machine with more memory",
                mib(q4)
            ));
        }
        Err(format!(
            "the model needs {} MiB ({} MiB of {:?} weights, {} MiB of KV cache in {} blocks, ~{} MiB of \
             activations) but {} MiB are available; what would fit: {}",
            mib(self.total()),
            mib(self.weights),
            self.matrix_dtype,
            mib(self.kv),
            self.kv_blocks,
            mib(self.workspace),
            mib(available),
            fixes.join(", or ")
        ))
    }

    /// Lines for `inspect`.
    pub fn describe(&self) -> String {
        let available = self
            .available
            .map_or_else(|| "unknown".to_owned(), |a| format!("{} MiB", mib(a)));
        format!(
            "memory plan:   {} MiB = weights {} MiB ({:?}) + KV {} MiB ({} blocks) + activations ~{} MiB; \
             available {available}",
            mib(self.total()),
            mib(self.weights),
            self.matrix_dtype,
            mib(self.kv),
            self.kv_blocks,
            mib(self.workspace),
        )
    }
}

/// KV blocks for `--kv-blocks`, else `--kv-cache-mib`: that budget, but no more than every running
/// sequence at full context needs.
pub fn kv_blocks(
    spec: &ModelSpec,
    kv_dtype: DType,
    block_size: usize,
    kv_blocks: Option<usize>,
    kv_cache_mib: usize,
    max_running: usize,
) -> usize {
    let (per_token, _) = spec.kv_bytes_per_token(kv_dtype.size_in_bytes());
    let full = max_running * spec.max_position_embeddings.div_ceil(block_size.max(1));
    kv_blocks.unwrap_or_else(|| {
        (kv_cache_mib * 1024 * 1024 / (per_token * block_size).max(1)).clamp(1, full.max(1))
    })
}

/// Activations of one step of `tokens` tokens (residual, norms, attention projections, the widest FFN's
/// intermediates, routing), logits of `seqs` sequences, and the widened-weight panels of the CPU path —
/// with headroom for temporaries (×2).
fn workspace(spec: &ModelSpec, dtype: DType, tokens: usize, seqs: usize) -> u64 {
    let h = spec.hidden_size as u64;
    let ffn = spec
        .layers
        .iter()
        .map(|l| match l {
            FfnSpec::Dense { intermediate_size } => *intermediate_size as u64,
            FfnSpec::Moe(m) => {
                let shared = m.shared.as_ref().map_or(0, |s| s.intermediate_size as u64);
                (m.expert_intermediate_size * m.top_k) as u64 + shared + m.num_experts as u64
            }
        })
        .max()
        .unwrap_or(0);
    // The CPU experts pass gathers each token's rows per routed expert (f32) and their bf16 split for
    // the AVX512-BF16 kernel (the same bytes again): 2 · top_k rows of `h` per token.
    let gathered = spec
        .layers
        .iter()
        .map(|l| match l {
            FfnSpec::Moe(m) => 2 * m.top_k as u64 * h,
            FfnSpec::Dense { .. } => 0,
        })
        .max()
        .unwrap_or(0);
    let per_token = 8 * h + 3 * ffn + gathered;
    let elem = dtype.size_in_bytes() as u64;
    let logits = seqs as u64 * spec.vocab_size as u64 * 4;
    let panels = 2 * (16 << 20);
    2 * (tokens as u64 * per_token * elem + logits) + panels
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ModelSpec {
        crate::loader::read_spec(&crate::loader::source_for(None))
            .unwrap()
            .1
    }

    fn plan(available: Option<u64>, dtype: DType, blocks: usize) -> MemoryPlan {
        plan_kv(available, dtype, blocks, DType::F32)
    }

    fn plan_kv(available: Option<u64>, dtype: DType, blocks: usize, kv: DType) -> MemoryPlan {
        MemoryPlan::new(PlanInputs {
            spec: &spec(),
            matrix_dtype: dtype,
            weight_bytes: None,
            compute_dtype: DType::F32,
            kv_dtype: kv,
            kv_blocks: blocks,
            block_size: 16,
            max_batch_tokens: 2048,
            max_running: 64,
            available,
        })
    }

    /// `--kv-cache-dtype bf16`: a block takes half the bytes, so the same `--kv-cache-mib` holds twice
    /// the blocks.
    #[test]
    fn a_bf16_kv_cache_halves_the_bytes_per_block() {
        let f32 = plan_kv(None, DType::F32, 10, DType::F32);
        let bf16 = plan_kv(None, DType::F32, 10, DType::BF16);
        assert_eq!(f32.kv, 2 * bf16.kv);
        assert_eq!(f32.weights, bf16.weights);
        let s = spec();
        let blocks = |kv| kv_blocks(&s, kv, 16, None, 1, 1 << 20);
        assert_eq!(blocks(DType::BF16), 2 * blocks(DType::F32));
    }

    #[test]
    fn weights_follow_the_held_precision() {
        let f32 = plan(None, DType::F32, 10);
        let bf16 = plan(None, DType::BF16, 10);
        assert_eq!(f32.weights, 2 * bf16.weights);
        assert_eq!(f32.kv, bf16.kv);
        assert!(f32.check().is_ok(), "unknown memory: no refusal");
    }

    #[test]
    fn a_plan_that_does_not_fit_says_what_would() {
        let p = plan(None, DType::F32, 100_000);
        let available = p.weights + p.workspace + 10 * p.block_bytes;
        let p = MemoryPlan {
            available: Some(available),
            ..p
        };
        let err = p.check().unwrap_err();
        assert!(err.contains("--kv-blocks 10"), "{err}");
        assert!(!err.contains('\n'));
        let tiny = MemoryPlan {
            available: Some(1 << 10),
            ..p
        };
        assert!(tiny.check().unwrap_err().contains("4-bit"));
    }
}
