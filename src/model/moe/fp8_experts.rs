//! The routed experts of a block-FP8 checkpoint (DeepSeek-V3, Kimi K2) on the CPU, held as stored: one
//! byte per weight plus the block scales, read by the FP8 kernel (`model::cpu::fp8`) — half the memory of
//! the bf16 they were dequantized to before, a quarter of f32. Two parallel passes per layer, as the dense
//! CPU path: every active expert's gate and up (SwiGLU applied per expert), then every active expert's
//! down, then one weighted scatter.

use candle_core::Tensor;

use super::experts::{two_pass_host, ExpertsBackend};
use super::router::Routes;
use crate::error::Result;
use crate::model::cpu::fp8::{matmul_fp8_products, Fp8Product};
use crate::weights::Fp8Blocks;

/// Every expert's `(gate, up, down)`, `[I, H]`, `[I, H]`, `[H, I]`, block-FP8.
pub(crate) struct Fp8Experts {
    experts: Vec<[Fp8Blocks; 3]>,
}

impl Fp8Experts {
    pub(crate) fn new(experts: Vec<[Fp8Blocks; 3]>) -> Self {
        Self { experts }
    }
}

impl ExpertsBackend for Fp8Experts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        two_pass_host(x, routes, self.experts.len(), |items| {
            let products: Vec<Fp8Product<'_>> = items
                .iter()
                .map(|&(x, m, e, which)| Fp8Product {
                    x,
                    m,
                    weight: (&self.experts[e][which]).into(),
                })
                .collect();
            matmul_fp8_products(&products)
        })
    }

    fn bytes_per_expert(&self) -> usize {
        self.experts
            .first()
            .map_or(0, |e| e.iter().map(Fp8Blocks::byte_len).sum())
    }
}
