//! Routing: router logits (f32) → each token's top-k experts and their weights, with the exact semantics of
//! the reference implementation of each family.

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::model::spec::RouterSpec;

/// Each token's chosen experts and weights: `ids` `[T, k]` u32 and `weights` `[T, k]` f32.
#[derive(Debug, Clone)]
pub struct Routes {
    pub ids: Tensor,
    pub weights: Tensor,
}

/// Chooses `top_k` of the row's experts; returns (ids, weights).
pub fn route_row(spec: &RouterSpec, logits: &[f32], top_k: usize) -> (Vec<u32>, Vec<f32>) {
    match spec {
        RouterSpec::SoftmaxTopK { renormalize } => {
            let probs = softmax(logits);
            let ids = top_k_indices(&probs, top_k);
            let mut weights: Vec<f32> = ids.iter().map(|&i| probs[i as usize]).collect();
            if *renormalize {
                let sum: f32 = weights.iter().sum();
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            (ids, weights)
        }
    }
}

/// Routes every row of `logits` (`[T, E]`, f32).
pub fn route(spec: &RouterSpec, logits: &Tensor, top_k: usize, device: &Device) -> Result<Routes> {
    let rows = logits.to_vec2::<f32>()?;
    let t = rows.len();
    let mut ids = Vec::with_capacity(t * top_k);
    let mut weights = Vec::with_capacity(t * top_k);
    for row in &rows {
        let (i, w) = route_row(spec, row, top_k);
        ids.extend(i);
        weights.extend(w);
    }
    Ok(Routes {
        ids: Tensor::from_vec(ids, (t, top_k), device)?,
        weights: Tensor::from_vec(weights, (t, top_k), device)?,
    })
}

fn softmax(x: &[f32]) -> Vec<f32> {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f32> = x.iter().map(|v| (v - max).exp()).collect();
    let sum: f32 = exps.iter().sum();
    exps.into_iter().map(|e| e / sum).collect()
}

/// Indices of the `k` largest values, largest first; ties go to the lower index (as torch.topk on CPU).
pub fn top_k_indices(x: &[f32], k: usize) -> Vec<u32> {
    let mut idx: Vec<u32> = (0..x.len() as u32).collect();
    idx.sort_by(|&a, &b| {
        x[b as usize]
            .partial_cmp(&x[a as usize])
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.cmp(&b))
    });
    idx.truncate(k);
    idx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_topk_renormalised() {
        let spec = RouterSpec::SoftmaxTopK { renormalize: true };
        let (ids, w) = route_row(&spec, &[0.0, 2.0, 1.0, -1.0], 2);
        assert_eq!(ids, vec![1, 2]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((w[0] / w[1] - 1f32.exp()).abs() < 1e-5);
    }

    #[test]
    fn softmax_topk_raw_probabilities() {
        let spec = RouterSpec::SoftmaxTopK { renormalize: false };
        let (ids, w) = route_row(&spec, &[0.0, 0.0, 0.0, 0.0], 2);
        assert_eq!(ids, vec![0, 1]);
        assert!((w[0] - 0.25).abs() < 1e-7);
    }
}
