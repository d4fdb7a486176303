//! Experts backends behind one trait. The CPU backend groups the tokens of each expert across the whole
//! batch: gather → SwiGLU matmuls → scale by routing weight → one scatter-add into the output.

use candle_core::{DType, Device, Tensor};

use super::router::Routes;
use crate::error::Result;
use crate::model::cpu::matmul::{self as cpu_matmul, matmul_wt};

use crate::model::cpu::experts::{self as cpu_experts, ExpertTokens};
use crate::weights::{Matrix, WeightStore};

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

/// Per expert: the tokens routed to it and their routing weights, in token order.
pub type ExpertRoutes = (Vec<Vec<u32>>, Vec<Vec<f32>>);

/// The tokens routed to each of `experts` experts and their routing weights, in token order.
pub fn tokens_per_expert(routes: &Routes, experts: usize) -> Result<ExpertRoutes> {
    let ids = routes.ids.to_vec2::<u32>()?;
    let weights = routes.weights.to_vec2::<f32>()?;
    let mut tokens: Vec<Vec<u32>> = vec![Vec::new(); experts];
    let mut scales: Vec<Vec<f32>> = vec![Vec::new(); experts];
    for (t, (row_ids, row_w)) in ids.iter().zip(&weights).enumerate() {
        for (&e, &w) in row_ids.iter().zip(row_w) {
            if let (Some(tok), Some(sc)) = (tokens.get_mut(e as usize), scales.get_mut(e as usize))
            {
                tok.push(t as u32);
                sc.push(w);
            }
        }
    }
    Ok((tokens, scales))
}

/// One product of [`two_pass_host`]: an expert's input rows (`[m, in]`), `m`, the expert, and which
/// projection (0 gate, 1 up, 2 down).
pub type ExpertProduct<'a> = (&'a [f32], usize, usize, usize);

/// The routed experts of a batch on the host in two parallel passes, for backends whose weights are read
/// by a products kernel (FP8, block-quantized): every active expert's gate and up in one call of `run`
/// (SwiGLU per expert), every active expert's down in the next, then one weighted scatter into
/// `[T, hidden]`. `run` returns each product's `[m, out]`.
pub fn two_pass_host(
    x: &Tensor,
    routes: &Routes,
    experts: usize,
    run: impl Fn(&[ExpertProduct<'_>]) -> Vec<Vec<f32>>,
) -> Result<Tensor> {
    use crate::model::cpu::experts::{gather, scatter_add, swiglu};
    use crate::model::cpu::host::with_f32;
    let (t, hidden) = x.dims2()?;
    let (tokens, scales) = tokens_per_expert(routes, experts)?;
    let active: Vec<usize> = (0..experts).filter(|&e| !tokens[e].is_empty()).collect();
    let x = x.contiguous()?;
    let out = with_f32(&x, |xs| {
        let inputs: Vec<Vec<f32>> = active
            .iter()
            .map(|&e| gather(xs, hidden, &tokens[e]))
            .collect();
        let gate_up: Vec<ExpertProduct<'_>> = (0..2 * active.len())
            .map(|i| {
                let (a, which) = (i % active.len(), i / active.len());
                (
                    inputs[a].as_slice(),
                    tokens[active[a]].len(),
                    active[a],
                    which,
                )
            })
            .collect();
        let mut gu = run(&gate_up);
        let ups = gu.split_off(active.len());
        for (g, u) in gu.iter_mut().zip(&ups) {
            swiglu(g, u);
        }
        let down: Vec<ExpertProduct<'_>> = active
            .iter()
            .enumerate()
            .map(|(a, &e)| (gu[a].as_slice(), tokens[e].len(), e, 2))
            .collect();
        let ys = run(&down);
        let mut out = vec![0f32; t * hidden];
        for (&e, y) in active.iter().zip(&ys) {
            scatter_add(&mut out, hidden, &tokens[e], &scales[e], y);
        }
        Ok(out)
    })?;
    Ok(Tensor::from_vec(out, (t, hidden), x.device())?)
}

/// Every expert's `(gate, up, down)` weights, `{prefix}.experts.{e}.{names}.weight`, as the checkpoint
/// stores them (`[I, H]`, `[I, H]`, `[H, I]`).
pub fn load_expert_weights(
    store: &mut WeightStore,
    prefix: &str,
    names: [&str; 3],
    num_experts: usize,
    hidden: usize,
    intermediate: usize,
) -> Result<Vec<(Matrix, Matrix, Matrix)>> {
    let mut experts = Vec::with_capacity(num_experts);
    for e in 0..num_experts {
        let p = format!("{prefix}.experts.{e}");
        experts.push((
            store.get_matrix(&format!("{p}.{}.weight", names[0]), &[intermediate, hidden])?,
            store.get_matrix(&format!("{p}.{}.weight", names[1]), &[intermediate, hidden])?,
            store.get_matrix(&format!("{p}.{}.weight", names[2]), &[hidden, intermediate])?,
        ));
    }
    Ok(experts)
}

impl GroupedExperts {
    /// Experts from their `(gate, up, down)` weights, `[I, H]`, `[I, H]` and `[H, I]`.
    pub fn from_weights(weights: Vec<(Tensor, Tensor, Tensor)>) -> Result<Self> {
        let (hidden, intermediate) = match weights.first() {
            Some((_, _, down)) => down.dims2()?,
            None => (0, 0),
        };
        Ok(Self {
            experts: weights
                .into_iter()
                .map(|(gate, up, down)| ExpertWeights { gate, up, down })
                .collect(),
            hidden,
            intermediate,
        })
    }
}

impl GroupedExperts {
    /// The two-pass CPU path for decode-sized batches and short prompts; `None` where it does not apply
    /// (other devices or dtypes, or an expert with more tokens than the streaming kernel serves well:
    /// [`cpu_matmul::MAX_ROWS`] with f32 weights, [`cpu_matmul::MAX_CHUNKED_ROWS`] with bf16 / f16 ones,
    /// whose tokens go through in chunks of `MAX_ROWS`, each reading the expert's weights once — or all
    /// at once, without limit, for bf16 on AVX512-BF16 CPUs: `cpu_matmul::max_rows`).
    fn forward_host(
        &self,
        x: &Tensor,
        tokens: &[Vec<u32>],
        scales: &[Vec<f32>],
    ) -> Result<Option<Tensor>> {
        let dtype = self.experts.first().map(|e| e.gate.dtype());
        // Tokens per product: every token of an expert at once where the kernel has no row limit.
        let chunk = dtype.map_or(cpu_matmul::MAX_ROWS, cpu_matmul::max_rows);
        let limit = match dtype {
            Some(DType::F32) => cpu_matmul::MAX_ROWS,
            Some(DType::BF16 | DType::F16) => cpu_matmul::MAX_CHUNKED_ROWS.max(chunk),
            _ => 0,
        };
        let applies = x.device().is_cpu()
            && x.dtype() == DType::F32
            && tokens.iter().all(|t| t.len() <= limit);
        if !applies {
            return Ok(None);
        }
        let groups: Vec<ExpertTokens<'_>> = tokens
            .iter()
            .zip(scales)
            .enumerate()
            .flat_map(|(expert, (tokens, scales))| {
                tokens
                    .chunks(chunk)
                    .zip(scales.chunks(chunk))
                    .map(move |(tokens, scales)| ExpertTokens {
                        expert,
                        tokens,
                        scales,
                    })
            })
            .collect();
        let pick = |w: fn(&ExpertWeights) -> &Tensor| -> Vec<&Tensor> {
            groups.iter().map(|g| w(&self.experts[g.expert])).collect()
        };
        let (gate, up, down) = (pick(|e| &e.gate), pick(|e| &e.up), pick(|e| &e.down));
        Ok(Some(cpu_experts::forward(x, &groups, &gate, &up, &down)?))
    }
}

impl ExpertsBackend for GroupedExperts {
    fn forward(&self, x: &Tensor, routes: &Routes) -> Result<Tensor> {
        let device: &Device = x.device();
        let (tokens, scales) = tokens_per_expert(routes, self.experts.len())?;
        if let Some(out) = self.forward_host(x, &tokens, &scales)? {
            return Ok(out);
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
            let g = candle_nn::ops::silu(&matmul_wt(&xs, &expert.gate)?)?;
            let u = matmul_wt(&xs, &expert.up)?;
            let y = matmul_wt(&(g * u)?, &expert.down)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// `Σ_k w_k · down(silu(gate x) ⊙ up x)` token by token with candle's own matmul.
    fn reference(experts: &GroupedExperts, x: &Tensor, ids: &[Vec<u32>], w: &[Vec<f32>]) -> Tensor {
        let rows: Vec<Tensor> = (0..x.dim(0).unwrap())
            .map(|t| {
                let xt = x.narrow(0, t, 1).unwrap();
                let mut acc = Tensor::zeros((1, experts.hidden), DType::F32, x.device()).unwrap();
                for (&e, &s) in ids[t].iter().zip(&w[t]) {
                    let ex = &experts.experts[e as usize];
                    let f32_t = |w: &Tensor| w.to_dtype(DType::F32).unwrap().t().unwrap();
                    let g = candle_nn::ops::silu(&xt.matmul(&f32_t(&ex.gate)).unwrap()).unwrap();
                    let u = xt.matmul(&f32_t(&ex.up)).unwrap();
                    let y = (g * u).unwrap().matmul(&f32_t(&ex.down)).unwrap();
                    acc = (acc + (y * f64::from(s)).unwrap()).unwrap();
                }
                acc
            })
            .collect();
        Tensor::cat(&rows, 0).unwrap()
    }

    fn experts(n: usize, hidden: usize, inter: usize) -> GroupedExperts {
        experts_in(n, hidden, inter, DType::F32)
    }

    fn experts_in(n: usize, hidden: usize, inter: usize, dtype: DType) -> GroupedExperts {
        let dev = Device::Cpu;
        let r = |a, b| {
            Tensor::randn(0f32, 0.2, (a, b), &dev)
                .unwrap()
                .to_dtype(dtype)
                .unwrap()
        };
        GroupedExperts {
            experts: (0..n)
                .map(|_| ExpertWeights {
                    gate: r(inter, hidden),
                    up: r(inter, hidden),
                    down: r(hidden, inter),
                })
                .collect(),
            hidden,
            intermediate: inter,
        }
    }

    fn check(ex: &GroupedExperts, ids: Vec<Vec<u32>>) {
        let t = ids.len();
        let x = Tensor::randn(0f32, 1.0, (t, ex.hidden), &Device::Cpu).unwrap();
        let w: Vec<Vec<f32>> = ids
            .iter()
            .map(|row| (0..row.len()).map(|i| 0.3 + 0.1 * i as f32).collect())
            .collect();
        let routes = Routes {
            ids: Tensor::new(ids.clone(), &Device::Cpu).unwrap(),
            weights: Tensor::new(w.clone(), &Device::Cpu).unwrap(),
        };
        let got = ex.forward(&x, &routes).unwrap();
        let want = reference(ex, &x, &ids, &w);
        let diff = (got - want).unwrap().abs().unwrap().max_all().unwrap();
        assert!(diff.to_scalar::<f32>().unwrap() < 1e-4);
    }

    #[test]
    fn host_path_matches_reference_for_decode_batches() {
        // Three tokens, top-2 of 6 experts, shapes that are not multiples of the kernel's lanes or tasks.
        let ex = experts(6, 70, 45);
        check(&ex, vec![vec![0, 3], vec![3, 5], vec![1, 0]]);
    }

    #[test]
    fn generic_path_matches_reference_when_an_expert_sees_many_tokens() {
        // 12 tokens all on experts 2 and 4: more than the streaming kernel's rows, so the GEMM path runs.
        let ex = experts(5, 40, 24);
        check(&ex, vec![vec![2, 4]; cpu_matmul::MAX_ROWS + 4]);
    }

    #[test]
    fn bf16_and_f16_experts_with_many_tokens_match_reference() {
        for dtype in [DType::BF16, DType::F16] {
            let ex = experts_in(5, 40, 24, dtype);
            // Chunks of the streaming kernel (an expert with 36 tokens, others with few).
            let mut ids = vec![vec![2, 4]; cpu_matmul::MAX_ROWS + 4];
            ids.push(vec![0, 1]);
            check(&ex, ids);
            // Past the chunked limit: widened panels and candle's GEMM (bf16 on AVX512-BF16 CPUs: all
            // 65 tokens in one product of that kernel, activations split in two bf16 terms).
            check(&ex, vec![vec![1, 3]; cpu_matmul::MAX_CHUNKED_ROWS + 1]);
        }
    }
}
