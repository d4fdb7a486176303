//! Routing: router logits (f32) → each token's top-k experts and their weights, with the exact semantics of
//! the reference implementation of each family.

use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::model::spec::RouterSpec;

/// Each token's chosen experts and weights: `ids` `[T, k]` u32 and `weights` `[T, k]` f32.
#[derive(Debug, Clone)]
pub struct Routes {
    pub ids: Tensor,
    pub weights: Tensor,
}

/// Chooses `top_k` of the row's experts; returns (ids, weights). `bias` is DeepSeek-V3's
/// `e_score_correction_bias` (used for the choice only).
pub fn route_row(
    spec: &RouterSpec,
    logits: &[f32],
    top_k: usize,
    bias: Option<&[f32]>,
) -> (Vec<u32>, Vec<f32>) {
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
        RouterSpec::DeepseekV2 {
            groups,
            renormalize,
            scaling,
        } => {
            let mut probs = softmax(logits);
            if let Some((n_group, topk_group)) = groups {
                let keep = best_groups(&probs, *n_group, *topk_group, |g| {
                    g.iter().copied().fold(f32::NEG_INFINITY, f32::max)
                });
                let size = probs.len() / n_group;
                for (i, p) in probs.iter_mut().enumerate() {
                    if !keep[i / size] {
                        *p = 0.0;
                    }
                }
            }
            let ids = top_k_indices(&probs, top_k);
            let mut weights: Vec<f32> = ids.iter().map(|&i| probs[i as usize]).collect();
            if *renormalize && top_k > 1 {
                let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
                weights.iter_mut().for_each(|w| *w /= sum);
            } else {
                weights.iter_mut().for_each(|w| *w *= scaling);
            }
            (ids, weights)
        }
        RouterSpec::DeepseekV3 {
            n_group,
            topk_group,
            renormalize,
            scaling,
        } => {
            let scores: Vec<f32> = logits.iter().map(|&l| 1.0 / (1.0 + (-l).exp())).collect();
            let mut choice: Vec<f32> = match bias {
                Some(b) => scores.iter().zip(b).map(|(s, b)| s + b).collect(),
                None => scores.clone(),
            };
            if *topk_group < *n_group {
                let keep = best_groups(&choice, *n_group, *topk_group, |g| {
                    let top = top_k_indices(g, 2);
                    top.iter().map(|&i| g[i as usize]).sum()
                });
                let size = choice.len() / n_group;
                for (i, c) in choice.iter_mut().enumerate() {
                    if !keep[i / size] {
                        *c = f32::NEG_INFINITY;
                    }
                }
            }
            let ids = top_k_indices(&choice, top_k);
            let mut weights: Vec<f32> = ids.iter().map(|&i| scores[i as usize]).collect();
            if *renormalize {
                let sum: f32 = weights.iter().sum::<f32>() + 1e-20;
                weights.iter_mut().for_each(|w| *w /= sum);
            }
            weights.iter_mut().for_each(|w| *w *= scaling);
            (ids, weights)
        }
    }
}

/// Which of `n_group` equal groups of `values` are among the `keep` best by `score`.
fn best_groups(
    values: &[f32],
    n_group: usize,
    keep: usize,
    score: impl Fn(&[f32]) -> f32,
) -> Vec<bool> {
    let size = values.len() / n_group.max(1);
    let scores: Vec<f32> = values.chunks(size.max(1)).map(&score).collect();
    let mut chosen = vec![false; scores.len()];
    for g in top_k_indices(&scores, keep) {
        chosen[g as usize] = true;
    }
    chosen
}

/// Routes every row of `logits` (`[T, E]`, f32); counts each choice in `load` (tokens per expert).
pub fn route(
    spec: &RouterSpec,
    logits: &Tensor,
    top_k: usize,
    bias: Option<&[f32]>,
    load: &[AtomicU64],
    device: &Device,
) -> Result<Routes> {
    let rows = logits.to_vec2::<f32>()?;
    let t = rows.len();
    let mut ids = Vec::with_capacity(t * top_k);
    let mut weights = Vec::with_capacity(t * top_k);
    for row in &rows {
        let (i, w) = route_row(spec, row, top_k, bias);
        for &e in &i {
            if let Some(c) = load.get(e as usize) {
                c.fetch_add(1, Ordering::Relaxed);
            }
        }
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
    fn v3_groups_bias_and_scaling() {
        let spec = RouterSpec::DeepseekV3 {
            n_group: 2,
            topk_group: 1,
            renormalize: true,
            scaling: 2.0,
        };
        // Group 0 = experts 0..2, group 1 = 2..4. Unbiased, expert 3 wins; the bias moves group 0 ahead.
        let logits = [0.0, 0.1, 0.2, 3.0];
        let (ids, _) = route_row(&spec, &logits, 1, None);
        assert_eq!(ids, vec![3]);
        let (ids, w) = route_row(&spec, &logits, 2, Some(&[2.0, 2.0, 0.0, 0.0]));
        assert_eq!(ids, vec![1, 0], "only group 0 survives");
        assert!(
            (w.iter().sum::<f32>() - 2.0).abs() < 1e-6,
            "renormalised then scaled"
        );
    }

    #[test]
    fn v2_group_limited_greedy_scales_without_renormalising() {
        let spec = RouterSpec::DeepseekV2 {
            groups: Some((2, 1)),
            renormalize: false,
            scaling: 16.0,
        };
        let logits = [1.0, 0.9, 0.0, 1.1];
        let (ids, w) = route_row(&spec, &logits, 2, None);
        assert_eq!(ids, vec![3, 2], "group 1 holds the max");
        let probs = softmax(&logits);
        assert!((w[0] - 16.0 * probs[3]).abs() < 1e-5);
    }

    #[test]
    fn softmax_topk_renormalised() {
        let spec = RouterSpec::SoftmaxTopK { renormalize: true };
        let (ids, w) = route_row(&spec, &[0.0, 2.0, 1.0, -1.0], 2, None);
        assert_eq!(ids, vec![1, 2]);
        assert!((w.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((w[0] / w[1] - 1f32.exp()).abs() < 1e-5);
    }

    #[test]
    fn softmax_topk_raw_probabilities() {
        let spec = RouterSpec::SoftmaxTopK { renormalize: false };
        let (ids, w) = route_row(&spec, &[0.0, 0.0, 0.0, 0.0], 2, None);
        assert_eq!(ids, vec![0, 1]);
        assert!((w[0] - 0.25).abs() < 1e-7);
    }
}
