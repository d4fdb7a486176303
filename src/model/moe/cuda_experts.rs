//! The GPU experts backend: every expert's gate and up projections stacked as one `[E, 2·I, H]` tensor
//! and the down projections as `[E, H, I]`; a step's assignments are sorted by expert on the device, then
//! gate/up in one grouped pass, SwiGLU, down with the routing weight applied, and each token's k rows
//! summed. Decode-sized batches use our streaming kernel (`kernels/expert_matmul.cu`, SwiGLU applied inside
//! the gate/up pass) and `moe_combine` for the sum; bf16 prefill uses
//! candle's tensor-core `moe_gemm` (its f16 output conversion is broken in candle 0.11.1, so f16 and f32
//! stay on ours). No host round-trip.

use candle_core::{DType, Tensor};

use super::experts::ExpertsBackend;
use super::router::Routes;
use crate::cuda;
use crate::error::Result;

/// Assignments per expert (on average) from which candle's tensor-core GEMM beats the streaming kernel;
/// below it (decode, even at batch 64) the GEMM's 16-deep K loop leaves it latency-bound (measured on an
/// H100: 169 ms per batch-64 decode step with it, see BENCHMARKS.md).
const GEMM_ROWS_PER_EXPERT: usize = 16;

pub struct CudaExperts {
    gate_up: Tensor,
    down: Tensor,
    num_experts: usize,
    hidden: usize,
    intermediate: usize,
}

impl CudaExperts {
    /// Whether the backend takes weights of this dtype.
    pub fn supports(dtype: DType) -> bool {
        matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
    }

    /// Experts from their `(gate, up, down)` weights, `[I, H]`, `[I, H]` and `[H, I]`, on one GPU.
    pub fn from_weights(weights: Vec<(Tensor, Tensor, Tensor)>) -> Result<Self> {
        let num_experts = weights.len();
        let Some((hidden, intermediate)) = weights.first().map(|w| w.2.dims2()).transpose()? else {
            return Err(crate::Error::Device("no experts".into()));
        };
        let (mut gate_up, mut down) = (Vec::new(), Vec::new());
        for (gate, up, d) in weights {
            gate_up.push(Tensor::cat(&[&gate, &up], 0)?.unsqueeze(0)?);
            down.push(d.unsqueeze(0)?);
        }
        Ok(Self {
            gate_up: Tensor::cat(&gate_up, 0)?,
            down: Tensor::cat(&down, 0)?,
            num_experts,
            hidden,
            intermediate,
        })
    }
}

impl ExpertsBackend for CudaExperts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        let (t, k) = routes.ids.dims2()?;
        let sorted = cuda::sort_by_expert(&routes.ids, self.num_experts)?;
        let x = x.contiguous()?;
        let weights = routes.weights.flatten_all()?.contiguous()?;
        // Prefill-sized bf16 batches take the tensor-core GEMM; decode (and f32/f16, where candle's
        // kernel does not apply) the streaming kernel.
        // Not while a decode step is being captured: candle's GEMM path allocates and synchronises
        // (thrust) inside, which a capture cannot hold.
        let wmma = x.dtype() == DType::BF16
            && t * k >= GEMM_ROWS_PER_EXPERT * self.num_experts
            && !cuda::capturing(x.device())
            && self.hidden.is_multiple_of(8)
            && self.intermediate.is_multiple_of(8);
        // [T·k, I], row = assignment: silu(gate) · up.
        let h = if wmma {
            let gate_up = candle_nn::moe::moe_gemm(
                &x,
                &self.gate_up,
                &None,
                &sorted.assignments,
                &sorted.experts,
                k,
                true,
            )?;
            let i = self.intermediate;
            (candle_nn::ops::silu(&gate_up.narrow(1, 0, i)?)? * gate_up.narrow(1, i, i)?)?
                .contiguous()?
        } else if cuda::fusions() {
            // SwiGLU inside the projection: one launch, no [T·k, 2·I] intermediate.
            cuda::expert_glu(&x, &self.gate_up, &sorted, k)?
        } else {
            let gate_up = cuda::expert_matmul(&x, &self.gate_up, &sorted, k, None)?;
            let i = self.intermediate;
            (candle_nn::ops::silu(&gate_up.narrow(1, 0, i)?)? * gate_up.narrow(1, i, i)?)?
                .contiguous()?
        };
        let y = if wmma {
            candle_nn::moe::moe_gemm(
                &h,
                &self.down,
                &Some(weights),
                &sorted.assignments,
                &sorted.experts,
                k,
                true,
            )?
        } else {
            cuda::expert_matmul(&h, &self.down, &sorted, 1, Some(&weights))?
        }; // [T·k, H], weighted
           // Each token's k rows summed in f32, rounded once: one launch.
        if cuda::fusions() {
            return cuda::moe_combine(&y, k);
        }
        Ok(y.to_dtype(DType::F32)?
            .reshape((t, k, self.hidden))?
            .sum(1)?
            .to_dtype(x.dtype())?)
    }

    fn bytes_per_expert(&self) -> usize {
        3 * self.hidden * self.intermediate * self.down.dtype().size_in_bytes()
    }
}
