//! The model runner: the one owner of the model's KV cache (`&mut self` wherever it is written) and of each
//! sequence's sampling state (seeded sampler, constraint). A step's scheduled work becomes a flat batch →
//! one forward pass (the constrained sequences' token masks computed beside it) → prompt logprobs for the
//! sequences that asked → one sampled token per sampling sequence. What comes out ([`StepOutput`]) is
//! token ids and logprobs, never the logits. On a GPU a step whose every sequence is plain greedy takes each
//! row's argmax on the device: only the token ids cross to the host.

use std::collections::HashMap;
use std::sync::Arc;

use super::constraint::{ConstraintError, TokenConstraint, TokenMask};
use super::request::{RequestParams, TokenLogprob};
use super::sampler::{logprob_of, rank_of, top_logprobs, Sampler};
use super::sequence::{SeqId, Sequence};
use crate::error::Result;
use crate::kv::KvCache;
use crate::loader::LoadedModel;
use crate::model::{Batch, LogitsOutput};

/// A sequence's sampling state.
struct SeqSampling {
    sampler: Sampler,
    constraint: Option<Box<dyn TokenConstraint>>,
    /// Logprob of the chosen token (and this many alternatives) wanted.
    logprobs: Option<usize>,
}

/// What one step runs.
pub(crate) struct StepInput<'a> {
    /// Sequences and the tokens of theirs this step runs (from their cached position).
    pub work: Vec<(&'a Sequence, usize)>,
    /// Sequences that sample a token this step, each with the sequence whose last row it samples from
    /// (itself, or the parent a fork shares the prompt with).
    pub samplers: Vec<(SeqId, SeqId)>,
    /// Blocks to copy once the forward pass has written them (forks' partly filled last blocks).
    pub copies: Vec<(u32, u32)>,
}

/// Log-probabilities of prompt positions `from..end` of a sequence.
pub(crate) struct PromptLogprobs {
    pub id: SeqId,
    pub from: usize,
    pub end: usize,
    pub tokens: Vec<TokenLogprob>,
    pub ranks: Vec<u32>,
}

/// A sampled token.
pub(crate) struct Sampled {
    pub id: SeqId,
    pub token: u32,
    pub logprob: Option<TokenLogprob>,
    /// The sequence's constraint is complete with this token: nothing more may follow.
    pub constraint_done: bool,
}

/// What one step produced.
#[derive(Default)]
pub(crate) struct StepOutput {
    /// Tokens run through the model.
    pub tokens: usize,
    pub prompt_logprobs: Vec<PromptLogprobs>,
    /// In the order of [`StepInput::samplers`].
    pub sampled: Vec<Sampled>,
    /// Sequences whose constraint could not go on.
    pub failed: Vec<(SeqId, ConstraintError)>,
}

pub(crate) struct ModelRunner {
    loaded: Arc<LoadedModel>,
    kv: KvCache,
    block_size: usize,
    sampling: HashMap<SeqId, SeqSampling>,
}

impl ModelRunner {
    pub(crate) fn new(
        loaded: Arc<LoadedModel>,
        num_blocks: usize,
        block_size: usize,
    ) -> Result<Self> {
        let kv = loaded.model.new_kv_cache(num_blocks, block_size)?;
        Ok(Self {
            loaded,
            kv,
            block_size,
            sampling: HashMap::new(),
        })
    }

    pub(crate) fn kv(&self) -> &KvCache {
        &self.kv
    }

    /// Brings counters the model keeps on its device (per-expert routed tokens) up to date.
    pub(crate) fn flush_counters(&self) {
        if let Err(e) = self.loaded.model.flush_expert_load() {
            tracing::warn!(error = %e, "could not read the expert-load counters");
        }
    }

    /// A new sequence's sampling state (its sampler sees the prompt for repetition penalties).
    pub(crate) fn add(
        &mut self,
        id: SeqId,
        params: &RequestParams,
        prompt: &[u32],
        constraint: Option<Box<dyn TokenConstraint>>,
    ) {
        self.sampling.insert(
            id,
            SeqSampling {
                sampler: Sampler::new(params.sampling.clone()).with_prompt(prompt),
                constraint,
                logprobs: params.logprobs.then_some(params.top_logprobs),
            },
        );
    }

    /// Choice `k` of `parent`'s request: its own random stream (seed + k) and a copy of the constraint.
    pub(crate) fn fork(
        &mut self,
        parent: SeqId,
        child: SeqId,
        k: usize,
        params: &RequestParams,
        prompt: &[u32],
    ) {
        let Some(p) = self.sampling.get(&parent) else {
            return;
        };
        let mut sampling = params.sampling.clone();
        sampling.seed = sampling.seed.map(|s| s.wrapping_add(k as u64));
        let state = SeqSampling {
            sampler: Sampler::new(sampling).with_prompt(prompt),
            constraint: p.constraint.as_ref().map(|c| c.fork()),
            logprobs: p.logprobs,
        };
        self.sampling.insert(child, state);
    }

    pub(crate) fn remove(&mut self, id: SeqId) {
        self.sampling.remove(&id);
    }

    /// Zeroes freed blocks in every layer before they are reused.
    pub(crate) fn zero(&mut self, freed: &[u32]) {
        if freed.is_empty() {
            return;
        }
        if let Err(e) = self.kv.zero_blocks(freed) {
            tracing::error!(error = %e, "zeroing freed KV blocks failed");
        }
    }

    /// Zeroes what the model keeps of the last steps (on a GPU the captured steps' input buffers).
    pub(crate) fn forget_step_inputs(&self) {
        if let Err(e) = self.loaded.model.forget_step_inputs() {
            tracing::error!(error = %e, "clearing the last step's buffers failed");
        }
    }

    /// Copies whole blocks (source, destination) in the cache.
    pub(crate) fn copy_blocks(&mut self, copies: &[(u32, u32)]) -> Result<()> {
        for &(src, dst) in copies {
            self.kv.copy_block(src, dst)?;
        }
        Ok(())
    }

    /// Runs one step.
    pub(crate) fn run(&mut self, input: StepInput) -> Result<StepOutput> {
        let mut batch = Batch::default();
        // Logits rows of each scheduled sequence: (first, count). All rows of its chunk when it wants
        // prompt logprobs, else its last row only.
        let mut rows: HashMap<SeqId, (usize, usize)> = HashMap::with_capacity(input.work.len());
        let mut selected: Vec<u32> = Vec::new();
        for &(seq, chunk) in &input.work {
            let start = batch.num_tokens();
            batch.push(
                &seq.tokens[seq.cached..seq.cached + chunk],
                seq.cached,
                &seq.table,
                self.block_size,
            )?;
            let first = if seq.wants_prompt_logprobs() {
                start
            } else {
                start + chunk - 1
            };
            rows.insert(seq.id, (selected.len(), batch.num_tokens() - first));
            selected.extend(first as u32..batch.num_tokens() as u32);
        }
        let output = if selected.len() == input.work.len() {
            LogitsOutput::LastPerSequence
        } else {
            LogitsOutput::Rows(selected)
        };
        // Decided before the constraints are taken out below (a constrained sequence never qualifies).
        let argmax_on_device = self.argmax_on_device(&input, &output);
        // The constrained samplers' masks are computed while the model runs.
        let mut constrained: Vec<(SeqId, Box<dyn TokenConstraint>)> = input
            .samplers
            .iter()
            .filter_map(|&(id, _)| {
                let c = self.sampling.get_mut(&id)?.constraint.take()?;
                Some((id, c))
            })
            .collect();
        let (logits, masks) = {
            let (model, kv) = (&self.loaded.model, &self.kv);
            rayon::join(
                || -> Result<StepLogits> {
                    let logits = model.forward(&batch, kv, output)?;
                    Ok(if argmax_on_device {
                        StepLogits::Argmax(row_argmax(&logits)?)
                    } else {
                        StepLogits::Rows(logits.to_vec2::<f32>()?)
                    })
                },
                || compute_masks(&mut constrained),
            )
        };
        for (id, c) in constrained {
            if let Some(s) = self.sampling.get_mut(&id) {
                s.constraint = Some(c);
            }
        }
        let logits = logits?;
        self.copy_blocks(&input.copies)?;
        let mut out = StepOutput {
            tokens: batch.num_tokens(),
            ..StepOutput::default()
        };
        let logits = match logits {
            StepLogits::Rows(rows) => rows,
            StepLogits::Argmax(ids) => {
                self.take_argmax(&input, &rows, &ids, &mut out);
                return Ok(out);
            }
        };
        for &(seq, _) in &input.work {
            if seq.wants_prompt_logprobs() {
                if let Some(&(first, count)) = rows.get(&seq.id) {
                    out.prompt_logprobs
                        .extend(prompt_logprobs(seq, &logits[first..first + count]));
                }
            }
        }
        let mut allowed: HashMap<SeqId, TokenMask> = HashMap::new();
        for (id, mask) in masks {
            match mask {
                Ok(m) => {
                    allowed.insert(id, m);
                }
                Err(e) => out.failed.push((id, e)),
            }
        }
        let work: Vec<(SeqId, usize)> = input
            .samplers
            .iter()
            .filter(|(id, _)| !out.failed.iter().any(|(f, _)| f == id))
            .filter_map(|&(id, owner)| {
                rows.get(&owner)
                    .map(|&(first, count)| (id, first + count - 1))
            })
            .collect();
        self.sample_all(&work, &logits, &allowed, &mut out);
        Ok(out)
    }

    /// Whether this step's tokens can be chosen where the logits are (a GPU), so that only their ids
    /// cross to the host: every sampling sequence is plain greedy with no logprobs and no constraint,
    /// and no prompt logprobs are wanted. On the CPU the logits are on the host already.
    fn argmax_on_device(&self, input: &StepInput<'_>, output: &LogitsOutput) -> bool {
        !self.loaded.model.device().is_cpu()
            && *output == LogitsOutput::LastPerSequence
            && !input
                .work
                .iter()
                .any(|(seq, _)| seq.wants_prompt_logprobs())
            && input.samplers.iter().all(|(id, _)| {
                self.sampling.get(id).is_some_and(|s| {
                    s.sampler.is_plain_greedy() && s.logprobs.is_none() && s.constraint.is_none()
                })
            })
    }

    /// Each sampling sequence's token from its row's argmax (see [`ModelRunner::argmax_on_device`]).
    fn take_argmax(
        &mut self,
        input: &StepInput<'_>,
        rows: &HashMap<SeqId, (usize, usize)>,
        ids: &[u32],
        out: &mut StepOutput,
    ) {
        for &(id, owner) in &input.samplers {
            let (Some(&(first, count)), Some(s)) = (rows.get(&owner), self.sampling.get_mut(&id))
            else {
                continue;
            };
            let Some(&token) = ids.get(first + count - 1) else {
                continue;
            };
            s.sampler.observe(token);
            out.sampled.push(Sampled {
                id,
                token,
                logprob: None,
                constraint_done: false,
            });
        }
    }

    /// Samples each `(sequence, logits row)` in parallel (each sequence has its own random stream, so
    /// results do not depend on the thread that ran them), then advances its constraint.
    fn sample_all(
        &mut self,
        work: &[(SeqId, usize)],
        logits: &[Vec<f32>],
        masks: &HashMap<SeqId, TokenMask>,
        out: &mut StepOutput,
    ) {
        use rayon::prelude::*;
        let place: HashMap<SeqId, (usize, usize)> = work
            .iter()
            .enumerate()
            .map(|(i, &(id, row))| (id, (i, row)))
            .collect();
        let mut picked: Vec<(usize, SampleResult)> = self
            .sampling
            .iter_mut()
            .filter_map(|(id, s)| place.get(id).map(|&(i, row)| (i, *id, row, s)))
            .collect::<Vec<_>>()
            .into_par_iter()
            .filter_map(|(i, id, row, s)| {
                let raw = logits.get(row)?;
                let token = match masks.get(&id) {
                    Some(mask) => {
                        let mut masked = raw.clone();
                        mask.apply(&mut masked);
                        s.sampler.sample(&masked)
                    }
                    None => s.sampler.sample(raw),
                };
                s.sampler.observe(token);
                let mut constraint_done = false;
                if let Some(c) = s.constraint.as_mut() {
                    match c.accept(token) {
                        Ok(()) => constraint_done = c.is_finished(),
                        Err(e) => return Some((i, Err((id, e)))),
                    }
                }
                // Logprobs under the raw distribution, as OpenAI reports them.
                let logprob = s.logprobs.map(|top| TokenLogprob {
                    token,
                    logprob: logprob_of(raw, token as usize),
                    top: top_logprobs(raw, top),
                });
                Some((
                    i,
                    Ok(Sampled {
                        id,
                        token,
                        logprob,
                        constraint_done,
                    }),
                ))
            })
            .collect();
        picked.sort_by_key(|p| p.0);
        for (_, r) in picked {
            match r {
                Ok(s) => out.sampled.push(s),
                Err(f) => out.failed.push(f),
            }
        }
    }
}

/// A step's logits as they come back to the host: every row, or (plain greedy steps) each row's argmax.
enum StepLogits {
    Rows(Vec<Vec<f32>>),
    Argmax(Vec<u32>),
}

/// The index of each row's largest logit (`logits`: `[rows, vocab]` f32; the lowest index on ties, as
/// the host sampler's argmax), computed where the logits are.
fn row_argmax(logits: &candle_core::Tensor) -> Result<Vec<u32>> {
    #[cfg(feature = "cuda")]
    if logits.device().is_cuda() {
        return Ok(crate::cuda::row_argmax(logits)?.to_vec1::<u32>()?);
    }
    Ok(logits.argmax(candle_core::D::Minus1)?.to_vec1::<u32>()?)
}

/// One sequence's sampled token, or why its constraint refused to go on.
type SampleResult = std::result::Result<Sampled, (SeqId, ConstraintError)>;

/// Each constrained sequence's next mask (run beside the model's forward pass).
fn compute_masks(
    constrained: &mut [(SeqId, Box<dyn TokenConstraint>)],
) -> HashMap<SeqId, std::result::Result<TokenMask, ConstraintError>> {
    use rayon::prelude::*;
    constrained
        .par_iter_mut()
        .map(|(id, c)| (*id, c.mask()))
        .collect()
}

/// The log-probabilities of the prompt tokens that `logits` (one row per token of this step's chunk,
/// from position `cached`) predict and that were not sent before (a recomputed prompt is not sent
/// twice). Rows are reduced in parallel.
fn prompt_logprobs(seq: &Sequence, logits: &[Vec<f32>]) -> Option<PromptLogprobs> {
    use rayon::prelude::*;
    let top = seq.params.prompt_logprobs.unwrap_or(0);
    // Row j predicts the token at position cached + j + 1.
    let from = seq.prompt_logprobs_next.max(seq.cached + 1);
    let end = (seq.cached + logits.len() + 1).min(seq.prompt_len);
    if from >= end {
        return None;
    }
    let (tokens, ranks): (Vec<TokenLogprob>, Vec<u32>) = (from..end)
        .into_par_iter()
        .map(|pos| {
            let row = &logits[pos - 1 - seq.cached];
            let token = seq.tokens[pos];
            (
                TokenLogprob {
                    token,
                    logprob: logprob_of(row, token as usize),
                    top: top_logprobs(row, top),
                },
                rank_of(row, token as usize),
            )
        })
        .unzip();
    Some(PromptLogprobs {
        id: seq.id,
        from,
        end,
        tokens,
        ranks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_argmax_matches_the_host_argmax() {
        let (rows, vocab) = (5, 1000);
        let values: Vec<f32> = (0..rows * vocab)
            .map(|i| ((i * 7919 % 1009) as f32 * 0.37).sin())
            .collect();
        let t =
            candle_core::Tensor::from_vec(values.clone(), (rows, vocab), &candle_core::Device::Cpu)
                .unwrap();
        let got = row_argmax(&t).unwrap();
        let want: Vec<u32> = values
            .chunks(vocab)
            .map(|r| super::super::sampler::argmax(r) as u32)
            .collect();
        assert_eq!(got, want);
    }
}
