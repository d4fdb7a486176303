//! The routed experts of a block-quantized checkpoint (GGUF Q8_0, Q4_K …, or `--quantize`) on the CPU,
//! read in place by the quantized kernel (`model::cpu::quant`). Two parallel passes per layer, as the
//! dense and FP8 paths: every active expert's gate and up (SwiGLU per expert), then every active expert's
//! down, then one weighted scatter. Tokens of one expert share one pass over its weights.

use std::sync::Arc;

use candle_core::Tensor;

use super::experts::{two_pass_host, ExpertsBackend};
use super::router::Routes;
use crate::error::Result;
use crate::model::cpu::quant::{quant_products, QuantProduct};
use crate::weights::QuantMatrix;

/// Every expert's `(gate, up, down)`: `[I, H]`, `[I, H]`, `[H, I]`.
pub(crate) struct QuantExperts {
    experts: Vec<[Arc<QuantMatrix>; 3]>,
}

impl QuantExperts {
    pub(crate) fn new(experts: Vec<[Arc<QuantMatrix>; 3]>) -> Self {
        Self { experts }
    }
}

impl ExpertsBackend for QuantExperts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        two_pass_host(x, routes, self.experts.len(), |items| {
            let products: Vec<QuantProduct<'_>> = items
                .iter()
                .map(|&(x, m, e, which)| QuantProduct {
                    x,
                    m,
                    w: &self.experts[e][which],
                })
                .collect();
            quant_products(&products)
        })
    }

    fn bytes_per_expert(&self) -> usize {
        self.experts
            .first()
            .map_or(0, |e| e.iter().map(|m| m.byte_len()).sum())
    }
}
