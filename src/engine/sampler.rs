//! Per-request sampling over raw logits: logit_bias → repetition / presence / frequency penalties →
//! temperature (0 = greedy) → top-k → top-p → min-p, drawn from a per-request seeded RNG so that the same
//! seed gives the same tokens whatever else is in the batch. Also the raw log-probabilities for `logprobs`.

use std::collections::HashMap;

use rand::{rngs::StdRng, Rng, SeedableRng};

/// Sampling parameters of one request (OpenAI and vLLM semantics).
#[derive(Debug, Clone)]
pub struct SamplingParams {
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: f32,
    pub min_p: f32,
    pub presence_penalty: f32,
    pub frequency_penalty: f32,
    /// > 1 discourages tokens already in the prompt or output (divides positive logits, multiplies negative).
    pub repetition_penalty: f32,
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_k: None,
            top_p: 1.0,
            min_p: 0.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            repetition_penalty: 1.0,
            logit_bias: Vec::new(),
            seed: None,
        }
    }
}

/// `log_softmax(logits)[index]`, computed stably in f64.
pub fn logprob_of(logits: &[f32], index: usize) -> f32 {
    (logits[index] as f64 - log_sum_exp(logits)) as f32
}

fn log_sum_exp(logits: &[f32]) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| (l as f64 - max).exp()).sum();
    max + sum.ln()
}

/// The `n` most likely tokens with their raw log-probabilities, most likely first.
pub fn top_logprobs(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    if n == 0 {
        return Vec::new();
    }
    let lse = log_sum_exp(logits);
    let mut idx: Vec<usize> = (0..logits.len()).collect();
    let n = n.min(idx.len());
    idx.select_nth_unstable_by(n - 1, |&a, &b| logits[b].total_cmp(&logits[a]));
    idx.truncate(n);
    idx.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    idx.into_iter()
        .map(|i| (i as u32, (logits[i] as f64 - lse) as f32))
        .collect()
}

/// Rank of `index` among the logits: 1 + how many are strictly more likely.
pub fn rank_of(logits: &[f32], index: usize) -> u32 {
    let v = logits[index];
    1 + logits.iter().filter(|&&l| l > v).count() as u32
}

/// Index of the largest value (the first on ties).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// One sequence's sampler: parameters, RNG, and the token counts penalties need.
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
    /// Tokens generated so far, with counts (presence / frequency penalties).
    output_counts: HashMap<u32, u32>,
    /// Prompt tokens (repetition penalty).
    prompt_tokens: std::collections::HashSet<u32>,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let rng = match params.seed {
            Some(s) => StdRng::seed_from_u64(s),
            None => StdRng::from_os_rng(),
        };
        Self {
            params,
            rng,
            output_counts: HashMap::new(),
            prompt_tokens: Default::default(),
        }
    }

    /// Registers the prompt (for the repetition penalty).
    pub fn with_prompt(mut self, prompt: &[u32]) -> Self {
        if self.params.repetition_penalty != 1.0 {
            self.prompt_tokens = prompt.iter().copied().collect();
        }
        self
    }

    /// Whether the choice is the argmax of the raw logits: greedy (temperature 0 or top-k 1) with no
    /// bias or penalty to apply first. Such a choice can be made where the logits are (on a GPU).
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        (p.temperature <= 0.0 || p.top_k == Some(1))
            && p.logit_bias.is_empty()
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
    }

    /// Registers a token as generated (called for every token appended, sampled or not).
    pub fn observe(&mut self, token: u32) {
        *self.output_counts.entry(token).or_insert(0) += 1;
    }

    fn processed(&self, logits: &[f32]) -> Vec<f32> {
        let p = &self.params;
        let mut l = logits.to_vec();
        for &(tok, bias) in &p.logit_bias {
            if let Some(v) = l.get_mut(tok as usize) {
                *v += bias;
            }
        }
        if p.repetition_penalty != 1.0 {
            let seen = self.prompt_tokens.iter().chain(self.output_counts.keys());
            for &tok in seen {
                if let Some(v) = l.get_mut(tok as usize) {
                    *v = if *v > 0.0 {
                        *v / p.repetition_penalty
                    } else {
                        *v * p.repetition_penalty
                    };
                }
            }
        }
        if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
            for (&tok, &count) in &self.output_counts {
                if let Some(v) = l.get_mut(tok as usize) {
                    *v -= p.presence_penalty + p.frequency_penalty * count as f32;
                }
            }
        }
        l
    }

    /// Chooses the next token from raw logits (does not call [`Sampler::observe`]). Orders the
    /// vocabulary only as far as `top_k`/`top_p` need: plain temperature sampling (with or without
    /// `min_p`) is one pass over the logits in token order, and `top_p` alone sorts the smallest head
    /// of the distribution that holds its mass.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let l = self.processed(logits);
        if self.params.temperature <= 0.0 || l.len() < 2 {
            return argmax(&l) as u32;
        }
        let top_k = self.params.top_k.filter(|k| *k > 0 && *k < l.len());
        if top_k.is_none() && self.params.top_p >= 1.0 {
            return self.sample_unordered(&l) as u32;
        }
        let t = self.params.temperature as f64;
        let top_p = self.params.top_p as f64;
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let weight = |i: usize| ((l[i] as f64 - max) / t).exp();
        let (order, total) = match top_k {
            Some(k) => {
                let order = sorted_head(&l, k);
                let total = order.iter().map(|&i| weight(i)).sum::<f64>();
                (order, total)
            }
            // No top-k here means top-p < 1 (plain sampling returned above).
            None => {
                let total = (0..l.len()).map(weight).sum::<f64>();
                (nucleus_head(&l, top_p * total, weight), total)
            }
        };
        // `order` is sorted, best first.
        let mut probs: Vec<f64> = order.iter().map(|&i| weight(i) / total).collect();
        if top_p < 1.0 {
            // Keep the smallest head whose mass reaches top_p.
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, p) in probs.iter().enumerate() {
                acc += p;
                if acc >= top_p {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        if self.params.min_p > 0.0 {
            let floor = probs[0] * self.params.min_p as f64;
            let keep = probs.iter().take_while(|&&p| p >= floor).count().max(1);
            probs.truncate(keep);
        }
        normalise(&mut probs);
        let r: f64 = self.rng.random();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if r < acc {
                return order[i] as u32;
            }
        }
        order[probs.len() - 1] as u32
    }

    /// Temperature (and `min_p`) sampling without any ordering: one pass of f32 weights relative to the
    /// best token (whose weight is 1, so `min_p` is a floor on the weights), then one draw.
    fn sample_unordered(&mut self, l: &[f32]) -> usize {
        let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let inv_t = 1.0 / self.params.temperature;
        let floor = self.params.min_p.max(0.0);
        let weights: Vec<f32> = l
            .iter()
            .map(|&x| {
                let w = ((x - max) * inv_t).exp();
                if w >= floor {
                    w
                } else {
                    0.0
                }
            })
            .collect();
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let r = self.rng.random::<f64>() * total;
        let mut acc = 0.0;
        let mut last = 0;
        for (i, &w) in weights.iter().enumerate() {
            if w > 0.0 {
                acc += f64::from(w);
                last = i;
                if r < acc {
                    return i;
                }
            }
        }
        last
    }
}

/// Indices of the `k` largest logits, largest first (ties: lower index first).
fn sorted_head(l: &[f32], k: usize) -> Vec<usize> {
    let by_logit = |a: &usize, b: &usize| l[*b].total_cmp(&l[*a]).then(a.cmp(b));
    let mut order: Vec<usize> = (0..l.len()).collect();
    if k < l.len() {
        order.select_nth_unstable_by(k - 1, by_logit);
        order.truncate(k);
    }
    order.sort_by(by_logit);
    order
}

/// The sorted head of the vocabulary whose summed `weight` reaches `mass`: tries the best 256 tokens,
/// then 4,096, then sorts the whole vocabulary (flat distributions).
fn nucleus_head(l: &[f32], mass: f64, weight: impl Fn(usize) -> f64) -> Vec<usize> {
    let mut k = 256;
    loop {
        let head = sorted_head(l, k.min(l.len()));
        if k >= l.len() || head.iter().map(|&i| weight(i)).sum::<f64>() >= mass {
            return head;
        }
        k = if k < 4096 { 4096 } else { l.len() };
    }
}

fn normalise(p: &mut [f64]) {
    let s: f64 = p.iter().sum();
    if s > 0.0 {
        p.iter_mut().for_each(|x| *x /= s);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    #[test]
    fn greedy_picks_max() {
        let mut s = Sampler::new(greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 2.0]), 1);
    }

    #[test]
    fn seeded_sampling_is_reproducible() {
        let logits: Vec<f32> = (0..50).map(|i| (i as f32 * 0.37).sin()).collect();
        let params = SamplingParams {
            seed: Some(42),
            ..Default::default()
        };
        let run = || {
            let mut s = Sampler::new(params.clone());
            (0..20).map(|_| s.sample(&logits)).collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert!(run().iter().collect::<std::collections::HashSet<_>>().len() > 1);
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(SamplingParams {
            temperature: 2.0,
            top_k: Some(1),
            seed: Some(1),
            ..Default::default()
        });
        for _ in 0..10 {
            assert_eq!(s.sample(&[0.1, 3.0, 2.9]), 1);
        }
    }

    #[test]
    fn min_p_cuts_the_tail() {
        let mut s = Sampler::new(SamplingParams {
            min_p: 0.5,
            seed: Some(3),
            ..Default::default()
        });
        for _ in 0..50 {
            assert_eq!(s.sample(&[0.0, 5.0, 0.0, 0.0]), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_nucleus_of_a_large_vocabulary() {
        // 1,000 tokens: one holds ~55% of the mass, nine ~4% each, the rest share ~9%.
        let mut logits = vec![0.0f32; 1000];
        logits[700] = 8.5;
        for l in logits.iter_mut().skip(100).take(9) {
            *l = 6.0;
        }
        let mut s = Sampler::new(SamplingParams {
            top_p: 0.6,
            seed: Some(1),
            ..Default::default()
        });
        let picks: Vec<u32> = (0..400).map(|_| s.sample(&logits)).collect();
        assert!(picks.iter().all(|&p| p == 700 || (100..109).contains(&p)));
        assert!(picks.contains(&700) && picks.iter().any(|&p| p != 700));
    }

    #[test]
    fn plain_sampling_follows_the_distribution() {
        // p(1) = e / (1 + e) ≈ 0.731.
        let mut s = Sampler::new(SamplingParams {
            seed: Some(9),
            ..Default::default()
        });
        let ones = (0..4000).filter(|_| s.sample(&[0.0, 1.0]) == 1).count();
        assert!((2800..3050).contains(&ones), "{ones} of 4000");
    }

    #[test]
    fn logit_bias_and_penalties_change_greedy_choice() {
        let mut s = Sampler::new(SamplingParams {
            logit_bias: vec![(0, 10.0)],
            ..greedy()
        });
        assert_eq!(s.sample(&[0.0, 3.0]), 0);
        let mut s = Sampler::new(SamplingParams {
            presence_penalty: 2.0,
            ..greedy()
        });
        s.observe(1);
        assert_eq!(s.sample(&[2.0, 3.0]), 0);
        let mut s = Sampler::new(SamplingParams {
            repetition_penalty: 2.0,
            ..greedy()
        })
        .with_prompt(&[1]);
        assert_eq!(s.sample(&[2.0, 3.0]), 0);
    }

    #[test]
    fn logprobs_match_log_softmax() {
        let lp = logprob_of(&[1.0, 2.0, 3.0], 2);
        let expected = 3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((lp as f64 - expected).abs() < 1e-6);
        let top = top_logprobs(&[1.0, 3.0, 2.0], 2);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!((top[0].1 - logprob_of(&[1.0, 3.0, 2.0], 1)).abs() < 1e-7);
    }

    #[test]
    fn plain_greedy_is_the_argmax_of_the_raw_logits() {
        let logits = [0.5f32, 3.0, -1.0, 2.9];
        let greedy = |f: fn(&mut SamplingParams)| {
            let mut p = SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            };
            f(&mut p);
            Sampler::new(p)
        };
        let plain = [
            greedy(|_| {}),
            greedy(|p| {
                p.temperature = 0.7;
                p.top_k = Some(1);
            }),
        ];
        for mut s in plain {
            assert!(s.is_plain_greedy());
            assert_eq!(s.sample(&logits) as usize, argmax(&logits));
        }
        let not_plain = [
            greedy(|p| p.temperature = 0.7),
            greedy(|p| p.logit_bias = vec![(3, 1.0)]),
            greedy(|p| p.repetition_penalty = 1.2),
            greedy(|p| p.presence_penalty = 0.5),
            greedy(|p| p.frequency_penalty = 0.5),
        ];
        for s in &not_plain {
            assert!(!s.is_plain_greedy());
        }
        let mut biased = greedy(|p| p.logit_bias = vec![(3, 1.0)]);
        assert_ne!(
            biased.sample(&logits) as usize,
            argmax(&logits),
            "bias moves the choice"
        );
    }
}
