//! The routed experts of a block-quantized checkpoint (GGUF Q8_0, Q4_K …, or `--quantize`) on the CPU,
//! read in place by the quantized kernel (`model::cpu::quant`). Two parallel passes per layer, as the
//! dense and FP8 paths: every active expert's gate and up (SwiGLU per expert), then every active expert's
//! down, then one weighted scatter. Tokens of one expert share one pass over its weights.

use std::sync::Arc;

use candle_core::Tensor;

use super::experts::{tokens_per_expert, ExpertsBackend};
use super::router::Routes;
use crate::error::Result;
use crate::model::cpu::attention::with_f32;
use crate::model::cpu::experts::{gather, scatter_add, swiglu};
use crate::model::cpu::quant::{quant_products, QuantProduct};
use crate::weights::QuantMatrix;

/// Every expert's `(gate, up, down)`: `[I, H]`, `[I, H]`, `[H, I]`.
pub struct QuantExperts {
    experts: Vec<[Arc<QuantMatrix>; 3]>,
    hidden: usize,
}

impl QuantExperts {
    pub fn new(experts: Vec<[Arc<QuantMatrix>; 3]>, hidden: usize) -> Self {
        Self { experts, hidden }
    }
}

impl ExpertsBackend for QuantExperts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        let (t, hidden) = x.dims2()?;
        let (tokens, scales) = tokens_per_expert(routes, self.experts.len())?;
        let active: Vec<usize> = (0..self.experts.len())
            .filter(|&e| !tokens[e].is_empty())
            .collect();
        let x = x.contiguous()?;
        let out = with_f32(&x, |xs| {
            let inputs: Vec<Vec<f32>> = active
                .iter()
                .map(|&e| gather(xs, hidden, &tokens[e]))
                .collect();
            let gate_up: Vec<QuantProduct<'_>> = (0..2 * active.len())
                .map(|i| {
                    let (a, which) = (i % active.len(), i / active.len());
                    QuantProduct {
                        x: &inputs[a],
                        m: tokens[active[a]].len(),
                        w: &self.experts[active[a]][which],
                    }
                })
                .collect();
            let mut gu = quant_products(&gate_up);
            let ups = gu.split_off(active.len());
            for (g, u) in gu.iter_mut().zip(&ups) {
                swiglu(g, u);
            }
            let down: Vec<QuantProduct<'_>> = active
                .iter()
                .enumerate()
                .map(|(a, &e)| QuantProduct {
                    x: &gu[a],
                    m: tokens[e].len(),
                    w: &self.experts[e][2],
                })
                .collect();
            let ys = quant_products(&down);
            let mut out = vec![0f32; t * hidden];
            for (&e, y) in active.iter().zip(&ys) {
                scatter_add(&mut out, hidden, &tokens[e], &scales[e], y);
            }
            Ok(out)
        })?;
        Ok(Tensor::from_vec(out, (t, self.hidden), x.device())?)
    }

    fn bytes_per_expert(&self) -> usize {
        self.experts
            .first()
            .map_or(0, |e| e.iter().map(|m| m.byte_len()).sum())
    }
}
