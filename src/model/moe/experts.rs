//! Experts backends behind one trait. The CPU backend groups the tokens of each expert across the whole
//! batch: gather → SwiGLU matmuls → scale by routing weight → one scatter-add into the output.

use candle_core::{DType, Device, Tensor};

use super::router::Routes;
use crate::error::Result;
use crate::weights::WeightStore;

/// Runs the routed experts of a batch: `x` `[T, hidden]` → `[T, hidden]`.
pub trait ExpertsBackend: Send + Sync {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor>;
    /// Expert weights in bytes (for bandwidth accounting).
    fn bytes_per_expert(&self) -> usize;
}

/// One expert's projections, stored as `[out, in]` like the checkpoint.
struct ExpertWeights {
    gate: Tensor,
    up: Tensor,
    down: Tensor,
}

/// Plain per-expert matmuls; right for CPU and the reference for other backends.
pub struct GroupedExperts {
    experts: Vec<ExpertWeights>,
    hidden: usize,
    intermediate: usize,
}

impl GroupedExperts {
    /// Loads `{prefix}.experts.{e}.{gate,up,down}` for every expert.
    pub fn load(
        store: &mut WeightStore,
        prefix: &str,
        names: [&str; 3],
        num_experts: usize,
        hidden: usize,
        intermediate: usize,
    ) -> Result<Self> {
        let mut experts = Vec::with_capacity(num_experts);
        for e in 0..num_experts {
            let p = format!("{prefix}.experts.{e}");
            experts.push(ExpertWeights {
                gate: store.get(&format!("{p}.{}.weight", names[0]), &[intermediate, hidden])?,
                up: store.get(&format!("{p}.{}.weight", names[1]), &[intermediate, hidden])?,
                down: store.get(&format!("{p}.{}.weight", names[2]), &[hidden, intermediate])?,
            });
        }
        Ok(Self {
            experts,
            hidden,
            intermediate,
        })
    }
}

impl ExpertsBackend for GroupedExperts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        let device: &Device = x.device();
        let ids = routes.ids.to_vec2::<u32>()?;
        let weights = routes.weights.to_vec2::<f32>()?;
        // Tokens and weights of each expert, in token order.
        let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); self.experts.len()];
        let mut scales: Vec<Vec<f32>> = vec![Vec::new(); self.experts.len()];
        for (t, (row_ids, row_w)) in ids.iter().zip(&weights).enumerate() {
            for (&e, &w) in row_ids.iter().zip(row_w) {
                if let (Some(tok), Some(sc)) =
                    (tokens.get_mut(e as usize), scales.get_mut(e as usize))
                {
                    tok.push(t as u32);
                    sc.push(w);
                }
            }
        }
        let mut all_idx = Vec::new();
        let mut outs = Vec::new();
        for (e, expert) in self.experts.iter().enumerate() {
            if tokens[e].is_empty() {
                continue;
            }
            let n = tokens[e].len();
            let idx = Tensor::from_slice(&tokens[e], n, device)?;
            let xs = x.index_select(&idx, 0)?;
            let g = candle_nn::ops::silu(&xs.matmul(&expert.gate.t()?)?)?;
            let u = xs.matmul(&expert.up.t()?)?;
            let y = (g * u)?.matmul(&expert.down.t()?)?;
            let w = Tensor::from_slice(&scales[e], (n, 1), device)?.to_dtype(y.dtype())?;
            outs.push(y.broadcast_mul(&w)?);
            all_idx.extend_from_slice(&tokens[e]);
        }
        let out = Tensor::zeros(x.shape(), x.dtype(), device)?;
        if outs.is_empty() {
            return Ok(out);
        }
        let idx = Tensor::from_vec(
            all_idx,
            outs.iter().map(|o| o.dim(0).unwrap_or(0)).sum::<usize>(),
            device,
        )?;
        let src = Tensor::cat(&outs, 0)?;
        Ok(out.index_add(&idx, &src, 0)?)
    }

    fn bytes_per_expert(&self) -> usize {
        let elem = self
            .experts
            .first()
            .map_or(DType::F32, |e| e.gate.dtype())
            .size_in_bytes();
        3 * self.hidden * self.intermediate * elem
    }
}
