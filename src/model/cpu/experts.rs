//! The routed experts of a decode-sized batch on the CPU in two parallel passes: every active expert's
//! gate and up rows in one (SwiGLU applied per expert), every active expert's down rows in the next,
//! then one weighted scatter into the output. Replaces three fork-joins and a dozen small tensor ops per
//! expert with two fork-joins per layer; used while each expert sees at most `cpu_matmul::MAX_ROWS` tokens.

use candle_core::Tensor;

use crate::error::Result;
use crate::model::cpu::host::with_f32;
use crate::model::cpu::host::{with_hosts, HostSlices};
use crate::model::cpu::matmul::{run_products, Product, WeightElem};

/// The tokens routed to one expert and their routing weights, in token order.
pub(crate) struct ExpertTokens<'a> {
    pub expert: usize,
    pub tokens: &'a [u32],
    pub scales: &'a [f32],
}

/// `out[t] = Σ_e scale(t, e) · down_e(silu(gate_e(x[t])) ⊙ up_e(x[t]))` for the listed experts.
/// `gate`/`up` (`[intermediate, hidden]`) and `down` (`[hidden, intermediate]`) hold one weight per group,
/// in the groups' order.
pub(crate) fn forward(
    x: &Tensor,
    groups: &[ExpertTokens<'_>],
    gate: &[&Tensor],
    up: &[&Tensor],
    down: &[&Tensor],
) -> Result<Tensor> {
    let (t, hidden) = x.dims2()?;
    let x = x.contiguous()?;
    let all: Vec<&Tensor> = gate.iter().chain(up).chain(down).copied().collect();
    let out = with_f32(&x, |xs| {
        with_hosts(&all, |views| match views {
            HostSlices::F32(ws) => Ok(run(xs, t, hidden, groups, &ws)),
            HostSlices::Bf16(ws) => Ok(run(xs, t, hidden, groups, &ws)),
            HostSlices::F16(ws) => Ok(run(xs, t, hidden, groups, &ws)),
        })
    })?;
    Ok(Tensor::from_vec(out, (t, hidden), x.device())?)
}

/// `ws` holds the groups' gate weights, then their up weights, then their down weights.
fn run<W: WeightElem>(
    x: &[f32],
    t: usize,
    hidden: usize,
    groups: &[ExpertTokens<'_>],
    ws: &[&[W]],
) -> Vec<f32> {
    let n = groups.len();
    // Each expert's tokens, gathered into a contiguous `[n_e, hidden]`.
    let inputs: Vec<Vec<f32>> = groups.iter().map(|g| gather(x, hidden, g.tokens)).collect();
    let gate_up: Vec<Product<'_, W>> = (0..2 * n)
        .map(|i| Product {
            x: &inputs[i % n],
            m: groups[i % n].tokens.len(),
            w: ws[i],
            k: hidden,
        })
        .collect();
    let mut gu = run_products(&gate_up);
    let ups = gu.split_off(n);
    for (g, u) in gu.iter_mut().zip(&ups) {
        swiglu(g, u);
    }
    let down: Vec<Product<'_, W>> = (0..n)
        .map(|i| Product {
            x: &gu[i],
            m: groups[i].tokens.len(),
            w: ws[2 * n + i],
            k: gu[i].len() / groups[i].tokens.len().max(1),
        })
        .collect();
    let ys = run_products(&down);
    let mut out = vec![0f32; t * hidden];
    for (g, y) in groups.iter().zip(&ys) {
        scatter_add(&mut out, hidden, g.tokens, g.scales, y);
    }
    out
}

/// The rows `tokens` of `x` (`[T, hidden]`), gathered into one contiguous `[n, hidden]`.
pub(crate) fn gather(x: &[f32], hidden: usize, tokens: &[u32]) -> Vec<f32> {
    tokens
        .iter()
        .flat_map(|&tok| &x[tok as usize * hidden..(tok as usize + 1) * hidden])
        .copied()
        .collect()
}

/// SwiGLU in place in the gate outputs: `g = silu(g) ⊙ u`.
pub(crate) fn swiglu(g: &mut [f32], u: &[f32]) {
    for (a, &b) in g.iter_mut().zip(u) {
        *a = *a / (1.0 + (-*a).exp()) * b;
    }
}

/// `out[tokens[j]] += scales[j] · y[j]` for an expert's output rows `y` (`[n, hidden]`).
pub(crate) fn scatter_add(
    out: &mut [f32],
    hidden: usize,
    tokens: &[u32],
    scales: &[f32],
    y: &[f32],
) {
    for (j, (&tok, &scale)) in tokens.iter().zip(scales).enumerate() {
        let dst = &mut out[tok as usize * hidden..(tok as usize + 1) * hidden];
        for (o, &v) in dst.iter_mut().zip(&y[j * hidden..(j + 1) * hidden]) {
            *o += scale * v;
        }
    }
}
