//! The routed experts of a block-FP8 checkpoint (DeepSeek-V3, Kimi K2) on the CPU, held as stored: one
//! byte per weight plus the block scales, read by the FP8 kernel (`model::cpu::fp8`) — half the memory of
//! the bf16 they were dequantized to before, a quarter of f32. Two parallel passes per layer, as the dense
//! CPU path: every active expert's gate and up (SwiGLU applied per expert), then every active expert's
//! down, then one weighted scatter.

use candle_core::Tensor;

use super::experts::{tokens_per_expert, ExpertsBackend};
use super::router::Routes;
use crate::error::Result;
use crate::model::cpu::attention::with_f32;
use crate::model::cpu::experts::{gather, scatter_add, swiglu};
use crate::model::cpu::fp8::{e4m3, matmul_fp8_products, Fp8Product, Fp8Weight};
use crate::weights::Fp8Blocks;

/// Every expert's `(gate, up, down)`, `[I, H]`, `[I, H]`, `[H, I]`, block-FP8.
pub struct Fp8Experts {
    experts: Vec<[Fp8Blocks; 3]>,
    hidden: usize,
}

fn view(b: &Fp8Blocks) -> Fp8Weight<'_> {
    Fp8Weight {
        w: e4m3(&b.bytes),
        scales: &b.scales,
        n: b.rows,
        k: b.cols,
        block: b.block,
    }
}

impl Fp8Experts {
    pub fn new(experts: Vec<[Fp8Blocks; 3]>, hidden: usize) -> Self {
        Self { experts, hidden }
    }
}

impl ExpertsBackend for Fp8Experts {
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
            let gate_up: Vec<Fp8Product<'_>> = (0..2 * active.len())
                .map(|i| {
                    let (a, which) = (i % active.len(), i / active.len());
                    Fp8Product {
                        x: &inputs[a],
                        m: tokens[active[a]].len(),
                        weight: view(&self.experts[active[a]][which]),
                    }
                })
                .collect();
            let mut gu = matmul_fp8_products(&gate_up);
            let ups = gu.split_off(active.len());
            for (g, u) in gu.iter_mut().zip(&ups) {
                swiglu(g, u);
            }
            let down: Vec<Fp8Product<'_>> = active
                .iter()
                .enumerate()
                .map(|(a, &e)| Fp8Product {
                    x: &gu[a],
                    m: tokens[e].len(),
                    weight: view(&self.experts[e][2]),
                })
                .collect();
            let ys = matmul_fp8_products(&down);
            let mut out = vec![0f32; t * hidden];
            for (&e, y) in active.iter().zip(&ys) {
                scatter_add(&mut out, hidden, &tokens[e], &scales[e], y);
            }
            Ok(out)
        })?;
        Ok(Tensor::from_vec(out, (t, self.hidden), x.device())?)
    }

    fn bytes_per_expert(&self) -> usize {
        self.experts.first().map_or(0, |e| {
            e.iter().map(|b| b.bytes.len() + 4 * b.scales.len()).sum()
        })
    }
}
